//! `nn.Conv1d` with stride and zero padding on channels-last activations, forward and backward
//! side by side, as GEMMs over an im2col matrix:
//!
//! - forward: `cols[S·Lout, K·C] = im2col(x)`, `y = cols · W̃ᵀ + b`;
//! - backward: `dW̃ = dyᵀ · cols`, `db = Σ dy`, `dcols = dy · W̃`, `dx = col2im(dcols)`; for
//!   stride 1, where the device reads a convolution's rows in place, `dx` is itself a
//!   convolution of `dy` with the flipped taps (padding `K − 1 − p`), run as the forward's
//!   product: no `dcols` written and scattered back ([`ConvShape::input_gradient`]).
//!
//! The im2col columns are tap-major (`k·C + c`): on channels-last input a row of `cols` is then
//! the `K·C` contiguous values `x[t·s − p .. t·s − p + K, :]`, one copy (zeros where it leaves the
//! input). PyTorch stores the weight channel-major, `[out, C, K]`; the op keeps a tap-major copy
//! `W̃ [out, K, C]`, made before each forward and folded back after each weight gradient (a few
//! thousand values, against a 4× expansion of the input that a channel-major im2col would gather
//! with a stride).
//!
//! Why im2col rather than a direct kernel: the encoders' convolutions are small (C·K ≤ 192,
//! out ≤ 64) and the GEMM kernel runs them near its peak once the rows of all samples are one
//! matrix; the copy costs `K/stride` times the input (4× for the wide first layer, 3× for k = 3).
//! The direct alternative was measured on the same shapes (docs/encoders.md). The CPU device
//! skips the copy where it can: with the rows of a tap-major im2col evenly spaced in the input
//! ([`ConvShape::in_place_rows`]), the forward and weight-gradient products read them in place
//! (`Device::conv_forward_product`, `Device::conv_weight_product`).

use multiversion::multiversion;

use crate::arena::{Arenas, Init, Tensors};
use crate::device::{Device, Gemm, View};
use crate::error::Result;
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

    /// Columns of the im2col matrix, `K·C`.
    pub fn patch(&self) -> usize {
        self.channels * self.kernel
    }

    /// Where the im2col rows can be read in place, for a device that can: row `t` of sample `i`
    /// is the input from `x[i·L + t·s − p]` on, `K·C` contiguous values, and where each sample's
    /// input is exactly `L_out·s` steps long (the CNN's k3 layers always; its first layer where the
    /// window is a multiple of its stride, as in every config and workload) those rows lie one
    /// stride (`s·C` values) apart across the whole batch. Only the rows whose taps leave their
    /// sample differ — the first `lead` and the last `trail` of each sample (zero padding, or taps
    /// that would run into the neighbouring sample) — and are fixed up apart. `None` where the
    /// rows are not evenly spaced, no row is clean, or there is no sample.
    pub fn in_place_rows(&self) -> Option<InPlaceRows> {
        let len_out = self.len_out()?;
        if self.samples == 0 || self.len_in != len_out * self.stride {
            return None;
        }
        let lead = self.padding.div_ceil(self.stride);
        // The last step whose taps end inside the sample: t·s − p + K ≤ L.
        let last_clean = (self.len_in + self.padding).checked_sub(self.kernel)? / self.stride;
        let trail = len_out - 1 - last_clean.min(len_out - 1);
        (lead + trail < len_out).then_some(InPlaceRows { lead, trail })
    }

    /// The input gradient of a stride-1 convolution as a convolution of the output gradient
    /// (`out` channels): `dx[t] = Σ_k dy[t + p − k]·W_k` is a convolution of `dy` with the
    /// flipped, transposed taps ([`Device::conv_transposed_taps`]) and padding `K − 1 − p`, whose
    /// output has this convolution's input length. `None` for other strides, or a padding of
    /// `K` or more.
    pub fn input_gradient(&self, out: usize) -> Option<ConvShape> {
        let len_out = self.len_out()?;
        (self.stride == 1 && self.padding < self.kernel).then_some(ConvShape {
            samples: self.samples,
            len_in: len_out,
            channels: out,
            kernel: self.kernel,
            stride: 1,
            padding: self.kernel - 1 - self.padding,
        })
    }

    /// [`input_gradient`](Self::input_gradient) where `dev` runs it: where it reads that
    /// convolution's rows in place (the CPU), so that no im2col gradient is formed. The backward
    /// and the encoder sizing its buffers both ask here.
    pub fn input_gradient_on<D: Device>(&self, dev: &D, out: usize) -> Option<ConvShape> {
        self.input_gradient(out).filter(|t| dev.reads_conv_rows_in_place(*t))
    }

    /// Per sample: output steps, values of the input (`L·C`) and of its im2col rows
    /// (`L_out·K·C`). For built layers, whose shapes the encoder checked (`len_out` is `Some`).
    pub fn sample_lens(&self) -> (usize, usize, usize) {
        let len_out = self.len_out().expect("a built convolution's input is at least its kernel");
        (len_out, self.len_in * self.channels, len_out * self.patch())
    }
}

