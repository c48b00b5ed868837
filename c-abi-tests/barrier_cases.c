/* barrier_cases: behaviour of rseqrt's rseq-clear barrier in the hard cases
 * (README "Documented behaviour in the hard cases"), one scenario per run.
 *
 *   barrier_cases SCENARIO METHOD [ARG]
 *
 * METHOD: rseqrt  the memory is freed with rseqrt_munmap()/rseqrt_dlclose() (or the
 *                 scenario's barrier call), and the process must survive;
 *         plain   the same scenario with munmap()/dlclose() and no barrier: the
 *                 kernel must kill the process (SIGSEGV) when a stale thread next
 *                 returns to user space. Not every scenario has a plain form.
 *
 * Scenarios (see tests/barrier.rs for what each one shows):
 *   concurrent, exiting, exiting-churn, fork, sighandler, sighandler-timer,
 *   malloclock, badinput, unreachable, rawmask, rawunknown, mixed PLUGIN, sigmask [SIG|auto],
 *   signal-fn, clearall, exitcancel return|exit|cancel|async
 *
 * Exit status: 0 passed; 1 a check failed (the line starting with FAIL says which);
 * 2 setup error; 3 a stale thread has no registered rseq area (nothing to show);
 * the kernel's SIGSEGV for a stale rseq_cs (plain method); 10 a genuine memory fault
 * (crash_common.h). Every check prints one line. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "raw_clone.h"
#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "census_probe.h" /* the fstat trap and glibc's own pthread_create */

/* ------------------------------------------------------------------ helpers */

/* Frees with the scenario's method; any failure ends the run. */
static void free_range(void *p, size_t len, const char *what)
{
    int rc = use_rseqrt ? rseqrt_munmap(p, len) : munmap(p, len);
    if (rc != 0)
        fail("%s %s(%p, %zu) = %d, errno %d (%s)", what, use_rseqrt ? "rseqrt_munmap" : "munmap", p,
             len, rc, errno, strerror(errno));
}

/* ------------------------------------------------------------ stale threads */

enum stale_kind {
    ST_READ,     /* runs a critical section, then blocks in read() */
    ST_SPIN,     /* ... then spins in user space until woken */
    ST_SIGFILL,  /* sigfillset + pthread_sigmask(SIG_BLOCK), then as read */
    ST_RAWBLOCK, /* raw rt_sigprocmask blocking every signal but 32/33, then as read */
    ST_MUTEX,    /* ... then pthread_mutex_lock(st->mutex) */
    ST_REFRESH,  /* re-runs its critical section every 2 ms until woken */
};

struct stale {
    enum stale_kind kind;
    const char *name;
    struct rseq_cs_desc *_Atomic desc; /* descriptor (its code: this program's) */
    int (*plugin_fn)(long *);          /* or: a plugin's critical section */
    pthread_mutex_t *mutex;
    int pipe[2];
    pthread_t thread;
    pid_t tid;
    struct rseq_cs_area *_Atomic area;
    atomic_int round;  /* rounds completed (critical section run) */
    atomic_int stop;
    atomic_int done;
    atomic_int status; /* 3: unregistered */
    uint64_t self_seen; /* own rseq_cs right after being woken */
};

static void stale_cs(struct stale *st)
{
    int cpu = st->plugin_fn ? st->plugin_fn(counters)
                            : rseq_cs_run(counters, atomic_load(&st->desc), rseq_cs_own_code());
    if (cpu < 0)
        atomic_store(&st->status, 3);
}

static void *stale_main(void *arg)
{
    struct stale *st = arg;
    st->tid = gettid_();
    if (st->kind == ST_SIGFILL) {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
    } else if (st->kind == ST_RAWBLOCK) {
        raw_block_all_but_glibc();
    }
    atomic_store(&st->area, rseq_cs_area());
    for (;;) {
        stale_cs(st);
        atomic_fetch_add(&st->round, 1);
        if (atomic_load(&st->status))
            return NULL;
        char b = 'q';
        if (st->kind == ST_SPIN) {
            int r = atomic_load(&st->round);
            (void)r;
            while (!atomic_load_explicit(&st->stop, memory_order_relaxed))
                __builtin_ia32_pause();
            st->self_seen = rseq_cs_current();
            break;
        } else if (st->kind == ST_REFRESH) {
            if (atomic_load(&st->stop))
                break;
            sleep_ms(2);
            continue;
        } else if (st->kind == ST_MUTEX) {
            pthread_mutex_lock(st->mutex);
            st->self_seen = rseq_cs_current();
            pthread_mutex_unlock(st->mutex);
            break;
        } else {
            while (read(st->pipe[0], &b, 1) < 0 && errno == EINTR)
                ;
            st->self_seen = rseq_cs_current();
            if (b == 'q')
                break;
        }
    }
    atomic_store(&st->done, 1);
    return NULL;
}

static void stale_wait_round(struct stale *st, int round)
{
    double t0 = now_ms();
    while (atomic_load(&st->round) < round && !atomic_load(&st->status)) {
        if (now_ms() - t0 > 5000)
            die(2, "stale thread %s did not run its critical section", st->name);
        sched_yield();
    }
    if (atomic_load(&st->status) == 3)
        die(3, "stale thread %s has no registered rseq area (cpu_id < 0): nothing to show", st->name);
}

/* How stale_start creates its thread (sc_bypass swaps in glibc's own pthread_create). */
static int (*stale_creator)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) = pthread_create;

