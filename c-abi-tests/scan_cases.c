/* scan_cases: how the barrier's scan judges idle threads whose rseq_cs points elsewhere (issue
 * 11, item 3: no system call on the common path).
 *
 *   scan_cases permanent rseqrt open|filtered
 *   scan_cases openhandle rseqrt COUNTER_PLUGIN OTHER_PLUGIN
 *   scan_cases dlopened rseqrt open|filtered COUNTER_PLUGIN OTHER_PLUGIN
 *   scan_cases forkreader rseqrt COUNTER_PLUGIN OTHER_PLUGIN
 *   scan_cases forkgiveup rseqrt COUNTER_PLUGIN OTHER_PLUGIN
 *
 * Two threads run one critical section and block in read(): "program" with the descriptor in
 * this program's own .data (memory that stays mapped for the life of the process), "anonymous"
 * with a copy of it in an anonymous page (memory that could be gone). Then rseqrt_munmap() of
 * an unrelated fresh page, which neither refers to.
 *   open      process_vm_readv works: both are judged not referring; neither is signalled, so
 *             both rseq_cs values are unchanged.
 *   filtered  run under `seccomp_exec process_vm_readv EPERM`: the anonymous descriptor cannot
 *             be read, so it counts as referring (fail closed) and that thread's kernel clears
 *             its rseq_cs (signalled); the program's descriptor is read with a plain load, no
 *             system call, so that thread keeps its rseq_cs. Before the plain load, both were
 *             cleared here.
 *
 * openhandle: a thread runs a critical section in COUNTER_PLUGIN, dlopen()ed and kept open, and
 * blocks in read(); then OTHER_PLUGIN is dlopen()ed and closed with rseqrt_dlclose(). The open
 * handle keeps COUNTER_PLUGIN loaded whatever that close does (glibc's dlclose keeps every object
 * with an open handle), so the barrier must not signal the thread: its rseq_cs stays unchanged.
 * Before rseqrt read glibc's open count, every object loaded after startup counted as one the
 * close might unmap, and the thread was signalled (its kernel cleared the field).
 *
 * dlopened: like openhandle, with process_vm_readv refused to every thread (filtered: a seccomp
 * filter installed after one first rseqrt_munmap(), which learns the plugin's segments) or not
 * (open): the thread's descriptor lies in COUNTER_PLUGIN, loaded after startup and kept open.
 * With glibc's _dl_find_object() (2.35+) rseqrt reads it with a plain load (src/loaded.rs), so
 * neither rseqrt_munmap() of a fresh page nor rseqrt_dlclose() of OTHER_PLUGIN signals the
 * thread, even with process_vm_readv refused. glibc before 2.35 has no such function: the descriptor is read
 * with process_vm_readv, and refused, it counts as referring (fail closed): the thread's kernel
 * clears its field. Either way, rseqrt_dlclose() of COUNTER_PLUGIN itself must clear it (the
 * descriptor lies in the memory being freed: judged without reading it). Before the plain load,
 * the filtered case cleared the field on every glibc.
 *
 * forkreader: fork() while another thread is reading a descriptor in COUNTER_PLUGIN with a plain
 * load (inside rseqrt's reader count, src/loaded.rs): the thread loops rseqrt_clear() over an
 * unrelated range while its rseq_cs points into the plugin. Each child, alone, refuses
 * process_vm_readv to itself, closes OTHER_PLUGIN with rseqrt_dlclose() (an unload, which waits
 * for readers) and then clears an unrelated range while its own rseq_cs points into the kept
 * plugin: the plain read must still be on, so its field stays. Without the fork-child reset,
 * a child that copied a reader in flight waits 2 s in that unload and then turns the plain
 * reads off for good: the descriptor can then only be read with process_vm_readv, which is
 * refused, so it counts as referring and the field is cleared (a child switched out after its
 * critical section tries again: the kernel clears the field then too). glibc before 2.35: no
 * _dl_find_object(), no plain reads: exit 4 (the test does not run it there).
 *
 * forkgiveup: see fork_give_up() below.
 *
 * Exit: 0 passed; 1 a check failed; 2 setup; 3 no registered rseq area; 4 forkreader or
 * forkgiveup without _dl_find_object() (or _Fork()). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "seccomp_filter.h"
#include "test_common.h"

struct idle {
    const char *name;
    const struct rseq_cs_desc *desc;
    int (*plugin_fn)(long *); /* runs the critical section instead of desc, when set */
    int pipe[2];
    pid_t tid;
    struct rseq_cs_area *_Atomic area;
    atomic_int ready;
    pthread_t thread;
};

