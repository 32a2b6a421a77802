//! `compare`: one saved benchmark run against another, without running anything (as `bench
//! --baseline` does right after a run): each shared metric's change with its 95 % CI, the
//! regression rule's verdict, the warnings that weaken the comparison (the judged run's failed
//! targets among them); exit 1 on a regression, where the run judged has a failed category, or
//! where no metric could be judged at all.

use anyhow::Result;

use crate::args::{NoiseArgs, SaveDirArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The baseline: a results file (a run's comprehensive_benchmark_results.json, a saved
    /// baseline), a run's save directory, or a baseline NAME under <save-dir>/baselines/.
    #[arg(value_name = "BASELINE")]
    pub baseline: String,
    /// The run to judge against it: a results file, a save directory or a baseline NAME.
    #[arg(value_name = "CURRENT")]
    pub current: String,
    #[command(flatten)]
    pub save_dir: SaveDirArgs,
    #[command(flatten)]
    pub noise: NoiseArgs,
    /// Print every shared metric's change, not only regressions and improvements.
    #[arg(long)]
    pub all: bool,
    /// Print the current run's results with each metric's change as JSON (the shape of
    /// comprehensive_benchmark_results.json) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let noise = a.noise.checked()?;
    let dir = &a.save_dir.save_dir;
    let base = bench::load_baseline(dir, &a.baseline)?;
    let mut current = bench::load_baseline(dir, &a.current)?;
    let mut warnings = bench::compare::compare(&mut current, &a.baseline, &base, noise);
    let failed = bench::compare::failed_targets(&current);
    if !failed.is_empty() {
        let line = format!("{} target(s) failed in {}: {}", failed.len(), a.current, failed.join(", "));
        // In the JSON too, with the comparison's other warnings.
        current.baseline_warnings.push(line.clone());
        warnings.push(line);
    }
    let tally = bench::compare::tally(&current);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&current)?);
    } else {
        outln!("{} against {} (noise band {:.0} %)", a.current, a.baseline, 100.0 * noise);
        for w in &warnings {
            errln!("warning: {w}");
        }
        if a.all {
            for m in current.metrics() {
                if let Some(c) = &m.baseline {
                    verdict_line(verdict_word(c.verdict), &m.id, c);
                }
            }
            summary_line(&tally);
        } else {
            print_tally(&tally);
        }
    }
    warn_if_none_judged(&tally);
    // A run whose category failed fails here as it failed `bench`: it did not measure what it was
    // asked to.
    finish(tally.regressions.len(), failed_categories(&current).map(|f| format!("{}: {f}", a.current)).or_else(|| judged_nothing(&tally, &a.baseline)))
}

/// The failure of a comparison that gave no metric a verdict: it gated nothing, so it does not
/// pass. (`bench --baseline` and `compare` fail alike.)
pub fn judged_nothing(t: &bench::compare::Tally, baseline: &str) -> Option<String> {
    t.judged_nothing().then(|| {
        format!("no metric could be compared with the baseline {baseline}, so nothing was judged: the runs share no metric, or only ones the warnings above exclude (another encoder set, values 0 or not finite, another unit)")
    })
}

/// The warning for a comparison whose shared metrics are all of kinds the rule cannot judge
/// ([`bench::compare::Tally::judged_none_of_them`]): it passes, and says it checked nothing.
pub fn warn_if_none_judged(t: &bench::compare::Tally) {
    if t.judged_none_of_them() {
        errln!("warning: no metric got a verdict: the {} compared with the baseline are single values, too few samples or excluded above, none of which the rule judges, so this comparison checked nothing", t.not_compared);
    }
}

/// How a compared run ends: exit 1 on a regression, an error on a failure (a failed category, a
/// comparison that judged nothing); the failure is said whether or not the run also regressed.
/// (`bench` and `compare` end alike.)
pub fn finish(regressions: usize, failure: Option<String>) -> Result<()> {
    if regressions > 0 {
        if let Some(f) = &failure {
            errln!("error: {f}");
        }
        std::process::exit(1);
    }
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}

/// `N categor(y|ies) failed: kind (notes); …`, where any did.
pub fn failed_categories(r: &bench::Results) -> Option<String> {
    let failed: Vec<String> = r.categories.iter().filter(|c| c.status == bench::results::Status::Error).map(|c| format!("{} ({})", c.kind, c.notes.join("; "))).collect();
    (!failed.is_empty()).then(|| format!("{} categor{} failed: {}", failed.len(), if failed.len() == 1 { "y" } else { "ies" }, failed.join("; ")))
}

fn verdict_word(v: bench::stats::Verdict) -> &'static str {
    match v {
        bench::stats::Verdict::Regression => "REGRESSION",
        bench::stats::Verdict::Improvement => "improvement",
        bench::stats::Verdict::NoChange => "no change",
        bench::stats::Verdict::NotCompared => "not compared",
    }
}

fn verdict_line(word: &str, id: &str, c: &bench::stats::Change) {
    outln!("{word:<13}{id:<48} {:+.1} % (CI {:+.1} … {:+.1} %)", 100.0 * c.change, 100.0 * c.ci_low, 100.0 * c.ci_high);
}

/// Prints each regression and improvement of a compared run and the count of each verdict.
/// (`bench --baseline` and `compare` print the same.)
pub fn print_tally(t: &bench::compare::Tally) {
    for (word, changes) in [("REGRESSION", &t.regressions), ("improvement", &t.improvements)] {
        for (id, c) in changes {
            verdict_line(word, id, c);
        }
    }
    summary_line(t);
}

fn summary_line(t: &bench::compare::Tally) {
    outln!("against baseline: {t} (not compared: a single value or too few samples on a side)");
}
