//! Behaviour tests for the rseq-clear barrier in the hard cases (README, "Documented behaviour
//! in the hard cases", and the guarantees around it).
//!
//! Each scenario is a C program run in its own child process (`c-abi-tests/barrier_cases.c`,
//! `barrier_preload.c`, under `barrier_nomembarrier_exec.c` for the runs without membarrier),
//! in both owner modes: glibc registers (`glibc-owner`) and `GLIBC_TUNABLES=glibc.pthread.rseq=0`
//! (rseqrt registers, `rseq=0`). Where it makes sense the scenario first runs with the plain
//! call and no barrier (`plain`), which the kernel must kill with SIGSEGV: that shows the
//! scenario really leaves a stale `rseq_cs` behind, so the `rseqrt` row can fail.
//!
//! One line is printed per scenario; a failure names the scenario and shows the child's
//! command, status and output. Children run one at a time (their timing checks and spinning
//! threads share 2 cores).

mod support;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{c_test_source, compile, run, stage, CompileSpec, RunResult, Stage};

const TUNABLE_OFF: &str = "glibc.pthread.rseq=0";
const SIGSEGV: i32 = 11;
const EXIT_INCONCLUSIVE: i32 = 9;
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// One child at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Programs {
    stage: &'static Stage,
    cases: PathBuf,
    preload_prog: PathBuf,
    nomembarrier: PathBuf,
    plugin: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let stage = stage();
        let (cflags, libs) = stage.rseqrt_flags();
        let src = c_test_source;
        let cases = compile(
            &CompileSpec::new("barrier_cases", &[src("barrier_cases.c")])
                .cflags(&cflags)
                .libs(&libs)
                .libs(&["-pthread", "-ldl"]),
        );
        let preload_prog = compile(
            &CompileSpec::new("barrier_preload", &[src("barrier_preload.c")]).libs(&["-pthread", "-ldl"]),
        );
        let nomembarrier = compile(&CompileSpec::new(
            "barrier_nomembarrier_exec",
            &[src("barrier_nomembarrier_exec.c")],
        ));
        let plugin = compile(
            &CompileSpec::new("barrier_plugin_counter.so", &[src("plugin_counter.c")])
                .cflags(&["-fPIC", "-shared"]),
        );
        Programs { stage, cases, preload_prog, nomembarrier, plugin }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Glibc,
    Own,
}

const MODES: [Mode; 2] = [Mode::Glibc, Mode::Own];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc-owner",
            Mode::Own => "rseq=0",
        }
    }
    fn owner(self) -> i32 {
        match self {
            Mode::Glibc => 1,
            Mode::Own => 2,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Segv,
    Exit(i32),
}

fn outcome(res: &RunResult) -> String {
    match res.signal() {
        Some(SIGSEGV) => "SIGSEGV".into(),
        Some(s) => format!("signal {s}"),
        None => format!("exit {}", res.status.code().unwrap_or(-1)),
    }
}

fn matches(res: &RunResult, expect: Expect) -> bool {
    !res.timed_out
        && match expect {
            Expect::Segv => res.signal() == Some(SIGSEGV),
            Expect::Exit(c) => res.signal().is_none() && res.status.code() == Some(c),
        }
}

/// A scenario run: program, arguments, environment on top of the mode's, expectation, and
/// extra checks on a run that met the expectation.
struct Run<'a> {
    name: String,
    program: &'a std::path::Path,
    args: Vec<String>,
    env: Vec<(String, String)>,
    expect: Expect,
    /// `rseqrt_owner=N` the program must print (barrier_cases prints it first).
    owner: Option<i32>,
    /// Lines of the child's stdout starting with this prefix are echoed after the result line.
    echo: Option<&'static str>,
    check: Option<Box<dyn Fn(&RunResult) -> Option<String> + 'a>>,
}

impl<'a> Run<'a> {
    fn new(name: String, program: &'a std::path::Path, args: &[&str], mode: Mode, expect: Expect) -> Self {
        let mut env = vec![("LD_LIBRARY_PATH".to_string(), programs().stage.lib_dir.display().to_string())];
        if mode == Mode::Own {
            env.push(("GLIBC_TUNABLES".into(), TUNABLE_OFF.into()));
        }
        Run {
            name,
            program,
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            expect,
            owner: None,
            echo: None,
            check: None,
        }
    }
    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    fn owner(mut self, o: i32) -> Self {
        self.owner = Some(o);
        self
    }
    fn echo(mut self, prefix: &'static str) -> Self {
        self.echo = Some(prefix);
        self
    }
    fn check(mut self, f: impl Fn(&RunResult) -> Option<String> + 'a) -> Self {
        self.check = Some(Box::new(f));
        self
    }

