//! The rseq-clear barrier: when [`clear`] returns `Ok`, every thread whose `rseq_cs` referred to
//! the given memory when the barrier looked has had the field changed by its own kernel (or
//! itself), so no kernel read of such a descriptor is in flight and none is left to come.
//! Critical sections that refer to it and were running are aborted by the kernel. A thread that
//! enters one of the memory's critical sections during the call is using the memory, not
//! holding a stale pointer to it: the barrier does not look for those (it would be a second pass
//! over every thread, and could not close that window anyway).
//!
//! The one rule that makes it correct (measured, see the facts note): a thread's `rseq_cs` may
//! be cleared only by that thread or by its own kernel, because the kernel clears the field only
//! after it has finished reading the descriptor. So the barrier never writes another thread's
//! field; it makes the thread's kernel look at the field, and frees nothing until it sees the
//! field change away from the memory.
//!
//! States, per call (each a function below):
//!
//! ```text
//!   SCAN ──none refer──────────────────────────────► POSSIBLE ──► UNKNOWN ─► DONE
//!    │ suspects: threads whose rseq_cs refers to the memory            ▲
//!    ▼                                                                 │
//!   SIGNAL: reserved signal to each, wait (resend after 10 ms) ──all clear┤
//!    │ none changed for 200 us (running threads that block the signal?)│
//!    ▼                                                                 │
//!   EXPEDITE: membarrier(PRIVATE_EXPEDITED_RSEQ), once, when 16 ─all clear┤
//!    │ suspects or fewer are left; then SIGNAL's wait goes on          │
//!    │ none changed for 20 ms (the rest block the signal)              │
//!    ▼                                                                 │
//!   BROADCAST: glibc's SIGSETXID to every glibc thread ────all clear───┘
//!    │ deadline passed (RSEQRT_TIMEOUT_MS)
//!    ▼
//!   FAIL (ETIMEDOUT): the caller frees nothing
//! ```
//! With no reserved signal to send, EXPEDITE comes first and BROADCAST right after it.
//! POSSIBLE: threads whose `rseq_cs` refers to memory that only may be freed get one acknowledged
//! signal round (see `acked` and [`clear_with_possible`]). UNKNOWN covers threads that the
//! registry does not know (see `unknown`), and BROADCAST registered threads that block every
//! signal but glibc's own (a `SIGEV_THREAD` callback): see `broadcast`. In a `_Fork()` child,
//! where glibc's broadcast could wait forever, BROADCAST is skipped: only the deadline remains.
//!
//! Cost follows the threads that matter: the scan is one load per registered thread; only
//! threads whose `rseq_cs` refers to the memory get a system call. Suspects are all signalled
//! at once (the barrier's scratch memory holds them), so a barrier over N stale threads waits
//! once for the slowest, like a broadcast, at any N.
//!
//! Concurrency: barriers run concurrently with each other (they only read and send signals). A
//! thread that exits during a barrier clears its own `rseq_cs` and then waits in its exit hook
//! until the barriers that started before it left the registry have ended (see `registry`). In
//! a `fork()` child, barriers of other parent threads are forgotten.
//! From a signal handler: pass [`SIGNAL_SAFE`]; everything is then async-signal-safe and
//! allocation-free, and the call fails with `EAGAIN` where it would need glibc's broadcast.
//! Allocation: none, ever (the `munmap` path depends on it; glibc's malloc calls `munmap` with
//! its locks held). Locks: none of the C library's, except glibc's thread-list lock when the
//! broadcast runs (BROADCAST, and UNKNOWN threads that block the signal).

mod acked;
mod broadcast;
mod descriptor;
mod quick;
mod unknown;
mod watch;
pub mod expedite;

pub use descriptor::Range;
pub use quick::only_lasting_memory_referred;
use descriptor::{Classifier, Target};
use watch::Watch;

