//! The thread registry: one slot per thread that rseqrt started or adopted, holding the thread's
//! id and the address of its rseq area, so that a barrier can read every thread's `rseq_cs`
//! without waking it.
//!
//! Storage is a fixed table of chunk pointers; chunks are `mmap`ed on demand and never freed, so
//! a slot address stays valid for the life of the process, and growing never copies. Slot states:
//! FREE -> STARTING (claimed by `pthread_create` for the child; holds its start routine) -> LIVE
//! (the thread runs; tid and area valid) -> EXITING (thread exit: the thread has cleared its
//! `rseq_cs` and unregistered its area, and waits for the barriers that may read it; tid valid)
//! -> FREE. Freed slots go on a lock-free
//! stack, so claiming and freeing a slot cost the same at 10 threads and at 10,000; a barrier's
//! scan covers the slots ever handed out.
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
//! Guarantees: every function is async-signal-safe and malloc-free (`mmap` only), and takes no
//! lock of the C library. Two may wait: [`release`], while a barrier that started before it is running (asleep on a futex the
//! barrier's end wakes), and [`ReadGuard::new`], while all of its 128 cells are taken by running
//! barriers.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

const FREE: u32 = 0;
const STARTING: u32 = 1;
const LIVE: u32 = 2;
const EXITING: u32 = 3;

const CHUNK_SLOTS: usize = 1024;
const MAX_CHUNKS: usize = 256;

/// One thread's entry (32 bytes: the barrier's scan reads one state word per slot).
#[repr(C, align(32))]
pub struct Slot {
    state: AtomicU32,
    tid: AtomicI32,
    area: AtomicPtr<RseqrtArea>,
    /// STARTING: the start routine. FREE: the free stack's link (next index + 1, 0 at the end).
    start: AtomicUsize,
    /// STARTING: the start routine's argument. LIVE: the acknowledgement generation of the
    /// thread's last run of the reserved signal's handler (see `signal`).
    arg: AtomicUsize,
}

type Chunk = [Slot; CHUNK_SLOTS];

static CHUNKS: [AtomicPtr<Chunk>; MAX_CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CHUNKS];
/// Slots `0..HIGH_WATER` have been handed out at least once: the scan bound.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
/// Freed slots below `HIGH_WATER`, a stack linked through the slots' `start` words:
/// `(tag << 32) | (index + 1)`, 0 when empty. Every push and pop changes the tag, so a pop that
/// read a link which changed under it fails its exchange (an ABA needs 2^32 operations inside
/// one pop); reading a link is always safe, as slots are never unmapped.
static FREE_STACK: AtomicU64 = AtomicU64::new(0);
/// Slots in state LIVE: threads whose id and area the registry holds.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Ticket of the most recently started barrier.
static BARRIER_SEQ: AtomicU64 = AtomicU64::new(0);
/// Tickets of running barriers (0: cell free; `PENDING`: taking a ticket).
const CELLS: usize = 128;
const PENDING: u64 = u64::MAX;
static RUNNING: [AtomicU64; CELLS] = [const { AtomicU64::new(0) }; CELLS];
/// Per cell: bumped when its barrier ends (a futex word), and the exiting threads waiting for
/// that. Exiting threads sleep until woken instead of polling: thousands may exit at once.
static ENDED: [AtomicU32; CELLS] = [const { AtomicU32::new(0) }; CELLS];
static WAITERS: [AtomicU32; CELLS] = [const { AtomicU32::new(0) }; CELLS];

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

/// Takes a slot off the free stack (still FREE).
fn pop_free() -> Option<SlotIndex> {
    let mut head = FREE_STACK.load(Acquire);
    loop {
        let idx = (head as u32).checked_sub(1)? as usize;
        let next = slot(idx).map_or(0, |s| s.start.load(Relaxed)) as u32;
        let popped = (head >> 32).wrapping_add(1) << 32 | next as u64;
        match FREE_STACK.compare_exchange_weak(head, popped, AcqRel, Acquire) {
            Ok(_) => return Some(idx),
            Err(now) => head = now,
        }
    }
}

