//! The process-wide rseq configuration decided at relocation time (see `early`), and the
//! exported glibc variables that mirror it.
//!
//! Written once by the relocation-time resolver (single-threaded: the dynamic linker holds its
//! load lock), possibly downgraded to [`Owner::None`] by the constructor, read everywhere else.
//! All reads are single relaxed atomic loads: async-signal-safe and allocation-free.

use crate::arch;
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicU32, Ordering::Relaxed};

/// Who registered this process's rseq areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Owner {
    /// rseq is unavailable: the kernel lacks it, a filter refuses it, or registration failed.
    None = 0,
    /// The C library (glibc 2.35+) registered every thread; rseqrt adopts its areas.
    Libc = 1,
    /// rseqrt registered its own area for each thread.
    SelfOwned = 2,
}

/// What [`publish`] records.
pub struct Config {
    pub owner: Owner,
    pub offset: isize,
    pub size: u32,
    pub flags: u32,
    pub reg_len: u32,
    pub feature_size: u32,
}

static OWNER: AtomicI32 = AtomicI32::new(Owner::None as i32);
static OFFSET: AtomicIsize = AtomicIsize::new(0);
static REG_LEN: AtomicU32 = AtomicU32::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);

/// Records the configuration and writes rseqrt's definitions of glibc's three variables.
pub fn publish(c: Config) {
    OWNER.store(c.owner as i32, Relaxed);
    OFFSET.store(c.offset, Relaxed);
    REG_LEN.store(c.reg_len, Relaxed);
    FEATURE_SIZE.store(c.feature_size, Relaxed);
    let (offset, size, flags) = arch::export_storage();
    // SAFETY: rseqrt's own definitions (hidden storage in `arch`), written only here, at
    // relocation time, before any other code of the process can read them.
    unsafe {
        offset.write_volatile(c.offset);
        size.write_volatile(c.size);
        flags.write_volatile(c.flags);
    }
}

/// Why an owner that rseqrt would have been is NONE instead (0: rseq itself is unavailable).
static NONE_REASON: AtomicI32 = AtomicI32::new(0);

/// Marks rseq unavailable, for `reason`, when the constructor finds it cannot own registration.
/// rseqrt's own `__rseq_size` becomes 0; an executable that copied it at startup keeps its copy
/// (read-only by then), but there the areas' `cpu_id` reads -2, which consumers check per thread.
pub fn downgrade_to_none(reason: crate::platform::Errno) {
    OWNER.store(Owner::None as i32, Relaxed);
    NONE_REASON.store(reason.0, Relaxed);
    let (_, size, _) = arch::export_storage();
    // SAFETY: rseqrt's own definition, in writable data; nothing else writes it after relocation.
    unsafe { size.write_volatile(0) };
}

/// The errno that explains a downgraded owner, if the owner was downgraded.
pub fn none_reason() -> Option<crate::platform::Errno> {
    match NONE_REASON.load(Relaxed) {
        0 => None,
        e => Some(crate::platform::Errno(e)),
    }
}

pub fn owner() -> Owner {
    match OWNER.load(Relaxed) {
        1 => Owner::Libc,
        2 => Owner::SelfOwned,
        _ => Owner::None,
    }
}

/// Offset of every thread's area from its thread pointer (the value of `__rseq_offset`).
pub fn area_offset() -> isize {
    OFFSET.load(Relaxed)
}

/// Length of each registered area, as passed to `rseq(2)`.
pub fn registration_length() -> u32 {
    REG_LEN.load(Relaxed)
}

/// `AT_RSEQ_FEATURE_SIZE`, or 0 when the kernel does not report it (original 20-byte features).
pub fn kernel_feature_size() -> u32 {
    FEATURE_SIZE.load(Relaxed)
}

/// The calling thread's area: thread pointer + `__rseq_offset`.
#[inline(always)]
pub fn current_area() -> *mut crate::abi::RseqrtArea {
    (arch::thread_pointer() as isize + area_offset()) as *mut crate::abi::RseqrtArea
}
