//! Regression tests for the bugs a review found (each fixed in `src/`): one test per bug, each
//! scenario a C program run in its own child process (`c-abi-tests/regress_cases.c` and its
//! siblings `regress_unload_cases.c`, `regress_sigmask_cases.c`, linked with rseqrt;
//! `regress_preload.c`, an unmodified program run under the preload shim), in both owner
//! modes: glibc registers (`glibc-owner`) and `GLIBC_TUNABLES=glibc.pthread.rseq=0` (rseqrt
//! registers, `rseq=0`). Where it proves that the scenario really leaves a stale `rseq_cs`
//! behind, a `plain` row (munmap()/dlclose(), no barrier) must die by the kernel's SIGSEGV;
//! the `rseqrt` (or `preload`) row must exit 0.
//!
//! Each of these tests failed on the library before the fixes. To see that, point the tests at
//! an older staged build: `RSEQRT_STAGE=/path/to/old/build/stage cargo test --release
//! --test regress` (the programs are then compiled and run against that tree).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::scenario::{case, finish, go, Case, Expect, Mode, Suite, modes};
use support::{c_test_source, compile, compile_linked, seccomp_exec, stage, tests_build_dir, CompileSpec, Stage};

const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

struct Programs {
    stage: &'static Stage,
    /// regress_reldep_a.so binds to regress_reldep_b.so at relocation time, not by DT_NEEDED.
    reldep_a: PathBuf,
    reldep_b: PathBuf,
    /// examples/unload.c referencing dlclose@GLIBC_2.2.5, as a pre-2.34 binary does.
    old_dlclose: PathBuf,
    /// examples/plugin.c.
    example_plugin: PathBuf,
    /// regress_cases.c, linked with rseqrt: threads a barrier must reach or rseqrt must register.
    cases: PathBuf,
    /// The same, with libregress_early.so as a DT_NEEDED entry after rseqrt.
    cases_early: PathBuf,
    /// regress_unload_cases.c: what rseqrt_munmap and rseqrt_dlclose free, and from where.
    unload: PathBuf,
    /// regress_sigmask_cases.c: stale threads waiting under temporary signal masks.
    sigmask: PathBuf,
    /// regress_preload.c: not linked with rseqrt.
    preload_prog: PathBuf,
    /// A plugin whose critical section lives in it (plugin_counter.c).
    plugin_counter: PathBuf,
    /// A plugin whose destructor runs a critical section (regress_plugin_dtor.c).
    plugin_dtor: PathBuf,
    early_lib: PathBuf,
    slowshim: PathBuf,
    seccomp: PathBuf,
    /// regress_late_clone.c: not linked with rseqrt (it loads it with dlopen).
    late_clone: PathBuf,
    /// fork_child.c, linked with rseqrt.
    fork_child: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let stage = stage();
        let (cflags, libs) = stage.rseqrt_flags();
        let src = c_test_source;
        let warn = ["-Wall", "-Wextra", "-Werror"];
        let shared = |out: &str, file: &str, extra: &[&str]| {
            compile(
                &CompileSpec::new(out, &[src(file)])
                    .cflags(&warn)
                    .cflags(&["-fPIC", "-shared"])
                    .cflags(extra)
                    .libs(&["-pthread", "-ldl"]),
            )
        };
        let plugin_counter = shared("regress_plugin_counter.so", "plugin_counter.c", &[]);
        let plugin_dtor = shared("regress_plugin_dtor.so", "regress_plugin_dtor.c", &[]);
        let reldep_b = shared("regress_reldep_b.so", "regress_reldep_b.c", &[]);
        // A leaves b_inc undefined: it binds to whatever global definition is loaded.
        let reldep_a = compile(
            &CompileSpec::new("regress_reldep_a.so", &[src("regress_reldep_a.c")])
                .cflags(&warn)
                .cflags(&["-fPIC", "-shared"]),
        );
        let early_lib = shared("libregress_early.so", "regress_early.c", &["-Wl,-soname,libregress_early.so"]);
        let slowshim = shared("libregress_slowshim.so", "regress_slowshim.c", &[]);
        let cases_program = |name: &str| compile_linked(name, &format!("{name}.c"));
        let cases = cases_program("regress_cases");
        let unload = cases_program("regress_unload_cases");
        let sigmask = cases_program("regress_sigmask_cases");
        // rseqrt first, the early library after it: the dynamic linker initializes the early
        // library first.
        let cases_early = compile(
            &CompileSpec::new("regress_cases_early", &[src("regress_cases.c")])
                .cflags(&warn)
                .cflags(&cflags)
                .libs(&libs)
                .libs(&["-Wl,--no-as-needed".to_string(), early_lib.display().to_string()])
                .libs(&[format!("-Wl,-rpath,{}", tests_build_dir().display())])
                .libs(&["-pthread", "-ldl"]),
        );
        let old_dlclose = compile(
            &CompileSpec::new("regress_old_dlclose", &[src("regress_old_dlclose.c")])
                .cflags(&warn)
                .libs(&["-pthread", "-ldl"]),
        );
        let example_plugin = shared("regress_example_plugin.so", "../examples/plugin.c", &[]);
        let late_clone = compile(
            &CompileSpec::new("regress_late_clone", &[src("regress_late_clone.c")])
                .cflags(&warn)
                .libs(&["-ldl"]),
        );
        let fork_child = compile(
            &CompileSpec::new("fork_child", &[src("fork_child.c")])
                .cflags(&warn)
                .cflags(&cflags)
                .libs(&libs)
                .libs(&["-pthread", "-ldl"]),
        );
        let preload_prog = compile(
            &CompileSpec::new("regress_preload", &[src("regress_preload.c")])
                .cflags(&warn)
                .libs(&["-pthread", "-ldl"]),
        );
        Programs {
            reldep_a,
            reldep_b,
            old_dlclose,
            example_plugin,
            stage,
            cases,
            cases_early,
            unload,
            sigmask,
            preload_prog,
            plugin_counter,
            plugin_dtor,
            early_lib,
            slowshim,
            seccomp: seccomp_exec(),
            late_clone,
            fork_child,
        }
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs are one child at a time, with the staged library on LD_LIBRARY_PATH.
fn suite() -> Suite {
    Suite { stage: programs().stage, timeout: CHILD_TIMEOUT }
}

/// Runs a cases program's cases (plain row where asked, then the rseqrt row, each in its modes;
/// the rseqrt row must report the mode's owner) and fails the test if any failed.
fn run_cases(what: &str, program: &Path, cases: &[Case]) {
    suite().run_cases(what, program, cases);
}

/// Runs `regress_preload OP` (plain: must die by SIGSEGV; preload: librseqrt_preload.so, must
/// exit 0) in both modes. Plain under rseq=0 preloads librseqrt.so (which interposes none of the
/// calls) so that the threads are registered at all.
fn run_preload(what: &str, ops: &[&[&str]]) {
    suite().run_preload(what, &programs().preload_prog, ops);
}

/// 1. Thread exit: a thread-specific-data destructor of a key the program created (so it runs
/// after rseqrt's in each round) runs a critical section in a plugin; the thread ends by
/// returning or by pthread_exit(); the main thread rseqrt_dlclose()s the plugin, wakes the
/// thread and survives (plain dlclose: SIGSEGV).
/// - `first`: in round 1 the thread is still registered, as with glibc (rseq() answers EBUSY),
///   and the barrier reaches it, also when it blocks every signal but glibc's with the raw
///   system call (before the fix rseqrt took the thread out of its registry in round 1, leaving
///   it registered with the kernel: under rseq=0 the barrier then skipped it as one of glibc's
///   own unregistered threads, and the kernel killed the process).
/// - `last`: in glibc's last round, after rseqrt's destructor retired the thread, its area is
///   unregistered and a critical section takes its fallback path (before: still registered, the
///   destructor's critical section left a stale rseq_cs in a thread rseqrt no longer knew).
#[test]
fn tsd_destructors_at_thread_exit() {
    let plugin = path(&programs().plugin_counter);
    let p = plugin.as_str();
    run_cases(
        "TSD destructors",
        &programs().cases,
        &[
            case("tsd", &[p, "first", "return"]),
            case("tsd", &[p, "first", "exit"]),
            case("tsd", &[p, "first", "return", "raw"]),
            case("tsd", &[p, "last", "return"]).rseqrt_only(),
            case("tsd", &[p, "last", "exit"]).rseqrt_only(),
        ],
    );
}

/// 2. A library whose constructor runs before rseqrt's (it follows rseqrt in the program's
/// DT_NEEDED list, or in LD_PRELOAD) starts a worker through rseqrt's pthread_create, on a stack
/// it supplies; the worker runs a critical section and exits, the stack (with its TCB and rseq
/// area) is unmapped. Later barriers — rseqrt_munmap of an unrelated page, rseqrt_clear_all,
/// rseqrt_munmap of the worker's descriptor page, and one over a new stale thread — return 0
/// promptly (before the fix the exit hook's key did not exist yet, the dead worker stayed in the
/// registry, and the barrier read its unmapped area: a memory fault, or ETIMEDOUT after 2 s).
#[test]
fn threads_started_before_rseqrts_constructor() {
    let p = programs();
    let preload = format!("{} {}", path(&p.stage.lib("librseqrt.so.0")), path(&p.early_lib));
    let mut needed = case("early", &[]).rseqrt_only();
    needed.program = Some(p.cases_early.as_path());
    run_cases(
        "threads started before rseqrt's constructor",
        &p.cases,
        &[needed, case("early", &[]).rseqrt_only().env("LD_PRELOAD", &preload)],
    );
}

/// 3. Whole pages: the descriptor at page + 2048 and rseqrt_munmap(page, 100), which unmaps the
/// whole page (plain munmap(page, 100): SIGSEGV); and the preload shim's munmap(page, 100),
/// mremap() shrinking a mapping whose old size is not page-aligned (the kernel rounds it up and
/// frees the page holding the descriptor), and mmap(MAP_FIXED) of 100 bytes over the page
/// (before the fix the barriers covered only the bytes named).
/// A binary built against glibc older than 2.34 references dlclose@GLIBC_2.2.5: the preload
/// shim interposes that version too (plain: SIGSEGV; preloaded shim: exit 0).
#[test]
fn preload_interposes_the_old_dlclose_version() {
    let p = programs();
    let plugin = path(&p.example_plugin);
    let mut f = Vec::new();
    for &mode in modes() {
        let mut plain = suite().scenario(format!("old dlclose plain [{}]", mode.name()), &p.old_dlclose, &[&plugin], mode, Expect::Segv);
        if mode == Mode::Own {
            // Without rseqrt nobody registers the threads under rseq=0: nothing would go stale.
            plain = plain.env("LD_PRELOAD", &path(&p.stage.lib("librseqrt.so")));
        }
        f.extend(go(plain));
        let shim = path(&p.stage.lib("rseqrt/librseqrt_preload.so"));
        f.extend(go(suite().scenario(format!("old dlclose preload [{}]", mode.name()), &p.old_dlclose, &[&plugin], mode, Expect::Exit(0)).env("LD_PRELOAD", &shim)));
    }
    finish("old dlclose version", f);
}

/// dlclose of an object that alone keeps another loaded through a relocation dependency (not
/// DT_NEEDED): the barrier covers the other object too.
#[test]
fn dlclose_covers_relocation_dependencies() {
    let p = programs();
    run_cases("relocation dependencies", &p.unload, &[case("reldep", &[&path(&p.reldep_a), &path(&p.reldep_b)])]);
}

/// The barrier fits in the smallest thread stack (PTHREAD_STACK_MIN), on its slow paths too.
#[test]
fn barrier_runs_on_the_smallest_stack() {
    run_cases("smallest stack", &programs().unload, &[case("smallstack", &[])]);
}

#[test]
fn barriers_cover_whole_pages() {
    run_cases("whole pages", &programs().unload, &[case("wholepage", &[])]);
    run_preload("whole pages (preload)", &[&["munmap-partial"], &["mremap-shrink-partial"], &["mmap-fixed-partial"]]);
}

/// 4. dlclose() runs the plugin's destructor in the calling thread, after the barrier; the
/// destructor runs a critical section in the plugin. rseqrt_dlclose() and the preloaded
/// dlclose() survive (the caller's area is unregistered around the real dlclose(): the
/// destructor's critical section takes its fallback path, and the caller is registered again
/// afterwards, rseq_cs 0); plain dlclose(): SIGSEGV.
#[test]
fn dlclose_runs_destructors() {
    let plugin = path(&programs().plugin_dtor);
    run_cases("dlclose destructors", &programs().unload, &[case("dtor", &[&plugin])]);
    run_preload("dlclose destructors (preload)", &[&["dlclose-dtor", &plugin]]);
}

/// 5. A SIGEV_THREAD timer callback (a glibc thread rseqrt does not know) holds a stale rseq_cs
/// into a page while two threads are in the middle of pthread_create (held for 300 ms by
/// libregress_slowshim.so, preloaded after rseqrt so that rseqrt's pthread_create runs and calls
/// it): rseqrt_munmap must still reach the callback (before the fix the threads being created
/// counted as known, the thread count matched, the unknown callback was skipped, and the kernel
/// killed the process when it woke). Where rseqrt registers (rseq=0), glibc's callback thread has
/// no area: only the rseqrt row runs, and must survive.
#[test]
fn threads_in_the_middle_of_pthread_create() {
    let p = programs();
    let preload = format!("{} {}", path(&p.stage.lib("librseqrt.so.0")), path(&p.slowshim));
    let mut c = case("inflight", &[]).env("LD_PRELOAD", &preload);
    c.plain_in = &[Mode::Glibc];
    run_cases("in-flight pthread_create", &p.cases, &[c]);
}

/// 6. The rseq probe: under a seccomp filter answering EPERM to rseq (and ENOSYS, for
/// comparison), a program linked with rseqrt gets owner NONE, __rseq_size 0 and cpu_id -2, in
/// the main thread and in new threads, and barriers still work (before the fix only ENOSYS
/// meant "no rseq": under EPERM rseqrt published an area nobody could register, __rseq_size 28).
#[test]
fn rseq_refused_by_seccomp_eperm() {
    let p = programs();
    let cases = path(&p.cases);
    let mut f = Vec::new();
    for errno in ["EPERM", "ENOSYS"] {
        for &mode in modes() {
            let r = suite().scenario(
                format!("probe, seccomp rseq {errno} [{}]", mode.name()),
                &p.seccomp,
                &["rseq", errno, &cases, "probe", "rseqrt"],
                mode,
                Expect::Exit(0),
            )
            .owner(0)
            .echo("observed");
            f.extend(go(r));
        }
    }
    finish("rseq probe", f);
}

/// 7. Temporary signal masks: a stale thread waits in ppoll / pselect / epoll_pwait /
/// epoll_pwait2 / sigsuspend with a full mask (sigfillset), or was started with
/// pthread_attr_setsigmask_np(full): its SigBlk lacks the reserved signal, and rseqrt_munmap of
/// its descriptor's page returns 0 with glibc's broadcast refused (a seccomp filter on
/// `setresuid`), so the barrier's own signal reached it (the old library needed the broadcast,
/// and with it refused fails with EPERM, as it does with the interposers' mask change taken out),
/// best of 3 tries; the thread then wakes and the process survives (plain munmap: SIGSEGV).
#[test]
fn temporary_signal_masks() {
    let glibc = support::scenario::glibc_version();
    let mut cases = vec![
        case("tempmask", &["ppoll"]),
        case("tempmask", &["pselect"]),
        case("tempmask", &["epoll_pwait"]),
        case("tempmask", &["sigsuspend"]),
    ];
    // The C library's own functions behind these came in glibc 2.35 and 2.32.
    match glibc >= (2, 35) {
        true => cases.push(case("tempmask", &["epoll_pwait2"])),
        false => support::skip(&format!("tempmask epoll_pwait2: glibc {}.{} has no epoll_pwait2 (2.35+)", glibc.0, glibc.1)),
    }
    match glibc >= (2, 32) {
        true => cases.push(case("attrmask", &[])),
        false => support::skip(&format!("attrmask: glibc {}.{} has no pthread_attr_setsigmask_np (2.32+)", glibc.0, glibc.1)),
    }
    run_cases("temporary signal masks", &programs().sigmask, &cases);
}

/// 8. rseqrt_dlclose() of handles that are not loaded objects — a malloc'd block of junk, a
/// zeroed block, a block on the stack, (void *)0x1000 — behaves exactly as dlclose() (each call
/// in a child of its own): same return value, same dlerror() text, and where glibc's dlclose()
/// itself faults (0x1000, which it dereferences) the same fault. Before the fix rseqrt read
/// through the junk (as a link map) and crashed where dlclose() returns 0.
#[test]
fn dlclose_of_bogus_handles() {
    run_cases("bogus dlclose handles", &programs().unload, &[case("bogus", &[]).rseqrt_only()]);
}

/// 9. A thread started by glibc's clone() (not pthread_create) registers rseq itself and holds a
/// stale rseq_cs; only then does the program dlopen() rseqrt (glibc owner) and call
/// rseqrt_munmap() on the descriptor's page: the thread's rseq_cs no longer refers to the page,
/// and woken, it survives (plain munmap: SIGSEGV). rseqrt's clone() never saw that thread and
/// glibc does not count it. Before the fix the barrier trusted glibc's thread count, which matched
/// the registry's, and skipped the thread.
#[test]
fn raw_clone_thread_before_a_late_load() {
    let p = programs();
    let lib = path(&p.stage.lib("librseqrt.so"));
    let prog = p.late_clone.as_path();
    // Before glibc 2.35 the thread registers an area of the program's own, and the late rseqrt
    // cannot own registration (owner NONE): it must still reach the thread.
    let (label, owner) = if support::scenario::glibc_registers() { ("glibc-owner", Mode::Glibc.owner()) } else { ("no glibc rseq", 0) };
    let mut f = Vec::new();
    f.extend(go(suite().scenario(format!("late-clone plain [{label}]"), prog, &["plain"], Mode::Glibc, Expect::Segv)));
    f.extend(go(suite()
        .scenario(format!("late-clone late [{label}]"), prog, &["late", lib.as_str()], Mode::Glibc, Expect::Exit(0))
        .owner(owner)
        .echo("observed")));
    finish("raw clone() thread before a late load", f);
}

/// 10. A barrier in a child of `_Fork()` (glibc 2.34+: no fork handler runs, so the child keeps
/// the parent's registry and glibc's thread lists). In the parent, thread S holds a stale
/// rseq_cs into a page and blocks SIGSETXID (raw system call); thread A's setresuid() broadcast
/// takes glibc's thread-list lock and waits for S for good. In a `_Fork()` child glibc's
/// broadcast then waits forever (shown first: killed after 1 s); the child's rseqrt_munmap()
/// of the page, which S (absent there) refers to, must fail with ETIMEDOUT after
/// RSEQRT_TIMEOUT_MS=300 (within 3 s more), the page still mapped. Before the fix the barrier
/// escalated to glibc's broadcast after 20 ms and never returned. Skipped, saying so, where the
/// C library has no `_Fork()`.
#[test]
fn barrier_in_a_fork_child_ends_with_its_timeout() {
    let p = programs();
    let mut f = Vec::new();
    for &mode in modes() {
        let r = suite()
            .scenario(format!("_Fork child [{}]", mode.name()), &p.fork_child, &["setxid-held", "rseqrt"], mode, Expect::Exit(0))
            .env("RSEQRT_TIMEOUT_MS", "300")
            .owner(mode.owner())
            .echo("observed");
        f.extend(go(r));
    }
    finish("_Fork child", f);
}
