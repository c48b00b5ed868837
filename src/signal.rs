//! The reserved real-time signal that the barrier sends to threads it must interrupt, and the
//! interposers that keep it deliverable, the way glibc keeps its own internal signals (32, 33)
//! deliverable: masks the program sets (`pthread_sigmask`, `sigprocmask`, and the temporary ones
//! of `sigsuspend`, `ppoll`, `pselect`, `epoll_pwait[2]`, `pthread_attr_setsigmask_np`) never
//! block it, and the sets it waits for (`sigwait*`) never include it. Which signal it is, and how
//! `SIGRTMIN`..`SIGRTMAX` leave it out, is `rtsig`'s; `sigaction`/`signal` on its number set the
//! program's own disposition, which receives every such signal rseqrt did not send (`sigshare`).
//!
//! Delivering the signal is what makes the thread's own kernel process its `rseq_cs` (abort a
//! running critical section, then clear the field) before the handler runs. For the barrier's
//! requests ([`request`]) the handler at most acknowledges, as the request says ([`Ack`]): not
//! at all when the barrier watches the thread's `rseq_cs` (the common case: the handler then
//! writes no memory, since a store every handler makes to one shared line costs the woken
//! threads more than the naive broadcast's handlers pay), or by recording the current
//! acknowledgement generation in the thread's registry slot, or in a cell of its thread id for
//! rounds that know a thread by its id only. Every other signal of the number goes to the
//! program's disposition. It is installed with `SA_RESTART`, so interrupted system calls resume
//! (calls that never restart, such as `sigtimedwait()`, `nanosleep()` or `epoll_wait()`, return
//! EINTR, as with glibc's own SIGSETXID), and it makes no call that sets `errno`:
//! async-signal-safe, allocation-free, errno kept.

use crate::real::{self, Next};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::{Relaxed, SeqCst}};
use libc::{c_int, sigset_t};

/// The reserved signal, 0 until [`init`] picks it.
static RESERVED: AtomicI32 = AtomicI32::new(0);

/// The reserved signal number (0 before the constructor ran).
pub fn reserved() -> c_int {
    RESERVED.load(Relaxed)
}

/// Set when the constructor could not install rseqrt's handler on the chosen number: the
/// number's disposition is then the kernel's alone again.
static INSTALL_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether `sig` is the number rseqrt shares with the program: from the moment it is chosen
/// (before the constructor installs the handler, when a library initialized earlier read
/// `SIGRTMAX`), unless that install failed.
fn shared(sig: c_int) -> bool {
    sig != 0 && sig == crate::rtsig::taken() && !INSTALL_FAILED.load(Relaxed)
}

/// Acknowledgement cells, indexed by thread id modulo their number: (tid << 32) | generation.
/// (Requests that name a registry slot are acknowledged there: `registry::acknowledged`.)
const ACK_CELLS: usize = 4096;
static ACKS: [AtomicU64; ACK_CELLS] = [const { AtomicU64::new(0) }; ACK_CELLS];
static ACK_GENERATION: AtomicU32 = AtomicU32::new(0);

/// What the handler records for a request, carried in its `si_uid`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ack {
    /// Nothing: the barrier watches the thread's `rseq_cs`, which its kernel changes as it
    /// delivers the signal.
    None,
    /// The generation, in the cell of the thread id ([`acknowledged`]).
    Cell,
    /// The generation, in this registry slot (`registry::acknowledged`).
    Slot(usize),
}

/// `si_uid` of a request that wants no acknowledgement (0: the cell; n: slot n - 1).
const UID_NO_ACK: u32 = u32::MAX;

impl Ack {
    fn to_uid(self) -> u32 {
        match self {
            Ack::None => UID_NO_ACK,
            Ack::Cell => 0,
            // Slots are far fewer than u32::MAX - 1 (a slot per thread).
            Ack::Slot(idx) => idx as u32 + 1,
        }
    }

    fn from_uid(uid: u32) -> Ack {
        match uid {
            UID_NO_ACK => Ack::None,
            0 => Ack::Cell,
            n => Ack::Slot(n as usize - 1),
        }
    }
}

