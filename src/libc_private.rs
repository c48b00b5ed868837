//! Facts about glibc's threads that glibc publishes for debuggers (libthread_db) as
//! `GLIBC_PRIVATE` data: its count of the threads it created (`__nptl_nthreads`), its two lists
//! of thread descriptors (`_dl_stack_used` and `_dl_stack_user` in ld.so's `_rtld_global`), and
//! where a descriptor keeps its list link and the kernel thread id (`_thread_db_pthread_list`,
//! `_thread_db_pthread_tid`: bit size, count, byte offset). Looked up once by the constructor;
//! absent (another C library, a future glibc that drops them) they read as unknown and callers
//! take their slower general path.
//!
//! The lists change while other threads start and exit, and an exited thread's stack may be
//! unmapped, so they are walked with `process_vm_readv` (a read of memory that is gone fails
//! instead of faulting) and for a bounded number of steps. A node unlinked under the walk can
//! lead anywhere (into glibc's stack cache, whose head is no descriptor), so a node counts only
//! if it looks like a live descriptor: its header's `tcb` and `self` words point to itself (as
//! glibc sets them for every thread) and its thread id is the one sought. An exited thread's
//! descriptor has id 0 (the kernel clears it), so only the live thread's own descriptor matches.
//!
//! Guarantees: after [`init`], every function is async-signal-safe, malloc-free and lock-free.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ffi::CStr;
use core::mem::{offset_of, size_of, MaybeUninit};
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize, Ordering::{Relaxed, SeqCst}};

static THREAD_COUNT: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
/// Byte offset of the thread id in glibc's thread descriptor, or -1.
static TID_OFFSET: AtomicIsize = AtomicIsize::new(-1);
/// Addresses of the heads of glibc's two thread lists (0: unknown).
static LIST_HEADS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Byte offset of the list link in glibc's thread descriptor.
static LINK_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// Descriptors found by earlier walks, by thread id: a hint, used only after the same check as
/// a node of a walk ([`is_descriptor_of`]).
const HINTS: usize = 16;
static HINT_TID: [AtomicI32; HINTS] = [const { AtomicI32::new(0) }; HINTS];
static HINT_DESCRIPTOR: [AtomicUsize; HINTS] = [const { AtomicUsize::new(0) }; HINTS];
/// Steps a walk of one list may take beyond glibc's thread count: a node unlinked while the walk
/// stands on it leads into glibc's stack cache, a ring that never returns to the list's head.
const WALK_SLACK: usize = 64;

fn lookup(libc_handle: *mut libc::c_void, name: &CStr) -> *mut libc::c_void {
    // SAFETY: a handle from dlopen and NUL-terminated names.
    unsafe { libc::dlvsym(libc_handle, name.as_ptr(), c"GLIBC_PRIVATE".as_ptr()) }
}

/// Finds both (constructor time: `dlopen`/`dlvsym` are not async-signal-safe). The thread-id
/// offset is used only if it gives the calling thread's id.
pub fn init() {
    // SAFETY: RTLD_NOLOAD only takes a reference to the loaded C library; never closed.
    let libc_handle = unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if libc_handle.is_null() {
        return;
    }
    THREAD_COUNT.store(lookup(libc_handle, c"__nptl_nthreads").cast(), SeqCst);
    let field = |name: &CStr, want_bits: u32| -> Option<usize> {
        let desc = lookup(libc_handle, name).cast::<[u32; 3]>();
        if desc.is_null() {
            return None;
        }
        // SAFETY: libthread_db's descriptor: three 32-bit words (bits, count, offset).
        let [bits, count, offset] = unsafe { desc.read() };
        (bits == want_bits && count == 1 && offset < 1 << 16).then_some(offset as usize)
    };
    if let Some(offset) = field(c"_thread_db_pthread_tid", 32) {
        TID_OFFSET.store(offset as isize, Relaxed);
        if current_tid() != Some(platform::gettid()) {
            TID_OFFSET.store(-1, Relaxed);
            return;
        }
    }
    // A list link is two pointers (128 bits). `_rtld_global` is ld.so's, a dependency of libc.
    let rtld_global = lookup(libc_handle, c"_rtld_global") as usize;
    let (Some(used), Some(user), Some(link)) = (
        field(c"_thread_db_rtld_global__dl_stack_used", 128),
        field(c"_thread_db_rtld_global__dl_stack_user", 128),
        field(c"_thread_db_pthread_list", 128),
    ) else {
        return;
    };
    if rtld_global == 0 {
        return;
    }
    LINK_OFFSET.store(link, Relaxed);
    LIST_HEADS[0].store(rtld_global + used, Relaxed);
    LIST_HEADS[1].store(rtld_global + user, Relaxed);
    // The calling thread must be found, at its own descriptor.
    let mut own = None;
    find_descriptors(&[platform::gettid()], |_, pd| own = Some(pd));
    if own != Some(pthread_self_addr()) {
        LIST_HEADS[0].store(0, Relaxed);
        LIST_HEADS[1].store(0, Relaxed);
    }
}

