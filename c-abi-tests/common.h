/* Shared helpers for the C ABI tests.
 *
 * Only glibc's public rseq ABI (<sys/rseq.h>; before glibc 2.35 the same names, which rseqrt
 * then defines) and the kernel's syscall
 * interface are used here, so a program built with these helpers means the
 * same thing with plain glibc and with rseqrt linked or preloaded. */
#ifndef RSEQRT_ABI_TEST_COMMON_H
#define RSEQRT_ABI_TEST_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#else
/* glibc before 2.35 has no rseq ABI: the kernel's struct, and the names that rseqrt (linked
 * or preloaded) defines in glibc's place: weak, so that a program runs without rseqrt too. */
#include <linux/rseq.h>
#ifdef RSEQRT_LINKED
/* Linked with rseqrt: its definitions, copied into the executable like glibc's would be. */
extern const ptrdiff_t __rseq_offset;
extern const unsigned int __rseq_size;
extern const unsigned int __rseq_flags;
#else
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
extern const unsigned int __rseq_flags __attribute__((weak));
#endif
#endif
#include <sys/syscall.h>
#include <unistd.h>

#include "thread_pointer.h"

#ifndef __x86_64__
#error "these tests know the x86-64 rseq signature only"
#endif

/* The signature glibc registers with on x86-64; the kernel answers EBUSY
 * only when address, length and signature all match the registration. */
#define TEST_RSEQ_SIG 0x53053053u
#define TEST_RSEQ_FLAG_UNREGISTER 1

/* One line per check; the first failure ends the process (and only it: a
 * fork child fails on its own and its parent reports the exit status). */
static inline void check(int ok, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void check(int ok, const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("%s %s\n", ok ? "ok  " : "FAIL", msg);
    if (!ok) {
        fflush(stdout);
        _exit(1);
    }
}

static inline void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("#    ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static inline long sys_rseq(void *area, uint32_t len, int flags, uint32_t sig)
{
    return syscall(SYS_rseq, area, len, flags, sig);
}

/* The kernel's answer, not glibc's: since 2.35 sched_getcpu() reads the
 * very rseq area under test, so it cannot be the reference. */
static inline int kernel_getcpu(unsigned *cpu, unsigned *node)
{
    return (int)syscall(SYS_getcpu, cpu, node, NULL);
}

/* The area glibc's ABI describes for the calling thread. */
static inline struct rseq *abi_area(void)
{
    return (struct rseq *)((char *)thread_pointer() + __rseq_offset);
}

static inline int32_t read_cpu_id(const struct rseq *area)
{
    return *(const volatile int32_t *)&area->cpu_id;
}

static inline int32_t read_cpu_id_start(const struct rseq *area)
{
    return (int32_t)*(const volatile uint32_t *)&area->cpu_id_start;
}

static inline const char *expect_env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

#endif
