//! Platform layer: every system call rseqrt makes, as a raw `syscall` instruction (see `arch`).
//!
//! Guarantees for every function here: async-signal-safe, no allocation, no lock, no PLT call,
//! `errno` untouched (errors come back as `Err(Errno)`). That makes them usable from the
//! relocation-time resolver, signal handlers, thread start/exit and the `munmap` path. One
//! exception: once the constructor has run, [`monotonic_ns`] calls the C library's own
//! `clock_gettime` (the vDSO: no system call) through the pointer the constructor found and
//! handed to [`note_clock`].

use crate::arch::syscall6;

/// A kernel error number (positive, as in `errno`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type SysResult<T> = Result<T, Errno>;


#[inline(always)]
fn check(ret: isize) -> SysResult<usize> {
    if (-4095..0).contains(&ret) { Err(Errno(-ret as i32)) } else { Ok(ret as usize) }
}

macro_rules! sys {
    ($nr:expr) => { check(syscall6($nr, 0, 0, 0, 0, 0, 0)) };
    ($nr:expr, $a:expr) => { check(syscall6($nr, $a as usize, 0, 0, 0, 0, 0)) };
    ($nr:expr, $a:expr, $b:expr) => { check(syscall6($nr, $a as usize, $b as usize, 0, 0, 0, 0)) };
    ($nr:expr, $a:expr, $b:expr, $c:expr) => { check(syscall6($nr, $a as usize, $b as usize, $c as usize, 0, 0, 0)) };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        check(syscall6($nr, $a as usize, $b as usize, $c as usize, $d as usize, 0, 0))
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        check(syscall6($nr, $a as usize, $b as usize, $c as usize, $d as usize, $e as usize, $f as usize))
    };
}

/// `rseq(2)`: register (flags 0) or unregister (`RSEQ_FLAG_UNREGISTER`) an area for this thread.
///
/// # Safety
/// A registered area must stay valid, and be written only by this thread and its kernel, until
/// it is unregistered or the thread exits (thread-lifetime memory: TLS or glibc's struct pthread).
pub unsafe fn rseq(area: *mut u8, len: u32, flags: u32, sig: u32) -> SysResult<()> {
    // SAFETY: the kernel validates the address (EFAULT); the caller keeps the area alive.
    unsafe { sys!(libc::SYS_rseq, area, len, flags, sig) }.map(drop)
}

/// `membarrier(2)`.
pub fn membarrier(cmd: i32, flags: u32) -> SysResult<usize> {
    // SAFETY: membarrier takes no pointers.
    unsafe { sys!(libc::SYS_membarrier, cmd, flags, 0) }
}

/// `gettid(2)`.
pub fn gettid() -> i32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { syscall6(libc::SYS_gettid, 0, 0, 0, 0, 0, 0) as i32 }
}

/// `getpid(2)`.
pub fn getpid() -> i32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { syscall6(libc::SYS_getpid, 0, 0, 0, 0, 0, 0) as i32 }
}

/// The kernel's `siginfo_t` of a queued signal (`SI_QUEUE` layout on x86-64: the three header
/// ints, padding to 16, then pid, uid and the 8-byte value), padded to the kernel's 128 bytes.
#[repr(C)]
pub struct QueuedSiginfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    _pad: i32,
    pub pid: i32,
    pub uid: u32,
    pub value: u64,
    _rest: [u64; 12],
}

/// `rt_tgsigqueueinfo(2)`: signal `sig` to thread `tid` of process `pid` (this one) with
/// `si_code` `code`, `si_pid` `info_pid`, `si_uid` `info_uid` and `si_value` `value`: a process
/// may give its own signals any code and fields.
pub fn tgsigqueueinfo(pid: i32, tid: i32, sig: i32, code: i32, info_pid: i32, info_uid: u32, value: u64) -> SysResult<()> {
    let info = QueuedSiginfo { signo: sig, errno: 0, code, _pad: 0, pid: info_pid, uid: info_uid, value, _rest: [0; 12] };
    // SAFETY: `info` is a live local as large as the kernel's siginfo_t.
    unsafe { sys!(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, &info as *const QueuedSiginfo) }.map(drop)
}

