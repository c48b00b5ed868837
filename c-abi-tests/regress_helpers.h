/* regress_helpers.h: shared by the regress scenario programs (regress_cases.c,
 * regress_unload_cases.c, regress_sigmask_cases.c): an area's rseq_cs, whether a page is still
 * mapped, dlopen() or die, the length the calling thread's area is registered with, a byte
 * through a pipe, and one stale thread (stale_reader(): runs a critical section whose
 * descriptor the scenario is about to free, then blocks in read() until stale_finish()).
 *
 * The including file includes test_common.h first (counters, pagesz, die, sleep_ms). */
#ifndef REGRESS_HELPERS_H
#define REGRESS_HELPERS_H

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

static inline uint64_t cs_of(struct rseq_cs_area *a)
{
    return __atomic_load_n(&a->rseq_cs, __ATOMIC_SEQ_CST);
}

/* Whether the page at p is still mapped (msync answers ENOMEM for unmapped memory). */
static inline int mapped(void *p)
{
    return msync(p, pagesz, MS_ASYNC) == 0 || errno != ENOMEM;
}

static inline void *open_plugin(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        die(2, "dlopen %s: %s", path, dlerror());
    return h;
}

/* The length the calling thread's area is registered with: the one for which rseq() answers
 * EBUSY (the kernel answers EINVAL for another length, EBUSY for the registered one). */
static inline int registered_len(void)
{
    for (int len = 20; len <= 512; len += 4) {
        errno = 0;
        if (syscall(SYS_rseq, rseq_cs_area(), len, 0, RSEQ_CS_SIG) == -1 && errno == EBUSY)
            return len;
    }
    return -1;
}

static inline void read_byte(int fd)
{
    char b;
    while (read(fd, &b, 1) < 0 && errno == EINTR)
        ;
}

static inline void write_byte(int fd)
{
    if (write(fd, "x", 1) != 1)
        die(2, "write: %s", strerror(errno));
}

/* ----------------------------------------------------------- a stale thread */

static int stale_pipe[2];
static atomic_int stale_ready;
static struct rseq_cs_desc *stale_desc;
static int stale_cpu;

static inline void *stale_reader(void *arg)
{
    (void)arg;
    stale_cpu = rseq_cs_run(counters, stale_desc, rseq_cs_own_code());
    atomic_store(&stale_ready, 1);
    read_byte(stale_pipe[0]);
    return NULL;
}

/* A copy of this program's descriptor at AT, for stale_reader. */
static inline void stale_desc_at(void *at)
{
    stale_desc = at;
    memcpy(stale_desc, rseq_cs_own_desc(), sizeof *stale_desc);
}

/* Starts FN (stale_reader, or one like it: sets stale_cpu, then stale_ready, then reads
 * stale_pipe) and waits until it has run its critical section, then 5 ms for it to block.
 * NEED_AREA: a stale thread without a registered area has nothing to show (exit 3). */
static inline pthread_t stale_start(void *(*fn)(void *), int need_area)
{
    if (pipe(stale_pipe) != 0)
        die(2, "pipe");
    pthread_t t;
    pthread_create(&t, NULL, fn, NULL);
    while (!atomic_load(&stale_ready))
        sched_yield();
    if (need_area && stale_cpu < 0)
        die(3, "the stale thread has no registered area");
    sleep_ms(5);
    return t;
}

/* Wakes the stale thread (it returns to user space) and joins it: the process survived. */
static inline void stale_finish(pthread_t t)
{
    write_byte(stale_pipe[1]);
    pthread_join(t, NULL);
    printf("survived\n");
}

#endif
