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

/// `munmap()` after the barrier over `[addr, addr + len)`. Arguments `munmap()` would reject are
/// rejected first, with its errno (EINVAL), and nothing is freed if the barrier fails.
pub fn munmap(addr: *mut c_void, len: usize) -> Result<(), Errno> {
    let page = 4096usize;
    if len == 0 || addr as usize % page != 0 || (addr as usize).checked_add(len).is_none() {
        return Err(Errno(libc::EINVAL));
    }
    barrier::clear(&[Range::new(addr as usize, len)], 0)?;
    // SAFETY: the caller asked for this range to be unmapped; the kernel validates it.
    unsafe { crate::platform::munmap(addr.cast(), len) }
}

/// The ranges `dlclose(handle)` may unmap; `None` when there are too many to list.
fn dlclose_ranges(handle: *mut c_void, out: &mut [Range; MAX_OBJECTS]) -> Result<Option<usize>, ()> {
    let mut map: *const LinkMap = ptr::null_mut();
    // SAFETY: dlinfo validates the handle (dlerror() reports a bad one) and writes one pointer.
    if unsafe { libc::dlinfo(handle, libc::RTLD_DI_LINKMAP, (&mut map as *mut *const LinkMap).cast()) } != 0 || map.is_null() {
        return Err(());
    }
    let mut objects = [ptr::null::<LinkMap>(); MAX_OBJECTS];
    objects[0] = map;
    let mut count = 1;
    let mut next = 0;
    while next < count {
        // SAFETY: every entry is a link_map of a loaded object (the loader's list is stable while
        // the object is open, and the handle keeps it open).
        let needed = unsafe { needed_names(&*objects[next]) };
        next += 1;
        for name in needed.iter().flatten() {
            // SAFETY: as above.
            let Some(dep) = (unsafe { find_loaded(map, name) }) else { continue };
            if objects[..count].contains(&dep) {
                continue;
            }
            if count == MAX_OBJECTS {
                return Ok(None);
            }
            objects[count] = dep;
            count += 1;
        }
    }
    for (i, obj) in objects[..count].iter().enumerate() {
        // SAFETY: as above.
        out[i] = unsafe { load_span(&**obj) };
    }
    Ok(Some(count))
}

/// `dlclose()` after the barrier over every object it may unmap. An invalid handle goes straight
/// to `dlclose()`, so its return value and `dlerror()` are the C library's.
pub fn dlclose(handle: *mut c_void) -> Result<libc::c_int, Errno> {
    let mut ranges = [Range { start: 0, end: 0 }; MAX_OBJECTS];
    match dlclose_ranges(handle, &mut ranges) {
        Ok(Some(n)) => barrier::clear(&ranges[..n], 0)?,
        Ok(None) => barrier::clear_all(0)?,
        Err(()) => {}
    }
    let next = crate::real::DLCLOSE.get();
    if next == 0 {
        return Err(Errno(libc::ENOSYS));
    }
    // SAFETY: the C library's dlclose, called with the caller's handle.
    let f: unsafe extern "C" fn(*mut c_void) -> libc::c_int = unsafe { core::mem::transmute(next) };
    Ok(unsafe { f(handle) })
}

/// The `DT_NEEDED` names of `m` (at most 64).
///
/// # Safety
/// `m` must be a loaded object.
unsafe fn needed_names(m: &LinkMap) -> [Option<&'static CStr>; 64] {
    let mut out = [None; 64];
    // SAFETY: a loaded object's dynamic section and string table are mapped.
    unsafe {
        let Some(strtab) = m.dyn_ptr(DT_STRTAB) else { return out };
        // DT_NEEDED values are offsets into the string table.
        let mut d = m.l_ld;
        let mut n = 0;
        while !d.is_null() && (*d).d_tag != crate::elf::DT_NULL && n < out.len() {
            if (*d).d_tag == DT_NEEDED {
                out[n] = Some(CStr::from_ptr((strtab + (*d).d_val as usize) as *const libc::c_char));
                n += 1;
            }
            d = d.add(1);
        }
    }
    out
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
            let file = (!obj.l_name.is_null())
                .then(|| CStr::from_ptr(obj.l_name.cast()).to_bytes())
                .and_then(|p| p.rsplit(|&b| b == b'/').next());
            if soname == Some(name) || file == Some(name.to_bytes()) {
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
