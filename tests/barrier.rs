//! Behaviour tests for the rseq-clear barrier in the hard cases (README, "Documented behaviour
//! in the hard cases", and the guarantees around it).
//!
//! Each scenario is a C program run in its own child process (`c-abi-tests/barrier_cases.c` and
//! its siblings `lifecycle_cases.c`, `unknown_cases.c`, `sigmask_cases.c`; `barrier_preload.c`;
//! under `seccomp_exec.c membarrier ENOSYS|EPERM` for the runs without membarrier), in both
//! owner modes: glibc registers (`glibc-owner`) and `GLIBC_TUNABLES=glibc.pthread.rseq=0`
//! (rseqrt registers, `rseq=0`). Where it makes sense the scenario first runs with the plain
//! call and no barrier (`plain`), which the kernel must kill with SIGSEGV: that shows the
//! scenario really leaves a stale `rseq_cs` behind, so the `rseqrt` row can fail.
//!
//! One line is printed per scenario; a failure names the scenario and shows the child's
//! command, status and output. Children run one at a time (their timing checks and spinning
//! threads share 2 cores).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::scenario::{case, finish, go, Case, Expect, Mode, Suite, modes};
use support::{c_test_source, compile, compile_linked, seccomp_exec, stage, CompileSpec, Stage};

const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

struct Programs {
    stage: &'static Stage,
    /// barrier_cases.c: barriers at once, in a signal handler, under a lock, bad input, mixed, clear_all.
    cases: PathBuf,
    /// lifecycle_cases.c: threads exiting, fork, pthread_exit and cancel.
    lifecycle: PathBuf,
    /// unknown_cases.c: threads the barrier's ordinary means do not reach.
    unknown: PathBuf,
    /// sigmask_cases.c: the signal interposers.
    sigmask: PathBuf,
    preload_prog: PathBuf,
    seccomp: PathBuf,
    plugin: PathBuf,
    /// plugin_clone.c: starts threads with its own clone() call.
    plugin_clone: PathBuf,
    /// discard_cases.c: madvise/mprotect/shmdt (linked with rseqrt).
    discard: PathBuf,
    /// scan_cases.c: how the scan judges idle threads whose rseq_cs points elsewhere.
    scan: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let stage = stage();
        let src = c_test_source;
        let cases_program = |name: &str| compile_linked(name, &format!("{name}.c"));
        let cases = cases_program("barrier_cases");
        let lifecycle = cases_program("lifecycle_cases");
        let unknown = cases_program("unknown_cases");
        let sigmask = cases_program("sigmask_cases");
        let preload_prog = compile(
            &CompileSpec::new("barrier_preload", &[src("barrier_preload.c")]).libs(&["-pthread", "-ldl"]),
        );
        let plugin = compile(
            &CompileSpec::new("barrier_plugin_counter.so", &[src("plugin_counter.c")])
                .cflags(&["-fPIC", "-shared"]),
        );
        let plugin_clone = compile(
            &CompileSpec::new("barrier_plugin_clone.so", &[src("plugin_clone.c")]).cflags(&["-fPIC", "-shared"]),
        );
        let discard = compile_linked("discard_cases", "discard_cases.c");
        let scan = compile_linked("scan_cases", "scan_cases.c");
        let seccomp = seccomp_exec();
        Programs { stage, cases, lifecycle, unknown, sigmask, preload_prog, seccomp, plugin, plugin_clone, discard, scan }
    })
}

/// Runs are one child at a time, with the staged library on LD_LIBRARY_PATH.
fn suite() -> Suite {
    Suite { stage: programs().stage, timeout: CHILD_TIMEOUT }
}

/// The plain row and the rseqrt row of a cases program's scenario, in both owner modes.
fn both(scenario: &'static str) -> Case {
    case(scenario, &[])
}

/// The rseqrt row only.
fn rseqrt(scenario: &'static str) -> Case {
    case(scenario, &[]).rseqrt_only()
}

/// Runs a cases program's cases (each in both owner modes; the rseqrt row must report the
/// mode's owner) and fails the test if any of them failed.
fn run_cases(what: &str, program: &Path, cases: &[Case]) {
    suite().run_cases(what, program, cases);
}

/// 1. Several threads run rseqrt_munmap/rseqrt_clear/rseqrt_clear_all on different ranges
/// at once, over blocked, spinning and signal-blocking stale threads; 5 rounds. Every call
/// returns 0 and no stale thread's rseq_cs refers to a freed page afterwards.
#[test]
fn concurrent_barriers() {
    run_cases("concurrent barriers", &programs().cases, &[both("concurrent")]);
}

