//! The ContrastiveID trainer: Id split, prefetching batches, accumulation, learning-rate schedule,
//! validation, early stopping, top-k and last checkpoints, metrics log, resume.
//!
//! A [`Trainer`] is built once per run ([`Trainer::new`]: data, device, resume), then fed the
//! sampler's batches: [`Trainer::train_batch`] runs one micro-batch and, every
//! `accumulate_grad_batches`, the optimizer step; [`Trainer::end_epoch`] validates, checkpoints
//! and decides on early stopping; [`Trainer::finish`] writes the last checkpoint and the summary.
//!
//! One thread pool of `data.num_workers` threads runs everything: the sampler assembles batches
//! in it and the CPU device computes in it.
//!
//! Everything random is a pure function of the seed and a position (epoch, batch, forward
//! count), and every kernel is deterministic, so a run stopped at step k and resumed from its
//! checkpoint continues exactly as the uninterrupted run would.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{ContrastiveStep, CpuDevice, CudaDevice, Device, EncoderKind, Pairs};
use signal::sampler::{batches_per_epoch, BatchPos};
use signal::{BatchBuilder, BatchSampler, ContrastiveBatch, Dataset, Hdf5Store, Metadata, SamplerConfig, SignalStore};

use crate::checkpoint::{self, TrainingState};
use crate::config::{engine_error, Config, Mode, Monitor, Scheduler};
use crate::error::{Result, TrainError};
use crate::input::{Augment, Inputs};

/// One logged optimizer step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f32,
    pub grad_norm: Option<f32>,
    /// fp16's loss scale after this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    pub samples_per_s: f64,
}

/// One finished epoch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub step: u64,
    pub train_contrastive_loss: f64,
    pub train_contrastive_acc: f64,
    pub val_contrastive_loss: Option<f64>,
    pub val_contrastive_acc: Option<f64>,
    pub seconds: f64,
}

/// Watches training (the CLI draws a progress bar with it).
pub trait Observer: Send {
    fn start(&mut self, _total_steps: u64, _first_step: u64) {}
    /// After each optimizer step; `Break` stops training there (a checkpoint is written, and
    /// `--resume` continues exactly where it stopped).
    fn step(&mut self, _log: &StepLog) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    fn epoch(&mut self, _log: &EpochLog) {}
    /// A note or warning for the user (the library prints nothing itself).
    fn message(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// The end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub epochs_completed: usize,
    pub train_ids: usize,
    pub val_ids: usize,
    pub skipped_ids: Vec<u64>,
    pub last_loss: f32,
    pub last_accuracy: f32,
    /// The best monitored value this run has seen (early stopping's), a resumed run's
    /// checkpoint's among them.
    pub best_monitor: Option<f64>,
    pub monitor: String,
    pub stopped_early: bool,
    pub seconds: f64,
    pub samples_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// The best checkpoint in this run's directory, and its monitored value. A run resumed from
    /// another directory's checkpoint ranks only what it writes, so this value can be worse
    /// than `best_monitor`, whose checkpoint stays in that directory.
    pub best_checkpoint: Option<PathBuf>,
    pub best_checkpoint_monitor: Option<f64>,
    /// fp16: optimizer steps the loss scaler skipped in this invocation (gradients overflowed),
    /// and the scale it ended at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scaling: Option<LossScaling>,
}

/// What fp16's loss scaler did in a run ([`Summary::loss_scaling`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LossScaling {
    pub skipped_steps: u64,
    pub final_scale: f32,
}

/// Learning rate at optimizer step `t` (1-based) of `total`.
pub fn learning_rate(cfg: &Config, t: u64, total: u64) -> f32 {
    let base = cfg.task.lr;
    let w = cfg.trainer.warmup_steps;
    if w > 0 && t <= w {
        return base * t as f32 / w as f32;
    }
    match cfg.trainer.lr_scheduler {
        Scheduler::Constant => base,
        Scheduler::Cosine => {
            let span = total.saturating_sub(w).max(1) as f64;
            let progress = ((t - w.min(t)) as f64 / span).min(1.0);
            (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
        }
    }
}

/// The `data` keys that decide which windows a run trains on, where `run`'s differ from `saved`'s:
/// `key = saved → run` each.
fn data_differences(saved: &crate::config::DataSection, run: &crate::config::DataSection) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("data.{key} = {a} → {b}"));
        }
    };
    check("window_size", saved.window_size.to_string(), run.window_size.to_string());
    check("stride", format!("{:?}", saved.stride), format!("{:?}", run.stride));
    check("num_window", saved.num_window.to_string(), run.num_window.to_string());
    check("window_sampling_strategy", format!("{:?}", saved.window_sampling_strategy), format!("{:?}", run.window_sampling_strategy));
    check("normalization", format!("{:?}", saved.normalization), format!("{:?}", run.normalization));
    check("truncate_length", format!("{:?}", saved.truncate_length), format!("{:?}", run.truncate_length));
    check("batch_size", saved.batch_size.to_string(), run.batch_size.to_string());
    check("val_fraction", saved.val_fraction.to_string(), run.val_fraction.to_string());
    check("time_split", saved.time_split.to_string(), run.time_split.to_string());
    out
}

/// Splits Ids into train and validation by a seeded shuffle. A fraction that itself leaves fewer
/// than two Ids to train on is an error naming `data.val_fraction`; where only the minimum of two
/// validation Ids would (a handful of Ids), validation is off.
pub fn split_ids(ids: &[u64], val_fraction: f64, seed: u64) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut order = ids.to_vec();
    signal::rng::Rng::new(signal::rng::mix_seed(&[seed, 0x5917])).shuffle(&mut order);
    let asked = (ids.len() as f64 * val_fraction).round() as usize;
    if asked + 2 > ids.len() && asked > 0 {
        return Err(TrainError::Config {
            key: "data.val_fraction".into(),
            reason: format!(
                "{val_fraction} of {} Ids holds {asked} out for validation and leaves {} to train on (at least 2 are needed; 0 turns validation off)",
                ids.len(),
                ids.len() - asked.min(ids.len())
            ),
        });
    }
    let mut n_val = if val_fraction > 0.0 { asked.max(2) } else { 0 }; // one pair cannot be contrasted
    if n_val + 2 > ids.len() {
        n_val = 0;
    }
    let mut val: Vec<u64> = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

