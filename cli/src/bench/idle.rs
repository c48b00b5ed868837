//! The idle-state rows: `rseqrt_dlclose()`, `rseqrt_munmap()` and the preloaded `munmap()`, with
//! idle threads in each state a process that uses rseq leaves them in, each beside its own floor
//! (the plain call, then one load of every idle thread's `rseq_cs`), measured the same way in the
//! same process, alternating iteration by iteration (bench/idle_states.c).
//!
//! Target: in every state, each call at most 1.15x its floor at 64, 1,000 and 10,000 threads.

use super::stats::{median, ratio_s, us, Samples, SamplesJson, Target};
use super::{a, run_prog, Programs};
use crate::plot::thousands;
use serde::Serialize;
use std::collections::BTreeMap;

/// The idle states: (key, what every idle thread's `rseq_cs` holds while it sleeps).
pub const STATES: &[(&str, &str)] = &[
    ("zero", "0 (the thread never ran a critical section)"),
    ("main", "a descriptor in the program (it ran the program's critical section once)"),
    ("lib", "a descriptor in a library the program links (loaded at start, never unloaded)"),
    ("dlopen", "a descriptor in a library dlopen'ed at start and never closed"),
];

/// Which benchmark process a call is measured in.
#[derive(Clone, Copy, PartialEq)]
enum Process {
    Linked,
    Preloaded,
}

/// A call and its floor: (name, process, key of the call, key of the floor, key of the plain
/// call inside the floor, what the floor is).
struct Call {
    name: &'static str,
    process: Process,
    call: &'static str,
    floor: &'static str,
    plain: &'static str,
    floor_is: &'static str,
}

const CALLS: &[Call] = &[
    Call { name: "rseqrt_dlclose()", process: Process::Linked, call: "rseqrt_dlclose", floor: "dlclose_floor", plain: "dlclose_plain", floor_is: "dlclose() + loads" },
    Call { name: "rseqrt_munmap()", process: Process::Linked, call: "rseqrt_munmap", floor: "munmap_floor", plain: "munmap_plain", floor_is: "munmap() + loads" },
    Call { name: "preloaded munmap()", process: Process::Preloaded, call: "preloaded_munmap", floor: "munmap_floor", plain: "munmap_plain", floor_is: "syscall(SYS_munmap) + loads" },
];

/// The thread counts the targets hold at.
const TARGET_THREADS: [usize; 3] = [64, 1000, 10_000];
const LIMIT: f64 = 1.15;

/// One state at one thread count: the linked process's samples and the preloaded one's (None
/// when librseqrt_preload.so was not found).
pub struct Cell {
    linked: Samples,
    preload: Option<Samples>,
}

impl Cell {
    fn samples(&self, c: &Call) -> Option<&Samples> {
        match c.process {
            Process::Linked => Some(&self.linked),
            Process::Preloaded => self.preload.as_ref(),
        }
    }
}

