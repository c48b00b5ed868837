//! The reserved signal, shared with the program: the program keeps its own disposition of the
//! signal's number, and receives every signal of that number that rseqrt did not send.
//!
//! `SIGRTMIN`..`SIGRTMAX` leave the reserved signal out (`rtsig`), but programs that hard-code
//! numbers still use it: bash 5.2 fixes its `RTMAX` at 64 when it is built, and `trap ... RTMAX;
//! kill -s RTMAX $$` must work under the shim as without it. So rseqrt never takes the number:
//!
//! * The barrier's requests are queued signals (`rt_tgsigqueueinfo`) carrying `SI_QUEUE` and a
//!   value ([`REQUEST_VALUE`]) that no sender outside this process can know; the handler
//!   acknowledges those and hands every other signal of the number to the program.
//! * `sigaction()`/`signal()` on the number store and report the program's disposition here
//!   (the kernel keeps rseqrt's handler), exactly as the kernel would have: the old action is the
//!   one the program set, `SIG_DFL` until it sets one.
//! * Dispatch follows the program's disposition as the kernel would: `SIG_IGN` drops the
//!   signal; `SIG_DFL` ends the process by that signal (the default action of a real-time
//!   signal), through the kernel; a handler runs with the program's `sa_mask` added, the signal
//!   itself blocked unless `SA_NODEFER`, reset first with `SA_RESETHAND`, and given `siginfo_t`
//!   and the context with `SA_SIGINFO`.
//!
//! Differences left (README): the signal stays unblockable by the program (it is rseqrt's too),
//! the kernel-level flags are rseqrt's (`SA_RESTART` always; no `SA_ONSTACK`: the program's
//! handler runs on the thread's stack), and a disposition set to `SIG_IGN` is not carried across
//! `execve()` (the kernel resets rseqrt's handler to `SIG_DFL` there).
//!
//! Storage: a sequence lock over atomics. Readers (the signal handler) retry while a write is in
//! progress; writers serialize on the sequence and block every signal while they hold it, so no
//! handler can interrupt a write on its own thread. Guarantees of every function here:
//! async-signal-safe, allocation-free, no lock of the C library; `errno` kept.

use crate::platform;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed, Release}};
use libc::c_int;

/// `si_value` of the barrier's requests: random, drawn once by [`init`] (`getrandom`), so that no
/// other process can forge an acknowledgement; until then (and if `getrandom` fails) a constant
/// mixed with the address of a static, which address-space randomization varies.
pub fn request_value() -> u64 {
    match REQUEST_VALUE.load(Relaxed) {
        0 => (&SEQUENCE as *const AtomicU32 as u64) ^ FALLBACK_VALUE,
        v => v,
    }
}
const FALLBACK_VALUE: u64 = 0x7273_6571_7274_2d63; // "rseqrt-c"
static REQUEST_VALUE: AtomicU64 = AtomicU64::new(0);

/// Draws the request value (constructor time, before the handler is installed: no request is in
/// flight with the old value).
pub fn init() {
    let mut v = 0u64;
    if platform::getrandom(&mut v).is_ok() && v != 0 {
        REQUEST_VALUE.store(v, Relaxed);
    }
}

/// Whether the program ever set a disposition (then it is the program's, whatever the kernel's
/// disposition was before rseqrt's handler).
pub fn written() -> bool {
    SEQUENCE.load(Acquire) != 0
}

/// `info` (what the kernel gave the handler) as a barrier request of this process, if it is one.
///
/// # Safety
/// `info` must be the `siginfo_t` pointer an `SA_SIGINFO` handler received.
pub unsafe fn as_request<'a>(info: *const libc::siginfo_t) -> Option<&'a platform::QueuedSiginfo> {
    // SAFETY: the kernel's siginfo_t is 128 bytes; the queued layout's fields are in range.
    let q = unsafe { &*(info as *const platform::QueuedSiginfo) };
    (q.code == libc::SI_QUEUE && q.value == request_value()).then_some(q)
}

/// The program's disposition: handler (or `SIG_DFL`/`SIG_IGN`), `sa_flags`, and its `sa_mask`
/// as the kernel's 64-signal mask.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Disposition {
    pub handler: usize,
    pub flags: c_int,
    pub mask: u64,
}

impl Disposition {
    /// From the C library's `struct sigaction`.
    pub fn from_sigaction(act: &libc::sigaction) -> Disposition {
        // SAFETY: sigset_t begins with the kernel's 64 signals (bit n-1 is signal n).
        let mask = unsafe { *(&act.sa_mask as *const libc::sigset_t as *const u64) };
        Disposition { handler: act.sa_sigaction, flags: act.sa_flags, mask }
    }

    /// Into the C library's `struct sigaction`.
    pub fn to_sigaction(self, out: &mut libc::sigaction) {
        // SAFETY: an all-zero sigaction is valid (empty mask, no restorer).
        *out = unsafe { core::mem::zeroed() };
        out.sa_sigaction = self.handler;
        out.sa_flags = self.flags;
        // SAFETY: as in from_sigaction; the rest of the set stays empty.
        unsafe { *(&mut out.sa_mask as *mut libc::sigset_t as *mut u64) = self.mask };
    }
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);
static HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static FLAGS: AtomicU32 = AtomicU32::new(0);
static MASK: AtomicU64 = AtomicU64::new(0);

/// The stored fields (read inside the sequence lock, or while holding it).
fn fields() -> Disposition {
    Disposition { handler: HANDLER.load(Relaxed), flags: FLAGS.load(Relaxed) as c_int, mask: MASK.load(Relaxed) }
}