/// Opens a store + table pair as a dataset (its mismatches in [`Dataset::mismatch_warnings`]).
pub fn open_dataset(data: &Path, meta: &Path) -> Result<Dataset> {
    let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(data)?);
    let meta = Metadata::load(meta)?;
    let ds = Dataset::join(store, meta);
    if ds.ids.is_empty() {
        // Say why: the warnings name each Id of the table the store could not give, and why.
        let why: Vec<String> = ds.mismatch_warnings().iter().map(|w| w.trim_end_matches("; skipped").to_string()).collect();
        let detail = if why.is_empty() { String::new() } else { format!(": {}", crate::first_few(&why)) };
        return Err(TrainError::Data(format!("no Id is in both {} and its table {}{detail}", data.display(), ds.meta.path.display())));
    }
    Ok(ds)
}

fn better(mode: Mode, new: f64, best: f64, min_delta: f64) -> bool {
    match mode {
        Mode::Min => new < best - min_delta,
        Mode::Max => new > best + min_delta,
    }
}

/// The run's one thread pool (`data.num_workers`, 0 = all cores).
pub fn thread_pool(cfg: &Config) -> Result<Arc<rayon::ThreadPool>> {
    let cap = limits::thread_cap();
    let (threads, cores) = (if cfg.data.num_workers == 0 { cap.cores } else { cfg.data.num_workers }, cap.cores);
    if threads > cap.max {
        return Err(TrainError::Config { key: "data.num_workers".into(), reason: format!("{threads} threads on a machine of {cores} cores") });
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("worker-{i}"))
        .build()
        .map_err(|e| TrainError::Config { key: "data.num_workers".into(), reason: e.to_string() })?;
    Ok(Arc::new(pool))
}

/// Trains per `cfg` on the store + table; resumes from a checkpoint directory if given. The
/// device is `trainer.accelerator`: cpu, or gpu/cuda (GPU `trainer.devices: [N]`).
pub fn train(cfg: &Config, data: &Path, meta: &Path, resume: Option<&Path>, obs: &mut dyn Observer) -> Result<Summary> {
    cfg.validate()?;
    for k in &cfg.unused_keys {
        obs.message(&format!("note: config key {k} is accepted but not used"));
    }
    let pool = thread_pool(cfg)?;
    let ds = open_dataset(data, meta)?;
    for w in ds.mismatch_warnings() {
        obs.message(&format!("warning: {w}"));
    }
    if cfg.on_gpu() {
        let index = cfg.trainer.devices.index;
        let dev = CudaDevice::new(index).map_err(|e| TrainError::Config { key: "trainer.accelerator".into(), reason: format!("the cuda device (GPU {index}) was asked for, but {e}") })?;
        run(cfg, ds, resume, obs, pool, dev)
    } else {
        if cfg.trainer.devices.index != 0 {
            obs.message(&format!("note: trainer.devices names GPU {}, which a run on the CPU does not use", cfg.trainer.devices.index));
        }
        let dev = pool.install(CpuDevice::new);
        run(cfg, ds, resume, obs, pool, dev)
    }
}

fn run<D: Device>(cfg: &Config, ds: Dataset, resume: Option<&Path>, obs: &mut dyn Observer, pool: Arc<rayon::ThreadPool>, device: D) -> Result<Summary> {
    // The loop itself runs on this thread and hands each batch's compute to the pool: a worker
    // blocked waiting for the next batch would leave the sampler, which assembles batches in the
    // same pool, without a thread (with one worker, a deadlock).
    let p = pool.clone();
    let mut t = p.install(move || Trainer::new(cfg, ds, resume, obs, pool, device))?;
    // A resumed run already at `trainer.max_steps` takes no step and writes no checkpoint.
    let sampler = if t.reached_max_steps() {
        let limit = match t.cfg.trainer.max_steps {
            Some(m) if m <= t.state.step => format!("trainer.max_steps is {m}"),
            _ => format!("the most steps a checkpoint may hold is {}", checkpoint::MAX_STEPS),
        };
        t.obs.message(&format!("the checkpoint is at step {}, {limit}: nothing to train", t.state.step));
        None
    } else {
        Some(t.sampler()?)
    };
    for item in sampler.into_iter().flatten() {
        let (pos, batch) = item?;
        if p.install(|| t.train_batch(pos, &batch))?.is_break() {
            break;
        }
    }
    p.install(move || t.finish())
}

/// The top-k checkpoints, kept in `checkpoints/top_k.json` beside them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct TopK {
    entries: Vec<TopEntry>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct TopEntry {
    name: String,
    epoch: usize,
    step: u64,
    value: f64,
}

impl TopK {
    const FILE: &str = "top_k.json";

    /// Writes the index beside the checkpoints (atomically).
    fn save(&self, ckpt_dir: &Path) -> Result<()> {
        let index = ckpt_dir.join(Self::FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| TrainError::Data(e.to_string()))?;
        files::write_atomic(&index, &json).map_err(|e| TrainError::io(&index, e))
    }