static void *idle_main(void *arg)
{
    struct idle *t = arg;
    t->tid = gettid_();
    int cpu = t->plugin_fn ? t->plugin_fn(counters) : rseq_cs_run(counters, t->desc, rseq_cs_own_code());
    atomic_store(&t->area, rseq_cs_area());
    atomic_store(&t->ready, cpu < 0 ? -1 : 1);
    char b;
    while (read(t->pipe[0], &b, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static void idle_start(struct idle *t, const char *name, const struct rseq_cs_desc *desc)
{
    t->name = name;
    t->desc = desc;
    if (pipe(t->pipe) != 0)
        die(2, "pipe: %s", strerror(errno));
    if ((errno = pthread_create(&t->thread, NULL, idle_main, t)) != 0)
        die(2, "pthread_create: %s", strerror(errno));
    while (!atomic_load(&t->ready))
        sched_yield();
    if (atomic_load(&t->ready) < 0)
        die(3, "%s: no registered rseq area", name);
    wait_sleeping(t->tid, name);
}

static uint64_t idle_cs(struct idle *t)
{
    return __atomic_load_n(&atomic_load(&t->area)->rseq_cs, __ATOMIC_SEQ_CST);
}

static void idle_stop(struct idle *t)
{
    if (write(t->pipe[1], "q", 1) != 1)
        die(2, "write: %s", strerror(errno));
    pthread_join(t->thread, NULL);
}

/* dlopen()s PLUGIN, keeps the handle, and starts an idle thread that ran its critical section
 * once (rseq_cs then points into the plugin); returns the handle. */
static void *start_plugin_user(const char *plugin, struct idle *user, uint64_t *before)
{
    void *kept = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!kept)
        die(2, "dlopen %s: %s", plugin, dlerror());
    *user = (struct idle){.plugin_fn = (int (*)(long *))dlsym(kept, "plugin_inc")};
    if (!user->plugin_fn)
        die(2, "dlsym plugin_inc: %s", dlerror());
    idle_start(user, "plugin user", NULL);
    *before = idle_cs(user);
    if (!*before)
        die(9, "inconclusive: the thread's rseq_cs is already 0");
    return kept;
}

static void open_handle(const char *counter_plugin, const char *other_plugin)
{
    struct idle user;
    uint64_t before;
    void *kept = start_plugin_user(counter_plugin, &user, &before);
    for (int round = 0; round < 3; round++) {
        void *other = dlopen(other_plugin, RTLD_NOW | RTLD_LOCAL);
        if (!other)
            die(2, "dlopen %s: %s", other_plugin, dlerror());
        check(rseqrt_dlclose(other) == 0, "rseqrt_dlclose of the other plugin = 0 (round %d)", round);
    }
    check(idle_cs(&user) == before, "the thread in the plugin kept open: not signalled, rseq_cs unchanged (%#llx)",
          (unsigned long long)idle_cs(&user));
    idle_stop(&user);
    check(rseqrt_dlclose(kept) == 0, "rseqrt_dlclose of the kept plugin = 0");
}

static int (*_Atomic forkreader_inc)(long *);
static atomic_int forkreader_stop;
static atomic_long forkreader_clears;
static char forkreader_unrelated[4096] __attribute__((aligned(4096)));

static void *forkreader_loop(void *arg)
{
    (void)arg;
    while (!atomic_load(&forkreader_stop)) {
        atomic_load(&forkreader_inc)(counters); /* rseq_cs -> the plugin's descriptor */
        if (rseqrt_clear(forkreader_unrelated, sizeof forkreader_unrelated, 0) != 0)
            die(2, "rseqrt_clear: %s", strerror(errno));
        atomic_fetch_add(&forkreader_clears, 1);
    }
    return NULL;
}

/* Starts the thread that loops barriers reading COUNTER_PLUGIN's descriptor with plain loads (its
 * rseq_cs points there), once it has run 1,000 of them. */
static pthread_t start_reader(const char *counter_plugin)
{
    void *kept = dlopen(counter_plugin, RTLD_NOW | RTLD_LOCAL);
    if (!kept)
        die(2, "dlopen %s: %s", counter_plugin, dlerror());
    forkreader_inc = (int (*)(long *))dlsym(kept, "plugin_inc");
    if (!forkreader_inc)
        die(2, "dlsym plugin_inc: %s", dlerror());
    pthread_t t;
    if ((errno = pthread_create(&t, NULL, forkreader_loop, NULL)) != 0)
        die(2, "pthread_create: %s", strerror(errno));
    while (atomic_load(&forkreader_clears) < 1000)
        sched_yield();
    return t;
}

/* In a forked child: refuses process_vm_readv to itself, then loads OTHER_PLUGIN and unloads it
 * with rseqrt_dlclose() (an unload, which waits for readers); exit 2 if any of that fails. */
static void child_unloads(const char *other_plugin)
{
    if (refuse_syscall(SYS_process_vm_readv, EPERM, 0) != 0)
        _exit(2);
    void *other = dlopen(other_plugin, RTLD_NOW | RTLD_LOCAL);
    if (!other || rseqrt_dlclose(other) != 0)
        _exit(2);
}

/* Context switches of the calling thread so far. */
static long switches(void)
{
    struct rusage u;
    if (getrusage(RUSAGE_THREAD, &u) != 0)
        _exit(2);
    return u.ru_nvcsw + u.ru_nivcsw;
}

/* The child's check: its own rseq_cs points into the kept plugin while it clears an unrelated
 * range. The kernel also clears the field, at the thread's next return to user space after it
 * was switched out (its instruction pointer is then outside the critical section), which a
 * loaded machine does now and then (1 child in 300 under make check). So an attempt in which the
 * thread was switched out proves nothing and is made again; a field cleared without a switch
 * was cleared by rseqrt. Without the fork-child reset every attempt clears (the plain reads are
 * off for good). Exit: 0 kept at the first attempt, 5 kept after a switched-out attempt, 1
 * cleared by rseqrt or switched out every time. */
static int forkreader_child_keeps_its_field(void)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        long switched = switches();
        forkreader_inc(counters);
        uint64_t before = rseq_cs_current();
        if (rseqrt_clear(forkreader_unrelated, sizeof forkreader_unrelated, 0) != 0)
            _exit(2);
        uint64_t after = rseq_cs_current();
        if (before != 0 && after == before)
            return attempt == 0 ? 0 : 5;
        if (switches() == switched)
            return 1;
    }
    return 1;
}