/// 2. Threads exit while a barrier runs: 8 threads with stale pointers exit while the
/// barrier waits (20 ms) for a thread that only glibc's broadcast reaches; then 300
/// short-lived threads run a critical section and exit while two threads run barriers
/// back to back. No crash, no deadlock, every barrier returns 0.
#[test]
fn threads_exiting_during_a_barrier() {
    run_cases("threads exiting during a barrier", &programs().lifecycle, &[both("exiting"), rseqrt("exiting-churn")]);
}

/// 3. One thread forks 20 times while another runs barriers continuously (over a thread
/// that keeps refreshing its stale pointer and two blocked stale threads). Each child finds
/// its thread registered at the parent's address, runs barriers and rseqrt_munmap under a
/// stale thread of its own, and exits 0. Plain: the child's munmap kills the child.
#[test]
fn fork_during_a_barrier() {
    run_cases("fork during a barrier", &programs().lifecycle, &[both("fork")]);
}

/// 4. A SIGUSR1 handler calls rseqrt_clear(RSEQRT_CLEAR_SIGNAL_SAFE): 0 when every thread is
/// known to rseqrt; -1 EAGAIN (nothing freed, the helper still refers) when a glibc
/// SIGEV_THREAD helper holds the stale pointer, which rseqrt_munmap outside the handler then
/// clears. Over memory the helper does not refer to, the signal-safe barrier returns 0: rseqrt
/// reads the helper's area through glibc's thread list and needs no broadcast.
#[test]
fn barrier_from_a_signal_handler() {
    run_cases("barrier from a signal handler", &programs().cases, &[both("sighandler"), both("sighandler-timer")]);
}

/// 5. The thread calling rseqrt_munmap holds a mutex standing for malloc's lock, three stale
/// threads wait for it (and one blocks every signal with the raw syscall, so glibc's
/// broadcast runs too): no deadlock; and the program's own malloc/calloc/realloc/free/
/// memalign interposers count zero calls during rseqrt_munmap (they count 3 of 3 on a probe).
#[test]
fn munmap_under_an_allocators_lock() {
    run_cases("munmap under an allocator's lock", &programs().cases, &[both("malloclock")]);
}

/// 6. Bad input: rseqrt_munmap gives munmap's -1 EINVAL (unaligned, length 0, overflow,
/// kernel address) and unmaps nothing; unknown flags and length 0 give EINVAL;
/// rseqrt_dlclose(bogus handle) returns what dlclose returns, with the same dlerror().
#[test]
fn bad_input_loses_nothing() {
    run_cases("bad input", &programs().cases, &[rseqrt("badinput")]);
}

/// 7. A failed barrier frees nothing. The unreachable thread is a raw clone() thread (not in
/// glibc's thread list, so glibc's SIGSETXID broadcast skips it), registered with
/// rseqrt_register_current_thread(), blocking every signal with the raw syscall: with
/// RSEQRT_TIMEOUT_MS=200, rseqrt_munmap fails with ETIMEDOUT after ~200 ms, the page stays
/// mapped with the descriptor intact; woken, the thread survives (plain munmap: SIGSEGV).
/// Also: a pthread that blocks the reserved signal with the raw syscall IS reached (glibc's
/// broadcast after 20 ms); once setresuid() is refused to every thread (seccomp), the broadcast
/// and the barrier over a second one fail (EPERM), the page stays mapped: the broadcast, not the
/// time, is what reached the first.
#[test]
fn failed_barrier_frees_nothing() {
    run_cases(
        "failed barrier",
        &programs().unknown,
        &[
            both("unreachable").env("RSEQRT_TIMEOUT_MS", "200"),
            both("rawmask"),
            // A raw clone() thread unknown to both rseqrt and glibc is found and signalled,
            // also when started with __clone(), glibc's other name for clone().
            both("rawunknown"),
            both("rawunknown-__clone"),
            // ... and when a plugin loaded with RTLD_DEEPBIND starts it with the C library's
            // clone(), which rseqrt's interposer never sees.
            case("rawunknown-deepbind", &[&programs().plugin_clone.display().to_string()]),
        ],
    );
}

