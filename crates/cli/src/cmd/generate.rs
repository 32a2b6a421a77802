//! `generate`: a synthetic signal store + metadata CSV.

use std::path::PathBuf;

use anyhow::Result;
use signal::synth::{generate, SynthConfig};
use signal::{Complexity, Layout, Setting, SignalError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// simple (white noise), medium (Id-dependent sinusoid + noise), complex (3 components + trend + noise).
    #[arg(long, default_value = "medium")]
    pub complexity: Complexity,
    /// Number of Ids.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Samples per signal.
    #[arg(long, default_value_t = 8192)]
    pub length: usize,
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Output directory: writes <name>.h5 and <name>.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// File stem.
    #[arg(long, default_value = "synthetic")]
    pub name: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store chunked + gzip instead of contiguous.
    #[arg(long)]
    pub chunked: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = SynthConfig { complexity: a.complexity, count: a.count, length: a.length, channels: a.channels, seed: a.seed, ..Default::default() };
    cfg.validate().map_err(named_by_flag)?;
    // The stem of two file names: neither hidden (`.h5`) nor a path of its own.
    if !files::is_plain_name(&a.name) {
        anyhow::bail!("--name {:?}: expected a plain file stem such as `synthetic`", a.name);
    }
    let pb = crate::progress::bar(a.count as u64, "generate");
    let layout = if a.chunked { Layout::Chunked { rows: 4096, gzip: 4 } } else { Layout::Contiguous };
    let t0 = std::time::Instant::now();
    let g = generate(&cfg, &a.out, &a.name, layout, &|n| pb.set_position(n as u64)).map_err(named_by_flag)?;
    pb.finish_and_clear();
    outln!("wrote {} Ids x {} x {} ({}) in {:.2} s\n  {}\n  {}", a.count, a.length, a.channels, a.complexity, t0.elapsed().as_secs_f64(), g.store.display(), g.meta.display());
    Ok(())
}

/// A generator setting's error, named by this command's flag.
fn named_by_flag(e: SignalError) -> anyhow::Error {
    match e {
        SignalError::Invalid { setting, reason } => {
            let flag = match setting {
                Setting::Count => "--count",
                Setting::Length => "--length",
                Setting::Channels => "--channels",
                Setting::Complexity => "--complexity",
                _ => "setting",
            };
            anyhow::anyhow!("invalid {flag}: {reason}")
        }
        other => other.into(),
    }
}
