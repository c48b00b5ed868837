/* crash_stale: a thread is left with a stale rseq_cs that refers to memory the
 * main thread then frees; the thread then returns to user space.
 *
 *   crash_stale KIND THREAD METHOD PLUGIN_DIR
 *
 * KIND (what is freed):
 *   dlclose      dlclose() of plugin_counter.so, which holds descriptor and code
 *   dlclose-dep  dlclose() of plugin_dep_top.so, which unloads plugin_dep_lib.so,
 *                which holds descriptor and code
 *   munmap-desc  munmap() of an anonymous page holding the descriptor
 *   munmap-jit   munmap() of an executable page holding a copy of the code
 *                (the descriptor lives in this program's .data)
 *   madvise-dontneed  madvise(MADV_DONTNEED) of an anonymous page holding the descriptor:
 *                the page then reads as zeros (start_ip 0, abort_ip 0: the kernel reads the
 *                signature at address -4)
 *   madvise-free madvise(MADV_FREE) of that page. The kernel keeps the contents until it
 *                reclaims the page, under memory pressure, at a moment no test can choose; so
 *                the program then asks for that reclaim itself with madvise(MADV_PAGEOUT)
 *                (Linux 5.4), which discards a clean MADV_FREE page at once: then it reads as
 *                zeros. What is shown is the crash once the kernel has reclaimed the page, not
 *                when it would have done so by itself.
 *   madvise-remove  madvise(MADV_REMOVE) of a shared anonymous page (shmem) holding the
 *                descriptor: a hole is punched, the page reads as zeros
 *   mprotect-none   mprotect(PROT_NONE) of an anonymous page holding the descriptor
 *   shmdt        shmdt() of a three-page System V segment holding the descriptor in its last
 *                page (the call names only the segment's first address)
 * THREAD (the stale thread, which runs the critical section once, then...):
 *   read         ...blocks in read() on a pipe
 *   spin         ...spins in user space (no system call) until the memory is freed,
 *                then sleeps in 1 ms steps for 100 ms
 *   sigblock     blocks every signal (sigfillset + pthread_sigmask), then as read
 *   timer        a glibc helper thread: a SIGEV_THREAD timer callback, then as read
 *   handled      as read, while the program has a handler of its own on signal 64 (named by
 *                its number, as bash names RTMAX), rseqrt's reserved signal by default: the
 *                barrier's requests must never reach that handler, and the program's own
 *                raise of 64 afterwards must reach it once (else exit 12)
 * METHOD (how the main thread frees):
 *   plain        dlclose()/munmap()/madvise()/mprotect()/shmdt() (the harness may
 *                LD_PRELOAD librseqrt_preload.so: METHOD preload is the same call, and
 *                checks that the call is interposed by an rseqrt object)
 *   preload      as plain, after checking the interposition
 *   rseqrt       rseqrt_dlclose()/rseqrt_munmap()/... (only when built with -DWITH_RSEQRT)
 *
 * After freeing, the main thread wakes the stale thread and waits (up to 5 s)
 * for it to finish. Exit status: 0 survived; the kernel's SIGSEGV for a stale
 * rseq_cs; 2 usage/setup error; 3 the stale thread has no registered rseq area
 * (nothing to demonstrate); 4 the free call failed; 5 timeout; 6 the library was
 * not actually unloaded; 7 the critical section miscounted; 8 preload not in
 * effect; 10 a genuine memory fault (see crash_common.h); 11 the discarded page still
 * holds the descriptor after the free (the kind shows nothing there); 12 the program's handler on
 * signal 64 ran for rseqrt's requests, or not for its own raise (thread handled); 9 inconclusive: the
 * stale thread's rseq_cs was already 0 when the free started, or (plain method, spinning thread) its kernel cleared it while the
 * free was in progress; the harness runs the scenario again. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "crash_common.h"
#include "rseq_cs.h"
#ifdef WITH_RSEQRT
#include <rseqrt.h>
#endif

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21 /* Linux 5.4; glibc 2.31's headers lack it */
#endif

