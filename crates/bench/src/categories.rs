//! The six benchmark categories of the seed document, each measured on the real pipeline and the
//! real engine: training, data processing, model, scalability, hardware, quality.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use engine::{ContrastiveStep, CpuDevice, Device, EncoderConfig, EncoderKind, InfoNceConfig, Mode, OptimizerConfig, Pairs, Precision};
use signal::synth::{generate, SynthConfig};
use signal::{BatchBuilder, BatchPos, BatchSampler, Complexity, ContrastiveBatch, Hdf5Store, Layout, Normalization, PreprocessConfig, SamplerConfig, SignalStore, WindowConfig, WindowStrategy};

use crate::error::{BenchError, Result};
use crate::measure::{method, peak_rss_delta, rss_mb, time_ms, time_ms_batched, time_steps, total_memory_mb};
use crate::registry::{CategoryKind, DeviceSel, MetricId, MetricName};
use crate::results::{Category, Metric, Status, SweepPoint};
use crate::stats::summarize;

/// What every category needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    /// Compute threads (default: all cores).
    pub threads: usize,
    /// Scratch directory for generated stores.
    pub work_dir: PathBuf,
    /// Dataset of the quality category (default: a generated one).
    pub quality_data: Option<(PathBuf, PathBuf)>,
    /// The encoder of the training, scalability and hardware categories (default mlp-medium, the
    /// seed's workload; the model category measures every encoder).
    pub encoder: EncoderKind,
    /// The encoder the quality category trains (default cnn).
    pub quality_encoder: EncoderKind,
    /// Told of each step inside a long category (a sweep's points), for a progress display.
    pub progress: Progress,
}

/// A callback told of progress inside a category, one short line per unit of work (not part of
/// the results or the log).
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<dyn Fn(&str) + Send + Sync>>);

impl Progress {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Progress(Some(std::sync::Arc::new(f)))
    }

    fn tell(&self, line: impl FnOnce() -> String) {
        if let Some(f) = &self.0 {
            f(&line());
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(set)" } else { "Progress(none)" })
    }
}

impl Settings {
    fn reps(&self) -> (usize, usize) {
        if self.quick {
            (3, 10)
        } else {
            (10, 50)
        }
    }
}

fn timed(category: CategoryKind, config: &str, name: MetricName, samples: Vec<f64>, warmup: usize) -> Metric {
    let s = summarize(&samples);
    Metric { samples, summary: Some(s.clone()), ..Metric::new(MetricId::new(category, config, name), s.median, true, method(warmup, s.n)) }
}

fn rate(category: CategoryKind, config: &str, name: MetricName, samples: Vec<f64>, how: String) -> Metric {
    let s = summarize(&samples);
    Metric { samples, summary: Some(s.clone()), ..Metric::new(MetricId::new(category, config, name), s.median, false, how) }
}

/// A single measurement (one timing, one RSS reading): shown, not compared with a baseline.
fn value(category: CategoryKind, config: &str, name: MetricName, v: f64, lower_is_better: bool, how: &str) -> Metric {
    Metric::new(MetricId::new(category, config, name), v, lower_is_better, how)
}

/// A counted or computed value, not timed (`Metric::exact`; see [`crate::stats::compare`]).
fn exact(category: CategoryKind, config: &str, name: MetricName, v: f64, lower_is_better: bool, how: &str) -> Metric {
    Metric { exact: true, ..value(category, config, name, v, lower_is_better, how) }
}

/// Deterministic uniform(-1, 1) data.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| BenchError::Input(e.to_string()))
}

/// A training step of `cfg` for batches of `b` pairs.
fn step_for(cfg: &EncoderConfig, b: usize) -> Result<ContrastiveStep<CpuDevice>> {
    let enc = cfg.init(CpuDevice::new(), 2 * b, 0)?;
    Ok(ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0)?)
}

/// What [`timed_steps`] measured.
struct TimedSteps {
    /// Step times after warm-up, ms.
    times: Vec<f64>,
    /// Contrastive accuracy of the last step.
    accuracy: f32,
    /// The device's memory after the steps, by what holds it.
    memory: MemoryUse,
}

/// A device's memory after training steps, by what holds it: where reduced precision could save.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct MemoryUse {
    /// Parameters, their gradients and both Adam moments: fp32 in every precision (master
    /// weights and optimizer state, as PyTorch's autocast keeps them).
    state: usize,
    /// Every other tensor: activations and their gradients, the batch, running statistics, and
    /// the copies some encoders keep beside the state (a second view's gradient arena, a
    /// convolution's weights rearranged by tap).
    activations: usize,
    /// Packing buffers, strips, reductions: what the kernels need beside the tensors.
    scratch: usize,
}

impl MemoryUse {
    /// The memory of a step's device, split by the parameters it trains (its own and a
    /// projection head's, four fp32 arenas of them on the device).
    fn of(st: &ContrastiveStep<CpuDevice>) -> Self {
        let device = &st.encoder.device;
        let (tensors, total) = (device.tensor_bytes(), device.allocated_bytes());
        let trained = st.encoder.params().len() + st.head().map_or(0, |h| h.arenas().params.len());
        let state = 16 * trained;
        debug_assert!(state <= tensors, "four arenas of {trained} parameters in {tensors} bytes of tensors");
        MemoryUse { state, activations: tensors.saturating_sub(state), scratch: total.saturating_sub(tensors) }
    }

    fn total(&self) -> usize {
        self.state + self.activations + self.scratch
    }

    /// `12.7 MB = 11.0 state + 1.0 activations + 0.7 scratch`.
    fn describe(&self) -> String {
        let mb = |b: usize| b as f64 / 1e6;
        format!("{:.1} MB = {:.1} state + {:.1} activations + {:.1} scratch", mb(self.total()), mb(self.state), mb(self.activations), mb(self.scratch))
    }
}

