//! The ContrastiveID trainer: Id split, prefetching batches, accumulation, learning-rate schedule,
//! validation, early stopping, top-k and last checkpoints, metrics log, resume.
//!
//! Everything random is a pure function of the seed and a position (epoch, batch, forward
//! count), and every kernel is deterministic, so a run stopped at step k and resumed from its
//! checkpoint continues exactly as the uninterrupted run would.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{ContrastiveStep, CpuDevice, CudaDevice, Device, EncoderConfig};
use signal::sampler::{batches_per_epoch, BatchPos};
use signal::{BatchBuilder, BatchSampler, ContrastiveBatch, Dataset, Hdf5Store, Metadata, SamplerConfig, SignalStore};

use crate::checkpoint::{self, TrainingState};
use crate::config::{Config, Mode, Monitor, Scheduler};
use crate::error::{Result, TrainError};

/// One logged optimizer step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f32,
    pub grad_norm: Option<f32>,
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
    fn message(&mut self, msg: &str) {
        eprintln!("{msg}");
    }
}

/// An observer that prints messages only.
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
    pub best_monitor: Option<f64>,
    pub monitor: String,
    pub stopped_early: bool,
    pub seconds: f64,
    pub samples_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
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

/// Splits Ids into train and validation by a seeded shuffle.
pub fn split_ids(ids: &[u64], val_fraction: f64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut order = ids.to_vec();
    signal::rng::Rng::new(signal::rng::mix_seed(&[seed, 0x5917])).shuffle(&mut order);
    let mut n_val = (ids.len() as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 {
        n_val = n_val.max(2); // one pair cannot be contrasted
    }
    if n_val + 2 > ids.len() {
        n_val = 0;
    }
    let val: Vec<u64> = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    train.sort_unstable();
    let mut val_sorted = val;
    val_sorted.sort_unstable();
    (train, val_sorted)
}

/// Opens a store + table pair as a dataset, reporting mismatches.
pub fn open_dataset(data: &Path, meta: &Path) -> Result<Dataset> {
    let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(data)?);
    let meta = Metadata::load(meta)?;
    let ds = Dataset::join(store, meta);
    ds.warn_mismatches();
    if ds.ids.is_empty() {
        return Err(TrainError::Data(format!("no Id is in both {} and its table", data.display())));
    }
    Ok(ds)
}

fn better(mode: Mode, new: f64, best: f64, min_delta: f64) -> bool {
    match mode {
        Mode::Min => new < best - min_delta,
        Mode::Max => new > best + min_delta,
    }
}

/// Trains per `cfg` on the store + table; resumes from a checkpoint directory if given. The
/// device is `trainer.accelerator`: cpu, or gpu/cuda (GPU `trainer.device_index`).
pub fn train(cfg: &Config, data: &Path, meta: &Path, resume: Option<&Path>, obs: &mut dyn Observer) -> Result<Summary> {
    cfg.validate()?;
    if cfg.on_gpu() {
        let dev = CudaDevice::new(cfg.trainer.device_index).map_err(|e| TrainError::Config { key: "trainer.accelerator".into(), reason: format!("{} asked for, but {e}", cfg.trainer.accelerator) })?;
        train_on(cfg, data, meta, resume, obs, move || Ok(dev))
    } else {
        train_on(cfg, data, meta, resume, obs, || Ok(CpuDevice::new()))
    }
}

