/* lifecycle_cases: rseqrt's rseq-clear barrier while threads end and the process forks, one
 * scenario per run (a sibling of barrier_cases.c).
 *
 *   lifecycle_cases SCENARIO METHOD [ARG]
 *
 * METHOD (rseqrt or plain) and the exit status: as barrier_cases.c.
 *
 * Scenarios (the numbers are tests/barrier.rs's, which says what each one shows):
 *   exiting           2. threads with stale pointers exit while a barrier waits for another
 *   exiting-churn     2. 300 short-lived threads exit while barriers run back to back (rseqrt only)
 *   fork              3. one thread forks while another runs barriers; each child runs its own
 *   exitcancel return|exit|cancel|async
 *                     12. threads started through rseqrt's pthread_create trampoline end by
 *                     returning, pthread_exit() or cancellation; their stacks are unmapped,
 *                     later barriers succeed (rseqrt only)
 */
#define _GNU_SOURCE
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
#include <sys/wait.h>
#include <unistd.h>

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "stale_threads.h" /* stale threads and free_range() */

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
        reached("rseqrt_munmap returned 0 after %.1f ms", t1 - t0);
        uint64_t cs = stale_cs_now(&b);
        check(!refers(cs, exit_page, pagesz), "the thread reached only by glibc's broadcast no longer refers to "
              "the freed page (rseq_cs %#llx, page %p)", (unsigned long long)cs, (void *)exit_page);
        check(during > 0, "%d of %d threads with a stale rseq_cs exited while the barrier ran", during,
              EXIT_THREADS);
    }
    stale_finish(&b); /* wakes it ('q'): back to user space, then it ends */
    for (int i = 0; i < EXIT_THREADS; i++)
        pthread_join(e[i], NULL);
    reached("every exiting thread joined");
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
    reached("%d children: registered at the parent's address, EBUSY on re-registration, barriers and "
            "rseqrt_munmap under a stale thread of their own succeeded, exit 0", forks);
    free_range(p, pagesz, "parent page");
    for (int i = 0; i < 3; i++)
        stale_finish(&s[i]);
    free_range(fork_refresh_page, pagesz, "refresh page");
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

static const struct scenario scenarios[] = {
    {"exiting", sc_exiting, NULL, 0},
    {"exiting-churn", sc_exiting_churn, NULL, 0},
    {"fork", sc_fork, NULL, 0},
    {"exitcancel", NULL, sc_exitcancel, 0},
};

int main(int argc, char **argv)
{
    return cases_main(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
