//! The MLP encoders of SPEC §2 and their explicit forward and backward passes.
//!
//! Layout: a window `[W, C]` is flattened row-major (PyTorch's `nn.Flatten` of a contiguous
//! tensor), so `Flatten` is the identity on our buffers in both directions. Each hidden block is
//! `Linear → ReLU → Dropout`, fused into one kernel forward (`bias_act_forward`) and one backward
//! (`act_backward`). Parameters, gradients and the two Adam moments each live in one contiguous
//! arena; activations live in buffers sized once for the largest batch.

use std::str::FromStr;

use crate::device::{dropout_hash, Device, Dropout, Gemm, View};
use crate::error::{EngineError, Result};

/// Which encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    /// `Linear(in, 256) → ReLU → Linear(256, D)`
    MlpSimple,
    /// `Linear(in, 512) → ReLU → Dropout(0.2) → Linear(512, 256) → ReLU → Dropout(0.2) → Linear(256, D)`
    MlpMedium,
    /// `Linear(in, 1024) → ReLU → Dropout(0.3) → Linear(1024, 512) → ReLU → Dropout(0.3) →
    /// Linear(512, 256) → ReLU → Dropout(0.2) → Linear(256, D)`
    MlpComplex,
}

impl FromStr for EncoderKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "mlp-simple" | "simple" => Ok(EncoderKind::MlpSimple),
            "mlp-medium" | "medium" => Ok(EncoderKind::MlpMedium),
            "mlp-complex" | "complex" => Ok(EncoderKind::MlpComplex),
            "cnn" | "patchtst" => Err(EngineError::config("model.name", format!("encoder {s:?} is not implemented yet; available: mlp-simple, mlp-medium, mlp-complex"))),
            other => Err(EngineError::config("model.name", format!("unknown encoder {other:?}; expected mlp-simple, mlp-medium or mlp-complex"))),
        }
    }
}

impl std::fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncoderKind::MlpSimple => "mlp-simple",
            EncoderKind::MlpMedium => "mlp-medium",
            EncoderKind::MlpComplex => "mlp-complex",
        })
    }
}

/// One Linear layer and the activation after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    pub in_features: usize,
    pub out_features: usize,
    /// ReLU + Dropout(p) after the Linear (hidden layers); the last layer has neither.
    pub relu: bool,
    pub dropout: f32,
    /// Index of this Linear in the equivalent PyTorch `nn.Sequential` (for checkpoint names).
    pub torch_index: usize,
}

/// An encoder's shape. `init` builds it on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    pub kind: EncoderKind,
    /// Flattened input size `W · C`.
    pub input: usize,
    /// Embedding size D (default 128).
    pub embed: usize,
}

impl EncoderConfig {
    pub fn new(kind: EncoderKind, input: usize) -> Self {
        EncoderConfig { kind, input, embed: 128 }
    }

    pub fn validate(&self) -> Result<()> {
        if self.input == 0 {
            return Err(EngineError::config("data.window_size", "input size W·C must be > 0"));
        }
        if self.embed == 0 {
            return Err(EngineError::config("model.embedding_dim", "must be > 0"));
        }
        Ok(())
    }

    /// The layers, in order, with PyTorch's `nn.Sequential` indices (a model with a leading
    /// `nn.Flatten()` shifts every index by one; see docs/checkpoints.md).
    pub fn layers(&self) -> Vec<LayerSpec> {
        let (widths, drops): (&[usize], &[f32]) = match self.kind {
            EncoderKind::MlpSimple => (&[256], &[0.0]),
            EncoderKind::MlpMedium => (&[512, 256], &[0.2, 0.2]),
            EncoderKind::MlpComplex => (&[1024, 512, 256], &[0.3, 0.3, 0.2]),
        };
        let mut out = Vec::new();
        let mut fan_in = self.input;
        let mut torch_index = 0;
        for (&w, &p) in widths.iter().zip(drops) {
            out.push(LayerSpec { in_features: fan_in, out_features: w, relu: true, dropout: p, torch_index });
            // Linear, ReLU, and Dropout when p > 0 (mlp-simple has no Dropout module).
            torch_index += if p > 0.0 { 3 } else { 2 };
            fan_in = w;
        }
        out.push(LayerSpec { in_features: fan_in, out_features: self.embed, relu: false, dropout: 0.0, torch_index });
        out
    }

