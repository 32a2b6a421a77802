//! Learning quality with a frozen encoder (SPEC §4): embed K evenly spaced windows per Id and
//! region, fit a multinomial logistic regression (the linear probe) and a k-NN classifier on the
//! fit set, score both on the test set — for the trained encoder, for a randomly initialised one
//! of the same architecture, and for the log-spectrum of the same windows with no encoder at all
//! (the signal-processing baseline a vibration engineer would try first).
//!
//! Splits: `time` — every Id's first 70 % is the fit region, the last 30 % the test region;
//! `bearing` — whole Ids are held out, grouped by physical bearing (Ids sharing `Label`,
//! `Fault_Size` and `Fault_Location`), about 30 % of the bearings of each label. The report
//! names the held-out bearings and Ids and the window counts on each side.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use engine::{CpuDevice, Encoder, EncoderConfig};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use signal::{BatchBuilder, Dataset, WindowConfig, WindowStrategy};

use crate::checkpoint;
use crate::config::{engine_error, Config, InputKind};
use crate::error::{Result, TrainError};
use crate::input::Inputs;
use crate::trainer::sample_rates;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Split {
    #[serde(rename = "time")]
    Time,
    #[serde(rename = "bearing")]
    Bearing,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Time => "time",
            Split::Bearing => "bearing",
        })
    }
}

impl std::str::FromStr for Split {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "time" => Ok(Split::Time),
            "bearing" => Ok(Split::Bearing),
            other => Err(TrainError::Flag { flag: "--split".into(), reason: format!("unknown split {other:?}; expected time or bearing") }),
        }
    }
}

/// Evaluation settings.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub split: Split,
    /// Metadata column to classify (default `Label`).
    pub label: String,
    /// Windows per Id and region (default 32).
    pub windows: usize,
    /// Neighbours of the k-NN classifier (default 5).
    pub knn_k: usize,
    /// Fraction of each signal in the fit region of the time split (default 0.7).
    pub time_fraction: f64,
    /// Seed of the random-init encoder and the bearing split (default 0).
    pub seed: u64,
    /// The training configuration, for a checkpoint that does not carry one (a PyTorch state
    /// dict): its model and data sections name the architecture, window and input.
    pub config: Option<Config>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { split: Split::Time, label: "Label".into(), windows: 32, knn_k: 5, time_fraction: 0.7, seed: 0, config: None }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ProbeScores {
    pub linear_probe_acc: f64,
    pub knn_acc: f64,
}

/// A held-out bearing of the bearing split.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeldOut {
    /// `Label|Fault_Size|Fault_Location`.
    pub bearing: String,
    pub ids: Vec<u64>,
    pub test_windows: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub encoder: String,
    pub input: InputKind,
    pub split: Split,
    /// Seed of the bearing draw and of the random-init encoder.
    pub seed: u64,
    pub label: String,
    pub windows_per_region: usize,
    pub classes: Vec<String>,
    pub fit_windows: usize,
    pub test_windows: usize,
    /// Ids whose windows were fitted on and tested on.
    pub fit_ids: Vec<u64>,
    pub test_ids: Vec<u64>,
    /// The bearing split's held-out bearings (empty for the time split).
    pub held_out: Vec<HeldOut>,
    /// Ids left out, each with why.
    pub skipped: Vec<Skipped>,
    pub pretrained: ProbeScores,
    pub random_init: ProbeScores,
    /// The log-spectrum of the same windows, no encoder.
    pub spectrum_baseline: ProbeScores,
    pub seconds: f64,
}

/// The most evaluation windows per Id and region (`--windows`).
pub const MAX_WINDOWS: usize = 1024;

/// Labelled windows: `[n, W·C]` values, a class and an Id per window.
#[derive(Default)]
pub struct Windows {
    pub x: Vec<f32>,
    pub y: Vec<usize>,
    pub ids: Vec<u64>,
}

/// The fit and test windows of a split.
pub struct ProbeSet {
    pub fit: Windows,
    pub test: Windows,
    pub classes: Vec<String>,
    pub held_out: Vec<HeldOut>,
    /// Ids left out, each with why.
    pub skipped: Vec<Skipped>,
}

/// An Id the evaluation left out, and why (`too short for …`, `non-finite value …`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub id: u64,
    pub reason: String,
}

