//! Normalisations, forward and backward side by side: LayerNorm (per row, with the post-norm
//! residual add `LN(a + dropout(b))` of a Transformer layer fused in) and BatchNorm (per column
//! over a group of rows, ReLU and a MaxPool1d(2) optionally fused after it: the CNN's
//! `BN → ReLU → MaxPool` reads its input once and writes only the pooled rows, and its backward
//! reads the pooled gradient directly instead of a scattered copy).
//!
//! Activations are channels-last (`[rows, features]`), so BatchNorm1d over channels of a
//! `[B, C, L]` tensor (PyTorch's layout) is, here, statistics per column over the `B·L` rows of a
//! group. A group is one forward call in PyTorch: the contrastive step runs anchor and positive
//! as two groups of one call, so each view is normalised by its own statistics, as when
//! PHM-Vibench calls the encoder once per view.

use multiversion::multiversion;

use crate::arena::{Arenas, Init, Slot, Tensors};
use crate::cpu::math::{self, for_strips, BLOCK_ROWS, STRIP_COLS};
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
    /// `Some(len)`: a MaxPool1d(2) follows (after the ReLU) over each sample's `len` rows, so
    /// the output is `[samples·⌊len/2⌋, cols]` with the position of each maximum beside it.
    pub pool: Option<usize>,
}

impl BatchNormArgs {
    /// Output rows for `rows` input rows.
    pub fn out_rows(&self, rows: usize) -> usize {
        match self.pool {
            Some(len) if len > 0 => rows / len * (len / 2),
            Some(_) => 0,
            None => rows,
        }
    }
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
    pub fn args(&self, groups: usize, train: bool, pool: Option<usize>) -> BatchNormArgs {
        BatchNormArgs { cols: self.cols, groups, eps: EPS, momentum: MOMENTUM, train, relu: self.relu, pool }
    }

    /// `out = pool?(relu?(BN(x)))` (`pool`: see [`BatchNormArgs::pool`]; `argmax` empty without
    /// one); in training the running statistics are updated, group after group.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, out: View, argmax: View, stats: View, groups: usize, pool: Option<usize>, train: bool) {
        dev.batchnorm_forward(x, out, argmax, stats, self.gamma, self.beta, self.running, self.args(groups, train, pool));
    }

    /// Advances `num_batches_tracked` after a training forward of `groups` groups, one per group
    /// (PyTorch counts forward calls).
    pub fn count(&self, counters: &mut [u64], groups: usize) {
        counters[self.counter] += groups as u64;
    }

    /// Folds the running-statistics update of `lane` (the same BatchNorm on another lane, whose
    /// running statistics started at zero, so hold `m·batch statistics`) into this one's, as if
    /// its forward had come after this one's: `running = (1 − m)·running + lane`.
    pub fn fold_running<D: Device>(&self, dev: &mut D, lane: &BatchNorm) {
        dev.scale_add(self.running, 1.0 - MOMENTUM, lane.running);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(&self, dev: &mut D, dout: View, out: View, argmax: View, x: View, stats: View, dx: View, groups: usize, pool: Option<usize>, accumulate: bool) {
        dev.batchnorm_backward(dout, out, argmax, x, stats, self.gamma, self.dgamma, self.dbeta, dx, self.args(groups, true, pool), accumulate);
    }
}

// ---- CPU kernels ----------------------------------------------------------------------------

/// LayerNorm forward over a block of rows: `sum = a + dropout(b)`, `out = LN(sum)·γ + β`,
/// `mean`, `rstd` per row. Statistics in f32, two passes with eight accumulators.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
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
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
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

/// `acc[c] = Σ_rows term(row[c0 + c], center[c])` over the columns `c0..c0 + acc.len()` of the
/// rows of `x`: rows in blocks of [`BLOCK_ROWS`] summed in f32, the blocks in f64. `term` is
/// generic, so each caller's loop is inlined and vectorized across the strip.
#[inline(always)]
fn strip_sums(x: &[f32], cols: usize, c0: usize, center: &[f32], acc: &mut [f64], term: impl Fn(f32, f32) -> f32) {
    let width = acc.len();
    acc.fill(0.0);
    for block in x.chunks(BLOCK_ROWS * cols) {
        let mut part = [0.0f32; STRIP_COLS];
        let part = &mut part[..width];
        for r in block.chunks_exact(cols) {
            part.iter_mut().zip(&r[c0..c0 + width]).zip(center).for_each(|((a, &v), &m)| *a += term(v, m));
        }
        acc.iter_mut().zip(part.iter()).for_each(|(a, &v)| *a += v as f64);
    }
}

/// Per-column mean and (biased) variance of the rows of `x`, two passes (mean, then squared
/// deviations): the column count is small and the row count large, so the sums run down the
/// rows, vectorized across a strip of columns.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn column_moments(x: &[f32], cols: usize, acc: &mut [f64], mean: &mut [f32], var: &mut [f32]) {
    let rows = x.len() / cols;
    for_strips!(cols, STRIP_COLS, |c0, width| {
        let acc = &mut acc[c0..c0 + width];
        let (mean, var) = (&mut mean[c0..c0 + width], &mut var[c0..c0 + width]);
        strip_sums(x, cols, c0, mean, acc, |v, _| v);
        for (m, a) in mean.iter_mut().zip(acc.iter()) {
            *m = (*a / rows as f64) as f32;
        }
        strip_sums(x, cols, c0, mean, acc, |v, m| (v - m) * (v - m));
        for (v, a) in var.iter_mut().zip(acc.iter()) {
            *v = (*a / rows as f64) as f32;
        }
    });
}

