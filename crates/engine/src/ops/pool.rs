//! Pooling along time on channels-last activations `[samples, len, cols]`, forward and backward
//! side by side: `nn.MaxPool1d(2)` (the position of each maximum kept for the backward) and the
//! mean over time (the encoders' global average pool, over time steps or patches).

use multiversion::multiversion;

/// A pooling call: `samples` sequences of `len` steps of `cols` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub samples: usize,
    pub len: usize,
    pub cols: usize,
}

impl PoolShape {
    /// Steps after `MaxPool1d(2)` (a last odd step is dropped, as PyTorch's floor mode).
    pub fn pooled_len(&self) -> usize {
        self.len / 2
    }
}

// ---- CPU kernels (one sample per call) --------------------------------------------------------

/// `out[t] = max(x[2t], x[2t+1])` per column; `argmax[t]` = 1.0 where the second is strictly
/// larger (PyTorch keeps the first of equal values).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn maxpool_forward_sample(x: &[f32], out: &mut [f32], argmax: &mut [f32], cols: usize) {
    for ((pair, o), a) in x.chunks_exact(2 * cols).zip(out.chunks_exact_mut(cols)).zip(argmax.chunks_exact_mut(cols)) {
        let (first, second) = pair.split_at(cols);
        for (((o, a), &u), &v) in o.iter_mut().zip(a.iter_mut()).zip(first).zip(second) {
            let take_second = v > u || v.is_nan();
            *o = if take_second { v } else { u };
            *a = take_second as u32 as f32;
        }
    }
}

/// `dx[2t + argmax[t]] = dout[t]`, zero elsewhere (including a dropped last odd step); every
/// element written once.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn maxpool_backward_sample(dout: &[f32], argmax: &[f32], dx: &mut [f32], cols: usize) {
    let pairs = dout.len() / cols;
    let (paired, tail) = dx.split_at_mut(2 * pairs * cols);
    tail.fill(0.0);
    for ((pair, d), a) in paired.chunks_exact_mut(2 * cols).zip(dout.chunks_exact(cols)).zip(argmax.chunks_exact(cols)) {
        let (first, second) = pair.split_at_mut(cols);
        for (((f, s), &g), &w) in first.iter_mut().zip(second.iter_mut()).zip(d).zip(a) {
            let take_second = w > 0.5;
            *f = if take_second { 0.0 } else { g };
            *s = if take_second { g } else { 0.0 };
        }
    }
}

/// `out[c] = mean_t x[t, c]`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn meanpool_forward_sample(x: &[f32], out: &mut [f32]) {
    let cols = out.len();
    let len = x.len() / cols;
    out.fill(0.0);
    for r in x.chunks_exact(cols) {
        out.iter_mut().zip(r).for_each(|(o, &v)| *o += v);
    }
    let inv = 1.0 / len as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// `dx[t, c] = dout[c] / len`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn meanpool_backward_sample(dout: &[f32], dx: &mut [f32]) {
    let cols = dout.len();
    let inv = 1.0 / (dx.len() / cols) as f32;
    for r in dx.chunks_exact_mut(cols) {
        r.iter_mut().zip(dout).for_each(|(o, &g)| *o = g * inv);
    }
}
