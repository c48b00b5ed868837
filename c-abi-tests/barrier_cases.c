/* barrier_cases: behaviour of rseqrt's rseq-clear barrier in the hard cases
 * (README "Documented behaviour in the hard cases"), one scenario per run: barriers at once,
 * from a signal handler, under an allocator's lock, with bad input, without membarrier, and
 * rseqrt_clear_all. The sibling programs take the same arguments and exit alike:
 * lifecycle_cases.c (threads that exit, fork, pthread_exit and cancel), unknown_cases.c
 * (threads the barrier's ordinary means do not reach) and sigmask_cases.c (the signal
 * interposers).
 *
 *   barrier_cases SCENARIO METHOD [ARG]
 *
 * METHOD: rseqrt  the memory is freed with rseqrt_munmap()/rseqrt_dlclose() (or the
 *                 scenario's barrier call), and the process must survive;
 *         plain   the same scenario with munmap()/dlclose() and no barrier: the
 *                 kernel must kill the process (SIGSEGV) when a stale thread next
 *                 returns to user space. Not every scenario has a plain form.
 *
 * Scenarios (the numbers are tests/barrier.rs's, which says what each one shows):
 *   concurrent        1. rseqrt_munmap/_clear/_clear_all on different ranges at once
 *   sighandler        4. rseqrt_clear(SIGNAL_SAFE) from a SIGUSR1 handler
 *   sighandler-timer  4. the same while a glibc SIGEV_THREAD helper holds the stale pointer
 *   malloclock        5. rseqrt_munmap holding a mutex standing for malloc's lock
 *   badinput          6. bad arguments: the system call's error, nothing freed
 *   mixed PLUGIN      8. stale threads of every kind, page and plugin (run without membarrier)
 *   clearall          11. rseqrt_clear_all, then a plain munmap
 *
 * Exit status: 0 passed; 1 a check failed (the line starting with FAIL says which);
 * 2 setup error; 3 a stale thread has no registered rseq area (nothing to show);
 * the kernel's SIGSEGV for a stale rseq_cs (plain method); 10 a genuine memory fault
 * (crash_common.h). Every check prints one line. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "stale_threads.h" /* stale threads and free_range() */

/* ------------------------------------------------------ 1. concurrent barriers */

#define CONC_PAGES 4
#define CONC_PER_PAGE 2
#define CONC_ROUNDS 5

static pthread_barrier_t conc_start;
static struct rseq_cs_desc *conc_page[CONC_PAGES];
static int conc_rc[CONC_PAGES + 2], conc_errno[CONC_PAGES + 2];
static char conc_unrelated[1 << 16] __attribute__((aligned(4096)));

static void *conc_barrier(void *arg)
{
    long i = (long)arg;
    pthread_barrier_wait(&conc_start);
    int rc = 0;
    if (i < CONC_PAGES) {
        rc = rseqrt_munmap(conc_page[i], pagesz);
    } else if (i == CONC_PAGES) {
        for (int k = 0; k < 10 && rc == 0; k++)
            rc = rseqrt_clear(conc_unrelated, sizeof conc_unrelated, 0);
    } else {
        for (int k = 0; k < 3 && rc == 0; k++)
            rc = rseqrt_clear_all(0);
    }
    conc_rc[i] = rc;
    conc_errno[i] = rc ? errno : 0;
    return NULL;
}

