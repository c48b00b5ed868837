/* rseqrt_bench: the measuring side of `rseqrt bench` (the CLI compiles this file at run time,
 * once linked against librseqrt.so with -DWITH_RSEQRT, once against glibc alone, runs it, and
 * turns its output into medians, ratios and plots).
 *
 *   rseqrt_bench dlclose PLUGIN THREADS REPS ITERS
 *   rseqrt_bench barrier PLUGIN THREADS REPS ITERS
 *   rseqrt_bench munmap THREADS REPS ITERS [preload]
 *   rseqrt_bench threads REPS ITERS
 *   rseqrt_bench cpu REPS ITERS
 *   rseqrt_bench idle STATE THREADS REPS ITERS PLUGIN RESIDENT_LIB [preload]   (idle_states.c)
 *
 * Output: one line per repetition and measurement, "KEY NANOSECONDS", the median over ITERS
 * iterations of that repetition (per operation). Within a repetition the compared calls
 * alternate iteration by iteration, so that noise on this shared machine hits them alike.
 * Lines starting with '#' are information ("# owner 1", "# stale 999.5").
 *
 * Idle threads wait in sem_wait() (blocked in the kernel). A "referring" thread has been told
 * to run the plugin's critical section once before it went back to sleep: its rseq_cs is then a
 * stale pointer into the plugin. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ (1 << 7)
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8)

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void die(const char *what)
{
    fprintf(stderr, "rseqrt_bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

double median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    return n % 2 ? (double)v[n / 2] : ((double)v[n / 2 - 1] + (double)v[n / 2]) / 2.0;
}

void report(const char *key, uint64_t *samples, int n)
{
    printf("%s %.1f\n", key, median(samples, n));
}

/* ---- idle threads ------------------------------------------------------------------------ */

enum { CMD_NOTHING, CMD_RUN_CS, CMD_QUIT };

struct worker *workers;
int nworkers;
/* The workers' rseq_cs addresses side by side (NULL entries in the plain build). */
static uint64_t **cs_addrs;
static atomic_int acks;
static int (*_Atomic cs_fn)(long *);
static long counters[4096];

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
#ifdef WITH_RSEQRT
    char *area = rseqrt_current_area();
    atomic_store(&w->rseq_cs, area ? (uint64_t *)(area + 8) : NULL);
#endif
    atomic_fetch_add(&acks, 1);
    for (;;) {
        while (sem_wait(&w->go) != 0)
            ;
        int cmd = atomic_load(&w->cmd);
        if (cmd == CMD_QUIT)
            return NULL;
        if (cmd == CMD_RUN_CS)
            atomic_load(&cs_fn)(counters);
        atomic_fetch_add(&acks, 1);
    }
}

static void wait_acks(int n)
{
    while (atomic_load(&acks) < n)
        sched_yield();
}

/* Small stacks (64 KiB), so that 10,000 idle threads take 640 MiB of address space and two
 * mappings each (stack and guard page), well under vm.max_map_count. The machine is shared:
 * when another process holds many threads, pthread_create() fails with EAGAIN for a while. */
void start_workers(int n)
{
    nworkers = n;
    workers = calloc((size_t)n, sizeof *workers);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    atomic_store(&acks, 0);
    for (int i = 0; i < n; i++) {
        sem_init(&workers[i].go, 0, 0);
        int rc, tries = 0;
        while ((rc = pthread_create(&workers[i].thread, &attr, worker_main, &workers[i])) == EAGAIN && tries++ < 500)
            nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
        if (rc != 0) {
            fprintf(stderr, "rseqrt_bench: pthread_create of idle thread %d of %d: %s\n", i + 1, n, strerror(rc));
            exit(2);
        }
    }
    pthread_attr_destroy(&attr);
    wait_acks(n);
    cs_addrs = calloc((size_t)n, sizeof *cs_addrs);
    for (int i = 0; i < n; i++)
        cs_addrs[i] = atomic_load(&workers[i].rseq_cs);
}