/// `rt_sigprocmask(2)` on the kernel's 64-signal mask; returns the previous mask.
pub fn sigprocmask(how: i32, set: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: both pointers are to live locals of the kernel's mask size (8 bytes).
    let _ = unsafe { sys!(libc::SYS_rt_sigprocmask, how, &set as *const u64, &mut old as *mut u64, 8usize) };
    old
}

/// `rt_sigaction(2)` with the kernel's structure (handler, flags, restorer, 64-signal mask),
/// setting `act` when given; returns the previous action.
pub fn sigaction(sig: i32, act: Option<&[usize; 4]>) -> SysResult<[usize; 4]> {
    let mut old = [0usize; 4];
    let new = act.map_or(core::ptr::null(), |a| a.as_ptr());
    // SAFETY: `new` is null or a live array, `old` a live local, both the kernel's structure.
    unsafe { sys!(libc::SYS_rt_sigaction, sig, new, old.as_mut_ptr(), 8usize) }?;
    Ok(old)
}

/// `exit_group(2)`.
pub fn exit_group(status: i32) -> ! {
    // SAFETY: no pointers; the call does not return.
    unsafe { syscall6(libc::SYS_exit_group, status as usize, 0, 0, 0, 0, 0) };
    // Never reached; no panic machinery here (this runs in a signal handler).
    loop {
        core::hint::spin_loop();
    }
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_kill, pid, sig) }.map(drop)
}

/// `getrandom(2)` filling `out` (non-blocking: fails rather than wait for entropy).
pub fn getrandom(out: &mut u64) -> SysResult<()> {
    // SAFETY: `out` is a live local of 8 bytes.
    match unsafe { sys!(libc::SYS_getrandom, out as *mut u64, 8usize, libc::GRND_NONBLOCK) }? {
        8 => Ok(()),
        _ => Err(Errno(libc::EIO)),
    }
}

/// `getcpu(2)`: (cpu, node).
pub fn getcpu() -> SysResult<(u32, u32)> {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: both pointers are to live locals.
    unsafe { sys!(libc::SYS_getcpu, &mut cpu as *mut u32, &mut node as *mut u32, 0) }?;
    Ok((cpu, node))
}

/// `openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)`; `path` must end in a NUL byte.
pub fn open_read(path: &[u8]) -> SysResult<i32> {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated (callers pass literals ending in "\0").
    unsafe { sys!(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) }.map(|fd| fd as i32)
}

/// `read(2)` into `buf`.
///
/// # Safety
/// `buf` must be writable for `len` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize) -> SysResult<usize> {
    // SAFETY: the caller passes a writable buffer of `len` bytes.
    unsafe { sys!(libc::SYS_read, fd, buf, len) }
}

/// The handler address of signal `sig` (`SIG_DFL` is 0, `SIG_IGN` 1), as the kernel holds it:
/// an `rt_sigaction(2)` query, which changes nothing.
pub fn signal_handler(sig: i32) -> SysResult<usize> {
    sigaction(sig, None).map(|old| old[0])
}

/// `close(2)`.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor this module opened; the result carries no information we use.
    let _ = unsafe { sys!(libc::SYS_close, fd) };
}

/// Anonymous private read-write `mmap(2)` of `len` bytes, zero-filled.
pub fn mmap_anon(len: usize) -> SysResult<*mut u8> {
    // SAFETY: a fresh anonymous mapping aliases no existing memory.
    unsafe {
        sys!(libc::SYS_mmap, 0, len, libc::PROT_READ | libc::PROT_WRITE,
             libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1i32, 0)
    }
    .map(|p| p as *mut u8)
}

