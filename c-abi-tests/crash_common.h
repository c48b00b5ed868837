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
 * Also shared by the crash_*.c and barrier_*.c programs (which define _GNU_SOURCE):
 * crash_provider() names the object a symbol resolves to (is the call interposed?);
 * crash_start_timer_thread() starts glibc's SIGEV_THREAD helper thread. */
#ifndef CRASH_COMMON_H
#define CRASH_COMMON_H

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

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

#endif