static void stale_start(struct stale *st, enum stale_kind kind, const char *name, struct rseq_cs_desc *desc)
{
    memset(st, 0, sizeof *st);
    st->kind = kind;
    st->name = name;
    atomic_store(&st->desc, desc);
    if (pipe(st->pipe) != 0)
        die(2, "pipe: %s", strerror(errno));
    int e = stale_creator(&st->thread, NULL, stale_main, st);
    if (e)
        die(2, "pthread_create: %s", strerror(e));
    stale_wait_round(st, 1);
    if (kind == ST_READ || kind == ST_SIGFILL || kind == ST_RAWBLOCK || kind == ST_MUTEX)
        wait_sleeping(st->tid, name);
}

/* Wakes a thread for another round with a new descriptor. */
static void stale_next(struct stale *st, struct rseq_cs_desc *desc)
{
    int r = atomic_load(&st->round);
    atomic_store(&st->desc, desc);
    if (write(st->pipe[1], "x", 1) != 1)
        die(2, "write");
    stale_wait_round(st, r + 1);
    wait_sleeping(st->tid, st->name);
}

static uint64_t stale_cs_now(struct stale *st)
{
    return __atomic_load_n(&atomic_load(&st->area)->rseq_cs, __ATOMIC_SEQ_CST);
}

static void stale_finish(struct stale *st)
{
    atomic_store(&st->stop, 1);
    if (st->kind != ST_SPIN && st->kind != ST_MUTEX && st->kind != ST_REFRESH)
        if (write(st->pipe[1], "q", 1) != 1)
            die(2, "write");
    double t0 = now_ms();
    while (!atomic_load(&st->done)) {
        if (now_ms() - t0 > 5000)
            fail("stale thread %s did not finish within 5 s after being woken", st->name);
        sleep_ms(1);
    }
    pthread_join(st->thread, NULL);
    close(st->pipe[0]);
    close(st->pipe[1]);
}

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

/* ----------------------------------------------- 2. threads exiting during a barrier */

#define EXIT_THREADS 8
static struct rseq_cs_desc *exit_page;
static double exit_at[EXIT_THREADS];
static atomic_int exit_ready;

static void *exiting_main(void *arg)
{
    long i = (long)arg;
    rseq_cs_run(counters, exit_page, rseq_cs_own_code());
    if (rseq_cs_current() == 0 || !rseq_cs_registered())
        die(3, "exiting thread %ld: no registered rseq area / rseq_cs already 0", i);
    atomic_fetch_add(&exit_ready, 1);
    sleep_ms(3 + i);
    exit_at[i] = now_ms();
    return NULL; /* exit: rseqrt's exit hook runs now */
}

static void sc_exiting(void)
{
    exit_page = desc_page();
    struct stale b;
    /* A thread the reserved signal cannot reach: the barrier needs glibc's broadcast for
     * it, after 20 ms of signalling, so the barrier runs long enough for others to exit. */
    stale_start(&b, ST_RAWBLOCK, "rawblock", exit_page);
    pthread_t e[EXIT_THREADS];
    for (long i = 0; i < EXIT_THREADS; i++)
        pthread_create(&e[i], NULL, exiting_main, (void *)i);
    while (atomic_load(&exit_ready) < EXIT_THREADS)
        sched_yield();
    double t0 = now_ms();
    free_range(exit_page, pagesz, "page");
    double t1 = now_ms();
    if (use_rseqrt) {
        int during = 0;
        for (int i = 0; i < EXIT_THREADS; i++)
            during += exit_at[i] >= t0 && exit_at[i] <= t1;
        check(1, "rseqrt_munmap returned 0 after %.1f ms", t1 - t0);
        uint64_t cs = stale_cs_now(&b);
        check(!refers(cs, exit_page, pagesz), "the thread reached only by glibc's broadcast no longer refers to "
              "the freed page (rseq_cs %#llx, page %p)", (unsigned long long)cs, (void *)exit_page);
        check(during > 0, "%d of %d threads with a stale rseq_cs exited while the barrier ran", during,
              EXIT_THREADS);
    }
    stale_finish(&b); /* wakes it ('q'): back to user space, then it ends */
    for (int i = 0; i < EXIT_THREADS; i++)
        pthread_join(e[i], NULL);
    check(1, "every exiting thread joined");
    printf("survived\n");
}

/* Many short-lived threads with stale pointers exit while another thread runs barriers
 * back to back. */
#define CHURN_THREADS 300
static struct rseq_cs_desc *churn_page;
static atomic_int churn_stop, churn_barriers, churn_bad_rc, churn_bad_errno;

static void *churn_thread(void *arg)
{
    (void)arg;
    rseq_cs_run(counters, churn_page, rseq_cs_own_code());
    return NULL;
}

static void *churn_barrier(void *arg)
{
    (void)arg;
    int k = 0;
    while (!atomic_load(&churn_stop)) {
        int rc = (k++ & 1) ? rseqrt_clear_all(0) : rseqrt_clear(churn_page, pagesz, 0);
        if (rc != 0 && !atomic_load(&churn_bad_rc)) {
            atomic_store(&churn_bad_errno, errno);
            atomic_store(&churn_bad_rc, rc);
        }
        atomic_fetch_add(&churn_barriers, 1);
    }
    return NULL;
}

