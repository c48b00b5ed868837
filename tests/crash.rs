//! Crash tests for the rseq-clear barrier (issue 4).
//!
//! A thread's `rseq_cs` stays stale after a critical section; when the memory it
//! refers to is freed, the kernel kills the process with SIGSEGV at that thread's
//! next return to user space. Each scenario of `c-abi-tests/crash_stale.c` runs in
//! its own child process:
//!
//! * what is freed: `dlclose` (plugin holding descriptor and code), `dlclose-dep`
//!   (dlclose that unloads a dependency holding them), `munmap-desc` (a page
//!   holding the descriptor), `munmap-jit` (an executable page holding a copy of
//!   the code); memory that stays mapped but loses what the kernel reads (issue 10):
//!   `madvise-dontneed` (the page then reads as zeros: `abort_ip` 0, so the kernel reads
//!   the signature at address -4), `madvise-free` (zeros once the kernel reclaims the
//!   page, which the program forces with `MADV_PAGEOUT`: the kernel's own moment, memory
//!   pressure, cannot be chosen by a test), `madvise-remove` (a shared page, hole
//!   punched), `mprotect-none` (the page unreadable), `shmdt` (a System V segment, the
//!   descriptor in its third page, detached by naming its first address);
//! * the stale thread: blocked in `read`, `spin`ning in user space, `sigblock`
//!   (every signal blocked, then blocked in read), a glibc `timer` helper thread
//!   (SIGEV_THREAD callback, then blocked in read); and, for `dlclose` and `munmap-desc`,
//!   `handled`: blocked in read while the program has its own handler on signal 64, rseqrt's
//!   reserved signal, named by its number (the barrier's requests must not reach it, the
//!   program's own raise must);
//! * how: the `plain` call must die with SIGSEGV (so each scenario can fail),
//!   `rseqrt_dlclose()`/`rseqrt_munmap()`/`rseqrt_madvise()`/... and the plain call under
//!   `LD_PRELOAD=librseqrt_preload.so` must exit 0;
//! * both owner modes: glibc registers (default) and `GLIBC_TUNABLES=glibc.pthread.rseq=0`
//!   (rseqrt registers; there the plain baseline runs with `librseqrt.so` preloaded,
//!   since without rseqrt no thread is registered and nothing can crash).
//!
//! `crash_stress.c` unloads plugins thousands of times under worker threads that
//! run critical sections in them, and checks the per-cpu counters' total.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use support::scenario::{finish, Expect, Mode, Scenario, modes};
use support::{c_test_source, compile, stage, tests_build_dir, CompileSpec, Stage};

const THREADS: [&str; 4] = ["read", "spin", "sigblock", "timer"];
/// crash_stale's exit status when the stale thread has no registered rseq area.
const EXIT_UNREGISTERED: i32 = 3;
/// Runs in all while crash_stale reports exit 9 (inconclusive).
const ATTEMPTS: usize = 5;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// The stress test takes the write side so that its busy workers do not share
/// the two cores with the matrix's timing-sensitive scenarios.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

struct Programs {
    plugin_dir: PathBuf,
    plugin_a: PathBuf,
    plugin_b: PathBuf,
    stale: PathBuf,
    stress: PathBuf,
    /// crash_own_area.c: a thread with an rseq area of the program's own.
    own_area: PathBuf,
    lib: LibPrograms,
}

struct LibPrograms {
    stage: &'static Stage,
    stale: PathBuf,
    stress: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let src = c_test_source;
        let shared = ["-fPIC", "-shared"];
        let plugin_a = compile(
            &CompileSpec::new("plugin_counter.so", &[src("plugin_counter.c")]).cflags(&shared),
        );
        let plugin_b = compile(
            &CompileSpec::new("plugin_counter_b.so", &[src("plugin_counter.c")]).cflags(&shared),
        );
        let dep = compile(
            &CompileSpec::new("plugin_dep_lib.so", &[src("plugin_dep_lib.c")])
                .cflags(&shared)
                .cflags(&["-Wl,-soname,plugin_dep_lib.so"]),
        );
        compile(
            &CompileSpec::new("plugin_dep_top.so", &[src("plugin_dep_top.c")])
                .cflags(&shared)
                .libs(&[dep.display().to_string().as_str(), "-Wl,-rpath,$ORIGIN"]),
        );
        let stale =
            compile(&CompileSpec::new("crash_stale", &[src("crash_stale.c")]).libs(&["-pthread"]));
        let stress = compile(
            &CompileSpec::new("crash_stress", &[src("crash_stress.c")]).libs(&["-pthread"]),
        );
        let own_area = compile(&CompileSpec::new("crash_own_area", &[src("crash_own_area.c")]));
        let lib = {
            let stage = stage();
            let (cflags, libs) = stage.rseqrt_flags();
            let build = |out: &str, file: &str| {
                compile(
                    &CompileSpec::new(out, &[src(file)])
                        .cflags(&cflags)
                        .cflags(&["-DWITH_RSEQRT"])
                        .libs(&libs)
                        .libs(&["-pthread"]),
                )
            };
            LibPrograms {
                stage,
                stale: build("crash_stale_rseqrt", "crash_stale.c"),
                stress: build("crash_stress_rseqrt", "crash_stress.c"),
            }
        };
        Programs {
            plugin_dir: tests_build_dir(),
            plugin_a,
            plugin_b,
            stale,
            stress,
            own_area,
            lib,
        }
    })
}