enum kind {
    K_DLCLOSE, K_DLCLOSE_DEP, K_MUNMAP_DESC, K_MUNMAP_JIT,
    K_MADV_DONTNEED, K_MADV_FREE, K_MADV_REMOVE, K_MPROTECT_NONE, K_SHMDT,
};
static const char *kinds[] = {
    "dlclose", "dlclose-dep", "munmap-desc", "munmap-jit",
    "madvise-dontneed", "madvise-free", "madvise-remove", "mprotect-none", "shmdt",
};
#define NKINDS (sizeof kinds / sizeof kinds[0])
enum thr { T_READ, T_SPIN, T_SIGBLOCK, T_TIMER, T_HANDLED };
enum method { M_PLAIN, M_PRELOAD, M_RSEQRT };

static enum kind kind;
static enum thr thr;
static enum method method;

static long counters[4096];
static int (*cs_fn)(long *);            /* runs one critical section */
static void *handle;                    /* dlclose kinds */
static char lib_path[4096], dep_path[4096];
static void *page;                      /* the other kinds: the mapping (segment) freed */
static size_t page_size, page_len;      /* page_len: the length of that mapping */
static struct rseq_cs_desc *desc_at;    /* where the descriptor lives in it (not munmap-jit) */
static struct rseq_cs_desc jit_desc;    /* munmap-jit: descriptor in .data */

static int wake_pipe[2];
static atomic_int ready, freed, done;
static atomic_int spin_state;           /* spin: 0 idle, 1 thread in a CS, 2 main is freeing */
static atomic_int cleared_during_free;
static struct rseq_cs_area *_Atomic stale_area;
static atomic_int thread_status;        /* non-zero: exit code the main thread should use */
static int seen_cpu = -1;
static uint64_t seen_rseq_cs;
static int seen_blocks_rt = -1;
static volatile sig_atomic_t program_handler_runs; /* handled: the program's handler on 64 */

/* The top real-time signal by number (glibc's __SIGRTMAX), as programs that hard-code it use it. */
#define TOP_SIGNAL 64

static void on_top_signal(int sig)
{
    (void)sig;
    program_handler_runs++;
}

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    _exit(code);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int cs_desc_in_page(long *c)
{
    return rseq_cs_run(c, desc_at, rseq_cs_own_code());
}

static int cs_munmap_jit(long *c)
{
    return rseq_cs_run(c, &jit_desc, page);
}

/* The stale thread's work (also the body of the timer callback). */
static void stale_body(void)
{
    if (thr == T_SIGBLOCK) {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
    }
    {
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        seen_blocks_rt = sigismember(&cur, SIGRTMAX - 1) == 1;
    }
    if (thr == T_TIMER && !rseq_cs_registered()) {
        /* glibc's helper thread under glibc.pthread.rseq=0: glibc does not register
         * it, and it is not created through pthread_create(); a program that wants
         * rseq there registers it itself. (Threads from pthread_create() must be
         * registered by rseqrt already: no such call for them.) */
        int (*reg)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_register_current_thread");
        if (reg && reg() != 0)
            printf("stale thread: rseqrt_register_current_thread: %s\n", strerror(errno));
        else if (reg)
            printf("stale thread: registered with rseqrt_register_current_thread()\n");
    }
    if (thr == T_SPIN) {
        /* Keep the spinner on its own cpu, away from the main thread, so that
         * nothing preempts it between its critical section and the free. */
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        if (ncpu > 1) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(1, &set);
            pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        }
    }
    atomic_store(&stale_area, RSEQ_CS_ABI_DEFINED() ? rseq_cs_area() : NULL);
    int cpu = cs_fn(counters);
    seen_rseq_cs = rseq_cs_current();
    seen_cpu = cpu;
    if (cpu < 0) {
        atomic_store(&thread_status, 3);
    } else if (counters[cpu] != 1) {
        atomic_store(&thread_status, 7);
    }
    atomic_store(&ready, 1);
    if (atomic_load(&thread_status))
        return;
    if (thr == T_SPIN) {
        /* Spin in user space. If the kernel clears rseq_cs before the main
         * thread starts freeing (a preemption), run the critical section again
         * so that the pointer is stale when the free starts. */
        while (!atomic_load_explicit(&freed, memory_order_relaxed)) {
            if (rseq_cs_current() == 0) {
                int expect = 0;
                if (atomic_compare_exchange_strong(&spin_state, &expect, 1)) {
                    cs_fn(counters);
                    atomic_store(&spin_state, 0);
                } else if (expect == 2) {
                    atomic_store(&cleared_during_free, 1);
                }
            }
            __builtin_ia32_pause();
        }
        for (int i = 0; i < 100; i++)
            sleep_ms(1);
    } else {
        char b;
        while (read(wake_pipe[0], &b, 1) < 0 && errno == EINTR)
            ;
    }
    atomic_store(&done, 1);
}

