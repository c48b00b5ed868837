//! `rseqrt`: what rseq looks like on this machine (`info`), whether rseqrt's barrier protects a
//! process from the stale-`rseq_cs` crash (`selftest`), and the benchmarks (`bench`).

mod bench;
mod info;
mod plot;
mod selftest;

use clap::{CommandFactory, Parser, Subcommand};

/// rseqrt: restartable sequences (rseq) and the rseq-clear barrier
#[derive(Parser)]
#[command(name = "rseqrt", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What the kernel, the C library and rseqrt offer on this machine
    ///
    /// Shows the kernel's rseq support (AT_RSEQ_FEATURE_SIZE, AT_RSEQ_ALIGN, the extended fields
    /// node_id and mm_cid), the membarrier commands available (MEMBARRIER_CMD_QUERY), the C library
    /// and whether it registers rseq itself (glibc's own __rseq_size, and
    /// GLIBC_TUNABLES=glibc.pthread.rseq), which owner mode a program gets (libc: glibc registers
    /// and rseqrt adopts; self: rseqrt registers; none), and the real-time signal rseqrt reserves
    /// for its barrier.
    Info {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Reproduce the stale-rseq_cs crash without rseqrt, then show rseqrt prevents it
    ///
    /// Runs each stale-rseq_cs crash scenario in a child process, first without rseqrt's barrier
    /// (the kernel is expected to kill the process with SIGSEGV), then with it (the process must
    /// survive):
    ///   dlclose      dlclose() of a plugin holding a critical section's descriptor
    ///   dlclose-dep  dlclose() of a plugin that unloads its dependency holding the descriptor
    ///   munmap       munmap() of a page holding the descriptor
    ///
    /// Exit status 0 only when rseqrt protected the process in every scenario. A scenario whose
    /// crash cannot be reproduced without rseqrt is reported as such; it is not a failure of
    /// rseqrt.
    #[command(verbatim_doc_comment)]
    Selftest {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Run the benchmarks and write the results (Markdown, JSON, SVG)
    ///
    /// Measures, side by side in one run (medians over repeated runs):
    ///   rseqrt_dlclose() vs dlclose()                1/64/1000 idle threads; none/one/all stale
    ///   barrier vs its floor (one load per thread) vs signal-all-and-ack vs glibc setuid()
    ///     broadcast vs membarrier(PRIVATE_EXPEDITED_RSEQ), 1 to 10,000 threads
    ///   rseqrt_munmap() and preloaded munmap() vs munmap(), 64 threads
    ///   idle states: rseqrt_dlclose(), rseqrt_munmap(), preloaded munmap(), each vs its floor
    ///     (the plain call, then one load of every idle thread's rseq_cs), 1 to 10,000 idle
    ///     threads whose rseq_cs is 0 or points into the program or a library that stays loaded
    ///   pthread_create()+pthread_join(): rseqrt owning registration vs glibc owning it
    ///   rseqrt_current_cpu() vs sched_getcpu() vs the getcpu system call
    ///
    /// The benchmark programs are C programs compiled at run time with $CC (default cc) and
    /// linked against the C library (librseqrt.so) in --lib-dir. Targets are reported as met or
    /// missed; a missed target never makes the command fail. With --only, only the parts named
    /// are measured (`--only idle`: the idle-state rows), and files are written only to --out.
    /// With --replot, nothing is measured: the plot is drawn again from the results.json of an
    /// earlier run.
    #[command(verbatim_doc_comment)]
    Bench(bench::Args),
    /// Print a shell completion script
    ///
    /// For example:
    ///   rseqrt completions bash > /etc/bash_completion.d/rseqrt
    ///   rseqrt completions zsh > /usr/local/share/zsh/site-functions/_rseqrt
    ///   rseqrt completions fish > ~/.config/fish/completions/rseqrt.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
}

/// Prints a report as pretty JSON. Reports are plain structs with string keys, which always
/// serialize.
pub fn print_json<T: serde::Serialize>(report: &T) {
    println!("{}", serde_json::to_string_pretty(report).expect("a report serializes"));
}

fn main() {
    // Output piped into a program that exits early (`rseqrt completions bash | head`) ends the
    // command quietly, as for any Unix command, instead of a panic on EPIPE: Rust's runtime
    // ignores SIGPIPE, so restore its default action. Children started with Command get the
    // default action anyway.
    // SAFETY: sets this process's SIGPIPE disposition, before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // A selftest child: this program re-executed by `selftest`, an internal protocol rather than
    // a command for people, so outside the command line that clap describes (and completes).
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == selftest::CHILD_FLAG) {
        selftest::child(&args.map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>());
    }
    // Usage errors exit with 2, --help and --version with 0 (clap's conventions, and the
    // command's before it).
    let code = match Cli::parse().command {
        Command::Info { json } => info::run(json),
        Command::Selftest { json } => selftest::run(json),
        Command::Bench(args) => bench::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rseqrt", &mut std::io::stdout());
            0
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
