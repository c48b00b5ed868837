/* regress_late_clone: a thread started by glibc's clone() (not pthread_create) registers its own
 * rseq area with the raw system call and runs a critical section whose descriptor is on a page;
 * then it sleeps. The program is not linked with rseqrt.
 *
 *   regress_late_clone plain        munmap(page), wake the thread: the kernel kills the process
 *   regress_late_clone late LIB     dlopen(LIB) (librseqrt.so) only now, rseqrt_munmap(page): the
 *                                   thread's rseq_cs must no longer refer to the page; woken, it
 *                                   survives
 *
 * rseqrt's clone() cannot see this thread (it was not loaded when the thread started), and glibc
 * does not count it: the constructor must notice that the program's clone() is not rseqrt's and
 * keep the barrier's system-call check of the thread count. (Before that check, the barrier
 * trusted glibc's count, which matched, and the kernel killed the process when the thread woke.)
 * Exit: 0 survived, 1 a check failed, 2 setup, SIGSEGV the kernel's kill. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "raw_clone.h"
#include "rseq_cs.h"

static long counters[4096];
static struct rseq_cs_desc *page;
static struct rseq_cs_area *_Atomic raw_area;
static atomic_int raw_state; /* 1 stale and asleep, 2 woken, 3 done, <0 error */
static int raw_wake;
static volatile pid_t raw_tid;
/* The raw thread's area where glibc defines none (only that one thread uses it). */
static struct rseq_cs_area own_area __attribute__((aligned(32))) = {.cpu_id = (uint32_t)-1};

static int raw_thread(void *arg)
{
    (void)arg;
    /* glibc's area (at __rseq_offset), or where glibc has none (before 2.35) the program's own. */
    struct rseq_cs_area *a = RSEQ_CS_ABI_DEFINED() ? rseq_cs_area() : &own_area;
    if (syscall(SYS_rseq, a, 32, 0, RSEQ_CS_SIG) != 0) {
        atomic_store(&raw_area, a);
        atomic_store(&raw_state, -1);
        return 0;
    }
    atomic_store(&raw_area, a);
    if (((rseq_cs_code_fn)(uintptr_t)rseq_cs_own_code())(a, counters, page) < 0) {
        atomic_store(&raw_state, -2);
        return 0;
    }
    atomic_store(&raw_state, 1);
    raw_clone_sleep_until_woken(&raw_wake);
    /* back in user space: the kernel has looked at rseq_cs (if the page is gone: SIGSEGV) */
    atomic_store(&raw_state, 2);
    syscall(SYS_rseq, a, 32, 1 /* RSEQ_FLAG_UNREGISTER */, RSEQ_CS_SIG);
    atomic_store(&raw_state, 3);
    return 0;
}

static char thread_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *c = strrchr(buf, ')');
    return c && c[1] && c[2] ? c[2] : '?';
}

static void start_raw_thread(void)
{
    const char *why = NULL;
    if (raw_clone_start(clone, raw_thread, RSEQ_CS_ABI_DEFINED() ? __rseq_offset : 0, &raw_tid, &why) != 0) {
        printf("raw thread: %s: %s\n", why, strerror(errno));
        exit(2);
    }
    while (atomic_load(&raw_state) == 0)
        sched_yield();
    if (atomic_load(&raw_state) < 0) {
        printf("the raw thread could not register or run its critical section (%d)\n", atomic_load(&raw_state));
        exit(2);
    }
    while (thread_state(raw_tid) != 'S')
        sched_yield();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2 || (strcmp(argv[1], "plain") && (strcmp(argv[1], "late") || argc < 3))) {
        fprintf(stderr, "usage: %s plain | late LIB\n", argv[0]);
        return 2;
    }
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return 2;
    memcpy(page, rseq_cs_own_desc(), sizeof *page);
    start_raw_thread();
    uint64_t before = __atomic_load_n(&atomic_load(&raw_area)->rseq_cs, __ATOMIC_SEQ_CST);
    if (before != (uintptr_t)page) {
        printf("FAIL the raw thread's rseq_cs is %#llx, not the page %p\n", (unsigned long long)before, (void *)page);
        return 1;
    }
    printf("ok   a raw clone() thread, registered by itself, holds a stale rseq_cs into the page\n");
    if (!strcmp(argv[1], "plain")) {
        munmap(page, 4096);
    } else {
        void *h = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
        int (*owner)(void) = h ? (int (*)(void))dlsym(h, "rseqrt_owner") : NULL;
        int (*unmap)(void *, uintptr_t) = h ? (int (*)(void *, uintptr_t))dlsym(h, "rseqrt_munmap") : NULL;
        if (!owner || !unmap) {
            printf("dlopen %s: %s\n", argv[2], dlerror());
            return 2;
        }
        printf("late: rseqrt_owner=%d\n", owner());
        int rc = unmap(page, 4096);
        uint64_t after = __atomic_load_n(&atomic_load(&raw_area)->rseq_cs, __ATOMIC_SEQ_CST);
        if (rc != 0 || after == (uintptr_t)page) {
            printf("FAIL rseqrt_munmap = %d (errno %d); the raw thread's rseq_cs after it: %#llx\n", rc, errno,
                   (unsigned long long)after);
            return 1;
        }
        printf("ok   rseqrt_munmap = 0, and the raw thread's rseq_cs no longer refers to the page\n");
    }
    raw_clone_wake(&raw_wake);
    while (raw_tid != 0)
        usleep(1000);
    printf("observed: the raw thread woke and exited (state %d)\nsurvived\n", atomic_load(&raw_state));
    return 0;
}