static void fork_reader(const char *counter_plugin, const char *other_plugin, int forks)
{
    if (!dlsym(RTLD_DEFAULT, "_dl_find_object"))
        die(4, "glibc has no _dl_find_object(), so rseqrt makes no plain reads to reset (the test skips it)");
    pthread_t t = start_reader(counter_plugin);
    int cleared = 0, failed = 0, retried = 0;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die(2, "fork: %s", strerror(errno));
        if (pid == 0) {
            child_unloads(other_plugin);
            _exit(forkreader_child_keeps_its_field());
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) == 2)
            failed++;
        else if (WEXITSTATUS(status) == 1)
            cleared++;
        else if (WEXITSTATUS(status) == 5)
            retried++;
    }
    atomic_store(&forkreader_stop, 1);
    pthread_join(t, NULL);
    printf("%d forks during %ld barriers reading the plugin's descriptor; %d children were switched out "
           "and tried again\n", forks, atomic_load(&forkreader_clears), retried);
    check(failed == 0, "no child failed to set up (%d did)", failed);
    check(cleared == 0, "every child still read the descriptor with a plain load: its field stayed (%d cleared theirs)",
          cleared);
}

/* Whether process_vm_readv is refused, as the scenario says it must be. */
static int readv_filtered(const char *how)
{
    int filtered = !strcmp(how, "filtered");
    errno = 0;
    long rc = syscall(SYS_process_vm_readv, getpid(), NULL, 0, NULL, 0, 0);
    printf("process_vm_readv(nothing) = %ld, errno %d\n", rc, rc ? errno : 0);
    if (filtered != (rc == -1 && errno == EPERM))
        die(2, "process_vm_readv is %s, the scenario expects it %s", rc == -1 && errno == EPERM ? "refused" : "open",
            filtered ? "refused" : "open");
    return filtered;
}

