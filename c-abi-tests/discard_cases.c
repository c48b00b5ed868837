/* discard_cases: rseqrt_madvise(), rseqrt_mprotect() and rseqrt_shmdt() (and the preload
 * shim's madvise(), mprotect() and shmdt()) beyond the crash suite: what gets the barrier, what
 * goes straight to the kernel, errors, and what a failed barrier leaves.
 *
 *   discard_cases SCENARIO rseqrt|plain [ARGS...]
 *
 * Scenarios:
 *   failsafe KIND api|shim
 *                       KIND: madvise-dontneed|madvise-free|madvise-remove|mprotect-none|
 *                       mprotect-exec|shmdt. A thread that no barrier can reach holds an rseq_cs
 *                       into a two-page region (a System V segment for shmdt): advice and
 *                       protections that keep the contents readable return at once; KIND's
 *                       call, which would take them away, fails with ETIMEDOUT (run with
 *                       RSEQRT_TIMEOUT_MS=200) and changes nothing; once the thread is gone it
 *                       succeeds. Bad arguments get the kernel's own errno. "shim": the plain
 *                       calls, under LD_PRELOAD of librseqrt_preload.so (rseqrt method only).
 *   shm-fragments       shmdt() of a four-page segment whose first page was unmapped and whose
 *                       third was mprotect()ed apart: the kernel detaches the fragments that
 *                       remain (it finds the segment's size from the first), one of which holds
 *                       the descriptor a blocked thread's rseq_cs refers to. plain: SIGSEGV.
 *
 * Exit status as barrier_cases.c (test_common.h): 0 passed, 1 a check failed, 2 setup. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include "raw_clone.h"
#include "test_common.h"

#ifndef MADV_COLD
#define MADV_COLD 20 /* Linux 5.4; glibc 2.31's headers lack it */
#endif

static int via_shim;

static int do_madvise(void *p, size_t len, int advice)
{
    return via_shim ? madvise(p, len, advice) : rseqrt_madvise(p, len, advice);
}

static int do_mprotect(void *p, size_t len, int prot)
{
    return via_shim ? mprotect(p, len, prot) : rseqrt_mprotect(p, len, prot);
}

static int do_shmdt(const void *p)
{
    return via_shim ? shmdt(p) : rseqrt_shmdt(p);
}

/* A System V segment of N pages, attached; marked for removal at once (gone at the last
 * detach, or at exit). */
static char *shm_pages(size_t n)
{
    int id = shmget(IPC_PRIVATE, n * pagesz, IPC_CREAT | 0600);
    if (id < 0)
        die(2, "shmget: %s", strerror(errno));
    char *p = shmat(id, NULL, 0);
    shmctl(id, IPC_RMID, NULL);
    if (p == (void *)-1)
        die(2, "shmat: %s", strerror(errno));
    return p;
}

/* ------------------------------------------------------------ failsafe */

/* The unreachable thread (as unknown_cases.c's "unreachable"): every barrier over raw_desc fails. */
#include "raw_stale.h"

/* Calls CALL (which returns 0 or -1 with errno) and checks that it returns 0 at once. */
#define PASSES(call, what)                                                                        \
    do {                                                                                          \
        double t0_ = now_ms();                                                                    \
        errno = 0;                                                                                \
        int rc_ = (call);                                                                         \
        int e_ = errno;                                                                           \
        double ms_ = now_ms() - t0_;                                                              \
        check(rc_ == 0 && ms_ < 100, "%s: %d errno %d (%s), %.1f ms: straight to the kernel",     \
              what, rc_, e_, strerror(e_), ms_);                                                  \
    } while (0)

/* Checks that CALL fails with the errno the system call SYSCALL_ARGS gives (which runs first,
 * and must fail). */
#define SAME_ERROR(syscall_args, call, what)                                                      \
    do {                                                                                          \
        errno = 0;                                                                                \
        int prc_ = (int)syscall syscall_args;                                                     \
        int pe_ = errno;                                                                          \
        errno = 0;                                                                                \
        int rc_ = (call);                                                                         \
        int e_ = errno;                                                                           \
        check(rc_ == prc_ && e_ == pe_ && rc_ == -1, "%s: %d errno %d (%s), as the system call: %d errno %d", \
              what, rc_, e_, strerror(e_), prc_, pe_);                                            \
    } while (0)