/// 7b. A thread glibc starts behind rseqrt's back (glibc's pthread_create reached with dlvsym,
/// glibc owner): rseqrt's registry does not know it, glibc's thread count shows it, and each of
/// 200 barriers clears its stale pointer while other threads keep starting and exiting (the
/// window in which the two counts are compared). Plain: SIGSEGV when the thread wakes.
/// Also: a thread started by the C library of a second link-map namespace (dlmopen of
/// libc.so.6), whose thread count rseqrt does not read: cleared (plain: SIGSEGV).
#[test]
fn thread_started_behind_rseqrts_back() {
    let glibc_owner = |c: Case| Case { plain_in: &[Mode::Glibc], modes: &[Mode::Glibc], ..c };
    run_cases("thread started behind rseqrt's back", &programs().unknown, &[glibc_owner(both("bypass")), glibc_owner(both("namespace"))]);
}

/// 7c. The unknown-thread check costs no system call when glibc's thread count shows every
/// thread known, and gives way to the fstat() thread count when it must: a seccomp filter traps
/// the calling thread's fstat calls and counts them. 8 idle known threads: 20 barriers, none;
/// a thread glibc started behind rseqrt's back: each barrier tries one; after it exited: none
/// again; after a raw clone() thread has existed: each barrier tries one.
#[test]
fn unknown_thread_check_spares_the_system_call() {
    run_cases("unknown-thread check", &programs().unknown, &[rseqrt("census")]);
}

/// 8. No membarrier: blocked, signal-blocking and spinning stale threads (descriptor in a
/// page, and critical sections in a plugin), then rseqrt_munmap + rseqrt_dlclose, under a
/// seccomp filter answering ENOSYS (and EPERM) to membarrier: signals alone suffice.
#[test]
fn no_membarrier() {
    let p = programs();
    let plugin = p.plugin.display().to_string();
    let cases = p.cases.display().to_string();
    let mut f = Vec::new();
    for &mode in modes() {
        f.extend(go(suite().scenario(
            format!("mixed plain, membarrier ENOSYS [{}]", mode.name()),
            &p.seccomp,
            &["membarrier", "ENOSYS", &cases, "mixed", "plain", &plugin],
            mode,
            Expect::Segv,
        )));
        f.extend(go(suite().scenario(
            format!("mixed rseqrt, membarrier available [{}]", mode.name()),
            &p.cases,
            &["mixed", "rseqrt", &plugin],
            mode,
            Expect::Exit(0),
        )
        .owner(mode.owner())));
        for (errno, text) in [("ENOSYS", "errno 38"), ("EPERM", "errno 1")] {
            let r = suite().scenario(
                format!("mixed rseqrt, membarrier {errno} [{}]", mode.name()),
                &p.seccomp,
                &["membarrier", errno, &cases, "mixed", "rseqrt", &plugin],
                mode,
                Expect::Exit(0),
            )
            .owner(mode.owner())
            .check(move |res| {
                let want = format!("membarrier(QUERY) = -1, {text}");
                (!res.stdout.contains(&want)).then(|| format!("the child did not see membarrier refused ({want})"))
            });
            f.extend(go(r));
        }
    }
    finish("no membarrier", f);
}

/// Issue 11, item 3: an idle thread whose descriptor lies in the program (memory that stays
/// mapped) is judged without a system call; one in anonymous memory with `process_vm_readv`,
/// failing closed when that is refused (`seccomp_exec process_vm_readv EPERM`): there the thread
/// is signalled and its kernel clears its field, while the program's thread keeps its own.
#[test]
fn descriptors_in_the_program_cost_no_system_call() {
    let p = programs();
    let scan = p.scan.display().to_string();
    let mut f = Vec::new();
    for &mode in modes() {
        f.extend(go(suite()
            .scenario(format!("permanent, process_vm_readv open [{}]", mode.name()), &p.scan, &["permanent", "rseqrt", "open"], mode, Expect::Exit(0))
            .owner(mode.owner())));
        f.extend(go(suite()
            .scenario(
                format!("permanent, process_vm_readv EPERM [{}]", mode.name()),
                &p.seccomp,
                &["process_vm_readv", "EPERM", &scan, "permanent", "rseqrt", "filtered"],
                mode,
                Expect::Exit(0),
            )
            .owner(mode.owner())));
    }
    finish("descriptors in the program", f);
}

/// Issue 11: `rseqrt_dlclose()` of one plugin does not signal a thread that ran a critical
/// section in another plugin whose `dlopen()` handle is still open (glibc never unloads it then;
/// rseqrt reads glibc's open count, `src/opencount.rs`). The previous build signals it.
#[test]
fn dlclose_leaves_objects_with_open_handles_alone() {
    let p = programs();
    let (counter, other) = (p.plugin.display().to_string(), p.plugin_clone.display().to_string());
    run_cases("open handles", &p.scan, &[case("openhandle", &[&counter, &other]).rseqrt_only()]);
}

