//! One run's results against a baseline's: each shared metric gets a [`stats::Change`] with its
//! verdict (the regression rule of [`stats::compare`]), and what makes the comparison weaker is
//! said as a warning (another machine, mode or encoder; metrics missing on either side). Used by
//! `bench --baseline` right after a run, and by `compare` on two saved results files.

use crate::registry::CategoryKind;
use crate::results::{Results, Status};
use crate::stats::{self, Verdict};

/// Compares `results` with `base` (named `name` in the reports) within the relative `noise`
/// band: sets each shared metric's `baseline`, `results.baseline` and its warnings, and returns
/// the warnings.
pub fn compare(results: &mut Results, name: &str, base: &Results, noise: f64) -> Vec<String> {
    let mut warnings: Vec<String> =
        results.fingerprint.differences(&base.fingerprint).into_iter().map(|d| format!("baseline measured on a different machine or build ({d}); comparisons may not mean much")).collect();
    // Another mode or other encoders measure other things under the same metric names: a quick
    // sweep's largest batch is not a full sweep's, an MLP's step not a CNN's.
    let same_mode = base.quick == results.quick;
    if !same_mode {
        let mode = |q: bool| if q { "quick" } else { "full" };
        warnings.push(format!("baseline is a {} run, this one {}: counted values (sweep sizes, memory) are not gated, timings compare as measured", mode(base.quick), mode(results.quick)));
    }
    let same_encoders = base.encoders.is_none() || base.encoders == results.encoders;
    if !same_encoders {
        warnings.push(format!("baseline measured {}, this run {}: only the data category is compared", base.encoders.as_deref().unwrap_or("?"), results.encoders.as_deref().unwrap_or("?")));
    }
    // A baseline metric with no usable value (0, or not finite: a change against it is no
    // number) is not compared. Some are 0 in earnest (a memory growth of 0), but a baseline where
    // none is usable would switch the regression gate off without a word: that is said.
    let (mut unusable, mut not_finite_now, mut redefined, mut compared) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for c in results.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            // A saved run may carry the verdicts of an earlier comparison: only this one's stay.
            m.baseline = None;
            let Some(b) = base.metric(&m.id).filter(|_| same_encoders || m.category == CategoryKind::Data) else { continue };
            // Another unit or direction measures something else under the name: a ratio of the
            // two would be judged backwards or mean nothing.
            if b.unit != m.unit || b.lower_is_better != m.lower_is_better {
                redefined.push(m.id.clone());
                continue;
            }
            // Exact only where both runs counted it the same way.
            let exact = m.exact && b.exact && same_mode;
            let (bs, ns) = (if b.samples.is_empty() { vec![b.value] } else { b.samples.clone() }, if m.samples.is_empty() { vec![m.value] } else { m.samples.clone() });
            if !bs.iter().all(|v| v.is_finite()) {
                unusable.push(m.id.clone());
            } else if !ns.iter().all(|v| v.is_finite()) {
                not_finite_now.push(m.id.clone());
            } else if stats::median(&bs) != 0.0 {
                m.baseline = Some(stats::compare(&bs, &ns, m.lower_is_better, exact, noise));
                compared += 1;
            } else if stats::median(&ns) == 0.0 {
                // 0 then and 0 now (an accuracy drop of nothing): no change, with no ratio to take.
                m.baseline = Some(stats::Change { change: 0.0, ci_low: 0.0, ci_high: 0.0, verdict: Verdict::NoChange });
                compared += 1;
            } else {
                unusable.push(m.id.clone());
            }
        }
    }
    if !unusable.is_empty() {
        let nothing = if compared == 0 { " (nothing was compared)" } else { "" };
        warnings.push(format!("{} metric(s) not compared: the baseline's value is 0 or not finite{nothing}: {}", unusable.len(), unusable.join(", ")));
    }
    if !redefined.is_empty() {
        warnings.push(format!("{} metric(s) not compared: their unit or direction (lower or higher is better) differs from the baseline's: {}", redefined.len(), redefined.join(", ")));
    }
    if !not_finite_now.is_empty() {
        warnings.push(format!("{} metric(s) not compared: this run's value is not finite: {}", not_finite_now.len(), not_finite_now.join(", ")));
    }
    // Timings taken beside a busy neighbour, on either side of a category both runs measured, may
    // have changed for the neighbour's sake.
    for (side, run, other) in [("the baseline", base, &*results), ("this run", &*results, base)] {
        for note in run.categories.iter().filter(|c| other.category(c.kind).is_some()).filter_map(|c| c.contention_note()) {
            warnings.push(format!("in {side}, {note}"));
        }
    }
    // The machine itself at another speed (a VM's neighbours, its clock): every timing of the
    // category moved with it, whatever the code did.
    for c in results.categories.iter().filter(|c| c.status != Status::Error) {
        let (Some(now), Some(then)) = (c.calibration_ms, base.category(c.kind).filter(|b| b.status != Status::Error).and_then(|b| b.calibration_ms)) else { continue };
        // The reference's own jitter is ~5 % on a quiet machine: a move is said past twice that.
        let change = now / then - 1.0;
        if change.abs() > noise.max(0.1) {
            let (pace, side) = if change > 0.0 { ("slower", "this run's timings may read slower") } else { ("faster", "this run's timings may read faster") };
            warnings.push(format!(
                "before {}, a fixed reference workload took {then:.3} ms in the baseline and {now:.3} ms in this run ({:+.0} %): the machine itself ran {pace}, and {side} for that reason",
                c.kind,
                100.0 * change
            ));
        }
    }
    // A category the baseline failed measured nothing to compare against.
    let failed: Vec<String> = base.categories.iter().filter(|c| c.status == Status::Error).map(|c| c.kind.to_string()).collect();
    if !failed.is_empty() {
        warnings.push(format!("the baseline's {} categor{} failed: {}", failed.len(), if failed.len() == 1 { "y" } else { "ies" }, failed.join(", ")));
    }
    // A metric the baseline has and this run lacks (a category that failed or was not run, a
    // metric that disappeared) is said, not passed over.
    let missing: Vec<&str> = base.metrics().filter(|b| results.metric(&b.id).is_none()).map(|b| b.id.as_str()).collect();
    if !missing.is_empty() {
        warnings.push(format!("{} metric(s) of the baseline not measured in this run: {}", missing.len(), missing.join(", ")));
    }
    results.baseline_warnings = warnings.clone();
    results.baseline = Some(name.to_string());
    warnings
}

