//! The few ELF and dynamic-linker structures rseqrt reads (`<elf.h>`, `<link.h>`), symbol
//! lookup in a loaded object's `.dynsym` through its hash tables, and an object's `DT_NEEDED`
//! closure among the loaded objects: plain data and loads, no call, usable at relocation time.

use core::ffi::CStr;

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

/// `Elf64_Sym`.
#[repr(C)]
struct Elf64Sym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

/// The object that defines `name` first in the main namespace's lookup order: the one a call
/// through the PLT of a program started normally binds to. Unlike `dlsym(RTLD_DEFAULT)`, it
/// skips an executable's canonical PLT entry (a non-PIE program that takes the function's
/// address), as ld.so does for the calls themselves.
///
/// The link-map chain is the load order: the executable, preloaded objects, then the
/// breadth-first `DT_NEEDED` closure, then later `RTLD_GLOBAL` loads, as the global scope is.
/// Call where no object is unloaded concurrently (constructor time).
pub fn first_definer(name: &[u8]) -> Option<*const LinkMap> {
    // SAFETY: `_r_debug` is ld.so's; each map of its list is a loaded object whose dynamic
    // section and symbol tables are mapped (see the function's precondition for unloads).
    unsafe {
        let mut m = (*core::ptr::addr_of!(_r_debug)).r_map;
        while !m.is_null() {
            if (*m).defines(name) {
                return Some(m);
            }
            m = (*m).l_next;
        }
    }
    None
}

/// Whether calls to `name` through the PLT bind to this very object (rseqrt's interposer): its
/// [`first_definer`] is the object whose dynamic section is this one's. (Not compared by a
/// function address: a program that takes that function's address turns it into its own
/// canonical PLT entry.)
pub fn calls_bind_here(name: &[u8]) -> bool {
    // SAFETY: a map of the loaded-object list (see `first_definer`).
    first_definer(name).is_some_and(|m| unsafe { (*m).l_ld } as usize == crate::arch::own_dynamic_section())
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

    /// Address of this object's definition of `name` (see [`lookup_in`]).
    ///
    /// # Safety
    /// As for [`LinkMap::dyn_val`]: the object's symbol and hash tables are mapped.
    pub unsafe fn lookup(&self, name: &[u8]) -> Option<usize> {
        // SAFETY: forwarded precondition.
        unsafe { lookup_in(self, name) }
    }

    /// Whether this object defines `name` (one without a dynamic section defines nothing:
    /// [`LinkMap::dyn_val`] finds no tables there).
    ///
    /// # Safety
    /// As for [`LinkMap::lookup`].
    pub unsafe fn defines(&self, name: &[u8]) -> bool {
        // SAFETY: forwarded precondition.
        unsafe { lookup_in(self, name) }.is_some()
    }
}

/// Address of the defined dynamic symbol `name` in object `m` (any version; an undefined entry,
/// such as an executable's canonical PLT entry for a function whose address it takes, is no
/// definition).
///
/// # Safety
/// `m` must be a loaded object whose dynamic section and symbol tables are mapped.
unsafe fn lookup_in(m: &LinkMap, name: &[u8]) -> Option<usize> {
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
        if unsafe { core::ptr::read_volatile(s.add(i)) } != name[i] {
            return false;
        }
        i += 1;
    }
    // SAFETY: all of `name` matched, so `s` has at least `i` non-NUL bytes and a terminator after.
    unsafe { core::ptr::read_volatile(s.add(i)) == 0 }
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

/// The `DT_NEEDED` names of `m`; `None` when it has more than fit.
///
/// # Safety
/// `m` must be a loaded object.
unsafe fn needed_names(m: &LinkMap) -> Option<[Option<&CStr>; 64]> {
    let mut out = [None; 64];
    // SAFETY: a loaded object's dynamic section and string table are mapped.
    unsafe {
        let Some(strtab) = m.dyn_ptr(DT_STRTAB) else { return Some(out) };
        // DT_NEEDED values are offsets into the string table.
        let mut d = m.l_ld;
        let mut n = 0;
        while !d.is_null() && (*d).d_tag != crate::elf::DT_NULL {
            if (*d).d_tag == DT_NEEDED {
                *out.get_mut(n)? = Some(CStr::from_ptr((strtab + (*d).d_val as usize) as *const libc::c_char));
                n += 1;
            }
            d = d.add(1);
        }
    }
    Some(out)
}

/// The loaded object, in the list `any` belongs to, whose SONAME or file name is `name`, among
/// those `skip` does not name.
///
/// # Safety
/// `any` must be a loaded object.
pub(crate) unsafe fn find_loaded(any: *const LinkMap, name: &CStr, skip: impl Fn(*const LinkMap) -> bool) -> Option<*const LinkMap> {
    let mut m = any;
    // SAFETY: the loader's list; every element is a loaded object with mapped tables.
    unsafe {
        while !(*m).l_prev.is_null() {
            m = (*m).l_prev;
        }
        while !m.is_null() {
            let obj = &*m;
            if skip(m) {
                m = obj.l_next;
                continue;
            }
            let soname = obj.dyn_val(DT_SONAME)
                .zip(obj.dyn_ptr(DT_STRTAB))
                .map(|(off, strtab)| CStr::from_ptr((strtab + off) as *const libc::c_char));
            let path = (!obj.l_name.is_null()).then(|| CStr::from_ptr(obj.l_name.cast()).to_bytes());
            // A DT_NEEDED entry with a slash names a path; otherwise a SONAME or a file name.
            let matches = if name.to_bytes().contains(&b'/') {
                path == Some(name.to_bytes())
            } else {
                soname == Some(name) || path.and_then(|p| p.rsplit(|&b| b == b'/').next()) == Some(name.to_bytes())
            };
            if matches {
                return Some(m);
            }
            m = obj.l_next;
        }
    }
    None
}


/// The object list is full.
#[derive(Debug)]
pub struct Full;

/// Adds `m` to `objects[..*count]` unless it is there already.
pub fn add_object(objects: &mut [*const LinkMap], count: &mut usize, m: *const LinkMap) -> Result<(), Full> {
    if !objects[..*count].contains(&m) {
        *objects.get_mut(*count).ok_or(Full)? = m;
        *count += 1;
    }
    Ok(())
}

/// Adds to `objects[..*count]` (the roots) the closure of their `DT_NEEDED` entries: each name
/// matched among the loaded objects of the first root's list that `skip` does not name, each
/// object once. `Err(Full)` when the closure does not fit in `objects`, or an object names more
/// than [`needed_names`] holds; what was found so far is kept.
///
/// # Safety
/// The roots must be loaded objects of one list, read under the loader's lock.
pub unsafe fn add_needed_closure(objects: &mut [*const LinkMap], count: &mut usize, skip: impl Fn(*const LinkMap) -> bool + Copy) -> Result<(), Full> {
    let mut next = 0;
    while next < *count {
        // SAFETY: every entry is a loaded object of the loader's list, under its lock.
        let needed = unsafe { needed_names(&*objects[next]) }.ok_or(Full)?;
        next += 1;
        for name in needed.iter().flatten() {
            // SAFETY: as above.
            if let Some(dep) = unsafe { find_loaded(objects[0], name, skip) } {
                add_object(objects, count, dep)?;
            }
        }
    }
    Ok(())
}
