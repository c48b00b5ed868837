//! glibc's own values of `__rseq_offset`, `__rseq_size` and `__rseq_flags`, read from the dynamic
//! linker's symbol table at relocation time; and, the same way, the C library's definitions of
//! functions that rseqrt interposes and must call from anywhere ([`next_definition`]).
//!
//! rseqrt defines these names itself (to interpose them), so a lookup by name would find its own
//! definition; and a versioned reference to glibc's would not link (see the facts note). Instead
//! this walks the dynamic linker's list of loaded objects (`_r_debug.r_map`), skips the executable
//! (whose copy-relocated definition is not filled yet) and rseqrt's own object, and looks the
//! names up in each remaining object's `.dynsym` through its GNU hash table (or SysV hash table).
//! glibc 2.35+ defines them in `ld-linux-x86-64.so.2`.

use crate::arch;
use crate::elf::{LinkMap, _r_debug, DT_GNU_HASH, DT_HASH, DT_STRTAB, DT_SYMTAB};
use core::ptr;

#[repr(C)]
struct Elf64Sym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

/// glibc's three values.
#[derive(Clone, Copy)]
pub struct GlibcRseq {
    pub offset: isize,
    pub size: u32,
    pub flags: u32,
}

/// Finds glibc's definitions; `None` for a C library without them (glibc < 2.35, musl, ...).
pub fn glibc_rseq_exports() -> Option<GlibcRseq> {
    let (own_offset, _, _) = arch::export_storage();
    // SAFETY: `_r_debug` is ld.so's, relocated before this object (its GOT entry is processed
    // before IRELATIVE relocations); the list it heads is complete and stable while the dynamic
    // linker relocates (it holds the load lock), and every map in it is mapped.
    let mut map = unsafe { (*ptr::addr_of!(_r_debug)).r_map };
    let mut first = true;
    while !map.is_null() {
        // SAFETY: `map` is a live link_map of the list (see above).
        let m = unsafe { &*map };
        if !first && !m.l_ld.is_null() {
            // SAFETY: `m` is a loaded object, so its dynamic section and tables are mapped.
            let found = unsafe { (lookup(m, b"__rseq_offset"), lookup(m, b"__rseq_size"), lookup(m, b"__rseq_flags")) };
            if let (Some(o), Some(s), Some(f)) = found {
                if o as *mut isize != own_offset {
                    // SAFETY: the symbols are defined data objects of a relocated object.
                    return Some(unsafe {
                        GlibcRseq {
                            offset: ptr::read_volatile(o as *const isize),
                            size: ptr::read_volatile(s as *const u32),
                            flags: ptr::read_volatile(f as *const u32),
                        }
                    });
                }
            }
        }
        first = false;
        map = m.l_next;
    }
    None
}

/// The definition of function `name` that rseqrt's own interposer of it hands calls on to: the
/// first one after rseqrt's object in its namespace's list of loaded objects (what
/// `dlsym(RTLD_NEXT)` finds), or else the first one in that list outside rseqrt and the
/// executable (rseqrt loaded after the C library). 0 when there is none, or when rseqrt is not
/// in any list the dynamic linker shows (`_r_debug` before glibc 2.35 shows only the main one).
pub fn next_definition(name: &[u8]) -> usize {
    let own = arch::own_dynamic_section();
    // SAFETY: as in `glibc_rseq_exports`; the namespaces' lists are chained from `_r_debug`
    // (`r_next`, glibc 2.35's `r_version` 2), and none changes while the dynamic linker
    // relocates this object.
    unsafe {
        let mut ns = ptr::addr_of!(_r_debug);
        let mut main = true;
        while !ns.is_null() {
            let head = (*ns).r_map;
            let mut m = head;
            while !m.is_null() && (*m).l_ld as usize != own {
                m = (*m).l_next;
            }
            if !m.is_null() {
                let own_map = m;
                let skip = |m: *const LinkMap| m == own_map || (main && m == head);
                let mut after = (*own_map).l_next;
                while !after.is_null() {
                    if let Some(a) = defined_in(after, name) {
                        return a;
                    }
                    after = (*after).l_next;
                }
                let mut before = head;
                while !before.is_null() && before != own_map {
                    if !skip(before) {
                        if let Some(a) = defined_in(before, name) {
                            return a;
                        }
                    }
                    before = (*before).l_next;
                }
                return 0;
            }
            ns = if (*ns).r_version >= 2 { (*ns).r_next } else { ptr::null() };
            main = false;
        }
    }
    0
}