/// The edge rows of [`ConvShape::in_place_rows`]: per sample, the first `lead` and last `trail`
/// output steps, whose taps leave the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InPlaceRows {
    pub lead: usize,
    pub trail: usize,
}

impl InPlaceRows {
    /// The edge steps of a sample of `len_out` steps, in order.
    pub fn edges(self, len_out: usize) -> impl Iterator<Item = usize> + Clone {
        (0..self.lead).chain(len_out - self.trail..len_out)
    }

    /// Edge steps per sample.
    pub fn per_sample(self) -> usize {
        self.lead + self.trail
    }
}

/// A 1-D convolution: its shape (per sample), PyTorch's parameters, and the tap-major copies
/// of the weight and its gradient the GEMMs use.
#[derive(Clone, Copy, Debug)]
pub struct Conv1d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// `[out, C, K]` weights (as `[out, C·K]`) and bias, PyTorch's layout.
    pub map: Linear,
    /// `W̃ [out, K, C]` and `dW̃`.
    pub w_taps: View,
    pub dw_taps: View,
    /// The taps of the input gradient as a convolution, `[C, K, out]` (flipped in `K`).
    pub w_back: View,
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

    /// Binds the parameters and allocates the tap-major copies on `dev`.
    pub fn bind<D: Device>(self, a: &Arenas, dev: &mut D) -> Result<Conv1d> {
        let map = self.map.bind(a);
        let n = map.w.len();
        Ok(Conv1d { kernel: self.kernel, stride: self.stride, padding: self.padding, map, w_taps: dev.alloc(n)?, dw_taps: dev.alloc(n)?, w_back: dev.alloc(n)? })
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

    /// `y[S·Lout, out] = conv(x[S, L, C])`, through the im2col buffer `cols` where the device
    /// forms it.
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, cols: View, y: View, s: ConvShape) {
        let (o, c, k) = (self.channels_out(), self.channels_in(), self.kernel);
        dev.transpose_inner(self.map.w, self.w_taps, o, c, k, false);
        dev.conv_forward_product(x, self.w_taps, cols, y, s, o);
        dev.bias_act_forward(y, self.map.b, o, false, None);
    }

    /// Parameter gradients from `dy` (written, or added with `accumulate`), and `dx` where asked
    /// (through `dcols`); `x` and `cols` as the forward left them.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(&self, dev: &mut D, x: View, cols: View, dy: View, dcols: View, dx: Option<View>, s: ConvShape, accumulate: bool) {
        let rows = s.samples * s.len_out().unwrap_or(0);
        let (o, c, k) = (self.channels_out(), self.channels_in(), self.kernel);
        dev.conv_weight_product(x, cols, dy, self.dw_taps, s, o);
        dev.transpose_inner(self.dw_taps, self.map.dw, o, k, c, accumulate);
        dev.bias_grad(self.map.db, dy, o, accumulate);
        let Some(dx) = dx else { return };
        // Where the device reads a convolution's rows in place, the input gradient is one: the
        // rows of `dy` in place against the flipped taps, no `dcols` written and scattered back.
        match s.input_gradient_on(dev, o) {
            Some(t) => {
                dev.conv_transposed_taps(self.map.w, self.w_back, o, c, k);
                dev.conv_forward_product(dy, self.w_back, dcols.prefix(0), dx, t, c);
            }
            None => {
                dev.gemm(Gemm::nn(rows, k * c, o), dcols, dy, self.w_taps);
                dev.col2im(dcols, dx, s);
            }
        }
    }
}

