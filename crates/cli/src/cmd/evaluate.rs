//! `evaluate`: linear probe and k-NN on frozen embeddings, beside a random-init encoder.

use std::path::PathBuf;

use anyhow::Result;
use train::eval::{evaluate_draws, EvalOptions, EvalReport, ScoreSpread, Split};

use crate::args::DataArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (or its model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// time: fit on each Id's first 70 %, test on the last 30 %; bearing: hold out whole bearings.
    #[arg(long, default_value = "time")]
    pub split: Split,
    /// Metadata column to classify.
    #[arg(long, default_value = "Label")]
    pub label: String,
    /// Evenly spaced windows per Id and region.
    #[arg(long, default_value_t = 32)]
    pub windows: usize,
    /// Seed of the bearing split's draw and of the random-init encoder: other seeds hold out other
    /// bearings, which shows how much a bearing-split number depends on the draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bearing split: evaluate this many draws (seeds --seed, --seed + 1, …) and report each row's
    /// mean, standard deviation and range over them, and the margin of pretrained over the better
    /// baseline per draw (the random-init encoder is drawn anew with each seed, so its spread
    /// includes its initialisation).
    #[arg(long, default_value_t = 1)]
    pub draws: usize,
    /// The run's YAML config, for a checkpoint without the product's metadata (a PyTorch state
    /// dict saved as safetensors): its model and data sections name the architecture and window.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `section.key=value` applied to --config, repeatable.
    #[arg(long = "override", value_name = "SECTION.KEY=VALUE", requires = "config")]
    pub overrides: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let ds = train::trainer::open_dataset(&a.data.data, &a.data.meta)?;
    for w in ds.mismatch_warnings() {
        errln!("warning: {w}");
    }
    let config = a.config.as_deref().map(|c| train::Config::load(c, &a.overrides)).transpose()?;
    let opts = EvalOptions { split: a.split, label: a.label, windows: a.windows, seed: a.seed, config, ..Default::default() };
    // What is about to run, before a wait that grows with the square of the windows (1024 per Id
    // and region on 53 Ids is minutes): the user sees it began and can size it down. (A count
    // evaluate refuses is left to its error.)
    if (1..=train::eval::MAX_WINDOWS).contains(&a.windows) {
        // The time split takes windows from both regions of each Id, the bearing split from one.
        let (regions, per) = if opts.split == Split::Time { (2, "Ids × 2 regions") } else { (1, "Ids") };
        let windows = ds.ids.len().saturating_mul(regions).saturating_mul(a.windows);
        let draws = if a.draws > 1 { format!(" per draw, {} draws", a.draws) } else { String::new() };
        errln!(
            "evaluating: up to {} {per} × {} windows = {windows} windows{draws}, embedded by the checkpoint and a random-init encoder, then a linear probe and k-NN on each and on the spectrum (the k-NN's time grows with the square of the windows; --windows sizes it)",
            ds.ids.len(),
            a.windows
        );
    }
    let mut report = evaluate_draws(&a.checkpoint, &ds, &opts, a.draws)?;
    for s in &report.draws[0].skipped {
        errln!("warning: Id {} skipped: {}", s.id, s.reason);
    }
    if a.json {
        // One draw: the report itself, as before draws existed.
        let json = if a.draws == 1 { serde_json::to_string_pretty(&report.draws.swap_remove(0))? } else { serde_json::to_string_pretty(&report)? };
        outln!("{json}");
        return Ok(());
    }
    let first = &report.draws[0];
    outln!("checkpoint   {}", first.checkpoint);
    outln!("encoder      {} on the {} input", first.encoder, first.input);
    for r in &report.draws {
        print_draw(r);
    }
    if report.draws.len() > 1 {
        outln!("over {} draws (seeds {}..={}), %: mean ± std [min, max]", report.draws.len(), a.seed, report.draws.last().map_or(a.seed, |r| r.seed));
        outln!("{:<28} {:^30}  {:^30}", "", "linear probe", "k-NN");
        for (name, s) in [
            ("pretrained", &report.pretrained),
            ("random init", &report.random_init),
            ("spectrum, no encoder", &report.spectrum_baseline),
            ("pretrained − best baseline", &report.margin_over_best_baseline),
        ] {
            outln!("{name:<28} {}  {}", spread(s, true), spread(s, false));
        }
    }
    Ok(())
}

/// One draw: its split, held-out bearings, windows and the three rows.
fn print_draw(r: &EvalReport) {
    outln!("split        {} (seed {}), label `{}` ({} classes), {} windows per Id and region", r.split, r.seed, r.label, r.classes.len(), r.windows_per_region);
    outln!("windows      fit {} from {} Ids, test {} from {} Ids", r.fit_windows, r.fit_ids.len(), r.test_windows, r.test_ids.len());
    for h in &r.held_out {
        outln!("held out     bearing {} (Label|Fault_Size|Fault_Location): Ids {:?}, {} test windows", h.bearing, h.ids, h.test_windows);
    }
    outln!("                    linear probe   k-NN");
    for (name, s) in [("pretrained", &r.pretrained), ("random init", &r.random_init), ("spectrum, no encoder", &r.spectrum_baseline)] {
        outln!("{name:<20} {:>9.1} %  {:>5.1} %", 100.0 * s.linear_probe_acc, 100.0 * s.knn_acc);
    }
}

/// `46.4 ± 5.1 [36.3, 56.1]`, in points.
fn spread(s: &ScoreSpread, linear: bool) -> String {
    let v = if linear { s.linear_probe_acc } else { s.knn_acc };
    format!("{:>6.1} ± {:>4.1} [{:>6.1}, {:>6.1}]", 100.0 * v.mean, 100.0 * v.std, 100.0 * v.min, 100.0 * v.max)
}
