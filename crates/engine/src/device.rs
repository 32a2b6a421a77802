//! The kernel boundary. Model code (ops, encoders, loss, optimizer) never touches memory
//! directly: it holds [`View`]s into device memory and calls the kernels of a [`Device`]. The CPU
//! device ([`crate::cpu::CpuDevice`]) is the reference implementation and the oracle; the CUDA
//! device implements the same trait with cuBLAS and NVRTC kernels, and the model code does not
//! change.
//!
//! The trait is a list of op families, each implemented once per device: memory; linear layers
//! (GEMM, bias, activations, dropout); normalisations; convolution and pooling; attention; the
//! patch embedding; the loss and the optimizer. The shapes each family takes are defined next to
//! the op in [`crate::ops`].

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{EngineError, Result};
use crate::ops::{act::Activation, attention::AttentionShape, conv1d::ConvShape, norm::BatchNormArgs, patch::PatchShape, pool::PoolShape};

/// A region of one device's memory: `len` f32 values from `offset`. Views come from
/// [`Device::alloc`] and never overlap unless one was cut from the other with [`View::sub`]; a
/// view remembers which device made it, and a device refuses views of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    device: u32,
    offset: usize,
    len: usize,
}

static NEXT_DEVICE_ID: AtomicU32 = AtomicU32::new(1);

/// A fresh identity for a new device: the views it hands out carry it.
pub(crate) fn next_device_id() -> u32 {
    NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed)
}

impl View {
    pub(crate) fn new(device: u32, offset: usize, len: usize) -> View {
        View { device, offset, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn device(&self) -> u32 {
        self.device
    }

    /// One past the last element (the end of the range in device memory).
    pub(crate) fn end(&self) -> usize {
        self.offset + self.len
    }

    /// Whether two views share no element (empty views overlap nothing).
    pub fn disjoint(&self, other: &View) -> bool {
        self.len == 0 || other.len == 0 || self.end() <= other.offset || other.end() <= self.offset
    }

    /// `len` values starting `start` values into this view.
    ///
    /// # Panics
    /// Where the sub-view does not lie inside this one (a bug in the caller, not an input).
    pub fn sub(self, start: usize, len: usize) -> View {
        let inside = start.checked_add(len).is_some_and(|end| end <= self.len);
        assert!(inside, "sub-view {start}+{len} outside a view of {}", self.len);
        View { offset: self.offset + start, len, ..self }
    }

    /// The first `len` values (a smaller batch in buffers sized for the largest).
    pub fn prefix(self, len: usize) -> View {
        self.sub(0, len)
    }
}

/// A row-major GEMM: `C[m,n] = op(A) · op(B)` (or `+=` with `accumulate`), where
/// `op(A)` is `A[m,k]`, or `A[k,m]ᵀ` with `trans_a`; `op(B)` is `B[k,n]`, or `B[n,k]ᵀ` with `trans_b`.
/// `sparse_a` says `A` is mostly exact zeros (a gradient behind ReLU + dropout): a device may
/// skip them (the CPU device does, where that pays: [`crate::cpu::sparse`]) or ignore the hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub accumulate: bool,
    pub sparse_a: bool,
}

impl Gemm {
    /// Whether buffers of `c`, `a` and `b` floats hold this product's C, A and B (the sizes
    /// multiplied without overflow: a wrapped size would pass a plain comparison).
    pub fn fits(&self, c: usize, a: usize, b: usize) -> bool {
        let holds = |x: usize, y: usize, len: usize| x.checked_mul(y).is_some_and(|n| n <= len);
        holds(self.m, self.n, c) && holds(self.m, self.k, a) && holds(self.k, self.n, b)
    }

    /// Multiply-adds, `m·n·k` (saturating: a size, not an index).
    pub fn work(&self) -> usize {
        self.m.saturating_mul(self.n).saturating_mul(self.k)
    }

    /// `C[m,n] = A[m,k] · B[n,k]ᵀ`: a linear layer's forward `X·Wᵀ`.
    pub fn nt(m: usize, n: usize, k: usize) -> Gemm {
        Gemm { m, n, k, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }
    }

    /// `C[m,n] = A[k,m]ᵀ · B[k,n]`: a weight gradient `dYᵀ·X`.
    pub fn tn(m: usize, n: usize, k: usize) -> Gemm {
        Gemm { m, n, k, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }
    }

    /// `C[m,n] = A[m,k] · B[k,n]`: an input gradient `dY·W`.
    pub fn nn(m: usize, n: usize, k: usize) -> Gemm {
        Gemm { m, n, k, trans_a: false, trans_b: false, accumulate: false, sparse_a: false }
    }

