/* rseq_cs.h: run one restartable-sequence critical section (x86-64 only).
 *
 * Written from the kernel's UAPI description (linux/rseq.h):
 *  - the thread's registered area is a `struct rseq`: cpu_id_start (u32, offset 0),
 *    cpu_id (u32, offset 4), rseq_cs (u64, offset 8), flags (u32, offset 16), ...;
 *  - `rseq_cs` points to a 32-byte aligned `struct rseq_cs` descriptor
 *    {u32 version = 0, u32 flags, u64 start_ip, u64 post_commit_offset, u64 abort_ip};
 *  - the 4 bytes right before abort_ip hold the registration signature
 *    (0x53053053 on x86-64, as glibc registers), and abort_ip lies outside
 *    [start_ip, start_ip + post_commit_offset).
 *
 * The area is found where glibc's ABI says: thread pointer + __rseq_offset.
 *
 * Every object that includes this header gets its own copy of the critical
 * section code and its own descriptor (local symbols, in that object's .text and
 * .data): a plugin that includes it holds both in its own mappings.
 *
 * The code is one position-independent function (it touches only its arguments
 * and caller-saved registers), so it can also be copied into JIT memory:
 *     int code(struct rseq_cs_area *area, long *counters, const struct rseq_cs_desc *desc);
 * It stores desc into area->rseq_cs, then (start_ip) reads cpu_id and increments
 * counters[cpu_id]; the final store is the commit. On abort it starts over.
 * It returns the cpu whose counter it incremented. It never clears rseq_cs
 * afterwards: like real rseq users, it leaves the pointer stale.
 */
#ifndef RSEQ_CS_H
#define RSEQ_CS_H

#if !defined(__x86_64__)
#error "rseq_cs.h supports x86-64 only"
#endif

#include <stddef.h>
#include <stdint.h>

#include "thread_pointer.h"

#define RSEQ_CS_SIG 0x53053053

struct rseq_cs_desc {
    uint32_t version;
    uint32_t flags;
    uint64_t start_ip;
    uint64_t post_commit_offset;
    uint64_t abort_ip;
} __attribute__((aligned(32)));

struct rseq_cs_area {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
};

/* glibc's ABI (GLIBC_2.35); rseqrt interposes it. glibc before 2.35 defines no such name: a
 * weak reference then binds to rseqrt's definition when rseqrt is linked or preloaded, and a
 * program without it must not call rseq_cs_area(). */
#if __has_include(<sys/rseq.h>)
extern const ptrdiff_t __rseq_offset;
#define RSEQ_CS_ABI_DEFINED() 1
#else
extern const ptrdiff_t __rseq_offset __attribute__((weak));
#define RSEQ_CS_ABI_DEFINED() (&__rseq_offset != NULL)
#endif

/* The code and the object's own descriptor. Local (non-global) symbols, so every
 * object including this header has its own. */
__asm__(
    ".pushsection .text, \"ax\", @progbits\n"
    ".p2align 4\n"
    ".type rseq_cs_h_code, @function\n"
    "rseq_cs_h_code:\n"
    "rseq_cs_h_retry:\n"
    "    movq %rdx, 8(%rdi)\n"           /* area->rseq_cs = desc */
    "rseq_cs_h_start:\n"                 /* start_ip */
    "    movl 4(%rdi), %eax\n"           /* cpu = area->cpu_id */
    "    leaq (%rsi,%rax,8), %rcx\n"     /* &counters[cpu] */
    "    movq (%rcx), %r8\n"
    "    addq $1, %r8\n"
    "    movq %r8, (%rcx)\n"             /* commit */
    "rseq_cs_h_post_commit:\n"
    "    ret\n"
    "    .long 0x53053053\n"             /* signature, right before abort_ip */
    "rseq_cs_h_abort:\n"
    "    jmp rseq_cs_h_retry\n"
    "rseq_cs_h_code_end:\n"
    ".size rseq_cs_h_code, rseq_cs_h_code_end - rseq_cs_h_code\n"
    ".popsection\n"
    ".pushsection .data, \"aw\", @progbits\n"
    ".p2align 5\n"
    ".type rseq_cs_h_desc, @object\n"
    "rseq_cs_h_desc:\n"
    "    .long 0, 0\n"
    "    .quad rseq_cs_h_start\n"
    "    .quad rseq_cs_h_post_commit - rseq_cs_h_start\n"
    "    .quad rseq_cs_h_abort\n"
    ".size rseq_cs_h_desc, 32\n"
    ".popsection\n");