static void sc_concurrent(void)
{
    struct stale st[CONC_PAGES * CONC_PER_PAGE + 2];
    int nst = CONC_PAGES * CONC_PER_PAGE + (use_rseqrt ? 2 : 0);
    char name[CONC_PAGES * CONC_PER_PAGE + 2][32];
    int rounds = use_rseqrt ? CONC_ROUNDS : 1;
    for (int r = 0; r < rounds; r++) {
        for (int p = 0; p < CONC_PAGES; p++)
            conc_page[p] = desc_page();
        for (int t = 0; t < nst; t++) {
            struct rseq_cs_desc *d = conc_page[t < CONC_PAGES * CONC_PER_PAGE ? t / CONC_PER_PAGE : t % 2];
            if (r == 0) {
                enum stale_kind k = t < CONC_PAGES * CONC_PER_PAGE ? ST_READ : t % 2 ? ST_SIGFILL : ST_SPIN;
                snprintf(name[t], sizeof name[t], "t%d", t);
                stale_start(&st[t], k, name[t], d);
            } else if (st[t].kind == ST_SPIN) {
                /* the spinner keeps its first round's (cleared) pointer: restart it */
                stale_finish(&st[t]);
                stale_start(&st[t], ST_SPIN, name[t], d);
            } else {
                stale_next(&st[t], d);
            }
        }
        for (int t = 0; t < nst; t++)
            if (st[t].kind != ST_SPIN && !refers(stale_cs_now(&st[t]), atomic_load(&st[t].desc), pagesz))
                die(9, "inconclusive: %s's rseq_cs does not refer to its page before the barriers", st[t].name);
        if (!use_rseqrt) {
            for (int p = 0; p < CONC_PAGES; p++)
                free_range(conc_page[p], pagesz, "page");
            break;
        }
        pthread_barrier_init(&conc_start, NULL, CONC_PAGES + 2);
        pthread_t b[CONC_PAGES + 2];
        double t0 = now_ms();
        for (long i = 0; i < CONC_PAGES + 2; i++)
            pthread_create(&b[i], NULL, conc_barrier, (void *)i);
        for (int i = 0; i < CONC_PAGES + 2; i++)
            pthread_join(b[i], NULL);
        double ms = now_ms() - t0;
        pthread_barrier_destroy(&conc_start);
        for (int i = 0; i < CONC_PAGES + 2; i++)
            check(conc_rc[i] == 0, "round %d: concurrent barrier %d (%s) returned %d, errno %d (%s)", r, i,
                  i < CONC_PAGES ? "rseqrt_munmap" : i == CONC_PAGES ? "rseqrt_clear x10" : "rseqrt_clear_all x3",
                  conc_rc[i], conc_errno[i], strerror(conc_errno[i]));
        for (int t = 0; t < nst; t++) {
            uint64_t cs = stale_cs_now(&st[t]);
            for (int p = 0; p < CONC_PAGES; p++)
                if (refers(cs, conc_page[p], pagesz))
                    fail("round %d: after the barriers, %s's rseq_cs %#llx still refers to freed page %d", r,
                         st[t].name, (unsigned long long)cs, p);
        }
        printf("ok   round %d: %d barriers at once over %d stale threads (%d blocked, 1 spinning, 1 sigfilled) "
               "took %.1f ms; no rseq_cs refers to a freed page\n",
               r, CONC_PAGES + 2, nst, nst - 2, ms);
    }
    for (int t = 0; t < nst; t++)
        stale_finish(&st[t]);
    printf("survived\n");
}

/* --------------------------------------------------------- 4. from a signal handler */

static struct rseq_cs_desc *sig_page;
static volatile int sig_rc = -2, sig_errno;
static volatile double sig_ms;

static void clear_in_handler(int sig)
{
    (void)sig;
    int saved = errno;
    double t0 = now_ms();
    sig_rc = rseqrt_clear(sig_page, pagesz, RSEQRT_CLEAR_SIGNAL_SAFE);
    sig_errno = sig_rc ? errno : 0;
    sig_ms = now_ms() - t0;
    errno = saved;
}

/* Runs clear_in_handler() as a SIGUSR1 handler, now. */
static void clear_from_a_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = clear_in_handler;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
}