static void sc_exiting_churn(void)
{
    if (!use_rseqrt)
        die(2, "exiting-churn has no plain form");
    churn_page = desc_page();
    pthread_t bt[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&bt[i], NULL, churn_barrier, NULL);
    double t0 = now_ms();
    for (int i = 0; i < CHURN_THREADS; i += 4) {
        pthread_t t[4];
        for (int j = 0; j < 4; j++)
            if ((errno = pthread_create(&t[j], NULL, churn_thread, NULL)) != 0)
                die(2, "pthread_create: %s", strerror(errno));
        for (int j = 0; j < 4; j++)
            pthread_join(t[j], NULL);
        if (now_ms() - t0 > 10000)
            fail("only %d of %d short-lived threads finished within 10 s while barriers ran back to back "
                 "(%d barriers): exiting threads starve in the exit hook",
                 i, CHURN_THREADS, atomic_load(&churn_barriers));
    }
    double ms = now_ms() - t0;
    atomic_store(&churn_stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(bt[i], NULL);
    check(atomic_load(&churn_bad_rc) == 0, "%d barriers from 2 threads while %d threads ran a critical section "
          "and exited (%.0f ms): first failure rc %d errno %d (%s)", atomic_load(&churn_barriers), CHURN_THREADS,
          ms, atomic_load(&churn_bad_rc), atomic_load(&churn_bad_errno), strerror(atomic_load(&churn_bad_errno)));
    int rc = rseqrt_munmap(churn_page, pagesz);
    check(rc == 0, "rseqrt_munmap of the page every exited thread had used: %d", rc);
    printf("survived\n");
}

/* ------------------------------------------------------------ 3. fork during a barrier */

#define FORKS 20
static struct rseq_cs_desc *fork_refresh_page;
static atomic_int fork_stop, fork_barriers, fork_in_barrier, fork_bad_rc, fork_bad_errno;

static void *fork_barrier_loop(void *arg)
{
    (void)arg;
    int k = 0;
    while (!atomic_load(&fork_stop)) {
        atomic_store(&fork_in_barrier, 1);
        int rc = (k++ & 1) ? rseqrt_clear_all(0) : rseqrt_clear(fork_refresh_page, pagesz, 0);
        atomic_store(&fork_in_barrier, 0);
        if (rc != 0 && !atomic_load(&fork_bad_rc)) {
            atomic_store(&fork_bad_errno, errno);
            atomic_store(&fork_bad_rc, rc);
        }
        atomic_fetch_add(&fork_barriers, 1);
    }
    return NULL;
}

/* The child of fork(): only the forking thread. */
static void fork_child(const struct rseqrt_area *parent_area)
{
    alarm(10);
    struct rseqrt_area *a = rseqrt_current_area();
    if (a != parent_area || (int32_t)a->cpu_id < 0) {
        printf("child: area %p (forking thread's in the parent: %p), cpu_id %d\n", (void *)a,
               (const void *)parent_area, a ? (int32_t)a->cpu_id : -99);
        _exit(21);
    }
    errno = 0;
    if (rseqrt_register_current_thread() != -1 || errno != EBUSY) {
        printf("child: rseqrt_register_current_thread: expected -1 EBUSY (still registered), errno %d\n", errno);
        _exit(22);
    }
    if (rseqrt_clear_all(0) != 0 || rseqrt_clear(fork_refresh_page, pagesz, 0) != 0) {
        printf("child: barrier failed: errno %d (%s)\n", errno, strerror(errno));
        _exit(23);
    }
    struct rseq_cs_desc *q = desc_page();
    struct stale t;
    stale_start(&t, ST_READ, "child-stale", q);
    if (!refers(stale_cs_now(&t), q, pagesz))
        _exit(24);
    if (rseqrt_munmap(q, pagesz) != 0) {
        printf("child: rseqrt_munmap: errno %d (%s)\n", errno, strerror(errno));
        _exit(25);
    }
    if (write(t.pipe[1], "q", 1) != 1)
        _exit(26);
    pthread_join(t.thread, NULL);
    _exit(0);
}

static void sc_fork(void)
{
    fork_refresh_page = desc_page();
    struct rseq_cs_desc *p = desc_page();
    struct stale s[3];
    stale_start(&s[0], ST_READ, "blocked-1", p);
    stale_start(&s[1], ST_READ, "blocked-2", p);
    stale_start(&s[2], ST_REFRESH, "refresher", fork_refresh_page);
    pthread_t bt;
    if (use_rseqrt)
        pthread_create(&bt, NULL, fork_barrier_loop, NULL);
    struct rseqrt_area *mine = rseqrt_current_area();
    int forks = use_rseqrt ? FORKS : 1, during = 0;
    for (int i = 0; i < forks; i++) {
        if (use_rseqrt)
            while (atomic_load(&fork_barriers) < 2 * (i + 1))
                sched_yield();
        during += atomic_load(&fork_in_barrier);
        pid_t pid = fork();
        if (pid < 0)
            die(2, "fork: %s", strerror(errno));
        if (pid == 0) {
            if (!use_rseqrt) {
                /* plain: the child frees under its own stale thread without a barrier */
                struct rseq_cs_desc *q = desc_page();
                struct stale t;
                stale_start(&t, ST_READ, "child-stale", q);
                munmap(q, pagesz);
                if (write(t.pipe[1], "q", 1) != 1)
                    _exit(26);
                pthread_join(t.thread, NULL);
                _exit(0);
            }
            fork_child(mine);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid)
            die(2, "waitpid: %s", strerror(errno));
        if (!use_rseqrt) {
            if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) {
                printf("child killed by SIGSEGV (plain munmap under its stale thread)\n");
                fflush(stdout);
                signal(SIGSEGV, SIG_DFL);
                raise(SIGSEGV);
            }
            fail("plain child: status %#x, expected death by SIGSEGV", status);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("fork %d: child %s %d", i, WIFEXITED(status) ? "exited with" : "killed by signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    atomic_store(&fork_stop, 1);
    pthread_join(bt, NULL);
    check(atomic_load(&fork_bad_rc) == 0, "parent: %d barriers ran while %d children were forked (%d forks "
          "started while a barrier was in progress); first failure rc %d errno %d",
          atomic_load(&fork_barriers), forks, during, atomic_load(&fork_bad_rc), atomic_load(&fork_bad_errno));
    check(1, "%d children: registered at the parent's address, EBUSY on re-registration, barriers and "
          "rseqrt_munmap under a stale thread of their own succeeded, exit 0", forks);
    free_range(p, pagesz, "parent page");
    for (int i = 0; i < 3; i++)
        stale_finish(&s[i]);
    free_range(fork_refresh_page, pagesz, "refresh page");
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
    check(1, "both pages still mapped with their contents after the failed calls");
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

/* --------------------------------------------- 7. a failed barrier frees nothing */

#include "raw_stale.h"

static void sc_unreachable(void)
{
    raw_desc = desc_page();
    start_raw_thread();
    unsigned long long blk = status_mask(raw_ctid, "SigBlk");
    check(has_sig(blk, rseqrt_signal()) && has_sig(blk, 32) && has_sig(blk, 33),
          "raw clone() thread %d is registered and blocks every signal, the reserved %d and glibc's 32/33 "
          "(SigBlk %016llx)", raw_ctid, rseqrt_signal(), blk);
    check(refers(atomic_load(&raw_area)->rseq_cs, raw_desc, pagesz), "its rseq_cs refers to the page");
    if (use_rseqrt) {
        double t0 = now_ms();
        errno = 0;
        int rc = rseqrt_munmap(raw_desc, pagesz);
        int e = errno;
        double ms = now_ms() - t0;
        check(rc == -1 && e == ETIMEDOUT, "rseqrt_munmap = %d errno %d (%s) after %.0f ms (RSEQRT_TIMEOUT_MS=%s)",
              rc, e, strerror(e), ms, getenv("RSEQRT_TIMEOUT_MS") ? getenv("RSEQRT_TIMEOUT_MS") : "unset");
        check(ms >= 150 && ms < 1500, "it gave up after the configured timeout (%.0f ms)", ms);
        check(!memcmp(raw_desc, rseq_cs_own_desc(), sizeof *raw_desc), "the page is still mapped, with the "
              "descriptor intact");
        check(refers(atomic_load(&raw_area)->rseq_cs, raw_desc, pagesz),
              "the unreachable thread's rseq_cs still refers to it (the barrier did not clear it remotely)");
        errno = 0;
        rc = rseqrt_clear_all(0);
        check(rc == -1 && errno == ETIMEDOUT, "rseqrt_clear_all also fails: %d errno %d", rc, errno);
    } else {
        munmap(raw_desc, pagesz);
    }
    raw_wake_and_wait();
    check(atomic_load(&raw_state) == 3, "woken, the raw thread returned to user space, unregistered and exited");
    int rc = rseqrt_munmap(raw_desc, pagesz);
    check(rc == 0, "rseqrt_munmap once it is gone: %d", rc);
    printf("survived\n");
}

/* A raw clone() thread that registered its own area with the raw rseq system call: neither in
 * rseqrt's registry nor in glibc's thread list. rseqrt finds it in /proc/self/task, signals it
 * and waits for its handler's acknowledgement. */
static void sc_rawunknown(void)
{
    raw_unknown = 1;
    raw_desc = desc_page();
    start_raw_thread();
    check(!has_sig(status_mask(raw_ctid, "SigBlk"), rseqrt_signal()),
          "raw clone() thread %d, registered by itself, accepts the reserved signal", raw_ctid);
    check(refers(atomic_load(&raw_area)->rseq_cs, raw_desc, pagesz), "its rseq_cs refers to the page");
    free_range(raw_desc, pagesz, "page");
    raw_wake_and_wait();
    check(atomic_load(&raw_state) == 3, "woken, the raw thread returned to user space and exited");
    printf("survived\n");
}

/* The same, started with __clone(), glibc's other name for clone(). */
static void sc_rawunknown___clone(void)
{
    raw_starter = __clone;
    sc_rawunknown();
}

/* The same, started by a plugin loaded with RTLD_DEEPBIND, whose clone() is the C library's. */
static void sc_rawunknown_deepbind(const char *plugin)
{
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    void *start = h ? dlsym(h, "plugin_clone") : NULL;
    if (!start)
        die(2, "dlopen(%s, RTLD_DEEPBIND): %s", plugin, dlerror());
    check(start != (void *)clone, "the plugin's clone() wrapper is not the program's clone()");
    raw_starter = (raw_clone_starter)start;
    sc_rawunknown();
}

/* A thread started by the C library of a second link-map namespace (dlmopen): glibc registers it,
 * but its count is that library's, which rseqrt does not read. (glibc owner only.) */
static void sc_namespace(void)
{
    void *ns_libc = dlmopen(LM_ID_NEWLM, "libc.so.6", RTLD_NOW);
    void *ns_create = ns_libc ? dlsym(ns_libc, "pthread_create") : NULL;
    if (!ns_create)
        die(2, "dlmopen(LM_ID_NEWLM, libc.so.6): %s", dlerror());
    check(ns_create != dlsym(RTLD_DEFAULT, "pthread_create"), "the second namespace has a pthread_create of its own");
    struct rseq_cs_desc *p = desc_page();
    struct stale s;
    stale_creator = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))ns_create;
    stale_start(&s, ST_READ, "namespace", p);
    stale_creator = pthread_create;
    check(refers(stale_cs_now(&s), p, pagesz), "its thread holds a stale rseq_cs into the page");
    free_range(p, pagesz, "page"); /* plain: the thread's kernel reads the freed page when woken */
    if (use_rseqrt)
        check(!refers(stale_cs_now(&s), p, pagesz), "after the barrier it no longer does");
    /* Woken, it returns to user space and exits (not joined: the other C library owns it). */
    atomic_store(&s.stop, 1);
    if (write(s.pipe[1], "q", 1) != 1)
        die(2, "write");
    wait_value(&s.done, 1, 1, "the namespace's thread to finish");
    printf("survived\n");
}

/* The cheap unknown-thread check (glibc's thread count against the registry's) really spares
 * the system call, and gives way to it when it must. rseqrt's thread count is an fstat() of
 * /proc/self/task; a seccomp filter on the calling thread traps fstat (SIGSYS, answered with
 * ENOSYS, counted): with 8 idle threads all known, 20 barriers make no fstat; with a thread
 * glibc started behind rseqrt's back, every barrier tries it; after a raw clone() thread has
 * existed (gone again), every barrier tries it too. */
static atomic_int census_started;

static void *census_idle(void *arg)
{
    sem_t *stop = arg;
    atomic_fetch_add(&census_started, 1); /* rseqrt's start prologue has run: the thread is known */
    while (sem_wait(stop) != 0)
        ;
    return NULL;
}

static int census_raw_exit(void *arg)
{
    (void)arg;
    syscall(SYS_exit, 0); /* touches no TLS: it shares the creator's */
    return 0;
}

static void sc_census(void)
{
    enum { IDLE = 8 };
    sem_t stop;
    sem_init(&stop, 0, 0);
    pthread_t idle[IDLE];
    for (int i = 0; i < IDLE; i++)
        if (pthread_create(&idle[i], NULL, census_idle, &stop) != 0)
            die(2, "pthread_create");
    wait_value(&census_started, IDLE, 1, "the idle threads to start");
    trap_fstat_in_this_thread();
    int known = census_barriers("with every thread known");
    check(known == 0, "%d idle threads, all known: 20 barriers, %d fstat calls", IDLE, known);

    int (*glibc_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))glibc_pthread_create();
    pthread_t behind;
    sem_t behind_stop;
    sem_init(&behind_stop, 0, 0);
    if (glibc_create(&behind, NULL, census_idle, &behind_stop) != 0)
        die(2, "glibc's pthread_create");
    int unknown = census_barriers("with a thread rseqrt did not start");
    check(unknown >= 20, "a thread started behind rseqrt's back: 20 barriers, %d fstat calls", unknown);
    sem_post(&behind_stop);
    pthread_join(behind, NULL);
    int again = census_barriers("after it exited");
    check(again == 0, "once it has exited: 20 barriers, %d fstat calls", again);

    size_t stack_len = 64 * 1024;
    char *stack = map_pages(stack_len / pagesz);
    static volatile pid_t raw_tid = 1;
    int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
                CLONE_CHILD_CLEARTID;
    if (clone(census_raw_exit, stack + stack_len - 64, flags, NULL, NULL, NULL, &raw_tid) < 0)
        die(2, "clone: %s", strerror(errno));
    while (raw_tid != 0)
        sleep_ms(1);
    int raw = census_barriers("after a raw clone() thread");
    check(raw >= 20, "after a raw clone() thread (exited): 20 barriers, %d fstat calls", raw);

    for (int i = 0; i < IDLE; i++)
        sem_post(&stop);
    for (int i = 0; i < IDLE; i++)
        pthread_join(idle[i], NULL);
    printf("survived\n");
}

/* A glibc thread that blocks the reserved signal with the raw system call: rseqrt's
 * signal cannot reach it, glibc's broadcast (after 20 ms) does. */
static void sc_rawmask(void)
{
    struct rseq_cs_desc *p = desc_page();
    struct stale s;
    stale_start(&s, ST_RAWBLOCK, "rawblock", p);
    unsigned long long blk = status_mask(s.tid, "SigBlk");
    check(has_sig(blk, rseqrt_signal()), "the thread blocks the reserved signal %d (SigBlk %016llx)",
          rseqrt_signal(), blk);
    double t0 = now_ms();
    free_range(p, pagesz, "page");
    double ms = now_ms() - t0;
    if (use_rseqrt)
        check(ms >= 15, "rseqrt_munmap = 0 after %.1f ms (signal first, glibc's broadcast after 20 ms)", ms);
    stale_finish(&s);
    printf("survived\n");
}

/* A thread that glibc's pthread_create starts without passing through rseqrt's (reached with
 * dlvsym on libc.so.6): glibc registers it, rseqrt's registry does not know it. glibc's thread
 * count shows it, so the barrier takes its slow path and signals it. Meanwhile another thread
 * keeps starting and joining short-lived threads, so known threads enter and leave the registry
 * while each of the 200 barriers compares the counts; after every barrier the unknown thread's
 * rseq_cs must no longer refer to the freed page. (glibc owner only: with glibc's registration
 * off, glibc registers nothing for such a thread.) */
static atomic_int bypass_stop, bypass_started;

static void *bypass_short(void *arg)
{
    return arg;
}

static void *bypass_churn(void *arg)
{
    (void)arg;
    while (!atomic_load(&bypass_stop)) {
        pthread_t t;
        if (pthread_create(&t, NULL, bypass_short, NULL) == 0) {
            pthread_join(t, NULL);
            atomic_fetch_add(&bypass_started, 1);
        }
    }
    return NULL;
}

static void sc_bypass(void)
{
    void *glibc_create = glibc_pthread_create();
    if (use_rseqrt)
        check(glibc_create != dlsym(RTLD_DEFAULT, "pthread_create"), "glibc's pthread_create is not the one programs call (rseqrt's)");
    struct rseq_cs_desc *p = desc_page();
    struct stale s;
    stale_creator = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))glibc_create;
    stale_start(&s, ST_READ, "bypass", p);
    stale_creator = pthread_create;
    pthread_t churn;
    if (pthread_create(&churn, NULL, bypass_churn, NULL) != 0)
        die(2, "pthread_create");
    const int rounds = 200;
    for (int round = 0; round < rounds; round++) {
        if (!refers(stale_cs_now(&s), p, pagesz))
            fail("round %d: the unknown thread's rseq_cs does not refer to the page", round);
        /* The next page first, so that it cannot take the freed page's address. */
        struct rseq_cs_desc *next = desc_page();
        free_range(p, pagesz, "page"); /* plain: the thread's kernel reads the freed page when woken */
        if (use_rseqrt && refers(stale_cs_now(&s), p, pagesz))
            fail("round %d: after the barrier the unknown thread's rseq_cs still refers to the freed page", round);
        stale_next(&s, next);
        p = next;
    }
    atomic_store(&bypass_stop, 1);
    pthread_join(churn, NULL);
    stale_finish(&s);
    printf("observed: %d barriers each cleared a thread unknown to rseqrt while %d short-lived threads came and went\n",
           rounds, atomic_load(&bypass_started));
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
        check(1, "rseqrt_munmap + rseqrt_dlclose under %d stale threads (blocked, sigfilled, spinning; page and "
              "plugin) took %.1f ms", n, ms);
    for (int i = 0; i < n; i++)
        stale_finish(&s[i]);
    printf("survived\n");
}

