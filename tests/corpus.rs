//! Real programs under the preload shim: a corpus of threaded programs from Debian's packages
//! (python3, xz, zstd, sort, git, gcc, bash), each run without and then with
//! `LD_PRELOAD=librseqrt_preload.so`. Each row must succeed without the shim; with it, its exit
//! status, standard output and standard error must be the same, it must not be killed, and
//! nothing in its standard error may come from rseqrt. A third run, under the shim with
//! `LD_DEBUG=bindings`, shows that the program's own objects bind what the shim interposes (the
//! threads they create, the memory they unmap, the libraries they unload, the signals they
//! handle) to the shim, so a row cannot pass by no longer exercising it.
//!
//! Every program runs under `env -i` with a fixed environment (`PATH=/usr/bin:/bin`, so Debian's
//! `python3` and never a user's, `LC_ALL=C`, `TZ=UTC`, `HOME` and `TMPDIR` in the row's own
//! work directory; no `RSEQRT_*` variable, so the shim runs with its defaults, its barrier
//! timeout included) in the same directory both times, so their outputs can be compared byte for
//! byte. The programs and inputs are in `tests/corpus/`; `scripts/install-deps` installs the
//! packages. Wall times are printed for information only (benchmarks measure speed).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{CompileSpec, RunResult};

/// Generous: the slowest row takes a few seconds on a quiet machine.
const TIMEOUT: Duration = Duration::from_secs(300);

fn corpus_dir() -> PathBuf {
    support::repo_root().join("tests").join("corpus")
}

fn shim() -> PathBuf {
    support::stage()
        .lib_dir
        .join("rseqrt")
        .join("librseqrt_preload.so")
}

/// `tests/corpus/plugin.c` as a shared library, for the rows that load and unload one.
fn plugin() -> PathBuf {
    support::compile(
        &CompileSpec::new("corpus_plugin.so", &[corpus_dir().join("plugin.c")])
            .cflags(&["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]),
    )
}

/// One program of the corpus.
struct Row {
    name: &'static str,
    /// The programs it runs, which `scripts/install-deps` installs from Debian's packages: a
    /// path, or a name looked up in /usr/bin and /bin (Debian 11 may keep /bin apart).
    needs: &'static [&'static str],
    /// Its command line, given the work directory.
    argv: fn(&Path) -> Vec<String>,
    /// Writes its input into the (fresh, empty) work directory.
    setup: fn(&Path),
    /// `(objects, symbol)`: an object of the program whose file name contains one of `objects`
    /// (separated by `|`) must bind `symbol` to the shim (so the row exercises that interposer).
    binds: &'static [(&'static str, &'static str)],
    /// A difference known today: `(line without the shim, line with it)` pairs. The row then
    /// passes when the shim's output is exactly the plain one with these lines replaced (and
    /// says so), or identical (and says the mark can go); any other difference fails.
    known_difference: Option<(&'static str, &'static [(&'static str, &'static str)])>,
}

/// A bash script of the corpus, given the work directory and the corpus directory.
fn script(name: &str, work: &Path) -> Vec<String> {
    vec![
        "/bin/bash".into(),
        corpus_dir().join(name).display().to_string(),
        work.display().to_string(),
        corpus_dir().display().to_string(),
    ]
}

fn no_input(_: &Path) {}

/// A deterministic pseudo-random sequence (xorshift64), so every run gets the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// About 4 MB of text, compressible as text is: lines of words from a small vocabulary.
fn text_input(work: &Path) {
    const WORDS: &[&str] = &[
        "restartable",
        "sequence",
        "thread",
        "barrier",
        "kernel",
        "descriptor",
        "signal",
        "abort",
        "commit",
        "preempt",
        "migrate",
        "register",
        "library",
        "unload",
        "memory",
        "page",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = String::with_capacity(4 << 20);
    let mut line = 0u64;
    while text.len() < 4_000_000 {
        for _ in 0..8 {
            text.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        text.push_str(&format!("{line} {}\n", rng.next() % 100_000));
        line += 1;
    }
    fs::write(work.join("input"), text).expect("write input");
}

/// 800,000 lines of 8 hex digits (7.2 MB): more than `sort -S 12M` holds at once.
fn sort_input(work: &Path) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut text = String::with_capacity(7_200_000);
    for _ in 0..800_000 {
        text.push_str(&format!("{:08x}\n", rng.next() >> 32));
    }
    fs::write(work.join("input"), text).expect("write input");
}

const PYTHON3: Row = Row {
    name: "python3-threads-mmap-dlclose",
    needs: &["/usr/bin/python3"],
    argv: |work| {
        vec![
            "/usr/bin/python3".into(),
            corpus_dir().join("threads.py").display().to_string(),
            work.display().to_string(),
            plugin().display().to_string(),
        ]
    },
    setup: no_input,
    // A Python whose mmap or _ctypes module is built into the interpreter binds them there.
    binds: &[
        ("python3", "pthread_create"),
        ("mmap|python3", "munmap"),
        ("mmap|python3", "mremap"),
        ("_ctypes|python3", "dlclose"),
    ],
    known_difference: None,
};

const XZ: Row = Row {
    name: "xz-T2-round-trip",
    needs: &["xz", "cut", "cmp", "sha256sum"],
    argv: |work| script("xz.sh", work),
    setup: text_input,
    binds: &[("lzma", "pthread_create")],
    known_difference: None,
};

const ZSTD: Row = Row {
    name: "zstd-T2-round-trip",
    needs: &["zstd", "cmp", "sha256sum"],
    argv: |work| script("zstd.sh", work),
    setup: text_input,
    binds: &[("zstd", "pthread_create")],
    known_difference: None,
};

const SORT: Row = Row {
    name: "sort-parallel-temp-files",
    needs: &["sort", "wc", "sha256sum"],
    argv: |work| script("sort.sh", work),
    setup: sort_input,
    binds: &[("sort", "pthread_create")],
    known_difference: None,
};

const GIT: Row = Row {
    name: "git-commit-gc-fsck-grep",
    needs: &["git", "seq", "sed", "grep", "tail", "sha256sum"],
    argv: |work| script("git.sh", work),
    setup: no_input,
    binds: &[("git", "pthread_create"), ("git", "munmap")],
    known_difference: None,
};

const GCC: Row = Row {
    name: "gcc-compile-link-run",
    needs: &["gcc", "sha256sum"],
    argv: |work| script("gcc.sh", work),
    setup: no_input,
    // The compiled program's calls (gcc's own tools bind mmap, signal, dlopen and dlclose).
    binds: &[
        ("threads", "pthread_create"),
        ("threads", "munmap"),
        ("threads", "mremap"),
        ("threads", "dlclose"),
    ],
    known_difference: None,
};

const BASH_RT: Row = Row {
    name: "bash-traps-rtmin-to-rtmax-1",
    needs: &["/bin/bash"],
    argv: |work| script("bash_rt.sh", work),
    setup: no_input,
    binds: &[("bash", "sigaction"), ("bash", "sigprocmask")],
    known_difference: None,
};

const BASH_RTMAX: Row = Row {
    name: "bash-trap-rtmax",
    needs: &["/bin/bash"],
    argv: |work| script("bash_rtmax.sh", work),
    setup: no_input,
    binds: &[("bash", "sigaction"), ("bash", "sigprocmask")],
    known_difference: None,
};

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    Shim,
    /// Under the shim with `LD_DEBUG=bindings`, written to files in this directory.
    Bindings,
}

fn work_dir(row: &Row) -> PathBuf {
    support::tests_build_dir().join("corpus").join(row.name)
}

fn ld_debug_dir(row: &Row) -> PathBuf {
    support::tests_build_dir()
        .join("corpus")
        .join(format!("{}.ld-debug", row.name))
}

fn fresh_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
}