/// `munmap(2)`.
///
/// # Safety
/// Nothing may use the range afterwards: the caller owns the mapping.
pub unsafe fn munmap(addr: *mut u8, len: usize) -> SysResult<()> {
    // SAFETY: the caller guarantees nothing still uses the range.
    unsafe { sys!(libc::SYS_munmap, addr, len) }.map(drop)
}

/// glibc's own `clock_gettime` (given by [`note_clock`]: found with `dlvsym` on libc.so.6, so
/// neither an interposer of the program's, such as libfaketime, nor a PLT slot); 0 until then.
static CLOCK_GETTIME: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Makes [`monotonic_ns`] call `clock_gettime`, glibc's own function at that address (the
/// constructor looks it up: `libc_private::libc_symbol`); 0 leaves the system call.
pub fn note_clock(clock_gettime: usize) {
    CLOCK_GETTIME.store(clock_gettime, core::sync::atomic::Ordering::Relaxed);
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds. After the constructor, glibc's own function,
/// which reads the vDSO (no system call; the barrier's wait loop reads the clock several times;
/// POSIX lists it as async-signal-safe); before, or if it fails (errno is then put back), the
/// system call. If that fails too: `u64::MAX`, so that every deadline has passed (a barrier
/// then fails and frees nothing; a wait gives up).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let f = CLOCK_GETTIME.load(core::sync::atomic::Ordering::Relaxed);
    if f != 0 {
        // SAFETY: glibc's clock_gettime has this signature; `ts` is a live local.
        let f: unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int = unsafe { core::mem::transmute(f) };
        // SAFETY: errno is thread-local; `ts` is a live local.
        let ok = unsafe {
            let saved = *libc::__errno_location();
            let ok = f(libc::CLOCK_MONOTONIC, &mut ts) == 0;
            *libc::__errno_location() = saved;
            ok
        };
        if ok {
            return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        }
    }
    // SAFETY: `ts` is a live local.
    match unsafe { sys!(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts as *mut libc::timespec) } {
        Ok(_) => ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        Err(_) => u64::MAX,
    }
}

/// How many CPUs the calling thread may run on (`sched_getaffinity(2)`, counted); `Err` when
/// the kernel's mask does not fit 4,096 CPUs (EINVAL) or the call is refused.
pub fn cpus_allowed() -> SysResult<usize> {
    let mut mask = [0u64; 64];
    // SAFETY: `mask` is a live local of the length passed; the kernel writes at most that much.
    let written = unsafe { sys!(libc::SYS_sched_getaffinity, 0, core::mem::size_of_val(&mask), mask.as_mut_ptr()) }?;
    // The kernel returns how many bytes it wrote (whole words).
    let words = written.min(core::mem::size_of_val(&mask)) / 8;
    Ok(mask[..words].iter().map(|w| w.count_ones() as usize).sum())
}

/// `sched_yield(2)`.
pub fn sched_yield() {
    // SAFETY: no arguments.
    let _ = unsafe { sys!(libc::SYS_sched_yield) };
}

/// Plain data: every bit pattern is a valid value, so any bytes copied into one make one.
///
/// # Safety
/// Implement only for such types (integers, and arrays and C structs of them).
pub unsafe trait Plain: Copy {}
// SAFETY: integers and arrays of plain data have no invalid bit patterns.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for usize {}
// SAFETY: as above.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}
// SAFETY: C structs of integers.
unsafe impl Plain for crate::abi::rseq_cs {}
// SAFETY: as above.
unsafe impl Plain for libc::Elf64_Ehdr {}
// SAFETY: as above.
unsafe impl Plain for libc::Elf64_Phdr {}

/// A `T` of all zero bytes.
pub fn zeroed<T: Plain>() -> T {
    // SAFETY: every bit pattern, all zeros included, is a valid `T`.
    unsafe { core::mem::MaybeUninit::<T>::zeroed().assume_init() }
}