/* ------------------------------------------------------------ 9. signal interposers */

static atomic_int w_returned, w_sig, w_eintr, w_got_reserved;

enum waitfn { W_SIGWAIT, W_SIGWAITINFO, W_SIGTIMEDWAIT };
static const char *waitfn_name[] = {"sigwait", "sigwaitinfo", "sigtimedwait"};
struct waiter {
    enum waitfn fn;
    struct rseq_cs_desc *page;
    pid_t tid;
    struct rseq_cs_area *_Atomic area;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    w->tid = gettid_();
    rseq_cs_run(counters, w->page, rseq_cs_own_code());
    atomic_store(&w->area, rseq_cs_area());
    int sig = -1;
    struct timespec ts = {10, 0};
    for (;;) {
        errno = 0;
        switch (w->fn) {
        case W_SIGWAIT:
            if ((errno = sigwait(&all, &sig)) != 0)
                sig = -1;
            break;
        case W_SIGWAITINFO:
            sig = sigwaitinfo(&all, NULL);
            break;
        case W_SIGTIMEDWAIT:
            sig = sigtimedwait(&all, NULL, &ts);
            break;
        }
        if (sig == rseqrt_signal())
            atomic_store(&w_got_reserved, 1);
        /* POSIX: sigwaitinfo/sigtimedwait are never restarted after a handler ran */
        if (sig == -1 && errno == EINTR) {
            atomic_fetch_add(&w_eintr, 1);
            continue;
        }
        break;
    }
    atomic_store(&w_sig, sig);
    atomic_store(&w_returned, 1);
    return NULL;
}

