//! The training configuration: YAML with PHM-Vibench's sections and keys (`data`, `model`,
//! `task`, `trainer`, `environment`), typed, validated before anything runs, overridable with
//! `section.key=value`.
//!
//! Each key is defined once: a field of its section's struct, with its doc and its default
//! beside it (`#[default(..)]`). Serde reads the sections (`deny_unknown_fields`), writes them
//! back (`to_yaml`, which loads again to the same `Config`), and lists the known keys for the
//! did-you-mean of an unknown one. No key changes another: where a default depends on another key
//! (the stride on the window, the early-stopping switch on `patience`, the mode on the monitor),
//! the field is optional and a method resolves it.
//!
//! Three kinds of key: the ones we use (below); the ones PHM-Vibench defines that we accept but
//! do not use ([`ACCEPTED_UNUSED`], each reported once by name); and unknown ones (an error naming
//! the key: a typo must not silently fall back to a default).

use std::path::{Path, PathBuf};

use engine::{Activation, Arch, CnnConfig, EncoderConfig, EncoderKind, InfoNceConfig, IsfmConfig, OptimizerConfig, OptimizerKind};
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};
use signal::{Normalization, PreprocessConfig, WindowConfig, WindowStrategy};
use smart_default::SmartDefault;

use crate::error::{Result, TrainError};

/// What a window is fed to the encoder as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// The samples themselves `[W, C]`.
    #[default]
    Time,
    /// `log(1 + |rFFT|)` of each mean-removed window per channel, bins 1…W/2: `[W/2, C]`.
    Spectrum,
    /// Each window per channel with its spectrum flattened (cepstral pre-whitening: every rFFT bin
    /// but DC scaled to magnitude 1, phases kept, back to time), `[W, C]`: what is left is the
    /// timing of the signal's events (a fault's impacts), not the coloring of the recording's path.
    Whitened,
    /// Each window per channel standardized over the window itself (`(x − mean) / (std + 1e-8)`),
    /// `[W, C]`: the recording's level is gone, its waveform kept.
    Standardized,
}

impl std::fmt::Display for InputKind {
    /// The name a config gives it (`data.input: spectrum`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputKind::Time => "time",
            InputKind::Spectrum => "spectrum",
            InputKind::Whitened => "whitened",
            InputKind::Standardized => "standardized",
        })
    }
}

/// `data` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Samples per window W (default 1024).
    #[default(1024)]
    #[serde(with = "whole")]
    pub window_size: usize,
    /// Step between sequential windows (default: the window size).
    #[serde(with = "opt_whole")]
    pub stride: Option<usize>,
    /// Windows per Id (default 2; a contrastive pair uses 2).
    #[default(2)]
    #[serde(with = "whole")]
    pub num_window: usize,
    /// random (default), sequential or evenly_spaced.
    #[serde(with = "text")]
    pub window_sampling_strategy: WindowStrategy,
    /// `true`/`standardization` (default), `minmax`, `false`/`none`.
    #[default(Normalization::Standardization)]
    #[serde(with = "normalization")]
    pub normalization: Normalization,
    /// Keep the first N samples of each signal (default: all).
    #[serde(with = "opt_whole")]
    pub truncate_length: Option<usize>,
    /// `time` (default), `spectrum`, `whitened` or `standardized`: what the encoder sees of a window.
    pub input: InputKind,
    /// Training augmentation, each view on its own: scale by a factor uniform in `[1 − g, 1 + g]`
    /// (default 0: off).
    #[serde(with = "real")]
    pub augment_gain: f64,
    /// Training augmentation: a circular shift by up to this fraction of the window, either way
    /// (default 0: off).
    #[serde(with = "real")]
    pub augment_shift: f64,
    /// Training augmentation: Gaussian noise of this many standard deviations of the window's
    /// channel (default 0: off).
    #[serde(with = "real")]
    pub augment_noise: f64,
    /// Training augmentation: zeroes a contiguous span of up to this fraction of the window
    /// (default 0: off).
    #[serde(with = "real")]
    pub augment_mask: f64,
    /// Training augmentation: plays each view up to this fraction slower (its first `W / (1 + s)`
    /// samples, `s` uniform in `[0, stretch]`, stretched over the window by linear
    /// interpolation: every frequency falls by `1 + s`), so that the two views of a recording
    /// differ in shaft speed as two recordings at different loads do (CWRU's 0–3 HP: 1797 to 1730
    /// rpm, 4 %) (default 0: off).
    #[serde(with = "real")]
    pub augment_stretch: f64,
    /// Ids per batch (default 32).
    #[default(32)]
    #[serde(with = "whole")]
    pub batch_size: usize,
    /// Threads of the run — batch assembly and compute share one pool of this size (default 2;
    /// 0 = all cores).
    #[default(2)]
    #[serde(with = "whole")]
    pub num_workers: usize,
    /// Batches prepared ahead (default 4).
    #[default(4)]
    #[serde(with = "whole")]
    pub prefetch: usize,
    /// Fraction of Ids held out for validation (default 0.2; 0 = no validation).
    #[default(0.2)]
    #[serde(with = "real")]
    pub val_fraction: f64,
    /// Training windows come from the first `time_split` of each signal (default 1.0: all of it).
    /// The evaluation's `--split time` fits on the first 70 %: train with 0.7 to keep the test
    /// region's windows out of training. (Each signal's normalization statistics still cover all
    /// of it, as PHM-Vibench's do, in training and in evaluation alike.)
    #[default(1.0)]
    #[serde(with = "real")]
    pub time_split: f64,
}

