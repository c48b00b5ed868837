/* regress_slowshim: a pthread_create() interposer that, once armed, holds each caller for
 * 300 ms before calling the next pthread_create. Preloaded after rseqrt
 * (LD_PRELOAD="librseqrt.so.0 libregress_slowshim.so"), it is the definition rseqrt's own
 * pthread_create calls next, so threads stay "in the middle of pthread_create" (their registry
 * slots claimed, the threads not yet started) for as long as the test needs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

__attribute__((visibility("default"))) atomic_int regress_shim_in;   /* callers held so far */
__attribute__((visibility("default"))) atomic_int regress_shim_slow; /* armed */

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

__attribute__((visibility("default"))) int pthread_create(pthread_t *t, const pthread_attr_t *a,
                                                          void *(*f)(void *), void *arg)
{
    static _Atomic(create_fn) next;
    create_fn real = atomic_load(&next);
    if (!real) {
        real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
        atomic_store(&next, real);
    }
    if (atomic_load(&regress_shim_slow)) {
        atomic_fetch_add(&regress_shim_in, 1);
        usleep(300000);
    }
    return real(t, a, f, arg);
}
