//! The C interface, `include/rseqrt.h` (generated from this file by cbindgen).
//! Specs: the kernel's rseq ABI <https://docs.kernel.org/userspace-api/rseq.html>, glibc's
//! <https://sourceware.org/glibc/manual/latest/html_node/Restartable-Sequences.html>.
//!
//! Every entry point returns the C convention of the call it mirrors: 0 or -1 with `errno`
//! (through [`cvt`]). None can panic: the library is built with `panic = "abort"` and these
//! functions only forward to code that reports errors as values.

use crate::barrier::{self, Range};
use crate::platform::Errno;
use crate::{discard, shm, unmap, RseqrtArea};
use core::ffi::{c_int, c_uint, c_void};

/// rseq is unavailable: the kernel lacks it, a filter refuses it, or registration failed.
pub const RSEQRT_OWNER_NONE: c_int = 0;
/// The C library (glibc 2.35+) registered every thread; rseqrt adopts its areas.
pub const RSEQRT_OWNER_LIBC: c_int = 1;
/// rseqrt registered its own area for each thread.
pub const RSEQRT_OWNER_SELF: c_int = 2;
/// `rseqrt_clear()` flag: the caller may be a signal handler. The barrier then uses only
/// async-signal-safe steps, and fails with EAGAIN where it would need glibc's thread broadcast.
pub const RSEQRT_CLEAR_SIGNAL_SAFE: c_uint = 1;
const _: () = assert!(RSEQRT_CLEAR_SIGNAL_SAFE == barrier::SIGNAL_SAFE);

/// Turns a result into the C convention: the value, or -1 with `errno` set.
fn cvt(result: Result<(), Errno>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(Errno(e)) => {
            // SAFETY: errno is thread-local storage owned by the C library.
            unsafe { *libc::__errno_location() = e };
            -1
        }
    }
}

/// Who registered this process's rseq areas: `RSEQRT_OWNER_NONE`, `RSEQRT_OWNER_LIBC` or
/// `RSEQRT_OWNER_SELF`. Async-signal-safe.
///
/// Spec: <https://sourceware.org/glibc/manual/latest/html_node/Restartable-Sequences.html>
#[no_mangle]
pub extern "C" fn rseqrt_owner() -> c_int {
    crate::owner() as c_int
}

/// Why `rseqrt_owner()` is what it is, as a static NUL-terminated sentence: which C library
/// registers, or why nobody does (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, `RSEQRT_REGISTER=0`, a
/// late load, no rseq system call). Never NULL. Async-signal-safe.
///
/// Spec: <https://sourceware.org/glibc/manual/latest/html_node/Tunables.html>
#[no_mangle]
pub extern "C" fn rseqrt_owner_reason() -> *const core::ffi::c_char {
    crate::owner_reason_cstr().as_ptr()
}

/// Registers the calling thread's rseq area (for threads not started with `pthread_create()`)
/// and enters the thread in rseqrt's registry. Returns 0, or -1 with the kernel's errno
/// (EBUSY: already registered, still entered in the registry; ENOSYS: no rseq).
///
/// Spec: <https://docs.kernel.org/userspace-api/rseq.html>
#[no_mangle]
pub extern "C" fn rseqrt_register_current_thread() -> c_int {
    cvt(crate::register_current_thread())
}

/// Unregisters the calling thread's rseq area and removes the thread from the registry.
/// Returns 0, or -1 with the kernel's errno (EINVAL: not registered).
///
/// Spec: <https://docs.kernel.org/userspace-api/rseq.html>
#[no_mangle]
pub extern "C" fn rseqrt_unregister_current_thread() -> c_int {
    cvt(crate::unregister_current_thread())
}

