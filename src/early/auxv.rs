//! The kernel's rseq feature size and alignment, and the secure-mode flag, from the auxiliary vector, read from
//! `/proc/self/auxv` with raw system calls (`getauxval` is a PLT call, unusable at relocation time).

use crate::platform;
use core::mem::MaybeUninit;

/// `AT_RSEQ_FEATURE_SIZE` and `AT_RSEQ_ALIGN` (0 where the kernel does not provide them), and
/// `AT_SECURE`.
#[derive(Clone, Copy, Default)]
pub struct RseqFeatures {
    pub feature_size: u32,
    pub align: u32,
    /// Secure mode (set-user-ID, capabilities gained at exec, ...): environment settings are
    /// ignored, as glibc ignores its tunables.
    pub secure: bool,
}

const AT_SECURE: u64 = 23;
const AT_RSEQ_FEATURE_SIZE: u64 = 27;
const AT_RSEQ_ALIGN: u64 = 28;
const WORDS: usize = 256;

/// Reads the values; all zero when `/proc` is unavailable (the original 32-byte ABI is then used,
/// and the process is taken for secure: settings from the environment are not trusted then).
pub fn rseq_features() -> RseqFeatures {
    let mut out = RseqFeatures::default();
    let Ok(fd) = platform::open_read(b"/proc/self/auxv\0") else { return RseqFeatures { secure: true, ..out } };
    let mut buf = MaybeUninit::<[u64; WORDS]>::uninit();
    let base = buf.as_mut_ptr() as *mut u8;
    let mut filled = 0usize;
    while filled < WORDS * 8 {
        // SAFETY: `base + filled` stays inside the buffer; `read` writes at most the rest of it.
        match unsafe { platform::read(fd, base.add(filled), WORDS * 8 - filled) } {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    platform::close(fd);
    let words = buf.as_ptr() as *const u64;
    let mut i = 0;
    while (i + 1) * 8 < filled {
        // SAFETY: words `i` and `i + 1` lie within the `filled` bytes the kernel wrote.
        let (key, value) = unsafe { (*words.add(i), *words.add(i + 1)) };
        match key {
            0 => break,
            AT_RSEQ_FEATURE_SIZE => out.feature_size = value as u32,
            AT_RSEQ_ALIGN => out.align = value as u32,
            AT_SECURE => out.secure = value != 0,
            _ => {}
        }
        i += 2;
    }
    out
}
