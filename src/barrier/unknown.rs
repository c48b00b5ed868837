//! UNKNOWN: threads the registry does not know — the C library's own helper threads, threads
//! that existed before rseqrt was loaded, raw `clone()` threads. The registry has no area for
//! them, so each is made to take a signal, which makes its own kernel process its `rseq_cs`:
//!
//! * a thread that accepts the reserved signal gets it and acknowledges from the handler (the
//!   acknowledgement table in `signal`), proving the delivery happened after the barrier began;
//! * a thread that blocks it (glibc's helpers block every signal but glibc's own) is looked up in
//!   glibc's own thread list (`libc_private`), and its area read there at `__rseq_offset`; only
//!   if its `rseq_cs` refers to the memory, or it cannot be found, does the barrier use glibc's
//!   broadcast (`broadcast`), which signals every thread of the process. That holds where rseqrt
//!   owns registration too: glibc 2.41 registers the threads it starts itself (the `SIGEV_THREAD`
//!   helper's callbacks) at the `__rseq_offset` that rseqrt defines, even under
//!   `glibc.pthread.rseq=0` (measured: a callback's rseqrt area read `cpu_id` 1, and the process
//!   died after a barrier that skipped it). Where rseqrt registers nothing (`all_unknown`), such a
//!   thread's area may be anywhere: the broadcast. A raw `clone()` thread that blocks the signal
//!   with a raw system call cannot be reached at all (README).
//!
//! Detection costs nothing while glibc's thread count agrees with the registry (`census`);
//! otherwise one `fstat()` (`platform::thread_count`), and the rest runs only when the process
//! has more threads than the registry knows.
//!
//! Cost: linear in the process's threads (one table lookup per thread the kernel lists).
//!
//! Guarantees: malloc-free (fixed arrays on the stack, `mmap`ed scratch memory);
//! async-signal-safe except the glibc broadcast, which `SIGNAL_SAFE` callers never reach (they
//! get EAGAIN).

use super::acked::Rounds;
use super::{broadcast, SIGNAL_SAFE};
use crate::census;
use crate::libc_private;
use crate::platform::{self, Errno};
use crate::registry::{self, ReadGuard, Scratch, SlotIndex};
use crate::signal;
use crate::state::Owner;

/// Known thread ids kept in a small open-addressed table for the lookup (1 KiB of stack); for
/// more threads the table lives in the barrier's scratch memory (`registry::Scratch`), and only
/// if that cannot be mapped are ids not found looked up in the registry itself (a scan each).
const KNOWN_CELLS: usize = 128;
/// Unknown threads that block the signal, looked up in glibc's list together (one walk each).
const BLOCKED_LOOKUPS: usize = 16;