static void *masker_main(void *arg)
{
    int *out = arg;
    int rsig = rseqrt_signal();
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    unsigned long long b1 = status_mask(gettid_(), "SigBlk");
    sigprocmask(SIG_SETMASK, &all, NULL);
    unsigned long long b2 = status_mask(gettid_(), "SigBlk");
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    out[0] = !has_sig(b1, rsig) && has_sig(b1, SIGRTMIN) && has_sig(b1, SIGUSR1) && has_sig(b1, rsig == SIGRTMAX ? SIGRTMAX - 1 : SIGRTMAX);
    out[1] = !has_sig(b2, rsig) && has_sig(b2, SIGRTMIN);
    out[2] = sigismember(&cur, rsig);
    printf("masker: SigBlk after sigfillset+pthread_sigmask %016llx, after sigprocmask %016llx\n", b1, b2);
    return NULL;
}

static void sc_sigmask(const char *want)
{
    int rsig = rseqrt_signal();
    if (use_rseqrt) {
        if (want && strcmp(want, "auto")) {
            check(rsig == atoi(want), "RSEQRT_SIGNAL=%s selects it: rseqrt_signal() = %d", want, rsig);
        } else {
            check(rsig == SIGRTMAX + 1, "default reserved signal is the highest free real-time signal, left out of "
                  "SIGRTMIN..SIGRTMAX: %d (SIGRTMAX %d)", rsig, SIGRTMAX);
        }
        check(has_sig(status_mask(0, "SigCgt"), rsig), "a handler is installed for signal %d (SigCgt)", rsig);
        int out[3];
        pthread_t m;
        pthread_create(&m, NULL, masker_main, out);
        pthread_join(m, NULL);
        check(out[0], "sigfillset + pthread_sigmask(SIG_BLOCK) blocks SIGRTMIN, SIGUSR1, the other real-time "
              "signals, but not the reserved %d", rsig);
        check(out[1], "sigprocmask(SIG_SETMASK, full set) leaves the reserved signal unblocked too");
        check(out[2] == 0, "pthread_sigmask's view of the mask (old set) does not contain it either: %d", out[2]);

        /* The number is shared: the program's disposition is its own, the kernel's is rseqrt's. */
        struct sigaction act, old;
        memset(&act, 0, sizeof act);
        act.sa_handler = SIG_IGN;
        int rc = sigaction(rsig, &act, &old);
        check(rc == 0 && old.sa_handler == SIG_DFL, "sigaction(%d, SIG_IGN, &old) = %d, old SIG_DFL (the program's)", rsig, rc);
        rc = sigaction(rsig, NULL, &old);
        check(rc == 0 && old.sa_handler == SIG_IGN, "sigaction(%d, NULL, &old) (a query) = %d, reports SIG_IGN", rsig, rc);
        check(has_sig(status_mask(0, "SigCgt"), rsig) && !has_sig(status_mask(0, "SigIgn"), rsig),
              "the kernel still runs rseqrt's handler on %d (SigCgt, not SigIgn)", rsig);
        act.sa_handler = SIG_DFL;
        rc = sigaction(rsig, &act, &old);
        check(rc == 0 && old.sa_handler == SIG_IGN, "sigaction(%d, SIG_DFL, &old) = %d, old SIG_IGN", rsig, rc);
        check(has_sig(status_mask(0, "SigCgt"), rsig), "SigCgt still has %d", rsig);
    }

    for (int fn = 0; fn < 3; fn++) {
        struct waiter w = {.fn = fn, .page = desc_page()};
        atomic_store(&w_returned, 0);
        atomic_store(&w_eintr, 0);
        atomic_store(&w_got_reserved, 0);
        pthread_t t;
        pthread_create(&t, NULL, waiter_main, &w);
        while (!atomic_load(&w.area))
            sched_yield();
        wait_sleeping(w.tid, waitfn_name[fn]);
        if (!refers(atomic_load(&w.area)->rseq_cs, w.page, pagesz))
            die(9, "inconclusive: the waiter's rseq_cs is already 0");
        free_range(w.page, pagesz, "page");
        if (use_rseqrt) {
            check(!refers(atomic_load(&w.area)->rseq_cs, w.page, pagesz),
                  "%s(full set): rseqrt_munmap = 0; the waiter took the reserved signal (its rseq_cs was cleared)",
                  waitfn_name[fn]);
            sleep_ms(20);
            check(!atomic_load(&w_returned) && !atomic_load(&w_got_reserved),
                  "%s did not return the reserved signal (still waiting 20 ms later; it returned -1 EINTR %d "
                  "time(s) meanwhile, as POSIX allows after a handler ran)", waitfn_name[fn], atomic_load(&w_eintr));
        }
        pthread_kill(t, SIGUSR1);
        pthread_join(t, NULL);
        check(atomic_load(&w_sig) == SIGUSR1, "%s then returned SIGUSR1 (%d): %d", waitfn_name[fn], SIGUSR1,
              atomic_load(&w_sig));
    }
    printf("survived\n");
}

