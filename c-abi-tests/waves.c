/* waves: 10,000 threads at once, started and stopped in waves while barriers run (issue 11).
 *
 *   waves waves rseqrt|plain PLUGIN
 *
 * Threads have 64 KiB stacks. Each wave starts WAVE threads; each runs one critical section whose
 * descriptor lies in memory of its wave, then blocks. Up to LIVE_WAVES waves live at once
 * (10,000 threads); then the oldest wave is stopped (woken, it exits and is joined by the
 * stopper thread) while the next starts. What each wave's stale pointers refer to, and what
 * clears them while they block, rotates:
 *   0: a page, freed with rseqrt_munmap() by the main thread (the barrier signals every thread);
 *   1: PLUGIN's code, which stays loaded: the dlclose thread's rseqrt_dlclose() of a second
 *      handle signals every thread referring to it and waits for each acknowledgement;
 *   2: a page: rseqrt_clear_all(0), then a plain munmap().
 * Meanwhile two threads run barriers, 2 ms apart: rseqrt_munmap() of fresh pages no thread
 * refers to, and the dlopen()/rseqrt_dlclose() of PLUGIN.
 *
 * With thousands of threads runnable on few cores (a wave starting, another exiting, thousands
 * signalled), a signalled thread may wait seconds for a CPU: run with RSEQRT_TIMEOUT_MS raised
 * (tests/waves.rs: 60 s) so that a barrier's deadline measures a deadlock, not the scheduler.
 *
 * Counts must be exact: every thread started ran its critical section (the per-cpu counters sum
 * to the number of threads), exited and was joined; every barrier returned 0; after each wave's
 * barrier no thread of the wave refers to the memory (its area read from outside). The registry's
 * count of the threads it knows is compared with glibc's before the waves and after the last is
 * joined (census_probe.h): equal both times.
 *
 * plain: wave 0's page is freed with munmap() and the wave woken: the kernel must kill the
 * process (SIGSEGV), which shows that the stale pointers are real.
 *
 * Exit status: 0 passed; 1 a check failed; 2 setup error (tests/waves.rs skips machines whose
 * pid_max or RLIMIT_NPROC cannot hold the threads). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/futex.h>
#include <pthread.h>
#include <semaphore.h>
#include <link.h>

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "census_probe.h"

#define WAVE 2500
#define LIVE_WAVES 4
#define WAVES 6
#define STACK (64 * 1024)
/* Between two background barriers: while threads start, each barrier lists the process's
 * threads (/proc/self/task: tens of ms of kernel time at 10,000 threads), and barriers back to
 * back on both cores would leave the waves little time to start. */
#define BG_PAUSE_MS 2

struct wave {
    int n;
    int kind;                        /* 0, 1, 2 as above */
    struct rseq_cs_desc *page;       /* kinds 0 and 2 */
    pthread_t thread[WAVE];
    struct rseq_cs_area *_Atomic area[WAVE];
    atomic_int ready;                /* ran the critical section, about to block */
    atomic_int stop;                 /* futex word */
    atomic_int exited;
};

static struct wave waves[WAVES];
static int (*plugin_inc)(long *);
static uintptr_t plugin_lo, plugin_hi; /* the plugin's text, where its descriptor's code is */
static atomic_int started, exited, joined, cs_failed;
static pthread_attr_t attr;

