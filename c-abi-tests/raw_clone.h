/* raw_clone.h: what a thread started with clone() instead of pthread_create() needs to run C
 * code that uses TLS: a thread-pointer block of its own. The tests' raw threads register rseq
 * themselves (with rseqrt_register_current_thread() or the system call), so they must not share
 * the creator's area.
 *
 * raw_clone_thread_pointer() copies the calling thread's TCB and the static TLS below it (up to
 * 60 KiB below the thread pointer's page and 16 KiB above it, within its mapping), zeroes the
 * copied static TLS, points glibc's tcbhead_t.tcb and .self at the copy, and resets the rseq area
 * at AREA_OFFSET from the thread pointer to "not registered". It returns the new thread pointer
 * for CLONE_SETTLS, or NULL with *WHY naming what failed. */
#ifndef RAW_CLONE_H
#define RAW_CLONE_H

#include <linux/futex.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rseq_cs.h"

static inline char *raw_clone_thread_pointer(ptrdiff_t area_offset, const char **why)
{
    char *tp = thread_pointer();
    uintptr_t lo = 0, hi = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a <= (uintptr_t)tp && (uintptr_t)tp < b) {
            lo = a, hi = b;
            break;
        }
    }
    if (f)
        fclose(f);
    if (!hi) {
        *why = "no mapping holds the thread pointer";
        return NULL;
    }
    uintptr_t tpage = (uintptr_t)tp & ~(uintptr_t)4095;
    uintptr_t clo = tpage - 61440 > lo ? tpage - 61440 : lo;
    uintptr_t chi = tpage + 16384 < hi ? tpage + 16384 : hi;
    if ((uintptr_t)tp + area_offset < clo || (uintptr_t)tp + area_offset + 32 > chi) {
        *why = "the rseq area is outside the copied block";
        return NULL;
    }
    char *copy = mmap(NULL, chi - clo, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        *why = "mmap";
        return NULL;
    }
    memcpy(copy, (void *)clo, chi - clo);
    char *ntp = copy + ((uintptr_t)tp - clo);
    memset(copy, 0, (size_t)(ntp - copy)); /* static TLS below the TCB: fresh */
    ((void **)ntp)[0] = ntp;               /* tcbhead_t.tcb */
    ((void **)ntp)[2] = ntp;               /* tcbhead_t.self */
    struct rseq_cs_area *a = (struct rseq_cs_area *)(ntp + area_offset);
    memset(a, 0, sizeof *a);
    a->cpu_id = (uint32_t)-1;
    return ntp;
}

/* The C library's clone(), or another way to it (__clone, a dlsym'd entry). */
typedef int (*raw_clone_starter)(int (*)(void *), void *, int, void *, ...);

/* Starts FN on a raw CLONE_THREAD thread through STARTER, with a 256 KiB stack and a
 * thread-pointer block of its own (raw_clone_thread_pointer(AREA_OFFSET)); its id lands in
 * *CTID, which the kernel clears when it exits. Returns 0, or -1 with *WHY naming what failed. */
static inline int raw_clone_start(raw_clone_starter starter, int (*fn)(void *), ptrdiff_t area_offset,
                                  volatile pid_t *ctid, const char **why)
{
    char *ntp = raw_clone_thread_pointer(area_offset, why);
    if (!ntp)
        return -1;
    size_t stack_len = 256 * 1024;
    char *stack = mmap(NULL, stack_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) {
        *why = "mmap of the stack";
        return -1;
    }
    int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS |
                CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    if (starter(fn, stack + stack_len - 64, flags, NULL, ctid, ntp, ctid) < 0) {
        *why = "clone";
        return -1;
    }
    return 0;
}

/* A raw thread sleeps in the kernel until *WORD is set, with no C library call in between (it
 * has no glibc thread state of its own), and returns to user space when woken. */
static inline void raw_clone_sleep_until_woken(int *word)
{
    while (!__atomic_load_n(word, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, word, FUTEX_WAIT, 0, NULL, NULL, 0);
}

static inline void raw_clone_wake(int *word)
{
    __atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

#endif