/// Trains `cfg` on the CPU in `precision` for `warmup + n` steps on one pair of batches.
fn timed_steps(cfg: &EncoderConfig, b: usize, precision: Precision, (a, p): (&[f32], &[f32]), warmup: usize, n: usize) -> Result<TimedSteps> {
    let mut st = step_for(cfg, b)?;
    st.set_precision(precision)?;
    let mut accuracy = 0.0;
    let times = time_steps(warmup, n, || {
        let out = st.train_step(Pairs::new(a, p))?;
        accuracy = out.accuracy;
        Ok(out)
    })?;
    Ok(TimedSteps { times, accuracy, memory: MemoryUse::of(&st) })
}

/// The pieces of one step, each timed alone: forward of 2B rows, backward, InfoNCE, optimizer.
fn step_parts(st: &mut ContrastiveStep<CpuDevice>, b: usize, warmup: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut fwd, mut bwd, mut nce, mut opt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let d = st.encoder.cfg.embed;
    for i in 0..warmup + n {
        let t = Instant::now();
        let z = st.encoder.forward(2 * b, 2, Mode::Train { key: i as u64 });
        let t_f = t.elapsed().as_secs_f64() * 1e3;
        let dz = st.encoder.dz_buffer(2 * b);
        let t = Instant::now();
        st.encoder.device.infonce(z, Some(dz), b, d, 0.07, false, 1.0);
        let t_n = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        st.encoder.backward(2 * b, dz, false);
        let t_b = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        st.optimizer_step(1e-4);
        let t_o = t.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            fwd.push(t_f);
            nce.push(t_n);
            bwd.push(t_b);
            opt.push(t_o);
        }
    }
    (fwd, bwd, nce, opt)
}

/// Training: full steps of the seed's three configurations (mlp-medium).
pub fn training(s: &Settings) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Training);
    let (warmup, n) = s.reps();
    let pool = Arc::new(pool(s.threads)?);
    for (config, b, w) in [("small", 16, 512), ("medium", 32, 1024), ("large", 64, 2048)] {
        pool.install(|| -> Result<()> {
            let (a, p) = (noise(b * w, 1), noise(b * w, 2));
            let (st, mem) = peak_rss_delta(|| -> Result<_> {
                let mut st = step_for(&EncoderConfig::new(s.encoder, w, 1), b)?;
                for _ in 0..warmup {
                    st.train_step(Pairs::new(&a, &p))?;
                }
                Ok(st)
            });
            let mut st = st?;
            let rss_before = rss_mb();
            let steps = time_steps(0, n, || st.train_step(Pairs::new(&a, &p)))?;
            let rss_after = rss_mb();
            cat.metrics.push(rate(CategoryKind::Training, config, MetricName::SamplesPerS, steps.iter().map(|t| b as f64 / t * 1e3).collect(), method(warmup, n)));
            cat.metrics.push(timed(CategoryKind::Training, config, MetricName::BatchTimeMs, steps, warmup));
            let (fwd, bwd, nce, opt) = step_parts(&mut st, b, 2, n);
            cat.metrics.push(timed(CategoryKind::Training, config, MetricName::ForwardMs, fwd, 2));
            cat.metrics.push(timed(CategoryKind::Training, config, MetricName::BackwardMs, bwd, 2));
            cat.metrics.push(timed(CategoryKind::Training, config, MetricName::InfonceMs, nce, 2));
            cat.metrics.push(timed(CategoryKind::Training, config, MetricName::OptimizerMs, opt, 2));
            // A leak check: the process's resident memory after the timed steps against before
            // them (a step allocates nothing after warm-up, so ~0).
            if let (Some(before), Some(after)) = (rss_before, rss_after) {
                let how = format!("(RSS after the {n} timed steps − RSS before them) / RSS before: a leak shows here");
                cat.metrics.push(value(CategoryKind::Training, config, MetricName::MemoryGrowthRate, (after - before).max(0.0) / before, true, &how));
            }
            let dev_mb = st.encoder.device.allocated_bytes() as f64 / 1e6;
            cat.metrics.push(exact(CategoryKind::Training, config, MetricName::MemoryMb, dev_mb, true, "engine memory held: weights, gradients, Adam moments, activation buffers, scratch (exact)"));
            cat.metrics.push(exact(CategoryKind::Training, config, MetricName::MemoryPerSampleMb, dev_mb / b as f64, true, "engine memory held / B"));
            if let Some(m) = mem {
                cat.metrics.push(value(CategoryKind::Training, config, MetricName::RssRiseMb, m, true, "peak RSS rise over building the step and the warm-up steps (allocator reuse can hide memory)"));
            }
            Ok(())
        })?;
    }
    pool.install(|| epochs(s, &mut cat, pool.clone()))?;
    Ok(cat)
}