extern "C" fn on_reserved_signal(sig: c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passed `info` and `context` to this SA_SIGINFO handler.
    match unsafe { crate::sigshare::as_request(info) } {
        Some(request) => acknowledge(request),
        // SAFETY: as above.
        None => unsafe { crate::sigshare::dispatch(sig, info, context) },
    }
}

/// Records that the calling thread ran the handler for `request`, which names the thread it was
/// sent to (only that thread can take it: the signal is thread-directed) and where to
/// acknowledge. So the handler needs neither `gettid` nor TLS, which a `clone()` thread sharing
/// its parent's thread pointer would read as its parent's. A slot is acknowledged when it is
/// LIVE with that thread (its own line: thousands of threads acknowledge at once without
/// sharing); a cell is shared by the thread ids equal modulo [`ACK_CELLS`] (a round resends when
/// an acknowledgement was overwritten). Async-signal-safe: loads and at most one store.
fn acknowledge(request: &crate::platform::QueuedSiginfo) {
    let tid = request.pid;
    match Ack::from_uid(request.uid) {
        Ack::None => {}
        Ack::Cell => ACKS[ack_cell(tid)].store(((tid as u32 as u64) << 32) | ACK_GENERATION.load(SeqCst) as u64, SeqCst),
        Ack::Slot(idx) => crate::registry::acknowledge(idx, tid, ACK_GENERATION.load(SeqCst)),
    }
}

/// Sends the barrier's request to thread `tid` of process `pid`: the reserved signal, queued
/// with the value that tells the handler it is rseqrt's (`sigshare`), the target thread id as
/// `si_pid` and what to acknowledge ([`Ack`]) as `si_uid`. Async-signal-safe.
pub fn request(pid: i32, tid: i32, ack: Ack) -> crate::platform::SysResult<()> {
    crate::platform::tgsigqueueinfo(pid, tid, reserved(), libc::SI_QUEUE, tid, ack.to_uid(), crate::sigshare::request_value())
}

/// The acknowledgement cell of thread `tid` (two threads sharing one must not be signalled in
/// the same round).
pub fn ack_cell(tid: i32) -> usize {
    tid as u32 as usize % ACK_CELLS
}

/// Starts a round of signals: acknowledgements carrying this generation or a later one were
/// made by handlers that ran after this call.
pub fn next_ack_generation() -> u32 {
    ACK_GENERATION.fetch_add(1, SeqCst).wrapping_add(1)
}

/// The current acknowledgement generation (the last round's).
pub fn ack_generation() -> u32 {
    ACK_GENERATION.load(SeqCst)
}

/// Whether thread `tid` ran the handler since `next_ack_generation()` returned `generation`,
/// by its cell (threads that share it may overwrite it: the round then resends).
pub fn acknowledged(tid: i32, generation: u32) -> bool {
    let cell = ACKS[ack_cell(tid)].load(SeqCst);
    (cell >> 32) as u32 == tid as u32 && (cell as u32).wrapping_sub(generation) as i32 >= 0
}

/// Whether thread `tid` blocks the reserved signal; `Err` when it is gone.
pub fn blocks_reserved(tid: i32) -> crate::platform::SysResult<bool> {
    let sig = reserved();
    crate::platform::blocked_signals(tid).map(|mask| sig > 0 && mask & crate::sigshare::bit(sig) != 0)
}

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

fn next_sigaction() -> Option<SigactionFn> {
    // SAFETY: the C library's sigaction has this signature.
    (real::SIGACTION.get() != 0).then(|| unsafe { core::mem::transmute::<usize, SigactionFn>(real::SIGACTION.get()) })
}