fn train_on<D: Device>(cfg: &Config, data: &Path, meta: &Path, resume: Option<&Path>, obs: &mut dyn Observer, device: impl FnOnce() -> Result<D> + Send) -> Result<Summary> {
    for k in &cfg.unused_keys {
        obs.message(&format!("note: config key `{k}` is accepted but not used by this trainer"));
    }
    let t_start = Instant::now();
    let ds = open_dataset(data, meta)?;
    let (train_ids, val_ids) = split_ids(&ds.ids, cfg.data.val_fraction, cfg.trainer.seed);
    let builder = Arc::new(BatchBuilder::new(ds.store.clone(), cfg.preprocess(), cfg.window())?.with_time_split(cfg.data.time_split)?);
    let b = cfg.data.batch_size;
    let enc_cfg = EncoderConfig { kind: cfg.model.name, input: cfg.data.window_size * builder.channels(), embed: cfg.model.embedding_dim };
    let threads = if cfg.data.num_workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.data.num_workers };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("compute-{i}")).build().map_err(|e| TrainError::Data(e.to_string()))?;
    let usable_train = builder.usable_ids(&train_ids)?;
    let usable_val = builder.usable_ids(&val_ids)?;
    let per_epoch = batches_per_epoch(usable_train.len(), b, true);
    if per_epoch == 0 {
        return Err(TrainError::Config {
            key: "data.batch_size".into(),
            reason: format!("{} usable training Ids cannot fill one batch of {b}", usable_train.len()),
        });
    }
    let accum = cfg.trainer.accumulate_grad_batches;
    let steps_per_epoch = per_epoch.div_ceil(accum) as u64;
    let horizon = cfg.trainer.epochs as u64 * steps_per_epoch;
    let total_steps = cfg.trainer.max_steps.map_or(horizon, |m| m.min(horizon));

    let run_dir = cfg.environment.save_dir.join(&cfg.environment.experiment_name);
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
    signal::write_atomic(&run_dir.join("config.yaml"), cfg.to_yaml().as_bytes())?;

    pool.install(|| -> Result<Summary> {
        let enc = enc_cfg.init(device()?, 2 * b, cfg.trainer.seed)?;
        let mut step = ContrastiveStep::new(enc, b, cfg.loss(), cfg.optimizer(), cfg.trainer.seed)?;
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
        };
        if let Some(dir) = resume {
            state = checkpoint::load_full(dir, &mut step.encoder)?;
            if state.seed != cfg.trainer.seed {
                obs.message(&format!("note: resuming with seed {} from the checkpoint (config has {})", state.seed, cfg.trainer.seed));
            }
            step.step = state.step;
            step.micro_step = state.micro_step;
            step.seed = state.seed;
            obs.message(&format!("resumed from {} at step {}, epoch {}", dir.display(), state.step, state.epoch));
        }
        let seed = state.seed;
        let metrics_path = run_dir.join("metrics.jsonl");
        let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(|e| TrainError::io(&metrics_path, e))?;
        let mut log = |v: serde_json::Value| -> Result<()> { writeln!(metrics, "{v}").map_err(|e| TrainError::io(&metrics_path, e)) };

        let val_batches = validation_batches(&builder, &usable_val, b, seed)?;
        obs.start(total_steps, state.step);
        let sampler = BatchSampler::new(
            builder.clone(),
            &usable_train,
            SamplerConfig { batch_size: b, seed, shuffle: true, drop_last: true, prefetch: cfg.data.prefetch, epochs: Some(cfg.trainer.epochs) },
            BatchPos { epoch: state.epoch, batch: state.batch },
        )?;
        let (mut ep_loss, mut ep_acc, mut ep_n) = (0.0f64, 0.0f64, 0usize);
        let mut ep_start = Instant::now();
        let mut last = (f32::NAN, f32::NAN);
        let mut window_start = (Instant::now(), 0usize);
        let mut stopped_early = false;
        let mut stop_requested = false;
        let mut samples = 0usize;
        let mut last_ckpt = None;
        let mut last_saved_step = None;
        let mut epochs_completed = state.epoch;
        let t_train = Instant::now();
        for item in sampler {
            let (pos, batch): (BatchPos, ContrastiveBatch) = item?;
            let micro = pos.batch % accum;
            let out = step.forward_backward(&batch.anchor, &batch.positive, micro > 0, 1.0 / accum as f32)?;
            if !out.loss.is_finite() {
                return Err(TrainError::NonFinite { step: state.step + 1, epoch: pos.epoch, loss: out.loss });
            }
            samples += batch.len();
            ep_loss += out.loss as f64;
            ep_acc += out.accuracy as f64;
            ep_n += 1;
            last = (out.loss, out.accuracy);
            let end_of_epoch = pos.batch + 1 == per_epoch;
            if micro + 1 == accum || end_of_epoch {
                let lr = learning_rate(cfg, step.step + 1, total_steps);
                let (grad_norm, skipped) = step.optimizer_step(lr);
                if skipped {
                    return Err(TrainError::NonFinite { step: step.step + 1, epoch: pos.epoch, loss: grad_norm.unwrap_or(f32::NAN) });
                }
                state.step = step.step;
                let sl = StepLog {
                    step: state.step,
                    epoch: pos.epoch,
                    loss: out.loss,
                    accuracy: out.accuracy,
                    lr,
                    grad_norm,
                    samples_per_s: (samples - window_start.1) as f64 / window_start.0.elapsed().as_secs_f64().max(1e-9),
                };
                stop_requested = obs.step(&sl).is_break();
                if state.step % cfg.trainer.log_every_n_steps == 0 {
                    log(serde_json::json!({"kind": "step", "step": sl.step, "epoch": sl.epoch, "loss": sl.loss, "accuracy": sl.accuracy, "lr": sl.lr, "grad_norm": sl.grad_norm, "samples_per_s": sl.samples_per_s}))?;
                    window_start = (Instant::now(), samples);
                }
            }
            state.micro_step = step.micro_step;
            state.epoch = pos.epoch;
            state.batch = pos.batch + 1;
            let hit_max = cfg.trainer.max_steps.is_some_and(|m| state.step >= m) && (micro + 1 == accum || end_of_epoch);
            if end_of_epoch {
                state.epoch = pos.epoch + 1;
                state.batch = 0;
                epochs_completed = state.epoch;
                // Validation and checkpoints share a cadence: every `check_val_every_n_epoch` epochs
                // (and once more when training ends), so many short epochs do not spend their
                // time writing checkpoints.
                let check_epoch = state.epoch % cfg.trainer.check_val_every_n_epoch == 0;
                let validate = !val_batches.is_empty() && check_epoch;
                let (vl, va) = if validate { run_validation(&mut step, &val_batches)? } else { (None, None) };
                let el = EpochLog {
                    epoch: pos.epoch,
                    step: state.step,
                    train_contrastive_loss: ep_loss / ep_n.max(1) as f64,
                    train_contrastive_acc: ep_acc / ep_n.max(1) as f64,
                    val_contrastive_loss: vl,
                    val_contrastive_acc: va,
                    seconds: ep_start.elapsed().as_secs_f64(),
                };
                obs.epoch(&el);
                log(serde_json::to_value(&el).map(|mut v| {
                    v["kind"] = "epoch".into();
                    v
                }).map_err(|e| TrainError::Data(e.to_string()))?)?;
                let monitored = match cfg.trainer.monitor {
                    Monitor::ValLoss => vl,
                    Monitor::ValAcc => va,
                    Monitor::TrainLoss => check_epoch.then_some(el.train_contrastive_loss),
                };
                state.monitor_value = monitored;
                if let Some(v) = monitored {
                    match state.best {
                        Some(best) if !better(cfg.trainer.mode, v, best, cfg.trainer.min_delta) => state.checks_without_improvement += 1,
                        _ => {
                            state.best = Some(v);
                            state.checks_without_improvement = 0;
                        }
                    }
                    if cfg.trainer.save_top_k > 0 {
                        save_top_k(&ckpt_dir, &step, &state, cfg)?;
                    }
                }
                if cfg.trainer.save_last && check_epoch {
                    let dir = ckpt_dir.join("last");
                    checkpoint::save(&dir, &step.encoder, &state)?;
                    last_ckpt = Some(dir);
                    last_saved_step = Some(state.step);
                }
                if cfg.trainer.enable_early_stopping && monitored.is_some() && state.checks_without_improvement >= cfg.trainer.patience {
                    obs.message(&format!(
                        "early stopping at epoch {}: {} did not improve for {} checks (best {:.5})",
                        pos.epoch, cfg.trainer.monitor.name(), state.checks_without_improvement, state.best.unwrap_or(f64::NAN)
                    ));
                    stopped_early = true;
                    break;
                }
                ep_loss = 0.0;
                ep_acc = 0.0;
                ep_n = 0;
                ep_start = Instant::now();
            }
            if hit_max || stop_requested {
                break;
            }
        }
        if cfg.trainer.save_last && last_saved_step != Some(state.step) && state.step > 0 {
            let dir = ckpt_dir.join("last");
            checkpoint::save(&dir, &step.encoder, &state)?;
            last_ckpt = Some(dir);
        }
        let seconds = t_start.elapsed().as_secs_f64();
        let summary = Summary {
            run_dir: run_dir.clone(),
            steps: state.step,
            epochs_completed,
            train_ids: usable_train.len(),
            val_ids: usable_val.len(),
            skipped_ids: builder.skips().entries().iter().map(|(id, _)| *id).collect(),
            last_loss: last.0,
            last_accuracy: last.1,
            best_monitor: state.best,
            monitor: cfg.trainer.monitor.name().into(),
            stopped_early,
            seconds,
            samples_per_s: samples as f64 / t_train.elapsed().as_secs_f64().max(1e-9),
            last_checkpoint: last_ckpt,
            best_checkpoint: best_checkpoint(&ckpt_dir, cfg.trainer.mode),
        };
        signal::write_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
        Ok(summary)
    })
}