    /// The index beside the checkpoints. Its names are deleted when they leave the top k, so an
    /// entry that is not a plain `best-…` directory name (an edited or foreign index: `..`, a
    /// path) is dropped rather than trusted.
    fn load(ckpt_dir: &Path) -> Self {
        let mut top: TopK = files::read_to_string(&ckpt_dir.join(Self::FILE)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        top.entries.retain(|e| e.name.starts_with("best-") && !e.name.contains(['/', '\\']) && !e.name.contains(".."));
        top
    }

    fn sort(&mut self, mode: Mode) {
        self.entries.sort_by(|a, b| if mode == Mode::Min { a.value.total_cmp(&b.value) } else { b.value.total_cmp(&a.value) });
    }
}

/// One training run in progress.
pub struct Trainer<'a, D: Device> {
    cfg: &'a Config,
    obs: &'a mut dyn Observer,
    pool: Arc<rayon::ThreadPool>,
    step: ContrastiveStep<D>,
    state: TrainingState,
    builder: Arc<BatchBuilder>,
    inputs: Inputs,
    augment: Augment,
    usable_train: Vec<u64>,
    usable_val: Vec<u64>,
    val_batches: Vec<ValidationBatch>,
    run_dir: PathBuf,
    ckpt_dir: PathBuf,
    /// The metrics log, opened when the run's record begins ([`Trainer::begin_record`]).
    metrics: Option<std::fs::File>,
    /// A fresh run's record (config.yaml, metrics.jsonl, the top-k ranking) replaces a previous
    /// run's in the same directory only once it has taken a step: a run that fails before
    /// (a NaN at step 1, a bad rate) leaves the previous record whole.
    record_pending: bool,
    /// Not resumed, or resumed into another directory than the checkpoint's: the record (log,
    /// summary, ranking) starts anew.
    fresh: bool,
    /// The optimizer step this invocation started at (0, or the resumed checkpoint's): whether
    /// it has stepped decides whether a fresh record replaces what its directory held.
    first_step: u64,
    /// This run's hold on its directory, for as long as it runs.
    _lock: files::DirLock,
    per_epoch: usize,
    total_steps: u64,
    /// When the epoch in progress started (its sums are in the training state).
    epoch_start: Instant,
    last: (f32, f32),
    window_start: (Instant, usize),
    samples: usize,
    /// fp16 steps the loss scaler skipped in this invocation.
    overflow_skips: u64,
    t_start: Instant,
    t_train: Instant,
    stopped_early: bool,
    last_ckpt: Option<PathBuf>,
    last_saved_step: Option<u64>,
    top_k: TopK,
}