    pub fn param_count(&self) -> usize {
        self.layers().iter().map(|l| l.in_features * l.out_features + l.out_features).sum()
    }

    /// Multiply-adds of one forward pass per sample.
    pub fn forward_macs(&self) -> usize {
        self.layers().iter().map(|l| l.in_features * l.out_features).sum()
    }

    /// Builds the encoder on `device` for batches of up to `max_rows` rows, initialised as
    /// PyTorch's `nn.Linear` (Kaiming-uniform weights, uniform bias, bound `1/√fan_in`).
    pub fn init<D: Device>(&self, mut device: D, max_rows: usize, seed: u64) -> Result<Encoder<D>> {
        self.validate()?;
        if max_rows == 0 {
            return Err(EngineError::config("data.batch_size", "must be > 0"));
        }
        let specs = self.layers();
        let n = self.param_count();
        let params = device.alloc(n);
        let grads = device.alloc(n);
        let adam_m = device.alloc(n);
        let adam_v = device.alloc(n);
        let mut layers = Vec::with_capacity(specs.len());
        let mut off = 0;
        let mut init_values = vec![0.0f32; n];
        for (li, s) in specs.iter().enumerate() {
            let nw = s.in_features * s.out_features;
            let w = params.sub(off, nw);
            let dw = grads.sub(off, nw);
            let b = params.sub(off + nw, s.out_features);
            let db = grads.sub(off + nw, s.out_features);
            let bound = 1.0 / (s.in_features as f64).sqrt();
            let key = mix_key(seed, 0x1417, li as u64);
            for (i, v) in init_values[off..off + nw + s.out_features].iter_mut().enumerate() {
                let u = dropout_hash(key, i as u64) as f64 / 4_294_967_296.0;
                *v = ((2.0 * u - 1.0) * bound) as f32;
            }
            off += nw + s.out_features;
            let h = device.alloc(max_rows * s.out_features);
            layers.push(Linear { spec: *s, w, b, dw, db, h });
        }
        device.upload(params, &init_values);
        let x = device.alloc(max_rows * self.input);
        let widest = specs.iter().map(|s| s.in_features.max(s.out_features)).max().unwrap_or(1);
        let grad_buf = [device.alloc(max_rows * widest), device.alloc(max_rows * widest)];
        Ok(Encoder { device, cfg: *self, layers, params, grads, adam_m, adam_v, x, grad_buf, max_rows })
    }
}

/// Derives a per-use key from a seed: `(seed, a, b)` → 64 random bits.
pub fn mix_key(seed: u64, a: u64, b: u64) -> u64 {
    let hi = dropout_hash(seed, a.wrapping_mul(0x1_0000_0001).wrapping_add(b)) as u64;
    let lo = dropout_hash(seed ^ 0xD1B5_4A32_D192_ED03, b.wrapping_mul(31).wrapping_add(a)) as u64;
    (hi << 32) | lo
}

/// A Linear layer's views: weights `[out, in]` (PyTorch layout), bias, their gradients, and the
/// layer's output buffer `[max_rows, out]` (after the fused activation for hidden layers).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub spec: LayerSpec,
    pub w: View,
    pub b: View,
    pub dw: View,
    pub db: View,
    pub h: View,
}

/// An encoder on a device: weights, gradients, Adam moments and activation buffers.
pub struct Encoder<D: Device> {
    pub device: D,
    pub cfg: EncoderConfig,
    pub layers: Vec<Linear>,
    /// The parameter arena (every layer's weight then bias, in order).
    pub params: View,
    /// The gradient arena, same layout.
    pub grads: View,
    pub adam_m: View,
    pub adam_v: View,
    /// Input buffer `[max_rows, input]`.
    pub x: View,
    grad_buf: [View; 2],
    max_rows: usize,
}

