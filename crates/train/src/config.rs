//! The training configuration: YAML with PHM-Vibench's sections and keys (`data`, `model`,
//! `task`, `trainer`, `environment`), typed, validated before anything runs, overridable with
//! `section.key=value`.
//!
//! Three kinds of key: the ones we use (typed below, with their defaults); the ones PHM-Vibench
//! defines that we accept but do not use yet (reported once, by name); and unknown ones (an
//! error naming the key: a typo must not silently fall back to a default).

use std::path::{Path, PathBuf};

use engine::{EncoderKind, InfoNceConfig, OptimizerConfig, OptimizerKind};
use serde_yaml::{Mapping, Value};
use signal::{Normalization, PreprocessConfig, WindowConfig, WindowStrategy};

use crate::error::{Result, TrainError};

/// `data` section.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSection {
    /// Samples per window W (default 1024).
    pub window_size: usize,
    /// Step between sequential windows (default = window_size).
    pub stride: usize,
    /// Windows per Id (default 2; a contrastive pair uses 2).
    pub num_window: usize,
    pub window_sampling_strategy: WindowStrategy,
    /// `true`/`standardization`, `minmax`, `false`/`none` (default standardization).
    pub normalization: Normalization,
    pub truncate_length: Option<usize>,
    /// Ids per batch (default 32).
    pub batch_size: usize,
    /// Threads that assemble batches (default 2; 0 = all cores).
    pub num_workers: usize,
    /// Batches prepared ahead (default 4).
    pub prefetch: usize,
    /// Fraction of Ids held out for validation (default 0.2; 0 = no validation).
    pub val_fraction: f64,
    /// Training windows come from the first `time_split` of each signal (default 1.0: all of it).
    /// The evaluation's `--split time` fits on the first 70 %: train with 0.7 to keep the test
    /// region unseen.
    pub time_split: f64,
}

/// `model` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSection {
    /// Encoder: mlp-simple, mlp-medium, mlp-complex (default mlp-medium).
    pub name: EncoderKind,
    /// Embedding size D (default 128).
    pub embedding_dim: usize,
}

/// `task` section.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSection {
    pub lr: f32,
    pub weight_decay: f32,
    /// InfoNCE temperature τ > 0 (default 0.07).
    pub temperature: f32,
    /// adam (default) or adamw.
    pub optimizer: OptimizerKind,
    /// Symmetric InfoNCE (default false).
    pub symmetric: bool,
}

/// What early stopping and top-k checkpoints watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    ValLoss,
    ValAcc,
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
        if *self == Monitor::ValAcc { Mode::Max } else { Mode::Min }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Constant,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

/// `trainer` section.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerSection {
    /// Epochs (default 10).
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epoch (default none).
    pub max_steps: Option<u64>,
    /// cpu (default); gpu/cuda need the CUDA build.
    pub accelerator: String,
    pub devices: usize,
    /// Which GPU with accelerator gpu/cuda (from `devices: [N]`, default 0).
    pub device_index: usize,
    pub precision: Precision,
    /// Clip the global gradient norm (default none).
    pub gradient_clip_val: Option<f32>,
    /// Micro-batches per optimizer step (default 1).
    pub accumulate_grad_batches: usize,
    pub enable_early_stopping: bool,
    /// Validation checks without improvement before stopping (default 10).
    pub patience: usize,
    pub monitor: Monitor,
    pub mode: Mode,
    pub min_delta: f64,
    pub lr_scheduler: Scheduler,
    /// Linear warm-up steps before the schedule (default 0).
    pub warmup_steps: u64,
    /// Best checkpoints kept by the monitor (default 1; 0 = none).
    pub save_top_k: usize,
    pub save_last: bool,
    pub check_val_every_n_epoch: usize,
    pub log_every_n_steps: u64,
    /// Seed of initialization, shuffles, windows, dropout and the Id split (default 42).
    pub seed: u64,
}

