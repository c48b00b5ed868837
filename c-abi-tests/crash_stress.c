/* crash_stress: worker threads increment per-cpu counters in rseq critical
 * sections that live in plugins, while a loader thread loads and unloads the
 * plugins thousands of times.
 *
 *   crash_stress METHOD PLUGIN_A PLUGIN_B [ITERATIONS [WORKERS [SECONDS [BURST [SLEEP_US]]]]]
 *
 * PLUGIN_A and PLUGIN_B are two files of plugin_counter.c (two files, so that
 * one is always loaded while the other is unloaded). METHOD:
 *   rseqrt   unload with rseqrt_dlclose() (built with -DWITH_RSEQRT)
 *   plain    unload with dlclose(): a worker's stale rseq_cs into an unloaded
 *            plugin is expected to kill the process
 *
 * Handoff: a published plugin pointer plus one hazard pointer per worker. A worker
 * publishes the plugin it is about to call in its hazard slot and re-checks that
 * it is still the published one; the loader swaps the published pointer, waits
 * until no hazard slot holds the old plugin, and only then unloads it. No worker
 * ever calls into an unloaded plugin; only stale rseq_cs pointers remain.
 *
 * Stops after ITERATIONS unloads (default 5000) or SECONDS (default 7), whichever
 * comes first. Each worker runs BURST (default 256) critical sections in a row,
 * then (except worker 0, which never sleeps) sleeps SLEEP_US (default 50) us.
 * ITERATIONS 0: no unloading, just count for SECONDS.
 *
 * Exit 0 when the per-cpu counters' total equals the increments the workers
 * performed; 1 on a mismatch; 2 setup error; 3 no rseq registration;
 * 4 an unload failed; 10 a genuine memory fault (see crash_common.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "crash_common.h"
#include "rseq_cs.h"
#ifdef WITH_RSEQRT
#include <rseqrt.h>
#endif

#define MAX_WORKERS 64

struct plugin {
    void *handle;
    int (*inc)(long *);
    const char *path;
};

static struct plugin plugins[2];
static struct plugin *_Atomic published;
static struct plugin *_Atomic hazard[MAX_WORKERS];
static atomic_int stop;
static atomic_int worker_error;
static long performed[MAX_WORKERS];
static long counters[4096];
static int use_rseqrt;
static long burst = 256, sleep_us = 50;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    long i = (long)arg, n = 0;
    struct timespec nap = {0, sleep_us * 1000L};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        struct plugin *p = atomic_load(&published);
        if (!p)
            continue;
        atomic_store(&hazard[i], p);
        if (atomic_load(&published) != p) {
            atomic_store(&hazard[i], NULL);
            continue;
        }
        for (long b = 0; b < burst; b++) {
            if (p->inc(counters) < 0) {
                atomic_store(&worker_error, 1);
                atomic_store(&stop, 1);
                break;
            }
            n++;
        }
        atomic_store(&hazard[i], NULL);
        /* Workers other than worker 0 sleep after each burst: sleeping workers keep
         * stale rseq_cs pointers into the plugin they last ran (the barrier's
         * blocked-thread path), worker 0 never stops running critical sections
         * (its running-thread path), and the loader is not starved of cpu on a
         * small machine. */
        if (sleep_us > 0 && i != 0)
            nanosleep(&nap, NULL);
    }
    performed[i] = n;
    return NULL;
}

static int load(struct plugin *p)
{
    p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
        printf("dlopen %s: %s\n", p->path, dlerror());
        return -1;
    }
    p->inc = (int (*)(long *))dlsym(p->handle, "plugin_inc");
    if (!p->inc) {
        printf("dlsym plugin_inc: %s\n", dlerror());
        return -1;
    }
    return 0;
}

static int unload(struct plugin *p)
{
    int rc;
#ifdef WITH_RSEQRT
    rc = use_rseqrt ? rseqrt_dlclose(p->handle) : dlclose(p->handle);
#else
    rc = dlclose(p->handle);
#endif
    if (rc != 0) {
        printf("%sdlclose: %s\n", use_rseqrt ? "rseqrt_" : "", dlerror());
        return -1;
    }
    void *h = dlopen(p->path, RTLD_NOW | RTLD_NOLOAD);
    if (h) {
        printf("%s still loaded after dlclose\n", p->path);
        return -1;
    }
    p->handle = NULL;
    p->inc = NULL;
    return 0;
}

