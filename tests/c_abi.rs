//! C ABI tests: C programs, built against glibc alone or against the staged
//! rseqrt, check glibc's rseq ABI (`__rseq_offset`, `__rseq_size`,
//! `__rseq_flags`) against what the kernel really registered, in each owner
//! mode. Every scenario runs in its own child process on the real kernel:
//!
//!   {plain glibc, plain + LD_PRELOAD=librseqrt.so, linked with rseqrt}
//! x {default, GLIBC_TUNABLES=glibc.pthread.rseq=0 (rseqrt leaves registration to the program),
//!    the tunable and RSEQRT_REGISTER=1 (rseqrt registers)}
//! x {normal, under `seccomp_exec rseq ENOSYS` (seccomp: rseq answers ENOSYS)}
//!
//! The plain-glibc rows are the reference: they need no rseqrt at all and
//! show what glibc itself does; the rseqrt rows must match the contract.

mod support;

use std::path::PathBuf;
use std::time::Duration;
use support::{compile, has_copy_reloc, run, seccomp_exec, stage, CompileSpec};

const TIMEOUT: Duration = Duration::from_secs(60);
const WARNINGS: &[&str] = &["-Wall", "-Wextra", "-Werror"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Build {
    /// glibc only, no rseqrt anywhere.
    Plain,
    /// The plain program with librseqrt.so preloaded.
    Preload,
    /// Built with `pkg-config --cflags --libs rseqrt`.
    Linked,
}

/// `seccomp_exec rseq ENOSYS`: the arguments that run a program on a "kernel without rseq".
const NO_RSEQ: [&str; 2] = ["rseq", "ENOSYS"];

fn registration_program(build: Build) -> PathBuf {
    let src = [support::c_test_source("abi_registration.c")];
    let program = match build {
        Build::Plain | Build::Preload => compile(
            &CompileSpec::new("abi_registration_plain", &src)
                .cflags(WARNINGS)
                .cflags(&["-pthread"]),
        ),
        Build::Linked => {
            let (cflags, libs) = stage().rseqrt_flags();
            compile(
                &CompileSpec::new("abi_registration_linked", &src)
                    .cflags(WARNINGS)
                    .cflags(&["-pthread", "-DRSEQRT_LINKED"])
                    .cflags(&cflags)
                    .libs(&libs),
            )
        }
    };
    // Without its own copy of __rseq_offset the program would not test the
    // hard case (values fixed before any constructor runs). Before glibc 2.35 a plain program's
    // references are weak and undefined at link time: no copy is possible there.
    if build != Build::Linked && !support::scenario::glibc_registers() {
        return program;
    }
    assert!(
        has_copy_reloc(&program, "__rseq_offset"),
        "{} has no R_X86_64_COPY relocation for __rseq_offset (readelf -rW): it would not \
         exercise copy-relocated reads; was it built as -fPIC?",
        program.display()
    );
    program
}

fn scenario(build: Build, tunable_off: bool, seccomp: bool, register: bool) {
    let name = format!(
        "{:?} / {}{} / {}",
        build,
        if tunable_off {
            "glibc.pthread.rseq=0"
        } else {
            "default tunables"
        },
        if register { " + RSEQRT_REGISTER=1" } else { "" },
        if seccomp {
            "under seccomp_exec rseq ENOSYS"
        } else {
            "normal kernel"
        }
    );

    // The contract's expectations. glibc 2.35+ registers unless the tunable says no; older glibc
    // never registers and defines no __rseq_* at all. rseqrt adopts glibc's area (LIBC),
    // registers its own where glibc does not (SELF), except where the tunable asks to leave
    // registration to the program (NONE); without rseq in the kernel nothing is registered.
    let glibc_registers = support::scenario::glibc_registers();
    let (expect, owner) = match (build, tunable_off, seccomp) {
        (Build::Plain, _, _) if !glibc_registers => ("noabi", None),
        (Build::Plain, tunable_off, seccomp) => (if tunable_off || seccomp { "unregistered" } else { "registered" }, None),
        (_, _, true) => ("unregistered", Some("0")),
        // RSEQRT_REGISTER=1: rseqrt registers where glibc does not, even so.
        (_, true, false) if register => ("registered", Some("2")),
        (_, true, false) => ("unregistered", Some("0")),
        (_, false, false) if glibc_registers => ("registered", Some("1")),
        (_, false, false) => ("registered", Some("2")),
    };
    if expect == "noabi" {
        println!("scenario {name}: glibc {:?} has no rseq ABI: the plain program checks that no object defines it", support::scenario::glibc_version());
    }

    let program = registration_program(build);
    let preload = match build {
        Build::Preload => Some(stage().lib("librseqrt.so").display().to_string()),
        _ => None,
    };

    let mut env: Vec<(&str, &str)> = vec![("RSEQRT_EXPECT", expect)];
    if let Some(owner) = owner {
        env.push(("RSEQRT_EXPECT_OWNER", owner));
    }
    if tunable_off {
        env.push(("GLIBC_TUNABLES", "glibc.pthread.rseq=0"));
    }
    if register {
        env.push(("RSEQRT_REGISTER", "1"));
    }
    if build != Build::Plain && tunable_off && !register && !seccomp {
        env.push(("RSEQRT_EXPECT_DECLINED", "1"));
    }
    if let Some(preload) = &preload {
        env.push(("LD_PRELOAD", preload));
    }

    let program_s = program.display().to_string();
    let result = if seccomp {
        run(&seccomp_exec(), &[NO_RSEQ[0], NO_RSEQ[1], &program_s], &env, TIMEOUT)
    } else {
        run(&program, &[], &env, TIMEOUT)
    };
    println!("scenario {name}:\n{result}");
    assert!(
        result.success() && result.stdout.contains("PASS abi_registration"),
        "scenario {name} FAILED\n{result}"
    );
    println!("scenario {name}: pass");
}

macro_rules! scenarios {
    ($($test:ident: $build:ident, $tunable_off:expr, $seccomp:expr, $register:expr;)*) => {$(
        #[test]
        fn $test() {
            scenario(Build::$build, $tunable_off, $seccomp, $register);
        }
    )*};
}

scenarios! {
    plain_default: Plain, false, false, false;
    plain_tunable_off: Plain, true, false, false;
    plain_default_seccomp: Plain, false, true, false;
    plain_tunable_off_seccomp: Plain, true, true, false;
    preload_default: Preload, false, false, false;
    preload_tunable_off: Preload, true, false, false;
    preload_default_seccomp: Preload, false, true, false;
    preload_tunable_off_seccomp: Preload, true, true, false;
    linked_default: Linked, false, false, false;
    linked_tunable_off: Linked, true, false, false;
    linked_default_seccomp: Linked, false, true, false;
    linked_tunable_off_seccomp: Linked, true, true, false;
    preload_tunable_off_register: Preload, true, false, true;
    linked_tunable_off_register: Linked, true, false, true;
    linked_tunable_off_register_seccomp: Linked, true, true, true;
}

/// The harness's own premise: `seccomp_exec rseq ENOSYS` really takes rseq
/// away. A plain glibc program that expects registration must fail under it.
#[test]
fn seccomp_exec_removes_rseq() {
    // Where glibc registers nothing (before 2.35), rseqrt is the registering program.
    let (build, env) = match support::scenario::glibc_registers() {
        true => (Build::Plain, vec![("RSEQRT_EXPECT", "registered")]),
        false => (Build::Linked, vec![("RSEQRT_EXPECT", "registered"), ("RSEQRT_EXPECT_OWNER", "2")]),
    };
    let program = registration_program(build).display().to_string();
    let result = run(&seccomp_exec(), &[NO_RSEQ[0], NO_RSEQ[1], &program], &env, TIMEOUT);
    assert!(
        !result.success()
            && (result.stdout.contains("FAIL __rseq_size 0 >= 20") || result.stdout.contains("FAIL rseqrt_owner() = 0 (want 2)")),
        "expected a registration failure under seccomp_exec rseq ENOSYS\n{result}"
    );
}

fn copy_relocations(build: Build) {
    if build == Build::Plain && !support::scenario::glibc_registers() {
        support::skip(&format!("glibc {:?} defines no __rseq_offset: a plain program has nothing to copy", support::scenario::glibc_version()));
        return;
    }
    let program = registration_program(build);
    for sym in ["__rseq_offset", "__rseq_size", "__rseq_flags"] {
        assert!(
            has_copy_reloc(&program, sym),
            "{}: no COPY relocation for {sym}",
            program.display()
        );
    }
}

#[test]
fn plain_program_has_copy_relocations() {
    copy_relocations(Build::Plain);
}

#[test]
fn linked_program_has_copy_relocations() {
    copy_relocations(Build::Linked);
}

/// `<rseqrt.h>` as installed: strict C11 and C++17, alone and after glibc's
/// `<sys/rseq.h>`; linked and run, so C++ also proves C linkage.
fn header(cxx: bool, sys_rseq_first: bool) {
    if sys_rseq_first && !support::scenario::glibc_registers() {
        let (a, b) = support::scenario::glibc_version();
        support::skip(&format!("glibc {a}.{b} has no <sys/rseq.h> (2.35+): nothing to agree with"));
        return;
    }
    let stage = stage();
    let (cflags, libs) = stage.rseqrt_flags();
    let name = format!(
        "abi_header_{}{}",
        if cxx { "cxx17" } else { "c11" },
        if sys_rseq_first {
            "_after_sys_rseq"
        } else {
            ""
        }
    );
    let mut spec = CompileSpec::new(&name, &[support::c_test_source("abi_header.c")])
        .cflags(&[if cxx { "-std=c++17" } else { "-std=c11" }, "-pedantic"])
        .cflags(WARNINGS)
        .cflags(&cflags)
        .libs(&libs);
    if sys_rseq_first {
        spec = spec.cflags(&["-DSYS_RSEQ_FIRST"]);
    }
    if cxx {
        spec = spec.cxx();
    }
    let program = compile(&spec);
    let result = run(&program, &[], &[], TIMEOUT);
    println!("{name}:\n{result}");
    assert!(
        result.success() && result.stdout.contains("header ok"),
        "{name} FAILED\n{result}"
    );
}

#[test]
fn header_c11() {
    header(false, false);
}

#[test]
fn header_c11_after_sys_rseq() {
    header(false, true);
}

#[test]
fn header_cxx17() {
    header(true, false);
}

#[test]
fn header_cxx17_after_sys_rseq() {
    header(true, true);
}

/// Macros that `<rseqrt.h>` adds to what the C library's own headers
/// (including glibc's `<sys/rseq.h>`) already define: each must be ours,
/// `RSEQRT_`/`rseqrt_`, so that including it cannot clash with other code.
#[test]
fn header_macros_are_prefixed() {
    let stage = stage();
    let macros = |extra: &str| -> std::collections::BTreeSet<String> {
        let src = support::tests_build_dir().join(format!("macros{extra}.c"));
        let mut text =
            String::from("#include <stddef.h>\n#include <stdint.h>\n#if __has_include(<sys/rseq.h>)\n#include <sys/rseq.h>\n#endif\n");
        text.push_str(extra);
        std::fs::write(&src, text).unwrap();
        let out = support::c_compiler()
            .arg("-E")
            .arg("-dM")
            .arg(format!("-I{}", stage.include_dir.display()))
            .arg(&src)
            .output()
            .expect("run the preprocessor");
        assert!(
            out.status.success(),
            "preprocessing failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("#define ")?
                    .split(|c| c == ' ' || c == '(')
                    .next()
                    .map(String::from)
            })
            .collect()
    };
    let base = macros("");
    let with = macros("#include <rseqrt.h>\n");
    let foreign: Vec<&String> = with
        .difference(&base)
        .filter(|m| !m.starts_with("RSEQRT_") && !m.starts_with("rseqrt_"))
        .collect();
    assert!(
        foreign.is_empty(),
        "<rseqrt.h> defines macros outside RSEQRT_/rseqrt_: {foreign:?}"
    );
}