/// Cuts the probe windows of `split` from every Id of `ds`: `k` evenly spaced windows of `w`
/// per Id and region, normalised as `builder` normalises, labelled by column `label`.
pub fn probe_windows(ds: &Dataset, builder: &BatchBuilder, w: usize, k: usize, split: Split, label: &str, time_fraction: f64, seed: u64) -> Result<ProbeSet> {
    if !(time_fraction > 0.0 && time_fraction < 1.0) {
        return Err(TrainError::Config { key: "time_fraction".into(), reason: format!("{time_fraction} must be between 0 and 1 (the share of each signal the probes fit on)") });
    }
    let window = WindowConfig { window_size: w, stride: w, num_window: k, strategy: WindowStrategy::EvenlySpaced };
    if !ds.meta.columns.iter().any(|c| c == label) {
        return Err(TrainError::Data(format!("{} has no column `{label}` (--label names the column to classify); its columns: {}", ds.meta.path.display(), ds.meta.columns.join(", "))));
    }
    let mut class_of = BTreeMap::new();
    for &id in &ds.ids {
        let row = ds.row(id).ok_or_else(|| TrainError::Data(format!("Id {id} has no metadata row")))?;
        let v = row
            .field(label)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| TrainError::Data(format!("the label column `{label}` of {} is empty for Id {id} (--label names the column to classify)", ds.meta.path.display())))?;
        class_of.insert(id, v);
    }
    let mut classes: Vec<String> = class_of.values().cloned().collect();
    sort_classes(&mut classes);
    classes.dedup();
    let class_index = |id: u64| classes.iter().position(|c| *c == class_of[&id]).unwrap_or(0);
    let bearings = if split == Split::Bearing { held_out_bearings(ds, seed) } else { BTreeMap::new() };
    let bearing_of: HashMap<u64, &String> = bearings.iter().flat_map(|(b, ids)| ids.iter().map(move |id| (*id, b))).collect();
    let (mut fit, mut test) = (Windows::default(), Windows::default());
    let mut skipped = Vec::new();
    let mut test_count: HashMap<&String, usize> = HashMap::new();
    for &id in &ds.ids {
        let info = ds.store.info(id)?;
        let len = builder.preprocess().effective_length(info.length);
        let regions: Vec<((usize, usize), bool)> = match split {
            Split::Time => {
                let cut = (len as f64 * time_fraction).floor() as usize;
                vec![((0, cut), false), ((cut, len), true)]
            }
            Split::Bearing => vec![((0, len), bearing_of.contains_key(&id))],
        };
        if let Some(((lo, hi), _)) = regions.iter().find(|((lo, hi), _)| hi - lo < w) {
            skipped.push(Skipped { id, reason: format!("its {split} split region of {} samples is shorter than the window of {w}", hi - lo) });
            continue;
        }
        if let Err(reason) = builder.check(id)? {
            skipped.push(Skipped { id, reason: reason.to_string() });
            continue;
        }
        for ((lo, hi), is_test) in regions {
            let x = builder.windows_of(id, (lo, hi), &window, 0)?;
            let n = x.len() / (w * builder.channels());
            let target = if is_test { &mut test } else { &mut fit };
            target.y.extend(std::iter::repeat_n(class_index(id), n));
            target.ids.extend(std::iter::repeat_n(id, n));
            target.x.extend_from_slice(&x);
            if let Some(b) = bearing_of.get(&id).filter(|_| is_test) {
                *test_count.entry(b).or_default() += n;
            }
        }
    }
    if fit.y.is_empty() || test.y.is_empty() {
        let why = if split == Split::Bearing && bearings.is_empty() {
            format!("no label has two bearings to hold one out (bearings are told apart by the table's Label, Fault_Size and Fault_Location; {} Ids, {} labels)", ds.ids.len(), classes.len())
        } else if skipped.is_empty() {
            "no window was cut".to_string()
        } else {
            let reasons: Vec<String> = skipped.iter().map(|s| format!("Id {}: {}", s.id, s.reason)).collect();
            format!("{} of {} Ids skipped: {}", skipped.len(), ds.ids.len(), crate::first_few(&reasons))
        };
        return Err(TrainError::Data(format!("{}: the {split} split leaves an empty fit or test set: {why}", ds.meta.path.display())));
    }
    // A probe tells classes apart: with one there is nothing to tell, and every row scores 100 %.
    let present: std::collections::BTreeSet<usize> = fit.y.iter().chain(&test.y).copied().collect();
    if present.len() < 2 {
        let only = present.first().map_or("none", |&c| classes[c].as_str());
        return Err(TrainError::Data(format!("the label column `{label}` has one class ({only:?}) among the Ids evaluated: a probe needs two or more (evaluate names the column with --label)")));
    }
    let held_out = bearings.iter().map(|(b, ids)| HeldOut { bearing: b.clone(), ids: ids.clone(), test_windows: test_count.get(b).copied().unwrap_or(0) }).collect();
    Ok(ProbeSet { fit, test, classes, held_out, skipped })
}

/// Class names in numeric order where they are numbers, then the rest as text: one total order
/// (comparing a number with a text as text but two numbers as numbers is none, and sorting by it
/// may panic).
fn sort_classes(classes: &mut [String]) {
    classes.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    });
}

