/* crash_own_area: the program registers rseq itself, in a thread of its own, with an area rseqrt
 * knows nothing about (what rseq libraries do under GLIBC_TUNABLES=glibc.pthread.rseq=0, which the
 * harness sets). The thread runs a critical section whose descriptor lies on a page, then blocks
 * or spins; the main thread frees the page, then wakes the thread.
 *
 *   crash_own_area THREAD METHOD
 *
 * THREAD: read (blocks in read() on a pipe) | spin (spins in user space until the free is over) |
 *         sigblock (as read, with every signal but glibc's own two, 32 and 33, blocked by the
 *         raw system call, as glibc's helper threads do: only glibc's broadcast reaches it)
 * METHOD: plain   munmap() (the kernel kills the process when the thread next returns to user
 *                 space or is preempted)
 *         rseqrt  rseqrt_munmap(), found with dlsym (the harness preloads librseqrt.so)
 *         preload munmap() under librseqrt_preload.so (checked to be the shim's)
 *
 * Exit: 0 survived; SIGSEGV the kernel's kill; 2 setup; 3 the thread could not register its own
 * area (someone registered one first); 4 the free failed; 8 preload not in effect; 9
 * inconclusive (the thread's rseq_cs was cleared by a preemption before or during the free: the
 * harness runs it again); 10 a genuine memory fault. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "crash_common.h"
#include "rseq_cs.h"

/* The thread's own area, registered with the raw system call. */
static __thread struct rseq_cs_area own_area __attribute__((aligned(32))) = {.cpu_id = (uint32_t)-1};

static long counters[4096];
static struct rseq_cs_desc *page;
static struct rseq_cs_area *_Atomic area;
static atomic_int state; /* 1 stale, 2 woken; -1 registration refused */
static atomic_int freeing, stopped, freed;
static int spin, blocks_all, plain, pipe_fds[2];

static int run_cs(void)
{
    return ((rseq_cs_code_fn)(uintptr_t)rseq_cs_own_code())(&own_area, counters, page);
}

static uint64_t cs_now(void)
{
    return __atomic_load_n(&atomic_load(&area)->rseq_cs, __ATOMIC_SEQ_CST);
}

static void *thread_main(void *arg)
{
    (void)arg;
    if (syscall(SYS_rseq, &own_area, 32, 0, RSEQ_CS_SIG) != 0) {
        printf("own registration refused: %s\n", strerror(errno));
        atomic_store(&state, -1);
        return NULL;
    }
    atomic_store(&area, &own_area);
    if (blocks_all) {
        unsigned long long all_but_glibcs = ~0ULL & ~(1ULL << 31) & ~(1ULL << 32);
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all_but_glibcs, NULL, 8);
    }
    run_cs();
    atomic_store(&state, 1);
    if (spin) {
        /* Alone on a CPU of its own (the main thread keeps the other), so that nothing preempts
         * it between its critical section and the free. */
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(1, &one);
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);
        run_cs();
        /* Re-enter while a preemption cleared the field. Without rseqrt, until the page is freed
         * (the field is then stale for sure); with it, only until the free begins: a correct
         * program is done with memory before it frees it, and a barrier over threads whose
         * areas it cannot see only makes each one's kernel look at the field once. */
        atomic_int *until = plain ? &freed : &freeing;
        while (!atomic_load_explicit(until, memory_order_relaxed))
            if (own_area.rseq_cs == 0)
                run_cs();
        atomic_store(&stopped, 1);
        while (!atomic_load_explicit(&freed, memory_order_relaxed))
            ;
        /* Sleep a while: each wake-up is a return to user space after being switched out, where
         * the kernel looks at rseq_cs (and kills the process if the memory is gone). */
        for (int i = 0; i < 20; i++)
            usleep(1000);
    } else {
        char b;
        while (read(pipe_fds[0], &b, 1) < 0 && errno == EINTR)
            ;
    }
    atomic_store(&state, 2);
    syscall(SYS_rseq, &own_area, 32, 1 /* RSEQ_FLAG_UNREGISTER */, RSEQ_CS_SIG);
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 3 || (strcmp(argv[1], "read") && strcmp(argv[1], "spin") && strcmp(argv[1], "sigblock")) ||
        (strcmp(argv[2], "plain") && strcmp(argv[2], "rseqrt") && strcmp(argv[2], "preload"))) {
        printf("usage: crash_own_area read|spin|sigblock plain|rseqrt|preload\n");
        return 2;
    }
    crash_setup();
    spin = !strcmp(argv[1], "spin");
    blocks_all = !strcmp(argv[1], "sigblock");
    const char *method = argv[2];
    plain = !strcmp(method, "plain");
    int (*owner)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_owner");
    printf("own-area %s %s: rseqrt_owner=%d\n", argv[1], method, owner ? owner() : -1);
    int (*unmap)(void *, size_t) = munmap;
    if (!strcmp(method, "rseqrt") && !(unmap = (int (*)(void *, size_t))dlsym(RTLD_DEFAULT, "rseqrt_munmap"))) {
        printf("rseqrt_munmap not found (preload librseqrt.so)\n");
        return 2;
    }
    int pre = crash_preload_check("munmap", method, "munmap");
    if (pre)
        return pre;
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED || pipe(pipe_fds) != 0)
        return 2;
    memcpy(page, rseq_cs_own_desc(), sizeof *page);
    if (spin) {
        cpu_set_t zero;
        CPU_ZERO(&zero);
        CPU_SET(0, &zero);
        pthread_setaffinity_np(pthread_self(), sizeof zero, &zero);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) != 0)
        return 2;
    while (atomic_load(&state) == 0)
        sched_yield();
    if (atomic_load(&state) < 0)
        return 3;
    if (!spin)
        usleep(2000); /* let it block */
    atomic_store(&freeing, 1);
    while (spin && !plain && !atomic_load(&stopped))
        ;
    if (cs_now() != (uintptr_t)page) {
        printf("inconclusive: the thread's rseq_cs is not the page when the free starts\n");
        return 9;
    }
    int rc = unmap(page, 4096);
    if (rc != 0) {
        printf("%s: %s\n", method, strerror(errno));
        return 4;
    }
    if (plain && !spin && cs_now() != (uintptr_t)page) {
        printf("inconclusive: the thread's kernel cleared rseq_cs during the free\n");
        return 9;
    }
    printf("freed with %s; thread's rseq_cs now %#llx\n", method, (unsigned long long)cs_now());
    atomic_store(&freed, 1);
    if (!spin && write(pipe_fds[1], "x", 1) != 1)
        return 2;
    pthread_join(t, NULL);
    usleep(10000);
    printf("survived\n");
    return 0;
}
