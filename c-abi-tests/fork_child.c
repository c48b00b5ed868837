/* fork_child: a barrier in a child of _Fork() (glibc 2.34+), which runs no fork handler: the
 * child keeps the parent's rseqrt registry, and glibc's own thread lists, unchanged.
 *
 *   fork_child setxid-held rseqrt      (run with RSEQRT_TIMEOUT_MS=300)
 *
 * In the parent, thread S runs a critical section whose descriptor lives in a page, then blocks
 * glibc's SIGSETXID (33) with the raw system call and sleeps; thread A calls
 * setresuid(-1, -1, -1), whose broadcast (glibc's nptl/nptl_setxid.c) takes glibc's
 * dl_stack_cache_lock and waits for S's handler, which never runs: A holds the lock for good.
 * Then:
 *   1. the hazard: a _Fork() child that calls setresuid(-1, -1, -1) itself waits forever (the
 *      lock is held by A, which does not exist there); killed after 1 s.
 *   2. a _Fork() child calls rseqrt_munmap() of the page: the registry names S (the parent's
 *      thread), whose rseq_cs refers to the page; S does not exist in the child and cannot
 *      answer, and glibc's broadcast would wait forever. The barrier must end with its timeout:
 *      -1 ETIMEDOUT after about 300 ms, the page still mapped. It does not return 0: the child
 *      cannot tell which of the registry's threads are its own (it may have started threads
 *      since), so it fails, and frees nothing, as any barrier whose thread does not answer.
 *      A barrier over memory no thread refers to returns 0 at once.
 * Without _Fork() in the C library: prints why and exits 0 (skipped).
 * Exit status as barrier_cases.c (test_common.h): 0 passed, 1 a check failed, 2 setup. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_common.h"

#define SIGSETXID 33

static struct rseq_cs_desc *page;
static int s_pipe[2];
static atomic_int s_ready;
static atomic_int s_tid;

static void *stale_main(void *arg)
{
    (void)arg;
    atomic_store(&s_tid, gettid_());
    if (rseq_cs_run(counters, page, rseq_cs_own_code()) < 0)
        die(3, "the stale thread has no registered rseq area: nothing to show");
    unsigned long long setxid = 1ULL << (SIGSETXID - 1);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &setxid, NULL, 8);
    atomic_store(&s_ready, 1);
    char b;
    while (read(s_pipe[0], &b, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static void *setxid_main(void *arg)
{
    (void)arg;
    setresuid(-1, -1, -1); /* never returns: S never takes SIGSETXID */
    return NULL;
}

/* Waits up to MS for PID; returns its wait status, or -1 if it is still running (then killed). */
static int wait_or_kill(pid_t pid, double ms, double *took)
{
    double t0 = now_ms();
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        *took = now_ms() - t0;
        if (r == pid)
            return st;
        if (*took > ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(2);
    }
}

struct child_result {
    int rc, err, intact;
    double ms;
    int other_rc, other_err;
    double other_ms;
};

static void sc_setxid_held(void)
{
    pid_t (*fork_fn)(void) = (pid_t(*)(void))dlsym(RTLD_DEFAULT, "_Fork");
    if (!fork_fn) {
        printf("observed: skipped: this C library has no _Fork() (glibc < 2.34)\n");
        return;
    }
    if (!use_rseqrt)
        die(2, "setxid-held has no plain form");
    const char *tmo = getenv("RSEQRT_TIMEOUT_MS");
    double timeout = tmo ? atof(tmo) : 2000;
    page = desc_page();
    struct rseq_cs_desc *other = desc_page();
    if (pipe(s_pipe) != 0)
        die(2, "pipe: %s", strerror(errno));
    pthread_t s, a;
    pthread_create(&s, NULL, stale_main, NULL);
    wait_value(&s_ready, 1, 0.1, "the stale thread ran its critical section");
    pid_t stid = atomic_load(&s_tid);
    check(has_sig(status_mask(stid, "SigBlk"), SIGSETXID), "thread S (%d) ran a critical section in the page and "
          "blocks SIGSETXID", stid);
    pthread_create(&a, NULL, setxid_main, NULL);
    double t0 = now_ms();
    while (!has_sig(status_mask(stid, "SigPnd"), SIGSETXID)) {
        if (now_ms() - t0 > 5000)
            die(2, "SIGSETXID never became pending in S");
        sleep_ms(1);
    }
    reached("thread A's setresuid() broadcast holds glibc's thread-list lock, waiting for S (SIGSETXID pending)");

    /* 1. The hazard. */
    fflush(stdout);
    pid_t c = fork_fn();
    if (c < 0)
        die(2, "_Fork: %s", strerror(errno));
    if (c == 0) {
        setresuid(-1, -1, -1);
        _exit(0);
    }
    double took;
    int st = wait_or_kill(c, 1000, &took);
    check(st == -1, "in a _Fork() child, glibc's broadcast (setresuid(-1, -1, -1)) %s",
          st == -1 ? "waits forever (still waiting after 1 s; killed)" : "returned");

    /* 2. The barrier in such a child. */
    int p[2];
    if (pipe(p) != 0)
        die(2, "pipe: %s", strerror(errno));
    fflush(stdout);
    c = fork_fn();
    if (c < 0)
        die(2, "_Fork: %s", strerror(errno));
    if (c == 0) {
        struct child_result r;
        double c0 = now_ms();
        r.other_rc = rseqrt_munmap(other, pagesz);
        r.other_err = errno;
        r.other_ms = now_ms() - c0;
        c0 = now_ms();
        errno = 0;
        r.rc = rseqrt_munmap(page, pagesz);
        r.err = errno;
        r.ms = now_ms() - c0;
        r.intact = !memcmp(page, rseq_cs_own_desc(), sizeof *page);
        if (write(p[1], &r, sizeof r) != (ssize_t)sizeof r)
            _exit(2);
        _exit(0);
    }
    close(p[1]);
    st = wait_or_kill(c, timeout + 3000, &took);
    check(st != -1, "the _Fork() child's barrier %s after %.0f ms (limit %.0f)",
          st == -1 ? "had not ended (child killed)" : "ended", took, timeout + 3000);
    struct child_result r;
    check(read(p[0], &r, sizeof r) == (ssize_t)sizeof r && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the child reported (status %#x)", st);
    check(r.other_rc == 0, "in the child, rseqrt_munmap of a page no thread refers to: %d errno %d, %.1f ms",
          r.other_rc, r.other_err, r.other_ms);
    check(r.rc == -1 && r.err == ETIMEDOUT, "in the child, rseqrt_munmap of the page S refers to: %d errno %d (%s)",
          r.rc, r.err, strerror(r.err));
    check(r.ms >= timeout * 0.75 && r.ms < timeout + 1000, "after its timeout (%.0f ms; RSEQRT_TIMEOUT_MS=%.0f)",
          r.ms, timeout);
    check(r.intact, "the page stayed mapped in the child, the descriptor intact");
    printf("observed: _Fork() child: the barrier failed with ETIMEDOUT after %.0f ms, freeing nothing\n", r.ms);
    printf("survived\n");
    fflush(stdout);
    _exit(0); /* A waits forever in glibc's broadcast, S with SIGSETXID blocked: end them all */
}

int main(int argc, char **argv)
{
    cases_start(argc, argv, "");
    if (!strcmp(scenario, "setxid-held"))
        sc_setxid_held();
    else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    fflush(stdout);
    return 0;
}