/// The `T` at `addr` of this process, read with [`read_own_memory`]: `None` when any of it is
/// unmapped or unreadable.
pub fn read_own<T: Plain>(addr: usize) -> Option<T> {
    let mut v = [zeroed::<T>()];
    read_own_into(&mut v, addr)?;
    Some(v[0])
}

/// Fills `dst` from `addr` of this process with [`read_own_memory`]; `None` unless all of it was
/// read.
pub fn read_own_into<T: Plain>(dst: &mut [T], addr: usize) -> Option<()> {
    let len = core::mem::size_of_val(dst);
    // SAFETY: `dst` is a live, writable buffer of `len` bytes, and any bytes make valid `T`s.
    match unsafe { read_own_memory(dst.as_mut_ptr().cast(), addr, len) } {
        Ok(n) if n == len => Some(()),
        _ => None,
    }
}

/// Copies `len` bytes at `remote` (an address in this process) into `local` with
/// `process_vm_readv(2)`: an unmapped or unreadable source gives `Err(EFAULT)` instead of a fault.
///
/// # Safety
/// `local` must be writable for `len` bytes.
pub unsafe fn read_own_memory(local: *mut u8, remote: usize, len: usize) -> SysResult<usize> {
    let liov = libc::iovec { iov_base: local.cast(), iov_len: len };
    let riov = libc::iovec { iov_base: remote as *mut libc::c_void, iov_len: len };
    // SAFETY: the local buffer is writable for `len` bytes; the kernel checks the remote range.
    unsafe { sys!(libc::SYS_process_vm_readv, getpid(), &liov as *const libc::iovec, 1, &riov as *const libc::iovec, 1, 0) }
}

/// Sleeps for `ns` nanoseconds (`clock_nanosleep`, relative; an interruption just ends it early).
pub fn sleep_ns(ns: u64) {
    let ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
    // SAFETY: `ts` is a live local; no remainder is requested.
    let _ = unsafe { sys!(libc::SYS_clock_nanosleep, libc::CLOCK_MONOTONIC, 0, &ts as *const libc::timespec, 0) };
}

/// `futex(FUTEX_WAIT_PRIVATE)`: sleeps while `*word == expected`, at most `timeout_ns`, or until
/// a [`futex_wake_all`] (or a signal). Async-signal-safe.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as i64, tv_nsec: (timeout_ns % 1_000_000_000) as i64 };
    // SAFETY: `word` is a live, aligned u32 and `ts` a live local.
    let _ = unsafe {
        sys!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, &ts as *const libc::timespec)
    };
}

/// `futex(FUTEX_WAKE_PRIVATE)` of every waiter on `word`. Async-signal-safe.
pub fn futex_wake_all(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a live, aligned u32.
    let _ = unsafe { sys!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX) };
}