static void dlopened(const char *counter_plugin, const char *other_plugin, int filtered)
{
    int plain = dlsym(RTLD_DEFAULT, "_dl_find_object") != NULL;
    int kept_expected = plain || !filtered;
    printf("glibc %s _dl_find_object: with process_vm_readv %s, expect the thread %s\n", plain ? "has" : "has no",
           filtered ? "refused" : "open", kept_expected ? "left alone" : "cleared (fail closed)");
    struct idle user;
    uint64_t before;
    void *kept = start_plugin_user(counter_plugin, &user, &before);
    void *fresh = map_pages(1);
    check(rseqrt_munmap(fresh, pagesz) == 0, "first rseqrt_munmap of a fresh page = 0");
    check(idle_cs(&user) == before, "the first barrier left the thread alone (process_vm_readv still open)");
    if (filtered && refuse_syscall(SYS_process_vm_readv, EPERM, 1) != 0)
        die(2, "seccomp filter: %s", strerror(errno));
    readv_filtered(filtered ? "filtered" : "open");
    fresh = map_pages(1);
    check(rseqrt_munmap(fresh, pagesz) == 0, "rseqrt_munmap of a fresh page = 0");
    uint64_t after_munmap = idle_cs(&user);
    void *other = dlopen(other_plugin, RTLD_NOW | RTLD_LOCAL);
    if (!other)
        die(2, "dlopen %s: %s", other_plugin, dlerror());
    check(rseqrt_dlclose(other) == 0, "rseqrt_dlclose of the other plugin = 0");
    uint64_t after_dlclose = idle_cs(&user);
    if (kept_expected) {
        check(after_munmap == before, "rseqrt_munmap: the thread was not signalled, rseq_cs unchanged (%#llx)",
              (unsigned long long)after_munmap);
        check(after_dlclose == before, "rseqrt_dlclose of the other plugin: not signalled, rseq_cs unchanged (%#llx)",
              (unsigned long long)after_dlclose);
    } else {
        check(after_munmap == 0, "rseqrt_munmap: the descriptor could not be read, so the thread's kernel cleared "
              "its rseq_cs: %#llx", (unsigned long long)after_munmap);
    }
    /* The plugin's own close: the thread's descriptor lies in the memory freed. Stale again first
     * (the fail-closed case cleared it). */
    idle_stop(&user);
    struct idle again = {.plugin_fn = user.plugin_fn};
    idle_start(&again, "plugin user, again", NULL);
    check(idle_cs(&again) != 0, "a thread ran the plugin's critical section again");
    check(rseqrt_dlclose(kept) == 0, "rseqrt_dlclose of the plugin the thread refers to = 0");
    check(idle_cs(&again) == 0, "its kernel cleared the thread's rseq_cs before the plugin was unmapped: %#llx",
          (unsigned long long)idle_cs(&again));
    idle_stop(&again);
}

/* forkgiveup: the child of _Fork() (glibc 2.34+), which runs no fork handler, keeps a reader
 * count copied in flight. Its unload (rseqrt_dlclose of OTHER_PLUGIN) then waits for a reader that
 * never leaves: it must give up after its bound (2 s, src/loaded.rs) and turn the plain reads off,
 * not hang. Children are made one at a time until one shows that: with process_vm_readv refused,
 * its next barrier can no longer read the descriptor the parent's reading thread held (its copy in
 * the registry, a thread that does not exist in the child), so the barrier fails (ETIMEDOUT after
 * RSEQRT_TIMEOUT_MS) instead of returning 0. A child still stuck after 15 s is killed and fails
 * the test. Exit 4: no _Fork() or no _dl_find_object() (glibc before 2.35). */
