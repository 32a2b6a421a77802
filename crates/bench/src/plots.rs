//! The three PNG charts of the seed (plotters, labelled axes, an embedded font so they render the
//! same everywhere), with 95 % CI whiskers on every bar and point and PyTorch's bars beside ours
//! where a reference was given. The data comes from [`crate::chart`], as for the SVG charts.

use std::path::Path;

use plotters::prelude::*;

use crate::chart::{self, axis_label, tick_label, Bar};
use crate::error::{BenchError, Result};
use crate::registry::{CategoryKind, MetricName};
use crate::results::Results;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Report(format!("plot: {e}"))
}

/// A vertical whisker from `lo` to `hi` at `x`, with caps `cap` wide.
fn whisker(x: f64, lo: f64, hi: f64, cap: f64) -> PathElement<(f64, f64)> {
    PathElement::new(vec![(x - cap, lo), (x + cap, lo), (x, lo), (x, hi), (x - cap, hi), (x + cap, hi)], BLACK.stroke_width(2))
}

/// A bar chart of `data` with a y-axis title, CI whiskers and PyTorch's bars, into `path`.
fn bar_chart(path: &Path, title: &str, y_label: &str, data: &[Bar]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ymax = data.iter().map(|d| d.ci.map_or(d.value, |c| c.1.max(d.value)).max(d.reference.unwrap_or(0.0))).filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-9) * 1.3;
    let n = data.len().max(1);
    let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 24)).margin(16).x_label_area_size(48).y_label_area_size(80).build_cartesian_2d(0f64..n as f64, 0f64..ymax).map_err(err)?;
    let labels: Vec<String> = data.iter().map(|d| d.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .y_label_formatter(&|v| axis_label(*v))
        .x_desc("configuration")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let with_ref = data.iter().any(|d| d.reference.is_some());
    let width = if with_ref { 0.35 } else { 0.6 };
    let left = |i: usize| i as f64 + 0.5 - if with_ref { width } else { width / 2.0 };
    chart
        .draw_series(data.iter().enumerate().map(|(i, d)| Rectangle::new([(left(i), 0.0), (left(i) + width, d.value)], BLUE.mix(0.7).filled())))
        .map_err(err)?
        .label("contrastive-id (whiskers: 95% CI)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.mix(0.7).filled()));
    chart.draw_series(data.iter().enumerate().filter_map(|(i, d)| d.ci.map(|(lo, hi)| whisker(left(i) + width / 2.0, lo, hi, width / 6.0)))).map_err(err)?;
    if with_ref {
        chart
            .draw_series(data.iter().enumerate().filter_map(|(i, d)| d.reference.map(|v| Rectangle::new([(i as f64 + 0.5, 0.0), (i as f64 + 0.5 + width, v)], RED.mix(0.6).filled()))))
            .map_err(err)?
            .label("PyTorch reference")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RED.mix(0.6).filled()));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 15)).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `training_performance.png`: samples/s per training configuration (PyTorch beside, if given).
pub fn training(r: &Results, path: &Path) -> Result<()> {
    bar_chart(path, "Training throughput (full step)", "samples / s", &chart::bars(r, CategoryKind::Training, MetricName::SamplesPerS))
}

/// `hardware_optimization.png`: CPU step time per thread count (GPU: not available).
pub fn hardware(r: &Results, path: &Path) -> Result<()> {
    // `cpu.fp32.threads2` → `fp32, threads 2`; `cpu.fp32.paired.threads2` (the fp32 steps run in
    // rounds with bf16 / fp16) → `fp32 paired, threads 2`.
    let label = |l: &str| l.trim_start_matches("cpu.").replace(".paired", " paired").replace(".threads", ", threads ");
    let data: Vec<Bar> = chart::bars(r, CategoryKind::Hardware, MetricName::StepMs).into_iter().map(|b| Bar { label: label(&b.label), ..b }).collect();
    bar_chart(path, "Hardware: CPU step time, B=32 W=1024 (GPU not benchmarked)", "ms per step", &data)
}

/// `scalability_analysis.png`: step time over batch size and over window size (log-log).
pub fn scalability(r: &Results, path: &Path) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let halves = root.split_evenly((1, 2));
    for (area, axis, xlabel) in [(&halves[0], "batch", "batch size (W = 1024)"), (&halves[1], "window", "window size (B = 32)")] {
        let sweep = chart::sweep(r, axis);
        let pts: Vec<(f64, f64)> = sweep.iter().map(|p| (p.x, p.y)).collect();
        let xmax = pts.iter().map(|p| p.0).fold(2.0f64, f64::max) * 1.5;
        let xmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).min(xmax / 3.0) / 1.5;
        let ymax = sweep.iter().map(|p| p.ci.map_or(p.y, |c| c.1.max(p.y))).fold(1e-3f64, f64::max) * 2.0;
        let ymin = sweep.iter().map(|p| p.ci.map_or(p.y, |c| c.0.min(p.y))).fold(f64::INFINITY, f64::min).min(ymax / 4.0) / 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("step time vs {axis}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((xmin.max(1e-3)..xmax).log_scale(), (ymin.max(1e-4)..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| axis_label(*v))
            .x_desc(xlabel)
            .y_desc("ms per step")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, BLUE.filled()))).map_err(err)?;
        chart.draw_series(sweep.iter().filter_map(|p| p.ci.map(|(lo, hi)| PathElement::new(vec![(p.x, lo), (p.x, hi)], BLACK.stroke_width(2))))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
