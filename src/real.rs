//! The C library's own definitions of the functions rseqrt interposes, found with
//! `dlsym(RTLD_NEXT, ...)` (the next definition after rseqrt's in lookup order).
//!
//! Resolved once by the constructor (`dlsym` is not async-signal-safe); later lookups are one
//! relaxed atomic load. A call that arrives before the constructor (another library's constructor
//! creating a thread) resolves on the spot.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A lazily resolved next definition of `name` (NUL-terminated).
pub struct Next {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Next {
    pub const fn new(name: &'static [u8]) -> Self {
        Next { name, addr: AtomicUsize::new(0) }
    }

    /// The address of the next definition, or 0 if there is none.
    pub fn get(&self) -> usize {
        match self.addr.load(Relaxed) {
            0 => self.resolve(),
            a => a,
        }
    }

    /// Looks the symbol up now (call from the constructor, not from a signal handler).
    pub fn resolve(&self) -> usize {
        // SAFETY: `name` is NUL-terminated; dlsym has no other precondition.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        self.addr.store(a, Relaxed);
        a
    }
}

pub static PTHREAD_CREATE: Next = Next::new(b"pthread_create\0");
pub static PTHREAD_SIGMASK: Next = Next::new(b"pthread_sigmask\0");
pub static SIGPROCMASK: Next = Next::new(b"sigprocmask\0");
pub static SIGACTION: Next = Next::new(b"sigaction\0");
pub static SIGWAIT: Next = Next::new(b"sigwait\0");
pub static SIGWAITINFO: Next = Next::new(b"sigwaitinfo\0");
pub static SIGTIMEDWAIT: Next = Next::new(b"sigtimedwait\0");
pub static DLCLOSE: Next = Next::new(b"dlclose\0");

/// Resolves every entry (constructor time).
pub fn resolve_all() {
    for n in [&PTHREAD_CREATE, &PTHREAD_SIGMASK, &SIGPROCMASK, &SIGACTION, &SIGWAIT, &SIGWAITINFO, &SIGTIMEDWAIT, &DLCLOSE] {
        n.resolve();
    }
}