static void sc_sighandler(void)
{
    sig_page = desc_page();
    struct stale s[3];
    stale_start(&s[0], ST_READ, "blocked-1", sig_page);
    stale_start(&s[1], ST_READ, "blocked-2", sig_page);
    stale_start(&s[2], ST_SIGFILL, "sigfilled", sig_page);
    if (use_rseqrt) {
        clear_from_a_handler();
        check(sig_rc == 0, "rseqrt_clear(SIGNAL_SAFE) from a SIGUSR1 handler, every thread known to rseqrt: "
              "rc %d errno %d (%s), %.2f ms", sig_rc, sig_errno, strerror(sig_errno), sig_ms);
        for (int i = 0; i < 3; i++)
            check(!refers(stale_cs_now(&s[i]), sig_page, pagesz), "%s's rseq_cs no longer refers to the page",
                  s[i].name);
    }
    munmap(sig_page, pagesz); /* plain munmap: safe only after the handler's barrier */
    for (int i = 0; i < 3; i++)
        stale_finish(&s[i]);
    printf("survived\n");
}

/* A glibc SIGEV_THREAD helper (unknown to rseqrt in glibc mode; blocks the reserved
 * signal in both) holds the stale pointer. */
static atomic_int timer_ready;
static int timer_pipe[2];
static struct rseq_cs_area *_Atomic timer_area;

static _Atomic pid_t timer_tid;

static void timer_cb(union sigval sv)
{
    (void)sv;
    if (!rseq_cs_registered()) {
        /* glibc.pthread.rseq=0: glibc does not register its helper; the program does. */
        if (rseqrt_register_current_thread() != 0)
            atomic_store(&timer_ready, -errno);
    }
    atomic_store(&timer_area, rseq_cs_area());
    atomic_store(&timer_tid, (pid_t)syscall(SYS_gettid));
    if (rseq_cs_run(counters, sig_page, rseq_cs_own_code()) < 0 && atomic_load(&timer_ready) == 0)
        atomic_store(&timer_ready, -1000);
    if (atomic_load(&timer_ready) == 0)
        atomic_store(&timer_ready, 1);
    char b;
    while (read(timer_pipe[0], &b, 1) < 0 && errno == EINTR)
        ;
    atomic_store(&timer_ready, 2);
}

static void sc_sighandler_timer(void)
{
    sig_page = desc_page();
    if (pipe(timer_pipe) != 0)
        die(2, "pipe");
    timer_t timer;
    start_timer_thread(timer_cb, &timer);
    double t0 = now_ms();
    while (atomic_load(&timer_ready) == 0) {
        if (now_ms() - t0 > 5000)
            die(2, "timer callback did not run");
        sched_yield();
    }
    if (atomic_load(&timer_ready) < 0)
        die(3, "timer callback thread could not run a critical section (%d)", atomic_load(&timer_ready));
    sleep_ms(5);
    /* glibc 2.34+ blocks every signal in the helper with its internal sigprocmask; before 2.34,
     * librt blocks them through libpthread's pthread_sigmask, which rseqrt interposes: there the
     * helper accepts the reserved signal, and the signal-safe barrier reaches it like any thread. */
    int helper_blocks = has_sig(status_mask(atomic_load(&timer_tid), "SigBlk"), rseqrt_signal());
    if (use_rseqrt) {
        /* Over memory the helper's rseq_cs does not refer to, no broadcast is needed: rseqrt reads
         * the helper's area through glibc's thread list (glibc owner), or knows the helper (it
         * registered itself under rseq=0). The signal-safe barrier, which fails with EAGAIN
         * where it would need the broadcast, says which. */
        static char unrelated[4096] __attribute__((aligned(4096)));
        int urc = rseqrt_clear(unrelated, sizeof unrelated, RSEQRT_CLEAR_SIGNAL_SAFE);
        check(urc == 0, "a signal-safe barrier over unrelated memory needs no broadcast: rc %d errno %d", urc,
              urc ? errno : 0);
        clear_from_a_handler();
        printf("observed: rseqrt_clear(SIGNAL_SAFE) from a handler while a SIGEV_THREAD helper holds a "
               "stale pointer: rc %d errno %d (%s) after %.2f ms; helper rseq_cs %s the page\n",
               sig_rc, sig_errno, strerror(sig_errno), sig_ms,
               refers(atomic_load(&timer_area)->rseq_cs, sig_page, pagesz) ? "still refers to" : "no longer refers to");
        if (helper_blocks) {
            check(sig_rc == -1 && sig_errno == EAGAIN, "signal-safe barrier fails with EAGAIN (needs glibc's broadcast)");
            check(refers(atomic_load(&timer_area)->rseq_cs, sig_page, pagesz),
                  "after EAGAIN the helper's rseq_cs still refers to the page (nothing was freed, nothing pretended)");
        } else {
            check(sig_rc == 0, "the helper accepts the reserved signal: the signal-safe barrier reaches it (rc %d)", sig_rc);
            check(!refers(atomic_load(&timer_area)->rseq_cs, sig_page, pagesz), "the helper's rseq_cs no longer refers to the page");
        }
        double t1 = now_ms();
        int rc = rseqrt_munmap(sig_page, pagesz);
        check(rc == 0, "outside the handler, rseqrt_munmap reaches the helper: rc %d errno %d, %.2f ms", rc,
              rc ? errno : 0, now_ms() - t1);
    } else {
        munmap(sig_page, pagesz);
    }
    if (write(timer_pipe[1], "x", 1) != 1)
        die(2, "write");
    wait_value(&timer_ready, 2, 1, "timer callback did not finish");
    sleep_ms(10);
    printf("survived\n");
}

