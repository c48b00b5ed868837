/* The dependency of plugin_dep_top.so: it holds the critical section code and
 * descriptor. Nothing but plugin_dep_top.so needs it, so dlclose() of the top
 * handle unloads it too. */
#include "rseq_cs.h"

__attribute__((visibility("default"))) int plugin_dep_lib_inc(long *percpu_counters)
{
    return rseq_cs_inc(percpu_counters);
}
