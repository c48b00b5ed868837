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
//! lead anywhere (into glibc's stack cache, whose head is no descriptor), so a walk counts only
//! if it went round its list consistently, and a node only if it looks like a live descriptor:
//! its header's `tcb` and `self` words point to itself (as glibc sets them for every thread) and
//! its thread id is the one sought. An exited thread's descriptor has id 0 (the kernel clears
//! it), so only the live thread's own descriptor matches.
//!
//! Guarantees: after [`init`], every function is async-signal-safe, malloc-free and lock-free.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ffi::CStr;
use core::mem::offset_of;
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize, Ordering::{Relaxed, SeqCst}};

static THREAD_COUNT: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
/// Byte offset of the thread id in glibc's thread descriptor, or -1.
static TID_OFFSET: AtomicIsize = AtomicIsize::new(-1);
/// glibc's `start_thread`, the function each thread its `pthread_create` starts runs first, where
/// a clone through rseqrt's interposer can start it (before glibc 2.34: libpthread calls libc's
/// `__clone`); 0: unknown.
static GLIBC_START_THREAD: AtomicUsize = AtomicUsize::new(0);
/// Addresses of the heads of glibc's two thread lists (0: unknown).
static LIST_HEADS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Byte offset of the list link in glibc's thread descriptor.
static LINK_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// Descriptors found by earlier walks, by thread id: a hint, used only after the same check as
/// a node of a walk ([`is_descriptor_of`]). Forgotten in a `fork()` child ([`after_fork`]), where
/// glibc drops descriptors from its lists without clearing their ids, and in any other process
/// than the one the registry describes (`registry::describes_another_process`).
const HINTS: usize = 16;
static HINT_TID: [AtomicI32; HINTS] = [const { AtomicI32::new(0) }; HINTS];
static HINT_DESCRIPTOR: [AtomicUsize; HINTS] = [const { AtomicUsize::new(0) }; HINTS];
/// Steps a walk of one list may take.
const MAX_WALK: usize = 1 << 16;
/// `found` entry of a thread id that matched two descriptors: trusted for neither.
const AMBIGUOUS: usize = usize::MAX;

/// The C library's own definition of `name` at `version` (`dlvsym` on the loaded libc.so.6: never
/// an interposer's, nor a PLT slot), as an address; 0 if it has none. Constructor time only:
/// `dlopen` and `dlvsym` are not async-signal-safe.
pub fn libc_symbol(name: &CStr, version: &CStr) -> usize {
    // SAFETY: NUL-terminated names; RTLD_NOLOAD only takes a reference to the C library already
    // loaded, and the handle is never closed.
    unsafe {
        let libc_handle = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if libc_handle.is_null() {
            return 0;
        }
        libc::dlvsym(libc_handle, name.as_ptr(), version.as_ptr()) as usize
    }
}

/// Where glibc keeps the facts: addresses of its thread count, of libthread_db's two
/// descriptors (thread id, list link), and of the heads of its two thread lists.
struct Facts {
    count: usize,
    tid_desc: usize,
    link_desc: usize,
    heads: [usize; 2],
}

/// glibc 2.34 and later: `GLIBC_PRIVATE` symbols of libc.so.6; the list heads are fields of
/// ld.so's `_rtld_global`, at offsets that libthread_db's descriptors give.
fn facts_from_libc() -> Option<Facts> {
    let sym = |name: &CStr| libc_symbol(name, c"GLIBC_PRIVATE");
    let rtld_global = sym(c"_rtld_global");
    let used = descriptor_offset(sym(c"_thread_db_rtld_global__dl_stack_used"), 128);
    let user = descriptor_offset(sym(c"_thread_db_rtld_global__dl_stack_user"), 128);
    let heads = match (rtld_global, used, user) {
        (0, _, _) | (_, None, _) | (_, _, None) => [0, 0],
        (g, Some(used), Some(user)) => [g + used, g + user],
    };
    Some(Facts {
        count: sym(c"__nptl_nthreads"),
        tid_desc: sym(c"_thread_db_pthread_tid"),
        link_desc: sym(c"_thread_db_pthread_list"),
        heads,
    })
    .filter(|f| f.count != 0 || f.tid_desc != 0)
}

