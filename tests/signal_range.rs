//! The reserved signal left out of `SIGRTMIN`..`SIGRTMAX`, as glibc leaves out its own (issue 10,
//! item 3): `c-abi-tests/sigrt_range.c` installs a handler on every signal of the range, raises
//! each and checks each was received, run plain (glibc alone: 34..64), linked with
//! `librseqrt.so` and under `LD_PRELOAD` of the shim (default: 34..63, rseqrt holds 64), with
//! `RSEQRT_SIGNAL` at the bottom (35..64), in the middle (34..64, that one refused), and next to
//! the top. A library initialized before rseqrt reads the same range in its constructor. And
//! bash's `trap ... RTMAX`.
//!
//! Before the change every rseqrt row failed (SIGRTMAX read 64 with rseqrt holding 64, and
//! `__libc_allocate_rtsig()` handed out the reserved signal). To see that, point the suite at an
//! older staged build: `RSEQRT_STAGE=/path/to/old/build/stage cargo test --release --test
//! signal_range`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::scenario::{finish, go, Expect, Mode, Scenario};
use support::{c_test_source, compile, run, stage, tests_build_dir, CompileSpec, Stage};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Programs {
    stage: &'static Stage,
    /// sigrt_range.c, not linked with rseqrt (plain and preload rows).
    plain: PathBuf,
    /// The same, linked with rseqrt.
    linked: PathBuf,
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
        Programs { stage, plain, linked }
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

const BASH_TRAP: &str = r#"trap "echo got" RTMAX; kill -s RTMAX $$; echo after"#;

/// What `bash -c SCRIPT` prints, with `env`.
fn bash(script: &str, env: &[(&str, &str)]) -> String {
    let res = run(Path::new("/bin/bash"), &["-c", script], env, TIMEOUT);
    assert!(!res.timed_out && res.status.success(), "bash -c '{script}' failed:\n{res}");
    res.stdout
}

/// bash's `trap ... RTMAX` receives the signal under the shim as without it. bash 5.2 (Debian 11
/// to 13) names the real-time signals when it is built: its RTMAX is 64 whatever `SIGRTMAX` reads
/// at run time (it never calls `__libc_current_sigrtmax()` for `trap` or `kill -l`), so it is a
/// program that hard-codes numbers, and the README's advice applies: `RSEQRT_SIGNAL` set to a
/// signal it does not use. A bash that names them at run time (5.3) needs nothing.
#[test]
fn bash_trap_on_rtmax() {
    let stage = stage();
    let preload = preload_lib(stage);
    let want = "got\nafter\n";
    let plain = bash(BASH_TRAP, &[]);
    assert_eq!(plain, want, "plain bash: trap on RTMAX");
    println!("ok    plain: {plain:?}");
    let rtmax_under_shim = bash("kill -l RTMAX", &[("LD_PRELOAD", &preload)]);
    let names_at_run_time = rtmax_under_shim.trim() != "64";
    let mut failures = Vec::new();
    let mut rows: Vec<(&str, Vec<(&str, &str)>)> = vec![("RSEQRT_SIGNAL=50", vec![("LD_PRELOAD", &preload), ("RSEQRT_SIGNAL", "50")])];
    if names_at_run_time {
        rows.insert(0, ("default", vec![("LD_PRELOAD", &preload)]));
    } else {
        println!(
            "skip  preload, default: this bash's RTMAX is {} under the shim, fixed when bash was built \
             (SIGRTMAX reads 63 there); a program that hard-codes 64 sets RSEQRT_SIGNAL (README)",
            rtmax_under_shim.trim()
        );
    }
    for (name, env) in rows {
        let got = bash(BASH_TRAP, &env);
        if got == want {
            println!("ok    preload, {name}: {got:?}");
        } else {
            println!("FAIL  preload, {name}: {got:?}");
            failures.push(format!("bash -c '{BASH_TRAP}' under the shim, {name}: printed {got:?}, want {want:?}"));
        }
    }
    finish("bash trap on RTMAX", failures);
}
