/* norseq_exec PROG ARGS...: run PROG on a "kernel without rseq".
 *
 * Installs a seccomp filter that answers ENOSYS to the rseq syscall, then
 * execs PROG.  The filter survives execve, so even the dynamic linker's
 * registration of PROG's main thread is refused, exactly as on a kernel that
 * predates rseq.  Raw BPF (no libseccomp) so the test needs nothing extra. */
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
#error "norseq_exec knows the x86-64 syscall ABI only"
#endif

/* x32 callers use the same number with this bit set. */
#define X32_BIT 0x40000000u

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROG [ARGS...]\n", argv[0]);
        return 2;
    }

    struct sock_filter filter[] = {
        /* A syscall from another ABI has other numbers: allow it untouched. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rseq, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X32_BIT | SYS_rseq, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };

    /* Required to install a filter without CAP_SYS_ADMIN; also harmless as root. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "norseq_exec: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
        return 126;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        fprintf(stderr, "norseq_exec: PR_SET_SECCOMP: %s\n", strerror(errno));
        return 126;
    }

    /* Self-check: the filter must really refuse rseq before we vouch for it. */
    errno = 0;
    long rc = syscall(SYS_rseq, NULL, 0, 0, 0);
    if (rc != -1 || errno != ENOSYS) {
        fprintf(stderr, "norseq_exec: filter not effective: rseq() = %ld, errno %d (%s)\n",
                rc, errno, strerror(errno));
        return 126;
    }

    execv(argv[1], argv + 1);
    fprintf(stderr, "norseq_exec: execv %s: %s\n", argv[1], strerror(errno));
    return 127;
}
