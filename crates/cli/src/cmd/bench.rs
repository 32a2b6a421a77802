//! `bench`: the benchmark suite (SPEC §5) with reports, targets, baselines and PyTorch ratios.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bench::{Benchmark, DeviceSel, Selection};

use crate::args::{NoiseArgs, OptionalDataArgs, SaveDirArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The categories to run: one, or all in run order.
    #[arg(long = "test", value_enum, default_value_t = Selection::All)]
    pub test: Selection,
    /// Smaller sizes and fewer samples (under a minute on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Where the suite runs (GPU benchmarking is reported as not available yet).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSel,
    #[command(flatten)]
    pub save_dir: SaveDirArgs,
    /// Store this run as baseline NAME (<save-dir>/baselines/NAME.json).
    #[arg(long, value_name = "NAME")]
    pub save_baseline: Option<String>,
    /// Compare with baseline NAME or a results FILE; exit 1 on a regression, or where no metric
    /// could be compared at all.
    #[arg(long, value_name = "NAME|FILE")]
    pub baseline: Option<String>,
    #[command(flatten)]
    pub noise: NoiseArgs,
    /// Targets table (JSON or YAML, the seed's shape); default: the seed's table.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// torch_ref.py --json output, to put PyTorch's numbers beside ours.
    #[arg(long, value_name = "torch_ref.json")]
    pub reference: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Dataset of the quality category, `--data` with `--meta` (default: a generated one).
    #[command(flatten, next_help_heading = "Dataset of the quality category (default: a generated one)")]
    pub data: OptionalDataArgs,
    /// Encoder of the training, scalability and hardware categories (mlp-medium, the seed's
    /// workload; cnn; isfm; …). The model category measures every encoder.
    #[arg(long, default_value = "mlp-medium")]
    pub encoder: engine::EncoderKind,
    /// Encoder the quality category trains.
    #[arg(long, default_value = "cnn")]
    pub quality_encoder: engine::EncoderKind,
    /// Run in a debug build anyway (its numbers mean nothing).
    #[arg(long)]
    pub allow_debug: bool,
}

pub fn run(a: Args) -> Result<()> {
    // The arguments first: a bad one is named whatever the build.
    let noise = a.noise.checked()?;
    let save_dir = &a.save_dir.save_dir;
    let cap = limits::thread_cap();
    if let Some(t) = a.threads.filter(|&t| t == 0 || t > cap.max) {
        bail!("--threads {t}: expected 1 to {} on a machine of {} cores", cap.max, cap.cores);
    }
    // Every file the run will read or name, checked before the suite runs rather than after it.
    let reference = a.reference.as_deref().map(bench::reference::Reference::load).transpose()?;
    let baseline = a.baseline.as_deref().map(|name| bench::load_baseline(save_dir, name)).transpose()?;
    bench::check_save_dir(save_dir, a.save_baseline.as_deref())?;
    let targets = a.targets.as_deref().map(bench::targets::load_targets).transpose()?;
    // The quality category's data: opened as training opens it (a store and table sharing no
    // usable Id is an error now, not a failed category at the end of the suite).
    if let Some((data, meta)) = a.data.paths() {
        train::trainer::open_dataset(data, meta)?;
    }
    if cfg!(debug_assertions) && !a.allow_debug {
        bail!("this is a debug build: its timings mean nothing. Use `cargo run --release -- bench ...`, or pass --allow-debug");
    }
    let names = a.test.categories();
    let pb = crate::progress::bar(names.len() as u64, "bench");
    let (pb2, pb3) = (pb.clone(), pb.clone());
    // Inside a long category (the full sweep runs for minutes): where the bar is drawn (a
    // terminal) it shows the point measured last; elsewhere (CI, a pipe) a line each, so the
    // run is seen to go on.
    let on_terminal = !pb.is_hidden();
    let mut b = Benchmark::new(save_dir)
        .quick(a.quick)
        .device(a.device)
        .encoder(a.encoder)
        .quality_encoder(a.quality_encoder)
        .on_log(|line| errln!("{line}"))
        .on_category(move |name| {
            pb2.set_prefix(name.to_string());
        })
        .on_progress(move |line| if on_terminal { pb3.set_prefix(line.to_string()) } else { errln!("  {line}") });
    if let Some(t) = a.threads {
        b = b.threads(t);
    }
    if let Some(t) = targets {
        b = b.targets(t);
    }
    if let Some((data, meta)) = a.data.paths() {
        b = b.quality_data(data.clone(), meta.clone());
    }
    if matches!(a.device, DeviceSel::Cuda(_)) {
        errln!("warning: --device {}: GPU benchmarking is not implemented yet; measuring the CPU and reporting the GPU as not available", a.device);
    }
    for kind in names {
        b.run(kind)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let Some(r) = &reference {
        b.with_reference(r);
    }
    if let (Some(name), Some(base)) = (&a.baseline, &baseline) {
        b.compare_with(name, base, noise);
    }
    let files = b.report()?;
    // A category that failed is in the reports, and the run fails: a CI job must not pass on a
    // suite that did not measure what it was asked to, nor keep it as a baseline.
    let failure = crate::cmd::compare::failed_categories(b.results());
    if let Some(name) = &a.save_baseline {
        if failure.is_none() {
            let p = b.save_baseline(name)?;
            outln!("baseline saved: {}", p.display());
        } else {
            errln!("baseline {name} not saved: a category failed");
        }
    }
    let r = b.results();
    outln!("pass rate {}; reports in {}", r.pass_rate_text(), save_dir.display());
    for f in &files {
        outln!("  {}", f.display());
    }
    let (mut regressions, mut failure) = (0, failure);
    if let Some(name) = &r.baseline {
        let tally = bench::compare::tally(r);
        crate::cmd::compare::print_tally(&tally);
        regressions = tally.regressions.len();
        crate::cmd::compare::warn_if_none_judged(&tally);
        failure = failure.or_else(|| crate::cmd::compare::judged_nothing(&tally, name));
    }
    crate::cmd::compare::finish(regressions, failure)
}
