//! Registering and unregistering the calling thread's rseq area with the kernel, and entering it
//! in the registry. Thread start (`thread`), the constructor (`init`) and the C entry points call
//! these.
//!
//! Guarantees: async-signal-safe and malloc-free, except that [`adopt_current_thread`] calls
//! `pthread_setspecific` (no allocation for rseqrt's key, which is created first thing by the
//! constructor and so falls in glibc's preallocated first block of keys).

use crate::abi::{CPU_ID_REGISTRATION_FAILED, CPU_ID_UNINITIALIZED, FLAG_UNREGISTER};
use crate::platform::{self, SysResult};
use crate::registry::{self, SlotIndex};
use crate::state;
use crate::{arch, thread};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Registers the calling thread's area (thread pointer + `__rseq_offset`) with the kernel.
/// Already registered: `Err(EBUSY)`, area untouched. Failure: `cpu_id` reads -2, as in glibc.
pub fn register_area() -> SysResult<()> {
    let area = state::current_area();
    // SAFETY: `area` is this thread's own area (TLS or glibc's struct pthread); only this thread
    // and its kernel write it.
    unsafe {
        if (read_volatile(addr_of_mut!((*area).cpu_id)) as i32) < 0 {
            // Not registered: give the kernel a clean area to start from, as glibc does.
            clear_own_rseq_cs();
            write_volatile(addr_of_mut!((*area).flags), 0);
            write_volatile(addr_of_mut!((*area).cpu_id_start), 0);
            write_volatile(addr_of_mut!((*area).cpu_id), CPU_ID_UNINITIALIZED as u32);
        }
        let r = platform::rseq(area.cast(), state::registration_length(), 0, arch::RSEQ_SIG);
        if r.is_err() && read_volatile(addr_of_mut!((*area).cpu_id)) as i32 == CPU_ID_UNINITIALIZED {
            write_volatile(addr_of_mut!((*area).cpu_id), CPU_ID_REGISTRATION_FAILED as u32);
        }
        r
    }
}

/// Unregisters the calling thread's area; afterwards its `cpu_id` reads -2 again.
pub fn unregister_area() -> SysResult<()> {
    let area = state::current_area();
    // SAFETY: unregistering this thread's own area.
    unsafe { platform::rseq(area.cast(), state::registration_length(), FLAG_UNREGISTER, arch::RSEQ_SIG) }?;
    // SAFETY: this thread's own area, now unknown to the kernel.
    unsafe { write_volatile(addr_of_mut!((*area).cpu_id), CPU_ID_REGISTRATION_FAILED as u32) };
    Ok(())
}

/// Enters the calling thread, whose id is `tid`, in the registry (slot `idx`, already claimed)
/// and arranges for the slot to be freed at thread exit.
pub fn adopt_current_thread(idx: SlotIndex, tid: i32) {
    if !thread::arm_exit_hook(idx) {
        // Nothing would take the thread out of the registry at exit: leave it unknown (barriers
        // then reach it by signal, as any thread they did not start).
        registry::release(idx);
        return;
    }
    // SAFETY: the TLS slot word belongs to this thread.
    unsafe { *arch::tls_slot() = idx as u64 + 1 };
    // An area registered before (by glibc, or by the program: `rseqrt_register_current_thread()`
    // adopting it) may hold a stale `rseq_cs`. A barrier that scanned before this entry missed
    // the thread, and its look for unknown threads, after, finds it known: so the thread clears
    // its own field first (it is in rseqrt's code, outside any critical section).
    clear_own_rseq_cs();
    registry::activate(idx, tid, state::current_area());
}

/// The calling thread's registry slot, if it has one.
pub fn current_slot() -> Option<SlotIndex> {
    // SAFETY: the TLS slot word belongs to this thread.
    match unsafe { *arch::tls_slot() } {
        0 => None,
        n => Some(n as usize - 1),
    }
}

/// Thread exit (the last destructor round): unregisters the area, in every owner mode, so that no
/// code still to run in this thread can leave a `rseq_cs` the kernel would read, then leaves the
/// registry.
pub fn retire_current_thread() {
    if current_slot().is_some() {
        clear_own_rseq_cs();
        let _ = unregister_area();
    }
    forget_current_thread();
}

/// Leaves the registry (thread exit or explicit unregistration).
pub fn forget_current_thread() {
    if let Some(idx) = current_slot() {
        // A barrier that sees the slot go knows no stale value remains: the thread cleared it.
        clear_own_rseq_cs();
        // SAFETY: the TLS slot word belongs to this thread.
        unsafe { *arch::tls_slot() = 0 };
        registry::release(idx);
    }
}

/// Clears the calling thread's own `rseq_cs`. Safe at any time: the thread is in user space, so
/// its kernel is not reading the descriptor. An atomic store, as barriers in other threads read
/// the field concurrently.
pub fn clear_own_rseq_cs() {
    let area = state::current_area();
    // SAFETY: this thread's own area, valid for its lifetime in every owner mode; the field is
    // 8-byte aligned, and other threads only load it atomically.
    unsafe { AtomicU64::from_ptr(addr_of_mut!((*area).rseq_cs)).store(0, Relaxed) };
}

/// Runs `f` with the calling thread's area unregistered (when it is registered), then clears the
/// thread's `rseq_cs` and registers the area again. While unregistered, the kernel reads nothing
/// of the area, so `f` may free memory that the thread's own critical sections refer to.
pub fn with_own_area_unregistered<R>(f: impl FnOnce() -> R) -> R {
    let area = state::current_area();
    // SAFETY: this thread's own area (valid in every owner mode).
    let registered = state::owner() != state::Owner::None && unsafe { read_volatile(addr_of_mut!((*area).cpu_id)) } as i32 >= 0;
    if !registered || unregister_area().is_err() {
        return f();
    }
    let result = f();
    clear_own_rseq_cs();
    let _ = register_area();
    result
}
