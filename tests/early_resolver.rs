//! The relocation-time resolver (`rseqrt::early::resolve`) runs while the dynamic linker is still
//! relocating librseqrt.so, before the C library may be called: it must reach no PLT entry and
//! no external symbol. This test walks its call graph in the installed library's disassembly and
//! fails on any call that leaves the object (`@plt`, or an indirect call through a GOT slot that
//! is not a relocation to one of the object's own functions).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn resolver_calls_nothing_outside_the_library() {
    let lib = support::stage().lib("librseqrt.so");
    let lib = lib.to_str().expect("path");
    let dis = tool("objdump", &["-d", "--no-show-raw-insn", lib]);
    // Function start address -> (name, body lines).
    let mut functions: BTreeMap<u64, (String, Vec<String>)> = BTreeMap::new();
    let mut current = None;
    for line in dis.lines() {
        if let Some((addr, rest)) = line.split_once(" <") {
            if let (Ok(a), Some(name)) = (u64::from_str_radix(addr.trim(), 16), rest.strip_suffix(">:")) {
                functions.insert(a, (name.to_string(), Vec::new()));
                current = Some(a);
                continue;
            }
        }
        if let Some(a) = current {
            functions.get_mut(&a).expect("current").1.push(line.to_string());
        }
    }
    // GOT slot -> RELATIVE target (the object's own addresses) or external symbol.
    let relocs = tool("readelf", &["-rW", lib]);
    let mut got: BTreeMap<u64, Result<u64, String>> = BTreeMap::new();
    for line in relocs.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "R_X86_64_RELATIVE" {
            if let (Ok(slot), Ok(target)) = (u64::from_str_radix(f[0], 16), u64::from_str_radix(f[3], 16)) {
                got.insert(slot, Ok(target));
            }
        } else if f.len() >= 5 && (f[2] == "R_X86_64_GLOB_DAT" || f[2] == "R_X86_64_JUMP_SLOT") {
            if let Ok(slot) = u64::from_str_radix(f[0], 16) {
                got.insert(slot, Err(f[4].to_string()));
            }
        }
    }
    let start = functions
        .iter()
        .find(|(_, (name, _))| name.starts_with("_ZN6rseqrt5early7resolve"))
        .map(|(a, _)| *a)
        .expect("rseqrt::early::resolve in the disassembly");
    let (mut todo, mut seen, mut problems) = (vec![start], BTreeSet::new(), Vec::new());
    while let Some(addr) = todo.pop() {
        if !seen.insert(addr) {
            continue;
        }
        let Some((name, body)) = functions.get(&addr) else {
            problems.push(format!("call into the middle of a function at {addr:#x}"));
            continue;
        };
        for line in body.iter().filter(|l| l.contains("call") || l.contains("jmp ")) {
            if line.contains("@plt") {
                problems.push(format!("{name}: {line}"));
            } else if let Some(slot) = line.split("# ").nth(1).and_then(|c| u64::from_str_radix(c.split_whitespace().next()?, 16).ok()) {
                match got.get(&slot) {
                    Some(Ok(target)) => todo.push(*target),
                    Some(Err(sym)) => problems.push(format!("{name}: calls external {sym}: {line}")),
                    None => problems.push(format!("{name}: indirect call through unknown slot: {line}")),
                }
            } else if line.contains("call   *") {
                // Register-indirect: the target was loaded by a `lea` of a local function.
                continue;
            } else if line.contains("call") {
                if let Some(target) = line.split_whitespace().find_map(|w| u64::from_str_radix(w, 16).ok().filter(|_| w.len() >= 4)) {
                    if functions.contains_key(&target) {
                        todo.push(target);
                    }
                }
            }
        }
        for line in body.iter().filter(|l| l.contains("lea ") && l.contains("(%rip)")) {
            if let Some(target) = line.split("# ").nth(1).and_then(|c| u64::from_str_radix(c.split_whitespace().next()?, 16).ok()) {
                // The resolver returns the constructor's address; the constructor runs later,
                // from .init_array, when calling the C library is fine.
                let is_constructor = functions.get(&target).is_some_and(|(n, _)| n.starts_with("_ZN6rseqrt4init3run"));
                if functions.contains_key(&target) && !is_constructor {
                    todo.push(target);
                }
            }
        }
    }
    println!("resolver call graph: {} functions, all inside librseqrt.so", seen.len());
    assert!(seen.len() > 1, "the walk found no callees: the disassembly format changed?");
    assert!(problems.is_empty(), "the relocation-time resolver leaves the object:\n{}", problems.join("\n"));
}

/// The hook that fills the exports must be an IRELATIVE relocation in `.init_array` (a plain
/// RELATIVE one would run the resolver as an ordinary constructor, too late for copy relocations),
/// in both the library and the preload shim.
#[test]
fn exports_are_filled_by_an_irelative_relocation_in_init_array() {
    for name in ["librseqrt.so", "rseqrt/librseqrt_preload.so"] {
        let lib = support::stage().lib(name);
        let lib = lib.to_str().expect("path");
        let sections = tool("readelf", &["-SW", lib]);
        let init = sections.lines().find(|l| l.contains(" .init_array ")).expect(".init_array section");
        let f: Vec<&str> = init.split_whitespace().collect();
        let at = f.iter().position(|w| *w == "INIT_ARRAY").expect("INIT_ARRAY type");
        let (addr, size) = (u64::from_str_radix(f[at + 1], 16).unwrap(), u64::from_str_radix(f[at + 3], 16).unwrap());
        let irelative: Vec<u64> = tool("readelf", &["-rW", lib])
            .lines()
            .filter(|l| l.contains("R_X86_64_IRELATIVE"))
            .filter_map(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
            .collect();
        println!("{name}: .init_array {addr:#x}+{size:#x}, IRELATIVE at {irelative:x?}");
        assert!(
            irelative.iter().any(|&slot| slot >= addr && slot < addr + size),
            "{name}: no IRELATIVE relocation in .init_array; the exports would be filled too late"
        );
    }
}
