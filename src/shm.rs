//! `shmdt()` after the barrier over what it unmaps: a System V shared memory segment attached at
//! the address.
//!
//! `shmdt(addr)` names only an address, and the kernel unmaps more than a page there (its
//! `ksys_shmdt()`): the first mapping of a System V segment at or above `addr` whose offset in
//! the segment equals its distance from `addr` (the attachment, or what `munmap()`/`mprotect()`
//! left of it), then every later mapping of the same segment that satisfies the same rule and
//! lies within the segment's size from `addr`.
//!
//! The same mappings are found here in `/proc/self/maps`, read with raw system calls through a
//! buffer on the stack: a System V segment's mappings are named `/SYSV<key> (deleted)` there,
//! and the segment is told apart by device and inode (the inode number is the segment's id).
//! The barrier covers from the first such mapping to the end of the last: every mapping the
//! kernel will unmap lies there, because a mapping that starts `k` bytes above `addr` at offset
//! `k` of the segment ends within the segment's size from `addr` (the kernel's size bound never
//! excludes one that this rule includes, except a mapping `mremap()` grew past the segment's
//! end, which is then covered for nothing). `shmctl(IPC_STAT)` would give the size, but needs
//! the segment's permissions to allow reading it, which the attachment need not.
//!
//! When `/proc/self/maps` cannot be read (no `/proc`, no descriptor left), the barrier covers
//! every `rseq_cs`. When no segment is attached there, `shmdt()` fails with EINVAL and unmaps
//! nothing: no barrier.
//!
//! Guarantees: allocation-free and async-signal-safe up to the barrier (`open`/`read`/`close`
//! as raw system calls, a 1 KiB buffer on the stack, released before the barrier runs).

use crate::barrier::{self, Range};
use crate::platform::{self, Errno};

use crate::unmap::PAGE;

/// What `shmdt(addr)` will unmap, as far as `/proc/self/maps` tells.
#[derive(Debug, PartialEq)]
enum Detaches {
    /// Everything it unmaps lies in this range.
    Within(Range),
    /// No segment is attached at or above the address: `shmdt()` will fail.
    Nothing,
    /// The mappings could not be read.
    Unknown,
}

/// `shmdt(addr)` after the barrier over the segment it detaches; when the barrier fails,
/// nothing is detached.
///
/// # Safety
/// As for `shmdt(2)`: nothing may use the segment's memory at `addr` afterwards.
pub unsafe fn shmdt(addr: usize) -> Result<(), Errno> {
    // An unaligned address: the kernel refuses it (EINVAL) and unmaps nothing.
    if addr % PAGE == 0 {
        match detaches(addr) {
            Detaches::Within(range) => barrier::clear(&[range], 0)?,
            Detaches::Nothing => {}
            Detaches::Unknown => barrier::clear_all(0)?,
        }
    }
    // SAFETY: the caller's request (see the function's contract).
    unsafe { platform::shmdt(addr) }
}

/// The mappings of `/proc/self/maps` that `shmdt(addr)` unmaps (see the module comment).
fn detaches(addr: usize) -> Detaches {
    let Ok(fd) = platform::open_read(b"/proc/self/maps\0") else { return Detaches::Unknown };
    let mut found: Option<(u64, u64, Range)> = None; // (device, inode, covered range)
    let mut unparsed = false;
    let mut buf = [0u8; 1024];
    let read = platform::for_each_line(fd, &mut buf, |line| {
        let Some(m) = Mapping::parse(line) else {
            unparsed = true;
            return;
        };
        // Mappings below `addr`, or straddling it, never match (the kernel's offset test).
        if m.start < addr || !m.sysv || m.offset != (m.start - addr) as u64 {
            return;
        }
        match &mut found {
            None => found = Some((m.dev, m.inode, Range { start: m.start, end: m.end })),
            Some((dev, inode, range)) if *dev == m.dev && *inode == m.inode => range.end = range.end.max(m.end),
            Some(_) => {}
        }
    });
    platform::close(fd);
    match (read, found) {
        (Ok(()), Some((_, _, range))) => Detaches::Within(range),
        (Ok(()), None) if !unparsed => Detaches::Nothing,
        _ => Detaches::Unknown,
    }
}

/// One line of `/proc/self/maps`: `start-end perms offset major:minor inode   path`.
struct Mapping {
    start: usize,
    end: usize,
    offset: u64,
    /// `major:minor`, as one number.
    dev: u64,
    inode: u64,
    /// A System V shared memory segment (path `/SYSV<key> (deleted)`).
    sysv: bool,
}

impl Mapping {
    fn parse(line: &[u8]) -> Option<Mapping> {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let (start, end) = split_at(fields.next()?, b'-')?;
        let _perms = fields.next()?;
        let offset = platform::parse_hex(fields.next()?)?;
        let (major, minor) = split_at(fields.next()?, b':')?;
        let inode = fields.next()?.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit().then(|| acc.wrapping_mul(10).wrapping_add((d - b'0') as u64))
        })?;
        let sysv = fields.next().is_some_and(|path| path.starts_with(b"/SYSV"));
        Some(Mapping {
            start: platform::parse_hex(start)? as usize,
            end: platform::parse_hex(end)? as usize,
            offset,
            dev: platform::parse_hex(major)? << 32 | platform::parse_hex(minor)?,
            inode,
            sysv,
        })
    }
}

fn split_at(field: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = field.iter().position(|&b| b == sep)?;
    Some((&field[..at], &field[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_sysv_line() {
        let m = Mapping::parse(b"7f3c1a2b3000-7f3c1a2b6000 rw-s 00001000 00:01 32789                      /SYSV00000000 (deleted)").unwrap();
        assert_eq!((m.start, m.end, m.offset, m.dev, m.inode, m.sysv), (0x7f3c1a2b3000, 0x7f3c1a2b6000, 0x1000, 1, 32789, true));
        let anon = Mapping::parse(b"7ffd1000-7ffd3000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.sysv);
        assert!(Mapping::parse(b"garbage").is_none());
    }

    #[test]
    fn nothing_attached_at_an_anonymous_page() {
        let p = platform::mmap_anon(PAGE).unwrap() as usize;
        assert_eq!(detaches(p), Detaches::Nothing);
        // SAFETY: the test's own mapping.
        unsafe { platform::munmap(p as *mut u8, PAGE) }.unwrap();
    }
}