/// The calling thread's rseq area (thread pointer + `__rseq_offset`), or NULL when rseq is
/// unavailable. Async-signal-safe.
///
/// Spec: <https://sourceware.org/glibc/manual/latest/html_node/Restartable-Sequences.html>
#[no_mangle]
pub extern "C" fn rseqrt_current_area() -> *mut RseqrtArea {
    crate::area().map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

/// The length each thread's area is registered with (the `rseq_len` argument of `rseq(2)`).
///
/// Spec: <https://docs.kernel.org/userspace-api/rseq.html>
#[no_mangle]
pub extern "C" fn rseqrt_area_length() -> c_uint {
    crate::area_length()
}

/// The CPU the calling thread runs on, like `sched_getcpu()`: the area's `cpu_id` when the
/// thread is registered (one TLS load), else `getcpu(2)`. -1 with errno on failure.
///
/// Spec: <https://man7.org/linux/man-pages/man3/sched_getcpu.3.html>
#[no_mangle]
pub extern "C" fn rseqrt_current_cpu() -> c_int {
    crate::current_cpu().map_or_else(|e| cvt(Err(e)), |cpu| cpu as c_int)
}

/// The NUMA node of the calling thread's CPU (`node_id` when the kernel fills it, else
/// `getcpu(2)`). -1 with errno on failure.
///
/// Spec: <https://man7.org/linux/man-pages/man2/getcpu.2.html>
#[no_mangle]
pub extern "C" fn rseqrt_current_node() -> c_int {
    crate::current_node().map_or_else(|e| cvt(Err(e)), |node| node as c_int)
}

/// The calling thread's memory-map concurrency id (`mm_cid`), or -1 with ENOSYS when the
/// kernel does not provide it or the thread is not registered.
///
/// Spec: <https://docs.kernel.org/userspace-api/rseq.html>
#[no_mangle]
pub extern "C" fn rseqrt_current_mm_cid() -> c_int {
    crate::current_mm_cid().map_or_else(|e| cvt(Err(e)), |cid| cid as c_int)
}

/// The real-time signal rseqrt reserves for its barrier (set with `RSEQRT_SIGNAL`), or 0. When it
/// is the highest (the default) or the lowest of glibc's range, `SIGRTMAX` (or `SIGRTMIN`) leaves
/// it out, as glibc leaves out its own; a program that names its number still handles, raises and
/// receives it (rseqrt tells its own requests apart).
///
/// Spec: <https://man7.org/linux/man-pages/man7/signal.7.html>
#[no_mangle]
pub extern "C" fn rseqrt_signal() -> c_int {
    crate::reserved_signal()
}

/// The rseq-clear barrier over `[addr, addr + len)`: on return 0, no thread holds a stale
/// `rseq_cs` that refers to the range (its descriptor, its code, or its abort signature lies
/// there): each one that did when the barrier looked has been changed by the thread's own
/// kernel, so no kernel read of such a descriptor is in flight or left to come; critical
/// sections in the range that were running are aborted. A thread that enters one of the range's
/// critical sections during the call is still using the memory, which must not be freed then.
/// -1 with errno: EINVAL (unknown flag, or `len` 0), ETIMEDOUT (a thread did not respond within
/// `RSEQRT_TIMEOUT_MS`), EAGAIN (with `RSEQRT_CLEAR_SIGNAL_SAFE`, a thread could only be reached
/// unsafely).
///
/// Spec: the "rseq-clear" barrier proposed on LKML, January 2020 (README, "How the barrier works")
#[no_mangle]
pub extern "C" fn rseqrt_clear(addr: *const c_void, len: usize, flags: c_uint) -> c_int {
    if len == 0 {
        return cvt(Err(Errno(libc::EINVAL)));
    }
    cvt(barrier::clear(&[Range::new(addr as usize, len)], flags))
}

/// The barrier for every thread and every `rseq_cs`: when it returns 0, every thread's
/// `rseq_cs` is 0 or has been looked at by its own kernel since the call began.
///
/// Spec: the "rseq-clear" barrier proposed on LKML, January 2020 (README, "How the barrier works")
#[no_mangle]
pub extern "C" fn rseqrt_clear_all(flags: c_uint) -> c_int {
    cvt(barrier::clear_all(flags))
}

/// `dlclose()` after the barrier over every object it may unmap (the handle's object and its
/// dependencies). Returns what `dlclose()` returns (`dlerror()` describes its errors); -1 with
/// errno, and the handle still open, when the barrier fails.
///
/// Spec: <https://man7.org/linux/man-pages/man3/dlclose.3.html>
///
/// # Safety
/// As for `dlclose(3)`: `handle` must not be used afterwards, nor anything the object defined.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_dlclose(handle: *mut c_void) -> c_int {
    unmap::dlclose(handle).unwrap_or_else(|e| cvt(Err(e)))
}

/// `munmap()` after the barrier over `[addr, addr + len)`. Returns 0, or -1 with errno: EINVAL
/// as `munmap()` gives it (unaligned address, zero length), or the barrier's error, in which
/// case nothing was unmapped. Allocates nothing, and takes no lock unless the barrier needs
/// glibc's broadcast (README).
///
/// Spec: <https://man7.org/linux/man-pages/man2/munmap.2.html>
///
/// # Safety
/// As for `munmap(2)`: nothing may use the range afterwards.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_munmap(addr: *mut c_void, len: usize) -> c_int {
    cvt(unmap::munmap(addr, len))
}

/// `madvise()` after the barrier over the pages of `[addr, addr + len)` when `advice` discards
/// their contents (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_FREE`, `MADV_REMOVE`,
/// `MADV_GUARD_INSTALL`, `MADV_HWPOISON`: a descriptor there would then read as zeros, or not
/// at all); any other advice goes straight to the kernel. Returns 0, or -1 with errno: the
/// kernel's, or the barrier's, in which case nothing was done. Allocates nothing (README).
///
/// Spec: <https://man7.org/linux/man-pages/man2/madvise.2.html>
///
/// # Safety
/// As for `madvise(2)`: with an advice that discards, nothing may rely on the range's contents.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    // SAFETY: the caller's madvise() contract, forwarded.
    cvt(unsafe { discard::madvise(addr as usize, len, advice) })
}

/// `mprotect()` after the barrier over the pages of `[addr, addr + len)` when `prot` lacks
/// `PROT_READ` (the kernel could no longer read a descriptor there); with `PROT_GROWSDOWN` or
/// `PROT_GROWSUP`, which extend the change beyond the range, the barrier covers every
/// `rseq_cs`. Returns 0, or -1 with errno: the kernel's, or the barrier's, in which case the
/// protection is unchanged. Allocates nothing.
///
/// Spec: <https://man7.org/linux/man-pages/man2/mprotect.2.html>
///
/// # Safety
/// As for `mprotect(2)`: nothing may access the range in a way `prot` no longer allows.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    // SAFETY: the caller's mprotect() contract, forwarded.
    cvt(unsafe { discard::mprotect(addr as usize, len, prot) })
}

/// `shmdt()` after the barrier over the System V shared memory segment attached at `addr`
/// (found in `/proc/self/maps`, read without allocating; where it cannot be read, the barrier
/// covers every `rseq_cs`). Returns 0, or -1 with errno: the kernel's (EINVAL: no segment
/// attached there), or the barrier's, in which case the segment stays attached.
///
/// Spec: <https://man7.org/linux/man-pages/man2/shmdt.2.html>
///
/// # Safety
/// As for `shmdt(2)`: nothing may use the segment's memory afterwards.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_shmdt(addr: *const c_void) -> c_int {
    // SAFETY: the caller's shmdt() contract, forwarded.
    cvt(unsafe { shm::shmdt(addr as usize) })
}
