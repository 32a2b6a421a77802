//! The contrastive training step: the two views of a batch through one encoder (one call, two
//! groups, so each view keeps its own BatchNorm statistics), an optional projection head, fused
//! normalize + InfoNCE, backward, global-norm clipping and a fused Adam/AdamW pass. After the
//! first call a step allocates nothing. While a step runs, another of the device's host workers
//! polls for its kernels instead of sleeping between them ([`crate::cpu::with_workers_polling`]).

use crate::device::{Device, InfoNceOut, Precision, View};
use crate::encoders::{mix_key, Encoder, Mode};
use crate::error::{EngineError, Result, Setting};
use crate::head::ProjectionHead;
use crate::loss::InfoNceConfig;
use crate::optim::OptimizerConfig;

/// One batch of pairs: anchor and positive windows (`[b, W·C]` row-major each) and, for encoders
/// that use it (the ISFM's time channel), each pair's sampling rate in Hz (1 Hz when absent).
#[derive(Clone, Copy, Debug)]
pub struct Pairs<'a> {
    pub anchor: &'a [f32],
    pub positive: &'a [f32],
    pub rates: Option<&'a [f32]>,
}

impl<'a> Pairs<'a> {
    pub fn new(anchor: &'a [f32], positive: &'a [f32]) -> Self {
        Pairs { anchor, positive, rates: None }
    }

    pub fn with_rates(self, rates: &'a [f32]) -> Self {
        Pairs { rates: Some(rates), ..self }
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutput {
    pub loss: f32,
    pub accuracy: f32,
    /// Global gradient norm before clipping; computed only when clipping or loss scaling is on
    /// (it costs a pass over every gradient).
    pub grad_norm: Option<f32>,
    pub update: Update,
}

impl StepOutput {
    /// The weights are unchanged.
    pub fn skipped(&self) -> bool {
        self.update != Update::Applied
    }
}

/// What an optimizer step did with the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The weights moved.
    Applied,
    /// fp16: the gradients overflowed at the current loss scale. No update (weights and Adam's
    /// state untouched, the step not counted) and the scale halved, as PyTorch's `GradScaler`
    /// does; the next batch tries again.
    ScaledDown,
    /// A non-finite loss or gradient with no loss scale left to lower: no update; the run has
    /// diverged.
    NonFinite,
}

/// Dynamic loss scaling for fp16 products, PyTorch's `GradScaler` with its defaults: the loss's
/// gradient is multiplied by `scale` so that small gradients stay above fp16's floor (2⁻²⁴) in
/// the products that carry them, and the update divides it out. A step whose gradients overflow
/// fp16 is skipped and the scale halved; after [`LossScaler::GROWTH_INTERVAL`] applied steps in
/// a row it doubles. Saved with the training state, so a resumed run scales as the uninterrupted
/// one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f32,
    /// Applied steps since the scale last changed.
    pub good_steps: u32,
}

impl LossScaler {
    pub const INITIAL_SCALE: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// Below this the gradients overflow whatever the scale: the run has diverged.
    pub const MIN_SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    /// The most the scale grows to (2⁶⁴, a power of two as every scale is, so scaling and
    /// unscaling stay exact): no gradient needs more, and growth stops well inside fp32.
    pub const MAX_SCALE: f32 = 18_446_744_073_709_551_616.0;

    pub fn new() -> Self {
        LossScaler { scale: Self::INITIAL_SCALE, good_steps: 0 }
    }

    /// A fresh scaler where products are fp16, whose floor loses small gradients; none otherwise
    /// (bf16 has fp32's range).
    pub fn for_precision(precision: Precision) -> Option<Self> {
        (precision == Precision::Fp16).then(Self::new)
    }