/// `model` section: the encoder, and PHM-Vibench's ISFM keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Encoder: mlp-simple, mlp-medium (default), mlp-complex, cnn, isfm (or PHM-Vibench's
    /// `M_01_ISFM`).
    #[default(EncoderKind::MlpMedium)]
    #[serde(with = "text")]
    pub name: EncoderKind,
    /// Embedding size D, the encoder's output (default 128).
    #[default(128)]
    #[serde(with = "whole")]
    pub embedding_dim: usize,
    /// The ISFM's backbone: only `B_08_PatchTST` (default).
    #[default("B_08_PatchTST".to_string())]
    pub backbone: String,
    /// The ISFM's embedding: only `E_01_HSE` (default).
    #[default("E_01_HSE".to_string())]
    pub embedding: String,
    /// A projection head `Linear(D, D) → ReLU → Linear(D, P)` to P dimensions that InfoNCE is
    /// taken on during pretraining and that is discarded after it (default none: InfoNCE on the
    /// embedding itself).
    #[serde(with = "opt_whole")]
    pub projection_dim: Option<usize>,
    /// The head after pooling: only the linear projection to D, `H_01_Linear_cla` (default).
    #[default("H_01_Linear_cla".to_string())]
    pub task_head: String,
    /// ISFM: patches per window (default 32).
    #[default(32)]
    #[serde(with = "whole")]
    pub num_patches: usize,
    /// ISFM: time steps per patch (default 64).
    #[default(64)]
    #[serde(rename = "patch_size_L", with = "whole")]
    pub patch_size_l: usize,
    /// ISFM: channels per patch (default 1).
    #[default(1)]
    #[serde(rename = "patch_size_C", with = "whole")]
    pub patch_size_c: usize,
    /// ISFM: Transformer width (default 256; `output_dim` replaces it where given).
    #[default(256)]
    #[serde(with = "whole")]
    pub d_model: usize,
    /// ISFM: the Transformer width, where given (PHM-Vibench's name; default: `d_model`).
    #[serde(with = "opt_whole")]
    pub output_dim: Option<usize>,
    /// ISFM: attention heads, dividing the width (default 4).
    #[default(4)]
    #[serde(with = "whole")]
    pub num_heads: usize,
    /// ISFM: Transformer layers (default 2; `num_layers` is the same key, read here).
    #[default(2)]
    #[serde(with = "whole")]
    pub e_layers: usize,
    /// ISFM: feed-forward width (default: twice the Transformer width).
    #[serde(with = "opt_whole")]
    pub d_ff: Option<usize>,
    /// ISFM: dropout on attention weights and sub-layer outputs (default 0.1).
    #[default(0.1)]
    #[serde(with = "real")]
    pub dropout: f64,
    /// ISFM: feed-forward activation, gelu (default) or relu.
    #[default(Activation::Gelu)]
    #[serde(with = "text")]
    pub activation: Activation,
}

/// `task` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSection {
    /// Learning rate (default 1e-3).
    #[default(1e-3)]
    #[serde(with = "real")]
    pub lr: f32,
    /// Adam: L2 term; AdamW: decoupled decay (default 0).
    #[serde(with = "real")]
    pub weight_decay: f32,
    /// InfoNCE temperature τ > 0 (default 0.07).
    #[default(0.07)]
    #[serde(with = "real")]
    pub temperature: f32,
    /// adam (default) or adamw.
    #[default(OptimizerKind::Adam)]
    #[serde(with = "text")]
    pub optimizer: OptimizerKind,
    /// Symmetric InfoNCE (default false).
    #[serde(with = "boolean")]
    pub symmetric: bool,
}

/// What early stopping and top-k checkpoints watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Monitor {
    #[serde(rename = "val_contrastive_loss", alias = "val_loss")]
    ValLoss,
    #[serde(rename = "val_contrastive_acc", alias = "val_acc")]
    ValAcc,
    #[serde(rename = "train_contrastive_loss", alias = "train_loss")]
    TrainLoss,
}

impl Monitor {
    pub fn name(&self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_contrastive_loss",
            Monitor::ValAcc => "val_contrastive_acc",
            Monitor::TrainLoss => "train_contrastive_loss",
        }
    }

    /// The natural direction of the metric.
    pub fn default_mode(&self) -> Mode {
        if *self == Monitor::ValAcc {
            Mode::Max
        } else {
            Mode::Min
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheduler {
    #[serde(rename = "none", alias = "constant", alias = "null", alias = "false")]
    Constant,
    #[serde(rename = "cosine", alias = "CosineAnnealingLR", alias = "cosineannealinglr")]
    Cosine,
}

/// `trainer.precision`: 32, 16 (fp16 products with dynamic loss scaling) or bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "32",
            Precision::F16 => "16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// `trainer` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerSection {
    /// Epochs (default 10; `max_epochs` is the same key).
    #[default(10)]
    #[serde(alias = "max_epochs", with = "whole")]
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epoch (default none).
    #[serde(with = "opt_whole")]
    pub max_steps: Option<u64>,
    /// cpu (default), gpu or cuda (the CUDA device), auto (the GPU where one is present).
    #[default(Accelerator::Cpu)]
    pub accelerator: Accelerator,
    /// `1`, or `[N]` for GPU N (PyTorch Lightning's forms; default 1, GPU 0).
    #[serde(with = "devices")]
    pub devices: Devices,
    /// 32 (default), bf16 (`bf16-mixed` too: every product's operands in bf16, fp32
    /// accumulation, loss and normalisations; the CPU device only) or 16 (`16-mixed`: operands in
    /// fp16 with dynamic loss scaling, on CPUs with AVX512-FP16; elsewhere refused with a pointer
    /// to bf16).
    #[default(Precision::F32)]
    #[serde(with = "precision")]
    pub precision: Precision,
    /// Clip the global gradient norm (default none; 0 = none).
    #[serde(with = "opt_real")]
    pub gradient_clip_val: Option<f32>,
    /// Micro-batches per optimizer step (default 1).
    #[default(1)]
    #[serde(with = "whole")]
    pub accumulate_grad_batches: usize,
    /// Early stopping on the monitor (default: on exactly when `patience` is given).
    #[serde(with = "opt_boolean", alias = "early_stopping")]
    pub enable_early_stopping: Option<bool>,
    /// Validation checks without improvement before stopping (default 10).
    #[serde(with = "opt_whole")]
    pub patience: Option<usize>,
    /// What early stopping and top-k watch (default val_contrastive_loss).
    #[default(Monitor::ValLoss)]
    pub monitor: Monitor,
    /// min or max (default: the monitor's natural direction).
    pub mode: Option<Mode>,
    /// Smallest change that counts as an improvement (default 0).
    #[serde(with = "real")]
    pub min_delta: f64,
    /// cosine or none (default none).
    #[default(Scheduler::Constant)]
    #[serde(with = "scheduler")]
    pub lr_scheduler: Scheduler,
    /// Linear warm-up steps before the schedule (default 0).
    #[serde(with = "whole")]
    pub warmup_steps: u64,
    /// Best checkpoints kept by the monitor (default 1; 0 = none).
    #[default(1)]
    #[serde(with = "whole")]
    pub save_top_k: usize,
    /// Keep a `last` checkpoint (default true).
    #[default(true)]
    #[serde(with = "boolean")]
    pub save_last: bool,
    /// Checkpoints hold the weights only, no optimizer state (default false; such a checkpoint
    /// evaluates but cannot be resumed).
    #[serde(with = "boolean")]
    pub save_weights_only: bool,
    /// Validate (and checkpoint) every N epochs (default 1).
    #[default(1)]
    #[serde(with = "whole")]
    pub check_val_every_n_epoch: usize,
    /// Write a metrics line every N steps (default 10).
    #[default(10)]
    #[serde(with = "whole")]
    pub log_every_n_steps: u64,
    /// Draw a progress bar on a terminal (default true).
    #[default(true)]
    #[serde(with = "boolean")]
    pub enable_progress_bar: bool,
    /// Seed of initialization, shuffles, windows, dropout, patches and the Id split (default 42;
    /// `environment.seed` is the same key).
    #[default(42)]
    #[serde(with = "whole")]
    pub seed: u64,
}

/// Which device trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Cpu,
    #[serde(alias = "cuda")]
    Gpu,
    Auto,
}

