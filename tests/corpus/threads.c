/* The program that the corpus's gcc row compiles, links and runs (under the shim when gcc ran
 * under it): threads that map, grow and unmap memory and load and unload a library, as a C
 * program does it. Prints one deterministic line per thread. Usage: threads PLUGIN.so */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define THREADS 4
#define ROUNDS 200

static const char *plugin;
static long results[THREADS];

static void *worker(void *arg)
{
    long k = (long)arg, sum = 0;
    for (int i = 0; i < ROUNDS; i++) {
        size_t len = (size_t)(1 + i % 16) << 16;
        unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); exit(2); }
        p[len - 1] = (unsigned char)(k + i);
        unsigned char *q = mremap(p, len, 2 * len, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) { perror("mremap"); exit(2); }
        q[2 * len - 1] = 1;
        sum += q[len - 1] + q[2 * len - 1];
        if (munmap(q, 2 * len) != 0) { perror("munmap"); exit(2); }
        if (i % 4 == 0) {
            void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
            if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); exit(2); }
            int (*mix)(int, int) = (int (*)(int, int))dlsym(h, "corpus_plugin_mix");
            if (!mix) { fprintf(stderr, "dlsym: %s\n", dlerror()); exit(2); }
            sum += mix((int)k, i);
            if (dlclose(h) != 0) { fprintf(stderr, "dlclose: %s\n", dlerror()); exit(2); }
        }
    }
    results[k] = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: %s PLUGIN.so\n", argv[0]); return 2; }
    plugin = argv[1];
    pthread_t t[THREADS];
    for (long k = 0; k < THREADS; k++) {
        int e = pthread_create(&t[k], NULL, worker, (void *)k);
        if (e) { fprintf(stderr, "pthread_create: %s\n", strerror(e)); return 2; }
    }
    for (int k = 0; k < THREADS; k++)
        pthread_join(t[k], NULL);
    for (int k = 0; k < THREADS; k++)
        printf("thread %d: %ld\n", k, results[k]);
    return 0;
}
