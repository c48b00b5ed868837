//! `rseqrt selftest`: reproduces the stale-`rseq_cs` crash in child processes, first without
//! rseqrt's barrier, then with it.
//!
//! Each child (this binary re-executed with the hidden `--child SCENARIO METHOD DIR`) starts a
//! thread that runs one restartable-sequence critical section whose descriptor lives in memory
//! the main thread is about to free, then blocks in `read()` on a pipe. The main thread frees the
//! memory (plain `dlclose()`/`munmap()`, or rseqrt's), then writes to the pipe. When the thread
//! wakes, the kernel reads its stale `rseq_cs`: if the memory is gone, it kills the process with
//! SIGSEGV. The child exits 0 if it survives.

use serde::Serialize;
use std::ffi::{c_int, c_ulong, c_void, CString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PLUGIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libselftest_plugin.so"));
pub const DEP_LIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libselftest_dep_lib.so"));
pub const DEP_TOP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libselftest_dep_top.so"));

// Child exit codes (besides 0 = survived, and death by a signal).
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_REGISTERED: i32 = 3;
const EXIT_FREE_FAILED: i32 = 4;
const EXIT_NOT_UNLOADED: i32 = 6;
const EXIT_NOT_STALE: i32 = 9;

/// The first argument of this program re-executed as a selftest child (see the module doc).
pub const CHILD_FLAG: &str = "--child";

const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "dlclose", what: "dlclose() of a plugin that holds the critical section's descriptor" },
    Scenario { name: "dlclose-dep", what: "dlclose() of a plugin, which unloads its dependency that holds the descriptor" },
    Scenario { name: "munmap", what: "munmap() of a page that holds the descriptor" },
];

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let base = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let mut tmpl = CString::new(base.into_os_string().into_encoded_bytes()).unwrap().into_bytes_with_nul();
        // SAFETY: mkdtemp rewrites the template in place.
        if unsafe { libc::mkdtemp(tmpl.as_mut_ptr().cast()) }.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        tmpl.pop();
        Ok(TempDir(PathBuf::from(String::from_utf8(tmpl).unwrap())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the embedded plugins into `dir`.
pub fn write_plugins(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("libselftest_plugin.so"), PLUGIN)?;
    std::fs::write(dir.join("libselftest_dep_lib.so"), DEP_LIB)?;
    std::fs::write(dir.join("libselftest_dep_top.so"), DEP_TOP)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The child side.

fn dlopen(path: &Path, flags: c_int) -> *mut c_void {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    unsafe { libc::dlopen(c.as_ptr(), flags) }
}

fn dlsym(h: *mut c_void, name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: a valid handle and a NUL-terminated name.
    unsafe { libc::dlsym(h, name.as_ptr()) }
}

fn die(code: i32, msg: &str) -> ! {
    eprintln!("selftest child: {msg}");
    std::process::exit(code)
}

type IncFn = unsafe extern "C" fn(*mut i64) -> c_int;
type RunFn = unsafe extern "C" fn(*mut i64, *const c_void) -> c_int;
type DescribeFn = unsafe extern "C" fn(*mut c_void);
type CsFn = unsafe extern "C" fn() -> c_ulong;

/// Runs one scenario in this (child) process; never returns.
pub fn child(args: &[String]) -> ! {
    let [scenario, method, dir] = args else { die(EXIT_USAGE, "usage: --child SCENARIO plain|rseqrt DIR") };
    let (scenario, dir) = (scenario.as_str(), Path::new(dir));
    let protect = match method.as_str() {
        "plain" => false,
        "rseqrt" => true,
        _ => die(EXIT_USAGE, "method must be plain or rseqrt"),
    };
    // No core file for the expected crash.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system call with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };

    let flags = libc::RTLD_NOW | libc::RTLD_LOCAL;
    let (lib_path, handle): (PathBuf, *mut c_void);
    let run: Box<dyn Fn(*mut i64) -> c_int + Send + Sync>;
    let current_cs: CsFn;
    let mut page: *mut c_void = std::ptr::null_mut();
    match scenario {
        "dlclose" | "munmap" => {
            lib_path = dir.join("libselftest_plugin.so");
            handle = dlopen(&lib_path, flags);
            if handle.is_null() {
                die(EXIT_USAGE, "cannot load the selftest plugin");
            }
            // SAFETY: the plugin's exported functions, with their C signatures.
            unsafe {
                current_cs = std::mem::transmute::<*mut c_void, CsFn>(dlsym(handle, c"selftest_current_cs"));
                if scenario == "dlclose" {
                    let inc: IncFn = std::mem::transmute(dlsym(handle, c"selftest_inc"));
                    run = Box::new(move |c| inc(c));
                } else {
                    let describe: DescribeFn = std::mem::transmute(dlsym(handle, c"selftest_describe"));
                    let run_with: RunFn = std::mem::transmute(dlsym(handle, c"selftest_run"));
                    page = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE,
                                      libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                    if page == libc::MAP_FAILED {
                        die(EXIT_USAGE, "mmap failed");
                    }
                    describe(page);
                    let desc = page as usize;
                    run = Box::new(move |c| run_with(c, desc as *const c_void));
                }
            }
        }
        "dlclose-dep" => {
            lib_path = dir.join("libselftest_dep_lib.so");
            handle = dlopen(&dir.join("libselftest_dep_top.so"), flags);
            if handle.is_null() {
                die(EXIT_USAGE, "cannot load the selftest plugin");
            }
            // SAFETY: as above.
            unsafe {
                current_cs = std::mem::transmute::<*mut c_void, CsFn>(dlsym(handle, c"selftest_dep_current_cs"));
                let inc: IncFn = std::mem::transmute(dlsym(handle, c"selftest_dep_inc"));
                run = Box::new(move |c| inc(c));
            }
        }
        _ => die(EXIT_USAGE, "unknown scenario"),
    }

    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die(EXIT_USAGE, "pipe failed");
    }
    let (rd, wr) = (fds[0], fds[1]);
    // cpu the thread ran on (-1: not registered), or i64::MIN while not yet known.
    let seen_cpu = Arc::new(AtomicI64::new(i64::MIN));
    let seen_cs = Arc::new(AtomicU64::new(0));
    let (cpu2, cs2) = (seen_cpu.clone(), seen_cs.clone());
    let thread = std::thread::spawn(move || {
        // The CLI links rseqrt as a Rust crate, which does not wrap pthread_create: register
        // this thread and enter it in rseqrt's registry (EBUSY: glibc already registered it).
        // Done in both runs, so that they differ only in how the memory is freed.
        let _ = rseqrt::register_current_thread();
        let mut counters = vec![0i64; 4096];
        let cpu = run(counters.as_mut_ptr());
        // SAFETY: a function of a still-loaded plugin.
        cs2.store(unsafe { current_cs() } as u64, SeqCst);
        cpu2.store(cpu as i64, SeqCst);
        let mut b = 0u8;
        // Block: the stale rseq_cs stays in place until the kernel next returns to user space here.
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(rd, (&mut b as *mut u8).cast(), 1) };
    });
    while seen_cpu.load(SeqCst) == i64::MIN {
        std::thread::sleep(Duration::from_millis(1));
    }
    if seen_cpu.load(SeqCst) < 0 {
        die(EXIT_NOT_REGISTERED, "the thread has no registered rseq area");
    }
    if seen_cs.load(SeqCst) == 0 {
        die(EXIT_NOT_STALE, "the thread's rseq_cs was already 0");
    }
    // Let the thread reach read() and block.
    std::thread::sleep(Duration::from_millis(20));

    // SAFETY: freeing what this function mapped or loaded, with the C signatures.
    let failed = unsafe {
        if scenario == "munmap" {
            if protect { rseqrt::capi::rseqrt_munmap(page, 4096) != 0 } else { libc::munmap(page, 4096) != 0 }
        } else if protect {
            rseqrt::capi::rseqrt_dlclose(handle) != 0
        } else {
            libc::dlclose(handle) != 0
        }
    };
    if failed {
        die(EXIT_FREE_FAILED, &format!("freeing failed: {}", std::io::Error::last_os_error()));
    }
    if scenario != "munmap" && !dlopen(&lib_path, libc::RTLD_NOLOAD | libc::RTLD_LAZY).is_null() {
        die(EXIT_NOT_UNLOADED, "the library stayed loaded after dlclose()");
    }
    // Wake the thread: its kernel now processes the (possibly stale) rseq_cs.
    // SAFETY: writes one byte.
    unsafe { libc::write(wr, b"x".as_ptr().cast(), 1) };
    let _ = thread.join();
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// The parent side.

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Survived,
    KilledBySegv,
    KilledBy(i32),
    NotRegistered,
    NotStale,
    NotUnloaded,
    FreeFailed(String),
    Timeout,
    Other(String),
}

