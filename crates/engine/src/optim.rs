//! Adam and AdamW over the parameter arena: one fused pass ([`crate::Device::adam`]) with the
//! per-step constants of PyTorch's implementation ([`crate::device::AdamHyper::at_step`]), and
//! global-norm gradient clipping folded into it as a gradient scale.

use crate::device::AdamHyper;
use crate::error::{EngineError, Result, Setting};

/// Adam or AdamW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Adam,
    AdamW,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            other => Err(format!("unknown optimizer {other:?}; expected adam or adamw")),
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if *self == OptimizerKind::Adam { "adam" } else { "adamw" })
    }
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
            (Setting::LearningRate, self.lr > 0.0 && self.lr.is_finite(), "must be a finite number > 0"),
            (Setting::WeightDecay, self.weight_decay >= 0.0 && self.weight_decay.is_finite(), "must be a finite number >= 0"),
            (Setting::Betas, (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2), "must lie in [0, 1)"),
            (Setting::Eps, self.eps > 0.0 && self.eps.is_finite(), "must be a finite number > 0"),
            (Setting::ClipNorm, self.clip_norm.is_none_or(|c| c > 0.0 && c.is_finite()), "must be a finite number > 0"),
        ];
        for (setting, ok, why) in checks {
            if !ok {
                return Err(EngineError::invalid(setting, why));
            }
        }
        Ok(())
    }

    pub(crate) fn hyper(&self, lr: f32) -> AdamHyper {
        AdamHyper { lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay, decoupled: self.kind == OptimizerKind::AdamW }
    }
}