/// One way of running a scenario: which binary, which method argument, which
/// preloaded object, and the outcome that must follow.
struct Row {
    label: &'static str,
    program: PathBuf,
    method: &'static str,
    preload: Option<PathBuf>,
    expect: Expect,
    /// rseqrt must report this owner (the rseqrt-linked binary).
    check_owner: bool,
}

fn rows(p: &Programs, mode: Mode) -> Vec<Row> {
    let mut rows = Vec::new();
    match mode {
        // Plain glibc: its registration, a plain call: the crash itself.
        Mode::Glibc => rows.push(Row {
            label: "plain",
            program: p.stale.clone(),
            method: "plain",
            preload: None,
            expect: Expect::Segv,
            check_owner: false,
        }),
        // Plain glibc with its registration off: no thread has an area, so there
        // is nothing to crash (the program says so with exit 3); the baseline
        // in this mode is the next row.
        Mode::Own => rows.push(Row {
            label: "plain-unregistered",
            program: p.stale.clone(),
            method: "plain",
            preload: None,
            expect: Expect::Exit(EXIT_UNREGISTERED),
            check_owner: false,
        }),
    }
    let lib = &p.lib;
    // librseqrt.so interposes none of the calls that free: with it
    // loaded (and, under the tunable, registering the threads) a plain
    // call still crashes.
    rows.push(Row {
        label: "plain+librseqrt",
        program: p.stale.clone(),
        method: "plain",
        preload: Some(lib.stage.lib("librseqrt.so")),
        expect: Expect::Segv,
        check_owner: false,
    });
    rows.push(Row {
        label: "rseqrt",
        program: lib.stale.clone(),
        method: "rseqrt",
        preload: None,
        expect: Expect::Exit(0),
        check_owner: true,
    });
    rows.push(Row {
        label: "preload",
        program: p.stale.clone(),
        method: "preload",
        preload: Some(lib.stage.lib("rseqrt/librseqrt_preload.so")),
        expect: Expect::Exit(0),
        check_owner: false,
    });
    rows
}

/// A crash_stale or crash_stress run in `mode`, with `preload` preloaded and the
/// staged library on LD_LIBRARY_PATH.
fn scenario<'a, S: AsRef<str>>(
    name: String,
    program: &'a Path,
    args: &[S],
    mode: Mode,
    preload: Option<&Path>,
    expect: Expect,
) -> Scenario<'a> {
    let mut s = Scenario::new(name, program, args, mode, expect)
        .attempts(ATTEMPTS)
        .timeout(CHILD_TIMEOUT);
    if let Some(pre) = preload {
        s = s.env("LD_PRELOAD", &pre.display().to_string());
    }
    s.env("LD_LIBRARY_PATH", &programs().lib.stage.lib_dir.display().to_string())
}

fn matrix(kind: &str) {
    let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    let p = programs();
    let dir = p.plugin_dir.display().to_string();
    let mut failures = Vec::new();
    for &mode in modes() {
        let rows = rows(p, mode);
        for thread in THREADS {
            for row in &rows {
                let name = format!("{kind} {thread} {} [{}]", row.label, mode.name());
                let args = [kind, thread, row.method, dir.as_str()];
                let mut r = scenario(name, &row.program, &args, mode, row.preload.as_deref(), row.expect);
                if row.check_owner {
                    r = r.owner(mode.owner());
                }
                failures.extend(r.go());
            }
        }
    }
    finish(kind, failures);
}

/// The program's own handler on the reserved signal's number (issue 10, item 3: rseqrt shares
/// the number): every row of the matrix with the stale thread blocked in read, the program
/// holding a handler on 64.
#[test]
fn program_handler_on_the_reserved_signal() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    let p = programs();
    let dir = p.plugin_dir.display().to_string();
    let mut failures = Vec::new();
    for &mode in modes() {
        for kind in ["dlclose", "munmap-desc"] {
            for row in &rows(p, mode) {
                let name = format!("{kind} handled {} [{}]", row.label, mode.name());
                let args = [kind, "handled", row.method, dir.as_str()];
                let mut r = scenario(name, &row.program, &args, mode, row.preload.as_deref(), row.expect);
                if row.check_owner {
                    r = r.owner(mode.owner());
                }
                failures.extend(r.go());
            }
        }
    }
    finish("program handler on the reserved signal", failures);
}

#[test]
fn dlclose_of_plugin_holding_descriptor() {
    matrix("dlclose");
}

#[test]
fn dlclose_unloading_dependency_holding_descriptor() {
    matrix("dlclose-dep");
}