/// Issue 11, item 3: an idle thread whose descriptor lies in a plugin loaded after startup and
/// kept open is judged without a system call where glibc has `_dl_find_object()` (2.35+), by
/// `rseqrt_munmap()` and by `rseqrt_dlclose()` of another plugin, also with `process_vm_readv`
/// refused (a seccomp filter the case installs after a first barrier); before 2.35 it fails
/// closed there (cleared). Closing its own plugin clears it on every
/// glibc. The previous build cleared it whenever `process_vm_readv` was refused.
#[test]
fn descriptors_in_dlopened_objects_cost_no_system_call() {
    let p = programs();
    let (counter, other) = (p.plugin.display().to_string(), p.plugin_clone.display().to_string());
    run_cases(
        "descriptors in dlopen()ed objects",
        &p.scan,
        &[case("dlopened", &["open", &counter, &other]).rseqrt_only(), case("dlopened", &["filtered", &counter, &other]).rseqrt_only()],
    );
}

/// A `fork()` while another thread reads a descriptor in a loaded object with a plain load
/// (`src/loaded.rs`'s reader count): each child, with `process_vm_readv` refused, unloads another
/// plugin and still reads its own descriptor with a plain load. Without the fork-child reset of
/// the counts, 57 of 300 children waited 2 s in that unload, turned the plain reads off and then
/// cleared their field (the descriptor unreadable, so referring); now 26 of 300 with only the
/// reader count's reset taken out. A child switched out after its critical section tries again,
/// since the kernel clears the field then too (1 child in 300 under a loaded `make check`).
/// Skipped, saying so, before glibc 2.35 (no plain reads there).
#[test]
fn fork_during_a_plain_read_of_a_loaded_object() {
    if let Some(case) = plain_read_case("forkreader") {
        run_cases("fork during a plain read", &programs().scan, &[case]);
    }
}

/// The rseqrt row of a `scan_cases` scenario about plain reads of loaded objects (arguments: the
/// counter plugin and its clone), or `None`, skipped saying so, before glibc 2.35: no
/// `_dl_find_object()` there, so rseqrt makes no plain reads.
fn plain_read_case(scenario: &'static str) -> Option<Case> {
    let (a, b) = support::scenario::glibc_version();
    if (a, b) < (2, 35) {
        support::skip(&format!("{scenario}: glibc {a}.{b} has no _dl_find_object() (2.35+), so rseqrt makes no plain reads"));
        return None;
    }
    let p = programs();
    let (counter, other) = (p.plugin.display().to_string(), p.plugin_clone.display().to_string());
    Some(case(scenario, &[&counter, &other]).rseqrt_only())
}

/// An unload that waits for a reader that never leaves gives up after its bound (`src/loaded.rs`,
/// 2 s) and turns the plain reads off, instead of hanging: in a `_Fork()` child (no fork handler
/// resets the reader count it copied) of a process whose other thread keeps reading a loaded
/// object's descriptor, `rseqrt_dlclose()` returns, and with `process_vm_readv` refused the next
/// barrier fails closed (`scan_cases forkgiveup`; children are made until one copied a reader in
/// flight). With the bound taken out, that child's unload never returns (killed after 15 s).
/// Skipped, saying so, before glibc 2.35.
#[test]
fn unload_gives_up_on_a_reader_left_in_flight() {
    if let Some(case) = plain_read_case("forkgiveup") {
        run_cases("unload gives up", &programs().scan, &[case.env("RSEQRT_TIMEOUT_MS", "200")]);
    }
}

/// 9. Signal interposers: sigfillset + pthread_sigmask / sigprocmask leave the reserved
/// signal unblocked (SigBlk); sigaction() and signal() on its number set and report the
/// program's own disposition while the kernel keeps rseqrt's handler (SigCgt), and a barrier
/// still reaches a blocked thread with that disposition SIG_IGN; sigwait/sigwaitinfo/sigtimedwait
/// on a full set never return it while a barrier signals the waiting thread (plain: that
/// waiter's thread is killed); RSEQRT_SIGNAL=N selects N.
#[test]
fn signal_interposers() {
    run_cases(
        "signal interposers",
        &programs().sigmask,
        &[
            case("sigmask", &["auto"]),
            case("sigmask", &["40"]).rseqrt_only().env("RSEQRT_SIGNAL", "40"),
            case("sigmask", &["36"]).rseqrt_only().env("RSEQRT_SIGNAL", "36"),
            rseqrt("signal-fn"),
        ],
    );
}

