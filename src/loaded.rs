//! Descriptors inside objects loaded after startup (`dlopen()`): read with a plain load while
//! rseqrt's own unloads wait, instead of a `process_vm_readv` per barrier.
//!
//! Such memory goes away when the object is unloaded. glibc's `_dl_find_object()` (2.35+; the
//! manual marks it MT-, AS- and AC-Safe: no lock) says whether an address lies in a loaded object,
//! but not for how long; the manual leaves that to the caller. Here it is the unload lock: a
//! barrier reads a descriptor as a reader ([`read_descriptor`]), and `rseqrt_dlclose()` holds
//! [`UnloadGuard`] around its real `dlclose()`, which waits for readers in flight and makes later
//! readers fall back to `process_vm_readv`. A reader never waits, so the lock costs the barrier
//! two atomic operations and never blocks it (it may run in a signal handler, or under an
//! allocator's lock that the unloading thread's `free()` would wait for).
//!
//! The load is only made inside a readable `PT_LOAD` segment of the object (an object's span can
//! hold `PROT_NONE` gaps), learnt once per object from its program headers, themselves read with
//! `process_vm_readv`, and kept in [`KNOWN`]. An entry is keyed by the object's link map and span;
//! after each unload through rseqrt, entries of objects that `_dl_find_object()` no longer finds
//! are dropped, so a later object at the same address is learnt anew.
//!
//! Not covered (README, "What the barrier reads"): an object unloaded by a `dlclose()` that
//! bypasses rseqrt, or a program that unmaps an object's segments itself, while a barrier reads a
//! descriptor there. Without rseqrt, a thread holding that descriptor would be killed at its next
//! preemption; with it, the barrier's thread may fault first.
//!
//! [`read_descriptor`]: async-signal-safe, allocation-free, lock-free (glibc before 2.35: always
//! `None`).

use crate::abi::rseq_cs;
use crate::elf::LinkMap;
use crate::platform;
use core::ffi::c_void;
use core::mem::{size_of, MaybeUninit};
use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering::{Acquire, Relaxed, Release, SeqCst}};

/// `struct dl_find_object` of `<dlfcn.h>` on x86-64 (no `dlfo_eh_dbase`, no `dlfo_eh_count`).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: usize,
    map_end: usize,
    link_map: usize,
    eh_frame: usize,
    reserved: [u64; 7],
}

type FindObject = unsafe extern "C" fn(*mut c_void, *mut DlFindObject) -> libc::c_int;

/// `_dl_find_object`, resolved by the constructor; 0 where the C library has none.
static FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);

/// Barriers reading a descriptor now, and `rseqrt_dlclose()` calls unloading now.
static READERS: AtomicUsize = AtomicUsize::new(0);
static UNLOADS: AtomicUsize = AtomicUsize::new(0);

/// Looks `_dl_find_object` up (constructor time: `dlsym` is not async-signal-safe).
pub fn note() {
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches the global scope.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    FIND_OBJECT.store(f as usize, Relaxed);
}

