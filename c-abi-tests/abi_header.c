/* abi_header: <rseqrt.h> is usable from strict C11 and from C++.
 *
 * Compiled (as C with -std=c11, and as C++ with -x c++ -std=c++17, both
 * -Wall -Wextra -Werror -pedantic), alone and with -DSYS_RSEQ_FIRST so that
 * glibc's <sys/rseq.h> declares __rseq_offset & co. first: the two headers
 * must agree on those declarations.  Linked and run, so that C++ proves the
 * functions have C linkage (a mangled name would not link). */
#ifdef SYS_RSEQ_FIRST
#include <sys/rseq.h>
#endif
#include <rseqrt.h>

#include <stdio.h>

/* The owner constants are distinct integer constant expressions. */
#ifdef __cplusplus
static_assert(RSEQRT_OWNER_NONE == 0 && RSEQRT_OWNER_LIBC == 1 && RSEQRT_OWNER_SELF == 2,
              "owner values are the contract's");
#else
_Static_assert(RSEQRT_OWNER_NONE == 0 && RSEQRT_OWNER_LIBC == 1 && RSEQRT_OWNER_SELF == 2,
               "owner values are the contract's");
#endif

int main(void)
{
    /* Take every foundation entry point's address (volatile, so none is
     * optimised away): each must exist in the library with C linkage. */
    int (*volatile owner)(void) = rseqrt_owner;
    int (*volatile reg)(void) = rseqrt_register_current_thread;
    int (*volatile unreg)(void) = rseqrt_unregister_current_thread;
    struct rseqrt_area *(*volatile area)(void) = rseqrt_current_area;
    unsigned int (*volatile len)(void) = rseqrt_area_length;
    int (*volatile cpu)(void) = rseqrt_current_cpu;
    int (*volatile node)(void) = rseqrt_current_node;
    int (*volatile mm_cid)(void) = rseqrt_current_mm_cid;
    int (*volatile sig)(void) = rseqrt_signal;
    if (!owner || !reg || !unreg || !area || !len || !cpu || !node || !mm_cid || !sig)
        return 1;

    const ptrdiff_t off = __rseq_offset;
    const unsigned int size = __rseq_size, flags = __rseq_flags;
    printf("header ok: owner %d, __rseq_offset %td, __rseq_size %u, __rseq_flags %u, "
           "area %p, length %u\n",
           rseqrt_owner(), off, size, flags, (void *)rseqrt_current_area(),
           rseqrt_area_length());
    return 0;
}
