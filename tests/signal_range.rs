//! The reserved signal left out of `SIGRTMIN`..`SIGRTMAX`, as glibc leaves out its own (issue 10,
//! item 3): `c-abi-tests/sigrt_range.c` installs a handler on every signal of the range, raises
//! each and checks each was received, run plain (glibc alone: 34..64), linked with
//! `librseqrt.so` and under `LD_PRELOAD` of the shim (default: 34..63, rseqrt holds 64), with
//! `RSEQRT_SIGNAL` at the bottom (35..64), in the middle (34..64, that one inside) and next to
//! the top; then the same on the reserved signal named by its number, which rseqrt shares with
//! the program. A library initialized before rseqrt reads the same range in its constructor.
//! And bash's `trap ... RTMAX` (bash 5.2 hard-codes 64), compared with plain bash; and a `fork()`
//! racing `sigaction()` on the shared number (`c-abi-tests/sigshare_fork.c`).
//!
//! Before the range change every rseqrt row failed (SIGRTMAX read 64 with rseqrt holding 64, and
//! `__libc_allocate_rtsig()` handed out the reserved signal); before the sharing, `sigaction()`
//! on the reserved number failed with EINVAL and bash's trap lost the signal. To see that, point
//! the suite at an older staged build: `RSEQRT_STAGE=/path/to/old/build/stage cargo test
//! --release --test signal_range`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::scenario::{finish, go, modes, Expect, Mode, Scenario};
use support::{c_test_source, compile, compile_linked, run, stage, tests_build_dir, CompileSpec, Stage};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Programs {
    stage: &'static Stage,
    /// sigrt_range.c, not linked with rseqrt (plain and preload rows).
    plain: PathBuf,
    /// The same, linked with rseqrt.
    linked: PathBuf,
    /// sigshare_fork.c, linked with rseqrt.
    fork: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let stage = stage();
        let (cflags, libs) = stage.rseqrt_flags();
        let warn = ["-Wall", "-Wextra", "-Werror"];
        let early = compile(
            &CompileSpec::new("libsigrt_early.so", &[c_test_source("sigrt_early.c")])
                .cflags(&warn)
                .cflags(&["-fPIC", "-shared", "-Wl,-soname,libsigrt_early.so"])
                .libs(&["-ldl"]),
        );
        let early_libs = [
            "-Wl,--no-as-needed".to_string(),
            early.display().to_string(),
            format!("-Wl,-rpath,{}", tests_build_dir().display()),
            "-ldl".to_string(),
        ];
        let plain = compile(
            &CompileSpec::new("sigrt_range", &[c_test_source("sigrt_range.c")]).cflags(&warn).libs(&early_libs),
        );
        // rseqrt first, the early library after it: the dynamic linker initializes the early
        // library first.
        let linked = compile(
            &CompileSpec::new("sigrt_range_linked", &[c_test_source("sigrt_range.c")])
                .cflags(&warn)
                .cflags(&cflags)
                .libs(&["-Wl,--no-as-needed"])
                .libs(&libs)
                .libs(&early_libs),
        );
        let fork = compile_linked("sigshare_fork", "sigshare_fork.c");
        Programs { stage, plain, linked, fork }
    })
}

fn preload_lib(stage: &Stage) -> String {
    stage.lib("rseqrt/librseqrt_preload.so").display().to_string()
}

/// One run of `program WANT_MIN WANT_MAX WANT_RESERVED` that must exit 0.
fn range_row<'a>(name: String, program: &'a Path, want: (i32, i32, i32), mode: Mode) -> Scenario<'a> {
    let args = [want.0.to_string(), want.1.to_string(), want.2.to_string()];
    Scenario::new(name, program, &args, mode, Expect::Exit(0))
        .env("LD_LIBRARY_PATH", &programs().stage.lib_dir.display().to_string())
        .attempts(1)
        .timeout(TIMEOUT)
        .echo("SIGRTMIN")
}