impl Outcome {
    fn code(&self) -> &'static str {
        match self {
            Outcome::Survived => "survived",
            Outcome::KilledBySegv => "killed_by_sigsegv",
            Outcome::KilledBy(_) => "killed_by_signal",
            Outcome::NotRegistered => "not_registered",
            Outcome::NotStale => "not_stale",
            Outcome::NotUnloaded => "not_unloaded",
            Outcome::FreeFailed(_) => "free_failed",
            Outcome::Timeout => "timeout",
            Outcome::Other(_) => "error",
        }
    }

    fn words(&self) -> String {
        match self {
            Outcome::Survived => "the process survived".into(),
            Outcome::KilledBySegv => "the kernel killed the process (SIGSEGV)".into(),
            Outcome::KilledBy(s) => format!("the process was killed by signal {s}"),
            Outcome::NotRegistered => "the thread had no registered rseq area, so nothing could go stale".into(),
            Outcome::NotStale => "the thread's rseq_cs was already cleared before the memory was freed".into(),
            Outcome::NotUnloaded => "dlclose() did not unload the library".into(),
            Outcome::FreeFailed(e) => format!("freeing the memory failed: {e}"),
            Outcome::Timeout => "the child did not finish in time".into(),
            Outcome::Other(e) => e.clone(),
        }
    }
}