fn pthread_self_addr() -> usize {
    // SAFETY: pthread_self has no precondition.
    unsafe { libc::pthread_self() as usize }
}

/// Reads a `T` at `addr` of this process, or `None` if that memory is not mapped.
fn peek<T: Copy>(addr: usize) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: `v` is a live local of `size_of::<T>()` bytes.
    match unsafe { platform::read_own_memory(v.as_mut_ptr().cast(), addr, size_of::<T>()) } {
        // SAFETY: the kernel filled all of `v`; the `T`s used here (integers) are valid for any
        // bytes.
        Ok(n) if n == size_of::<T>() => Some(unsafe { v.assume_init() }),
        _ => None,
    }
}

/// Whether `pd` is glibc's descriptor of the live thread `tid`: its header's `tcb` and `self`
/// words (at 0 and 16 on x86-64) point to it, and it holds the id.
fn is_descriptor_of(pd: usize, tid: i32) -> bool {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return false };
    pd.checked_add(tid_offset).and_then(peek::<i32>) == Some(tid)
        && peek::<usize>(pd) == Some(pd)
        && pd.checked_add(16).and_then(peek::<usize>) == Some(pd)
}

/// Calls `found(i, descriptor)` for each `tids[i]` found in glibc's thread lists: from the hints,
/// then, for the rest, in one walk of each list. Threads not found (not started by glibc, gone,
/// lists unknown) are not reported.
fn find_descriptors(tids: &[i32], mut found: impl FnMut(usize, usize)) {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return };
    let hint_of = |tid: i32| tid as u32 as usize % HINTS;
    let mut missing = 0;
    for (i, &tid) in tids.iter().enumerate() {
        let h = hint_of(tid);
        let pd = HINT_DESCRIPTOR[h].load(Relaxed);
        if HINT_TID[h].load(Relaxed) == tid && is_descriptor_of(pd, tid) {
            found(i, pd);
        } else {
            missing += 1;
        }
    }
    if missing == 0 {
        return;
    }
    let mut found = |i: usize, pd: usize| {
        HINT_TID[hint_of(tids[i])].store(tids[i], Relaxed);
        HINT_DESCRIPTOR[hint_of(tids[i])].store(pd, Relaxed);
        found(i, pd)
    };
    let link = LINK_OFFSET.load(Relaxed);
    let bound = thread_count().unwrap_or(0).saturating_add(WALK_SLACK);
    for head in &LIST_HEADS {
        let head = head.load(Relaxed);
        if head == 0 {
            return;
        }
        // `next` is the first word of a link.
        let mut node = peek::<usize>(head);
        for _ in 0..bound {
            let Some(at) = node.filter(|&n| n != head && n >= link) else { break };
            let pd = at - link;
            // One read for the id; the header is checked only for a candidate.
            if let Some(t) = pd.checked_add(tid_offset).and_then(peek::<i32>).filter(|&t| t > 0) {
                if let Some(i) = tids.iter().position(|&want| want == t) {
                    if is_descriptor_of(pd, t) {
                        found(i, pd);
                    }
                }
            }
            node = peek::<usize>(at);
        }
    }
}

/// For each `tids[i]` that glibc started and that is still alive, `values[i]` becomes its
/// `rseq_cs`, read from glibc's area in its descriptor (the descriptor is its thread pointer on
/// x86-64; the area is at glibc's `__rseq_offset`, which is rseqrt's
/// [`area_offset`](crate::state::area_offset) where glibc owns registration). A value is kept
/// only if the descriptor still names the thread after the read. Others stay `None`.
pub fn libc_threads_rseq_cs(tids: &[i32], values: &mut [Option<u64>]) {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return };
    let area = crate::state::area_offset();
    find_descriptors(tids, |i, pd| {
        let field = pd.checked_add_signed(area).and_then(|a| a.checked_add(offset_of!(RseqrtArea, rseq_cs)));
        if let Some(value) = field.and_then(peek::<u64>) {
            // Still its descriptor (a descriptor reused by a new thread holds the new id).
            if pd.checked_add(tid_offset).and_then(peek::<i32>) == Some(tids[i]) {
                values[i] = Some(value);
            }
        }
    });
}

