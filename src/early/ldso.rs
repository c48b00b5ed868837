//! glibc's own values of `__rseq_offset`, `__rseq_size` and `__rseq_flags`, read from the dynamic
//! linker's symbol table at relocation time.
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