/// `environment` section.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentSection {
    /// Where runs are written (default `save/`).
    pub save_dir: PathBuf,
    /// Run name (default `contrastive_id`).
    pub experiment_name: String,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub data: DataSection,
    pub model: ModelSection,
    pub task: TaskSection,
    pub trainer: TrainerSection,
    pub environment: EnvironmentSection,
    /// Keys present that PHM-Vibench defines but we do not use, `section.key`.
    pub unused_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataSection {
                window_size: 1024,
                stride: 1024,
                num_window: 2,
                window_sampling_strategy: WindowStrategy::Random,
                normalization: Normalization::Standardization,
                truncate_length: None,
                batch_size: 32,
                num_workers: 2,
                prefetch: 4,
                val_fraction: 0.2,
                time_split: 1.0,
            },
            model: ModelSection { name: EncoderKind::MlpMedium, embedding_dim: 128 },
            task: TaskSection { lr: 1e-3, weight_decay: 0.0, temperature: 0.07, optimizer: OptimizerKind::Adam, symmetric: false },
            trainer: TrainerSection {
                epochs: 10,
                max_steps: None,
                accelerator: "cpu".into(),
                devices: 1,
                device_index: 0,
                precision: Precision::F32,
                gradient_clip_val: None,
                accumulate_grad_batches: 1,
                enable_early_stopping: false,
                patience: 10,
                monitor: Monitor::ValLoss,
                mode: Mode::Min,
                min_delta: 0.0,
                lr_scheduler: Scheduler::Constant,
                warmup_steps: 0,
                save_top_k: 1,
                save_last: true,
                check_val_every_n_epoch: 1,
                log_every_n_steps: 10,
                seed: 42,
            },
            environment: EnvironmentSection { save_dir: PathBuf::from("save"), experiment_name: "contrastive_id".into() },
            unused_keys: Vec::new(),
        }
    }
}

/// Keys PHM-Vibench's configs carry that this trainer accepts and does not use (yet).
const ACCEPTED_UNUSED: &[&str] = &[
    "data.factory_name",
    "data.dataset_name",
    "data.data_dir",
    "data.metadata_file",
    "model.type",
    "model.backbone",
    "model.d_model",
    "task.type",
    "task.name",
    "environment.enable_memory_profiling",
    "environment.enable_performance_profiling",
    "environment.project",
    "environment.wandb",
];

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

fn bad(key: &str, v: &Value, why: &str) -> TrainError {
    TrainError::Config { key: key.into(), reason: format!("{why} (got {})", serde_yaml::to_string(v).unwrap_or_default().trim()) }
}

fn as_f64(key: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad(key, v, "expected a number")),
        Value::String(s) => s.trim().parse().map_err(|_| bad(key, v, "expected a number")),
        _ => Err(bad(key, v, "expected a number")),
    }
}

fn as_usize(key: &str, v: &Value, min: usize) -> Result<usize> {
    let f = as_f64(key, v)?;
    if f.fract() != 0.0 || f < min as f64 || f > 1e15 {
        return Err(bad(key, v, &format!("expected a whole number >= {min}")));
    }
    Ok(f as usize)
}

fn as_bool(key: &str, v: &Value) -> Result<bool> {
    match scalar_text(v).as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "yes" | "1") => Ok(true),
        Some("false" | "no" | "0") => Ok(false),
        _ => Err(bad(key, v, "expected true or false")),
    }
}

fn as_string(key: &str, v: &Value) -> Result<String> {
    scalar_text(v).ok_or_else(|| bad(key, v, "expected a single value"))
}

fn nullable(v: &Value) -> bool {
    matches!(v, Value::Null) || matches!(v, Value::String(s) if s.eq_ignore_ascii_case("null") || s.eq_ignore_ascii_case("none"))
}

