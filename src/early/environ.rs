//! The two settings that decide whether rseqrt registers, read from the process's initial
//! environment at relocation time.
//!
//! * `GLIBC_TUNABLES` containing `glibc.pthread.rseq=0`: glibc's documented way to leave rseq
//!   registration to someone else (the program, or an rseq library it uses). rseqrt honours it
//!   on every glibc: glibc 2.35+ acts on it itself, older glibc has no such tunable, and there
//!   rseqrt reads the variable for it.
//! * `RSEQRT_REGISTER`: `1` registers even so (how the tests run rseqrt-owned areas on a glibc
//!   that registers), `0` never registers.
//!
//! In a secure-mode process (`AT_SECURE`: set-user-ID and the like) both are ignored, as glibc
//! ignores its tunables there.
//!
//! Why `/proc/self/environ`: at relocation time the C library's `environ` is not set up yet and
//! `getenv` is a PLT call. The file is the environment the process started with, which is what
//! glibc reads its tunables from too. Guarantees: raw system calls only, no allocation, bounded
//! stack (one small buffer), no panic; unreadable `/proc` means "neither is set".

use crate::platform;
use core::mem::MaybeUninit;

/// What the environment asks of rseqrt's registration.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct OwnerSettings {
    /// `GLIBC_TUNABLES` sets `glibc.pthread.rseq=0`.
    pub glibc_rseq_off: bool,
    /// `RSEQRT_REGISTER`: `Some(true)` for `1`, `Some(false)` for `0`, `None` unset or other.
    pub register: Option<bool>,
}

/// Reads the settings; all unset in secure mode or without `/proc`.
pub fn owner_settings(secure: bool) -> OwnerSettings {
    if secure {
        return OwnerSettings::default();
    }
    let mut scan = Scanner::default();
    let Ok(fd) = platform::open_read(b"/proc/self/environ\0") else { return scan.found };
    let mut buf = MaybeUninit::<[u8; 512]>::uninit();
    loop {
        // SAFETY: the buffer is 512 writable bytes; `read` writes at most that many.
        match unsafe { platform::read(fd, buf.as_mut_ptr().cast(), 512) } {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // SAFETY: the kernel wrote the first `n` (<= 512) bytes.
                let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                bytes.iter().for_each(|&b| scan.byte(b));
            }
        }
    }
    platform::close(fd);
    scan.byte(0); // a last entry without its NUL
    scan.found
}

/// Which variable the entry being read is.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Var {
    /// Still reading the name.
    #[default]
    Name,
    Tunables,
    Register,
    /// A variable of no interest, or one seen before (`getenv` takes the first).
    Other,
}

const NAME_MAX: usize = 16;
const TOKEN_MAX: usize = 24;

/// A byte-at-a-time reader of NUL-separated `NAME=VALUE` entries, keeping only what it needs:
/// the name (up to 16 bytes), and the current `:`-separated token of the value (up to 24).
#[derive(Default)]
struct Scanner {
    var: Var,
    name: [u8; NAME_MAX],
    name_len: usize,
    token: [u8; TOKEN_MAX],
    /// Length of the token so far; past `TOKEN_MAX` it cannot match anything.
    token_len: usize,
    seen_tunables: bool,
    seen_register: bool,
    found: OwnerSettings,
}

impl Scanner {
    fn byte(&mut self, b: u8) {
        match (self.var, b) {
            (_, 0) => {
                self.end_token();
                self.var = Var::Name;
                self.name_len = 0;
            }
            (Var::Name, b'=') => {
                let name = if self.name_len <= NAME_MAX { &self.name[..self.name_len] } else { &[][..] };
                self.var = match name {
                    b"GLIBC_TUNABLES" if !self.seen_tunables => {
                        self.seen_tunables = true;
                        Var::Tunables
                    }
                    b"RSEQRT_REGISTER" if !self.seen_register => {
                        self.seen_register = true;
                        Var::Register
                    }
                    _ => Var::Other,
                };
                self.token_len = 0;
            }
            (Var::Name, b) => {
                if self.name_len < NAME_MAX {
                    self.name[self.name_len] = b;
                }
                self.name_len = self.name_len.saturating_add(1);
            }
            (Var::Tunables, b':') => {
                self.end_token();
                self.token_len = 0;
            }
            (Var::Tunables | Var::Register, b) => {
                if self.token_len < TOKEN_MAX {
                    self.token[self.token_len] = b;
                }
                self.token_len = self.token_len.saturating_add(1);
            }
            (Var::Other, _) => {}
        }
    }

    /// A token of `GLIBC_TUNABLES` (a later `glibc.pthread.rseq` wins, as in glibc's parser) or
    /// the value of `RSEQRT_REGISTER` is complete.
    fn end_token(&mut self) {
        let token = if self.token_len <= TOKEN_MAX { &self.token[..self.token_len] } else { &[][..] };
        match self.var {
            Var::Tunables => match token {
                b"glibc.pthread.rseq=0" => self.found.glibc_rseq_off = true,
                b"glibc.pthread.rseq=1" => self.found.glibc_rseq_off = false,
                _ => {}
            },
            Var::Register => {
                self.found.register = match token {
                    b"1" => Some(true),
                    b"0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(env: &[u8]) -> OwnerSettings {
        let mut s = Scanner::default();
        env.iter().for_each(|&b| s.byte(b));
        s.byte(0);
        s.found
    }

    #[test]
    fn reads_the_tunable_among_others() {
        let off = OwnerSettings { glibc_rseq_off: true, register: None };
        assert_eq!(scan(b"A=1\0GLIBC_TUNABLES=glibc.pthread.rseq=0\0B=2\0"), off);
        assert_eq!(scan(b"GLIBC_TUNABLES=glibc.malloc.check=3:glibc.pthread.rseq=0:glibc.x=1"), off);
        assert_eq!(scan(b"GLIBC_TUNABLES=glibc.pthread.rseq=0:glibc.pthread.rseq=1\0"), OwnerSettings::default());
        assert_eq!(scan(b"GLIBC_TUNABLESX=glibc.pthread.rseq=0\0"), OwnerSettings::default());
        assert_eq!(scan(b"XGLIBC_TUNABLES=glibc.pthread.rseq=0\0"), OwnerSettings::default());
        assert_eq!(scan(b"GLIBC_TUNABLES=glibc.pthread.rseq=00\0"), OwnerSettings::default());
        // getenv's answer is the first entry of a name.
        assert_eq!(scan(b"GLIBC_TUNABLES=a=1\0GLIBC_TUNABLES=glibc.pthread.rseq=0\0"), OwnerSettings::default());
    }

    #[test]
    fn reads_rseqrt_register() {
        assert_eq!(scan(b"RSEQRT_REGISTER=1\0").register, Some(true));
        assert_eq!(scan(b"RSEQRT_REGISTER=0").register, Some(false));
        assert_eq!(scan(b"RSEQRT_REGISTER=yes\0").register, None);
        assert_eq!(scan(b"RSEQRT_REGISTER=1\0RSEQRT_REGISTER=0\0").register, Some(true));
        let long = [b"RSEQRT_REGISTER=".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(scan(&long).register, None);
    }
}
