/* abi_address_taken: a non-PIE program (built -no-pie -fno-pic) that takes the addresses of
 * pthread_create and rseqrt_owner. The executable then holds canonical PLT entries for both, and
 * the dynamic linker resolves every other object's references to its copies: a lookup by
 * address or by dlsym() would find the program, not rseqrt. rseqrt must still see that calls
 * bind to its pthread_create and own registration where glibc does not.
 * Prints rseqrt_owner=N, exits 0. */
#include <pthread.h>
#include <rseqrt.h>
#include <stdio.h>

/* Assigned in code (an absolute address in an instruction, not a data relocation), which is
 * what makes the static linker give the executable canonical PLT entries. */
int (*volatile taken_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
int (*volatile taken_owner)(void);

static void *worker(void *arg)
{
    (void)arg;
    return (void *)(long)rseqrt_current_cpu();
}

int main(void)
{
    taken_create = pthread_create;
    taken_owner = rseqrt_owner;
    pthread_t t;
    void *cpu;
    if (taken_create(&t, NULL, worker, NULL) != 0 || pthread_join(t, &cpu) != 0)
        return 2;
    printf("rseqrt_owner=%d reason: %s; a thread's cpu %ld\n", taken_owner(), rseqrt_owner_reason(), (long)cpu);
    return 0;
}
