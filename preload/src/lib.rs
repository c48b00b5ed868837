//! `librseqrt_preload.so`: `LD_PRELOAD` it into an unmodified program, and every call that takes
//! memory away from under an rseq descriptor runs rseqrt's barrier first:
//!
//! * `dlclose()`: `rseqrt_dlclose()`;
//! * `munmap()`: `rseqrt_munmap()`;
//! * `mremap()` that moves (`MREMAP_MAYMOVE`, `MREMAP_FIXED`) or shrinks: the barrier over the old
//!   range (or its freed tail), and over the target of `MREMAP_FIXED`;
//! * `mmap(MAP_FIXED)`, which replaces whatever was mapped there: the barrier over that range.
//!
//! The barrier and the bookkeeping live in `librseqrt.so` (a dependency of this object), so the
//! process has one registry whether or not the program also links rseqrt. The memory calls
//! themselves are made with `syscall(2)`: no allocation, no lock, and no recursion into an
//! allocator that may itself call `mmap()`.

use core::ffi::{c_int, c_long, c_uint, c_void};

extern "C" {
    fn rseqrt_dlclose(handle: *mut c_void) -> c_int;
    fn rseqrt_munmap(addr: *mut c_void, len: usize) -> c_int;
    fn rseqrt_clear(addr: *const c_void, len: usize, flags: c_uint) -> c_int;
}

/// `dlclose(3)`, made safe for stale `rseq_cs` pointers.
///
/// # Safety
/// Same contract as `dlclose(3)`.
#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    // SAFETY: same contract.
    unsafe { rseqrt_dlclose(handle) }
}

/// `munmap(2)`, made safe for stale `rseq_cs` pointers.
///
/// # Safety
/// Same contract as `munmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { rseqrt_munmap(addr, len) }
}

/// Runs the barrier over `[addr, addr + len)`; `false` (errno set) when it failed.
fn barrier(addr: usize, len: usize) -> bool {
    // SAFETY: the barrier only reads the range's address, never its contents.
    len == 0 || unsafe { rseqrt_clear(addr as *const c_void, len, 0) } == 0
}

/// `mremap(2)`. It is variadic in C; on x86-64 the optional fifth argument arrives in the same
/// register as a fixed fifth parameter, and is read only with `MREMAP_FIXED`.
///
/// # Safety
/// Same contract as `mremap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mremap(old: *mut c_void, old_size: usize, new_size: usize, flags: c_int, new_address: *mut c_void) -> *mut c_void {
    let (old, moves) = (old as usize, flags & (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) != 0);
    let freed = if moves {
        barrier(old, old_size)
    } else {
        new_size >= old_size || barrier(old + new_size, old_size - new_size)
    };
    let target_ok = flags & libc::MREMAP_FIXED == 0 || barrier(new_address as usize, new_size);
    if !(freed && target_ok) {
        return libc::MAP_FAILED;
    }
    // SAFETY: forwarding the caller's arguments to the system call.
    unsafe { libc::syscall(libc::SYS_mremap, old, old_size, new_size, flags as c_long, new_address) as *mut c_void }
}

/// `mmap(2)`; with `MAP_FIXED` the barrier first covers the mapping it may replace.
///
/// # Safety
/// Same contract as `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: libc::off_t) -> *mut c_void {
    let replaces = flags & libc::MAP_FIXED != 0 && flags & libc::MAP_FIXED_NOREPLACE == 0;
    if replaces && !barrier(addr as usize, len) {
        return libc::MAP_FAILED;
    }
    // SAFETY: forwarding the caller's arguments to the system call.
    unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot as c_long, flags as c_long, fd as c_long, offset) as *mut c_void }
}

/// `mmap64(2)`: the same call on x86-64.
///
/// # Safety
/// Same contract as `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: libc::off_t) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}