impl Config {
    /// Reads a YAML file, applies `overrides` (`section.key=value`), validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_yaml(&text, overrides).map_err(|e| match e {
            TrainError::Yaml(reason) => TrainError::Yaml(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    pub fn from_yaml(text: &str, overrides: &[String]) -> Result<Self> {
        let mut root: Value = serde_yaml::from_str(text).map_err(|e| TrainError::Yaml(e.to_string()))?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        for o in overrides {
            apply_override(&mut root, o)?;
        }
        let mut cfg = Config::default();
        let Value::Mapping(sections) = &root else {
            return Err(TrainError::Yaml("the top level must be a mapping of sections".into()));
        };
        let mut stride_set = false;
        for (sk, sv) in sections {
            let section = scalar_text(sk).unwrap_or_default();
            let Value::Mapping(keys) = sv else {
                return Err(TrainError::Config { key: section, reason: "expected a section (a mapping of keys)".into() });
            };
            for (kk, v) in keys {
                let key = format!("{section}.{}", scalar_text(kk).unwrap_or_default());
                if key == "data.stride" {
                    stride_set = true;
                }
                cfg.set(&key, v)?;
            }
        }
        if !stride_set {
            cfg.data.stride = cfg.data.window_size;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets one key from a YAML value.
    fn set(&mut self, key: &str, v: &Value) -> Result<()> {
        let d = &mut self.data;
        let t = &mut self.trainer;
        match key {
            "data.window_size" => d.window_size = as_usize(key, v, 1)?,
            "data.stride" => d.stride = as_usize(key, v, 1)?,
            "data.num_window" => d.num_window = as_usize(key, v, 1)?,
            "data.window_sampling_strategy" => d.window_sampling_strategy = as_string(key, v)?.parse().map_err(|e: signal::SignalError| bad(key, v, &e.to_string()))?,
            "data.normalization" => {
                d.normalization = match v {
                    Value::Bool(true) => Normalization::Standardization,
                    Value::Bool(false) => Normalization::None,
                    _ => as_string(key, v)?.parse().map_err(|e: signal::SignalError| bad(key, v, &e.to_string()))?,
                }
            }
            "data.truncate_length" => d.truncate_length = if nullable(v) { None } else { Some(as_usize(key, v, 1)?) },
            "data.batch_size" => d.batch_size = as_usize(key, v, 1)?,
            "data.num_workers" => d.num_workers = as_usize(key, v, 0)?,
            "data.prefetch" => d.prefetch = as_usize(key, v, 1)?,
            "data.val_fraction" => d.val_fraction = as_f64(key, v)?,
            "data.time_split" => d.time_split = as_f64(key, v)?,
            "model.name" | "model.encoder" => self.model.name = as_string(key, v)?.parse().map_err(|e: engine::EngineError| bad(key, v, &e.to_string()))?,
            "model.embedding_dim" | "model.output_dim" => self.model.embedding_dim = as_usize(key, v, 1)?,
            "task.lr" => self.task.lr = as_f64(key, v)? as f32,
            "task.weight_decay" => self.task.weight_decay = as_f64(key, v)? as f32,
            "task.temperature" => self.task.temperature = as_f64(key, v)? as f32,
            "task.optimizer" => {
                self.task.optimizer = match as_string(key, v)?.to_ascii_lowercase().as_str() {
                    "adam" => OptimizerKind::Adam,
                    "adamw" => OptimizerKind::AdamW,
                    _ => return Err(bad(key, v, "expected adam or adamw")),
                }
            }
            "task.symmetric" => self.task.symmetric = as_bool(key, v)?,
            "trainer.epochs" | "trainer.max_epochs" => t.epochs = as_usize(key, v, 1)?,
            "trainer.max_steps" => t.max_steps = if nullable(v) || as_f64(key, v)? < 0.0 { None } else { Some(as_usize(key, v, 1)? as u64) },
            "trainer.accelerator" => {
                let a = as_string(key, v)?.to_ascii_lowercase();
                if !["cpu", "gpu", "cuda", "auto"].contains(&a.as_str()) {
                    return Err(bad(key, v, "expected cpu, gpu, cuda or auto"));
                }
                t.accelerator = a;
            }
            "trainer.devices" => {
                t.devices = match v {
                    Value::Sequence(s) => {
                        // `devices: [N]` picks GPU N (PyTorch Lightning's form).
                        if let Some(first) = s.first() {
                            t.device_index = as_usize(key, first, 0)?;
                        }
                        s.len().max(1)
                    }
                    _ => as_usize(key, v, 1)?,
                }
            }
            "trainer.precision" => {
                t.precision = match as_string(key, v)?.to_ascii_lowercase().as_str() {
                    "32" | "32-true" | "fp32" => Precision::F32,
                    "16" | "16-mixed" | "fp16" => Precision::F16,
                    "bf16" | "bf16-mixed" => Precision::Bf16,
                    _ => return Err(bad(key, v, "expected 32, 16 or bf16")),
                }
            }
            "trainer.gradient_clip_val" => {
                t.gradient_clip_val = if nullable(v) { None } else {
                    let c = as_f64(key, v)?;
                    if c == 0.0 { None } else { Some(c as f32) }
                }
            }
            "trainer.accumulate_grad_batches" => t.accumulate_grad_batches = as_usize(key, v, 1)?,
            "trainer.enable_early_stopping" | "trainer.early_stopping" => t.enable_early_stopping = as_bool(key, v)?,
            "trainer.patience" => {
                t.patience = as_usize(key, v, 1)?;
                // PHM-Vibench turns early stopping on by giving a patience.
                t.enable_early_stopping = true;
            }
            "trainer.monitor" => {
                t.monitor = match as_string(key, v)?.as_str() {
                    "val_contrastive_loss" | "val_loss" => Monitor::ValLoss,
                    "val_contrastive_acc" | "val_acc" => Monitor::ValAcc,
                    "train_contrastive_loss" | "train_loss" => Monitor::TrainLoss,
                    _ => return Err(bad(key, v, "expected val_contrastive_loss, val_contrastive_acc or train_contrastive_loss")),
                };
                t.mode = t.monitor.default_mode();
            }
            "trainer.mode" => {
                t.mode = match as_string(key, v)?.as_str() {
                    "min" => Mode::Min,
                    "max" => Mode::Max,
                    _ => return Err(bad(key, v, "expected min or max")),
                }
            }
            "trainer.min_delta" => t.min_delta = as_f64(key, v)?,
            "trainer.lr_scheduler" | "task.lr_scheduler" => {
                t.lr_scheduler = match as_string(key, v)?.to_ascii_lowercase().as_str() {
                    "cosine" | "cosineannealinglr" => Scheduler::Cosine,
                    "none" | "null" | "constant" | "false" => Scheduler::Constant,
                    _ => return Err(bad(key, v, "expected cosine or none")),
                }
            }
            "trainer.warmup_steps" => t.warmup_steps = as_usize(key, v, 0)? as u64,
            "trainer.save_top_k" => t.save_top_k = as_usize(key, v, 0)?,
            "trainer.save_last" => t.save_last = as_bool(key, v)?,
            "trainer.check_val_every_n_epoch" => t.check_val_every_n_epoch = as_usize(key, v, 1)?,
            "trainer.log_every_n_steps" => t.log_every_n_steps = as_usize(key, v, 1)? as u64,
            "trainer.seed" | "environment.seed" => t.seed = as_usize(key, v, 0)? as u64,
            "environment.save_dir" => self.environment.save_dir = PathBuf::from(as_string(key, v)?),
            "environment.experiment_name" => self.environment.experiment_name = as_string(key, v)?,
            k if ACCEPTED_UNUSED.contains(&k) => {
                if !self.unused_keys.iter().any(|u| u == k) {
                    self.unused_keys.push(k.to_string());
                }
            }
            k => {
                let known = known_keys();
                let hint = known.iter().min_by_key(|c| edit_distance(c, k)).filter(|c| edit_distance(c, k) <= 3);
                let reason = match hint {
                    Some(h) => format!("unknown key; did you mean `{h}`?"),
                    None => "unknown key".into(),
                };
                return Err(TrainError::Config { key: k.to_string(), reason });
            }
        }
        Ok(())
    }

    /// Checks values that depend on each other; names the key at fault.
    pub fn validate(&self) -> Result<()> {
        let c = |key: &str, reason: &str| Err(TrainError::Config { key: key.into(), reason: reason.into() });
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return c("data.val_fraction", "must be in [0, 1)");
        }
        if !(self.data.time_split > 0.0 && self.data.time_split <= 1.0) {
            return c("data.time_split", "must be in (0, 1]");
        }
        if self.trainer.devices != 1 {
            return c("trainer.devices", "only one device is supported");
        }
        if self.trainer.precision != Precision::F32 && self.trainer.accelerator == "cpu" {
            return c("trainer.precision", "16 and bf16 need accelerator gpu/cuda (the CUDA device); on cpu use 32");
        }
        if self.trainer.precision != Precision::F32 {
            return c("trainer.precision", "16 and bf16 are not implemented yet (the CUDA device computes in fp32); use 32");
        }
        self.window().validate().map_err(TrainError::from)?;
        self.loss().validate().map_err(TrainError::from)?;
        self.optimizer().validate().map_err(TrainError::from)?;
        Ok(())
    }

    /// Whether training runs on the CUDA device.
    pub fn on_gpu(&self) -> bool {
        matches!(self.trainer.accelerator.as_str(), "gpu" | "cuda")
    }

    pub fn window(&self) -> WindowConfig {
        WindowConfig {
            window_size: self.data.window_size,
            stride: self.data.stride,
            num_window: self.data.num_window,
            strategy: self.data.window_sampling_strategy,
        }
    }

    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig { normalization: self.data.normalization, truncate_length: self.data.truncate_length }
    }

    pub fn loss(&self) -> InfoNceConfig {
        InfoNceConfig { temperature: self.task.temperature, symmetric: self.task.symmetric }
    }

    pub fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig {
            kind: self.task.optimizer,
            lr: self.task.lr,
            weight_decay: self.task.weight_decay,
            clip_norm: self.trainer.gradient_clip_val,
            ..OptimizerConfig::default()
        }
    }

