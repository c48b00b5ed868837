/* crash_common.h: shared by the crash_*.c programs.
 *
 * crash_setup(): no core files, line-buffered stdout, and a SIGSEGV reporter.
 * The kernel kills a thread whose stale rseq_cs it cannot read with a SIGSEGV
 * whose si_code is SI_KERNEL (measured on this machine: the handler still runs,
 * with si_code 128). A genuine memory fault (a thread executing or touching
 * unmapped memory: a bug in a test program) has SEGV_MAPERR/SEGV_ACCERR. The
 * reporter prints which one it was; for SI_KERNEL it dies by SIGSEGV with the
 * default action (the harness expects exactly that), for anything else it exits
 * with CRASH_EXIT_REAL_FAULT so the harness does not mistake it for the kernel's
 * kill. (When the kernel cannot run the handler, e.g. the thread blocks SIGSEGV,
 * it kills the process with SIGSEGV directly.)
 *
 * Also shared by the crash_*.c, barrier_*.c and regress_*.c programs (which define _GNU_SOURCE):
 * crash_provider() names the object a symbol resolves to (is the call interposed?);
 * crash_start_timer_thread() starts glibc's SIGEV_THREAD helper thread.
 *
 * For the preload programs (barrier_preload.c, regress_preload.c: not linked with rseqrt, run
 * plain or under LD_PRELOAD of the shim): crash_preload_check() says whether the call under test
 * is interposed; crash_stale_start()/crash_stale_finish() run the thread left with a stale
 * rseq_cs. They return the programs' exit codes. */
#ifndef CRASH_COMMON_H
#define CRASH_COMMON_H

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "rseq_cs.h"

#define CRASH_EXIT_REAL_FAULT 10

static void crash_segv_reporter(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char buf[160];
    int kernel = si->si_code == SI_KERNEL;
    int n = snprintf(buf, sizeof buf, "SIGSEGV: si_code %d (%s), si_addr %p\n", si->si_code,
                     kernel ? "SI_KERNEL: the kernel's kill" : "a memory fault in the program",
                     si->si_addr);
    if (n > 0 && write(1, buf, (size_t)n) < 0)
        n = 0;
    if (!kernel)
        _exit(CRASH_EXIT_REAL_FAULT);
    /* SA_RESETHAND restored the default action; unblock the signal so that it
     * acts now. (With SA_NODEFER the kernel does not run this handler at all.) */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(CRASH_EXIT_REAL_FAULT); /* not reached */
}

static void crash_setup(void)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crash_segv_reporter;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
}

/* The file name of the loaded object that provides NAME, as the dynamic linker resolves
 * it from the program ("?" when nothing does). */
static inline const char *crash_provider(const char *name)
{
    Dl_info info;
    void *f = dlsym(RTLD_DEFAULT, name);
    if (!f || !dladdr(f, &info) || !info.dli_fname)
        return "?";
    return info.dli_fname;
}

/* Starts a one-shot SIGEV_THREAD timer that calls CB in glibc's helper thread 1 ms from
 * now. Returns NULL, or the name of the call that failed (errno says why). */
static inline const char *crash_start_timer_thread(void (*cb)(union sigval), timer_t *timer)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = cb;
    if (timer_create(CLOCK_MONOTONIC, &sev, timer) != 0)
        return "timer_create";
    struct itimerspec its = {{0, 0}, {0, 1000000}};
    if (timer_settime(*timer, 0, &its, NULL) != 0)
        return "timer_settime";
    return NULL;
}

/* The preload programs' first lines: which object provides FN (the call OP makes), for
 * `PROGRAM OP MODE`. Under MODE preload it must be an rseqrt object: returns 8 (preload not in
 * effect) if not, else 0. */
static inline int crash_preload_check(const char *op, const char *mode, const char *fn)
{
    printf("%s %s: %s is provided by %s\n", op, mode, fn, crash_provider(fn));
    if (!strcmp(mode, "preload") && !strstr(crash_provider(fn), "rseqrt")) {
        printf("preload not in effect\n");
        return 8;
    }
    return 0;
}

/* A thread that runs one critical section with DESC (counting in COUNTERS) and then blocks in
 * read() until crash_stale_finish(): its rseq_cs is left pointing at DESC. */
struct crash_stale {
    long *counters;
    struct rseq_cs_desc *desc;
    int wake[2];
    atomic_int ready, unregistered;
    pthread_t thread;
};

static inline void *crash_stale_main(void *arg)
{
    struct crash_stale *st = arg;
    if (rseq_cs_run(st->counters, st->desc, rseq_cs_own_code()) < 0)
        atomic_store(&st->unregistered, 1);
    atomic_store(&st->ready, 1);
    char b;
    while (read(st->wake[0], &b, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

/* Starts the stale thread and waits until it has run its critical section, then 2 ms for it
 * to block. Returns 0, 2 (setup) or 3 (it has no registered rseq area: nothing to show). */
static inline int crash_stale_start(struct crash_stale *st, long *counters, struct rseq_cs_desc *desc)
{
    memset(st, 0, sizeof *st);
    st->counters = counters;
    st->desc = desc;
    if (pipe(st->wake) != 0)
        return 2;
    pthread_create(&st->thread, NULL, crash_stale_main, st);
    while (!atomic_load(&st->ready))
        ;
    if (atomic_load(&st->unregistered)) {
        printf("stale thread has no registered rseq area\n");
        return 3;
    }
    usleep(2000);
    return 0;
}

/* Wakes the stale thread (it returns to user space) and joins it. Returns 0 (survived) or 2. */
static inline int crash_stale_finish(struct crash_stale *st)
{
    if (write(st->wake[1], "x", 1) != 1)
        return 2;
    pthread_join(st->thread, NULL);
    printf("survived\n");
    return 0;
}

#endif
