/* seccomp_exec SYSCALL ERRNO PROG [ARGS...]: run PROG where one system call fails.
 *
 *   SYSCALL  rseq        a "kernel without rseq": even the dynamic linker's registration
 *                        of PROG's main thread is refused, as on a kernel that predates rseq
 *            membarrier  rseqrt in PROG never gets membarrier and must clear stale
 *                        rseq_cs pointers with signals alone
 *            process_vm_readv  no descriptor can be read with it (the barrier must read
 *                        the ones it can read safely without it, and fail closed elsewhere)
 *   ERRNO    ENOSYS or EPERM: what the call answers
 *
 * Installs a seccomp filter that answers ERRNO to SYSCALL (and lets everything else
 * through), checks that the filter is effective (the call really fails with ERRNO),
 * then execs PROG; the filter survives execve. Raw BPF (no libseccomp) so the tests
 * need nothing extra. Exit: 2 usage, 126 the filter could not be installed or is not
 * effective, 127 execv failed; otherwise PROG's. */
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
#error "seccomp_exec knows the x86-64 syscall ABI only"
#endif

/* x32 callers use the same number with this bit set. */
#define X32_BIT 0x40000000u

int main(int argc, char **argv)
{
    long nr = -1;
    unsigned err = 0;
    if (argc >= 4) {
        if (!strcmp(argv[1], "rseq"))
            nr = SYS_rseq;
        else if (!strcmp(argv[1], "membarrier"))
            nr = SYS_membarrier;
        else if (!strcmp(argv[1], "process_vm_readv"))
            nr = SYS_process_vm_readv;
        if (!strcmp(argv[2], "ENOSYS"))
            err = ENOSYS;
        else if (!strcmp(argv[2], "EPERM"))
            err = EPERM;
    }
    if (nr < 0 || err == 0) {
        fprintf(stderr, "usage: %s rseq|membarrier|process_vm_readv ENOSYS|EPERM PROG [ARGS...]\n", argv[0]);
        return 2;
    }

    struct sock_filter filter[] = {
        /* A syscall from another ABI has other numbers: allow it untouched. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X32_BIT | (unsigned)nr, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };

    /* Required to install a filter without CAP_SYS_ADMIN; also harmless as root. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "seccomp_exec: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
        return 126;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        fprintf(stderr, "seccomp_exec: PR_SET_SECCOMP: %s\n", strerror(errno));
        return 126;
    }

    /* Self-check: the filter must really refuse the call before we vouch for it.
     * (rseq(NULL, 0, 0, 0) and membarrier(MEMBARRIER_CMD_QUERY, 0, 0) change nothing.) */
    errno = 0;
    long rc = syscall(nr, 0, 0, 0, 0);
    if (rc != -1 || errno != (int)err) {
        fprintf(stderr, "seccomp_exec: filter not effective: %s() = %ld, errno %d (%s)\n", argv[1],
                rc, errno, strerror(errno));
        return 126;
    }

    execv(argv[3], argv + 3);
    fprintf(stderr, "seccomp_exec: execv %s: %s\n", argv[3], strerror(errno));
    return 127;
}
