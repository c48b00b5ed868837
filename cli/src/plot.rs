//! The benchmark's plot, barrier-latency.svg: the barrier's latency against the thread count,
//! beside its floor (one load of every thread's `rseq_cs`) and its alternatives, a log-log line
//! chart drawn from results.json (right after measuring, or later with
//! `bench --replot`) with plotters' SVG backend. The SVG names its fonts and leaves their
//! rendering to the viewer, so the command needs no font library.
//!
//! Both axes are in whole decades and labelled at each power of ten only ("0.01", "0.1", "1",
//! "10", "1,000"): a label is made from the decade's exponent, never by rounding the value, so no
//! tick of a log axis can read "0".

use plotters::coord::combinators::WithKeyPoints;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const WIDTH: u32 = 800;
const HEIGHT: u32 = 500;
/// The width of the legend, to the right of the chart.
const LEGEND_WIDTH: u32 = 230;
const FONT: &str = "sans-serif";

/// The plot's lines: (legend, key of the barrier benchmark's output, color, dashed).
const BARRIER_SERIES: &[(&str, &str, RGBColor, bool)] = &[
    ("rseqrt, none stale", "rseqrt_idle", RGBColor(0x1f, 0x77, 0xb4), false),
    ("floor: 1 load per thread", "scan_floor", RGBColor(0x7f, 0x7f, 0x7f), true),
    ("rseqrt, all stale", "rseqrt_stale", RGBColor(0x1f, 0x77, 0xb4), true),
    ("signal + ack (naive)", "naive", RGBColor(0xd6, 0x27, 0x28), false),
    ("glibc setuid() broadcast", "glibc", RGBColor(0xff, 0x7f, 0x0e), false),
    ("membarrier RSEQ", "membarrier", RGBColor(0x2c, 0xa0, 0x2c), true),
];

/// barrier-latency.svg, from the `barrier` object of results.json (thread count -> key ->
/// `median_ns`): what `bench` writes after measuring, and `bench --replot` from a saved file.
pub fn barrier_plot(barrier: &serde_json::Value) -> Result<String, String> {
    let by_threads = barrier.as_object().ok_or("results.json: \"barrier\" is not an object")?;
    let mut series = Vec::new();
    for &(name, key, color, dashed) in BARRIER_SERIES {
        let mut points = Vec::new();
        for (threads, s) in by_threads {
            let threads: f64 = threads.parse().map_err(|_| format!("results.json: barrier: {threads:?} is not a thread count"))?;
            if let Some(ns) = s[key]["median_ns"].as_f64() {
                points.push((threads, ns / 1000.0));
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A results.json from before a series existed has no points for it: no legend entry.
        if !points.is_empty() {
            series.push(Series { name: name.into(), color, dashed, points });
        }
    }
    line_chart("Barrier latency vs thread count (idle threads)", "threads in the process", "latency (microseconds, log scale)", &series)
}

/// `bench --replot`: draws barrier-latency.svg again from a results.json.
pub fn replot(results: &Path, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", results.display()))?;
    let svg = barrier_plot(&j["barrier"])?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join("barrier-latency.svg");
    std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("Written: {}", path.display());
    Ok(())
}

struct Series {
    name: String,
    color: RGBColor,
    dashed: bool,
    /// (x, y) points; those with a coordinate <= 0 have no place on a log axis and are left out.
    points: Vec<(f64, f64)>,
}

/// The label of the tick at 10^exp: "1,000", "1", "0.01".
fn decade_label(exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}1", "0".repeat((-exp - 1) as usize));
    }
    thousands(10usize.pow(exp as u32))
}

/// `n` with its thousands separated by commas: "10,000".
pub fn thousands(n: usize) -> String {
    let d = n.to_string();
    d.chars().enumerate().fold(String::new(), |mut s, (i, c)| {
        if i > 0 && (d.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
        s
    })
}

/// A tick's label: its decade's label when the value is a power of ten (the only labelled ticks).
fn tick_label(v: f64) -> String {
    let exp = v.log10().round();
    if (v / 10f64.powf(exp) - 1.0).abs() < 1e-9 {
        decade_label(exp as i32)
    } else {
        format!("{v}")
    }
}

/// The whole decades 10^lo..10^hi that hold every value (1..10 when there is none).
fn decades(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0, 1);
    }
    let (lo, hi) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (lo, hi.max(lo + 1))
}

/// A log axis over 10^lo..10^hi: a bold grid line and a label at each power of ten, light grid
/// lines at 2..9 times each.
fn log_axis(lo: i32, hi: i32) -> WithKeyPoints<LogCoord<f64>> {
    let bold = (lo..=hi).map(|e| 10f64.powi(e)).collect();
    let light: Vec<f64> = (lo..hi).flat_map(|e| (2..10).map(move |m| f64::from(m) * 10f64.powi(e))).collect();
    (10f64.powi(lo)..10f64.powi(hi)).log_scale().with_key_points(bold).with_light_points(light)
}

/// The chart as an SVG document.
fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, title, xlabel, ylabel, series).map_err(|e| format!("drawing the plot: {e}"))?;
    Ok(svg)
}

fn draw(svg: &mut String, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let shown: Vec<Vec<(f64, f64)>> =
        series.iter().map(|s| s.points.iter().copied().filter(|&(x, y)| x > 0.0 && y > 0.0).collect()).collect();
    let (x0, x1) = decades(shown.iter().flatten().map(|p| p.0));
    let (y0, y1) = decades(shown.iter().flatten().map(|p| p.1));

    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 20).into_font().style(FontStyle::Bold))?;
    let (chart_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);

    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(log_axis(x0, x1), log_axis(y0, y1))?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;

    for (s, points) in series.iter().zip(&shown) {
        let line = s.color.stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(points.iter().copied(), 7, 4, line))?;
        } else {
            chart.draw_series(LineSeries::new(points.iter().copied(), line))?;
        }
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, s.color.filled())))?;
    }

    // The legend: one row per series, its line (dashed or not) and its name.
    let text = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, s) in series.iter().enumerate() {
        let y = 60 + 26 * i as i32;
        let (a, b) = ((8, y), (40, y));
        let line = s.color.stroke_width(2);
        if s.dashed {
            legend_area.draw(&DashedPathElement::new([a, b], 7, 4, line))?;
        } else {
            legend_area.draw(&PathElement::new(vec![a, b], line))?;
        }
        legend_area.draw(&Text::new(s.name.clone(), (48, y), text.clone()))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decade_labels() {
        let labels: Vec<String> = (-3..=5).map(decade_label).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10", "100", "1,000", "10,000", "100,000"]);
        assert_eq!(tick_label(0.01), "0.01");
        assert_eq!(tick_label(1e4), "10,000");
    }

    #[test]
    fn decades_cover_the_values() {
        assert_eq!(decades([0.05, 3.0, 2000.0].into_iter()), (-2, 4));
        assert_eq!(decades([10.0].into_iter()), (1, 2));
        assert_eq!(decades(std::iter::empty()), (0, 1));
    }
}