impl<'a, D: Device> Trainer<'a, D> {
    /// Opens the data, builds the encoder and optimizer on `device`, and restores a checkpoint
    /// when resuming.
    pub fn new(cfg: &'a Config, ds: Dataset, resume: Option<&Path>, obs: &'a mut dyn Observer, pool: Arc<rayon::ThreadPool>, device: D) -> Result<Self> {
        let t_start = Instant::now();
        let builder = Arc::new(BatchBuilder::new(ds.store.clone(), cfg.preprocess(), cfg.window())?.with_time_split(cfg.data.time_split)?);
        let inputs = Inputs::new(cfg, &ds)?;
        let b = cfg.data.batch_size;
        let enc_cfg = cfg.encoder(builder.channels());
        enc_cfg.validate().map_err(|e| cfg.encoder_error(e))?;
        // The ISFM's time channel is t / Sample_Rate: without a rate it takes 1 Hz, so a window's
        // times run to W seconds instead of W / fs, far outside what its patch embedding sees
        // with real rates (on CWRU without the column the probe fell from 75 % to 50 %).
        if enc_cfg.kind() == EncoderKind::Isfm {
            let missing = ds.ids.iter().filter(|&&id| ds.row(id).and_then(|r| r.sample_rate).is_none()).count();
            if missing > 0 {
                obs.message(&format!(
                    "warning: {missing} of {} Ids have no Sample_Rate in {}: the isfm's time channel takes 1 Hz for them (times up to {} s); give the table a Sample_Rate column",
                    ds.ids.len(),
                    ds.meta.path.display(),
                    cfg.data.window_size
                ));
            }
        }
        // What the model's sizes ask of memory is named by the keys that set them.
        let sized_by = || {
            let m = &cfg.model;
            let transformer = match m.name {
                EncoderKind::Isfm => {
                    let width = match m.output_dim {
                        Some(w) => format!("model.output_dim = {w}"),
                        None => format!("model.d_model = {}", m.d_model),
                    };
                    let d_ff = match m.d_ff {
                        Some(f) => format!("model.d_ff = {f}"),
                        None => format!("model.d_ff = {} (twice the width)", 2 * m.output_dim.unwrap_or(m.d_model)),
                    };
                    format!(
                        ", {width}, {d_ff}, model.num_patches = {}, model.patch_size_L = {}, model.patch_size_C = {}, model.e_layers = {}",
                        m.num_patches, m.patch_size_l, m.patch_size_c, m.e_layers
                    )
                }
                _ => String::new(),
            };
            let projection = m.projection_dim.map(|p| format!(", model.projection_dim = {p}")).unwrap_or_default();
            format!("model.name = {}, data.batch_size = {b}, data.window_size = {}, model.embedding_dim = {}{transformer}{projection}", enc_cfg.kind(), cfg.data.window_size, enc_cfg.embed)
        };
        let in_context = |e: engine::EngineError| match e {
            engine::EngineError::OverBudget(o) => TrainError::OverBudget(limits::OverBudget { what: format!("{} ({})", o.what, sized_by()), ..o }),
            other => engine_error(other),
        };
        // fp16 on a CPU is what PyTorch autocasts to only where the CPU has AVX512-FP16; bf16 is
        // every other CPU's mixed precision (as Lightning answers `16-mixed` on a CPU).
        engine::cpu::fp16_emulation().map_err(|reason| TrainError::Env { variable: "CID_CPU_FP16".into(), reason })?;
        if cfg.trainer.precision == crate::config::Precision::F16 && !engine::cpu::fp16_supported() {
            return Err(TrainError::Config {
                key: "trainer.precision".into(),
                reason: "16 (fp16 with loss scaling) runs on CPUs with AVX512-FP16, and this one has none; use bf16 (products in bf16, fp32 accumulation, no loss scaling needed) or 32 (CID_CPU_FP16=emulate runs fp16's numerics here, without its speed)".into(),
            });
        }
        let enc = enc_cfg.init(device, 2 * b, cfg.trainer.seed).map_err(in_context)?;
        let mut step = ContrastiveStep::new(enc, b, cfg.loss(), cfg.optimizer(), cfg.trainer.seed).map_err(in_context)?;
        step.set_precision(cfg.precision()).map_err(|e| TrainError::Config { key: "trainer.precision".into(), reason: e.to_string() })?;
        if let Some(dim) = cfg.model.projection_dim {
            step = step.with_projection(dim).map_err(in_context)?;
        }
        let mut state = TrainingState {
            step: 0,
            micro_step: 0,
            epoch: 0,
            batch: 0,
            seed: cfg.trainer.seed,
            best: None,
            checks_without_improvement: 0,
            monitor_value: None,
            config_yaml: cfg.to_yaml(),
            loss_scale: None,
            epoch_sums: checkpoint::EpochSums::default(),
        };
        let mut resumed_from = None;
        if let Some(dir) = resume {
            let resumed = checkpoint::load_full(dir, &mut step)?;
            state = resumed.state;
            if state.seed != cfg.trainer.seed {
                obs.message(&format!("note: resuming with seed {} from the checkpoint (config has {})", state.seed, cfg.trainer.seed));
            }
            match Config::from_yaml(&state.config_yaml, &[]) {
                // Written by another version: what the checks below compare is not known.
                Err(e) => obs.message(&format!("note: the checkpoint's configuration does not read under this version ({e}): its data.input and precision are not checked against this run's")),
                Ok(saved) => {
                    // The encoder learnt one view of the windows; another would continue it on
                    // inputs it never saw (a checkpoint's weights fit either when the lengths agree).
                    if saved.data.input != cfg.data.input {
                        return Err(TrainError::Config {
                            key: "data.input".into(),
                            reason: format!(
                                "the checkpoint in {} was trained on {} input, this run has {}: resume with --override data.input={}",
                                dir.display(),
                                saved.data.input,
                                cfg.data.input,
                                saved.data.input
                            ),
                        });
                    }
                    if saved.precision() != cfg.precision() {
                        obs.message(&format!(
                            "note: the checkpoint was trained with {} products, this run continues with {}: the losses will not match an uninterrupted run",
                            saved.precision(),
                            cfg.precision()
                        ));
                    }
                    let changed = data_differences(&saved.data, &cfg.data);
                    if !changed.is_empty() {
                        obs.message(&format!("note: this run's data differs from the checkpoint's ({}): it continues on other batches than an uninterrupted run", changed.join(", ")));
                    }
                }
            }
            // Checkpoints from here on record the configuration they are trained under.
            state.config_yaml = cfg.to_yaml();
            step.step = state.step;
            step.micro_step = state.micro_step;
            step.seed = state.seed;
            // The checkpoint resumed from holds this very state: nothing new to save until a step.
            resumed_from = Some((dir.to_path_buf(), state.step));
            obs.message(&format!("resumed from {} at step {}, epoch {}", dir.display(), state.step, state.epoch));
            if resumed.head_left_behind {
                obs.message("note: the checkpoint's projection head is not resumed (model.projection_dim is not set): the encoder continues without it");
            }
        }
        // The split into training and validation Ids is the run's seed's: a resumed run's is the
        // checkpoint's, whatever this config's `trainer.seed` says (as the sampler's and
        // validation's), so that no Id it validated on joins its training.
        let (train_ids, val_ids) = split_ids(&ds.ids, cfg.data.val_fraction, state.seed)?;
        let usable_train = builder.usable_ids(&train_ids)?;
        let usable_val = builder.usable_ids(&val_ids)?;
        for (id, reason) in builder.skips().entries() {
            obs.message(&format!("warning: skipping Id {id}: {reason}"));
        }
        let per_epoch = batches_per_epoch(usable_train.len(), b, true);
        if per_epoch == 0 {
            let skipped = train_ids.len() - usable_train.len();
            let why = if skipped > 0 { format!(" ({skipped} of the {} training Ids skipped, each named above with why)", train_ids.len()) } else { String::new() };
            // The key to name is the one that emptied the batch: where most skipped training
            // Ids were too short for one setting (the window, the stride, the time split), that
            // one; else the batch size.
            let training: std::collections::HashSet<u64> = train_ids.iter().copied().collect();
            let mut blamed: HashMap<&'static str, usize> = HashMap::new();
            for (_, reason) in builder.skips().entries().into_iter().filter(|(id, _)| training.contains(id)) {
                if let Some(key) = reason.setting() {
                    *blamed.entry(key).or_default() += 1;
                }
            }
            // Blamed only where those Ids would have filled the batch: one short Id among too few
            // for the batch anyway is no reason to name the window.
            let key = blamed.into_iter().max_by_key(|&(key, n)| (n, key)).filter(|&(_, n)| 2 * n > skipped && usable_train.len() + n >= b).map_or("data.batch_size", |(key, _)| key);
            return Err(TrainError::Config { key: key.into(), reason: format!("{} usable training Ids cannot fill one batch of {b}{why}", usable_train.len()) });
        }
        let accum = cfg.trainer.accumulate_grad_batches;
        let steps_per_epoch = per_epoch.div_ceil(accum) as u64;
        let horizon = (cfg.trainer.epochs as u64).saturating_mul(steps_per_epoch);
        let total_steps = cfg.trainer.max_steps.map_or(horizon, |m| m.min(horizon));
        if cfg.trainer.warmup_steps > total_steps {
            obs.message(&format!(
                "warning: trainer.warmup_steps = {} outlasts the run's {total_steps} optimizer steps: the learning rate never reaches task.lr = {} (at most {:.3e})",
                cfg.trainer.warmup_steps,
                cfg.task.lr,
                learning_rate(cfg, total_steps.max(1), total_steps)
            ));
        }

        // A run stopped mid-epoch continues at its batch of that epoch: one this run's epochs have.
        if state.batch > 0 && state.batch >= per_epoch {
            return Err(TrainError::Config {
                key: "data.batch_size".into(),
                reason: format!(
                    "the checkpoint stopped at batch {} of epoch {}, and with data.batch_size = {b} an epoch here has {per_epoch} batches: resume with the checkpoint's batch size",
                    state.batch, state.epoch
                ),
            });
        }
        // Only a run that can start writes its directory: not inside another run's (its
        // checkpoints are pruned and replaced by that run, which would delete this one).
        let run_dir = cfg.environment.save_dir.join(&cfg.environment.experiment_name);
        if let Some(outer) = run_dir.ancestors().skip(1).take_while(|a| *a != cfg.environment.save_dir.as_path()).find(|a| a.join("checkpoints").is_dir() || a.join(".lock").exists()) {
            return Err(TrainError::Config {
                key: "environment.experiment_name".into(),
                reason: format!("{:?} would put this run inside the run in {}; name a directory of its own", cfg.environment.experiment_name, outer.display()),
            });
        }
        let ckpt_dir = run_dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
        let lock = files::DirLock::try_acquire(&run_dir).map_err(|e| TrainError::io(run_dir.join(".lock"), e))?.ok_or_else(|| TrainError::Config {
            key: "environment.experiment_name".into(),
            reason: format!("another run is writing {} (it holds {}); give this run another name", run_dir.display(), run_dir.join(".lock").display()),
        })?;
        // What a killed run left half-written (its checkpoint's temporary directory).
        files::remove_stale_temporaries(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
        // And what it left half-removed: a replaced checkpoint no name links to any more.
        let orphans = checkpoint::remove_orphans(&ckpt_dir, resume);
        if !orphans.is_empty() {
            obs.message(&format!(
                "removed {} checkpoint director{} in {} that no name linked to (left by a run killed while replacing them): {}",
                orphans.len(),
                if orphans.len() == 1 { "y" } else { "ies" },
                ckpt_dir.display(),
                orphans.join(", ")
            ));
        }
        // Resumed into another run directory than the checkpoint's (a changed save_dir or
        // experiment_name): the checkpoint's run keeps its best checkpoints, and this directory's
        // record — its log, summary and ranking, of whatever ran here before — starts anew, as a
        // fresh run's does (Lightning, too, drops the ranking when a checkpoint's dirpath changes).
        // Early stopping keeps the best value so far: it is the training's, not the directory's.
        let home = |p: &Path| p.canonicalize().ok().and_then(|c| c.parent().map(Path::to_path_buf));
        let moved_from = resume.and_then(home).filter(|from| ckpt_dir.canonicalize().is_ok_and(|here| here != *from));
        if let Some(from) = &moved_from {
            let best = state.best.map_or(String::new(), |b| format!("; early stopping keeps its best value so far, {b:.5}"));
            obs.message(&format!(
                "note: this run writes its checkpoints to {}, not beside the one it resumes ({}): the checkpoints there are not ranked here, and this run ranks the ones it writes{best}",
                ckpt_dir.display(),
                from.display()
            ));
        }
        let fresh = resume.is_none() || moved_from.is_some();
        // A fresh run into a run directory that holds a run replaces its last checkpoint and log
        // (two trainings under one experiment_name, as two encoders of one protocol): said
        // before the first step, while the earlier run can still be kept.
        let earlier = ckpt_dir.join("last");
        if fresh && earlier.is_dir() {
            obs.message(&format!(
                "warning: {} holds an earlier run: this run replaces its last checkpoint and its log (continue it with --resume {}, or give this run another environment.experiment_name)",
                run_dir.display(),
                earlier.display()
            ));
        }
        let val_batches = validation_batches(&builder, &inputs, &usable_val, b, state.seed)?;
        // Said wherever validation was asked for and cannot run, and wherever early stopping
        // watches a validation metric without it (Lightning refuses to monitor a metric never
        // logged; a run here still trains, but says so instead of ignoring the setting in
        // silence). A run that turned validation off and stops on nothing hears nothing.
        let unmeasured = match cfg.trainer.monitor {
            Monitor::TrainLoss => None,
            m => Some(format!("trainer.monitor = {} is never measured, so no best checkpoint is kept and early stopping (trainer.patience) never stops the run", m.name())),
        };
        let stops_on_it = unmeasured.is_some() && cfg.early_stopping().is_some();
        if val_batches.is_empty() && (cfg.data.val_fraction > 0.0 || stops_on_it) {
            let why = if val_ids.is_empty() {
                format!("data.val_fraction = {} of {} Ids leaves no validation Id", cfg.data.val_fraction, ds.ids.len())
            } else {
                format!("{} of the {} validation Ids (data.val_fraction = {}) give a pair, and a validation batch needs 2", usable_val.len(), val_ids.len(), cfg.data.val_fraction)
            };
            obs.message(&format!("warning: no validation: {why}{}", unmeasured.map_or(String::new(), |u| format!("; {u}"))));
        }
        obs.start(total_steps, state.step);
        let top_k = if fresh { TopK::default() } else { TopK::load(&ckpt_dir) };
        let first_step = state.step;
        let mut t = Trainer {
            cfg,
            obs,
            pool,
            step,
            state,
            builder,
            inputs,
            augment: Augment::from_config(cfg),
            usable_train,
            usable_val,
            val_batches,
            run_dir,
            ckpt_dir,
            metrics: None,
            record_pending: true,
            fresh,
            first_step,
            _lock: lock,
            per_epoch,
            total_steps,
            epoch_start: Instant::now(),
            last: (f32::NAN, f32::NAN),
            window_start: (Instant::now(), 0),
            samples: 0,
            overflow_skips: 0,
            t_start,
            t_train: Instant::now(),
            stopped_early: false,
            last_ckpt: resumed_from.as_ref().map(|(dir, _)| dir.clone()),
            last_saved_step: resumed_from.map(|(_, step)| step),
            top_k,
        };
        if !fresh {
            t.begin_record()?;
        }
        Ok(t)
    }

    /// Whether the run has taken `trainer.max_steps` optimizer steps (or the most any run may:
    /// a checkpoint past them could not be resumed).
    pub fn reached_max_steps(&self) -> bool {
        self.state.step >= checkpoint::MAX_STEPS || self.cfg.trainer.max_steps.is_some_and(|m| self.state.step >= m)
    }

    /// The prefetching sampler, from where the run stands.
    pub fn sampler(&self) -> Result<BatchSampler> {
        let c = self.cfg;
        let sc = SamplerConfig { batch_size: c.data.batch_size, seed: self.state.seed, shuffle: true, drop_last: true, prefetch: c.data.prefetch, epochs: Some(c.trainer.epochs) };
        Ok(BatchSampler::in_pool(Some(self.pool.clone()), self.builder.clone(), &self.usable_train, sc, BatchPos { epoch: self.state.epoch, batch: self.state.batch })?)
    }

    /// Starts the run's record in its directory: `config.yaml`, and the metrics log continued
    /// (resumed) or started anew (fresh: the previous run's log, summary and top-k ranking
    /// describe another model). Called before a resumed run's first batch, and after a fresh
    /// run's first optimizer step.
    fn begin_record(&mut self) -> Result<()> {
        if !self.record_pending {
            return Ok(());
        }
        let fresh = self.fresh;
        let config = self.run_dir.join("config.yaml");
        files::write_atomic(&config, self.cfg.to_yaml().as_bytes()).map_err(|e| TrainError::io(&config, e))?;
        let metrics_path = self.run_dir.join("metrics.jsonl");
        let metrics = open_metrics_log(&metrics_path, fresh).map_err(|e| TrainError::io(&metrics_path, e))?;
        if fresh {
            let summary = self.run_dir.join("summary.json");
            if summary.exists() {
                std::fs::remove_file(&summary).map_err(|e| TrainError::io(&summary, e))?;
            }
            let previous = TopK::load(&self.ckpt_dir);
            if !previous.entries.is_empty() {
                let names: Vec<&str> = previous.entries.iter().map(|e| e.name.as_str()).collect();
                self.obs.message(&format!(
                    "this run's record in {} starts anew: the previous run's best checkpoints ({}) stay on disk but are no longer ranked",
                    self.run_dir.display(),
                    names.join(", ")
                ));
                self.top_k.save(&self.ckpt_dir)?;
            }
        }
        self.metrics = Some(metrics);
        self.record_pending = false;
        Ok(())
    }

    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        self.begin_record()?;
        let path = self.run_dir.join("metrics.jsonl");
        let metrics = self.metrics.as_mut().ok_or_else(|| TrainError::io(&path, std::io::Error::other("the metrics log is not open")))?;
        // One write per record: a record formatted straight into the file would be dozens of
        // writes, and a kill between two of them would leave part of a line.
        metrics.write_all(format!("{v}\n").as_bytes()).map_err(|e| TrainError::io(path, e))
    }