fn run_child(exe: &Path, scenario: &str, method: &str, dir: &Path) -> Outcome {
    let child = Command::new(exe)
        .args([CHILD_FLAG, scenario, method])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Other(format!("could not start the child: {e}")),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > CHILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Timeout;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Outcome::Other(format!("waiting for the child: {e}")),
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Survived,
        (_, Some(libc::SIGSEGV)) => Outcome::KilledBySegv,
        (_, Some(s)) => Outcome::KilledBy(s),
        (Some(EXIT_NOT_REGISTERED), _) => Outcome::NotRegistered,
        (Some(EXIT_NOT_STALE), _) => Outcome::NotStale,
        (Some(EXIT_NOT_UNLOADED), _) => Outcome::NotUnloaded,
        (Some(EXIT_FREE_FAILED), _) => Outcome::FreeFailed(err.trim().trim_start_matches("selftest child: ").to_string()),
        (Some(c), _) => Outcome::Other(format!("the child exited with status {c}: {}", err.trim())),
        (None, None) => Outcome::Other("unknown child status".into()),
    }
}

/// What `rseqrt selftest --json` prints.
#[derive(Serialize)]
struct Report {
    owner: &'static str,
    protected: bool,
    scenarios: Vec<ScenarioResult>,
}

#[derive(Serialize)]
struct ScenarioResult {
    name: &'static str,
    description: &'static str,
    without_rseqrt: Run,
    with_rseqrt: Run,
    reproduced: bool,
    protected: bool,
    verdict: String,
}

/// One child's outcome: `crashed` for the run without rseqrt, `survived` for the run with it.
#[derive(Serialize)]
struct Run {
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crashed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    survived: Option<bool>,
    words: String,
}

pub fn run(as_json: bool) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rseqrt selftest: cannot find my own executable: {e}");
            return 2;
        }
    };
    let tmp = match TempDir::new("rseqrt-selftest-").and_then(|t| write_plugins(&t.0).map(|()| t)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rseqrt selftest: cannot write the test plugins: {e}");
            return 2;
        }
    };
    let owner = rseqrt::owner();
    if !as_json {
        println!("rseqrt selftest: a thread runs a restartable sequence whose descriptor lives in memory that");
        println!("the program then frees; when the thread next returns from the kernel, the kernel reads it.");
        println!("(owner mode: {}; each scenario runs in its own child process)\n", crate::info::owner_name(owner));
    }
    let mut all_protected = true;
    let mut results = Vec::new();
    for s in SCENARIOS {
        // Without rseqrt: a stale pointer may occasionally be cleared first; retry a few times.
        let mut without = Outcome::Other("not run".into());
        for _ in 0..3 {
            without = run_child(&exe, s.name, "plain", &tmp.0);
            if !matches!(without, Outcome::NotStale | Outcome::Survived) {
                break;
            }
        }
        let with = run_child(&exe, s.name, "rseqrt", &tmp.0);
        let reproduced = without == Outcome::KilledBySegv;
        let protected = with == Outcome::Survived;
        all_protected &= protected;
        let verdict = match (reproduced, protected) {
            (true, true) => "PROTECTED: without rseqrt, the kernel killed the process; with rseqrt, it survived.".to_string(),
            (false, true) => format!(
                "NOT REPRODUCED: without rseqrt {} (the crash could not be reproduced here; this is not a failure of rseqrt). With rseqrt, it survived.",
                without.words()),
            (_, false) => format!("FAILED: with rseqrt, {}. rseqrt did NOT protect the process.", with.words()),
        };
        if !as_json {
            println!("{}: {}", s.name, s.what);
            println!("  without rseqrt: {}", without.words());
            println!("  with rseqrt:    {}", with.words());
            println!("  {verdict}\n");
        }
        results.push(ScenarioResult {
            name: s.name,
            description: s.what,
            without_rseqrt: Run { outcome: without.code(), crashed: Some(reproduced), survived: None, words: without.words() },
            with_rseqrt: Run { outcome: with.code(), crashed: None, survived: Some(protected), words: with.words() },
            reproduced,
            protected,
            verdict,
        });
    }
    if as_json {
        let report = Report { owner: crate::info::owner_name(owner), protected: all_protected, scenarios: results };
        crate::print_json(&report);
    } else if all_protected {
        println!("Result: rseqrt protected the process in every scenario.");
    } else {
        println!("Result: rseqrt did NOT protect the process in every scenario (see above).");
    }
    if all_protected { 0 } else { 1 }
}
