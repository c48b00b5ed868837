/* regress_cases: regression tests for bugs found in review (tests/regress.rs says which), one
 * scenario per run, in the style of barrier_cases.c.
 *
 *   regress_cases SCENARIO METHOD [ARGS...]
 *
 * METHOD: rseqrt  free with rseqrt_munmap()/rseqrt_dlclose(): the process must survive (exit 0);
 *         plain   the same with munmap()/dlclose(): the kernel must kill the process (SIGSEGV)
 *                 when the stale thread next returns to user space. Not every scenario has one.
 *
 * Scenarios:
 *   tsd first|last return|exit [raw]   a program TSD destructor runs a critical section in a plugin
 *   early                              a library's constructor ran a thread before rseqrt's
 *                                      (the program is linked with, or preloads, libregress_early.so)
 *   wholepage                          rseqrt_munmap(page, 100) with the descriptor at page + 2048
 *   dtor PLUGIN                        the plugin's destructor runs a critical section in dlclose()
 *   inflight                           a SIGEV_THREAD callback is stale while threads are in the
 *                                      middle of pthread_create (preload libregress_slowshim.so)
 *   probe                              what a program sees where rseq fails (run under seccomp_exec)
 *   tempmask ppoll|pselect|epoll_pwait|epoll_pwait2|sigsuspend
 *                                      a stale thread waits there with a full temporary mask
 *   attrmask                           a stale thread started with pthread_attr_setsigmask_np(full)
 *   bogus                              rseqrt_dlclose() of handles that are not loaded objects
 *
 * Exit status: 0 passed; 1 a check failed (the line starting with FAIL says which); 2 setup
 * error; 3 the stale thread has no registered rseq area (nothing to show); 9 inconclusive (run
 * again); the kernel's SIGSEGV (plain method); 10 a genuine memory fault (crash_common.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <limits.h> /* PTHREAD_STACK_MIN (before glibc 2.34 <pthread.h> does not bring it) */

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */

/* glibc declares these from 2.35 and 2.32 on. Before, rseqrt still defines its interposers (under
 * glibc's later versions) but there is no C library function behind them: regress.rs runs the
 * cases that call them only where glibc has them. */
#if !__GLIBC_PREREQ(2, 35)
int epoll_pwait2(int epfd, struct epoll_event *events, int maxevents, const struct timespec *timeout,
                 const sigset_t *sigmask);
#endif
#if !__GLIBC_PREREQ(2, 32)
int pthread_attr_setsigmask_np(pthread_attr_t *attr, const sigset_t *sigmask);
#endif

/* ------------------------------------------------------------------ helpers */

static uint64_t cs_of(struct rseq_cs_area *a)
{
    return __atomic_load_n(&a->rseq_cs, __ATOMIC_SEQ_CST);
}

/* Whether the page at p is still mapped (msync answers ENOMEM for unmapped memory). */
static int mapped(void *p)
{
    return msync(p, pagesz, MS_ASYNC) == 0 || errno != ENOMEM;
}

static void *open_plugin(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        die(2, "dlopen %s: %s", path, dlerror());
    return h;
}

/* The length the calling thread's area is registered with: the one for which rseq() answers
 * EBUSY (the kernel answers EINVAL for another length, EBUSY for the registered one). */
static int registered_len(void)
{
    for (int len = 20; len <= 512; len += 4) {
        errno = 0;
        if (syscall(SYS_rseq, rseq_cs_area(), len, 0, RSEQ_CS_SIG) == -1 && errno == EBUSY)
            return len;
    }
    return -1;
}

static void read_byte(int fd)
{
    char b;
    while (read(fd, &b, 1) < 0 && errno == EINTR)
        ;
}

static void write_byte(int fd)
{
    if (write(fd, "x", 1) != 1)
        die(2, "write: %s", strerror(errno));
}

/* ------------------------------------------------ 1. TSD destructors at thread exit */

static pthread_key_t tsd_key;
static int (*tsd_inc)(long *);
static int tsd_last, tsd_exit, tsd_raw, tsd_len;
static int tsd_pipe[2];
static atomic_int tsd_ready, tsd_done;
static int tsd_registered, tsd_rseq_errno, tsd_cpu, tsd_round;
static uint64_t tsd_cs;
static struct rseq_cs_area *_Atomic tsd_area;

