/* abi_registration: does glibc's rseq ABI describe the kernel's registration?
 *
 * Built two ways from this one file:
 *   plain:            gcc abi_registration.c             (glibc only; rseqrt may be
 *                                                         LD_PRELOADed, found by dlsym)
 *   -DRSEQRT_LINKED:  gcc -DRSEQRT_LINKED ... $(pkg-config --cflags --libs rseqrt)
 * Built as a PIE that reads __rseq_offset directly, so the executable holds
 * an R_X86_64_COPY relocation: its copy is filled before any constructor runs
 * (see the facts note), the hardest consumer to hand the right values to.
 *
 * Environment:
 *   RSEQRT_EXPECT=registered|unregistered   what the ABI must say
 *   RSEQRT_EXPECT=noabi                     glibc before 2.35 with no rseqrt: the names
 *                                           __rseq_* are defined by nobody
 *   RSEQRT_EXPECT_OWNER=0|1|2               rseqrt_owner(); unset = rseqrt must be absent
 *   RSEQRT_EXPECT_DECLINED=1                rseqrt registers nothing because the program asked
 *                                           glibc to leave registration to it
 * Prints one line per check and exits 1 at the first failure. */
#include "common.h"

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/wait.h>
#include <threads.h>

#ifdef RSEQRT_LINKED
#include <rseqrt.h>
#endif

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27 /* newer than Debian 12's <elf.h> */
#endif

#define NTHREADS 4

static int expect_registered;
static int expect_owner = -1;    /* -1: rseqrt must not be loaded */
static uint32_t reg_len = 32;    /* length glibc registers; rseqrt may say otherwise */
static struct rseq *main_area;

/* A private, suitably aligned area: registering it must fail while the
 * thread's real area is registered. Thread-local so a wrongly successful
 * registration stays private to the thread until we undo it. */
static __thread char probe[256] __attribute__((aligned(256)));

/* The errno names these checks meet (strerrorname_np is glibc 2.32+). */
static const char *ename(int e)
{
    switch (e) {
    case 0: return "0";
    case EBUSY: return "EBUSY";
    case EINVAL: return "EINVAL";
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EFAULT: return "EFAULT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return strerror(e);
    }
}

/* Try to register the probe area. Returns the syscall result; a success is
 * undone at once so no test leaves a stray registration behind. */
static long probe_register(int *err)
{
    errno = 0;
    long rc = sys_rseq(probe, reg_len, 0, TEST_RSEQ_SIG);
    *err = errno;
    if (rc == 0)
        check(sys_rseq(probe, reg_len, TEST_RSEQ_FLAG_UNREGISTER, TEST_RSEQ_SIG) == 0,
              "undo the probe registration: %s", strerror(errno));
    return rc;
}

/* cpu_id is only meaningful together with a reference read in between:
 * retry so a migration between the reads does not count as a failure. */
static int cpu_agrees(const struct rseq *area, int32_t *seen, int32_t *seen_start,
                      unsigned *kcpu)
{
    for (int i = 0; i < 1000; i++) {
        unsigned node;
        int32_t a = read_cpu_id(area);
        int32_t s = read_cpu_id_start(area);
        if (kernel_getcpu(kcpu, &node) != 0)
            return 0;
        int32_t b = read_cpu_id(area);
        *seen = a;
        *seen_start = s;
        if (a >= 0 && a == b && a == s && (unsigned)a == *kcpu)
            return 1;
    }
    return 0;
}

