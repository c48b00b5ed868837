//! The real-time signal range the program sees: `SIGRTMIN`..`SIGRTMAX` without rseqrt's reserved
//! signal, the way glibc leaves its own internal signals (32, 33) out of it.
//!
//! Facts this rests on (glibc 2.31 to 2.41 on x86-64: `objdump -T libc.so.6` on 2.36, glibc's
//! `signal/allocrtsig.c` and x86-64 `libc.abilist`):
//! * `SIGRTMIN` and `SIGRTMAX` are macros that call `__libc_current_sigrtmin()` and
//!   `__libc_current_sigrtmax()` at run time (libc.so.6, version `GLIBC_2.2.5`, the x86-64
//!   baseline; before 2.34 libpthread.so.0 also exports forwarders to the same functions).
//!   Programs read them at run time, shells too: bash's `trap ... RTMAX` and `kill -s RTMAX`.
//! * They return two counters of libc, initially 34 and 64. `__libc_allocate_rtsig(high)` (same
//!   version) hands out the signal at one end of the range and moves that end: the lowest for a
//!   non-zero `high` (`SIGRTMIN` then reads one more), else the highest (`SIGRTMAX` reads one
//!   less). It takes no lock: glibc expects it to be called at program start. glibc's own users
//!   of the range (`strsignal()`, `psignal()`) read the counters directly.
//!
//! So rseqrt takes its signal out of the range the way any library may, with
//! `__libc_allocate_rtsig()`, when the signal is at one end of it: the top (the default) or the
//! bottom (`RSEQRT_SIGNAL` set to `SIGRTMIN`). From then on glibc itself, and everything that
//! asks it, sees the range without it: with the default 64, `SIGRTMAX` reads 63, and every signal
//! from `SIGRTMIN` to `SIGRTMAX` can be handled, raised and received. A signal in the middle of
//! the range cannot be taken out of it (the range is two bounds): it stays inside, shared with
//! the program (`sigshare`), and `__libc_allocate_rtsig()` never hands it out; once the
//! allocations reach it, it is the end of the range and is left out like the top one.
//!
//! The choice is made once, by the first of: rseqrt's constructor, or a call of one of the three
//! functions that reaches rseqrt's interposers, which can come first (a library the dynamic
//! linker initializes before rseqrt reads `SIGRTMAX` in its constructor). So the values are the
//! same from the first read on. glibc's functions are found at relocation time
//! ([`find_glibc`]), so that no interposer needs `dlsym`.
//!
//! Guarantees of [`chosen`], [`taken`] and the interposers: async-signal-safe, no allocation, no
//! lock. The choice reads `RSEQRT_SIGNAL` with `secure_getenv` (which only scans the environment) and
//! the dispositions with raw `rt_sigaction` queries; it commits with one compare-and-swap, so a
//! choice interrupted by a handler that reads `SIGRTMAX` is made by the handler, and the
//! interrupted one adopts it.

use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed}};
use libc::c_int;

/// glibc's `__libc_current_sigrtmin`, `__libc_current_sigrtmax`, `__libc_allocate_rtsig` (the
/// definitions after rseqrt's), found at relocation time; 0 when absent.
static GLIBC_SIGRTMIN: AtomicUsize = AtomicUsize::new(0);
static GLIBC_SIGRTMAX: AtomicUsize = AtomicUsize::new(0);
static GLIBC_ALLOCATE: AtomicUsize = AtomicUsize::new(0);

/// glibc's initial range on Linux x86-64 (`__SIGRTMIN` + its 2 internal signals, `__SIGRTMAX`),
/// for a C library that lacks the functions.
const INITIAL_RANGE: (c_int, c_int) = (34, 64);

const UNCHOSEN: i32 = 0;
/// Chosen: no real-time signal was free.
const NO_SIGNAL: i32 = -1;
/// The reserved signal, [`NO_SIGNAL`], or [`UNCHOSEN`].
static CHOSEN: AtomicI32 = AtomicI32::new(UNCHOSEN);

/// Records glibc's three functions (relocation time: `next` is the dynamic linker's list walk,
/// which makes no call through the PLT).
pub fn find_glibc(next: fn(&[u8]) -> usize) {
    GLIBC_SIGRTMIN.store(next(b"__libc_current_sigrtmin"), Relaxed);
    GLIBC_SIGRTMAX.store(next(b"__libc_current_sigrtmax"), Relaxed);
    GLIBC_ALLOCATE.store(next(b"__libc_allocate_rtsig"), Relaxed);
}

