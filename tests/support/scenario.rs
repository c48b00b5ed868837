//! Scenario runner shared by the barrier, regress and crash suites: a C program run in its own
//! child process in one of the two owner modes, with an expected outcome (the kernel's
//! SIGSEGV, or an exit status), again when the program reports that the run could not
//! show anything (exit 9), and one printed line per scenario.
//!
//! For the suites built on cases programs (`barrier_cases.c`, `regress_cases.c` and their
//! siblings) and a preload program (`barrier_preload.c`, `regress_preload.c`): [`Suite`] runs
//! [`Case`]s (a plain row that must die by SIGSEGV, then an rseqrt row that must exit 0, in each
//! owner mode) and preload operations (plain, then under the preload shim), one child at a time.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{run, RunResult, Stage};

pub const TUNABLE_OFF: &str = "glibc.pthread.rseq=0";
pub const SIGSEGV: i32 = 11;
/// The test programs' exit status for "this run could not show anything" (the stale
/// pointer was cleared by a preemption before or during the free): run again.
pub const EXIT_INCONCLUSIVE: i32 = 9;

/// Who registers the threads' rseq areas.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    /// glibc registers every thread; rseqrt adopts glibc's areas.
    Glibc,
    /// rseqrt registers its own areas: glibc before 2.35 as it is, later ones with
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0` and `RSEQRT_REGISTER=1`.
    Own,
}

/// This glibc's version as (major, minor).
pub fn glibc_version() -> (u32, u32) {
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }.to_string_lossy().into_owned();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether this glibc registers rseq for every thread (2.35 and later).
pub fn glibc_registers() -> bool {
    glibc_version() >= (2, 35)
}

/// The owner modes this glibc has: both from 2.35 on; before it glibc registers nothing, so
/// rseqrt owns registration with no setting at all, and "glibc-owner" rows do not exist (said
/// once per test binary).
pub fn modes() -> &'static [Mode] {
    static SAID: std::sync::Once = std::sync::Once::new();
    if glibc_registers() {
        &[Mode::Glibc, Mode::Own]
    } else {
        SAID.call_once(|| {
            let (a, b) = glibc_version();
            super::skip(&format!("[glibc-owner] rows: glibc {a}.{b} registers no rseq (rseqrt owns with no setting)"));
        });
        &[Mode::Own]
    }
}

/// Both modes, for a case's default mode lists (rows run only in [`modes`]).
pub const MODES: [Mode; 2] = [Mode::Glibc, Mode::Own];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc-owner",
            Mode::Own if glibc_registers() => "rseq=0",
            Mode::Own => "self-owner",
        }
    }
    /// The `rseqrt_owner()` a program linked with rseqrt reports in this mode.
    pub fn owner(self) -> i32 {
        match self {
            Mode::Glibc => 1,
            Mode::Own => 2,
        }
    }
    /// The environment that selects this mode.
    pub fn env(self) -> Vec<(String, String)> {
        match self {
            // glibc's opt-out, and RSEQRT_REGISTER=1 so that rseqrt registers in glibc's place
            // (without it rseqrt leaves registration to the program as well).
            Mode::Own if glibc_registers() => {
                vec![("GLIBC_TUNABLES".into(), TUNABLE_OFF.into()), ("RSEQRT_REGISTER".into(), "1".into())]
            }
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Expect {
    /// Killed by SIGSEGV (the kernel's kill for a stale rseq_cs).
    Segv,
    Exit(i32),
}

/// What happened to a child, in words.
pub fn outcome(res: &RunResult) -> String {
    match res.signal() {
        Some(SIGSEGV) => "SIGSEGV".into(),
        Some(s) => format!("signal {s}"),
        None => format!("exit {}", res.status.code().unwrap_or(-1)),
    }
}

pub fn matches(res: &RunResult, expect: Expect) -> bool {
    !res.timed_out
        && match expect {
            Expect::Segv => res.signal() == Some(SIGSEGV),
            Expect::Exit(c) => res.signal().is_none() && res.status.code() == Some(c),
        }
}

fn inconclusive(res: &RunResult) -> bool {
    !res.timed_out && res.signal().is_none() && res.status.code() == Some(EXIT_INCONCLUSIVE)
}

/// The `rseqrt_owner=N` the program printed first (-1: rseqrt not loaded).
pub fn reported_owner(out: &str) -> Option<i32> {
    let rest = out.split("rseqrt_owner=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// An extra check on a run that met its expectation: a failure message, or None.
pub type Check<'a> = Box<dyn Fn(&RunResult) -> Option<String> + 'a>;

/// A scenario run: program, arguments, environment, expectation, and extra checks on a run
/// that met the expectation.
pub struct Scenario<'a> {
    pub name: String,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub expect: Expect,
    /// `rseqrt_owner=N` the program must print.
    pub owner: Option<i32>,
    /// Runs in all, while the program reports exit 9 (inconclusive).
    pub attempts: usize,
    pub timeout: Duration,
    /// Lines of the child's stdout starting with this prefix are echoed after the result line.
    pub echo: Option<&'a str>,
    pub check: Option<Check<'a>>,
}

impl<'a> Scenario<'a> {
    /// `program args` in `mode`'s environment; 3 attempts and a 20 s timeout unless changed.
    pub fn new<S: AsRef<str>>(name: String, program: &'a Path, args: &[S], mode: Mode, expect: Expect) -> Self {
        Scenario {
            name,
            program,
            args: args.iter().map(|s| s.as_ref().to_string()).collect(),
            env: mode.env(),
            expect,
            owner: None,
            attempts: 3,
            timeout: Duration::from_secs(20),
            echo: None,
            check: None,
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
    pub fn owner(mut self, o: i32) -> Self {
        self.owner = Some(o);
        self
    }
    pub fn attempts(mut self, n: usize) -> Self {
        self.attempts = n;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn echo(mut self, prefix: &'a str) -> Self {
        self.echo = Some(prefix);
        self
    }
    pub fn check(mut self, f: impl Fn(&RunResult) -> Option<String> + 'a) -> Self {
        self.check = Some(Box::new(f));
        self
    }

    /// Runs (again, up to `attempts` runs in all, while the program says the run could not
    /// show anything and that is not what is expected), prints one line, returns a failure
    /// message.
    pub fn go(&self) -> Option<String> {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        let retry_inconclusive = self.expect != Expect::Exit(EXIT_INCONCLUSIVE);
        let start = Instant::now();
        let mut attempt = 0;
        let res = loop {
            attempt += 1;
            let res = run(self.program, &args, &env, self.timeout);
            if attempt < self.attempts && retry_inconclusive && inconclusive(&res) {
                continue;
            }
            break res;
        };
        let ms = start.elapsed().as_millis();
        let got = outcome(&res);
        let mut problem = None;
        if res.timed_out {
            problem = Some(format!("timed out after {:?} (deadlock?)", self.timeout));
        } else if retry_inconclusive && inconclusive(&res) {
            problem = Some(format!("inconclusive in all {} attempts (exit {EXIT_INCONCLUSIVE})", self.attempts));
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
            let seen = reported_owner(&res.stdout);
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

/// Fails the test, listing every failed scenario, if there is any.
pub fn finish(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} scenario(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// One child at a time in a test binary (timing checks and spinning threads share the cores).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one scenario (one child at a time), returns a failure message.
pub fn go(s: Scenario) -> Option<String> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    s.go()
}

/// A scenario of a suite's cases program: `PROGRAM SCENARIO plain|rseqrt ARGS...`.
pub struct Case {
    pub scenario: &'static str,
    pub args: Vec<String>,
    /// Environment on top of the mode's.
    pub env: Vec<(String, String)>,
    /// Modes where the plain row (must die by SIGSEGV) runs before the rseqrt row.
    pub plain_in: &'static [Mode],
    /// Modes where the rseqrt row runs.
    pub modes: &'static [Mode],
    /// The program (the suite's cases program unless set).
    pub program: Option<&'static Path>,
    /// `rseqrt_owner=N` the rseqrt row must print, when not the mode's.
    pub owner: Option<i32>,
}

/// The plain row and the rseqrt row, in both modes.
pub fn case(scenario: &'static str, args: &[&str]) -> Case {
    Case {
        scenario,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        plain_in: &MODES,
        modes: &MODES,
        program: None,
        owner: None,
    }
}

impl Case {
    /// No plain row.
    pub fn rseqrt_only(self) -> Self {
        Case { plain_in: &[], ..self }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A path's file name (as given, when it has none).
fn short(p: &str) -> String {
    Path::new(p).file_name().map_or(p.to_string(), |f| f.to_string_lossy().into_owned())
}

/// What a suite's runs share: the staged tree (its library directory on LD_LIBRARY_PATH) and
/// the child's timeout. Each scenario runs up to 3 times in all while the program reports exit 9
/// (inconclusive): [`Scenario::new`]'s default.
#[derive(Clone, Copy)]
pub struct Suite {
    pub stage: &'static Stage,
    pub timeout: Duration,
}

impl Suite {
    /// A scenario run in `mode` with the staged library on LD_LIBRARY_PATH.
    pub fn scenario<'a, S: AsRef<str>>(
        &self,
        name: String,
        program: &'a Path,
        args: &[S],
        mode: Mode,
        expect: Expect,
    ) -> Scenario<'a> {
        Scenario::new(name, program, args, mode, expect)
            .env("LD_LIBRARY_PATH", &self.stage.lib_dir.display().to_string())
            .timeout(self.timeout)
    }

    /// Runs the cases of `program` (plain row where asked, then the rseqrt row, each in its
    /// modes; the rseqrt row must report the mode's owner) and fails the test if any failed.
    pub fn run_cases(&self, what: &str, program: &Path, cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            let program = case.program.unwrap_or(program);
            let label: String = case.args.iter().map(|a| format!(" {}", short(a))).collect();
            let envs: String = case
                .env
                .iter()
                .map(|(k, v)| {
                    let parts: Vec<String> = v.split(' ').map(short).collect();
                    format!(" {k}={}", parts.join(" "))
                })
                .collect();
            for &mode in modes() {
                let mut methods = Vec::new();
                if case.plain_in.contains(&mode) {
                    methods.push(("plain", Expect::Segv));
                }
                if case.modes.contains(&mode) {
                    methods.push(("rseqrt", Expect::Exit(0)));
                }
                for (method, expect) in methods {
                    let mut args = vec![case.scenario.to_string(), method.to_string()];
                    args.extend(case.args.iter().cloned());
                    let name = format!("{}{label}{envs} {method} [{}]", case.scenario, mode.name());
                    let mut r = self.scenario(name, program, &args, mode, expect);
                    for (k, v) in &case.env {
                        r = r.env(k, v);
                    }
                    if method == "rseqrt" {
                        r = r.owner(case.owner.unwrap_or(mode.owner())).echo("observed");
                    }
                    failures.extend(go(r));
                }
            }
        }
        finish(what, failures);
    }

    /// Runs `program OP plain|preload ARGS...` for each `[OP, ARGS...]` in both modes (plain: must
    /// die by SIGSEGV; preload: librseqrt_preload.so, must exit 0). Plain under rseq=0 preloads
    /// librseqrt.so (which interposes none of the calls) so that the threads are registered at
    /// all.
    pub fn run_preload(&self, what: &str, program: &Path, ops: &[&[&str]]) {
        let preload = self.stage.lib("rseqrt/librseqrt_preload.so").display().to_string();
        let lib = self.stage.lib("librseqrt.so").display().to_string();
        let mut f = Vec::new();
        for op in ops {
            let shown = op[0];
            for &mode in modes() {
                let plain_args: Vec<&str> = [&[op[0], "plain"], &op[1..]].concat();
                let mut plain =
                    self.scenario(format!("{shown} plain [{}]", mode.name()), program, &plain_args, mode, Expect::Segv);
                if mode == Mode::Own {
                    plain.name = format!("{shown} plain+librseqrt [{}]", mode.name());
                    plain = plain.env("LD_PRELOAD", &lib);
                }
                f.extend(go(plain));
                let args: Vec<&str> = [&[op[0], "preload"], &op[1..]].concat();
                let r = self
                    .scenario(format!("{shown} preload [{}]", mode.name()), program, &args, mode, Expect::Exit(0))
                    .env("LD_PRELOAD", &preload);
                f.extend(go(r));
            }
        }
        finish(what, f);
    }
}
