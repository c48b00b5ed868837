/* barrier_preload: an unmodified program (not linked with rseqrt) takes memory away from
 * under a stale rseq_cs with mremap() or mmap(MAP_FIXED), then wakes the stale thread.
 *
 *   barrier_preload OP plain|preload
 *
 * OP: mremap-move    mremap(MREMAP_MAYMOVE|MREMAP_FIXED) moves the page holding the descriptor
 *     mremap-grow    mremap(MREMAP_MAYMOVE) grows it where it cannot grow in place, so it moves
 *     mremap-shrink  mremap() shrinks a 2-page mapping whose 2nd page holds the descriptor
 *     mmap-fixed     mmap(MAP_FIXED) maps a fresh anonymous page over the descriptor's page
 *     mmap-fixed-none  the same with PROT_NONE
 * plain: under glibc's registration (or librseqrt.so preloaded in the rseq=0 mode) the kernel
 * kills the process; preload: the harness preloads librseqrt_preload.so, whose mremap/mmap run
 * the barrier first (checked: the names must resolve to an rseqrt object), and it survives.
 * Exit: 0 survived, 2 setup, 3 stale thread unregistered, 4 the call failed, 8 preload not in
 * effect, 10 genuine memory fault, SIGSEGV the kernel's kill. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crash_common.h"
#include "rseq_cs.h"

static long counters[4096];
static struct rseq_cs_desc *_Atomic desc;
static int wake[2];
static atomic_int ready, done, unregistered;

static void *stale(void *arg)
{
    (void)arg;
    if (rseq_cs_run(counters, atomic_load(&desc), rseq_cs_own_code()) < 0)
        atomic_store(&unregistered, 1);
    atomic_store(&ready, 1);
    char b;
    while (read(wake[0], &b, 1) < 0 && errno == EINTR)
        ;
    atomic_store(&done, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    crash_setup();
    if (argc != 3)
        return 2;
    const char *op = argv[1];
    int preload = !strcmp(argv[2], "preload");
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    const char *fn = !strncmp(op, "mremap", 6) ? "mremap" : "mmap";
    printf("%s %s: %s is provided by %s\n", op, argv[2], fn, crash_provider(fn));
    if (preload && !strstr(crash_provider(fn), "rseqrt")) {
        printf("preload not in effect\n");
        return 8;
    }
    /* Reserve 3 pages; the descriptor's page is the middle one (the 3rd blocks growth). */
    char *r = mmap(NULL, 3 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *target = mmap(NULL, 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED || target == MAP_FAILED)
        return 2;
    char *page = !strcmp(op, "mremap-shrink") ? r + ps : r;
    if (!strcmp(op, "mremap-grow"))
        page = r + ps, munmap(r, ps); /* page, then the 3rd page right after it */
    memcpy(page, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc));
    atomic_store(&desc, (struct rseq_cs_desc *)page);
    if (pipe(wake) != 0)
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, stale, NULL);
    while (!atomic_load(&ready))
        ;
    if (atomic_load(&unregistered)) {
        printf("stale thread has no registered rseq area\n");
        return 3;
    }
    usleep(2000);
    void *res;
    if (!strcmp(op, "mremap-move")) {
        res = mremap(page, ps, ps, MREMAP_MAYMOVE | MREMAP_FIXED, target);
        if (res != target || memcmp(target, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc)))
            return printf("mremap move: %p (%s)\n", res, strerror(errno)), 4;
    } else if (!strcmp(op, "mremap-grow")) {
        res = mremap(page, ps, 4 * ps, MREMAP_MAYMOVE);
        if (res == MAP_FAILED || res == page)
            return printf("mremap grow did not move: %p (%s)\n", res, strerror(errno)), 4;
    } else if (!strcmp(op, "mremap-shrink")) {
        res = mremap(r, 2 * ps, ps, 0);
        if (res != r)
            return printf("mremap shrink: %p (%s)\n", res, strerror(errno)), 4;
    } else if (!strcmp(op, "mmap-fixed") || !strcmp(op, "mmap-fixed-none")) {
        int prot = strcmp(op, "mmap-fixed") ? PROT_NONE : PROT_READ | PROT_WRITE;
        res = mmap(page, ps, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (res != page)
            return printf("mmap fixed: %p (%s)\n", res, strerror(errno)), 4;
    } else {
        return 2;
    }
    printf("%s done; waking the stale thread\n", op);
    if (write(wake[1], "x", 1) != 1)
        return 2;
    pthread_join(t, NULL);
    printf("survived\n");
    return 0;
}
