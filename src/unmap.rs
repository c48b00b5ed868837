//! `dlclose()` and `munmap()` that run the barrier first, over the memory they may free.
//!
//! `dlclose(handle)` may unmap the handle's object and any object that only it kept loaded: its
//! `DT_NEEDED` dependencies, and objects it bound to at relocation time (glibc's private
//! `l_reldeps`, which the public link map does not show). The barrier clears references to the
//! handle's object and the closure of its `DT_NEEDED` entries (matched by `DT_SONAME`, path, or
//! file name); for every other object loaded after rseqrt's constructor ran (objects loaded at
//! startup are never unloaded) that no open `dlopen()` handle keeps (`opencount`; every one when
//! that count cannot be read), which may or may not go, it makes sure that each thread's kernel
//! has looked at the `rseq_cs` it held (see `barrier::clear_with_possible`), so that threads
//! using those objects meanwhile are not waited for. Each object contributes the span of its
//! `PT_LOAD` segments. More than `MAX_OBJECTS`: the barrier covers every `rseq_cs`.
//!
//! The link maps are read inside a `dl_iterate_phdr()` callback, which holds the dynamic
//! linker's write lock (`dl_load_write_lock`: glibc unlinks and unmaps objects under it), so no
//! other thread's `dlclose()` can free one while it is read.

use crate::barrier::{self, Range};
use crate::elf::LinkMap;
use crate::platform::Errno;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering::{Acquire, Relaxed, Release}};

const MAX_OBJECTS: usize = 128;

/// The last object of the main namespace when rseqrt's constructor ran: objects after it were
/// loaded later (and so may be unloaded).
static STARTUP_LAST: AtomicPtr<LinkMap> = AtomicPtr::new(ptr::null_mut());

/// Records the objects loaded so far as the startup set (constructor time, under the loader's
/// lock: the dynamic linker holds it while it runs constructors).
pub fn note_startup_objects() {
    // SAFETY: ld.so's list of loaded objects, stable while the loader's lock is held.
    unsafe {
        let mut m = (*ptr::addr_of!(crate::elf::_r_debug)).r_map;
        while !m.is_null() && !(*m).l_next.is_null() {
            m = (*m).l_next;
        }
        STARTUP_LAST.store(m as *mut LinkMap, Relaxed);
    }
}

/// The page size used to round lengths: the kernel frees whole pages.
pub const PAGE: usize = 4096;

/// Whether the kernel would act on `[addr, addr + len)` (munmap, madvise, mprotect): a
/// page-aligned address and a non-zero length whose page-rounded end does not overflow; else the
/// call fails with EINVAL or does nothing.
pub fn kernel_acts_on(addr: usize, len: usize) -> bool {
    addr % PAGE == 0 && len != 0 && addr.checked_add(len).and_then(|e| e.checked_add(PAGE - 1)).is_some()
}

/// `[addr, addr + len)` widened to whole pages, as the kernel treats it.
pub fn page_range(addr: usize, len: usize) -> Range {
    Range::new(addr & !(PAGE - 1), len.saturating_add(addr & (PAGE - 1)).saturating_add(PAGE - 1) & !(PAGE - 1))
}

/// `munmap()` after the barrier over the pages of `[addr, addr + len)`. Arguments `munmap()`
/// would reject are rejected first, with its errno (EINVAL), and nothing is freed if the barrier
/// fails.
pub fn munmap(addr: *mut c_void, len: usize) -> Result<(), Errno> {
    if !kernel_acts_on(addr as usize, len) {
        return Err(Errno(libc::EINVAL));
    }
    barrier::clear(&[page_range(addr as usize, len)], 0)?;
    // SAFETY: the caller asked for this range to be unmapped; the kernel validates it.
    unsafe { crate::platform::munmap(addr.cast(), len) }
}

/// What `dlclose(handle)` may unmap.
enum Unmaps {
    /// Spans of objects: the first `certain` will go with the handle (its object and the
    /// `DT_NEEDED` closure); the next `possible` only may (objects loaded after startup).
    Objects { certain: usize, possible: usize },
    /// Too many objects (or dependencies) to list: treat it as everything.
    Everything,
    /// Not a handle of a loaded object: `dlclose()` will fail and unmap nothing.
    Nothing,
}

/// The candidate objects' load addresses, certain ones first.
struct Candidates {
    addrs: [usize; MAX_OBJECTS],
    certain: usize,
    total: usize,
}

/// State of the walk inside `dl_iterate_phdr`'s callback.
struct Walk<'a> {
    handle: *const LinkMap,
    /// Whether objects with an open handle may be left out (this close holds the `CloseLock`).
    trust_open_counts: bool,
    /// `None` until the first callback computed them.
    candidates: Option<Result<Candidates, Unmaps>>,
    /// Spans, in the order of `Candidates::addrs` (empty where an object has none).
    spans: &'a mut [Range; MAX_OBJECTS],
}