/// Runs `row` once in a fresh copy of its work directory; returns the result and wall time.
fn run_row(row: &Row, variant: Variant) -> (RunResult, Duration) {
    let work = work_dir(row);
    fresh_dir(&work);
    (row.setup)(&work);
    let mut args: Vec<String> = vec![
        "-i".into(),
        "PATH=/usr/bin:/bin".into(),
        "LC_ALL=C".into(),
        "TZ=UTC".into(),
        format!("HOME={}", work.display()),
        format!("TMPDIR={}", work.display()),
    ];
    if variant != Variant::Plain {
        args.push(format!("LD_PRELOAD={}", shim().display()));
    }
    if variant == Variant::Bindings {
        let dir = ld_debug_dir(row);
        fresh_dir(&dir);
        args.push("LD_DEBUG=bindings".into());
        args.push(format!("LD_DEBUG_OUTPUT={}", dir.join("ld").display()));
    }
    args.extend((row.argv)(&work));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let res = support::run(Path::new("/usr/bin/env"), &args, &[], TIMEOUT);
    (res, start.elapsed())
}

/// `(file name of the object, symbol)` for each symbol that an object other than the shim bound
/// to the shim, per the dynamic linker's `LD_DEBUG=bindings` files (one per process), whose lines
/// read `binding file A [0] to B [0]: normal symbol `S' [VERSION]`.
fn bound_to_shim(dir: &Path) -> BTreeSet<(String, String)> {
    let mut symbols = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let text = fs::read_to_string(entry.expect("dir entry").path()).unwrap_or_default();
        for line in text.lines() {
            let Some((_, binding)) = line.split_once("binding file ") else {
                continue;
            };
            let Some((from, rest)) = binding.split_once(" to ") else {
                continue;
            };
            let Some((to, symbol)) = rest.split_once(": normal symbol `") else {
                continue;
            };
            if to.contains("librseqrt_preload.so") && !from.contains("librseqrt_preload.so") {
                let object = from.split(' ').next().unwrap_or(from);
                let object = object.rsplit('/').next().unwrap_or(object);
                if let Some((name, _)) = symbol.split_once('\'') {
                    symbols.insert((object.to_string(), name.to_string()));
                }
            }
        }
    }
    symbols
}