static void fork_give_up(const char *counter_plugin, const char *other_plugin)
{
    pid_t (*fork_raw)(void) = (pid_t (*)(void))dlsym(RTLD_DEFAULT, "_Fork");
    if (!fork_raw || !dlsym(RTLD_DEFAULT, "_dl_find_object"))
        die(4, "glibc has no _Fork() or no _dl_find_object() (2.34 and 2.35): nothing to test");
    pthread_t t = start_reader(counter_plugin);
    int children = 0, kept_on = 0, gave_up = 0, hung = 0, failed = 0;
    while (children < 200 && !gave_up && !hung && !failed) {
        children++;
        pid_t pid = fork_raw();
        if (pid < 0)
            die(2, "_Fork: %s", strerror(errno));
        if (pid == 0) {
            child_unloads(other_plugin);
            int rc = rseqrt_clear(forkreader_unrelated, sizeof forkreader_unrelated, 0);
            _exit(rc == 0 ? 0 : errno == ETIMEDOUT ? 1 : 2);
        }
        int status = 0;
        double t0 = now_ms();
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (now_ms() - t0 > 15000) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                hung++;
                break;
            }
            sleep_ms(5);
        }
        if (hung)
            break;
        if (!WIFEXITED(status) || WEXITSTATUS(status) == 2)
            failed++;
        else if (WEXITSTATUS(status) == 1)
            gave_up++;
        else
            kept_on++;
    }
    atomic_store(&forkreader_stop, 1);
    pthread_join(t, NULL);
    printf("%d _Fork() children: %d kept the plain reads, %d gave up on a reader left in flight\n", children, kept_on,
           gave_up);
    check(hung == 0, "no child's unload waited for ever for the reader it copied (%d killed after 15 s)", hung);
    check(failed == 0, "no child failed to set up (%d did)", failed);
    check(gave_up == 1, "a child that copied a reader in flight gave up waiting after its bound and turned the plain "
          "reads off (its next barrier failed closed)");
}

int main(int argc, char **argv)
{
    cases_start(argc, argv, "open|filtered [COUNTER_PLUGIN OTHER_PLUGIN] | COUNTER_PLUGIN OTHER_PLUGIN");
    if (!strcmp(scenario, "openhandle") && use_rseqrt && argc == 5) {
        open_handle(argv[3], argv[4]);
        printf("survived\n");
        return 0;
    }
    if (!strcmp(scenario, "forkreader") && use_rseqrt && argc == 5) {
        fork_reader(argv[3], argv[4], 300);
        printf("survived\n");
        return 0;
    }
    if (!strcmp(scenario, "forkgiveup") && use_rseqrt && argc == 5) {
        fork_give_up(argv[3], argv[4]);
        printf("survived\n");
        return 0;
    }
    if (!strcmp(scenario, "dlopened") && use_rseqrt && argc == 6) {
        dlopened(argv[4], argv[5], !strcmp(argv[3], "filtered"));
        printf("survived\n");
        return 0;
    }
    if (strcmp(scenario, "permanent") || !use_rseqrt || argc != 4 || (strcmp(argv[3], "open") && strcmp(argv[3], "filtered")))
        die(2, "usage: %s permanent rseqrt open|filtered | openhandle rseqrt COUNTER_PLUGIN OTHER_PLUGIN | dlopened rseqrt "
            "open|filtered COUNTER_PLUGIN OTHER_PLUGIN", argv[0]);
    int filtered = readv_filtered(argv[3]);

    struct idle program = {0}, anonymous = {0};
    idle_start(&program, "program", rseq_cs_own_desc());
    idle_start(&anonymous, "anonymous", desc_page());
    uint64_t program_cs = idle_cs(&program), anonymous_cs = idle_cs(&anonymous);
    if (!program_cs || !anonymous_cs)
        die(9, "inconclusive: an idle thread's rseq_cs is already 0");

    void *fresh = map_pages(1);
    check(rseqrt_munmap(fresh, pagesz) == 0, "rseqrt_munmap of a fresh page = 0");
    check(idle_cs(&program) == program_cs, "program: its descriptor (in this program's .data) was read without a "
          "system call and found not referring: rseq_cs unchanged (%#llx)", (unsigned long long)idle_cs(&program));
    if (filtered)
        check(idle_cs(&anonymous) == 0, "anonymous: its descriptor could not be read (process_vm_readv refused), "
              "so it counted as referring and the thread's kernel cleared its rseq_cs: %#llx",
              (unsigned long long)idle_cs(&anonymous));
    else
        check(idle_cs(&anonymous) == anonymous_cs, "anonymous: read with process_vm_readv, not referring: rseq_cs "
              "unchanged (%#llx)", (unsigned long long)idle_cs(&anonymous));
    idle_stop(&program);
    idle_stop(&anonymous);
    printf("survived\n");
    return 0;
}