fn dedup_ids(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// A probe set's windows as an encoder takes them (`inputs` applied once, whoever is scored on
/// them), with each window's sampling rate.
pub struct ProbeInputs<'a> {
    set: &'a ProbeSet,
    row_len: usize,
    fit: Cow<'a, [f32]>,
    test: Cow<'a, [f32]>,
    fit_rates: Vec<f32>,
    test_rates: Vec<f32>,
}

impl<'a> ProbeInputs<'a> {
    pub fn new(set: &'a ProbeSet, inputs: &Inputs) -> Result<Self> {
        Ok(ProbeInputs { set, row_len: inputs.row_len(), fit: inputs.of(&set.fit.x)?, test: inputs.of(&set.test.x)?, fit_rates: inputs.rates(&set.fit.ids), test_rates: inputs.rates(&set.test.ids) })
    }

    /// Probe scores of the inputs themselves as features (no encoder).
    pub fn score_raw(&self, knn_k: usize) -> ProbeScores {
        let s = self.set;
        probe(&self.fit, &s.fit.y, &self.test, &s.test.y, self.row_len, s.classes.len(), knn_k)
    }
}

/// Probe scores of `enc`'s embeddings of the probe set's windows.
pub fn score(enc: &mut Encoder<CpuDevice>, p: &ProbeInputs, knn_k: usize) -> Result<ProbeScores> {
    let zf = engine::embed(enc, &p.fit, Some(&p.fit_rates)).map_err(engine_error)?;
    let zt = engine::embed(enc, &p.test, Some(&p.test_rates)).map_err(engine_error)?;
    let s = p.set;
    // A non-finite embedding would turn every probe into chance, silently (and slow the
    // regression to a crawl on subnormals): name it instead.
    for (z, x, which) in [(&zf, &s.fit, "fit"), (&zt, &s.test, "test")] {
        if let Some(i) = z.iter().position(|v| !v.is_finite()) {
            let window = i / enc.cfg.embed.max(1);
            let id = x.ids.get(window).copied().unwrap_or_default();
            return Err(TrainError::Data(format!(
                "the encoder's embedding of {which} window {window} (Id {id}) is not finite: its weights, or the scale of that Id's signal after data.normalization, overflow the encoder"
            )));
        }
    }
    Ok(probe(&zf, &s.fit.y, &zt, &s.test.y, enc.cfg.embed, s.classes.len(), knn_k))
}

/// Evaluates the encoder of `ckpt` on the store + table.
pub fn evaluate(ckpt: &Path, ds: &Dataset, opts: &EvalOptions) -> Result<EvalReport> {
    evaluate_alongside(ckpt, ds, opts, 1)
}

