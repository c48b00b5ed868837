//! Build script: the C library itself is linked by the Makefile from the static library (it needs
//! a version script with glibc's version nodes, which rustc's own cdylib script would clash
//! with). Here: rebuild when the linker inputs change, and expose the SONAME to the code.
fn main() {
    println!("cargo:rerun-if-changed=rseqrt.map");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=RSEQRT_SONAME=librseqrt.so.0");
}
