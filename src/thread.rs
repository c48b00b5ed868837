//! Thread start and exit: rseqrt's `pthread_create` registers each new thread before its start
//! routine runs, and a thread-specific-data destructor takes it out of the registry at exit.
//!
//! The parent claims the child's registry slot and stores the start routine there, so thread
//! start allocates nothing. The child, first thing: registers its rseq area when rseqrt owns
//! registration, enters the registry, then calls the start routine.

use crate::registry::{self, SlotIndex};
use crate::state::{self, Owner};
use crate::{real, registration};
use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering::{Acquire, Release}};
use libc::{c_int, pthread_attr_t, pthread_t};

/// A thread start routine (rseqrt never calls one from Rust: see `arch::rseqrt_thread_start`).
type StartRoutine = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type PthreadCreate = unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int;

/// Key whose destructor retires the thread; `KEY_NONE` until created, `KEY_CREATING` meanwhile.
static EXIT_KEY: AtomicU32 = AtomicU32::new(KEY_NONE);
const KEY_NONE: u32 = u32::MAX;
const KEY_CREATING: u32 = u32::MAX - 1;
/// glibc runs thread-specific-data destructors in up to this many rounds
/// (`PTHREAD_DESTRUCTOR_ITERATIONS`).
const DESTRUCTOR_ROUNDS: usize = 4;
/// The round number lives above the slot tag in the key's value.
const ROUND_SHIFT: u32 = 48;

/// The exit key, created on first use (the constructor creates it early, so that it is one of
/// glibc's preallocated keys and setting it never allocates; a thread that a library's
/// constructor started before rseqrt's constructor creates it then).
fn exit_key() -> Option<libc::pthread_key_t> {
    loop {
        match EXIT_KEY.compare_exchange(KEY_NONE, KEY_CREATING, Acquire, Acquire) {
            Ok(_) => {
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: `key` is a live local; the destructor has the signature glibc expects.
                let created = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
                EXIT_KEY.store(if created { key } else { KEY_NONE }, Release);
                return created.then_some(key);
            }
            Err(KEY_CREATING) => crate::platform::sched_yield(),
            Err(key) => return Some(key),
        }
    }
}

/// Creates the exit key (constructor time).
pub fn init_exit_hook() {
    let _ = exit_key();
}

/// Makes the exit destructor run for the calling thread; `false` if it cannot (the thread must
/// then not become LIVE: nothing would take it out of the registry).
pub fn arm_exit_hook(idx: SlotIndex) -> bool {
    let Some(key) = exit_key() else { return false };
    // SAFETY: a key created by `exit_key`; the value is a tag, never dereferenced.
    unsafe { libc::pthread_setspecific(key, (idx + 1) as *const c_void) == 0 }
}

/// Thread-specific-data destructor. It re-arms itself until glibc's last destructor round, so
/// that it runs after the other libraries' destructors (which may still run critical sections),
/// and then retires the thread: its rseq area is unregistered (nothing can make the kernel read
/// its `rseq_cs` any more) and it leaves the registry. Until then the thread stays registered,
/// as glibc's threads do until they exit.
extern "C" fn on_thread_exit(value: *mut c_void) {
    let value = value as usize;
    let round = value >> ROUND_SHIFT;
    if round + 1 < DESTRUCTOR_ROUNDS {
        if let Some(key) = exit_key() {
            let next = value & ((1 << ROUND_SHIFT) - 1) | (round + 1) << ROUND_SHIFT;
            // SAFETY: as in `arm_exit_hook`.
            if unsafe { libc::pthread_setspecific(key, next as *const c_void) } == 0 {
                return;
            }
        }
    }
    registration::retire_current_thread();
}

