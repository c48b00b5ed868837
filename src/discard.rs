//! `madvise()` and `mprotect()` that run the barrier first when they take a descriptor's memory
//! away without unmapping it. The memory stays mapped, but the kernel's next read of a stale
//! `rseq_cs` there fails or reads something else:
//!
//! * `madvise()` with an advice that discards the pages' contents. Anonymous private memory and
//!   shared memory then read as zeros (a file's private mapping as the file's bytes): a
//!   descriptor reads `start_ip` 0 and `abort_ip` 0, the kernel reads the signature at address
//!   -4 and kills the process. [`discards`] lists them. `MADV_FREE` keeps the contents until
//!   the kernel reclaims the page, which it may do at any moment after the call (memory
//!   pressure, or `MADV_PAGEOUT`), and then the page reads as zeros: so it gets the barrier too.
//!   Every other advice (`MADV_WILLNEED`, `MADV_COLD`, `MADV_PAGEOUT`, ...) keeps the contents
//!   and goes straight to the kernel.
//! * `mprotect()` to a protection without `PROT_READ`: the kernel's read fails. On x86-64 a page
//!   cannot be write-only (`PROT_WRITE` alone stays readable), but `PROT_EXEC` alone is
//!   execute-only where the CPU has protection keys; every `prot` without `PROT_READ` gets the
//!   barrier, which is right on every architecture. `PROT_GROWSDOWN` (`PROT_GROWSUP`) extends
//!   the change to the start (end) of the mapping, beyond what the caller named: the barrier
//!   then covers every `rseq_cs`.
//!
//! Calls the kernel would reject (an unaligned address, a length that overflows) or that change
//! nothing (length 0) go straight to it too, so the error is the kernel's and costs no barrier.
//!
//! Guarantees: allocation-free and lock-free as `munmap` (see `barrier`): allocators call
//! `madvise()` with their own locks held when they give pages back.

use crate::barrier;
use crate::platform::{self, Errno};
use crate::unmap::page_range;

/// `MADV_DONTNEED_LOCKED` (Linux 5.18): `MADV_DONTNEED` that also drops locked pages.
const MADV_DONTNEED_LOCKED: i32 = 24;
/// `MADV_GUARD_INSTALL` (Linux 6.13): the pages are zapped and every access faults.
const MADV_GUARD_INSTALL: i32 = 102;

/// Whether `advice` takes the contents away: afterwards a descriptor in the range reads as
/// zeros (or the backing file's bytes), or cannot be read at all.
pub fn discards(advice: i32) -> bool {
    matches!(
        advice,
        libc::MADV_DONTNEED
            | MADV_DONTNEED_LOCKED
            | libc::MADV_FREE
            | libc::MADV_REMOVE
            | MADV_GUARD_INSTALL
            | libc::MADV_HWPOISON
    )
}

/// `madvise(addr, len, advice)` after the barrier over the range's pages when `advice`
/// discards their contents; when the barrier fails, nothing is done.
///
/// # Safety
/// As for `madvise(2)`: with an advice that discards, nothing may rely on the range's contents.
pub unsafe fn madvise(addr: usize, len: usize, advice: i32) -> Result<(), Errno> {
    if discards(advice) && crate::unmap::kernel_acts_on(addr, len) {
        barrier::clear(&[page_range(addr, len)], 0)?;
    }
    // SAFETY: the caller's request (see the function's contract).
    unsafe { platform::madvise(addr, len, advice) }
}

/// `mprotect(addr, len, prot)` after the barrier over the range's pages when `prot` takes read
/// access away; when the barrier fails, nothing is changed.
///
/// # Safety
/// As for `mprotect(2)`: nothing may access the range in a way `prot` no longer allows.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> Result<(), Errno> {
    if prot & libc::PROT_READ == 0 && crate::unmap::kernel_acts_on(addr, len) {
        if prot & (libc::PROT_GROWSDOWN | libc::PROT_GROWSUP) != 0 {
            barrier::clear_all(0)?;
        } else {
            barrier::clear(&[page_range(addr, len)], 0)?;
        }
    }
    // SAFETY: the caller's request (see the function's contract).
    unsafe { platform::mprotect(addr, len, prot) }
}
