//! The kernel's rseq ABI: bindgen's view of the installed `<linux/rseq.h>` (generated, committed)
//! plus [`RseqrtArea`], the full `struct rseq` layout the running kernel may fill.
//!
//! Why two layouts: the build machine's header can be older than the running kernel. Debian 12's
//! `linux-libc-dev` (6.1) ends `struct rseq` at `flags`, while kernels since 6.3 also fill
//! `node_id` and `mm_cid` (reported through `AT_RSEQ_FEATURE_SIZE`). `RseqrtArea` declares the
//! fields of the current upstream UAPI; the assertions below pin its common prefix to the
//! generated layout, so a header that disagreed would stop the build. Which extended fields are
//! valid is decided at run time from `AT_RSEQ_FEATURE_SIZE`, never from the header.

#[rustfmt::skip]
mod linux_rseq;
pub use linux_rseq::*;

mod area;
pub use area::RseqrtArea;

use core::mem::{align_of, offset_of, size_of};

/// Feature size of the original ABI (`cpu_id_start` .. `flags`).
pub const ORIGINAL_FEATURE_SIZE: u32 = 20;
/// Registration length of the original ABI.
pub const ORIGINAL_AREA_LENGTH: u32 = 32;
/// Feature size that covers `node_id`.
pub const NODE_ID_FEATURE_SIZE: u32 = (offset_of!(RseqrtArea, node_id) + 4) as u32;
/// Feature size that covers `mm_cid`.
pub const MM_CID_FEATURE_SIZE: u32 = (offset_of!(RseqrtArea, mm_cid) + 4) as u32;
/// `cpu_id` of an area the kernel has not (yet) written.
pub const CPU_ID_UNINITIALIZED: i32 = rseq_cpu_id_state_RSEQ_CPU_ID_UNINITIALIZED;
/// `cpu_id` of an area whose registration failed or never happened.
pub const CPU_ID_REGISTRATION_FAILED: i32 = rseq_cpu_id_state_RSEQ_CPU_ID_REGISTRATION_FAILED;

// The prefix shared with the installed header must agree field by field.
const _: () = {
    assert!(offset_of!(RseqrtArea, cpu_id_start) == offset_of!(rseq, cpu_id_start));
    assert!(offset_of!(RseqrtArea, cpu_id) == offset_of!(rseq, cpu_id));
    assert!(offset_of!(RseqrtArea, rseq_cs) == offset_of!(rseq, rseq_cs));
    assert!(offset_of!(RseqrtArea, flags) == offset_of!(rseq, flags));
    assert!(align_of::<RseqrtArea>() == align_of::<rseq>());
    assert!(size_of::<RseqrtArea>() == ORIGINAL_AREA_LENGTH as usize);
    assert!(size_of::<rseq_cs>() == 32);
    assert!(size_of::<RseqrtArea>() <= crate::arch::TLS_AREA_RESERVED);
};

/// `RSEQ_FLAG_UNREGISTER` for `rseq(2)`.
pub const FLAG_UNREGISTER: u32 = rseq_flags_RSEQ_FLAG_UNREGISTER;