/// The program's disposition now.
pub fn load() -> Disposition {
    let mut spins = 0u32;
    loop {
        let before = SEQUENCE.load(Acquire);
        if before & 1 == 0 {
            let d = fields();
            core::sync::atomic::fence(Acquire);
            if SEQUENCE.load(Relaxed) == before {
                return d;
            }
        }
        spins = wait_for_writer(spins, before);
    }
}

/// Spins on a sequence left odd by a writer; after many spins, checks (one `getpid`) whether this
/// is a child of a fork that ran no handler (`_Fork`, a raw `fork`): there the writer does not
/// exist, and the sequence is made even again (see [`after_fork_child`]).
fn wait_for_writer(spins: u32, seen: u32) -> u32 {
    core::hint::spin_loop();
    if spins < 1 << 16 {
        return spins + 1;
    }
    if seen & 1 == 1 && crate::registry::describes_another_process() {
        let _ = SEQUENCE.compare_exchange(seen, seen.wrapping_add(1), AcqRel, Relaxed);
    }
    0
}

/// In a `fork()` child: only the forking thread exists, so a write another thread had begun
/// never ends; the sequence is made even again (the fields hold the old disposition, the new
/// one, or a mix of the two: the child of a fork that raced `sigaction()` on the number).
pub fn after_fork_child() {
    let seq = SEQUENCE.load(Relaxed);
    if seq & 1 == 1 {
        SEQUENCE.store(seq.wrapping_add(1), Release);
    }
}

/// Sets the program's disposition to `new` (when given); returns the previous one.
pub fn exchange(new: Option<Disposition>) -> Disposition {
    match new {
        Some(new) => update(|_| Some(new)),
        None => load(),
    }
}

/// Replaces the disposition with what `change` makes of it (`None`: unchanged), atomically with
/// respect to every other writer; returns the previous one.
fn update(change: impl FnOnce(Disposition) -> Option<Disposition>) -> Disposition {
    // Every signal blocked while the sequence is odd: a handler on this thread would spin on it.
    let saved = platform::sigprocmask(libc::SIG_BLOCK, !0);
    let (mut seq, mut spins) = (SEQUENCE.load(Relaxed), 0);
    loop {
        if seq & 1 == 0 {
            match SEQUENCE.compare_exchange_weak(seq, seq.wrapping_add(1), Acquire, Relaxed) {
                Ok(_) => break,
                Err(now) => seq = now,
            }
        } else {
            spins = wait_for_writer(spins, seq);
            seq = SEQUENCE.load(Relaxed);
        }
    }
    core::sync::atomic::fence(Release);
    let old = fields();
    if let Some(new) = change(old) {
        HANDLER.store(new.handler, Relaxed);
        FLAGS.store(new.flags as u32, Relaxed);
        MASK.store(new.mask, Relaxed);
    }
    SEQUENCE.store(seq.wrapping_add(2), Release);
    platform::sigprocmask(libc::SIG_SETMASK, saved);
    old
}

/// glibc's internal signals (SIGCANCEL 32, SIGSETXID 33), which a handler must never block.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

/// The bit of signal `sig` (1..=64) in a kernel signal mask.
pub(crate) fn bit(sig: c_int) -> u64 {
    1u64 << (sig - 1)
}

/// Runs the program's disposition for signal `sig` that rseqrt did not send (called by the
/// reserved signal's handler, which the kernel entered with `sig` blocked).
///
/// # Safety
/// `info` and `context` must be what the kernel passed to an `SA_SIGINFO` handler for `sig`.
pub unsafe fn dispatch(sig: c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let d = load();
    match d.handler {
        libc::SIG_IGN => {}
        libc::SIG_DFL => end_process_by(sig),
        handler => {
            if d.flags & libc::SA_RESETHAND != 0 {
                // The kernel resets the handler (only) as it delivers: one delivery runs it. If
                // another delivery reset it first, or the program changed it, run what is there.
                let reset = Disposition { handler: libc::SIG_DFL, ..d };
                if update(|now| (now == d).then_some(reset)) != d {
                    // SAFETY: as for this call.
                    return unsafe { dispatch(sig, info, context) };
                }
            }
            platform::sigprocmask(libc::SIG_BLOCK, d.mask & !GLIBC_INTERNAL);
            if d.flags & libc::SA_NODEFER != 0 && d.mask & bit(sig) == 0 {
                platform::sigprocmask(libc::SIG_UNBLOCK, bit(sig));
            }
            // The mask in effect before the signal comes back with the handler's return
            // (`rt_sigreturn` restores the context's), as after a kernel-run handler.
            if d.flags & libc::SA_SIGINFO != 0 {
                type Action = unsafe extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);
                // SAFETY: the program installed this function as an SA_SIGINFO handler.
                unsafe { core::mem::transmute::<usize, Action>(handler)(sig, info, context) }
            } else {
                type Handler = unsafe extern "C" fn(c_int);
                // SAFETY: the program installed this function as a plain handler.
                unsafe { core::mem::transmute::<usize, Handler>(handler)(sig) }
            }
        }
    }
}

/// The default action of a real-time signal: the process ends, killed by `sig` (the status its
/// parent sees is the one it would see without rseqrt). The kernel's disposition goes back to
/// `SIG_DFL` and the signal is sent again, unblocked: it is delivered before this returns.
fn end_process_by(sig: c_int) -> ! {
    let default = [libc::SIG_DFL, 0, 0, 0];
    let _ = platform::sigaction(sig, Some(&default));
    // kill(), not tgkill(): a process-directed SI_USER signal is queued even when the
    // real-time queue is full (the program may be flooding this very number).
    let _ = platform::kill(platform::getpid(), sig);
    platform::sigprocmask(libc::SIG_UNBLOCK, bit(sig));
    // Unreachable unless the signal could not be sent: end as the shell would report it.
    platform::exit_group(128 + sig)
}
