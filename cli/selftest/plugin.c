/* Selftest plugin: a restartable-sequence critical section whose code AND descriptor live in
 * this shared object (rseq_cs.h puts both in the including object). dlclose() of it leaves a
 * thread that ran the section with a stale rseq_cs pointing into unmapped memory. */
#include "rseq_cs.h"

#define EXPORT __attribute__((visibility("default")))

/* One per-cpu increment with this object's own descriptor; the cpu, or -1 if unregistered. */
EXPORT int selftest_inc(long *percpu_counters)
{
    return rseq_cs_inc(percpu_counters);
}

/* Fill *desc (which may live anywhere, e.g. a page the caller will munmap) so that it describes
 * this object's critical-section code. */
EXPORT void selftest_describe(struct rseq_cs_desc *desc)
{
    rseq_cs_describe(desc, rseq_cs_own_code());
}

/* Run the section once with a caller-supplied descriptor. */
EXPORT int selftest_run(long *percpu_counters, const struct rseq_cs_desc *desc)
{
    return rseq_cs_run(percpu_counters, desc, rseq_cs_own_code());
}

/* The calling thread's rseq_cs field (0 when nothing is stale). */
EXPORT unsigned long selftest_current_cs(void)
{
    return rseq_cs_registered() ? (unsigned long)rseq_cs_current() : 0;
}
