//! Facts about glibc's threads that glibc publishes for debuggers (libthread_db) as
//! `GLIBC_PRIVATE` data: its count of the threads it created (`__nptl_nthreads`), its two lists
//! of thread descriptors (`_dl_stack_used` and `_dl_stack_user` in ld.so's `_rtld_global`), and
//! where a descriptor keeps its list link and the kernel thread id (`_thread_db_pthread_list`,
//! `_thread_db_pthread_tid`: bit size, count, byte offset). Looked up once by the constructor;
//! absent (another C library, a future glibc that drops them) they read as unknown and callers
//! take their slower general path.
//!
//! The lists change while other threads start and exit, and an exited thread's stack may be
//! unmapped, so they are walked with `process_vm_readv` (a read of memory that is gone fails
//! instead of faulting) and for a bounded number of steps; whatever a walk finds is checked
//! against the thread id it looked for.
//!
//! Guarantees: after [`init`], every function is async-signal-safe, malloc-free and lock-free.

use crate::abi::RseqrtArea;
use crate::platform;
use core::ffi::CStr;
use core::mem::{offset_of, size_of, MaybeUninit};
use core::sync::atomic::{AtomicI32, AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize, Ordering::{Relaxed, SeqCst}};

static THREAD_COUNT: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
/// Byte offset of the thread id in glibc's thread descriptor, or -1.
static TID_OFFSET: AtomicIsize = AtomicIsize::new(-1);
/// Addresses of the heads of glibc's two thread lists (0: unknown).
static LIST_HEADS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Byte offset of the list link in glibc's thread descriptor.
static LINK_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// Descriptors found by earlier walks, by thread id (a hint: always checked before use).
const HINTS: usize = 8;
static HINT_TID: [AtomicI32; HINTS] = [const { AtomicI32::new(0) }; HINTS];
static HINT_DESCRIPTOR: [AtomicUsize; HINTS] = [const { AtomicUsize::new(0) }; HINTS];
/// Steps a walk of one list may take (a list being changed under it could loop).
const MAX_WALK: usize = 1 << 16;

fn lookup(libc_handle: *mut libc::c_void, name: &CStr) -> *mut libc::c_void {
    // SAFETY: a handle from dlopen and NUL-terminated names.
    unsafe { libc::dlvsym(libc_handle, name.as_ptr(), c"GLIBC_PRIVATE".as_ptr()) }
}

/// Finds both (constructor time: `dlopen`/`dlvsym` are not async-signal-safe). The thread-id
/// offset is used only if it gives the calling thread's id.
pub fn init() {
    // SAFETY: RTLD_NOLOAD only takes a reference to the loaded C library; never closed.
    let libc_handle = unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if libc_handle.is_null() {
        return;
    }
    THREAD_COUNT.store(lookup(libc_handle, c"__nptl_nthreads").cast(), SeqCst);
    let field = |name: &CStr, want_bits: u32| -> Option<usize> {
        let desc = lookup(libc_handle, name).cast::<[u32; 3]>();
        if desc.is_null() {
            return None;
        }
        // SAFETY: libthread_db's descriptor: three 32-bit words (bits, count, offset).
        let [bits, count, offset] = unsafe { desc.read() };
        (bits == want_bits && count == 1 && offset < 1 << 16).then_some(offset as usize)
    };
    if let Some(offset) = field(c"_thread_db_pthread_tid", 32) {
        TID_OFFSET.store(offset as isize, Relaxed);
        if current_tid() != Some(platform::gettid()) {
            TID_OFFSET.store(-1, Relaxed);
            return;
        }
    }
    // A list link is two pointers (128 bits). `_rtld_global` is ld.so's, a dependency of libc.
    let rtld_global = lookup(libc_handle, c"_rtld_global") as usize;
    let (Some(used), Some(user), Some(link)) = (
        field(c"_thread_db_rtld_global__dl_stack_used", 128),
        field(c"_thread_db_rtld_global__dl_stack_user", 128),
        field(c"_thread_db_pthread_list", 128),
    ) else {
        return;
    };
    if rtld_global == 0 {
        return;
    }
    LINK_OFFSET.store(link, Relaxed);
    LIST_HEADS[0].store(rtld_global + used, Relaxed);
    LIST_HEADS[1].store(rtld_global + user, Relaxed);
    // The calling thread must be found, at its own descriptor.
    if descriptor_of(platform::gettid()) != Some(pthread_self_addr()) {
        LIST_HEADS[0].store(0, Relaxed);
        LIST_HEADS[1].store(0, Relaxed);
    }
}

