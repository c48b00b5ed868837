/* barrier_nomembarrier_exec ENOSYS|EPERM PROG ARGS...: run PROG where membarrier(2) fails.
 *
 * Installs a seccomp filter that answers the given errno to the membarrier syscall (and
 * lets everything else through), checks that it is effective, then execs PROG; the filter
 * survives execve, so rseqrt in PROG never gets membarrier and must clear stale rseq_cs
 * pointers with signals alone. Raw BPF, as in norseq_exec.c. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __x86_64__
#error "barrier_nomembarrier_exec knows the x86-64 syscall ABI only"
#endif
#define X32_BIT 0x40000000u

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "ENOSYS") && strcmp(argv[1], "EPERM"))) {
        fprintf(stderr, "usage: %s ENOSYS|EPERM PROG [ARGS...]\n", argv[0]);
        return 2;
    }
    unsigned err = strcmp(argv[1], "ENOSYS") ? EPERM : ENOSYS;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_membarrier, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X32_BIT | SYS_membarrier, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof filter / sizeof filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        fprintf(stderr, "barrier_nomembarrier_exec: seccomp: %s\n", strerror(errno));
        return 126;
    }
    errno = 0;
    long rc = syscall(SYS_membarrier, 0, 0, 0);
    if (rc != -1 || errno != (int)err) {
        fprintf(stderr, "barrier_nomembarrier_exec: filter not effective: membarrier = %ld errno %d\n", rc, errno);
        return 126;
    }
    execv(argv[2], argv + 2);
    fprintf(stderr, "barrier_nomembarrier_exec: execv %s: %s\n", argv[2], strerror(errno));
    return 127;
}
