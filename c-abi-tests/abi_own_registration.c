/* A program that registers rseq itself in every thread, as rseq libraries do when their users
 * set GLIBC_TUNABLES=glibc.pthread.rseq=0 (glibc's documented way to leave registration to
 * them). Run plain, with rseqrt linked, or with rseqrt preloaded: in every case its own
 * registration must succeed in the main thread and in each pthread_create()d thread, and the
 * C library's (or rseqrt's) __rseq_size must read 0 before it registers.
 *
 *   abi_own_registration expect-ok        every registration returns 0
 *   abi_own_registration expect-refused   the first registration fails (EBUSY or EINVAL): the
 *                                         area is taken (RSEQRT_REGISTER=1, or plain glibc
 *                                         without the tunable)
 *
 * It prints rseqrt's owner and reason when rseqrt is loaded (found with dlsym). */
#include "common.h"

#include <dlfcn.h>
#include <pthread.h>

#define THREADS 4

/* The program's own area: one per thread, 32-byte aligned as the kernel requires. */
static __thread struct {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
    uint32_t pad[3];
} __attribute__((aligned(32))) own_area = { .cpu_id = (uint32_t)-1 };

static int expect_ok;

/* Registers the calling thread's own area; returns 0 or the errno. */
static int register_own(const char *who)
{
    if (sys_rseq(&own_area, 32, 0, TEST_RSEQ_SIG) != 0)
        return errno;
    check((int32_t)own_area.cpu_id >= 0, "%s: own area registered, cpu_id %d", who, (int32_t)own_area.cpu_id);
    check(sys_rseq(&own_area, 32, TEST_RSEQ_FLAG_UNREGISTER, TEST_RSEQ_SIG) == 0, "%s: own area unregistered again", who);
    return 0;
}

static void *thread_main(void *arg)
{
    char who[32];
    snprintf(who, sizeof who, "thread %ld", (long)(intptr_t)arg);
    int err = register_own(who);
    return (void *)(intptr_t)err;
}

int main(int argc, char **argv)
{
    check(argc == 2 && (!strcmp(argv[1], "expect-ok") || !strcmp(argv[1], "expect-refused")),
          "usage: abi_own_registration expect-ok|expect-refused");
    expect_ok = !strcmp(argv[1], "expect-ok");
    setvbuf(stdout, NULL, _IONBF, 0);

    int (*owner)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_owner");
    const char *(*reason)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rseqrt_owner_reason");
    if (owner && reason)
        printf("rseqrt_owner=%d reason: %s\n", owner(), reason());
    else
        printf("rseqrt_owner=-1 (rseqrt not loaded)\n");

    /* What librseq checks before it registers: the C library's registration size. */
    const unsigned int *size = dlsym(RTLD_DEFAULT, "__rseq_size");
    if (expect_ok)
        check(!size || *size == 0, "__rseq_size before the program registers: %u (0 or absent)", size ? *size : 0);

    int err = register_own("main");
    if (!expect_ok) {
        check(err == EBUSY || err == EINVAL, "main: own registration refused (%s), another area is registered",
              err ? strerror(err) : "it succeeded");
        puts("PASS abi_own_registration expect-refused");
        return 0;
    }
    check(err == 0, "main: own registration succeeded (%s)", err ? strerror(err) : "0");

    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        check(pthread_create(&t[i], NULL, thread_main, (void *)(intptr_t)i) == 0, "pthread_create %ld", i);
    for (long i = 0; i < THREADS; i++) {
        void *res;
        check(pthread_join(t[i], &res) == 0, "pthread_join %ld", i);
        int terr = (int)(intptr_t)res;
        check(terr == 0, "thread %ld: own registration succeeded (%s)", i, terr ? strerror(terr) : "0");
    }
    puts("PASS abi_own_registration expect-ok");
    return 0;
}
