//! InfoNCE, the contrastive loss of SPEC §2: `z = normalize(f(x))` row-wise, `S = z_a·z_pᵀ/τ`,
//! `loss = mean_i (logsumexp_j S[i,j] − S[i,i])`, optionally averaged with the column direction.
//! The kernel ([`crate::Device::infonce`]) fuses the normalisation, the similarities, the loss,
//! the contrastive accuracy and the gradient.

use crate::error::{EngineError, Result, Setting};

/// Rows of the similarity matrix the CPU kernel holds at once. At or below it, the whole matrix is
/// one tile and the arithmetic is exactly the untiled kernel's.
pub const LOSS_TILE: usize = 256;

/// The f32 scratch the CPU kernel needs for `b` pairs of `d` dimensions: normalized rows and their
/// gradients (2 × 2b·d), one tile of similarities, the norms (2b), column log-sum-exps and the
/// diagonal (b each), and a tile's per-row loss and hit (2 per row). Saturating, for budget
/// checks on sizes from outside.
pub fn infonce_scratch_floats(b: usize, d: usize) -> usize {
    let (bd, tile) = (b.saturating_mul(d), b.min(LOSS_TILE));
    bd.saturating_mul(4).saturating_add(tile.saturating_mul(b)).saturating_add(b.saturating_mul(4)).saturating_add(tile.saturating_mul(2))
}

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