    /// One micro-batch (forward + backward), then the optimizer step where a step is due, then
    /// the end of the epoch where the epoch ends. `Break` when training should stop.
    pub fn train_batch(&mut self, pos: BatchPos, batch: &ContrastiveBatch) -> Result<ControlFlow<()>> {
        let accum = self.cfg.trainer.accumulate_grad_batches;
        let micro = pos.batch % accum;
        let (a, p) = if self.augment.is_off() {
            self.inputs.pair(batch)?
        } else {
            let seed = signal::rng::mix_seed(&[self.state.seed, 0xA06, self.step.micro_step]);
            let (a, p) = self.inputs.augmented_pair(batch, &self.augment, seed)?;
            (a.into(), p.into())
        };
        let rates = self.inputs.rates(&batch.ids);
        let out = self.step.forward_backward(Pairs::new(&a, &p).with_rates(&rates), micro > 0, 1.0 / accum as f32).map_err(engine_error)?;
        if !out.loss.is_finite() {
            return Err(TrainError::NonFinite { what: "loss", value: out.loss, step: self.state.step.saturating_add(1), epoch: pos.epoch, last_checkpoint: self.last_ckpt.clone() });
        }
        self.samples += batch.len();
        let sums = &mut self.state.epoch_sums;
        sums.loss += out.loss as f64;
        sums.accuracy += out.accuracy as f64;
        sums.batches += 1;
        self.last = (out.loss, out.accuracy);
        let end_of_epoch = pos.batch + 1 == self.per_epoch;
        let stepped = micro + 1 == accum || end_of_epoch;
        let mut stop = false;
        if stepped {
            stop |= self.optimizer_step(pos, out.loss, out.accuracy)?.is_break();
        }
        self.state.micro_step = self.step.micro_step;
        self.state.epoch = pos.epoch;
        self.state.batch = pos.batch + 1;
        if end_of_epoch {
            stop |= self.end_epoch(pos)?.is_break();
        }
        let hit_max = stepped && self.reached_max_steps();
        Ok(if stop || hit_max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    }

    /// The optimizer step and its log line; `Break` when the observer asks to stop.
    fn optimizer_step(&mut self, pos: BatchPos, loss: f32, accuracy: f32) -> Result<ControlFlow<()>> {
        let lr = learning_rate(self.cfg, self.step.step.saturating_add(1), self.total_steps);
        let (grad_norm, update) = self.step.optimizer_step(lr);
        if update == engine::Update::ScaledDown {
            // fp16's gradients overflowed at this loss scale: no update, the scale halved, and
            // the next batch tries again (the step is not counted). Said the first time, counted
            // in the summary.
            self.overflow_skips += 1;
            if self.overflow_skips == 1 {
                let scale = self.step.scaler.map_or(f32::NAN, |s| s.scale);
                self.obs.message(&format!(
                    "fp16: gradients overflowed at step {}; the step is skipped and the loss scale lowered to {scale} (the summary counts every such skip)",
                    self.step.step.saturating_add(1)
                ));
            }
            return Ok(ControlFlow::Continue(()));
        }
        if update == engine::Update::NonFinite {
            return Err(TrainError::NonFinite {
                what: "gradient norm",
                value: grad_norm.unwrap_or(f32::NAN),
                step: self.step.step.saturating_add(1),
                epoch: pos.epoch,
                last_checkpoint: self.last_ckpt.clone(),
            });
        }
        self.state.step = self.step.step;
        self.begin_record()?;
        let sl = StepLog {
            step: self.state.step,
            epoch: pos.epoch,
            loss,
            accuracy,
            lr,
            grad_norm,
            loss_scale: self.step.scaler.map(|s| s.scale),
            samples_per_s: (self.samples - self.window_start.1) as f64 / self.window_start.0.elapsed().as_secs_f64().max(1e-9),
        };
        let flow = self.obs.step(&sl);
        if self.state.step.is_multiple_of(self.cfg.trainer.log_every_n_steps) {
            let mut v = serde_json::to_value(&sl).map_err(|e| TrainError::Data(e.to_string()))?;
            v["kind"] = "step".into();
            self.log(v)?;
            self.window_start = (Instant::now(), self.samples);
        }
        Ok(flow)
    }

    /// Validation, checkpoints and early stopping at the end of an epoch; `Break` when early
    /// stopping ends the run. Validation and checkpoints share a cadence: every
    /// `check_val_every_n_epoch` epochs (and once more when training ends), so many short epochs
    /// do not spend their time writing checkpoints.
    pub fn end_epoch(&mut self, pos: BatchPos) -> Result<ControlFlow<()>> {
        self.state.epoch = pos.epoch + 1;
        self.state.batch = 0;
        let check_epoch = self.state.epoch.is_multiple_of(self.cfg.trainer.check_val_every_n_epoch);
        let (vl, va) = if check_epoch { self.validate()? } else { (None, None) };
        // A NaN here is no "best" to rank: the run has diverged, and says so before any
        // checkpoint of these weights is written.
        for (what, v) in [("loss", vl), ("accuracy", va)] {
            if let Some(value) = v.filter(|v| !v.is_finite()) {
                return Err(TrainError::NonFiniteValidation { what, value, step: self.state.step, epoch: pos.epoch });
            }
        }
        let es = self.state.epoch_sums;
        let el = EpochLog {
            epoch: pos.epoch,
            step: self.state.step,
            train_contrastive_loss: es.loss / es.batches.max(1) as f64,
            train_contrastive_acc: es.accuracy / es.batches.max(1) as f64,
            val_contrastive_loss: vl,
            val_contrastive_acc: va,
            seconds: self.epoch_start.elapsed().as_secs_f64(),
        };
        // The next epoch's sums start here, before this epoch's checkpoint records them.
        self.state.epoch_sums = checkpoint::EpochSums::default();
        self.obs.epoch(&el);
        let mut v = serde_json::to_value(&el).map_err(|e| TrainError::Data(e.to_string()))?;
        v["kind"] = "epoch".into();
        self.log(v)?;
        let monitored = match self.cfg.trainer.monitor {
            Monitor::ValLoss => vl,
            Monitor::ValAcc => va,
            Monitor::TrainLoss => check_epoch.then_some(el.train_contrastive_loss),
        };
        self.state.monitor_value = monitored;
        if let Some(v) = monitored {
            match self.state.best {
                Some(best) if !better(self.cfg.mode(), v, best, self.cfg.trainer.min_delta) => self.state.checks_without_improvement += 1,
                _ => {
                    self.state.best = Some(v);
                    self.state.checks_without_improvement = 0;
                }
            }
        }
        if check_epoch {
            self.checkpoint(monitored)?;
        }
        self.epoch_start = Instant::now();
        if let Some(patience) = self.cfg.early_stopping() {
            if monitored.is_some() && self.state.checks_without_improvement >= patience {
                self.obs.message(&format!(
                    "early stopping at epoch {}: {} did not improve for {} checks (best {:.5})",
                    pos.epoch,
                    self.cfg.trainer.monitor.name(),
                    self.state.checks_without_improvement,
                    self.state.best.unwrap_or(f64::NAN)
                ));
                self.stopped_early = true;
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Loss and accuracy over the fixed validation batches (evaluation mode).
    pub fn validate(&mut self) -> Result<(Option<f64>, Option<f64>)> {
        if self.val_batches.is_empty() {
            return Ok((None, None));
        }
        let (mut l, mut a, mut n) = (0.0, 0.0, 0.0);
        for v in &self.val_batches {
            let out = self.step.evaluate(Pairs::new(&v.anchor, &v.positive).with_rates(&v.rates)).map_err(engine_error)?;
            let w = v.rates.len() as f64;
            l += out.loss as f64 * w;
            a += out.accuracy as f64 * w;
            n += w;
        }
        Ok((Some(l / n), Some(a / n)))
    }

    /// The top-k checkpoint (where the monitored value qualifies) and `last`.
    pub fn checkpoint(&mut self, monitored: Option<f64>) -> Result<()> {
        self.begin_record()?;
        let weights_only = self.cfg.trainer.save_weights_only;
        if let (Some(v), k) = (monitored, self.cfg.trainer.save_top_k) {
            if k > 0 {
                let mode = self.cfg.mode();
                self.top_k.sort(mode);
                let qualifies = self.top_k.entries.len() < k || self.top_k.entries.last().is_some_and(|w| better(mode, v, w.value, 0.0));
                if qualifies {
                    let name = format!("best-epoch={}-step={}", self.state.epoch.saturating_sub(1), self.state.step);
                    checkpoint::save(&self.ckpt_dir.join(&name), &self.step, &self.state, weights_only)?;
                    self.top_k.entries.retain(|e| e.name != name);
                    self.top_k.entries.push(TopEntry { name, epoch: self.state.epoch.saturating_sub(1), step: self.state.step, value: v });
                    self.top_k.sort(mode);
                    let gone = self.top_k.entries.split_off(k.min(self.top_k.entries.len()));
                    // The index first: a kill between the two leaves a spare directory on disk,
                    // not an index naming one that is gone.
                    self.top_k.save(&self.ckpt_dir)?;
                    for gone in gone {
                        checkpoint::remove(&self.ckpt_dir.join(gone.name));
                    }
                }
            }
        }
        if self.cfg.trainer.save_last {
            self.save_last()?;
        }
        Ok(())
    }

    fn save_last(&mut self) -> Result<()> {
        let dir = self.ckpt_dir.join("last");
        checkpoint::save(&dir, &self.step, &self.state, self.cfg.trainer.save_weights_only)?;
        self.last_ckpt = Some(dir);
        self.last_saved_step = Some(self.state.step);
        Ok(())
    }

    /// The last checkpoint (where the run moved on since the last one) and the summary.
    pub fn finish(mut self) -> Result<Summary> {
        // A fresh record replaces its directory's only once this invocation has stepped: a fresh
        // run whose every step was skipped, or a resume into another directory that was already
        // at its end, leaves what the directory held as it was.
        let stepped = self.state.step > self.first_step;
        if !self.fresh || stepped {
            self.begin_record()?;
        }
        if self.cfg.trainer.save_last && self.last_saved_step != Some(self.state.step) && self.state.step > 0 {
            self.save_last()?;
        }
        let summary = Summary {
            run_dir: self.run_dir.clone(),
            steps: self.state.step,
            epochs_completed: self.state.epoch,
            train_ids: self.usable_train.len(),
            val_ids: self.usable_val.len(),
            skipped_ids: self.builder.skips().entries().iter().map(|(id, _)| *id).collect(),
            last_loss: self.last.0,
            last_accuracy: self.last.1,
            best_monitor: self.state.best,
            monitor: self.cfg.trainer.monitor.name().into(),
            stopped_early: self.stopped_early,
            seconds: self.t_start.elapsed().as_secs_f64(),
            samples_per_s: self.samples as f64 / self.t_train.elapsed().as_secs_f64().max(1e-9),
            last_checkpoint: self.last_ckpt.clone(),
            best_checkpoint: self.top_k.entries.first().map(|e| self.ckpt_dir.join(&e.name)),
            best_checkpoint_monitor: self.top_k.entries.first().map(|e| e.value),
            loss_scaling: self.step.scaler.map(|s| LossScaling { skipped_steps: self.overflow_skips, final_scale: s.scale }),
        };
        // A resume that trained nothing (the run was at its end) leaves the run's summary as it
        // was; so does a fresh record that did not begin.
        if (self.fresh && stepped) || (!self.fresh && self.samples > 0) {
            let path = self.run_dir.join("summary.json");
            files::write_atomic(&path, serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes()).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(summary)
    }
}

/// A validation batch as the encoder takes it (the input transform applied once, at the start).
struct ValidationBatch {
    anchor: Vec<f32>,
    positive: Vec<f32>,
    /// One sampling rate per pair.
    rates: Vec<f32>,
}

/// Fixed validation batches: the same windows at every check, so checks compare.
fn validation_batches(builder: &BatchBuilder, inputs: &Inputs, val: &[u64], b: usize, seed: u64) -> Result<Vec<ValidationBatch>> {
    // Every validation pair is held for the whole run: two views of each Id, as the encoder
    // takes them (plus the window they are formed from while a batch is built).
    let (w, c) = (builder.window().window_size, builder.channels());
    limits::check(|| format!("the validation set: {} Ids × 2 views of {w} × {c} float32 (data.val_fraction)", val.len()), limits::bytes(&[val.len(), 2, inputs.row_len().max(w * c)], 4))
        .map_err(TrainError::OverBudget)?;
    let mut out = Vec::new();
    for (i, chunk) in val.chunks(b).enumerate() {
        if chunk.len() < 2 {
            continue;
        }
        let batch = builder.build(chunk, signal::rng::mix_seed(&[seed, 0x7A1, i as u64]))?;
        let (anchor, positive) = inputs.pair(&batch)?;
        out.push(ValidationBatch { anchor: anchor.into_owned(), positive: positive.into_owned(), rates: inputs.rates(&batch.ids) });
    }
    Ok(out)
}

/// Each Id's sampling rate (Hz) from the table's `Sample_Rate`, 1 Hz where unknown.
pub fn sample_rates(ds: &Dataset) -> HashMap<u64, f32> {
    ds.ids.iter().map(|&id| (id, ds.row(id).and_then(|r| r.field("Sample_Rate")).and_then(|s| s.trim().parse::<f32>().ok()).filter(|r| r.is_finite() && *r > 0.0).unwrap_or(1.0))).collect()
}

/// The metrics log at `path`, for appending: emptied for a fresh run; a resumed run's log keeps
/// its whole records, a last line cut short by a kill (no newline after it) dropped, so that the
/// next record starts a line of its own.
fn open_metrics_log(path: &Path, fresh: bool) -> std::io::Result<std::fs::File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(fresh).open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        // The end of the last whole record: the last newline, looked for backwards a block at a time.
        let mut end = len;
        let mut block = [0u8; 4096];
        let whole = loop {
            let start = end.saturating_sub(block.len() as u64);
            let chunk = &mut block[..(end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(chunk)?;
            if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                break start + i as u64 + 1;
            }
            if start == 0 {
                break 0;
            }
            end = start;
        };
        if whole < len {
            file.set_len(whole)?;
        }
    }
    file.seek(SeekFrom::End(0))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_metrics_log_drops_a_line_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        // A record cut by a kill after two whole ones; then one with no whole line at all; then
        // a long log whose last newline lies more than a block back.
        let long = format!("{{\"a\":1}}\n{}", "x".repeat(10_000));
        for (before, fresh, after) in [
            ("{\"a\":1}\n{\"a\":2}\n{\"a\":", false, "{\"a\":1}\n{\"a\":2}\n{\"b\":3}\n"),
            ("{\"a\":", false, "{\"b\":3}\n"),
            (long.as_str(), false, "{\"a\":1}\n{\"b\":3}\n"),
            ("{\"a\":1}\n", false, "{\"a\":1}\n{\"b\":3}\n"),
            ("{\"a\":1}\n{\"a\":", true, "{\"b\":3}\n"),
        ] {
            std::fs::write(&path, before).unwrap();
            let mut log = open_metrics_log(&path, fresh).unwrap();
            log.write_all(b"{\"b\":3}\n").unwrap();
            drop(log);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), after, "from {before:?}, fresh {fresh}");
        }
        let mut log = open_metrics_log(&dir.path().join("new.jsonl"), false).unwrap();
        log.write_all(b"{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("new.jsonl")).unwrap(), "{}\n");
    }
}