/// glibc before 2.34: the same facts are local symbols of libpthread.so.0, found in its
/// `.symtab` (see `symtab`), and the list heads are its own `stack_used` and `__stack_user`.
fn facts_from_libpthread() -> Option<Facts> {
    let mut a = [0usize; 6];
    let names: [&[u8]; 6] =
        [b"__nptl_nthreads", b"_thread_db_pthread_tid", b"_thread_db_pthread_list", b"stack_used", b"__stack_user", b"start_thread"];
    let found = crate::symtab::lookup(b"/libpthread.so.0", &names, &mut a);
    GLIBC_START_THREAD.store(a[5], Relaxed);
    found.then_some(Facts {
        count: a[0],
        tid_desc: a[1],
        link_desc: a[2],
        heads: [a[3], a[4]],
    })
}

/// The byte offset a libthread_db descriptor (three 32-bit words: bits, count, offset) at
/// `desc` gives, if it describes one field of `want_bits`.
fn descriptor_offset(desc: usize, want_bits: u32) -> Option<usize> {
    let [bits, count, offset] = platform::read_own::<[u32; 3]>(desc).filter(|_| desc != 0)?;
    (bits == want_bits && count == 1 && offset < 1 << 16).then_some(offset as usize)
}

/// Looks them all up (constructor time: `dlopen`/`dlvsym` and the file read are not
/// async-signal-safe). The thread-id offset is used only if it gives the calling thread's id,
/// and the lists only if a walk finds the calling thread at its own descriptor.
pub fn init() {
    let Some(facts) = facts_from_libc().or_else(facts_from_libpthread) else { return };
    THREAD_COUNT.store(facts.count as *mut AtomicU32, SeqCst);
    if let Some(offset) = descriptor_offset(facts.tid_desc, 32) {
        TID_OFFSET.store(offset as isize, Relaxed);
        if current_tid() != Some(platform::gettid()) {
            TID_OFFSET.store(-1, Relaxed);
            return;
        }
    }
    // A list link is two pointers (128 bits).
    let Some(link) = descriptor_offset(facts.link_desc, 128) else { return };
    if facts.heads.contains(&0) {
        return;
    }
    LINK_OFFSET.store(link, Relaxed);
    LIST_HEADS[0].store(facts.heads[0], Relaxed);
    LIST_HEADS[1].store(facts.heads[1], Relaxed);
    // The calling thread must be found, at its own descriptor.
    let mut own = [0usize];
    find_descriptors(&[platform::gettid()], &mut own);
    if own[0] != pthread_self_addr() {
        LIST_HEADS[0].store(0, Relaxed);
        LIST_HEADS[1].store(0, Relaxed);
    }
}

fn pthread_self_addr() -> usize {
    // SAFETY: pthread_self has no precondition.
    unsafe { libc::pthread_self() as usize }
}

/// Whether `start`, the function a `CLONE_THREAD` clone starts, is glibc's `start_thread`: the
/// thread is one of glibc's `pthread_create`, which glibc counts. Async-signal-safe: one load.
#[cfg(feature = "c-library")]
pub fn is_glibc_thread_start(start: usize) -> bool {
    start != 0 && start == GLIBC_START_THREAD.load(Relaxed)
}

/// Whether `pd` is glibc's descriptor of the live thread `tid`: its header's `tcb` and `self`
/// words (at 0 and 16 on x86-64) point to it, and it holds the id.
fn is_descriptor_of(pd: usize, tid: i32) -> bool {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return false };
    pd.checked_add(tid_offset).and_then(platform::read_own::<i32>) == Some(tid)
        && platform::read_own::<usize>(pd) == Some(pd)
        && pd.checked_add(16).and_then(platform::read_own::<usize>) == Some(pd)
}