static void tsd_dtor(void *v)
{
    long round = (long)v;
    if (tsd_last && round < 4) {
        /* Runs again in the next round: in the last one (glibc's 4th) it runs after rseqrt's. */
        pthread_setspecific(tsd_key, (void *)(round + 1));
        return;
    }
    tsd_round = (int)round;
    tsd_registered = rseq_cs_registered();
    if (!tsd_last) {
        errno = 0;
        long r = syscall(SYS_rseq, rseq_cs_area(), tsd_len, 0, RSEQ_CS_SIG);
        tsd_rseq_errno = r == -1 ? errno : 0;
    }
    if (tsd_raw)
        raw_block_all_but_glibc();
    atomic_store(&tsd_area, rseq_cs_area());
    tsd_cpu = tsd_inc(counters); /* in the plugin */
    tsd_cs = rseq_cs_current();
    atomic_store(&tsd_ready, 1);
    read_byte(tsd_pipe[0]);
    atomic_store(&tsd_done, 1);
}

static void *tsd_thread(void *arg)
{
    (void)arg;
    pthread_setspecific(tsd_key, (void *)1L);
    if (tsd_exit)
        pthread_exit(NULL);
    return NULL;
}

static void sc_tsd(int argc, char **argv)
{
    const char *plugin = argc > 0 ? argv[0] : NULL;
    int ok = argc >= 3;
    if (ok) {
        tsd_last = !strcmp(argv[1], "last");
        tsd_exit = !strcmp(argv[2], "exit");
        tsd_raw = argc > 3 && !strcmp(argv[3], "raw");
        ok = (tsd_last || !strcmp(argv[1], "first")) && (tsd_exit || !strcmp(argv[2], "return"));
    }
    if (!ok)
        die(2, "usage: tsd METHOD PLUGIN first|last return|exit [raw]");
    if (tsd_last && !use_rseqrt)
        die(2, "tsd last has no plain form (nothing is left stale)");
    tsd_len = registered_len();
    if (tsd_len < 0)
        die(3, "the main thread's area is not registered (rseq() never answers EBUSY)");
    if (pipe(tsd_pipe) != 0)
        die(2, "pipe");
    /* Created by the program, after rseqrt's exit key: its destructor runs after rseqrt's. */
    pthread_key_create(&tsd_key, tsd_dtor);
    void *h = open_plugin(plugin);
    tsd_inc = (int (*)(long *))dlsym(h, "plugin_inc");
    if (!tsd_inc)
        die(2, "no plugin_inc in %s", plugin);
    pthread_t t;
    pthread_create(&t, NULL, tsd_thread, NULL);
    double t0 = now_ms();
    while (!atomic_load(&tsd_ready)) {
        if (now_ms() - t0 > 5000)
            die(2, "the destructor did not run");
        sleep_ms(0.2);
    }
    sleep_ms(5);
    printf("observed: destructor in round %d (%s%s): registered %d, cpu %d, rseq_cs %#llx\n", tsd_round,
           tsd_exit ? "pthread_exit" : "return", tsd_raw ? ", every signal but glibc's blocked raw" : "",
           tsd_registered, tsd_cpu, (unsigned long long)tsd_cs);
    if (!tsd_last) {
        check(tsd_registered && tsd_rseq_errno == EBUSY,
              "in a program key's destructor (round %d) the thread is still registered: cpu_id >= 0 %d, "
              "rseq(area, %d) again answers errno %d (%s), want EBUSY",
              tsd_round, tsd_registered, tsd_len, tsd_rseq_errno, strerror(tsd_rseq_errno));
        if (tsd_cpu < 0 || !tsd_cs)
            die(3, "the destructor's critical section left no rseq_cs (cpu %d)", tsd_cpu);
    } else {
        check(tsd_round == 4, "the destructor ran in glibc's last round (%d)", tsd_round);
        check(!tsd_registered && tsd_cpu < 0 && cs_of(atomic_load(&tsd_area)) == 0,
              "in the last round, after rseqrt's destructor retired the thread, its area is unregistered and "
              "the critical section takes its fallback path (registered %d, cpu %d, rseq_cs %#llx)",
              tsd_registered, tsd_cpu, (unsigned long long)cs_of(atomic_load(&tsd_area)));
    }
    int rc = use_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
    if (rc != 0)
        fail("%s = %d (%s)", use_rseqrt ? "rseqrt_dlclose" : "dlclose", rc, dlerror());
    if (use_rseqrt)
        check(!tsd_cs || cs_of(atomic_load(&tsd_area)) != tsd_cs,
              "rseqrt_dlclose = 0; the destructor's rseq_cs no longer refers to the plugin (%#llx)",
              (unsigned long long)cs_of(atomic_load(&tsd_area)));
    write_byte(tsd_pipe[1]); /* the thread returns to user space, then exits */
    pthread_join(t, NULL);
    check(atomic_load(&tsd_done), "the exiting thread woke and finished its destructor");
    printf("survived\n");
}

