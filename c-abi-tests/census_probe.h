/* census_probe.h: observe rseqrt's unknown-thread check from outside (shared by unknown_cases.c
 * and waves.c). rseqrt counts the process's threads with an fstat() of /proc/self/task only when
 * glibc's thread count exceeds the registry's count of the threads it knows; a seccomp filter
 * on the calling thread traps fstat (SIGSYS, answered with ENOSYS, counted). So barriers that
 * make no fstat show that the registry knows at least as many threads as glibc counts, and
 * barriers that make one each while a thread started behind rseqrt's back lives show that it
 * knows no more (its count is exact).
 *
 * The including file includes test_common.h first (fail, die). */
#ifndef CENSUS_PROBE_H
#define CENSUS_PROBE_H

#include <dlfcn.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <ucontext.h>

static atomic_int fstat_traps;

static void count_fstat(int sig, siginfo_t *si, void *ucontext)
{
    (void)sig;
    (void)si;
    atomic_fetch_add(&fstat_traps, 1);
    ((ucontext_t *)ucontext)->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
}

static void trap_fstat_in_this_thread(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = count_fstat;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGSYS, &sa, NULL) != 0)
        die(2, "sigaction(SIGSYS): %s", strerror(errno));
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fstat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        die(2, "seccomp: %s", strerror(errno));
}

/* glibc's own pthread_create, bypassing rseqrt's: libc.so.6's GLIBC_2.34 version, or before
 * glibc 2.34 libpthread.so.0's GLIBC_2.2.5 one. */
static void *glibc_pthread_create(void)
{
    void *h = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void *f = h ? dlvsym(h, "pthread_create", "GLIBC_2.34") : NULL;
    if (!f && (h = dlopen("libpthread.so.0", RTLD_LAZY | RTLD_NOLOAD)))
        f = dlvsym(h, "pthread_create", "GLIBC_2.2.5");
    if (!f)
        die(2, "glibc's pthread_create not found: %s", dlerror());
    return f;
}

static int census_barriers(const char *what)
{
    static char unrelated[4096] __attribute__((aligned(4096)));
    int before = atomic_load(&fstat_traps);
    for (int i = 0; i < 20; i++)
        if (rseqrt_clear(unrelated, sizeof unrelated, 0) != 0)
            fail("rseqrt_clear %s: errno %d", what, errno);
    return atomic_load(&fstat_traps) - before;
}

#endif
