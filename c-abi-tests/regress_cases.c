/* regress_cases: regression tests for bugs found in review (tests/regress.rs says which), one
 * scenario per run, in the style of barrier_cases.c. This program has the threads a barrier must
 * reach or rseqrt must register; its siblings regress_unload_cases.c (what a barrier frees, and
 * from where) and regress_sigmask_cases.c (temporary signal masks) have the others.
 *
 *   regress_cases SCENARIO METHOD [ARGS...]
 *
 * METHOD: rseqrt  free with rseqrt_munmap()/rseqrt_dlclose(): the process must survive (exit 0);
 *         plain   the same with munmap()/dlclose(): the kernel must kill the process (SIGSEGV)
 *                 when the stale thread next returns to user space. Not every scenario has one.
 *
 * Scenarios (the numbers are tests/regress.rs's):
 *   tsd first|last return|exit [raw]   1. a program TSD destructor runs a critical section in a plugin
 *   early                              2. a library's constructor ran a thread before rseqrt's
 *                                      (the program is linked with, or preloads, libregress_early.so)
 *   inflight                           5. a SIGEV_THREAD callback is stale while threads are in the
 *                                      middle of pthread_create (preload libregress_slowshim.so)
 *   probe                              6. what a program sees where rseq fails (run under seccomp_exec)
 *
 * Exit status (the siblings' too): 0 passed; 1 a check failed (the line starting with FAIL says
 * which); 2 setup error; 3 the stale thread has no registered rseq area (nothing to show); 9
 * inconclusive (run again); the kernel's SIGSEGV (plain method); 10 a genuine memory fault
 * (crash_common.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "regress_helpers.h" /* cs_of, mapped, open_plugin, registered_len, pipes, stale_reader */

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
    reached("the library's constructor ran before rseqrt's (rseqrt_signal() was 0 there)");
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
    reached("the callback woke and returned to user space");
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

/* ------------------------------------------------------------------------ main */

static const struct scenario_args scenarios[] = {
    {"tsd", sc_tsd},
    {"early", sc_early},
    {"inflight", sc_inflight},
    {"probe", sc_probe},
};

int main(int argc, char **argv)
{
    return cases_main_args(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
