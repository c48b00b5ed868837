//! The thread registry: one slot per thread that rseqrt started or adopted, holding the thread's
//! id and the address of its rseq area, so that a barrier can read every thread's `rseq_cs`
//! without waking it.
//!
//! Storage is a fixed table of chunk pointers; chunks are `mmap`ed on demand and never freed, so
//! a slot address stays valid for the life of the process. Slot states: FREE -> STARTING (claimed
//! by `pthread_create` for the child; holds its start routine) -> LIVE (the thread runs; tid and
//! area valid) -> FREE (thread exit).
//!
//! Reclamation: a barrier reads other threads' areas only inside a [`ReadGuard`]; a thread that
//! releases its slot waits until no guard is held before it may go on to exit (and free the
//! memory holding its area). Both sides use sequentially consistent operations (a Dekker pair):
//! either the reader sees the slot FREE, or the releasing thread sees the reader and waits.
//!
//! Guarantees: every function is async-signal-safe, lock-free and malloc-free (`mmap` only); only
//! [`release`] may block, and only while a barrier is running.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering::*};

const FREE: u32 = 0;
const STARTING: u32 = 1;
const LIVE: u32 = 2;

const CHUNK_SLOTS: usize = 1024;
const MAX_CHUNKS: usize = 256;

/// One thread's entry.
#[repr(C, align(32))]
pub struct Slot {
    state: AtomicU32,
    tid: AtomicI32,
    area: AtomicPtr<RseqrtArea>,
    start: AtomicUsize,
    arg: AtomicUsize,
}

type Chunk = [Slot; CHUNK_SLOTS];

static CHUNKS: [AtomicPtr<Chunk>; MAX_CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CHUNKS];
/// Slots `0..HIGH_WATER` have been handed out at least once: the scan bound.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
/// A slot index that was recently freed: where the next claim starts looking.
static FREE_HINT: AtomicUsize = AtomicUsize::new(0);
/// Slots in state STARTING or LIVE.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// Barriers currently reading other threads' areas.
static READERS: AtomicU32 = AtomicU32::new(0);

/// Index of a slot (stable for the life of the process).
pub type SlotIndex = usize;

fn slot(idx: SlotIndex) -> Option<&'static Slot> {
    let chunk = CHUNKS.get(idx / CHUNK_SLOTS)?.load(Acquire);
    // SAFETY: a published chunk is a zero-initialised (all FREE) mapping that is never unmapped;
    // `Slot` is valid when all-zero.
    (!chunk.is_null()).then(|| unsafe { &(*chunk)[idx % CHUNK_SLOTS] })
}

fn ensure_chunk(c: usize) -> bool {
    let Some(cell) = CHUNKS.get(c) else { return false };
    if !cell.load(Acquire).is_null() {
        return true;
    }
    let Ok(mem) = platform::mmap_anon(core::mem::size_of::<Chunk>()) else { return false };
    if cell.compare_exchange(ptr::null_mut(), mem.cast(), AcqRel, Acquire).is_err() {
        // SAFETY: our mapping lost the race and was never published.
        let _ = unsafe { platform::munmap(mem, core::mem::size_of::<Chunk>()) };
    }
    true
}

/// Claims a FREE slot (state STARTING), recording the thread's start routine and argument.
/// `None` when the table is full or `mmap` fails.
pub fn claim(start: usize, arg: usize) -> Option<SlotIndex> {
    let try_take = |idx: SlotIndex| -> bool {
        let Some(s) = slot(idx) else { return false };
        if s.state.compare_exchange(FREE, STARTING, AcqRel, Relaxed).is_err() {
            return false;
        }
        s.start.store(start, Relaxed);
        s.arg.store(arg, Relaxed);
        CLAIMED.fetch_add(1, Relaxed);
        true
    };
    let high = HIGH_WATER.load(Acquire);
    let hint = FREE_HINT.load(Relaxed).min(high);
    if let Some(idx) = (hint..high).chain(0..hint).find(|&i| try_take(i)) {
        return Some(idx);
    }
    loop {
        let idx = HIGH_WATER.load(Acquire);
        if !ensure_chunk(idx / CHUNK_SLOTS) {
            return None;
        }
        if HIGH_WATER.compare_exchange(idx, idx + 1, AcqRel, Acquire).is_ok() && try_take(idx) {
            return Some(idx);
        }
    }
}

/// The start routine and argument recorded by [`claim`].
pub fn start_of(idx: SlotIndex) -> (usize, usize) {
    slot(idx).map_or((0, 0), |s| (s.start.load(Relaxed), s.arg.load(Relaxed)))
}

/// Makes a claimed slot LIVE for the calling thread.
pub fn activate(idx: SlotIndex, tid: i32, area: *mut RseqrtArea) {
    if let Some(s) = slot(idx) {
        s.tid.store(tid, Relaxed);
        s.area.store(area, Relaxed);
        s.state.store(LIVE, SeqCst);
    }
}

/// Frees a slot, then waits until no barrier may still read the area it described.
pub fn release(idx: SlotIndex) {
    let Some(s) = slot(idx) else { return };
    s.state.store(FREE, SeqCst);
    CLAIMED.fetch_sub(1, Relaxed);
    FREE_HINT.store(idx, Relaxed);
    loop {
        let readers = READERS.load(SeqCst);
        if readers == 0 {
            break;
        }
        let _ = platform::futex_wait(&READERS, readers, 10_000_000);
    }
}

/// Number of threads the registry knows (starting or live).
pub fn known_threads() -> usize {
    CLAIMED.load(Relaxed)
}

/// Proof that the holder may read the areas of LIVE slots: their threads cannot finish exiting
/// while it exists.
pub struct ReadGuard(());

impl ReadGuard {
    pub fn new() -> Self {
        READERS.fetch_add(1, SeqCst);
        ReadGuard(())
    }

    /// Calls `f(tid, area)` for every LIVE slot.
    pub fn for_each_live(&self, mut f: impl FnMut(i32, *mut RseqrtArea)) {
        let high = HIGH_WATER.load(Acquire);
        for (c, cell) in CHUNKS.iter().enumerate().take(high.div_ceil(CHUNK_SLOTS)) {
            let chunk = cell.load(Acquire);
            if chunk.is_null() {
                continue;
            }
            // SAFETY: a published chunk is a valid, never-unmapped array of slots (see `slot`).
            let slots = unsafe { &(&*chunk)[..(high - c * CHUNK_SLOTS).min(CHUNK_SLOTS)] };
            for s in slots {
                if s.state.load(SeqCst) == LIVE {
                    f(s.tid.load(Relaxed), s.area.load(Relaxed));
                }
            }
        }
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if READERS.fetch_sub(1, SeqCst) == 1 {
            platform::futex_wake_all(&READERS);
        }
    }
}

/// In the child of `fork()`: only the forking thread survives. Frees every other slot, gives
/// the survivor its new thread id, and forgets barriers that were running in other threads.
pub fn after_fork_child(survivor: Option<SlotIndex>, tid: i32) {
    let high = HIGH_WATER.load(Acquire);
    let mut claimed = 0;
    for idx in 0..high {
        let Some(s) = slot(idx) else { continue };
        if Some(idx) == survivor {
            s.tid.store(tid, Relaxed);
            claimed += 1;
        } else {
            s.state.store(FREE, Relaxed);
        }
    }
    CLAIMED.store(claimed, Relaxed);
    FREE_HINT.store(0, Relaxed);
    READERS.store(0, SeqCst);
}
