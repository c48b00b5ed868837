/* seccomp_filter.h: make one system call fail with an errno, for the calling thread (and the
 * threads and programs it starts), or for every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).
 * x86-64 only. Used by seccomp_exec.c (before exec) and by cases that take a call away midway. */
#ifndef SECCOMP_FILTER_H
#define SECCOMP_FILTER_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __x86_64__
#error "seccomp_filter.h knows the x86-64 syscall ABI only"
#endif

/* x32 callers use the same number with this bit set. */
#define SECCOMP_FILTER_X32_BIT 0x40000000u

/* 0, or -1 with errno (from prctl or seccomp). */
static inline int refuse_syscall(long nr, unsigned err, int all_threads)
{
    struct sock_filter filter[] = {
        /* A syscall from another ABI has other numbers: allow it untouched. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_FILTER_X32_BIT | (unsigned)nr, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };
    /* Required to install a filter without CAP_SYS_ADMIN; also harmless as root. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    if (all_threads) {
        long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
        /* A positive result is the id of a thread that could not take the filter (errno unset). */
        if (r > 0)
            errno = EBUSY;
        return r == 0 ? 0 : -1;
    }
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

#endif