/// 10. The preload shim: mremap that moves (MREMAP_FIXED, or MAYMOVE growth that cannot
/// happen in place) or shrinks away the page holding a descriptor, and mmap(MAP_FIXED) over
/// it (read-write or PROT_NONE), crash plain and survive under LD_PRELOAD.
#[test]
fn preload_mremap_and_mmap_fixed() {
    // Plain: glibc's own registration; under rseq=0 nothing registers without rseqrt, so the
    // baseline preloads librseqrt.so, which interposes neither call.
    suite().run_preload(
        "preload mremap/mmap",
        &programs().preload_prog,
        &[&["mremap-move"], &["mremap-grow"], &["mremap-shrink"], &["mmap-fixed"], &["mmap-fixed-none"]],
    );
}

/// 11. rseqrt_clear_all: afterwards every registered thread's rseq_cs is 0, read from outside
/// and by each thread itself after waking (blocked, signal-blocking, spinning threads), and a
/// plain munmap of the memory their descriptors were in is safe (without it: SIGSEGV).
#[test]
fn clear_all_then_plain_munmap() {
    run_cases("clear_all", &programs().cases, &[both("clearall")]);
}

/// 12. Threads started through rseqrt's pthread_create trampoline that end by returning,
/// pthread_exit(), deferred or asynchronous cancellation: join values, cleanup handlers and
/// thread-specific data destructors as usual; their stacks (holding their areas) are then
/// unmapped and later barriers (clear_all, munmap of the page their rseq_cs referred to,
/// new threads in reused slots) succeed without touching the dead threads' areas.
#[test]
fn pthread_exit_and_cancel_through_the_trampoline() {
    run_cases(
        "pthread_exit / pthread_cancel",
        &programs().lifecycle,
        &[
            case("exitcancel", &["return"]).rseqrt_only(),
            case("exitcancel", &["exit"]).rseqrt_only(),
            case("exitcancel", &["cancel"]).rseqrt_only(),
            case("exitcancel", &["async"]).rseqrt_only(),
        ],
    );
}

/// 11. The calls that take memory away without unmapping it (issue 10; the crash suite shows
/// each one's crash and survival): a thread no barrier can reach (raw clone(), every signal
/// blocked, as in 7) holds an rseq_cs into a region. madvise() with advice that keeps the
/// contents (WILLNEED, NORMAL, COLD), mprotect() that keeps them readable, and length 0 return
/// 0 at once (no barrier); bad arguments fail with the system call's own errno; each call that
/// takes the contents away (MADV_DONTNEED, MADV_FREE, MADV_REMOVE, PROT_NONE, PROT_EXEC, shmdt)
/// fails with ETIMEDOUT after RSEQRT_TIMEOUT_MS=200 and leaves the region as it was; once the
/// thread is gone it succeeds. Through the C API and through the preload shim's plain calls.
#[test]
fn discarding_calls_fail_safe_and_pass_the_rest_through() {
    let p = programs();
    let preload = p.stage.lib("rseqrt/librseqrt_preload.so").display().to_string();
    let mut f = Vec::new();
    for kind in ["madvise-dontneed", "madvise-free", "madvise-remove", "mprotect-none", "mprotect-exec", "shmdt"] {
        for how in ["api", "shim"] {
            for &mode in modes() {
                let name = format!("failsafe {kind} {how} [{}]", mode.name());
                let mut r = suite()
                    .scenario(name, &p.discard, &["failsafe", "rseqrt", kind, how], mode, Expect::Exit(0))
                    .env("RSEQRT_TIMEOUT_MS", "200")
                    .owner(mode.owner());
                if how == "shim" {
                    r = r.env("LD_PRELOAD", &preload);
                }
                f.extend(go(r));
            }
        }
    }
    finish("discarding calls", f);
}

/// shmdt() names only an address, and the kernel detaches every fragment of the segment found
/// from it: here the segment's first page was unmapped and its third mprotect()ed apart, and
/// the descriptor lives in the fourth. rseqrt_shmdt() finds the fragments in /proc/self/maps;
/// plain shmdt(): SIGSEGV when the stale thread wakes.
#[test]
fn shmdt_of_a_fragmented_segment() {
    suite().run_cases("fragmented segment", &programs().discard, &[both("shm-fragments")]);
}