/// Sets `found[i]` to the descriptor of each `tids[i]` found in glibc's thread lists (0: not
/// found): from the hints, then, for the rest, in one walk of each list. A walk is trusted only
/// if it went round its list consistently: every node's `prev` names the node the walk came from,
/// and it got back to the head. A node moved to another list (glibc's stack cache) under the walk
/// breaks that, and then nothing the walk found counts.
fn find_descriptors(tids: &[i32], found: &mut [usize]) {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return };
    let hint_of = |tid: i32| tid as u32 as usize % HINTS;
    // A child of `_Fork()` or of a raw fork runs no fork handlers and keeps the parent's
    // descriptors, ids intact, on glibc's lists: no hint taken in the parent counts there.
    if crate::registry::describes_another_process() {
        after_fork();
    }
    let mut missing = false;
    for (i, &tid) in tids.iter().enumerate() {
        let h = hint_of(tid);
        let pd = HINT_DESCRIPTOR[h].load(Relaxed);
        found[i] = if HINT_TID[h].load(Relaxed) == tid && is_descriptor_of(pd, tid) { pd } else { 0 };
        missing |= found[i] == 0;
    }
    if !missing {
        return;
    }
    let mut walked = [0usize; 64];
    let walked = &mut walked[..tids.len().min(64)];
    let link = LINK_OFFSET.load(Relaxed);
    for head in &LIST_HEADS {
        if !walk_list(head.load(Relaxed), link, tid_offset, tids, walked) {
            return;
        }
    }
    for (i, &pd) in walked.iter().enumerate() {
        if found[i] == 0 && pd != 0 && pd != AMBIGUOUS {
            found[i] = pd;
            HINT_TID[hint_of(tids[i])].store(tids[i], Relaxed);
            HINT_DESCRIPTOR[hint_of(tids[i])].store(pd, Relaxed);
        }
    }
}

/// One walk of the list at `head` (see [`find_descriptors`]); `false` if it was not consistent
/// or the lists are unknown.
fn walk_list(head: usize, link: usize, tid_offset: usize, tids: &[i32], found: &mut [usize]) -> bool {
    if head == 0 {
        return false;
    }
    // A link is (next, prev).
    let Some(mut at) = platform::read_own::<usize>(head) else { return false };
    let mut from = head;
    for _ in 0..MAX_WALK {
        if at == head {
            // Round: the head's `prev` must be the last node.
            return head.checked_add(8).and_then(platform::read_own::<usize>) == Some(from);
        }
        let Some(pd) = at.checked_sub(link) else { return false };
        let Some([next, prev]) = platform::read_own::<[usize; 2]>(at) else { return false };
        if prev != from {
            return false;
        }
        if let Some(t) = pd.checked_add(tid_offset).and_then(platform::read_own::<i32>).filter(|&t| t > 0) {
            if let Some(i) = tids.iter().position(|&want| want == t) {
                if i < found.len() && is_descriptor_of(pd, t) {
                    found[i] = if found[i] == 0 { pd } else { AMBIGUOUS };
                }
            }
        }
        from = at;
        at = next;
    }
    false
}

/// For each `tids[i]` that glibc started and that is still alive, `values[i]` becomes its
/// `rseq_cs`, read from glibc's area in its descriptor (the descriptor is its thread pointer on
/// x86-64; the area is at glibc's `__rseq_offset`, which is rseqrt's
/// [`area_offset`](crate::state::area_offset) where glibc owns registration). A value is kept
/// only if the descriptor still names the thread after the read. Others stay `None`. At most 64
/// ids.
pub fn libc_threads_rseq_cs(tids: &[i32], values: &mut [Option<u64>]) {
    let Ok(tid_offset) = usize::try_from(TID_OFFSET.load(Relaxed)) else { return };
    let area = crate::state::area_offset();
    let mut found = [0usize; 64];
    let n = tids.len().min(64);
    find_descriptors(&tids[..n], &mut found[..n]);
    for i in 0..n {
        let pd = found[i];
        if pd == 0 {
            continue;
        }
        let field = pd.checked_add_signed(area).and_then(|a| a.checked_add(offset_of!(RseqrtArea, rseq_cs)));
        if let Some(value) = field.and_then(platform::read_own::<u64>) {
            // Still its descriptor (a descriptor reused by a new thread holds the new id).
            if pd.checked_add(tid_offset).and_then(platform::read_own::<i32>) == Some(tids[i]) {
                values[i] = Some(value);
            }
        }
    }
}