static void *thread_main(void *arg)
{
    (void)arg;
    stale_body();
    return NULL;
}

static void timer_cb(union sigval sv)
{
    (void)sv;
    stale_body();
}

static void prepare(const char *dir)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    switch (kind) {
    case K_DLCLOSE:
    case K_DLCLOSE_DEP: {
        const char *top = kind == K_DLCLOSE ? "plugin_counter.so" : "plugin_dep_top.so";
        const char *sym = kind == K_DLCLOSE ? "plugin_inc" : "plugin_dep_inc";
        snprintf(lib_path, sizeof lib_path, "%s/%s", dir, top);
        snprintf(dep_path, sizeof dep_path, "%s/plugin_dep_lib.so", dir);
        handle = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
        if (!handle)
            die(2, "dlopen %s: %s", lib_path, dlerror());
        cs_fn = (int (*)(long *))dlsym(handle, sym);
        if (!cs_fn)
            die(2, "dlsym %s: %s", sym, dlerror());
        break;
    }
    case K_MUNMAP_DESC:
    case K_MADV_DONTNEED:
    case K_MADV_FREE:
    case K_MADV_REMOVE:
    case K_MPROTECT_NONE: {
        /* MADV_REMOVE works on shared memory only. */
        int share = kind == K_MADV_REMOVE ? MAP_SHARED : MAP_PRIVATE;
        page_len = page_size;
        page = mmap(NULL, page_len, PROT_READ | PROT_WRITE, share | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            die(2, "mmap: %s", strerror(errno));
        desc_at = page;
        memcpy(desc_at, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc));
        cs_fn = cs_desc_in_page;
        break;
    }
    case K_SHMDT: {
        page_len = 3 * page_size;
        int id = shmget(IPC_PRIVATE, page_len, IPC_CREAT | 0600);
        if (id < 0)
            die(2, "shmget: %s", strerror(errno));
        page = shmat(id, NULL, 0);
        /* Marked for removal at once: the kernel destroys it at the last detach, or exit. */
        shmctl(id, IPC_RMID, NULL);
        if (page == (void *)-1)
            die(2, "shmat: %s", strerror(errno));
        desc_at = (struct rseq_cs_desc *)((char *)page + 2 * page_size);
        memcpy(desc_at, rseq_cs_own_desc(), sizeof(struct rseq_cs_desc));
        cs_fn = cs_desc_in_page;
        break;
    }
    case K_MUNMAP_JIT: {
        struct rseq_cs_layout l = rseq_cs_layout();
        page_len = page_size;
        page = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            die(2, "mmap: %s", strerror(errno));
        memcpy(page, rseq_cs_own_code(), l.size);
        if (mprotect(page, page_size, PROT_READ | PROT_EXEC) != 0)
            die(2, "mprotect: %s", strerror(errno));
        rseq_cs_describe(&jit_desc, page);
        cs_fn = cs_munmap_jit;
        break;
    }
    }
}

/* The advice of the madvise kinds. */
static int advice(void)
{
    return kind == K_MADV_DONTNEED ? MADV_DONTNEED : kind == K_MADV_FREE ? MADV_FREE : MADV_REMOVE;
}

static const char *free_call(void)
{
    switch (kind) {
    case K_DLCLOSE:
    case K_DLCLOSE_DEP:
        return "dlclose";
    case K_MADV_DONTNEED:
    case K_MADV_FREE:
    case K_MADV_REMOVE:
        return "madvise";
    case K_MPROTECT_NONE:
        return "mprotect";
    case K_SHMDT:
        return "shmdt";
    default:
        return "munmap";
    }
}