static void futex_wait(atomic_int *word, int val)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(atomic_int *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

static void *wave_thread(void *arg)
{
    long i = (long)arg;
    struct wave *w = &waves[i / WAVE];
    atomic_fetch_add(&started, 1);
    atomic_store(&w->area[i % WAVE], rseq_cs_area());
    int cpu = w->kind == 1 ? plugin_inc(counters) : rseq_cs_run(counters, w->page, rseq_cs_own_code());
    if (cpu < 0)
        atomic_fetch_add(&cs_failed, 1);
    atomic_fetch_add(&w->ready, 1);
    /* Blocks with the stale pointer until stopped (a barrier's signal only interrupts the wait). */
    while (!atomic_load(&w->stop))
        futex_wait(&w->stop, 0);
    atomic_fetch_add(&w->exited, 1);
    atomic_fetch_add(&exited, 1);
    return NULL;
}

static void start_wave(int k)
{
    struct wave *w = &waves[k];
    w->n = WAVE;
    w->kind = k % 3;
    if (w->kind != 1)
        w->page = desc_page();
    for (int i = 0; i < WAVE; i++) {
        int err = pthread_create(&w->thread[i], &attr, wave_thread, (void *)(long)(k * WAVE + i));
        if (err)
            die(2, "pthread_create of thread %d of wave %d (%d alive): %s", i, k, atomic_load(&started) -
                atomic_load(&exited), strerror(err));
    }
    double t0 = now_ms();
    while (atomic_load(&w->ready) < WAVE) {
        if (now_ms() - t0 > 20000)
            fail("wave %d: %d of %d threads ran their critical section within 20 s", k, atomic_load(&w->ready), WAVE);
        sleep_ms(1);
    }
}

/* Threads of wave W whose rseq_cs refers to [lo, hi). */
static int referring(struct wave *w, uintptr_t lo, uintptr_t hi)
{
    int n = 0;
    for (int i = 0; i < w->n; i++) {
        uint64_t cs = *(volatile uint64_t *)&atomic_load(&w->area[i])->rseq_cs;
        n += cs >= lo && cs < hi;
    }
    return n;
}

/* The stopper: wakes the waves main hands it and joins their threads. */
static sem_t stop_requests;
static atomic_int stop_next;

static void *stopper(void *arg)
{
    (void)arg;
    for (;;) {
        while (sem_wait(&stop_requests) != 0)
            ;
        int k = atomic_fetch_add(&stop_next, 1);
        if (k >= WAVES)
            return NULL;
        struct wave *w = &waves[k];
        atomic_store(&w->stop, 1);
        futex_wake_all(&w->stop);
        for (int i = 0; i < w->n; i++) {
            pthread_join(w->thread[i], NULL);
            atomic_fetch_add(&joined, 1);
        }
    }
}

/* Background barriers. */
static atomic_int bg_stop, bg_bad, bg_bad_errno, munmaps, dlcloses;
static const char *plugin_path;

static const char *_Atomic bg_bad_call = "none";

static void bg_failed(int rc, const char *call)
{
    if (rc != 0 && !atomic_load(&bg_bad)) {
        atomic_store(&bg_bad_errno, errno);
        atomic_store(&bg_bad_call, call);
        atomic_store(&bg_bad, 1);
    }
}

static void *munmap_loop(void *arg)
{
    (void)arg;
    while (!atomic_load(&bg_stop)) {
        void *p = map_pages(1);
        bg_failed(rseqrt_munmap(p, pagesz), "rseqrt_munmap");
        atomic_fetch_add(&munmaps, 1);
        sleep_ms(BG_PAUSE_MS);
    }
    return NULL;
}

static void *dlclose_loop(void *arg)
{
    (void)arg;
    while (!atomic_load(&bg_stop)) {
        void *h = dlopen(plugin_path, RTLD_NOW);
        if (!h)
            die(2, "dlopen %s: %s", plugin_path, dlerror());
        bg_failed(rseqrt_dlclose(h), "rseqrt_dlclose");
        atomic_fetch_add(&dlcloses, 1);
        sleep_ms(BG_PAUSE_MS);
    }
    return NULL;
}

/* The census probe runs in a thread of its own (its seccomp filter stays with it). */
static sem_t census_go, census_done;
static int census_known[2], census_behind[2];

static void *behind_thread(void *arg)
{
    while (sem_wait(arg) != 0)
        ;
    return NULL;
}

static void *census_thread(void *arg)
{
    (void)arg;
    trap_fstat_in_this_thread();
    int (*glibc_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))glibc_pthread_create();
    for (int round = 0; round < 2; round++) {
        while (sem_wait(&census_go) != 0)
            ;
        census_known[round] = census_barriers("with every thread known");
        pthread_t behind;
        sem_t behind_stop;
        sem_init(&behind_stop, 0, 0);
        if (glibc_create(&behind, NULL, behind_thread, &behind_stop) != 0)
            die(2, "glibc's pthread_create");
        census_behind[round] = census_barriers("with a thread rseqrt did not start");
        sem_post(&behind_stop);
        pthread_join(behind, NULL);
        sem_post(&census_done);
    }
    return NULL;
}

