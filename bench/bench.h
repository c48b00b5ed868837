/* bench.h: what the benchmark program's files share (rseqrt_bench.c: the idle workers, timing
 * and output; idle_states.c: the idle-state rows). */
#ifndef RSEQRT_BENCH_H
#define RSEQRT_BENCH_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef WITH_RSEQRT
/* The few rseqrt entry points used here (as declared by <rseqrt.h>). */
int rseqrt_owner(void);
void *rseqrt_current_area(void);
int rseqrt_current_cpu(void);
int rseqrt_clear_all(unsigned int flags);
int rseqrt_dlclose(void *handle);
int rseqrt_munmap(void *addr, size_t len);
#endif

/* An idle thread: blocked in sem_wait() on `go` until told to run a critical section or quit. */
struct worker {
    pthread_t thread;
    sem_t go;
    _Atomic int cmd;
    _Atomic pid_t tid;
    _Atomic(uint64_t *) rseq_cs; /* address of the thread's rseq_cs field (linked build) */
} __attribute__((aligned(64)));

extern struct worker *workers;
extern int nworkers;

uint64_t now_ns(void);
/* FRESH_PAGES_LEN bytes of new anonymous memory, every page touched. */
enum { FRESH_PAGES_LEN = 16 * 4096 };
char *fresh_pages(void);
void die(const char *what);
double median(uint64_t *v, int n);
/* Prints "KEY MEDIAN" (one repetition's median of n samples). */
void report(const char *key, uint64_t *samples, int n);

void start_workers(int n);
void stop_workers(void);
/* Makes workers [0, k) run fn (a critical section) once and go back to sleep. */
void make_stale(int k, int (*fn)(long *));
/* One load of every worker's rseq_cs (the addresses they published, side by side): what any
 * barrier that looks at every thread must at least do. Returns the sum of the values. */
uint64_t load_every_rseq_cs(void);
/* How many workers have a non-zero rseq_cs right now (linked build; -1 if unknown). */
int count_stale(void);

/* Exits unless munmap is the LD_PRELOAD shim's (librseqrt_preload.so), not the C library's. */
void check_munmap_interposed(void);

/* rseqrt_bench idle STATE THREADS REPS ITERS PLUGIN RESIDENT_LIB [preload] */
void bench_idle(int argc, char **argv);

#endif
