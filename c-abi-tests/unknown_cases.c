/* unknown_cases: rseqrt's rseq-clear barrier over threads its ordinary means do not reach, one
 * scenario per run (a sibling of barrier_cases.c): a thread no signal reaches (the barrier fails
 * and frees nothing), threads that block the reserved signal with the raw system call, and threads
 * rseqrt's registry does not know (raw clone(), glibc's own pthread_create, a second link-map
 * namespace's C library), with the check that looks for them.
 *
 *   unknown_cases SCENARIO METHOD [ARG]
 *
 * METHOD (rseqrt or plain) and the exit status: as barrier_cases.c.
 *
 * Scenarios (the numbers are tests/barrier.rs's, which says what each one shows):
 *   unreachable       7. a registered raw clone() thread blocking every signal: ETIMEDOUT,
 *                     the page stays mapped (RSEQRT_TIMEOUT_MS=200)
 *   rawmask           7. a pthread blocking the reserved signal with the raw syscall: glibc's
 *                     broadcast reaches it; with that refused (seccomp), the barrier fails
 *   rawunknown        7. a raw clone() thread registered by itself, unknown to rseqrt and glibc
 *   rawunknown-__clone    the same, started with __clone()
 *   rawunknown-deepbind PLUGIN  the same, started by a plugin loaded with RTLD_DEEPBIND
 *   namespace         7b. a thread of a second namespace's C library (glibc owner only)
 *   bypass            7b. a thread started by glibc's own pthread_create (glibc owner only)
 *   census            7c. the unknown-thread check makes no fstat() unless it must
 */
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
#include <unistd.h>

#include "seccomp_filter.h"
#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "census_probe.h" /* the fstat trap and glibc's own pthread_create */
#include "stale_threads.h" /* stale threads and free_range() */
#include "raw_stale.h" /* the raw clone() thread no signal reaches */

/* --------------------------------------------- 7. a failed barrier frees nothing */

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
    stale_start_by((thread_creator)ns_create, &s, ST_READ, "namespace", p);
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

/* A glibc thread that blocks the reserved signal with the raw system call: rseqrt's signal
 * cannot reach it, glibc's broadcast (setresuid(-1, -1, -1), once the signal has not been taken
 * for 20 ms) does. Told apart by mechanism, not by time: with setresuid() then refused to every
 * thread (seccomp), glibc's broadcast fails (EPERM), and so does the barrier over a second such
 * thread, freeing nothing; so the broadcast is what reached the first. */
static void sc_rawmask(void)
{
    struct rseq_cs_desc *p = desc_page();
    struct stale s;
    stale_start(&s, ST_RAWBLOCK, "rawblock", p);
    unsigned long long blk = status_mask(s.tid, "SigBlk");
    check(has_sig(blk, rseqrt_signal()), "the thread blocks the reserved signal %d (SigBlk %016llx)",
          rseqrt_signal(), blk);
    /* Asleep now, it keeps its field until woken; switched out before it slept, its kernel has
     * cleared it, and there would be nothing to reach (or, plain, nothing to crash on). */
    if (!refers(atomic_load(&s.area)->rseq_cs, p, pagesz))
        die(9, "inconclusive: the thread's rseq_cs was cleared before the barrier");
    free_range(p, pagesz, "page");
    stale_finish(&s);
    if (use_rseqrt) {
        if (refuse_syscall(SYS_setresuid, EPERM, 1) != 0)
            die(2, "seccomp filter refusing setresuid: %s", strerror(errno));
        struct rseq_cs_desc *q = desc_page();
        stale_start(&s, ST_RAWBLOCK, "rawblock-2", q);
        /* As above: the barrier must have a stale field to reach. */
        if (!refers(atomic_load(&s.area)->rseq_cs, q, pagesz))
            die(9, "inconclusive: the second thread's rseq_cs was cleared before the barrier");
        int rc = rseqrt_munmap(q, pagesz), e = errno;
        check(rc == -1 && e == EPERM,
              "with glibc's broadcast refused (setresuid: EPERM), rseqrt_munmap over a second such thread = %d, "
              "errno %d (%s)", rc, rc ? e : 0, rc ? strerror(e) : "-");
        check(!memcmp(q, rseq_cs_own_desc(), sizeof *q), "the page is still mapped, with the descriptor intact");
        stale_finish(&s);
    }
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
    stale_start_by((thread_creator)glibc_create, &s, ST_READ, "bypass", p);
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

/* ------------------------------------------------------------------------ main */

static const struct scenario scenarios[] = {
    {"unreachable", sc_unreachable, NULL, 0},
    {"rawmask", sc_rawmask, NULL, 0},
    {"rawunknown", sc_rawunknown, NULL, 0},
    {"rawunknown-__clone", sc_rawunknown___clone, NULL, 0},
    {"rawunknown-deepbind", NULL, sc_rawunknown_deepbind, 1},
    {"namespace", sc_namespace, NULL, 0},
    {"bypass", sc_bypass, NULL, 0},
    {"census", sc_census, NULL, 0},
};

int main(int argc, char **argv)
{
    return cases_main(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
