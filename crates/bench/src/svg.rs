//! Inline SVG charts for the HTML report: bars with 95 % CI whiskers (ours beside PyTorch's
//! reference where there is one) and log-log sweeps. Every bar and point carries an SVG `<title>`,
//! which a browser shows on hover (value, CI, sample count) without any script; nothing is fetched.
//! The elements are meant to be inlined in HTML5, which needs no namespace attribute.

use std::fmt::Write as _;

use crate::chart::{axis_label, linear_ticks, log_ticks, tick_label, Bar, Point};

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
/// Room under the plot for horizontal labels, and for labels turned to fit many bars.
const BOTTOM: f64 = 40.0;
const BOTTOM_TURNED: f64 = 86.0;
const OURS: &str = "#3465a4";
const TORCH: &str = "#cc3333";

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn tooltip(label: &str, value: f64, unit: &str, ci: Option<(f64, f64)>, n: usize) -> String {
    let mut t = format!("{label}: {} {unit}", tick_label(value));
    if let Some((lo, hi)) = ci {
        let _ = write!(t, ", 95% CI [{}, {}]", tick_label(lo), tick_label(hi));
    }
    let _ = write!(t, "{}", if n > 0 { format!(", n = {n}") } else { ", a single computed value".into() });
    esc(&t)
}

fn open(s: &mut String, title: &str) {
    let _ = write!(s, "<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" font-family=\"sans-serif\" font-size=\"12\"><title>{}</title>", esc(title));
    let _ = write!(s, "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>", W / 2.0, esc(title));
}

/// A vertical CI whisker at `x` between the screen heights of `lo` and `hi`.
fn whisker(s: &mut String, x: f64, y_lo: f64, y_hi: f64) {
    let _ = write!(s, "<path d=\"M{x:.1},{y_lo:.1}V{y_hi:.1}M{:.1},{y_lo:.1}h8M{:.1},{y_hi:.1}h8\" stroke=\"#111\" stroke-width=\"1.2\" fill=\"none\"/>", x - 4.0, x - 4.0);
}

fn y_axis(s: &mut String, ticks: &[f64], y_of: &dyn Fn(f64) -> f64, unit: &str, bottom: f64) {
    for &t in ticks {
        let y = y_of(t);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            axis_label(t)
        );
    }
    let _ = write!(s, "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>", TOP + (H - TOP - bottom) / 2.0, esc(unit));
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#444\"/><line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>",
        H - bottom,
        W - RIGHT,
        H - bottom,
        H - bottom
    );
}

fn legend(s: &mut String, with_reference: bool) {
    let x = W - RIGHT - 230.0;
    let _ = write!(s, "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{OURS}\"/><text x=\"{}\" y=\"{}\">contrastive-id</text>", TOP - 6.0, x + 14.0, TOP + 3.0);
    if with_reference {
        let _ = write!(s, "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{TORCH}\"/><text x=\"{}\" y=\"{}\">PyTorch reference</text>", x + 110.0, TOP - 6.0, x + 124.0, TOP + 3.0);
    }
}

/// A bar chart of `bars` in `unit`, with CI whiskers and, where present, PyTorch's bar beside ours.
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    let mut s = String::new();
    open(&mut s, title);
    let top = bars.iter().map(|b| b.ci.map_or(b.value, |c| c.1.max(b.value)).max(b.reference.unwrap_or(0.0))).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let ticks = linear_ticks(0.0, if top > 0.0 { top * 1.08 } else { 1.0 }, 5);
    let ymax = ticks.last().copied().unwrap_or(1.0);
    let turned = bars.len() > 5;
    let bottom = if turned { BOTTOM_TURNED } else { BOTTOM };
    let plot_h = H - TOP - bottom;
    let y_of = |v: f64| TOP + plot_h * (1.0 - (v / ymax).clamp(0.0, 1.0));
    y_axis(&mut s, &ticks, &y_of, unit, bottom);
    let with_reference = bars.iter().any(|b| b.reference.is_some());
    let slot = (W - LEFT - RIGHT) / bars.len().max(1) as f64;
    let bar_w = (slot * if with_reference { 0.36 } else { 0.6 }).min(60.0);
    for (i, b) in bars.iter().enumerate() {
        let center = LEFT + slot * (i as f64 + 0.5);
        let x = if with_reference { center - bar_w } else { center - bar_w / 2.0 };
        let _ = write!(s, "<g><title>{}</title>", tooltip(&b.label, b.value, unit, b.ci, b.n));
        let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{OURS}\"/>", y_of(b.value), y_of(0.0) - y_of(b.value));
        if let Some((lo, hi)) = b.ci {
            whisker(&mut s, x + bar_w / 2.0, y_of(lo), y_of(hi));
        }
        s.push_str("</g>");
        if let Some(r) = b.reference {
            let _ = write!(
                s,
                "<g><title>{}</title><rect x=\"{center:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{TORCH}\"/></g>",
                esc(&format!("{} (PyTorch): {} {unit}", b.label, tick_label(r))),
                y_of(r),
                y_of(0.0) - y_of(r)
            );
        }
        let ly = H - bottom + 14.0;
        if turned {
            // Turned about its end, a label runs down and to the left of its bar, inside the frame.
            let _ = write!(s, "<text transform=\"translate({:.1},{ly:.1}) rotate(-35)\" text-anchor=\"end\">{}</text>", center + 4.0, esc(&b.label));
        } else {
            let _ = write!(s, "<text x=\"{center:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{}</text>", esc(&b.label));
        }
    }
    legend(&mut s, with_reference);
    s.push_str("</svg>");
    s
}

