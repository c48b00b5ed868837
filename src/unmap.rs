//! `dlclose()` and `munmap()` that run the barrier first, over exactly the memory they may free.
//!
//! `dlclose(handle)` may unmap the handle's object and every dependency it loaded that nothing
//! else still uses. The candidates are the handle's object and the closure of its `DT_NEEDED`
//! entries among the loaded objects (matched by `DT_SONAME`, else by file name); each contributes
//! the span of its `PT_LOAD` segments. Candidates that stay loaded only cost a wider barrier.
//! More than `MAX_OBJECTS` candidates: the barrier covers every `rseq_cs` (`clear_all`).

use crate::barrier::{self, Range};
use crate::elf::{LinkMap, DT_NEEDED, DT_SONAME, DT_STRTAB};
use crate::platform::Errno;
use core::ffi::{c_void, CStr};
use core::ptr;

const MAX_OBJECTS: usize = 128;

/// The page size used to round lengths: the kernel frees whole pages.
const PAGE: usize = 4096;

/// `[addr, addr + len)` widened to whole pages, as the kernel treats it.
pub fn page_range(addr: usize, len: usize) -> Range {
    Range::new(addr & !(PAGE - 1), len.saturating_add(addr & (PAGE - 1)).saturating_add(PAGE - 1) & !(PAGE - 1))
}

/// `munmap()` after the barrier over the pages of `[addr, addr + len)`. Arguments `munmap()`
/// would reject are rejected first, with its errno (EINVAL), and nothing is freed if the barrier
/// fails.
pub fn munmap(addr: *mut c_void, len: usize) -> Result<(), Errno> {
    if len == 0 || addr as usize % PAGE != 0 || (addr as usize).checked_add(len).is_none() {
        return Err(Errno(libc::EINVAL));
    }
    barrier::clear(&[page_range(addr as usize, len)], 0)?;
    // SAFETY: the caller asked for this range to be unmapped; the kernel validates it.
    unsafe { crate::platform::munmap(addr.cast(), len) }
}

/// What `dlclose(handle)` may unmap.
enum Unmaps {
    /// The spans of the first `n` objects in the output array.
    Objects(usize),
    /// Too many objects (or dependencies) to list: treat it as everything.
    Everything,
    /// Not a handle of a loaded object: `dlclose()` will fail and unmap nothing.
    Nothing,
}

/// The ranges `dlclose(handle)` may unmap.
fn dlclose_ranges(handle: *mut c_void, out: &mut [Range; MAX_OBJECTS]) -> Unmaps {
    // glibc's handles are link maps; dlinfo(RTLD_DI_LINKMAP) would hand back any pointer, so look
    // the handle up in the loader's lists (every namespace) before reading through it.
    let map = handle as *const LinkMap;
    if !crate::elf::is_loaded_object(map) {
        return Unmaps::Nothing;
    }
    let mut objects = [ptr::null::<LinkMap>(); MAX_OBJECTS];
    objects[0] = map;
    let mut count = 1;
    let mut next = 0;
    while next < count {
        // SAFETY: every entry is a loaded object of the loader's list (the handle keeps the
        // object and its dependencies loaded while we look).
        let Some(needed) = (unsafe { needed_names(&*objects[next]) }) else { return Unmaps::Everything };
        next += 1;
        for name in needed.iter().flatten() {
            // SAFETY: as above.
            let Some(dep) = (unsafe { find_loaded(map, name) }) else { continue };
            if objects[..count].contains(&dep) {
                continue;
            }
            if count == MAX_OBJECTS {
                return Unmaps::Everything;
            }
            objects[count] = dep;
            count += 1;
        }
    }
    for (i, obj) in objects[..count].iter().enumerate() {
        // SAFETY: as above.
        out[i] = unsafe { load_span(&**obj) };
    }
    Unmaps::Objects(count)
}

/// `dlclose()` after the barrier over every object it may unmap. A handle that is not a loaded
/// object goes straight to `dlclose()`, so its return value and `dlerror()` are the C library's.
///
/// The object's own destructors run inside `dlclose()`, in the calling thread, after the
/// barrier: a critical section there would leave the caller's `rseq_cs` pointing into the
/// object as it is unmapped. So the caller's area is unregistered around the call (its
/// critical sections then take their fallback paths) and registered again after.
pub fn dlclose(handle: *mut c_void) -> Result<libc::c_int, Errno> {
    let mut ranges = [Range { start: 0, end: 0 }; MAX_OBJECTS];
    match dlclose_ranges(handle, &mut ranges) {
        Unmaps::Objects(n) => barrier::clear(&ranges[..n], 0)?,
        Unmaps::Everything => barrier::clear_all(0)?,
        Unmaps::Nothing => {}
    }
    let next = crate::real::DLCLOSE.get();
    if next == 0 {
        return Err(Errno(libc::ENOSYS));
    }
    // SAFETY: the C library's dlclose has this signature.
    let f: unsafe extern "C" fn(*mut c_void) -> libc::c_int = unsafe { core::mem::transmute(next) };
    // SAFETY: the C library's dlclose, called with the caller's handle.
    Ok(crate::registration::with_own_area_unregistered(|| unsafe { f(handle) }))
}

/// The `DT_NEEDED` names of `m`; `None` when it has more than fit.
///
/// # Safety
/// `m` must be a loaded object.
unsafe fn needed_names(m: &LinkMap) -> Option<[Option<&'static CStr>; 64]> {
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

/// The loaded object, in the list `any` belongs to, whose SONAME or file name is `name`.
///
/// # Safety
/// `any` must be a loaded object.
unsafe fn find_loaded(any: *const LinkMap, name: &CStr) -> Option<*const LinkMap> {
    let mut m = any;
    // SAFETY: the loader's list; every element is a loaded object with mapped tables.
    unsafe {
        while !(*m).l_prev.is_null() {
            m = (*m).l_prev;
        }
        while !m.is_null() {
            let obj = &*m;
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

/// The span of `m`'s `PT_LOAD` segments, from the program headers `dl_iterate_phdr` reports for
/// the object loaded at `m.l_addr`.
///
/// # Safety
/// `m` must be a loaded object.
unsafe fn load_span(m: &LinkMap) -> Range {
    let mut span = Range { start: usize::MAX, end: 0 };
    // SAFETY: dl_iterate_phdr hands each loaded object's program headers to the callback; the
    // callback only reads them.
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> libc::c_int {
        // SAFETY: `data` is the (l_addr, span) pair below; `info` is valid during the callback.
        unsafe {
            let (addr, span) = &mut *(data as *mut (usize, Range));
            let info = &*info;
            if info.dlpi_addr as usize != *addr {
                return 0;
            }
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD {
                    let start = *addr + ph.p_vaddr as usize;
                    span.start = span.start.min(start & !4095);
                    span.end = span.end.max(start + ph.p_memsz as usize);
                }
            }
            1
        }
    }
    let mut data = (m.l_addr, span);
    // SAFETY: `visit` only reads what it is handed; `data` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut data as *mut (usize, Range)).cast()) };
    span = data.1;
    if span.start > span.end {
        Range { start: 0, end: 0 }
    } else {
        span
    }
}