/// Every dynamic symbol that librseqrt.so defines is ours (`rseqrt_`,
/// `RSEQRT_`), one of glibc's three rseq names, or interposes a function of
/// the same name that libc.so.6 defines: nothing new lands in the C
/// namespace. Version nodes (absolute symbols) are not symbols.
#[test]
fn library_exports_only_prefixed_symbols() {
    let lib = stage().lib("librseqrt.so");
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm");
    assert!(out.status.success(), "nm -D {} failed", lib.display());
    let text = String::from_utf8_lossy(&out.stdout);
    // The C library's functions: in libc.so.6, and before glibc 2.34 also in libpthread.so.0
    // and libdl.so.2 (empty stubs since).
    let mut libc_names = std::collections::HashSet::new();
    for lib in ["libc.so.6", "libpthread.so.0", "libdl.so.2"] {
        let path = std::path::Path::new("/lib/x86_64-linux-gnu").join(lib);
        if path.exists() {
            libc_names.extend(defined_dynamic_symbols(&path));
        }
    }
    // Functions that glibc added after the oldest supported one (2.32, 2.35): rseqrt interposes
    // them under those versions even where this glibc lacks them.
    if support::scenario::glibc_version() < (2, 35) {
        libc_names.extend(["epoll_pwait2".to_string(), "pthread_attr_setsigmask_np".to_string()]);
    }
    let foreign: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 2 && f[f.len() - 2] != "A").then(|| *f.last().unwrap())
        })
        .map(|name| name.split('@').next().unwrap())
        .filter(|name| {
            !name.starts_with("rseqrt_")
                && !name.starts_with("RSEQRT_")
                && !["__rseq_offset", "__rseq_size", "__rseq_flags"].contains(name)
                && !libc_names.contains(*name)
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "{} exports symbols that are neither rseqrt's, glibc's rseq names, nor libc interpositions: {foreign:?}",
        lib.display()
    );
    for want in [
        "rseqrt_owner",
        "__rseq_offset",
        "__rseq_size",
        "__rseq_flags",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().last().map(|n| n.split('@').next())
                    == Some(Some(want))),
            "{} does not export {want}",
            lib.display()
        );
    }
}