/* ------------------------------- 2. a thread started before rseqrt's constructor */

struct regress_early_info {
    int signal_at_ctor, create_rc, cpu, stack_munmap_rc;
    uint64_t cs;
    void *desc_page;
    char provider[256];
};

static int stale_pipe[2];
static atomic_int stale_ready;
static struct rseq_cs_desc *stale_desc;
static int stale_cpu;

static void *stale_reader(void *arg)
{
    (void)arg;
    stale_cpu = rseq_cs_run(counters, stale_desc, rseq_cs_own_code());
    atomic_store(&stale_ready, 1);
    read_byte(stale_pipe[0]);
    return NULL;
}

/* A copy of this program's descriptor at AT, for stale_reader. */
static void stale_desc_at(void *at)
{
    stale_desc = at;
    memcpy(stale_desc, rseq_cs_own_desc(), sizeof *stale_desc);
}

/* Starts FN (stale_reader, or one like it: sets stale_cpu, then stale_ready, then reads
 * stale_pipe) and waits until it has run its critical section, then 5 ms for it to block.
 * NEED_AREA: a stale thread without a registered area has nothing to show (exit 3). */
static pthread_t stale_start(void *(*fn)(void *), int need_area)
{
    if (pipe(stale_pipe) != 0)
        die(2, "pipe");
    pthread_t t;
    pthread_create(&t, NULL, fn, NULL);
    while (!atomic_load(&stale_ready))
        sched_yield();
    if (need_area && stale_cpu < 0)
        die(3, "the stale thread has no registered area");
    sleep_ms(5);
    return t;
}

/* Wakes the stale thread (it returns to user space) and joins it: the process survived. */
static void stale_finish(pthread_t t)
{
    write_byte(stale_pipe[1]);
    pthread_join(t, NULL);
    printf("survived\n");
}

static void sc_early(int argc, char **argv)
{
    (void)argc, (void)argv;
    if (!use_rseqrt)
        die(2, "early has no plain form");
    struct regress_early_info *in = dlsym(RTLD_DEFAULT, "regress_early_info");
    if (!in)
        die(2, "libregress_early.so is not loaded (link or preload it)");
    printf("observed: the library's worker: pthread_create from %s = %d, cpu %d, rseq_cs %#llx\n", in->provider,
           in->create_rc, in->cpu, (unsigned long long)in->cs);
    if (in->signal_at_ctor != 0)
        die(2, "the library's constructor ran after rseqrt's (rseqrt_signal() = %d there): nothing to show",
            in->signal_at_ctor);
    check(1, "the library's constructor ran before rseqrt's (rseqrt_signal() was 0 there)");
    check(in->create_rc == 0 && strstr(in->provider, "rseqrt"),
          "its worker was started through rseqrt's pthread_create (%s), rc %d", in->provider, in->create_rc);
    check(in->stack_munmap_rc == 0, "the worker exited and its stack (its TCB and area) was unmapped");
    void *unrelated = map_pages(1);
    double t0 = now_ms();
    int rc = rseqrt_munmap(unrelated, pagesz);
    double ms = now_ms() - t0;
    check(rc == 0 && ms < 1000, "rseqrt_munmap of an unrelated page = %d (errno %d) in %.1f ms", rc,
          rc ? errno : 0, ms);
    t0 = now_ms();
    rc = rseqrt_clear_all(0);
    ms = now_ms() - t0;
    check(rc == 0 && ms < 1000, "rseqrt_clear_all = %d in %.1f ms", rc, ms);
    t0 = now_ms();
    rc = rseqrt_munmap(in->desc_page, pagesz);
    ms = now_ms() - t0;
    check(rc == 0 && ms < 1000, "rseqrt_munmap of the page the worker's descriptor was in = %d (errno %d) in "
          "%.1f ms", rc, rc ? errno : 0, ms);
    /* Barriers still reach live stale threads. */
    stale_desc = desc_page();
    pthread_t t = stale_start(stale_reader, 0);
    rc = rseqrt_munmap(stale_desc, pagesz);
    check(rc == 0, "a new stale thread: rseqrt_munmap of its descriptor's page = %d (cpu %d)", rc, stale_cpu);
    stale_finish(t);
}

/* ------------------------------------------------------------- 3. whole pages */

