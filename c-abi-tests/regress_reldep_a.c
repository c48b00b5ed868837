/* Binds to b_inc from the globally loaded regress_reldep_b.so without naming it in DT_NEEDED. */
extern int b_inc(void);
__attribute__((visibility("default"))) int a_inc(void) { return b_inc(); }
