//! What the charts show, shared by the PNG and the SVG renderings: bars and sweep points taken
//! from the results with their 95 % CIs and sample counts, and axis ticks in "nice" steps
//! (1, 2, 5 × 10ᵏ) labelled with the decimals each value needs, so 0.5 never prints as "0".

use crate::registry::{CategoryKind, MetricName};
use crate::results::Results;

/// One bar: a configuration's value, its CI and the PyTorch reference, if measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// 95 % confidence interval of the value (bootstrap of the median), if sampled.
    pub ci: Option<(f64, f64)>,
    /// Samples behind the value (0: a single computed number).
    pub n: usize,
    pub reference: Option<f64>,
}

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub ci: Option<(f64, f64)>,
    pub n: usize,
}

/// The bars of metric `name` in `category`, one per configuration, in run order.
pub fn bars(r: &Results, category: CategoryKind, name: MetricName) -> Vec<Bar> {
    r.metrics()
        .filter(|m| m.category == category && m.name == name)
        .map(|m| Bar {
            label: m.config.clone(),
            value: m.value,
            ci: m.summary.as_ref().and_then(|s| s.ci()),
            n: m.summary.as_ref().map_or(0, |s| s.n),
            reference: m.reference.as_ref().map(|x| x.value),
        })
        .collect()
}

/// The working points of the scalability sweep along `axis` (`batch` or `window`).
pub fn sweep(r: &Results, axis: &str) -> Vec<Point> {
    let Some(cat) = r.category(CategoryKind::Scalability) else { return Vec::new() };
    cat.sweep
        .iter()
        .filter(|p| p.axis == axis && p.ok)
        .filter_map(|p| p.step_ms.map(|y| Point { x: (if axis == "batch" { p.batch } else { p.window }) as f64, y, ci: p.step_ms_ci.map(|c| (c[0], c[1])), n: p.samples }))
        .collect()
}

/// Ticks from 0-or-below `lo` to at least `hi` in a nice step, about `target` of them.
pub fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![0.0, 1.0];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Ticks of a log axis between `lo` and `hi` (> 0): 1, 2, 5 × 10ᵏ, or only the powers of ten
/// where those would crowd.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mantissas: &[f64] = if k1 - k0 > 3 { &[1.0] } else { &[1.0, 2.0, 5.0] };
    (k0..=k1).flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k))).filter(|v| *v >= lo && *v <= hi).collect()
}

/// `v` with the decimals it needs (at most 4; none from 1000 up): 0.5, 2, 2.5, 0.0012, 12345.
pub fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() >= 1000.0 {
        return format!("{v:.0}");
    }
    let digits = if v == 0.0 { 0 } else { (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// An axis tick: as [`tick_label`], with large values shortened (2.5M, 150k) to fit the margin.
pub fn axis_label(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{}M", tick_label(v / 1e6)),
        a if a >= 1e4 => format!("{}k", tick_label(v / 1e3)),
        _ => tick_label(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_the_decimals_that_matter() {
        // The hardware chart once read "4, 4, 4, 3, 2, 2, 2, 1, 0, 0" for ticks 0.5 apart.
        let labels: Vec<String> = [4.5, 4.0, 3.5, 0.5, 0.0].iter().map(|v| tick_label(*v)).collect();
        assert_eq!(labels, ["4.5", "4", "3.5", "0.5", "0"]);
        assert_eq!(tick_label(0.00125), "0.00125");
        assert_eq!(tick_label(12345.6), "12346");
        assert_eq!(tick_label(123.456), "123.5");
        assert_eq!(tick_label(f64::NAN), "n/a");
        assert_eq!([axis_label(2_500_000.0), axis_label(150_000.0), axis_label(5000.0)], ["2.5M", "150k", "5000"]);
    }

    #[test]
    fn linear_ticks_cover_the_range_in_nice_steps() {
        let t = linear_ticks(0.0, 4.3, 10);
        assert_eq!(t.first().copied(), Some(0.0));
        assert!(*t.last().unwrap_or(&0.0) >= 4.3);
        let step = t[1] - t[0];
        assert!((step - 0.5).abs() < 1e-12, "{t:?}");
        let labels: Vec<String> = t.iter().map(|v| tick_label(*v)).collect();
        let unique: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "every tick label distinct: {labels:?}");
        assert_eq!(linear_ticks(1.0, 1.0, 5), vec![0.0, 1.0]);
    }

    #[test]
    fn log_ticks_are_one_two_five_per_decade() {
        assert_eq!(log_ticks(0.8, 30.0), vec![1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(log_ticks(0.5, 5e5), vec![1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]);
        assert!(log_ticks(0.0, 1.0).is_empty());
    }
}
