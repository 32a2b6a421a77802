//! One `Report` trait fanned out to the formats: JSON (the source of truth), Markdown and a
//! self-contained HTML page (inline SVG charts with hover tooltips, tables sortable by column, no
//! external resource). Every file is written atomically.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::chart;
use crate::error::{BenchError, Result};
use crate::registry::{CategoryKind, MetricName};
use crate::results::{Category, Metric, Results, Status};
use crate::stats::Verdict;
use crate::svg::{self, esc};

/// A rendering of the results into one file under the save directory.
pub trait Report {
    /// Path relative to the save directory.
    fn file(&self) -> PathBuf;
    fn render(&self, r: &Results) -> Result<Vec<u8>>;
}

/// The results file under a save directory: the source of truth, which baselines and `compare`
/// read.
pub const RESULTS_FILE: &str = "comprehensive_benchmark_results.json";

pub struct JsonReport;
pub struct MarkdownReport;
pub struct HtmlReport;

impl Report for JsonReport {
    fn file(&self) -> PathBuf {
        RESULTS_FILE.into()
    }
    fn render(&self, r: &Results) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(r).map_err(|e| BenchError::Report(e.to_string()))
    }
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1e5 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else if a >= 1e-3 || a == 0.0 {
        format!("{v:.4}")
    } else {
        // 3e-5 as "0.0000" would hide the value (a threshold from a targets file, a tiny time).
        format!("{v:.3e}")
    }
}

fn target_text(m: &Metric) -> (String, String) {
    match &m.target {
        Some(t) => (format!("{} {}", t.op, fmt_value(t.threshold)), if t.passed { "PASS".into() } else { "FAIL".into() }),
        None => (String::new(), String::new()),
    }
}

fn ci_text(m: &Metric) -> String {
    m.summary
        .as_ref()
        .map(|s| {
            let ci = match s.ci() {
                Some((lo, hi)) => format!("[{}, {}]", fmt_value(lo), fmt_value(hi)),
                None => format!("n = {}: too few for a CI", s.n),
            };
            if s.outliers.total() > 0 {
                format!("{ci}; {} among {}", s.outliers, s.n)
            } else {
                ci
            }
        })
        .unwrap_or_default()
}

fn baseline_text(m: &Metric) -> String {
    m.baseline
        .as_ref()
        .map(|b| {
            let word = match b.verdict {
                Verdict::Regression => "REGRESSION",
                Verdict::Improvement => "improvement",
                Verdict::NoChange => "no change",
                // No interval to show: one value, or too few for a CI.
                Verdict::NotCompared => return format!("{:+.1}%, not compared (a single value or too few samples)", 100.0 * b.change),
            };
            format!("{word} {:+.1}% [{:+.1}, {:+.1}]", 100.0 * b.change, 100.0 * b.ci_low, 100.0 * b.ci_high)
        })
        .unwrap_or_default()
}

fn reference_text(m: &Metric) -> String {
    m.reference.as_ref().map(|x| format!("{} ({:.1}×)", fmt_value(x.value), x.speedup)).unwrap_or_default()
}

fn row(m: &Metric) -> [String; 9] {
    let (t, p) = target_text(m);
    [
        m.category.to_string(),
        m.config.clone(),
        m.name.to_string(),
        fmt_value(m.value),
        m.unit.clone(),
        ci_text(m),
        t,
        p,
        [reference_text(m), baseline_text(m)].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join("; "),
    ]
}

fn rows(r: &Results) -> Vec<[String; 9]> {
    r.metrics().map(row).collect()
}

const HEADER: [&str; 9] = ["category", "config", "metric", "value", "unit", "95% CI (median)", "target", "result", "PyTorch ref / baseline"];