    pub fn accumulate(self, accumulate: bool) -> Gemm {
        Gemm { accumulate, ..self }
    }

    pub fn sparse_a(self, sparse_a: bool) -> Gemm {
        Gemm { sparse_a, ..self }
    }
}

/// Inverted dropout drawn from a counter-based hash: element `i` of a kernel call is kept when
/// `bits(seed(key), i) >= p · 2³²`, so any device reproduces the same mask from `(key, i)`, and
/// the backward recomputes it instead of storing it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub key: u64,
}

impl Dropout {
    /// The hash threshold for drop probability `p`.
    pub fn threshold(p: f32) -> u32 {
        ((p as f64) * 4_294_967_296.0).min(4_294_967_295.0) as u32
    }

    /// The 32-bit seed of a 64-bit key (computed once per kernel call).
    #[inline(always)]
    pub fn seed(key: u64) -> u32 {
        fmix32((key as u32) ^ fmix32(((key >> 32) as u32) ^ 0x5BD1_E995))
    }

    /// 32 random bits for element `index` under `seed`: murmur3's finalizer of a golden-ratio
    /// multiple. 32-bit arithmetic only, so it vectorizes (AVX2 has no 64-bit multiply).
    #[inline(always)]
    pub fn bits(seed: u32, index: u32) -> u32 {
        fmix32(index.wrapping_mul(0x9E37_79B9) ^ seed)
    }

    /// Whether element `index` survives (`index` < 2³²: kernels number elements per call).
    #[inline(always)]
    pub fn keep(key: u64, index: u64, threshold: u32) -> bool {
        Self::bits(Self::seed(key), index as u32) >= threshold
    }

    /// The scale of kept elements, `1 / (1 - p)`.
    pub fn scale(p: f32) -> f32 {
        if p > 0.0 {
            1.0 / (1.0 - p)
        } else {
            1.0
        }
    }

    /// `(seed, threshold, scale)` of an optional dropout; `None` and `p = 0` keep everything.
    pub fn parts(d: Option<Dropout>) -> Option<(u32, u32, f32)> {
        d.filter(|d| d.p > 0.0).map(|d| (Self::seed(d.key), Self::threshold(d.p), Self::scale(d.p)))
    }
}

/// murmur3's 32-bit finalizer: a bijection with full avalanche.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// 32 random bits from `(key, index)`: the SplitMix64 finalizer of `key + index·γ`. Stateless;
/// used for initial weights and to derive keys ([`crate::encoders::mix_key`]).
#[inline(always)]
pub fn dropout_hash(key: u64, index: u64) -> u32 {
    let mut z = key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// Adam/AdamW hyper-parameters (PyTorch's defaults: betas (0.9, 0.999), eps 1e-8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW (decoupled weight decay) rather than Adam's L2 term.
    pub decoupled: bool,
}

/// The per-step constants of PyTorch's Adam update, shared by every device's kernel:
/// `p ← p·decay − step_size · m / (√v / bc2_sqrt + eps)` with `g ← g·scale + l2·p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub decay: f32,
    pub l2: f32,
}

impl AdamHyper {
    /// Bias corrections and weight-decay factors for 1-based step `step`.
    pub fn at_step(&self, step: u64) -> AdamStep {
        assert!(step >= 1, "Adam steps are 1-based");
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        AdamStep {
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: if self.decoupled { 1.0 - self.lr * self.weight_decay } else { 1.0 },
            l2: if self.decoupled { 0.0 } else { self.weight_decay },
        }
    }
}

/// The precision of a device's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Precision {
    /// Everything in fp32 (default).
    #[default]
    Fp32,
    /// Every product's operands rounded to bf16 (to nearest even), accumulated in fp32: linear
    /// layers, convolutions, attention. The loss (its products too), normalisations, softmax and
    /// the optimizer stay fp32, as do the master weights, Adam's moments and every stored
    /// activation. (PyTorch's CPU autocast also stores products' outputs in bf16 and runs the
    /// loss's products in bf16.)
    Bf16,
    /// As `Bf16`, with operands rounded to IEEE fp16 (11 bits of mantissa, but ±65504 and a floor
    /// of 2⁻²⁴): gradients that small vanish, so the step scales its loss
    /// ([`crate::step::LossScaler`]).
    Fp16,
}