int main(int argc, char **argv)
{
    crash_setup();

    if (argc < 4 || (strcmp(argv[1], "rseqrt") && strcmp(argv[1], "plain"))) {
        printf("usage: %s rseqrt|plain PLUGIN_A PLUGIN_B [ITERATIONS [WORKERS [SECONDS [BURST [SLEEP_US]]]]]\n",
               argv[0]);
        return 2;
    }
    use_rseqrt = !strcmp(argv[1], "rseqrt");
#ifndef WITH_RSEQRT
    if (use_rseqrt) {
        printf("method rseqrt needs the program built with -DWITH_RSEQRT -lrseqrt\n");
        return 2;
    }
#endif
    plugins[0].path = argv[2];
    plugins[1].path = argv[3];
    long iterations = argc > 4 ? atol(argv[4]) : 5000;
    long nworkers = argc > 5 ? atol(argv[5]) : 4;
    double seconds = argc > 6 ? atof(argv[6]) : 7.0;
    burst = argc > 7 ? atol(argv[7]) : burst;
    sleep_us = argc > 8 ? atol(argv[8]) : sleep_us;
    if (burst < 1 || sleep_us < 0 || sleep_us > 999999) {
        printf("bad BURST or SLEEP_US\n");
        return 2;
    }
    if (nworkers < 1 || nworkers > MAX_WORKERS || iterations < 0) {
        printf("bad ITERATIONS or WORKERS\n");
        return 2;
    }

    if (!rseq_cs_registered()) {
        printf("main thread has no registered rseq area: nothing to test\n");
        return 3;
    }
    if (load(&plugins[0]) != 0)
        return 2;
    atomic_store(&published, &plugins[0]);

    pthread_t tids[MAX_WORKERS];
    for (long i = 0; i < nworkers; i++) {
        if ((errno = pthread_create(&tids[i], NULL, worker, (void *)i)) != 0) {
            printf("pthread_create: %s\n", strerror(errno));
            return 2;
        }
    }

    double t0 = now_s(), worst = 0, unload_total = 0;
    long done_iters = 0;
    int rc = 0;
    for (long it = 0; it < iterations && now_s() - t0 < seconds && !atomic_load(&worker_error); it++) {
        struct plugin *old = atomic_load(&published);
        struct plugin *next = old == &plugins[0] ? &plugins[1] : &plugins[0];
        if (load(next) != 0) {
            rc = 2;
            break;
        }
        atomic_store(&published, next);
        for (long i = 0; i < nworkers; i++)
            while (atomic_load(&hazard[i]) == old)
                sched_yield();
        double u0 = now_s();
        if (unload(old) != 0) {
            rc = 4;
            break;
        }
        double u = now_s() - u0;
        unload_total += u;
        if (u > worst)
            worst = u;
        done_iters++;
    }
    if (iterations == 0) /* no unloading: the counting alone */
        while (now_s() - t0 < seconds)
            usleep(10000);
    double elapsed = now_s() - t0;
    atomic_store(&stop, 1);
    for (long i = 0; i < nworkers; i++)
        pthread_join(tids[i], NULL);
    if (rc)
        return rc;
    if (atomic_load(&worker_error)) {
        printf("a worker's thread has no registered rseq area\n");
        return 3;
    }

    long total = 0, expected = 0;
    for (size_t c = 0; c < sizeof counters / sizeof counters[0]; c++)
        total += counters[c];
    for (long i = 0; i < nworkers; i++)
        expected += performed[i];
    printf("%s: %ld unloads in %.2f s (%.1f us per load+unload cycle; unload mean %.1f us, slowest "
           "%.2f ms), %ld workers (bursts of %ld, %ld us sleeps), %ld increments, counters total %ld\n",
           argv[1], done_iters, elapsed, done_iters ? elapsed / done_iters * 1e6 : 0.0,
           done_iters ? unload_total / done_iters * 1e6 : 0.0, worst * 1e3, nworkers, burst, sleep_us,
           expected, total);
    if (total != expected) {
        printf("MISMATCH: counters total %ld != increments performed %ld\n", total, expected);
        return 1;
    }
    return 0;
}
