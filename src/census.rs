//! Does the process have a thread that the registry does not know? Answered from two counts,
//! without a system call, whenever the answer is a sure "no"; otherwise the barrier takes the
//! slow path (`barrier::unknown`: count the kernel's tasks, list them, signal the unknown ones).
//!
//! The counts: the registry's LIVE count, and glibc's own count of the threads it started
//! (`libc_private::thread_count`). glibc increments its count in `pthread_create()` before the
//! clone and decrements it in the exiting thread after the TSD destructors. rseqrt's LIVE count
//! goes up in the new thread (after glibc's increment) and down in rseqrt's last TSD destructor
//! (before glibc's decrement). So a thread counted LIVE is counted by glibc too, and a thread
//! glibc started behind rseqrt's back shows as glibc's count exceeding the LIVE count. See
//! [`all_threads_known`] for why reading the two at different instants is sound.
//!
//! Threads glibc does not count are made visible another way: rseqrt's `clone()` and `__clone()`
//! (for `CLONE_THREAD`) and [`rseqrt_register_current_thread`](crate::register_current_thread)
//! mark the process, and so does the constructor when the program's `clone()` is not rseqrt's
//! (rseqrt loaded by `dlopen`, or after the C library in lookup order). From then on every
//! barrier takes the slow path. A thread started by a raw `clone` system call that registers its
//! own rseq area is not seen (README).
//!
//! Guarantees: async-signal-safe, malloc-free, lock-free (loads and one store).

use crate::registry::{self, ReadGuard};
use crate::libc_private;
use core::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Set once a thread may exist that glibc does not count and the registry does not know.
static UNCOUNTED_THREADS: AtomicBool = AtomicBool::new(false);

/// From now on the process may have threads that neither glibc nor the registry counts.
pub fn note_uncounted_thread() {
    UNCOUNTED_THREADS.store(true, SeqCst);
}

/// `true` only when every thread of the process that existed when `guard` was taken is LIVE in
/// the registry.
///
/// Why it is sound, with all accesses sequentially consistent (glibc's are locked instructions):
/// * A thread LIVE at the LIVE load is still counted by glibc at the glibc load. It counted
///   before it went LIVE. If it leaves the registry after the LIVE load, its `registry::release`
///   sees `guard`'s ticket and waits for this barrier to end before it returns, and only then
///   does glibc decrement. So glibc's count is at least the LIVE count plus every live thread
///   glibc started that the registry does not know.
/// * The mark is read last. A thread that marks the process (a raw clone's parent, an explicit
///   registration) does so before the thread it stands for can be LIVE or registered. So if the
///   mark is unseen, that thread did not count in the LIVE load, and it started after the
///   barrier began.
pub fn all_threads_known(_guard: &ReadGuard) -> bool {
    // Without rseqrt's `clone()` interposer (the Rust-only build), raw clones cannot be noticed.
    if !cfg!(feature = "c-library") {
        return false;
    }
    let live = registry::known_threads();
    let Some(libc_threads) = libc_private::thread_count() else { return false };
    libc_threads <= live && !UNCOUNTED_THREADS.load(SeqCst)
}

/// Marks the process unless the program's `clone()` and `__clone()` are rseqrt's (constructor
/// time: `dlsym` is not async-signal-safe).
#[cfg(feature = "c-library")]
pub fn init() {
    for (name, ours) in [(c"clone", crate::arch::clone_entries().0), (c"__clone", crate::arch::clone_entries().1)] {
        // SAFETY: a NUL-terminated name.
        let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
        if global != ours {
            note_uncounted_thread();
        }
    }
}

/// The Rust-only build interposes nothing; [`all_threads_known`] is then always `false`.
#[cfg(not(feature = "c-library"))]
pub fn init() {}

/// Called by rseqrt's `clone()`/`__clone()` interposer (`arch`) with the caller's first three
/// arguments: for a `CLONE_THREAD` clone, notes that an uncounted thread may now exist; returns
/// the C library's `clone()` to jump to (or a stub that fails with ENOSYS when there is none).
/// Async-signal-safe once the constructor has run (before it, the first call resolves the entry
/// with `dlsym`).
#[cfg(feature = "c-library")]
pub extern "C" fn clone_target(_start: usize, _stack: usize, flags: libc::c_int) -> usize {
    if flags & libc::CLONE_THREAD != 0 {
        note_uncounted_thread();
    }
    match crate::real::CLONE.get() {
        0 => clone_unavailable as extern "C" fn() -> libc::c_int as usize,
        next => next,
    }
}

/// `clone()` when the C library has none: -1 with errno ENOSYS.
#[cfg(feature = "c-library")]
extern "C" fn clone_unavailable() -> libc::c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}
