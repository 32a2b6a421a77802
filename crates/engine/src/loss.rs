//! InfoNCE, the contrastive loss of SPEC §2: `z = normalize(f(x))` row-wise, `S = z_a·z_pᵀ/τ`,
//! `loss = mean_i (logsumexp_j S[i,j] − S[i,i])`, optionally averaged with the column direction.
//! The kernel ([`crate::Device::infonce`]) fuses the normalisation, the similarities, the loss,
//! the contrastive accuracy and the gradient.

use crate::error::{EngineError, Result, Setting};

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
            return Err(EngineError::invalid(Setting::Temperature, format!("must be a finite number > 0, got {}", self.temperature)));
        }
        Ok(())
    }
}
