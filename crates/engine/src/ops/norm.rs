//! Normalisations, forward and backward side by side: LayerNorm (per row, with the post-norm
//! residual add `LN(a + dropout(b))` of a Transformer layer fused in) and BatchNorm (per column
//! over a group of rows, ReLU optionally fused after it).
//!
//! Activations are channels-last (`[rows, features]`), so BatchNorm1d over channels of a
//! `[B, C, L]` tensor (PyTorch's layout) is, here, statistics per column over the `B·L` rows of a
//! group. A group is one forward call in PyTorch: the contrastive step runs anchor and positive
//! as two groups of one call, so each view is normalised by its own statistics, as when
//! PHM-Vibench calls the encoder once per view.

use multiversion::multiversion;

use crate::arena::{Arenas, Init, Slot, Tensors};
use crate::cpu::math;
use crate::device::{Device, Dropout, View};

/// PyTorch's defaults for LayerNorm and BatchNorm.
pub const EPS: f32 = 1e-5;
/// BatchNorm's running-statistics momentum (PyTorch's default).
pub const MOMENTUM: f32 = 0.1;

// ---- LayerNorm -------------------------------------------------------------------------------

/// `nn.LayerNorm(cols)`: `weight` (γ) and `bias` (β).
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub cols: usize,
    pub gamma: View,
    pub beta: View,
    pub dgamma: View,
    pub dbeta: View,
}

#[derive(Clone, Copy, Debug)]
pub struct LayerNormSlots {
    cols: usize,
    gamma: Slot,
    beta: Slot,
}

impl LayerNormSlots {
    pub fn declare(t: &mut Tensors, name: &str, cols: usize) -> Self {
        let gamma = t.param(&format!("{name}.weight"), &[cols], Init::Constant(1.0));
        let beta = t.param(&format!("{name}.bias"), &[cols], Init::Constant(0.0));
        LayerNormSlots { cols, gamma, beta }
    }

    pub fn bind(self, a: &Arenas) -> LayerNorm {
        LayerNorm { cols: self.cols, gamma: a.param(self.gamma), beta: a.param(self.beta), dgamma: a.grad(self.gamma), dbeta: a.grad(self.beta) }
    }
}

impl LayerNorm {
    /// `sum = a + dropout(b)`, `out = LN(sum)`; `stats` (2 × rows) kept.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual<D: Device>(&self, dev: &mut D, a: View, b: View, dropout: Option<Dropout>, sum: View, out: View, stats: View) {
        dev.add_layernorm_forward(a, b, dropout, sum, out, stats, self.gamma, self.beta, self.cols, EPS);
    }

    /// From `dout`: `dsum` (the residual input's gradient) and `db` (the sub-layer output's).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_residual<D: Device>(&self, dev: &mut D, dout: View, sum: View, stats: View, dsum: View, db: View, dropout: Option<Dropout>, accumulate: bool) {
        dev.layernorm_backward(dout, sum, stats, self.gamma, self.dgamma, self.dbeta, dsum, db, dropout, self.cols, accumulate);
    }
}

// ---- BatchNorm -------------------------------------------------------------------------------

/// What a BatchNorm kernel call needs besides its views.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormArgs {
    pub cols: usize,
    /// Equal row groups, each normalised by its own statistics (training mode).
    pub groups: usize,
    pub eps: f32,
    pub momentum: f32,
    /// Batch statistics (and a running-statistics update) rather than the running statistics.
    pub train: bool,
    /// ReLU after the affine map.
    pub relu: bool,
}

/// `nn.BatchNorm1d(cols)`: γ, β, and the running mean and variance.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    pub cols: usize,
    pub gamma: View,
    pub beta: View,
    pub dgamma: View,
    pub dbeta: View,
    /// `[running_mean; running_var]`.
    pub running: View,
    /// Index of its `num_batches_tracked` among the encoder's counters.
    pub counter: usize,
    pub relu: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchNormSlots {
    cols: usize,
    gamma: Slot,
    beta: Slot,
    mean: Slot,
    var: Slot,
    counter: Slot,
    relu: bool,
}

