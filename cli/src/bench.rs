//! `rseqrt bench`: compiles the C benchmark program (bench/rseqrt_bench.c, embedded) against the
//! C library, runs it in child processes, and writes medians, ratios and a plot.
//!
//! Every comparison is made inside one run: the compared calls alternate iteration by iteration
//! inside one process (or, for thread start, the compared processes alternate), each repetition
//! yields one median per call, and a ratio is the median over repetitions of the per-repetition
//! ratio (paired), which cancels most of the drift of a shared, noisy machine.

mod idle;
mod stats;

use crate::plot::{barrier_plot, replot};
use crate::selftest::{write_plugins, TempDir};
use serde::Serialize;
use stats::{ratio_s, us, Samples, SamplesJson, Target};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The benchmark program's sources, written next to each other at run time: its files and the
/// C ABI tests' critical section (which idle_states.c puts in the program itself).
const SOURCES: &[(&str, &str)] = &[
    ("rseqrt_bench.c", include_str!("../../bench/rseqrt_bench.c")),
    ("idle_states.c", include_str!("../../bench/idle_states.c")),
    ("bench.h", include_str!("../../bench/bench.h")),
    ("rseq_cs.h", include_str!("../../c-abi-tests/rseq_cs.h")),
    ("thread_pointer.h", include_str!("../../c-abi-tests/thread_pointer.h")),
];
const TUNABLE_OFF: &str = "glibc.pthread.rseq=0";

/// The options of `rseqrt bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Fewer threads and repetitions (a few seconds instead of about a minute; no 10,000-thread
    /// rows)
    #[arg(long)]
    quick: bool,
    /// Measure only these parts (comma-separated), print their tables, and write result files
    /// only when --out is given (e.g. `--only idle`: the idle-state rows against their floors)
    #[arg(long, value_delimiter = ',', value_name = "PARTS", conflicts_with = "replot")]
    only: Vec<Part>,
    /// Idle thread counts of the idle-state rows, comma-separated [default: 1,64,1000,10000;
    /// with --quick: 1,64,1000]
    #[arg(long, value_delimiter = ',', value_name = "COUNTS", conflicts_with = "replot")]
    idle_threads: Vec<usize>,
    /// Where to write results.md, results.json, barrier-latency.svg [default: docs/bench of the
    /// source tree; with --replot, the directory of the results file]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Directory holding librseqrt.so and librseqrt_preload.so [default: build/lib of the source
    /// tree, else ../lib next to this program]
    #[arg(long, value_name = "DIR")]
    lib_dir: Option<PathBuf>,
    /// Measure nothing: draw barrier-latency.svg again from the results.json of an earlier run
    #[arg(long, value_name = "RESULTS_JSON", conflicts_with_all = ["quick", "lib_dir"])]
    replot: Option<PathBuf>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// rseqrt_dlclose() vs dlclose(), none/one/all referring
    Dlclose,
    /// the barrier vs its floor and its alternatives, 1 to 10,000 threads (the plot)
    Barrier,
    /// rseqrt_munmap() and the preloaded munmap() vs munmap(), 64 threads
    Munmap,
    /// the calls against their floors, idle threads in each state (zero, elsewhere)
    Idle,
    /// pthread_create() + pthread_join()
    Threads,
    /// reading the current CPU
    Cpu,
}

struct Opts {
    quick: bool,
    /// None: print only (`--only` without `--out`).
    out: Option<PathBuf>,
    lib_dir: PathBuf,
    /// Empty: every part.
    only: Vec<Part>,
    idle_threads: Vec<usize>,
}

impl Opts {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// The source tree this binary was built from, when it is still there.
fn source_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("Cargo.toml").exists().then(|| root.canonicalize().unwrap_or(root))
}

fn default_lib_dir() -> PathBuf {
    if let Some(root) = source_root() {
        if root.join("build/lib/librseqrt.so").exists() {
            return root.join("build/lib");
        }
    }
    std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("../lib"))).unwrap_or_else(|| "build/lib".into())
}

fn default_out() -> PathBuf {
    source_root().map_or_else(|| PathBuf::from("rseqrt-bench"), |r| r.join("docs/bench"))
}

