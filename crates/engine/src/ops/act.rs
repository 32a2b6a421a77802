//! Element-wise activations and dropout, forward and backward side by side.
//!
//! Two forms. The MLPs' ReLU + dropout runs in place on the layer output
//! ([`crate::Device::bias_act_forward`])
//! and its backward reads the mask off that output (`h > 0`), so nothing else is kept. GELU and
//! SiLU need their input in the backward: [`crate::Device::act_forward`] keeps the pre-activation beside
//! the output. Dropout masks are never stored: they are a pure function of `(key, index)`
//! ([`Dropout`]), recomputed by the backward.

use multiversion::multiversion;

use crate::cpu::math::{self, for_strips, BLOCK_ROWS, STRIP_COLS};
use crate::device::Dropout;

/// An activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Identity,
    Relu,
    /// The exact (erf) GELU, PyTorch's `nn.GELU()` default.
    Gelu,
    Silu,
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "silu" | "swish" => Ok(Activation::Silu),
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            other => Err(format!("unknown activation {other:?}; expected relu, gelu, silu or identity")),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
        })
    }
}

impl Activation {
    #[inline(always)]
    fn grad(self, x: f32) -> f32 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => (x > 0.0) as u32 as f32,
            Activation::Gelu => math::gelu_grad(x),
            Activation::Silu => math::silu_grad(x),
        }
    }
}

/// ReLU that keeps NaN (as PyTorch's): `f32::max` would turn a NaN into 0 and hide a diverged
/// step from the non-finite check.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

// ---- CPU kernels ----------------------------------------------------------------------------
// Each works on a block of whole rows; `row0` is the block's first row in the kernel call, so
// dropout indices (`row · cols + column`) do not depend on how the rows were split among threads.

/// `y = dropout(relu?(y + b))` on a block of rows.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn bias_act_rows(y: &mut [f32], bias: &[f32], row0: usize, relu: bool, dropout: Option<(u32, u32, f32)>) {
    let cols = bias.len();
    for (r, yr) in y.chunks_exact_mut(cols).enumerate() {
        let base = ((row0 + r) * cols) as u32;
        match dropout {
            None if relu => yr.iter_mut().zip(bias).for_each(|(v, &b)| *v = self::relu(*v + b)),
            None => yr.iter_mut().zip(bias).for_each(|(v, &b)| *v += b),
            Some((seed, threshold, scale)) => {
                for (j, (v, &b)) in yr.iter_mut().zip(bias).enumerate() {
                    let x = if relu { self::relu(*v + b) } else { *v + b };
                    let keep = Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold;
                    *v = if keep { x * scale } else { 0.0 };
                }
            }
        }
    }
}

/// `dy = (h > 0) ? dy·scale : 0` (ReLU + dropout, read off the output).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn relu_backward_rows(dy: &mut [f32], h: &[f32], scale: f32) {
    for (d, &hv) in dy.iter_mut().zip(h) {
        *d = if hv > 0.0 { *d * scale } else { 0.0 };
    }
}

/// `db (+)= Σ_rows dy[.., c_first..c_first + db.len()]`: the sums of some of the columns of the
/// rows of `dy` (`cols` wide), so that workers can each take a range of columns.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn bias_grad_rows(db: &mut [f32], dy: &[f32], cols: usize, c_first: usize, accumulate: bool) {
    if !accumulate {
        db.fill(0.0);
    }
    // Blocks of rows, then strips of a block's columns, the sums in registers down the block's
    // rows (see `STRIP_COLS`) and carried in `db` between blocks: each column is summed in row
    // order, and a wide row is read once per block, not once per strip.
    for block in dy.chunks(BLOCK_ROWS * cols) {
        for_strips!(db.len(), STRIP_COLS, |c0, width| {
            let (mut part, first) = ([0.0f32; STRIP_COLS], c_first + c0);
            let part = &mut part[..width];
            part.copy_from_slice(&db[c0..c0 + width]);
            for r in block.chunks_exact(cols) {
                part.iter_mut().zip(&r[first..first + width]).for_each(|(o, &x)| *o += x);
            }
            db[c0..c0 + width].copy_from_slice(part);
        });
    }
}

/// `pre += b; out = dropout(act(pre))` on a block of rows.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn act_forward_rows(pre: &mut [f32], out: &mut [f32], bias: Option<&[f32]>, cols: usize, row0: usize, act: Activation, dropout: Option<(u32, u32, f32)>) {
    for (r, (pr, or)) in pre.chunks_exact_mut(cols).zip(out.chunks_exact_mut(cols)).enumerate() {
        if let Some(b) = bias {
            pr.iter_mut().zip(b).for_each(|(p, &b)| *p += b);
        }
        // One arm per activation so each loop is specialised (and vectorized) for it.
        macro_rules! apply {
            ($f:expr) => {
                match dropout {
                    None => or.iter_mut().zip(pr.iter()).for_each(|(o, &p)| *o = $f(p)),
                    Some((seed, threshold, scale)) => {
                        let base = ((row0 + r) * cols) as u32;
                        for (j, (o, &p)) in or.iter_mut().zip(pr.iter()).enumerate() {
                            // Computed for every element, then selected: a branch around it
                            // would keep the loop from vectorizing.
                            let (v, keep) = ($f(p) * scale, Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold);
                            *o = if keep { v } else { 0.0 };
                        }
                    }
                }
            };
        }
        match act {
            Activation::Identity => apply!(|p: f32| p),
            Activation::Relu => apply!(relu),
            Activation::Gelu => apply!(math::gelu),
            Activation::Silu => apply!(math::silu),
        }
    }
}

/// `d = d · mask · scale · act'(pre)` on a block of rows.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn act_backward_rows(d: &mut [f32], pre: &[f32], cols: usize, row0: usize, act: Activation, dropout: Option<(u32, u32, f32)>) {
    for (r, (dr, pr)) in d.chunks_exact_mut(cols).zip(pre.chunks_exact(cols)).enumerate() {
        macro_rules! apply {
            ($g:expr) => {
                match dropout {
                    None => dr.iter_mut().zip(pr).for_each(|(g, &p)| *g *= $g(p)),
                    Some((seed, threshold, scale)) => {
                        let base = ((row0 + r) * cols) as u32;
                        for (j, (g, &p)) in dr.iter_mut().zip(pr).enumerate() {
                            let (v, keep) = (*g * scale * $g(p), Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold);
                            *g = if keep { v } else { 0.0 };
                        }
                    }
                }
            };
        }
        match act {
            Activation::Identity => apply!(|_p: f32| 1.0f32),
            Activation::Relu => apply!(|p: f32| Activation::Relu.grad(p)),
            Activation::Gelu => apply!(math::gelu_grad),
            Activation::Silu => apply!(math::silu_grad),
        }
    }
}