/// The object containing `addr`: (link map, span start, span end).
fn find_object(addr: usize) -> Option<(usize, usize, usize)> {
    let f = FIND_OBJECT.load(Relaxed);
    if f == 0 {
        return None;
    }
    // SAFETY: the address of glibc's `_dl_find_object`, which has this signature.
    let f: FindObject = unsafe { core::mem::transmute(f) };
    let mut out = MaybeUninit::<DlFindObject>::zeroed();
    // SAFETY: `out` is a live, writable `struct dl_find_object`; any address may be asked about.
    if unsafe { f(addr as *mut c_void, out.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zero-initialised, then filled by glibc on success.
    let out = unsafe { out.assume_init() };
    Some((out.link_map, out.map_start, out.map_end))
}

/// Reads the descriptor at `addr` if it lies in a readable segment of a loaded object; `None`
/// (read it another way) where it does not, where that cannot be told, or while rseqrt unloads.
pub fn read_descriptor(addr: usize) -> Option<rseq_cs> {
    let end = addr.checked_add(size_of::<rseq_cs>())?;
    if FIND_OBJECT.load(Relaxed) == 0 {
        return None;
    }
    let _reader = Reader::enter()?;
    let (map, start, stop) = find_object(addr)?;
    if end > stop {
        return None;
    }
    if !segments_hold(map, start, stop, addr, end) {
        return None;
    }
    // SAFETY: the range lies inside a readable segment of an object loaded when
    // `_dl_find_object` answered; rseqrt's unloads wait while this reader is in (see the module
    // for the unloads that bypass rseqrt); the kernel does not require alignment, nor does this.
    Some(unsafe { core::ptr::read_unaligned(addr as *const rseq_cs) })
}

/// Whether the descriptor at `addr`, its code and its abort signature all lie in one loaded
/// object (or in `permanent` memory) that `stays` says the coming unload leaves loaded. `stays` is
/// called with the object's link map while rseqrt's unloads wait, so the map can be read.
pub fn refers_only_within_object(addr: usize, stays: impl FnOnce(*const LinkMap) -> bool) -> bool {
    let Some(end) = addr.checked_add(size_of::<rseq_cs>()) else { return false };
    if FIND_OBJECT.load(Relaxed) == 0 {
        return false;
    }
    let Some(_reader) = Reader::enter() else { return false };
    let Some((map, start, stop)) = find_object(addr) else { return false };
    if end > stop || !segments_hold(map, start, stop, addr, end) {
        return false;
    }
    // SAFETY: as in `read_descriptor`.
    let cs = unsafe { core::ptr::read_unaligned(addr as *const rseq_cs) };
    let lasts = |a: usize, len: usize| (start <= a && a.saturating_add(len) <= stop) || crate::permanent::holds(a, len);
    let abort = cs.abort_ip as usize;
    lasts(cs.start_ip as usize, cs.post_commit_offset as usize) && abort >= 4 && lasts(abort - 4, 4) && stays(map as *const LinkMap)
}

/// The reader side of the unload lock.
struct Reader;

impl Reader {
    fn enter() -> Option<Reader> {
        // Dekker-style with `UnloadGuard::new`: SeqCst on both sides, so either this reader sees
        // the unload, or the unload sees this reader and waits for it.
        READERS.fetch_add(1, SeqCst);
        if UNLOADS.load(SeqCst) != 0 {
            READERS.fetch_sub(1, Release);
            return None;
        }
        Some(Reader)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        READERS.fetch_sub(1, Release);
    }
}

/// Held by `rseqrt_dlclose()` around its real `dlclose()`: no barrier reads an object's memory
/// with a plain load meanwhile. Nested and concurrent guards are fine (a count).
pub struct UnloadGuard;

impl UnloadGuard {
    pub fn new() -> UnloadGuard {
        UNLOADS.fetch_add(1, SeqCst);
        // Readers are a few loads long and never wait: yield until those in flight are out.
        while READERS.load(SeqCst) != 0 {
            platform::sched_yield();
        }
        UnloadGuard
    }
}

impl Drop for UnloadGuard {
    fn drop(&mut self) {
        forget_unloaded();
        UNLOADS.fetch_sub(1, SeqCst);
    }
}

/// Objects whose readable segments are known.
const OBJECTS: usize = 16;
const SEGMENTS: usize = 6;

/// One object's readable `PT_LOAD` segments; `map` 0 when unused. `seq` is even when stable and
/// odd while written, and only grows: readers copy an entry and check that `seq` did not change.
struct Known {
    seq: AtomicU64,
    map: AtomicUsize,
    start: AtomicUsize,
    stop: AtomicUsize,
    segs: [(AtomicUsize, AtomicUsize); SEGMENTS],
}

const UNUSED: Known = Known {
    seq: AtomicU64::new(0),
    map: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    stop: AtomicUsize::new(0),
    segs: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SEGMENTS],
};

static KNOWN: [Known; OBJECTS] = [UNUSED; OBJECTS];
/// Writers take this (try-lock from a barrier, spinning only in [`forget_unloaded`]).
static WRITING: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether `[addr, end)` lies inside one readable segment of the object (learning them if new).
fn segments_hold(map: usize, start: usize, stop: usize, addr: usize, end: usize) -> bool {
    for k in &KNOWN {
        let s1 = k.seq.load(Acquire);
        if s1 % 2 == 1 || k.map.load(Relaxed) != map {
            continue;
        }
        let same = k.start.load(Relaxed) == start && k.stop.load(Relaxed) == stop;
        let inside = k.segs.iter().any(|(a, b)| a.load(Relaxed) <= addr && end <= b.load(Relaxed));
        fence(Acquire);
        if k.seq.load(Relaxed) == s1 && same {
            return inside;
        }
    }
    let Some(segs) = learn(start, stop) else { return false };
    let inside = segs.iter().any(|&(a, b)| a <= addr && end <= b);
    remember(map, start, stop, &segs);
    inside
}

/// The readable segments of the object spanning `[start, stop)`, from its program headers (read
/// with `process_vm_readv`). Only for the usual layout, the ELF header at the span's start (first
/// `PT_LOAD` at file offset and address 0); `None` otherwise.
fn learn(start: usize, stop: usize) -> Option<[(usize, usize); SEGMENTS]> {
    let ehdr: libc::Elf64_Ehdr = read_remote(start)?;
    if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_phentsize as usize != size_of::<libc::Elf64_Phdr>() {
        return None;
    }
    let mut segs = [(0usize, 0usize); SEGMENTS];
    let (mut n, mut first) = (0, true);
    for i in 0..ehdr.e_phnum as usize {
        let ph: libc::Elf64_Phdr = read_remote(start.checked_add(ehdr.e_phoff as usize + i * size_of::<libc::Elf64_Phdr>())?)?;
        if ph.p_type != libc::PT_LOAD {
            continue;
        }
        if first && (ph.p_offset != 0 || ph.p_vaddr != 0) {
            return None; // the header is not at the span's start: the load address is unknown
        }
        first = false;
        let (a, b) = (start + ph.p_vaddr as usize, start + (ph.p_vaddr + ph.p_memsz) as usize);
        if ph.p_flags & libc::PF_R == 0 || b > stop {
            continue;
        }
        *segs.get_mut(n)? = (a, b);
        n += 1;
    }
    Some(segs)
}

/// A `T` read from `addr` with `process_vm_readv`.
fn read_remote<T: Copy>(addr: usize) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: `v` is a live local of `size_of::<T>()` bytes.
    match unsafe { platform::read_own_memory(v.as_mut_ptr().cast(), addr, size_of::<T>()) } {
        // SAFETY: the kernel filled every byte; `T` is plain data (ELF headers).
        Ok(n) if n == size_of::<T>() => Some(unsafe { v.assume_init() }),
        _ => None,
    }
}