/// [`evaluate`] as one of `running` evaluations at once: the memory budget is checked for all of
/// them (each holds its own windows, embeddings and probe).
fn evaluate_alongside(ckpt: &Path, ds: &Dataset, opts: &EvalOptions, running: usize) -> Result<EvalReport> {
    let t0 = std::time::Instant::now();
    if opts.windows == 0 {
        return Err(TrainError::Flag { flag: "--windows".into(), reason: "must be > 0".into() });
    }
    // The k-NN probe compares every test window with every fit window: its time grows with the
    // square of the windows (1000 per Id and region took 44 s on 8 Ids, 2000 took 186 s).
    if opts.windows > MAX_WINDOWS {
        return Err(TrainError::Flag {
            flag: "--windows".into(),
            reason: format!("{} is more than {MAX_WINDOWS} per Id and region (the k-NN probe's time grows with the square of the windows)", opts.windows),
        });
    }
    let mut model = checkpoint::ModelFile::read(ckpt)?;
    let file = model.path.clone();
    let channels = ds.store.channels();
    let cfg = match (model.config_yaml.take(), &opts.config) {
        (Some(_), Some(_)) => {
            // Two configurations would be one too many: the checkpoint's is the one its weights
            // were trained with, and a --config beside it would be silently ignored.
            return Err(TrainError::Flag {
                flag: "--config".into(),
                reason: format!("{} carries its training configuration; --config (and --override) are for checkpoints without one", file.display()),
            });
        }
        (Some(y), None) => Config::from_yaml(&y, &[]).map_err(|e| TrainError::Checkpoint { path: file.clone(), reason: format!("its training configuration does not load: {e}") })?,
        (None, Some(c)) => c.clone(),
        (None, None) => {
            return Err(TrainError::Checkpoint {
                path: file.clone(),
                reason: "carries no training configuration (a state dict saved outside the product?): give the run's config with --config".into(),
            })
        }
    };
    let arch: EncoderConfig = model.arch.clone().unwrap_or_else(|| cfg.encoder(channels));
    if arch.channels != channels {
        return Err(TrainError::Checkpoint { path: file, reason: format!("was trained on {} channels; {} has {channels}", arch.channels, ds.store.path().display()) });
    }
    let w = cfg.data.window_size;
    // The windows must hold as many values as the windows the encoder was built for.
    if arch.window != cfg.encoder_window() {
        return Err(TrainError::Checkpoint { path: file, reason: format!("its encoder takes windows of {}, its configuration cuts {} ({} input)", arch.window, w, cfg.data.input) });
    }
    let builder = BatchBuilder::new(ds.store.clone(), cfg.preprocess(), WindowConfig { window_size: w, ..WindowConfig::default() })?;
    // Every probe window is held at once: its values (4 bytes each), its spectrum (half as many)
    // and the probe's f64 copies of the spectrum features (fit and test standardized); and its
    // embedding by each encoder (f32, then the probe's standardized f64 copy).
    let windows_bytes = limits::bytes(&[ds.ids.len(), 2, opts.windows, w, channels], 14);
    let embedding_bytes = limits::bytes(&[ds.ids.len(), 2, opts.windows, arch.embed], 4 + 8);
    // The linear probe's weights, gradient and Adam moments: classes (at most one per Id) × its
    // widest features (the embedding or the spectrum), f64.
    let probe_bytes = limits::bytes(&[ds.ids.len(), arch.embed.max(w / 2 * channels)], 4 * 8)
        // Its residuals (one f64 per fit window and class), the k-NN's block of cross terms, and
        // each worker's distances to every fit window (an f64 and a class each).
        .saturating_add(limits::bytes(&[ds.ids.len(), opts.windows, ds.ids.len()], 8))
        .saturating_add(KNN_BLOCK_ELEMENTS as u128 * 8)
        .saturating_add(limits::bytes(&[rayon::current_num_threads(), ds.ids.len(), opts.windows], 16));
    limits::check(
        || {
            let at_once = if running > 1 { format!(", for the {running} draws evaluated at once") } else { String::new() };
            format!(
                "`--windows {}`: {} Ids × 2 regions × {} windows of {w} × {channels} (with their spectra, embeddings of {} and probe features{at_once})",
                opts.windows,
                ds.ids.len(),
                opts.windows,
                arch.embed
            )
        },
        windows_bytes.saturating_add(embedding_bytes).saturating_add(probe_bytes).saturating_mul(running.max(1) as u128),
    )?;
    let set = probe_windows(ds, &builder, w, opts.windows, opts.split, &opts.label, opts.time_fraction, opts.seed)?;
    let rates = sample_rates(ds);
    let inputs = Inputs::with_rates(cfg.data.input, w, channels, rates.clone())?;
    let spectrum = Inputs::with_rates(InputKind::Spectrum, w, channels, rates)?;
    let pool = rayon::ThreadPoolBuilder::new().build().map_err(|e| TrainError::Data(e.to_string()))?;
    let (pretrained, random_init, spectrum_baseline) = pool.install(|| -> Result<_> {
        let mut enc = arch.init(CpuDevice::new(), 256, opts.seed).map_err(engine_error)?;
        model.load_into(&mut enc)?;
        let fed = ProbeInputs::new(&set, &inputs)?;
        let pre = score(&mut enc, &fed, opts.knn_k)?;
        let mut rand = arch.init(CpuDevice::new(), 256, opts.seed ^ 0x5EED0F1A17).map_err(engine_error)?;
        let rnd = score(&mut rand, &fed, opts.knn_k)?;
        // The baseline's features: the encoders' own inputs where those are already the spectrum.
        let spec = if cfg.data.input == InputKind::Spectrum { fed.score_raw(opts.knn_k) } else { ProbeInputs::new(&set, &spectrum)?.score_raw(opts.knn_k) };
        Ok((pre, rnd, spec))
    })?;
    Ok(EvalReport {
        checkpoint: file.display().to_string(),
        encoder: arch_string(&arch),
        input: cfg.data.input,
        split: opts.split,
        seed: opts.seed,
        label: opts.label.clone(),
        windows_per_region: opts.windows,
        fit_windows: set.fit.y.len(),
        test_windows: set.test.y.len(),
        fit_ids: dedup_ids(&set.fit.ids),
        test_ids: dedup_ids(&set.test.ids),
        classes: set.classes,
        held_out: set.held_out,
        skipped: set.skipped,
        pretrained,
        random_init,
        spectrum_baseline,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The most draws `evaluate_draws` takes: each is a whole evaluation (seconds to minutes).
pub const MAX_DRAWS: usize = 1000;

/// The spread of one accuracy over several draws: mean, sample standard deviation (0 for one
/// draw), smallest and largest.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (not empty).
    pub fn of(v: &[f64]) -> Spread {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Spread { mean, std: var.sqrt(), min: v.iter().copied().fold(f64::INFINITY, f64::min), max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max) }
    }
}

/// A row of the report (or a margin) over several draws.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ScoreSpread {
    pub linear_probe_acc: Spread,
    pub knn_acc: Spread,
}

