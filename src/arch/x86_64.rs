//! All of rseqrt's assembly, for x86-64 Linux: raw system calls, the thread pointer, the
//! library's initial-exec TLS block, the storage behind glibc's three rseq exports, and the
//! relocation-time hook that fills those exports before any copy relocation reads them.
//!
//! Everything here is async-signal-safe and allocation-free: each function is a handful of
//! instructions with no calls.

use core::arch::{asm, global_asm};

/// Signature that precedes every abort handler; glibc and the kernel selftests use the same value.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// Length reserved for rseqrt's own rseq area in TLS; also its alignment.
pub const TLS_AREA_RESERVED: usize = 64;

// The TLS block: rseqrt's own rseq area (used when rseqrt owns registration) and the thread's
// registry slot. `cpu_id` starts at RSEQ_CPU_ID_REGISTRATION_FAILED (-2), so a thread that was
// never registered reads "registration failed", as in glibc's unregistered area.
//
// The exported glibc variables live here too: each exported name is a second label on hidden
// storage, so rseqrt's own code writes its definition directly (never through a GOT entry that
// may point at an executable's copy).
global_asm!(
    ".pushsection .tdata.rseqrt,\"awT\",@progbits",
    ".p2align 6",
    ".globl rseqrt_tls_area",
    ".hidden rseqrt_tls_area",
    ".type rseqrt_tls_area,@object",
    ".size rseqrt_tls_area,64",
    "rseqrt_tls_area:",
    ".long 0",          // cpu_id_start
    ".long -2",         // cpu_id: RSEQ_CPU_ID_REGISTRATION_FAILED
    ".quad 0",          // rseq_cs
    ".long 0",          // flags
    ".long 0",          // node_id
    ".long 0",          // mm_cid
    ".zero 36",
    ".globl rseqrt_tls_slot",
    ".hidden rseqrt_tls_slot",
    ".type rseqrt_tls_slot,@object",
    ".size rseqrt_tls_slot,8",
    "rseqrt_tls_slot:",
    ".quad 0",
    ".popsection",
    ".pushsection .data.rseqrt_exports,\"aw\",@progbits",
    ".p2align 3",
    ".globl rseqrt_export_offset",
    ".hidden rseqrt_export_offset",
    ".globl __rseq_offset",
    ".type __rseq_offset,@object",
    ".size __rseq_offset,8",
    "rseqrt_export_offset:",
    "__rseq_offset:",
    ".quad 0",
    ".globl rseqrt_export_size",
    ".hidden rseqrt_export_size",
    ".globl __rseq_size",
    ".type __rseq_size,@object",
    ".size __rseq_size,4",
    "rseqrt_export_size:",
    "__rseq_size:",
    ".long 0",
    ".globl rseqrt_export_flags",
    ".hidden rseqrt_export_flags",
    ".globl __rseq_flags",
    ".type __rseq_flags,@object",
    ".size __rseq_flags,4",
    "rseqrt_export_flags:",
    "__rseq_flags:",
    ".long 0",
    ".popsection",
    options(att_syntax)
);

// Relocation-time hook. A hidden IFUNC symbol whose address sits in .init_array gets an
// R_X86_64_IRELATIVE relocation: the dynamic linker calls the resolver (`crate::early::resolve`)
// while relocating this object, which is before it relocates the executable (and so before any
// R_X86_64_COPY of __rseq_offset is taken), and stores the function it returns in .init_array,
// so that function then runs as this object's constructor.
//
// The IFUNC is a one-instruction stub, not a `.set` alias of the resolver: an alias of a symbol
// in the same object is folded into it by the assembler, which drops the IFUNC type and leaves a
// plain constructor that never fills the exports (the test in tests/early_resolver.rs and the
// C ABI suite catch that).
global_asm!(
    ".pushsection .text.rseqrt_early,\"ax\",@progbits",
    ".globl rseqrt_early_ifunc",
    ".hidden rseqrt_early_ifunc",
    ".type rseqrt_early_ifunc,@gnu_indirect_function",
    "rseqrt_early_ifunc:",
    "jmp {resolve}",
    ".size rseqrt_early_ifunc,.-rseqrt_early_ifunc",
    ".popsection",
    ".pushsection .init_array,\"aw\",@init_array",
    ".p2align 3",
    ".quad rseqrt_early_ifunc",
    ".popsection",
    resolve = sym crate::early::resolve,
    options(att_syntax)
);

extern "C" {
    static mut rseqrt_export_offset: isize;
    static mut rseqrt_export_size: u32;
    static mut rseqrt_export_flags: u32;
}

/// Pointers to rseqrt's own definitions of `__rseq_offset`, `__rseq_size`, `__rseq_flags`.
#[inline(always)]
pub fn export_storage() -> (*mut isize, *mut u32, *mut u32) {
    (
        core::ptr::addr_of_mut!(rseqrt_export_offset),
        core::ptr::addr_of_mut!(rseqrt_export_size),
        core::ptr::addr_of_mut!(rseqrt_export_flags),
    )
}