char *fresh_pages(void)
{
    char *p = mmap(NULL, FRESH_PAGES_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    for (size_t o = 0; o < FRESH_PAGES_LEN; o += 4096)
        p[o] = 1;
    return p;
}

/* Four independent sums and no test per thread: of the loops tried, the fastest at 1,000 threads
 * (6.0 us against 8.0 us for one sum with a NULL test per entry; all alike at 10,000). */
uint64_t load_every_rseq_cs(void)
{
    if (nworkers == 0 || !cs_addrs[0])
        return 0; /* the plain build: no addresses */
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= nworkers; i += 4) {
        s0 += __atomic_load_n(cs_addrs[i], __ATOMIC_RELAXED);
        s1 += __atomic_load_n(cs_addrs[i + 1], __ATOMIC_RELAXED);
        s2 += __atomic_load_n(cs_addrs[i + 2], __ATOMIC_RELAXED);
        s3 += __atomic_load_n(cs_addrs[i + 3], __ATOMIC_RELAXED);
    }
    for (; i < nworkers; i++)
        s0 += __atomic_load_n(cs_addrs[i], __ATOMIC_RELAXED);
    uint64_t sum = s0 + s1 + s2 + s3;
    __asm__ volatile("" ::"r"(sum));
    return sum;
}

void stop_workers(void)
{
    for (int i = 0; i < nworkers; i++) {
        atomic_store(&workers[i].cmd, CMD_QUIT);
        sem_post(&workers[i].go);
    }
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    free(workers);
    free(cs_addrs);
}

/* Makes workers [0, k) run the critical section once and go back to sleep (stale rseq_cs). */
void make_stale(int k, int (*fn)(long *))
{
    atomic_store(&cs_fn, fn);
    atomic_store(&acks, 0);
    for (int i = 0; i < k; i++) {
        atomic_store(&workers[i].cmd, CMD_RUN_CS);
        sem_post(&workers[i].go);
    }
    wait_acks(k);
}

/* How many workers have a non-zero rseq_cs right now (linked build; -1 if unknown). */
int count_stale(void)
{
    int n = 0;
    for (int i = 0; i < nworkers; i++) {
        uint64_t *p = atomic_load(&workers[i].rseq_cs);
        if (!p)
            return -1;
        n += __atomic_load_n(p, __ATOMIC_RELAXED) != 0;
    }
    return n;
}

/* ---- dlclose ----------------------------------------------------------------------------- */

#ifdef WITH_RSEQRT
/* One rseqrt_dlclose() (or plain dlclose() when k < 0) of a fresh load of the plugin after k
 * workers ran its critical section; returns the time the close took. *stale (if not NULL): how
 * many workers held a stale rseq_cs just before the close. */
static uint64_t timed_close(const char *plugin, int k, int *stale)
{
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(2);
    }
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "selftest_inc");
    if (k > 0)
        make_stale(k, inc);
    if (stale)
        *stale = count_stale();
    uint64_t t0 = now_ns();
    int rc = k < 0 ? dlclose(h) : rseqrt_dlclose(h);
    uint64_t t1 = now_ns();
    if (rc != 0) {
        fprintf(stderr, "dlclose failed: %s\n", dlerror());
        exit(3);
    }
    return t1 - t0;
}

/* The floor of any barrier that reads every thread's rseq_cs: one load from each worker's area
 * (a plain loop, no registry, no system call). */
static uint64_t timed_scan_floor(void)
{
    uint64_t t0 = now_ns();
    load_every_rseq_cs();
    return now_ns() - t0;
}
#endif

/* rseqrt_dlclose() against dlclose() of the same plugin. Plain, none-referring and
 * one-referring closes alternate iteration by iteration; the all-referring closes, which wake
 * every worker, run in a block of their own after them, so that the idle workers of the other
 * variants stay idle. */
static void bench_dlclose(const char *plugin, int threads, int reps, int iters)
{
#ifdef WITH_RSEQRT
    start_workers(threads);
    uint64_t *plain = calloc((size_t)iters, 8), *k0 = calloc((size_t)iters, 8), *k1 = calloc((size_t)iters, 8),
             *kall = calloc((size_t)iters, 8), *floor = calloc((size_t)iters, 8);
    double stale_sum = 0;
    int stale_n = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < iters; i++) {
            plain[i] = timed_close(plugin, -1, NULL);
            k0[i] = timed_close(plugin, 0, NULL);
            k1[i] = timed_close(plugin, 1, NULL);
            (void)timed_close(plugin, -1, NULL); /* the floor too is read right after a dlclose */
            floor[i] = timed_scan_floor();
        }
        for (int i = 0; i < iters && threads > 1; i++) {
            int s;
            kall[i] = timed_close(plugin, threads, &s);
            if (s >= 0) {
                stale_sum += s;
                stale_n++;
            }
        }
        report("plain", plain, iters);
        report("rseqrt_k0", k0, iters);
        report("rseqrt_k1", k1, iters);
        if (threads > 1)
            report("rseqrt_kall", kall, iters);
        report("scan_floor", floor, iters);
    }
    if (stale_n)
        printf("# stale_all %.1f\n", stale_sum / stale_n);
    stop_workers();