use crate::abi::RseqrtArea;
use crate::platform::{self, Errno};
use crate::registry::ReadGuard;
use crate::state::{self, Owner};
use crate::{config, registration, registry, signal};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Flag: the caller may be a signal handler; use only async-signal-safe steps.
pub const SIGNAL_SAFE: u32 = 1;

/// Suspects collected on the stack; more are chased all at once from the barrier's scratch
/// memory (`registry::Scratch`), or, if it cannot be mapped, in further rounds of this many.
const BATCH: usize = 64;
/// EXPEDITE only for this many suspects or fewer (most of many are blocked, which membarrier
/// does not reach).
const EXPEDITE_MAX: usize = 16;
/// While waiting for signalled threads: yield (no timer) until none has taken the signal for this
/// long, then sleep in growing steps. A sleep is rounded up by the timer slack (50 us by
/// default), more than a delivery takes.
const YIELD_NS: u64 = 200_000;
/// ... except while more than this many per CPU (the CPUs the waiter may run on, standing for
/// the process's) are still to take it: then the waiter sleeps for [`CROWD_SLEEP_NS`] instead of
/// yielding. A yielding waiter keeps its CPU, and threads that have slept for long are all woken
/// onto the other CPUs; a sleeping one leaves its CPU to them (measured on 2 CPUs, 1,000 stale
/// threads, against the naive broadcast, which yields: 0.98-1.00x before, 0.95-0.96x after;
/// back-to-back barriers, which spread the threads over both CPUs, equal). With fewer left,
/// their deliveries take less than a sleep's timer slack. Where the CPUs cannot be counted, the
/// waiter always yields.
const CROWD_PER_CPU: usize = 16;
/// The waiter's sleep while a crowd is still to take the signal (plus the timer slack).
const CROWD_SLEEP_NS: u64 = 50_000;
/// Resend to threads that have not yet taken the signal once none has for this long.
const RESEND_NS: u64 = 10_000_000;
/// Once no thread has taken the signal for this long, the rest are assumed to block it.
const ESCALATE_NS: u64 = 20_000_000;

/// A thread whose `rseq_cs` referred to the memory when the scan saw it.
#[derive(Clone, Copy)]
struct Suspect {
    tid: i32,
    area: *mut RseqrtArea,
}

/// Reads a thread's `rseq_cs`, which that thread and its kernel write concurrently: an atomic load.
pub(super) fn read_cs(area: *mut RseqrtArea) -> u64 {
    // SAFETY: areas come from LIVE registry slots read under a ReadGuard, so their threads cannot
    // finish exiting (and free the area) while the barrier runs; the field is 8-byte aligned, and
    // rseqrt stores to it only atomically (`registration::clear_own_rseq_cs`).
    unsafe { AtomicU64::from_ptr(addr_of_mut!((*area).rseq_cs)).load(Relaxed) }
}

/// The CPU a thread last returned to user space on, as its kernel keeps it in its area
/// (`cpu_id_start`): an atomic load, like [`read_cs`].
fn read_cpu(area: *mut RseqrtArea) -> u32 {
    // SAFETY: a LIVE slot's area read under a ReadGuard (see `read_cs`) or the calling thread's
    // own; the field is 4-byte aligned, and only the kernel writes it once it is registered.
    unsafe { AtomicU32::from_ptr(addr_of_mut!((*area).cpu_id_start)).load(Relaxed) }
}

/// Clears every `rseq_cs` that refers to any of `ranges` (all of them for [`clear_all`]).
pub fn clear(ranges: &[Range], flags: u32) -> Result<(), Errno> {
    run(Target::Ranges(ranges), &[], flags)
}

/// Clears every thread's `rseq_cs`: the per-process "rseq-clear" of the seed discussion.
pub fn clear_all(flags: u32) -> Result<(), Errno> {
    run(Target::All, &[], flags)
}

