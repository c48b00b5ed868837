/* Dependency of libselftest_dep_top.so; holds the critical section code and descriptor.
 * Only the top plugin needs it, so dlclose() of the top plugin unloads this one too. */
#include "rseq_cs.h"

__attribute__((visibility("default"))) int selftest_dep_lib_inc(long *percpu_counters)
{
    return rseq_cs_inc(percpu_counters);
}

/* The calling thread's rseq_cs (0 when nothing is stale). */
__attribute__((visibility("default"))) unsigned long selftest_dep_lib_current_cs(void)
{
    return rseq_cs_registered() ? (unsigned long)rseq_cs_current() : 0;
}