    /// A step whose scaled gradients were all finite (`true`) or not: the scale's next value.
    /// `false` once the scale cannot go lower.
    fn after_step(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(Self::MAX_SCALE);
                self.good_steps = 0;
            }
            true
        } else {
            self.good_steps = 0;
            self.scale *= 0.5;
            self.scale >= Self::MIN_SCALE
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

/// Encoder (+ an optional projection head) + loss + optimizer state for batches of up to
/// `batch` pairs.
pub struct ContrastiveStep<D: Device> {
    pub encoder: Encoder<D>,
    /// Where InfoNCE is taken on a projection of the embedding ([`ProjectionHead`]).
    head: Option<ProjectionHead>,
    pub loss: InfoNceConfig,
    pub opt: OptimizerConfig,
    batch: usize,
    /// Optimizer steps taken (Adam's `t`).
    pub step: u64,
    /// Forward passes in training mode (keys their random choices).
    pub micro_step: u64,
    pub seed: u64,
    /// Dynamic loss scaling, on where the device's products are fp16 ([`Self::set_precision`]).
    pub scaler: Option<LossScaler>,
    /// The batch [`Self::load`] copied into the device: its pairs, and the encoder's input
    /// writes just after (any later write — another step's, an evaluation's, an `embed` — has
    /// replaced it).
    loaded: Option<(usize, u64)>,
}

impl<D: Device> ContrastiveStep<D> {
    /// `encoder` must have buffers for `2 · batch` rows.
    pub fn new(encoder: Encoder<D>, batch: usize, loss: InfoNceConfig, opt: OptimizerConfig, seed: u64) -> Result<Self> {
        loss.validate()?;
        opt.validate()?;
        if batch == 0 {
            return Err(EngineError::invalid(Setting::Batch, "must be > 0"));
        }
        // The loss's scratch: normalized rows and their gradient, a tile of similarities, norms
        // and log-sum-exps.
        let d = encoder.cfg.embed;
        limits::check(|| format!("InfoNCE over {batch} pairs of {d} dimensions"), limits::bytes(&[crate::loss::infonce_scratch_floats(batch, d)], 4))?;
        if encoder.max_rows() / 2 < batch {
            return Err(EngineError::Shape(format!("encoder buffers hold {} rows, a step needs 2 × {batch}", encoder.max_rows())));
        }
        // As `set_precision` would: the device may come with its precision set.
        let scaler = LossScaler::for_precision(encoder.device.precision());
        Ok(ContrastiveStep { encoder, head: None, loss, opt, batch, step: 0, micro_step: 0, seed, scaler, loaded: None })
    }

    /// Sets the precision of the encoder's products, and with it loss scaling (on for fp16,
    /// whose floor loses small gradients; off otherwise: bf16 has fp32's range).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.encoder.device.set_precision(precision)?;
        self.scaler = LossScaler::for_precision(precision);
        Ok(())
    }

    /// Takes InfoNCE on a projection head to `dim` dimensions, discarded after pretraining.
    pub fn with_projection(mut self, dim: usize) -> Result<Self> {
        let (embed, rows) = (self.encoder.cfg.embed, self.encoder.max_rows());
        // The loss now runs on `dim` columns: its scratch is checked again, as `new` did for D.
        let batch = self.batch;
        limits::check(|| format!("InfoNCE over {batch} pairs of {dim} projected dimensions"), limits::bytes(&[crate::loss::infonce_scratch_floats(batch, dim)], 4))?;
        self.head = Some(ProjectionHead::init(&mut self.encoder.device, embed, dim, rows, self.seed)?);
        Ok(self)
    }

    pub fn head(&self) -> Option<&ProjectionHead> {
        self.head.as_ref()
    }

    /// The head's parameters and both moments, downloaded (checkpoints).
    pub fn head_state(&self) -> Option<[Vec<f32>; 3]> {
        let h = self.head.as_ref()?;
        let a = h.arenas();
        let down = |v: View| {
            let mut out = vec![0.0; v.len()];
            self.encoder.device.download(v, &mut out);
            out
        };
        Some([down(a.params), down(a.adam_m), down(a.adam_v)])
    }

    /// Restores the head's parameters and moments.
    pub fn set_head_state(&mut self, state: &[Vec<f32>; 3]) -> Result<()> {
        let Some(h) = &self.head else { return Err(EngineError::Shape("this step has no projection head".into())) };
        let a = h.arenas();
        for (view, values) in [(a.params, &state[0]), (a.adam_m, &state[1]), (a.adam_v, &state[2])] {
            if values.len() != view.len() {
                return Err(EngineError::Shape(format!("{} projection-head values for a head of {}", values.len(), view.len())));
            }
            self.encoder.device.upload(view, values);
        }
        Ok(())
    }

    /// The loss's input for a forward over `rows` rows: the embeddings, or their projection.
    fn loss_input(&mut self, z: View, rows: usize) -> (View, usize) {
        match &self.head {
            Some(h) => (h.forward(&mut self.encoder.device, z, rows), h.dim()),
            None => (z, self.encoder.cfg.embed),
        }
    }

    pub fn batch_capacity(&self) -> usize {
        self.batch
    }

    /// Copies a batch into the device, where every step (and evaluation) starts by copying its
    /// own; [`Self::train_step_loaded`] then steps on it as often as asked, copying nothing, until
    /// anything else writes the encoder's input (a step or evaluation of other pairs, `embed`).
    /// That is how PyTorch's reference times a step (on tensors made once), and how a
    /// benchmark times ours beside it; the copy costs a memory pass over the batch (an xl batch is
    /// 16 MiB, ~2 ms on the Intel Xeon of docs/performance.md).
    pub fn load(&mut self, pairs: Pairs) -> Result<()> {
        self.with_workers_polling(|st| {
            // Whatever fails below, the device's batch may be partly overwritten.
            st.loaded = None;
            let b = st.load_pairs(pairs)?;
            st.loaded = Some((b, st.encoder.input_writes()));
            Ok(())
        })
    }

    fn load_pairs(&mut self, pairs: Pairs) -> Result<usize> {
        let n = self.encoder.cfg.input();
        let (a, p) = (pairs.anchor, pairs.positive);
        if a.len() != p.len() || a.len() % n != 0 || a.is_empty() {
            return Err(EngineError::Shape(format!("anchor ({}) and positive ({}) must be equal, non-empty multiples of W·C = {n}", a.len(), p.len())));
        }
        let b = a.len() / n;
        if b > self.batch {
            return Err(EngineError::Shape(format!("batch of {b} exceeds the capacity {}", self.batch)));
        }
        self.encoder.set_input(0, a)?;
        self.encoder.set_input(b, p)?;
        match pairs.rates {
            Some(r) if r.len() != b => return Err(EngineError::Shape(format!("{} sampling rates for {b} pairs", r.len()))),
            Some(r) => {
                self.encoder.set_sample_rates(0, r)?;
                self.encoder.set_sample_rates(b, r)?;
            }
            None => self.encoder.reset_sample_rates(),
        }
        Ok(b)
    }

    /// Runs `f` on this step while another of the device's host workers polls for its kernels
    /// (the public entry points each run once in it).
    fn with_workers_polling<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        let workers = self.encoder.device.host_workers();
        crate::cpu::with_workers_polling(workers, || f(self))
    }

    /// Forward (training mode) and backward of one batch; gradients are written, or added to
    /// the current ones with `accumulate`. The loss gradient is multiplied by `grad_scale`
    /// (`1/k` for k accumulated micro-batches).
    pub fn forward_backward(&mut self, pairs: Pairs, accumulate: bool, grad_scale: f32) -> Result<InfoNceOut> {
        self.with_workers_polling(|st| {
            let b = st.load_pairs(pairs)?;
            Ok(st.forward_backward_of_loaded(b, accumulate, grad_scale))
        })
    }

    /// Forward and backward of the `b` pairs in the device.
    fn forward_backward_of_loaded(&mut self, b: usize, accumulate: bool, grad_scale: f32) -> InfoNceOut {
        let key = mix_key(self.seed, 0xF0, self.micro_step);
        self.micro_step += 1;
        let z = self.encoder.forward(2 * b, 2, Mode::Train { key });
        let dz = self.encoder.dz_buffer(2 * b);
        let (p, d) = self.loss_input(z, 2 * b);
        let dp = self.head.as_ref().map_or(dz, |h| h.d_out(2 * b));
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        let out = self.encoder.device.infonce(p, Some(dp), b, d, self.loss.temperature, self.loss.symmetric, grad_scale * loss_scale);
        if let Some(h) = &self.head {
            h.backward(&mut self.encoder.device, z, dp, dz, 2 * b, accumulate);
        }
        self.encoder.backward(2 * b, dz, accumulate);
        out
    }

    /// Unscales (fp16), clips (when configured) and applies the current gradients with learning
    /// rate `lr`. Returns the global gradient norm (when clipping or scaling; of the unscaled
    /// gradients) and what was done: a non-finite norm never touches the weights.
    ///
    /// # Panics
    /// Where `lr` is not a finite rate ≥ 0 (a caller's bug: configurations check theirs).
    pub fn optimizer_step(&mut self, lr: f32) -> (Option<f32>, Update) {
        assert!(lr.is_finite() && lr >= 0.0, "learning rate {lr}");
        self.with_workers_polling(|st| st.run_optimizer_step(lr))
    }

    fn run_optimizer_step(&mut self, lr: f32) -> (Option<f32>, Update) {
        let e = &mut self.encoder;
        let head = self.head.as_ref().map(|h| h.arenas());
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        let norm = (self.opt.clip_norm.is_some() || self.scaler.is_some()).then(|| {
            let head_ss = head.map_or(0.0, |a| e.device.sum_squares(a.grads));
            ((e.device.sum_squares(e.grads()) + head_ss).sqrt() / loss_scale as f64) as f32
        });
        if let Some(n) = norm.filter(|n| !n.is_finite()) {
            return match self.scaler.as_mut().map(|s| s.after_step(false)) {
                Some(true) => (Some(n), Update::ScaledDown),
                _ => (Some(n), Update::NonFinite),
            };
        }
        let clip = match (self.opt.clip_norm, norm) {
            (Some(max), Some(n)) => (max / (n + 1e-6)).min(1.0),
            _ => 1.0,
        };
        if let Some(s) = self.scaler.as_mut() {
            s.after_step(true);
        }
        self.step += 1;
        // Adam takes the gradients times this: the clipping factor, the loss scale divided out.
        let scale = clip / loss_scale;
        let (m, v) = e.moments();
        let (params, grads) = (e.params(), e.grads());
        e.device.adam(params, grads, m, v, self.opt.hyper(lr), self.step, scale);
        if let Some(a) = head {
            e.device.adam(a.params, a.grads, a.adam_m, a.adam_v, self.opt.hyper(lr), self.step, scale);
        }
        (norm, Update::Applied)
    }

    /// One full training step at the configured learning rate.
    pub fn train_step(&mut self, pairs: Pairs) -> Result<StepOutput> {
        self.train_step_lr(pairs, self.opt.lr)
    }

    pub fn train_step_lr(&mut self, pairs: Pairs, lr: f32) -> Result<StepOutput> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(EngineError::invalid(Setting::LearningRate, format!("{lr} is not a finite rate ≥ 0")));
        }
        self.with_workers_polling(|st| {
            let b = st.load_pairs(pairs)?;
            Ok(st.step_on_loaded(b, lr))
        })
    }

    /// One full training step at the configured learning rate on the batch [`Self::load`] copied
    /// into the device; an error where none was, or where the input has been written since.
    pub fn train_step_loaded(&mut self) -> Result<StepOutput> {
        let b = match self.loaded {
            Some((b, writes)) if writes == self.encoder.input_writes() => b,
            Some(_) => return Err(EngineError::Shape("the batch `load` copied in has been overwritten since (by a step, an evaluation or an embedding of other windows): `load` it again".into())),
            None => return Err(EngineError::Shape("no batch is loaded: `load` one first".into())),
        };
        let lr = self.opt.lr;
        Ok(self.with_workers_polling(|st| st.step_on_loaded(b, lr)))
    }

    fn step_on_loaded(&mut self, b: usize, lr: f32) -> StepOutput {
        let out = self.forward_backward_of_loaded(b, false, 1.0);
        if !out.loss.is_finite() {
            return StepOutput { loss: out.loss, accuracy: out.accuracy, grad_norm: None, update: Update::NonFinite };
        }
        let (grad_norm, update) = self.run_optimizer_step(lr);
        StepOutput { loss: out.loss, accuracy: out.accuracy, grad_norm, update }
    }

    /// Loss and accuracy in evaluation mode (no dropout, running statistics, no gradients).
    pub fn evaluate(&mut self, pairs: Pairs) -> Result<InfoNceOut> {
        self.with_workers_polling(|st| {
            let b = st.load_pairs(pairs)?;
            let z = st.encoder.forward(2 * b, 2, Mode::Eval);
            let (p, d) = st.loss_input(z, 2 * b);
            Ok(st.encoder.device.infonce(p, None, b, d, st.loss.temperature, st.loss.symmetric, 1.0))
        })
    }
}