/// Epochs: whole passes over a generated store (medium, 1000 Ids × 4096 samples, a tenth in
/// quick mode) through the run's pipeline — the prefetching sampler drawing and standardizing
/// the windows on the pool, the step training on each batch as it comes (medium's B = 32,
/// W = 1024) —, each timed start to end: `epoch_time_min`, the seed's `epoch_time_minutes`, on
/// a dataset it leaves unnamed.
fn epochs(s: &Settings, cat: &mut Category, pool: Arc<rayon::ThreadPool>) -> Result<()> {
    const EPOCHS: usize = 3;
    let (b, w) = (32, 1024);
    let count = if s.quick { 100 } else { 1000 };
    let cfg = SynthConfig { complexity: Complexity::Medium, count, length: 4096, channels: 1, seed: 7, ..Default::default() };
    let dir = s.work_dir.join("epochs");
    let g = generate(&cfg, &dir, "epochs", Layout::Contiguous, &|_| {})?;
    let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(&g.store)?);
    let ids: Vec<u64> = store.samples().iter().map(|x| x.id).collect();
    let pre = PreprocessConfig { normalization: Normalization::Standardization, truncate_length: None };
    let builder = Arc::new(BatchBuilder::new(store, pre, WindowConfig { window_size: w, ..Default::default() })?);
    let mut st = step_for(&EncoderConfig::new(s.encoder, w, 1), b)?;
    let sampler = BatchSampler::in_pool(Some(pool), builder, &ids, SamplerConfig { batch_size: b, epochs: Some(EPOCHS + 1), ..Default::default() }, BatchPos::default())?;
    // The first epoch warms up (the store's pages, each Id's first check, the step's buffers).
    let mut minutes = Vec::with_capacity(EPOCHS);
    let (mut epoch, mut started, mut batches) = (0, Instant::now(), 0usize);
    for item in sampler {
        let (pos, batch) = item?;
        if pos.epoch != epoch {
            if epoch > 0 {
                minutes.push(started.elapsed().as_secs_f64() / 60.0);
            }
            (epoch, started) = (pos.epoch, Instant::now());
        }
        st.train_step(Pairs::new(&batch.anchor, &batch.positive))?;
        batches += 1;
    }
    minutes.push(started.elapsed().as_secs_f64() / 60.0);
    let _ = std::fs::remove_dir_all(&dir);
    if minutes.len() != EPOCHS {
        return Err(BenchError::Input(format!("epochs: {} timed epochs of {EPOCHS} ({batches} batches in all)", minutes.len())));
    }
    let how = format!(
        "{EPOCHS} epochs after one of warm-up, each timed whole: {count} Ids × 4096 samples (medium), B = {b}, W = {w}, {} batches an epoch, windows drawn on the pool as the steps run",
        count / b
    );
    cat.metrics.push(Metric { method: how, ..timed(CategoryKind::Training, "medium", MetricName::EpochTimeMin, minutes, 1) });
    Ok(())
}

/// Data processing on the real pipeline: generation, store reads from disk, windowing and batch
/// preparation, per complexity.
pub fn data(s: &Settings) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Data);
    let scale = if s.quick { 10 } else { 1 };
    let pool = pool(s.threads)?;
    for (config, complexity, count, length) in [("simple", Complexity::Simple, 1000, 2048), ("medium", Complexity::Medium, 1000, 4096), ("complex", Complexity::Complex, 2000, 8192)] {
        let count = count / scale;
        let cfg = SynthConfig { complexity, count, length, channels: 1, seed: 0, ..Default::default() };
        let dir = s.work_dir.join(format!("data-{config}"));
        let (res, mem) = peak_rss_delta(|| -> Result<()> {
            pool.install(|| -> Result<()> {
                let t = Instant::now();
                let g = generate(&cfg, &dir, config, Layout::Contiguous, &|_| {})?;
                let gen_s = t.elapsed().as_secs_f64();
                cat.metrics.push(value(CategoryKind::Data, config, MetricName::GenerationSignalsPerS, count as f64 / gen_s, false, "synthetic generation + HDF5 write, one run"));
                // Store reads: every signal whole, each pass on a freshly opened store, read from
                // the disk where the page cache lets go of the file (the store was just written:
                // from the cache, the rate would be memory's, not the disk's).
                let mut mbps = Vec::new();
                let mut cold = true;
                for _ in 0..PASSES {
                    cold &= files::evict_from_page_cache(&g.store).unwrap_or(false);
                    let store = Hdf5Store::open(&g.store)?;
                    let t = Instant::now();
                    let mut bytes = 0usize;
                    for sample in store.samples() {
                        bytes += store.read(sample.id)?.len() * 4;
                    }
                    mbps.push(bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
                }
                let cache = if cold { "the file evicted from the page cache before each pass" } else { "page cache warm: this system would not evict the file" };
                cat.metrics.push(rate(CategoryKind::Data, config, MetricName::StoreReadMbPerS, mbps, format!("whole-signal reads of every Id from a freshly opened store ({cache}), {PASSES} passes")));
                let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(&g.store)?);
                let ids: Vec<u64> = store.samples().iter().map(|x| x.id).collect();
                let pre = PreprocessConfig { normalization: Normalization::Standardization, truncate_length: None };
                let builder = BatchBuilder::new(store.clone(), pre, WindowConfig { window_size: 1024, ..Default::default() })?;
                builder.usable_ids(&ids)?;
                // Windowing: 8 random windows per Id, normalized, in windows/s.
                let wcfg = WindowConfig { window_size: 1024, stride: 1024, num_window: 8, strategy: WindowStrategy::Random };
                let mut wps = Vec::new();
                for rep in 0..PASSES as u64 {
                    let t = Instant::now();
                    let mut nwin = 0;
                    for &id in &ids {
                        nwin += builder.windows_of(id, (0, length), &wcfg, rep)?.len() / 1024;
                    }
                    wps.push(nwin as f64 / t.elapsed().as_secs_f64());
                }
                cat.metrics.push(rate(CategoryKind::Data, config, MetricName::WindowsPerS, wps, format!("8 random windows of 1024 per Id, read and standardized, {PASSES} passes")));
                // Batch preparation: contrastive batches of 16/32/64 Ids, W = 1024.
                for b in [16, 32, 64] {
                    let mut batch = ContrastiveBatch::default();
                    let mut k = 0u64;
                    let chunks: Vec<&[u64]> = ids.chunks(b).filter(|c| c.len() == b).collect();
                    // A build that fails, or leaves Ids out, would be timed as a fast one: the
                    // first such build fails the data category instead, naming it (as a failed
                    // training step fails its timing).
                    let mut failure: Option<BenchError> = None;
                    // Warm-up: every batch built once, so that the timed builds find each Id's pages
                    // mapped (first touches of a memory-mapped store are page faults, whose cost
                    // moved by tens of % between runs).
                    let (t, calls) = time_ms_batched(chunks.len(), (chunks.len() * 2).clamp(10, 200), 1.0, || {
                        let c = chunks[(k as usize) % chunks.len()];
                        match builder.build_into(c, k, &mut batch) {
                            Err(e) => _ = failure.get_or_insert(e.into()),
                            Ok(()) if batch.len() < b => {
                                _ = failure.get_or_insert(BenchError::Input(format!("batch preparation, B = {b}: a batch held {} of its {b} Ids (Ids {:?} skipped)", batch.len(), batch.skipped)))
                            }
                            Ok(()) => {}
                        }
                        k += 1;
                    });
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    let metric = timed(CategoryKind::Data, &format!("{config}.B{b}"), MetricName::BatchPrepMs, t, chunks.len());
                    let method = format!("{}, each sample the mean of {calls} builds", metric.method);
                    cat.metrics.push(Metric { method, ..metric });
                }
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            })
        });
        res?;
        if let Some(m) = mem {
            cat.metrics.push(value(CategoryKind::Data, config, MetricName::MemoryMb, m, true, "peak RSS rise over the whole data section of this complexity"));
        }
    }
    Ok(cat)
}