/// `name` in the loaded object `m`, if it defines it.
///
/// # Safety
/// `m` must be a live element of one of the dynamic linker's lists.
unsafe fn defined_in(m: *const LinkMap, name: &[u8]) -> Option<usize> {
    // SAFETY: the caller guarantees `m` is loaded, so its tables are mapped.
    unsafe { (!(*m).l_ld.is_null()).then(|| lookup(&*m, name)).flatten() }
}

/// Address of the defined dynamic symbol `name` in object `m`.
///
/// # Safety
/// `m` must be a loaded object whose dynamic section and symbol tables are mapped.
unsafe fn lookup(m: &LinkMap, name: &[u8]) -> Option<usize> {
    // SAFETY: the caller guarantees the tables are mapped; every index used below comes from the
    // object's own hash tables (this block is the whole function).
    unsafe {
        let symtab = m.dyn_ptr(DT_SYMTAB).unwrap_or(0) as *const Elf64Sym;
        let strtab = m.dyn_ptr(DT_STRTAB).unwrap_or(0) as *const u8;
        let (gnu_hash, sysv_hash) = (m.dyn_ptr(DT_GNU_HASH), m.dyn_ptr(DT_HASH));
        if symtab.is_null() || strtab.is_null() {
            return None;
        }
        let matches = |i: u32| -> Option<usize> {
            let sym = &*symtab.add(i as usize);
            (sym.st_shndx != 0 && sym.st_value != 0 && c_str_eq(strtab.add(sym.st_name as usize), name))
                .then(|| m.l_addr + sym.st_value as usize)
        };
        if let Some(h) = gnu_hash {
            let h = h as *const u32;
            let (nbuckets, symoffset, bloom_words) = (*h, *h.add(1), *h.add(2));
            if nbuckets == 0 {
                return None;
            }
            let buckets = h.add(4 + 2 * bloom_words as usize);
            let chain = buckets.add(nbuckets as usize);
            let hash = gnu_hash_of(name);
            let mut i = *buckets.add((hash % nbuckets) as usize);
            if i < symoffset {
                return None;
            }
            loop {
                let h2 = *chain.add((i - symoffset) as usize);
                if (h2 | 1) == (hash | 1) {
                    if let Some(a) = matches(i) {
                        return Some(a);
                    }
                }
                if h2 & 1 != 0 {
                    return None;
                }
                i += 1;
            }
        } else if let Some(h) = sysv_hash {
            let h = h as *const u32;
            let nbucket = *h;
            if nbucket == 0 {
                return None;
            }
            let chain = h.add(2 + nbucket as usize);
            let mut i = *h.add(2 + (sysv_hash_of(name) % nbucket) as usize);
            while i != 0 {
                if let Some(a) = matches(i) {
                    return Some(a);
                }
                i = *chain.add(i as usize);
            }
        }
        None
    }
}

/// Compares a NUL-terminated string with `name`, byte by byte (no `memcmp` call).
///
/// # Safety
/// `s` must point to a NUL-terminated string.
unsafe fn c_str_eq(s: *const u8, name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        // SAFETY: bytes before the terminating NUL are readable; we stop at the first mismatch,
        // which includes the NUL.
        if unsafe { ptr::read_volatile(s.add(i)) } != name[i] {
            return false;
        }
        i += 1;
    }
    // SAFETY: all of `name` matched, so `s` has at least `i` non-NUL bytes and a terminator after.
    unsafe { ptr::read_volatile(s.add(i)) == 0 }
}

fn gnu_hash_of(name: &[u8]) -> u32 {
    let mut h: u32 = 5381;
    let mut i = 0;
    while i < name.len() {
        h = h.wrapping_mul(33).wrapping_add(name[i] as u32);
        i += 1;
    }
    h
}

fn sysv_hash_of(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    let mut i = 0;
    while i < name.len() {
        h = (h << 4).wrapping_add(name[i] as u32);
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
        i += 1;
    }
    h
}
