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
//! releases its slot waits, before it may go on to exit (and free the memory holding its area),
//! until every barrier that could have seen its slot LIVE has ended — and only those: a barrier
//! takes a ticket from a global sequence when it starts and publishes it in one of a fixed set of
//! cells; the releasing thread frees its slot, reads the sequence, and waits for the cells that
//! hold a ticket not above it. Barriers that start later get larger tickets and cannot see the
//! slot LIVE, so a stream of barriers cannot starve an exiting thread. All operations on the slot
//! state, the sequence and the cells are sequentially consistent (see [`ReadGuard::new`]).
//!
//! Guarantees: every function is async-signal-safe and malloc-free (`mmap` only). Two may wait:
//! [`release`], while a barrier that started before it is running, and [`ReadGuard::new`], while
//! all of its 128 cells are taken by running barriers.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

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
/// Slots in state LIVE: threads whose id and area the registry holds.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Ticket of the most recently started barrier.
static BARRIER_SEQ: AtomicU64 = AtomicU64::new(0);
/// Tickets of running barriers (0: cell free; `PENDING`: taking a ticket).
const CELLS: usize = 128;
const PENDING: u64 = u64::MAX;
static RUNNING: [AtomicU64; CELLS] = [const { AtomicU64::new(0) }; CELLS];

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
        LIVE_COUNT.fetch_add(1, SeqCst);
    }
}

/// Frees a slot, then waits until no barrier may still read the area it described.
pub fn release(idx: SlotIndex) {
    let Some(s) = slot(idx) else { return };
    if s.state.swap(FREE, SeqCst) == LIVE {
        LIVE_COUNT.fetch_sub(1, SeqCst);
    }
    FREE_HINT.store(idx, Relaxed);
    let freed_at = BARRIER_SEQ.load(SeqCst);
    for cell in &RUNNING {
        loop {
            let t = cell.load(SeqCst);
            if t == 0 || (t != PENDING && t > freed_at) {
                break;
            }
            // A barrier that may have seen this slot LIVE is still running.
            platform::sleep_ns(if t == PENDING { 1_000 } else { 50_000 });
        }
    }
}

/// Number of threads the registry knows (LIVE). Threads still starting are not counted: a
/// barrier then treats them as unknown, the safe direction.
pub fn known_threads() -> usize {
    LIVE_COUNT.load(SeqCst)
}

/// Proof that the holder may read the areas of slots it sees LIVE: their threads cannot finish
/// exiting while it exists.
pub struct ReadGuard(&'static AtomicU64);

impl ReadGuard {
    /// Publishes a ticket. Why a slot's releaser waits for any barrier that sees the slot LIVE:
    /// that barrier's load of the state precedes the releaser's FREE store in the single order of
    /// sequentially consistent operations, so its PENDING mark and then its ticket (taken before
    /// the load) do too, and the releaser, reading the cells after its store, sees PENDING or a
    /// ticket no larger than the sequence value it read.
    pub fn new() -> Self {
        loop {
            for cell in &RUNNING {
                if cell.compare_exchange(0, PENDING, SeqCst, Relaxed).is_ok() {
                    let ticket = BARRIER_SEQ.fetch_add(1, SeqCst) + 1;
                    cell.store(ticket, SeqCst);
                    return ReadGuard(cell);
                }
            }
            // More than CELLS barriers at once: wait for one to finish.
            platform::sched_yield();
        }
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
        self.0.store(0, SeqCst);
    }
}

/// The process whose threads the registry describes: set by the constructor and by the `fork()`
/// child handler. A child of `_Fork()` (glibc 2.34+, which runs no fork handler), of a raw
/// `fork` system call, or of `vfork()` inherits the registry unchanged: there it describes the
/// parent's threads, and glibc's own thread lists do too (see `barrier::broadcast`).
static PROCESS: AtomicI32 = AtomicI32::new(0);

/// Records the calling process as the one the registry describes.
pub fn set_process(pid: i32) {
    PROCESS.store(pid, SeqCst);
}

/// Whether the registry describes another process than the caller's (see [`set_process`]):
/// one system call. False before the constructor ran.
pub fn describes_another_process() -> bool {
    let pid = PROCESS.load(SeqCst);
    pid != 0 && pid != platform::getpid()
}

/// In the child of `fork()`: only the forking thread survives. Frees every other slot, gives
/// the survivor its new thread id, and forgets barriers that were running in other threads.
pub fn after_fork_child(survivor: Option<SlotIndex>, tid: i32) {
    set_process(platform::getpid());
    let high = HIGH_WATER.load(Acquire);
    let mut live = 0;
    for idx in 0..high {
        let Some(s) = slot(idx) else { continue };
        if Some(idx) == survivor {
            s.tid.store(tid, Relaxed);
            live += 1;
        } else {
            s.state.store(FREE, Relaxed);
        }
    }
    LIVE_COUNT.store(live, SeqCst);
    FREE_HINT.store(0, Relaxed);
    for cell in &RUNNING {
        cell.store(0, SeqCst);
    }
}