/// The thread pointer (`%fs` base), which on x86-64 points at itself.
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: %fs:0 holds the TCB's self pointer on x86-64 Linux for every thread that has TLS,
    // which is every thread a C library creates; reading it has no side effect.
    unsafe { asm!("movq %fs:0, {}", out(reg) tp, options(att_syntax, nostack, readonly, preserves_flags)) };
    tp
}

/// Reads the 32-bit word at `offset` from the thread pointer with one `%fs`-relative load (as
/// glibc's `sched_getcpu()` reads its area), never merged with or dropped like a plain load
/// (the kernel changes these words under the thread's feet).
///
/// # Safety
/// `[tp + offset, tp + offset + 4)` must be memory of the calling thread's TLS block or TCB.
#[inline(always)]
pub unsafe fn tp_relative_read_u32(offset: isize) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address is the calling thread's own memory.
    unsafe { asm!("movl %fs:({off}), {v:e}", off = in(reg) offset, v = out(reg) v, options(att_syntax, nostack, readonly, preserves_flags)) };
    v
}

/// Offset of rseqrt's TLS rseq area from the thread pointer (negative: TLS variant II).
/// Constant for the life of the process once this object is loaded.
#[inline(always)]
pub fn tls_area_offset() -> isize {
    let off: isize;
    // SAFETY: loads the GOT entry that the dynamic linker (or the static linker) filled with the
    // initial-exec TLS offset of `rseqrt_tls_area`; the entry is read-only data.
    unsafe {
        asm!("movq rseqrt_tls_area@GOTTPOFF(%rip), {}", out(reg) off,
             options(att_syntax, nostack, readonly, preserves_flags))
    };
    off
}

/// Address of the calling thread's registry slot word in TLS.
#[inline(always)]
pub fn tls_slot() -> *mut u64 {
    let off: isize;
    // SAFETY: as in `tls_area_offset`, for `rseqrt_tls_slot`.
    unsafe {
        asm!("movq rseqrt_tls_slot@GOTTPOFF(%rip), {}", out(reg) off,
             options(att_syntax, nostack, readonly, preserves_flags))
    };
    (thread_pointer() as isize + off) as *mut u64
}

/// Address of the dynamic section of the object rseqrt is linked into (`_DYNAMIC`): that
/// object's `l_ld` in the dynamic linker's list, by which rseqrt finds itself there. 0 in a
/// program without one (fully static: the reference is weak).
#[inline(always)]
pub fn own_dynamic_section() -> usize {
    let p: usize;
    // SAFETY: takes an address; reads nothing.
    unsafe {
        asm!(".weak _DYNAMIC", "leaq _DYNAMIC(%rip), {}", out(reg) p,
             options(att_syntax, nostack, pure, nomem, preserves_flags))
    };
    p
}

/// Raw system call with up to six arguments. Returns the kernel's value: negative errno on error.
/// Never touches `errno`, never calls into the C library: safe in a signal handler, in an IFUNC
/// resolver, and under `munmap`.
#[inline(always)]
pub unsafe fn syscall6(nr: i64, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for system call `nr`; the kernel
    // clobbers only rcx and r11 besides rax.
    unsafe {
        asm!("syscall",
             inlateout("rax") nr as isize => ret,
             in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
             lateout("rcx") _, lateout("r11") _,
             options(nostack, preserves_flags))
    };
    ret
}

// Entry points that interpose C library functions under the library's own symbol versions, so
// that both programs linked against glibc 2.36 (which reference e.g. `pthread_create@GLIBC_2.34`)
// and older ones (`@GLIBC_2.2.5`) reach rseqrt's definition. Each is a jump to the Rust
// implementation; `.symver` must name a symbol of this same object, hence the thunks. Built only
// for the C library (`c-library` feature), whose link supplies the version nodes; the memory
// calls only for the LD_PRELOAD shim (`preload` feature; see `preload`).
#[cfg(feature = "c-library")]
macro_rules! interpose {
    ($($target:literal => [$(($tag:literal, $version:literal)),+]),+ $(,)?) => {
        global_asm!(
            ".pushsection .text.rseqrt_interpose,\"ax\",@progbits",
            $($(
                concat!(".globl rseqrt_thunk_", $target, "_", $tag),
                concat!(".type rseqrt_thunk_", $target, "_", $tag, ",@function"),
                concat!("rseqrt_thunk_", $target, "_", $tag, ":"),
                concat!("jmp rseqrt_interpose_", $target),
                concat!(".symver rseqrt_thunk_", $target, "_", $tag, ",", $target, $version),
            )+)+
            ".popsection",
            options(att_syntax)
        );
    };
}

#[cfg(feature = "preload")]
interpose! {
    "dlclose" => [("v2_34", "@@GLIBC_2.34"), ("v2_2_5", "@GLIBC_2.2.5")],
    "munmap" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "mremap" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "mmap" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "mmap64" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "madvise" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "mprotect" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "shmdt" => [("v2_2_5", "@@GLIBC_2.2.5")],
}

