/* regress_preload: an unmodified program (not linked with rseqrt) takes memory away from under a
 * stale rseq_cs with calls that name only part of the page holding the descriptor, or unloads a
 * plugin whose destructor runs a critical section; then the stale thread returns to user space.
 *
 *   regress_preload OP plain|preload [PLUGIN]
 *
 * OP: munmap-partial         munmap(page, 100), the descriptor at page + 2048 (the kernel frees the page)
 *     mremap-shrink-partial  mremap(r, ps + 100, ps, 0) of a 2-page mapping whose 2nd page holds the
 *                            descriptor at + 2048: the kernel rounds the old size up and frees that page
 *     mmap-fixed-partial     mmap(page, 100, MAP_FIXED): the kernel replaces the whole page
 *     dlclose-dtor PLUGIN    dlclose() of regress_plugin_dtor.so, whose destructor runs a critical
 *                            section in the plugin in the calling thread
 * plain: the kernel kills the process (under rseq=0 the harness preloads librseqrt.so, which
 * interposes none of these calls, so that threads are registered); preload: the harness preloads
 * librseqrt_preload.so (checked: the call must resolve to an rseqrt object) and it survives.
 * Exit: 0 survived, 1 a check failed, 2 setup, 3 no registered area, 4 the call failed, 8 preload
 * not in effect, 10 genuine memory fault, SIGSEGV the kernel's kill. */
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

static int mapped(void *p, size_t ps)
{
    return msync(p, ps, MS_ASYNC) == 0 || errno != ENOMEM;
}

static int dlclose_dtor(const char *path, int preload)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return printf("dlopen %s: %s\n", path, dlerror()), 2;
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "plugin_inc");
    void (*report)(int *) = (void (*)(int *))dlsym(h, "plugin_report");
    if (!inc || !report)
        return 2;
    static int dtor_cpu = -99;
    report(&dtor_cpu);
    if (inc(counters) < 0)
        return printf("the main thread has no registered rseq area\n"), 3;
    int rc = dlclose(h);
    unsigned long long cs = rseq_cs_current();
    usleep(2000); /* a context switch: the kernel reads rseq_cs on the way back */
    printf("dlclose = %d; the destructor's critical section: cpu %d; rseq_cs after: %#llx\n", rc, dtor_cpu, cs);
    if (rc != 0)
        return 4;
    if (preload && (dtor_cpu != -1 || cs != 0))
        return printf("FAIL the preloaded dlclose left the caller's critical sections on (cpu %d, rseq_cs %#llx)\n",
                      dtor_cpu, cs), 1;
    printf("survived\n");
    return 0;
}

int main(int argc, char **argv)
{
    crash_setup();
    if (argc < 3)
        return 2;
    const char *op = argv[1];
    int preload = !strcmp(argv[2], "preload");
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    const char *fn = !strncmp(op, "mremap", 6) ? "mremap" : !strncmp(op, "mmap", 4) ? "mmap"
                     : !strncmp(op, "munmap", 6) ? "munmap" : "dlclose";
    int rc = crash_preload_check(op, argv[2], fn);
    if (rc)
        return rc;
    if (!strcmp(op, "dlclose-dtor"))
        return argc > 3 ? dlclose_dtor(argv[3], preload) : 2;
    char *r = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return 2;
    char *page = !strcmp(op, "mremap-shrink-partial") ? r + ps : r;
    memcpy(page + 2048, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc));
    struct crash_stale st;
    rc = crash_stale_start(&st, counters, (struct rseq_cs_desc *)(page + 2048));
    if (rc)
        return rc;
    if (!strcmp(op, "munmap-partial")) {
        if (munmap(page, 100) != 0)
            return printf("munmap: %s\n", strerror(errno)), 4;
    } else if (!strcmp(op, "mremap-shrink-partial")) {
        void *res = mremap(r, ps + 100, ps, 0);
        if (res != r)
            return printf("mremap shrink: %p (%s)\n", res, strerror(errno)), 4;
    } else if (!strcmp(op, "mmap-fixed-partial")) {
        void *res = mmap(page, 100, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (res != page)
            return printf("mmap fixed: %p (%s)\n", res, strerror(errno)), 4;
        if (((char *)page)[2048] != 0)
            return printf("the page was not replaced\n"), 2;
    } else {
        return 2;
    }
    if (strcmp(op, "mmap-fixed-partial") && mapped(page, ps))
        return printf("the kernel did not free the whole page\n"), 2;
    printf("%s done (the whole page went); waking the stale thread\n", op);
    return crash_stale_finish(&st);
}
