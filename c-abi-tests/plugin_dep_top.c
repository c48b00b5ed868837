/* A plugin with no critical section of its own: it calls into its dependency
 * plugin_dep_lib.so (DT_NEEDED, found through an $ORIGIN rpath), which holds
 * the code and the descriptor. */
int plugin_dep_lib_inc(long *percpu_counters);

__attribute__((visibility("default"))) int plugin_dep_inc(long *percpu_counters)
{
    return plugin_dep_lib_inc(percpu_counters);
}