/// The model category's encoders: the seed's three MLPs (simple 512→64, medium 1024→128,
/// complex 2048→256) and the reference's `cnn` and `isfm` (its isfm-small dimensions) on
/// two-channel windows of 1024.
fn model_configs() -> Vec<(&'static str, EncoderConfig)> {
    let mlp = |kind, w, embed| EncoderConfig { embed, ..EncoderConfig::new(kind, w, 1) };
    let named = |n: &str| engine::workloads::named(n).map(|w| w.encoder);
    let mut out = vec![("simple", mlp(EncoderKind::MlpSimple, 512, 64)), ("medium", mlp(EncoderKind::MlpMedium, 1024, 128)), ("complex", mlp(EncoderKind::MlpComplex, 2048, 256))];
    out.extend(named("cnn-medium").map(|c| ("cnn", c)));
    out.extend(named("isfm-small").map(|c| ("isfm", c)));
    out
}

/// Model: forward, backward, InfoNCE, memory and size of every encoder at batches 16/32/64.
pub fn model(s: &Settings) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Model);
    let (_, n) = s.reps();
    let pool = pool(s.threads)?;
    for (config, ecfg) in model_configs() {
        let embed = ecfg.embed;
        let params = ecfg.param_count() as f64;
        cat.metrics.push(exact(CategoryKind::Model, config, MetricName::Parameters, params, true, &format!("Σ weights + biases ({})", ecfg.kind())));
        cat.metrics.push(exact(CategoryKind::Model, config, MetricName::SizeMb, params * 4.0 / 1e6, true, "f32 parameters"));
        cat.metrics.push(exact(CategoryKind::Model, config, MetricName::TrainingStateMb, params * 16.0 / 1e6, true, "parameters + gradients + two Adam moments, f32"));
        for b in [16, 32, 64] {
            pool.install(|| -> Result<()> {
                let mut enc = ecfg.init(CpuDevice::new(), 2 * b, 0)?;
                let x = noise(b * ecfg.input(), 3);
                enc.set_input(0, &x)?;
                enc.set_sample_rates(0, &vec![12_000.0; b])?;
                let fwd = time_ms(3, n, || {
                    enc.forward(b, 1, Mode::Eval);
                });
                let mut bwd = Vec::new();
                for i in 0..n + 2 {
                    enc.forward(b, 1, Mode::Train { key: i as u64 });
                    let dz = enc.dz_buffer(b);
                    let t = Instant::now();
                    enc.backward(b, dz, false);
                    if i >= 2 {
                        bwd.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                let mut dev = CpuDevice::new();
                let (z, dz) = (dev.alloc(2 * b * embed)?, dev.alloc(2 * b * embed)?);
                dev.upload(z, &noise(2 * b * embed, 4));
                let nce = time_ms(3, n, || {
                    dev.infonce(z, Some(dz), b, embed, 0.07, false, 1.0);
                });
                let c = format!("{config}.B{b}");
                cat.metrics.push(timed(CategoryKind::Model, &c, MetricName::ForwardMs, fwd, 3));
                cat.metrics.push(timed(CategoryKind::Model, &c, MetricName::BackwardMs, bwd, 2));
                cat.metrics.push(timed(CategoryKind::Model, &c, MetricName::InfonceMs, nce, 3));
                cat.metrics.push(exact(
                    CategoryKind::Model,
                    &c,
                    MetricName::MemoryMb,
                    enc.device.allocated_bytes() as f64 / 1e6,
                    true,
                    "engine memory held: weights, gradients, Adam state, activation buffers for 2B rows (exact)",
                ));
                let plan = enc.device.kernel_plan();
                if b == 32 && !plan.is_empty() {
                    cat.notes.push(format!("{c}: the GEMM shapes of forward and backward measured fastest on: {}", engine::cpu::plan::summary(&plan)));
                }
                Ok(())
            })?;
        }
    }
    Ok(cat)
}

/// Memory a training step of `cfg` on batches of `b` pairs needs, MB, measured rather than
/// modelled: the engine's memory is affine in the rows (arenas, then buffers per row), so two
/// small builds give it, plus the loss's `B × B` scratch. Lets a sweep stop before it cannot
/// allocate instead of after.
fn estimated_step_mb(cfg: &EncoderConfig, b: usize) -> Result<f64> {
    let held = |rows: usize| -> Result<f64> { Ok(cfg.init(CpuDevice::new(), rows, 0)?.device.allocated_bytes() as f64) };
    let (one, two) = (held(2)?, held(4)?);
    let per_pair = two - one;
    let loss = 4.0 * engine::loss::infonce_scratch_floats(b, cfg.embed) as f64;
    Ok((one + per_pair * (b as f64 - 1.0) + loss) / 1e6)
}

/// Passes over a store for its read and windowing rates: enough for a confidence interval, so
/// that a baseline comparison can call a change in them (each pass takes milliseconds).
const PASSES: usize = crate::stats::MIN_CI_SAMPLES;

/// Why a sweep point could not run: the memory it would have needed (where known) and the note.
struct Stopped {
    memory_mb: Option<f64>,
    note: String,
}

/// Scalability: batch 4 → 256 at W = 1024 and window 256 → 8192 at B = 32, as in the seed, then
/// doubling on until a limit (time per step, memory, or a hard cap). Quick mode stops at the
/// seed's lists.
pub fn scalability(s: &Settings) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Scalability);
    let pool = pool(s.threads)?;
    let mem_limit = total_memory_mb().unwrap_or(8192.0) * 0.5;
    let time_limit_ms = if s.quick { 1500.0 } else { 5000.0 };
    let (warmup, n) = if s.quick { (1, 2) } else { (2, 5) };
    let axes: [(&str, Vec<usize>, usize, usize); 2] = [("batch", vec![4, 8, 16, 32, 64, 128, 256], 1 << 16, 1024), ("window", vec![256, 512, 1024, 2048, 4096, 8192], 1 << 20, 32)];
    for (axis, seed_list, cap, fixed) in axes {
        let mut x = seed_list[0];
        let last_seed = *seed_list.last().unwrap_or(&x);
        // Why the sweep ended before its list or cap, where it did: one note for every cause.
        let (mut stop, mut stopped_on_time) = (None::<String>, false);
        loop {
            let (b, w) = if axis == "batch" { (x, fixed) } else { (fixed, x) };
            let ecfg = EncoderConfig::new(s.encoder, w, 1);
            // A point that cannot run ends its axis's sweep, its reason in its note; the points
            // before it stay.
            let failed = |memory_mb: Option<f64>, note: String| Stopped { memory_mb, note };
            // The memory budget bounds each request the engine makes (an encoder's arena is one):
            // a point past it stops where its build is refused, here or in the step below.
            let est = match estimated_step_mb(&ecfg, b) {
                Ok(est) if est > mem_limit => Err(failed(Some(est), format!("needs ~{est:.0} MB, more than {mem_limit:.0} MB, half the machine"))),
                Ok(est) => Ok(est),
                Err(e) => Err(failed(None, e.to_string())),
            };
            let point = est.and_then(|_| {
                let measured = pool.install(|| -> Result<(crate::stats::Summary, Option<f64>)> {
                    let (a, p) = (noise(b * w, 5), noise(b * w, 6));
                    let mut st = step_for(&ecfg, b)?;
                    for _ in 0..warmup {
                        st.train_step(Pairs::new(&a, &p))?;
                    }
                    let t = time_steps(0, n, || st.train_step(Pairs::new(&a, &p)))?;
                    Ok((crate::stats::summarize(&t), Some(st.encoder.device.allocated_bytes() as f64 / 1e6)))
                });
                measured.map_err(|e| failed(None, e.to_string()))
            });
            s.progress.tell(|| match &point {
                Ok((summary, _)) => format!("scalability: batch {b} × window {w}: {:.1} ms a step", summary.median),
                Err(failed) => format!("scalability: batch {b} × window {w}: stopped ({})", failed.note),
            });
            match point {
                Ok((summary, mem)) => {
                    let ms = summary.median;
                    cat.sweep.push(SweepPoint {
                        axis: axis.into(),
                        batch: b,
                        window: w,
                        ok: true,
                        step_ms: Some(ms),
                        step_ms_ci: summary.ci().map(|(lo, hi)| [lo, hi]),
                        samples: summary.n,
                        memory_mb: mem,
                        note: String::new(),
                    });
                    if ms > time_limit_ms {
                        (stop, stopped_on_time) = (Some(format!("a step took {ms:.0} ms (limit {time_limit_ms:.0} ms)")), true);
                        break;
                    }
                }
                Err(Stopped { memory_mb, note }) => {
                    stop = Some(note.clone());
                    cat.sweep.push(SweepPoint { axis: axis.into(), batch: b, window: w, ok: false, step_ms: None, step_ms_ci: None, samples: 0, memory_mb, note });
                    break;
                }
            }
            if (s.quick && x >= last_seed) || x >= cap {
                if x >= cap {
                    cat.notes.push(format!("{axis} sweep reached its cap {cap}"));
                }
                break;
            }
            x *= 2;
        }
        if let Some(reason) = stop {
            cat.notes.push(format!("{axis} sweep stopped at {x}: {reason}"));
        }
        let ok: Vec<&SweepPoint> = cat.sweep.iter().filter(|p| p.axis == axis && p.ok).collect();
        let Some(max) = ok.iter().map(|p| p.size()).max() else {
            // Not one point ran: the category failed (its note above says why).
            cat.notes.push(format!("{axis} sweep: no point ran"));
            cat.status = Status::Error;
            continue;
        };
        let name = if axis == "batch" { MetricName::MaxBatchSize } else { MetricName::MaxWindowSize };
        // Exact in quick mode where every point of the seed's list ran or ran out of memory; a
        // sweep that stopped on a step's time (a full run's doubling, or a quick one on a slow
        // machine) depends on that timing, which is not.
        let found = Metric { exact: s.quick && !stopped_on_time, ..value(CategoryKind::Scalability, axis, name, max as f64, false, "largest point of the doubling sweep whose step ran") };
        cat.metrics.push(found);
        // How the step's time grows along the axis: the slope of ln(step time) on ln(size) over
        // the points that ran (1 = in proportion; a fixed cost per step pulls it below 1).
        let timed: Vec<(f64, f64)> = ok.iter().filter_map(|p| Some((p.size() as f64, p.step_ms?))).collect();
        if let Some(slope) = crate::stats::log_log_slope(&timed) {
            cat.metrics.push(value(CategoryKind::Scalability, axis, MetricName::TimeScalingExponent, slope, true, "least-squares slope of ln(step time) on ln(size) over the sweep's working points"));
        }
        if axis == "batch" {
            // Memory growth against batch growth between the two largest working points (1.0 =
            // proportional; below while the fixed part weighs, above when memory outgrows the batch).
            let mems: Vec<(usize, f64)> = ok.iter().filter_map(|p| p.memory_mb.map(|m| (p.batch, m))).collect();
            if mems.len() >= 2 {
                let (b1, m1) = mems[mems.len() - 2];
                let (b2, m2) = mems[mems.len() - 1];
                cat.metrics.push(exact(
                    CategoryKind::Scalability,
                    "batch",
                    MetricName::MemoryScalingFactor,
                    (m2 / m1) / (b2 as f64 / b1 as f64),
                    true,
                    "(memory ratio) / (batch ratio) of the two largest working batch sizes",
                ));
            }
        }
    }
    Ok(cat)
}