/// [`Device::conv_forward_product`] through the im2col matrix in `cols`.
pub fn forward_product_via_cols<D: Device + ?Sized>(dev: &mut D, x: View, w_taps: View, cols: View, y: View, s: ConvShape, out: usize) {
    let rows = s.samples * s.len_out().unwrap_or(0);
    dev.im2col(x, cols, s);
    dev.gemm(Gemm::nt(rows, out, s.patch()), y, cols, w_taps);
}

/// [`Device::conv_weight_product`] from the im2col matrix `forward_product_via_cols` left in `cols`.
pub fn weight_product_via_cols<D: Device + ?Sized>(dev: &mut D, _x: View, cols: View, dy: View, dw_taps: View, s: ConvShape, out: usize) {
    let rows = s.samples * s.len_out().unwrap_or(0);
    dev.gemm(Gemm::tn(out, s.patch(), rows), dw_taps, dy, cols);
}

// ---- CPU kernels (one sample per call) --------------------------------------------------------

/// `cols[t, k·C + c] = x[t·stride − padding + k, c]`, zero outside the input: per row one copy of
/// the taps inside.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn im2col_sample(x: &[f32], cols: &mut [f32], s: ConvShape) {
    for (t, row) in cols.chunks_exact_mut(s.patch()).enumerate() {
        im2col_row(x, t, row, s);
    }
}

/// Row `t` of a sample's im2col matrix (`x` the sample's input).
#[inline]
pub(crate) fn im2col_row(x: &[f32], t: usize, row: &mut [f32], s: ConvShape) {
    let (c, k, len) = (s.channels, s.kernel, s.len_in);
    let start = (t * s.stride) as isize - s.padding as isize;
    // Taps lo..hi read inside the input.
    let lo = (-start).clamp(0, k as isize) as usize;
    let hi = (len as isize - start).clamp(lo as isize, k as isize) as usize;
    row[..lo * c].fill(0.0);
    row[hi * c..].fill(0.0);
    let first = (start + lo as isize) as usize;
    row[lo * c..hi * c].copy_from_slice(&x[first * c..(first + hi - lo) * c]);
}

/// `dx = Σ` of `dcols` added back to the positions im2col read (`dx` written whole).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
pub(crate) fn col2im_sample(dcols: &[f32], dx: &mut [f32], s: ConvShape) {
    let (c, k, len) = (s.channels, s.kernel, s.len_in);
    dx.fill(0.0);
    for (t, row) in dcols.chunks_exact(c * k).enumerate() {
        let start = (t * s.stride) as isize - s.padding as isize;
        let lo = (-start).clamp(0, k as isize) as usize;
        let hi = (len as isize - start).clamp(lo as isize, k as isize) as usize;
        let first = (start + lo as isize) as usize;
        dx[first * c..(first + hi - lo) * c].iter_mut().zip(&row[lo * c..hi * c]).for_each(|(d, &g)| *d += g);
    }
}

/// `dst[c, k, o] = w[o, c, K−1−k]` for `w[out, C, K]`.
pub(crate) fn transposed_taps_cpu(w: &[f32], dst: &mut [f32], out: usize, channels: usize, kernel: usize) {
    for (o, wo) in w.chunks_exact(channels * kernel).enumerate().take(out) {
        for (c, wc) in wo.chunks_exact(kernel).enumerate() {
            for (k, &v) in wc.iter().enumerate() {
                dst[(c * kernel + kernel - 1 - k) * out + o] = v;
            }
        }
    }
}

/// `dst[o, j, i] (+)= src[o, i, j]` for `src[outer, rows, cols]`.
pub(crate) fn transpose_inner_cpu(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, accumulate: bool) {
    for (s, d) in src.chunks_exact(rows * cols).zip(dst.chunks_exact_mut(rows * cols)) {
        for i in 0..rows {
            for j in 0..cols {
                let v = s[i * cols + j];
                let o = &mut d[j * rows + i];
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}