/* signal() is implemented in glibc on its internal __sigaction, so rseqrt interposes it too:
 * like sigaction(), it sets the program's own disposition of the reserved signal's number, and
 * the barrier keeps working whatever that disposition is (here SIG_IGN: before rseqrt shared the
 * number, an ignored reserved signal would have left blocked threads unreachable). */
static void sc_signal_fn(void)
{
    int rsig = rseqrt_signal();
    void (*prev)(int) = signal(rsig, SIG_IGN);
    struct sigaction now;
    sigaction(rsig, NULL, &now);
    check(prev == SIG_DFL && now.sa_handler == SIG_IGN, "signal(%d, SIG_IGN) returned SIG_DFL; the program's "
          "disposition reads SIG_IGN", rsig);
    check(has_sig(status_mask(0, "SigCgt"), rsig), "the kernel still runs rseqrt's handler on %d (SigCgt)", rsig);
    struct rseq_cs_desc *p = desc_page();
    struct stale s;
    stale_start(&s, ST_READ, "blocked", p);
    if (!refers(stale_cs_now(&s), p, pagesz))
        die(9, "inconclusive: the stale thread's rseq_cs is already 0");
    int rc = rseqrt_munmap(p, pagesz);
    check(rc == 0 && stale_cs_now(&s) == 0, "with the program's disposition SIG_IGN, rseqrt_munmap under a blocked "
          "stale thread = %d and its rseq_cs reads 0", rc);
    stale_finish(&s);
    prev = signal(rsig, SIG_DFL);
    check(prev == SIG_IGN, "signal(%d, SIG_DFL) returned the program's SIG_IGN", rsig);
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

/* ------------------------------------------ 12. pthread_exit and pthread_cancel */

static pthread_key_t tsd_key;
static atomic_int dtor_calls, cleanup_calls;
static struct rseq_cs_desc *ec_page;
#define EC_THREADS 2
static struct rseq_cs_area *_Atomic ec_area[EC_THREADS];
static uint64_t ec_cs[EC_THREADS];
static atomic_int ec_ready[EC_THREADS];
static int ec_pipe[2];
enum ec_how { EC_RETURN, EC_EXIT, EC_CANCEL, EC_ASYNC };
static enum ec_how ec_how;

static void tsd_dtor(void *v)
{
    (void)v;
    atomic_fetch_add(&dtor_calls, 1);
}
static void cleanup(void *v)
{
    (void)v;
    atomic_fetch_add(&cleanup_calls, 1);
}

static void exit_from_depth(int d);
static void (*volatile exit_next)(int) = exit_from_depth;
static void __attribute__((noinline)) exit_from_depth(int d)
{
    if (d == 0)
        pthread_exit((void *)42); /* from a few frames down */
    exit_next(d - 1);
}

static void *ec_main(void *arg)
{
    long i = (long)arg;
    void *ret = (void *)7;
    pthread_setspecific(tsd_key, (void *)1);
    pthread_cleanup_push(cleanup, NULL);
    if (ec_how == EC_ASYNC)
        pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, NULL);
    rseq_cs_run(counters, ec_page, rseq_cs_own_code());
    ec_cs[i] = rseq_cs_current();
    atomic_store(&ec_area[i], rseq_cs_area());
    atomic_store(&ec_ready[i], 1);
    if (ec_how == EC_EXIT) {
        exit_from_depth(3);
    } else if (ec_how == EC_CANCEL) {
        char b;
        for (;;)
            if (read(ec_pipe[0], &b, 1) >= 0)
                break; /* cancellation point */
    } else if (ec_how == EC_ASYNC) {
        for (volatile unsigned long k = 0;; k++)
            ; /* asynchronous cancellation in user code */
    }
    pthread_cleanup_pop(0);
    return ret;
}