/// One precision's steps in the hardware category's interleaved rounds: its step times, and the
/// contrastive accuracy and device memory of its last round.
struct PrecisionRun {
    name: &'static str,
    precision: Precision,
    /// Whether it still runs here (a precision the CPU refuses stops after its first try).
    available: bool,
    times: Vec<f64>,
    accuracy: f32,
    memory: MemoryUse,
}

impl PrecisionRun {
    fn new(name: &'static str, precision: Precision, available: bool) -> Self {
        PrecisionRun { name, precision, available, times: Vec::new(), accuracy: 0.0, memory: MemoryUse::default() }
    }
}

/// What the hardware category's memory metrics hold.
const DEVICE_MEMORY: &str = "the CPU device's memory after the timed steps (parameters, optimizer state, activations, scratch)";

/// Hardware: CPU thread scaling (fp32), fp32 against bf16 products on the CPU; the GPU is reported
/// as not available in this build rather than failing.
pub fn hardware(s: &Settings, device: DeviceSel) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Hardware);
    let (warmup, n) = s.reps();
    let (b, w) = (32, 1024);
    let (a, p) = (noise(b * w, 7), noise(b * w, 8));
    let mut per_threads = Vec::new();
    let mut counts = vec![1];
    if s.threads > 1 {
        counts.push(s.threads);
    }
    let cfg = EncoderConfig::new(s.encoder, w, 1);
    for &t in &counts {
        let times = pool(t)?.install(|| timed_steps(&cfg, b, Precision::Fp32, (&a, &p), warmup, n))?.times;
        per_threads.push((t, crate::stats::median(&times)));
        cat.metrics.push(timed(CategoryKind::Hardware, &format!("cpu.fp32.threads{t}"), MetricName::StepMs, times, warmup));
    }
    // fp32 against each reduced precision at the full thread count, interleaved in rounds so
    // that a noisy neighbour hits all alike: bf16 products everywhere, fp16 (products rounded to
    // binary16, dynamic loss scaling) where training offers it — a CPU with AVX512-FP16, or
    // CID_CPU_FP16=emulate.
    let pool_all = pool(s.threads)?;
    let mut runs = [PrecisionRun::new("fp32", Precision::Fp32, true), PrecisionRun::new("bf16", Precision::Bf16, true), PrecisionRun::new("fp16", Precision::Fp16, engine::cpu::fp16_supported())];
    for _ in 0..3 {
        for run in runs.iter_mut().filter(|r| r.available) {
            match pool_all.install(|| timed_steps(&cfg, b, run.precision, (&a, &p), warmup, n)) {
                Ok(r) => {
                    run.times.extend(r.times);
                    (run.accuracy, run.memory) = (r.accuracy, r.memory);
                }
                Err(e) if run.precision != Precision::Fp32 => {
                    cat.notes.push(format!("{} products: not available here ({e})", run.name));
                    (run.available, run.times) = (false, Vec::new());
                }
                Err(e) => return Err(e),
            }
        }
    }
    let [fp32, reduced @ ..] = &runs;
    let reduced: Vec<&PrecisionRun> = reduced.iter().filter(|r| !r.times.is_empty()).collect();
    if !reduced.is_empty() {
        // Each reduced precision beside the fp32 steps it was interleaved with (the thread-count
        // steps above are another run, minutes earlier): its step time and the speed-up.
        cat.metrics.push(timed(CategoryKind::Hardware, &format!("cpu.fp32.paired.threads{}", s.threads), MetricName::StepMs, fp32.times.clone(), warmup));
        cat.metrics.push(exact(CategoryKind::Hardware, "cpu.fp32", MetricName::MemoryMb, fp32.memory.total() as f64 / 1e6, true, DEVICE_MEMORY));
    }
    for r in &reduced {
        cat.metrics.push(timed(CategoryKind::Hardware, &format!("cpu.{}.threads{}", r.name, s.threads), MetricName::StepMs, r.times.clone(), warmup));
        // Step i of fp32 against step i of this precision, taken in the same round seconds
        // apart: the machine's pace of the round divides out, and as many ratios as steps give
        // the speed-up a confidence interval, so a baseline comparison can call its change.
        let ratios: Vec<f64> = fp32.times.iter().zip(&r.times).map(|(f, t)| f / t).collect();
        cat.metrics.push(rate(
            CategoryKind::Hardware,
            &format!("cpu.{}", r.name),
            MetricName::MixedPrecisionSpeedup,
            ratios,
            format!(
                "median over paired steps of fp32 step time / {0} step time (step i of each in the same round), 3 interleaved rounds, {1} threads (B=32, W=1024, {2}): cpu.fp32.paired / cpu.{0}",
                r.name, s.threads, s.encoder
            ),
        ));
        cat.metrics.push(exact(CategoryKind::Hardware, &format!("cpu.{}", r.name), MetricName::MemoryMb, r.memory.total() as f64 / 1e6, true, DEVICE_MEMORY));
    }
    if !reduced.is_empty() {
        let accuracies: Vec<String> = [fp32].into_iter().chain(reduced.iter().copied()).map(|r| format!("{} {:.3}", r.name, r.accuracy)).collect();
        cat.notes.push(format!(
            "bf16 products: {}; contrastive accuracy on the timed batch after {} steps: {}",
            engine::cpu::plan::GemmPolicy::from_env().describe_products(Precision::Bf16),
            warmup + n,
            accuracies.join(", ")
        ));
        // The memory saved, and why so little: reduced precision here rounds the products'
        // operands as they are packed; weights, gradients, moments and activations stay fp32.
        let memory: Vec<String> = [fp32].into_iter().chain(reduced.iter().copied()).map(|r| format!("{} {}", r.name, r.memory.describe())).collect();
        cat.notes.push(format!(
            "memory by what holds it: {}. State (parameters, gradients, both Adam moments) is fp32 in every precision, as PyTorch's autocast keeps it; activations (every other tensor: their gradients, the batch, running statistics, an encoder's working copies of its weights) stay fp32 too (products round their operands as they pack them), so a reduced precision can differ from fp32 only in scratch. At B={b} this model's memory is {:.0} % state: every other tensor held in half precision would save at most {:.0} %",
            memory.join("; "),
            100.0 * fp32.memory.state as f64 / fp32.memory.total().max(1) as f64,
            50.0 * fp32.memory.activations as f64 / fp32.memory.total().max(1) as f64,
        ));
        // The accuracy kept: the quality protocol's linear probe after the same number of steps
        // in each precision, from the same initialisation and batches.
        let steps = if s.quick { 100 } else { 400 };
        let probes = ProbeProtocol::prepare(s).and_then(|protocol| {
            let trained =
                [fp32].into_iter().chain(reduced.iter().copied()).map(|r| Ok((r.name, pool_all.install(|| protocol.train(r.precision, steps, steps, None))?.last_acc))).collect::<Result<Vec<_>>>()?;
            Ok((protocol.describe(), trained))
        });
        match probes {
            Ok((described, trained)) => {
                let fp32_acc = trained[0].1;
                for &(name, acc) in &trained {
                    cat.metrics.push(value(CategoryKind::Hardware, &format!("cpu.{name}"), MetricName::FinalProbeAcc, acc, false, &format!("linear probe after {steps} steps ({described})")));
                }
                for &(name, acc) in &trained[1..] {
                    let how = format!("fp32's linear probe − {name}'s, same steps, initialisation and batches (the accuracy {name} gives up)");
                    cat.metrics.push(value(CategoryKind::Hardware, &format!("cpu.{name}"), MetricName::AccuracyDrop, fp32_acc - acc, true, &how));
                }
            }
            // The timings stand without it.
            Err(e) => cat.notes.push(format!("the accuracy kept by the reduced precisions (a linear probe after {steps} steps in each) was not measured: {e}")),
        }
    }
    if let [(1, one), .., (t, many)] = per_threads.as_slice() {
        cat.metrics.push(value(CategoryKind::Hardware, "cpu.fp32", MetricName::ThreadSpeedup, one / many, false, &format!("step time with 1 thread / with {t} threads (B=32, W=1024, {})", s.encoder)));
    }
    let gpu = engine::CudaDevice::probe(if let DeviceSel::Cuda(n) = device { n } else { 0 });
    match &gpu {
        Err(e) => cat.notes.push(format!("GPU: not available on this machine ({e}); CPU vs GPU and GPU memory are not measured")),
        Ok(_) => cat.notes.push("GPU: a CUDA device is present, but the suite does not benchmark it yet (the CUDA device is unverified); CPU numbers shown".into()),
    }
    if reduced.iter().any(|r| r.precision == Precision::Fp16) {
        cat.notes.push(format!("fp16 products: {}; dynamic loss scaling", engine::cpu::plan::GemmPolicy::from_env().describe_products(Precision::Fp16)));
    } else if !engine::cpu::fp16_supported() {
        cat.notes.push("fp16: not run on this CPU (no AVX512-FP16; CID_CPU_FP16=emulate runs its numerics); bf16 is the CPU's mixed precision".into());
    }
    if matches!(device, DeviceSel::Cuda(_)) {
        cat.status = Status::NotAvailable;
        cat.notes.push(format!("--device {device} was asked for; GPU benchmarking is not implemented yet; CPU numbers shown"));
    }
    Ok(cat)
}