    /// Runs (again, up to 3 times, when the program says the run could not show anything:
    /// exit 9), prints one line, returns a failure message.
    fn go(&self) -> Option<String> {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        let start = Instant::now();
        let mut attempt = 0;
        let res = loop {
            attempt += 1;
            let res = run(self.program, &args, &env, CHILD_TIMEOUT);
            if attempt < 3 && !res.timed_out && res.status.code() == Some(EXIT_INCONCLUSIVE) {
                continue;
            }
            break res;
        };
        let ms = start.elapsed().as_millis();
        let got = outcome(&res);
        let mut problem = None;
        if res.timed_out {
            problem = Some(format!("timed out after {CHILD_TIMEOUT:?} (deadlock?)"));
        } else if !matches(&res, self.expect) {
            let want = match self.expect {
                Expect::Segv => "SIGSEGV (the kernel's kill for a stale rseq_cs)".to_string(),
                Expect::Exit(c) => format!("exit {c}"),
            };
            let fail_line = res
                .stdout
                .lines()
                .find(|l| l.starts_with("FAIL") || l.contains("panicked") || l.starts_with("SIGSEGV"))
                .or_else(|| res.stderr.lines().find(|l| l.contains("panic")))
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default();
            problem = Some(format!("expected {want}, got {got}{fail_line}"));
        } else if let Some(want) = self.owner {
            let seen = res
                .stdout
                .split("rseqrt_owner=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<i32>().ok());
            if seen != Some(want) {
                problem = Some(format!("expected rseqrt_owner={want}, the program reported {seen:?}"));
            }
        }
        if problem.is_none() {
            if let Some(check) = &self.check {
                problem = check(&res);
            }
        }
        let retry = if attempt > 1 { format!(", attempt {attempt}") } else { String::new() };
        match &problem {
            None => println!("ok    {}: {got} ({ms} ms{retry})", self.name),
            Some(why) => println!("FAIL  {}: {why} ({ms} ms{retry})", self.name),
        }
        if let Some(prefix) = self.echo {
            for l in res.stdout.lines().filter(|l| l.starts_with(prefix)) {
                println!("        {l}");
            }
        }
        problem.map(|why| format!("{}: {why}\n{res}", self.name))
    }
}

fn finish(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} scenario(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The plain row (must crash) and the rseqrt row (must survive) of a barrier_cases scenario
/// in both owner modes, plus any extra environment.
fn plain_and_rseqrt(scenario: &str, extra_args: &[&str], env: &[(&str, &str)], failures: &mut Vec<String>) {
    let p = programs();
    for mode in MODES {
        for (method, expect) in [("plain", Expect::Segv), ("rseqrt", Expect::Exit(0))] {
            let mut args = vec![scenario, method];
            args.extend_from_slice(extra_args);
            let mut r = Run::new(format!("{scenario} {method} [{}]", mode.name()), &p.cases, &args, mode, expect);
            for (k, v) in env {
                r = r.env(k, v);
            }
            if method == "rseqrt" {
                r = r.owner(mode.owner()).echo("observed");
            }
            failures.extend(r.go());
        }
    }
}

fn rseqrt_only(scenario: &str, extra_args: &[&str], env: &[(&str, &str)], failures: &mut Vec<String>) {
    let p = programs();
    for mode in MODES {
        let mut args = vec![scenario, "rseqrt"];
        args.extend_from_slice(extra_args);
        let label = if extra_args.is_empty() { String::new() } else { format!(" {}", extra_args.join(" ")) };
        let envs: String = env.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        let mut r = Run::new(
            format!("{scenario}{label}{envs} [{}]", mode.name()),
            &p.cases,
            &args,
            mode,
            Expect::Exit(0),
        )
        .owner(mode.owner())
        .echo("observed");
        for (k, v) in env {
            r = r.env(k, v);
        }
        failures.extend(r.go());
    }
}

/// 1. Several threads run rseqrt_munmap/rseqrt_clear/rseqrt_clear_all on different ranges
/// at once, over blocked, spinning and signal-blocking stale threads; 5 rounds. Every call
/// returns 0 and no stale thread's rseq_cs refers to a freed page afterwards.
#[test]
fn concurrent_barriers() {
    let mut f = Vec::new();
    plain_and_rseqrt("concurrent", &[], &[], &mut f);
    finish("concurrent barriers", f);
}

/// 2. Threads exit while a barrier runs: 8 threads with stale pointers exit while the
/// barrier waits (20 ms) for a thread that only glibc's broadcast reaches; then 300
/// short-lived threads run a critical section and exit while two threads run barriers
/// back to back. No crash, no deadlock, every barrier returns 0.
#[test]
fn threads_exiting_during_a_barrier() {
    let mut f = Vec::new();
    plain_and_rseqrt("exiting", &[], &[], &mut f);
    rseqrt_only("exiting-churn", &[], &[], &mut f);
    finish("threads exiting during a barrier", f);
}

/// 3. One thread forks 20 times while another runs barriers continuously (over a thread
/// that keeps refreshing its stale pointer and two blocked stale threads). Each child finds
/// its thread registered at the parent's address, runs barriers and rseqrt_munmap under a
/// stale thread of its own, and exits 0. Plain: the child's munmap kills the child.
#[test]
fn fork_during_a_barrier() {
    let mut f = Vec::new();
    plain_and_rseqrt("fork", &[], &[], &mut f);
    finish("fork during a barrier", f);
}

/// 4. A SIGUSR1 handler calls rseqrt_clear(RSEQRT_CLEAR_SIGNAL_SAFE): 0 when every thread is
/// known to rseqrt; -1 EAGAIN (nothing freed, the helper still refers) when a glibc
/// SIGEV_THREAD helper holds the stale pointer, which rseqrt_munmap outside the handler then
/// clears.
#[test]
fn barrier_from_a_signal_handler() {
    let mut f = Vec::new();
    plain_and_rseqrt("sighandler", &[], &[], &mut f);
    plain_and_rseqrt("sighandler-timer", &[], &[], &mut f);
    finish("barrier from a signal handler", f);
}

/// 5. The thread calling rseqrt_munmap holds a mutex standing for malloc's lock, three stale
/// threads wait for it (and one blocks every signal with the raw syscall, so glibc's
/// broadcast runs too): no deadlock; and the program's own malloc/calloc/realloc/free/
/// memalign interposers count zero calls during rseqrt_munmap (they count 3 of 3 on a probe).
#[test]
fn munmap_under_an_allocators_lock() {
    let mut f = Vec::new();
    plain_and_rseqrt("malloclock", &[], &[], &mut f);
    finish("munmap under an allocator's lock", f);
}

/// 6. Bad input: rseqrt_munmap gives munmap's -1 EINVAL (unaligned, length 0, overflow,
/// kernel address) and unmaps nothing; unknown flags and length 0 give EINVAL;
/// rseqrt_dlclose(bogus handle) returns what dlclose returns, with the same dlerror().
#[test]
fn bad_input_loses_nothing() {
    let mut f = Vec::new();
    rseqrt_only("badinput", &[], &[], &mut f);
    finish("bad input", f);
}

/// 7. A failed barrier frees nothing. The unreachable thread is a raw clone() thread (not in
/// glibc's thread list, so glibc's SIGSETXID broadcast skips it), registered with
/// rseqrt_register_current_thread(), blocking every signal with the raw syscall: with
/// RSEQRT_TIMEOUT_MS=200, rseqrt_munmap fails with ETIMEDOUT after ~200 ms, the page stays
/// mapped with the descriptor intact; woken, the thread survives (plain munmap: SIGSEGV).
/// Also: a pthread that blocks the reserved signal with the raw syscall IS reached (glibc's
/// broadcast after 20 ms).
#[test]
fn failed_barrier_frees_nothing() {
    let mut f = Vec::new();
    plain_and_rseqrt("unreachable", &[], &[("RSEQRT_TIMEOUT_MS", "200")], &mut f);
    plain_and_rseqrt("rawmask", &[], &[], &mut f);
    // A raw clone() thread unknown to both rseqrt and glibc is found and signalled.
    plain_and_rseqrt("rawunknown", &[], &[], &mut f);
    finish("failed barrier", f);
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
    for mode in MODES {
        let r = Run::new(
            format!("mixed plain, membarrier ENOSYS [{}]", mode.name()),
            &p.nomembarrier,
            &["ENOSYS", &cases, "mixed", "plain", &plugin],
            mode,
            Expect::Segv,
        );
        f.extend(r.go());
        let r = Run::new(format!("mixed rseqrt, membarrier available [{}]", mode.name()), &p.cases, &["mixed", "rseqrt", &plugin], mode, Expect::Exit(0))
            .owner(mode.owner());
        f.extend(r.go());
        for (errno, text) in [("ENOSYS", "errno 38"), ("EPERM", "errno 1")] {
            let r = Run::new(
                format!("mixed rseqrt, membarrier {errno} [{}]", mode.name()),
                &p.nomembarrier,
                &[errno, &cases, "mixed", "rseqrt", &plugin],
                mode,
                Expect::Exit(0),
            )
            .owner(mode.owner())
            .check(move |res| {
                let want = format!("membarrier(QUERY) = -1, {text}");
                (!res.stdout.contains(&want)).then(|| format!("the child did not see membarrier refused ({want})"))
            });
            f.extend(r.go());
        }
    }
    finish("no membarrier", f);
}

/// 9. Signal interposers: sigfillset + pthread_sigmask / sigprocmask leave the reserved
/// signal unblocked (SigBlk); sigaction() refuses to change it (EINVAL) but answers queries;
/// sigwait/sigwaitinfo/sigtimedwait on a full set never return it while a barrier signals
/// the waiting thread (plain: that waiter's thread is killed); RSEQRT_SIGNAL=N selects N.
/// Also prints what glibc's signal() does to the reserved signal (an observation).
#[test]
fn signal_interposers() {
    let mut f = Vec::new();
    plain_and_rseqrt("sigmask", &["auto"], &[], &mut f);
    rseqrt_only("sigmask", &["40"], &[("RSEQRT_SIGNAL", "40")], &mut f);
    rseqrt_only("sigmask", &["36"], &[("RSEQRT_SIGNAL", "36")], &mut f);
    rseqrt_only("signal-fn", &[], &[], &mut f);
    finish("signal interposers", f);
}

/// 10. The preload shim: mremap that moves (MREMAP_FIXED, or MAYMOVE growth that cannot
/// happen in place) or shrinks away the page holding a descriptor, and mmap(MAP_FIXED) over
/// it (read-write or PROT_NONE), crash plain and survive under LD_PRELOAD.
#[test]
fn preload_mremap_and_mmap_fixed() {
    let p = programs();
    let preload = p.stage.lib("rseqrt/librseqrt_preload.so").display().to_string();
    let lib = p.stage.lib("librseqrt.so").display().to_string();
    let mut f = Vec::new();
    for op in ["mremap-move", "mremap-grow", "mremap-shrink", "mmap-fixed", "mmap-fixed-none"] {
        for mode in MODES {
            // Plain: glibc's own registration; under rseq=0 nothing registers without rseqrt,
            // so the baseline preloads librseqrt.so, which interposes neither call.
            let mut plain = Run::new(format!("{op} plain [{}]", mode.name()), &p.preload_prog, &[op, "plain"], mode, Expect::Segv);
            if mode == Mode::Own {
                plain.name = format!("{op} plain+librseqrt [{}]", mode.name());
                plain = plain.env("LD_PRELOAD", &lib);
            }
            f.extend(plain.go());
            let r = Run::new(format!("{op} preload [{}]", mode.name()), &p.preload_prog, &[op, "preload"], mode, Expect::Exit(0))
                .env("LD_PRELOAD", &preload);
            f.extend(r.go());
        }
    }
    finish("preload mremap/mmap", f);
}

/// 11. rseqrt_clear_all: afterwards every registered thread's rseq_cs is 0, read from outside
/// and by each thread itself after waking (blocked, signal-blocking, spinning threads), and a
/// plain munmap of the memory their descriptors were in is safe (without it: SIGSEGV).
#[test]
fn clear_all_then_plain_munmap() {
    let mut f = Vec::new();
    plain_and_rseqrt("clearall", &[], &[], &mut f);
    finish("clear_all", f);
}

/// 12. Threads started through rseqrt's pthread_create trampoline that end by returning,
/// pthread_exit(), deferred or asynchronous cancellation: join values, cleanup handlers and
/// thread-specific data destructors as usual; their stacks (holding their areas) are then
/// unmapped and later barriers (clear_all, munmap of the page their rseq_cs referred to,
/// new threads in reused slots) succeed without touching the dead threads' areas.
#[test]
fn pthread_exit_and_cancel_through_the_trampoline() {
    let mut f = Vec::new();
    for how in ["return", "exit", "cancel", "async"] {
        rseqrt_only("exitcancel", &[how], &[], &mut f);
    }
    finish("pthread_exit / pthread_cancel", f);
}