/// In a `fork()` child: forget the hints (see [`HINT_TID`]).
pub fn after_fork() {
    for tid in &HINT_TID {
        tid.store(0, Relaxed);
    }
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

    /// On every glibc of the matrix the facts are found for this very process: from libc.so.6
    /// (2.34+) or from libpthread.so.0's symbol table (before 2.34), and a walk finds the
    /// calling thread at its own descriptor.
    #[test]
    fn facts_found_for_this_glibc() {
        init();
        let count = thread_count();
        let mut own = [0usize];
        find_descriptors(&[platform::gettid()], &mut own);
        println!("glibc thread count {count:?}, tid offset {}, own descriptor {:#x}", TID_OFFSET.load(Relaxed), own[0]);
        assert!(count.is_some_and(|n| n >= 1), "glibc's thread count not found");
        assert!(TID_OFFSET.load(Relaxed) > 0, "the thread-id offset not found or not confirmed");
        assert_eq!(own[0], pthread_self_addr(), "the calling thread not found in glibc's lists");
    }

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

    /// Points the walk at the list `head` and at `empty` (an empty list), forgets the hints.
    fn point(head: usize, empty: &mut Fake) -> [usize; 3] {
        empty.set_next(empty.link());
        set_prev(empty, empty.link());
        TID_OFFSET.store(TID_AT as isize, Relaxed);
        LINK_OFFSET.store(LINK_AT, Relaxed);
        LIST_HEADS[0].store(head, Relaxed);
        LIST_HEADS[1].store(empty.link(), Relaxed);
        after_fork();
        [0; 3]
    }

    fn set_prev(f: &mut Fake, prev: usize) {
        f.put(LINK_AT + 8, prev);
    }

    /// On a consistent list (every node's `prev` names the node before it, and the walk gets
    /// back to the head) the threads are found, a word that merely holds a sought id is not, and
    /// a descriptor reused by another thread no longer matches its hint. A walk that a node moved
    /// to another ring (glibc's stack cache) under it leads astray finds nothing: not even what
    /// it saw before the tear.
    #[test]
    fn only_consistent_walks_find_descriptors() {
        let mut head = Fake::new(); // only its link (at LINK_AT) is used
        let (mut a, mut b) = (Fake::new(), Fake::new());
        a.descriptor(101);
        b.descriptor(102);
        let mut cache = Fake::new(); // holds 103 where a descriptor holds its id, but is none
        cache.0[TID_AT..TID_AT + 4].copy_from_slice(&103i32.to_ne_bytes());
        head.set_next(a.link());
        a.set_next(b.link());
        b.set_next(head.link());
        set_prev(&mut a, head.link());
        set_prev(&mut b, a.link());
        set_prev(&mut head, b.link());

        let mut empty = Fake::new();
        let mut found = point(head.link(), &mut empty);
        find_descriptors(&[101, 102, 103], &mut found);
        assert_eq!(found, [a.addr(), b.addr(), 0]);
        // From the hints; a reused descriptor (another id) does not match.
        b.descriptor(104);
        let mut again = [0; 2];
        find_descriptors(&[101, 102], &mut again);
        assert_eq!(again, [a.addr(), 0]);

        // b moved to the cache ring while the walk stood on a: b's prev is the cache's head, and
        // the ring also holds d, descriptor-shaped with a live-looking id (a detached thread
        // still exiting, or a descriptor glibc dropped from its lists in a fork child).
        b.descriptor(102);
        let mut d = Fake::new();
        d.descriptor(103);
        b.set_next(d.link());
        set_prev(&mut b, cache.link());
        d.set_next(cache.link());
        set_prev(&mut d, b.link());
        cache.set_next(b.link());
        set_prev(&mut cache, d.link());
        let mut torn = point(head.link(), &mut empty);
        find_descriptors(&[101, 102, 103], &mut torn);
        assert_eq!(torn, [0, 0, 0]);
        LIST_HEADS[0].store(0, Relaxed);
        LIST_HEADS[1].store(0, Relaxed);
    }
}
