//! Entry points of `librseqrt_preload.so`, the `LD_PRELOAD` shim: the Makefile links that object
//! from the same archive as `librseqrt.so` and exports these under the C library's names
//! (`--defsym dlclose=rseqrt_interpose_dlclose`, ...), so an unmodified program's calls that take
//! memory away from under an rseq descriptor run the barrier first:
//!
//! * `dlclose()`: as `rseqrt_dlclose()`;
//! * `munmap()`: as `rseqrt_munmap()`;
//! * `mremap()` that moves (`MREMAP_MAYMOVE`, `MREMAP_FIXED`) or shrinks: the barrier over the old
//!   range (or its freed tail), and over the target of `MREMAP_FIXED`;
//! * `mmap(MAP_FIXED)`, which replaces whatever was mapped there: the barrier over that range;
//! * `madvise()` with an advice that discards the contents (`MADV_DONTNEED`, `MADV_FREE`,
//!   `MADV_REMOVE`, ...), `mprotect()` that takes read access away, `shmdt()`: as
//!   `rseqrt_madvise()`, `rseqrt_mprotect()`, `rseqrt_shmdt()` (see `discard`, `shm`); other
//!   advice and protections go straight to the kernel.
//!
//! The shim is the whole library (same SONAME, `librseqrt.so.0`), so a program that also links
//! rseqrt gets the preloaded copy for its dependency: one registry per process, and, being first
//! in lookup order, its exports interpose glibc's. `librseqrt.so` exports none of these names.
//! The memory calls themselves are raw system calls: no allocation, no lock, no recursion into
//! an allocator that itself calls `mmap()`.

use crate::barrier::{self, Range};
use crate::capi;
use crate::unmap::page_range;
use crate::platform::{self, Errno};
use core::ffi::{c_int, c_void};

/// `dlclose(3)`, preceded by the barrier over every object it may unmap.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_dlclose(handle: *mut c_void) -> c_int {
    // SAFETY: the caller's dlclose() contract, forwarded.
    unsafe { capi::rseqrt_dlclose(handle) }
}

/// `munmap(2)`, preceded by the barrier over the range.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: the caller's munmap() contract, forwarded.
    unsafe { capi::rseqrt_munmap(addr, len) }
}

/// Runs the barrier over `ranges`; on failure sets errno and returns `MAP_FAILED`.
fn barrier_or_fail(ranges: &[Range]) -> Option<*mut c_void> {
    if ranges.iter().all(|r| r.start >= r.end) {
        return None; // nothing is freed (an mremap that grows in place)
    }
    barrier::clear(ranges, 0).err().map(|Errno(e)| {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = e };
        libc::MAP_FAILED
    })
}

/// The result of a raw memory system call as the C library returns it: the address, or
/// `MAP_FAILED` with errno.
fn map_result(r: platform::SysResult<usize>) -> *mut c_void {
    match r {
        Ok(addr) => addr as *mut c_void,
        Err(Errno(e)) => {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = e };
            libc::MAP_FAILED
        }
    }
}

/// `mremap(2)`. It is variadic in C; on x86-64 the optional fifth argument arrives in the same
/// register as a fixed fifth parameter, and the kernel reads it only with `MREMAP_FIXED`.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_mremap(old: *mut c_void, old_size: usize, new_size: usize, flags: c_int, new_address: *mut c_void) -> *mut c_void {
    let old = old as usize;
    // The kernel works in whole pages: a shrink frees from the page after the new end.
    let (old_pages, new_pages) = (page_range(old, old_size), page_range(old, new_size));
    let freed = if flags & (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) != 0 {
        old_pages
    } else {
        Range { start: new_pages.end.min(old_pages.end), end: old_pages.end }
    };
    let target = if flags & libc::MREMAP_FIXED != 0 { page_range(new_address as usize, new_size) } else { freed };
    if let Some(failed) = barrier_or_fail(&[freed, target]) {
        return failed;
    }
    // SAFETY: the caller's mremap() contract, forwarded.
    map_result(unsafe { platform::mremap(old, old_size, new_size, flags, new_address as usize) })
}

/// `mmap64(2)`: the same call on x86-64.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_mmap64(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: libc::off_t) -> *mut c_void {
    // SAFETY: the caller's mmap() contract, forwarded.
    unsafe { rseqrt_interpose_mmap(addr, len, prot, flags, fd, offset) }
}

/// `mmap(2)`; with `MAP_FIXED` (which replaces existing mappings) the barrier runs first.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: libc::off_t) -> *mut c_void {
    if flags & libc::MAP_FIXED != 0 && flags & libc::MAP_FIXED_NOREPLACE == 0 {
        if let Some(failed) = barrier_or_fail(&[page_range(addr as usize, len)]) {
            return failed;
        }
    }
    // SAFETY: the caller's mmap() contract, forwarded.
    map_result(unsafe { platform::mmap(addr as usize, len, prot, flags, fd, offset) })
}

/// `madvise(2)`, preceded by the barrier when the advice discards the range's contents.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    // SAFETY: the caller's madvise() contract, forwarded.
    unsafe { capi::rseqrt_madvise(addr, len, advice) }
}

/// `mprotect(2)`, preceded by the barrier when `prot` takes read access away.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    // SAFETY: the caller's mprotect() contract, forwarded.
    unsafe { capi::rseqrt_mprotect(addr, len, prot) }
}

/// `shmdt(2)`, preceded by the barrier over the segment it detaches.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_shmdt(addr: *const c_void) -> c_int {
    // SAFETY: the caller's shmdt() contract, forwarded.
    unsafe { capi::rseqrt_shmdt(addr) }
}
