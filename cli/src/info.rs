//! `rseqrt info`: what rseq looks like to a program on this machine.

use crate::json::Json;
use rseqrt::Owner;
use std::ffi::{c_char, c_void, CStr};

const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
const AT_RSEQ_ALIGN: libc::c_ulong = 28;
const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// The membarrier commands, by bit of the `MEMBARRIER_CMD_QUERY` mask.
const MEMBARRIER_CMDS: &[(u32, &str)] = &[
    (1 << 0, "GLOBAL"),
    (1 << 1, "GLOBAL_EXPEDITED"),
    (1 << 2, "REGISTER_GLOBAL_EXPEDITED"),
    (1 << 3, "PRIVATE_EXPEDITED"),
    (1 << 4, "REGISTER_PRIVATE_EXPEDITED"),
    (1 << 5, "PRIVATE_EXPEDITED_SYNC_CORE"),
    (1 << 6, "REGISTER_PRIVATE_EXPEDITED_SYNC_CORE"),
    (1 << 7, "PRIVATE_EXPEDITED_RSEQ"),
    (1 << 8, "REGISTER_PRIVATE_EXPEDITED_RSEQ"),
    (1 << 9, "GET_REGISTRATIONS"),
];

extern "C" {
    fn gnu_get_libc_version() -> *const c_char;
}

/// glibc's own rseq exports, defined by the dynamic linker (`ld-linux-x86-64.so.2`, version
/// GLIBC_2.35). rseqrt interposes the same names (this very program defines them, and so does a
/// program linked with librseqrt), so a lookup from the global scope (`RTLD_DEFAULT`) finds
/// rseqrt's definition first. A handle on ld.so itself cannot be searched (the dynamic linker's
/// own object has no search list), so the lookup goes through libc.so.6's handle, whose local
/// scope is libc.so.6 and its dependency ld.so: glibc's definitions, whatever else is loaded.
pub struct GlibcRseq {
    pub offset: isize,
    pub size: u32,
    pub flags: u32,
}

pub fn glibc_rseq() -> Option<GlibcRseq> {
    // SAFETY: RTLD_NOLOAD only returns a handle for an object that is already loaded; dlvsym
    // returns the address of a versioned data symbol, read with its declared type.
    unsafe {
        let libc_h = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if libc_h.is_null() {
            return None;
        }
        let sym = |name: &CStr| libc::dlvsym(libc_h, name.as_ptr(), c"GLIBC_2.35".as_ptr());
        let (off, size, flags) = (sym(c"__rseq_offset"), sym(c"__rseq_size"), sym(c"__rseq_flags"));
        let r = (!off.is_null() && !size.is_null()).then(|| GlibcRseq {
            offset: *(off as *const isize),
            size: *(size as *const u32),
            flags: if flags.is_null() { 0 } else { *(flags as *const u32) },
        });
        libc::dlclose(libc_h);
        r
    }
}

/// `Some(false)` when GLIBC_TUNABLES turns glibc's registration off, `Some(true)` when it sets
/// it on explicitly, `None` when it says nothing.
pub fn tunable_rseq() -> Option<bool> {
    let t = std::env::var("GLIBC_TUNABLES").ok()?;
    t.split(':').filter_map(|kv| kv.strip_prefix("glibc.pthread.rseq=")).next_back().map(|v| v.trim() != "0")
}

