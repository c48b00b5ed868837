/* stale_threads.h: the stale threads of the barrier scenario programs (barrier_cases.c,
 * lifecycle_cases.c, unknown_cases.c, sigmask_cases.c). A stale thread runs a critical section
 * whose descriptor lies in memory the scenario is about to free (its rseq_cs keeps pointing
 * there), then waits as its kind says: blocked in read(), spinning in user space, blocking
 * signals, waiting for a mutex, or re-running its critical section. Also free_range(): frees
 * with the scenario's METHOD.
 *
 * The including file includes test_common.h first (counters, use_rseqrt, fail, die, now_ms,
 * sleep_ms, wait_sleeping, raw_block_all_but_glibc). */
#ifndef STALE_THREADS_H
#define STALE_THREADS_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Frees with the scenario's method; any failure ends the run. */
static inline void free_range(void *p, size_t len, const char *what)
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

static inline void stale_cs(struct stale *st)
{
    int cpu = st->plugin_fn ? st->plugin_fn(counters)
                            : rseq_cs_run(counters, atomic_load(&st->desc), rseq_cs_own_code());
    if (cpu < 0)
        atomic_store(&st->status, 3);
}

static inline void *stale_main(void *arg)
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

static inline void stale_wait_round(struct stale *st, int round)
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

/* A pthread_create: the program's (rseqrt's), or another (unknown_cases.c: glibc's own, or a
 * second namespace's). */
typedef int (*thread_creator)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* stale_start with the thread created by CREATE. */
static inline void stale_start_by(thread_creator create, struct stale *st, enum stale_kind kind, const char *name,
                                  struct rseq_cs_desc *desc)
{
    memset(st, 0, sizeof *st);
    st->kind = kind;
    st->name = name;
    atomic_store(&st->desc, desc);
    if (pipe(st->pipe) != 0)
        die(2, "pipe: %s", strerror(errno));
    int e = create(&st->thread, NULL, stale_main, st);
    if (e)
        die(2, "pthread_create: %s", strerror(e));
    stale_wait_round(st, 1);
    if (kind == ST_READ || kind == ST_SIGFILL || kind == ST_RAWBLOCK || kind == ST_MUTEX)
        wait_sleeping(st->tid, name);
}

static inline void stale_start(struct stale *st, enum stale_kind kind, const char *name, struct rseq_cs_desc *desc)
{
    stale_start_by(pthread_create, st, kind, name, desc);
}

/* Wakes a thread for another round with a new descriptor. */
static inline void stale_next(struct stale *st, struct rseq_cs_desc *desc)
{
    int r = atomic_load(&st->round);
    atomic_store(&st->desc, desc);
    if (write(st->pipe[1], "x", 1) != 1)
        die(2, "write");
    stale_wait_round(st, r + 1);
    wait_sleeping(st->tid, st->name);
}

static inline uint64_t stale_cs_now(struct stale *st)
{
    return __atomic_load_n(&atomic_load(&st->area)->rseq_cs, __ATOMIC_SEQ_CST);
}

static inline void stale_finish(struct stale *st)
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

#endif
