//! 10,000 threads (issue 11): thread start, thread exit and the barrier stay correct while waves
//! of 2,500 threads (64 KiB stacks) start and stop and barriers run, up to 10,000 wave threads
//! alive at once. `c-abi-tests/waves.c` says what each wave's stale pointers refer to and which
//! barrier clears them; counts must be exact (threads started, run, exited and joined; critical
//! sections committed; every barrier 0; every stale pointer of a wave cleared), and the registry
//! must know exactly the threads glibc counts before and after the waves.
//!
//! The plain row frees wave 0's page with munmap() and wakes the wave: the kernel kills the
//! process (SIGSEGV), so the stale pointers are real. Both owner modes. A machine whose pid_max
//! or RLIMIT_NPROC cannot hold the threads is skipped, saying so.

mod support;

use std::time::Duration;

use support::scenario::{case, Suite};
use support::{c_test_source, compile, compile_linked, stage, CompileSpec};

/// Wave threads alive at once, plus the program's own few; twice that must fit under the limits
/// (a stopping wave's ids are not yet free while the next starts).
const THREADS: u64 = 10_000 + 16;

/// Why this machine cannot run the test, if it cannot.
fn no_room() -> Option<String> {
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok()?.trim().parse().ok()?;
    let mut nproc = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `nproc` is a live local.
    unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) };
    let need = 2 * THREADS;
    let nproc_ok = nproc.rlim_cur == libc::RLIM_INFINITY || nproc.rlim_cur >= need;
    (pid_max < need || !nproc_ok).then(|| {
        format!("{THREADS} threads need pid_max and RLIMIT_NPROC of at least {need} (pid_max {pid_max}, RLIMIT_NPROC {})", nproc.rlim_cur)
    })
}

#[test]
fn ten_thousand_threads_in_waves_while_barriers_run() {
    if let Some(why) = no_room() {
        println!("skip  waves: {why}");
        return;
    }
    let stage = stage();
    let program = compile_linked("waves", "waves.c");
    let plugin = compile(
        &CompileSpec::new("waves_plugin_counter.so", &[c_test_source("plugin_counter.c")]).cflags(&["-fPIC", "-shared"]),
    );
    let suite = Suite { stage, timeout: Duration::from_secs(150) };
    // A barrier's deadline (2 s by default) would measure the scheduler here: thousands of
    // runnable threads on a few cores (see waves.c).
    let waves = case("waves", &[&plugin.display().to_string()]).env("RSEQRT_TIMEOUT_MS", "60000");
    suite.run_cases("10,000 threads in waves", &program, &[waves]);
}
