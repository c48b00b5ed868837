//! The Rust interface, used the way a Rust program uses the crate (linked into the executable).
//! These run under plain `cargo test`: on glibc 2.35+ glibc owns registration; before it the crate
//! owns it, and a Rust program's threads (which do not pass through an interposed
//! `pthread_create`) register themselves, as each test does first.

use rseqrt::{Errno, Owner};

fn getcpu() -> (u32, u32) {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: both pointers are live locals.
    let rc = unsafe { libc::syscall(libc::SYS_getcpu, &mut cpu as *mut u32, &mut node as *mut u32, 0usize) };
    assert_eq!(rc, 0, "getcpu");
    (cpu, node)
}

/// What a thread of a Rust program does before it uses rseq: register (where glibc did, EBUSY).
fn register_this_thread() {
    let r = rseqrt::register_current_thread();
    assert!(matches!(r, Ok(()) | Err(Errno(libc::EBUSY))), "register: {r:?}");
}

#[test]
fn owner_and_area_match_glibcs_view() {
    register_this_thread();
    let owner = rseqrt::owner();
    println!("owner {owner:?}, feature size {}, area length {}", rseqrt::kernel_feature_size(), rseqrt::area_length());
    assert_ne!(owner, Owner::None, "rseq is available on this kernel (see the facts note)");
    let area = rseqrt::area().expect("a registered area");
    // SAFETY: the calling thread's own area.
    let cpu_id = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*area.as_ptr()).cpu_id)) } as i32;
    assert!(cpu_id >= 0, "cpu_id {cpu_id} of a registered area");
    assert!(rseqrt::area_length() >= 32);
    assert!(rseqrt::kernel_feature_size() >= 20);
}

#[test]
fn current_cpu_node_and_mm_cid_agree_with_the_kernel() {
    register_this_thread();
    // Retry a few times: the thread may migrate between the two reads.
    let agrees = (0..100).any(|_| {
        let (cpu, node) = getcpu();
        rseqrt::current_cpu() == Ok(cpu) && rseqrt::current_node() == Ok(node)
    });
    assert!(agrees, "current_cpu/current_node never agreed with getcpu(2)");
    let ncpu = std::thread::available_parallelism().map_or(1024, |n| n.get()) as u32;
    match rseqrt::current_mm_cid() {
        Ok(cid) => assert!(cid < ncpu.max(1) * 2, "mm_cid {cid} is small (a concurrency id)"),
        Err(e) => assert!(rseqrt::kernel_feature_size() < 28, "mm_cid missing ({e:?}) though the kernel offers it"),
    }
}

#[test]
fn threads_enter_the_registry_and_the_barrier_sees_them() {
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                // Where glibc registered this thread already: EBUSY, but it joins the registry.
                register_this_thread();
                rseqrt::current_cpu().expect("cpu")
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    // Nothing refers to an arbitrary range; clearing everything succeeds too.
    let page = [0u8; 64];
    assert_eq!(rseqrt::clear(&[rseqrt::barrier::Range::new(page.as_ptr() as usize, page.len())], 0), Ok(()));
    assert_eq!(rseqrt::clear_all(0), Ok(()));
    assert_eq!(rseqrt::clear_all(0x80), Err(Errno(libc::EINVAL)), "unknown flags are refused");
}

#[test]
fn reserved_signal_is_a_real_time_signal() {
    // The default: the highest real-time signal, taken out of glibc's range (glibc's own
    // `SIGRTMAX` reads one less), in a Rust program too.
    let sig = rseqrt::reserved_signal();
    assert_eq!(sig, libc::SIGRTMAX() + 1, "reserved signal {sig}, SIGRTMAX {}", libc::SIGRTMAX());
    assert!((libc::SIGRTMIN()..=64).contains(&sig), "reserved signal {sig}");
}
