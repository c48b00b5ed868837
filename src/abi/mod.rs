//! The kernel's rseq ABI: bindgen's view of `rseq_uapi.h` (generated, committed), the project's
//! own statement of the upstream UAPI, plus [`RseqrtArea`], the same `struct rseq` as the C
//! header shows it.
//!
//! Why the input is the project's own: distributions ship different `<linux/rseq.h>` (Debian 11
//! and 12 end `struct rseq` at `flags`, Debian 13 has `node_id`, `mm_cid` and `end[]`), and the
//! committed bindings must be the same on every machine. What a given kernel fills is decided at
//! run time from `AT_RSEQ_FEATURE_SIZE`, never from a header. The assertions below pin
//! `RseqrtArea` to the generated layout field by field.

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

// RseqrtArea and the generated layout must agree field by field.
const _: () = {
    assert!(offset_of!(RseqrtArea, cpu_id_start) == offset_of!(rseq, cpu_id_start));
    assert!(offset_of!(RseqrtArea, cpu_id) == offset_of!(rseq, cpu_id));
    assert!(offset_of!(RseqrtArea, rseq_cs) == offset_of!(rseq, rseq_cs));
    assert!(offset_of!(RseqrtArea, flags) == offset_of!(rseq, flags));
    assert!(offset_of!(RseqrtArea, node_id) == offset_of!(rseq, node_id));
    assert!(offset_of!(RseqrtArea, mm_cid) == offset_of!(rseq, mm_cid));
    // The feature size of everything RseqrtArea declares is where the extensible end begins.
    assert!(MM_CID_FEATURE_SIZE as usize == offset_of!(rseq, end));
    assert!(align_of::<RseqrtArea>() == align_of::<rseq>());
    assert!(size_of::<RseqrtArea>() == ORIGINAL_AREA_LENGTH as usize);
    assert!(size_of::<rseq_cs>() == 32);
    assert!(size_of::<RseqrtArea>() <= crate::arch::TLS_AREA_RESERVED);
};

/// The memory the kernel touches through descriptor `cs` besides the descriptor itself: the
/// critical section's code (`start_ip` up to `start_ip + post_commit_offset`) and the signature
/// word before `abort_ip`, as `[start, end)` ranges (saturating at the ends of the address space).
pub fn touched_ranges(cs: &rseq_cs) -> [(usize, usize); 2] {
    let (start, abort) = (cs.start_ip as usize, cs.abort_ip as usize);
    [(start, start.saturating_add(cs.post_commit_offset as usize)), (abort.saturating_sub(4), abort)]
}

/// `RSEQ_FLAG_UNREGISTER` for `rseq(2)`.
pub const FLAG_UNREGISTER: u32 = rseq_flags_RSEQ_FLAG_UNREGISTER;