impl<D: Device> Encoder<D> {
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Copies `rows` inputs (row-major `[rows, input]`) into the input buffer at row `at`.
    pub fn set_input(&mut self, at: usize, values: &[f32]) {
        let n = self.cfg.input;
        assert_eq!(values.len() % n, 0, "input is not a whole number of rows of {n}");
        self.device.upload(self.x.sub(at * n, values.len()), values);
    }

    /// Forward over the first `rows` rows of the input buffer. Dropout is applied when
    /// `dropout_key` is given (training). Returns the output view `[rows, D]`.
    pub fn forward(&mut self, rows: usize, dropout_key: Option<u64>) -> View {
        assert!(rows <= self.max_rows, "{rows} rows exceed the buffers' {}", self.max_rows);
        let mut input = self.x.prefix(rows * self.cfg.input);
        for (li, l) in self.layers.iter().enumerate() {
            let s = l.spec;
            let out = l.h.prefix(rows * s.out_features);
            self.device.gemm(Gemm { m: rows, n: s.out_features, k: s.in_features, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, out, input, l.w);
            let dropout = match dropout_key {
                Some(key) if s.dropout > 0.0 => Some(Dropout { p: s.dropout, key: mix_key(key, 0xD0, li as u64) }),
                _ => None,
            };
            self.device.bias_act_forward(out, l.b, rows, s.out_features, s.relu, dropout);
            input = out;
        }
        input
    }

    /// Backward from `dz = ∂loss/∂output` (`[rows, D]`, which is left modified) after a forward
    /// over `rows` rows with the same dropout. Gradients are written, or added when `accumulate`.
    pub fn backward(&mut self, rows: usize, dz: View, accumulate: bool) {
        let mut dy = dz;
        let mut ping = 0;
        for li in (0..self.layers.len()).rev() {
            let l = self.layers[li];
            let s = l.spec;
            if s.relu {
                self.device.act_backward(dy, l.h.prefix(rows * s.out_features), Dropout::scale(s.dropout));
            }
            let input = if li == 0 { self.x.prefix(rows * s.in_features) } else { self.layers[li - 1].h.prefix(rows * s.in_features) };
            // dW[out, in] (+)= dYᵀ · X ; db (+)= Σ_rows dY
            self.device.gemm(Gemm { m: s.out_features, n: s.in_features, k: rows, trans_a: true, trans_b: false, accumulate, sparse_a: s.relu }, l.dw, dy, input);
            self.device.bias_grad(l.db, dy, rows, s.out_features, accumulate);
            if li > 0 {
                // dX[rows, in] = dY · W  (the first layer's input needs no gradient)
                let dx = self.grad_buf[ping].prefix(rows * s.in_features);
                self.device.gemm(Gemm { m: rows, n: s.in_features, k: s.out_features, trans_a: false, trans_b: false, accumulate: false, sparse_a: s.relu }, dx, dy, l.w);
                dy = dx;
                ping ^= 1;
            }
        }
    }

    /// A gradient buffer of `len` values for the caller's `∂loss/∂output` (not used by `backward`
    /// for the last layer's input, so it may hold dz).
    pub fn dz_buffer(&self, rows: usize) -> View {
        // grad_buf[1] is first written by backward only after the last layer's dz has been read
        // into its GEMMs, and ping-pong starts at 0: the output gradient lives in [1].
        self.grad_buf[1].prefix(rows * self.cfg.embed)
    }

    /// All parameters, downloaded (checkpoints, tests).
    pub fn params_to_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.params.len];
        self.device.download(self.params, &mut v);
        v
    }

    pub fn grads_to_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.grads.len];
        self.device.download(self.grads, &mut v);
        v
    }

    pub fn set_params(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.params.len {
            return Err(EngineError::Shape(format!("{} parameter values for a model of {}", values.len(), self.params.len)));
        }
        self.device.upload(self.params, values);
        Ok(())
    }
}
