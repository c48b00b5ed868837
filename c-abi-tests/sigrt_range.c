/* sigrt_range: every real-time signal from SIGRTMIN to SIGRTMAX can be handled, raised and
 * received, with rseqrt (linked, or the preload shim) as without it. rseqrt's reserved signal is
 * outside that range when it is at one end of glibc's (the top by default, or RSEQRT_SIGNAL set
 * to the bottom one), inside it when in the middle; either way a program that names its number
 * can handle, raise and receive it too (rseqrt shares it), while rseqrt's handler stays in the
 * kernel.
 *
 *   sigrt_range WANT_MIN WANT_MAX WANT_RESERVED
 *
 * WANT_MIN, WANT_MAX: what SIGRTMIN and SIGRTMAX must read, here and in the constructor of
 * libsigrt_early.so, which ran before rseqrt's; WANT_RESERVED: rseqrt_signal() (0: rseqrt must
 * not be loaded). Also checked: glibc's own view agrees (strsignal() of a hidden signal is not a
 * real-time signal's name); __libc_allocate_rtsig() hands out the range's ends, never the
 * reserved signal, until none is left. Exit 0: all checks passed; 1: a check failed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

extern int sigrt_early_min, sigrt_early_max, sigrt_early_rseqrt_ready;
/* glibc's allocator of real-time signals (libc.so.6, GLIBC_2.2.5; no header declares it). */
extern int __libc_allocate_rtsig(int high);

static volatile sig_atomic_t received[65];
static int failures;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failures += !ok;
}

static volatile sig_atomic_t info_runs, info_code, info_pid;

static void on_info(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)context;
    info_runs++;
    info_code = info->si_code;
    info_pid = info->si_pid;
}