/// The verdicts of a comparison, counted, and the metrics that changed (regressions first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// `(metric id, change)` of each regression, then of each improvement.
    pub regressions: Vec<(String, stats::Change)>,
    pub improvements: Vec<(String, stats::Change)>,
    pub no_change: usize,
    /// Metrics both runs have that the rule could not judge: a single timing on either side, or
    /// too few samples for a confidence interval.
    pub not_compared: usize,
}

/// `N regression(s), N improvement(s), N no change, N not compared`: the one wording of a
/// comparison's counts, in the terminal and in every report.
impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} regression(s), {} improvement(s), {} no change, {} not compared", self.regressions.len(), self.improvements.len(), self.no_change, self.not_compared)
    }
}

impl Tally {
    /// Whether the two runs share no metric the rule could take (an empty or foreign baseline, a
    /// run of other categories). A regression gate that judged nothing must not pass.
    pub fn judged_nothing(&self) -> bool {
        self.verdicts() == 0 && self.not_compared == 0
    }

    /// Whether the runs share metrics but none got a verdict: every one is a kind the rule cannot
    /// judge (single values, one sample: a quality run's probe accuracies). Such a gate passes —
    /// a quality-only `--baseline` would otherwise never pass — but says it checked nothing.
    pub fn judged_none_of_them(&self) -> bool {
        self.verdicts() == 0 && self.not_compared > 0
    }

    /// The metrics that got a verdict: regressions, improvements and no changes.
    fn verdicts(&self) -> usize {
        self.regressions.len() + self.improvements.len() + self.no_change
    }
}

/// The targets `results` failed, as `id = value (target op threshold)`: a comparison reports
/// them beside its verdicts, as the run's own report does. Judged from the value and the
/// threshold, not from the file's `passed`, which a hand-edited file may contradict.
pub fn failed_targets(results: &Results) -> Vec<String> {
    results.metrics().filter_map(|m| m.target.as_ref().filter(|t| !t.met_by(m.value)).map(|t| format!("{} = {} ({} {} {})", m.id, m.value, t.target, t.op, t.threshold))).collect()
}

/// Counts the verdicts [`compare`] left in `results`.
pub fn tally(results: &Results) -> Tally {
    let mut t = Tally::default();
    for m in results.metrics() {
        let Some(c) = &m.baseline else { continue };
        match c.verdict {
            Verdict::Regression => t.regressions.push((m.id.clone(), c.clone())),
            Verdict::Improvement => t.improvements.push((m.id.clone(), c.clone())),
            Verdict::NoChange => t.no_change += 1,
            Verdict::NotCompared => t.not_compared += 1,
        }
    }
    t
}
