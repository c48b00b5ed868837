//! The C library's own definitions of the functions rseqrt interposes: the next definition after
//! rseqrt's in lookup order (`dlsym(RTLD_NEXT, ...)`), or, when rseqrt comes after the C library
//! in that order (it was loaded as a dependency of a later object, or by `dlopen`), the C
//! library's own (`dlsym` on `libc.so.6`, and before glibc 2.34, where `pthread_*` and `dl*`
//! live in libraries of their own, on `libpthread.so.0` and `libdl.so.2`).
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
        // SAFETY: `name` is NUL-terminated; dlsym and dlopen(RTLD_NOLOAD) have no other
        // precondition, and the handles are never closed (RTLD_NOLOAD only adds a reference).
        let mut a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        for library in [c"libc.so.6", c"libpthread.so.0", c"libdl.so.2"] {
            if a != 0 {
                break;
            }
            // SAFETY: as above; RTLD_NOLOAD never loads a library that is not there already.
            a = unsafe {
                let handle = libc::dlopen(library.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
                if handle.is_null() { handle } else { libc::dlsym(handle, self.name.as_ptr().cast()) }
            } as usize;
        }
        self.addr.store(a, Relaxed);
        a
    }
}

pub static PTHREAD_CREATE: Next = Next::new(b"pthread_create\0");
pub static THRD_CREATE: Next = Next::new(b"thrd_create\0");
pub static PTHREAD_SIGMASK: Next = Next::new(b"pthread_sigmask\0");
pub static SIGPROCMASK: Next = Next::new(b"sigprocmask\0");
pub static SIGACTION: Next = Next::new(b"sigaction\0");
pub static SIGNAL: Next = Next::new(b"signal\0");
pub static SIGWAIT: Next = Next::new(b"sigwait\0");
pub static SIGWAITINFO: Next = Next::new(b"sigwaitinfo\0");
pub static SIGTIMEDWAIT: Next = Next::new(b"sigtimedwait\0");
pub static DLCLOSE: Next = Next::new(b"dlclose\0");
pub static SIGSUSPEND: Next = Next::new(b"sigsuspend\0");
pub static PPOLL: Next = Next::new(b"ppoll\0");
pub static PSELECT: Next = Next::new(b"pselect\0");
pub static EPOLL_PWAIT: Next = Next::new(b"epoll_pwait\0");
pub static EPOLL_PWAIT2: Next = Next::new(b"epoll_pwait2\0");
pub static PTHREAD_ATTR_SETSIGMASK_NP: Next = Next::new(b"pthread_attr_setsigmask_np\0");
pub static CLONE: Next = Next::new(b"clone\0");
pub static DLOPEN: Next = Next::new(b"dlopen\0");

/// Resolves every entry (constructor time).
pub fn resolve_all() {
    for n in [
        &PTHREAD_CREATE, &THRD_CREATE, &PTHREAD_SIGMASK, &SIGPROCMASK, &SIGACTION, &SIGNAL, &SIGWAIT, &SIGWAITINFO, &SIGTIMEDWAIT, &DLCLOSE,
        &SIGSUSPEND, &PPOLL, &PSELECT, &EPOLL_PWAIT, &EPOLL_PWAIT2, &PTHREAD_ATTR_SETSIGMASK_NP, &CLONE, &DLOPEN,
    ] {
        n.resolve();
    }
}
