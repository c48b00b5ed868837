//! Links the shim against the freshly built `librseqrt.so` (the Makefile builds it first), and
//! lets the installed shim find it next to itself.
fn main() {
    let lib_dir = std::env::var("RSEQRT_LIB_DIR")
        .unwrap_or_else(|_| format!("{}/../build/lib", env!("CARGO_MANIFEST_DIR")));
    println!("cargo:rerun-if-env-changed=RSEQRT_LIB_DIR");
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-lib=dylib=rseqrt");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librseqrt_preload.so");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
}
