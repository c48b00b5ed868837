//! QUICK: whether every thread's `rseq_cs` is 0 or refers only to memory that a `dlclose()`
//! leaves mapped: memory that never goes away (`permanent`: the program and the objects it
//! needs), or an object loaded later that the close keeps (`loaded`; the caller says which, from
//! the objects' open handles). Then the close cannot unmap anything a thread refers to, and
//! `rseqrt_dlclose()` skips the link-map walk and the barrier. In a process that uses rseq, idle
//! threads hold such values (their last critical section ran elsewhere), and the check is the
//! scan's one load per thread plus one look each time the value differs from the previous
//! thread's.
//!
//! It answers `false` (run the full barrier) whenever it cannot be sure: a value elsewhere, a
//! descriptor whose code or abort signature lies elsewhere, or threads the registry does not know.
//! Guarantees: async-signal-safe, allocation-free, no system call (but the first look at an
//! object loaded later: see `loaded`).

use super::read_cs;
use crate::elf::LinkMap;
use crate::registry::ReadGuard;
use crate::{census, loaded, permanent, state};

/// Whether a thread holding `value` can refer only to permanent memory.
fn permanent_value(value: u64) -> bool {
    permanent::read_descriptor(value as usize)
        .is_some_and(|cs| crate::abi::touched_ranges(&cs).iter().all(|&(start, end)| permanent::holds(start, end - start)))
}

/// Whether no thread's `rseq_cs` can refer to memory other than permanent memory and, given
/// `stays`, objects that it (called with a loaded object's link map) says the close leaves loaded.
pub fn only_lasting_memory_referred(stays: Option<&dyn Fn(*const LinkMap) -> bool>) -> bool {
    if state::none_reason().is_some() {
        return false; // areas rseqrt cannot see
    }
    let lasts = |value: u64| {
        permanent_value(value) || stays.is_some_and(|stays| loaded::refers_only_within_object(value as usize, stays))
    };
    // The last value judged, which lasted (most threads hold the same one): first the caller's.
    let mut last = read_cs(state::current_area());
    if last != 0 && !lasts(last) {
        return false;
    }
    let guard = ReadGuard::new();
    // The walk stops at the first value that fails: the full barrier scans again anyway.
    let ok = guard.all_live(|area| {
        if area.is_null() {
            return true;
        }
        let value = read_cs(area);
        if value != 0 && value != last {
            last = value;
            return lasts(value);
        }
        true
    });
    ok && census::all_threads_known(&guard)
}