/// Embeddings (evaluation mode) of whole windows `[rows, W·C]` with any encoder, `[rows, D]`, in
/// chunks that fit the buffers; `rates` gives each window's sampling rate (1 Hz when absent).
pub fn embed<D: Device>(enc: &mut Encoder<D>, windows: &[f32], rates: Option<&[f32]>) -> Result<Vec<f32>> {
    let n = enc.cfg.input();
    let d = enc.cfg.embed;
    if !windows.len().is_multiple_of(n) {
        return Err(EngineError::Shape(format!("{} values are not whole windows of {n}", windows.len())));
    }
    let rows = windows.len() / n;
    if rates.is_some_and(|r| r.len() != rows) {
        return Err(EngineError::Shape(format!("{} sampling rates for {rows} windows", rates.map_or(0, <[f32]>::len))));
    }
    let mut out = vec![0.0; rows * d];
    let cap = enc.max_rows();
    for (i, chunk) in windows.chunks(cap * n).enumerate() {
        let r = chunk.len() / n;
        enc.set_input(0, chunk)?;
        match rates {
            Some(rates) => enc.set_sample_rates(0, &rates[i * cap..i * cap + r])?,
            None => enc.reset_sample_rates(),
        }
        let z = enc.forward(r, 1, Mode::Eval);
        enc.device.download(z, &mut out[i * cap * d..i * cap * d + r * d]);
    }
    Ok(out)
}