fn kernel_has_rseq() -> bool {
    // An unregister request for an area that is not registered: EINVAL when rseq exists; ENOSYS
    // (old kernel, seccomp) or EPERM (seccomp) when it cannot be used. It changes nothing.
    // SAFETY: an unregister request for no area registers nothing and reads no memory.
    let r = unsafe { libc::syscall(libc::SYS_rseq, std::ptr::null::<c_void>(), 32u32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
}

fn uname_release() -> String {
    // SAFETY: uname fills the struct it is given.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

pub fn owner_name(o: Owner) -> &'static str {
    match o {
        Owner::None => "none",
        Owner::Libc => "libc",
        Owner::SelfOwned => "self",
    }
}

fn owner_words(o: Owner) -> &'static str {
    match o {
        Owner::None => "nobody: rseq is unavailable, rseqrt's calls fall back to system calls and its barrier has nothing to do",
        Owner::Libc => "the C library registers every thread; rseqrt adopts glibc's areas",
        Owner::SelfOwned => "rseqrt registers its own area in every thread",
    }
}

pub fn signal_name(sig: i32) -> String {
    if sig <= 0 {
        return "none".into();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if sig >= min && sig <= max {
        if max - sig <= sig - min {
            format!("SIGRTMAX-{}", max - sig).replace("SIGRTMAX-0", "SIGRTMAX")
        } else {
            format!("SIGRTMIN+{}", sig - min).replace("SIGRTMIN+0", "SIGRTMIN")
        }
    } else if sig == max + 1 || sig == min - 1 {
        // rseqrt took it out of glibc's range (see the README's reserved-signal paragraph).
        format!("left out of SIGRTMIN..SIGRTMAX, which reads {min}..{max}")
    } else {
        format!("signal {sig}")
    }
}

pub fn collect() -> Json {
    // SAFETY: getauxval only reads the auxiliary vector; 0 means absent.
    let (feature_size, align) = unsafe { (libc::getauxval(AT_RSEQ_FEATURE_SIZE) as u32, libc::getauxval(AT_RSEQ_ALIGN) as u32) };
    let has_rseq = kernel_has_rseq();
    let fs = rseqrt::kernel_feature_size();
    let kernel = Json::obj()
        .with("release", uname_release())
        .with("rseq", has_rseq)
        .with("at_rseq_feature_size", (feature_size != 0).then_some(feature_size))
        .with("at_rseq_align", (align != 0).then_some(align))
        .with("feature_size", fs)
        .with("node_id", has_rseq && fs >= 24)
        .with("mm_cid", has_rseq && fs >= 28);

    let mask = rseqrt::barrier::expedite::query();
    let cmds: Vec<Json> = match mask {
        Some(m) => MEMBARRIER_CMDS.iter().filter(|(bit, _)| m as u32 & bit != 0).map(|(_, n)| Json::from(*n)).collect(),
        None => Vec::new(),
    };
    let membarrier = Json::obj()
        .with("available", mask.is_some())
        .with("query_mask", mask.map(|m| format!("{m:#x}")))
        .with("commands", Json::Arr(cmds))
        .with("private_expedited_rseq", mask.is_some_and(|m| m & (1 << 7) != 0));

    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned();
    let g = glibc_rseq();
    let registers = g.as_ref().is_some_and(|g| g.size > 0);
    let libc_j = Json::obj()
        .with("name", "glibc")
        .with("version", version)
        .with("rseq_abi", g.is_some())
        .with("registers_rseq", registers)
        .with("rseq_offset", g.as_ref().map(|g| g.offset as i64))
        .with("rseq_size", g.as_ref().map(|g| g.size))
        .with("rseq_flags", g.as_ref().map(|g| g.flags))
        .with("tunable_glibc_pthread_rseq", tunable_rseq().map(|on| if on { 1 } else { 0 }));

    let owner = rseqrt::owner();
    let area = rseqrt::area();
    let rseqrt_j = Json::obj()
        .with("owner", owner_name(owner))
        .with("owner_code", owner as i32)
        .with("owner_meaning", owner_words(owner))
        .with("area_length", rseqrt::area_length())
        .with("rseq_offset", area.map(|_| rseqrt::area_offset() as i64))
        .with("current_cpu", rseqrt::current_cpu().ok())
        .with("current_node", rseqrt::current_node().ok())
        .with("current_mm_cid", rseqrt::current_mm_cid().ok())
        .with("reserved_signal", rseqrt::reserved_signal())
        .with("reserved_signal_name", signal_name(rseqrt::reserved_signal()));
    Json::obj().with("kernel", kernel).with("membarrier", membarrier).with("libc", libc_j).with("rseqrt", rseqrt_j)
}

fn get<'a>(j: &'a Json, path: &[&str]) -> &'a Json {
    let mut cur = j;
    for key in path {
        cur = match cur {
            Json::Obj(f) => f.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or(&Json::Null),
            _ => &Json::Null,
        };
    }
    cur
}