static int intact(const struct rseq_cs_desc *d)
{
    return !memcmp(d, rseq_cs_own_desc(), sizeof *d);
}

enum fs_kind { FS_DONTNEED, FS_FREE, FS_REMOVE, FS_PROT_NONE, FS_PROT_EXEC, FS_SHMDT };
static const char *fs_names[] = {"madvise-dontneed", "madvise-free", "madvise-remove", "mprotect-none",
                                 "mprotect-exec", "shmdt"};

/* The call of kind K over the region [base, base + len). */
static int fs_call(enum fs_kind k, void *base, size_t len)
{
    switch (k) {
    case FS_DONTNEED:
        return do_madvise(base, len, MADV_DONTNEED);
    case FS_FREE:
        return do_madvise(base, len, MADV_FREE);
    case FS_REMOVE:
        return do_madvise(base, len, MADV_REMOVE);
    case FS_PROT_NONE:
        return do_mprotect(base, len, PROT_NONE);
    case FS_PROT_EXEC:
        return do_mprotect(base, len, PROT_EXEC);
    default:
        return do_shmdt(base);
    }
}

static void sc_failsafe(const char *kind_name, const char *how)
{
    int k = -1;
    for (int i = 0; i < 6; i++)
        if (kind_name && !strcmp(kind_name, fs_names[i]))
            k = i;
    if (k < 0 || !how || (strcmp(how, "api") && strcmp(how, "shim")))
        die(2, "usage: failsafe madvise-dontneed|madvise-free|madvise-remove|mprotect-none|mprotect-exec|shmdt "
               "api|shim");
    if (!use_rseqrt)
        die(2, "failsafe has no plain form");
    via_shim = !strcmp(how, "shim");
    const char *fn = k == FS_SHMDT ? "shmdt" : k >= FS_PROT_NONE ? "mprotect" : "madvise";
    if (via_shim)
        check(strstr(crash_provider(fn), "rseqrt") != NULL, "%s is provided by %s", fn, crash_provider(fn));

    /* The region: two pages, the descriptor in the second (anonymous private; shared for
     * MADV_REMOVE; a System V segment for shmdt). */
    size_t len = 2 * pagesz;
    char *base = k == FS_SHMDT ? shm_pages(2)
                               : mmap(NULL, len, PROT_READ | PROT_WRITE,
                                      (k == FS_REMOVE ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        die(2, "mmap: %s", strerror(errno));
    raw_desc = (struct rseq_cs_desc *)(base + pagesz);
    memcpy(raw_desc, rseq_cs_own_desc(), sizeof *raw_desc);
    start_raw_thread();
    reached("an unreachable thread (raw clone(), every signal blocked) holds an rseq_cs into the region");

    /* Nothing is taken away: no barrier, however unreachable the thread. */
    PASSES(do_madvise(base, len, MADV_WILLNEED), "madvise(MADV_WILLNEED)");
    PASSES(do_madvise(base, len, MADV_NORMAL), "madvise(MADV_NORMAL)");
    PASSES(do_madvise(base, len, MADV_COLD), "madvise(MADV_COLD)");
    PASSES(do_mprotect(base, len, PROT_READ), "mprotect(PROT_READ)");
    PASSES(do_mprotect(base, len, PROT_READ | PROT_WRITE), "mprotect(PROT_READ | PROT_WRITE)");
    PASSES(do_madvise(base, 0, MADV_DONTNEED), "madvise(MADV_DONTNEED) of length 0");
    PASSES(do_mprotect(base, 0, PROT_NONE), "mprotect(PROT_NONE) of length 0");

    /* Bad arguments: the kernel's errno, and no barrier. */
    SAME_ERROR((SYS_madvise, base + 1, len, MADV_DONTNEED), do_madvise(base + 1, len, MADV_DONTNEED),
               "madvise(MADV_DONTNEED) of an unaligned address");
    SAME_ERROR((SYS_madvise, base, len, 12345), do_madvise(base, len, 12345), "madvise with an unknown advice");
    SAME_ERROR((SYS_mprotect, base + 1, len, PROT_NONE), do_mprotect(base + 1, len, PROT_NONE),
               "mprotect(PROT_NONE) of an unaligned address");
    SAME_ERROR((SYS_shmdt, base + 1), do_shmdt(base + 1), "shmdt of an unaligned address");
    if (k != FS_SHMDT)
        SAME_ERROR((SYS_shmdt, base), do_shmdt(base), "shmdt of memory that is no segment");

    /* Taken away: the barrier cannot reach the thread; it fails and changes nothing. */
    double t0 = now_ms();
    errno = 0;
    int rc = fs_call(k, base, len);
    int e = errno;
    double ms = now_ms() - t0;
    check(rc == -1 && e == ETIMEDOUT, "%s of the region: %d errno %d (%s) after %.0f ms (RSEQRT_TIMEOUT_MS=%s)",
          fn, rc, e, strerror(e), ms, getenv("RSEQRT_TIMEOUT_MS") ? getenv("RSEQRT_TIMEOUT_MS") : "unset");
    check(ms >= 150 && ms < 1500, "it gave up after the configured timeout (%.0f ms)", ms);
    check(intact(raw_desc), "the region is still %s and holds the descriptor",
          k == FS_SHMDT ? "attached" : k >= FS_PROT_NONE ? "readable" : "intact");

    /* Once the thread is gone, the same call goes through. */
    raw_wake_and_wait();
    check(atomic_load(&raw_state) == 3, "woken, the thread returned to user space, unregistered and exited");
    check(fs_call(k, base, len) == 0, "then %s of the region = 0", fn);
    if (k <= FS_REMOVE && k != FS_FREE)
        check(raw_desc->start_ip == 0, "and the descriptor's page reads as zeros");
    if (k == FS_SHMDT)
        SAME_ERROR((SYS_shmdt, base), do_shmdt(base), "shmdt again (nothing attached there any more)");
    printf("survived\n");
}

/* ------------------------------------------------------- shm-fragments */

static int frag_pipe[2];
static atomic_int frag_ready;
static struct rseq_cs_desc *frag_desc;

static void *frag_main(void *arg)
{
    (void)arg;
    if (rseq_cs_run(counters, frag_desc, rseq_cs_own_code()) < 0)
        die(3, "the stale thread has no registered rseq area: nothing to show");
    atomic_store(&frag_ready, 1);
    char b;
    while (read(frag_pipe[0], &b, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static void sc_shm_fragments(void)
{
    char *seg = shm_pages(4);
    /* The first page goes: shmdt(seg) then finds the segment by the fragment at seg + 1 page
     * (offset 1 page). The third page's protection differs: a fragment of its own. */
    if (munmap(seg, pagesz) != 0 || mprotect(seg + 2 * pagesz, pagesz, PROT_READ) != 0)
        die(2, "munmap/mprotect of the segment's pages: %s", strerror(errno));
    frag_desc = (struct rseq_cs_desc *)(seg + 3 * pagesz);
    memcpy(frag_desc, rseq_cs_own_desc(), sizeof *frag_desc);
    if (pipe(frag_pipe) != 0)
        die(2, "pipe: %s", strerror(errno));
    pthread_t t;
    pthread_create(&t, NULL, frag_main, NULL);
    wait_value(&frag_ready, 1, 0.1, "the stale thread ran its critical section");
    sleep_ms(2);
    int rc = use_rseqrt ? rseqrt_shmdt(seg) : shmdt(seg);
    check(rc == 0, "%sshmdt(segment start, whose page is gone) = %d", use_rseqrt ? "rseqrt_" : "", rc);
    check(mincore(seg + 3 * pagesz, pagesz, (unsigned char[1]){0}) == -1 && errno == ENOMEM,
          "the fragment holding the descriptor is detached too");
    if (write(frag_pipe[1], "x", 1) != 1)
        die(2, "write");
    pthread_join(t, NULL);
    printf("survived\n");
}

int main(int argc, char **argv)
{
    cases_start(argc, argv, "[KIND api|shim]");
    if (!strcmp(scenario, "failsafe"))
        sc_failsafe(argc > 3 ? argv[3] : NULL, argc > 4 ? argv[4] : NULL);
    else if (!strcmp(scenario, "shm-fragments"))
        sc_shm_fragments();
    else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    fflush(stdout);
    return 0;
}