/// Makes every thread the registry does not know take a signal, or fails without freeing.
///
/// `all_unknown`: treat every thread as unknown (rseqrt was loaded too late to own registration,
/// and some other library may have registered areas it cannot see).
///
/// `refers(value)`: whether an `rseq_cs` holding `value` refers to the memory being freed.
/// `scratch`: the barrier's scratch memory, for the table of known threads.
pub fn cover(
    guard: &ReadGuard,
    scratch: Option<&mut Scratch<'_>>,
    owner: Owner,
    flags: u32,
    all_unknown: bool,
    deadline: impl Fn() -> u64,
    refers: &mut dyn FnMut(u64) -> bool,
) -> Result<(), Errno> {
    if !all_unknown && census::all_threads_known(guard) {
        return Ok(());
    }
    // Known first: a thread that registers between the two reads then errs towards the slow path.
    // With every thread unknown, the caller alone (which cleared its own field) needs nothing:
    // a single-threaded process stops at the count.
    let known_count = if all_unknown { 1 } else { registry::known_threads() };
    if platform::thread_count().is_ok_and(|n| n <= known_count) {
        return Ok(());
    }
    // Known thread ids in an open-addressed table at most half full: on the stack for a few
    // threads, in the barrier's scratch memory for many (one lookup per thread either way).
    // Threads that are exiting are known too: they unregistered their areas, so they need
    // nothing (see `registry::still_exiting`), however many exit at once.
    let mut small = [0u64; KNOWN_CELLS];
    let cells = (registry::slots_handed_out() + 8).saturating_mul(2).next_power_of_two();
    let known: &mut [u64] = match scratch.filter(|_| cells > KNOWN_CELLS) {
        Some(s) => s.get(cells, 0).unwrap_or(&mut small),
        None => &mut small,
    };
    let mut overflow = false;
    if !all_unknown {
        guard.for_each_known(|tid, exiting| overflow |= !insert(known, tid, exiting));
    }
    let known = &*known;
    let is_known = |tid: i32| {
        !all_unknown
            && match lookup(known, tid) {
                Some(None) => true,
                Some(Some(slot)) => registry::still_exiting(slot, tid),
                None => overflow && registry_has(guard, tid),
            }
    };

    let me = platform::gettid();
    let mut blocked_seen = false;
    // Unknown threads that block the signal, where glibc owns registration: looked up in glibc's
    // thread list in batches.
    let mut blocked = [0i32; BLOCKED_LOOKUPS];
    let mut blocked_count = 0;
    let mut rounds = Rounds::new(false, flags, &deadline);
    let mut result = Ok(());
    platform::for_each_thread(|tid| {
        if result.is_err() || tid == me || is_known(tid) {
            return;
        }
        match signal::blocks_reserved(tid) {
            // Its area is at `__rseq_offset` from its thread pointer, read through glibc's thread
            // list: a field that does not refer to the memory needs nothing (the scan's rule, see
            // `barrier`).
            Ok(true) if !all_unknown && owner != Owner::None => {
                if !blocked_seen {
                    blocked[blocked_count] = tid;
                    blocked_count += 1;
                    if blocked_count == BLOCKED_LOOKUPS {
                        blocked_seen = needs_broadcast(&blocked, refers);
                        blocked_count = 0;
                    }
                }
            }
            Ok(true) => blocked_seen = true,
            Err(Errno(libc::ENOENT | libc::ESRCH)) => {} // gone already
            // Accepts the signal, or could not be inspected (out of descriptors, ...): signal it;
            // one that is gone answers ESRCH, one that blocks it makes the round time out.
            _ => result = rounds.push(tid, None),
        }
    })?;
    result?;
    rounds.flush()?;
    if !blocked_seen && blocked_count > 0 {
        blocked_seen = needs_broadcast(&blocked[..blocked_count], refers);
    }
    if blocked_seen {
        if flags & SIGNAL_SAFE != 0 {
            return Err(Errno(libc::EAGAIN));
        }
        if !broadcast::available() {
            // A `_Fork()` child: glibc's broadcast could wait forever, and nothing else reaches
            // these threads (see `broadcast`).
            return Err(Errno(libc::ETIMEDOUT));
        }
        broadcast::reach_every_libc_thread()?;
    }
    Ok(())
}

/// Whether any of `blocked` (glibc threads rseqrt does not know, blocking the signal) needs
/// glibc's broadcast: their areas are read through glibc's list; one that does not refer to the
/// memory needs nothing (the scan's rule, see `barrier`); one that does, or is not found, does.
fn needs_broadcast(blocked: &[i32], refers: &mut dyn FnMut(u64) -> bool) -> bool {
    let mut values = [None; BLOCKED_LOOKUPS];
    libc_private::libc_threads_rseq_cs(blocked, &mut values[..blocked.len()]);
    values[..blocked.len()].iter().any(|v| v.is_none_or(&mut *refers))
}

/// Probe `i` for `tid` in a table of `len` cells (a power of two).
fn cell_of(tid: i32, i: usize, len: usize) -> usize {
    (tid as u32 as usize).wrapping_mul(0x9e37_79b9).wrapping_add(i) & (len - 1)
}

/// A table cell: the thread id, and above it the slot index + 1 of an EXITING thread (0: LIVE).
fn entry(tid: i32, exiting: Option<SlotIndex>) -> u64 {
    (exiting.map_or(0, |i| i as u64 + 1) << 32) | tid as u32 as u64
}

/// Adds `tid` to the table; `false` when the table is full.
fn insert(table: &mut [u64], tid: i32, exiting: Option<SlotIndex>) -> bool {
    let len = table.len();
    (0..len).map(|i| cell_of(tid, i, len)).any(|c| {
        let free = table[c] == 0 || table[c] as u32 == tid as u32;
        if free {
            table[c] = entry(tid, exiting);
        }
        free
    })
}

/// `Some(exiting slot)` when `tid` is in the table.
fn lookup(table: &[u64], tid: i32) -> Option<Option<SlotIndex>> {
    for i in 0..table.len() {
        match table[cell_of(tid, i, table.len())] {
            0 => return None,
            e if e as u32 == tid as u32 => return Some(((e >> 32) as usize).checked_sub(1)),
            _ => {}
        }
    }
    None
}

/// Slow membership test, for when the table could not hold every known thread.
fn registry_has(guard: &ReadGuard, tid: i32) -> bool {
    let mut found = false;
    guard.for_each_known(|t, exiting| found |= t == tid && exiting.is_none_or(|slot| registry::still_exiting(slot, tid)));
    found
}