/// The quality protocol's data, probe windows and encoder: the real data given with
/// `--quality-data`, else a generated store.
struct ProbeProtocol {
    builder: Arc<BatchBuilder>,
    ids: Vec<u64>,
    set: train::eval::ProbeSet,
    inputs: train::input::Inputs,
    encoder: EncoderConfig,
    window: usize,
    batch: usize,
    target: f64,
    data_name: String,
}

/// The linear-probe accuracy the quality category trains towards on its generated set ...
const GENERATED_PROBE_TARGET: f64 = 0.9;
/// ... and on real data given with `--data/--meta` (CWRU drive end: 0.60 at random init).
const REAL_DATA_PROBE_TARGET: f64 = 0.75;

/// What [`ProbeProtocol::train`] reached.
struct ProbeOutcome {
    random_acc: f64,
    last_acc: f64,
    steps: u64,
    /// The step and training seconds at which the probe first reached the target, if asked.
    reached: Option<(u64, f64)>,
}

impl ProbeProtocol {
    fn prepare(s: &Settings) -> Result<Self> {
        let (store_path, meta_path, target, w, b) = match &s.quality_data {
            Some((d, m)) => (d.clone(), m.clone(), REAL_DATA_PROBE_TARGET, 1024, 32),
            None => {
                // Noise as strong as the tones: a random-init encoder probes at ≈ 0.39 here, so the
                // target measures what pretraining adds (at the generator's default 0.1 a
                // random-init CNN already scored 0.98).
                let cfg = SynthConfig { complexity: Complexity::Medium, count: 48, length: 8192, channels: 1, seed: 1, classes: 6, noise: 1.0, ..Default::default() };
                let g = generate(&cfg, &s.work_dir.join("quality"), "quality", Layout::Contiguous, &|_| {})?;
                (g.store, g.meta, GENERATED_PROBE_TARGET, 512, 16)
            }
        };
        let ds = train::trainer::open_dataset(&store_path, &meta_path)?;
        let pre = PreprocessConfig { normalization: Normalization::Standardization, truncate_length: None };
        let builder = Arc::new(BatchBuilder::new(ds.store.clone(), pre, WindowConfig { window_size: w, ..Default::default() })?.with_time_split(0.7)?);
        let ids = builder.usable_ids(&ds.ids)?;
        let b = b.min(ids.len());
        let channels = builder.channels();
        // Probe windows: 8 evenly spaced per Id from each region of the time split (eval's own).
        let set = train::eval::probe_windows(&ds, &builder, w, 8, train::eval::Split::Time, "Label", 0.7, 0)?;
        let inputs = train::input::Inputs::with_rates(train::config::InputKind::Time, w, channels, train::trainer::sample_rates(&ds))?;
        let data_name = s.quality_data.as_ref().map_or("generated (medium, 48 Ids × 8192, 6 classes, noise 1.0)".to_string(), |(d, _)| d.display().to_string());
        Ok(ProbeProtocol { builder, ids, set, inputs, encoder: EncoderConfig::new(s.quality_encoder, w, channels), window: w, batch: b, target, data_name })
    }

