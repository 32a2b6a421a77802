//! `compare`: one saved benchmark run against another, without running anything (as `bench
//! --baseline` does right after a run): each shared metric's change with its 95 % CI, the
//! regression rule's verdict, the warnings that weaken the comparison; exit 1 on a regression or
//! where the run judged has a failed category.

use anyhow::Result;

use crate::args::{NoiseArgs, SaveDirArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The baseline: a results file (a run's comprehensive_benchmark_results.json, a saved
    /// baseline) or a baseline NAME under <save-dir>/baselines/.
    #[arg(value_name = "BASELINE")]
    pub baseline: String,
    /// The run to judge against it: a results file or a baseline NAME.
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
    let warnings = bench::compare::compare(&mut current, &a.baseline, &base, noise);
    let regressions = bench::compare::tally(&current).regressions.len();
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
                    outln!("{:<13}{:<48} {:+.1} % (CI {:+.1} … {:+.1} %)", verdict_word(c.verdict), m.id, 100.0 * c.change, 100.0 * c.ci_low, 100.0 * c.ci_high);
                }
            }
            summary_line(&current);
        } else {
            print_verdicts(&current);
        }
    }
    // A run whose category failed fails here as it failed `bench`: it did not measure what it was
    // asked to. Said whether or not it also regressed.
    let failed: Vec<String> = current.categories.iter().filter(|c| c.status == bench::results::Status::Error).map(|c| c.kind.to_string()).collect();
    let failure = (!failed.is_empty()).then(|| format!("{}: {} categor{} failed: {}", a.current, failed.len(), if failed.len() == 1 { "y" } else { "ies" }, failed.join(", ")));
    if regressions > 0 {
        if let Some(f) = &failure {
            errln!("error: {f}");
        }
        std::process::exit(1);
    }
    if let Some(f) = failure {
        anyhow::bail!(f);
    }
    Ok(())
}

fn verdict_word(v: bench::stats::Verdict) -> &'static str {
    match v {
        bench::stats::Verdict::Regression => "REGRESSION",
        bench::stats::Verdict::Improvement => "improvement",
        bench::stats::Verdict::NoChange => "no change",
        bench::stats::Verdict::NotCompared => "not compared",
    }
}

/// Prints each regression and improvement of a compared run and the count of each verdict;
/// returns the number of regressions. (`bench --baseline` and `compare` print the same.)
pub fn print_verdicts(r: &bench::Results) -> usize {
    let t = bench::compare::tally(r);
    for (verdict, changes) in [("REGRESSION", &t.regressions), ("improvement", &t.improvements)] {
        for (id, c) in changes {
            outln!("{verdict:<13}{id:<48} {:+.1} % (CI {:+.1} … {:+.1} %)", 100.0 * c.change, 100.0 * c.ci_low, 100.0 * c.ci_high);
        }
    }
    summary_line(r);
    t.regressions.len()
}

fn summary_line(r: &bench::Results) {
    let t = bench::compare::tally(r);
    outln!(
        "against baseline: {} regression(s), {} improvement(s), {} no change, {} not compared (a single value or too few samples on a side)",
        t.regressions.len(),
        t.improvements.len(),
        t.no_change,
        t.not_compared
    );
}
