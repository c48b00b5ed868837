/* regress_unload_cases: regression tests for bugs found in review (tests/regress.rs says which)
 * in what rseqrt_munmap() and rseqrt_dlclose() free, and from where: one scenario per run (a
 * sibling of regress_cases.c).
 *
 *   regress_unload_cases SCENARIO METHOD [ARGS...]
 *
 * METHOD (rseqrt or plain) and the exit status: as regress_cases.c.
 *
 * Scenarios (the numbers are tests/regress.rs's):
 *   wholepage                          3. rseqrt_munmap(page, 100) with the descriptor at page + 2048
 *   smallstack                         the barrier runs on a PTHREAD_STACK_MIN stack, on its slow
 *                                      paths too (a stale blocked thread, glibc's SIGEV_THREAD helper)
 *   reldep A.so B.so                   closing A unloads B, which only A's relocations kept loaded:
 *                                      the barrier covers B
 *   dtor PLUGIN                        4. the plugin's destructor runs a critical section in dlclose()
 *   bogus                              8. rseqrt_dlclose() of handles that are not loaded objects
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <limits.h> /* PTHREAD_STACK_MIN (before glibc 2.34 <pthread.h> does not bring it) */

#include "test_common.h" /* crash_common.h, rseq_cs.h, <rseqrt.h> and the shared helpers */
#include "regress_helpers.h" /* cs_of, mapped, open_plugin, registered_len, pipes, stale_reader */

/* ------------------------------------------------------------- 3. whole pages */

static void sc_wholepage(int argc, char **argv)
{
    (void)argc, (void)argv;
    char *page = map_pages(1);
    stale_desc_at(page + 2048);
    pthread_t t = stale_start(stale_reader, 1);
    int rc = use_rseqrt ? rseqrt_munmap(page, 100) : munmap(page, 100);
    if (rc != 0)
        fail("%s(page, 100) = %d (%s)", use_rseqrt ? "rseqrt_munmap" : "munmap", rc, strerror(errno));
    check(!mapped(page), "%s(page, 100) = 0 unmapped the whole page (descriptor at page + 2048)",
          use_rseqrt ? "rseqrt_munmap" : "munmap");
    stale_finish(t);
}

/* A barrier from a thread with the smallest stack glibc allows (PTHREAD_STACK_MIN): the barrier
 * must fit, on its slowest paths too (a stale blocked thread to signal; with glibc's SIGEV_THREAD
 * helper present, the process has threads rseqrt does not know). */
static void small_stack_timer_cb(union sigval v) { (void)v; }
static char *small_stack_page;
static int small_stack_rc = -99;

static void *small_stack_free(void *arg)
{
    (void)arg;
    small_stack_rc = use_rseqrt ? rseqrt_munmap(small_stack_page, 4096) : munmap(small_stack_page, 4096);
    return NULL;
}

static void sc_smallstack(int argc, char **argv)
{
    (void)argc, (void)argv;
    timer_t timer;
    const char *err = crash_start_timer_thread(small_stack_timer_cb, &timer);
    if (err)
        die(2, "timer: %s", err);
    small_stack_page = map_pages(1);
    stale_desc_at(small_stack_page);
    pthread_t t = stale_start(stale_reader, 1), f;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN) != 0)
        die(2, "pthread_attr_setstacksize");
    pthread_create(&f, &attr, small_stack_free, NULL);
    pthread_join(f, NULL);
    check(small_stack_rc == 0, "%s from a %ld-byte stack = %d", use_rseqrt ? "rseqrt_munmap" : "munmap",
          (long)PTHREAD_STACK_MIN, small_stack_rc);
    stale_finish(t);
}

/* An object kept loaded only by another's relocation dependency: B is loaded RTLD_GLOBAL, A binds
 * to it (no DT_NEEDED), B's own handle is closed (B stays: A needs it). Closing A unmaps B too,
 * so the barrier must cover B although A's dependency list does not name it. */
static int (*reldep_inc)(void);
static void *reldep_reader(void *arg)
{
    (void)arg;
    stale_cpu = reldep_inc();
    atomic_store(&stale_ready, 1);
    read_byte(stale_pipe[0]);
    return NULL;
}

static void sc_reldep(int argc, char **argv)
{
    if (argc < 2)
        die(2, "usage: reldep METHOD A.so B.so");
    void *b = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    void *a = dlopen(argv[0], RTLD_NOW);
    if (!a || !b)
        die(2, "dlopen: %s", dlerror());
    reldep_inc = (int (*)(void))dlsym(a, "a_inc");
    if (!reldep_inc)
        die(2, "setup");
    pthread_t t = stale_start(reldep_reader, 1);
    dlclose(b);
    check(dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL, "B stays loaded after its own dlclose (A binds to it)");
    dlclose(b);
    int rc = use_rseqrt ? rseqrt_dlclose(a) : dlclose(a);
    check(rc == 0, "%s(A) = %d", use_rseqrt ? "rseqrt_dlclose" : "dlclose", rc);
    check(dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) == NULL, "closing A unloaded B");
    stale_finish(t);
}