/* Threads started through rseqrt's pthread_create trampoline end by returning, by
 * pthread_exit(), or by cancellation (deferred, asynchronous). Their stacks are the
 * program's (pthread_attr_setstack), so their areas (glibc's struct pthread, or rseqrt's
 * static TLS) lie there: after join the program unmaps them, and a barrier that still read
 * a dead thread's area would fault (exit 10). */
static void sc_exitcancel(const char *how_arg)
{
    static const char *hows[] = {"return", "exit", "cancel", "async"};
    static const char *how_text[] = {"return from the start routine", "pthread_exit from 3 frames down",
                                     "deferred cancel in read()", "asynchronous cancel while running"};
    int h = -1;
    for (int k = 0; k < 4; k++)
        if (how_arg && !strcmp(how_arg, hows[k]))
            h = k;
    if (!use_rseqrt || h < 0)
        die(2, "usage: exitcancel rseqrt return|exit|cancel|async");
    ec_how = h;
    pthread_key_create(&tsd_key, tsd_dtor);
    ec_page = desc_page();
    if (pipe(ec_pipe) != 0)
        die(2, "pipe");
    void *stacks[EC_THREADS];
    size_t stack_len = 512 * 1024;
    pthread_t t[EC_THREADS];
    for (long i = 0; i < EC_THREADS; i++) {
        stacks[i] = map_pages(stack_len / pagesz);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstack(&attr, stacks[i], stack_len); /* glibc puts TCB and TLS in it */
        if ((errno = pthread_create(&t[i], &attr, ec_main, (void *)i)) != 0)
            die(2, "pthread_create: %s", strerror(errno));
        pthread_attr_destroy(&attr);
        while (!atomic_load(&ec_ready[i]))
            sched_yield();
        if (!refers(ec_cs[i], ec_page, pagesz))
            die(3, "thread %ld did not leave a stale rseq_cs (%#llx)", i, (unsigned long long)ec_cs[i]);
        char *a = (char *)atomic_load(&ec_area[i]);
        check(a >= (char *)stacks[i] && a < (char *)stacks[i] + stack_len,
              "thread %ld: its rseq area %p lies in its user-provided stack", i, (void *)a);
    }
    if (h == EC_CANCEL || h == EC_ASYNC) {
        sleep_ms(5);
        for (int i = 0; i < EC_THREADS; i++)
            pthread_cancel(t[i]);
    }
    void *want = h == EC_RETURN ? (void *)7 : h == EC_EXIT ? (void *)42 : PTHREAD_CANCELED;
    for (int i = 0; i < EC_THREADS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        check(ret == want, "%s through rseqrt's trampoline: join gives %p (want %p)", how_text[h], ret, want);
    }
    int want_cleanup = h == EC_RETURN ? 0 : EC_THREADS;
    check(atomic_load(&cleanup_calls) == want_cleanup, "cleanup handlers run: %d of %d", atomic_load(&cleanup_calls),
          want_cleanup);
    check(atomic_load(&dtor_calls) == EC_THREADS, "thread-specific data destructors run: %d of %d",
          atomic_load(&dtor_calls), EC_THREADS);
    for (int i = 0; i < EC_THREADS; i++)
        munmap(stacks[i], stack_len);
    int rc = rseqrt_clear_all(0);
    check(rc == 0, "rseqrt_clear_all after the stacks holding the dead threads' areas are unmapped: %d", rc);
    rc = rseqrt_munmap(ec_page, pagesz);
    check(rc == 0, "rseqrt_munmap of the page the dead threads' rseq_cs referred to: %d", rc);
    /* Slots are reused by new threads. */
    struct rseq_cs_desc *p = desc_page();
    struct stale s[3];
    for (int i = 0; i < 3; i++)
        stale_start(&s[i], ST_READ, "new", p);
    rc = rseqrt_munmap(p, pagesz);
    check(rc == 0, "new threads (reused slots) with stale pointers: rseqrt_munmap = %d", rc);
    for (int i = 0; i < 3; i++)
        stale_finish(&s[i]);
    printf("survived\n");
}

