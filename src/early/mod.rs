//! Relocation-time initialisation: decides who owns rseq registration and fills glibc's three
//! exports before any executable copies them.
//!
//! A PIE program that reads `__rseq_offset` directly gets an `R_X86_64_COPY` relocation, taken
//! when the dynamic linker relocates the executable: after every shared library is relocated but
//! before any constructor runs. So the values cannot come from a constructor. [`resolve`] is the
//! resolver of a local IFUNC whose address is in `.init_array` (see `arch`): the dynamic linker
//! calls it while relocating this object, and it returns the constructor (`crate::init::run`).
//!
//! Guarantees of everything in this module: no call through the PLT (the C library may not be
//! usable yet), no allocation, no lock, no `memcpy`/`memset`/`memcmp` calls, no panic. It uses only
//! raw system calls, data reached through already-processed GOT entries (`_r_debug`, TLS
//! offsets), and this object's own data.

mod auxv;
mod environ;
mod ldso;

use crate::abi::{ORIGINAL_AREA_LENGTH, ORIGINAL_FEATURE_SIZE};
use crate::arch;
use crate::platform::{self, Errno};
use crate::state::{self, NoneReason, Owner};

/// IFUNC resolver: computes the process-wide rseq configuration, writes the exports, and
/// returns the constructor for `.init_array`.
pub extern "C" fn resolve() -> extern "C" fn() {
    let glibc = ldso::glibc_rseq_exports();
    let kernel = auxv::rseq_features();
    // Where glibc does not register, the program's own wish comes first (see `environ`).
    let declined = match environ::owner_settings(kernel.secure) {
        environ::OwnerSettings { register: Some(false), .. } => Some(NoneReason::Disabled),
        environ::OwnerSettings { glibc_rseq_off: true, register: None, .. } => Some(NoneReason::ProgramRegisters),
        _ => None,
    };
    // Unavailable or declined: keep glibc's offset (its area reads cpu_id -2), or our own TLS
    // area, whose initial image also reads -2.
    let unowned_offset = glibc.map_or(arch::tls_area_offset(), |g| g.offset);
    let (owner, offset, size, reason) = match glibc {
        Some(g) if g.size > 0 => (Owner::Libc, g.offset, g.size, None),
        _ if !kernel_has_rseq() => (Owner::None, unowned_offset, 0, None),
        _ if declined.is_some() => (Owner::None, unowned_offset, 0, declined),
        _ => {
            let size = match kernel.feature_size {
                0 => ORIGINAL_FEATURE_SIZE,
                n => n.min(self_area_length(kernel)),
            };
            (Owner::SelfOwned, arch::tls_area_offset(), size, None)
        }
    };
    let reg_len = match owner {
        // glibc registers max(__rseq_size, 32) bytes.
        Owner::Libc => size.max(ORIGINAL_AREA_LENGTH),
        _ => self_area_length(kernel),
    };
    if let Some(reason) = reason {
        state::set_none_reason(reason);
    }
    crate::rtsig::find_glibc(ldso::next_definition);
    state::publish(state::Config {
        owner,
        offset,
        size,
        flags: glibc.map_or(0, |g| if owner == Owner::Libc { g.flags } else { 0 }),
        reg_len,
        feature_size: kernel.feature_size,
    });
    crate::init::run
}

/// Length rseqrt registers for its own area: 32 while the kernel's features fit (the kernel then
/// still fills `node_id` and `mm_cid`), else the feature size rounded up to the kernel's alignment,
/// as long as that fits the reserved TLS block.
fn self_area_length(kernel: auxv::RseqFeatures) -> u32 {
    let align = kernel.align.max(ORIGINAL_AREA_LENGTH);
    let len = kernel.feature_size.div_ceil(align) * align;
    if len <= ORIGINAL_AREA_LENGTH || len as usize > arch::TLS_AREA_RESERVED || align as usize > arch::TLS_AREA_RESERVED {
        ORIGINAL_AREA_LENGTH
    } else {
        len
    }
}

/// Whether the rseq system call works for this process. An unregister request for an area that
/// is not registered answers EINVAL when rseq exists; anything else (ENOSYS from an old kernel,
/// ENOSYS or EPERM from a seccomp filter) means rseqrt could not register. It changes nothing.
fn kernel_has_rseq() -> bool {
    // SAFETY: an unregister request for no area registers nothing.
    let probe = unsafe { platform::rseq(core::ptr::null_mut(), ORIGINAL_AREA_LENGTH, crate::abi::FLAG_UNREGISTER, arch::RSEQ_SIG) };
    probe == Err(Errno(libc::EINVAL))
}
