/* idle_states.c: rseqrt's calls that free memory, with idle threads in each state a process that
 * uses rseq leaves them in, each call beside its own floor.
 *
 *   rseqrt_bench idle STATE THREADS REPS ITERS PLUGIN RESIDENT_LIB [preload]
 *
 * STATE says what every idle thread's rseq_cs holds while it sleeps in sem_wait():
 *   zero    0: the thread never ran a critical section;
 *   main    a descriptor in this program: the thread ran this program's critical section once;
 *   lib     a descriptor in libselftest_dep_lib.so, which this program links (loaded at start);
 *   dlopen  a descriptor in RESIDENT_LIB, a shared object dlopen'ed at the start and never
 *           closed (a copy of that library under another name, so a separate object).
 * Nobody clears rseq_cs after a critical section, so in a process that uses rseq (a per-CPU
 * allocator, per-CPU counters) "main" and "lib" are what idle threads look like. In every state
 * the memory being freed (a fresh load of PLUGIN, or fresh anonymous pages) holds no thread's
 * descriptor: no thread needs to be woken.
 *
 * The floor of each call is the plain call followed by one load of every idle thread's rseq_cs
 * (from the addresses the threads published, side by side): any barrier that must look at every
 * thread does at least that. Each floor and its call alternate iteration by iteration.
 *
 * Linked build, keys per repetition (median over ITERS, nanoseconds):
 *   dlclose_floor   dlclose() of a fresh load of PLUGIN, then the loads
 *   dlclose_plain   the dlclose() part of dlclose_floor (one clock read, ~20 ns, is in between)
 *   rseqrt_dlclose  rseqrt_dlclose() of a fresh load of PLUGIN
 *   munmap_floor, munmap_plain, rseqrt_munmap: the same for 16 touched anonymous pages
 * With "preload" (run with LD_PRELOAD=librseqrt_preload.so): munmap_floor, munmap_plain (the
 * raw system call, which the shim does not see) and preloaded_munmap (the shim's munmap()).
 * Each repetition runs ITERS dlclose pairs, then ITERS munmap pairs. A call may wake the idle
 * threads (the kernel then clears their rseq_cs): before each floor-and-call pair, a state found
 * lost is put back (outside the timing, until every thread sleeps again). Info lines:
 * "# held_min N", "# held_max N": fewest and most idle threads holding a
 * non-zero rseq_cs, counted at the start and end of every repetition, before any put-back (THREADS
 * for main, lib and dlopen, 0 for zero); "# restored N": how many pairs found the state lost,
 * that is, how many times a call of the previous pair had woken the threads; "# failed_dlclose N",
 * "# failed_munmap N", "# failed_errno E" (only when rseqrt's calls failed: counted, timed all
 * the same, and the memory then freed with the plain call). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "rseq_cs.h"

#ifdef WITH_RSEQRT
/* The linked library's critical section (libselftest_dep_lib.so, linked with --no-as-needed). */
int selftest_dep_lib_inc(long *percpu_counters);

/* This program's own critical section (rseq_cs.h puts code and descriptor in the including
 * object: here, the executable). */
static int main_cs(long *counters)
{
    return rseq_cs_inc(counters);
}

/* Whether thread TID is asleep (state S: blocked, here in sem_wait()). */
static int asleep(pid_t tid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'S';
}

/* Waits (up to 2 s) until every worker is asleep. */
static void wait_asleep(void)
{
    uint64_t t0 = now_ns();
    for (int i = 0; i < nworkers; i++)
        while (!asleep(atomic_load(&workers[i].tid)) && now_ns() - t0 < 2000000000ull)
            sched_yield();
}

/* Puts every worker in the state (fn: the critical section to have run; NULL for zero), asleep.
 * A worker preempted between its critical section and its sleep has its rseq_cs cleared by the
 * kernel when it runs again: so the state is counted only once every worker sleeps, and the
 * critical sections run again if one was lost (a count right after the acknowledgements missed
 * that now and then with 1,000 threads, and the state was found lost in the measurement). */
static void hold_state(int (*fn)(long *))
{
    for (int tries = 0; fn && tries < 5; tries++) {
        make_stale(nworkers, fn);
        wait_asleep();
        if (count_stale() == nworkers)
            return;
    }
}

struct held {
    int min, max, restored;
};

static void count_held(struct held *h)
{
    int n = count_stale();
    if (n < h->min)
        h->min = n;
    if (n > h->max)
        h->max = n;
}

/* Puts the state back if a call woke the threads. */
static void keep_state(int (*fn)(long *), struct held *h)
{
    if (!fn || count_stale() == nworkers)
        return;
    h->restored++;
    hold_state(fn);
}

static void *load_plugin(const char *plugin)
{
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "rseqrt_bench: dlopen %s: %s\n", plugin, dlerror());
        exit(2);
    }
    return h;
}


static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "rseqrt_bench: %s failed: %s\n", what, strerror(errno));
        exit(3);
    }
}

/* rseqrt's calls may fail (ETIMEDOUT: threads did not answer within RSEQRT_TIMEOUT_MS) and then
 * free nothing. The time is kept, the failure counted, and the memory freed with the plain call:
 * no thread refers to it. */
static int failed[2], failed_errno;

static void count_failure(int dl)
{
    failed[dl]++;
    failed_errno = errno;
}

enum { DL_FLOOR, DL_PLAIN, DL_CALL, MM_FLOOR, MM_PLAIN, MM_CALL, NKEYS };