/* --------------------------------------------------------- 5. under an allocator's lock */

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
static __thread int counting;
static atomic_long alloc_calls;

void *malloc(size_t n)
{
    if (counting)
        atomic_fetch_add(&alloc_calls, 1);
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    if (counting)
        atomic_fetch_add(&alloc_calls, 1);
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    if (counting)
        atomic_fetch_add(&alloc_calls, 1);
    return __libc_realloc(p, n);
}
void free(void *p)
{
    if (counting)
        atomic_fetch_add(&alloc_calls, 1);
    __libc_free(p);
}
void *memalign(size_t al, size_t n)
{
    if (counting)
        atomic_fetch_add(&alloc_calls, 1);
    return __libc_memalign(al, n);
}
void *aligned_alloc(size_t al, size_t n) { return memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n)
{
    void *p = memalign(al, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

static void sc_malloclock(void)
{
    /* The interposers count: otherwise "zero calls" would prove nothing. */
    void *(*volatile m)(size_t) = malloc;
    void *(*volatile r)(void *, size_t) = realloc;
    void (*volatile f)(void *) = free;
    counting = 1;
    void *probe = m(24);
    probe = r(probe, 48);
    f(probe);
    counting = 0;
    check(atomic_load(&alloc_calls) == 3, "the test's malloc/realloc/free interposers count calls (%ld of 3)",
          atomic_load(&alloc_calls));
    atomic_store(&alloc_calls, 0);

    static pthread_mutex_t malloc_lock = PTHREAD_MUTEX_INITIALIZER;
    struct rseq_cs_desc *p = desc_page();
    pthread_mutex_lock(&malloc_lock); /* this thread is "inside malloc" */
    struct stale s[4];
    for (int i = 0; i < 3; i++) {
        memset(&s[i], 0, sizeof s[i]);
        s[i].kind = ST_MUTEX;
        s[i].name = "waiter";
        s[i].mutex = &malloc_lock;
        atomic_store(&s[i].desc, p);
        if (pipe(s[i].pipe) != 0)
            die(2, "pipe");
        pthread_create(&s[i].thread, NULL, stale_main, &s[i]);
        stale_wait_round(&s[i], 1);
        wait_sleeping(s[i].tid, "waiter");
    }
    stale_start(&s[3], ST_RAWBLOCK, "rawblock", p);
    for (int i = 0; i < 4; i++)
        if (!refers(stale_cs_now(&s[i]), p, pagesz))
            die(9, "inconclusive: %s's rseq_cs is already 0", s[i].name);
    double t0 = now_ms();
    counting = 1;
    int rc = use_rseqrt ? rseqrt_munmap(p, pagesz) : munmap(p, pagesz);
    int e = errno;
    counting = 0;
    double ms = now_ms() - t0;
    check(rc == 0, "%s with the 'malloc lock' held and 3 stale threads waiting for it (+1 blocking every "
          "signal): rc %d errno %d, %.1f ms, no deadlock", use_rseqrt ? "rseqrt_munmap" : "munmap", rc, e, ms);
    check(atomic_load(&alloc_calls) == 0, "malloc/calloc/realloc/free/memalign calls during it: %ld",
          atomic_load(&alloc_calls));
    pthread_mutex_unlock(&malloc_lock);
    for (int i = 0; i < 4; i++)
        stale_finish(&s[i]);
    printf("survived\n");
}

/* ---------------------------------------------------------------- 6. bad input */

static char bogus_handle[8192] __attribute__((aligned(4096)));

static void sc_badinput(void)
{
    char *page = map_pages(2);
    memset(page, 0x5a, 2 * pagesz);
    struct {
        const char *what;
        void *addr;
        size_t len;
    } cases[] = {
        {"unaligned address", page + 1, pagesz},
        {"length 0", page, 0},
        {"address + length overflows", page, (size_t)0 - pagesz},
        {"kernel address", (void *)0xffff800000000000ull, pagesz},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        int r1 = rseqrt_munmap(cases[i].addr, cases[i].len);
        int e1 = errno;
        errno = 0;
        int r2 = munmap(cases[i].addr, cases[i].len);
        int e2 = errno;
        check(r1 == -1 && e1 == EINVAL && r1 == r2 && e1 == e2,
              "rseqrt_munmap(%s) = %d errno %d (%s); munmap gives %d errno %d", cases[i].what, r1, e1,
              strerror(e1), r2, e2);
    }
    for (size_t i = 0; i < 2 * pagesz; i++)
        if ((unsigned char)page[i] != 0x5a)
            fail("the pages changed after failed calls (byte %zu)", i);
    reached("both pages still mapped with their contents after the failed calls");
    unsigned flags[] = {2, 0x80000000u, RSEQRT_CLEAR_SIGNAL_SAFE | 4};
    for (size_t i = 0; i < 3; i++) {
        errno = 0;
        int r = rseqrt_clear(page, pagesz, flags[i]);
        check(r == -1 && errno == EINVAL, "rseqrt_clear(flags %#x) = %d errno %d (%s)", flags[i], r, errno,
              strerror(errno));
        errno = 0;
        r = rseqrt_clear_all(flags[i]);
        check(r == -1 && errno == EINVAL, "rseqrt_clear_all(flags %#x) = %d errno %d", flags[i], r, errno);
    }
    errno = 0;
    int r = rseqrt_clear(page, 0, 0);
    check(r == -1 && errno == EINVAL, "rseqrt_clear(len 0) = %d errno %d", r, errno);
    r = rseqrt_clear(page, 2 * pagesz, 0);
    check(r == 0, "rseqrt_clear with valid arguments = %d", r);

    dlerror();
    int d1 = dlclose(bogus_handle);
    const char *m = dlerror();
    char msg1[512];
    snprintf(msg1, sizeof msg1, "%s", m ? m : "(null)");
    int d2 = rseqrt_dlclose(bogus_handle);
    m = dlerror();
    char msg2[512];
    snprintf(msg2, sizeof msg2, "%s", m ? m : "(null)");
    check(d2 != 0 && m != NULL, "rseqrt_dlclose(bogus handle) = %d, dlerror \"%s\"", d2, msg2);
    check(d1 == d2 && !strcmp(msg1, msg2), "same as dlclose(bogus handle) = %d, dlerror \"%s\"", d1, msg1);
    printf("survived\n");
}

/* ----------------------------------------- 8. mixed scenario (run without membarrier) */

static void sc_mixed(const char *plugin)
{
    errno = 0;
    long mb = syscall(SYS_membarrier, 0 /* QUERY */, 0, 0);
    printf("membarrier(QUERY) = %ld, errno %d (%s)\n", mb, mb < 0 ? errno : 0, mb < 0 ? strerror(errno) : "-");
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        die(2, "dlopen %s: %s", plugin, dlerror());
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "plugin_inc");
    if (!inc)
        die(2, "dlsym plugin_inc");
    struct rseq_cs_desc *p = desc_page();
    struct stale s[5];
    int n = 0;
    stale_start(&s[n++], ST_READ, "blocked", p);
    stale_start(&s[n++], ST_SIGFILL, "sigfilled", p);
    memset(&s[n], 0, sizeof s[n]);
    s[n].kind = ST_READ;
    s[n].name = "plugin-blocked";
    s[n].plugin_fn = inc;
    if (pipe(s[n].pipe) != 0)
        die(2, "pipe");
    pthread_create(&s[n].thread, NULL, stale_main, &s[n]);
    stale_wait_round(&s[n], 1);
    wait_sleeping(s[n].tid, "plugin-blocked");
    n++;
    if (use_rseqrt) {
        stale_start(&s[n++], ST_SPIN, "spinning", p);
        memset(&s[n], 0, sizeof s[n]);
        s[n].kind = ST_SPIN;
        s[n].name = "plugin-spinning";
        s[n].plugin_fn = inc;
        pthread_create(&s[n].thread, NULL, stale_main, &s[n]);
        stale_wait_round(&s[n], 1);
        n++;
    }
    double t0 = now_ms();
    free_range(p, pagesz, "page");
    int rc = use_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
    if (rc != 0)
        fail("dlclose: %d %s", rc, dlerror());
    double ms = now_ms() - t0;
    if (dlopen(plugin, RTLD_NOW | RTLD_NOLOAD))
        die(6, "the plugin is still loaded after dlclose");
    if (use_rseqrt)
        reached("rseqrt_munmap + rseqrt_dlclose under %d stale threads (blocked, sigfilled, spinning; page and "
                "plugin) took %.1f ms", n, ms);
    for (int i = 0; i < n; i++)
        stale_finish(&s[i]);
    printf("survived\n");
}

/* ---------------------------------------------------------------- 11. clear_all */

static void sc_clearall(void)
{
    struct rseq_cs_desc *p = desc_page();
    struct stale s[4];
    int n = 0;
    stale_start(&s[n++], ST_READ, "blocked-1", p);
    stale_start(&s[n++], ST_READ, "blocked-2", p);
    stale_start(&s[n++], ST_SIGFILL, "sigfilled", p);
    if (use_rseqrt)
        stale_start(&s[n++], ST_SPIN, "spinning", p);
    for (int i = 0; i < n; i++)
        if (!refers(stale_cs_now(&s[i]), p, pagesz))
            die(9, "inconclusive: %s's rseq_cs already 0", s[i].name);
    if (use_rseqrt) {
        double t0 = now_ms();
        int rc = rseqrt_clear_all(0);
        check(rc == 0, "rseqrt_clear_all(0) = %d (%.2f ms)", rc, now_ms() - t0);
        for (int i = 0; i < n; i++)
            check(stale_cs_now(&s[i]) == 0, "%s's rseq_cs reads 0 from outside", s[i].name);
    }
    munmap(p, pagesz); /* plain munmap */
    for (int i = 0; i < n; i++)
        stale_finish(&s[i]);
    for (int i = 0; i < n; i++)
        check(s[i].self_seen == 0, "%s read its own rseq_cs after waking: %#llx", s[i].name,
              (unsigned long long)s[i].self_seen);
    printf("survived\n");
}

/* ------------------------------------------------------------------------ main */

static const struct scenario scenarios[] = {
    {"concurrent", sc_concurrent, NULL, 0},
    {"sighandler", sc_sighandler, NULL, 0},
    {"sighandler-timer", sc_sighandler_timer, NULL, 0},
    {"malloclock", sc_malloclock, NULL, 0},
    {"badinput", sc_badinput, NULL, 0},
    {"mixed", NULL, sc_mixed, 1},
    {"clearall", sc_clearall, NULL, 0},
};

int main(int argc, char **argv)
{
    return cases_main(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