impl ScoreSpread {
    fn of(scores: impl Iterator<Item = ProbeScores> + Clone) -> ScoreSpread {
        let linear: Vec<f64> = scores.clone().map(|s| s.linear_probe_acc).collect();
        let knn: Vec<f64> = scores.map(|s| s.knn_acc).collect();
        ScoreSpread { linear_probe_acc: Spread::of(&linear), knn_acc: Spread::of(&knn) }
    }
}

/// Several draws of the bearing split (seeds `seed, seed + 1, …`) and how each row spreads over
/// them: one draw holds out a handful of bearings, so its number depends on which (by up to 40
/// points on CWRU, docs/quality.md).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DrawsReport {
    pub draws: Vec<EvalReport>,
    pub pretrained: ScoreSpread,
    pub random_init: ScoreSpread,
    pub spectrum_baseline: ScoreSpread,
    /// Per draw, pretrained minus the better of random init and the spectrum baseline (each of
    /// linear probe and k-NN on its own): what pretraining adds over both baselines, the measure
    /// of issue 12's moonshot (≥ +0.10).
    pub margin_over_best_baseline: ScoreSpread,
}

/// `evaluate` on `draws` draws of the bearing split, seeds `opts.seed` upwards.
pub fn evaluate_draws(ckpt: &Path, ds: &Dataset, opts: &EvalOptions, draws: usize) -> Result<DrawsReport> {
    if draws == 0 || draws > MAX_DRAWS {
        return Err(TrainError::Flag { flag: "--draws".into(), reason: format!("{draws}: expected 1 to {MAX_DRAWS}") });
    }
    if draws > 1 && opts.split != Split::Bearing {
        return Err(TrainError::Flag { flag: "--draws".into(), reason: "the time split has a single draw; several draws need --split bearing".into() });
    }
    if opts.seed.checked_add(draws as u64 - 1).is_none() {
        return Err(TrainError::Flag { flag: "--seed".into(), reason: format!("{} + {draws} draws passes the largest seed", opts.seed) });
    }
    // Every draw reads the same checkpoint: a `last` link that training re-points meanwhile must
    // not mix two models into one spread.
    let ckpt = std::fs::canonicalize(ckpt).map_err(|e| TrainError::Checkpoint { path: ckpt.to_path_buf(), reason: e.to_string() })?;
    // The draws are independent (each seconds of single-threaded probe fitting): in parallel, in
    // order.
    let running = draws.min(rayon::current_num_threads());
    let reports = (0..draws as u64).into_par_iter().map(|i| evaluate_alongside(&ckpt, ds, &EvalOptions { seed: opts.seed + i, ..opts.clone() }, running)).collect::<Result<Vec<_>>>()?;
    let margin = reports.iter().map(|r| ProbeScores {
        linear_probe_acc: r.pretrained.linear_probe_acc - r.random_init.linear_probe_acc.max(r.spectrum_baseline.linear_probe_acc),
        knn_acc: r.pretrained.knn_acc - r.random_init.knn_acc.max(r.spectrum_baseline.knn_acc),
    });
    Ok(DrawsReport {
        pretrained: ScoreSpread::of(reports.iter().map(|r| r.pretrained)),
        random_init: ScoreSpread::of(reports.iter().map(|r| r.random_init)),
        spectrum_baseline: ScoreSpread::of(reports.iter().map(|r| r.spectrum_baseline)),
        margin_over_best_baseline: ScoreSpread::of(margin.collect::<Vec<_>>().into_iter()),
        draws: reports,
    })
}

fn arch_string(a: &EncoderConfig) -> String {
    format!("{} (windows {} × {}, embedding {}, {} parameters)", a.kind(), a.window, a.channels, a.embed, a.param_count())
}

/// A cell of a bearing's name: a number as its value (`0.007`, `7e-3` and ` 0.0070` are one
/// size, `-0` is `0`), anything else as its trimmed text.
fn bearing_part(cell: Option<&str>) -> String {
    let text = cell.unwrap_or_default().trim();
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => format!("{}", v + 0.0),
        _ => text.to_string(),
    }
}

/// The held-out bearings, by name, with their Ids: per label with at least two bearings, about
/// 30 % of them (at least one), chosen by a seeded shuffle.
pub fn held_out_bearings(ds: &Dataset, seed: u64) -> BTreeMap<String, Vec<u64>> {
    let mut groups: BTreeMap<i64, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for &id in &ds.ids {
        if let Some(r) = ds.row(id) {
            let key = format!("{}|{}|{}", r.label, bearing_part(r.field("Fault_Size").as_deref()), bearing_part(r.field("Fault_Location").as_deref()));
            groups.entry(r.label).or_default().entry(key).or_default().push(id);
        }
    }
    let mut out = BTreeMap::new();
    for (label, bearings) in groups {
        if bearings.len() < 2 {
            continue;
        }
        let mut keys: Vec<&String> = bearings.keys().collect();
        signal::rng::Rng::new(signal::rng::mix_seed(&[seed, label as u64])).shuffle(&mut keys);
        let n = ((keys.len() as f64 * 0.3).round() as usize).clamp(1, keys.len() - 1);
        for k in &keys[..n] {
            out.insert((*k).clone(), bearings[*k].clone());
        }
    }
    out
}

