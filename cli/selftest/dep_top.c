/* A plugin without a critical section of its own: it calls into its DT_NEEDED dependency
 * libselftest_dep_lib.so (found through an $ORIGIN rpath), which holds code and descriptor. */
int selftest_dep_lib_inc(long *percpu_counters);

__attribute__((visibility("default"))) int selftest_dep_inc(long *percpu_counters)
{
    return selftest_dep_lib_inc(percpu_counters);
}

unsigned long selftest_dep_lib_current_cs(void);

__attribute__((visibility("default"))) unsigned long selftest_dep_current_cs(void)
{
    return selftest_dep_lib_current_cs();
}