#[test]
fn munmap_of_page_holding_descriptor() {
    matrix("munmap-desc");
}

#[test]
fn munmap_of_jit_code() {
    matrix("munmap-jit");
}

#[test]
fn madvise_dontneed_of_page_holding_descriptor() {
    matrix("madvise-dontneed");
}

#[test]
fn madvise_free_of_page_holding_descriptor() {
    matrix("madvise-free");
}

#[test]
fn madvise_remove_of_shared_page_holding_descriptor() {
    matrix("madvise-remove");
}

#[test]
fn mprotect_none_of_page_holding_descriptor() {
    matrix("mprotect-none");
}

#[test]
fn shmdt_of_segment_holding_descriptor() {
    matrix("shmdt");
}

/// Unloads (rseqrt) each stress run makes; the run must make all of them. A count, not a rate:
/// on a busy machine the run takes longer (the time cap below only catches a hang).
const STRESS_MIN_UNLOADS: u64 = 2000;
/// crash_stress arguments after the plugins: unloads, workers, time cap in seconds.
const STRESS_ARGS: [&str; 3] = ["2000", "4", "25"];

fn stress_unloads(out: &str) -> Option<u64> {
    let rest = out.split(": ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn stress_unload_plugins_under_running_critical_sections() {
    let _exclusive = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let p = programs();
    let (a, b) = (
        p.plugin_a.display().to_string(),
        p.plugin_b.display().to_string(),
    );
    let mut failures = Vec::new();

    // The baseline: plain dlclose() under the same load must be killed.
    let plain_args = [
        "plain",
        a.as_str(),
        b.as_str(),
        STRESS_ARGS[0],
        STRESS_ARGS[1],
        STRESS_ARGS[2],
    ];
    // (Where glibc registers no rseq, the plain+librseqrt row below is the baseline.)
    if modes().contains(&Mode::Glibc) {
        let baseline = Scenario::new("stress plain [glibc-owner]".into(), &p.stress, &plain_args, Mode::Glibc, Expect::Segv)
            .attempts(ATTEMPTS)
            .timeout(CHILD_TIMEOUT);
        failures.extend(baseline.go());
    }
    let lib = &p.lib;
    let librseqrt = lib.stage.lib("librseqrt.so");
    for &mode in modes() {
        if mode == Mode::Own {
            let name = format!("stress plain+librseqrt [{}]", mode.name());
            failures.extend(scenario(name, &p.stress, &plain_args, mode, Some(&librseqrt), Expect::Segv).go());
        }
        let name = format!("stress rseqrt [{}]", mode.name());
        let args = [
            "rseqrt",
            a.as_str(),
            b.as_str(),
            STRESS_ARGS[0],
            STRESS_ARGS[1],
            STRESS_ARGS[2],
        ];
        let r = scenario(name, &lib.stress, &args, mode, None, Expect::Exit(0))
            .attempts(1)
            .echo("")
            .check(|res| {
                let unloads = stress_unloads(&res.stdout).unwrap_or(0);
                (unloads < STRESS_MIN_UNLOADS)
                    .then(|| format!("only {unloads} unloads (want at least {STRESS_MIN_UNLOADS})"))
            });
        failures.extend(r.go());
    }
    finish("stress", failures);
}

/// Areas that the program registered itself, as rseq libraries do under glibc's opt-out
/// (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, so rseqrt registers nothing): rseqrt cannot see where
/// they are, so its barrier makes every thread's kernel look at its own `rseq_cs`. A thread whose
/// area holds a stale `rseq_cs` into a page: plain `munmap()` is killed; `rseqrt_munmap()`
/// (librseqrt.so preloaded) and the shim's `munmap()` survive, blocked, spinning, or blocking
/// every signal with the raw system call (then glibc's broadcast reaches it).
#[test]
fn munmap_under_areas_the_program_registered() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    let p = programs();
    let tunable = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let lib = p.lib.stage.lib("librseqrt.so").display().to_string();
    let preload = p.lib.stage.lib("rseqrt/librseqrt_preload.so").display().to_string();
    let mut failures = Vec::new();
    for thread in ["read", "spin", "sigblock"] {
        let rows: [(&str, Option<&str>, Expect, Option<i32>); 3] = [
            ("plain", None, Expect::Segv, None),
            ("rseqrt", Some(&lib), Expect::Exit(0), Some(0)),
            ("preload", Some(&preload), Expect::Exit(0), Some(0)),
        ];
        for (method, pre, expect, owner) in rows {
            let name = format!("own-area {thread} {method} [program registers]");
            let mut s = Scenario::new(name, &p.own_area, &[thread, method], Mode::Glibc, expect)
                .attempts(ATTEMPTS)
                .timeout(CHILD_TIMEOUT)
                .envs(&[tunable]);
            if let Some(pre) = pre {
                s = s.env("LD_PRELOAD", pre);
            }
            if let Some(o) = owner {
                s = s.owner(o);
            }
            failures.extend(s.go());
        }
    }
    finish("areas the program registered", failures);
}