/* ---------------------------------------------------- 4. dlclose runs destructors */

static void sc_dtor(int argc, char **argv)
{
    if (argc < 1)
        die(2, "usage: dtor METHOD PLUGIN");
    void *h = open_plugin(argv[0]);
    int (*inc)(long *) = (int (*)(long *))dlsym(h, "plugin_inc");
    void (*report)(int *) = (void (*)(int *))dlsym(h, "plugin_report");
    if (!inc || !report)
        die(2, "%s lacks plugin_inc/plugin_report", argv[0]);
    static int dtor_cpu = -99;
    report(&dtor_cpu);
    int cpu = inc(counters);
    if (cpu < 0)
        die(3, "the main thread has no registered area");
    printf("observed: before dlclose the main thread's rseq_cs is %#llx (in the plugin)\n",
           (unsigned long long)rseq_cs_current());
    int rc = use_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
    uint64_t cs = rseq_cs_current();
    sleep_ms(2); /* a return to user space after a context switch: the kernel reads rseq_cs */
    if (rc != 0)
        fail("%s = %d (%s)", use_rseqrt ? "rseqrt_dlclose" : "dlclose", rc, dlerror());
    printf("observed: the plugin's destructor ran its critical section: cpu %d; rseq_cs after: %#llx\n",
           dtor_cpu, (unsigned long long)cs);
    if (use_rseqrt) {
        check(dtor_cpu == -1, "rseqrt_dlclose: the destructor's critical section took its fallback path "
              "(the caller's area unregistered meanwhile): cpu %d", dtor_cpu);
        check(cs == 0 && rseq_cs_registered(), "after rseqrt_dlclose the caller's rseq_cs is 0 (%#llx) and it is "
              "registered again (cpu_id %d)", (unsigned long long)cs, (int32_t)rseq_cs_area()->cpu_id);
        errno = 0;
        check(registered_len() > 0, "rseq() again answers EBUSY for the caller's area");
        check(rseq_cs_inc(counters) >= 0, "a critical section after it runs");
    }
    printf("survived\n");
}

/* ---------------------------------------------------- 8. bogus dlclose handles */

/* Calls dlclose or rseqrt_dlclose(h) in a child; describes what happened in out. */
static void dlclose_in_child(void *h, int with_rseqrt, char *out, size_t outlen)
{
    int p[2];
    if (pipe(p) != 0)
        die(2, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die(2, "fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        close(p[0]);
        dlerror();
        int r = with_rseqrt ? rseqrt_dlclose(h) : dlclose(h);
        const char *m = dlerror();
        char buf[600];
        int n = snprintf(buf, sizeof buf, "returns %d, dlerror \"%s\"", r, m ? m : "(null)");
        if (write(p[1], buf, (size_t)n) < 0)
            _exit(2);
        _exit(0);
    }
    close(p[1]);
    ssize_t n = read(p[0], out, outlen - 1);
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st))
        snprintf(out, outlen, "killed by signal %d", WTERMSIG(st));
    else
        out[n > 0 ? n : 0] = 0;
}

static void sc_bogus(int argc, char **argv)
{
    (void)argc, (void)argv;
    if (!use_rseqrt)
        die(2, "bogus has no plain form");
    char stack_block[2048];
    memset(stack_block, 0x5a, sizeof stack_block);
    void *junk = malloc(4096);
    memset(junk, 0x41, 4096);
    void *zeros = calloc(1, 4096);
    struct {
        const char *what;
        void *h;
    } cases[] = {
        {"a malloc'd block of junk", junk},
        {"a calloc'd (zeroed) block", zeros},
        {"a block on the stack", stack_block},
        {"(void *)0x1000", (void *)0x1000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[700], b[700];
        dlclose_in_child(cases[i].h, 0, a, sizeof a);
        dlclose_in_child(cases[i].h, 1, b, sizeof b);
        check(!strcmp(a, b), "rseqrt_dlclose(%s) %s; dlclose %s", cases[i].what, b, a);
    }
    /* And in this process, for the handles glibc's dlclose survives. */
    for (size_t i = 0; i < 3; i++) {
        dlerror();
        int r = rseqrt_dlclose(cases[i].h);
        const char *m = dlerror();
        printf("observed: in-process rseqrt_dlclose(%s) = %d, dlerror \"%s\"\n", cases[i].what, r, m ? m : "(null)");
    }
    printf("survived\n");
}

/* ------------------------------------------------------------------------ main */

static const struct scenario_args scenarios[] = {
    {"wholepage", sc_wholepage},
    {"smallstack", sc_smallstack},
    {"reldep", sc_reldep},
    {"dtor", sc_dtor},
    {"bogus", sc_bogus},
};

int main(int argc, char **argv)
{
    return cases_main_args(argc, argv, scenarios, sizeof scenarios / sizeof scenarios[0]);
}