/// [`clear`] over `ranges`, which will be freed, plus `possible`, which only may be (objects a
/// `dlclose()` unloads only if nothing else holds them, which the public link map cannot tell).
/// A thread that keeps entering critical sections in `possible` memory is using it, so for those
/// ranges the barrier only makes sure that every `rseq_cs` held when it began has been looked at
/// by its thread's kernel (a signal round with acknowledgements, see `acked`), instead of waiting
/// for the field to stop referring to them.
pub fn clear_with_possible(ranges: &[Range], possible: &[Range], flags: u32) -> Result<(), Errno> {
    run(Target::Ranges(ranges), possible, flags)
}

fn run(target: Target<'_>, possible: &[Range], flags: u32) -> Result<(), Errno> {
    if flags & !SIGNAL_SAFE != 0 {
        return Err(Errno(libc::EINVAL));
    }
    let owner = state::owner();
    // rseqrt registered nothing. Where rseq itself is unavailable, nobody did; where rseqrt
    // declined or was loaded too late, the program or another library may have, at addresses
    // rseqrt cannot see: treat every thread as unknown.
    let areas_unknown = state::none_reason().is_some();
    if owner == Owner::None && !areas_unknown {
        return Ok(());
    }
    let mut classify = Classifier::new(target);
    let mut classify_possible = Classifier::new(Target::Ranges(possible));
    clear_own(&mut classify);
    clear_own(&mut classify_possible);
    // The clock is read only once a thread needs chasing: the common call costs no system call
    // but the unknown-thread check.
    let deadline = core::cell::Cell::new(None::<u64>);
    let deadline_ns = || match deadline.get() {
        Some(d) => d,
        None => {
            let d = platform::monotonic_ns().saturating_add(config::timeout_ns());
            deadline.set(Some(d));
            d
        }
    };
    let guard = ReadGuard::new();
    let mut scratch = guard.scratch();
    loop {
        let mut batch = [NO_SUSPECT; BATCH];
        let (pending, n, all) = scan(&guard, &mut classify, &mut batch, scratch.as_mut());
        if n == 0 {
            break;
        }
        let deadline = deadline_ns();
        if platform::monotonic_ns() >= deadline {
            return Err(Errno(libc::ETIMEDOUT));
        }
        signal_and_wait(&mut pending[..n], &mut classify, deadline, flags)?;
        // Every thread that referred when the scan passed it has been seen to stop. One that
        // began referring since is entering the memory's critical sections now, that is, using
        // the memory (not holding a stale pointer): no second scan looks for those.
        if all {
            break;
        }
    }
    if !possible.is_empty() {
        let me = state::current_area();
        let mut rounds = acked::Rounds::new(true, flags, &deadline_ns);
        let mut result = Ok(());
        guard.for_each_live_slot(|slot, tid, area| {
            if result.is_ok() && area != me && !area.is_null() && classify_possible.refers(read_cs(area)) {
                result = rounds.push(tid, Some(slot));
            }
        });
        result?;
        rounds.flush()?;
    }
    unknown::cover(&guard, scratch.as_mut(), owner, flags, areas_unknown, deadline_ns, &mut |value| {
        classify.refers(value) || classify_possible.refers(value)
    })
}

/// The calling thread clears its own field directly: it is in user space, so its kernel is not
/// reading the descriptor.
fn clear_own(classify: &mut Classifier<'_>) {
    let area = state::current_area();
    let mine = read_cs(area);
    if classify.refers(mine) {
        registration::clear_own_rseq_cs();
    }
}

const NO_SUSPECT: Suspect = Suspect { tid: 0, area: core::ptr::null_mut() };