impl BatchNormSlots {
    /// `{name}.weight, .bias, .running_mean, .running_var, .num_batches_tracked` in PyTorch's order.
    pub fn declare(t: &mut Tensors, name: &str, cols: usize, relu: bool) -> Self {
        let gamma = t.param(&format!("{name}.weight"), &[cols], Init::Constant(1.0));
        let beta = t.param(&format!("{name}.bias"), &[cols], Init::Constant(0.0));
        let mean = t.buffer(&format!("{name}.running_mean"), &[cols], Init::Constant(0.0));
        let var = t.buffer(&format!("{name}.running_var"), &[cols], Init::Constant(1.0));
        let counter = t.counter(&format!("{name}.num_batches_tracked"));
        BatchNormSlots { cols, gamma, beta, mean, var, counter, relu }
    }

    pub fn bind(self, a: &Arenas) -> BatchNorm {
        BatchNorm {
            cols: self.cols,
            gamma: a.param(self.gamma),
            beta: a.param(self.beta),
            dgamma: a.grad(self.gamma),
            dbeta: a.grad(self.beta),
            running: a.buffer_span(self.mean, self.var),
            counter: self.counter.offset(),
            relu: self.relu,
        }
    }
}

impl BatchNorm {
    pub fn args(&self, groups: usize, train: bool) -> BatchNormArgs {
        BatchNormArgs { cols: self.cols, groups, eps: EPS, momentum: MOMENTUM, train, relu: self.relu }
    }

    /// `out = relu?(BN(x))`; in training the running statistics are updated and the counter
    /// advances by one per group (PyTorch counts forward calls).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, out: View, stats: View, groups: usize, train: bool, counters: &mut [u64]) {
        dev.batchnorm_forward(x, out, stats, self.gamma, self.beta, self.running, self.args(groups, train));
        if train {
            counters[self.counter] += groups as u64;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(&self, dev: &mut D, dout: View, out: View, x: View, stats: View, dx: View, groups: usize, accumulate: bool) {
        dev.batchnorm_backward(dout, out, x, stats, self.gamma, self.dgamma, self.dbeta, dx, self.args(groups, true), accumulate);
    }
}

// ---- CPU kernels ----------------------------------------------------------------------------

/// LayerNorm forward over a block of rows: `sum = a + dropout(b)`, `out = LN(sum)·γ + β`,
/// `mean`, `rstd` per row. Statistics in f32, two passes with eight accumulators.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_forward_rows(
    a: &[f32], b: &[f32], sum: &mut [f32], out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], gamma: &[f32], beta: &[f32], row0: usize, eps: f32, dropout: Option<(u32, u32, f32)>,
) {
    let cols = gamma.len();
    for (r, ((((ar, br), sr), or), (m, rs))) in
        a.chunks_exact(cols).zip(b.chunks_exact(cols)).zip(sum.chunks_exact_mut(cols)).zip(out.chunks_exact_mut(cols)).zip(mean.iter_mut().zip(rstd.iter_mut())).enumerate()
    {
        match dropout {
            None => sr.iter_mut().zip(ar.iter().zip(br)).for_each(|(s, (&x, &y))| *s = x + y),
            Some((seed, threshold, scale)) => {
                let base = ((row0 + r) * cols) as u32;
                for (j, (s, (&x, &y))) in sr.iter_mut().zip(ar.iter().zip(br)).enumerate() {
                    let keep = Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold;
                    *s = x + if keep { y * scale } else { 0.0 };
                }
            }
        }
        // Two passes in f32 with eight accumulators (rows are at most a few thousand wide).
        let muf = math::sum(sr) / cols as f32;
        let var = math::sum_sq_dev(sr, muf) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &s), &g), &bt) in or.iter_mut().zip(sr.iter()).zip(gamma).zip(beta) {
            *o = (s - muf) * inv * g + bt;
        }
        *m = muf;
        *rs = inv;
    }
}