static void free_memory(void)
{
    int rc = 0;
    const char *what = free_call();
    if (kind == K_MADV_FREE) {
        /* The descriptor's page must be on the kernel's LRU lists for MADV_FREE to mark it
         * lazily freeable: MADV_PAGEOUT of another page drains this CPU's pending batches
         * (where the page waits since it was first touched, on this CPU: see main). */
        char *other = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (other == MAP_FAILED)
            die(2, "mmap: %s", strerror(errno));
        other[0] = 1;
        if (madvise(other, page_size, MADV_PAGEOUT) != 0)
            die(2, "madvise(MADV_PAGEOUT): %s", strerror(errno));
    }
    if (method == M_PRELOAD && !strstr(crash_provider(what), "rseqrt"))
        die(8, "preload: %s is provided by %s, not by an rseqrt object", what, crash_provider(what));
    if (method == M_RSEQRT) {
#ifdef WITH_RSEQRT
        if (handle)
            rc = rseqrt_dlclose(handle);
        else if (!strcmp(what, "madvise"))
            rc = rseqrt_madvise(page, page_len, advice());
        else if (!strcmp(what, "mprotect"))
            rc = rseqrt_mprotect(page, page_len, PROT_NONE);
        else if (!strcmp(what, "shmdt"))
            rc = rseqrt_shmdt(page);
        else
            rc = rseqrt_munmap(page, page_len);
#endif
    } else {
        if (handle)
            rc = dlclose(handle);
        else if (!strcmp(what, "madvise"))
            rc = madvise(page, page_len, advice());
        else if (!strcmp(what, "mprotect"))
            rc = mprotect(page, page_len, PROT_NONE);
        else if (!strcmp(what, "shmdt"))
            rc = shmdt(page);
        else
            rc = munmap(page, page_len);
    }
    if (rc != 0) {
        int e = errno;
        const char *dlerr = handle ? dlerror() : NULL;
        die(4, "%s%s failed: rc %d, errno %d (%s), dlerror %s", method == M_RSEQRT ? "rseqrt_" : "",
            what, rc, e, strerror(e), dlerr ? dlerr : "(none)");
    }
    if (handle) {
        /* The test is meaningful only if the object holding the descriptor is gone. */
        const char *holder = kind == K_DLCLOSE ? lib_path : dep_path;
        void *h = dlopen(holder, RTLD_NOW | RTLD_NOLOAD);
        if (h)
            die(6, "%s is still loaded after dlclose", holder);
    }
    if (kind == K_MADV_FREE && madvise(page, page_len, MADV_PAGEOUT) != 0)
        die(2, "madvise(MADV_PAGEOUT): %s", strerror(errno));
    if (kind == K_MADV_DONTNEED || kind == K_MADV_FREE || kind == K_MADV_REMOVE) {
        /* The page must now read as zeros, or this run shows nothing. */
        struct rseq_cs_desc now;
        memcpy(&now, desc_at, sizeof now);
        if (now.start_ip != 0 || now.abort_ip != 0)
            die(11, "after madvise the page still holds the descriptor (start_ip %#llx)",
                (unsigned long long)now.start_ip);
    }
}