/// By state, then idle thread count.
pub struct Idle(BTreeMap<&'static str, BTreeMap<usize, Cell>>);

/// (repetitions, iterations) at a thread count: at 10,000 threads, creating the threads and a
/// call that wakes them (the state put back each time) dominate, so fewer iterations there.
fn plan(threads: usize, quick: bool) -> (usize, usize) {
    match (quick, threads) {
        (true, 0..=64) => (5, 15),
        (true, 65..=1000) => (5, 5),
        (true, _) => (3, 4),
        (false, 0..=64) => (9, 60),
        (false, 65..=1000) => (9, 20),
        (false, _) => (7, 8),
    }
}

pub fn measure(p: &Programs, quick: bool, counts: &[usize], log: &dyn Fn(&str)) -> Result<Idle, String> {
    let default: &[usize] = if quick { &[1, 64, 1000] } else { &[1, 64, 1000, 10_000] };
    let counts = if counts.is_empty() { default } else { counts };
    let (plugin, resident) = (p.plugin.display().to_string(), p.resident.display().to_string());
    let mut all = BTreeMap::new();
    for &(state, _) in STATES {
        let mut by_threads = BTreeMap::new();
        for &threads in counts {
            log(&format!("idle state {state}, {threads} threads"));
            let (reps, iters) = plan(threads, quick);
            let args = [a(&["idle", state]), vec![threads.to_string(), reps.to_string(), iters.to_string()], a(&[&plugin, &resident])].concat();
            let linked = run_prog(&p.linked, &args, &[])?;
            let preload = match &p.preload {
                Some(pre) => Some(run_prog(&p.linked, &[args, a(&["preload"])].concat(), &[("LD_PRELOAD", pre.display().to_string())])?),
                None => None,
            };
            by_threads.insert(threads, Cell { linked, preload });
        }
        all.insert(state, by_threads);
    }
    Ok(Idle(all))
}

/// The smallest and largest of the values.
fn range(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().reduce(f64::min)?;
    Some((lo, v.iter().copied().fold(lo, f64::max)))
}

fn range_s(v: &[f64]) -> String {
    range(v).map_or("n/a".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"))
}

impl Idle {
    /// Some samples of a linked process (for the owner mode it ran in).
    pub fn any(&self) -> Option<&Samples> {
        self.0.values().flat_map(|m| m.values()).map(|c| &c.linked).next()
    }

    fn cell(&self, state: &str, threads: usize) -> Option<&Cell> {
        self.0.get(state).and_then(|m| m.get(&threads))
    }

    fn ratio(&self, state: &str, threads: usize, c: &Call) -> Option<f64> {
        self.cell(state, threads).and_then(|cell| cell.samples(c)).and_then(|s| s.ratio(c.call, c.floor))
    }

    /// One target per state, call and thread count (64, 1,000, 10,000).
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for &(state, _) in STATES {
            for c in CALLS {
                for threads in TARGET_THREADS {
                    out.push(Target {
                        what: format!("idle state {state}: {} vs its floor ({}), {threads} idle threads", c.name, c.floor_is),
                        ratio: self.ratio(state, threads, c),
                        limit: LIMIT,
                    });
                }
            }
        }
        out
    }

    pub fn targets_markdown(&self, md: &mut String) {
        md.push_str(&format!(
            "\n## Targets against the floor\n\nIn every idle state, each call at most {LIMIT:.2}x its floor: the plain call followed by one load of every idle thread's `rseq_cs`, \
             the least any barrier that must look at every thread can cost. Ratio: the median over repetitions of the paired per-repetition ratio call / floor. \
             States and measurements: [below](#the-calls-against-their-floors-idle-threads-in-each-state).\n\n"
        ));
        let head: Vec<String> = TARGET_THREADS.iter().map(|t| format!("{} threads", thousands(*t))).collect();
        md.push_str(&format!("| idle threads hold | call | {} |\n| --- | --- |{}\n", head.join(" | "), " --- |".repeat(TARGET_THREADS.len())));
        let (mut met, mut measured) = (0, 0);
        for &(state, _) in STATES {
            for c in CALLS {
                let cells: Vec<String> = TARGET_THREADS
                    .iter()
                    .map(|&t| {
                        let tgt = Target { what: String::new(), ratio: self.ratio(state, t, c), limit: LIMIT };
                        measured += tgt.met().is_some() as usize;
                        met += (tgt.met() == Some(true)) as usize;
                        match tgt.ratio {
                            Some(r) => format!("{r:.2}x {}", tgt.result()),
                            None => tgt.result().into(),
                        }
                    })
                    .collect();
                md.push_str(&format!("| {state} | {} | {} |\n", c.name, cells.join(" | ")));
            }
        }
        md.push_str(&format!("\n{met} of {measured} measured targets met.\n"));
    }

    pub fn markdown(&self, md: &mut String) {
        md.push_str("\n## The calls against their floors, idle threads in each state\n\n");
        md.push_str("Idle threads sleep in `sem_wait()`; what their `rseq_cs` holds is the state. Nobody clears `rseq_cs` after a critical section, so in a process that uses rseq \
            (a per-CPU allocator, per-CPU counters) idle threads hold a descriptor *elsewhere*: in the program, or in a library that stays loaded. \
            The memory freed never holds any thread's descriptor: a fresh load of the small plugin for `dlclose()`, 16 fresh touched pages for `munmap()`. \
            Each call alternates, iteration by iteration, with its floor, measured the same way in the same process: the plain call (`dlclose()`, `munmap()`, or in the \
            preloaded process the raw `syscall(SYS_munmap)`, which the shim does not see), then one load of every idle thread's `rseq_cs` from the addresses the threads \
            published, side by side. `plain`: the plain call's part of the floor. Ratio: median of the per-repetition ratios; range: over the repetitions. \
            `rseqrt_dlclose()` and `rseqrt_munmap()` run in one process (linked with librseqrt.so), the preloaded `munmap()` in another (`LD_PRELOAD=librseqrt_preload.so`). \
            Idle threads have 64 KiB stacks.\n");
        for &(state, holds) in STATES {
            let Some(by_threads) = self.0.get(state) else { continue };
            md.push_str(&format!("\n### {state}: each idle thread's `rseq_cs` holds {holds}\n\n"));
            md.push_str("| idle threads | call | median call | median floor | call / floor | range over repetitions | plain call (part of the floor) | call / plain (information) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
            let mut notes = Vec::new();
            for (threads, cell) in by_threads {
                for c in CALLS {
                    let Some(s) = cell.samples(c) else {
                        md.push_str(&format!("| {threads} | {} | not measured: librseqrt_preload.so not found | | | | | |\n", c.name));
                        continue;
                    };
                    md.push_str(&format!(
                        "| {threads} | {} | {} | {} | {} | {} | {} | {} |\n",
                        c.name,
                        us(s.median(c.call)),
                        us(s.median(c.floor)),
                        ratio_s(s.ratio(c.call, c.floor)),
                        range_s(&s.ratios(c.call, c.floor)),
                        us(s.median(c.plain)),
                        ratio_s(s.ratio(c.call, c.plain))
                    ));
                }
                let plural = if *threads == 1 { "thread" } else { "threads" };
                for (process, s) in [(format!("{plural}, linked process"), Some(&cell.linked)), (format!("{plural}, preloaded process"), cell.preload.as_ref())] {
                    let Some(s) = s else { continue };
                    let info = |k: &str| s.info.get(k).copied().unwrap_or(-1.0);
                    let want = if state == "zero" { 0.0 } else { *threads as f64 };
                    if info("held_min") != want || info("held_max") != want {
                        notes.push(format!("{} idle {process}: {}-{} of the idle threads held a non-zero `rseq_cs` at the repetitions' starts and ends (expected {want})", thousands(*threads), info("held_min"), info("held_max")));
                    }
                    let count = |k: &str| info(k).max(0.0);
                    let failed = count("failed_dlclose") + count("failed_munmap");
                    if failed > 0.0 {
                        let errno = match info("failed_errno") as i32 {
                            libc::ETIMEDOUT => "ETIMEDOUT".to_string(),
                            n => format!("errno {n}"),
                        };
                        notes.push(format!(
                            "{} idle {process}: **{} call(s) failed** ({errno}): timed all the same, then the memory was freed with the plain call (no thread referred to it); failed rseqrt_dlclose(): {}, failed munmap: {}",
                            thousands(*threads), failed, count("failed_dlclose"), count("failed_munmap")
                        ));
                    }
                    if info("restored") > 0.0 {
                        notes.push(format!("{} idle {process}: a call woke the idle threads (the kernel then clears `rseq_cs`) before {} of the floor-and-call pairs; the state was put back each time, outside the timing", thousands(*threads), info("restored")));
                    }
                }
            }
            for n in notes {
                md.push_str(&format!("\n* {n}"));
            }
            md.push('\n');
        }
    }

    pub fn json(&self) -> BTreeMap<&'static str, BTreeMap<usize, CellJson>> {
        self.0
            .iter()
            .map(|(state, by_threads)| {
                let cells = by_threads
                    .iter()
                    .map(|(t, cell)| {
                        let ratios = CALLS
                            .iter()
                            .filter_map(|c| {
                                let s = cell.samples(c)?;
                                let per_rep = s.ratios(c.call, c.floor);
                                let (min, max) = range(&per_rep).unzip();
                                Some((c.call, RatioJson { to_floor: median(per_rep.clone()), to_floor_min: min, to_floor_max: max, to_floor_per_rep: per_rep, to_plain: s.ratio(c.call, c.plain) }))
                            })
                            .collect();
                        (*t, CellJson { linked: SamplesJson::new(&cell.linked, &[]), preloaded: cell.preload.as_ref().map(|s| SamplesJson::new(s, &[])), ratios })
                    })
                    .collect();
                (*state, cells)
            })
            .collect()
    }
}

/// One state at one thread count in results.json.
#[derive(Serialize)]
pub struct CellJson {
    linked: SamplesJson,
    preloaded: Option<SamplesJson>,
    /// By the call's key.
    ratios: BTreeMap<&'static str, RatioJson>,
}

#[derive(Serialize)]
struct RatioJson {
    /// Median of the per-repetition ratios call / floor.
    to_floor: Option<f64>,
    to_floor_min: Option<f64>,
    to_floor_max: Option<f64>,
    to_floor_per_rep: Vec<f64>,
    /// Median of the per-repetition ratios call / the plain call (information).
    to_plain: Option<f64>,
}

