//! The projection head of contrastive pretraining (SimCLR's `Linear(D, D) → ReLU → Linear(D, P)`):
//! InfoNCE is taken on its output, and it is discarded after pretraining — the encoder's
//! embedding, before the head, is what evaluation and downstream use. It belongs to the training
//! task, not to the encoder: its tensors (`projection.0.*`, `projection.2.*`) live in arenas of
//! their own on the encoder's device, are updated by the same Adam step, and are saved with the
//! optimizer state, never in the encoder's `state_dict`.

use crate::arena::{Arenas, TensorSpec, Tensors};
use crate::device::{Device, View};
use crate::error::{EngineError, Result, Setting};
use crate::ops::linear::{Linear, LinearSlots};

/// A projection head from `D` to `P` dimensions, with its buffers for `max_rows` rows.
pub struct ProjectionHead {
    arenas: Arenas,
    l1: Linear,
    l2: Linear,
    /// `relu(z·W₁ᵀ + b₁)` `[max_rows, D]`, the output `[max_rows, P]`, and the gradient of the
    /// hidden layer.
    hidden: View,
    out: View,
    d_hidden: View,
    d_out: View,
}

impl ProjectionHead {
    /// A head from `embed` to `dim` on `dev`, initialised as PyTorch's `nn.Linear`s.
    pub fn init<D: Device>(dev: &mut D, embed: usize, dim: usize, max_rows: usize, seed: u64) -> Result<Self> {
        if dim == 0 || dim > 1 << 20 {
            return Err(EngineError::invalid(Setting::Projection, format!("a projection of {dim} dimensions")));
        }
        let mut t = Tensors::default();
        let (s1, s2) = (LinearSlots::declare(&mut t, "projection.0", embed, embed), LinearSlots::declare(&mut t, "projection.2", embed, dim));
        let arenas = t.allocate(dev, seed ^ 0x9E07)?;
        Ok(ProjectionHead {
            l1: s1.bind(&arenas),
            l2: s2.bind(&arenas),
            arenas,
            hidden: dev.alloc(max_rows * embed)?,
            out: dev.alloc(max_rows * dim)?,
            d_hidden: dev.alloc(max_rows * embed)?,
            d_out: dev.alloc(max_rows * dim)?,
        })
    }

    /// Output dimensions P.
    pub fn dim(&self) -> usize {
        self.l2.out_features
    }

    /// `p = W₂·relu(W₁·z + b₁) + b₂` for `rows` embeddings.
    pub fn forward<D: Device>(&self, dev: &mut D, z: View, rows: usize) -> View {
        let h = self.hidden.prefix(rows * self.l1.out_features);
        self.l1.matmul(dev, z, h, rows);
        dev.bias_act_forward(h, self.l1.b, self.l1.out_features, true, None);
        let p = self.out.prefix(rows * self.dim());
        self.l2.forward(dev, h, p, rows);
        p
    }

    /// A buffer for `∂loss/∂p` `[rows, P]`.
    pub fn d_out(&self, rows: usize) -> View {
        self.d_out.prefix(rows * self.dim())
    }

    /// From `dp = ∂loss/∂p` (modified): the head's gradients, and `dz` (written).
    pub fn backward<D: Device>(&self, dev: &mut D, z: View, dp: View, dz: View, rows: usize, accumulate: bool) {
        let h = self.hidden.prefix(rows * self.l1.out_features);
        let dh = self.d_hidden.prefix(rows * self.l1.out_features);
        self.l2.backward(dev, h, dp, Some(dh), rows, accumulate, false, false);
        dev.act_backward(dh, h, 1.0);
        self.l1.backward(dev, z, dh, Some(dz), rows, accumulate, false, true);
    }

    /// Its parameter, gradient and moment arenas.
    pub fn arenas(&self) -> &Arenas {
        &self.arenas
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.arenas.specs
    }
}
