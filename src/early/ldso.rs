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
use crate::elf::_r_debug;
use core::ptr;

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
            let found = unsafe { (m.lookup(b"__rseq_offset"), m.lookup(b"__rseq_size"), m.lookup(b"__rseq_flags")) };
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
                let mut after = (*own_map).l_next;
                while !after.is_null() {
                    if let Some(a) = (*after).lookup(name) {
                        return a;
                    }
                    after = (*after).l_next;
                }
                let mut before = head;
                while !before.is_null() && before != own_map {
                    if !(main && before == head) {
                        if let Some(a) = (*before).lookup(name) {
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
