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
//! Threads this glibc does not count are made visible another way:
//! - rseqrt's `clone()` and `__clone()` (for `CLONE_THREAD`), rseqrt's `dlopen()` with
//!   `RTLD_DEEPBIND` (the object then binds to the C library's `clone()`), and
//!   [`rseqrt_register_current_thread`](crate::register_current_thread) mark the process;
//! - so does the constructor when the program's `clone()`, `__clone()` or `dlopen()` is not
//!   rseqrt's (rseqrt loaded by `dlopen`, or after the C library in lookup order);
//! - a second link-map namespace (`dlmopen`, audit modules) has a C library of its own, whose
//!   threads only the slow path sees.
//!
//! From then on every barrier takes the slow path. Not seen: a thread started by a raw `clone`
//! system call, or by the C library's `clone()` reached some other way (a `dlsym` handle on
//! libc.so.6), that registers its own rseq area (README).
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
/// * The mark is read last. The parent of a raw clone marks the process before the clone, and an
///   explicitly registered thread marks it before it enters the registry. So if the mark is
///   unseen, a raw clone started after the barrier began, and an explicitly registered thread was
///   not counted by the LIVE load.
pub fn all_threads_known(_guard: &ReadGuard) -> bool {
    // Without rseqrt's `clone()` interposer (the Rust-only build), raw clones cannot be noticed.
    if !cfg!(feature = "c-library") {
        return false;
    }
    let live = registry::known_threads();
    let Some(libc_threads) = libc_private::thread_count() else { return false };
    libc_threads <= live && !crate::elf::has_other_namespaces() && !UNCOUNTED_THREADS.load(SeqCst)
}

/// Marks the process unless the program's `clone()`, `__clone()` and `dlopen()` are rseqrt's
/// (constructor time: `dlsym` is not async-signal-safe).
#[cfg(feature = "c-library")]
pub fn init() {
    // Asked of the link map rather than dlsym, which returns a non-PIE program's canonical PLT
    // entry (see `thread::pthread_create_is_ours`).
    for name in [&b"clone"[..], b"__clone", b"dlopen"] {
        if !crate::elf::calls_bind_here(name) {
            note_uncounted_thread();
        }
    }
}

/// The Rust-only build interposes nothing; [`all_threads_known`] is then always `false`.
#[cfg(not(feature = "c-library"))]
pub fn init() {}

/// Called by rseqrt's `clone()`/`__clone()` interposer (`arch`) with the caller's first three
/// arguments: for a `CLONE_THREAD` clone, notes that an uncounted thread may now exist (unless
/// it is glibc's own `pthread_create` at work: before glibc 2.34, libpthread reaches libc's
/// `__clone` through the PLT, so every thread it starts, counted by glibc, passes here); returns
/// the C library's `clone()` to jump to (or a stub that fails with ENOSYS when there is none).
/// Async-signal-safe once the constructor has run (before it, the first call resolves the entry
/// with `dlsym`).
#[cfg(feature = "c-library")]
pub extern "C" fn clone_target(start: usize, _stack: usize, flags: libc::c_int) -> usize {
    if flags & libc::CLONE_THREAD != 0 && !libc_private::is_glibc_thread_start(start) {
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

/// Called by rseqrt's `dlopen()` interposer (`arch`) with the caller's arguments: an object
/// loaded with `RTLD_DEEPBIND` binds to the C library's `clone()`, not rseqrt's, so the process
/// is marked. Returns the C library's `dlopen()` to jump to (or a stub that returns NULL).
/// Async-signal-safe once the constructor has run.
#[cfg(feature = "c-library")]
pub extern "C" fn dlopen_target(_file: usize, mode: libc::c_int) -> usize {
    if mode & libc::RTLD_DEEPBIND != 0 {
        note_uncounted_thread();
    }
    match crate::real::DLOPEN.get() {
        0 => dlopen_unavailable as extern "C" fn() -> *mut libc::c_void as usize,
        next => next,
    }
}

/// `dlopen()` when the C library has none: NULL.
#[cfg(feature = "c-library")]
extern "C" fn dlopen_unavailable() -> *mut libc::c_void {
    core::ptr::null_mut()
}
