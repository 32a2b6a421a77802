//! InfoNCE, the contrastive loss of SPEC §2: `z = normalize(f(x))` row-wise, `S = z_a·z_pᵀ/τ`,
//! `loss = mean_i (logsumexp_j S[i,j] − S[i,i])`, optionally averaged with the column direction.
//! The kernel ([`crate::Device::infonce`]) fuses the normalisation, the similarities, the loss,
//! the contrastive accuracy and the gradient; the CPU device's row and column passes over a tile
//! of similarities are at the end of this module, its CUDA kernels in `cuda/kernels.cu`.

use multiversion::multiversion;
use rayon::prelude::*;

use crate::cpu::math;
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

/// The smallest temperature: 1/τ and the gradient it scales stay far from f32's limit.
pub const MIN_TEMPERATURE: f32 = 1e-30;

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
        // Similarities are scaled by 1/τ in f32. 1/τ itself overflows below ~3e-39, and the
        // loss's gradient, 1/τ times sums over the batch, some orders of magnitude before: the
        // floor keeps eight orders of magnitude of room.
        if self.temperature < MIN_TEMPERATURE {
            return Err(EngineError::invalid(Setting::Temperature, format!("{:e} is below {MIN_TEMPERATURE:e}: 1/τ and the gradient come near f32's limit", self.temperature)));
        }
        Ok(())
    }
}

// ---- CPU kernels (the CPU device's `infonce` runs them on tiles of similarities) ------------

/// A row of similarities: the index of its first maximum (the row's prediction) and its
/// log-sum-exp, max-subtracted. The exponentials are summed in eight f64 lanes (vectorizable,
/// and as exact as one running f64 sum for any batch).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn row_max_lse(row: &[f32]) -> (usize, f32) {
    let mx = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let arg = row.iter().position(|&x| x == mx).unwrap_or(0);
    let mut lanes = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| math::exp(x - mx) as f64).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += math::exp(x - mx) as f64;
        }
    }
    (arg, mx + (lanes.iter().sum::<f64>() + tail).ln() as f32)
}

/// In place, a row of similarities becomes `w · softmax` of the row (plus `w · softmax` of each
/// column where the column log-sum-exps are given): dL/dS before the −w (or −2w) on the diagonal.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn row_softmax_grad(row: &mut [f32], lse: f32, col_lse: Option<&[f32]>, w: f32) {
    match col_lse {
        None => row.iter_mut().for_each(|x| *x = math::exp(*x - lse) * w),
        Some(cl) => row.iter_mut().zip(cl).for_each(|(x, &c)| *x = (math::exp(*x - lse) + math::exp(*x - c)) * w),
    }
}

/// Folds a tile of similarity rows (`b` columns each) into the running column log-sum-exps of
/// the symmetric InfoNCE: per column the running max `mx` and `Σ exp(s − mx)` (`sum`, rescaled
/// as the max grows). The columns are split over `parts` workers; each walks the tile row by row
/// (contiguous, vectorized across its columns), and each column is one worker's whole, so the
/// result does not depend on the split.
pub(crate) fn column_lse_update(tile: &[f32], b: usize, mx: &mut [f32], sum: &mut [f64], parts: usize) {
    let per = b.div_ceil(parts.max(1)).next_multiple_of(8);
    let run = |(i, (m, s)): (usize, (&mut [f32], &mut [f64]))| column_lse_strip(tile, b, i * per, m, s);
    if parts <= 1 {
        run((0, (mx, sum)));
    } else {
        mx.par_chunks_mut(per).zip(sum.par_chunks_mut(per)).enumerate().for_each(run);
    }
}

/// [`column_lse_update`] for the columns `c0..c0 + mx.len()`, in strips whose new maxima fit on
/// the stack.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
fn column_lse_strip(tile: &[f32], b: usize, c0: usize, mx: &mut [f32], sum: &mut [f64]) {
    const STRIP: usize = 256;
    let mut new_max = [0.0f32; STRIP];
    for s0 in (0..mx.len()).step_by(STRIP) {
        let w = STRIP.min(mx.len() - s0);
        let (m, s, nm) = (&mut mx[s0..s0 + w], &mut sum[s0..s0 + w], &mut new_max[..w]);
        let cols = c0 + s0..c0 + s0 + w;
        nm.copy_from_slice(m);
        for row in tile.chunks_exact(b) {
            nm.iter_mut().zip(&row[cols.clone()]).for_each(|(a, &x)| *a = a.max(x));
        }
        // The sums so far, rescaled to the new maxima (a column not seen yet has no sum).
        s.iter_mut().zip(m.iter().zip(nm.iter())).for_each(|(s, (&old, &new))| *s = if old == f32::NEG_INFINITY { 0.0 } else { *s * math::exp(old - new) as f64 });
        for row in tile.chunks_exact(b) {
            s.iter_mut().zip(&row[cols.clone()]).zip(nm.iter()).for_each(|((s, &x), &mx)| *s += math::exp(x - mx) as f64);
        }
        m.copy_from_slice(nm);
    }
}