#else
    (void)plugin, (void)threads, (void)reps, (void)iters;
    fprintf(stderr, "dlclose: needs the linked build\n");
    exit(2);
#endif
}

/* ---- barrier and its alternatives -------------------------------------------------------- */

static atomic_int naive_acks;

static void naive_handler(int sig)
{
    (void)sig;
    atomic_fetch_add(&naive_acks, 1);
}

static void naive_broadcast(void)
{
    pid_t pid = getpid();
    atomic_store(&naive_acks, 0);
    for (int i = 0; i < nworkers; i++)
        syscall(SYS_tgkill, pid, atomic_load(&workers[i].tid), SIGUSR1);
    while (atomic_load(&naive_acks) < nworkers)
        sched_yield();
}

static void bench_barrier(const char *plugin, int threads, int reps, int iters)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = naive_handler;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0)
        die("membarrier register");
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        die("dlopen");
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "selftest_inc");
    start_workers(threads);
    enum { IDLE, SCAN, STALE, NAIVE, GLIBC, MEMB, NM };
    const char *names[NM] = {"rseqrt_idle", "scan_floor", "rseqrt_stale", "naive", "glibc", "membarrier"};
    uint64_t *s[NM];
    for (int m = 0; m < NM; m++)
        s[m] = calloc((size_t)iters, 8);
    uid_t uid = getuid();
    /* Two blocks per repetition: first the calls that leave blocked threads asleep (rseqrt with
     * none stale, the scan floor, membarrier), then those that wake every thread, so that "idle"
     * means idle. The scan floor: one load of every thread's rseq_cs, what any barrier that
     * looks at every thread must at least do. */
    const int block_of[NM] = {[IDLE] = 0, [SCAN] = 0, [MEMB] = 0, [STALE] = 1, [NAIVE] = 1, [GLIBC] = 1};
    /* Every other iteration runs the naive broadcast before rseqrt's stale barrier: what ran just
     * before decides where and how deeply idle the woken threads are (with one thread on this
     * 2-core machine, 2.4 us or 11-20 us to wake it), so each position is given to both. */
    const int order[2][NM] = {{IDLE, SCAN, STALE, NAIVE, GLIBC, MEMB}, {IDLE, SCAN, NAIVE, STALE, GLIBC, MEMB}};
    for (int r = 0; r < reps; r++) {
        for (int block = 0; block < 2; block++) {
            for (int i = 0; i < iters; i++) {
                for (int k = 0; k < NM; k++) {
                    int m = order[i % 2][k];
                    if (block_of[m] != block)
                        continue;
#ifndef WITH_RSEQRT
                    if (m == IDLE || m == SCAN || m == STALE)
                        continue;
#endif
                    /* The naive broadcast follows the same wake-up as the stale barrier (its
                     * threads run a critical section and go back to sleep), so that both start
                     * from threads in the same state. */
                    if (m == STALE || m == NAIVE)
                        make_stale(threads, inc);
                    uint64_t t0 = now_ns();
                    switch (m) {
#ifdef WITH_RSEQRT
                    case IDLE:
                    case STALE:
                        if (rseqrt_clear_all(0) != 0)
                            die("rseqrt_clear_all");
                        break;
                    case SCAN:
                        load_every_rseq_cs();
                        break;
#endif
                    case NAIVE:
                        naive_broadcast();
                        break;
                    case GLIBC:
                        if (setuid(uid) != 0)
                            die("setuid");
                        break;
                    case MEMB:
                        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0)
                            die("membarrier");
                        break;
                    }
                    s[m][i] = now_ns() - t0;
                }
            }
        }
        for (int m = 0; m < NM; m++) {
#ifndef WITH_RSEQRT
            if (m == IDLE || m == SCAN || m == STALE)
                continue;
#endif
            report(names[m], s[m], iters);
        }
    }
    stop_workers();
}

/* ---- munmap ------------------------------------------------------------------------------ */

void check_munmap_interposed(void)
{
    void *libc_h = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
    void *ours = dlsym(RTLD_DEFAULT, "munmap"), *theirs = libc_h ? dlsym(libc_h, "munmap") : NULL;
    Dl_info info;
    if (ours == theirs || !dladdr(ours, &info) || !strstr(info.dli_fname, "rseqrt")) {
        fprintf(stderr, "munmap preload: munmap is not interposed by librseqrt_preload.so\n");
        exit(4);
    }
}