/// The ranges `dlclose(handle)` may unmap: `certain` ones first, then `possible` ones, packed
/// into `out`.
fn dlclose_ranges(handle: *mut c_void, out: &mut [Range; MAX_OBJECTS], trust_open_counts: bool) -> Unmaps {
    let mut spans = [Range { start: 0, end: 0 }; MAX_OBJECTS];
    let mut walk = Walk { handle: handle as *const LinkMap, trust_open_counts, candidates: None, spans: &mut spans };
    // SAFETY: `visit` only reads what it is handed and the loader's lists (under the loader's
    // lock, which dl_iterate_phdr holds around every callback); `walk` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut walk as *mut Walk).cast()) };
    let c = match walk.candidates {
        Some(Ok(c)) => c,
        Some(Err(verdict)) => return verdict,
        None => return Unmaps::Nothing,
    };
    let (mut certain, mut possible) = (0, 0);
    for (i, span) in spans[..c.total].iter().enumerate().filter(|(_, s)| s.start < s.end) {
        out[certain + possible] = *span;
        if i < c.certain { certain += 1 } else { possible += 1 }
    }
    Unmaps::Objects { certain, possible }
}

/// `dl_iterate_phdr` callback: on the first object, decides the candidates; on every object,
/// records the span of a candidate's `PT_LOAD` segments.
unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> libc::c_int {
    // SAFETY: `data` is the `Walk` of `dlclose_ranges`; `info` is valid during the callback.
    let (walk, info) = unsafe { (&mut *(data as *mut Walk), &*info) };
    // SAFETY: called under the loader's lock (see `dlclose_ranges`).
    let candidates = walk.candidates.get_or_insert_with(|| unsafe { candidates(walk.handle, walk.trust_open_counts) });
    let Ok(c) = candidates else { return 1 };
    let addr = info.dlpi_addr as usize;
    let Some(slot) = c.addrs[..c.total].iter().position(|&a| a == addr) else { return 0 };
    let mut span = Range { start: usize::MAX, end: 0 };
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: `dlpi_phdr` has `dlpi_phnum` entries.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type == libc::PT_LOAD {
            let start = addr + ph.p_vaddr as usize;
            span.start = span.start.min(start & !(PAGE - 1));
            span.end = span.end.max(start + ph.p_memsz as usize);
        }
    }
    if span.start < span.end {
        walk.spans[slot] = span;
    }
    0
}

/// The objects `dlclose(handle)` may unmap (see the module comment).
///
/// # Safety
/// Call with the loader's lock held.
unsafe fn candidates(handle: *const LinkMap, trust_open_counts: bool) -> Result<Candidates, Unmaps> {
    // glibc's handles are link maps; look the handle up in the loader's lists before reading
    // through it (dlinfo would hand back any pointer).
    if !crate::elf::is_loaded_object(handle) {
        return Err(Unmaps::Nothing);
    }
    let mut objects = [ptr::null::<LinkMap>(); MAX_OBJECTS];
    objects[0] = handle;
    let mut count = 1;
    // Certain: the handle's object and its DT_NEEDED closure, without the objects loaded at
    // startup (never unloaded: `permanent`), which are neither compared by name nor followed.
    // SAFETY: `handle` is a loaded object, under the loader's lock.
    unsafe { crate::elf::add_needed_closure(&mut objects, &mut count, crate::permanent::is_object) }
        .map_err(|_| Unmaps::Everything)?;
    let certain = count;
    // Possible: everything else loaded after startup in the handle's namespace (the whole list
    // for a namespace other than the main one, all of which was loaded later).
    let startup_last = STARTUP_LAST.load(Relaxed) as *const LinkMap;
    // SAFETY: the loader's list, under its lock.
    unsafe {
        let mut m = handle;
        while !(*m).l_prev.is_null() {
            m = (*m).l_prev;
        }
        // In the main namespace: the objects after the startup set (none if it was not recorded).
        // One with a `dlopen()` handle still open stays loaded (`opencount`).
        let mut after_startup = m != (*ptr::addr_of!(crate::elf::_r_debug)).r_map;
        while !m.is_null() {
            let kept_open = trust_open_counts && crate::opencount::open_handles(m).is_some_and(|n| n > 0);
            if after_startup && m != handle && !kept_open {
                crate::elf::add_object(&mut objects, &mut count, m).map_err(|_| Unmaps::Everything)?;
            }
            after_startup |= m == startup_last;
            m = (*m).l_next;
        }
    }
    let mut addrs = [0usize; MAX_OBJECTS];
    for (a, m) in addrs.iter_mut().zip(&objects[..count]) {
        // SAFETY: as above.
        *a = unsafe { (**m).l_addr };
    }
    Ok(Candidates { addrs, certain, total: count })
}

