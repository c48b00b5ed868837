/* libsigrt_early.so: a library the dynamic linker initializes before rseqrt (it comes after
 * rseqrt in the program's list: DT_NEEDED after a linked librseqrt.so, or any DT_NEEDED entry
 * under LD_PRELOAD of the shim). Its constructor reads SIGRTMIN and SIGRTMAX, as a library may,
 * and notes whether rseqrt's constructor had run by then (rseqrt_signal() is 0 until it has).
 * sigrt_range.c compares these values with its own. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>

int sigrt_early_min = -1, sigrt_early_max = -1;
/* -1: rseqrt not loaded; 0: its constructor had not run yet; 1: it had. */
int sigrt_early_rseqrt_ready = -1;

__attribute__((constructor)) static void sigrt_early_init(void)
{
    sigrt_early_min = SIGRTMIN;
    sigrt_early_max = SIGRTMAX;
    int (*rs)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_signal");
    if (rs)
        sigrt_early_rseqrt_ready = rs() != 0;
}
