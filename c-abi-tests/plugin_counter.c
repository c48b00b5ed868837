/* A plugin whose critical section code and descriptor live in the plugin itself.
 * plugin_inc(counters) runs one per-cpu increment and returns the cpu (-1 if the
 * calling thread has no registered rseq area). */
#include "rseq_cs.h"

__attribute__((visibility("default"))) int plugin_inc(long *percpu_counters)
{
    return rseq_cs_inc(percpu_counters);
}