static void sc_wholepage(int argc, char **argv)
{
    (void)argc, (void)argv;
    char *page = map_pages(1);
    stale_desc_at(page + 2048);
    pthread_t t = stale_start(stale_reader, 1);
    int rc = use_rseqrt ? rseqrt_munmap(page, 100) : munmap(page, 100);
    if (rc != 0)
        fail("%s(page, 100) = %d (%s)", use_rseqrt ? "rseqrt_munmap" : "munmap", rc, strerror(errno));
    check(!mapped(page), "%s(page, 100) = 0 unmapped the whole page (descriptor at page + 2048)",
          use_rseqrt ? "rseqrt_munmap" : "munmap");
    stale_finish(t);
}

/* A barrier from a thread with the smallest stack glibc allows (PTHREAD_STACK_MIN): the barrier
 * must fit, on its slowest paths too (a stale blocked thread to signal; with glibc's SIGEV_THREAD
 * helper present, the process has threads rseqrt does not know). */
static void small_stack_timer_cb(union sigval v) { (void)v; }
static char *small_stack_page;
static int small_stack_rc = -99;

static void *small_stack_free(void *arg)
{
    (void)arg;
    small_stack_rc = use_rseqrt ? rseqrt_munmap(small_stack_page, 4096) : munmap(small_stack_page, 4096);
    return NULL;
}

static void sc_smallstack(int argc, char **argv)
{
    (void)argc, (void)argv;
    timer_t timer;
    const char *err = crash_start_timer_thread(small_stack_timer_cb, &timer);
    if (err)
        die(2, "timer: %s", err);
    small_stack_page = map_pages(1);
    stale_desc_at(small_stack_page);
    pthread_t t = stale_start(stale_reader, 1), f;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN) != 0)
        die(2, "pthread_attr_setstacksize");
    pthread_create(&f, &attr, small_stack_free, NULL);
    pthread_join(f, NULL);
    check(small_stack_rc == 0, "%s from a %ld-byte stack = %d", use_rseqrt ? "rseqrt_munmap" : "munmap",
          (long)PTHREAD_STACK_MIN, small_stack_rc);
    stale_finish(t);
}

/* An object kept loaded only by another's relocation dependency: B is loaded RTLD_GLOBAL, A binds
 * to it (no DT_NEEDED), B's own handle is closed (B stays: A needs it). Closing A unmaps B too,
 * so the barrier must cover B although A's dependency list does not name it. */
static int (*reldep_inc)(void);
static void *reldep_reader(void *arg)
{
    (void)arg;
    stale_cpu = reldep_inc();
    atomic_store(&stale_ready, 1);
    read_byte(stale_pipe[0]);
    return NULL;
}

static void sc_reldep(int argc, char **argv)
{
    if (argc < 2)
        die(2, "usage: reldep METHOD A.so B.so");
    void *b = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    void *a = dlopen(argv[0], RTLD_NOW);
    if (!a || !b)
        die(2, "dlopen: %s", dlerror());
    reldep_inc = (int (*)(void))dlsym(a, "a_inc");
    if (!reldep_inc)
        die(2, "setup");
    pthread_t t = stale_start(reldep_reader, 1);
    dlclose(b);
    check(dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL, "B stays loaded after its own dlclose (A binds to it)");
    dlclose(b);
    int rc = use_rseqrt ? rseqrt_dlclose(a) : dlclose(a);
    check(rc == 0, "%s(A) = %d", use_rseqrt ? "rseqrt_dlclose" : "dlclose", rc);
    check(dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) == NULL, "closing A unloaded B");
    stale_finish(t);
}

/* ---------------------------------------------------- 4. dlclose runs destructors */

