//! Shared harness for the tests that build and run C programs against the
//! staged library: stage the build once, compile C files into `build/tests/`,
//! run a child with a controlled environment and a timeout, and inspect the
//! relocations of a binary. Each test binary includes it with `mod support;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod scenario;

/// The repository root (where the Makefile is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Says that (part of) a test was skipped, and why, where `make check` shows it: on the process's
/// standard error directly, which cargo's capture of a passing test's output does not hold back.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skip  {why}");
}

/// Where test programs and their run logs go.
pub fn tests_build_dir() -> PathBuf {
    let dir = repo_root().join("build").join("tests");
    fs::create_dir_all(&dir).expect("create build/tests");
    dir
}

/// A C source of the C test suites, by file name (`c-abi-tests/NAME`).
pub fn c_test_source(name: &str) -> PathBuf {
    repo_root().join("c-abi-tests").join(name)
}

/// The installed tree that `make stage` produces (`make install` into build/stage).
#[derive(Debug, Clone)]
pub struct Stage {
    pub prefix: PathBuf,
    pub lib_dir: PathBuf,
    pub include_dir: PathBuf,
    pub pkgconfig_dir: PathBuf,
}

impl Stage {
    /// `build/stage/lib/NAME`.
    pub fn lib(&self, name: &str) -> PathBuf {
        self.lib_dir.join(name)
    }

