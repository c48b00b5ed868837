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
 * it kills the process with SIGSEGV directly.) */
#ifndef CRASH_COMMON_H
#define CRASH_COMMON_H

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
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

#endif
