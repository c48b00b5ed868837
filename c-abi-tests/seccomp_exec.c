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
#include <stdio.h>
#include <string.h>

#include "seccomp_filter.h"

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

    if (refuse_syscall(nr, err, 0) != 0) {
        fprintf(stderr, "seccomp_exec: installing the filter: %s\n", strerror(errno));
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
