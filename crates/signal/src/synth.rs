//! Synthetic vibration-like signals (`generate`), written as a signal store + metadata CSV.
//!
//! - `simple`: white noise;
//! - `medium`: a sinusoid whose frequency depends on the Id, plus noise;
//! - `complex`: three harmonic components + a linear trend + noise.
//!
//! The label is the Id's frequency class (`Id % 10`), so a learned embedding can be probed.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{Result, Setting, SignalError};
use crate::meta::{MetaRow, Metadata};
use crate::rng::{mix_seed, Rng};
use crate::store::{write_store, Layout, SampleData};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Complexity {
    Simple,
    Medium,
    Complex,
}

impl FromStr for Complexity {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "simple" => Ok(Complexity::Simple),
            "medium" => Ok(Complexity::Medium),
            "complex" => Ok(Complexity::Complex),
            other => Err(SignalError::invalid(Setting::Complexity, format!("unknown {other:?}; expected simple, medium or complex"))),
        }
    }
}

impl std::fmt::Display for Complexity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Complexity::Simple => "simple",
            Complexity::Medium => "medium",
            Complexity::Complex => "complex",
        })
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub complexity: Complexity,
    /// Number of Ids (1..=count).
    pub count: usize,
    /// Samples per signal.
    pub length: usize,
    pub channels: usize,
    pub seed: u64,
    pub sample_rate: f64,
    /// Number of label classes (frequency groups), default 10.
    pub classes: usize,
    /// Standard deviation of the white noise added to `medium` and `complex` signals (whose
    /// tones have amplitude 1), default 0.1. At 1.0 a random-init encoder no longer tells the
    /// classes apart, and pretraining has something to learn (the benchmark's quality set).
    pub noise: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { complexity: Complexity::Medium, count: 100, length: 8192, channels: 1, seed: 0, sample_rate: 12_000.0, classes: 10, noise: 0.1 }
    }
}

/// What one generated signal costs beyond its samples while the store is built: its `Vec`, its
/// metadata row and its line of the table (an upper estimate).
const PER_SIGNAL_BYTES: usize = 320;

/// The most signals one generated store holds ([`SynthConfig::validate`]).
pub const MAX_COUNT: usize = 100_000;

impl SynthConfig {
    /// Sizes above zero, and the signals fit in the memory budget: generation holds every signal
    /// until the store is written whole.
    pub fn validate(&self) -> Result<()> {
        for (setting, v) in [(Setting::Count, self.count), (Setting::Length, self.length), (Setting::Channels, self.channels), (Setting::Classes, self.classes)] {
            if v == 0 {
                return Err(SignalError::invalid(setting, "must be > 0"));
            }
        }
        if self.count > MAX_COUNT {
            return Err(SignalError::invalid(
                Setting::Count,
                format!("{} signals: a generated store holds at most {MAX_COUNT}, since the HDF5 writer's search for free space grows with the file and the time to write grows as the square of the count (80 000 signals took 22 s, a million would take hours)", self.count),
            ));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(SignalError::invalid(Setting::Noise, format!("{} is not a finite level >= 0", self.noise)));
        }
        limits::check(|| format!("one generated signal of {} × {} float32", self.length, self.channels), limits::bytes(&[self.length, self.channels], 4))?;
        // Besides its samples each signal costs its vector, its metadata row and its CSV line:
        // a few hundred bytes, which decide the total for many short signals.
        let total = limits::bytes(&[self.count, self.length, self.channels], 4).saturating_add(limits::bytes(&[self.count], PER_SIGNAL_BYTES));
        limits::check(|| format!("{} generated signals of {} × {} float32 (with {PER_SIGNAL_BYTES} B of bookkeeping each)", self.count, self.length, self.channels), total)?;
        Ok(())
    }

    pub fn label_of(&self, id: u64) -> i64 {
        (id % self.classes as u64) as i64
    }

