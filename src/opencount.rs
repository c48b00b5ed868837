//! glibc's count of open handles on a loaded object: `l_direct_opencount` in its private
//! `struct link_map`, found by measuring.
//!
//! Why it matters: `dlclose(handle)` unloads only objects that nothing uses any more. glibc's
//! `_dl_close_worker` (`elf/dl-close.c`, 2.31 to 2.41) keeps every object whose
//! `l_direct_opencount` is non-zero (a `dlopen()` handle on it is still open), with its
//! dependencies. So an object loaded after startup that still has an open handle is not one a
//! close of another handle may unmap, and `rseqrt_dlclose()` need not make the threads that refer
//! to it take a signal (`unmap`).
//!
//! The field's offset differs between glibc versions and builds, and no public interface reports
//! it, so it is measured once, on rseqrt's own link map: `dlopen(own name, RTLD_NOLOAD)` twice
//! (glibc's `dl_open_worker` adds one to the count of an object already loaded, and nothing else
//! of its link map changes), then `dlclose()` of both. The one 32-bit word that read +1, +2 and
//! back is the count; anything else (no such word, or several) leaves the offset unknown, and
//! every object loaded after startup stays one that may be unmapped, as before.
//!
//! [`calibrate`] calls the loader (not from a signal handler; glibc's load lock is recursive, so
//! a constructor or destructor that closes a handle may call it);
//! [`open_handles`]: loads only, inside a `dl_iterate_phdr()` callback (whose `dl_load_write_lock`
//! keeps the map listed) or while rseqrt's unloads wait (`loaded`). glibc changes the count under
//! another lock (`dl_load_lock`), so the value can change right after it is read:
//! `unmap::CloseLock` keeps other closes through rseqrt from changing it before the close that
//! read it has finished.

use crate::elf::LinkMap;
use core::sync::atomic::{AtomicUsize, Ordering::{AcqRel, Acquire, Release}};

/// Bytes of a link map compared. glibc's structure is larger on x86-64 (its `l_info` array
/// alone is over 600 bytes), and it is allocated with room after it (the name follows).
const SNAPSHOT_WORDS: usize = 256;

const UNMEASURED: usize = 0;
const MEASURING: usize = 1;
const UNKNOWN: usize = 2;
/// `MEASURED + offset`: the measured offset.
const MEASURED: usize = 3;
static STATE: AtomicUsize = AtomicUsize::new(UNMEASURED);

/// Measures the offset, once per process (the first caller measures; the others go on without
/// it until it is known).
pub fn calibrate() {
    if STATE.load(Acquire) != UNMEASURED || STATE.compare_exchange(UNMEASURED, MEASURING, AcqRel, Acquire).is_err() {
        return;
    }
    let found = measure().map_or(UNKNOWN, |offset| MEASURED + offset);
    STATE.store(found, Release);
}

/// The number of open `dlopen()` handles on `m`; `None` while the offset is not known.
///
/// # Safety
/// `m` must be a loaded object that cannot be unloaded meanwhile: under the loader's lock, or
/// while rseqrt's unloads wait (`loaded`). Outside the loader's lock the count may be changing.
pub unsafe fn open_handles(m: *const LinkMap) -> Option<u32> {
    let offset = STATE.load(Acquire).checked_sub(MEASURED)?;
    // SAFETY: the caller guarantees the map is live; the offset lies inside its structure.
    Some(unsafe { core::ptr::read_volatile((m as *const u8).add(offset) as *const u32) })
}

fn snapshot(m: *const LinkMap) -> [u32; SNAPSHOT_WORDS] {
    let mut out = [0u32; SNAPSHOT_WORDS];
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: the map is rseqrt's own, live for the process; SNAPSHOT_WORDS words lie
        // inside glibc's allocation of it (see SNAPSHOT_WORDS). Other threads may write some of
        // its fields meanwhile: that can only make the measurement fail (no single word moving
        // +1, +2, back), never pick a wrong one.
        *w = unsafe { core::ptr::read_volatile((m as *const u32).add(i)) };
    }
    out
}

/// rseqrt's own link map: the listed object whose dynamic section is rseqrt's.
fn own_map() -> Option<*const LinkMap> {
    let own = crate::arch::own_dynamic_section();
    // SAFETY: ld.so's list of the main namespace; rseqrt's entry stays listed while it runs.
    let mut m: *const LinkMap = unsafe { (*core::ptr::addr_of!(crate::elf::_r_debug)).r_map };
    while !m.is_null() {
        // SAFETY: as above.
        unsafe {
            if (*m).l_ld as usize == own {
                return Some(m);
            }
            m = (*m).l_next;
        }
    }
    None
}

fn measure() -> Option<usize> {
    let (open, close) = (crate::real::DLOPEN.get(), crate::real::DLCLOSE.get());
    if open == 0 || close == 0 {
        return None;
    }
    // SAFETY: the C library's dlopen and dlclose have these signatures.
    let (open, close) = unsafe {
        (
            core::mem::transmute::<usize, unsafe extern "C" fn(*const libc::c_char, libc::c_int) -> *mut libc::c_void>(open),
            core::mem::transmute::<usize, unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int>(close),
        )
    };
    let me = own_map()?;
    // SAFETY: the map is live.
    let name = unsafe { (*me).l_name };
    // SAFETY: a non-null name is a NUL-terminated path, so its first byte is readable.
    if name.is_null() || unsafe { *name } == 0 {
        return None;
    }
    let before = snapshot(me);
    // SAFETY: RTLD_NOLOAD only adds a reference to an object already loaded.
    let first = unsafe { open(name.cast(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if first.is_null() {
        return None;
    }
    let once = snapshot(me);
    // SAFETY: as above.
    let second = unsafe { open(name.cast(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    let twice = snapshot(me);
    // SAFETY: closing the two references just taken: the object stays loaded (rseqrt runs).
    unsafe {
        if !second.is_null() {
            close(second);
        }
        close(first);
    }
    let after = snapshot(me);
    if second.is_null() {
        return None;
    }
    let mut found = None;
    for i in 0..SNAPSHOT_WORDS {
        if once[i] == before[i].wrapping_add(1) && twice[i] == before[i].wrapping_add(2) && after[i] == before[i] {
            if found.is_some() {
                return None; // ambiguous
            }
            found = Some(i * 4);
        }
    }
    found
}