/// Lines of standard error that name rseqrt (the shim's diagnostics would).
fn rseqrt_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("rseqrt"))
        .collect()
}

fn check(row: &Row) {
    for program in row.needs {
        let found = if program.contains('/') {
            Path::new(program).exists()
        } else {
            ["/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(program).exists())
        };
        assert!(
            found,
            "{}: {program} is missing: run scripts/install-deps (it installs the corpus's packages)",
            row.name
        );
    }

    let (plain, plain_time) = run_row(row, Variant::Plain);
    assert!(
        plain.success(),
        "{}: the program fails without the shim, so the row shows nothing:\n{plain}",
        row.name
    );

    let (shimmed, shim_time) = run_row(row, Variant::Shim);
    let both = format!("--- without the shim\n{plain}\n--- with the shim\n{shimmed}");
    assert!(
        !shimmed.timed_out,
        "{}: timed out under the shim\n{both}",
        row.name
    );
    assert!(
        shimmed.signal().is_none(),
        "{}: killed by signal {} under the shim\n{both}",
        row.name,
        shimmed.signal().unwrap_or(0)
    );
    let diagnostics: Vec<&str> = rseqrt_lines(&shimmed.stderr)
        .into_iter()
        .filter(|l| !plain.stderr.contains(l))
        .collect();
    assert!(
        diagnostics.is_empty(),
        "{}: rseqrt wrote to standard error: {diagnostics:?}\n{both}",
        row.name
    );
    assert_eq!(
        shimmed.status.code(),
        plain.status.code(),
        "{}: exit status differs under the shim\n{both}",
        row.name
    );
    assert_eq!(
        shimmed.stderr, plain.stderr,
        "{}: standard error differs under the shim\n{both}",
        row.name
    );

    let verdict = if shimmed.stdout == plain.stdout {
        match row.known_difference {
            Some((why, _)) => format!(
                "identical: the known difference ({why}) is gone; remove the row's known_difference mark"
            ),
            None => "identical".to_string(),
        }
    } else {
        let Some((why, lines)) = row.known_difference else {
            panic!(
                "{}: standard output differs under the shim\n{both}",
                row.name
            );
        };
        let expected: Vec<&str> = plain
            .stdout
            .lines()
            .map(|l| lines.iter().find(|(p, _)| *p == l).map_or(l, |(_, s)| *s))
            .collect();
        let got: Vec<&str> = shimmed.stdout.lines().collect();
        assert_eq!(
            got, expected,
            "{}: standard output differs under the shim, and not only by the known difference \
             ({why})\n{both}",
            row.name
        );
        format!("KNOWN DIFFERENCE ({why}): {lines:?}")
    };

    // Up to three traced runs: on glibc 2.31, about one run in 15 under a full `make check` (none
    // in 40 alone) lacked one binding line of a multi-threaded program; the cause is not known.
    // A binding the program no longer makes is missing from all three.
    let (mut bound, mut missing) = (BTreeSet::new(), Vec::new());
    for attempt in 1..=3 {
        let (traced, _) = run_row(row, Variant::Bindings);
        assert!(
            traced.success(),
            "{}: the run under the shim with LD_DEBUG=bindings failed:\n{traced}",
            row.name
        );
        bound = bound_to_shim(&ld_debug_dir(row));
        missing = row
            .binds
            .iter()
            .filter(|(objects, symbol)| {
                !bound.iter().any(|(o, s)| s == symbol && objects.split('|').any(|part| o.contains(part)))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        println!("note  {}: traced run {attempt} shows no binding of {missing:?} to the shim", row.name);
    }
    assert!(
        missing.is_empty(),
        "{}: no object of the program binds {missing:?} to the shim any more, so the row no \
         longer exercises those interposers (bound to it: {bound:?})",
        row.name
    );

    println!(
        "corpus {}: {verdict}; exit {}; plain {:.2} s, shim {:.2} s; bound to the shim: {}",
        row.name,
        plain.status.code().unwrap_or(-1),
        plain_time.as_secs_f64(),
        shim_time.as_secs_f64(),
        row.binds
            .iter()
            .map(|(o, s)| format!("{o}:{s}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[test]
fn python3_threads_map_unmap_and_unload() {
    check(&PYTHON3);
}

#[test]
fn xz_two_threads_round_trip() {
    check(&XZ);
}

#[test]
fn zstd_two_threads_round_trip() {
    check(&ZSTD);
}

#[test]
fn sort_parallel_with_temporary_files() {
    check(&SORT);
}

#[test]
fn git_commit_pack_check_search() {
    check(&GIT);
}

#[test]
fn gcc_compiles_links_and_runs() {
    check(&GCC);
}

#[test]
fn bash_traps_real_time_signals() {
    check(&BASH_RT);
}

#[test]
fn bash_trap_on_sigrtmax() {
    check(&BASH_RTMAX);
}