/// rseqrt's `pthread_create` (exported under glibc's symbol versions; see `arch`).
///
/// # Safety
/// Same contract as `pthread_create(3)`.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_pthread_create(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let next = real::PTHREAD_CREATE.get();
    if next == 0 {
        return libc::ENOSYS;
    }
    // SAFETY: `next` is the C library's pthread_create, which has exactly this signature.
    let next: PthreadCreate = unsafe { core::mem::transmute(next) };
    let Some(idx) = registry::claim(start as usize, arg as usize) else {
        // Registry full or out of memory: the thread still starts, unknown to rseqrt (barriers
        // then cover it the way they cover any thread they did not start).
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { next(thread, attr, start, arg) };
    };
    // SAFETY: forwarding the caller's arguments, with rseqrt's entry (a start routine, see `arch`)
    // and the slot as its argument.
    let err = unsafe { next(thread, attr, crate::arch::rseqrt_thread_start, (idx + 1) as *mut c_void) };
    if err != 0 {
        registry::release(idx);
    }
    err
}

/// rseqrt's `thrd_create` (C11 threads): glibc's calls its internal pthread_create directly, past
/// rseqrt's `pthread_create`, so it is interposed too. The start function returns `int`; glibc's
/// `thrd_join` reads the low 32 bits of the thread's result, which the jump in
/// `arch::rseqrt_thread_start` leaves exactly as the function returned them.
///
/// # Safety
/// Same contract as `thrd_create(3)`.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_thrd_create(
    thread: *mut libc::pthread_t,
    start: unsafe extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> c_int {
    type ThrdCreate = unsafe extern "C" fn(*mut pthread_t, *const c_void, *mut c_void) -> c_int;
    const THRD_ERROR: c_int = 2; // <threads.h>
    let next = real::THRD_CREATE.get();
    if next == 0 {
        return THRD_ERROR;
    }
    // SAFETY: `next` is the C library's thrd_create; the start function pointer is passed as an
    // opaque code address, as glibc itself does.
    let next: ThrdCreate = unsafe { core::mem::transmute(next) };
    let Some(idx) = registry::claim(start as usize, arg as usize) else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { next(thread, start as *const c_void, arg) };
    };
    // SAFETY: rseqrt's entry jumps to `start(arg)` after the per-thread prologue.
    let rc = unsafe { next(thread, crate::arch::rseqrt_thread_start as *const c_void, (idx + 1) as *mut c_void) };
    if rc != 0 {
        registry::release(idx);
    }
    rc
}

/// Whether the program's `pthread_create` is rseqrt's, i.e. whether rseqrt was loaded early
/// enough (linked or preloaded) to see every thread start. Always true where rseqrt does not
/// interpose (the Rust crate linked into a program: threads register themselves).
///
/// Asked of the link map, not of `dlsym`: a non-PIE program that takes `pthread_create`'s
/// address has a canonical PLT entry that `dlsym` returns, while its calls still bind to the
/// first real definition (seen on Debian 11's toolchain).
pub fn pthread_create_is_ours() -> bool {
    !cfg!(feature = "c-library") || crate::elf::calls_bind_here(b"pthread_create")
}

/// The user's start routine and argument, returned in %rax:%rdx to the assembly entry.
#[repr(C)]
pub struct StartCall {
    start: usize,
    arg: usize,
}

/// First code of every thread rseqrt starts, called by `arch::rseqrt_thread_start` with the
/// slot tag: registers the thread's area when rseqrt owns registration, enters the thread in the
/// registry, and returns the start routine to jump to. Allocation-free; no lock.
pub extern "C" fn thread_started(tag: *mut c_void) -> StartCall {
    let idx = tag as usize - 1;
    let (start, arg) = registry::start_of(idx);
    if state::owner() == Owner::SelfOwned {
        // A failure leaves cpu_id at -2 for this thread, as glibc does; the thread still runs.
        let _ = registration::register_area();
    }
    // glibc started this thread: its descriptor has the id (no system call on thread start).
    let tid = crate::libc_private::current_tid().unwrap_or_else(crate::platform::gettid);
    registration::adopt_current_thread(idx, tid);
    StartCall { start, arg }
}