    /// `dataset, W, B, encoder` for notes.
    fn describe(&self) -> String {
        format!("dataset: {}; W = {}, B = {}, {}", self.data_name, self.window, self.batch, self.encoder.kind())
    }

    /// Trains a fresh encoder (seed 0, the same batches every call) in `precision` for at most
    /// `max_steps`, probing every `every` steps and at the end; with a `target`, stops when the
    /// probe reaches it. Runs in the calling rayon pool.
    fn train(&self, precision: Precision, every: u64, max_steps: u64, target: Option<f64>) -> Result<ProbeOutcome> {
        let mut st = step_for(&self.encoder, self.batch)?;
        st.set_precision(precision)?;
        let fed = train::eval::ProbeInputs::new(&self.set, &self.inputs)?;
        let probe = |enc: &mut engine::Encoder<CpuDevice>| -> Result<f64> { Ok(train::eval::score(enc, &fed, 5)?.linear_probe_acc) };
        let random_acc = probe(&mut st.encoder)?;
        // Met before any step: the target says nothing about pretraining on this data.
        if target.is_some_and(|t| random_acc >= t) {
            return Ok(ProbeOutcome { random_acc, last_acc: random_acc, steps: 0, reached: Some((0, 0.0)) });
        }
        let sampler = BatchSampler::new(self.builder.clone(), &self.ids, SamplerConfig { batch_size: self.batch, seed: 0, epochs: None, ..Default::default() }, BatchPos::default())?;
        let (mut train_time, mut reached, mut last_acc) = (0.0, None, random_acc);
        for item in sampler {
            let (_, batch) = item?;
            let rates = self.inputs.rates(&batch.ids);
            let t = Instant::now();
            st.train_step(Pairs::new(&batch.anchor, &batch.positive).with_rates(&rates))?;
            train_time += t.elapsed().as_secs_f64();
            if st.step % every == 0 || st.step >= max_steps {
                last_acc = probe(&mut st.encoder)?;
                if target.is_some_and(|t| last_acc >= t) {
                    reached = Some((st.step, train_time));
                    break;
                }
            }
            if st.step >= max_steps {
                break;
            }
        }
        Ok(ProbeOutcome { random_acc, last_acc, steps: st.step, reached })
    }
}