/// `devices`: how many, and which GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Devices {
    /// More than one is refused (one device trains).
    pub count: usize,
    pub index: usize,
}

/// `environment` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct EnvironmentSection {
    /// Where runs are written (default `save/`).
    #[default(PathBuf::from("save"))]
    pub save_dir: PathBuf,
    /// Run name (default `contrastive_id`); a number written unquoted (`2024`) is that name.
    #[default("contrastive_id".to_string())]
    #[serde(with = "text")]
    pub experiment_name: String,
}

/// The whole configuration. Two configurations are equal when their sections are (the notes on
/// how one was written are not part of it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: DataSection,
    pub model: ModelSection,
    pub task: TaskSection,
    pub trainer: TrainerSection,
    pub environment: EnvironmentSection,
    /// Keys present that are accepted but not used, `section.key` with why (not part of YAML).
    #[serde(skip)]
    pub unused_keys: Vec<String>,
}

impl PartialEq for Config {
    fn eq(&self, o: &Self) -> bool {
        (&self.data, &self.model, &self.task, &self.trainer, &self.environment) == (&o.data, &o.model, &o.task, &o.trainer, &o.environment)
    }
}

/// Keys PHM-Vibench's configs carry that this trainer accepts and does not use, with why.
pub const ACCEPTED_UNUSED: &[(&str, &str)] = &[
    ("data.factory_name", "the data source is --data/--meta"),
    ("data.dataset_name", "the data source is --data/--meta"),
    ("data.data_dir", "the data source is --data/--meta"),
    ("data.metadata_file", "the data source is --data/--meta"),
    ("model.type", "model.name selects the encoder"),
    ("task.type", "the task is ContrastiveID pretraining"),
    ("task.name", "the task is ContrastiveID pretraining"),
    ("trainer.lr_scheduler_patience", "ReduceLROnPlateau is not implemented (lr_scheduler: cosine or none)"),
    ("trainer.lr_reduce_factor", "ReduceLROnPlateau is not implemented (lr_scheduler: cosine or none)"),
    ("environment.enable_memory_profiling", "memory is measured by `bench`"),
    ("environment.enable_performance_profiling", "performance is measured by `bench`"),
    ("environment.project", "no experiment tracker"),
    ("environment.wandb", "no experiment tracker"),
];

/// Keys under another name: `environment.seed` is `trainer.seed`, `model.num_layers` (PHM-Vibench's
/// other name for it) is `model.e_layers`.
const MOVED: &[(&str, &str)] = &[("environment.seed", "trainer.seed"), ("model.num_layers", "model.e_layers")];

/// The ISFM's keys (reported as unused with another encoder).
const ISFM_KEYS: &[&str] = &["num_patches", "patch_size_L", "patch_size_C", "d_model", "output_dim", "num_heads", "e_layers", "num_layers", "d_ff", "dropout", "activation"];

/// Whether a config's YAML holds `section.key` (or the section, for a key without a dot).
fn holds_key(root: &Value, key: &str) -> bool {
    key.split('.').try_fold(root, |at, part| at.get(part)).is_some()
}

