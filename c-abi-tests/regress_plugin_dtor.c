/* regress_plugin_dtor: a plugin whose destructor runs a critical section in the plugin itself
 * (code and descriptor in the plugin's own mappings), in the thread that calls dlclose().
 *
 *   plugin_inc(counters)   one critical section now; the cpu, or -1 (no registered area)
 *   plugin_report(p)       where the destructor stores the cpu its critical section returned */
#include "rseq_cs.h"

static long counters[4096];
static int *report;

__attribute__((visibility("default"))) int plugin_inc(long *c)
{
    return rseq_cs_inc(c);
}

__attribute__((visibility("default"))) void plugin_report(int *p)
{
    report = p;
}

/* "Flush the per-cpu state at unload": leaves the caller's rseq_cs pointing into this
 * plugin, which dlclose() then unmaps. */
__attribute__((destructor)) static void fini(void)
{
    int cpu = rseq_cs_inc(counters);
    if (report)
        *report = cpu;
}