/// LayerNorm backward over a block of rows; `dgamma`/`dbeta` are this block's own partial sums
/// (added to, the caller sums the blocks in a fixed order).
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_backward_rows(
    dout: &[f32], sum: &[f32], mean: &[f32], rstd: &[f32], gamma: &[f32], dsum: &mut [f32], db: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32], row0: usize, dropout: Option<(u32, u32, f32)>,
) {
    let cols = gamma.len();
    for (r, ((((dor, sr), dsr), dbr), (&mu, &inv))) in
        dout.chunks_exact(cols).zip(sum.chunks_exact(cols)).zip(dsum.chunks_exact_mut(cols)).zip(db.chunks_exact_mut(cols)).zip(mean.iter().zip(rstd)).enumerate()
    {
        // dnorm = dout·γ; dsum = σ⁻¹·(dnorm − mean(dnorm) − x̂·mean(dnorm·x̂))
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for (((&d, &s), &g), (dg, dbt)) in dor.iter().zip(sr).zip(gamma).zip(dgamma.iter_mut().zip(dbeta.iter_mut())) {
            let xhat = (s - mu) * inv;
            let dn = d * g;
            s1 += dn;
            s2 += dn * xhat;
            *dg += d * xhat;
            *dbt += d;
        }
        let (m1, m2) = (s1 / cols as f32, s2 / cols as f32);
        for (((ds, &d), &s), &g) in dsr.iter_mut().zip(dor).zip(sr).zip(gamma) {
            let xhat = (s - mu) * inv;
            *ds = inv * (d * g - m1 - xhat * m2);
        }
        match dropout {
            None => dbr.copy_from_slice(dsr),
            Some((seed, threshold, scale)) => {
                let base = ((row0 + r) * cols) as u32;
                for (j, (o, &g)) in dbr.iter_mut().zip(dsr.iter()).enumerate() {
                    let keep = Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold;
                    *o = if keep { g * scale } else { 0.0 };
                }
            }
        }
    }
}

/// Rows summed in f32 before their sum joins the f64 total: vectorized, and accurate (a block's
/// f32 rounding is ~1e-6 relative; the blocks add in f64).
const BLOCK_ROWS: usize = 128;

/// Columns per strip of the column sums: a strip's f32 partial sums live on the stack, so any
/// width runs without allocating (BatchNorm widths are channels or d_model, up to a few hundred).
const STRIP_COLS: usize = 256;

/// `acc[c] = Σ_rows term(row[c0 + c], center[c])` over the columns `c0..c0 + acc.len()` of the
/// rows of `x`: rows in blocks of [`BLOCK_ROWS`] summed in f32 (`part`), the blocks in f64.
/// `term` is generic, so each caller's loop is inlined and vectorized across the strip.
#[inline(always)]
fn strip_sums(x: &[f32], cols: usize, c0: usize, center: &[f32], acc: &mut [f64], part: &mut [f32], term: impl Fn(f32, f32) -> f32) {
    let width = acc.len();
    acc.fill(0.0);
    for block in x.chunks(BLOCK_ROWS * cols) {
        part.fill(0.0);
        for r in block.chunks_exact(cols) {
            part.iter_mut().zip(&r[c0..c0 + width]).zip(center).for_each(|((a, &v), &m)| *a += term(v, m));
        }
        acc.iter_mut().zip(part.iter()).for_each(|(a, &v)| *a += v as f64);
    }
}

/// Per-column mean and (biased) variance of the rows of `x`, two passes (mean, then squared
/// deviations): the column count is small and the row count large, so the sums run down the
/// rows, vectorized across a strip of columns.
#[multiversion(targets = "simd")]
pub(crate) fn column_moments(x: &[f32], cols: usize, acc: &mut [f64], mean: &mut [f32], var: &mut [f32]) {
    let rows = x.len() / cols;
    let mut part = [0.0f32; STRIP_COLS];
    for c0 in (0..cols).step_by(STRIP_COLS) {
        let width = STRIP_COLS.min(cols - c0);
        let (acc, part) = (&mut acc[c0..c0 + width], &mut part[..width]);
        let (mean, var) = (&mut mean[c0..c0 + width], &mut var[c0..c0 + width]);
        strip_sums(x, cols, c0, mean, acc, part, |v, _| v);
        for (m, a) in mean.iter_mut().zip(acc.iter()) {
            *m = (*a / rows as f64) as f32;
        }
        strip_sums(x, cols, c0, mean, acc, part, |v, m| (v - m) * (v - m));
        for (v, a) in var.iter_mut().zip(acc.iter()) {
            *v = (*a / rows as f64) as f32;
        }
    }
}