/// `out = relu?((x − mean)·rstd·γ + β)` on a block of rows.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn batchnorm_normalize_rows(x: &[f32], out: &mut [f32], mean: &[f32], rstd: &[f32], gamma: &[f32], beta: &[f32], relu: bool) {
    let cols = gamma.len();
    // Strip by strip, so the column parameters stay in registers down the rows.
    for_strips!(cols, STRIP_COLS, |c0, width| {
        let c = c0..c0 + width;
        let (mean, rstd, gamma, beta) = (&mean[c.clone()], &rstd[c.clone()], &gamma[c.clone()], &beta[c.clone()]);
        for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            for (((((o, &v), &m), &s), &g), &b) in or[c.clone()].iter_mut().zip(&xr[c.clone()]).zip(mean).zip(rstd).zip(gamma).zip(beta) {
                let y = (v - m) * s * g + b;
                *o = if relu { crate::ops::act::relu(y) } else { y };
            }
        }
    });
}

/// As [`batchnorm_normalize_rows`], then a MaxPool1d(2) over consecutive pairs of rows: `out[t]`
/// is the larger of rows `2t` and `2t + 1` after the normalisation, `argmax[t]` 1.0 where it is
/// the second (the same comparison as `pool::maxpool_forward_sample`, so the same bits as the
/// two ops in turn).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batchnorm_normalize_pairs(x: &[f32], out: &mut [f32], argmax: &mut [f32], mean: &[f32], rstd: &[f32], gamma: &[f32], beta: &[f32], relu: bool) {
    let cols = gamma.len();
    for_strips!(cols, STRIP_COLS, |c0, width| {
        let c = c0..c0 + width;
        let (mean, rstd, gamma, beta) = (&mean[c.clone()], &rstd[c.clone()], &gamma[c.clone()], &beta[c.clone()]);
        for ((pair, or), ar) in x.chunks_exact(2 * cols).zip(out.chunks_exact_mut(cols)).zip(argmax.chunks_exact_mut(cols)) {
            let (first, second) = pair.split_at(cols);
            for ((((((o, a), (&u, &v)), &m), &s), &g), &b) in
                or[c.clone()].iter_mut().zip(ar[c.clone()].iter_mut()).zip(first[c.clone()].iter().zip(&second[c.clone()])).zip(mean).zip(rstd).zip(gamma).zip(beta)
            {
                let (mut p, mut q) = ((u - m) * s * g + b, (v - m) * s * g + b);
                if relu {
                    (p, q) = (crate::ops::act::relu(p), crate::ops::act::relu(q));
                }
                let take_second = q > p || q.is_nan();
                *o = if take_second { q } else { p };
                *a = take_second as u32 as f32;
            }
        }
    });
}

/// What reaches BatchNorm's output in the backward: the gradient of `out`, masked by the ReLU
/// (`out > 0`), and routed back through the MaxPool where one follows (`argmax`).
#[derive(Clone, Copy)]
pub(crate) struct Upstream<'a> {
    pub dout: &'a [f32],
    pub out: &'a [f32],
    pub argmax: &'a [f32],
    pub cols: usize,
    pub relu: bool,
    pub pool: Option<usize>,
}

