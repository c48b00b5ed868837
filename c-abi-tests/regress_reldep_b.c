/* Holds a critical section; loaded RTLD_GLOBAL, then kept loaded only because
 * regress_reldep_a.so bound to it at relocation time (glibc's l_reldeps, not DT_NEEDED). */
#include "rseq_cs.h"
static long counters[4096];
__attribute__((visibility("default"))) int b_inc(void) { return rseq_cs_inc(counters); }