struct Programs {
    linked: PathBuf,
    plain: PathBuf,
    plugin: PathBuf,
    /// A copy of libselftest_dep_lib.so under another name: a separate object when dlopen'ed
    /// by the linked program (which links the original).
    resident: PathBuf,
    preload: Option<PathBuf>,
    lib_dir: PathBuf,
}

fn compile(dir: &Path, lib_dir: &Path) -> Result<Programs, String> {
    for (name, text) in SOURCES {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    write_plugins(dir).map_err(|e| e.to_string())?;
    let resident = dir.join("libbench_resident.so");
    std::fs::copy(dir.join("libselftest_dep_lib.so"), &resident).map_err(|e| format!("{}: {e}", resident.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = dir.join("rseqrt_bench");
    let plain = dir.join("rseqrt_bench_plain");
    let run = |args: Vec<String>| -> Result<(), String> {
        let out = Command::new(&cc).args(&args).output().map_err(|e| format!("running {cc}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cc} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
        }
    };
    let (lib, tmp) = (lib_dir.display().to_string(), dir.display().to_string());
    let srcs = || ["rseqrt_bench.c", "idle_states.c"].map(|f| dir.join(f).display().to_string());
    // The linked program also links libselftest_dep_lib.so (the "lib" idle state: a descriptor
    // in a library loaded at start).
    run([vec!["-O2".into(), "-DWITH_RSEQRT".into(), "-o".into(), linked.display().to_string()], srcs().to_vec(),
         vec![format!("-L{lib}"), "-lrseqrt".into(), format!("-Wl,-rpath,{lib}"), format!("-L{tmp}"), "-Wl,--no-as-needed".into(),
              "-lselftest_dep_lib".into(), "-Wl,--as-needed".into(), format!("-Wl,-rpath,{tmp}"), "-lpthread".into(), "-ldl".into()]].concat())?;
    run([vec!["-O2".into(), "-o".into(), plain.display().to_string()], srcs().to_vec(), vec!["-lpthread".into(), "-ldl".into()]].concat())?;
    let preload = [lib_dir.join("rseqrt/librseqrt_preload.so"), lib_dir.join("librseqrt_preload.so")].into_iter().find(|p| p.exists());
    Ok(Programs { linked, plain, plugin: dir.join("libselftest_plugin.so"), resident, preload, lib_dir: lib_dir.to_path_buf() })
}

/// Runs one benchmark child and parses its output.
fn run_prog(prog: &Path, args: &[String], env: &[(&str, String)]) -> Result<Samples, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).env_remove("LD_PRELOAD").env_remove("GLIBC_TUNABLES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("{}: {e}", prog.display()))?;
    if !out.status.success() {
        return Err(format!("{} {} failed ({}): {}", prog.display(), args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut s = Samples::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["#", key, v] => {
                if let Ok(v) = v.parse() {
                    s.info.insert(key.to_string(), v);
                }
            }
            [key, v] => {
                if let Ok(v) = v.parse() {
                    s.values.entry(key.to_string()).or_default().push(v);
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// `rseqrt_bench MODE PLUGIN THREADS REPS ITERS`, linked with rseqrt.
fn run_with_plugin(p: &Programs, mode: &str, plugin: &str, threads: usize, reps: usize, iters: usize) -> Result<Samples, String> {
    let args = [mode.to_string(), plugin.to_string(), threads.to_string(), reps.to_string(), iters.to_string()];
    run_prog(&p.linked, &args, &[])
}

fn a(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// results.json. A part left out with `--only` is left out here too.
#[derive(Serialize)]
struct Results {
    generated_by: String,
    quick: bool,
    cpus: usize,
    kernel: String,
    glibc: String,
    library: String,
    seconds: f64,
    targets: Vec<Target>,
    /// By idle thread count.
    #[serde(skip_serializing_if = "Option::is_none")]
    dlclose: Option<BTreeMap<usize, SamplesJson>>,
    /// By thread count.
    #[serde(skip_serializing_if = "Option::is_none")]
    barrier: Option<BTreeMap<usize, SamplesJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    munmap: Option<SamplesJson>,
    /// Some(None) (null): measured, but librseqrt_preload.so was not found.
    #[serde(skip_serializing_if = "Option::is_none")]
    munmap_preload: Option<Option<SamplesJson>>,
    /// By idle state, then idle thread count.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle: Option<BTreeMap<&'static str, BTreeMap<usize, idle::CellJson>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_start: Option<SamplesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_cpu: Option<SamplesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_cpu_owner_self: Option<SamplesJson>,
}

pub fn run(args: &Args) -> i32 {
    let done = match &args.replot {
        Some(results) => {
            let dir = results.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            replot(results, args.out.as_deref().unwrap_or(dir))
        }
        None => bench(&Opts {
            quick: args.quick,
            // A partial run writes only where it is told to: docs/bench keeps the full report.
            out: if args.only.is_empty() { Some(args.out.clone().unwrap_or_else(default_out)) } else { args.out.clone() },
            lib_dir: args.lib_dir.clone().unwrap_or_else(default_lib_dir),
            only: args.only.clone(),
            idle_threads: args.idle_threads.clone(),
        }),
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rseqrt bench: {e}");
            1
        }
    }
}

/// The measurements of one run; None: a part left out with `--only`.
struct Measurements {
    dl: Option<BTreeMap<usize, Samples>>,
    bar: Option<BTreeMap<usize, Samples>>,
    /// rseqrt_munmap vs munmap, and (when the shim was found) the preloaded munmap vs the call.
    mm: Option<(Samples, Option<Samples>)>,
    idle: Option<idle::Idle>,
    th: Option<Samples>,
    /// Owner libc, then owner self.
    cpu: Option<(Samples, Samples)>,
}

fn measure(o: &Opts, p: &Programs, log: &dyn Fn(&str)) -> Result<Measurements, String> {
    let q = o.quick;
    let plugin = p.plugin.display().to_string();

    // 1. rseqrt_dlclose vs dlclose: 1/64/1000 idle threads; none/one/all stale.
    let dl = if o.runs(Part::Dlclose) {
        let mut dl = BTreeMap::new();
        for (threads, iters) in if q { [(1, 40), (64, 30), (1000, 8)] } else { [(1, 150), (64, 100), (1000, 25)] } {
            log(&format!("dlclose, {threads} threads"));
            let reps = if q { 5 } else { 9 };
            let s = run_with_plugin(p, "dlclose", &plugin, threads, reps, iters)?;
            dl.insert(threads, s);
        }
        Some(dl)
    } else {
        None
    };

    // 2. barrier vs the alternatives, against thread count.
    let bar = if o.runs(Part::Barrier) {
        let counts: &[usize] = if q { &[1, 16, 64, 256] } else { &[1, 4, 16, 64, 256, 1000, 10_000] };
        let mut bar = BTreeMap::new();
        for &threads in counts {
            log(&format!("barrier, {threads} threads"));
            // At 10,000 threads one iteration (the barriers that wake every thread: glibc's takes
            // about 0.5 s) takes over a second: two iterations per repetition there.
            let (reps, iters) = match threads {
                _ if q => (5, 8),
                0..=64 => (9, 50),
                65..=1000 => (9, 20),
                _ => (5, 2),
            };
            let s = run_with_plugin(p, "barrier", &plugin, threads, reps, iters)?;
            bar.insert(threads, s);
        }
        Some(bar)
    } else {
        None
    };

    // 3. munmap, 64 threads: rseqrt_munmap vs munmap in one process; the preloaded munmap vs the
    //    raw system call in another (LD_PRELOAD of librseqrt_preload.so).
    let mm = if o.runs(Part::Munmap) {
        log("munmap, 64 threads");
        let (reps, iters) = if q { ("5", "200") } else { ("11", "1000") };
        let mm = run_prog(&p.linked, &a(&["munmap", "64", reps, iters]), &[])?;
        let mm_pre = match &p.preload {
            Some(pre) => Some(run_prog(&p.linked, &a(&["munmap", "64", reps, iters, "preload"]), &[("LD_PRELOAD", pre.display().to_string())])?),
            None => None,
        };
        Some((mm, mm_pre))
    } else {
        None
    };

    // 4. the calls against their floors, idle threads in each state.
    let idle = if o.runs(Part::Idle) { Some(idle::measure(p, q, &o.idle_threads, log)?) } else { None };

    // 5. thread start: alternate processes; the baseline is glibc alone (glibc owns registration).
    let th = if o.runs(Part::Threads) {
        log("thread start");
        let (reps, iters) = if q { (5, "200") } else { (15, "500") };
        let variants: [(&str, &Path, bool); 4] = [
            ("glibc", &p.plain, false),           // glibc registers; no rseqrt
            ("rseqrt_self", &p.linked, true),     // rseqrt registers (glibc's turned off)
            ("rseqrt_libc", &p.linked, false),    // glibc registers, rseqrt adopts
            ("glibc_norseq", &p.plain, true),     // nobody registers
        ];
        let mut th = Samples::default();
        for _ in 0..reps {
            for (name, prog, off) in variants {
                // rseqrt registers in glibc's place only when asked (RSEQRT_REGISTER=1); plain glibc
                // ignores the variable.
                let env: Vec<(&str, String)> =
                    if off { vec![("GLIBC_TUNABLES", TUNABLE_OFF.into()), ("RSEQRT_REGISTER", "1".into())] } else { vec![] };
                let s = run_prog(prog, &a(&["threads", "1", iters]), &env)?;
                th.merge(s, &format!("{name}."));
            }
        }
        Some(th)
    } else {
        None
    };

    // 6. current CPU.
    let cpu = if o.runs(Part::Cpu) {
        log("current cpu");
        let (reps, iters) = if q { ("5", "15") } else { ("9", "40") };
        let cpu = run_prog(&p.linked, &a(&["cpu", reps, iters]), &[])?;
        let cpu_self = run_prog(&p.linked, &a(&["cpu", reps, iters]), &[("GLIBC_TUNABLES", TUNABLE_OFF.into()), ("RSEQRT_REGISTER", "1".into())])?;
        Some((cpu, cpu_self))
    } else {
        None
    };
    Ok(Measurements { dl, bar, mm, idle, th, cpu })
}

fn bench(o: &Opts) -> Result<(), String> {
    let started = Instant::now();
    if !o.lib_dir.join("librseqrt.so").exists() {
        return Err(format!("no librseqrt.so in {} (run `make`, or pass --lib-dir)", o.lib_dir.display()));
    }
    let tmp = TempDir::new("rseqrt-bench-").map_err(|e| e.to_string())?;
    let p = compile(&tmp.0, &o.lib_dir)?;
    let log = |what: &str| eprintln!("[{:5.1}s] {what}", started.elapsed().as_secs_f64());
    let m = measure(o, &p, &log)?;
    log("writing results");
    let q = o.quick;
    let command = format!(
        "rseqrt bench{}{}",
        if q { " --quick" } else { "" },
        if o.only.is_empty() { String::new() } else { format!(" --only {}", o.only.iter().map(|p| part_name(*p)).collect::<Vec<_>>().join(",")) }
    );

    // ---- targets -------------------------------------------------------------------------
    let mut targets = Vec::new();
    if let Some(dl) = &m.dl {
        let (d1000, d64) = (&dl[&1000], &dl[&64]);
        let scaling = |key: &str| match (d1000.median(key), d64.median(key)) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        targets.push(Target { what: "rseqrt_dlclose(), 1,000 idle threads, none referring, vs dlclose()".into(), ratio: d1000.ratio("rseqrt_k0", "plain"), limit: 1.10 });
        targets.push(Target { what: "one referring thread: rseqrt_dlclose() at 1,000 threads vs at 64 (cost follows k, not threads)".into(), ratio: scaling("rseqrt_k1"), limit: 2.0 });
        targets.push(Target { what: "no referring thread: rseqrt_dlclose() at 1,000 threads vs at 64".into(), ratio: scaling("rseqrt_k0"), limit: 2.0 });
    }
    if let Some((mm, mm_pre)) = &m.mm {
        targets.push(Target { what: "rseqrt_munmap() vs munmap(), 64 threads".into(), ratio: mm.ratio("rseqrt", "plain"), limit: 1.10 });
        targets.push(Target { what: "preloaded munmap() vs munmap system call, 64 threads".into(), ratio: mm_pre.as_ref().and_then(|s| s.ratio("preloaded", "syscall")), limit: 1.10 });
    }
    if let Some(th) = &m.th {
        targets.push(Target { what: "thread start, rseqrt owning registration vs glibc owning it".into(), ratio: th.ratio("rseqrt_self.create_join", "glibc.create_join"), limit: 1.05 });
    }
    if let Some((cpu, _)) = &m.cpu {
        targets.push(Target { what: "rseqrt_current_cpu() vs sched_getcpu()".into(), ratio: cpu.ratio("rseqrt", "sched_getcpu"), limit: 1.00 });
    }
    let floor_targets = m.idle.as_ref().map(|i| i.targets()).unwrap_or_default();

    // ---- Markdown ------------------------------------------------------------------------
    let mut md = String::new();
    let info = crate::info::collect();
    let owner = crate::info::owner_name(rseqrt::owner());
    let any_linked = [m.cpu.as_ref().map(|c| &c.0), m.mm.as_ref().map(|x| &x.0), m.dl.as_ref().and_then(|d| d.values().next()), m.idle.as_ref().and_then(|i| i.any())];
    md.push_str("# rseqrt benchmark results\n\n");
    md.push_str(&format!(
        "Generated by `{command}` (`make bench`). Machine: {} CPUs, kernel {}, glibc {}; owner mode of the benchmark programs: {} unless noted. \
         Each value is the median over repetitions of the per-repetition median; each ratio is the median over repetitions of the paired per-repetition ratio. \
         The C benchmark programs are linked against `{}`. Total time: {:.0} s.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        info.kernel.release,
        info.libc.version,
        owner_of(any_linked.into_iter().flatten().next(), owner),
        p.lib_dir.join("librseqrt.so").display(),
        started.elapsed().as_secs_f64()
    ));
    if !targets.is_empty() {
        md.push_str("## Targets\n\n| target | ratio | limit | result |\n| --- | --- | --- | --- |\n");
        for t in &targets {
            md.push_str(&format!("| {} | {} | <= {:.2} | {} |\n", t.what, ratio_s(t.ratio), t.limit, t.result()));
        }
    }
    if let Some(i) = &m.idle {
        i.targets_markdown(&mut md);
    }
    if let Some(dl) = &m.dl {
        dlclose_markdown(dl, &mut md);
    }
    if let Some(bar) = &m.bar {
        barrier_markdown(bar, &mut md);
    }
    if let Some((mm, mm_pre)) = &m.mm {
        md.push_str("\n## munmap(), 64 idle threads\n\n16 touched pages are mapped and unmapped each iteration; only the unmap is timed.\n\n| call | median | baseline | ratio |\n| --- | --- | --- | --- |\n");
        md.push_str(&format!("| rseqrt_munmap() | {} | munmap() {} | {} |\n", us(mm.median("rseqrt")), us(mm.median("plain")), ratio_s(mm.ratio("rseqrt", "plain"))));
        match mm_pre {
            Some(s) => md.push_str(&format!("| munmap() with LD_PRELOAD=librseqrt_preload.so | {} | syscall(SYS_munmap) {} | {} |\n", us(s.median("preloaded")), us(s.median("syscall")), ratio_s(s.ratio("preloaded", "syscall")))),
            None => md.push_str("| preloaded munmap() | not measured: librseqrt_preload.so not found | | |\n"),
        }
    }
    if let Some(i) = &m.idle {
        i.markdown(&mut md);
    }
    if let Some(th) = &m.th {
        md.push_str("\n## Thread start: pthread_create() + pthread_join()\n\nEach variant is a separate process, pinned to one CPU (the same for all: the first it may use) so that creator and thread share it: unpinned, where the scheduler puts the new thread decides the time, and single runs varied from 0.7x to 1.7x here. The processes alternate, and the ratio pairs each repetition's runs.\n\n| variant | median | ratio to glibc alone |\n| --- | --- | --- |\n");
        for (name, words) in [("glibc", "glibc alone, glibc registers rseq (baseline)"), ("rseqrt_self", "linked with rseqrt, GLIBC_TUNABLES=glibc.pthread.rseq=0 RSEQRT_REGISTER=1: rseqrt registers"),
                              ("rseqrt_libc", "linked with rseqrt, glibc registers, rseqrt adopts"), ("glibc_norseq", "glibc alone, glibc.pthread.rseq=0: no rseq at all")] {
            md.push_str(&format!("| {words} | {} | {} |\n", us(th.median(&format!("{name}.create_join"))), ratio_s(th.ratio(&format!("{name}.create_join"), "glibc.create_join"))));
        }
    }
    if let Some((cpu, cpu_self)) = &m.cpu {
        md.push_str("\n## Reading the current CPU (per call)\n\n| call | glibc registers (owner libc) | ratio | rseqrt registers (owner self) | ratio |\n| --- | --- | --- | --- | --- |\n");
        for (key, words) in [("rseqrt", "rseqrt_current_cpu()"), ("sched_getcpu", "sched_getcpu()"), ("getcpu_syscall", "syscall(SYS_getcpu)")] {
            md.push_str(&format!("| {words} | {} | {} | {} | {} |\n", us(cpu.median(key)), ratio_s(cpu.ratio(key, "sched_getcpu")), us(cpu_self.median(key)), ratio_s(cpu_self.ratio(key, "sched_getcpu"))));
        }
        md.push_str("\n(With glibc's registration turned off, glibc's `sched_getcpu()` falls back to the vDSO's `getcpu`, while `rseqrt_current_cpu()` still reads the `cpu_id` of rseqrt's own area.)\n");
    }

    // ---- JSON and SVG --------------------------------------------------------------------
    let results = Results {
        generated_by: command,
        quick: q,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: info.kernel.release.clone(),
        glibc: info.libc.version.clone(),
        library: p.lib_dir.join("librseqrt.so").display().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        targets: targets.into_iter().chain(floor_targets).collect(),
        dlclose: m.dl.as_ref().map(|dl| dl.iter().map(|(t, s)| (*t, SamplesJson::new(s, &[
            ("ratio_k0", s.ratio("rseqrt_k0", "plain")),
            ("ratio_k1", s.ratio("rseqrt_k1", "plain")),
            ("ratio_kall", s.ratio("rseqrt_kall", "plain")),
            ("ratio_scan_floor", floor_ratio(s)),
        ]))).collect()),
        barrier: m.bar.as_ref().map(|bar| bar.iter().map(|(t, s)| (*t, SamplesJson::new(s, &[]))).collect()),
        munmap: m.mm.as_ref().map(|(mm, _)| SamplesJson::new(mm, &[("ratio", mm.ratio("rseqrt", "plain"))])),
        munmap_preload: m.mm.as_ref().map(|(_, pre)| pre.as_ref().map(|s| SamplesJson::new(s, &[("ratio", s.ratio("preloaded", "syscall"))]))),
        idle: m.idle.as_ref().map(|i| i.json()),
        thread_start: m.th.as_ref().map(|th| SamplesJson::new(th, &[
            ("ratio_rseqrt_self", th.ratio("rseqrt_self.create_join", "glibc.create_join")),
            ("ratio_rseqrt_libc", th.ratio("rseqrt_libc.create_join", "glibc.create_join")),
        ])),
        current_cpu: m.cpu.as_ref().map(|(cpu, _)| SamplesJson::new(cpu, &[("ratio", cpu.ratio("rseqrt", "sched_getcpu"))])),
        current_cpu_owner_self: m.cpu.as_ref().map(|(_, s)| SamplesJson::new(s, &[("ratio", s.ratio("rseqrt", "sched_getcpu"))])),
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| format!("results.json: {e}"))?;
    print!("{md}");
    let Some(out) = &o.out else {
        println!("\n(--only without --out: nothing written)");
        return Ok(());
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, text: &str| std::fs::write(out.join(name), text).map_err(|e| format!("{name}: {e}"));
    write("results.md", &md)?;
    write("results.json", &format!("{json}\n"))?;
    let mut written = vec!["results.md", "results.json"];
    if let Some(bar) = &results.barrier {
        // The plot reads results.json's "barrier" object, as `--replot` does later.
        write("barrier-latency.svg", &barrier_plot(&serde_json::to_value(bar).map_err(|e| format!("results.json: {e}"))?)?)?;
        written.push("barrier-latency.svg");
    }
    println!("\nWritten: {}/{}", out.display(), written.join(", "));
    Ok(())
}

fn part_name(p: Part) -> String {
    clap::ValueEnum::to_possible_value(&p).map_or_else(String::new, |v| v.get_name().to_string())
}

/// The ratio that `dlclose()` plus a scan loading every thread's `rseq_cs` would reach.
fn floor_ratio(s: &Samples) -> Option<f64> {
    match (s.median("plain"), s.median("scan_floor")) {
        (Some(p), Some(f)) if p > 0.0 => Some((p + f) / p),
        _ => None,
    }
}

fn dlclose_markdown(dl: &BTreeMap<usize, Samples>, md: &mut String) {
    let d1000 = &dl[&1000];
    if let (Some(f), Some(p), Some(r)) = (d1000.median("scan_floor"), d1000.median("plain"), floor_ratio(d1000)) {
        md.push_str(&format!(
            "\nThe first target is below what reading the threads costs. Any barrier that looks at every thread must load each thread's `rseq_cs` once. \
             Each area sits in its own thread's stack, on its own page. With 1,000 threads, right after a `dlclose()` (which flushes the TLB), that loop alone takes {} \
             against `dlclose()`'s {}: a floor of {} for the ratio, above the 1.10 limit. The targets against the floor (above) are the ones a barrier can meet. \
             The `scan floor` column below shows this floor for each thread count.\n",
            us(Some(f)), us(Some(p)), ratio_s(Some(r))
        ));
    }
    md.push_str("\n## rseqrt_dlclose() vs dlclose()\n\nA small plugin (critical section and descriptor inside it) is loaded, k of the idle threads run its critical section once and go back to sleep (their `rseq_cs` is then stale), and the close is timed. The baseline is plain `dlclose()` with the same threads, none referring (plain `dlclose()` with a referring thread would crash the process). Plain, none-referring and one-referring closes alternate; the all-referring closes, which wake every thread, run in a block of their own, so that the other variants' threads stay idle. `scan floor`: a plain C loop that loads every thread's `rseq_cs` once, timed right after a `dlclose()`, and the ratio that `dlclose()` plus that loop would reach.\n\n");
    md.push_str("| idle threads | dlclose() | rseqrt_dlclose(), none refer | ratio | scan floor | floor ratio | one refers | ratio | all refer | ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (t, s) in dl {
        let all = if *t > 1 { (us(s.median("rseqrt_kall")), ratio_s(s.ratio("rseqrt_kall", "plain"))) } else { ("(= one)".into(), String::new()) };
        md.push_str(&format!("| {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", us(s.median("plain")), us(s.median("rseqrt_k0")), ratio_s(s.ratio("rseqrt_k0", "plain")),
            us(s.median("scan_floor")), ratio_s(floor_ratio(s)), us(s.median("rseqrt_k1")), ratio_s(s.ratio("rseqrt_k1", "plain")), all.0, all.1));
    }
}

fn barrier_markdown(bar: &BTreeMap<usize, Samples>, md: &mut String) {
    md.push_str("\n## The barrier vs the alternatives\n\nLatency of one barrier over every thread of the process, threads idle (blocked in `sem_wait()`). `rseqrt, none stale`: `rseqrt_clear_all(0)` when no thread has a stale `rseq_cs`; `scan floor`: one load of every thread's `rseq_cs` (from the addresses the threads published, side by side), what any barrier that looks at every thread must at least do; `rseqrt, all stale`: every thread ran a critical section just before; `signal + ack`: `tgkill()` to every thread and wait until each handler has acknowledged (what a naive rseq-clear does); `glibc setuid()`: glibc's own broadcast to every thread (SIGSETXID); `membarrier`: `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`, which does NOT reach blocked threads and so is not a complete barrier. The calls that leave blocked threads asleep (rseqrt with none stale, the scan floor, membarrier) alternate in one block, the ones that wake every thread in another, so that the idle threads of the first block stay idle; in the second, rseqrt's stale barrier and the naive broadcast swap places every other iteration, since what ran just before decides how deeply idle the woken threads are (one thread here wakes in 2.4 us or in 11-20 us). Plot: [barrier-latency.svg](barrier-latency.svg).\n\n");
    md.push_str("| threads | rseqrt, none stale | scan floor | rseqrt, all stale | signal + ack | all stale / signal + ack | glibc setuid() | membarrier |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (t, s) in bar {
        md.push_str(&format!("| {t} | {} | {} | {} | {} | {} | {} | {} |\n", us(s.median("rseqrt_idle")), us(s.median("scan_floor")), us(s.median("rseqrt_stale")), us(s.median("naive")),
            ratio_s(s.ratio("rseqrt_stale", "naive")), us(s.median("glibc")), us(s.median("membarrier"))));
    }
}

fn owner_of(s: Option<&Samples>, fallback: &str) -> String {
    match s.and_then(|s| s.info.get("owner")).map(|v| *v as i32) {
        Some(0) => "none".into(),
        Some(1) => "libc".into(),
        Some(2) => "self".into(),
        _ => fallback.into(),
    }
}