static void sc_dtor(int argc, char **argv)
{
    if (argc < 1)
        die(2, "usage: dtor METHOD PLUGIN");
    void *h = open_plugin(argv[0]);
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "plugin_inc");
    void (*report)(int *) = (void (*)(int *))dlsym(h, "plugin_report");
    if (!inc || !report)
        die(2, "%s lacks plugin_inc/plugin_report", argv[0]);
    static int dtor_cpu = -99;
    report(&dtor_cpu);
    int cpu = inc(counters);
    if (cpu < 0)
        die(3, "the main thread has no registered area");
    printf("observed: before dlclose the main thread's rseq_cs is %#llx (in the plugin)\n",
           (unsigned long long)rseq_cs_current());
    int rc = use_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
    uint64_t cs = rseq_cs_current();
    sleep_ms(2); /* a return to user space after a context switch: the kernel reads rseq_cs */
    if (rc != 0)
        fail("%s = %d (%s)", use_rseqrt ? "rseqrt_dlclose" : "dlclose", rc, dlerror());
    printf("observed: the plugin's destructor ran its critical section: cpu %d; rseq_cs after: %#llx\n",
           dtor_cpu, (unsigned long long)cs);
    if (use_rseqrt) {
        check(dtor_cpu == -1, "rseqrt_dlclose: the destructor's critical section took its fallback path "
              "(the caller's area unregistered meanwhile): cpu %d", dtor_cpu);
        check(cs == 0 && rseq_cs_registered(), "after rseqrt_dlclose the caller's rseq_cs is 0 (%#llx) and it is "
              "registered again (cpu_id %d)", (unsigned long long)cs, (int32_t)rseq_cs_area()->cpu_id);
        errno = 0;
        check(registered_len() > 0, "rseq() again answers EBUSY for the caller's area");
        check(rseq_cs_inc(counters) >= 0, "a critical section after it runs");
    }
    printf("survived\n");
}

/* ------------------------------------------- 5. threads in the middle of pthread_create */

static struct rseq_cs_desc *inf_page;
static int inf_pipe[2];
static atomic_int inf_state; /* 1 ran its critical section, 2 woke */
static int inf_cpu;
static struct rseq_cs_area *_Atomic inf_area;
static atomic_int inf_go;

static void inf_callback(union sigval v)
{
    (void)v;
    atomic_store(&inf_area, rseq_cs_area());
    inf_cpu = rseq_cs_run(counters, inf_page, rseq_cs_own_code());
    atomic_store(&inf_state, 1);
    read_byte(inf_pipe[0]);
    atomic_store(&inf_state, 2);
}

static void *inf_idle(void *arg)
{
    (void)arg;
    sleep_ms(20);
    return NULL;
}

static void *inf_creator(void *arg)
{
    (void)arg;
    while (!atomic_load(&inf_go))
        sleep_ms(0.1);
    pthread_t t;
    if (pthread_create(&t, NULL, inf_idle, NULL) == 0)
        pthread_join(t, NULL);
    return NULL;
}

#define INF_CREATORS 2

static void sc_inflight(int argc, char **argv)
{
    (void)argc, (void)argv;
    atomic_int *shim_in = dlsym(RTLD_DEFAULT, "regress_shim_in");
    atomic_int *shim_slow = dlsym(RTLD_DEFAULT, "regress_shim_slow");
    if (!shim_in || !shim_slow)
        die(2, "libregress_slowshim.so is not preloaded");
    inf_page = desc_page();
    if (pipe(inf_pipe) != 0)
        die(2, "pipe");
    timer_t tm;
    start_timer_thread(inf_callback, &tm);
    double t0 = now_ms();
    while (!atomic_load(&inf_state)) {
        if (now_ms() - t0 > 5000)
            die(2, "the timer callback did not run");
        sleep_ms(0.5);
    }
    int stale = inf_cpu >= 0;
    if (!stale) {
        if (!use_rseqrt)
            die(3, "the SIGEV_THREAD callback thread has no registered area");
        printf("observed: the SIGEV_THREAD callback thread has no registered area (owner %d): nothing stale\n",
               rseqrt_owner());
    } else if (!refers(cs_of(atomic_load(&inf_area)), inf_page, pagesz)) {
        die(9, "inconclusive: the callback's rseq_cs was cleared before the barrier");
    }
    pthread_t c[INF_CREATORS];
    for (int i = 0; i < INF_CREATORS; i++)
        pthread_create(&c[i], NULL, inf_creator, NULL);
    atomic_store(shim_slow, 1);
    atomic_store(&inf_go, 1);
    t0 = now_ms();
    while (atomic_load(shim_in) < INF_CREATORS) {
        if (now_ms() - t0 > 5000)
            die(2, "rseqrt's pthread_create did not reach the slow shim (preload order?)");
        sleep_ms(0.5);
    }
    sleep_ms(20);
    double t1 = now_ms();
    int rc = use_rseqrt ? rseqrt_munmap(inf_page, pagesz) : munmap(inf_page, pagesz);
    double ms = now_ms() - t1;
    int e = errno;
    int in_create = atomic_load(shim_in) >= INF_CREATORS && now_ms() - t0 < 300;
    if (rc != 0)
        fail("%s = %d, errno %d (%s)", use_rseqrt ? "rseqrt_munmap" : "munmap", rc, e, strerror(e));
    if (use_rseqrt) {
        printf("observed: rseqrt_munmap took %.1f ms; %d threads were inside pthread_create %s\n", ms, INF_CREATORS,
               in_create ? "throughout" : "at its start");
        if (stale)
            check(!refers(cs_of(atomic_load(&inf_area)), inf_page, pagesz),
                  "rseqrt_munmap = 0 while %d threads were in the middle of pthread_create: the callback's rseq_cs "
                  "no longer refers to the page (%#llx)", INF_CREATORS, (unsigned long long)cs_of(atomic_load(&inf_area)));
    }
    write_byte(inf_pipe[1]);
    wait_value(&inf_state, 2, 0.5, "the callback did not wake");
    sleep_ms(2);
    for (int i = 0; i < INF_CREATORS; i++)
        pthread_join(c[i], NULL);
    check(1, "the callback woke and returned to user space");
    printf("survived\n");
}