/// A log-log line chart of one sweep (`x_label` on x, `unit` on y), points with CI whiskers.
pub fn sweep_chart(title: &str, x_label: &str, unit: &str, points: &[Point]) -> String {
    let mut s = String::new();
    open(&mut s, title);
    let positive = |v: &f64| v.is_finite() && *v > 0.0;
    let xs: Vec<f64> = points.iter().map(|p| p.x).filter(positive).collect();
    let ys: Vec<f64> = points.iter().flat_map(|p| [p.y, p.ci.map_or(p.y, |c| c.0), p.ci.map_or(p.y, |c| c.1)]).filter(positive).collect();
    if xs.is_empty() || ys.is_empty() {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no point of this sweep ran</text></svg>", W / 2.0, H / 2.0);
        return s;
    }
    let (x0, x1) = (xs.iter().copied().fold(f64::INFINITY, f64::min) / 1.4, xs.iter().copied().fold(0.0, f64::max) * 1.4);
    let (y0, y1) = (ys.iter().copied().fold(f64::INFINITY, f64::min) / 1.5, ys.iter().copied().fold(0.0, f64::max) * 1.5);
    let plot_w = W - LEFT - RIGHT;
    let bottom = BOTTOM + 16.0;
    let plot_h = H - TOP - bottom;
    let x_of = |v: f64| LEFT + plot_w * (v.ln() - x0.ln()) / (x1.ln() - x0.ln());
    let y_of = |v: f64| TOP + plot_h * (1.0 - (v.max(y0).ln() - y0.ln()) / (y1.ln() - y0.ln()));
    y_axis(&mut s, &log_ticks(y0, y1), &y_of, unit, bottom);
    for p in points.iter().filter(|p| positive(&p.x)) {
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", x_of(p.x), H - bottom + 16.0, axis_label(p.x));
    }
    let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", LEFT + plot_w / 2.0, H - bottom + 34.0, esc(x_label));
    let path: Vec<String> = points.iter().filter(|p| positive(&p.x) && positive(&p.y)).map(|p| format!("{:.1},{:.1}", x_of(p.x), y_of(p.y))).collect();
    let _ = write!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"{OURS}\" stroke-width=\"2\"/>", path.join(" "));
    for p in points.iter().filter(|p| positive(&p.x) && positive(&p.y)) {
        let (cx, cy) = (x_of(p.x), y_of(p.y));
        let _ = write!(s, "<g><title>{}</title>", tooltip(&format!("{x_label} {}", tick_label(p.x)), p.y, unit, p.ci, p.n));
        if let Some((lo, hi)) = p.ci {
            whisker(&mut s, cx, y_of(lo), y_of(hi));
        }
        let _ = write!(s, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"{OURS}\"/></g>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_carry_tooltips_whiskers_and_the_reference() {
        let bars = [Bar { label: "small".into(), value: 0.5, ci: Some((0.4, 0.6)), n: 20, reference: Some(1.5) }, Bar { label: "x<y".into(), value: 2.0, ci: None, n: 0, reference: None }];
        let svg = bar_chart("step time", "ms", &bars);
        assert!(svg.contains("<title>small: 0.5 ms, 95% CI [0.4, 0.6], n = 20</title>"), "{svg}");
        assert!(svg.contains("<title>small (PyTorch): 1.5 ms</title>"), "{svg}");
        assert!(svg.contains("x&lt;y: 2 ms, a single computed value"), "{svg}");
        assert_eq!(svg.matches("<path d=\"M").count(), 1, "one whisker, for the bar with a CI");
        assert!(svg.contains("PyTorch reference"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn sweep_points_are_placed_in_order_on_log_axes() {
        let pts: Vec<Point> = [(4.0, 1.0), (8.0, 2.0), (16.0, 4.0)].iter().map(|&(x, y)| Point { x, y, ci: Some((y * 0.9, y * 1.1)), n: 5 }).collect();
        let svg = sweep_chart("step time vs batch", "batch", "ms", &pts);
        let cx: Vec<f64> = svg.match_indices("<circle cx=\"").map(|(i, _)| svg[i + 12..].split('"').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)).collect();
        assert_eq!(cx.len(), 3);
        assert!((cx[1] - cx[0] - (cx[2] - cx[1])).abs() < 0.2, "doublings equally spaced on a log axis: {cx:?}");
        assert!(svg.contains("<title>batch 8: 2 ms, 95% CI [1.8, 2.2], n = 5</title>"), "{svg}");
        assert!(sweep_chart("empty", "batch", "ms", &[]).contains("no point"));
    }
}