/// SCAN: collects the other threads whose `rseq_cs` refers to the memory: into `batch`, and once
/// it is full, into scratch memory sized for every thread, so that all are chased at once (one
/// wait for the slowest, as a broadcast would). Without scratch memory, the first `BATCH` only
/// (the rest in later rounds). Returns where they are, how many, and whether that is all of them.
fn scan<'b>(
    guard: &ReadGuard,
    classify: &mut Classifier<'_>,
    batch: &'b mut [Suspect; BATCH],
    scratch: Option<&'b mut registry::Scratch<'_>>,
) -> (&'b mut [Suspect], usize, bool) {
    let mine = state::current_area();
    let mut out: &'b mut [Suspect] = batch;
    let mut scratch = scratch;
    let (mut n, mut all) = (0, true);
    guard.for_each_live(|tid, area| {
        if area == mine || area.is_null() {
            return;
        }
        // The zero test inline: most threads hold no `rseq_cs`, and a loop this short keeps many
        // of these (cache- and TLB-missing) loads in flight at once.
        let value = read_cs(area);
        if value == 0 || !classify.refers(value) {
            return;
        }
        if n == out.len() && n == BATCH {
            // Room for every thread handed a slot so far, and for threads still entering.
            let room = scratch.take().and_then(|s| s.get(registry::slots_handed_out() + BATCH, NO_SUSPECT));
            if let Some(room) = room.filter(|r| r.len() > BATCH) {
                room[..BATCH].copy_from_slice(out);
                out = room;
            }
        }
        if n < out.len() {
            out[n] = Suspect { tid, area };
            n += 1;
        } else {
            all = false;
        }
    });
    (out, n, all)
}

/// Drops suspects that no longer refer (their own kernel or they themselves changed the field,
/// or they left the registry, clearing their own field first); returns how many remain, first.
fn settle(pending: &mut [Suspect], classify: &mut Classifier<'_>) -> usize {
    let mut left = 0;
    for i in 0..pending.len() {
        let s = pending[i];
        if classify.refers(read_cs(s.area)) {
            pending[left] = s;
            left += 1;
        }
    }
    left
}

/// EXPEDITE: one membarrier interrupts every running suspect; one look collects those already
/// cleared. Only once the signal has not reached some suspect for [`YIELD_NS`] (or when there
/// is no signal to send): a running thread takes the signal at once, and membarrier waits for
/// its interrupts, which costs a whole wake-up when a CPU has just gone idle (measured, one
/// stale thread that has just gone to sleep: membarrier before the signal made the barrier
/// 1.7-1.9x the naive signal-and-acknowledge, 21 us against 11-12 us; after, 1.00x). What is
/// left is running threads that block the signal (glibc's helpers, raw-syscall masks).
fn expedite(pending: &mut [Suspect], classify: &mut Classifier<'_>) -> usize {
    if pending.len() > EXPEDITE_MAX || !expedite::interrupt_running_threads() {
        return pending.len();
    }
    settle(pending, classify)
}

/// Puts first the suspects whose threads last ran on another CPU than the caller's. A thread
/// woken on the caller's own CPU may preempt it and hold the remaining sends back, while one
/// woken on another CPU takes the signal alongside them (measured against the naive broadcast,
/// which signals in thread order: 4 stale threads 0.97x before, 0.80x after; 16: 1.01x, 0.97x;
/// 64: 1.01x, 0.95x; 256 and 1,000: equal). The order of the rest does not matter.
fn others_first(pending: &mut [Suspect]) {
    let mine = read_cpu(state::current_area());
    let mut front = 0;
    for i in 0..pending.len() {
        if read_cpu(pending[i].area) != mine {
            pending.swap(front, i);
            front += 1;
        }
    }
}

