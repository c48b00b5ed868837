//! Does a thread's `rseq_cs` value refer to memory about to be freed?
//!
//! A value refers to a range when the kernel's next look at it would touch the range: the
//! 32-byte descriptor itself, the critical section's code (`start_ip` up to
//! `start_ip + post_commit_offset`), or the signature word at `abort_ip - 4`. A descriptor in
//! memory that stays mapped for the life of the process (`permanent`: the program and the
//! objects it needs) is read with a plain load, and so is one in an object loaded later while
//! rseqrt's unloads wait (`loaded`); any other with `process_vm_readv`, and one that cannot be
//! read that way counts as referring.
//!
//! Guarantees: async-signal-safe, malloc-free (fixed-size cache on the caller's stack).

use crate::abi::rseq_cs;
use crate::platform;
use core::mem::size_of;

/// A half-open address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
}

impl Range {
    /// `[addr, addr + len)`, saturating at the top of the address space.
    pub fn new(addr: usize, len: usize) -> Self {
        Range { start: addr, end: addr.saturating_add(len) }
    }

    fn overlaps(&self, start: usize, end: usize) -> bool {
        start < self.end && self.start < end
    }
}

/// What the barrier is clearing: every non-zero `rseq_cs`, or those that refer to any of `ranges`.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    All,
    Ranges(&'a [Range]),
}

const CACHE: usize = 16;

/// Verdicts for the descriptor addresses seen during one barrier: threads usually share a few
/// descriptors, so most checks cost no system call.
pub struct Classifier<'a> {
    target: Target<'a>,
    /// The last value classified and its verdict: idle threads mostly hold the same one.
    last: (u64, bool),
    seen: [(u64, bool); CACHE],
    len: usize,
    next: usize,
}

impl<'a> Classifier<'a> {
    pub fn new(target: Target<'a>) -> Self {
        Classifier { target, last: (0, false), seen: [(0, false); CACHE], len: 0, next: 0 }
    }

    /// Whether a thread whose `rseq_cs` holds `value` must be cleared. Inline for the common
    /// answers (0, or the value just judged: idle threads mostly hold the same one), so that the
    /// scan's loop stays short and keeps many of its loads in flight.
    #[inline(always)]
    pub fn refers(&mut self, value: u64) -> bool {
        if value == 0 {
            return false;
        }
        if value == self.last.0 {
            return self.last.1;
        }
        self.judge(value)
    }

    /// [`refers`](Self::refers) for a value other than the last one.
    #[inline(never)]
    fn judge(&mut self, value: u64) -> bool {
        let ranges = match self.target {
            Target::All => return true,
            Target::Ranges([]) => return false,
            Target::Ranges(r) => r,
        };
        let verdict = match self.seen[..self.len].iter().find(|(v, _)| *v == value) {
            Some(&(_, verdict)) => verdict,
            None => {
                let verdict = descriptor_refers(value as usize, ranges);
                self.seen[self.next] = (value, verdict);
                self.next = (self.next + 1) % CACHE;
                self.len = (self.len + 1).min(CACHE);
                verdict
            }
        };
        self.last = (value, verdict);
        verdict
    }
}

fn descriptor_refers(addr: usize, ranges: &[Range]) -> bool {
    if ranges.iter().any(|r| r.overlaps(addr, addr.saturating_add(size_of::<rseq_cs>()))) {
        return true;
    }
    // Outside the memory being freed (checked above): permanent memory and loaded objects are
    // read with a plain load, anything else with `process_vm_readv`.
    let cs = crate::permanent::read_descriptor(addr)
        .or_else(|| crate::loaded::read_descriptor(addr))
        .or_else(|| platform::read_own::<rseq_cs>(addr));
    let Some(cs) = cs else { return true };
    crate::abi::touched_ranges(&cs).iter().any(|&(start, end)| ranges.iter().any(|r| r.overlaps(start, end)))
}
