//! The three PNG charts of the seed (plotters, labelled axes, an embedded font so they render the
//! same everywhere).

use std::path::Path;

use plotters::prelude::*;

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

/// A bar chart of (label, value) with a y-axis title, into `path`.
fn bars(path: &Path, title: &str, y_label: &str, data: &[(String, f64)], reference: &[(String, f64)]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ymax = data.iter().chain(reference).map(|d| d.1).fold(0.0f64, f64::max).max(1e-9) * 1.3;
    let n = data.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(err)?;
    let labels: Vec<String> = data.iter().map(|d| d.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 { labels.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("configuration")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let with_ref = !reference.is_empty();
    let width = if with_ref { 0.35 } else { 0.6 };
    chart
        .draw_series(data.iter().enumerate().map(|(i, d)| {
            let x0 = i as f64 + 0.5 - if with_ref { width } else { width / 2.0 };
            Rectangle::new([(x0, 0.0), (x0 + width, d.1)], BLUE.mix(0.7).filled())
        }))
        .map_err(err)?
        .label("contrastive-id")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.mix(0.7).filled()));
    if with_ref {
        chart
            .draw_series(reference.iter().filter_map(|r| labels.iter().position(|l| *l == r.0).map(|i| (i, r.1))).map(|(i, v)| {
                let x0 = i as f64 + 0.5;
                Rectangle::new([(x0, 0.0), (x0 + width, v)], RED.mix(0.6).filled())
            }))
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
    let pick = |name: MetricName| -> Vec<(String, f64)> { r.metrics().filter(|m| m.category == CategoryKind::Training && m.name == name).map(|m| (m.config.clone(), m.value)).collect() };
    let data = pick(MetricName::SamplesPerS);
    let reference: Vec<(String, f64)> = r.metrics().filter(|m| m.category == CategoryKind::Training && m.name == MetricName::SamplesPerS).filter_map(|m| m.reference.as_ref().map(|x| (m.config.clone(), x.value))).collect();
    bars(path, "Training throughput (full step, mlp-medium)", "samples / s", &data, &reference)
}

/// `hardware_optimization.png`: CPU step time per thread count (GPU: not available).
pub fn hardware(r: &Results, path: &Path) -> Result<()> {
    let data: Vec<(String, f64)> = r.metrics().filter(|m| m.category == CategoryKind::Hardware && m.name == MetricName::StepMs).map(|m| (m.config.replace("cpu.fp32.", "CPU fp32 ").replace("threads", "threads "), m.value)).collect();
    bars(path, "Hardware: CPU step time, B=32 W=1024 (GPU not benchmarked)", "ms per step", &data, &[])
}

/// `scalability_analysis.png`: step time over batch size and over window size (log-log).
pub fn scalability(r: &Results, path: &Path) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let halves = root.split_evenly((1, 2));
    let sweep = r.category(CategoryKind::Scalability).map(|c| c.sweep.clone()).unwrap_or_default();
    for (area, axis, xlabel) in [(&halves[0], "batch", "batch size (W = 1024)"), (&halves[1], "window", "window size (B = 32)")] {
        let pts: Vec<(f64, f64)> = sweep.iter().filter(|p| p.axis == axis && p.ok).filter_map(|p| p.step_ms.map(|t| ((if axis == "batch" { p.batch } else { p.window }) as f64, t))).collect();
        let xmax = pts.iter().map(|p| p.0).fold(2.0f64, f64::max) * 1.5;
        let xmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).min(xmax / 3.0) / 1.5;
        let ymax = pts.iter().map(|p| p.1).fold(1e-3f64, f64::max) * 2.0;
        let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(ymax / 4.0) / 2.0;
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
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") })
            .x_desc(xlabel)
            .y_desc("ms per step")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, BLUE.filled()))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
