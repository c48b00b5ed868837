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
//!   the code);
//! * the stale thread: blocked in `read`, `spin`ning in user space, `sigblock`
//!   (every signal blocked, then blocked in read), a glibc `timer` helper thread
//!   (SIGEV_THREAD callback, then blocked in read);
//! * how: `plain` dlclose()/munmap() must die with SIGSEGV (so each scenario can
//!   fail), `rseqrt_dlclose()`/`rseqrt_munmap()` and the plain call under
//!   `LD_PRELOAD=librseqrt_preload.so` must exit 0;
//! * both owner modes: glibc registers (default) and `GLIBC_TUNABLES=glibc.pthread.rseq=0`
//!   (rseqrt registers; there the plain baseline runs with `librseqrt.so` preloaded,
//!   since without rseqrt no thread is registered and nothing can crash).
//!
//! `crash_stress.c` unloads plugins thousands of times under worker threads that
//! run critical sections in them, and checks the per-cpu counters' total.
//!
//! Rows that need the library are skipped, with the reason printed, while the
//! repository has no Makefile (the library has not landed); the plain rows always run.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use support::{
    c_test_source, compile, repo_root, run, stage, tests_build_dir, CompileSpec, RunResult, Stage,
};

const THREADS: [&str; 4] = ["read", "spin", "sigblock", "timer"];
const TUNABLE_OFF: &str = "glibc.pthread.rseq=0";
const SIGSEGV: i32 = 11;
/// crash_stale's exit codes.
const EXIT_UNREGISTERED: i32 = 3;
const EXIT_INCONCLUSIVE: i32 = 9;
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
    lib: Option<LibPrograms>,
}

struct LibPrograms {
    stage: &'static Stage,
    stale: PathBuf,
    stress: PathBuf,
}

