/* test_common.h: shared by the scenario programs barrier_cases.c (with lifecycle_cases.c,
 * unknown_cases.c, sigmask_cases.c) and regress_cases.c (with regress_unload_cases.c,
 * regress_sigmask_cases.c); one scenario per run: PROGRAM SCENARIO rseqrt|plain [ARGS...].
 *
 * The program's state (counters for critical sections, the page size, the METHOD and the
 * scenario's name), failing and checking (one line per check; the first failure ends the
 * process with exit 1, a setup problem with die()'s code), time, the scheduler and signal
 * state of this process's threads (/proc/self/task), pages holding a descriptor,
 * cases_start(), the start of main(), and cases_main() and cases_main_args(), a whole main()
 * over a table of scenarios.
 *
 * The including file defines _GNU_SOURCE first. */
#ifndef TEST_COMMON_H
#define TEST_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "crash_common.h"
#include "rseq_cs.h"
#include <rseqrt.h>

static long counters[4096];
static size_t pagesz;
static int use_rseqrt; /* METHOD rseqrt */
static const char *scenario;

static inline void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", scenario);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    _exit(1);
}

static inline void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static inline void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s: ", scenario);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    _exit(code);
}

static inline void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void check(int ok, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!ok)
        fail("%s", msg);
    printf("ok   %s\n", msg);
}

/* A line for what the scenario got to (no condition: the steps before it were the checks). */
static inline void reached(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void reached(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("ok   ");
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static inline double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static inline void sleep_ms(double ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

/* Scheduler state of a thread of this process ('S' sleeping, 'R' running, ...). */
static inline char thread_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] && p[2] ? p[2] : '?';
}

static inline void wait_sleeping(pid_t tid, const char *what)
{
    double t0 = now_ms();
    while (thread_state(tid) != 'S') {
        if (now_ms() - t0 > 5000)
            die(2, "%s (tid %d) did not block within 5 s (state %c)", what, tid, thread_state(tid));
        sleep_ms(0.2);
    }
}

/* Waits until *V is WANT, NAP_MS between looks; after 5 s the check fails, saying WHAT. */
static inline void wait_value(atomic_int *v, int want, double nap_ms, const char *what)
{
    double t0 = now_ms();
    while (atomic_load(v) != want) {
        if (now_ms() - t0 > 5000)
            fail("%s", what);
        sleep_ms(nap_ms);
    }
}

/* A /proc/self/task/TID/status mask line ("SigBlk", "SigCgt", ...) as a number; TID 0: the
 * process's (/proc/self/status). */
static inline unsigned long long status_mask(pid_t tid, const char *field)
{
    char path[64], buf[4096];
    if (tid)
        snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die(2, "open %s: %s", path, strerror(errno));
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        die(2, "read %s", path);
    buf[n] = 0;
    char key[32];
    snprintf(key, sizeof key, "\n%s:", field);
    char *p = strstr(buf, key);
    if (!p)
        die(2, "no %s in %s", field, path);
    return strtoull(p + strlen(key), NULL, 16);
}

static inline int has_sig(unsigned long long mask, int sig) { return (mask >> (sig - 1)) & 1; }

static inline void *map_pages(size_t n)
{
    void *p = mmap(NULL, n * pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die(2, "mmap: %s", strerror(errno));
    return p;
}

/* A page holding a copy of this program's descriptor (its code stays in .text). */
static inline struct rseq_cs_desc *desc_page(void)
{
    struct rseq_cs_desc *d = map_pages(1);
    memcpy(d, rseq_cs_own_desc(), sizeof *d);
    return d;
}

/* Whether an rseq_cs value points into [p, p + len). */
static inline int refers(uint64_t cs, const void *p, size_t len)
{
    return cs >= (uintptr_t)p && cs < (uintptr_t)p + len;
}

/* Raw rt_sigprocmask: bypasses every interposer (rseqrt's keeps the reserved
 * signal deliverable; this does not). Blocks all but glibc's 32 and 33. */
static inline void raw_block_all_but_glibc(void)
{
    unsigned long long set = ~0ULL & ~(1ULL << 31) & ~(1ULL << 32);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &set, NULL, 8);
}

/* crash_start_timer_thread(), or die (exit 2) naming the call that failed and why. */
static inline void start_timer_thread(void (*cb)(union sigval), timer_t *timer)
{
    const char *failed = crash_start_timer_thread(cb, timer);
    if (failed)
        die(2, "%s: %s", failed, strerror(errno));
}

/* The start of main(): crash_setup(), the page size, METHOD (usage, exit 2, unless rseqrt or
 * plain; ARGS_USAGE names what may follow it), the scenario's name, and the first line: what
 * rseqrt reports. */
static inline void cases_start(int argc, char **argv, const char *args_usage)
{
    crash_setup();
    pagesz = (size_t)sysconf(_SC_PAGESIZE);
    if (argc < 3 || (strcmp(argv[2], "rseqrt") && strcmp(argv[2], "plain"))) {
        fprintf(stderr, "usage: %s SCENARIO rseqrt|plain %s\n", argv[0], args_usage);
        exit(2);
    }
    scenario = argv[1];
    use_rseqrt = !strcmp(argv[2], "rseqrt");
    printf("%s %s: rseqrt_owner=%d signal=%d main cpu_id=%d\n", argv[1], argv[2], rseqrt_owner(), rseqrt_signal(),
           (int32_t)rseq_cs_area()->cpu_id);
}

/* SCENARIO -> its function: run() takes nothing; run_arg() takes ARG (NULL when absent,
 * unless arg_required: then a run without ARG is an unknown scenario). */
struct scenario {
    const char *name;
    void (*run)(void);
    void (*run_arg)(const char *arg);
    int arg_required;
};

/* main() of a program taking SCENARIO rseqrt|plain [ARG]: cases_start(), then the scenario
 * named in the table of N; exit 2 for an unknown one. */
static inline int cases_main(int argc, char **argv, const struct scenario *scenarios, size_t n)
{
    cases_start(argc, argv, "[ARG]");
    const char *arg = argc > 3 ? argv[3] : NULL;
    for (size_t i = 0; i < n; i++) {
        const struct scenario *sc = &scenarios[i];
        if (strcmp(scenario, sc->name) || (sc->arg_required && !arg))
            continue;
        if (sc->run)
            sc->run();
        else
            sc->run_arg(arg);
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "unknown scenario %s\n", scenario);
    return 2;
}

/* SCENARIO -> its function, which takes the ARGS after METHOD (argc 0 when there are none). */
struct scenario_args {
    const char *name;
    void (*run)(int argc, char **argv);
};

/* main() of a program taking SCENARIO rseqrt|plain [ARGS...]: cases_start(), then the scenario
 * named in the table of N; exit 2 for an unknown one. */
static inline int cases_main_args(int argc, char **argv, const struct scenario_args *scenarios, size_t n)
{
    cases_start(argc, argv, "[ARGS...]");
    for (size_t i = 0; i < n; i++) {
        if (strcmp(scenario, scenarios[i].name))
            continue;
        scenarios[i].run(argc - 3, argv + 3);
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "unknown scenario %s\n", scenario);
    return 2;
}

#endif