/// `dlclose()` after the barrier over every object it may unmap. A handle that is not a loaded
/// object goes straight to `dlclose()`, so its return value and `dlerror()` are the C library's.
///
/// The object's own destructors run inside `dlclose()`, in the calling thread, after the
/// barrier: a critical section there would leave the caller's `rseq_cs` pointing into the
/// object as it is unmapped. So the caller's area is unregistered around the call (its
/// critical sections then take their fallback paths) and registered again after.
pub fn dlclose(handle: *mut c_void) -> Result<libc::c_int, Errno> {
    // A dlclose() never unmaps the objects loaded at startup, nor another object that keeps an
    // open handle: when no thread refers to anything else, neither the walk nor the barrier is
    // needed. The first check needs no lock; the second reads open counts, which stay true only
    // while this close holds its turn (`CloseLock`, until the real dlclose() has returned).
    if barrier::only_lasting_memory_referred(None) {
        return real_dlclose(handle);
    }
    crate::opencount::calibrate();
    let lock = CloseLock::acquire();
    let handle_map = handle as *const LinkMap;
    let stays = |m: *const LinkMap| {
        // The handle's own object is left to the walk (its count drops with this close).
        // SAFETY: `quick` calls this with a loaded object's map while rseqrt's unloads wait.
        m != handle_map && unsafe { crate::opencount::open_handles(m) }.is_some_and(|n| n > 0)
    };
    if lock.held && barrier::only_lasting_memory_referred(Some(&stays)) {
        return real_dlclose(handle);
    }
    let mut ranges = [Range { start: 0, end: 0 }; MAX_OBJECTS];
    match dlclose_ranges(handle, &mut ranges, lock.held) {
        Unmaps::Objects { certain, possible } => barrier::clear_with_possible(&ranges[..certain], &ranges[certain..certain + possible], 0)?,
        Unmaps::Everything => barrier::clear_all(0)?,
        Unmaps::Nothing => {}
    }
    real_dlclose(handle)
}

/// The C library's `dlclose()`, with the caller's area unregistered (see [`dlclose`]) and
/// rseqrt's plain reads of loaded objects held back (`loaded`).
fn real_dlclose(handle: *mut c_void) -> Result<libc::c_int, Errno> {
    let next = crate::real::DLCLOSE.get();
    if next == 0 {
        return Err(Errno(libc::ENOSYS));
    }
    // SAFETY: the C library's dlclose has this signature.
    let f: unsafe extern "C" fn(*mut c_void) -> libc::c_int = unsafe { core::mem::transmute(next) };
    let _unloading = crate::loaded::UnloadGuard::new();
    // SAFETY: the C library's dlclose, called with the caller's handle.
    Ok(crate::registration::with_own_area_unregistered(|| unsafe { f(handle) }))
}

/// One `rseqrt_dlclose()` at a time from its link-map walk to the end of its real `dlclose()`.
/// The walk leaves out objects that still have an open handle (`opencount`); another close
/// through rseqrt could bring such a count to 0 before this one's real `dlclose()`, which would
/// then unmap the object unguarded (when this close's object alone kept it, through a relocation
/// dependency). Recursive, for destructors that call `dlclose()`. A thread that finds it held
/// for more than [`CLOSE_WAIT_NS`] goes on without it and trusts no open count: it may hold
/// glibc's loader lock (a constructor or destructor that closes a handle) while the holder waits
/// for that lock in its real `dlclose()`; the count can then change under the holder (README,
/// "What `dlclose()` may unmap"). Closes that bypass rseqrt (glibc's own, or a plain `dlclose()`
/// where only `librseqrt.so` is linked) are not excluded either.
struct CloseLock {
    held: bool,
    /// The calling thread's thread pointer (the owner's, when `held`).
    me: usize,
}

/// The holder's thread pointer (no system call, unlike its id; a raw `clone()` thread that shares
/// its parent's counts as its parent), 0 when free.
static CLOSE_OWNER: AtomicUsize = AtomicUsize::new(0);
static CLOSE_DEPTH: AtomicU32 = AtomicU32::new(0);
const CLOSE_WAIT_NS: u64 = 50_000_000;

impl CloseLock {
    fn acquire() -> CloseLock {
        let me = crate::arch::thread_pointer();
        if CLOSE_OWNER.load(Acquire) == me {
            CLOSE_DEPTH.fetch_add(1, Relaxed);
            return CloseLock { held: true, me };
        }
        let mut give_up = None;
        loop {
            if CLOSE_OWNER.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
                CLOSE_DEPTH.store(1, Relaxed);
                return CloseLock { held: true, me };
            }
            // The clock only once the lock is found held.
            let now = crate::platform::monotonic_ns();
            if now >= *give_up.get_or_insert(now.saturating_add(CLOSE_WAIT_NS)) {
                return CloseLock { held: false, me };
            }
            crate::platform::sched_yield();
        }
    }

}

impl Drop for CloseLock {
    fn drop(&mut self) {
        if self.held && CLOSE_OWNER.load(Relaxed) == self.me && CLOSE_DEPTH.fetch_sub(1, Relaxed) == 1 {
            CLOSE_OWNER.store(0, Release);
        }
    }
}

/// In a `fork()` child: the holder of the [`CloseLock`], if any, was another thread.
pub fn after_fork_child() {
    CLOSE_DEPTH.store(0, Relaxed);
    CLOSE_OWNER.store(0, Release);
}