static void on_signal(int sig)
{
    if (sig > 0 && sig <= 64)
        received[sig]++;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) {
        fprintf(stderr, "usage: %s WANT_MIN WANT_MAX WANT_RESERVED\n", argv[0]);
        return 2;
    }
    int want_min = atoi(argv[1]), want_max = atoi(argv[2]), want_reserved = atoi(argv[3]);
    int (*rseqrt_signal_fn)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_signal");
    int reserved = rseqrt_signal_fn ? rseqrt_signal_fn() : 0;
    int lo = SIGRTMIN, hi = SIGRTMAX;
    printf("SIGRTMIN %d, SIGRTMAX %d, rseqrt %s, reserved signal %d\n", lo, hi,
           rseqrt_signal_fn ? "loaded" : "absent", reserved);
    check(reserved == want_reserved, "the reserved signal is %d (want %d)", reserved, want_reserved);
    check(lo == want_min && hi == want_max, "SIGRTMIN..SIGRTMAX reads %d..%d (want %d..%d)", lo, hi, want_min, want_max);
    check(sigrt_early_min == lo && sigrt_early_max == hi,
          "a library constructor that ran %s rseqrt's read the same: %d..%d",
          sigrt_early_rseqrt_ready == 0 ? "before" : sigrt_early_rseqrt_ready == 1 ? "after" : "without",
          sigrt_early_min, sigrt_early_max);
    if (rseqrt_signal_fn)
        check(sigrt_early_rseqrt_ready == 0, "that constructor ran before rseqrt's (the interposers chose the signal)");

    int hidden = reserved && (reserved < lo || reserved > hi);
    if (reserved)
        check(hidden == (reserved == 34 || reserved == 64),
              "the reserved signal %d is %s SIGRTMIN..SIGRTMAX", reserved, hidden ? "outside" : "inside");
    if (hidden) {
        char name[64], top[64]; /* strsignal() may reuse one buffer */
        snprintf(name, sizeof name, "%s", strsignal(reserved));
        snprintf(top, sizeof top, "%s", strsignal(hi));
        check(strncmp(name, "Real-time signal", 16) != 0,
              "glibc's own view agrees: strsignal(%d) = \"%s\" (strsignal(%d) = \"%s\")", reserved, name, hi, top);
    }

    /* A handler on each signal of the range, each raised and received; then on the reserved
     * signal by its number, as a program that hard-codes it does (bash's RTMAX is 64). */
    int handled = 0, in_range = reserved >= lo && reserved <= hi, extra = reserved && !in_range;
    for (int sig = lo; sig <= hi + extra; sig++) {
        int target = sig <= hi ? sig : reserved;
        struct sigaction act, old;
        memset(&act, 0, sizeof act);
        act.sa_handler = on_signal;
        sigemptyset(&act.sa_mask);
        errno = 0;
        int rc = sigaction(target, &act, &old);
        if (rc != 0) {
            check(0, "sigaction(%d) = %d, errno %d (%s)", target, rc, errno, strerror(errno));
            continue;
        }
        if (old.sa_handler != SIG_DFL)
            check(0, "sigaction(%d) reported a previous handler %p (want SIG_DFL)", target, (void *)old.sa_handler);
        raise(target);
        if (received[target] != 1)
            check(0, "signal %d raised: its handler ran %d times", target, (int)received[target]);
        else
            handled++;
    }
    check(handled - extra == hi - lo + 1, "%d of the %d signals %d..%d handled, raised and received", handled - extra,
          hi - lo + 1, lo, hi);
    if (reserved) {
        check(received[reserved] == 1, "the reserved signal %d, named by its number: handled, raised and received", reserved);
        struct sigaction now;
        check(sigaction(reserved, NULL, &now) == 0 && now.sa_handler == on_signal,
              "sigaction(%d) reports the program's handler", reserved);
        /* The kernel's view (x86-64 struct: handler, flags, restorer, mask). */
        unsigned long kact[4] = {0};
        check(syscall(SYS_rt_sigaction, reserved, NULL, kact, 8) == 0 && kact[0] != (unsigned long)on_signal &&
                  kact[0] != (unsigned long)SIG_DFL && kact[0] != (unsigned long)SIG_IGN,
              "the kernel still runs rseqrt's handler on %d", reserved);
    }

    /* A one-shot SA_SIGINFO handler on the top number (the reserved one under rseqrt): runs once,
     * sees the sender's siginfo, and leaves SIG_DFL behind, as the kernel does. */
    {
        int top = reserved ? reserved : 64;
        struct sigaction act, now;
        memset(&act, 0, sizeof act);
        act.sa_sigaction = on_info;
        act.sa_flags = SA_SIGINFO | SA_RESETHAND;
        sigemptyset(&act.sa_mask);
        check(sigaction(top, &act, NULL) == 0, "sigaction(%d, SA_SIGINFO|SA_RESETHAND)", top);
        raise(top);
        check(info_runs == 1 && info_code == SI_TKILL && info_pid == getpid(),
              "signal %d raised: the one-shot SA_SIGINFO handler ran %d time(s), si_code %d (SI_TKILL %d), si_pid %d",
              top, info_runs, info_code, SI_TKILL, info_pid);
        check(sigaction(top, NULL, &now) == 0 && now.sa_handler == SIG_DFL, "after it ran, signal %d reads SIG_DFL", top);
    }

    /* glibc's allocator: the ends of the range, never the reserved signal (a reserved signal in
     * the middle is left out of the range once an end reaches it). */
    int first = __libc_allocate_rtsig(0), want_hi = hi - 1 == reserved ? hi - 2 : hi - 1;
    check(first == hi && SIGRTMAX == want_hi, "__libc_allocate_rtsig(0) = %d (SIGRTMAX was %d), SIGRTMAX now %d (want %d)",
          first, hi, SIGRTMAX, want_hi);
    int low = __libc_allocate_rtsig(1), want_lo = lo + 1 == reserved ? lo + 2 : lo + 1;
    check(low == lo && SIGRTMIN == want_lo, "__libc_allocate_rtsig(1) = %d (SIGRTMIN was %d), SIGRTMIN now %d (want %d)",
          low, lo, SIGRTMIN, want_lo);
    int n = 2, handed_reserved = 0, sig;
    while ((sig = __libc_allocate_rtsig(0)) > 0 && n < 64) {
        handed_reserved |= sig == reserved;
        n++;
    }
    check(!handed_reserved && n == hi - lo + 1 - in_range,
          "allocated until none was left: %d signals, the reserved one never (SIGRTMIN %d > SIGRTMAX %d now)", n,
          SIGRTMIN, SIGRTMAX);
    return failures ? 1 : 0;
}
