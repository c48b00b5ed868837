//! Memory that stays readable for the life of the process: the readable `PT_LOAD` segments of
//! the main program and of the objects it needs (the closure of its `DT_NEEDED` entries, which
//! includes the C library and the dynamic linker). glibc loads them before any constructor runs
//! and never unloads them (`dlclose()` unloads only objects `dlopen()` loaded).
//!
//! The barrier reads a descriptor that lies there with a plain load instead of
//! `process_vm_readv` (the descriptor check of a thread that ran a critical section in the
//! program or one of its libraries then costs no system call). A program can still `munmap()`
//! or `mprotect()` such memory itself; the range a barrier is about to free is checked before any
//! read (a descriptor inside it refers, unread), so only a concurrent call of the program's own on
//! its startup objects could make the plain load fault: that is the program unmapping its own code.
//!
//! Recorded once by the constructor ([`note`]); read by barriers with an acquire load of the
//! count. [`holds`]: async-signal-safe, allocation-free, no lock.

use crate::elf::LinkMap;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::{Acquire, Relaxed, Release}};

const MAX_SEGMENTS: usize = 256;
const MAX_OBJECTS: usize = 128;

/// `[start, end)` of each recorded segment; the first [`COUNT`] are valid.
static STARTS: [AtomicUsize; MAX_SEGMENTS] = [const { AtomicUsize::new(0) }; MAX_SEGMENTS];
static ENDS: [AtomicUsize; MAX_SEGMENTS] = [const { AtomicUsize::new(0) }; MAX_SEGMENTS];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The objects themselves (their link maps); the first [`OBJECT_COUNT`] are valid.
static OBJECTS: [AtomicPtr<LinkMap>; MAX_OBJECTS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_OBJECTS];
static OBJECT_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Whether `[addr, addr + len)` lies inside one recorded segment.
pub fn holds(addr: usize, len: usize) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    let n = COUNT.load(Acquire);
    (0..n).any(|i| STARTS[i].load(Relaxed) <= addr && end <= ENDS[i].load(Relaxed))
}

/// The descriptor at `addr` when it lies inside one recorded segment (a plain load); `None`
/// otherwise.
pub fn read_descriptor(addr: usize) -> Option<crate::abi::rseq_cs> {
    if !holds(addr, core::mem::size_of::<crate::abi::rseq_cs>()) {
        return None;
    }
    // SAFETY: the descriptor lies inside a readable segment of an object that is never unloaded
    // (see the module for a program that unmaps its own); the kernel does not require its
    // alignment, so neither does this read.
    Some(unsafe { core::ptr::read_unaligned(addr as *const crate::abi::rseq_cs) })
}

/// Whether `m` is one of the recorded objects (which `dlclose()` never unmaps).
pub fn is_object(m: *const LinkMap) -> bool {
    let n = OBJECT_COUNT.load(Acquire);
    OBJECTS[..n].iter().any(|o| core::ptr::eq(o.load(Relaxed), m))
}

/// The main program's objects, found under the loader's lock.
struct Objects {
    maps: [*const LinkMap; MAX_OBJECTS],
    count: usize,
}

/// Records the segments (constructor time; once per process, inherited by `fork()`).
pub fn note() {
    if COUNT.load(Relaxed) != 0 {
        return;
    }
    let mut objects = Objects { maps: [ptr::null(); MAX_OBJECTS], count: 0 };
    // SAFETY: `visit` reads only what it is handed and the loader's lists, under the loader's
    // lock that dl_iterate_phdr holds around each callback; `objects` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut objects as *mut Objects).cast()) };
}

/// `dl_iterate_phdr` callback: the first call finds the main program's closure; each call
/// records the readable segments of an object in it.
unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> libc::c_int {
    // SAFETY: `data` is `note`'s `Objects`; `info` is valid during the callback.
    let (objects, info) = unsafe { (&mut *(data as *mut Objects), &*info) };
    if objects.count == 0 {
        // SAFETY: under the loader's lock (see `note`).
        unsafe { find_closure(objects) };
        for (slot, &m) in OBJECTS.iter().zip(&objects.maps[..objects.count]) {
            slot.store(m as *mut LinkMap, Relaxed);
        }
        OBJECT_COUNT.store(objects.count, Release);
    }
    let base = info.dlpi_addr as usize;
    // SAFETY: entries are loaded objects, under the loader's lock.
    let ours = objects.maps[..objects.count].iter().any(|&m| unsafe { (*m).l_addr == base && (*m).l_name == info.dlpi_name.cast::<u8>() });
    if !ours {
        return 0;
    }
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: `dlpi_phdr` has `dlpi_phnum` entries.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_R == 0 {
            continue;
        }
        let n = COUNT.load(Relaxed);
        if n == MAX_SEGMENTS {
            return 1; // the rest keep the system call
        }
        let start = base + ph.p_vaddr as usize;
        STARTS[n].store(start, Relaxed);
        ENDS[n].store(start + ph.p_memsz as usize, Relaxed);
        COUNT.store(n + 1, Release);
    }
    0
}

/// The main program (first in the main namespace's list) and its `DT_NEEDED` closure; stops at
/// `MAX_OBJECTS` (the others keep the system call).
///
/// # Safety
/// Call with the loader's lock held.
unsafe fn find_closure(objects: &mut Objects) {
    // SAFETY: ld.so's list, stable under its lock.
    let main: *const LinkMap = unsafe { (*ptr::addr_of!(crate::elf::_r_debug)).r_map };
    if main.is_null() {
        return;
    }
    objects.maps[0] = main;
    objects.count = 1;
    // SAFETY: `main` is a loaded object, under the loader's lock. A full list keeps what fits.
    let _ = unsafe { crate::elf::add_needed_closure(&mut objects.maps, &mut objects.count, |_| false) };
}
