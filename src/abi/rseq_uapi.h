/*
 * Input to bindgen (tools/gen): the Linux rseq user-space ABI, written for rseqrt from the
 * kernel's documentation of rseq(2) (include/uapi/linux/rseq.h, Documentation/userspace-api),
 * as of kernel 6.3+, the current extensible form. Self-contained on purpose: the generated
 * bindings must not depend on which <linux/rseq.h> the build machine has (Debian 11 and 12
 * stop `struct rseq` at `flags`; Debian 13 has `node_id`, `mm_cid` and `end[]`).
 *
 * The ABI is append-only: a kernel reports how much of `struct rseq` it fills through
 * AT_RSEQ_FEATURE_SIZE and the alignment it wants through AT_RSEQ_ALIGN.
 */
typedef unsigned int __u32;
typedef unsigned long long __u64;

/* Values of rseq.cpu_id that are not a CPU number. */
enum rseq_cpu_id_state {
	RSEQ_CPU_ID_UNINITIALIZED = -1,
	RSEQ_CPU_ID_REGISTRATION_FAILED = -2,
};

/* Flags of the rseq system call. */
enum rseq_flags {
	RSEQ_FLAG_UNREGISTER = (1 << 0),
};

/* Bits of rseq_cs.flags (deprecated by the kernel since 6.0: must be 0). */
enum rseq_cs_flags_bit {
	RSEQ_CS_FLAG_NO_RESTART_ON_PREEMPT_BIT = 0,
	RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL_BIT = 1,
	RSEQ_CS_FLAG_NO_RESTART_ON_MIGRATE_BIT = 2,
};

enum rseq_cs_flags {
	RSEQ_CS_FLAG_NO_RESTART_ON_PREEMPT = (1U << RSEQ_CS_FLAG_NO_RESTART_ON_PREEMPT_BIT),
	RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL = (1U << RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL_BIT),
	RSEQ_CS_FLAG_NO_RESTART_ON_MIGRATE = (1U << RSEQ_CS_FLAG_NO_RESTART_ON_MIGRATE_BIT),
};

/* A critical-section descriptor: the code [start_ip, start_ip + post_commit_offset) is
 * restarted at abort_ip, which must follow the 4-byte signature registered with the area. */
struct rseq_cs {
	__u32 version;
	__u32 flags;
	__u64 start_ip;
	__u64 post_commit_offset;
	__u64 abort_ip;
} __attribute__((aligned(4 * sizeof(__u64))));

/* The per-thread area registered with rseq(2). */
struct rseq {
	__u32 cpu_id_start;       /* always a valid CPU number once registered */
	__u32 cpu_id;             /* CPU number, or an rseq_cpu_id_state */
	__u64 rseq_cs;            /* address of the running critical section's descriptor, or 0 */
	__u32 flags;              /* deprecated: 0 */
	__u32 node_id;            /* NUMA node of cpu_id (feature size 24+, kernel 6.3+) */
	__u32 mm_cid;             /* concurrency id within the mm (feature size 28+, kernel 6.3+) */
	char end[];               /* the extensible end: later fields go here */
} __attribute__((aligned(4 * sizeof(__u64))));