typedef int (*rseq_cs_code_fn)(struct rseq_cs_area *, long *, const struct rseq_cs_desc *);

static inline struct rseq_cs_area *rseq_cs_area(void)
{
    return (struct rseq_cs_area *)((char *)thread_pointer() + __rseq_offset);
}

/* Registered: the kernel keeps cpu_id >= 0 (-1 uninitialized, -2 registration failed). Where
 * nobody defines __rseq_offset (glibc before 2.35 without rseqrt), nothing is registered. */
static inline int rseq_cs_registered(void)
{
    if (!RSEQ_CS_ABI_DEFINED())
        return 0;
    return (int32_t)__atomic_load_n(&rseq_cs_area()->cpu_id, __ATOMIC_RELAXED) >= 0;
}

static inline uint64_t rseq_cs_current(void)
{
    if (!RSEQ_CS_ABI_DEFINED())
        return 0;
    return __atomic_load_n(&rseq_cs_area()->rseq_cs, __ATOMIC_RELAXED);
}

/* This object's descriptor and code. */
static inline const struct rseq_cs_desc *rseq_cs_own_desc(void)
{
    const struct rseq_cs_desc *d;
    __asm__("leaq rseq_cs_h_desc(%%rip), %0" : "=r"(d));
    return d;
}

static inline void *rseq_cs_own_code(void)
{
    void *p;
    __asm__("leaq rseq_cs_h_code(%%rip), %0" : "=r"(p));
    return p;
}

/* Layout of the code, for copying it elsewhere (offsets from the code's start). */
struct rseq_cs_layout {
    size_t size, start_off, post_commit_offset, abort_off;
};

static inline struct rseq_cs_layout rseq_cs_layout(void)
{
    struct rseq_cs_layout l;
    __asm__("movq $(rseq_cs_h_code_end - rseq_cs_h_code), %0\n\t"
            "movq $(rseq_cs_h_start - rseq_cs_h_code), %1\n\t"
            "movq $(rseq_cs_h_post_commit - rseq_cs_h_start), %2\n\t"
            "movq $(rseq_cs_h_abort - rseq_cs_h_code), %3"
            : "=r"(l.size), "=r"(l.start_off), "=r"(l.post_commit_offset), "=r"(l.abort_off));
    return l;
}

/* Fill a descriptor for a copy of the code placed at `code`. */
static inline void rseq_cs_describe(struct rseq_cs_desc *d, const void *code)
{
    struct rseq_cs_layout l = rseq_cs_layout();
    d->version = 0;
    d->flags = 0;
    d->start_ip = (uint64_t)(uintptr_t)code + l.start_off;
    d->post_commit_offset = l.post_commit_offset;
    d->abort_ip = (uint64_t)(uintptr_t)code + l.abort_off;
}

/* Run one critical section with the given code and descriptor.
 * Returns the cpu whose counter was incremented, or -1 if this thread has no
 * registered rseq area (nothing is run then). counters needs one slot per cpu. */
static inline int rseq_cs_run(long *counters, const struct rseq_cs_desc *desc, const void *code)
{
    if (!rseq_cs_registered())
        return -1;
    return ((rseq_cs_code_fn)(uintptr_t)code)(rseq_cs_area(), counters, desc);
}

/* Run one critical section with this object's own code and descriptor. */
static inline int rseq_cs_inc(long *counters)
{
    return rseq_cs_run(counters, rseq_cs_own_desc(), rseq_cs_own_code());
}

#endif
