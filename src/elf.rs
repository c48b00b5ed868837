//! The few ELF and dynamic-linker structures rseqrt reads (`<elf.h>`, `<link.h>`): plain data,
//! usable at relocation time.

/// `ElfW(Dyn)`.
#[repr(C)]
pub struct Elf64Dyn {
    pub d_tag: i64,
    pub d_val: u64,
}

/// The public prefix of glibc's `struct link_map` (`<link.h>`).
#[repr(C)]
pub struct LinkMap {
    pub l_addr: usize,
    pub l_name: *const u8,
    pub l_ld: *const Elf64Dyn,
    pub l_next: *const LinkMap,
    pub l_prev: *const LinkMap,
}

/// `struct r_debug` of `<link.h>`, with glibc 2.35's extension (`r_version` 2: `r_next` chains
/// the other link-map namespaces).
#[repr(C)]
pub struct RDebug {
    pub r_version: i32,
    pub r_map: *const LinkMap,
    pub r_brk: usize,
    pub r_state: i32,
    pub r_ldbase: usize,
    pub r_next: *const RDebug,
}

extern "C" {
    /// The dynamic linker's debugger interface, defined by ld.so.
    pub static _r_debug: RDebug;
}

/// Whether `map` is one of the loaded objects, in any namespace. Call only where no object can
/// be loaded or unloaded concurrently by this thread's own doing (the lists are the loader's).
pub fn is_loaded_object(map: *const LinkMap) -> bool {
    // SAFETY: `_r_debug` is ld.so's; its lists hold only loaded objects. Reading them without the
    // loader lock can race with another thread's dlopen/dlclose, but a list element stays valid
    // until its object is unloaded, and this object (if it is one) is held by the caller's handle.
    unsafe {
        let mut ns = core::ptr::addr_of!(_r_debug);
        while !ns.is_null() {
            let mut m = (*ns).r_map;
            while !m.is_null() {
                if m == map {
                    return true;
                }
                m = (*m).l_next;
            }
            ns = if (*ns).r_version >= 2 { (*ns).r_next } else { core::ptr::null() };
        }
    }
    false
}

/// Whether the process has link-map namespaces besides the main one (`dlmopen`, audit modules).
/// A plain load: the chain only grows, and a namespace created meanwhile holds no thread from
/// before the caller looked.
pub fn has_other_namespaces() -> bool {
    // SAFETY: `_r_debug` is ld.so's, never freed; `r_next` is an aligned pointer-sized field that
    // ld.so writes once when it sets up another namespace (read once, never dereferenced).
    unsafe {
        let main = core::ptr::addr_of!(_r_debug);
        (*main).r_version >= 2 && !core::ptr::read_volatile(core::ptr::addr_of!((*main).r_next)).is_null()
    }
}

pub const DT_NULL: i64 = 0;
pub const DT_NEEDED: i64 = 1;
pub const DT_HASH: i64 = 4;
pub const DT_STRTAB: i64 = 5;
pub const DT_SYMTAB: i64 = 6;
pub const DT_SONAME: i64 = 14;
pub const DT_GNU_HASH: i64 = 0x6fff_fef5;

impl LinkMap {
    /// The raw value of the first `tag` entry of this object's dynamic section.
    ///
    /// # Safety
    /// `self` must describe a loaded object (its dynamic section is mapped).
    pub unsafe fn dyn_val(&self, tag: i64) -> Option<usize> {
        let mut d = self.l_ld;
        // SAFETY: the caller guarantees the dynamic section is mapped; it ends with DT_NULL.
        unsafe {
            while !d.is_null() && (*d).d_tag != DT_NULL {
                if (*d).d_tag == tag {
                    return Some((*d).d_val as usize);
                }
                d = d.add(1);
            }
        }
        None
    }

    /// A `d_ptr` entry as an absolute address: glibc rewrites these in place for the objects
    /// it relocates, but not for read-only dynamic sections (the vDSO's), so accept both.
    ///
    /// # Safety
    /// As for [`LinkMap::dyn_val`].
    pub unsafe fn dyn_ptr(&self, tag: i64) -> Option<usize> {
        // SAFETY: forwarded precondition.
        unsafe { self.dyn_val(tag) }.map(|p| if p < self.l_addr { p + self.l_addr } else { p })
    }
}
