//! SIGNAL's wait: which signalled suspects still refer to the memory, seen in their `rseq_cs`
//! fields. A thread's kernel changes its field as it delivers the signal, before the handler
//! runs; the handlers themselves write nothing the barrier reads (`signal::Ack::None`).
//!
//! Suspects take the signal roughly in the order they were sent it, so each look starts at the
//! front of that order and stops once [`WINDOW`] fields still refer: a barrier over thousands
//! reads the fields just behind the delivering, a few per yield (or per short sleep while many
//! are left), instead of every pending field each time (which would take the CPU the signalled
//! threads need) or none until all are done (which would leave the whole pass, a cache miss per
//! thread, for the end). When nothing changed near the front for a while (threads there block
//! the signal, or wait for a CPU), the waiter looks at every field before it sleeps, resends or
//! escalates. A suspect seen cleared is marked, not moved; [`Watch::compact`] closes the gaps
//! before the suspects are signalled again or handed to another state.
//!
//! Guarantees: async-signal-safe, allocation-free (it works in the caller's array).

use super::{read_cs, Classifier, Suspect};

/// Fields that still refer after which a look stops. With this many pending or fewer, every one
/// is looked at on every yield: the barrier ends as soon as the last field changes.
pub(super) const WINDOW: usize = 16;

/// A suspect seen cleared: its area is never null otherwise (the scan skips those).
fn seen_cleared(s: &Suspect) -> bool {
    s.area.is_null()
}

/// The state of one wait over `pending[..len]`, in the order the signals were sent.
pub(super) struct Watch {
    len: usize,
    /// Every suspect before this one was seen cleared.
    front: usize,
    /// Suspects not yet seen cleared.
    left: usize,
}

impl Watch {
    pub(super) fn new(len: usize) -> Watch {
        Watch { len, front: 0, left: len }
    }

    /// Suspects not yet seen cleared.
    pub(super) fn left(&self) -> usize {
        self.left
    }

    /// Looks at fields from the front until `window` of them still refer ([`WINDOW`], or
    /// `usize::MAX` for all); returns how many it saw cleared.
    pub(super) fn look(&mut self, pending: &mut [Suspect], classify: &mut Classifier<'_>, window: usize) -> usize {
        let (mut referring, mut cleared) = (0, 0);
        let mut i = self.front;
        while i < self.len && referring < window {
            let s = &mut pending[i];
            if !seen_cleared(s) {
                if classify.refers(read_cs(s.area)) {
                    referring += 1;
                } else {
                    s.area = core::ptr::null_mut();
                    cleared += 1;
                }
            }
            if i == self.front && seen_cleared(s) {
                self.front += 1;
            }
            i += 1;
        }
        self.left -= cleared;
        cleared
    }

    /// Moves the suspects not yet seen cleared to the front of `pending`, in order; returns how
    /// many there are. The watch then starts afresh over them.
    pub(super) fn compact(&mut self, pending: &mut [Suspect]) -> usize {
        let mut kept = 0;
        for i in self.front..self.len {
            if !seen_cleared(&pending[i]) {
                pending[kept] = pending[i];
                kept += 1;
            }
        }
        *self = Watch::new(kept);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::super::descriptor::Target;
    use super::*;
    use crate::abi::RseqrtArea;

    /// `n` areas whose `rseq_cs` is non-zero, and one suspect for each (thread ids 1..=n).
    fn suspects(n: usize) -> (Vec<RseqrtArea>, Vec<Suspect>) {
        let mut areas: Vec<RseqrtArea> = (0..n)
            .map(|_| {
                // SAFETY: the area is integers only; all-zero is a valid value.
                let mut a: RseqrtArea = unsafe { core::mem::zeroed() };
                a.rseq_cs = 0x1000;
                a
            })
            .collect();
        let pending = areas.iter_mut().enumerate().map(|(i, a)| Suspect { tid: i as i32 + 1, area: a }).collect();
        (areas, pending)
    }

    /// What a thread's kernel does as it delivers the signal.
    fn kernel_clears(s: &Suspect) {
        // SAFETY: `s.area` points into the test's live vector of areas.
        unsafe { core::ptr::addr_of_mut!((*s.area).rseq_cs).write_volatile(0) };
    }

    #[test]
    fn looks_from_the_front_stops_at_the_window_and_compacts_in_order() {
        let (_areas, mut pending) = suspects(40);
        let mut classify = Classifier::new(Target::All);
        let mut watch = Watch::new(40);
        assert_eq!(watch.look(&mut pending, &mut classify, WINDOW), 0);
        // The first five took the signal, and one far behind the window.
        for i in [0, 1, 2, 3, 4, 30] {
            kernel_clears(&pending[i]);
        }
        assert_eq!(watch.look(&mut pending, &mut classify, WINDOW), 5, "the one behind 16 referring fields is not read");
        assert_eq!((watch.left(), watch.front), (35, 5));
        assert_eq!(watch.look(&mut pending, &mut classify, usize::MAX), 1, "a look at every field finds it");
        assert_eq!(watch.left(), 34);
        // A hole inside the window, then the rest: the front moves only over a run of holes.
        kernel_clears(&pending[6]);
        assert_eq!(watch.look(&mut pending, &mut classify, WINDOW), 1);
        assert_eq!(watch.front, 5);
        let left = watch.compact(&mut pending);
        assert_eq!(left, 33);
        let tids: Vec<i32> = pending[..left].iter().map(|s| s.tid).collect();
        let want: Vec<i32> = (6..=40).filter(|&t| t != 7 && t != 31).collect();
        assert_eq!(tids, want, "the suspects left, in the order they were sent");
        assert_eq!((watch.left(), watch.front), (33, 0));
        for s in &pending[..left] {
            kernel_clears(s);
        }
        assert_eq!(watch.look(&mut pending[..left], &mut classify, WINDOW), 33);
        assert_eq!(watch.left(), 0);
    }
}