/// Standardizes by the fit set, then scores a linear probe and k-NN.
pub fn probe(zf: &[f32], yf: &[usize], zt: &[f32], yt: &[usize], d: usize, classes: usize, k: usize) -> ProbeScores {
    probe_in_blocks(zf, yf, zt, yt, d, classes, k, KNN_BLOCK_ELEMENTS)
}

/// [`probe`], the k-NN's cross terms at most `block_elements` at a time.
#[allow(clippy::too_many_arguments)]
fn probe_in_blocks(zf: &[f32], yf: &[usize], zt: &[f32], yt: &[usize], d: usize, classes: usize, k: usize, block_elements: usize) -> ProbeScores {
    let nf = yf.len();
    let mut mean = vec![0.0f64; d];
    for r in zf.chunks(d) {
        for (m, &x) in mean.iter_mut().zip(r) {
            *m += x as f64 / nf as f64;
        }
    }
    let mut sd = vec![0.0f64; d];
    for r in zf.chunks(d) {
        for ((s, &x), m) in sd.iter_mut().zip(r).zip(&mean) {
            *s += (x as f64 - m).powi(2) / (nf.max(2) - 1) as f64;
        }
    }
    let std: Vec<f64> = sd.iter().map(|v| v.sqrt() + 1e-6).collect();
    let norm = |z: &[f32]| -> Vec<f64> { z.chunks(d).flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((&x, m), s)| (x as f64 - m) / s).collect::<Vec<_>>()).collect() };
    let (xf, xt) = (norm(zf), norm(zt));
    let (w, b) = fit_logistic(&xf, yf, d, classes);
    let predict = |x: &[f64]| -> usize { (0..classes).map(|c| (c, b[c] + dot(&w[c * d..(c + 1) * d], x))).max_by(|a, b| a.1.total_cmp(&b.1)).map_or(0, |(c, _)| c) };
    let lin = xt.chunks(d).zip(yt).filter(|(x, &y)| predict(x) == y).count() as f64 / yt.len() as f64;
    // The k-NN's squared distances as `‖t‖² + ‖f‖² − 2·t·f`, the cross term one product over
    // every core, a block of test windows at a time (its memory bounded). Features are
    // standardized, so the expansion loses nothing a ranking notices in f64.
    let (nt, nf) = (yt.len(), yf.len());
    let norms = |x: &[f64]| -> Vec<f64> { x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect() };
    let (norm_f, norm_t) = (norms(&xf), norms(&xt));
    let block = block_elements.div_ceil(nf.max(1)).clamp(1, nt.max(1));
    let mut cross = vec![0.0f64; block * nf];
    let mut hits = 0usize;
    for start in (0..nt).step_by(block) {
        let rows = block.min(nt - start);
        let cross = &mut cross[..rows * nf];
        product(cross, &xt[start * d..(start + rows) * d], &xf, rows, nf, d, false, true);
        hits += cross
            .par_chunks(nf)
            .enumerate()
            .filter(|&(i, row)| {
                let mut dist: Vec<(f64, usize)> = row.iter().zip(&norm_f).zip(yf).map(|((&tf, &ff), &c)| (norm_t[start + i] + ff - 2.0 * tf, c)).collect();
                let kk = k.min(dist.len()).max(1);
                dist.select_nth_unstable_by(kk - 1, |a, b| a.0.total_cmp(&b.0));
                let mut votes = vec![0usize; classes];
                for (_, c) in &dist[..kk] {
                    votes[*c] += 1;
                }
                let best = votes.iter().enumerate().max_by_key(|(c, v)| (**v, std::cmp::Reverse(*c))).map_or(0, |(c, _)| c);
                best == yt[start + i]
            })
            .count();
    }
    let knn = hits as f64 / nt as f64;
    ProbeScores { linear_probe_acc: lin, knn_acc: knn }
}

