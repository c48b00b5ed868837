#define _GNU_SOURCE
#include "test_common.h"
#include <signal.h>
#include <time.h>
static void cb(union sigval sv) {
    (void)sv;
    char *tp = thread_pointer();
    printf("cb: tid %ld rseqrt area cpu_id %d, glibc area(-384) cpu_id %d, registered %d\n", (long)gettid(),
           *(int32_t*)(tp + __rseq_offset + 4), *(int32_t*)(tp - 384 + 4), rseq_cs_registered());
    int r = rseqrt_register_current_thread();
    printf("cb: register -> %d errno %s\n", r, strerror(errno));
    char path[128]; snprintf(path, sizeof path, "/proc/self/task/%ld/status", (long)gettid());
    FILE *f = fopen(path, "r"); char line[256];
    while (f && fgets(line, sizeof line, f)) if (!strncmp(line, "SigBlk", 6)) printf("cb: %s", line);
    fflush(stdout);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("main: owner %d offset %td\n", rseqrt_owner(), __rseq_offset);
    timer_t t; struct sigevent sev = {0}; sev.sigev_notify = SIGEV_THREAD; sev.sigev_notify_function = cb;
    timer_create(CLOCK_MONOTONIC, &sev, &t);
    struct itimerspec its = {{0,0},{0,1000000}}; timer_settime(t, 0, &its, NULL);
    sleep(1);
    return 0;
}