fn defined_dynamic_symbols(lib: &std::path::Path) -> std::collections::HashSet<String> {
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .expect("run nm");
    assert!(out.status.success(), "nm -D {} failed", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

/// rseqrt `dlopen()`ed after the program made a thread: adopts glibc's areas when glibc
/// registers; otherwise refuses ownership (owner NONE, `__rseq_size` 0, EOPNOTSUPP) instead of
/// handing out an offset that is wrong for the threads the program creates.
#[test]
fn late_load_adopts_or_refuses() {
    let program = compile(
        &CompileSpec::new("abi_late_load", &[support::c_test_source("abi_late_load.c")])
            .cflags(WARNINGS)
            .cflags(&["-pthread"])
            .libs(&["-ldl"]),
    );
    let lib = stage().lib("librseqrt.so").display().to_string();
    // Where glibc does not register (before 2.35; from 2.35 on, its tunable off and rseqrt asked
    // to register), a late rseqrt cannot own registration.
    let off: &[(&str, &str)] = &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0"), ("RSEQRT_REGISTER", "1")];
    let rows: &[(&[(&str, &str)], &str)] =
        if support::scenario::glibc_registers() { &[(&[], "libc"), (off, "refused")] } else { &[(&[], "refused"), (off, "refused")] };
    for &(env, expect) in rows {
        let result = run(&program, &[&lib, expect], env, TIMEOUT);
        println!("{}", result.stdout.trim());
        assert!(result.success(), "late load, expecting {expect}\n{result}");
    }
}

/// A program that registers rseq itself, as rseq libraries do under glibc's documented opt-out
/// (`GLIBC_TUNABLES=glibc.pthread.rseq=0`): its own registration succeeds in the main thread and
/// in every thread, with rseqrt linked or preloaded as with plain glibc, on every glibc (rseqrt
/// reads the tunable itself where glibc has none). Where someone registered first, the program's
/// registration is refused: that row shows the check can fail.
#[test]
fn registration_left_to_the_program() {
    let src = [support::c_test_source("abi_own_registration.c")];
    let plain = compile(&CompileSpec::new("abi_own_registration", &src).cflags(WARNINGS));
    let (cflags, libs) = stage().rseqrt_flags();
    let linked = compile(
        &CompileSpec::new("abi_own_registration_linked", &src).cflags(WARNINGS).cflags(&cflags).libs(&libs),
    );
    let lib = stage().lib("librseqrt.so").display().to_string();
    let tunable = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let glibc_registers = support::scenario::glibc_registers();
    // (what, program, environment, expectation, owner rseqrt must report)
    let rows: Vec<(&str, &std::path::Path, Vec<(&str, &str)>, &str, Option<i32>)> = vec![
        ("plain glibc, tunable off", &plain, vec![tunable], "expect-ok", None),
        ("linked, tunable off", &linked, vec![tunable], "expect-ok", Some(0)),
        ("preloaded, tunable off", &plain, vec![tunable, ("LD_PRELOAD", &lib)], "expect-ok", Some(0)),
        ("linked, RSEQRT_REGISTER=0", &linked, vec![("RSEQRT_REGISTER", "0")],
         if glibc_registers { "expect-refused" } else { "expect-ok" }, Some(if glibc_registers { 1 } else { 0 })),
        ("linked, tunable off, RSEQRT_REGISTER=1", &linked, vec![tunable, ("RSEQRT_REGISTER", "1")], "expect-refused", Some(2)),
        ("linked, defaults", &linked, vec![], "expect-refused", Some(if glibc_registers { 1 } else { 2 })),
    ];
    let mut failures = Vec::new();
    for (what, program, env, expect, owner) in rows {
        let result = run(program, &[expect], &env, TIMEOUT);
        let owner_seen = support::scenario::reported_owner(&result.stdout);
        let ok = result.success() && owner_seen == owner.or(Some(-1));
        println!("{} {what}: {expect}, owner {owner_seen:?}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(format!("{what}: want {expect}, owner {owner:?}\n{result}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// In a secure-mode process (set-user-ID root run by an ordinary user: `AT_SECURE`), rseqrt
/// ignores its `RSEQRT_*` variables and glibc's tunable, as glibc ignores its tunables there; the
/// same program run normally with the same environment obeys them (so the check can fail).
#[test]
fn environment_ignored_in_secure_mode() {
    let (cflags, libs) = stage().rseqrt_flags();
    let program = compile(
        &CompileSpec::new("secure_mode", &[support::c_test_source("secure_mode.c")]).cflags(WARNINGS).cflags(&cflags).libs(&libs),
    );
    // A set-user-ID root copy that the unprivileged user can reach.
    let setuid = support::tests_build_dir().join("secure_mode_suid");
    std::fs::copy(&program, &setuid).expect("copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        support::skip("not root: cannot make a set-user-ID root program");
        return;
    }
    let env = [("RSEQRT_REGISTER", "0"), ("RSEQRT_SIGNAL", "40"), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")];
    let default_owner = if support::scenario::glibc_registers() { 1 } else { 2 };
    let normal = run(&program, &["show"], &env, TIMEOUT);
    println!("normal: {}", normal.stdout.trim());
    assert!(normal.success() && normal.stdout.contains("rseqrt_owner=0 signal=40 secure=0"), "normal run\n{normal}");
    let setuid_s = setuid.display().to_string();
    let secure = run(&program, &["drop", &setuid_s, "show"], &env, TIMEOUT);
    println!("secure: {}", secure.stdout.trim());
    let want = format!("rseqrt_owner={default_owner} signal=64 secure=1 uid=65534 euid=0");
    assert!(secure.success() && secure.stdout.contains(&want), "secure-mode run: want {want}\n{secure}");
}

/// A non-PIE program that takes the addresses of `pthread_create` and `rseqrt_owner` (canonical
/// PLT entries in the executable: `dlsym` and every GOT then name the program's stubs) still gets
/// rseqrt's registration where glibc does not register. Before the link-map check, rseqrt took
/// itself for loaded too late and registered nothing (owner 0; seen on Debian 11's toolchain
/// for `pthread_create`, and for `rseqrt_owner` by review).
#[test]
fn canonical_plt_entries_do_not_hide_rseqrt() {
    let (cflags, libs) = stage().rseqrt_flags();
    let program = compile(
        &CompileSpec::new("abi_address_taken", &[support::c_test_source("abi_address_taken.c")])
            .cflags(WARNINGS)
            .cflags(&["-no-pie", "-fno-pic"])
            .cflags(&cflags)
            .libs(&["-no-pie"])
            .libs(&libs),
    );
    let env: &[(&str, &str)] = if support::scenario::glibc_registers() {
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0"), ("RSEQRT_REGISTER", "1")]
    } else {
        &[]
    };
    let result = run(&program, &[], env, TIMEOUT);
    println!("{}", result.stdout.trim());
    assert!(
        result.success() && support::scenario::reported_owner(&result.stdout) == Some(2) && !result.stdout.contains("cpu -"),
        "want rseqrt_owner=2 and a registered thread\n{result}"
    );
}