#[cfg(feature = "c-library")]
interpose! {
    "pthread_create" => [("v2_34", "@@GLIBC_2.34"), ("v2_2_5", "@GLIBC_2.2.5")],
    "thrd_create" => [("v2_34", "@@GLIBC_2.34"), ("v2_28", "@GLIBC_2.28")],
    "pthread_sigmask" => [("v2_32", "@@GLIBC_2.32"), ("v2_2_5", "@GLIBC_2.2.5")],
    "sigprocmask" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "sigaction" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "signal" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "sigsuspend" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "ppoll" => [("v2_4", "@@GLIBC_2.4")],
    "pselect" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "epoll_pwait" => [("v2_6", "@@GLIBC_2.6")],
    "epoll_pwait2" => [("v2_35", "@@GLIBC_2.35")],
    "pthread_attr_setsigmask_np" => [("v2_32", "@@GLIBC_2.32")],
    "sigwait" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "sigwaitinfo" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "sigtimedwait" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "__libc_current_sigrtmin" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "__libc_current_sigrtmax" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "__libc_allocate_rtsig" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "clone" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "__clone" => [("v2_2_5", "@@GLIBC_2.2.5")],
    "dlopen" => [("v2_34", "@@GLIBC_2.34"), ("v2_2_5", "@GLIBC_2.2.5")],
}

// Interposers that look at their arguments, note something, and then must hand the call on
// untouched: `clone()` is variadic, and `dlopen()` finds its caller's object (namespace,
// `$ORIGIN`) from its return address. Each saves the argument registers around a call to a Rust
// function that gets the same arguments and returns the C library's entry, then restores them
// and jumps there, so that the C library sees the caller's own frame.
#[cfg(feature = "c-library")]
macro_rules! tail_interposer {
    ($target:path => $($label:literal),+) => {
        global_asm!(
            ".pushsection .text.rseqrt_interpose,\"ax\",@progbits",
            $(concat!(".globl ", $label), concat!(".hidden ", $label), concat!(".type ", $label, ",@function"), concat!($label, ":"),)+
            ".cfi_startproc",
            "pushq %rdi", ".cfi_adjust_cfa_offset 8",
            "pushq %rsi", ".cfi_adjust_cfa_offset 8",
            "pushq %rdx", ".cfi_adjust_cfa_offset 8",
            "pushq %rcx", ".cfi_adjust_cfa_offset 8",
            "pushq %r8", ".cfi_adjust_cfa_offset 8",
            "pushq %r9", ".cfi_adjust_cfa_offset 8",
            "subq $8, %rsp", ".cfi_adjust_cfa_offset 8", // 16-byte alignment for the call
            "call {target}",
            "addq $8, %rsp", ".cfi_adjust_cfa_offset -8",
            "popq %r9", ".cfi_adjust_cfa_offset -8",
            "popq %r8", ".cfi_adjust_cfa_offset -8",
            "popq %rcx", ".cfi_adjust_cfa_offset -8",
            "popq %rdx", ".cfi_adjust_cfa_offset -8",
            "popq %rsi", ".cfi_adjust_cfa_offset -8",
            "popq %rdi", ".cfi_adjust_cfa_offset -8",
            "jmp *%rax",
            ".cfi_endproc",
            ".popsection",
            target = sym $target,
            options(att_syntax)
        );
    };
}

#[cfg(feature = "c-library")]
tail_interposer!(crate::census::clone_target => "rseqrt_interpose_clone", "rseqrt_interpose___clone");
#[cfg(feature = "c-library")]
tail_interposer!(crate::census::dlopen_target => "rseqrt_interpose_dlopen");


// The start routine rseqrt hands to the C library's pthread_create. It runs the Rust prologue
// (`crate::thread::thread_started`, which returns the user's start routine in %rax and its
// argument in %rdx), then jumps to the start routine, so that no Rust frame stays beneath user
// code: pthread_exit() and cancellation unwind with a forced unwind, which a Rust frame built with
// panic=abort would turn into an abort.
global_asm!(
    ".pushsection .text.rseqrt_thread_start,\"ax\",@progbits",
    ".globl rseqrt_thread_start",
    ".hidden rseqrt_thread_start",
    ".type rseqrt_thread_start,@function",
    "rseqrt_thread_start:",
    ".cfi_startproc",
    "subq $8, %rsp",
    ".cfi_adjust_cfa_offset 8",
    "call {prologue}",
    "addq $8, %rsp",
    ".cfi_adjust_cfa_offset -8",
    "movq %rdx, %rdi",
    "jmp *%rax",
    ".cfi_endproc",
    ".size rseqrt_thread_start,.-rseqrt_thread_start",
    ".popsection",
    prologue = sym crate::thread::thread_started,
    options(att_syntax)
);

extern "C" {
    /// See the assembly above: `start(arg)` after rseqrt's per-thread prologue.
    pub fn rseqrt_thread_start(tag: *mut core::ffi::c_void) -> *mut core::ffi::c_void;
}
