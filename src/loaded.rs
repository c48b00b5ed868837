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
//! `process_vm_readv`, and kept in [`KNOWN`]. An entry is keyed by what `_dl_find_object()`
//! reports: the link map, the span and the unwinding data. An object loaded later at the same
//! address with the same link map address matches only if its span and its unwinding data sit at
//! the same places too, that is, with the same layout (a reload of the same file).
//!
//! An unload waits for readers at most [`UNLOAD_WAIT_NS`] (2 s): a reader that never leaves (a
//! handler that interrupted it and `siglongjmp`ed away, a `_Fork()` child of a thread that was
//! reading) then turns the plain loads off for the rest of the process, which costs speed only.
//! A reader that is still in after 2 s without having left (its thread got no CPU for that long)
//! would read memory the unload then frees: the limit trades that against a hang.
//!
//! Not covered (README, "How the barrier works"): an object unloaded by a `dlclose()` that
//! bypasses rseqrt (glibc's own closes of NSS and gconv modules, the cleanup of a failed
//! `dlopen()`, a plain `dlclose()` where only `librseqrt.so` is linked), or whose segments the
//! program unmaps itself, while a barrier reads a descriptor there: glibc unmaps an object before
//! `_dl_find_object()` stops reporting it. Without rseqrt, a thread holding that descriptor would
//! be killed at its next preemption; with it, the barrier's thread may fault first.
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

/// The object containing `addr`.
fn find_object(addr: usize) -> Option<Object> {
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
    // An object glibc is removing can be reported with no link map and an empty span.
    if out.link_map == 0 || out.map_start >= out.map_end {
        return None;
    }
    Some(Object { map: out.link_map, start: out.map_start, stop: out.map_end, eh_frame: out.eh_frame })
}

/// A loaded object as `_dl_find_object()` reports it: its link map, its span, and its unwinding
/// data (which tells apart two objects loaded one after the other at the same address).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Object {
    map: usize,
    start: usize,
    stop: usize,
    eh_frame: usize,
}

/// Reads the descriptor at `addr` if it lies in a readable segment of a loaded object; `None`
/// (read it another way) where it does not, where that cannot be told, or while rseqrt unloads.
pub fn read_descriptor(addr: usize) -> Option<rseq_cs> {
    with_descriptor(addr, |_, cs| cs)
}

/// Whether the descriptor at `addr`, its code and its abort signature all lie in one loaded
/// object (or in `permanent` memory) that `stays` says the coming unload leaves loaded. `stays` is
/// called with the object's link map while rseqrt's unloads wait, so the map can be read.
pub fn refers_only_within_object(addr: usize, stays: impl FnOnce(*const LinkMap) -> bool) -> bool {
    with_descriptor(addr, |object, cs| {
        let lasts = |&(a, b): &(usize, usize)| (object.start <= a && b <= object.stop) || crate::permanent::holds(a, b - a);
        crate::abi::touched_ranges(&cs).iter().all(lasts) && stays(object.map as *const LinkMap)
    })
    .unwrap_or(false)
}