/* -------------------------------------------------- 6. where rseq is refused */

static atomic_int probe_thread_cpu = 99;
static void *probe_thread(void *arg)
{
    (void)arg;
    atomic_store(&probe_thread_cpu, (int32_t)rseq_cs_area()->cpu_id);
    return NULL;
}

static void sc_probe(int argc, char **argv)
{
    (void)argc, (void)argv;
    int32_t cpu_id = (int32_t)rseq_cs_area()->cpu_id;
    errno = 0;
    long r = syscall(SYS_rseq, NULL, 0, 0, 0);
    printf("observed: rseq(NULL, 0, 0, 0) = %ld errno %d (%s); __rseq_offset %td\n", r, errno, strerror(errno),
           __rseq_offset);
    check(rseqrt_owner() == RSEQRT_OWNER_NONE, "rseqrt_owner() = %d (NONE)", rseqrt_owner());
    check(__rseq_size == 0, "__rseq_size = %u", __rseq_size);
    check(cpu_id == -2, "the main thread's cpu_id (thread pointer + __rseq_offset) = %d (-2: registration failed)",
          cpu_id);
    check(rseqrt_current_area() == NULL, "rseqrt_current_area() = %p", (void *)rseqrt_current_area());
    pthread_t t;
    pthread_create(&t, NULL, probe_thread, NULL);
    pthread_join(t, NULL);
    check(atomic_load(&probe_thread_cpu) == -2, "a new thread's cpu_id = %d", atomic_load(&probe_thread_cpu));
    check(rseqrt_current_cpu() >= 0, "rseqrt_current_cpu() = %d (getcpu fallback)", rseqrt_current_cpu());
    errno = 0;
    int rr = rseqrt_register_current_thread();
    check(rr == -1, "rseqrt_register_current_thread() = %d, errno %d (%s)", rr, errno, strerror(errno));
    void *p = map_pages(1);
    check(rseqrt_munmap(p, pagesz) == 0 && !mapped(p), "rseqrt_munmap still unmaps");
    printf("survived\n");
}

/* ---------------------------------------- 7. temporary masks keep the signal deliverable */

enum tm_call { TM_PPOLL, TM_PSELECT, TM_EPOLL_PWAIT, TM_EPOLL_PWAIT2, TM_SIGSUSPEND, TM_ATTR };
static const char *tm_names[] = {"ppoll", "pselect", "epoll_pwait", "epoll_pwait2", "sigsuspend", "read (started with pthread_attr_setsigmask_np)"};

struct tm_thread {
    enum tm_call call;
    struct rseq_cs_desc *desc;
    int pipe[2];
    int epfd;
    pthread_t thread;
    atomic_int tid, ready, stop, done, cpu, err;
    struct rseq_cs_area *_Atomic area;
};

static void *tm_main(void *arg)
{
    struct tm_thread *s = arg;
    atomic_store(&s->tid, gettid_());
    atomic_store(&s->area, rseq_cs_area());
    atomic_store(&s->cpu, rseq_cs_run(counters, s->desc, rseq_cs_own_code()));
    sigset_t full;
    sigfillset(&full);
    struct pollfd pfd = {.fd = s->pipe[0], .events = POLLIN};
    struct epoll_event ev;
    atomic_store(&s->ready, 1);
    while (!atomic_load(&s->stop)) {
        int r = 0;
        switch (s->call) {
        case TM_PPOLL:
            r = ppoll(&pfd, 1, NULL, &full);
            break;
        case TM_PSELECT: {
            fd_set rd;
            FD_ZERO(&rd);
            FD_SET(s->pipe[0], &rd);
            r = pselect(s->pipe[0] + 1, &rd, NULL, NULL, NULL, &full);
            break;
        }
        case TM_EPOLL_PWAIT:
            r = epoll_pwait(s->epfd, &ev, 1, -1, &full);
            break;
        case TM_EPOLL_PWAIT2:
            r = epoll_pwait2(s->epfd, &ev, 1, NULL, &full);
            break;
        case TM_SIGSUSPEND:
            r = sigsuspend(&full);
            break;
        case TM_ATTR:
            r = (int)read(s->pipe[0], &ev, 1);
            break;
        }
        if (r < 0 && errno != EINTR) {
            atomic_store(&s->err, errno);
            break;
        }
    }
    atomic_store(&s->done, 1);
    return NULL;
}