static void bench_munmap(int threads, int reps, int iters, int preload)
{
    start_workers(threads);
    const size_t len = FRESH_PAGES_LEN;
    uint64_t *a = calloc((size_t)iters, 8), *b = calloc((size_t)iters, 8);
    if (preload)
        check_munmap_interposed();
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < iters; i++) {
            for (int m = 0; m < 2; m++) {
                char *p = fresh_pages();
                uint64_t t0 = now_ns();
                int rc;
                if (preload)
                    rc = m == 0 ? (int)syscall(SYS_munmap, p, len) : munmap(p, len);
                else
#ifdef WITH_RSEQRT
                    rc = m == 0 ? munmap(p, len) : rseqrt_munmap(p, len);
#else
                    rc = munmap(p, len);
#endif
                uint64_t t1 = now_ns();
                if (rc != 0)
                    die("munmap");
                (m == 0 ? a : b)[i] = t1 - t0;
            }
        }
        report(preload ? "syscall" : "plain", a, iters);
        report(preload ? "preloaded" : "rseqrt", b, iters);
    }
    stop_workers();
}

/* ---- thread start ------------------------------------------------------------------------ */

static void *empty(void *arg)
{
    return arg;
}

static void bench_threads(int reps, int iters)
{
    /* One CPU for creator and thread, the same one for every variant (the first this process
     * may use): otherwise where the scheduler puts the new thread, not what either C library
     * does, decides the time. */
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        die("sched_getaffinity");
    int cpu = 0;
    while (cpu < CPU_SETSIZE - 1 && !CPU_ISSET(cpu, &allowed))
        cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
        die("sched_setaffinity");
    uint64_t *s = calloc((size_t)iters, 8);
    for (int i = 0; i < 20; i++) { /* warm up: stacks cached, lazy bindings resolved */
        pthread_t t;
        pthread_create(&t, NULL, empty, NULL);
        pthread_join(t, NULL);
    }
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < iters; i++) {
            pthread_t t;
            uint64_t t0 = now_ns();
            if (pthread_create(&t, NULL, empty, NULL) != 0)
                die("pthread_create");
            pthread_join(t, NULL);
            s[i] = now_ns() - t0;
        }
        report("create_join", s, iters);
    }
}

/* ---- current CPU ------------------------------------------------------------------------- */

static void bench_cpu(int reps, int iters)
{
    enum { BATCH = 20000 };
    const char *names[3] = {"rseqrt", "sched_getcpu", "getcpu_syscall"};
    uint64_t *s[3];
    for (int m = 0; m < 3; m++)
        s[m] = calloc((size_t)iters, 8);
    volatile int sink = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < iters; i++) {
            for (int m = 0; m < 3; m++) {
#ifndef WITH_RSEQRT
                if (m == 0)
                    continue;
#endif
                int n = m == 2 ? BATCH / 20 : BATCH;
                uint64_t t0 = now_ns();
                for (int k = 0; k < n; k++) {
                    switch (m) {
#ifdef WITH_RSEQRT
                    case 0: sink += rseqrt_current_cpu(); break;
#endif
                    case 1: sink += sched_getcpu(); break;
                    default: {
                        unsigned cpu;
                        syscall(SYS_getcpu, &cpu, NULL, NULL);
                        sink += (int)cpu;
                    }
                    }
                }
                /* per call, in hundredths of a nanosecond, so the median keeps its precision */
                s[m][i] = (now_ns() - t0) * 100 / (uint64_t)n;
            }
        }
        for (int m = 0; m < 3; m++) {
#ifndef WITH_RSEQRT
            if (m == 0)
                continue;
#endif
            printf("%s %.2f\n", names[m], median(s[m], iters) / 100.0);
        }
    }
    (void)sink;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef WITH_RSEQRT
    printf("# owner %d\n", rseqrt_owner());
#endif
    if (argc >= 6 && !strcmp(argv[1], "dlclose"))
        bench_dlclose(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    else if (argc >= 6 && !strcmp(argv[1], "barrier"))
        bench_barrier(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    else if (argc >= 5 && !strcmp(argv[1], "munmap"))
        bench_munmap(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), argc > 5 && !strcmp(argv[5], "preload"));
    else if (argc >= 4 && !strcmp(argv[1], "threads"))
        bench_threads(atoi(argv[2]), atoi(argv[3]));
    else if (argc >= 4 && !strcmp(argv[1], "cpu"))
        bench_cpu(atoi(argv[2]), atoi(argv[3]));
    else if (argc >= 8 && !strcmp(argv[1], "idle"))
        bench_idle(argc, argv);
    else {
        fprintf(stderr, "usage: see the comment at the top of rseqrt_bench.c\n");
        return 2;
    }
    return 0;
}