/// `Σ term(a, b)` over paired values in four interleaved sums (the probe's time is in these: one
/// chain of dependent adds would wait on each add's latency).
#[inline(always)]
fn sum4(a: &[f64], b: &[f64], term: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| term(x, y)).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..4 {
            acc[k] += term(x[k], y[k]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    sum4(a, b, |x, y| x * y)
}

/// Most cross-term entries the k-NN holds at once (64 MiB of f64).
const KNN_BLOCK_ELEMENTS: usize = 1 << 23;

/// `C = A · B` in f64 on faer, over the current pool's workers (the probe's two products
/// a step, and the k-NN's distances): row-major slices, `a` `m × k` (or its transpose where
/// `ta`: stored `k × m`), `b` `k × n` (or stored `n × k` where `tb`), `c` `m × n`.
///
/// C's longer side is cut into one part per worker, each a sequential faer product: faer's own
/// parallel product (`Par::rayon`) ran `evaluate --windows 128` ~8 % slower here, and its
/// instantiation added ~15 s to this crate's release build.
#[allow(clippy::too_many_arguments)]
fn product(c: &mut [f64], a: &[f64], b: &[f64], m: usize, n: usize, k: usize, ta: bool, tb: bool) {
    use rayon::prelude::*;
    let a = if ta { MatRef::from_row_major_slice(a, k, m).transpose() } else { MatRef::from_row_major_slice(a, m, k) };
    let b = if tb { MatRef::from_row_major_slice(b, n, k).transpose() } else { MatRef::from_row_major_slice(b, k, n) };
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    // Parts of at least `MIN_PART` rows or columns: a thinner one costs more in its fork than
    // it saves.
    const MIN_PART: usize = 16;
    let parts = rayon::current_num_threads().min(m.max(n) / MIN_PART).max(1);
    // Each worker clears its vector registers' upper halves after its part: faer's AVX-512
    // kernels leave them dirty, and libm's `exp` (the softmax after the product) then took
    // ~190 ns a call.
    let part = |c: MatMut<f64>, a: MatRef<f64>, b: MatRef<f64>| {
        matmul(c, Accum::Replace, a, b, 1.0, Par::Seq);
        engine::cpu::clear_upper_vector_state();
    };
    if parts == 1 {
        part(c, a, b);
    } else if m >= n {
        c.par_row_partition_mut(parts).zip(a.par_row_partition(parts)).for_each(|(c, a)| part(c, a, b));
    } else {
        c.par_col_partition_mut(parts).zip(b.par_col_partition(parts)).for_each(|(c, b)| part(c, a, b));
    }
}

/// Multinomial logistic regression with an L2 penalty `1e-3 · ‖W‖²` (as the PyTorch reference),
/// full-batch Adam, 500 iterations on standardized features (a convex problem; converged well
/// before that at these sizes). Each iteration is two products, `X·Wᵀ` for the logits and
/// `(P − Y)ᵀ·X` for the gradient, on every core (row by row in scalar sums it took seconds).
fn fit_logistic(x: &[f64], y: &[usize], d: usize, classes: usize) -> (Vec<f64>, Vec<f64>) {
    let n = y.len();
    let np = classes * d + classes;
    let mut p = vec![0.0f64; np];
    let (mut m, mut v) = (vec![0.0f64; np], vec![0.0f64; np]);
    let (lr, b1, b2, eps) = (0.05f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut g = vec![0.0f64; np];
    // Logits, then in place each row's softmax minus its one-hot label, over n.
    let mut residual = vec![0.0f64; n * classes];
    for t in 1..=500 {
        let (weights, bias) = p.split_at(classes * d);
        product(&mut residual, x, weights, n, classes, d, false, true);
        let (gw, gb) = g.split_at_mut(classes * d);
        gb.iter_mut().for_each(|v| *v = 0.0);
        for (row, &label) in residual.chunks_mut(classes).zip(y) {
            row.iter_mut().zip(bias).for_each(|(l, b)| *l += b);
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|l| (l - mx).exp()).sum();
            for (c, l) in row.iter_mut().enumerate() {
                *l = ((*l - mx).exp() / z - (c == label) as u8 as f64) / n as f64;
                gb[c] += *l;
            }
        }
        product(gw, &residual, x, classes, d, n, true, false);
        for (gj, pj) in gw.iter_mut().zip(weights) {
            *gj += 2e-3 * pj;
        }
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for j in 0..np {
            m[j] = b1 * m[j] + (1.0 - b1) * g[j];
            v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
            p[j] -= lr * (m[j] / bc1) / ((v[j] / bc2).sqrt() + eps);
        }
    }
    let b = p.split_off(classes * d);
    (p, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product is `A · B` for every layout of its operands, whole and cut into parts along
    /// C's rows or columns (a pool of three workers: parts of unequal size).
    #[test]
    fn the_product_in_parts_is_the_product() {
        let mut rng = signal::rng::Rng::new(5);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, n, k) in [(3, 7, 300), (100, 3, 9), (5, 70, 4), (50, 50, 1), (1, 1, 1)] {
            let a: Vec<f64> = (0..m * k).map(|_| rng.next_f64() - 0.5).collect();
            let b: Vec<f64> = (0..k * n).map(|_| rng.next_f64() - 0.5).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
                let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
                let mut c = vec![f64::NAN; m * n];
                pool.install(|| product(&mut c, &a, &b, m, n, k, ta, tb));
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                        assert!((c[i * n + j] - want).abs() < 1e-12, "{m}x{n}x{k} ta={ta} tb={tb}: C[{i},{j}] = {} against {want}", c[i * n + j]);
                    }
                }
            }
        }
    }

    /// The k-NN through products (blocks of test windows, norms expanded) votes as the direct
    /// distances do, for several k, with more test windows than one block; the logistic fit
    /// through products separates classes a line separates.
    #[test]
    fn the_probes_through_products_agree_with_direct_sums() {
        let mut rng = signal::rng::Rng::new(11);
        let mut rand = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect() };
        let (d, classes, nf, nt) = (7, 3, 300, 250);
        let (zf, zt) = (rand(nf * d), rand(nt * d));
        // Labels from the first coordinate's third: a line apart, with noise in the other six.
        let label = |z: &[f32]| -> Vec<usize> { z.chunks(d).map(|r| (((r[0] + 1.0) * 1.5) as usize).min(classes - 1)).collect() };
        let (yf, yt) = (label(&zf), label(&zt));
        // Whole, and in blocks of 40 test windows (the last one of 10).
        for (k, block) in [(1, KNN_BLOCK_ELEMENTS), (5, 40 * nf), (20, 40 * nf)] {
            let scores = probe_in_blocks(&zf, &yf, &zt, &yt, d, classes, k, block);
            // Direct: standardize as `probe` does, every distance summed on its own.
            let standardize = |z: &[f32]| -> Vec<Vec<f64>> {
                let mean: Vec<f64> = (0..d).map(|j| zf.chunks(d).map(|r| r[j] as f64).sum::<f64>() / nf as f64).collect();
                let sd: Vec<f64> = (0..d).map(|j| (zf.chunks(d).map(|r| (r[j] as f64 - mean[j]).powi(2)).sum::<f64>() / (nf - 1) as f64).sqrt() + 1e-6).collect();
                z.chunks(d).map(|r| (0..d).map(|j| (r[j] as f64 - mean[j]) / sd[j]).collect()).collect()
            };
            let (xf, xt) = (standardize(&zf), standardize(&zt));
            let hits = xt
                .iter()
                .zip(&yt)
                .filter(|(x, &y)| {
                    let mut dist: Vec<(f64, usize)> = xf.iter().zip(&yf).map(|(f, &c)| (f.iter().zip(x.iter()).map(|(a, b)| (a - b) * (a - b)).sum(), c)).collect();
                    dist.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let mut votes = vec![0usize; classes];
                    dist[..k].iter().for_each(|(_, c)| votes[*c] += 1);
                    votes.iter().enumerate().max_by_key(|(c, v)| (**v, std::cmp::Reverse(*c))).map(|(c, _)| c) == Some(y)
                })
                .count();
            assert_eq!(scores.knn_acc, hits as f64 / nt as f64, "k = {k}");
            assert!(scores.linear_probe_acc >= 0.9, "a line separates the classes (the L2 penalty blurs its edges): {scores:?}");
        }
    }

    #[test]
    fn class_names_sort_numbers_first_then_text() {
        // "97" < "105" as numbers, "105" < "12k_DE" < "97" as text: a mixed comparison is no order.
        let mut v: Vec<String> = ["97", "12k_DE", "105", "a", "2", "1e1", "10"].iter().map(|s| s.to_string()).collect();
        v.extend((0..40).map(|i| format!("x{i}")));
        sort_classes(&mut v);
        assert_eq!(&v[..7], ["2", "10", "1e1", "97", "105", "12k_DE", "a"]);
    }

    #[test]
    fn a_bearing_is_named_by_its_values_not_their_spelling() {
        assert_eq!(bearing_part(Some("0.007")), bearing_part(Some(" 7e-3 ")));
        assert_eq!(bearing_part(Some("-0.0")), bearing_part(Some("0")));
        assert_ne!(bearing_part(Some("0.007")), bearing_part(Some("0.014")));
        assert_eq!((bearing_part(Some(" Inner Race ")), bearing_part(None)), ("Inner Race".to_string(), String::new()));
    }

    #[test]
    fn a_spread_is_the_mean_sample_std_and_range() {
        let s = Spread::of(&[0.2, 0.4, 0.9]);
        assert!((s.mean - 0.5).abs() < 1e-12 && (s.std - 0.360_555_127_546_398_9).abs() < 1e-12, "{s:?}");
        assert_eq!((s.min, s.max), (0.2, 0.9));
        assert_eq!(Spread::of(&[0.3]), Spread { mean: 0.3, std: 0.0, min: 0.3, max: 0.3 }, "one draw has no spread");
    }
}