impl Config {
    /// Reads a YAML file, applies `overrides` (`section.key=value`), validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = files::read_to_string(path).map_err(|e| TrainError::Io { path: path.to_path_buf(), source: e })?;
        let in_file = |e: TrainError| match e {
            TrainError::Yaml(reason) => TrainError::Yaml(format!("{}: {reason}", path.display())),
            other => other,
        };
        let root = parse_root(&text).map_err(in_file)?;
        // An empty file is not a config of defaults: more likely the wrong file, or one cut short.
        if root.is_null() {
            return Err(in_file(TrainError::Yaml("holds no settings (empty, or only comments)".into())));
        }
        // A key at fault is named with where it was set: a typo in the file and the same typo
        // in an `--override` read alike otherwise. The last override of the key (the one that
        // took effect), else the file where it holds the key; a default is named by neither.
        let in_file_root = root.clone();
        let placed = |e: TrainError| match e {
            TrainError::Config { key, reason } => {
                // A moved key's error names it as written, then where it was read.
                let written = key.split(" (read as ").next().unwrap_or(&key);
                let key_of = |o: &String| o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim().to_string();
                let set_by = |o: &&String| {
                    let k = key_of(o);
                    k == written || written.starts_with(&format!("{k}."))
                };
                // A section the file lacks that an override made (`bogus.key=1` names `bogus`).
                let made_by = |o: &&String| key_of(o).starts_with(&format!("{written}."));
                let reason = match overrides.iter().rev().find(set_by) {
                    Some(o) => format!("{reason} (from --override {o})"),
                    None if holds_key(&in_file_root, written) => format!("{reason} (in {})", path.display()),
                    None => match overrides.iter().rev().find(made_by) {
                        Some(o) => format!("{reason} (from --override {o})"),
                        None => reason,
                    },
                };
                TrainError::Config { key, reason }
            }
            other => in_file(other),
        };
        Self::from_root(root, overrides).map_err(placed)
    }

    /// A config from YAML text (empty text: every default), `overrides` applied, validated.
    pub fn from_yaml(text: &str, overrides: &[String]) -> Result<Self> {
        Self::from_root(parse_root(text)?, overrides)
    }

    fn from_root(mut root: Value, overrides: &[String]) -> Result<Self> {
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        for o in overrides {
            apply_override(&mut root, o)?;
        }
        // A YAML tag (`!fp 16`, `!gpu cpu`, `!x data:`) would be read by some keys and dropped
        // by others: none is read, and the first is named.
        if let Some((at, tag)) = first_tag(&root, "") {
            return Err(TrainError::Config { key: at, reason: format!("carries the YAML tag {tag}; a config reads no tags (write the plain value)") });
        }
        let Value::Mapping(sections) = &mut root else { return Err(not_sections()) };
        // Accepted-but-unused keys out, moved keys to their place, before serde sees the rest.
        let mut notes = Vec::new();
        for (key, why) in ACCEPTED_UNUSED {
            if take(sections, key).is_some() {
                notes.push(format!("{key} ({why})"));
            }
        }
        // (Of the keys it reads: what it accepts unread may be keyed as its authors liked.)
        if let Some((at, reason)) = first_unreadable_key(&Value::Mapping(sections.clone()), "") {
            return Err(TrainError::Config { key: at, reason });
        }
        // The isfm's keys with another encoder, named as written (before `num_layers` moves).
        let name_is_isfm = sections.get("model").and_then(|m| m.get("name")).and_then(scalar_text).and_then(|n| n.parse::<EncoderKind>().ok()) == Some(EncoderKind::Isfm);
        if !name_is_isfm {
            if let Some(Value::Mapping(m)) = sections.get("model") {
                for k in ISFM_KEYS.iter().filter(|k| m.contains_key(**k)) {
                    notes.push(format!("model.{k} (the isfm's key; model.name is not isfm)"));
                }
            }
        }
        // `output_dim` sets the width where given (PHM-Vibench's configs may carry both): a
        // `d_model` beside it of another value is said to be unused, not dropped without a word.
        if let Some(Value::Mapping(m)) = sections.get("model").filter(|_| name_is_isfm) {
            let number = |k: &str| m.get(k).and_then(scalar_text).and_then(|t| t.trim().parse::<f64>().ok().map(|v| (t.trim().to_string(), v)));
            if let (Some((d, dv)), Some((o, ov))) = (number("d_model"), number("output_dim")) {
                if dv != ov {
                    notes.push(format!("model.d_model ({}: model.output_dim = {} sets the width)", d.trim(), o.trim()));
                }
            }
        }
        // A moved key given in both places with two values is a question only the user can
        // answer; given in its old place only, an error about it names the key as written.
        let mut moved = Vec::new();
        for (from, to) in MOVED {
            if let Some(v) = take(sections, from) {
                let (s, k) = to.split_once('.').unwrap_or((to, ""));
                // `3`, `3.0` and `"3"` are one value.
                let number = |x: &Value| scalar_text(x).and_then(|t| t.trim().parse::<f64>().ok());
                let differs = |there: &Value| *there != v && (number(there).is_none() || number(there) != number(&v));
                if let Some(there) = sections.get(s).and_then(|m| m.get(k)).filter(|there| differs(there)) {
                    return Err(TrainError::Config {
                        key: (*from).into(),
                        reason: format!("is {}, while {to} is {}: give one", scalar_text(&v).unwrap_or_default(), scalar_text(there).unwrap_or_default()),
                    });
                }
                put(sections, to, v);
                moved.push((*from, *to));
            }
        }
        let named_as_written = |e: TrainError| match e {
            TrainError::Config { key, reason } => match moved.iter().find(|(_, to)| *to == key) {
                Some((from, to)) => TrainError::Config { key: format!("{from} (read as {to})"), reason },
                None => TrainError::Config { key, reason },
            },
            other => other,
        };
        let mut cfg: Config = serde_path_to_error::deserialize(root.clone()).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // Something other than a name where a name is expected (see names_expected_at).
            let message = if message.contains("Value::Tagged enum") || message.starts_with("unknown variant `null`") { names_expected_at(&root, &path).unwrap_or(message) } else { message };
            named_as_written(de_error(&path, &message))
        })?;
        cfg.unused_keys = notes;
        cfg.validate().map_err(named_as_written)?;
        Ok(cfg)
    }

    /// Checks values against their ranges and each other; names the key at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(TrainError::Config { key: key.into(), reason });
        let (d, m, t) = (&self.data, &self.model, &self.trainer);
        let positive = [
            ("data.window_size", d.window_size),
            ("data.num_window", d.num_window),
            ("data.batch_size", d.batch_size),
            ("data.prefetch", d.prefetch),
            ("model.embedding_dim", m.embedding_dim),
            ("trainer.epochs", t.epochs),
            ("trainer.accumulate_grad_batches", t.accumulate_grad_batches),
            ("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch),
            ("trainer.log_every_n_steps", t.log_every_n_steps as usize),
        ];
        for (key, v) in positive {
            if v == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        for (key, v) in [("data.stride", d.stride), ("data.truncate_length", d.truncate_length), ("trainer.patience", t.patience), ("model.projection_dim", m.projection_dim)] {
            if v == Some(0) {
                return bad(key, "must be > 0".into());
            }
        }
        if t.max_steps == Some(0) {
            return bad("trainer.max_steps", "must be > 0".into());
        }
        // A window of one sample has no waveform: standardized it is 0, and it has no spectrum (for
        // that input, and for evaluate's spectrum baseline).
        if d.window_size == 1 {
            return bad("data.window_size", "must be at least 2: a window of one sample has no waveform and no spectrum".into());
        }
        // One pair has no negatives: InfoNCE's loss and gradient are exactly 0, nothing trains.
        if d.batch_size == 1 {
            return bad("data.batch_size", "must be at least 2: InfoNCE contrasts each pair with the other pairs of its batch".into());
        }
        // Upper bounds where a number sizes something: beyond them no run makes sense, and the
        // memory they would take is checked against the budget when the run is built.
        let caps = [
            ("data.prefetch", d.prefetch, signal::sampler::MAX_PREFETCH),
            ("data.batch_size", d.batch_size, engine::encoders::MAX_ROWS / 2),
            ("data.window_size", d.window_size, engine::encoders::MAX_ROWS),
            ("data.num_window", d.num_window, 1 << 20),
            ("model.embedding_dim", m.embedding_dim, engine::encoders::MAX_WIDTH),
            ("model.projection_dim", m.projection_dim.unwrap_or(1), engine::encoders::MAX_WIDTH),
            ("model.patch_size_C", m.patch_size_c, engine::encoders::MAX_WIDTH),
            ("trainer.save_top_k", t.save_top_k, 1 << 16),
            ("trainer.accumulate_grad_batches", t.accumulate_grad_batches, 1 << 20),
        ];
        for (key, v, max) in caps {
            if v > max {
                return bad(key, format!("{v} is more than {max}"));
            }
        }
        // Each window is standardized after its augmentations: a gain would be undone.
        if d.input == InputKind::Standardized && d.augment_gain > 0.0 {
            return bad("data.augment_gain", "does nothing with data.input: standardized (each window is standardized after the gain, which undoes it); leave it at 0".into());
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            return bad("data.val_fraction", format!("must be in [0, 1), got {}", d.val_fraction));
        }
        for (key, v, hi) in [
            ("data.augment_gain", d.augment_gain, 1.0),
            ("data.augment_shift", d.augment_shift, 1.0),
            ("data.augment_noise", d.augment_noise, 100.0),
            ("data.augment_mask", d.augment_mask, 1.0),
            ("data.augment_stretch", d.augment_stretch, 1.0),
        ] {
            if !(0.0..=hi).contains(&v) {
                return bad(key, format!("must be in [0, {hi}], got {v}"));
            }
        }
        // The run's directory is `save_dir/experiment_name`: a name that climbs out of save_dir
        // (`../x`) or replaces it (`/x`) would write elsewhere; a part longer than a file name
        // can be fails at the first write, after the data has been read.
        let name = &self.environment.experiment_name;
        let parts: Vec<_> = std::path::Path::new(name).components().collect();
        if name.len() > 4096 || parts.iter().any(|c| c.as_os_str().len() > 255) {
            let shown: String = name.chars().take(40).collect();
            return bad("environment.experiment_name", format!("{shown:?}… is {} bytes long; a run's name is a directory name (255 bytes a part at most)", name.len()));
        }
        if parts.is_empty() || name.trim() != name || !parts.iter().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return bad("environment.experiment_name", format!("{name:?} is not a directory name inside environment.save_dir (no `..`, no leading `/`, no space at either end, not empty)"));
        }
        // A hidden run directory is one `ls` does not show: most likely YAML's reading of an
        // unquoted `.nan` or `.inf` as a number, turned back into text.
        if parts.iter().any(|c| c.as_os_str().to_string_lossy().starts_with('.')) {
            return bad("environment.experiment_name", format!("{name:?} would be a hidden directory (a part starts with `.`); YAML reads an unquoted .nan or .inf as a number: quote the name"));
        }
        if !(d.time_split > 0.0 && d.time_split <= 1.0) {
            return bad("data.time_split", format!("must be in (0, 1], got {}", d.time_split));
        }
        if !(t.min_delta >= 0.0 && t.min_delta.is_finite()) {
            return bad("trainer.min_delta", format!("must be a finite number >= 0, got {}", t.min_delta));
        }
        if t.devices.count != 1 {
            return bad("trainer.devices", format!("{} devices asked for; one device trains", t.devices.count));
        }
        for (key, value, supported) in [("model.backbone", &m.backbone, "B_08_PatchTST"), ("model.embedding", &m.embedding, "E_01_HSE"), ("model.task_head", &m.task_head, "H_01_Linear_cla")] {
            if value != supported {
                return bad(key, format!("{value:?} is not supported; supported: {supported}"));
            }
        }
        // (Whether this CPU runs fp16 is asked when training starts, not here: a config, and a
        // checkpoint's, must load on any machine, to evaluate a model trained elsewhere.)
        if t.precision != Precision::F32 && t.accelerator == Accelerator::Gpu {
            return bad(
                "trainer.precision",
                format!(
                    "{} runs on the CPU device only (the CUDA device computes in fp32); set trainer.accelerator: cpu (with bf16, or 16 on a CPU with AVX512-FP16), or precision 32",
                    t.precision.name()
                ),
            );
        }
        self.loss().validate().map_err(engine_error)?;
        self.optimizer().validate().map_err(engine_error)?;
        self.window().validate().map_err(TrainError::from)?;
        // The encoder's own checks (an ISFM patch longer than the window, heads not dividing the
        // width, a window too short for the CNN), on one channel: the data's count is checked
        // when the data is opened.
        self.encoder(self.model.patch_size_c.max(1)).validate().map_err(|e| self.encoder_error(e))?;
        Ok(())
    }

    /// Whether training runs on the CUDA device (`auto`: where one is present, unless the
    /// precision is bf16 or 16, which only the CPU device runs).
    pub fn on_gpu(&self) -> bool {
        match self.trainer.accelerator {
            Accelerator::Cpu => false,
            Accelerator::Gpu => true,
            Accelerator::Auto => self.trainer.precision == Precision::F32 && engine::CudaDevice::probe(self.trainer.devices.index).is_ok(),
        }
    }

    /// The step between sequential windows.
    pub fn stride(&self) -> usize {
        self.data.stride.unwrap_or(self.data.window_size)
    }

    /// Whether early stopping is on, and its patience.
    pub fn early_stopping(&self) -> Option<usize> {
        let t = &self.trainer;
        t.enable_early_stopping.unwrap_or(t.patience.is_some()).then(|| t.patience.unwrap_or(10))
    }

    /// The monitor's direction.
    pub fn mode(&self) -> Mode {
        self.trainer.mode.unwrap_or(self.trainer.monitor.default_mode())
    }

    pub fn window(&self) -> WindowConfig {
        WindowConfig { window_size: self.data.window_size, stride: self.stride(), num_window: self.data.num_window, strategy: self.data.window_sampling_strategy }
    }

    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig { normalization: self.data.normalization, truncate_length: self.data.truncate_length }
    }

    /// The engine precision of `trainer.precision`.
    pub fn precision(&self) -> engine::Precision {
        match self.trainer.precision {
            Precision::Bf16 => engine::Precision::Bf16,
            Precision::F16 => engine::Precision::Fp16,
            Precision::F32 => engine::Precision::Fp32,
        }
    }

    pub fn loss(&self) -> InfoNceConfig {
        InfoNceConfig { temperature: self.task.temperature, symmetric: self.task.symmetric }
    }

    pub fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig { kind: self.task.optimizer, lr: self.task.lr, weight_decay: self.task.weight_decay, clip_norm: self.trainer.gradient_clip_val, ..OptimizerConfig::default() }
    }

    /// Samples per window the encoder sees (the spectrum has W/2 bins).
    pub fn encoder_window(&self) -> usize {
        match self.data.input {
            InputKind::Time | InputKind::Whitened | InputKind::Standardized => self.data.window_size,
            InputKind::Spectrum => self.data.window_size / 2,
        }
    }

    /// An error of [`Config::encoder`]'s validation, named by its key. With `data.input:
    /// spectrum` the encoder sees the spectrum's bins, not the window's samples: where the
    /// numbers in a `data.window_size` message are bins, it says so.
    pub fn encoder_error(&self, e: engine::EngineError) -> TrainError {
        match engine_error(e) {
            TrainError::Config { key, reason } if key == "data.window_size" && self.data.input == InputKind::Spectrum => TrainError::Config {
                key,
                reason: format!("{reason} (with data.input: spectrum the encoder sees the {} frequency bins of a window of {} samples)", self.encoder_window(), self.data.window_size),
            },
            // The width came from `output_dim` where it is given.
            TrainError::Config { key, reason } if key == "model.d_model" && self.model.output_dim.is_some() => TrainError::Config { key: "model.output_dim".into(), reason },
            TrainError::Config { key, reason } if self.model.output_dim.is_some() => TrainError::Config { key, reason: reason.replace("d_model = ", "the width (model.output_dim) = ") },
            other => other,
        }
    }

    /// The encoder for data of `channels` channels.
    pub fn encoder(&self, channels: usize) -> EncoderConfig {
        let m = &self.model;
        let arch = match m.name {
            EncoderKind::Cnn => Arch::Cnn(CnnConfig::default()),
            EncoderKind::Isfm => {
                let d = m.output_dim.unwrap_or(m.d_model);
                Arch::Isfm(IsfmConfig {
                    num_patches: m.num_patches,
                    patch_size_l: m.patch_size_l,
                    patch_size_c: m.patch_size_c,
                    d_model: d,
                    num_heads: m.num_heads,
                    e_layers: m.e_layers,
                    d_ff: m.d_ff.unwrap_or(2 * d),
                    dropout: m.dropout as f32,
                    activation: m.activation,
                })
            }
            kind => Arch::default_for(kind),
        };
        EncoderConfig { arch, window: self.encoder_window(), channels, embed: m.embedding_dim }
    }

    /// The resolved configuration as YAML (every key, defaults included), for checkpoints and
    /// run directories. Loading it back gives the same `Config`.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }
}