    /// The resolved configuration as YAML (every key, defaults included), for checkpoints and
    /// run directories. Loading it back gives the same `Config`.
    pub fn to_yaml(&self) -> String {
        let d = &self.data;
        let t = &self.trainer;
        let norm = match d.normalization {
            Normalization::None => "none",
            Normalization::Standardization => "standardization",
            Normalization::MinMax => "minmax",
        };
        let strategy = match d.window_sampling_strategy {
            WindowStrategy::Sequential => "sequential",
            WindowStrategy::Random => "random",
            WindowStrategy::EvenlySpaced => "evenly_spaced",
        };
        let prec = match t.precision {
            Precision::F32 => "32",
            Precision::F16 => "16",
            Precision::Bf16 => "bf16",
        };
        let opt = match self.task.optimizer {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        };
        let opt_num = |v: Option<String>| v.unwrap_or_else(|| "null".into());
        format!(
            "data:\n  window_size: {}\n  stride: {}\n  num_window: {}\n  window_sampling_strategy: {strategy}\n  normalization: {norm}\n  truncate_length: {}\n  batch_size: {}\n  num_workers: {}\n  prefetch: {}\n  val_fraction: {}\n  time_split: {}\n\
             model:\n  name: {}\n  embedding_dim: {}\n\
             task:\n  lr: {:e}\n  weight_decay: {:e}\n  temperature: {}\n  optimizer: {opt}\n  symmetric: {}\n\
             trainer:\n  epochs: {}\n  max_steps: {}\n  accelerator: {}\n  devices: [{}]\n  precision: \"{prec}\"\n  gradient_clip_val: {}\n  accumulate_grad_batches: {}\n  patience: {}\n  enable_early_stopping: {}\n  monitor: {}\n  mode: {}\n  min_delta: {}\n  lr_scheduler: {}\n  warmup_steps: {}\n  save_top_k: {}\n  save_last: {}\n  check_val_every_n_epoch: {}\n  log_every_n_steps: {}\n  seed: {}\n\
             environment:\n  save_dir: {:?}\n  experiment_name: {:?}\n",
            d.window_size, d.stride, d.num_window, opt_num(d.truncate_length.map(|v| v.to_string())), d.batch_size, d.num_workers, d.prefetch, d.val_fraction, d.time_split,
            self.model.name, self.model.embedding_dim,
            self.task.lr, self.task.weight_decay, self.task.temperature, self.task.symmetric,
            t.epochs, opt_num(t.max_steps.map(|v| v.to_string())), t.accelerator, t.device_index, opt_num(t.gradient_clip_val.map(|v| v.to_string())), t.accumulate_grad_batches, t.patience, t.enable_early_stopping,
            t.monitor.name(), if t.mode == Mode::Min { "min" } else { "max" }, t.min_delta, if t.lr_scheduler == Scheduler::Cosine { "cosine" } else { "none" },
            t.warmup_steps, t.save_top_k, t.save_last, t.check_val_every_n_epoch, t.log_every_n_steps, t.seed,
            self.environment.save_dir.display().to_string(), self.environment.experiment_name,
        )
    }
}