    /// The `(L, C)` signal of one Id; its memory taken fallibly (a budget raised past the
    /// machine must give an error, not an abort).
    pub fn signal(&self, id: u64) -> Result<Vec<f32>> {
        let mut rng = Rng::new(mix_seed(&[self.seed, id]));
        let (l, c) = (self.length, self.channels);
        let mut out = Vec::new();
        out.try_reserve_exact(l.saturating_mul(c)).map_err(|_| out_of_memory(Setting::Length, format!("a signal of {l} × {c} values")))?;
        out.resize(l * c, 0.0f32);
        let class = self.label_of(id) as f64;
        // Cycles per signal, as the PyTorch reference's medium data: several cycles per window.
        let cycles = 20.0 + 7.0 * class;
        let phase: Vec<f64> = (0..c).map(|_| rng.next_f64() * std::f64::consts::TAU).collect();
        for t in 0..l {
            let x = t as f64 / l as f64;
            for ch in 0..c {
                let w = std::f64::consts::TAU * cycles * x + phase[ch];
                let v = match self.complexity {
                    Complexity::Simple => rng.normal(),
                    Complexity::Medium => w.sin() + self.noise * rng.normal(),
                    Complexity::Complex => w.sin() + 0.5 * (2.3 * w).sin() + 0.25 * (5.1 * w + 0.7).cos() + 0.5 * x + self.noise * rng.normal(),
                };
                out[t * c + ch] = v as f32;
            }
        }
        Ok(out)
    }

    pub fn metadata(&self, path: &Path) -> Metadata {
        let rows = (1..=self.count as u64)
            .map(|id| MetaRow {
                id,
                label: self.label_of(id),
                dataset_id: Some(0),
                name: Some(format!("synthetic_{}", self.complexity)),
                domain_id: Some(0),
                sample_rate: Some(self.sample_rate),
                length: Some(self.length as u64),
                channels: Some(self.channels as u64),
                ..Default::default()
            })
            .collect();
        let columns = ["Id", "Dataset_id", "Name", "Label", "Domain_id", "Sample_Rate", "Length", "Channels"];
        Metadata { path: path.to_path_buf(), columns: columns.iter().map(|s| s.to_string()).collect(), rows }
    }
}

/// Memory the machine would not give for what `setting` asked (past a budget raised above it).
fn out_of_memory(setting: Setting, what: String) -> SignalError {
    SignalError::Invalid { setting, reason: format!("out of memory: {what} could not be had (the system refused it; --memory-budget is above what this machine gives)") }
}

/// Paths written by [`generate`].
#[derive(Clone, Debug)]
pub struct Generated {
    pub store: PathBuf,
    pub meta: PathBuf,
}

/// Writes `<dir>/<stem>.h5` and `<dir>/<stem>.csv`. `progress` is called with the number of Ids
/// generated so far.
pub fn generate(cfg: &SynthConfig, dir: &Path, stem: &str, layout: Layout, progress: &(dyn Fn(usize) + Sync)) -> Result<Generated> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| SignalError::Io { path: dir.to_path_buf(), source: e })?;
    let store = dir.join(format!("{stem}.h5"));
    let meta = dir.join(format!("{stem}.csv"));
    // Both names are checked before either file is written: a store published beside a table
    // that then fails to write is half a dataset.
    for target in [&store, &meta] {
        if target.is_dir() {
            return Err(SignalError::Io { path: target.clone(), source: std::io::Error::other("is a directory; the generated file would replace it") });
        }
    }
    // Signals are generated in parallel a block at a time; the store is written once, whole.
    let block = 256usize;
    let mut signals: Vec<(u64, Vec<f32>)> = Vec::new();
    signals.try_reserve_exact(cfg.count).map_err(|_| out_of_memory(Setting::Count, format!("a list of {} signals", cfg.count)))?;
    for b in 0..cfg.count.div_ceil(block) {
        let ids: Vec<u64> = ((b * block) as u64 + 1..=((b + 1) * block).min(cfg.count) as u64).collect();
        let made: Result<Vec<(u64, Vec<f32>)>> = ids.into_par_iter().map(|id| cfg.signal(id).map(|v| (id, v))).collect();
        signals.extend(made?);
        progress(signals.len());
    }
    write_store(&store, signals.iter().map(|(id, v)| SampleData { id: *id, values: v, channels: cfg.channels }), layout)?;
    cfg.metadata(&meta).write_csv(&meta)?;
    Ok(Generated { store, meta })
}