/// The YAML key of an engine setting.
pub fn setting_key(s: engine::Setting) -> &'static str {
    use engine::Setting::*;
    match s {
        Window => "data.window_size",
        Channels => "data (the store's channel count)",
        Embedding => "model.embedding_dim",
        Projection => "model.projection_dim",
        Batch => "data.batch_size",
        Encoder => "model.name",
        Temperature => "task.temperature",
        LearningRate => "task.lr",
        WeightDecay => "task.weight_decay",
        // Not keys: Adam's betas and eps are PyTorch's defaults, fixed.
        Betas => "Adam's betas (fixed at 0.9, 0.999)",
        Eps => "Adam's eps (fixed at 1e-8)",
        ClipNorm => "trainer.gradient_clip_val",
        NumPatches => "model.num_patches",
        PatchLen => "model.patch_size_L",
        PatchChannels => "model.patch_size_C",
        DModel => "model.d_model",
        Heads => "model.num_heads",
        Layers => "model.e_layers",
        FeedForward => "model.d_ff",
        Dropout => "model.dropout",
        Activation => "model.activation",
    }
}

/// The YAML key of a data-pipeline setting.
pub fn signal_setting_key(s: signal::Setting) -> &'static str {
    use signal::Setting::*;
    match s {
        WindowSize => "data.window_size",
        Stride => "data.stride",
        NumWindow => "data.num_window",
        WindowStrategy => "data.window_sampling_strategy",
        Normalization => "data.normalization",
        TruncateLength => "data.truncate_length",
        TimeSplit => "data.time_split",
        BatchSize => "data.batch_size",
        Prefetch => "data.prefetch",
        Count | Length | Channels | Classes | Complexity | Noise => "data (a generator setting)",
    }
}