static void check_registered(const char *who, struct rseq *area)
{
    errno = 0;
    long rc = sys_rseq(area, reg_len, 0, TEST_RSEQ_SIG);
    int e = errno;
    check(rc == -1 && e == EBUSY,
          "%s: area %p (tp+%td, len %u) is the kernel's registration: rseq() = %ld %s (want EBUSY)",
          who, (void *)area, __rseq_offset, reg_len, rc, ename(e));

    rc = probe_register(&e);
    check(rc == -1 && e == EINVAL,
          "%s: another address %p is refused: rseq() = %ld %s (want EINVAL)",
          who, (void *)probe, rc, ename(e));

    int32_t cpu_id, cpu_id_start;
    unsigned kcpu = 0;
    int ok = cpu_agrees(area, &cpu_id, &cpu_id_start, &kcpu);
    check(ok, "%s: cpu_id %d (cpu_id_start %d) agrees with getcpu() %u",
          who, cpu_id, cpu_id_start, kcpu);
}

static void check_unregistered(const char *who, struct rseq *area)
{
    int32_t cpu_id = read_cpu_id(area);
    check(cpu_id == RSEQ_CPU_ID_REGISTRATION_FAILED,
          "%s: cpu_id at tp+%td is %d (want -2, RSEQ_CPU_ID_REGISTRATION_FAILED)",
          who, __rseq_offset, cpu_id);

    /* Nothing may be registered for this thread: a fresh area is accepted
     * (and undone), or the kernel refuses rseq altogether (seccomp). */
    int e;
    long rc = probe_register(&e);
    check(rc == 0 || (rc == -1 && e == ENOSYS),
          "%s: no registration exists: rseq(probe) = %ld %s (want 0 or ENOSYS)",
          who, rc, ename(e));
}

#ifdef RSEQRT_LINKED
static void check_rseqrt_api(const char *who, struct rseq *area)
{
    void *cur = (void *)rseqrt_current_area();
    int rc, e;

    if (!expect_registered) {
        check(cur == NULL, "%s: rseqrt_current_area() = %p (want NULL)", who, cur);
        /* Declined (GLIBC_TUNABLES=glibc.pthread.rseq=0): registration is the program's, and
         * rseqrt says so; otherwise the kernel has no rseq and rseqrt passes its answer on. */
        int declined = expect_env("RSEQRT_EXPECT_DECLINED") != NULL;
        int want = declined ? EOPNOTSUPP : ENOSYS;
        errno = 0;
        rc = rseqrt_register_current_thread();
        e = errno;
        check(rc == -1 && e == want, "%s: rseqrt_register_current_thread() = %d %s (want -1 %s)", who, rc,
              ename(e), declined ? "EOPNOTSUPP: left to the program" : "ENOSYS, the kernel's");
        const char *why = rseqrt_owner_reason();
        check(why && (!declined || strstr(why, "glibc.pthread.rseq=0")), "%s: rseqrt_owner_reason() \"%s\"", who,
              why ? why : "(null)");
        errno = 0;
        rc = rseqrt_current_cpu();
        note("%s: rseqrt_current_cpu() = %d %s", who, rc, ename(errno));
        return;
    }

    check(cur == (void *)area, "%s: rseqrt_current_area() %p == tp+__rseq_offset %p",
          who, cur, (void *)area);

    errno = 0;
    rc = rseqrt_register_current_thread();
    e = errno;
    check(rc == -1 && e == EBUSY,
          "%s: rseqrt_register_current_thread() = %d %s (want -1 EBUSY)", who, rc, ename(e));

    int cpu = -1, node = -1, ok = 0;
    unsigned kcpu = 0, knode = 0;
    for (int i = 0; i < 1000 && !ok; i++) {
        cpu = rseqrt_current_cpu();
        node = rseqrt_current_node();
        kernel_getcpu(&kcpu, &knode);
        ok = cpu >= 0 && (unsigned)cpu == kcpu && node >= 0 && (unsigned)node == knode &&
             rseqrt_current_cpu() == cpu;
    }
    check(ok, "%s: rseqrt_current_cpu() %d / _node() %d agree with getcpu() %u / %u",
          who, cpu, node, kcpu, knode);

    errno = 0;
    int mm_cid = rseqrt_current_mm_cid();
    e = errno;
    if (getauxval(AT_RSEQ_FEATURE_SIZE) >= 28) {
        long ncpu = sysconf(_SC_NPROCESSORS_CONF);
        check(mm_cid >= 0 && mm_cid < ncpu,
              "%s: rseqrt_current_mm_cid() = %d %s (kernel has mm_cid; want 0..%ld)",
              who, mm_cid, ename(e), ncpu - 1);
    } else {
        check(mm_cid == -1 && e == ENOSYS,
              "%s: rseqrt_current_mm_cid() = %d %s (kernel lacks mm_cid; want -1 ENOSYS)",
              who, mm_cid, ename(e));
    }
}
#endif