/// glibc's count of its live threads (incremented by `pthread_create()` before the clone,
/// decremented by the exiting thread after its TSD destructors), or `None`.
pub fn thread_count() -> Option<usize> {
    let count = THREAD_COUNT.load(SeqCst);
    // SAFETY: glibc's `unsigned int __nptl_nthreads`, a static of libc.so.6 (never unloaded),
    // which glibc changes only with atomic instructions.
    (!count.is_null()).then(|| unsafe { (*count).load(SeqCst) } as usize)
}

/// The calling thread's id as glibc's descriptor holds it (no system call), or `None`. Only for
/// threads glibc started: its descriptor is what `pthread_self()` points to.
pub fn current_tid() -> Option<i32> {
    let offset = TID_OFFSET.load(Relaxed);
    if offset < 0 {
        return None;
    }
    // SAFETY: `pthread_self()` is the calling glibc thread's descriptor, which holds the id at
    // `offset` (libthread_db's descriptor said so, and `init` checked it on the thread that ran the constructor).
    let tid = unsafe { (libc::pthread_self() as *const u8).offset(offset).cast::<i32>().read_volatile() };
    Some(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID_AT: usize = 720;
    const LINK_AT: usize = 704;

    /// A fake thread descriptor: `tcb` and `self` point to it, the id at `TID_AT`, a list link at
    /// `LINK_AT` (next, prev).
    #[repr(C, align(64))]
    struct Fake([u8; 1024]);

    impl Fake {
        fn new() -> Box<Fake> {
            Box::new(Fake([0; 1024]))
        }
        fn addr(&self) -> usize {
            self as *const Fake as usize
        }
        fn put(&mut self, at: usize, v: usize) {
            self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        fn descriptor(&mut self, tid: i32) {
            let me = self.addr();
            self.put(0, me);
            self.put(16, me);
            self.0[TID_AT..TID_AT + 4].copy_from_slice(&tid.to_ne_bytes());
        }
        fn link(&self) -> usize {
            self.addr() + LINK_AT
        }
        fn set_next(&mut self, next: usize) {
            self.put(LINK_AT, next);
        }
    }

    /// A walk that a torn read sends from the list into another ring (glibc's stack cache,
    /// whose head is no descriptor) neither takes that ring's head for a thread, even where its
    /// words read as the id sought, nor walks forever; the threads on the list are found.
    #[test]
    fn a_walk_torn_into_another_ring_finds_only_real_descriptors() {
        let mut head = Fake::new(); // the list head: only its `next` word (at LINK_AT) is used
        let (mut a, mut b) = (Fake::new(), Fake::new());
        a.descriptor(101);
        b.descriptor(102);
        // The other ring's head: at "descriptor + TID_AT" it holds 103, but it is no descriptor.
        let mut cache = Fake::new();
        cache.0[TID_AT..TID_AT + 4].copy_from_slice(&103i32.to_ne_bytes());
        head.set_next(a.link());
        a.set_next(b.link());
        b.set_next(cache.link()); // b was moved to the other ring while the walk stood on it
        cache.set_next(cache.link()); // a ring that never comes back to the list's head

        TID_OFFSET.store(TID_AT as isize, Relaxed);
        LINK_OFFSET.store(LINK_AT, Relaxed);
        LIST_HEADS[0].store(head.link(), Relaxed);
        LIST_HEADS[1].store(0, Relaxed);
        let mut seen = [None; 3];
        find_descriptors(&[101, 102, 103], |i, pd| seen[i] = Some(pd));
        assert_eq!(seen, [Some(a.addr()), Some(b.addr()), None]);
        // Found again from the hints, which are checked the same way.
        let mut again = [None; 2];
        find_descriptors(&[101, 102], |i, pd| again[i] = Some(pd));
        assert_eq!(again, [Some(a.addr()), Some(b.addr())]);
        // A descriptor reused by another thread no longer matches its hint.
        b.descriptor(104);
        let mut reused = [None; 1];
        find_descriptors(&[102], |i, pd| reused[i] = Some(pd));
        assert_eq!(reused, [None]);
        LIST_HEADS[0].store(0, Relaxed);
    }
}