/// An engine error, a setting's named by its YAML key.
pub fn engine_error(e: engine::EngineError) -> TrainError {
    match e {
        engine::EngineError::Invalid { setting, reason } => TrainError::Config { key: setting_key(setting).into(), reason },
        other => TrainError::Engine(other),
    }
}

/// A serde error at `path` as a config error naming the key, with a did-you-mean for an
/// unknown key (against every key of the default config).
fn de_error(path: &str, message: &str) -> TrainError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        // serde_path_to_error's path already ends at the unknown key.
        let key = if path.is_empty() || path == "." {
            field.to_string()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        };
        let hint = known_keys().into_iter().min_by_key(|c| edit_distance(c, &key)).filter(|c| edit_distance(c, &key) <= 3);
        let reason = match hint {
            Some(h) => format!("unknown key; did you mean `{h}`?"),
            None => "unknown key".into(),
        };
        return TrainError::Config { key, reason };
    }
    TrainError::Config { key: path.to_string(), reason: message.to_string() }
}

/// For a field that takes one of a set of names, what was given there and the names: serde
/// says only "expected a Value::Tagged enum" for a number, list or mapping, and "unknown variant
/// `null`" for an empty value. Asked again with a string in the slot, it lists the names.
fn names_expected_at(root: &Value, path: &str) -> Option<String> {
    let (section, key) = path.split_once('.')?;
    let given = root.get(section)?.get(key)?;
    let mut probe = root.clone();
    *probe.get_mut(section)?.get_mut(key)? = Value::String(scalar_text(given).unwrap_or_default());
    let names = match serde_path_to_error::deserialize::<_, Config>(probe) {
        Err(e) if e.path().to_string() == path => e.into_inner().to_string(),
        _ => return None,
    };
    let expected = names.split_once("expected ").map_or(names.as_str(), |(_, names)| names);
    Some(match given {
        Value::Null => format!("no value given; expected {expected}"),
        Value::Sequence(_) => format!("a list where one name goes; expected {expected}"),
        Value::Mapping(_) => format!("a mapping where one name goes; expected {expected}"),
        _ => names.clone(),
    })
}

