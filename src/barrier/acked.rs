//! Signal rounds with acknowledgements: each thread of a round gets the reserved signal, and the
//! round ends when every one has run the handler since the round began (or is gone). Delivery
//! makes a thread's own kernel process its `rseq_cs` before the handler runs, so an
//! acknowledgement proves that whatever `rseq_cs` the thread held when the round began has been
//! looked at (cleared, or its critical section aborted). Later stores by the thread itself are
//! live use, not staleness.
//!
//! Used for threads whose areas the barrier cannot read (UNKNOWN), and for threads whose
//! `rseq_cs` refers to memory that only may be freed (see [`super::clear_with_possible`]).
//!
//! Guarantees: allocation-free (fixed arrays on the stack); async-signal-safe except glibc's
//! broadcast, which `SIGNAL_SAFE` callers never reach (they get EAGAIN).

use super::{broadcast, SIGNAL_SAFE};
use crate::platform::{self, Errno};
use crate::registry::{self, SlotIndex};
use crate::signal;
use crate::state::{self, Owner};

/// Threads per round.
const ROUND: usize = 64;
const RESEND_NS: u64 = 10_000_000;
/// After this long without an acknowledgement, a thread is assumed to block the signal.
const ESCALATE_NS: u64 = 20_000_000;

/// Collects threads into rounds and runs each round when it is full.
pub struct Rounds<'a, D: Fn() -> u64> {
    /// Thread ids, and their registry slots (`NO_SLOT`: acknowledged by cell).
    tids: [(i32, usize); ROUND],
    n: usize,
    /// Whether threads that never acknowledge may be reached by glibc's broadcast.
    escalate: bool,
    flags: u32,
    deadline: &'a D,
}

const NO_SLOT: usize = usize::MAX;

impl<'a, D: Fn() -> u64> Rounds<'a, D> {
    pub fn new(escalate: bool, flags: u32, deadline: &'a D) -> Self {
        Rounds { tids: [(0, NO_SLOT); ROUND], n: 0, escalate, flags, deadline }
    }

    /// Adds a thread, with its registry slot when it is LIVE there (it then acknowledges in the
    /// slot, which no other thread shares); runs the pending round first when it is full, or
    /// when a thread without a slot shares its acknowledgement cell with one already in it (the
    /// two would overwrite each other's acknowledgement).
    pub fn push(&mut self, tid: i32, slot: Option<SlotIndex>) -> Result<(), Errno> {
        let cell_taken = || {
            slot.is_none() && self.tids[..self.n].iter().any(|&(t, s)| s == NO_SLOT && signal::ack_cell(t) == signal::ack_cell(tid))
        };
        if self.n == ROUND || cell_taken() {
            self.flush()?;
        }
        self.tids[self.n] = (tid, slot.unwrap_or(NO_SLOT));
        self.n += 1;
        Ok(())
    }

    /// Runs the pending round.
    pub fn flush(&mut self) -> Result<(), Errno> {
        let n = core::mem::take(&mut self.n);
        run(&self.tids[..n], self.escalate, self.flags, self.deadline)
    }
}

fn acknowledged((tid, slot): (i32, usize), generation: u32) -> bool {
    if slot == NO_SLOT {
        signal::acknowledged(tid, generation)
    } else {
        registry::acknowledged(slot, tid, generation)
    }
}

fn run(tids: &[(i32, usize)], escalate: bool, flags: u32, deadline: &impl Fn() -> u64) -> Result<(), Errno> {
    if tids.is_empty() {
        return Ok(());
    }
    let sig = signal::reserved();
    let pid = platform::getpid();
    let generation = signal::next_ack_generation();
    let escalate_at = platform::monotonic_ns().saturating_add(if sig == 0 { 0 } else { ESCALATE_NS });
    let mut done = [false; ROUND];
    loop {
        for (i, &(tid, slot)) in tids.iter().enumerate() {
            let ack = if slot == NO_SLOT { signal::Ack::Cell } else { signal::Ack::Slot(slot) };
            if !done[i] && sig != 0 && signal::request(pid, tid, ack) == Err(Errno(libc::ESRCH)) {
                done[i] = true;
            }
        }
        let resend_at = platform::monotonic_ns().saturating_add(RESEND_NS);
        loop {
            for (i, &t) in tids.iter().enumerate() {
                done[i] = done[i] || acknowledged(t, generation);
            }
            if done[..tids.len()].iter().all(|&d| d) {
                return Ok(());
            }
            let now = platform::monotonic_ns();
            if escalate && now >= escalate_at && state::owner() == Owner::Libc {
                // The rest block the reserved signal: glibc's broadcast reaches every glibc thread.
                if flags & SIGNAL_SAFE != 0 {
                    return Err(Errno(libc::EAGAIN));
                }
                return broadcast::reach_every_libc_thread();
            }
            if now >= deadline() {
                return Err(Errno(libc::ETIMEDOUT));
            }
            if now >= resend_at {
                break;
            }
            platform::sched_yield();
        }
    }
}