static void tm_start(struct tm_thread *s, enum tm_call call)
{
    memset(s, 0, sizeof *s);
    s->call = call;
    s->desc = desc_page();
    if (pipe(s->pipe) != 0)
        die(2, "pipe");
    s->epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->pipe[0]};
    if (s->epfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->pipe[0], &ev) != 0)
        die(2, "epoll: %s", strerror(errno));
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (call == TM_ATTR) {
        sigset_t full;
        sigfillset(&full);
        int e = pthread_attr_setsigmask_np(&attr, &full);
        if (e)
            die(2, "pthread_attr_setsigmask_np: %s", strerror(e));
    }
    int e = pthread_create(&s->thread, &attr, tm_main, s);
    pthread_attr_destroy(&attr);
    if (e)
        die(2, "pthread_create: %s", strerror(e));
    while (!atomic_load(&s->ready))
        sched_yield();
    if (atomic_load(&s->cpu) < 0)
        die(3, "the stale thread has no registered area");
    wait_sleeping(atomic_load(&s->tid), tm_names[call]);
}

static void tm_wake_handler(int sig)
{
    (void)sig;
}

/* Wakes and joins the thread (sigsuspend's only wake-up is a signal its full mask lets through:
 * the reserved one, which rseqrt shares: with a handler of the program's on its number, the
 * program's own pthread_kill() of it runs that handler and ends the sigsuspend). */
static void tm_finish(struct tm_thread *s)
{
    if (s->call == TM_SIGSUSPEND && signal(rseqrt_signal(), tm_wake_handler) == SIG_ERR)
        die(2, "signal(%d): %s", rseqrt_signal(), strerror(errno));
    atomic_store(&s->stop, 1);
    write_byte(s->pipe[1]);
    double t0 = now_ms();
    while (!atomic_load(&s->done)) {
        if (now_ms() - t0 > 3000)
            fail("the %s thread could not be woken within 3 s", tm_names[s->call]);
        if (s->call == TM_SIGSUSPEND)
            pthread_kill(s->thread, rseqrt_signal());
        sleep_ms(1);
    }
    pthread_join(s->thread, NULL);
    if (atomic_load(&s->err))
        fail("%s failed: %s", tm_names[s->call], strerror(atomic_load(&s->err)));
    close(s->pipe[0]);
    close(s->pipe[1]);
    close(s->epfd);
}

#define TM_LIMIT_MS 15.0
#define TM_TRIES 3

static void run_tempmask(enum tm_call call)
{
    int sig = rseqrt_signal();
    if (sig <= 0)
        die(2, "no reserved signal");
    /* The first barrier of a process sets things up (membarrier registration): not measured. */
    void *warm = map_pages(1);
    if (rseqrt_munmap(warm, pagesz) != 0)
        die(2, "warm-up rseqrt_munmap: %s", strerror(errno));
    struct tm_thread s;
    for (int attempt = 1; attempt <= TM_TRIES; attempt++) {
        tm_start(&s, call);
        unsigned long long blk = status_mask(atomic_load(&s.tid), "SigBlk");
        if (!refers(cs_of(atomic_load(&s.area)), s.desc, pagesz))
            die(9, "inconclusive: the rseq_cs was cleared before the barrier");
        if (!use_rseqrt) {
            if (munmap(s.desc, pagesz) != 0)
                die(2, "munmap");
            tm_finish(&s); /* the kernel kills the process here */
            fail("plain munmap under a stale %s thread: still alive", tm_names[call]);
        }
        double t0 = now_ms();
        int rc = rseqrt_munmap(s.desc, pagesz);
        double ms = now_ms() - t0;
        int e = errno;
        if (rc != 0)
            fail("rseqrt_munmap = %d, errno %d (%s), after %.1f ms", rc, e, strerror(e), ms);
        if (ms >= TM_LIMIT_MS && attempt < TM_TRIES) {
            printf("slow  attempt %d: rseqrt_munmap took %.1f ms; again\n", attempt, ms);
            tm_finish(&s);
            continue;
        }
        check(ms < TM_LIMIT_MS, "rseqrt_munmap over a thread blocked in %s with a full mask returned 0 in %.2f ms "
              "(< %.0f ms: the reserved signal reached it; glibc's broadcast would start at 20 ms), attempt %d",
              tm_names[call], ms, TM_LIMIT_MS, attempt);
        check(has_sig(blk, SIGUSR1) && has_sig(blk, SIGRTMIN) && !has_sig(blk, sig),
              "%s with a full mask (sigfillset): the thread's SigBlk %016llx blocks SIGUSR1 and SIGRTMIN but not the "
              "reserved signal %d", tm_names[call], blk, sig);
        tm_finish(&s);
        break;
    }
    printf("survived\n");
}

