/* sigmask_cases: rseqrt's interposers of the signal calls, one scenario per run (a sibling of
 * barrier_cases.c): the reserved signal stays unblocked, its number's disposition is the
 * program's while the kernel keeps rseqrt's handler, and sigwait() and friends never return it.
 *
 *   sigmask_cases SCENARIO METHOD [ARG]
 *
 * METHOD (rseqrt or plain) and the exit status: as barrier_cases.c.
 *
 * Scenarios (the numbers are tests/barrier.rs's, which says what each one shows):
 *   sigmask [SIG|auto]  9. pthread_sigmask/sigprocmask/sigaction on the reserved signal (SIG:
 *                     the number RSEQRT_SIGNAL selects), sigwait/sigwaitinfo/sigtimedwait on a
 *                     full set while a barrier signals the waiting thread
 *   signal-fn         9. signal() on the reserved signal's number; the barrier still reaches a
 *                     blocked thread with the program's disposition SIG_IGN (rseqrt only)
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
#include <time.h>
#include <unistd.h>

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "stale_threads.h" /* stale threads and free_range() */

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

/* ------------------------------------------------------------------------ main */

static const struct scenario scenarios[] = {
    {"sigmask", NULL, sc_sigmask, 0},
    {"signal-fn", sc_signal_fn, NULL, 0},
};

int main(int argc, char **argv)
{
    return cases_main(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