/// Installs the reserved signal's handler (constructor time). The signal is chosen (or was, by
/// an earlier read of `SIGRTMAX`) in `rtsig`, which also takes it out of glibc's range.
pub fn init() {
    let Some(sigaction) = next_sigaction() else { return };
    let Some(chosen) = crate::rtsig::chosen() else { return };
    crate::sigshare::init();
    type Handler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);
    // SAFETY: all-zero sigactions are valid; `act` gets our handler, SA_SIGINFO|SA_RESTART and
    // an empty mask; `old` receives the disposition it replaces.
    let (ok, old) = unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        let mut old: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = on_reserved_signal as Handler as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        (sigaction(chosen, &act, &mut old) == 0, old)
    };
    if ok {
        // A disposition set before ours (RSEQRT_SIGNAL naming a handled or inherited-ignored
        // signal) stays the program's, unless the program already set one through rseqrt.
        if old.sa_sigaction != libc::SIG_DFL && !crate::sigshare::written() {
            crate::sigshare::exchange(Some(crate::sigshare::Disposition::from_sigaction(&old)));
        }
        RESERVED.store(chosen, Relaxed);
    } else {
        // Give the kernel what the program set through rseqrt meanwhile, and stop sharing.
        INSTALL_FAILED.store(true, Relaxed);
        if crate::sigshare::written() {
            let mut act = old;
            crate::sigshare::exchange(None).to_sigaction(&mut act);
            // SAFETY: a valid sigaction for the chosen number.
            unsafe { sigaction(chosen, &act, core::ptr::null_mut()) };
        }
    }
}

/// `set` without the reserved signal, when it contains it.
fn without_reserved(set: *const sigset_t) -> Option<sigset_t> {
    let sig = reserved();
    // SAFETY: the caller's set is a valid sigset_t (checked non-null first).
    if sig == 0 || set.is_null() || unsafe { libc::sigismember(set, sig) } != 1 {
        return None;
    }
    // SAFETY: as above; the copy is ours to edit.
    let mut copy = unsafe { *set };
    // SAFETY: `copy` is a valid sigset_t and `sig` a valid signal number.
    unsafe { libc::sigdelset(&mut copy, sig) };
    Some(copy)
}

/// Calls the next definition `next` (of type `F`) with `set`, replaced by a copy without the
/// reserved signal when `filter` is set and the set contains it.
///
/// # Safety
/// `F` must be the type of the next definition of the interposed name.
unsafe fn forward<F: Copy, R>(
    next: &Next,
    set: *const sigset_t,
    filter: bool,
    call: impl FnOnce(F, *const sigset_t) -> R,
    missing: impl FnOnce() -> R,
) -> R {
    let addr = next.get();
    if addr == 0 {
        return missing();
    }
    // SAFETY: the caller guarantees `F` is the next definition's type.
    let f: F = unsafe { core::mem::transmute_copy(&addr) };
    match without_reserved(set).filter(|_| filter) {
        Some(copy) => call(f, &copy),
        None => call(f, set),
    }
}

fn enosys() -> c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

type MaskFn = unsafe extern "C" fn(c_int, *const sigset_t, *mut sigset_t) -> c_int;

/// `pthread_sigmask(3)` that never blocks the reserved signal. Async-signal-safe.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: forwarding to the C library's pthread_sigmask.
    unsafe { forward::<MaskFn, _>(&real::PTHREAD_SIGMASK, set, how != libc::SIG_UNBLOCK, |f, s| f(how, s, old), || libc::ENOSYS) }
}

/// `sigprocmask(2)` that never blocks the reserved signal. Async-signal-safe.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: forwarding to the C library's sigprocmask.
    unsafe { forward::<MaskFn, _>(&real::SIGPROCMASK, set, how != libc::SIG_UNBLOCK, |f, s| f(how, s, old), enosys) }
}

/// `sigaction(2)`: on the number rseqrt shares with the program ([`shared`]), sets and reports
/// the program's own disposition (`sigshare`); other signals pass through. Async-signal-safe.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if shared(sig) {
        // SAFETY: the caller's pointers are null or valid sigactions.
        let new = unsafe { act.as_ref() }.map(crate::sigshare::Disposition::from_sigaction);
        let previous = crate::sigshare::exchange(new);
        // SAFETY: as above.
        if let Some(out) = unsafe { old.as_mut() } {
            previous.to_sigaction(out);
        }
        return 0;
    }
    match next_sigaction() {
        // SAFETY: forwarding the caller's arguments.
        Some(f) => unsafe { f(sig, act, old) },
        None => enosys(),
    }
}

