//! `rseqrt info`: what rseq looks like to a program on this machine.

use rseqrt::Owner;
use serde::Serialize;
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

/// What `rseqrt info` reports; `--json` prints it as it is.
#[derive(Serialize)]
pub struct Info {
    pub kernel: Kernel,
    pub membarrier: Membarrier,
    pub libc: Libc,
    pub rseqrt: Rseqrt,
}

#[derive(Serialize)]
pub struct Kernel {
    pub release: String,
    pub rseq: bool,
    pub at_rseq_feature_size: Option<u32>,
    pub at_rseq_align: Option<u32>,
    pub feature_size: u32,
    pub node_id: bool,
    pub mm_cid: bool,
}

#[derive(Serialize)]
pub struct Membarrier {
    pub available: bool,
    pub query_mask: Option<String>,
    pub commands: Vec<&'static str>,
    pub private_expedited_rseq: bool,
}

#[derive(Serialize)]
pub struct Libc {
    pub name: &'static str,
    pub version: String,
    pub rseq_abi: bool,
    pub registers_rseq: bool,
    pub rseq_offset: Option<i64>,
    pub rseq_size: Option<u32>,
    pub rseq_flags: Option<u32>,
    pub tunable_glibc_pthread_rseq: Option<u8>,
}

#[derive(Serialize)]
pub struct Rseqrt {
    pub owner: &'static str,
    pub owner_code: i32,
    pub owner_meaning: &'static str,
    /// Why the owner is what it is (`rseqrt_owner_reason()`).
    pub owner_reason: &'static str,
    pub area_length: u32,
    pub rseq_offset: Option<i64>,
    pub current_cpu: Option<u32>,
    pub current_node: Option<u32>,
    pub current_mm_cid: Option<u32>,
    pub reserved_signal: i32,
    pub reserved_signal_name: String,
}

pub fn collect() -> Info {
    // SAFETY: getauxval only reads the auxiliary vector; 0 means absent.
    let (feature_size, align) = unsafe { (libc::getauxval(AT_RSEQ_FEATURE_SIZE) as u32, libc::getauxval(AT_RSEQ_ALIGN) as u32) };
    let has_rseq = kernel_has_rseq();
    let fs = rseqrt::kernel_feature_size();
    let kernel = Kernel {
        release: uname_release(),
        rseq: has_rseq,
        at_rseq_feature_size: (feature_size != 0).then_some(feature_size),
        at_rseq_align: (align != 0).then_some(align),
        feature_size: fs,
        node_id: has_rseq && fs >= 24,
        mm_cid: has_rseq && fs >= 28,
    };

    let mask = rseqrt::barrier::expedite::query();
    let membarrier = Membarrier {
        available: mask.is_some(),
        query_mask: mask.map(|m| format!("{m:#x}")),
        commands: mask.map_or(Vec::new(), |m| MEMBARRIER_CMDS.iter().filter(|(bit, _)| m as u32 & bit != 0).map(|(_, n)| *n).collect()),
        private_expedited_rseq: mask.is_some_and(|m| m & (1 << 7) != 0),
    };

    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned();
    let g = glibc_rseq();
    let libc = Libc {
        name: "glibc",
        version,
        rseq_abi: g.is_some(),
        registers_rseq: g.as_ref().is_some_and(|g| g.size > 0),
        rseq_offset: g.as_ref().map(|g| g.offset as i64),
        rseq_size: g.as_ref().map(|g| g.size),
        rseq_flags: g.as_ref().map(|g| g.flags),
        tunable_glibc_pthread_rseq: tunable_rseq().map(u8::from),
    };

    let owner = rseqrt::owner();
    let rseqrt = Rseqrt {
        owner: owner_name(owner),
        owner_code: owner as i32,
        owner_meaning: owner_words(owner),
        owner_reason: rseqrt::owner_reason(),
        area_length: rseqrt::area_length(),
        rseq_offset: rseqrt::area().map(|_| rseqrt::area_offset() as i64),
        current_cpu: rseqrt::current_cpu().ok(),
        current_node: rseqrt::current_node().ok(),
        current_mm_cid: rseqrt::current_mm_cid().ok(),
        reserved_signal: rseqrt::reserved_signal(),
        reserved_signal_name: signal_name(rseqrt::reserved_signal()),
    };
    Info { kernel, membarrier, libc, rseqrt }
}

/// A value for people: "unknown" when absent, "yes"/"no" for a flag.
fn show<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("unknown".into(), T::to_string)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn run(as_json: bool) -> i32 {
    let i = collect();
    if as_json {
        crate::print_json(&i);
        return 0;
    }
    let (k, m, l, r) = (&i.kernel, &i.membarrier, &i.libc, &i.rseqrt);
    println!("Kernel {}", k.release);
    println!("  rseq system call:          {}", yes(k.rseq));
    println!("  AT_RSEQ_FEATURE_SIZE:      {}", show(&k.at_rseq_feature_size));
    println!("  AT_RSEQ_ALIGN:             {}", show(&k.at_rseq_align));
    println!("  extended fields:           node_id {}, mm_cid {}", yes(k.node_id), yes(k.mm_cid));
    println!("membarrier");
    println!("  MEMBARRIER_CMD_QUERY:      {}", show(&m.query_mask));
    println!("  commands:                  {}", m.commands.join(" "));
    println!("  PRIVATE_EXPEDITED_RSEQ:    {} (rseqrt's barrier uses it to reach running threads fast)", yes(m.private_expedited_rseq));
    println!("C library: glibc {}", l.version);
    println!("  rseq ABI (__rseq_*):       {}", yes(l.rseq_abi));
    println!("  registers rseq itself:     {} (glibc's __rseq_size {}, __rseq_offset {})",
             yes(l.registers_rseq), show(&l.rseq_size), show(&l.rseq_offset));
    if let Some(on) = l.tunable_glibc_pthread_rseq {
        println!("  GLIBC_TUNABLES:            glibc.pthread.rseq={on}");
    }
    println!("rseqrt (this process)");
    println!("  owner mode:                {} ({})", r.owner, r.owner_meaning);
    println!("  why:                       {}", r.owner_reason);
    let would = if l.registers_rseq {
        "libc (glibc registers; rseqrt adopts). With GLIBC_TUNABLES=glibc.pthread.rseq=0: none \
         (registration left to the program), and with RSEQRT_REGISTER=1 as well: self"
    } else if rseqrt::owner() == Owner::None {
        "none"
    } else {
        "self (glibc does not register rseq here)"
    };
    println!("  a program started like this gets: {would}");
    println!("  registered area length:    {} bytes", r.area_length);
    println!("  area offset from the thread pointer: {}", show(&r.rseq_offset));
    println!("  current cpu / node / mm_cid: {} / {} / {}", show(&r.current_cpu), show(&r.current_node), show(&r.current_mm_cid));
    println!("  reserved signal:           {} ({}; set RSEQRT_SIGNAL to choose another)", r.reserved_signal, r.reserved_signal_name);
    0
}
