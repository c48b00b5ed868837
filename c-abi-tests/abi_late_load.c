/* abi_late_load.c: rseqrt loaded with dlopen() after the program already made a thread.
 *
 * When glibc registers (LIBC mode) this is fine: rseqrt adopts glibc's areas, whatever loaded it.
 * When nobody registers (GLIBC_TUNABLES=glibc.pthread.rseq=0), rseqrt cannot own registration:
 * the program's pthread_create() is already bound to glibc's, so its threads would run
 * unregistered. rseqrt must say so (owner NONE, __rseq_size 0, no area, EOPNOTSUPP from
 * rseqrt_register_current_thread()) rather than hand out an offset that is wrong for them.
 *
 * Usage: abi_late_load PATH-TO-librseqrt.so {libc|refused} */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void *thread_main(void *arg) { return arg; }

int main(int argc, char **argv)
{
    pthread_t t;
    if (argc != 3 || pthread_create(&t, NULL, thread_main, NULL) || pthread_join(t, NULL))
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    int (*owner)(void) = (int (*)(void))dlsym(h, "rseqrt_owner");
    int (*reg)(void) = (int (*)(void))dlsym(h, "rseqrt_register_current_thread");
    void *(*area)(void) = (void *(*)(void))dlsym(h, "rseqrt_current_area");
    const unsigned *size = dlsym(h, "__rseq_size");
    if (!owner || !reg || !area || !size) {
        printf("FAIL missing symbols\n");
        return 1;
    }
    errno = 0;
    int rc = reg(), err = errno;
    printf("owner %d, __rseq_size %u, area %p, register %d (%s)\n", owner(), *size, area(), rc,
           strerror(err));
    int ok = !strcmp(argv[2], "libc")
                 ? owner() == 1 && *size >= 20 && area() && rc == -1 && err == EBUSY
                 : owner() == 0 && *size == 0 && !area() && rc == -1 && err == EOPNOTSUPP;
    printf("%s late load, expecting %s\n", ok ? "PASS" : "FAIL", argv[2]);
    return ok ? 0 : 1;
}
