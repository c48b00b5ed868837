//! The `rseqrt` command: `info --json` parses and has the expected keys, `selftest --json`
//! shows the crash without rseqrt and survival with it in every scenario, `bench --quick` writes
//! its result files (into a temporary directory, never docs/), and `--help` works everywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_rseqrt");

/// Just enough JSON to check the command's output.
#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(BTreeMap<String, J>),
}

impl J {
    fn get(&self, key: &str) -> &J {
        match self {
            J::Obj(m) => m.get(key).unwrap_or_else(|| panic!("missing key {key:?} in {self:?}")),
            _ => panic!("not an object when looking up {key:?}: {self:?}"),
        }
    }
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(self.s.get(self.i), Some(&c), "expected {:?} at {}", c as char, self.i);
        self.i += 1;
    }
    /// The items of an array or object, from its opening bracket to `close`, each read by `item`
    /// (which starts at the item and leaves the separator to this).
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self)) {
        self.i += 1;
        self.ws();
        if self.s[self.i] == close {
            self.i += 1;
            return;
        }
        loop {
            item(self);
            self.ws();
            if self.s[self.i] == b',' {
                self.i += 1;
            } else {
                self.eat(close);
                return;
            }
        }
    }
    fn literal(&mut self, word: &str, v: J) -> J {
        self.i += word.len();
        v
    }
    fn value(&mut self) -> J {
        self.ws();
        match self.s[self.i] {
            b'{' => {
                let mut m = BTreeMap::new();
                self.items(b'}', |p| {
                    let J::Str(k) = p.value() else { panic!("object key must be a string") };
                    p.eat(b':');
                    let v = p.value();
                    m.insert(k, v);
                });
                J::Obj(m)
            }
            b'[' => {
                let mut v = Vec::new();
                self.items(b']', |p| v.push(p.value()));
                J::Arr(v)
            }
            b'"' => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let c = self.s[self.i];
                    self.i += 1;
                    match c {
                        b'"' => return J::Str(out),
                        b'\\' => {
                            let e = self.s[self.i];
                            self.i += 1;
                            match e {
                                b'n' => out.push('\n'),
                                b't' => out.push('\t'),
                                b'u' => {
                                    let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                                    out.push(char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap());
                                    self.i += 4;
                                }
                                c => out.push(c as char),
                            }
                        }
                        _ => {
                            // multi-byte UTF-8: copy the raw bytes of this character
                            let start = self.i - 1;
                            let mut end = self.i;
                            while end < self.s.len() && (self.s[end] & 0xC0) == 0x80 {
                                end += 1;
                            }
                            out.push_str(std::str::from_utf8(&self.s[start..end]).unwrap());
                            self.i = end;
                        }
                    }
                }
            }
            b't' => self.literal("true", J::Bool(true)),
            b'f' => self.literal("false", J::Bool(false)),
            b'n' => self.literal("null", J::Null),
            _ => {
                let start = self.i;
                while self.i < self.s.len() && matches!(self.s[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    self.i += 1;
                }
                J::Num(std::str::from_utf8(&self.s[start..self.i]).unwrap().parse().expect("number"))
            }
        }
    }
}

