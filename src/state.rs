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

/// Why rseqrt registers nothing although the kernel offers rseq. In each case some other code
/// may register areas (the program, another rseq library, a thread started behind rseqrt's
/// back), so the barrier treats every thread as one it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoneReason {
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: the program asked glibc to leave registration to
    /// it, and rseqrt leaves it too.
    ProgramRegisters,
    /// `RSEQRT_REGISTER=0`.
    Disabled,
    /// Loaded after startup (dlopen) where the C library does not register: threads the program
    /// creates would bypass rseqrt's `pthread_create`.
    LoadedLate,
    /// Registering the loading thread failed with this errno (someone registered first).
    RegistrationFailed(i32),
}

impl NoneReason {
    /// The errno `rseqrt_register_current_thread()` fails with.
    pub fn errno(self) -> crate::platform::Errno {
        match self {
            NoneReason::RegistrationFailed(e) => crate::platform::Errno(e),
            _ => crate::platform::Errno(libc::EOPNOTSUPP),
        }
    }

    /// In words, for people (`rseqrt info`).
    pub fn words(self) -> &'static core::ffi::CStr {
        match self {
            NoneReason::ProgramRegisters => c"GLIBC_TUNABLES has glibc.pthread.rseq=0: registration is left to the program",
            NoneReason::Disabled => c"RSEQRT_REGISTER=0: rseqrt registers no area",
            NoneReason::LoadedLate => c"loaded after startup where the C library does not register rseq",
            NoneReason::RegistrationFailed(_) => c"registering the first thread failed: another area was registered first",
        }
    }

    fn code(self) -> i32 {
        match self {
            NoneReason::ProgramRegisters => -1,
            NoneReason::Disabled => -2,
            NoneReason::LoadedLate => -3,
            NoneReason::RegistrationFailed(e) => e,
        }
    }

    fn from_code(code: i32) -> Option<NoneReason> {
        match code {
            0 => None,
            -1 => Some(NoneReason::ProgramRegisters),
            -2 => Some(NoneReason::Disabled),
            -3 => Some(NoneReason::LoadedLate),
            e => Some(NoneReason::RegistrationFailed(e)),
        }
    }
}

/// The [`NoneReason`] code (0: none, or rseq itself is unavailable).
static NONE_REASON: AtomicI32 = AtomicI32::new(0);

/// Records why rseqrt registers nothing (relocation time: set with the owner).
pub fn set_none_reason(reason: NoneReason) {
    NONE_REASON.store(reason.code(), Relaxed);
}

/// Marks rseq unavailable, for `reason`, when the constructor finds it cannot own registration.
/// rseqrt's own `__rseq_size` becomes 0; an executable that copied it at startup keeps its copy
/// (read-only by then), but there the areas' `cpu_id` reads -2, which consumers check per thread.
pub fn downgrade_to_none(reason: NoneReason) {
    OWNER.store(Owner::None as i32, Relaxed);
    set_none_reason(reason);
    let (_, size, _) = arch::export_storage();
    // SAFETY: rseqrt's own definition, in writable data; nothing else writes it after relocation.
    unsafe { size.write_volatile(0) };
}

/// Why the owner is NONE although rseq works, if it is.
pub fn none_reason() -> Option<NoneReason> {
    NoneReason::from_code(NONE_REASON.load(Relaxed))
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
