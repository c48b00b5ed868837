//! Builds the selftest's (and the benchmarks') tiny plugins, shared libraries whose rseq
//! critical section and `struct rseq_cs` descriptor live in the plugin, with the `cc` crate's
//! compiler. The CLI embeds the resulting bytes (`include_bytes!`) and writes them out at run
//! time. The critical section comes from the C ABI tests' `rseq_cs.h` (used by include path).
use std::path::{Path, PathBuf};

fn link(compiler: &cc::Tool, out: &Path, name: &str, src: &Path, extra: &[&str], include: &Path) {
    let mut cmd = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra"])
        .arg("-I")
        .arg(include)
        .arg(format!("-Wl,-soname,{name}"))
        .arg("-o")
        .arg(out.join(name))
        .arg(src)
        .args(extra);
    let status = cmd.status().unwrap_or_else(|e| panic!("running the C compiler for {name}: {e}"));
    assert!(status.success(), "building {name} failed: {cmd:?}");
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let include = manifest.join("../c-abi-tests");
    let src = manifest.join("selftest");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    link(&compiler, &out, "libselftest_plugin.so", &src.join("plugin.c"), &[], &include);
    link(&compiler, &out, "libselftest_dep_lib.so", &src.join("dep_lib.c"), &[], &include);
    let dep_dir = format!("-L{}", out.display());
    link(&compiler, &out, "libselftest_dep_top.so", &src.join("dep_top.c"),
         &["-Wl,--no-as-needed", &dep_dir, "-lselftest_dep_lib", "-Wl,-rpath,$ORIGIN"], &include);
    for f in ["plugin.c", "dep_lib.c", "dep_top.c"] {
        println!("cargo:rerun-if-changed=selftest/{f}");
    }
    // The plugins find the rseq area through glibc's ABI names. Before glibc 2.35 only rseqrt
    // (linked into this executable as a Rust crate) defines them, so the executable exports them
    // to the objects it loads.
    for name in ["__rseq_offset", "__rseq_size", "__rseq_flags"] {
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol={name}");
    }
    println!("cargo:rerun-if-changed=../c-abi-tests/rseq_cs.h");
    println!("cargo:rerun-if-changed=build.rs");
}