    /// `pkg-config ARGS rseqrt`-style query against the staged .pc file,
    /// split into arguments.
    pub fn pkg_config(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(args)
            .env("PKG_CONFIG_PATH", &self.pkgconfig_dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkg-config: {e}"));
        if !out.status.success() {
            panic!(
                "pkg-config {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Compiler and linker flags for a program linked with rseqrt, with an
    /// rpath so the program finds the staged library without LD_LIBRARY_PATH.
    pub fn rseqrt_flags(&self) -> (Vec<String>, Vec<String>) {
        let cflags = self.pkg_config(&["--cflags", "rseqrt"]);
        let mut libs = self.pkg_config(&["--libs", "rseqrt"]);
        libs.push(format!("-Wl,-rpath,{}", self.lib_dir.display()));
        (cflags, libs)
    }
}

/// Runs `make -s stage` once per test process (it is idempotent) and returns
/// the staged tree. Every caller fails, with make's output, if it failed.
pub fn stage() -> &'static Stage {
    static STAGE: OnceLock<Result<Stage, String>> = OnceLock::new();
    let result = STAGE.get_or_init(|| {
        let root = repo_root();
        // RSEQRT_STAGE: an installed tree made elsewhere, tested as it is (an unpacked `make
        // dist` tarball, or an older build to watch a regression test fail there); otherwise
        // this tree's `make stage`.
        let prefix = match std::env::var_os("RSEQRT_STAGE") {
            Some(dir) => PathBuf::from(dir),
            None => {
                checked_output(
                    Command::new("make").args(["-s", "stage"]).current_dir(&root),
                    "`make -s stage`",
                )?;
                root.join("build").join("stage")
            }
        };
        let stage = Stage {
            lib_dir: prefix.join("lib"),
            include_dir: prefix.join("include"),
            pkgconfig_dir: prefix.join("lib").join("pkgconfig"),
            prefix,
        };
        for want in [
            stage.lib("librseqrt.so"),
            stage.include_dir.join("rseqrt.h"),
            stage.pkgconfig_dir.join("rseqrt.pc"),
        ] {
            if !want.exists() {
                return Err(format!(
                    "the staged tree {} lacks {}",
                    stage.prefix.display(),
                    want.display()
                ));
            }
        }
        Ok(stage)
    });
    match result {
        Ok(stage) => stage,
        Err(msg) => panic!("{msg}"),
    }
}

/// Runs `cmd` (stdin from /dev/null) to completion; an error, naming it `what` and
/// showing its output, unless it ran and succeeded.
fn checked_output(cmd: &mut Command, what: &str) -> Result<std::process::Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn cc_build(cpp: bool) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cargo_metadata(false)
        .opt_level(2)
        .target("x86_64-unknown-linux-gnu")
        .host("x86_64-unknown-linux-gnu")
        .cpp(cpp)
        // cc adds -fPIC by default; these programs must be gcc's default PIE
        // so that direct reads of data in shared objects use copy relocations.
        .pic(false);
    build
}

/// The C compiler the `cc` crate selects, with its default flags.
pub fn c_compiler() -> Command {
    cc_build(false).get_compiler().to_command()
}

/// The C++ compiler the `cc` crate selects, with its default flags.
pub fn cxx_compiler() -> Command {
    cc_build(true).get_compiler().to_command()
}

/// What to compile: `compiler [cflags] -o build/tests/OUTPUT sources [libs]`.
#[derive(Debug, Clone, Default)]
pub struct CompileSpec {
    pub output: String,
    pub sources: Vec<PathBuf>,
    pub cflags: Vec<String>,
    pub libs: Vec<String>,
    pub cxx: bool,
}

impl CompileSpec {
    pub fn new(output: &str, sources: &[PathBuf]) -> Self {
        CompileSpec {
            output: output.into(),
            sources: sources.to_vec(),
            ..Default::default()
        }
    }
    pub fn cflags<S: AsRef<str>>(mut self, flags: &[S]) -> Self {
        self.cflags
            .extend(flags.iter().map(|f| f.as_ref().to_string()));
        self
    }
    pub fn libs<S: AsRef<str>>(mut self, libs: &[S]) -> Self {
        self.libs
            .extend(libs.iter().map(|f| f.as_ref().to_string()));
        self
    }
    pub fn cxx(mut self) -> Self {
        self.cxx = true;
        self
    }
}

/// A C test program of `c-abi-tests/` linked with the staged rseqrt, warnings as errors, with
/// threads and `dlopen` (see [`compile`]).
pub fn compile_linked(output: &str, source: &str) -> PathBuf {
    let (cflags, libs) = stage().rseqrt_flags();
    compile(
        &CompileSpec::new(output, &[c_test_source(source)])
            .cflags(&["-Wall", "-Wextra", "-Werror"])
            .cflags(&cflags)
            .libs(&libs)
            .libs(&["-pthread", "-ldl"]),
    )
}

/// Compiles into `build/tests/<output>` and returns the path. Within one test
/// process a given output is built once (later calls return the first result,
/// so tests sharing a program do not race to write it); a compile error
/// panics with the command and the compiler's output.
pub fn compile(spec: &CompileSpec) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    let result = built
        .entry(spec.output.clone())
        .or_insert_with(|| compile_now(spec))
        .clone();
    result.unwrap_or_else(|msg| panic!("{msg}"))
}

fn compile_now(spec: &CompileSpec) -> Result<PathBuf, String> {
    let out = tests_build_dir().join(&spec.output);
    // Write beside the target and rename, so a half-written binary never runs.
    let tmp = tests_build_dir().join(format!(".{}.tmp{}", spec.output, std::process::id()));
    let mut cmd = if spec.cxx {
        cxx_compiler()
    } else {
        c_compiler()
    };
    cmd.args(&spec.cflags).arg("-o").arg(&tmp);
    if spec.cxx {
        cmd.arg("-x")
            .arg("c++")
            .args(&spec.sources)
            .arg("-x")
            .arg("none");
    } else {
        cmd.args(&spec.sources);
    }
    cmd.args(&spec.libs);
    // Before glibc 2.34, pthread_*, dl* and timer_* live in libpthread, libdl and librt; naming
    // them last costs nothing on newer glibc (they are empty there and dropped by --as-needed).
    cmd.args(["-pthread", "-ldl", "-lrt"]);
    // Debug of a Command lists the whole environment; show program and args only.
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    checked_output(&mut cmd, &format!("compiling {}: {shown}", spec.output))?;
    fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    Ok(out)
}

/// `c-abi-tests/seccomp_exec.c`, built (once per test process) with every warning an
/// error: `seccomp_exec SYSCALL ERRNO PROG [ARGS...]` runs PROG where SYSCALL (`rseq` or
/// `membarrier`) answers ERRNO (`ENOSYS` or `EPERM`).
pub fn seccomp_exec() -> PathBuf {
    compile(
        &CompileSpec::new("seccomp_exec", &[c_test_source("seccomp_exec.c")])
            .cflags(&["-Wall", "-Wextra", "-Werror"]),
    )
}

/// A finished (or timed-out and killed) child.
#[derive(Debug)]
pub struct RunResult {
    pub command: String,
    pub status: ExitStatus,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl RunResult {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
    /// The signal that ended the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        if self.timed_out {
            writeln!(f, "status: killed after timeout")?;
        } else {
            writeln!(f, "status: {}", self.status)?;
        }
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

/// Variables cleared in every child before `env` is applied, so that the
/// caller's own environment cannot change a scenario.
pub const SCRUBBED_ENV: &[&str] = &[
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "GLIBC_TUNABLES",
    "RSEQRT_SIGNAL",
    "RSEQRT_TIMEOUT_MS",
    "RSEQRT_REGISTER",
];

/// Runs `program args` with `env` on top of the scrubbed environment (also
/// dropping every other `RSEQRT_*` variable), stdin from /dev/null, and kills
/// it after `timeout`. Output goes through files, not pipes, so a grandchild
/// that outlives the child cannot make the harness hang.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunResult {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let base = tests_build_dir().join(format!(".run-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));

    let mut cmd = Command::new(program);
    cmd.args(args);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if key.starts_with("RSEQRT_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let command = format!(
        "{} {} {}",
        shown_env.join(" "),
        program.display(),
        args.join(" ")
    )
    .trim()
    .to_string();

    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| {
        let s = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let _ = fs::remove_file(p);
        s
    };
    RunResult {
        command,
        status,
        timed_out,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Whether `binary` has an R_X86_64_COPY relocation for `symbol` (any
/// version), per `readelf -rW`.
pub fn has_copy_reloc(binary: &Path, symbol: &str) -> bool {
    let out = Command::new("readelf")
        .arg("-rW")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run readelf: {e}"));
    assert!(
        out.status.success(),
        "readelf -rW {} failed: {}",
        binary.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        // offset info type value name + addend
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 5
            && fields[2] == "R_X86_64_COPY"
            && fields[4].split('@').next() == Some(symbol)
    })
}
