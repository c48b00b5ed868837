/* plugin.c: a plugin with a per-CPU counter increment in an rseq critical section; the
 * critical section's descriptor lives in the plugin's own data. */
#include "../c-abi-tests/rseq_cs.h"

__attribute__((visibility("default"))) int plugin_count(long *per_cpu)
{
    return rseq_cs_inc(per_cpu);
}