fn show(j: &Json) -> String {
    match j {
        Json::Null => "unknown".into(),
        Json::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Json::Int(i) => i.to_string(),
        Json::Num(x) => x.to_string(),
        Json::Str(s) => s.clone(),
        Json::Arr(a) => a.iter().map(show).collect::<Vec<_>>().join(" "),
        Json::Obj(_) => "{..}".into(),
    }
}

pub fn run(args: &[String]) -> i32 {
    let as_json = match crate::json_flag("info", crate::HELP_INFO, args) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let j = collect();
    if as_json {
        print!("{}", j.pretty());
        return 0;
    }
    let s = |p: &[&str]| show(get(&j, p));
    println!("Kernel {}", s(&["kernel", "release"]));
    println!("  rseq system call:          {}", s(&["kernel", "rseq"]));
    println!("  AT_RSEQ_FEATURE_SIZE:      {}", s(&["kernel", "at_rseq_feature_size"]));
    println!("  AT_RSEQ_ALIGN:             {}", s(&["kernel", "at_rseq_align"]));
    println!("  extended fields:           node_id {}, mm_cid {}", s(&["kernel", "node_id"]), s(&["kernel", "mm_cid"]));
    println!("membarrier");
    println!("  MEMBARRIER_CMD_QUERY:      {}", s(&["membarrier", "query_mask"]));
    println!("  commands:                  {}", s(&["membarrier", "commands"]));
    println!("  PRIVATE_EXPEDITED_RSEQ:    {} (rseqrt's barrier uses it to reach running threads fast)", s(&["membarrier", "private_expedited_rseq"]));
    println!("C library: glibc {}", s(&["libc", "version"]));
    println!("  rseq ABI (__rseq_*):       {}", s(&["libc", "rseq_abi"]));
    println!("  registers rseq itself:     {} (glibc's __rseq_size {}, __rseq_offset {})",
             s(&["libc", "registers_rseq"]), s(&["libc", "rseq_size"]), s(&["libc", "rseq_offset"]));
    if let Some(on) = tunable_rseq() {
        println!("  GLIBC_TUNABLES:            glibc.pthread.rseq={}", if on { 1 } else { 0 });
    }
    println!("rseqrt (this process)");
    println!("  owner mode:                {} ({})", s(&["rseqrt", "owner"]), s(&["rseqrt", "owner_meaning"]));
    let registers = matches!(get(&j, &["libc", "registers_rseq"]), Json::Bool(true));
    let would = if registers {
        "libc (glibc registers; rseqrt adopts). With GLIBC_TUNABLES=glibc.pthread.rseq=0: self"
    } else if rseqrt::owner() == Owner::None {
        "none"
    } else {
        "self (glibc does not register rseq here)"
    };
    let registers_note = would;
    println!("  a program started like this gets: {registers_note}");
    println!("  registered area length:    {} bytes", s(&["rseqrt", "area_length"]));
    println!("  area offset from the thread pointer: {}", s(&["rseqrt", "rseq_offset"]));
    println!("  current cpu / node / mm_cid: {} / {} / {}", s(&["rseqrt", "current_cpu"]), s(&["rseqrt", "current_node"]), s(&["rseqrt", "current_mm_cid"]));
    println!("  reserved signal:           {} ({}; set RSEQRT_SIGNAL to choose another)",
             s(&["rseqrt", "reserved_signal"]), s(&["rseqrt", "reserved_signal_name"]));
    0
}