/// Every signal of `SIGRTMIN..SIGRTMAX` handled, raised and received: plain, linked and preloaded,
/// by default and with `RSEQRT_SIGNAL` at the top, the bottom, in the middle and next to the top.
#[test]
fn every_signal_of_the_range_is_the_programs() {
    let p = programs();
    let preload = preload_lib(p.stage);
    let mut failures = Vec::new();
    failures.extend(go(range_row("plain: glibc's range".into(), &p.plain, (34, 64, 0), Mode::Glibc)));
    // (RSEQRT_SIGNAL, SIGRTMIN, SIGRTMAX, reserved)
    let rows: [(Option<&str>, i32, i32, i32); 6] = [
        (None, 34, 63, 64),
        (Some("64"), 34, 63, 64),
        (Some("34"), 35, 64, 34),
        (Some("40"), 34, 64, 40),
        (Some("63"), 34, 64, 63),
        (Some("65"), 34, 63, 64), // out of range: the default
    ];
    for (setting, lo, hi, reserved) in rows {
        let shown = setting.map_or(String::from("default"), |s| format!("RSEQRT_SIGNAL={s}"));
        let modes: &[Mode] = if setting.is_none() { &[Mode::Glibc, Mode::Own] } else { &[Mode::Glibc] };
        for &mode in modes {
            let mut linked = range_row(format!("linked, {shown} [{}]", mode.name()), &p.linked, (lo, hi, reserved), mode);
            let mut preloaded =
                range_row(format!("preload, {shown} [{}]", mode.name()), &p.plain, (lo, hi, reserved), mode).env("LD_PRELOAD", &preload);
            if let Some(s) = setting {
                linked = linked.env("RSEQRT_SIGNAL", s);
                preloaded = preloaded.env("RSEQRT_SIGNAL", s);
            }
            failures.extend(go(linked));
            failures.extend(go(preloaded));
        }
    }
    finish("SIGRTMIN..SIGRTMAX", failures);
}

/// A `fork()` while another thread runs `sigaction()` on the shared number: the child still runs
/// the program's handler of that number. rseqrt's sequence lock over the program's disposition
/// can be copied odd (the writer thread does not exist in the child); the fork-child handler
/// makes it even again. Without that reset, 14 of 300 children hung here (the program kills a
/// child after 2 s and fails).
#[test]
fn fork_during_sigaction_on_the_shared_number() {
    let p = programs();
    let mut failures = Vec::new();
    for &mode in modes() {
        failures.extend(go(Scenario::new(format!("1,000 forks [{}]", mode.name()), &p.fork, &["1000".to_string()], mode, Expect::Exit(0))
            .env("LD_LIBRARY_PATH", &p.stage.lib_dir.display().to_string())
            .attempts(1)
            .timeout(Duration::from_secs(120))
            .echo("forks")));
    }
    finish("fork during sigaction()", failures);
}

/// bash scripts on `SIGRTMAX` by name; bash 5.2 (Debian 11 to 13) fixes the number of `RTMAX` (64)
/// when it is built, so these also show a program that hard-codes the reserved signal's number.
const BASH_SCRIPTS: [(&str, &str); 5] = [
    ("trap, raised by bash", r#"trap "echo got" RTMAX; kill -s RTMAX $$; echo after"#),
    ("trap, sent by a child", r#"trap "echo got" RTMAX; (kill -s RTMAX $$); echo after"#),
    ("ignored", r#"trap "" RTMAX; kill -s RTMAX $$; echo after"#),
    ("trap then default again", r#"trap "echo got" RTMAX; kill -s RTMAX $$; trap - RTMAX; kill -s RTMAX $$; echo not reached"#),
    ("default: the signal ends bash", r#"kill -s RTMAX $$; echo not reached"#),
];

/// What `bash -c SCRIPT` prints and how it ends, with `env`.
fn bash(script: &str, env: &[(&str, &str)]) -> String {
    let res = run(Path::new("/bin/bash"), &["-c", script], env, TIMEOUT);
    assert!(!res.timed_out, "bash -c '{script}' timed out:\n{res}");
    format!("{:?}, {}", res.stdout, res.signal().map_or(format!("exit {:?}", res.status.code()), |s| format!("killed by signal {s}")))
}

/// bash's `trap ... RTMAX` under the shim behaves as without it, by default (rseqrt shares the
/// number with the program: its own requests are told apart by their queued value) and with
/// `RSEQRT_SIGNAL` elsewhere: the trap runs whoever sent the signal, an ignored one is ignored,
/// and at the default action the signal ends bash with the same status. Before the sharing,
/// the default row printed only "after" (the trap was refused and the signal lost).
#[test]
fn bash_trap_on_rtmax() {
    let stage = stage();
    let preload = preload_lib(stage);
    let mut failures = Vec::new();
    for (name, script) in BASH_SCRIPTS {
        let want = bash(script, &[]);
        println!("      plain, {name}: {want}");
        // The baseline itself: plain bash runs its own trap (else every row would compare
        // nothing with nothing).
        if script.contains("echo got") && !want.contains("got") {
            failures.push(format!("plain bash -c '{script}' did not run its trap: {want}"));
        }
        for (setting, env) in [("default", vec![("LD_PRELOAD", preload.as_str())]), ("RSEQRT_SIGNAL=50", vec![("LD_PRELOAD", &preload), ("RSEQRT_SIGNAL", "50")])] {
            let got = bash(script, &env);
            if got == want {
                println!("ok    preload, {setting}, {name}: {got}");
            } else {
                println!("FAIL  preload, {setting}, {name}: {got}");
                failures.push(format!("bash -c '{script}' under the shim, {setting}: {got}, plain: {want}"));
            }
        }
    }
    finish("bash on RTMAX", failures);
}