impl Report for MarkdownReport {
    fn file(&self) -> PathBuf {
        "reports/performance_summary.md".into()
    }
    fn render(&self, r: &Results) -> Result<Vec<u8>> {
        let mut s = String::new();
        let _ = writeln!(s, "# Performance summary\n");
        let _ = writeln!(s, "Pass rate: **{}**. Device `{}`, {} mode, {:.1} s.\n", r.pass_rate_text(), r.device, if r.quick { "quick" } else { "full" }, r.seconds);
        if !r.unmeasured_targets.is_empty() {
            let _ = writeln!(s, "Targets not measured in this run: {}.\n", r.unmeasured_targets.join(", "));
        }
        let f = &r.fingerprint;
        let _ = writeln!(
            s,
            "Machine: {} ({} logical CPUs, {} threads used, CPU GEMM {}), GPU: {}, {} build, commit {}, contrastive-id {}.\n",
            f.cpu_model, f.logical_cpus, f.threads, f.cpu_gemm, f.gpu, f.build_profile, f.git_commit, f.crate_version
        );
        if let Some(b) = &r.baseline {
            let _ = writeln!(s, "Baseline `{b}`: {}.", crate::compare::tally(r));
            for w in &r.baseline_warnings {
                let _ = writeln!(s, "> warning: {w}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Categories\n\n| category | status | targets passed | notes |\n| --- | --- | --- | --- |");
        for c in &r.categories {
            let (cp, ct) = c.pass_count();
            let _ = writeln!(s, "| {} | {:?} | {cp}/{ct} | {} |", c.kind, c.status, md_cell(&c.notes.join("; ")));
        }
        let _ = writeln!(s, "\n## Key indicators vs targets\n\n| metric | value | target | result |\n| --- | --- | --- | --- |");
        for m in r.metrics().filter(|m| m.target.is_some()) {
            let (t, res) = target_text(m);
            let _ = writeln!(s, "| {} | {} {} | {} | {} |", m.id, fmt_value(m.value), m.unit, md_cell(&t), md_cell(&res));
        }
        let _ = writeln!(s, "\n## Recommendations\n");
        if r.recommendations.is_empty() {
            let _ = writeln!(s, "None: every measured number is within its target.");
        }
        for rec in &r.recommendations {
            let _ = writeln!(s, "- **{}**: {} _(evidence: {})_", rec.topic, rec.text, rec.evidence);
        }
        let _ = writeln!(s, "\n## Details\n\n| {} |\n|{}", HEADER.join(" | "), " --- |".repeat(HEADER.len()));
        for row in rows(r) {
            let _ = writeln!(s, "| {} |", row.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | "));
        }
        if let Some(sc) = r.category(crate::registry::CategoryKind::Scalability) {
            let _ = writeln!(s, "\n## Scalability sweep\n\n| axis | B | W | ok | ms/step | memory MB | note |\n| --- | --- | --- | --- | --- | --- | --- |");
            for p in &sc.sweep {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    p.axis,
                    p.batch,
                    p.window,
                    p.ok,
                    p.step_ms.map(fmt_value).unwrap_or_default(),
                    p.memory_mb.map(fmt_value).unwrap_or_default(),
                    md_cell(&p.note)
                );
            }
        }
        Ok(s.into_bytes())
    }
}

/// Text as one cell of a Markdown table: a `|` would end the cell and a line break the row
/// (notes carry error messages and paths, which may hold either).
fn md_cell(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|").replace("\r\n", "<br>").replace(['\n', '\r'], "<br>")
}

/// Sorts a `table.sortable` by the clicked column (numbers by their `data-v`), inline so the page
/// stays self-contained.
const SORT_SCRIPT: &str = "document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{const t=th.closest('table'),b=t.tBodies[0],asc=th.dataset.dir!=='asc';t.querySelectorAll('th').forEach(h=>delete h.dataset.dir);th.dataset.dir=asc?'asc':'desc';const key=r=>{const c=r.cells[i],v=c.dataset.v!==undefined?parseFloat(c.dataset.v):NaN;return isNaN(v)?c.textContent.toLowerCase():v};const rows=[...b.rows];rows.sort((x,y)=>{const p=key(x),q=key(y);const d=(typeof p===typeof q)?(p<q?-1:p>q?1:0):(typeof p==='number'?-1:1);return asc?d:-d});rows.forEach(r=>b.appendChild(r))}));";

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1280px}table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eef}table.sortable th{cursor:pointer}table.sortable th[data-dir=asc]::after{content:' ▲'}table.sortable th[data-dir=desc]::after{content:' ▼'}td.num{text-align:right}.PASS{color:#070;font-weight:bold}.FAIL{color:#b00;font-weight:bold}.reg{background:#fdd}.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #ddd;background:#fff}.charts svg g:hover rect,.charts svg g:hover circle{opacity:.75}";

/// The charts of one category: a bar chart per metric name measured for several configurations
/// (or with a CI or a PyTorch reference), and the sweeps of the scalability category.
fn category_charts(r: &Results, c: &Category) -> Vec<String> {
    let mut names: Vec<MetricName> = Vec::new();
    for m in &c.metrics {
        if !names.contains(&m.name) {
            names.push(m.name);
        }
    }
    let mut out: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let bars = chart::bars(r, c.kind, name);
            let worth = bars.len() >= 2 || bars.iter().any(|b| b.ci.is_some() || b.reference.is_some());
            worth.then(|| svg::bar_chart(&format!("{} {}", c.kind, name), name.unit(), &bars))
        })
        .collect();
    if c.kind == CategoryKind::Scalability {
        for (axis, label) in [("batch", "batch size"), ("window", "window size")] {
            out.push(svg::sweep_chart(&format!("step time vs {label}"), label, "ms per step", &chart::sweep(r, axis)));
        }
    }
    out
}