/// Rows `r0..` (of the whole call, as many as `dy` holds) of BatchNorm's output gradient formed
/// from `up` into `dy`: the ReLU's mask and, with a pool, each pooled gradient written to the
/// row its maximum came from (0 to the other and to a sample's last odd row), as
/// `pool::maxpool_backward_sample`.
#[inline(always)]
fn form_upstream(up: &Upstream, r0: usize, dy: &mut [f32]) {
    let cols = up.cols;
    let Some(len) = up.pool else {
        let span = r0 * cols..r0 * cols + dy.len();
        let (d, o) = (&up.dout[span.clone()], &up.out[span]);
        if up.relu {
            dy.iter_mut().zip(d.iter().zip(o)).for_each(|(g, (&d, &o))| *g = if o > 0.0 { d } else { 0.0 });
        } else {
            dy.copy_from_slice(d);
        }
        return;
    };
    let (half, relu) = (len / 2, up.relu);
    let source = |t: usize| (&up.dout[t * cols..(t + 1) * cols], &up.out[t * cols..(t + 1) * cols], &up.argmax[t * cols..(t + 1) * cols]);
    // One row of a pair on its own (where a block starts or ends between the two).
    let one = |g: &mut [f32], t: usize, second: bool| {
        let (d, o, a) = source(t);
        g.iter_mut().zip(d.iter().zip(o)).zip(a).for_each(|((g, (&d, &o)), &a)| *g = if (a > 0.5) == second && (!relu || o > 0.0) { d } else { 0.0 });
    };
    // Span by span of one sample's rows: whole pairs both rows at once, as the pool's backward.
    let rows = dy.len() / cols;
    let mut k = 0;
    while k < rows {
        let (sample, mut step) = ((r0 + k) / len, (r0 + k) % len);
        let end = (k + len - step).min(rows);
        let pair = |step: usize| sample * half + step / 2;
        if step % 2 == 1 && step < 2 * half {
            one(&mut dy[k * cols..(k + 1) * cols], pair(step), true);
            (k, step) = (k + 1, step + 1);
        }
        while k + 2 <= end && step + 2 <= 2 * half {
            let (d, o, a) = source(pair(step));
            let (first, second) = dy[k * cols..(k + 2) * cols].split_at_mut(cols);
            for ((((f, s), &d), &o), &a) in first.iter_mut().zip(second.iter_mut()).zip(d).zip(o).zip(a) {
                let d = if !relu || o > 0.0 { d } else { 0.0 };
                let take_second = a > 0.5;
                *f = if take_second { 0.0 } else { d };
                *s = if take_second { d } else { 0.0 };
            }
            (k, step) = (k + 2, step + 2);
        }
        if k < end && step < 2 * half {
            // The block ends between the two rows of a pair.
            one(&mut dy[k * cols..(k + 1) * cols], pair(step), false);
            k += 1;
        } else if k < end {
            // The last step of an odd length: dropped by the pool.
            dy[k * cols..(k + 1) * cols].fill(0.0);
            k += 1;
        }
    }
}

/// The per-column sums of BatchNorm's backward over one group (rows `r0..` of the call): `Σ dy`
/// and `Σ dy·x̂`, with `dy` formed from `up` block by block as it is summed (and kept in `dy`, the
/// input gradient's buffer, for [`batchnorm_backward_rows`]). Blocks of rows summed in f32, the blocks in f64; strips of
/// columns, so no width allocates.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batchnorm_backward_sums(up: &Upstream, r0: usize, dy: &mut [f32], x: &[f32], mean: &[f32], rstd: &[f32], sum_dy: &mut [f64], sum_dy_xhat: &mut [f64]) {
    let cols = mean.len();
    let span = BLOCK_ROWS * cols;
    sum_dy.fill(0.0);
    sum_dy_xhat.fill(0.0);
    for (b, (db, xb)) in dy.chunks_mut(span).zip(x.chunks(span)).enumerate() {
        // Formed here, the block is in L1 when it is summed.
        form_upstream(up, r0 + b * BLOCK_ROWS, db);
        // Two sums a column: strips half as wide, so both stay in registers.
        for_strips!(cols, STRIP_COLS / 2, |c0, width| {
            let c1 = c0 + width;
            let (mut pa, mut pb) = ([0.0f32; STRIP_COLS / 2], [0.0f32; STRIP_COLS / 2]);
            let (pa, pb) = (&mut pa[..width], &mut pb[..width]);
            let (mean, rstd) = (&mean[c0..c1], &rstd[c0..c1]);
            for (dr, xr) in db.chunks_exact(cols).zip(xb.chunks_exact(cols)) {
                let (dr, xr) = (&dr[c0..c1], &xr[c0..c1]);
                pa.iter_mut().zip(dr).for_each(|(a, &d)| *a += d);
                pb.iter_mut().zip(dr.iter().zip(xr)).zip(mean.iter().zip(rstd)).for_each(|((b, (&d, &v)), (&m, &s))| *b += d * (v - m) * s);
            }
            sum_dy[c0..c1].iter_mut().zip(pa.iter()).for_each(|(a, &v)| *a += v as f64);
            sum_dy_xhat[c0..c1].iter_mut().zip(pb.iter()).for_each(|(a, &v)| *a += v as f64);
        });
    }
}

/// `dx = γ·rstd·(dy − Σdy/n − x̂·Σ(dy·x̂)/n)` on a block of rows of one group, in place: `dx`
/// holds `dy` on entry (each element depends on its own `dy` only).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn batchnorm_backward_rows(x: &[f32], dx: &mut [f32], mean: &[f32], rstd: &[f32], gamma: &[f32], mean_dy: &[f32], mean_dy_xhat: &[f32]) {
    let cols = gamma.len();
    for_strips!(cols, STRIP_COLS, |c0, width| {
        let c = c0..c0 + width;
        let (mean, rstd, gamma, mean_dy, mean_dy_xhat) = (&mean[c.clone()], &rstd[c.clone()], &gamma[c.clone()], &mean_dy[c.clone()], &mean_dy_xhat[c.clone()]);
        for (xr, dxr) in x.chunks_exact(cols).zip(dx.chunks_exact_mut(cols)) {
            for ((((o, &v), (&m, &s)), &g), (&md, &mx)) in dxr[c.clone()].iter_mut().zip(&xr[c.clone()]).zip(mean.iter().zip(rstd)).zip(gamma).zip(mean_dy.iter().zip(mean_dy_xhat)) {
                let xhat = (v - m) * s;
                *o = g * s * (*o - md - xhat * mx);
            }
        }
    });
}