/// Calls glibc's `__libc_current_sigrt{min,max}` (`f`); `None` when there is none.
fn glibc_bound(f: &AtomicUsize) -> Option<c_int> {
    match f.load(Relaxed) {
        0 => None,
        // SAFETY: a definition of `int __libc_current_sigrt{min,max}(void)`, found by name; it
        // only reads a counter of libc.
        addr => Some(unsafe { core::mem::transmute::<usize, extern "C" fn() -> c_int>(addr)() }),
    }
}

/// glibc's range now, as its own functions answer.
fn glibc_range() -> (c_int, c_int) {
    (glibc_bound(&GLIBC_SIGRTMIN).unwrap_or(INITIAL_RANGE.0), glibc_bound(&GLIBC_SIGRTMAX).unwrap_or(INITIAL_RANGE.1))
}

/// glibc's `__libc_allocate_rtsig(high)`; -1 (none left) when there is none.
fn glibc_allocate(high: c_int) -> c_int {
    match GLIBC_ALLOCATE.load(Relaxed) {
        0 => -1,
        // SAFETY: a definition of `int __libc_allocate_rtsig(int)`, found by name; it only moves
        // a counter of libc.
        addr => unsafe { core::mem::transmute::<usize, extern "C" fn(c_int) -> c_int>(addr)(high) },
    }
}

/// The reserved signal, chosen now if nobody chose it yet; `None` when no real-time signal was
/// free. `RSEQRT_SIGNAL=N` (N in glibc's range) chooses N; otherwise the highest signal of the
/// range without a handler (an ignored one, inherited across `exec`, counts as handled).
pub fn chosen() -> Option<c_int> {
    let sig = match CHOSEN.load(Acquire) {
        UNCHOSEN => choose(),
        sig => sig,
    };
    (sig > 0).then_some(sig)
}

/// The reserved signal if it has been chosen, else 0 (makes no choice).
pub fn taken() -> c_int {
    CHOSEN.load(Acquire).max(0)
}

fn choose() -> i32 {
    let (lo, hi) = glibc_range();
    let free = |sig: c_int| crate::platform::signal_handler(sig) == Ok(libc::SIG_DFL);
    let pick = match crate::config::env_number(b"RSEQRT_SIGNAL\0") {
        Some(n) if (lo as u64..=hi as u64).contains(&n) => n as c_int,
        _ => (lo..=hi).rev().find(|&s| free(s)).unwrap_or(NO_SIGNAL),
    };
    match CHOSEN.compare_exchange(UNCHOSEN, pick, AcqRel, Acquire) {
        Ok(_) => {
            take_from_glibc(pick);
            pick
        }
        Err(earlier) => earlier,
    }
}

/// Takes `sig` out of glibc's range when it is at one end of it (see the module's doc).
fn take_from_glibc(sig: c_int) {
    let (lo, hi) = glibc_range();
    let high = match sig {
        s if s == hi => 0,
        s if s == lo => 1,
        _ => return, // in the middle, or not in the range
    };
    let _ = glibc_allocate(high);
}

/// `__libc_current_sigrtmin()` (what `SIGRTMIN` reads): glibc's, one more while the reserved
/// signal is its lowest (between the choice and its allocation in glibc, or when allocations from
/// the bottom reached a middle one).
#[no_mangle]
pub extern "C" fn rseqrt_interpose___libc_current_sigrtmin() -> c_int {
    let lo = glibc_bound(&GLIBC_SIGRTMIN).unwrap_or(INITIAL_RANGE.0);
    if Some(lo) == chosen() { lo + 1 } else { lo }
}

/// `__libc_current_sigrtmax()` (what `SIGRTMAX` reads): glibc's, one less while the reserved
/// signal is its highest (as for `SIGRTMIN`).
#[no_mangle]
pub extern "C" fn rseqrt_interpose___libc_current_sigrtmax() -> c_int {
    let hi = glibc_bound(&GLIBC_SIGRTMAX).unwrap_or(INITIAL_RANGE.1);
    if Some(hi) == chosen() { hi - 1 } else { hi }
}

/// `__libc_allocate_rtsig(high)`: glibc's, never handing out the reserved signal (it skips it
/// when the end of the range reaches it).
#[no_mangle]
pub extern "C" fn rseqrt_interpose___libc_allocate_rtsig(high: c_int) -> c_int {
    let ours = chosen();
    loop {
        let sig = glibc_allocate(high);
        if Some(sig) != ours {
            return sig;
        }
    }
}
