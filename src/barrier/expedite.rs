//! Kernel assistance for running threads: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)`
//! interrupts every thread of the process that is running on a CPU right now, and each of them
//! processes its `rseq_cs` (abort or clear) on its way back to user space. Threads that are
//! blocked or preempted are not affected: the barrier signals those.
//!
//! Registration with the kernel is per process and costs a few microseconds; it is done at the
//! first barrier of each process (a `fork()` child registers again).
//!
//! Guarantees: async-signal-safe, malloc-free.

use crate::platform;
use core::sync::atomic::{AtomicI32, Ordering::Relaxed};

const CMD_QUERY: i32 = 0;
const CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
const CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;

/// Pid of the process that registered (0: not yet).
static REGISTERED_PID: AtomicI32 = AtomicI32::new(0);
/// Pid of the process in which the kernel refused (0: none).
static UNAVAILABLE_PID: AtomicI32 = AtomicI32::new(0);

/// Whether this process can use the RSEQ membarrier command (registering on first use).
pub fn available() -> bool {
    let pid = platform::getpid();
    if REGISTERED_PID.load(Relaxed) == pid {
        return true;
    }
    if UNAVAILABLE_PID.load(Relaxed) == pid {
        return false;
    }
    let supported = platform::membarrier(CMD_QUERY, 0).is_ok_and(|mask| mask & CMD_PRIVATE_EXPEDITED_RSEQ as usize != 0);
    if supported && platform::membarrier(CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0).is_ok() {
        REGISTERED_PID.store(pid, Relaxed);
        true
    } else {
        UNAVAILABLE_PID.store(pid, Relaxed);
        false
    }
}

/// Interrupts every running thread of the process; `false` when the kernel refused.
pub fn interrupt_running_threads() -> bool {
    available() && platform::membarrier(CMD_PRIVATE_EXPEDITED_RSEQ, 0).is_ok()
}

/// The membarrier commands the kernel offers (`MEMBARRIER_CMD_QUERY`), for `rseqrt info`.
pub fn query() -> Option<usize> {
    platform::membarrier(CMD_QUERY, 0).ok()
}