/* What a signal handler sees, recorded with async-signal-safe means only. */
static __thread struct {
    volatile sig_atomic_t ran;
    struct rseq *area;
    int32_t cpu_id;
    long rc;
    int err;
} seen_in_handler;

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    struct rseq *area = abi_area();
    seen_in_handler.area = area;
    seen_in_handler.cpu_id = read_cpu_id(area);
    /* Probing with the real area would register it when it is not: only do
     * that where the thread is meant to be registered already. */
    if (expect_registered) {
        errno = 0;
        seen_in_handler.rc = sys_rseq(area, reg_len, 0, TEST_RSEQ_SIG);
        seen_in_handler.err = errno;
    }
    seen_in_handler.ran = 1;
    errno = saved;
}

static void check_signal(const char *who, struct rseq *area)
{
    seen_in_handler.ran = 0;
    if (raise(SIGUSR1) != 0)
        check(0, "%s: raise(SIGUSR1): %s", who, strerror(errno));
    check(seen_in_handler.ran, "%s: signal handler ran", who);
    check(seen_in_handler.area == area, "%s: handler sees area %p (thread's %p)",
          who, (void *)seen_in_handler.area, (void *)area);
    if (expect_registered) {
        check(seen_in_handler.rc == -1 && seen_in_handler.err == EBUSY,
              "%s: in handler, rseq(area) = %ld %s (want EBUSY); cpu_id %d",
              who, seen_in_handler.rc, ename(seen_in_handler.err), seen_in_handler.cpu_id);
        check(seen_in_handler.cpu_id >= 0, "%s: in handler, cpu_id %d >= 0",
              who, seen_in_handler.cpu_id);
    } else {
        check(seen_in_handler.cpu_id == RSEQ_CPU_ID_REGISTRATION_FAILED,
              "%s: in handler, cpu_id %d (want -2)", who, seen_in_handler.cpu_id);
    }
}

/* The child reports with snprintf + write only: another thread of the
 * parent may have held the stdout lock at the moment of fork(). */
static void check_fork(const char *who, struct rseq *area)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        check(0, "%s: fork(): %s", who, strerror(errno));
    if (pid == 0) {
        char line[512];
        struct rseq *child_area = abi_area();
        int32_t cpu_id = read_cpu_id(child_area), cpu_id_start = cpu_id;
        unsigned kcpu = 0;
        long rc;
        int e, ok;
        if (expect_registered) {
            errno = 0;
            rc = sys_rseq(child_area, reg_len, 0, TEST_RSEQ_SIG);
            e = errno;
            ok = child_area == area && rc == -1 && e == EBUSY &&
                 cpu_agrees(child_area, &cpu_id, &cpu_id_start, &kcpu);
        } else {
            rc = probe_register(&e);
            ok = child_area == area && cpu_id == RSEQ_CPU_ID_REGISTRATION_FAILED &&
                 (rc == 0 || e == ENOSYS);
        }
#ifdef RSEQRT_LINKED
        void *cur = (void *)rseqrt_current_area();
        ok = ok && cur == (expect_registered ? (void *)child_area : NULL) &&
             rseqrt_owner() == expect_owner;
#endif
        int n = snprintf(line, sizeof line,
                         "%s %s: fork child: area %p (parent's %p), rseq() = %ld %s, "
                         "cpu_id %d, getcpu %u\n",
                         ok ? "ok  " : "FAIL", who, (void *)child_area, (void *)area, rc,
                         ename(e), cpu_id, kcpu);
        if (write(1, line, (size_t)n) < 0)
            _exit(3);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        check(0, "%s: waitpid: %s", who, strerror(errno));
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%s: fork child %s (status 0x%x)", who,
          expect_registered ? "is still registered" : "runs unregistered", status);
}

