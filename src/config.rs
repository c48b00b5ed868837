//! Settings read from the environment at constructor time.
//!
//! * `RSEQRT_SIGNAL`: the reserved real-time signal (see `signal`).
//! * `RSEQRT_TIMEOUT_MS`: how long a barrier waits for threads before it gives up (default 2000).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Default barrier timeout, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_TIMEOUT_MS);

/// Reads the settings (constructor time: calls `secure_getenv`).
pub fn load() {
    if let Some(ms) = env_number(b"RSEQRT_TIMEOUT_MS\0") {
        TIMEOUT_MS.store(ms, Relaxed);
    }
}

/// The barrier timeout in nanoseconds.
pub fn timeout_ns() -> u64 {
    TIMEOUT_MS.load(Relaxed).saturating_mul(1_000_000)
}

extern "C" {
    /// glibc's `getenv` that answers NULL in secure mode (since glibc 2.17; the `libc` crate
    /// does not declare it).
    fn secure_getenv(name: *const core::ffi::c_char) -> *mut core::ffi::c_char;
}

/// A decimal environment variable (`name` NUL-terminated); `None` when unset or malformed, and
/// in a secure-mode process (set-user-ID and the like), where glibc ignores its tunables too:
/// `secure_getenv` answers NULL there. Async-signal-safe as `getenv` is (it only scans the
/// environment).
pub fn env_number(name: &[u8]) -> Option<u64> {
    // SAFETY: `name` is NUL-terminated; secure_getenv returns NULL or a NUL-terminated string.
    let value = unsafe { secure_getenv(name.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null result of secure_getenv.
    let text = unsafe { core::ffi::CStr::from_ptr(value) }.to_str().ok()?;
    text.trim().parse().ok()
}
