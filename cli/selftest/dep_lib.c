/* Dependency of libselftest_dep_top.so; holds the critical section code and descriptor.
 * Only the top plugin needs it, so dlclose() of the top plugin unloads this one too. */
#include "rseq_cs.h"

__attribute__((visibility("default"))) int selftest_dep_lib_inc(long *percpu_counters)
{
    return rseq_cs_inc(percpu_counters);
}