static void sc_tempmask(int argc, char **argv)
{
    for (int c = TM_PPOLL; c <= TM_SIGSUSPEND; c++)
        if (argc > 0 && !strcmp(argv[0], tm_names[c]))
            run_tempmask((enum tm_call)c), exit(0);
    die(2, "usage: tempmask METHOD ppoll|pselect|epoll_pwait|epoll_pwait2|sigsuspend");
}

static void sc_attrmask(int argc, char **argv)
{
    (void)argc, (void)argv;
    run_tempmask(TM_ATTR);
}

/* ---------------------------------------------------- 8. bogus dlclose handles */

/* Calls dlclose or rseqrt_dlclose(h) in a child; describes what happened in out. */
static void dlclose_in_child(void *h, int with_rseqrt, char *out, size_t outlen)
{
    int p[2];
    if (pipe(p) != 0)
        die(2, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die(2, "fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        close(p[0]);
        dlerror();
        int r = with_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
        const char *m = dlerror();
        char buf[600];
        int n = snprintf(buf, sizeof buf, "returns %d, dlerror \"%s\"", r, m ? m : "(null)");
        if (write(p[1], buf, (size_t)n) < 0)
            _exit(2);
        _exit(0);
    }
    close(p[1]);
    ssize_t n = read(p[0], out, outlen - 1);
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st))
        snprintf(out, outlen, "killed by signal %d", WTERMSIG(st));
    else
        out[n > 0 ? n : 0] = 0;
}

static void sc_bogus(int argc, char **argv)
{
    (void)argc, (void)argv;
    if (!use_rseqrt)
        die(2, "bogus has no plain form");
    char stack_block[2048];
    memset(stack_block, 0x5a, sizeof stack_block);
    void *junk = malloc(4096);
    memset(junk, 0x41, 4096);
    void *zeros = calloc(1, 4096);
    struct {
        const char *what;
        void *h;
    } cases[] = {
        {"a malloc'd block of junk", junk},
        {"a calloc'd (zeroed) block", zeros},
        {"a block on the stack", stack_block},
        {"(void *)0x1000", (void *)0x1000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[700], b[700];
        dlclose_in_child(cases[i].h, 0, a, sizeof a);
        dlclose_in_child(cases[i].h, 1, b, sizeof b);
        check(!strcmp(a, b), "rseqrt_dlclose(%s) %s; dlclose %s", cases[i].what, b, a);
    }
    /* And in this process, for the handles glibc's dlclose survives. */
    for (size_t i = 0; i < 3; i++) {
        dlerror();
        int r = rseqrt_dlclose(cases[i].h);
        const char *m = dlerror();
        printf("observed: in-process rseqrt_dlclose(%s) = %d, dlerror \"%s\"\n", cases[i].what, r, m ? m : "(null)");
    }
    printf("survived\n");
}

/* ------------------------------------------------------------------------ main */

static const struct {
    const char *name;
    void (*run)(int argc, char **argv);
} scenarios[] = {
    {"tsd", sc_tsd},           {"early", sc_early},         {"wholepage", sc_wholepage},
    {"dtor", sc_dtor},         {"inflight", sc_inflight},   {"probe", sc_probe},
    {"tempmask", sc_tempmask}, {"attrmask", sc_attrmask},   {"bogus", sc_bogus},
    {"smallstack", sc_smallstack}, {"reldep", sc_reldep},
};

int main(int argc, char **argv)
{
    cases_start(argc, argv, "[ARGS...]");
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (strcmp(scenario, scenarios[i].name))
            continue;
        scenarios[i].run(argc - 3, argv + 3);
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "unknown scenario %s\n", scenario);
    return 2;
}