/// Puts a FREE slot on the free stack.
fn push_free(idx: SlotIndex) {
    let Some(s) = slot(idx) else { return };
    let mut head = FREE_STACK.load(Relaxed);
    loop {
        s.start.store(head as u32 as usize, Relaxed);
        let pushed = (head >> 32).wrapping_add(1) << 32 | (idx as u64 + 1);
        match FREE_STACK.compare_exchange_weak(head, pushed, Release, Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Claims a FREE slot (state STARTING), recording the thread's start routine and argument:
/// a freed one, else the next never-used one. `None` when the table is full or `mmap` fails.
pub fn claim(start: usize, arg: usize) -> Option<SlotIndex> {
    let take = |idx: SlotIndex| -> Option<SlotIndex> {
        let s = slot(idx)?;
        s.state.compare_exchange(FREE, STARTING, AcqRel, Relaxed).ok()?;
        s.start.store(start, Relaxed);
        s.arg.store(arg, Relaxed);
        Some(idx)
    };
    if let Some(idx) = pop_free() {
        // Only the popper holds a popped slot: the exchange cannot fail.
        return take(idx);
    }
    loop {
        let idx = HIGH_WATER.load(Acquire);
        if !ensure_chunk(idx / CHUNK_SLOTS) {
            return None;
        }
        if HIGH_WATER.compare_exchange(idx, idx + 1, AcqRel, Acquire).is_ok() {
            return take(idx);
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
        // No acknowledgement yet (the start argument was read): one generation before now, so
        // that a round that saw this slot LIVE, and so took its generation later, waits for it.
        s.arg.store(crate::signal::ack_generation().wrapping_sub(1) as usize, SeqCst);
        s.state.store(LIVE, SeqCst);
        LIVE_COUNT.fetch_add(1, SeqCst);
    }
}

/// Frees a slot, then waits until no barrier may still read the area it described (a constant
/// 128 cells to look at, however many threads there are), then makes it reusable.
pub fn release(idx: SlotIndex) {
    let Some(s) = slot(idx) else { return };
    // Only the slot's own thread (or, for a STARTING slot, its creator) changes its state.
    let was = s.state.load(SeqCst);
    s.state.store(if was == LIVE { EXITING } else { FREE }, SeqCst);
    if was == LIVE {
        LIVE_COUNT.fetch_sub(1, SeqCst);
    }
    let freed_at = BARRIER_SEQ.load(SeqCst);
    let may_have_seen = |t: u64| t != 0 && (t == PENDING || t <= freed_at);
    for (i, cell) in RUNNING.iter().enumerate() {
        while may_have_seen(cell.load(SeqCst)) {
            // A barrier that may have seen this slot LIVE is still running: sleep until it ends
            // (see `ReadGuard::drop`; the timeout only bounds a lost wake-up's cost).
            WAITERS[i].fetch_add(1, SeqCst);
            let ended = ENDED[i].load(SeqCst);
            match cell.load(SeqCst) {
                PENDING => platform::sleep_ns(1_000), // taking its ticket: a few instructions
                t if may_have_seen(t) => platform::futex_wait(&ENDED[i], ended, 10_000_000),
                _ => {}
            }
            WAITERS[i].fetch_sub(1, SeqCst);
        }
    }
    // Reusable only now: no barrier still holds what it read from the slot.
    if was != FREE {
        s.state.store(FREE, SeqCst);
        push_free(idx);
    }
}

/// The reserved signal's handler ran, at acknowledgement generation `generation`, in thread
/// `tid`, which the request named with slot `idx`. Async-signal-safe: loads and one store.
pub fn acknowledge(idx: SlotIndex, tid: i32, generation: u32) {
    // Only LIVE with that thread: before `activate` the word still holds the start argument, and
    // a slot taken over by another thread since the request was sent is not this one's.
    if let Some(s) = slot(idx).filter(|s| s.state.load(SeqCst) == LIVE && s.tid.load(Relaxed) == tid) {
        s.arg.store(generation as usize, SeqCst);
    }
}

/// Whether thread `tid` of slot `idx` acknowledged at `generation` or later, or has left the
/// slot (a thread leaves the registry only after clearing its own `rseq_cs`).
pub fn acknowledged(idx: SlotIndex, tid: i32, generation: u32) -> bool {
    let Some(s) = slot(idx) else { return true };
    if s.state.load(SeqCst) != LIVE || s.tid.load(Relaxed) != tid {
        return true;
    }
    (s.arg.load(SeqCst) as u32).wrapping_sub(generation) as i32 >= 0
}

/// Slots handed out so far: a bound on the LIVE and EXITING ones.
pub fn slots_handed_out() -> usize {
    HIGH_WATER.load(Acquire)
}

/// Whether slot `idx` is EXITING with thread id `tid`: then the thread with that id is alive and
/// harmless (its area unregistered), and still was when this returned.
pub fn still_exiting(idx: SlotIndex, tid: i32) -> bool {
    slot(idx).is_some_and(|s| s.state.load(SeqCst) == EXITING && s.tid.load(Relaxed) == tid)
}

/// Number of threads the registry knows (LIVE). Threads still starting are not counted: a
/// barrier then treats them as unknown, the safe direction.
pub fn known_threads() -> usize {
    LIVE_COUNT.load(SeqCst)
}

/// Scratch memory of the barrier holding each cell (see [`Scratch`]): `mmap`ed on first need,
/// replaced by a larger mapping when too small (the smaller one is unmapped), and kept for the
/// cell's next holder.
static SCRATCH: [AtomicPtr<u8>; CELLS] = [const { AtomicPtr::new(ptr::null_mut()) }; CELLS];
static SCRATCH_BYTES: [AtomicUsize; CELLS] = [const { AtomicUsize::new(0) }; CELLS];

/// Proof that the holder may read the areas of slots it sees LIVE: their threads cannot finish
/// exiting while it exists.
pub struct ReadGuard {
    cell: usize,
    scratch_taken: core::cell::Cell<bool>,
}

impl ReadGuard {
    /// Publishes a ticket. Why a slot's releaser waits for any barrier that sees the slot LIVE:
    /// that barrier's load of the state precedes the releaser's FREE store in the single order of
    /// sequentially consistent operations, so its PENDING mark and then its ticket (taken before
    /// the load) do too, and the releaser, reading the cells after its store, sees PENDING or a
    /// ticket no larger than the sequence value it read.
    pub fn new() -> Self {
        loop {
            for (i, cell) in RUNNING.iter().enumerate() {
                if cell.compare_exchange(0, PENDING, SeqCst, Relaxed).is_ok() {
                    let ticket = BARRIER_SEQ.fetch_add(1, SeqCst) + 1;
                    cell.store(ticket, SeqCst);
                    return ReadGuard { cell: i, scratch_taken: core::cell::Cell::new(false) };
                }
            }
            // More than CELLS barriers at once: wait for one to finish.
            platform::sched_yield();
        }
    }

    /// The barrier's working memory (once per guard; `None` the second time).
    pub fn scratch(&self) -> Option<Scratch<'_>> {
        (!self.scratch_taken.replace(true)).then_some(Scratch { cell: self.cell, _guard: core::marker::PhantomData })
    }

    /// Calls `f(tid, area)` for every LIVE slot.
    pub fn for_each_live(&self, mut f: impl FnMut(i32, *mut RseqrtArea)) {
        self.for_each_live_slot(|_, tid, area| f(tid, area));
    }

    /// Whether `f(area)` holds for every LIVE slot's area; stops at the first that it does not.
    pub fn all_live(&self, mut f: impl FnMut(*mut RseqrtArea) -> bool) -> bool {
        slots_while(|_, s| s.state.load(SeqCst) != LIVE || f(s.area.load(Relaxed)))
    }

    /// Calls `f(slot, tid, area)` for every LIVE slot.
    pub fn for_each_live_slot(&self, mut f: impl FnMut(SlotIndex, i32, *mut RseqrtArea)) {
        for_each_slot(|idx, s| {
            if s.state.load(SeqCst) == LIVE {
                f(idx, s.tid.load(Relaxed), s.area.load(Relaxed));
            }
        });
    }

    /// Calls `f(tid, None)` for every LIVE slot and `f(tid, Some(slot))` for every EXITING one
    /// (see [`still_exiting`]).
    pub fn for_each_known(&self, mut f: impl FnMut(i32, Option<SlotIndex>)) {
        for_each_slot(|idx, s| match s.state.load(SeqCst) {
            LIVE => f(s.tid.load(Relaxed), None),
            EXITING => f(s.tid.load(Relaxed), Some(idx)),
            _ => {}
        });
    }
}

/// Calls `f(index, slot)` for every slot handed out so far.
fn for_each_slot(mut f: impl FnMut(SlotIndex, &Slot)) {
    slots_while(|idx, s| {
        f(idx, s);
        true
    });
}

/// Calls `f(index, slot)` for the slots handed out so far, chunk by chunk (a tight loop over
/// each chunk keeps many of the loads in flight), until it returns false; returns whether it
/// never did.
fn slots_while(mut f: impl FnMut(SlotIndex, &Slot) -> bool) -> bool {
    let high = HIGH_WATER.load(Acquire);
    for (c, cell) in CHUNKS.iter().enumerate().take(high.div_ceil(CHUNK_SLOTS)) {
        let chunk = cell.load(Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: a published chunk is a valid, never-unmapped array of slots (see `slot`).
        let slots = unsafe { &(&*chunk)[..(high - c * CHUNK_SLOTS).min(CHUNK_SLOTS)] };
        for (i, s) in slots.iter().enumerate() {
            if !f(c * CHUNK_SLOTS + i, s) {
                return false;
            }
        }
    }
    true
}

impl Drop for ReadGuard {
    /// Ends the barrier and wakes the exiting threads that wait for it. A waiter registers, reads
    /// `ENDED`, then finds the cell still taken before it sleeps; in the single order of these
    /// sequentially consistent operations, either this store of 0 comes before its look at the
    /// cell (it does not sleep), or its registration comes before the load of `WAITERS` below
    /// (it is woken, or `ENDED` changed before it slept and the futex does not sleep).
    fn drop(&mut self) {
        let i = self.cell;
        RUNNING[i].store(0, SeqCst);
        ENDED[i].fetch_add(1, SeqCst);
        if WAITERS[i].load(SeqCst) != 0 {
            platform::futex_wake_all(&ENDED[i]);
        }
    }
}

/// Working memory for the tables of one barrier that grow with the number of threads, so that
/// they need neither the heap nor a large stack: the memory of the barrier's registry cell, which
/// no other barrier uses while the guard lives. Async-signal-safe, malloc-free (`mmap`).
pub struct Scratch<'g> {
    cell: usize,
    _guard: core::marker::PhantomData<&'g ReadGuard>,
}

impl Scratch<'_> {
    /// `n` values of `T`, each set to `fill`; `None` when `mmap` fails (the caller then takes a
    /// slower way that needs no memory).
    pub fn get<T: Copy>(&mut self, n: usize, fill: T) -> Option<&mut [T]> {
        const { assert!(core::mem::align_of::<T>() <= 4096) };
        let bytes = n.checked_mul(core::mem::size_of::<T>())?;
        let (mem, have) = (&SCRATCH[self.cell], &SCRATCH_BYTES[self.cell]);
        if have.load(Relaxed) < bytes || mem.load(Relaxed).is_null() {
            let want = bytes.max(1 << 16).checked_next_power_of_two()?;
            let fresh = platform::mmap_anon(want).ok()?;
            let old = mem.swap(fresh, Relaxed);
            if !old.is_null() {
                // SAFETY: the cell's previous mapping, used only by this cell's holder (us), whose
                // earlier slices ended with their `&mut self` borrows.
                let _ = unsafe { platform::munmap(old, have.load(Relaxed)) };
            }
            have.store(want, Relaxed);
        }
        let base = mem.load(Relaxed).cast::<T>();
        // SAFETY: a page-aligned mapping of at least `bytes` bytes, used by this cell's holder
        // alone (the guard), and by this slice alone while `self` is borrowed; filled before use.
        let table = unsafe { core::slice::from_raw_parts_mut(base, n) };
        table.fill(fill);
        Some(table)
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
    FREE_STACK.store(0, Relaxed);
    for idx in (0..high).rev() {
        let Some(s) = slot(idx) else { continue };
        if Some(idx) == survivor {
            s.tid.store(tid, Relaxed);
            live += 1;
        } else {
            s.state.store(FREE, Relaxed);
            push_free(idx);
        }
    }
    LIVE_COUNT.store(live, SeqCst);
    for (cell, waiters) in RUNNING.iter().zip(&WAITERS) {
        waiters.store(0, SeqCst);
        cell.store(0, SeqCst);
    }
}