/* ------------------------------------------------------------------------ main */

/* SCENARIO -> its function: run() takes nothing; run_arg() takes ARG (NULL when absent,
 * unless arg_required: then a run without ARG is an unknown scenario). */
struct scenario {
    const char *name;
    void (*run)(void);
    void (*run_arg)(const char *arg);
    int arg_required;
};

static const struct scenario scenarios[] = {
    {"concurrent", sc_concurrent, NULL, 0},
    {"exiting", sc_exiting, NULL, 0},
    {"exiting-churn", sc_exiting_churn, NULL, 0},
    {"fork", sc_fork, NULL, 0},
    {"sighandler", sc_sighandler, NULL, 0},
    {"sighandler-timer", sc_sighandler_timer, NULL, 0},
    {"malloclock", sc_malloclock, NULL, 0},
    {"badinput", sc_badinput, NULL, 0},
    {"unreachable", sc_unreachable, NULL, 0},
    {"rawmask", sc_rawmask, NULL, 0},
    {"rawunknown", sc_rawunknown, NULL, 0},
    {"rawunknown-__clone", sc_rawunknown___clone, NULL, 0},
    {"rawunknown-deepbind", NULL, sc_rawunknown_deepbind, 1},
    {"namespace", sc_namespace, NULL, 0},
    {"bypass", sc_bypass, NULL, 0},
    {"census", sc_census, NULL, 0},
    {"mixed", NULL, sc_mixed, 1},
    {"sigmask", NULL, sc_sigmask, 0},
    {"signal-fn", sc_signal_fn, NULL, 0},
    {"clearall", sc_clearall, NULL, 0},
    {"exitcancel", NULL, sc_exitcancel, 0},
};

int main(int argc, char **argv)
{
    cases_start(argc, argv, "[ARG]");
    const char *arg = argc > 3 ? argv[3] : NULL;
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const struct scenario *sc = &scenarios[i];
        if (strcmp(scenario, sc->name) || (sc->arg_required && !arg))
            continue;
        if (sc->run)
            sc->run();
        else
            sc->run_arg(arg);
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "unknown scenario %s\n", scenario);
    return 2;
}
