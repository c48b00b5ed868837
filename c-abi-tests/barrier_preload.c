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

int main(int argc, char **argv)
{
    crash_setup();
    if (argc != 3)
        return 2;
    const char *op = argv[1];
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    int rc = crash_preload_check(op, argv[2], !strncmp(op, "mremap", 6) ? "mremap" : "mmap");
    if (rc)
        return rc;
    /* Reserve 3 pages; the descriptor's page is the middle one (the 3rd blocks growth). */
    char *r = mmap(NULL, 3 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *target = mmap(NULL, 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED || target == MAP_FAILED)
        return 2;
    char *page = !strcmp(op, "mremap-shrink") ? r + ps : r;
    if (!strcmp(op, "mremap-grow"))
        page = r + ps, munmap(r, ps); /* page, then the 3rd page right after it */
    memcpy(page, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc));
    struct crash_stale st;
    rc = crash_stale_start(&st, counters, (struct rseq_cs_desc *)page);
    if (rc)
        return rc;
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
    return crash_stale_finish(&st);
}