impl Report for HtmlReport {
    fn file(&self) -> PathBuf {
        "reports/performance_report.html".into()
    }
    fn render(&self, r: &Results) -> Result<Vec<u8>> {
        let mut h = String::new();
        let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>contrastive-id performance report</title>\n<style>{STYLE}</style></head><body>\n");
        let _ = write!(
            h,
            "<h1>contrastive-id performance report</h1>\n<section id=\"summary\"><h2>Summary</h2><p>Pass rate: <b>{}</b>. Device <code>{}</code>, {} mode, {:.1} s.</p>",
            esc(&r.pass_rate_text()),
            esc(&r.device),
            if r.quick { "quick" } else { "full" },
            r.seconds
        );
        let f = &r.fingerprint;
        let _ = write!(
            h,
            "<p>Machine: {} ({} logical CPUs, {} threads, CPU GEMM {}), GPU: {}, {} build, commit {}.</p>",
            esc(&f.cpu_model),
            f.logical_cpus,
            f.threads,
            esc(&f.cpu_gemm),
            esc(&f.gpu),
            esc(&f.build_profile),
            esc(&f.git_commit)
        );
        if !r.unmeasured_targets.is_empty() {
            let _ = write!(h, "<p>Targets not measured in this run: {}.</p>", esc(&r.unmeasured_targets.join(", ")));
        }
        if let Some(reference) = &r.reference {
            let _ = write!(h, "<p>PyTorch reference: <code>{}</code> (red bars beside ours).</p>", esc(reference));
        }
        if let Some(b) = &r.baseline {
            let _ = write!(h, "<p>Baseline <code>{}</code>: {}.</p>", esc(b), crate::compare::tally(r));
            for w in &r.baseline_warnings {
                let _ = write!(h, "<p class=\"FAIL\">warning: {}</p>", esc(w));
            }
        }
        let _ = write!(h, "<table><tr><th>category</th><th>status</th><th>targets passed</th><th>notes</th></tr>");
        for c in &r.categories {
            let (cp, ct) = c.pass_count();
            let _ = write!(h, "<tr><td><a href=\"#cat-{0}\">{0}</a></td><td>{1}</td><td>{cp}/{ct}</td><td>{2}</td></tr>", esc(c.kind.as_str()), status_text(&c.status), esc(&c.notes.join("; ")));
        }
        // Links to the PNG charts this run wrote, and to no other.
        let links: Vec<String> = crate::charts_of(r).map(|(file, kind)| format!("<a href=\"../{file}\">{kind}</a>")).collect();
        let charts = if links.is_empty() { String::new() } else { format!(" The seed's PNG charts: {}.", links.join(", ")) };
        let _ = writeln!(h, "</table><p>Hover a bar or a point for its value, 95 % CI and sample count; click a column header to sort.{charts}</p></section>");
        let _ = write!(h, "<section id=\"recommendations\"><h2>Recommendations</h2><ul>");
        for rec in &r.recommendations {
            let _ = write!(h, "<li><b>{}</b>: {} <i>(evidence: {})</i></li>", esc(&rec.topic), esc(&rec.text), esc(&rec.evidence));
        }
        if r.recommendations.is_empty() {
            let _ = write!(h, "<li>None: every measured number is within its target.</li>");
        }
        let _ = writeln!(h, "</ul></section>");
        for c in &r.categories {
            let _ = write!(h, "<section id=\"cat-{0}\" class=\"category\"><h2>{0} <small>({1}, {2:.1} s)</small></h2>", esc(c.kind.as_str()), status_text(&c.status), c.seconds);
            for note in &c.notes {
                let _ = write!(h, "<p>{}</p>", esc(note));
            }
            let charts = category_charts(r, c);
            if !charts.is_empty() {
                let _ = write!(h, "<div class=\"charts\">{}</div>", charts.concat());
            }
            let _ = write!(h, "<table class=\"sortable\"><thead><tr>");
            for col in &HEADER[1..] {
                let _ = write!(h, "<th>{col}</th>");
            }
            let _ = write!(h, "</tr></thead><tbody>");
            for m in &c.metrics {
                let reg = m.baseline.as_ref().is_some_and(|b| b.verdict == Verdict::Regression);
                let _ = write!(h, "<tr{}>", if reg { " class=\"reg\"" } else { "" });
                for (i, cell) in row(m).iter().enumerate().skip(1) {
                    match i {
                        3 => {
                            let _ = write!(h, "<td class=\"num\" data-v=\"{}\">{}</td>", m.value, esc(cell));
                        }
                        7 if !cell.is_empty() => {
                            let _ = write!(h, "<td class=\"{cell}\">{cell}</td>");
                        }
                        _ => {
                            let _ = write!(h, "<td>{}</td>", esc(cell));
                        }
                    }
                }
                let _ = write!(h, "</tr>");
            }
            let _ = writeln!(h, "</tbody></table></section>");
        }
        let _ = write!(h, "<script>{SORT_SCRIPT}</script>\n</body></html>\n");
        Ok(h.into_bytes())
    }
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::NotAvailable => "not available",
        Status::Error => "error",
    }
}

/// Every report, in the order they are written.
const REPORTS: [&dyn Report; 3] = [&JsonReport, &MarkdownReport, &HtmlReport];

/// The files [`write_all`] writes, relative to the save directory.
pub fn files() -> Vec<PathBuf> {
    REPORTS.iter().map(|r| r.file()).collect()
}

/// Renders every report and writes each atomically.
pub fn write_all(r: &Results, save_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for rep in REPORTS {
        let path = save_dir.join(rep.file());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BenchError::io(parent, e))?;
        }
        files::write_atomic(&path, &rep.render(r)?).map_err(|e| BenchError::io(&path, e))?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::md_cell;

    /// A note with a `|` or a line break stays one cell of one row.
    #[test]
    fn a_markdown_cell_keeps_its_bars_and_breaks_inside_it() {
        let cell = md_cell("store a|b.h5: bad\nsecond line\r\nthird");
        assert_eq!(cell, "store a\\|b.h5: bad<br>second line<br>third");
        assert!(!cell.contains('\n') && cell.matches('|').count() == cell.matches("\\|").count());
        assert_eq!(md_cell("C:\\runs"), "C:\\\\runs");
    }
}