impl Precision {
    /// The precision environment variable `var` names (the tools' `PRECISION`), fp32 where it is
    /// unset; an error naming the variable otherwise.
    pub fn from_env(var: &str) -> std::result::Result<Self, String> {
        match std::env::var(var) {
            Err(std::env::VarError::NotPresent) => Ok(Precision::Fp32),
            Err(e) => Err(format!("{var}: {e}")),
            Ok(v) => v.parse().map_err(|e| format!("{var}: {e}")),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The names [`Display`](std::fmt::Display) writes: `fp32`, `bf16`, `fp16`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!("unknown precision {other:?}; expected fp32, bf16 or fp16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

/// Result of the fused InfoNCE kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceOut {
    pub loss: f32,
    /// Fraction of rows whose most similar column is their own positive.
    pub accuracy: f32,
}

/// The kernels the engine needs. Every method works on views of this device's memory; a kernel
/// that writes several views checks they overlap neither each other nor its inputs. Row counts
/// are the views' lengths divided by the column count given.
pub trait Device: Send {
    // ---- memory -----------------------------------------------------------------------------

    /// Reserves `len` zeroed values. Only called while building: steps allocate nothing. An error
    /// (never a panic) where the memory cannot be had.
    fn alloc(&mut self, len: usize) -> Result<View>;
    /// Bytes of device memory held (the peak: memory is only ever added while building).
    fn allocated_bytes(&self) -> usize;
    /// Sets the precision of the products from now on. An error where the device cannot run it.
    fn set_precision(&mut self, precision: Precision) -> Result<()> {
        match precision {
            Precision::Fp32 => Ok(()),
            Precision::Bf16 | Precision::Fp16 => Err(EngineError::Device(format!("{precision} products are not implemented on this device yet"))),
        }
    }
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    /// The kernel chosen for each product shape so far where the device chooses by measurement
    /// (the CPU's GEMM plan), as text [`Device::pin_kernel_plan`] takes back; empty elsewhere.
    fn kernel_plan(&self) -> String {
        String::new()
    }
    /// Runs the shapes `plan` names on the kernels it names, so that a resumed run continues on
    /// the kernels it started with (its results bit-identical). An error names an entry it
    /// cannot read.
    fn pin_kernel_plan(&mut self, plan: &str) -> std::result::Result<(), String> {
        let _ = plan;
        Ok(())
    }
    /// The rayon workers this device's kernels run on, one of which a training step keeps
    /// polling for them ([`crate::cpu::with_workers_polling`]); none on devices whose kernels run
    /// elsewhere (the default).
    fn host_workers(&self) -> usize {
        0
    }
    /// Runs `f(lane, device)` for lanes `0..lanes`: concurrently where the device can (the CPU:
    /// each lane on its own share of the workers, over the same memory, [`crate::cpu`]), one
    /// after another by default. A lane runs the same kernels as the device, so what a lane
    /// computes does not depend on whether the lanes ran at once.
    ///
    /// Why: a CNN step is ~60 small kernels per view, and splitting each over the workers costs a
    /// synchronisation per kernel; its two views are independent until the loss, so each view on
    /// its own worker synchronises twice a step (`encoders/lanes.rs`).
    ///
    /// # Safety
    /// No lane may write memory that another lane reads or writes, allocate, or move the device
    /// it is given out of `f`.
    unsafe fn for_each_lane<F: Fn(usize, &mut Self) + Sync>(&mut self, lanes: usize, f: F)
    where
        Self: Sized,
    {
        for lane in 0..lanes {
            f(lane, self);
        }
    }
    fn upload(&mut self, dst: View, src: &[f32]);
    fn download(&self, src: View, dst: &mut [f32]);
    fn fill(&mut self, dst: View, value: f32);
    /// `dst = scale·dst + src` (equal lengths): a lane's gradients summed into the model's, a
    /// lane's running-statistics update folded in after the other's.
    fn scale_add(&mut self, dst: View, scale: f32, src: View);

    // ---- linear layers ([`crate::ops::linear`], [`crate::ops::act`]) --------------------------

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View);

    /// In place on `y[rows, cols]`: `y = dropout(act(y + bias))`, `act` = ReLU when `relu`, else
    /// the identity (a plain bias add).
    fn bias_act_forward(&mut self, y: View, bias: View, cols: usize, relu: bool, dropout: Option<Dropout>);

    /// In place on `dy`: the gradient through ReLU + inverted dropout, read off the layer's output
    /// `h` (`h > 0` exactly where ReLU passed and dropout kept): `dy *= (h > 0) · scale`.
    fn act_backward(&mut self, dy: View, h: View, scale: f32);

    /// `db[cols] (+)= Σ_rows dy[rows, cols]`.
    fn bias_grad(&mut self, db: View, dy: View, cols: usize, accumulate: bool);

    /// `pre += bias` (in place, when given) and `out = dropout(act(pre))`, keeping the
    /// pre-activation for the backward (GELU and SiLU need it).
    fn act_forward(&mut self, pre: View, out: View, bias: Option<View>, cols: usize, act: Activation, dropout: Option<Dropout>);

    /// In place on `d`: from `∂L/∂out` to `∂L/∂pre` = `d · mask · scale · act'(pre)`.
    fn act_backward_pre(&mut self, d: View, pre: View, cols: usize, act: Activation, dropout: Option<Dropout>);

    // ---- normalisations ([`crate::ops::norm`]) ------------------------------------------------

    /// Post-norm residual: `sum = a + dropout(b)`, `out = (sum − μ)·σ⁻¹·γ + β` per row, with
    /// `stats = [μ; σ⁻¹]` (2 × rows) kept for the backward.
    #[allow(clippy::too_many_arguments)]
    fn add_layernorm_forward(&mut self, a: View, b: View, dropout: Option<Dropout>, sum: View, out: View, stats: View, gamma: View, beta: View, cols: usize, eps: f32);

    /// From `dout`: `dsum = ∂L/∂sum` (the gradient of the residual input `a`), `db = dsum·mask·scale`
    /// (of the sub-layer output `b`), and `dγ, dβ` (written, or added with `accumulate`).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(&mut self, dout: View, sum: View, stats: View, gamma: View, dgamma: View, dbeta: View, dsum: View, db: View, dropout: Option<Dropout>, cols: usize, accumulate: bool);

    /// BatchNorm over the rows of each of `groups` equal row groups (each group a separate
    /// forward call in PyTorch), per column; ReLU after it when `bn.relu`, and a MaxPool1d(2)
    /// after that when `bn.pool` (then `out` holds the pooled rows, [`BatchNormArgs::out_rows`],
    /// and `argmax`, as long, the position of each maximum as
    /// [`maxpool_forward`](Self::maxpool_forward); without a pool `argmax` is empty). Training
    /// mode normalises by the group's statistics and updates `running = [mean; var]` with the
    /// momentum; evaluation mode normalises by `running`. `stats` (2 × groups × cols) keeps mean
    /// and σ⁻¹ per group.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(&mut self, x: View, out: View, argmax: View, stats: View, gamma: View, beta: View, running: View, bn: BatchNormArgs);

    /// The backward of [`batchnorm_forward`](Self::batchnorm_forward) in training mode: from
    /// `dout` (the gradient of `out`; `out` and `argmax` are the forward's: the ReLU's mask and
    /// the pool's routing) to `dx`, `dγ`, `dβ`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(&mut self, dout: View, out: View, argmax: View, x: View, stats: View, gamma: View, dgamma: View, dbeta: View, dx: View, bn: BatchNormArgs, accumulate: bool);

    // ---- convolution and pooling ([`crate::ops::conv1d`], [`crate::ops::pool`]) ----------------

    /// The im2col matrix of a channels-last input `x[samples, len_in, C]`:
    /// `cols[samples·len_out, K·C]`, column `k·C + c` (tap-major: a row is contiguous input).
    fn im2col(&mut self, x: View, cols: View, s: ConvShape);

    /// The adjoint of [`im2col`](Self::im2col): `dx` = the sum of `dcols` scattered back.
    fn col2im(&mut self, dcols: View, dx: View, s: ConvShape);

    /// Whether [`conv_forward_product`](Self::conv_forward_product) and
    /// [`conv_weight_product`](Self::conv_weight_product) read the im2col rows of `s` in place, so
    /// that their `cols` may be empty (the encoder then allocates none).
    fn reads_conv_rows_in_place(&self, s: ConvShape) -> bool {
        let _ = s;
        false
    }

    /// A convolution's product `y[S·Lout, out] = im2col(x) · w̃ᵀ` (`w̃[out, K·C]`, tap-major).
    /// By default through the im2col matrix in `cols`; a device may read `x` in place instead (and
    /// leave `cols` unwritten): [`conv_weight_product`](Self::conv_weight_product) is its pair.
    fn conv_forward_product(&mut self, x: View, w_taps: View, cols: View, y: View, s: ConvShape, out: usize) {
        crate::ops::conv1d::forward_product_via_cols(self, x, w_taps, cols, y, s, out)
    }

    /// A convolution's weight gradient `dw̃[out, K·C] = dyᵀ · im2col(x)`, after
    /// [`conv_forward_product`](Self::conv_forward_product) on the same `x` and `cols`.
    fn conv_weight_product(&mut self, x: View, cols: View, dy: View, dw_taps: View, s: ConvShape, out: usize) {
        crate::ops::conv1d::weight_product_via_cols(self, x, cols, dy, dw_taps, s, out)
    }

    /// `dst[o, j, i] (+)= src[o, i, j]` for `src[outer, rows, cols]`: a convolution weight between
    /// PyTorch's channel-major `[out, C, K]` and the tap-major `[out, K, C]` of the im2col GEMMs.
    fn transpose_inner(&mut self, src: View, dst: View, outer: usize, rows: usize, cols: usize, accumulate: bool);

    /// `dst[c, k, o] = w[o, c, K−1−k]` for a convolution weight `w[out, C, K]`: the tap-major
    /// weight of the convolution that is a stride-1 convolution's input gradient
    /// ([`crate::ops::conv1d::ConvShape::input_gradient`]).
    fn conv_transposed_taps(&mut self, w: View, dst: View, out: usize, channels: usize, kernel: usize);

    /// Max over non-overlapping pairs along time: `out[s, t, c] = max(x[s, 2t, c], x[s, 2t+1, c])`,
    /// the position of the maximum (0 or 1, the first on ties as PyTorch) kept in `argmax`.
    fn maxpool_forward(&mut self, x: View, out: View, argmax: View, s: PoolShape);

    /// Routes `dout` to the kept maxima; `dx` is written whole (zeros elsewhere).
    fn maxpool_backward(&mut self, dout: View, argmax: View, dx: View, s: PoolShape);

    /// Mean along time: `out[s, c] = mean_t x[s, t, c]`.
    fn meanpool_forward(&mut self, x: View, out: View, s: PoolShape);

    /// `dx[s, t, c] = dout[s, c] / len`.
    fn meanpool_backward(&mut self, dout: View, dx: View, s: PoolShape);

    // ---- attention ([`crate::ops::attention`]) -------------------------------------------------

    /// Multi-head self-attention on `qkv[samples·seq, 3·d]` (Q | K | V, heads split along d):
    /// `out = dropout(softmax(Q·Kᵀ/√dₕ))·V` per sample and head, softmax in fp32 in tiles (no
    /// `seq × seq` matrix is kept); the row log-sum-exps go to `lse` for the backward.
    fn attention_forward(&mut self, qkv: View, out: View, lse: View, a: AttentionShape, dropout: Option<Dropout>);

    /// `dqkv` from `dout`, recomputing the attention weights tile by tile from `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(&mut self, qkv: View, out: View, lse: View, dout: View, dqkv: View, a: AttentionShape, dropout: Option<Dropout>);

    // ---- patch embedding ([`crate::ops::patch`]) -----------------------------------------------

    /// Patch starts `[sL; sC]` (2 × samples × patches, as exact small integers): uniform random
    /// from `key` in training, evenly spaced in evaluation (`key = None`).
    fn patch_starts(&mut self, starts: View, p: PatchShape, key: Option<u64>);

    /// The HSE patches of `x[samples, W, C]`: `out[samples·P, Lp·2Cp]`, per time step the `Cp`
    /// values then `Cp` copies of the time `t / rate` of that step.
    fn patch_gather(&mut self, x: View, rates: View, starts: View, out: View, p: PatchShape);

    // ---- loss and optimizer ([`crate::loss`], [`crate::optim`]) -------------------------------

    /// Fused row-normalize + InfoNCE on `z = [z_a; z_p]` (`2b × d`), temperature `tau`.
    /// With `dz`, also writes `∂(grad_scale · loss)/∂z` into it.
    #[allow(clippy::too_many_arguments)]
    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut;

    /// `Σ x²` over a view (for the global gradient norm).
    fn sum_squares(&mut self, x: View) -> f64;

    /// One fused Adam/AdamW update over parameter, gradient and both moment arenas. `step` is
    /// 1-based; the gradient is multiplied by `grad_scale` on the fly (clipping, loss scaling).
    #[allow(clippy::too_many_arguments)]
    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32);
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn a_precision_parses_the_name_it_displays_and_nothing_else() {
        for p in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        for bad in ["", "0", "-1", "1e12", "BF16", "16", "garbage"] {
            let err = bad.parse::<Precision>().expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")) && err.contains("fp32, bf16 or fp16"), "{err}");
        }
    }
}