/// `out = relu?((x − mean)·rstd·γ + β)` on a block of rows.
#[multiversion(targets = "simd")]
pub(crate) fn batchnorm_normalize_rows(x: &[f32], out: &mut [f32], mean: &[f32], rstd: &[f32], gamma: &[f32], beta: &[f32], relu: bool) {
    let cols = gamma.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        for (((((o, &v), &m), &s), &g), &b) in or.iter_mut().zip(xr).zip(mean).zip(rstd).zip(gamma).zip(beta) {
            let y = (v - m) * s * g + b;
            *o = if relu { crate::ops::act::relu(y) } else { y };
        }
    }
}

/// The per-column sums of BatchNorm's backward over one group: `Σ dy` and `Σ dy·x̂`, after the
/// ReLU mask is applied to `dy` in place (blocks of rows in f32, the blocks in f64; strips of
/// columns, so no width allocates).
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batchnorm_backward_sums(dy: &mut [f32], out: &[f32], x: &[f32], mean: &[f32], rstd: &[f32], relu: bool, sum_dy: &mut [f64], sum_dy_xhat: &mut [f64]) {
    let cols = mean.len();
    let span = BLOCK_ROWS * cols;
    let (mut pa, mut pb) = ([0.0f32; STRIP_COLS], [0.0f32; STRIP_COLS]);
    // One pass per strip of columns: mask, then both sums, row by row (as `strip_sums`, fused).
    for c0 in (0..cols).step_by(STRIP_COLS) {
        let c1 = (c0 + STRIP_COLS).min(cols);
        let (pa, pb) = (&mut pa[..c1 - c0], &mut pb[..c1 - c0]);
        let (mean, rstd) = (&mean[c0..c1], &rstd[c0..c1]);
        let (sum_dy, sum_dy_xhat) = (&mut sum_dy[c0..c1], &mut sum_dy_xhat[c0..c1]);
        sum_dy.fill(0.0);
        sum_dy_xhat.fill(0.0);
        for ((db, ob), xb) in dy.chunks_mut(span).zip(out.chunks(span)).zip(x.chunks(span)) {
            pa.fill(0.0);
            pb.fill(0.0);
            for ((dr, or), xr) in db.chunks_exact_mut(cols).zip(ob.chunks_exact(cols)).zip(xb.chunks_exact(cols)) {
                let (dr, or, xr) = (&mut dr[c0..c1], &or[c0..c1], &xr[c0..c1]);
                if relu {
                    dr.iter_mut().zip(or).for_each(|(d, &o)| *d = if o > 0.0 { *d } else { 0.0 });
                }
                pa.iter_mut().zip(dr.iter()).for_each(|(a, &d)| *a += d);
                pb.iter_mut().zip(dr.iter().zip(xr)).zip(mean.iter().zip(rstd)).for_each(|((b, (&d, &v)), (&m, &s))| *b += d * (v - m) * s);
            }
            sum_dy.iter_mut().zip(pa.iter()).for_each(|(a, &v)| *a += v as f64);
            sum_dy_xhat.iter_mut().zip(pb.iter()).for_each(|(a, &v)| *a += v as f64);
        }
    }
}

/// `dx = γ·rstd·(dy − Σdy/n − x̂·Σ(dy·x̂)/n)` on a block of rows of one group.
#[multiversion(targets = "simd")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batchnorm_backward_rows(dy: &[f32], x: &[f32], dx: &mut [f32], mean: &[f32], rstd: &[f32], gamma: &[f32], mean_dy: &[f32], mean_dy_xhat: &[f32]) {
    let cols = gamma.len();
    for ((dr, xr), dxr) in dy.chunks_exact(cols).zip(x.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        for ((((o, (&d, &v)), (&m, &s)), &g), (&md, &mx)) in dxr.iter_mut().zip(dr.iter().zip(xr)).zip(mean.iter().zip(rstd)).zip(gamma).zip(mean_dy.iter().zip(mean_dy_xhat)) {
            let xhat = (v - m) * s;
            *o = g * s * (d - md - xhat * mx);
        }
    }
}