/// `f` of the object holding the descriptor at `addr` and the descriptor (a plain load), while
/// rseqrt's unloads wait; `None` where the descriptor does not lie in a readable segment of a
/// loaded object, where that cannot be told, or while rseqrt unloads.
fn with_descriptor<R>(addr: usize, f: impl FnOnce(&Object, rseq_cs) -> R) -> Option<R> {
    let end = addr.checked_add(size_of::<rseq_cs>())?;
    if FIND_OBJECT.load(Relaxed) == 0 {
        return None;
    }
    let _reader = Reader::enter()?;
    let object = find_object(addr)?;
    if end > object.stop || !segments_hold(&object, addr, end) {
        return None;
    }
    // SAFETY: the range lies inside a readable segment of an object loaded when
    // `_dl_find_object` answered; rseqrt's unloads wait while this reader is in (for up to
    // `UNLOAD_WAIT_NS`; see the module for that limit and for the unloads that bypass rseqrt);
    // the kernel does not require alignment, nor does this.
    let cs = unsafe { core::ptr::read_unaligned(addr as *const rseq_cs) };
    Some(f(&object, cs))
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

/// How long an unload waits for readers before it turns the plain loads off (see the module). A
/// reader is a few loads long, but its thread may wait for a CPU: on an overloaded machine that
/// can take a while, so this is long.
const UNLOAD_WAIT_NS: u64 = 2_000_000_000;

impl UnloadGuard {
    pub fn new() -> UnloadGuard {
        UNLOADS.fetch_add(1, SeqCst);
        // Readers are a few loads long and never wait: yield, then sleep in growing steps (a
        // reader of lower priority on this CPU may need it), until those in flight are out. Once
        // the plain loads are off, no reader enters again and a count left behind is ignored.
        let (mut give_up, mut spins, mut pause_ns) = (None, 0u32, 1_000u64);
        while READERS.load(SeqCst) != 0 && FIND_OBJECT.load(SeqCst) != 0 {
            let now = platform::monotonic_ns();
            if now >= *give_up.get_or_insert(now.saturating_add(UNLOAD_WAIT_NS)) {
                turn_off();
                break;
            }
            if spins < 64 {
                spins += 1;
                platform::sched_yield();
            } else {
                platform::sleep_ns(pause_ns);
                pause_ns = (pause_ns * 2).min(1_000_000);
            }
        }
        UnloadGuard
    }
}

/// No more plain loads in this process: later readers find no `_dl_find_object`. Called when a
/// reader has stayed in for [`UNLOAD_WAIT_NS`], which is taken to mean that it left without
/// saying so (see the module).
fn turn_off() {
    FIND_OBJECT.store(0, SeqCst);
}

impl Drop for UnloadGuard {
    fn drop(&mut self) {
        UNLOADS.fetch_sub(1, SeqCst);
    }
}

/// Objects whose readable segments are known.
const OBJECTS: usize = 16;
const SEGMENTS: usize = 6;
/// Objects with more program headers than this are not learnt (their descriptors are read with
/// `process_vm_readv`).
const MAX_PHDRS: usize = 16;

/// One object's readable `PT_LOAD` segments (none: its layout could not be learnt, which is
/// remembered too); `map` 0 when unused. `seq` is even when stable and odd while written, and
/// only grows: readers copy an entry and check that `seq` did not change.
struct Known {
    seq: AtomicU64,
    map: AtomicUsize,
    start: AtomicUsize,
    stop: AtomicUsize,
    eh_frame: AtomicUsize,
    segs: [(AtomicUsize, AtomicUsize); SEGMENTS],
}

static KNOWN: [Known; OBJECTS] = [const {
    Known {
        seq: AtomicU64::new(0),
        map: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        stop: AtomicUsize::new(0),
        eh_frame: AtomicUsize::new(0),
        segs: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SEGMENTS],
    }
}; OBJECTS];
/// Taken by a writer of [`KNOWN`] (a reader learning an object): a try-lock.
static WRITING: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether `[addr, end)` lies inside one readable segment of `object` (learning them if new).
/// Called by readers only, so no unload runs meanwhile.
fn segments_hold(object: &Object, addr: usize, end: usize) -> bool {
    let inside = |(a, b): (usize, usize)| a < b && a <= addr && end <= b;
    for k in &KNOWN {
        let s1 = k.seq.load(Acquire);
        if s1 % 2 == 1 || k.map.load(Relaxed) != object.map {
            continue;
        }
        let same = k.start.load(Relaxed) == object.start && k.stop.load(Relaxed) == object.stop && k.eh_frame.load(Relaxed) == object.eh_frame;
        let held = k.segs.iter().any(|(a, b)| inside((a.load(Relaxed), b.load(Relaxed))));
        fence(Acquire);
        if k.seq.load(Relaxed) == s1 && same {
            return held;
        }
    }
    let segs = learn(object.start, object.stop).unwrap_or([(0, 0); SEGMENTS]);
    remember(object, &segs);
    segs.iter().any(|&s| inside(s))
}

