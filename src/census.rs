//! Does the process have a thread that the registry does not know? Answered from two counters,
//! without a system call, whenever the answer is a sure "no"; otherwise the barrier takes the
//! slow path (`barrier::unknown`: count the kernel's tasks, list them, signal the unknown ones).
//!
//! The counters: the registry's LIVE count and exit count, and glibc's own count of the threads
//! it created (`libc_private::thread_count`). glibc increments
//! it in `pthread_create()` before the clone and decrements it in the exiting thread after the
//! TSD destructors; rseqrt's LIVE count goes up in the new thread (after glibc's increment) and
//! down in rseqrt's last TSD destructor (before glibc's decrement). So every LIVE thread is
//! counted by glibc, and a glibc thread rseqrt does not know shows as glibc's count exceeding the
//! LIVE count. Reading the two at different instants could hide it behind a known thread that
//! exits in between; the registry's exit count, read before and after, accounts for those (see
//! [`all_threads_known`]). A thread that starts in between only makes glibc's count larger: a
//! needless slow path, never a missed thread.
//!
//! Threads glibc does not count are made visible another way: `clone()` (rseqrt's interposer)
//! and [`rseqrt_register_current_thread`](crate::register_current_thread) mark the process, and
//! from then on every barrier takes the slow path. A thread created by a raw `clone` system call
//! (not glibc's `clone()`) that registers its own rseq area is not seen (README).
//!
//! Guarantees: async-signal-safe, malloc-free, lock-free (loads and one store).

use crate::{libc_private, registry};
use core::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Set once a thread may exist that glibc does not count and the registry does not know.
static UNCOUNTED_THREADS: AtomicBool = AtomicBool::new(false);

/// From now on the process may have threads that neither glibc nor the registry counts.
pub fn note_uncounted_thread() {
    UNCOUNTED_THREADS.store(true, SeqCst);
}

/// `true` only when every thread of the process is LIVE in the registry (or was created after
/// the first load below, and so holds no `rseq_cs` from before the barrier began).
///
/// Why the exit count makes it sound: a known thread counted LIVE by the first read that leaves
/// before glibc's count is read bumps the exit count before it lowers the LIVE count and before
/// glibc's decrement (its program order; all accesses are sequentially consistent, and glibc's
/// decrement is a locked instruction), so the second read of the exit count sees it and the
/// comparison allows for it.
pub fn all_threads_known() -> bool {
    // Without rseqrt's `clone()` interposer (the Rust-only build), raw clones cannot be noticed.
    if !cfg!(feature = "c-library") || UNCOUNTED_THREADS.load(SeqCst) {
        return false;
    }
    let exits_before = registry::exits();
    let live = registry::known_threads();
    let Some(libc_threads) = libc_private::thread_count() else { return false };
    let exits_after = registry::exits();
    libc_threads + (exits_after - exits_before) <= live
}

/// Called by rseqrt's `clone()` interposer (`arch`) with the caller's arguments saved: notes that
/// an uncounted thread may now exist and returns the C library's `clone()` to jump to (or a stub
/// that fails with ENOSYS when there is none). Async-signal-safe once the constructor has run
/// (before it, the first call resolves the entry with `dlsym`).
#[cfg(feature = "c-library")]
pub extern "C" fn clone_target() -> usize {
    note_uncounted_thread();
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