/// SIGNAL: the reserved signal makes each remaining suspect's kernel process its `rseq_cs`
/// before running the (empty) handler; wait until each field has changed (`watch`).
fn signal_and_wait(pending: &mut [Suspect], classify: &mut Classifier<'_>, deadline: u64, flags: u32) -> Result<(), Errno> {
    let sig = signal::reserved();
    let pid = platform::getpid();
    others_first(pending);
    let mut left = pending.len();
    // The system call only when a crowd is possible at all.
    let crowd = (sig != 0 && left > CROWD_PER_CPU)
        .then(platform::cpus_allowed)
        .and_then(Result::ok)
        .map_or(usize::MAX, |cpus| CROWD_PER_CPU.saturating_mul(cpus));
    let mut pause_ns = 20_000;
    let mut yield_until = platform::monotonic_ns().saturating_add(YIELD_NS);
    // Resending and escalating count from the last progress, not from the start: thousands of
    // signalled threads may queue for a CPU for longer than either interval, while each one that
    // takes the signal shows the rest are being reached.
    let mut escalate_at = platform::monotonic_ns().saturating_add(if sig == 0 { 0 } else { ESCALATE_NS });
    let (mut escalated, mut sent) = (false, false);
    // No signal to send: EXPEDITE at once (see `expedite`).
    let mut expedited = sig == 0;
    if expedited {
        left = expedite(&mut pending[..left], classify);
        if left == 0 {
            return Ok(());
        }
    }
    loop {
        if !escalated && platform::monotonic_ns() >= escalate_at {
            // BROADCAST: the remaining threads block the reserved signal (or there is none).
            escalated = true;
            if flags & SIGNAL_SAFE != 0 {
                return Err(Errno(libc::EAGAIN));
            }
            // In a `_Fork()` child glibc's broadcast could wait forever: go on signalling until
            // the deadline instead (see `broadcast`).
            if broadcast::available() {
                broadcast::reach_every_libc_thread()?;
                left = settle(&mut pending[..left], classify);
                if left == 0 {
                    return Ok(());
                }
            }
        }
        for s in pending[..left].iter().filter(|_| sig != 0) {
            // ESRCH: the thread is gone (it cleared its own field on the way out, or never runs again).
            let _ = signal::request(pid, s.tid, signal::Ack::None);
        }
        let mut resend_at = platform::monotonic_ns().saturating_add(RESEND_NS);
        if sig != 0 && !sent {
            // From the end of the first pass: sending to thousands takes a while.
            escalate_at = escalate_at.max(resend_at.saturating_add(ESCALATE_NS - RESEND_NS));
        }
        sent = true;
        let mut watch = Watch::new(left);
        loop {
            let mut cleared = watch.look(&mut pending[..left], classify, watch::WINDOW);
            if watch.left() == 0 {
                return Ok(());
            }
            let now = platform::monotonic_ns();
            if cleared == 0 && now >= yield_until {
                // Before sleeping, resending or escalating: threads behind the front ones, which
                // have not changed, may have.
                cleared = watch.look(&mut pending[..left], classify, usize::MAX);
                if watch.left() == 0 {
                    return Ok(());
                }
            }
            if cleared > 0 {
                // Threads are still taking the signal: keep yielding; sleep, resend and escalate
                // only once none has for a while (they may block it).
                yield_until = now.saturating_add(YIELD_NS);
                pause_ns = 20_000;
                resend_at = now.saturating_add(RESEND_NS);
                if sig != 0 {
                    escalate_at = now.saturating_add(ESCALATE_NS);
                }
            }
            if now >= deadline {
                return Err(Errno(libc::ETIMEDOUT));
            }
            if now >= resend_at {
                break;
            }
            if now < yield_until {
                if watch.left() > crowd {
                    platform::sleep_ns(CROWD_SLEEP_NS);
                } else {
                    platform::sched_yield();
                }
            } else if !expedited && watch.left() <= EXPEDITE_MAX {
                expedited = true;
                left = watch.compact(&mut pending[..left]);
                left = expedite(&mut pending[..left], classify);
                if left == 0 {
                    return Ok(());
                }
                watch = Watch::new(left);
            } else {
                platform::sleep_ns(pause_ns);
                pause_ns = (pause_ns * 2).min(500_000);
            }
        }
        left = watch.compact(&mut pending[..left]);
    }
}