/// Records an object's segments; skipped when another writer is at work (the next barrier learns
/// them again).
fn remember(map: usize, start: usize, stop: usize, segs: &[(usize, usize); SEGMENTS]) {
    if WRITING.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
        return;
    }
    let k = &KNOWN[NEXT.fetch_add(1, Relaxed) % OBJECTS];
    let s = k.seq.load(Relaxed);
    k.seq.store(s + 1, Relaxed);
    fence(Release);
    k.map.store(map, Relaxed);
    k.start.store(start, Relaxed);
    k.stop.store(stop, Relaxed);
    for ((a, b), &(x, y)) in k.segs.iter().zip(segs) {
        a.store(x, Relaxed);
        b.store(y, Relaxed);
    }
    k.seq.store(s + 2, Release);
    WRITING.store(0, Release);
}

/// Drops the entries of objects that are gone (after a `dlclose()` through rseqrt).
fn forget_unloaded() {
    if FIND_OBJECT.load(Relaxed) == 0 {
        return;
    }
    while WRITING.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
        platform::sched_yield();
    }
    for k in &KNOWN {
        let (map, start, stop) = (k.map.load(Relaxed), k.start.load(Relaxed), k.stop.load(Relaxed));
        if map != 0 && find_object(start) != Some((map, start, stop)) {
            let s = k.seq.load(Relaxed);
            k.seq.store(s + 1, Relaxed);
            fence(Release);
            k.map.store(0, Relaxed);
            k.seq.store(s + 2, Release);
        }
    }
    WRITING.store(0, Release);
}