fn parse(text: &str) -> J {
    let mut p = P { s: text.as_bytes(), i: 0 };
    let v = p.value();
    p.ws();
    assert_eq!(p.i, text.len(), "trailing text after the JSON value");
    v
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(EXE).args(args).env_remove("GLIBC_TUNABLES").output().expect("run rseqrt");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn info_json_has_the_expected_keys() {
    let (code, out, err) = run(&["info", "--json"]);
    assert_eq!(code, 0, "{err}");
    let j = parse(&out);
    let expected: [(&str, &[&str]); 4] = [
        ("kernel", &["release", "rseq", "at_rseq_feature_size", "at_rseq_align", "feature_size", "node_id", "mm_cid"]),
        ("membarrier", &["available", "query_mask", "commands", "private_expedited_rseq"]),
        ("libc", &["name", "version", "rseq_abi", "registers_rseq", "rseq_offset", "rseq_size", "rseq_flags"]),
        ("rseqrt", &["owner", "owner_code", "area_length", "reserved_signal", "reserved_signal_name", "current_cpu"]),
    ];
    for (section, keys) in expected {
        for k in keys {
            j.get(section).get(k);
        }
    }
    assert!(matches!(j.get("rseqrt").get("owner"), J::Str(s) if ["none", "libc", "self"].contains(&s.as_str())));
    // On glibc 2.35+ with rseq, glibc registers and rseqrt adopts.
    if j.get("kernel").get("rseq") == &J::Bool(true) && j.get("libc").get("registers_rseq") == &J::Bool(true) {
        assert_eq!(j.get("rseqrt").get("owner"), &J::Str("libc".into()));
    }
    println!("info --json: owner {:?}, glibc registers {:?}", j.get("rseqrt").get("owner"), j.get("libc").get("registers_rseq"));
}

#[test]
fn info_sees_the_tunable() {
    let out = Command::new(EXE).args(["info", "--json"]).env("GLIBC_TUNABLES", "glibc.pthread.rseq=0").output().unwrap();
    assert!(out.status.success());
    let j = parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(j.get("libc").get("registers_rseq"), &J::Bool(false));
    assert_eq!(j.get("libc").get("tunable_glibc_pthread_rseq"), &J::Num(0.0));
    if j.get("kernel").get("rseq") == &J::Bool(true) {
        assert_eq!(j.get("rseqrt").get("owner"), &J::Str("self".into()));
    }
}

#[test]
fn selftest_crashes_without_and_survives_with() {
    let (code, out, err) = run(&["selftest", "--json"]);
    let j = parse(&out);
    let J::Arr(scenarios) = j.get("scenarios") else { panic!("scenarios is not an array") };
    let names: Vec<_> = scenarios.iter().map(|s| s.get("name").clone()).collect();
    assert_eq!(names, ["dlclose", "dlclose-dep", "munmap"].map(|n| J::Str(n.into())));
    for s in scenarios {
        println!("{:?}: without {:?}, with {:?}", s.get("name"), s.get("without_rseqrt").get("outcome"), s.get("with_rseqrt").get("outcome"));
        assert_eq!(s.get("without_rseqrt").get("crashed"), &J::Bool(true), "scenario {:?} was not reproduced: {s:?}", s.get("name"));
        assert_eq!(s.get("with_rseqrt").get("survived"), &J::Bool(true), "rseqrt did not protect {:?}: {s:?}", s.get("name"));
    }
    assert_eq!(j.get("protected"), &J::Bool(true));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn selftest_words_for_people() {
    let (code, out, _) = run(&["selftest"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("without rseqrt, the kernel killed the process"), "{out}");
    assert!(out.contains("rseqrt protected the process in every scenario"), "{out}");
}

#[test]
fn help_on_every_command() {
    for args in [&["--help"][..], &["info", "--help"], &["selftest", "--help"], &["bench", "--help"]] {
        let (code, out, _) = run(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage: rseqrt"), "{args:?}: {out}");
    }
    let (code, _, _) = run(&["no-such-command"]);
    assert_eq!(code, 2);
}

#[test]
fn bench_quick_writes_the_result_files() {
    let lib_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/lib");
    if !lib_dir.join("librseqrt.so").exists() {
        panic!("{} has no librseqrt.so: run `make` first (make check does)", lib_dir.display());
    }
    let out_dir = std::env::temp_dir().join(format!("rseqrt-cli-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let start = std::time::Instant::now();
    let (code, out, err) = run(&["bench", "--quick", "--out", out_dir.to_str().unwrap(), "--lib-dir", lib_dir.to_str().unwrap()]);
    println!("bench --quick took {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{out}\n{err}");
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(md.contains("| target | ratio | limit | result |"), "{md}");
    let j = parse(&std::fs::read_to_string(out_dir.join("results.json")).unwrap());
    for k in ["targets", "dlclose", "barrier", "munmap", "munmap_preload", "thread_start", "current_cpu"] {
        j.get(k);
    }
    let J::Arr(targets) = j.get("targets") else { panic!("targets") };
    for t in targets {
        // A benchmark reports; it never fails the tests. Print what it found.
        println!("target {:?}: ratio {:?}, met {:?}", t.get("target"), t.get("ratio"), t.get("met"));
    }
    let svg = std::fs::read_to_string(out_dir.join("barrier-latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&out_dir);
}
