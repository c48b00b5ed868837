//! Scenario runner shared by the barrier and crash suites: a C program run in its own
//! child process in one of the two owner modes, with an expected outcome (the kernel's
//! SIGSEGV, or an exit status), again when the program reports that the run could not
//! show anything (exit 9), and one printed line per scenario.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{run, RunResult};

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
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: rseqrt registers its own areas.
    Own,
}

pub const MODES: [Mode; 2] = [Mode::Glibc, Mode::Own];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc-owner",
            Mode::Own => "rseq=0",
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
            Mode::Glibc => Vec::new(),
            Mode::Own => vec![("GLIBC_TUNABLES".into(), TUNABLE_OFF.into())],
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