/// Fixed validation batches: the same windows at every check, so checks compare.
fn validation_batches(builder: &BatchBuilder, val: &[u64], b: usize, seed: u64) -> Result<Vec<ContrastiveBatch>> {
    let mut out = Vec::new();
    for (i, chunk) in val.chunks(b).enumerate() {
        if chunk.len() < 2 {
            continue;
        }
        out.push(builder.build(chunk, signal::rng::mix_seed(&[seed, 0x7A1, i as u64]))?);
    }
    Ok(out)
}

fn run_validation<D: Device>(step: &mut ContrastiveStep<D>, batches: &[ContrastiveBatch]) -> Result<(Option<f64>, Option<f64>)> {
    let (mut l, mut a, mut n) = (0.0, 0.0, 0.0);
    for b in batches {
        let out = step.evaluate(&b.anchor, &b.positive)?;
        let w = b.len() as f64;
        l += out.loss as f64 * w;
        a += out.accuracy as f64 * w;
        n += w;
    }
    Ok((Some(l / n), Some(a / n)))
}

fn best_dirs(ckpt_dir: &Path) -> Vec<(f64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(ckpt_dir) else { return Vec::new() };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("best-") || name.ends_with(".old") || name.contains(".tmp") {
            continue;
        }
        if let Some(val) = name.rsplit('=').next().and_then(|s| s.parse::<f64>().ok()) {
            v.push((val, e.path()));
        }
    }
    v
}

