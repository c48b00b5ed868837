/* regress_early: a library whose constructor runs before rseqrt's (it comes after rseqrt in
 * the program's DT_NEEDED list, or in LD_PRELOAD, so the dynamic linker initializes it first)
 * and starts a worker thread. The worker runs on a stack the library supplies
 * (pthread_attr_setstack: glibc puts the thread's TCB and static TLS, so its rseq area, there),
 * runs one critical section whose descriptor is in a page of its own, and exits; the library
 * then unmaps the stack. What happened is left in regress_early_info for the program. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "rseq_cs.h"

struct regress_early_info {
    int signal_at_ctor;   /* rseqrt_signal() in this constructor: 0 = rseqrt's had not run */
    int create_rc;        /* pthread_create */
    int cpu;              /* the worker's critical section: cpu, or -1 (no registered area) */
    int stack_munmap_rc;  /* munmap of the worker's stack after join */
    uint64_t cs;          /* the worker's rseq_cs when it finished */
    void *desc_page;      /* the page holding the worker's descriptor (still mapped) */
    char provider[256];   /* the object providing pthread_create */
};

__attribute__((visibility("default"))) struct regress_early_info regress_early_info;

static long counters[4096];

static void *worker(void *arg)
{
    (void)arg;
    regress_early_info.cpu = rseq_cs_run(counters, regress_early_info.desc_page, rseq_cs_own_code());
    regress_early_info.cs = rseq_cs_current();
    return NULL;
}

__attribute__((constructor)) static void early_init(void)
{
    struct regress_early_info *in = &regress_early_info;
    int (*sig)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_signal");
    in->signal_at_ctor = sig ? sig() : -1;
    Dl_info di;
    void *pc = dlsym(RTLD_DEFAULT, "pthread_create");
    strncpy(in->provider, pc && dladdr(pc, &di) && di.dli_fname ? di.dli_fname : "?", sizeof in->provider - 1);
    in->desc_page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (in->desc_page == MAP_FAILED) {
        in->create_rc = -1;
        return;
    }
    rseq_cs_describe(in->desc_page, rseq_cs_own_code());
    size_t len = 1 << 20;
    void *stack = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) {
        in->create_rc = -1;
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack, len);
    pthread_t t;
    in->create_rc = pthread_create(&t, &attr, worker, NULL);
    pthread_attr_destroy(&attr);
    if (in->create_rc == 0)
        pthread_join(t, NULL);
    in->stack_munmap_rc = munmap(stack, len); /* the worker, its TCB and its area are gone */
}