/// The readable segments of the object spanning `[start, stop)`, from its program headers (read
/// with `process_vm_readv`: two system calls, once per object). Only for the usual layout: the
/// first `PT_LOAD` at file offset and address 0 (so the ELF header is at the span's start) with
/// the program headers in its file image; `None` otherwise.
fn learn(start: usize, stop: usize) -> Option<[(usize, usize); SEGMENTS]> {
    const PHDR: usize = size_of::<libc::Elf64_Phdr>();
    let ehdr: libc::Elf64_Ehdr = platform::read_own(start)?;
    let (phoff, phnum) = (ehdr.e_phoff as usize, ehdr.e_phnum as usize);
    if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_phentsize as usize != PHDR || phnum > MAX_PHDRS {
        return None;
    }
    let mut phdrs: [libc::Elf64_Phdr; MAX_PHDRS] = platform::zeroed();
    platform::read_own_into(&mut phdrs[..phnum], start.checked_add(phoff)?)?;
    let mut loads = phdrs[..phnum].iter().filter(|ph| ph.p_type == libc::PT_LOAD);
    let first = loads.clone().next()?;
    if first.p_offset != 0 || first.p_vaddr != 0 || phoff.checked_add(phnum * PHDR)? > first.p_filesz as usize {
        return None; // the header, or the program headers, are not where this reads them
    }
    let mut segs = [(0usize, 0usize); SEGMENTS];
    for (n, ph) in loads.by_ref().filter(|ph| ph.p_flags & libc::PF_R != 0).enumerate() {
        let a = start.checked_add(ph.p_vaddr as usize)?;
        let b = a.checked_add(ph.p_memsz as usize)?.min(stop);
        *segs.get_mut(n)? = (a, b);
    }
    Some(segs)
}

/// Writes one entry of [`KNOWN`]; the caller holds [`WRITING`].
fn write_entry(k: &Known, object: Option<&Object>, segs: &[(usize, usize); SEGMENTS]) {
    // Odd while written, whatever a writer that never finished left (a fork child's).
    let odd = k.seq.load(Relaxed) | 1;
    k.seq.store(odd, Relaxed);
    fence(Release);
    let o = object.copied().unwrap_or(Object { map: 0, start: 0, stop: 0, eh_frame: 0 });
    k.map.store(o.map, Relaxed);
    k.start.store(o.start, Relaxed);
    k.stop.store(o.stop, Relaxed);
    k.eh_frame.store(o.eh_frame, Relaxed);
    for ((a, b), &(x, y)) in k.segs.iter().zip(segs) {
        a.store(x, Relaxed);
        b.store(y, Relaxed);
    }
    k.seq.store(odd + 1, Release);
}

/// Records an object's segments; skipped when another writer is at work (the next barrier learns
/// them again).
fn remember(object: &Object, segs: &[(usize, usize); SEGMENTS]) {
    if WRITING.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
        return;
    }
    write_entry(&KNOWN[NEXT.fetch_add(1, Relaxed) % OBJECTS], Some(object), segs);
    WRITING.store(0, Release);
}

/// In a `fork()` child only the forking thread exists: readers, unloads and writers of other
/// threads never finish there. (A `_Fork()` child runs no handler: there the bounded wait of
/// [`UnloadGuard`] turns the plain loads off instead, and an entry left odd is never used.)
pub fn after_fork_child() {
    READERS.store(0, Relaxed);
    UNLOADS.store(0, Relaxed);
    // The child has the parent's mappings, so finished entries stay true; one a writer had begun
    // is emptied.
    for k in KNOWN.iter().filter(|k| k.seq.load(Relaxed) % 2 == 1) {
        write_entry(k, None, &[(0, 0); SEGMENTS]);
    }
    WRITING.store(0, Release);
}
