//! `nn.Conv1d` with stride and zero padding on channels-last activations, forward and backward
//! side by side, as GEMMs over an im2col matrix:
//!
//! - forward: `cols[S·Lout, C·K] = im2col(x)`, `y = cols · Wᵀ + b` (PyTorch's weight `[out, C, K]`
//!   is `[out, C·K]` row-major, the column order of `cols`);
//! - backward: `dW = dyᵀ · cols`, `db = Σ dy`, `dcols = dy · W`, `dx = col2im(dcols)`.
//!
//! Why im2col rather than a direct kernel: the encoders' convolutions are small (C·K ≤ 192,
//! out ≤ 64) and the GEMM kernel runs them near its peak once the rows of all samples are one
//! matrix; the copy costs `K/stride` times the input (4× for the wide first layer, 3× for k = 3).
//! The direct alternative was measured on the same shapes (docs/encoders.md).

use multiversion::multiversion;

use crate::arena::{Arenas, Init, Tensors};
use crate::device::{Device, View};
use crate::ops::linear::{Linear, LinearSlots};

/// A convolution call: `samples` sequences of `len_in` steps × `channels`, kernel `kernel`,
/// `stride`, zero `padding` on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub samples: usize,
    pub len_in: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Output steps, PyTorch's `⌊(L + 2p − k)/s⌋ + 1`, or `None` where the input is too short.
    pub fn len_out(&self) -> Option<usize> {
        let padded = self.len_in + 2 * self.padding;
        (padded >= self.kernel && self.stride > 0).then(|| (padded - self.kernel) / self.stride + 1)
    }

    /// Columns of the im2col matrix, `C·K`.
    pub fn patch(&self) -> usize {
        self.channels * self.kernel
    }
}

/// A 1-D convolution: its shape (per sample) and the Linear map over im2col rows that it is.
#[derive(Clone, Copy, Debug)]
pub struct Conv1d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// `[out, C·K]` weights and bias: the GEMM side of the convolution.
    pub map: Linear,
}

#[derive(Clone, Copy, Debug)]
pub struct Conv1dSlots {
    kernel: usize,
    stride: usize,
    padding: usize,
    map: LinearSlots,
}

impl Conv1dSlots {
    /// `{name}.weight [out, in, k]` and `{name}.bias [out]`, initialised as PyTorch's
    /// `nn.Conv1d` (uniform, bound `1/√(in·k)`).
    pub fn declare(t: &mut Tensors, name: &str, channels_in: usize, channels_out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        let fan_in = channels_in * kernel;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let map = LinearSlots::declare_shaped(t, name, fan_in, channels_out, &[channels_out, channels_in, kernel], Init::Uniform(bound), Init::Uniform(bound));
        Conv1dSlots { kernel, stride, padding, map }
    }

    pub fn bind(self, a: &Arenas) -> Conv1d {
        Conv1d { kernel: self.kernel, stride: self.stride, padding: self.padding, map: self.map.bind(a) }
    }
}

impl Conv1d {
    pub fn channels_in(&self) -> usize {
        self.map.in_features / self.kernel
    }

    pub fn channels_out(&self) -> usize {
        self.map.out_features
    }

    pub fn shape(&self, samples: usize, len_in: usize) -> ConvShape {
        ConvShape { samples, len_in, channels: self.channels_in(), kernel: self.kernel, stride: self.stride, padding: self.padding }
    }

    /// `y[S·Lout, out] = conv(x[S, L, C])`, through the im2col buffer `cols`.
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, cols: View, y: View, s: ConvShape) {
        let rows = s.samples * s.len_out().unwrap_or(0);
        dev.im2col(x, cols, s);
        self.map.forward(dev, cols, y, rows);
    }

    /// Parameter gradients from `dy`, and `dx` where asked (through `dcols`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(&self, dev: &mut D, cols: View, dy: View, dcols: View, dx: Option<View>, s: ConvShape, accumulate: bool) {
        let rows = s.samples * s.len_out().unwrap_or(0);
        self.map.backward(dev, cols, dy, dx.map(|_| dcols), rows, accumulate, false, false);
        if let Some(dx) = dx {
            dev.col2im(dcols, dx, s);
        }
    }
}

// ---- CPU kernels (one sample per call) --------------------------------------------------------

/// `cols[t, c·K + k] = x[t·stride − padding + k, c]`, zero outside the input.
#[multiversion(targets = "simd")]
pub(crate) fn im2col_sample(x: &[f32], cols: &mut [f32], s: ConvShape) {
    let (c, k, len) = (s.channels, s.kernel, s.len_in);
    for (t, row) in cols.chunks_exact_mut(c * k).enumerate() {
        let start = (t * s.stride) as isize - s.padding as isize;
        for kk in 0..k {
            let pos = start + kk as isize;
            if pos < 0 || pos >= len as isize {
                for ch in 0..c {
                    row[ch * k + kk] = 0.0;
                }
            } else {
                let src = &x[pos as usize * c..pos as usize * c + c];
                for (ch, &v) in src.iter().enumerate() {
                    row[ch * k + kk] = v;
                }
            }
        }
    }
}

/// `dx = Σ` of `dcols` scattered back to the positions im2col read (`dx` written whole).
#[multiversion(targets = "simd")]
pub(crate) fn col2im_sample(dcols: &[f32], dx: &mut [f32], s: ConvShape) {
    let (c, k, len) = (s.channels, s.kernel, s.len_in);
    dx.fill(0.0);
    for (t, row) in dcols.chunks_exact(c * k).enumerate() {
        let start = (t * s.stride) as isize - s.padding as isize;
        for kk in 0..k {
            let pos = start + kk as isize;
            if pos >= 0 && pos < len as isize {
                let dst = &mut dx[pos as usize * c..pos as usize * c + c];
                for (ch, d) in dst.iter_mut().enumerate() {
                    *d += row[ch * k + kk];
                }
            }
        }
    }
}
