//! Threads the registry does not know: glibc's own helper threads (a `SIGEV_THREAD` timer
//! callback, for instance) are created inside the C library, never pass through rseqrt's
//! `pthread_create`, and block every signal except glibc's internal ones. When glibc owns rseq
//! registration they are registered, so they can hold a stale `rseq_cs`.
//!
//! They are reached the way glibc reaches every thread it created: `setresuid(-1, -1, -1)`
//! changes nothing but makes glibc send its internal SIGSETXID to every one of its threads and
//! wait until each has run the handler. Each delivery makes that thread's own kernel process its
//! `rseq_cs` first, which is the proof the barrier needs.
//!
//! Not in a child of `_Fork()` (or of a raw `fork`, or `vfork()`): no fork handler ran there, so
//! glibc's lists still hold the parent's threads, and the lock glibc takes first
//! (`dl_stack_cache_lock`) stays taken forever if a parent thread held it at the fork (creating
//! or freeing a thread, or in its own `setuid()` broadcast); a parent thread that was being
//! created keeps `setxid_futex` at -1, and glibc waits for it to be cloned. Either way
//! `setresuid()` would wait forever (glibc's `nptl/nptl_setxid.c`). There [`available`] says
//! no, and the barrier goes on signalling until its deadline and fails with ETIMEDOUT, freeing
//! nothing, like any barrier whose threads do not respond. The registry tells that process
//! apart (`registry::describes_another_process`).
//!
//! Guarantees: malloc-free, but NOT async-signal-safe (glibc takes its thread-list lock), so the
//! barrier skips this step, and fails instead, when called with `RSEQRT_CLEAR_SIGNAL_SAFE`.

use crate::platform::Errno;
use crate::registry;

/// Whether glibc's broadcast can finish in this process: not in a child that no fork handler
/// ran in (see the module comment). One system call; asked only when the broadcast is needed.
pub fn available() -> bool {
    !registry::describes_another_process()
}

/// Makes every thread glibc created take a signal and waits until each has.
pub fn reach_every_libc_thread() -> Result<(), Errno> {
    // SAFETY: setresuid with every id unchanged has no effect beyond the broadcast.
    if unsafe { libc::setresuid(u32::MAX, u32::MAX, u32::MAX) } == 0 {
        Ok(())
    } else {
        // SAFETY: errno is thread-local.
        Err(Errno(unsafe { *libc::__errno_location() }))
    }
}