/* exec: the new image starts with a fresh registration, made by whoever owns it there (the
 * kernel drops the old one at exec). The child re-runs this program's main-thread checks. */
static void check_exec(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        check(0, "exec: fork(): %s", strerror(errno));
    if (pid == 0) {
        setenv("ABI_EXEC_CHILD", "1", 1);
        execl("/proc/self/exe", "abi_registration", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        check(0, "exec: waitpid: %s", strerror(errno));
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "exec: the new image passes the main-thread checks (status 0x%x)", status);
}

/* Thread exit: glibc does not unregister a thread's area before it exits (the kernel forgets it
 * at exit), so thread-specific-data destructors still run registered. rseqrt's own exit hook
 * (a TSD destructor created before this one) must not change that. */
static pthread_key_t late_key;
static volatile int exit_dtor_rc = 1, exit_dtor_errno;

static void late_destructor(void *area)
{
    errno = 0;
    exit_dtor_rc = (int)sys_rseq(area, reg_len, 0, TEST_RSEQ_SIG);
    exit_dtor_errno = errno;
}

static void *exiting_thread(void *arg)
{
    (void)arg;
    pthread_setspecific(late_key, abi_area());
    return NULL;
}

static void check_thread_exit(void)
{
    pthread_t t;
    if (pthread_key_create(&late_key, late_destructor) != 0 ||
        pthread_create(&t, NULL, exiting_thread, NULL) != 0 || pthread_join(t, NULL) != 0)
        check(0, "thread exit: could not run the thread");
    if (expect_registered)
        check(exit_dtor_rc == -1 && exit_dtor_errno == EBUSY,
              "thread exit: still registered in a TSD destructor (rseq() = %d %s), as with glibc",
              exit_dtor_rc, ename(exit_dtor_errno));
    else
        check(exit_dtor_rc == 0 || exit_dtor_errno == ENOSYS,
              "thread exit: unregistered in a TSD destructor too (rseq() = %d %s)", exit_dtor_rc,
              ename(exit_dtor_errno));
}

static void check_thread(const char *who);

/* C11 threads: glibc's thrd_create() reaches its pthread_create internally, so rseqrt interposes
 * it too; a C11 thread is registered exactly like a pthread. */
static int c11_thread_main(void *arg)
{
    (void)arg;
    check_thread("C11 thread");
    return 7;
}

static void check_c11_thread(void)
{
    thrd_t t;
    int res = 0;
    check(thrd_create(&t, c11_thread_main, NULL) == thrd_success && thrd_join(t, &res) == thrd_success &&
              res == 7,
          "a C11 thread ran its checks and returned its result (%d)", res);
}

static void check_thread(const char *who)
{
    struct rseq *area = abi_area();
    if (expect_registered)
        check_registered(who, area);
    else
        check_unregistered(who, area);
#ifdef RSEQRT_LINKED
    check_rseqrt_api(who, area);
#endif
    check_signal(who, area);
}

struct worker {
    pthread_t tid;
    int index;
    struct rseq *area;
};

static pthread_barrier_t all_alive;

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char who[32];
    snprintf(who, sizeof who, "thread %d", w->index);
    w->area = abi_area();
    check_thread(who);
    if (w->index == 0)
        check_fork(who, w->area); /* the child keeps the forking thread's registration */
    /* Stay alive until main has compared every area: a dead thread's TLS may be reused. */
    pthread_barrier_wait(&all_alive);
    pthread_barrier_wait(&all_alive);
    return NULL;
}