/* One floor-and-call pair: of dlclose (dl) or of munmap. */
static void measure(const char *plugin, int preload, int dl, int (*fn)(long *), struct held *held, uint64_t *s[NKEYS], int i)
{
    uint64_t t0, t1, t2;
    if (dl) {
        keep_state(fn, held);
        void *h = load_plugin(plugin);
        t0 = now_ns();
        int rc = dlclose(h);
        t1 = now_ns();
        load_every_rseq_cs();
        t2 = now_ns();
        check(rc, "dlclose");
        s[DL_FLOOR][i] = t2 - t0;
        s[DL_PLAIN][i] = t1 - t0;

        h = load_plugin(plugin);
        t0 = now_ns();
        rc = rseqrt_dlclose(h);
        t1 = now_ns();
        if (rc != 0) {
            count_failure(1);
            check(dlclose(h), "dlclose after rseqrt_dlclose failed");
        }
        s[DL_CALL][i] = t1 - t0;
        return;
    }
    keep_state(fn, held);
    char *p = fresh_pages();
    t0 = now_ns();
    int rc = preload ? (int)syscall(SYS_munmap, p, FRESH_PAGES_LEN) : munmap(p, FRESH_PAGES_LEN);
    t1 = now_ns();
    load_every_rseq_cs();
    t2 = now_ns();
    check(rc, "munmap");
    s[MM_FLOOR][i] = t2 - t0;
    s[MM_PLAIN][i] = t1 - t0;

    p = fresh_pages();
    t0 = now_ns();
    rc = preload ? munmap(p, FRESH_PAGES_LEN) : rseqrt_munmap(p, FRESH_PAGES_LEN);
    t1 = now_ns();
    if (rc != 0) {
        count_failure(0);
        check((int)syscall(SYS_munmap, p, FRESH_PAGES_LEN), "munmap after a failed one");
    }
    s[MM_CALL][i] = t1 - t0;
}
#endif

void bench_idle(int argc, char **argv)
{
#ifdef WITH_RSEQRT
    const char *state = argv[2], *plugin = argv[6], *resident = argv[7];
    int threads = atoi(argv[3]), reps = atoi(argv[4]), iters = atoi(argv[5]);
    int preload = argc > 8 && !strcmp(argv[8], "preload");
    int (*fn)(long *) = NULL;
    const char *where = NULL; /* the object the held descriptor must lie in */
    if (!strcmp(state, "main")) {
        fn = main_cs;
        where = "";
    } else if (!strcmp(state, "lib")) {
        fn = selftest_dep_lib_inc;
        where = "libselftest_dep_lib.so";
    } else if (!strcmp(state, "dlopen")) {
        void *h = load_plugin(resident); /* never closed */
        fn = (int (*)(long *))dlsym(h, "selftest_dep_lib_inc");
        if (!fn)
            die("dlsym selftest_dep_lib_inc");
        where = resident;
    } else if (strcmp(state, "zero") != 0) {
        fprintf(stderr, "rseqrt_bench idle: unknown state %s (zero, main, lib, dlopen)\n", state);
        exit(2);
    }
    if (preload)
        check_munmap_interposed();
    start_workers(threads);
    hold_state(fn);
    if (fn) {
        /* The held descriptor lies where the state says. */
        uint64_t cs = __atomic_load_n(atomic_load(&workers[0].rseq_cs), __ATOMIC_RELAXED);
        Dl_info info;
        int in_main = cs == (uint64_t)(uintptr_t)rseq_cs_own_desc();
        const char *base = cs && dladdr((void *)(uintptr_t)cs, &info) && info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
        if (!cs || (*where ? !base || strcmp(base + 1, strrchr(where, '/') ? strrchr(where, '/') + 1 : where) != 0 : !in_main)) {
            fprintf(stderr, "rseqrt_bench idle: the idle threads' rseq_cs (%#llx) is not in %s\n", (unsigned long long)cs,
                    *where ? where : "the program");
            exit(5);
        }
    }
    static const char *const keys[2][NKEYS] = {
        {"dlclose_floor", "dlclose_plain", "rseqrt_dlclose", "munmap_floor", "munmap_plain", "rseqrt_munmap"},
        {NULL, NULL, NULL, "munmap_floor", "munmap_plain", "preloaded_munmap"},
    };
    uint64_t *s[NKEYS];
    for (int k = 0; k < NKEYS; k++)
        s[k] = calloc((size_t)iters, 8);
    struct held held = {threads, 0, 0};
    for (int r = 0; r < reps; r++) {
        hold_state(fn);
        count_held(&held);
        /* The dlclose pairs, then the munmap pairs: a call that wakes the threads (and the
         * put-back after it) then disturbs only its own kind. */
        for (int dl = !preload; dl >= 0; dl--)
            for (int i = 0; i < iters; i++)
                measure(plugin, preload, dl, fn, &held, s, i);
        count_held(&held);
        for (int k = 0; k < NKEYS; k++)
            if (keys[preload][k])
                report(keys[preload][k], s[k], iters);
    }
    printf("# held_min %d\n# held_max %d\n# restored %d\n", held.min, held.max, held.restored);
    if (failed[0] || failed[1])
        printf("# failed_dlclose %d\n# failed_munmap %d\n# failed_errno %d\n", failed[1], failed[0], failed_errno);
    stop_workers();
#else
    (void)argc, (void)argv;
    fprintf(stderr, "idle: needs the linked build\n");
    exit(2);
#endif
}
