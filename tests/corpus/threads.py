# python3 under the shim: threads that map and unmap memory (the mmap module: mmap(), munmap(),
# and mremap() when a file mapping is resized; bytearrays large enough that malloc maps them) and
# load and unload a library (ctypes.CDLL is dlopen(); _ctypes.dlclose() unloads, which ctypes
# itself never does). Prints one digest per thread, in thread order: deterministic.
# Usage: python3 threads.py WORKDIR PLUGIN.so
import _ctypes
import ctypes
import hashlib
import mmap
import os
import sys
import threading

WORKDIR, PLUGIN = sys.argv[1], sys.argv[2]
ROUNDS = 150
MIB = 1 << 20


def anonymous_maps(k, out):
    h = hashlib.sha256()
    for i in range(ROUNDS):
        m = mmap.mmap(-1, MIB)
        m[0:8] = (k * ROUNDS + i).to_bytes(8, "little")
        m[MIB - 8:MIB] = (i * 7919).to_bytes(8, "little")
        h.update(m[0:8] + m[MIB - 8:MIB])
        m.close()
        b = bytearray(MIB + i * 4096)
        b[-1] = (k + i) & 0xFF
        h.update(b[-2:])
        del b
    out[k] = "anonymous maps " + h.hexdigest()[:16]


def file_maps(k, out):
    h = hashlib.sha256()
    path = os.path.join(WORKDIR, "map%d" % k)
    page = mmap.PAGESIZE
    with open(path, "w+b") as f:
        f.truncate(page)
        m = mmap.mmap(f.fileno(), page)
        for i in range(ROUNDS):
            size = page * (1 + (i * 37) % 64)
            m.resize(size)
            m[size - 1] = i & 0xFF
            h.update(m[size - 1:size])
        m.close()
    os.unlink(path)
    out[k] = "file maps (resized) " + h.hexdigest()[:16]


def plugins(k, out):
    total = 0
    for i in range(ROUNDS // 3):
        lib = ctypes.CDLL(PLUGIN)
        total += lib.corpus_plugin_mix(k, i)
        _ctypes.dlclose(lib._handle)
    out[k] = "dlopen/dlclose %d" % total


WORKERS = [anonymous_maps, anonymous_maps, file_maps, plugins, plugins, anonymous_maps]
for wave in range(3):
    out = [None] * len(WORKERS)
    threads = [threading.Thread(target=f, args=(k, out)) for k, f in enumerate(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, line in enumerate(out):
        print("wave %d thread %d: %s" % (wave, k, line))