/// Every key `set` understands, for suggestions.
fn known_keys() -> Vec<&'static str> {
    vec![
        "data.window_size", "data.stride", "data.num_window", "data.window_sampling_strategy", "data.normalization",
        "data.truncate_length", "data.batch_size", "data.num_workers", "data.prefetch", "data.val_fraction", "data.time_split",
        "model.name", "model.embedding_dim", "task.lr", "task.weight_decay", "task.temperature", "task.optimizer",
        "task.symmetric", "trainer.epochs", "trainer.max_steps", "trainer.accelerator", "trainer.devices",
        "trainer.precision", "trainer.gradient_clip_val", "trainer.accumulate_grad_batches",
        "trainer.enable_early_stopping", "trainer.patience", "trainer.monitor", "trainer.mode", "trainer.min_delta",
        "trainer.lr_scheduler", "trainer.warmup_steps", "trainer.save_top_k", "trainer.save_last",
        "trainer.check_val_every_n_epoch", "trainer.log_every_n_steps", "trainer.seed", "environment.save_dir",
        "environment.experiment_name",
    ]
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

/// `section.key=value`: the value is parsed as YAML (so `1e-3`, `true`, `[0]` work).
fn apply_override(root: &mut Value, text: &str) -> Result<()> {
    let (path, value) = text
        .split_once('=')
        .ok_or_else(|| TrainError::Config { key: text.into(), reason: "an override is section.key=value".into() })?;
    let parts: Vec<&str> = path.trim().split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config { key: path.into(), reason: "an override names section.key".into() });
    }
    let v: Value = serde_yaml::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    if !root.is_mapping() {
        *root = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(m) = root else { unreachable!("made a mapping above") };
    let section = m.entry(Value::String(parts[0].into())).or_insert_with(|| Value::Mapping(Mapping::new()));
    if !section.is_mapping() {
        *section = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(s) = section {
        s.insert(Value::String(parts[1].into()), v);
    }
    Ok(())
}
