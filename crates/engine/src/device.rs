//! The kernel boundary. Model code (layers, loss, optimizer) never touches memory directly: it
//! holds [`View`]s into device memory and calls the kernels of a [`Device`]. The CPU device
//! ([`crate::cpu::CpuDevice`]) is the reference implementation and the oracle; a CUDA device
//! implements the same trait with cuBLAS and NVRTC kernels, and the model code does not change.

/// A region of device memory: `len` f32 values from `offset`. Views come from
/// [`Device::alloc`] and never overlap unless one was cut from the other with [`View::sub`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub offset: usize,
    pub len: usize,
}

impl View {
    /// `len` values starting `start` values into this view.
    pub fn sub(self, start: usize, len: usize) -> View {
        assert!(start + len <= self.len, "sub-view {start}+{len} outside a view of {}", self.len);
        View { offset: self.offset + start, len }
    }

    /// The first `len` values (a smaller batch in buffers sized for the largest).
    pub fn prefix(self, len: usize) -> View {
        self.sub(0, len)
    }
}

/// A row-major GEMM: `C[m,n] = op(A) · op(B)` (or `+=` with `accumulate`), where
/// `op(A)` is `A[m,k]`, or `A[k,m]ᵀ` with `trans_a`; `op(B)` is `B[k,n]`, or `B[n,k]ᵀ` with `trans_b`.
/// `sparse_a` says `A` is mostly exact zeros (a gradient behind ReLU + dropout): a device may
/// skip them (the CPU device does, where that pays: [`crate::sparse`]) or ignore the hint.
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

/// Inverted dropout drawn from a counter-based hash: element `i` is kept when
/// `hash(key, i) >= p · 2³²`, so any device reproduces the same mask from `(key, i)`.
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

    /// Whether element `index` survives.
    #[inline(always)]
    pub fn keep(key: u64, index: u64, threshold: u32) -> bool {
        dropout_hash(key, index) >= threshold
    }

    /// The scale of kept elements, `1 / (1 - p)`.
    pub fn scale(p: f32) -> f32 {
        if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 }
    }
}

/// 32 random bits from `(key, index)`: the SplitMix64 finalizer of `key + index·γ`.
/// Stateless, so the mask of any element can be recomputed (backward, other devices, tests).
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
        let bc1 = 1.0 - (self.beta1 as f64).powi(step as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(step as i32);
        AdamStep {
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: if self.decoupled { 1.0 - self.lr * self.weight_decay } else { 1.0 },
            l2: if self.decoupled { 0.0 } else { self.weight_decay },
        }
    }
}

/// Result of the fused InfoNCE kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceOut {
    pub loss: f32,
    /// Fraction of rows whose most similar column is their own positive.
    pub accuracy: f32,
}

/// The kernels the engine needs. Every method works on views of this device's memory.
pub trait Device: Send {
    /// Reserves `len` zeroed values. Only called while building: steps allocate nothing.
    fn alloc(&mut self, len: usize) -> View;
    /// Bytes of device memory held (the peak: memory is only ever added while building).
    fn allocated_bytes(&self) -> usize;
    fn upload(&mut self, dst: View, src: &[f32]);
    fn download(&self, src: View, dst: &mut [f32]);
    fn fill(&mut self, dst: View, value: f32);

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View);

    /// In place on `y[rows, cols]`: `y = dropout(act(y + bias))`, `act` = ReLU when `relu`.
    fn bias_act_forward(&mut self, y: View, bias: View, rows: usize, cols: usize, relu: bool, dropout: Option<Dropout>);

    /// In place on `dy`: the gradient through ReLU + inverted dropout, read off the layer's output
    /// `h` (`h > 0` exactly where ReLU passed and dropout kept): `dy *= (h > 0) · scale`.
    fn act_backward(&mut self, dy: View, h: View, scale: f32);

    /// `db[cols] (+)= Σ_rows dy[rows, cols]`.
    fn bias_grad(&mut self, db: View, dy: View, rows: usize, cols: usize, accumulate: bool);

    /// Fused row-normalize + InfoNCE on `z = [z_a; z_p]` (`2b × d`), temperature `tau`.
    /// With `dz`, also writes `∂(grad_scale · loss)/∂z` into it.
    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut;

    /// `Σ x²` over a view (for the global gradient norm).
    fn sum_squares(&mut self, x: View) -> f64;

    /// One fused Adam/AdamW update over parameter, gradient and both moment arenas. `step` is
    /// 1-based; the gradient is multiplied by `grad_scale` on the fly (clipping, loss scaling).
    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32);
}
