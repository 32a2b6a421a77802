//! `train`: ContrastiveID pretraining from a YAML config.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::ProgressBar;
use train::{Config, EpochLog, Observer, StepLog};

use crate::args::DataArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// YAML config with PHM-Vibench's sections (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// `section.key=value`, repeatable; applied after the file.
    #[arg(long = "override", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue from a checkpoint directory (e.g. RUN/checkpoints/last).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Print the run summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Progress bar with loss and throughput; epoch lines above it.
struct Bar {
    pb: ProgressBar,
}

impl Observer for Bar {
    fn start(&mut self, total: u64, first: u64) {
        self.pb.set_length(total);
        self.pb.set_position(first);
    }
    fn step(&mut self, s: &StepLog) -> std::ops::ControlFlow<()> {
        self.pb.set_position(s.step);
        self.pb.set_prefix(format!("loss {:.4} acc {:.3} lr {:.2e} {:.0} samples/s", s.loss, s.accuracy, s.lr, s.samples_per_s));
        std::ops::ControlFlow::Continue(())
    }
    fn epoch(&mut self, e: &EpochLog) {
        // A line per validation, or per hundred epochs (runs of one-batch epochs would print
        // thousands of lines; metrics.jsonl has every epoch).
        if e.val_contrastive_loss.is_none() && !(e.epoch + 1).is_multiple_of(100) {
            return;
        }
        let val = match (e.val_contrastive_loss, e.val_contrastive_acc) {
            (Some(l), Some(a)) => format!("  val_contrastive_loss {l:.4}  val_contrastive_acc {a:.3}"),
            _ => String::new(),
        };
        self.message(&format!("epoch {:>4}  step {:>6}  train_loss {:.4}  train_acc {:.3}{val}  ({:.2} s)", e.epoch, e.step, e.train_contrastive_loss, e.train_contrastive_acc, e.seconds));
    }
    fn message(&mut self, msg: &str) {
        // A hidden bar (not a terminal) drops what it is asked to print: use stderr directly.
        if self.pb.is_hidden() {
            errln!("{msg}");
        } else {
            self.pb.println(crate::elide_middle(msg, crate::MAX_MESSAGE));
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let cfg = Config::load(&a.config, &a.overrides)?;
    let pb = if cfg.trainer.enable_progress_bar { crate::progress::bar(0, "train") } else { indicatif::ProgressBar::hidden() };
    let mut bar = Bar { pb };
    let summary = train::train(&cfg, &a.data.data, &a.data.meta, a.resume.as_deref(), &mut bar)?;
    bar.pb.finish_and_clear();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    outln!("run        {}", summary.run_dir.display());
    outln!("steps      {} ({} epochs, {} train Ids, {} validation Ids)", summary.steps, summary.epochs_completed, summary.train_ids, summary.val_ids);
    if summary.last_loss.is_nan() {
        // No batch ran (a resumed run already at its end): say so rather than print NaN.
        outln!("last       no batch trained in this invocation: the run was already at its end");
    } else {
        outln!("last       loss {:.4}  accuracy {:.3}", summary.last_loss, summary.last_accuracy);
    }
    if let Some(b) = summary.best_monitor {
        outln!("best       {} {b:.5}", summary.monitor);
    }
    outln!("time       {:.1} s, {:.0} samples/s{}", summary.seconds, summary.samples_per_s, if summary.stopped_early { " (stopped early)" } else { "" });
    if !summary.skipped_ids.is_empty() {
        outln!("skipped    Ids {:?}", summary.skipped_ids);
    }
    if let Some(l) = &summary.loss_scaling {
        outln!("fp16       {} step(s) skipped by the loss scaler, scale now {}", l.skipped_steps, l.final_scale);
    }
    if let Some(p) = &summary.last_checkpoint {
        outln!("last ckpt  {}", p.display());
    }
    if let Some(p) = &summary.best_checkpoint {
        let value = summary.best_checkpoint_monitor.map_or(String::new(), |v| format!(" ({} {v:.5})", summary.monitor));
        outln!("best ckpt  {}{value}", p.display());
    }
    Ok(())
}
