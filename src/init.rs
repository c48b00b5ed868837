//! The constructor (returned by the relocation-time resolver, run from `.init_array` before any
//! constructor of the program) and the `fork()` child handler.

use crate::registration;
use crate::registry;
use crate::state::{self, NoneReason, Owner};
use crate::{platform, real, signal, thread};

/// Runs once per process, in the thread that loads rseqrt (the main thread at startup).
pub extern "C" fn run() {
    // The exit key first, so that it is one of the C library's preallocated keys.
    thread::init_exit_hook();
    crate::config::load();
    real::resolve_all();
    platform::note_clock(crate::libc_private::libc_symbol(c"clock_gettime", c"GLIBC_2.17"));
    crate::census::init();
    crate::libc_private::init();
    crate::unmap::note_startup_objects();
    crate::permanent::note();
    crate::loaded::note();
    if state::owner() == Owner::SelfOwned {
        if !thread::pthread_create_is_ours() {
            // Loaded too late (dlopen): threads the program creates would bypass rseqrt's
            // pthread_create and run unregistered. Say so instead of handing out an offset
            // that is wrong for them.
            state::downgrade_to_none(NoneReason::LoadedLate);
        } else if let Err(e) = registration::register_area() {
            // Only a racing registration by someone else can get here (the resolver probed the
            // system call): report rseq as unavailable rather than hand out an unregistered area.
            state::downgrade_to_none(NoneReason::RegistrationFailed(e.0));
        }
    }
    registry::set_process(platform::getpid());
    if registration::current_slot().is_none() {
        if let Some(idx) = registry::claim(0, 0) {
            registration::adopt_current_thread(idx, platform::gettid());
        }
    }
    signal::init();
    // SAFETY: registering a plain function as the fork child handler.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
}

/// In the child of `fork()`: the kernel kept the forking thread's rseq registration (same
/// address), as it does for glibc's; only the registry needs to forget the other threads.
extern "C" fn after_fork_child() {
    platform::after_fork();
    crate::sigshare::after_fork_child();
    crate::unmap::after_fork_child();
    crate::loaded::after_fork_child();
    crate::libc_private::after_fork();
    registry::after_fork_child(registration::current_slot(), platform::gettid());
}
