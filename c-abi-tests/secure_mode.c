/* secure_mode: what rseqrt read from the environment, as a program linked with it sees it.
 *
 *   secure_mode show            prints rseqrt_owner=N signal=N secure=N
 *   secure_mode drop PROGRAM... drops to uid/gid 65534 and runs PROGRAM (built set-user-ID
 *                               root by the test, PROGRAM then runs in secure mode: AT_SECURE) */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <rseqrt.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "drop")) {
        if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) {
            printf("FAIL cannot drop to uid 65534: %s\n", strerror(errno));
            return 2;
        }
        execv(argv[2], argv + 2);
        printf("FAIL exec %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    if (argc != 2 || strcmp(argv[1], "show")) {
        printf("usage: secure_mode show | drop PROGRAM ARGS...\n");
        return 2;
    }
    printf("rseqrt_owner=%d signal=%d secure=%lu uid=%d euid=%d reason: %s\n", rseqrt_owner(), rseqrt_signal(),
           getauxval(AT_SECURE), (int)getuid(), (int)geteuid(), rseqrt_owner_reason());
    return 0;
}