fn best_checkpoint(ckpt_dir: &Path, mode: Mode) -> Option<PathBuf> {
    let mut v = best_dirs(ckpt_dir);
    v.sort_by(|a, b| if mode == Mode::Min { a.0.total_cmp(&b.0) } else { b.0.total_cmp(&a.0) });
    v.into_iter().next().map(|(_, p)| p)
}

/// Saves this epoch among the best `save_top_k` by the monitor, dropping the worst.
fn save_top_k<D: Device>(ckpt_dir: &Path, step: &ContrastiveStep<D>, state: &TrainingState, cfg: &Config) -> Result<()> {
    let Some(v) = state.monitor_value else { return Ok(()) };
    let mut existing = best_dirs(ckpt_dir);
    let mode = cfg.trainer.mode;
    existing.sort_by(|a, b| if mode == Mode::Min { a.0.total_cmp(&b.0) } else { b.0.total_cmp(&a.0) });
    let k = cfg.trainer.save_top_k;
    let qualifies = existing.len() < k || existing.last().is_some_and(|w| better(mode, v, w.0, 0.0));
    if !qualifies {
        return Ok(());
    }
    let name = format!("best-epoch={}-step={}-{}={:.6}", state.epoch.saturating_sub(1), state.step, cfg.trainer.monitor.name(), v);
    checkpoint::save(&ckpt_dir.join(name), &step.encoder, state)?;
    let mut all = best_dirs(ckpt_dir);
    all.sort_by(|a, b| if mode == Mode::Min { a.0.total_cmp(&b.0) } else { b.0.total_cmp(&a.0) });
    for (_, p) in all.into_iter().skip(k) {
        let _ = std::fs::remove_dir_all(p);
    }
    Ok(())
}
