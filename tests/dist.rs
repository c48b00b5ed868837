//! The `make dist` tarball, unpacked (`RSEQRT_STAGE` names its directory; `make check-dist` runs
//! this with the crash suite on every glibc of the matrix): one build that loads on glibc 2.31
//! and later, and a `rseqrt.pc` that finds its prefix wherever the tree was unpacked.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest glibc the tarball must load on (Debian 11).
const OLDEST_GLIBC: (u32, u32) = (2, 31);

/// The unpacked tree, or None (said once) when this run is not a dist check.
fn dist_tree() -> Option<PathBuf> {
    match std::env::var_os("RSEQRT_STAGE") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            support::skip("RSEQRT_STAGE is unset: this test checks an unpacked `make dist` tree (make check-dist)");
            None
        }
    }
}

/// The glibc symbol versions `object` needs (its `.gnu.version_r` entries), as (major, minor).
fn needed_glibc_versions(object: &Path) -> Vec<(u32, u32)> {
    let out = Command::new("readelf").args(["-V", "-W"]).arg(object).output().expect("run readelf");
    assert!(out.status.success(), "readelf -V {} failed", object.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let needs = text.split("Version needs section").nth(1).unwrap_or("");
    needs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut p = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((p.next()??, p.next()??))
        })
        .collect()
}

#[test]
fn objects_need_no_glibc_above_2_31() {
    let Some(tree) = dist_tree() else { return };
    let objects = ["lib/librseqrt.so.0", "lib/rseqrt/librseqrt_preload.so", "bin/rseqrt"];
    for rel in objects {
        let object = tree.join(rel);
        assert!(object.exists(), "the dist tree lacks {rel}");
        let versions = needed_glibc_versions(&object);
        assert!(!versions.is_empty(), "{rel}: readelf shows no GLIBC_* version needed: cannot judge it");
        let newest = *versions.iter().max().unwrap();
        println!("{rel}: needs glibc versions up to {}.{}", newest.0, newest.1);
        assert!(
            newest <= OLDEST_GLIBC,
            "{rel} needs GLIBC_{}.{}, newer than the oldest supported glibc {}.{}: it would not load there",
            newest.0,
            newest.1,
            OLDEST_GLIBC.0,
            OLDEST_GLIBC.1
        );
    }
}

/// The `.pc` file knows no absolute path: pkg-config derives the prefix from where it found it.
#[test]
fn pkg_config_finds_the_unpacked_prefix() {
    let Some(tree) = dist_tree() else { return };
    let stage = support::stage();
    let prefix = stage.pkg_config(&["--variable=prefix", "rseqrt"]);
    let prefix = PathBuf::from(prefix.first().expect("pkg-config printed a prefix"));
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(canon(&prefix), canon(&tree), "rseqrt.pc's prefix is not the unpacked tree");
    let libs = stage.pkg_config(&["--libs", "rseqrt"]);
    let lib_dir = canon(&tree.join("lib"));
    assert!(
        libs.iter().any(|a| a.strip_prefix("-L").is_some_and(|d| canon(Path::new(d)) == lib_dir)),
        "pkg-config --libs {libs:?} does not name the unpacked lib directory"
    );
    let pc = std::fs::read_to_string(tree.join("lib/pkgconfig/rseqrt.pc")).unwrap();
    assert!(!pc.contains("/build/") && pc.contains("${pcfiledir}"), "rseqrt.pc is not relocatable:\n{pc}");
}