int main(int argc, char **argv)
{
    static const char *thrs[] = {"read", "spin", "sigblock", "timer", "handled"};
    static const char *methods[] = {"plain", "preload", "rseqrt"};
    int k = -1, t = -1, m = -1;

    crash_setup();

    if (argc == 5) {
        for (size_t i = 0; i < NKINDS; i++) {
            if (!strcmp(argv[1], kinds[i])) k = (int)i;
            if (i < 5 && !strcmp(argv[2], thrs[i])) t = (int)i;
            if (i < 3 && !strcmp(argv[3], methods[i])) m = (int)i;
        }
    }
    if (k < 0 || t < 0 || m < 0)
        die(2, "usage: %s dlclose|dlclose-dep|munmap-desc|munmap-jit|madvise-dontneed|madvise-free|"
               "madvise-remove|mprotect-none|shmdt read|spin|sigblock|timer|handled plain|preload|rseqrt "
               "PLUGIN_DIR", argv[0]);
    kind = k, thr = t, method = m;
#ifndef WITH_RSEQRT
    if (method == M_RSEQRT)
        die(2, "method rseqrt needs the program built with -DWITH_RSEQRT -lrseqrt");
#endif

    int (*owner)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_owner");
    if (RSEQ_CS_ABI_DEFINED()) /* glibc before 2.35 without rseqrt: nobody defines it */
        printf("%s %s %s: __rseq_offset=%td rseqrt_owner=%d main cpu_id=%d\n", argv[1], argv[2],
               argv[3], __rseq_offset, owner ? owner() : -1, (int32_t)rseq_cs_area()->cpu_id);
    else
        printf("%s %s %s: no __rseq_offset (no rseq ABI) rseqrt_owner=%d\n", argv[1], argv[2], argv[3],
               owner ? owner() : -1);

    if (kind == K_MADV_FREE) {
        /* The kernel queues a page on per-CPU batches when it is first touched (lru_add), and
         * again at MADV_FREE (lazyfree); MADV_PAGEOUT drains only its own CPU's batches before
         * it reclaims, and skips a page still queued elsewhere. So the main thread, which does
         * all three, stays on one CPU (0: a spinning stale thread keeps CPU 1). */
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            die(2, "sched_setaffinity: %s", strerror(errno));
    }
    prepare(argv[4]);
    if (pipe(wake_pipe) != 0)
        die(2, "pipe: %s", strerror(errno));

    if (thr == T_HANDLED) {
        struct sigaction act;
        memset(&act, 0, sizeof act);
        act.sa_handler = on_top_signal;
        sigemptyset(&act.sa_mask);
        if (sigaction(TOP_SIGNAL, &act, NULL) != 0)
            die(2, "sigaction(%d): %s", TOP_SIGNAL, strerror(errno));
        /* The row's premise: rseqrt's requests use the very number the program handles. */
        int (*reserved)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_signal");
        if (method != M_PLAIN && (!reserved || reserved() != TOP_SIGNAL))
            die(2, "rseqrt's reserved signal is %d, not %d: the row would not test the sharing",
                reserved ? reserved() : -1, TOP_SIGNAL);
    }

    pthread_t tid;
    timer_t timer;
    const char *failed;
    if (thr == T_TIMER) {
        if ((failed = crash_start_timer_thread(timer_cb, &timer)))
            die(2, "%s: %s", failed, strerror(errno));
    } else if ((errno = pthread_create(&tid, NULL, thread_main, NULL)) != 0) {
        die(2, "pthread_create: %s", strerror(errno));
    }

    /* Wait for the critical section without sleeping: a spinning stale thread
     * keeps its CPU and its stale pointer. */
    double t0 = now_s();
    while (!atomic_load(&ready)) {
        if (now_s() - t0 > 5)
            die(5, "timeout waiting for the stale thread");
        __builtin_ia32_pause();
    }
    if (atomic_load(&thread_status) == 3)
        die(3, "stale thread has no registered rseq area (cpu_id < 0): nothing to demonstrate");
    if (atomic_load(&thread_status))
        die(atomic_load(&thread_status), "critical section miscounted (cpu %d)", seen_cpu);

    if (thr == T_SPIN) {
        int expect = 0;
        while (!atomic_compare_exchange_weak(&spin_state, &expect, 2))
            expect = 0;
    }
    uint64_t at_free = __atomic_load_n(&atomic_load(&stale_area)->rseq_cs, __ATOMIC_SEQ_CST);
    if (at_free == 0)
        die(9, "inconclusive: the stale thread's rseq_cs is already 0 when the free starts");

    free_memory();

    printf("stale thread: cpu %d, rseq_cs %#llx after its critical section, blocks SIGRTMAX-1: %s; "
           "freed with %s\n",
           seen_cpu, (unsigned long long)seen_rseq_cs, seen_blocks_rt ? "yes" : "no", argv[3]);
    atomic_store(&freed, 1);
    if (write(wake_pipe[1], "x", 1) != 1)
        die(2, "write: %s", strerror(errno));
    t0 = now_s();
    while (!atomic_load(&done)) {
        if (now_s() - t0 > 5)
            die(5, "timeout waiting for the stale thread to finish");
        sleep_ms(1);
    }
    if (thr != T_TIMER)
        pthread_join(tid, NULL);
    else
        sleep_ms(10);
    if (method == M_PLAIN && atomic_load(&cleared_during_free))
        die(9, "inconclusive: the spinning thread's rseq_cs was cleared by its kernel during the "
               "plain free (preempted)");
    if (thr == T_HANDLED) {
        if (program_handler_runs != 0)
            die(12, "the program's handler on %d ran %d times during the free (rseqrt's requests reached it)",
                TOP_SIGNAL, (int)program_handler_runs);
        raise(TOP_SIGNAL);
        if (program_handler_runs != 1)
            die(12, "the program's own raise(%d): its handler ran %d times (want 1)", TOP_SIGNAL,
                (int)program_handler_runs);
        printf("the program's handler on %d: none of rseqrt's requests, its own raise once\n", TOP_SIGNAL);
    }
    printf("survived\n");
    return 0;
}
