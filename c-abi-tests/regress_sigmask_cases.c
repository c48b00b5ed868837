/* regress_sigmask_cases: regression tests for bugs found in review (tests/regress.rs says
 * which) in the temporary signal masks a stale thread can wait under: one scenario per run (a
 * sibling of regress_cases.c).
 *
 *   regress_sigmask_cases SCENARIO METHOD [ARGS...]
 *
 * METHOD (rseqrt or plain) and the exit status: as regress_cases.c.
 *
 * Scenarios (the numbers are tests/regress.rs's):
 *   tempmask ppoll|pselect|epoll_pwait|epoll_pwait2|sigsuspend
 *                                      7. a stale thread waits there with a full temporary mask
 *   attrmask                           7. a stale thread started with pthread_attr_setsigmask_np(full)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <unistd.h>

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "regress_helpers.h" /* cs_of, mapped, open_plugin, registered_len, pipes, stale_reader */
#include "seccomp_filter.h"

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

#define TM_TRIES 3

/* The reserved signal, not glibc's broadcast, must reach a thread waiting under a full temporary
 * mask (rseqrt's interposers take the reserved signal out of it). Told apart by mechanism, not by
 * time: setresuid() is refused to every thread (seccomp), so glibc's broadcast, which is
 * setresuid(-1, -1, -1), fails and the barrier with it (EPERM); rseqrt_munmap() returns 0 only if
 * the signal reached the thread. The barrier turns to the broadcast only once the thread has not
 * taken the signal for 20 ms, which a loaded machine can cause now and then: such an attempt is
 * made again, at most TM_TRIES times. Before the interposers, every attempt failed. */
static void run_tempmask(enum tm_call call)
{
    int sig = rseqrt_signal();
    if (sig <= 0)
        die(2, "no reserved signal");
    /* The first barrier of a process sets things up (membarrier registration). */
    void *warm = map_pages(1);
    if (rseqrt_munmap(warm, pagesz) != 0)
        die(2, "warm-up rseqrt_munmap: %s", strerror(errno));
    if (use_rseqrt && refuse_syscall(SYS_setresuid, EPERM, 1) != 0)
        die(2, "seccomp filter refusing setresuid: %s", strerror(errno));
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
        int rc = rseqrt_munmap(s.desc, pagesz);
        int e = errno;
        if (rc != 0 && e == EPERM && attempt < TM_TRIES) {
            printf("slow  attempt %d: the signal had not reached the thread within 20 ms, and the refused broadcast "
                   "failed the barrier (EPERM); again\n", attempt);
            tm_finish(&s);
            continue;
        }
        check(rc == 0, "rseqrt_munmap over a thread blocked in %s with a full mask = 0 with glibc's broadcast refused "
              "(the reserved signal reached it), attempt %d: %d, errno %d (%s)", tm_names[call], attempt, rc,
              rc ? e : 0, rc ? strerror(e) : "-");
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

/* ------------------------------------------------------------------------ main */

static const struct scenario_args scenarios[] = {
    {"tempmask", sc_tempmask},
    {"attrmask", sc_attrmask},
};

int main(int argc, char **argv)
{
    return cases_main_args(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