/// The staged library, or None (with the reason printed) while it has not landed.
fn library() -> Option<&'static Stage> {
    if !repo_root().join("Makefile").exists() {
        println!(
            "SKIP library rows: no Makefile in the repository yet (the library has not landed)"
        );
        return None;
    }
    Some(stage())
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
        let lib = library().map(|stage| {
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
        });
        Programs {
            plugin_dir: tests_build_dir(),
            plugin_a,
            plugin_b,
            stale,
            stress,
            lib,
        }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// glibc registers every thread; rseqrt adopts glibc's areas.
    Glibc,
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: rseqrt registers its own areas.
    Own,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc-owner",
            Mode::Own => "rseq=0",
        }
    }
    fn expected_owner(self) -> i32 {
        match self {
            Mode::Glibc => 1,
            Mode::Own => 2,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// Killed by SIGSEGV.
    Segv,
    /// Killed by another signal (never expected).
    Signal(i32),
    Exit(i32),
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

fn rows(p: &Programs, mode: Mode) -> (Vec<Row>, Vec<&'static str>) {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
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
    match &p.lib {
        None => skipped.extend(["plain+librseqrt", "rseqrt", "preload"]),
        Some(lib) => {
            // librseqrt.so interposes neither dlclose() nor munmap(): with it
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
        }
    }
    (rows, skipped)
}

fn env_for(mode: Mode, preload: Option<&Path>, lib: Option<&LibPrograms>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if mode == Mode::Own {
        env.push(("GLIBC_TUNABLES".to_string(), TUNABLE_OFF.to_string()));
    }
    if let Some(pre) = preload {
        env.push(("LD_PRELOAD".to_string(), pre.display().to_string()));
    }
    if let Some(lib) = lib {
        env.push((
            "LD_LIBRARY_PATH".to_string(),
            lib.stage.lib_dir.display().to_string(),
        ));
    }
    env
}

fn outcome(res: &RunResult) -> Expect {
    match res.signal() {
        Some(SIGSEGV) => Expect::Segv,
        Some(sig) => Expect::Signal(sig),
        None => Expect::Exit(res.status.code().unwrap_or(-1)),
    }
}

/// The `rseqrt_owner=N` the program printed (-1: rseqrt not loaded).
fn reported_owner(out: &str) -> Option<i32> {
    let rest = out.split("rseqrt_owner=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs one scenario, again when the program reports that the run could not
/// show anything (exit 9: the stale pointer was cleared by a preemption before
/// or during the free). Returns a failure message, or None.
fn run_scenario(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    expect: Expect,
    owner: Option<i32>,
) -> Option<String> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let start = Instant::now();
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        let res = run(program, args, &env, CHILD_TIMEOUT);
        let got = outcome(&res);
        if !res.timed_out && got == Expect::Exit(EXIT_INCONCLUSIVE) && expect != got {
            last = Some(res);
            continue;
        }
        let ms = start.elapsed().as_millis();
        let retry = if attempt > 1 {
            format!(", attempt {attempt}")
        } else {
            String::new()
        };
        let mut problem = None;
        if res.timed_out {
            problem = Some(format!("timed out after {CHILD_TIMEOUT:?}"));
        } else if got != expect {
            problem = Some(format!("expected {expect:?}, got {got:?}"));
        } else if let Some(want) = owner {
            match reported_owner(&res.stdout) {
                Some(o) if o == want => {}
                o => {
                    problem = Some(format!(
                        "expected rseqrt_owner {want}, the program reported {o:?}"
                    ))
                }
            }
        }
        return match problem {
            None => {
                println!("ok    {name}: {got:?} ({ms} ms{retry})");
                None
            }
            Some(why) => {
                println!("FAIL  {name}: {why} ({ms} ms{retry})");
                Some(format!("{name}: {why}\n{res}"))
            }
        };
    }
    let res = last.expect("at least one attempt");
    println!("FAIL  {name}: inconclusive {ATTEMPTS} times");
    Some(format!(
        "{name}: inconclusive in all {ATTEMPTS} attempts (exit 9)\n{res}"
    ))
}

fn matrix(kind: &str) {
    let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    let p = programs();
    let dir = p.plugin_dir.display().to_string();
    let mut failures = Vec::new();
    for mode in [Mode::Glibc, Mode::Own] {
        let (rows, skipped) = rows(p, mode);
        for label in skipped {
            println!(
                "SKIP  {kind} * {label} {}: the library has not landed (no Makefile)",
                mode.name()
            );
        }
        for thread in THREADS {
            for row in &rows {
                let name = format!("{kind} {thread} {} [{}]", row.label, mode.name());
                let env = env_for(mode, row.preload.as_deref(), p.lib.as_ref());
                let owner = row.check_owner.then(|| mode.expected_owner());
                let args = [kind, thread, row.method, dir.as_str()];
                if let Some(f) = run_scenario(&name, &row.program, &args, &env, row.expect, owner) {
                    failures.push(f);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
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

/// Unloads (rseqrt) per stress run must reach this many, or the test fails.
const STRESS_MIN_UNLOADS: u64 = 2000;
/// crash_stress arguments after the plugins: unloads, workers, time cap in seconds.
const STRESS_ARGS: [&str; 3] = ["5000", "4", "8"];

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
    if let Some(f) = run_scenario(
        "stress plain [glibc-owner]",
        &p.stress,
        &plain_args,
        &[],
        Expect::Segv,
        None,
    ) {
        failures.push(f);
    }
    let Some(lib) = &p.lib else {
        println!("SKIP  stress rseqrt: the library has not landed (no Makefile)");
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        return;
    };
    for mode in [Mode::Glibc, Mode::Own] {
        if mode == Mode::Own {
            let env = env_for(mode, Some(&lib.stage.lib("librseqrt.so")), Some(lib));
            let name = format!("stress plain+librseqrt [{}]", mode.name());
            if let Some(f) = run_scenario(&name, &p.stress, &plain_args, &env, Expect::Segv, None) {
                failures.push(f);
            }
        }
        let env = env_for(mode, None, Some(lib));
        let envr: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let name = format!("stress rseqrt [{}]", mode.name());
        let args = [
            "rseqrt",
            a.as_str(),
            b.as_str(),
            STRESS_ARGS[0],
            STRESS_ARGS[1],
            STRESS_ARGS[2],
        ];
        let res = run(&lib.stress, &args, &envr, CHILD_TIMEOUT);
        let unloads = stress_unloads(&res.stdout).unwrap_or(0);
        let why = if !res.success() {
            Some("expected exit 0".to_string())
        } else if unloads < STRESS_MIN_UNLOADS {
            Some(format!(
                "only {unloads} unloads (want at least {STRESS_MIN_UNLOADS})"
            ))
        } else {
            None
        };
        println!(
            "{} {name}: {}",
            if why.is_none() { "ok   " } else { "FAIL " },
            res.stdout.trim_end()
        );
        if let Some(why) = why {
            failures.push(format!("{name}: {why}\n{res}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} stress run(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