/// The kept `/proc/self/task` descriptor of [`thread_count`] (-1: none yet), and the inode it
/// named when opened.
static TASK_DIR_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);
static TASK_DIR_INODE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static TASK_DIR_DEV: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Number of threads in this process: the link count of `/proc/self/task` is 2 plus the number
/// of threads, and `fstat` on a kept `O_PATH` descriptor reads it in constant time (well under a
/// microsecond, against tens for parsing `/proc/self/stat` with a thousand threads).
///
/// The descriptor is reopened when it no longer names the same directory (the program closed it
/// and the number was reused), and in a `fork()` child ([`after_fork`]), where it would describe
/// the parent.
pub fn thread_count() -> SysResult<usize> {
    use core::sync::atomic::Ordering::Relaxed;
    let fd = TASK_DIR_FD.load(Relaxed);
    if fd >= 0 {
        if let Ok(st) = fstat(fd) {
            let same = st.st_ino == TASK_DIR_INODE.load(Relaxed) && st.st_dev == TASK_DIR_DEV.load(Relaxed);
            if same && st.st_nlink >= 2 {
                return Ok(st.st_nlink as usize - 2);
            }
        }
    }
    // SAFETY: a NUL-terminated literal path.
    let fresh = unsafe {
        sys!(libc::SYS_openat, libc::AT_FDCWD, c"/proc/self/task".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
    }? as i32;
    let st = match fstat(fresh) {
        Ok(st) => st,
        Err(e) => {
            close(fresh); // published nowhere yet
            return Err(e);
        }
    };
    // Publish the new descriptor; an old one is abandoned, not closed: it may be somebody else's
    // by now. (Two racing callers may both open one; the loser's stays open, unused.)
    TASK_DIR_INODE.store(st.st_ino, Relaxed);
    TASK_DIR_DEV.store(st.st_dev, Relaxed);
    TASK_DIR_FD.store(fresh, Relaxed);
    Ok((st.st_nlink as usize).saturating_sub(2))
}

/// In a `fork()` child: forget descriptors that describe the parent.
pub fn after_fork() {
    let fd = TASK_DIR_FD.swap(-1, core::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        close(fd);
    }
}

/// `fstat(2)`.
/// The size of the file open at `fd`.
pub fn file_size(fd: i32) -> SysResult<usize> {
    fstat(fd).map(|st| st.st_size as usize)
}

fn fstat(fd: i32) -> SysResult<libc::stat> {
    let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the kernel fills the whole struct on success.
    unsafe { sys!(libc::SYS_fstat, fd, st.as_mut_ptr()) }?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// `mmap(2)` with every argument the caller's.
///
/// # Safety
/// As for `mmap(2)`: with `MAP_FIXED`, nothing may use what was mapped in the range before.
pub unsafe fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> SysResult<usize> {
    // SAFETY: the caller's request, validated by the kernel; the caller owns the consequences of
    // MAP_FIXED as with the C library's mmap.
    unsafe { sys!(libc::SYS_mmap, addr, len, prot, flags, fd, offset) }
}

/// `mremap(2)` with every argument the caller's.
///
/// # Safety
/// As for `mremap(2)`: nothing may use memory the call moves or frees.
pub unsafe fn mremap(old: usize, old_size: usize, new_size: usize, flags: i32, new_address: usize) -> SysResult<usize> {
    // SAFETY: as for `mmap`.
    unsafe { check(syscall6(libc::SYS_mremap, old, old_size, new_size, flags as usize, new_address, 0)) }
}

/// `madvise(2)` with every argument the caller's.
///
/// # Safety
/// As for `madvise(2)`: with an advice that discards contents (`MADV_DONTNEED`, ...), nothing
/// may rely on what the range held.
pub unsafe fn madvise(addr: usize, len: usize, advice: i32) -> SysResult<()> {
    // SAFETY: the caller's request, validated by the kernel.
    unsafe { sys!(libc::SYS_madvise, addr, len, advice) }.map(drop)
}

/// `mprotect(2)` with every argument the caller's.
///
/// # Safety
/// As for `mprotect(2)`: nothing may access the range in a way `prot` no longer allows.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> SysResult<()> {
    // SAFETY: the caller's request, validated by the kernel.
    unsafe { sys!(libc::SYS_mprotect, addr, len, prot) }.map(drop)
}

/// `shmdt(2)`.
///
/// # Safety
/// As for `shmdt(2)`: nothing may use the detached segment's memory afterwards.
pub unsafe fn shmdt(addr: usize) -> SysResult<()> {
    // SAFETY: the caller's request, validated by the kernel.
    unsafe { sys!(libc::SYS_shmdt, addr) }.map(drop)
}

/// Calls `f(tid)` for every thread of this process (`getdents64` on `/proc/self/task`, through a
/// buffer on the stack).
pub fn for_each_thread(mut f: impl FnMut(i32)) -> SysResult<()> {
    // SAFETY: a NUL-terminated literal path.
    let fd = unsafe {
        sys!(libc::SYS_openat, libc::AT_FDCWD, c"/proc/self/task".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
    }? as i32;
    let mut buf = [0u8; 1024];
    let result = loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes of dirent64 records.
        let n = match unsafe { sys!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) } {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let mut off = 0;
        while off + 19 < n {
            // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated).
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..(off + reclen).min(n)];
            let digits = name.iter().take_while(|&&b| b != 0);
            let tid = digits.clone().try_fold(0i32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + (d - b'0') as i32));
            if let Some(tid) = tid.filter(|&t| t > 0) {
                f(tid);
            }
            off += reclen;
        }
    };
    close(fd);
    result
}

