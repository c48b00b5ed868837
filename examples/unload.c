/* unload.c: an ordinary program that knows nothing of rseqrt. A worker thread counts once
 * through a plugin's rseq critical section, then waits for input; meanwhile the main thread
 * unloads the plugin. The worker's rseq_cs still points into the plugin, so when it wakes up
 * the kernel kills the process (SIGSEGV), unless librseqrt_preload.so makes dlclose() safe:
 *   ./unload ./plugin.so                                            # killed by SIGSEGV
 *   LD_PRELOAD=.../rseqrt/librseqrt_preload.so ./unload ./plugin.so   # survives */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static int wake[2];
static atomic_int counted;

static void *worker(void *count)
{
    static long per_cpu[1024];
    char byte;
    ((int (*)(long *))count)(per_cpu);
    /* No system call between the critical section and the read: a preemption there (say, by a
     * thread it wakes) would let the kernel clear rseq_cs before the unload. */
    atomic_store(&counted, 1);
    (void)!read(wake[0], &byte, 1); /* blocked in the kernel while the plugin goes away */
    return NULL;
}

int main(int argc, char **argv)
{
    void *plugin = dlopen(argc > 1 ? argv[1] : "./plugin.so", RTLD_NOW);
    void *count = plugin ? dlsym(plugin, "plugin_count") : NULL;
    pthread_t thread;
    if (!count || pipe(wake)) {
        fprintf(stderr, "unload: %s\n", plugin ? "no plugin_count" : dlerror());
        return 2;
    }
    pthread_create(&thread, NULL, worker, count);
    while (!atomic_load(&counted))
        usleep(1000);
    usleep(20000); /* by now the worker sleeps in read() */
    printf("worker counted through the plugin; unloading it now\n");
    fflush(stdout);
    if (dlclose(plugin) != 0) {
        fprintf(stderr, "dlclose: %s\n", dlerror());
        return 3;
    }
    (void)!write(wake[1], "w", 1);
    pthread_join(thread, NULL);
    printf("worker woke up after the unload: the process survived\n");
    return 0;
}
