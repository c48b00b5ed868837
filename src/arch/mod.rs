//! Architecture layer: the only place with assembly. x86-64 is the one architecture supported.

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("rseqrt supports x86-64 Linux only");

mod x86_64;
pub use x86_64::*;