static void census(int round, const char *when)
{
    sem_post(&census_go);
    while (sem_wait(&census_done) != 0)
        ;
    check(census_known[round] == 0 && census_behind[round] >= 20,
          "%s: the registry knows exactly the threads glibc counts (20 barriers: %d fstat calls; with one "
          "thread started behind rseqrt's back: %d)", when, census_known[round], census_behind[round]);
}

/* The plugin's loaded segments, [plugin_lo, plugin_hi): its descriptor and code lie there. */
static int find_plugin(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_addr != *(ElfW(Addr) *)data)
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        plugin_lo = plugin_lo && plugin_lo < lo ? plugin_lo : lo;
        plugin_hi = plugin_hi > hi ? plugin_hi : hi;
    }
    return 1;
}

static void plugin_text(void *h)
{
    plugin_inc = (int (*)(long *))dlsym(h, "plugin_inc");
    struct link_map *map;
    if (!plugin_inc || dlinfo(h, RTLD_DI_LINKMAP, &map) != 0)
        die(2, "plugin_inc not found in %s", plugin_path);
    ElfW(Addr) base = map->l_addr;
    if (!dl_iterate_phdr(find_plugin, &base) || !plugin_hi)
        die(2, "%s's segments not found", plugin_path);
}

int main(int argc, char **argv)
{
    cases_start(argc, argv, "PLUGIN");
    if (argc < 4)
        die(2, "usage: waves waves rseqrt|plain PLUGIN");
    plugin_path = argv[3];
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, STACK);
    void *keep = dlopen(plugin_path, RTLD_NOW); /* stays loaded: rseqrt_dlclose of another handle
                                                  leaves it mapped ("possible" memory) */
    if (!keep)
        die(2, "dlopen %s: %s", plugin_path, dlerror());
    plugin_text(keep);

    if (!use_rseqrt) {
        start_wave(0);
        munmap(waves[0].page, pagesz);
        printf("wave 0: %d threads hold a stale rseq_cs into the unmapped page; waking them\n",
               referring(&waves[0], (uintptr_t)waves[0].page, (uintptr_t)waves[0].page + pagesz));
        fflush(stdout);
        atomic_store(&waves[0].stop, 1);
        futex_wake_all(&waves[0].stop);
        for (int i = 0; i < WAVE; i++)
            pthread_join(waves[0].thread[i], NULL);
        printf("survived the plain munmap\n");
        return 0;
    }

    pthread_t census_t;
    sem_init(&census_go, 0, 0);
    sem_init(&census_done, 0, 0);
    if (pthread_create(&census_t, NULL, census_thread, NULL) != 0)
        die(2, "pthread_create");
    census(0, "before the waves");

    sem_init(&stop_requests, 0, 0);
    pthread_t stop_t, bg[2];
    if (pthread_create(&stop_t, NULL, stopper, NULL) || pthread_create(&bg[0], NULL, munmap_loop, NULL) ||
        pthread_create(&bg[1], NULL, dlclose_loop, NULL))
        die(2, "pthread_create");

    double t0 = now_ms();
    int peak = 0;
    for (int k = 0; k < WAVES; k++) {
        if (k >= LIVE_WAVES)
            sem_post(&stop_requests); /* wave k - LIVE_WAVES exits while this one starts */
        start_wave(k);
        struct wave *w = &waves[k];
        int alive = atomic_load(&started) - atomic_load(&exited);
        peak = alive > peak ? alive : peak;
        double b0 = now_ms();
        int before, after;
        if (w->kind == 1) {
            /* Two whole dlopen/rseqrt_dlclose rounds of the other thread after the wave is ready. */
            int from = atomic_load(&dlcloses);
            while (atomic_load(&dlcloses) < from + 2) {
                if (now_ms() - b0 > 20000)
                    fail("wave %d: no rseqrt_dlclose finished within 20 s", k);
                sleep_ms(1);
            }
            before = -1; /* the other thread's barrier may have begun already */
            after = referring(w, plugin_lo, plugin_hi);
        } else {
            uintptr_t lo = (uintptr_t)w->page, hi = lo + pagesz;
            before = referring(w, lo, hi);
            int rc = w->kind == 0 ? rseqrt_munmap(w->page, pagesz) : rseqrt_clear_all(0);
            check(rc == 0, "wave %d: %s = %d (errno %d)", k, w->kind == 0 ? "rseqrt_munmap" : "rseqrt_clear_all",
                  rc, rc ? errno : 0);
            after = referring(w, lo, hi);
            if (w->kind == 2 && munmap(w->page, pagesz) != 0)
                die(2, "munmap: %s", strerror(errno));
        }
        const char *how[] = {"rseqrt_munmap of their page", "rseqrt_dlclose of a second plugin handle (acknowledged signals)",
                             "rseqrt_clear_all, then munmap"};
        check(after == 0, "wave %d (%d threads alive): after %s, %d of its %d threads still refer to the memory", k,
              alive, how[w->kind], after, WAVE);
        if (k >= LIVE_WAVES) {
            /* At most one wave stops while one starts: wave k - LIVE_WAVES is joined first. */
            while (atomic_load(&joined) < (k - LIVE_WAVES + 1) * WAVE) {
                if (now_ms() - b0 > 30000)
                    fail("wave %d: %d of %d threads joined within 30 s", k - LIVE_WAVES,
                         atomic_load(&joined) - (k - LIVE_WAVES) * WAVE, WAVE);
                sleep_ms(1);
            }
        }
        if (before >= 0)
            printf("observed wave %d: %d alive, %d stale before the barrier, cleared in %.1f ms\n", k, alive, before,
                   now_ms() - b0);
        else
            printf("observed wave %d: %d alive, cleared within %.1f ms\n", k, alive, now_ms() - b0);
    }
    for (int k = WAVES - LIVE_WAVES; k < WAVES; k++)
        sem_post(&stop_requests);
    sem_post(&stop_requests); /* the stopper's end */
    pthread_join(stop_t, NULL);
    atomic_store(&bg_stop, 1);
    pthread_join(bg[0], NULL);
    pthread_join(bg[1], NULL);
    double ms = now_ms() - t0;

    long sum = 0;
    for (size_t c = 0; c < sizeof counters / sizeof counters[0]; c++)
        sum += counters[c];
    int total = WAVES * WAVE;
    check(atomic_load(&started) == total && atomic_load(&exited) == total && atomic_load(&joined) == total,
          "%d threads (at most %d alive, %d KiB stacks) in %d waves: %d started, %d exited, %d joined (%.0f ms)", total,
          peak, STACK / 1024, WAVES, atomic_load(&started), atomic_load(&exited), atomic_load(&joined), ms);
    check(sum == total && atomic_load(&cs_failed) == 0, "critical sections committed: %ld of %d (%d unregistered)", sum,
          total, atomic_load(&cs_failed));
    check(atomic_load(&bg_bad) == 0 && atomic_load(&munmaps) > 0 && atomic_load(&dlcloses) > 0,
          "meanwhile %d rseqrt_munmap and %d rseqrt_dlclose from two threads, every one 0 (first failure: %s, errno %d)",
          atomic_load(&munmaps), atomic_load(&dlcloses), atomic_load(&bg_bad_call), atomic_load(&bg_bad_errno));
    census(1, "after the waves");
    pthread_join(census_t, NULL);
    printf("survived\n");
    return 0;
}
