//! [`RseqrtArea`]: the layout of `struct rseq` that the running kernel may fill, as the C header
//! shows it (`struct rseqrt_area`). See the parent module for how it is kept right.

/// `struct rseq` as the kernel sees it (upstream UAPI): see `linux/rseq.h`.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct RseqrtArea {
    /// CPU number, always valid once registered (`cpu_id_start` in `struct rseq`).
    pub cpu_id_start: u32,
    /// CPU number, or `RSEQ_CPU_ID_UNINITIALIZED` (-1) / `RSEQ_CPU_ID_REGISTRATION_FAILED` (-2).
    pub cpu_id: u32,
    /// Address of the active `struct rseq_cs` descriptor, or 0.
    pub rseq_cs: u64,
    /// Deprecated per-thread flags; always 0.
    pub flags: u32,
    /// NUMA node of `cpu_id` (valid when the feature size is at least 24).
    pub node_id: u32,
    /// Memory-map concurrency id (valid when the feature size is at least 28).
    pub mm_cid: u32,
}
