//! A loaded object's full symbol table (`.symtab`), read from its file: for what a library keeps
//! from its dynamic symbols but debuggers still find. glibc before 2.34 keeps libthread_db's
//! facts (its thread count, its two thread lists, the descriptor layout) as local symbols of
//! `libpthread.so.0`, which libthread_db reaches through the debugger's symbol lookup
//! (`ps_pglobal_lookup` on `LIBPTHREAD_SO`); distributions leave that library's `.symtab` in
//! place for that reason (Debian 11: checked with `readelf -s`).
//!
//! Constructor time only: it opens and maps the file, and maps it away again. Allocation-free;
//! every read is bounds-checked against the file's size, so a truncated or foreign file yields
//! "not found", never a fault.

use crate::elf::{LinkMap, _r_debug};
use crate::platform;

const SHT_SYMTAB: u32 = 2;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;

/// For each of `names`, the address (load base + value) of its defined symbol in the `.symtab`
/// of the loaded object whose file name ends in `file_suffix` (for instance
/// `b"/libpthread.so.0"`); 0 where it is not found. `false` when there is no such object, or its
/// file has no symbol table.
pub fn lookup(file_suffix: &[u8], names: &[&[u8]], out: &mut [usize]) -> bool {
    out.iter_mut().for_each(|o| *o = 0);
    let Some((path, base)) = loaded_object(file_suffix) else { return false };
    let mut path_z = [0u8; 256];
    if path.len() >= path_z.len() {
        return false;
    }
    path_z[..path.len()].copy_from_slice(path);
    let Ok(fd) = platform::open_read(&path_z[..=path.len()]) else { return false };
    let size = platform::file_size(fd);
    // SAFETY: a fresh private read-only mapping of the whole file aliases nothing.
    let map = size.and_then(|len| unsafe { platform::mmap(0, len, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0) });
    platform::close(fd);
    let (Ok(len), Ok(addr)) = (size, map) else { return false };
    // SAFETY: `addr` maps `len` readable bytes until the munmap below; nothing writes them.
    let file = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    let found = find(file, names, out);
    if found {
        out.iter_mut().filter(|o| **o != 0).for_each(|o| *o += base);
    }
    // SAFETY: our own mapping, no longer referred to (`file` ends here).
    let _ = unsafe { platform::munmap(addr as *mut u8, len) };
    found
}

/// The file name and load base of the first loaded object whose name ends in `suffix`.
fn loaded_object(suffix: &[u8]) -> Option<(&'static [u8], usize)> {
    // SAFETY: `_r_debug`'s list holds loaded objects; their names are NUL-terminated strings that
    // live as long as the objects (libpthread is never unloaded).
    unsafe {
        let mut m: *const LinkMap = (*core::ptr::addr_of!(_r_debug)).r_map;
        while !m.is_null() {
            let name = (*m).l_name;
            if !name.is_null() {
                let name = core::ffi::CStr::from_ptr(name.cast()).to_bytes();
                if name.ends_with(suffix) {
                    return Some((name, (*m).l_addr));
                }
            }
            m = (*m).l_next;
        }
    }
    None
}

/// A little-endian integer of `N` bytes at `off`, if the file has them.
fn int<const N: usize>(file: &[u8], off: usize) -> Option<u64> {
    let bytes: [u8; N] = file.get(off..off.checked_add(N)?)?.try_into().ok()?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    Some(v)
}

/// Fills `out` from the file's `.symtab`; `false` without one.
fn find(file: &[u8], names: &[&[u8]], out: &mut [usize]) -> bool {
    if file.get(..5) != Some(b"\x7fELF\x02") {
        return false; // not a 64-bit ELF file
    }
    let (Some(shoff), Some(shnum)) = (int::<8>(file, 0x28), int::<2>(file, 0x3c)) else { return false };
    let section = |i: u64| -> Option<(u32, usize, usize, u32)> {
        let at = usize::try_from(shoff.checked_add(i.checked_mul(SHDR_SIZE as u64)?)?).ok()?;
        Some((
            int::<4>(file, at + 4)? as u32,
            int::<8>(file, at + 0x18)? as usize,
            int::<8>(file, at + 0x20)? as usize,
            int::<4>(file, at + 0x28)? as u32,
        ))
    };
    let Some((_, symoff, symsize, link)) = (0..shnum).filter_map(section).find(|s| s.0 == SHT_SYMTAB) else {
        return false;
    };
    let Some((_, stroff, strsize, _)) = section(link as u64) else { return false };
    let Some(strtab) = file.get(stroff..stroff.saturating_add(strsize)) else { return false };
    for i in 0..symsize / SYM_SIZE {
        let at = symoff.saturating_add(i * SYM_SIZE);
        let (Some(name), Some(shndx), Some(value)) = (int::<4>(file, at), int::<2>(file, at + 6), int::<8>(file, at + 8)) else {
            return false;
        };
        if shndx == 0 || value == 0 {
            continue; // undefined
        }
        let Some(tail) = strtab.get(name as usize..) else { continue };
        let sym = &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())];
        for (n, o) in names.iter().zip(out.iter_mut()) {
            if *o == 0 && sym == *n {
                *o = value as usize;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    /// This test binary's own C library: on glibc before 2.34 libpthread's table has the thread
    /// count; on later glibc libpthread is an empty stub (or absent) and the names are not there.
    #[test]
    fn finds_libthread_db_facts_where_glibc_keeps_them() {
        let mut out = [0usize; 2];
        let found = super::lookup(b"/libpthread.so.0", &[b"__nptl_nthreads", b"no_such_symbol"], &mut out);
        println!("libpthread.so.0 .symtab: found {found}, __nptl_nthreads at {:#x}", out[0]);
        assert_eq!(out[1], 0);
        // SAFETY: a static NUL-terminated string.
        let version = unsafe { core::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }.to_str().unwrap();
        let minor: u32 = version.strip_prefix("2.").and_then(|m| m.parse().ok()).unwrap_or(99);
        if minor < 34 {
            assert!(found && out[0] != 0, "glibc {version}: libpthread's .symtab should hold __nptl_nthreads");
            // SAFETY: the address of glibc's live thread count.
            assert!(unsafe { *(out[0] as *const u32) } >= 1);
        }
    }
}
