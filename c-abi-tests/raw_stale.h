/* raw_stale.h: the C suites' stale thread that no signal reaches. A raw clone() thread
 * (raw_clone.h: not in glibc's thread list, so glibc's SIGSETXID broadcast skips it, with a copy
 * of the main thread's TCB and static TLS as its own thread-pointer block) runs one critical
 * section with the descriptor at raw_desc and sleeps in the kernel. By default it registers with
 * rseqrt_register_current_thread() and blocks every signal with the raw system call: no barrier
 * can make its kernel look at its rseq_cs. With raw_unknown set it registers with the raw
 * system call and blocks nothing: a thread rseqrt does not know. raw_starter says which clone()
 * starts it. Needs test_common.h (counters, die, fail, now_ms, sleep_ms, thread_state). */
#ifndef RAW_STALE_H
#define RAW_STALE_H

#include "raw_clone.h"
static struct rseq_cs_desc *raw_desc;
static atomic_int raw_state; /* 1 ready, 2 woken, 3 done, <0 error */
static int raw_wake;
static int raw_reg_errno;
static volatile pid_t raw_ctid;
static struct rseq_cs_area *_Atomic raw_area;

static int raw_unknown; /* register with the raw system call, block nothing: unknown to rseqrt */
/* What starts the raw thread: clone() unless a scenario says otherwise. */
static raw_clone_starter raw_starter = clone;
extern int __clone(int (*fn)(void *), void *stack, int flags, void *arg, ...);

static int raw_thread(void *arg)
{
    (void)arg;
    if (raw_unknown ? syscall(SYS_rseq, rseq_cs_area(), 32, 0, 0x53053053) != 0
                    : rseqrt_register_current_thread() != 0) {
        raw_reg_errno = errno;
        atomic_store(&raw_state, -1);
        return 0;
    }
    atomic_store(&raw_area, rseq_cs_area());
    unsigned long long all = ~0ULL;
    if (!raw_unknown)
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, 8);
    if (rseq_cs_run(counters, raw_desc, rseq_cs_own_code()) < 0) {
        atomic_store(&raw_state, -2);
        return 0;
    }
    atomic_store(&raw_state, 1);
    raw_clone_sleep_until_woken(&raw_wake);
    /* back in user space: the kernel has looked at rseq_cs (if the page is gone: SIGSEGV) */
    atomic_store(&raw_state, 2);
    if (raw_unknown)
        syscall(SYS_rseq, rseq_cs_area(), 32, 1 /* RSEQ_FLAG_UNREGISTER */, 0x53053053);
    else
        rseqrt_unregister_current_thread();
    atomic_store(&raw_state, 3);
    return 0;
}

static void start_raw_thread(void)
{
    const char *why = NULL;
    if (raw_clone_start(raw_starter, raw_thread, (char *)rseqrt_current_area() - (char *)thread_pointer(), &raw_ctid,
                        &why) != 0)
        die(2, "raw thread: %s: %s", why, strerror(errno));
    double t0 = now_ms();
    while (atomic_load(&raw_state) == 0) {
        if (now_ms() - t0 > 5000)
            die(2, "raw thread did not start");
        sched_yield();
    }
    if (atomic_load(&raw_state) == -1)
        die(2, "raw thread: rseqrt_register_current_thread: %s", strerror(raw_reg_errno));
    if (atomic_load(&raw_state) < 0)
        die(3, "raw thread has no registered area");
    while (thread_state(raw_ctid) != 'S')
        sched_yield();
}

/* Wakes the raw thread and waits (up to 5 s) until it has exited. */
static void raw_wake_and_wait(void)
{
    raw_clone_wake(&raw_wake);
    double t0 = now_ms();
    while (raw_ctid != 0) {
        if (now_ms() - t0 > 5000)
            fail("the raw thread did not exit (state %d)", atomic_load(&raw_state));
        sleep_ms(1);
    }
}

#endif
