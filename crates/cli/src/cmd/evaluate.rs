//! `evaluate`: linear probe and k-NN on frozen embeddings, beside a random-init encoder.

use std::path::PathBuf;

use anyhow::Result;
use train::eval::{evaluate, EvalOptions, Split};

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
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let ds = train::trainer::open_dataset(&a.data.data, &a.data.meta)?;
    let opts = EvalOptions { split: a.split, label: a.label, windows: a.windows, ..Default::default() };
    let r = evaluate(&a.checkpoint, &ds, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("checkpoint   {}", r.checkpoint);
    println!("encoder      {}", r.encoder);
    println!("split        {:?}, label `{}` ({} classes), {} windows per Id and region", r.split, r.label, r.classes.len(), r.windows_per_region);
    println!("windows      fit {}  test {}", r.fit_windows, r.test_windows);
    println!("               linear probe   k-NN");
    println!("pretrained     {:>11.1} %  {:>5.1} %", 100.0 * r.pretrained.linear_probe_acc, 100.0 * r.pretrained.knn_acc);
    println!("random init    {:>11.1} %  {:>5.1} %", 100.0 * r.random_init.linear_probe_acc, 100.0 * r.random_init.knn_acc);
    Ok(())
}