/// The blocked-signal mask of thread `tid` of this process (`SigBlk` in its `status` file),
/// read in small pieces (the file grows with the supplementary groups listed before `SigBlk`).
pub fn blocked_signals(tid: i32) -> SysResult<u64> {
    let mut path = [0u8; 48];
    let prefix = b"/proc/self/task/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    let mut digits = [0u8; 10];
    let (mut v, mut nd) = (tid as u32, 0);
    loop {
        digits[nd] = b'0' + (v % 10) as u8;
        nd += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in (0..nd).rev() {
        path[len] = digits[i];
        len += 1;
    }
    path[len..len + 8].copy_from_slice(b"/status\0");
    let fd = open_read(&path[..len + 8])?;
    let result = find_sigblk(fd);
    close(fd);
    result
}

/// The value of the line `SigBlk:\t<16 hex digits>` of the `status` file open at `fd`, wherever
/// the reads cut the file.
fn find_sigblk(fd: i32) -> SysResult<u64> {
    // Lines of `status` are short; a longer one (a long `Groups:` list) is only cut.
    let mut buf = [0u8; 256];
    let mut found = None;
    for_each_line(fd, &mut buf, |line| {
        if let Some(value) = line.strip_prefix(b"SigBlk:") {
            found = parse_hex(value.trim_ascii());
        }
    })?;
    found.ok_or(Errno(libc::EIO))
}

/// Calls `f` with each line of the file open at `fd` (without its newline), read through `buf`
/// (the caller's, on its stack: no allocation; async-signal-safe). A line longer than `buf` is
/// handed over cut to its length (in `/proc` files the fields come first; only a long path or
/// list is lost).
pub fn for_each_line(fd: i32, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> SysResult<()> {
    let mut have = 0;
    // The rest of a cut line is being skipped.
    let mut skipping = false;
    loop {
        // SAFETY: the free part of `buf`, a live local.
        let n = unsafe { read(fd, buf[have..].as_mut_ptr(), buf.len() - have) }?;
        have += n;
        let mut start = 0;
        while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
            if !skipping {
                f(&buf[start..start + nl]);
            }
            skipping = false;
            start += nl + 1;
        }
        if n == 0 {
            if start < have && !skipping {
                f(&buf[start..have]);
            }
            return Ok(());
        }
        if start == 0 && have == buf.len() {
            if !skipping {
                f(&buf[..have]);
            }
            skipping = true;
            have = 0;
        } else {
            buf.copy_within(start..have, 0);
            have -= start;
        }
    }
}

/// A hexadecimal number of at most 16 digits (as `/proc` prints them), or `None`.
pub fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| Some(acc << 4 | (d as char).to_digit(16)? as u64))
}

#[cfg(test)]
mod tests {
    /// [`super::cpus_allowed`] counts what the C library's `sched_getaffinity` reports.
    #[test]
    fn cpus_allowed_counts_the_affinity_mask() {
        // SAFETY: an all-zero cpu_set_t is an empty set; the call writes at most its size.
        let libc_count = unsafe {
            let mut set: libc::cpu_set_t = core::mem::zeroed();
            (libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                .then(|| libc::CPU_COUNT(&set) as usize)
        };
        let Some(libc_count) = libc_count else {
            println!("skip  cpus_allowed: glibc's cpu_set_t (1,024 CPUs) cannot hold this machine's mask");
            return;
        };
        assert!(libc_count >= 1);
        assert_eq!(super::cpus_allowed(), Ok(libc_count));
    }
}
