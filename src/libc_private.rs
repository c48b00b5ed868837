//! Two facts about glibc's threads that glibc publishes for debuggers (libthread_db) as
//! `GLIBC_PRIVATE` data in libc.so.6: its count of the threads it created (`__nptl_nthreads`) and
//! where its thread descriptor keeps the kernel thread id (`_thread_db_pthread_tid`: bit size,
//! count, byte offset). Looked up once by the constructor; absent (another C library, a future
//! glibc that drops them) they read as unknown and callers take their slower general path.
//!
//! Guarantees: after [`init`], every function is async-signal-safe, malloc-free and lock-free.

use core::ffi::CStr;
use core::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU32, Ordering::{Relaxed, SeqCst}};

static THREAD_COUNT: AtomicPtr<AtomicU32> = AtomicPtr::new(core::ptr::null_mut());
/// Byte offset of the thread id in glibc's thread descriptor, or -1.
static TID_OFFSET: AtomicIsize = AtomicIsize::new(-1);

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
    let desc = lookup(libc_handle, c"_thread_db_pthread_tid").cast::<[u32; 3]>();
    if !desc.is_null() {
        // SAFETY: libthread_db's descriptor: three 32-bit words (bits, count, offset).
        let [bits, count, offset] = unsafe { desc.read() };
        if bits == 32 && count == 1 && offset < 4096 {
            TID_OFFSET.store(offset as isize, Relaxed);
            if current_tid() != Some(crate::platform::gettid()) {
                TID_OFFSET.store(-1, Relaxed);
            }
        }
    }
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