/// Every `section.key` of the configuration, from the default config's serialisation.
fn known_keys() -> Vec<String> {
    let Ok(Value::Mapping(root)) = serde_norway::to_value(Config::default()) else { return Vec::new() };
    let mut out = Vec::new();
    for (s, v) in root {
        let (Some(s), Value::Mapping(keys)) = (scalar_text(&s), v) else { continue };
        out.push(s.clone());
        out.extend(keys.keys().filter_map(scalar_text).map(|k| format!("{s}.{k}")));
    }
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur.push((prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A YAML scalar as text (numbers, booleans and strings alike).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// Removes `section.key` from the root mapping, returning its value.
fn take(root: &mut Mapping, key: &str) -> Option<Value> {
    let (s, k) = key.split_once('.')?;
    match root.get_mut(s) {
        Some(Value::Mapping(m)) => m.remove(k),
        _ => None,
    }
}

/// Sets `section.key`, making the section where missing (an existing value wins).
fn put(root: &mut Mapping, key: &str, v: Value) {
    let Some((s, k)) = key.split_once('.') else { return };
    let section = root.entry(Value::String(s.into())).or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Value::Mapping(m) = section {
        m.entry(Value::String(k.into())).or_insert(v);
    }
}

/// Parses YAML text into its root value (null for empty text), refusing what no config is: `[` /
/// `{` nested past [`MAX_FLOW_DEPTH`] (the parser's time grows with the square of that nesting: a
/// 200 kB file of brackets took 30 s to reach its recursion limit; a config nests two deep), or a
/// root that is not a mapping of sections.
fn parse_root(text: &str) -> Result<Value> {
    // A byte-order mark (editors on Windows write one; YAML allows it) starts no document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let depth = flow_depth(text);
    if depth > MAX_FLOW_DEPTH {
        return Err(TrainError::Yaml(format!("`[` / `{{` nested {depth} deep; a config needs at most {MAX_FLOW_DEPTH}")));
    }
    let root: Value = serde_norway::from_str(text).map_err(|e| {
        // The parser's words for an integer past u64 ("invalid type: integer `…` as u128,
        // expected any YAML value") name its internals, not the problem.
        let text = e.to_string();
        TrainError::Yaml(if text.contains("as u128") {
            text.replace("invalid type: integer", "the integer").replace(" as u128, expected any YAML value", " is past the largest whole number a config holds (2^64 − 1)")
        } else {
            text
        })
    })?;
    if !(root.is_null() || root.is_mapping()) {
        return Err(not_sections());
    }
    Ok(root)
}

/// The first tagged key or value under `v` (at `path`), as `(path, tag)`.
fn first_tag(v: &Value, path: &str) -> Option<(String, String)> {
    let at = |k: &Value| {
        let name = scalar_text(k).unwrap_or_else(|| "?".into());
        if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        }
    };
    match v {
        Value::Tagged(t) => Some((if path.is_empty() { "the config".into() } else { path.to_string() }, t.tag.to_string())),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| match k {
            Value::Tagged(t) => Some((at(&t.value), t.tag.to_string())),
            _ => first_tag(v, &at(k)),
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| first_tag(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The first mapping key a config cannot read as a name, with why: a number, a boolean, null or
/// a collection as a key (serde would name it `?`), or YAML 1.1's merge key `<<`, which this
/// YAML 1.2 reader takes as a key of that spelling (and would call unknown).
fn first_unreadable_key(v: &Value, path: &str) -> Option<(String, String)> {
    let here = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    let within = if path.is_empty() { "the top level".to_string() } else { format!("`{path}`") };
    match v {
        Value::Mapping(m) => m.iter().find_map(|(k, v)| match k {
            Value::String(name) if name == "<<" => Some((here(name), "is YAML's merge key, which a config does not read: write the merged keys out".to_string())),
            Value::String(name) => first_unreadable_key(v, &here(name)),
            Value::Tagged(_) => None,
            other => {
                let (kind, shown) = match other {
                    Value::Number(n) => ("a number", n.to_string()),
                    Value::Bool(b) => ("a boolean", b.to_string()),
                    Value::Null => ("null", "~".to_string()),
                    _ => ("a list or mapping", "[…]".to_string()),
                };
                Some((here(&shown), format!("a key in {within} is {kind}; a config's keys are names (quote it if a name is meant)")))
            }
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| first_unreadable_key(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn not_sections() -> TrainError {
    TrainError::Yaml("the top level must be a mapping of sections".into())
}

/// How deep `[` / `{` may nest in a config ([`parse_root`]).
const MAX_FLOW_DEPTH: usize = 64;

/// The deepest nesting of `[` and `{` in `text`, counted without regard to quotes or comments (a
/// bracket in a string counts too: no real config comes near the limit either way).
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `section.key=value`: the value is parsed as YAML (so `1e-3`, `true`, `[0]` work).
fn apply_override(root: &mut Value, text: &str) -> Result<()> {
    let (path, value) = text.split_once('=').ok_or_else(|| TrainError::Config { key: text.into(), reason: "an override is section.key=value".into() })?;
    let parts: Vec<&str> = path.trim().split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config { key: path.into(), reason: "an override names section.key".into() });
    }
    if flow_depth(value) > MAX_FLOW_DEPTH {
        return Err(TrainError::Config { key: path.into(), reason: format!("`[` / `{{` nested past {MAX_FLOW_DEPTH} deep") });
    }
    let v: Value = serde_norway::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    let Value::Mapping(m) = root else { return Err(not_sections()) };
    let section = m.entry(Value::String(parts[0].into())).or_insert_with(|| Value::Mapping(Mapping::new()));
    let Value::Mapping(s) = section else {
        return Err(TrainError::Config { key: parts[0].into(), reason: "is not a mapping of keys, so the override cannot set one in it".into() });
    };
    s.insert(Value::String(parts[1].into()), v);
    Ok(())
}

// ---- lenient readers: YAML written by people and by PyYAML-era configs ----------------------
// A number may come as a string (`lr: "1e-3"`, which PyYAML writes for `1e-3`), a boolean as
// yes/no, an optional value as `null`/`none`.

fn is_null(v: &Value) -> bool {
    matches!(v, Value::Null) || matches!(v, Value::String(s) if s.eq_ignore_ascii_case("null") || s.eq_ignore_ascii_case("none"))
}

fn number(v: &Value) -> std::result::Result<f64, String> {
    let got = || scalar_text(v).unwrap_or_else(|| "a list or mapping".into());
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("expected a number, got {}", got())),
        Value::String(s) => s.trim().parse().map_err(|_| format!("expected a number, got {s:?}")),
        _ => Err(format!("expected a number, got {}", got())),
    }
}

/// Whole numbers: exact to u64's range where written as integers (a seed of 2^53 + 1 stays
/// itself), otherwise (`3.0`, `1e3`) up to 2^53, where f64 still counts by ones. Larger ones are
/// checked against memory where they size something.
fn whole_number(v: &Value) -> std::result::Result<u64, String> {
    let exact = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if let Some(n) = exact {
        return Ok(n);
    }
    let f = number(v)?;
    let given = scalar_text(v).unwrap_or_default();
    // Past 2⁵³ a float is not every whole number: 1e18 written in digits is read exactly above.
    if f.is_finite() && f.fract() == 0.0 && f > 9.007_199_254_740_992e15 {
        return Err(format!("{given} is a whole number past 2^53 written as a float, which cannot hold every such number exactly: write it out in digits"));
    }
    if f.fract() != 0.0 || !(0.0..=9.007_199_254_740_992e15).contains(&f) {
        return Err(format!("expected a whole number >= 0, got {given}"));
    }
    Ok(f as u64)
}

mod whole {
    use super::*;
    pub fn serialize<T: Copy + TryInto<u64>, S: serde::Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64((*v).try_into().unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, T: TryFrom<u64>, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<T, D::Error> {
        let n = whole_number(&Value::deserialize(d)?).map_err(serde::de::Error::custom)?;
        T::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
    }
}

mod opt_whole {
    use super::*;
    pub fn serialize<T: Copy + TryInto<u64>, S: serde::Serializer>(v: &Option<T>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_u64((*v).try_into().unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, T: TryFrom<u64>, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_null(&v) {
            return Ok(None);
        }
        let n = whole_number(&v).map_err(serde::de::Error::custom)?;
        T::try_from(n).map(Some).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
    }
}

/// Reals: finite numbers (ranges are checked by `validate`).
mod real {
    use super::*;
    pub trait Real: Copy {
        fn to_f64(self) -> f64;
        fn from_f64(v: f64) -> Self;
    }
    impl Real for f32 {
        fn to_f64(self) -> f64 {
            self as f64
        }
        fn from_f64(v: f64) -> Self {
            v as f32
        }
    }
    impl Real for f64 {
        fn to_f64(self) -> f64 {
            self
        }
        fn from_f64(v: f64) -> Self {
            v
        }
    }
    pub fn serialize<T: Real, S: serde::Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_f64(v.to_f64())
    }
    pub fn deserialize<'de, T: Real, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<T, D::Error> {
        let f = number(&Value::deserialize(d)?).map_err(serde::de::Error::custom)?;
        if !f.is_finite() {
            return Err(serde::de::Error::custom(format!("expected a finite number, got {f}")));
        }
        Ok(T::from_f64(f))
    }
}

/// An optional positive real where 0 or null mean none (`gradient_clip_val`).
mod opt_real {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<f32>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_f64(*v as f64),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f32>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_null(&v) {
            return Ok(None);
        }
        let f = number(&v).map_err(serde::de::Error::custom)?;
        Ok((f != 0.0).then_some(f as f32))
    }
}

fn bool_of(v: &Value) -> std::result::Result<bool, String> {
    match scalar_text(v).as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "yes" | "1") => Ok(true),
        Some("false" | "no" | "0") => Ok(false),
        _ => Err(format!("expected true or false, got {}", scalar_text(v).unwrap_or_default())),
    }
}

mod boolean {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &bool, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bool(*v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
        bool_of(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_boolean {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<bool>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bool(*b),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_null(&v) {
            return Ok(None);
        }
        bool_of(&v).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Values read by their `FromStr` and written by their `Display`.
mod text {
    use super::*;
    pub fn serialize<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, T, D>(d: D) -> std::result::Result<T, D::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
        D: serde::Deserializer<'de>,
    {
        let v = Value::deserialize(d)?;
        // An empty value (`name:`, `~`) is not the text "null": a run named `null` by accident.
        if v.is_null() {
            return Err(serde::de::Error::custom("no value given"));
        }
        let s = scalar_text(&v).ok_or_else(|| serde::de::Error::custom("expected a single value"))?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `lr_scheduler`: a name, or YAML's empty value and `false` for none (as the names `null` and
/// `false` already say), which the enum's own derive refuses as "not a Value::Tagged enum".
mod scheduler {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Scheduler, s: S) -> std::result::Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Scheduler, D::Error> {
        match Value::deserialize(d)? {
            Value::Null | Value::Bool(false) => Ok(Scheduler::Constant),
            v => Scheduler::deserialize(v).map_err(serde::de::Error::custom),
        }
    }
}

/// `normalization: true | false | none | standardization | minmax`.
mod normalization {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Normalization, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Normalization, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(Normalization::Standardization),
            Value::Bool(false) => Ok(Normalization::None),
            v => scalar_text(&v).ok_or_else(|| serde::de::Error::custom("expected true, false or a normalization name"))?.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `precision: 32 | 16 | bf16` (and Lightning's `32-true`, `16-mixed`, `bf16-mixed`).
mod precision {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Precision, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Precision, D::Error> {
        let v = Value::deserialize(d)?;
        match scalar_text(&v).map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("32" | "32-true" | "fp32") => Ok(Precision::F32),
            Some("16" | "16-mixed" | "fp16") => Ok(Precision::F16),
            Some("bf16" | "bf16-mixed") => Ok(Precision::Bf16),
            _ => Err(serde::de::Error::custom(format!("expected 32 (or 32-true, fp32), 16 (16-mixed, fp16) or bf16 (bf16-mixed), got {}", scalar_text(&v).unwrap_or_default()))),
        }
    }
}

/// `devices: N` or `[index]`.
mod devices {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Devices, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(1))?;
        seq.serialize_element(&v.index)?;
        seq.end()
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Devices, D::Error> {
        match Value::deserialize(d)? {
            Value::Sequence(s) => {
                let index = match s.first() {
                    Some(v) => whole_number(v).map_err(serde::de::Error::custom)? as usize,
                    None => 0,
                };
                Ok(Devices { count: s.len().max(1), index })
            }
            v => Ok(Devices { count: whole_number(&v).map_err(serde::de::Error::custom)? as usize, index: 0 }),
        }
    }
}

impl Default for Devices {
    fn default() -> Self {
        Devices { count: 1, index: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is held where its section holds it; a section alone is held; a default is not.
    #[test]
    fn holds_key_finds_keys_and_sections_the_yaml_holds() {
        let root = parse_root("data:\n  window_size: 64\ntrainer: {}\n").unwrap();
        assert!(holds_key(&root, "data.window_size") && holds_key(&root, "data") && holds_key(&root, "trainer"));
        assert!(!holds_key(&root, "data.batch_size") && !holds_key(&root, "trainer.max_steps") && !holds_key(&root, "model.name") && !holds_key(&root, "model"));
    }
}
