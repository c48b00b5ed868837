//! The numbers of `rseqrt bench`: per-key lists of per-repetition medians, their medians and
//! paired ratios, the targets, and how they are written (Markdown cells, results.json).

use serde::Serialize;
use std::collections::BTreeMap;

/// Per-key lists of per-repetition medians, plus '#' info lines.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) values: BTreeMap<String, Vec<f64>>,
    pub(super) info: BTreeMap<String, f64>,
}

impl Samples {
    pub(super) fn get(&self, key: &str) -> &[f64] {
        self.values.get(key).map_or(&[], |v| v.as_slice())
    }
    pub(super) fn median(&self, key: &str) -> Option<f64> {
        median(self.get(key).to_vec())
    }
    /// Median over repetitions of a/b.
    pub(super) fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        median(self.ratios(a, b))
    }
    /// The per-repetition ratios a/b (paired).
    pub(super) fn ratios(&self, a: &str, b: &str) -> Vec<f64> {
        let (a, b) = (self.get(a), self.get(b));
        a.iter().zip(b).filter(|(_, y)| **y > 0.0).map(|(x, y)| x / y).collect()
    }
    pub(super) fn merge(&mut self, other: Samples, prefix: &str) {
        for (k, v) in other.values {
            self.values.entry(format!("{prefix}{k}")).or_default().extend(v);
        }
        for (k, v) in other.info {
            self.info.insert(format!("{prefix}{k}"), v);
        }
    }
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub(super) fn us(ns: Option<f64>) -> String {
    match ns {
        Some(n) if n >= 100_000.0 => format!("{:.0} us", n / 1000.0),
        Some(n) if n >= 1000.0 => format!("{:.1} us", n / 1000.0),
        Some(n) if n >= 100.0 => format!("{n:.0} ns"),
        Some(n) => format!("{n:.2} ns"),
        None => "n/a".into(),
    }
}

pub(super) fn ratio_s(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}x"))
}

pub(super) struct Target {
    pub(super) what: String,
    pub(super) ratio: Option<f64>,
    pub(super) limit: f64,
}

impl Target {
    pub(super) fn met(&self) -> Option<bool> {
        self.ratio.map(|r| r <= self.limit)
    }
    pub(super) fn result(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Row<'a> {
            target: &'a str,
            ratio: Option<f64>,
            limit: f64,
            met: Option<bool>,
        }
        Row { target: &self.what, ratio: self.ratio, limit: self.limit, met: self.met() }.serialize(s)
    }
}

/// One benchmark child's samples in results.json: for each key its median and per-repetition
/// medians, then its '#' lines as `info_KEY`, then the ratios computed from them.
#[derive(Serialize)]
pub(super) struct SamplesJson {
    #[serde(flatten)]
    pub(super) values: BTreeMap<String, Measured>,
    #[serde(flatten)]
    pub(super) info: BTreeMap<String, f64>,
    #[serde(flatten, serialize_with = "in_order")]
    ratios: Vec<(&'static str, Option<f64>)>,
}

/// Serializes (key, value) pairs as a map, in their order.
fn in_order<S: serde::Serializer>(pairs: &[(&'static str, Option<f64>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().copied())
}

#[derive(Serialize)]
pub(super) struct Measured {
    median_ns: Option<f64>,
    per_rep_ns: Vec<f64>,
}

impl SamplesJson {
    pub(super) fn new(s: &Samples, ratios: &[(&'static str, Option<f64>)]) -> SamplesJson {
        SamplesJson {
            values: s.values.iter().map(|(k, v)| (k.clone(), Measured { median_ns: median(v.clone()), per_rep_ns: v.clone() })).collect(),
            info: s.info.iter().map(|(k, v)| (format!("info_{k}"), *v)).collect(),
            ratios: ratios.to_vec(),
        }
    }
}
