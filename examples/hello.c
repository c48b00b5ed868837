/* hello.c: what rseqrt sees in this process. Build and run:
 *   cc hello.c $(pkg-config --cflags --libs rseqrt) -o hello && ./hello
 *   GLIBC_TUNABLES=glibc.pthread.rseq=0 ./hello                    # registration left to the program
 *   GLIBC_TUNABLES=glibc.pthread.rseq=0 RSEQRT_REGISTER=1 ./hello  # rseqrt registers its own areas */
#define _GNU_SOURCE /* sched_getcpu */
#include <rseqrt.h>
#include <sched.h>
#include <stdio.h>

int main(void)
{
    static const char *owners[] = { "none (rseqrt registers nothing)", "glibc (rseqrt adopts its areas)",
                                    "rseqrt (its own areas)" };
    struct rseqrt_area *area = rseqrt_current_area();
    printf("registration owner : %s\n", owners[rseqrt_owner()]);
    printf("why                : %s\n", rseqrt_owner_reason());
    printf("__rseq_offset      : %td\n", __rseq_offset);
    printf("__rseq_size        : %u (registered length %u)\n", __rseq_size, rseqrt_area_length());
    printf("this thread's area : %p, cpu_id %d\n", (void *)area, area ? (int)area->cpu_id : -2);
    printf("current cpu        : %d (sched_getcpu %d), node %d, mm_cid %d\n", rseqrt_current_cpu(),
           sched_getcpu(), rseqrt_current_node(), rseqrt_current_mm_cid());
    printf("reserved signal    : %d\n", rseqrt_signal());
    return 0;
}
