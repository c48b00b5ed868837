/* The x86-64 thread pointer (the %fs base, whose first word points to itself), for test code
 * that adds __rseq_offset to it. gcc before 11 (Debian 11) has no __builtin_thread_pointer
 * on x86-64, so it is read the way the ABI defines it. */
#ifndef RSEQRT_TEST_THREAD_POINTER_H
#define RSEQRT_TEST_THREAD_POINTER_H

static inline char *thread_pointer(void)
{
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

#endif