fn pthread_self_addr() -> usize {
    // SAFETY: pthread_self has no precondition.
    unsafe { libc::pthread_self() as usize }
}

/// Reads a `T` at `addr` of this process, or `None` if that memory is not mapped.
fn peek<T: Copy>(addr: usize) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: `v` is a live local of `size_of::<T>()` bytes.
    match unsafe { platform::read_own_memory(v.as_mut_ptr().cast(), addr, size_of::<T>()) } {
        // SAFETY: the kernel filled all of `v`; the `T`s used here (integers) are valid for any
        // bytes.
        Ok(n) if n == size_of::<T>() => Some(unsafe { v.assume_init() }),
        _ => None,
    }
}

/// The address of glibc's descriptor of the live thread `tid`, or `None` (not a thread glibc
/// started, gone, or the lists are unknown).
fn descriptor_of(tid: i32) -> Option<usize> {
    let tid_offset = usize::try_from(TID_OFFSET.load(Relaxed)).ok()?;
    let has_tid = |pd: usize| peek::<i32>(pd + tid_offset) == Some(tid);
    let hint = tid as u32 as usize % HINTS;
    if HINT_TID[hint].load(Relaxed) == tid {
        let pd = HINT_DESCRIPTOR[hint].load(Relaxed);
        if pd != 0 && has_tid(pd) {
            return Some(pd);
        }
    }
    let link = LINK_OFFSET.load(Relaxed);
    for head in &LIST_HEADS {
        let head = head.load(Relaxed);
        if head == 0 {
            return None;
        }
        // `next` is the first word of a link.
        let mut node = peek::<usize>(head)?;
        for _ in 0..MAX_WALK {
            if node == head || node < link {
                break;
            }
            let pd = node - link;
            if has_tid(pd) {
                HINT_TID[hint].store(tid, Relaxed);
                HINT_DESCRIPTOR[hint].store(pd, Relaxed);
                return Some(pd);
            }
            node = peek::<usize>(node)?;
        }
    }
    None
}

/// The `rseq_cs` of the live glibc thread `tid`, read from glibc's area in its descriptor (the
/// descriptor is its thread pointer on x86-64; the area is at glibc's `__rseq_offset`, which is
/// rseqrt's [`area_offset`](crate::state::area_offset) where glibc owns registration). `None`
/// when the thread cannot be found; a value is returned only if the descriptor still names the
/// thread after it was read.
pub fn libc_thread_rseq_cs(tid: i32) -> Option<u64> {
    let pd = descriptor_of(tid)?;
    let field = pd.checked_add_signed(crate::state::area_offset())? + offset_of!(RseqrtArea, rseq_cs);
    let value = peek::<u64>(field)?;
    let tid_offset = usize::try_from(TID_OFFSET.load(Relaxed)).ok()?;
    (peek::<i32>(pd + tid_offset) == Some(tid)).then_some(value)
}

/// glibc's count of its live threads (incremented by `pthread_create()` before the clone,
/// decremented by the exiting thread after its TSD destructors), or `None`.
pub fn thread_count() -> Option<usize> {
    let count = THREAD_COUNT.load(SeqCst);
    // SAFETY: glibc's `unsigned int __nptl_nthreads`, a static of libc.so.6 (never unloaded),
    // which glibc changes only with atomic instructions.
    (!count.is_null()).then(|| unsafe { (*count).load(SeqCst) } as usize)
}

/// The calling thread's id as glibc's descriptor holds it (no system call), or `None`. Only for
/// threads glibc started: its descriptor is what `pthread_self()` points to.
pub fn current_tid() -> Option<i32> {
    let offset = TID_OFFSET.load(Relaxed);
    if offset < 0 {
        return None;
    }
    // SAFETY: `pthread_self()` is the calling glibc thread's descriptor, which holds the id at
    // `offset` (libthread_db's descriptor said so, and `init` checked it on the main thread).
    let tid = unsafe { (libc::pthread_self() as *const u8).offset(offset).cast::<i32>().read_volatile() };
    Some(tid)
}