/// `signal(2)`: on the reserved signal's number, sets the program's own disposition with
/// `signal()`'s BSD semantics (`SA_RESTART`, the signal blocked in its handler), as `sigaction`
/// does; glibc's own `signal()` would bypass rseqrt's `sigaction()`.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if shared(sig) {
        let new = crate::sigshare::Disposition { handler, flags: libc::SA_RESTART, mask: crate::sigshare::bit(sig) };
        return crate::sigshare::exchange(Some(new)).handler;
    }
    type F = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    match real::SIGNAL.get() {
        0 => {
            enosys();
            libc::SIG_ERR
        }
        // SAFETY: the C library's signal() has this signature.
        addr => unsafe { core::mem::transmute::<usize, F>(addr)(sig, handler) },
    }
}

/// `sigsuspend(2)` whose temporary mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigsuspend(mask: *const sigset_t) -> c_int {
    type F = unsafe extern "C" fn(*const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's sigsuspend.
    unsafe { forward::<F, _>(&real::SIGSUSPEND, mask, true, |f, s| f(s), enosys) }
}

/// `ppoll(2)` whose temporary mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: *const libc::timespec, mask: *const sigset_t) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, *const libc::timespec, *const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's ppoll.
    unsafe { forward::<F, _>(&real::PPOLL, mask, true, |f, s| f(fds, n, timeout, s), enosys) }
}

/// `pselect(2)` whose temporary mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    mask: *const sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *const libc::timespec, *const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's pselect.
    unsafe { forward::<F, _>(&real::PSELECT, mask, true, |f, s| f(n, r, w, e, timeout, s), enosys) }
}

/// `epoll_pwait(2)` whose temporary mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_epoll_pwait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const sigset_t) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's epoll_pwait.
    unsafe { forward::<F, _>(&real::EPOLL_PWAIT, mask, true, |f, s| f(epfd, events, max, timeout, s), enosys) }
}

/// `epoll_pwait2(2)` whose temporary mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    mask: *const sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, *const libc::timespec, *const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's epoll_pwait2.
    unsafe { forward::<F, _>(&real::EPOLL_PWAIT2, mask, true, |f, s| f(epfd, events, max, timeout, s), enosys) }
}

/// `pthread_attr_setsigmask_np(3)`: the new thread's initial mask never blocks the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_pthread_attr_setsigmask_np(attr: *mut libc::pthread_attr_t, mask: *const sigset_t) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::pthread_attr_t, *const sigset_t) -> c_int;
    // SAFETY: forwarding to the C library's pthread_attr_setsigmask_np.
    unsafe { forward::<F, _>(&real::PTHREAD_ATTR_SETSIGMASK_NP, mask, true, |f, s| f(attr, s), || libc::ENOSYS) }
}

/// `sigwait(3)` that never consumes the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigwait(set: *const sigset_t, sig: *mut c_int) -> c_int {
    type F = unsafe extern "C" fn(*const sigset_t, *mut c_int) -> c_int;
    // SAFETY: forwarding to the C library's sigwait.
    unsafe { forward::<F, _>(&real::SIGWAIT, set, true, |f, s| f(s, sig), || libc::ENOSYS) }
}

/// `sigwaitinfo(2)` that never consumes the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigwaitinfo(set: *const sigset_t, info: *mut libc::siginfo_t) -> c_int {
    type F = unsafe extern "C" fn(*const sigset_t, *mut libc::siginfo_t) -> c_int;
    // SAFETY: forwarding to the C library's sigwaitinfo.
    unsafe { forward::<F, _>(&real::SIGWAITINFO, set, true, |f, s| f(s, info), enosys) }
}

/// `sigtimedwait(2)` that never consumes the reserved signal.
#[no_mangle]
pub unsafe extern "C" fn rseqrt_interpose_sigtimedwait(set: *const sigset_t, info: *mut libc::siginfo_t, timeout: *const libc::timespec) -> c_int {
    type F = unsafe extern "C" fn(*const sigset_t, *mut libc::siginfo_t, *const libc::timespec) -> c_int;
    // SAFETY: forwarding to the C library's sigtimedwait.
    unsafe { forward::<F, _>(&real::SIGTIMEDWAIT, set, true, |f, s| f(s, info, timeout), enosys) }
}