static void check_values_everywhere(void)
{
    /* The executable's own copies (COPY relocation) vs what dlsym() finds:
     * RTLD_DEFAULT resolves like any library would, RTLD_NEXT finds the
     * definition behind the executable (rseqrt's or ld.so's). */
    void *handles[] = { RTLD_DEFAULT, RTLD_NEXT };
    const char *hnames[] = { "RTLD_DEFAULT", "RTLD_NEXT" };
    for (int i = 0; i < 2; i++) {
        const ptrdiff_t *off = dlsym(handles[i], "__rseq_offset");
        const unsigned *size = dlsym(handles[i], "__rseq_size");
        const unsigned *flags = dlsym(handles[i], "__rseq_flags");
        check(off && size && flags, "dlsym(%s) finds all three names", hnames[i]);
        check(*off == __rseq_offset && *size == __rseq_size && *flags == __rseq_flags,
              "dlsym(%s): offset %td size %u flags %u == direct %td %u %u", hnames[i],
              *off, *size, *flags, __rseq_offset, __rseq_size, __rseq_flags);
    }

    /* glibc's own values, from ld.so's definitions: a lookup through
     * libc.so.6's handle searches only libc and its dependency ld.so (libc
     * itself merely references the names), never an interposing library. */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (!libc)
        check(0, "dlopen(libc.so.6, RTLD_NOLOAD): %s", dlerror());
    const ptrdiff_t *g_off = dlsym(libc, "__rseq_offset");
    const unsigned *g_size = dlsym(libc, "__rseq_size");
#if !__has_include(<sys/rseq.h>)
    /* glibc before 2.35 defines none of the names: rseqrt's are the only ones. */
    check(!g_off && !g_size, "glibc %s defines no __rseq_offset/__rseq_size of its own", gnu_get_libc_version());
    return;
#endif
    Dl_info where;
    memset(&where, 0, sizeof where);
    const char *from = g_off && g_size && dladdr(g_off, &where) ? where.dli_fname : NULL;
    check(from && strstr(from, "ld-linux"), "glibc's own __rseq_offset/__rseq_size are ld.so's (%s)",
          from ? from : "not found");
    note("glibc's own: __rseq_offset %td, __rseq_size %u", *g_off, *g_size);
    if (expect_owner == 2) {
        check(*g_size == 0, "glibc did not register (its __rseq_size %u == 0): rseqrt owns it",
              *g_size);
    } else if (expect_registered) {
        check(*g_off == __rseq_offset && *g_size == __rseq_size,
              "values equal glibc's own (offset %td size %u)", *g_off, *g_size);
    } else {
        check(*g_size == 0, "glibc's own __rseq_size %u == 0", *g_size);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *mode = expect_env("RSEQRT_EXPECT");
    const char *owner_s = expect_env("RSEQRT_EXPECT_OWNER");
#if !__has_include(<sys/rseq.h>) && !defined(RSEQRT_LINKED)
    if (mode && !strcmp(mode, "noabi")) {
        /* Only a build whose glibc has no <sys/rseq.h> has weak references to take this path. */
        check(dlsym(RTLD_DEFAULT, "__rseq_offset") == NULL && dlsym(RTLD_DEFAULT, "__rseq_size") == NULL,
              "no object defines __rseq_offset or __rseq_size");
        check(&__rseq_offset == NULL && &__rseq_size == NULL && &__rseq_flags == NULL,
              "the program's references to __rseq_* are unbound");
        check(dlsym(RTLD_DEFAULT, "rseqrt_owner") == NULL, "rseqrt is not loaded");
        puts("PASS abi_registration (plain glibc without an rseq ABI, noabi)");
        return 0;
    }
#endif
    check(mode && (!strcmp(mode, "registered") || !strcmp(mode, "unregistered")),
          "RSEQRT_EXPECT is registered or unregistered (got %s)", mode ? mode : "nothing");
    expect_registered = !strcmp(mode, "registered");
    if (owner_s) {
        check(strlen(owner_s) == 1 && owner_s[0] >= '0' && owner_s[0] <= '2',
              "RSEQRT_EXPECT_OWNER is 0, 1 or 2 (got %s)", owner_s);
        expect_owner = owner_s[0] - '0';
    }

#ifdef RSEQRT_LINKED
    const char *build = "linked with rseqrt";
    int (*owner_fn)(void) = rseqrt_owner;
    check(expect_owner >= 0, "RSEQRT_EXPECT_OWNER is set (required when linked)");
    reg_len = rseqrt_area_length();
#else
    const char *build = "plain glibc";
    int (*owner_fn)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_owner");
    unsigned (*len_fn)(void) = (unsigned (*)(void))dlsym(RTLD_DEFAULT, "rseqrt_area_length");
    if (len_fn)
        reg_len = len_fn();
#endif
    main_area = abi_area();
    note("build: %s; expect %s, owner %d", build, mode, expect_owner);
    note("__rseq_offset %td, __rseq_size %u, __rseq_flags %u, tp %p, area %p, len %u",
         __rseq_offset, __rseq_size, __rseq_flags, thread_pointer(),
         (void *)main_area, reg_len);

    if (expect_owner < 0) {
        check(owner_fn == NULL, "rseqrt is not loaded (rseqrt_owner not found)");
    } else {
        check(owner_fn != NULL, "rseqrt is loaded (rseqrt_owner found)");
        int owner = owner_fn();
        check(owner == expect_owner, "rseqrt_owner() = %d (want %d)", owner, expect_owner);
    }

    if (expect_registered) {
        check(__rseq_size >= 20, "__rseq_size %u >= 20", __rseq_size);
        /* Every feature __rseq_size promises must lie inside the registered area. */
        check(__rseq_size <= reg_len, "__rseq_size %u <= registered length %u", __rseq_size,
              reg_len);
    }
    else
        check(__rseq_size == 0, "__rseq_size %u == 0", __rseq_size);
    check(__rseq_flags == 0, "__rseq_flags %u == 0", __rseq_flags);
    check(reg_len >= 32, "registration length %u >= 32", reg_len);
    check_values_everywhere();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        check(0, "sigaction(SIGUSR1): %s", strerror(errno));

    check_thread("main");
    if (getenv("ABI_EXEC_CHILD")) {
        printf("PASS abi_registration exec child (%s, %s)\n", build, mode);
        return 0;
    }
    check_fork("main", main_area);
    check_exec();
    check_thread_exit();
    check_c11_thread();

    struct worker workers[NTHREADS];
    if (pthread_barrier_init(&all_alive, NULL, NTHREADS + 1) != 0)
        check(0, "pthread_barrier_init failed");
    for (int i = 0; i < NTHREADS; i++) {
        workers[i].index = i;
        int rc = pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]);
        if (rc != 0)
            check(0, "pthread_create %d: %s", i, strerror(rc));
    }
    pthread_barrier_wait(&all_alive);
    for (int i = 0; i < NTHREADS; i++) {
        int distinct = workers[i].area != main_area;
        for (int j = 0; j < i; j++)
            distinct = distinct && workers[i].area != workers[j].area;
        check(distinct, "thread %d has its own area %p", i, (void *)workers[i].area);
    }
    pthread_barrier_wait(&all_alive);
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_join(workers[i].tid, NULL) != 0)
            check(0, "pthread_join %d failed", i);
    check(1, "%d threads ran and were joined", NTHREADS);

    /* After the threads: the main thread's registration is untouched. */
    check_thread("main again");

    printf("PASS abi_registration (%s, %s)\n", build, mode);
    return 0;
}