/// Quality: optimizer steps and seconds until a frozen-encoder linear probe reaches a target
/// accuracy (time split: windows of the first 70 % train, the probe tests on the last 30 %).
pub fn quality(s: &Settings) -> Result<Category> {
    let mut cat = Category::new(CategoryKind::Quality);
    let run = ProbeProtocol::prepare(s)?;
    let (eval_every, max_steps) = if s.quick { (25u64, 300u64) } else { (100, 4000) };
    let target = run.target;
    let r = pool(s.threads)?.install(|| run.train(Precision::Fp32, eval_every, max_steps, Some(target)))?;
    cat.notes.push(format!("{}, probe every {eval_every} steps, target {target:.2}", run.describe()));
    cat.metrics.push(value(CategoryKind::Quality, "probe", MetricName::RandomInitProbeAcc, r.random_acc, false, "linear probe on a random-init encoder"));
    cat.metrics.push(value(CategoryKind::Quality, "probe", MetricName::FinalProbeAcc, r.last_acc, false, "linear probe at the last check"));
    if r.random_acc >= target {
        let remedy = if s.quality_data.is_some() { "this dataset is too easy for the measure" } else { "give a harder dataset with --data/--meta" };
        cat.notes
            .push(format!("a random-init encoder already reaches the target ({:.3} ≥ {target:.2}) on this data, so steps_to_target = 0 measures nothing about pretraining: {remedy}", r.random_acc));
    }
    match r.reached {
        Some((st, secs)) => {
            cat.metrics.push(value(CategoryKind::Quality, "probe", MetricName::StepsToTarget, st as f64, true, "optimizer steps until the probe reached the target"));
            cat.metrics.push(value(CategoryKind::Quality, "probe", MetricName::SecondsToTarget, secs, true, "training time (probes excluded) until the probe reached the target"));
        }
        None => cat.notes.push(format!("the probe did not reach {target:.2} within {} steps (last {:.3})", r.steps, r.last_acc)),
    }
    Ok(cat)
}
