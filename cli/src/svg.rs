//! A small hand-written SVG line chart (log-log axes), for the barrier latency plot.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi * 1.0001 {
        if p >= lo * 0.9999 {
            t.push(p);
        }
        p *= 10.0;
    }
    t
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.1}")
    }
}

/// A log-log line chart: x = thread count, y = latency in microseconds.
pub fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let (w, h) = (760.0, 480.0);
    let (l, r, t, b) = (80.0, 220.0, 50.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0 > 0.0 && p.1 > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    let (x0, x1) = (10f64.powf(x0.log10().floor()), 10f64.powf(x1.log10().ceil()));
    let (y0, y1) = (10f64.powf(y0.log10().floor()), 10f64.powf(y1.log10().ceil()));
    let px = |x: f64| l + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * (w - l - r);
    let py = |y: f64| h - b - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()) * (h - t - b);
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#).unwrap();
    writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#).unwrap();
    writeln!(s, r#"<text x="{}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>"#, (l + w - r) / 2.0).unwrap();
    for x in nice_ticks(x0, x1) {
        let gx = px(x);
        writeln!(s, r##"<line x1="{gx:.1}" y1="{t}" x2="{gx:.1}" y2="{}" stroke="#ddd"/>"##, h - b).unwrap();
        writeln!(s, r#"<text x="{gx:.1}" y="{}" text-anchor="middle">{}</text>"#, h - b + 18.0, label(x)).unwrap();
    }
    for y in nice_ticks(y0, y1) {
        let gy = py(y);
        writeln!(s, r##"<line x1="{l}" y1="{gy:.1}" x2="{}" y2="{gy:.1}" stroke="#ddd"/>"##, w - r).unwrap();
        writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, l - 6.0, gy + 4.0, label(y)).unwrap();
    }
    writeln!(s, r#"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="black"/>"#, w - l - r, h - t - b).unwrap();
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#, (l + w - r) / 2.0, h - 18.0).unwrap();
    writeln!(s, r#"<text transform="translate(22,{}) rotate(-90)" text-anchor="middle">{ylabel}</text>"#, (t + h - b) / 2.0).unwrap();
    for (i, se) in series.iter().enumerate() {
        let path: Vec<String> = se.points.iter().filter(|p| p.0 > 0.0 && p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if se.dashed { r#" stroke-dasharray="6,4""# } else { "" };
        writeln!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#, se.color, path.join(" ")).unwrap();
        for &(x, y) in se.points.iter().filter(|p| p.0 > 0.0 && p.1 > 0.0) {
            writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(x), py(y), se.color).unwrap();
        }
        let ly = t + 10.0 + i as f64 * 22.0;
        let lx = w - r + 14.0;
        writeln!(s, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#, lx + 24.0, se.color).unwrap();
        writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 30.0, ly + 4.0, se.name).unwrap();
    }
    s.push_str("</svg>\n");
    s
}
