//! `rseqrt`: what rseq looks like on this machine (`info`), whether rseqrt's barrier protects a
//! process from the stale-`rseq_cs` crash (`selftest`), and the benchmarks (`bench`).

mod bench;
mod info;
mod json;
mod selftest;
mod svg;

pub const HELP: &str = "\
rseqrt: restartable sequences (rseq) and the rseq-clear barrier

Usage: rseqrt <command> [options]

Commands:
  info       what the kernel, the C library and rseqrt offer on this machine
  selftest   reproduce the stale-rseq_cs crash without rseqrt, then show rseqrt prevents it
  bench      run the benchmarks and write the results (Markdown, JSON, SVG)
  help       this text

Run `rseqrt <command> --help` for a command's options.
";

pub const HELP_INFO: &str = "\
Usage: rseqrt info [--json]

Shows the kernel's rseq support (AT_RSEQ_FEATURE_SIZE, AT_RSEQ_ALIGN, the extended fields node_id
and mm_cid), the membarrier commands available (MEMBARRIER_CMD_QUERY), the C library and whether
it registers rseq itself (glibc's own __rseq_size, and GLIBC_TUNABLES=glibc.pthread.rseq), which
owner mode a program gets (libc: glibc registers and rseqrt adopts; self: rseqrt registers; none),
and the real-time signal rseqrt reserves for its barrier.

Options:
  --json     machine-readable output
  -h, --help this text
";

pub const HELP_SELFTEST: &str = "\
Usage: rseqrt selftest [--json]

Runs each stale-rseq_cs crash scenario in a child process, first without rseqrt's barrier (the
kernel is expected to kill the process with SIGSEGV), then with it (the process must survive):
  dlclose      dlclose() of a plugin holding a critical section's descriptor
  dlclose-dep  dlclose() of a plugin that unloads its dependency holding the descriptor
  munmap       munmap() of a page holding the descriptor
Exit status 0 only when rseqrt protected the process in every scenario. A scenario whose crash
cannot be reproduced without rseqrt is reported as such; it is not a failure of rseqrt.

Options:
  --json     machine-readable output
  -h, --help this text
";

pub const HELP_BENCH: &str = "\
Usage: rseqrt bench [--quick] [--out DIR] [--lib-dir DIR]

Measures, side by side in one run (medians over repeated runs):
  rseqrt_dlclose() vs dlclose()                1/64/1000 idle threads; none/one/all stale
  barrier vs signal-all-and-ack vs glibc setuid() broadcast vs membarrier(PRIVATE_EXPEDITED_RSEQ)
  rseqrt_munmap() and preloaded munmap() vs munmap(), 64 threads
  pthread_create()+pthread_join(): rseqrt owning registration vs glibc owning it
  rseqrt_current_cpu() vs sched_getcpu() vs the getcpu system call
The benchmark programs are C programs compiled at run time with $CC (default cc) and linked
against the C library (librseqrt.so) in --lib-dir. Targets are reported as met or missed; a
missed target never makes the command fail.

Options:
  --quick        fewer threads and repetitions (about 30 s instead of about 3 minutes)
  --out DIR      where to write results.md, results.json, barrier-latency.svg
                 (default: docs/bench of the source tree)
  --lib-dir DIR  directory holding librseqrt.so and librseqrt_preload.so
                 (default: build/lib of the source tree, else ../lib next to this program)
  -h, --help     this text
";

/// The options of `rseqrt info` and `rseqrt selftest`: `Ok(true)` with `--json`, `Ok(false)`
/// without; `Err(status)` when the command is done already (`--help` printed `help`: 0; an
/// unknown argument: 2, with a message naming `command`).
pub fn json_flag(command: &str, help: &str, args: &[String]) -> Result<bool, i32> {
    let mut as_json = false;
    for a in args {
        match a.as_str() {
            "--json" => as_json = true,
            "-h" | "--help" => {
                print!("{help}");
                return Err(0);
            }
            other => {
                eprintln!("rseqrt {command}: unknown argument '{other}' (try --help)");
                return Err(2);
            }
        }
    }
    Ok(as_json)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("--child") => selftest::child(&args[1..]),
        Some("info") => info::run(&args[1..]),
        Some("selftest") => selftest::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            0
        }
        Some("--version" | "-V") => {
            println!("rseqrt {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(other) => {
            eprintln!("rseqrt: unknown command '{other}'\n\n{HELP}");
            2
        }
        None => {
            eprint!("{HELP}");
            2
        }
    };
    std::process::exit(code);
}
