//! The contrastive training step: two views of a batch through one encoder (as one batch of 2B
//! rows), fused normalize + InfoNCE, backward, global-norm clipping and a fused Adam/AdamW pass.
//! After the first call a step allocates nothing.

use crate::device::{AdamHyper, Device, InfoNceOut};
use crate::error::{EngineError, Result};
use crate::model::{mix_key, Encoder};

/// InfoNCE settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceConfig {
    /// τ > 0 (default 0.07).
    pub temperature: f32,
    /// Average the anchor→positive and positive→anchor directions (default false).
    pub symmetric: bool,
}

impl Default for InfoNceConfig {
    fn default() -> Self {
        InfoNceConfig { temperature: 0.07, symmetric: false }
    }
}

impl InfoNceConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::config("task.temperature", format!("must be a finite number > 0, got {}", self.temperature)));
        }
        Ok(())
    }
}

/// Adam or AdamW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Adam,
    AdamW,
}

/// Optimizer settings (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// Learning rate (default 1e-3).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Adam: L2 term added to the gradient; AdamW: decoupled decay (default 0).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (`None` = no clipping).
    pub clip_norm: Option<f32>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig { kind: OptimizerKind::Adam, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip_norm: None }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("task.lr", self.lr > 0.0 && self.lr.is_finite(), "must be > 0"),
            ("task.weight_decay", self.weight_decay >= 0.0 && self.weight_decay.is_finite(), "must be >= 0"),
            ("task.betas", (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2), "must lie in [0, 1)"),
            ("task.eps", self.eps > 0.0, "must be > 0"),
            ("trainer.gradient_clip_val", self.clip_norm.is_none_or(|c| c > 0.0 && c.is_finite()), "must be > 0"),
        ];
        for (key, ok, why) in checks {
            if !ok {
                return Err(EngineError::config(key, why));
            }
        }
        Ok(())
    }

    fn hyper(&self, lr: f32) -> AdamHyper {
        AdamHyper { lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay, decoupled: self.kind == OptimizerKind::AdamW }
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutput {
    pub loss: f32,
    pub accuracy: f32,
    /// Global gradient norm before clipping; computed only when clipping is on (it costs a
    /// pass over every gradient).
    pub grad_norm: Option<f32>,
    /// The update was skipped (non-finite loss or gradient): weights are unchanged.
    pub skipped: bool,
}

/// Encoder + loss + optimizer state for batches of up to `batch` pairs.
pub struct ContrastiveStep<D: Device> {
    pub encoder: Encoder<D>,
    pub loss: InfoNceConfig,
    pub opt: OptimizerConfig,
    batch: usize,
    /// Optimizer steps taken (Adam's `t`).
    pub step: u64,
    /// Forward passes in training mode (keys the dropout masks).
    pub micro_step: u64,
    pub seed: u64,
}

impl<D: Device> ContrastiveStep<D> {
    /// `encoder` must have buffers for `2 · batch` rows.
    pub fn new(encoder: Encoder<D>, batch: usize, loss: InfoNceConfig, opt: OptimizerConfig, seed: u64) -> Result<Self> {
        loss.validate()?;
        opt.validate()?;
        if batch == 0 {
            return Err(EngineError::config("data.batch_size", "must be > 0"));
        }
        if encoder.max_rows() < 2 * batch {
            return Err(EngineError::Shape(format!("encoder buffers hold {} rows, a step needs 2 × {batch}", encoder.max_rows())));
        }
        Ok(ContrastiveStep { encoder, loss, opt, batch, step: 0, micro_step: 0, seed })
    }

    pub fn batch_capacity(&self) -> usize {
        self.batch
    }

    fn load_pair(&mut self, anchor: &[f32], positive: &[f32]) -> Result<usize> {
        let n = self.encoder.cfg.input;
        if anchor.len() != positive.len() || anchor.len() % n != 0 || anchor.is_empty() {
            return Err(EngineError::Shape(format!("anchor ({}) and positive ({}) must be equal, non-empty multiples of W·C = {n}", anchor.len(), positive.len())));
        }
        let b = anchor.len() / n;
        if b > self.batch {
            return Err(EngineError::Shape(format!("batch of {b} exceeds the capacity {}", self.batch)));
        }
        self.encoder.set_input(0, anchor);
        self.encoder.set_input(b, positive);
        Ok(b)
    }

    /// Forward (training mode) and backward of one batch; gradients are written, or added to
    /// the current ones with `accumulate`. The loss gradient is multiplied by `grad_scale`
    /// (`1/k` for k accumulated micro-batches).
    pub fn forward_backward(&mut self, anchor: &[f32], positive: &[f32], accumulate: bool, grad_scale: f32) -> Result<InfoNceOut> {
        let b = self.load_pair(anchor, positive)?;
        let key = mix_key(self.seed, 0xF0, self.micro_step);
        self.micro_step += 1;
        let z = self.encoder.forward(2 * b, Some(key));
        let dz = self.encoder.dz_buffer(2 * b);
        let d = self.encoder.cfg.embed;
        let out = self.encoder.device.infonce(z, Some(dz), b, d, self.loss.temperature, self.loss.symmetric, grad_scale);
        self.encoder.backward(2 * b, dz, accumulate);
        Ok(out)
    }

    /// Clips (when configured) and applies the current gradients with learning rate `lr`.
    /// Returns the global gradient norm (when clipping) and whether the update was skipped
    /// because the norm was not finite.
    pub fn optimizer_step(&mut self, lr: f32) -> (Option<f32>, bool) {
        let e = &mut self.encoder;
        let (norm, scale) = match self.opt.clip_norm {
            Some(max) => {
                let norm = e.device.sum_squares(e.grads).sqrt() as f32;
                if !norm.is_finite() {
                    return (Some(norm), true);
                }
                (Some(norm), (max / (norm + 1e-6)).min(1.0))
            }
            None => (None, 1.0),
        };
        self.step += 1;
        e.device.adam(e.params, e.grads, e.adam_m, e.adam_v, self.opt.hyper(lr), self.step, scale);
        (norm, false)
    }

    /// One full training step at the configured learning rate.
    pub fn train_step(&mut self, anchor: &[f32], positive: &[f32]) -> Result<StepOutput> {
        self.train_step_lr(anchor, positive, self.opt.lr)
    }

    pub fn train_step_lr(&mut self, anchor: &[f32], positive: &[f32], lr: f32) -> Result<StepOutput> {
        let out = self.forward_backward(anchor, positive, false, 1.0)?;
        if !out.loss.is_finite() {
            return Ok(StepOutput { loss: out.loss, accuracy: out.accuracy, grad_norm: None, skipped: true });
        }
        let (grad_norm, skipped) = self.optimizer_step(lr);
        Ok(StepOutput { loss: out.loss, accuracy: out.accuracy, grad_norm, skipped })
    }

    /// Loss and accuracy in evaluation mode (no dropout, no gradients).
    pub fn evaluate(&mut self, anchor: &[f32], positive: &[f32]) -> Result<InfoNceOut> {
        let b = self.load_pair(anchor, positive)?;
        let z = self.encoder.forward(2 * b, None);
        let d = self.encoder.cfg.embed;
        Ok(self.encoder.device.infonce(z, None, b, d, self.loss.temperature, self.loss.symmetric, 1.0))
    }

    /// Embeddings (evaluation mode) of `rows` flattened windows, `[rows, D]`, in chunks that
    /// fit the buffers.
    pub fn embed(&mut self, windows: &[f32]) -> Result<Vec<f32>> {
        embed(&mut self.encoder, windows)
    }
}

/// Embeddings (evaluation mode) of flattened windows with any encoder.
pub fn embed<D: Device>(enc: &mut Encoder<D>, windows: &[f32]) -> Result<Vec<f32>> {
    let n = enc.cfg.input;
    let d = enc.cfg.embed;
    if windows.len() % n != 0 {
        return Err(EngineError::Shape(format!("{} values are not whole windows of {n}", windows.len())));
    }
    let rows = windows.len() / n;
    let mut out = vec![0.0; rows * d];
    let cap = enc.max_rows();
    for (i, chunk) in windows.chunks(cap * n).enumerate() {
        let r = chunk.len() / n;
        enc.set_input(0, chunk);
        let z = enc.forward(r, None);
        enc.device.download(z, &mut out[i * cap * d..i * cap * d + r * d]);
    }
    Ok(out)
}
