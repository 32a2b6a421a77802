//! Linear layers, PyTorch's `nn.Linear`: `Y = X·Wᵀ + b` with `W[out, in]`, forward and backward
//! side by side. The bias (and whatever activation follows) is added by one fused element-wise
//! pass ([`crate::ops::act`]); the backward is `dW = dYᵀ·X`, `db = Σ_rows dY`, `dX = dY·W`.

use crate::arena::{Arenas, Init, Slot, Tensors};
use crate::device::{Device, Dropout, Gemm, View};
use crate::ops::act::Activation;

/// A Linear layer's parameters and their gradients.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub w: View,
    pub b: View,
    pub dw: View,
    pub db: View,
}

/// A Linear layer declared in a [`Tensors`] list, before the arenas exist.
#[derive(Clone, Copy, Debug)]
pub struct LinearSlots {
    in_features: usize,
    out_features: usize,
    w: Slot,
    b: Slot,
}

impl LinearSlots {
    /// `{name}.weight [out, in]` and `{name}.bias [out]`, initialised as PyTorch's `nn.Linear`
    /// (uniform, bound `1/√in` for both).
    pub fn declare(t: &mut Tensors, name: &str, in_features: usize, out_features: usize) -> Self {
        let bound = 1.0 / (in_features as f32).sqrt();
        Self::declare_with(t, name, in_features, out_features, Init::Uniform(bound), Init::Uniform(bound))
    }

    /// As [`declare`](Self::declare) with explicit initialisers (attention's projections differ).
    pub fn declare_with(t: &mut Tensors, name: &str, in_features: usize, out_features: usize, w: Init, b: Init) -> Self {
        Self::declare_shaped(t, name, in_features, out_features, &[out_features, in_features], w, b)
    }

    /// As [`declare_with`](Self::declare_with), the weight stored under another shape of the
    /// same `[out, in]` values (a convolution's `[out, C, K]`).
    pub fn declare_shaped(t: &mut Tensors, name: &str, in_features: usize, out_features: usize, weight_shape: &[usize], w: Init, b: Init) -> Self {
        assert_eq!(weight_shape.iter().product::<usize>(), in_features * out_features, "weight shape of {name}");
        let w = t.param(&format!("{name}.weight"), weight_shape, w);
        let b = t.param(&format!("{name}.bias"), &[out_features], b);
        LinearSlots { in_features, out_features, w, b }
    }

    /// A Linear over tensors declared under other names (attention's `in_proj_weight`).
    pub fn from_slots(in_features: usize, out_features: usize, w: Slot, b: Slot) -> Self {
        assert!(w.len() == in_features * out_features && b.len() == out_features);
        LinearSlots { in_features, out_features, w, b }
    }

    pub fn bind(self, a: &Arenas) -> Linear {
        Linear { in_features: self.in_features, out_features: self.out_features, w: a.param(self.w), b: a.param(self.b), dw: a.grad(self.w), db: a.grad(self.b) }
    }
}

impl Linear {
    /// `y[rows, out] = x[rows, in] · Wᵀ` (no bias).
    pub fn matmul<D: Device>(&self, dev: &mut D, x: View, y: View, rows: usize) {
        dev.gemm(Gemm::nt(rows, self.out_features, self.in_features), y, x, self.w);
    }

    /// `y = x·Wᵀ + b`.
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, y: View, rows: usize) {
        self.matmul(dev, x, y, rows);
        dev.bias_act_forward(y, self.b, self.out_features, false, None);
    }

    /// `pre = x·Wᵀ + b` and `out = dropout(act(pre))`, `pre` kept for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_act<D: Device>(&self, dev: &mut D, x: View, pre: View, out: View, rows: usize, act: Activation, dropout: Option<Dropout>) {
        self.matmul(dev, x, pre, rows);
        dev.act_forward(pre, out, Some(self.b), self.out_features, act, dropout);
    }

    /// Parameter gradients from `dy[rows, out]` (written, or added with `accumulate`), and the
    /// input gradient `dx = dy·W` where asked (added to `dx` with `dx_accumulate`: a residual
    /// branch's gradient already there). `sparse_dy` marks a gradient behind ReLU + dropout.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(&self, dev: &mut D, x: View, dy: View, dx: Option<View>, rows: usize, accumulate: bool, dx_accumulate: bool, sparse_dy: bool) {
        let (i, o) = (self.in_features, self.out_features);
        dev.gemm(Gemm::tn(o, i, rows).accumulate(accumulate).sparse_a(sparse_dy), self.dw, dy, x);
        dev.bias_grad(self.db, dy, o, accumulate);
        if let Some(dx) = dx {
            dev.gemm(Gemm::nn(rows, i, o).accumulate(dx_accumulate).sparse_a(sparse_dy), dx, dy, self.w);
        }
    }

    /// Multiply-adds of one forward row.
    pub fn macs(&self) -> usize {
        self.in_features * self.out_features
    }
}
