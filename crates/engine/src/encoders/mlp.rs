//! The MLP encoders of SPEC §2: `flatten → [Linear → ReLU → Dropout]* → Linear`.
//!
//! A window `[W, C]` is flattened row-major (PyTorch's `nn.Flatten` of a contiguous tensor), so
//! `Flatten` is the identity on our buffers in both directions. Each hidden block's
//! `bias → ReLU → Dropout` is one in-place kernel forward and one backward that reads the mask
//! off the block's output; the gradients behind it are mostly zeros, which the CPU device's
//! GEMM skips (`sparse_a`).

use crate::arena::{Arenas, Tensors};
use crate::device::{Device, Dropout, View};
use crate::encoders::{mix_key, Arch, EncoderConfig, Inputs, Mode};
use crate::error::Result;
use crate::ops::linear::{Linear, LinearSlots};

/// One Linear layer and the activation after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    pub in_features: usize,
    pub out_features: usize,
    /// ReLU + Dropout(p) after the Linear (hidden layers); the last layer has neither.
    pub relu: bool,
    pub dropout: f32,
    /// Index of this Linear in the equivalent PyTorch `nn.Sequential` (its checkpoint name).
    pub torch_index: usize,
}

/// The layers of an MLP config, in order, with PyTorch's `nn.Sequential` indices (a model with a
/// leading `nn.Flatten()` shifts every index by one; see docs/checkpoints.md).
pub fn layers(cfg: &EncoderConfig) -> Vec<LayerSpec> {
    let (widths, drops): (&[usize], &[f32]) = match cfg.arch {
        Arch::MlpSimple => (&[256], &[0.0]),
        Arch::MlpComplex => (&[1024, 512, 256], &[0.3, 0.3, 0.2]),
        _ => (&[512, 256], &[0.2, 0.2]),
    };
    let mut out = Vec::new();
    let mut fan_in = cfg.input();
    let mut torch_index = 0;
    for (&w, &p) in widths.iter().zip(drops) {
        out.push(LayerSpec { in_features: fan_in, out_features: w, relu: true, dropout: p, torch_index });
        // Linear, ReLU, and Dropout when p > 0 (mlp-simple has no Dropout module).
        torch_index += if p > 0.0 { 3 } else { 2 };
        fan_in = w;
    }
    out.push(LayerSpec { in_features: fan_in, out_features: cfg.embed, relu: false, dropout: 0.0, torch_index });
    out
}

/// A built MLP: its layers, each with its output buffer `[max_rows, out]` (after the fused
/// activation for hidden layers), and two ping-pong gradient buffers.
///
/// Unlike the CNN and the ISFM, an MLP runs both views of a step at once, each kernel split over
/// the workers: its weights are large against a batch's activations, so a lane per view (each
/// forming a whole weight gradient, the two summed after) costs more than it saves. Measured on
/// the Zen 4 of docs/performance.md, bf16: large's backward 1.10 → 1.64 ms, xl's 13.6 → 15.6 ms.
pub struct Mlp {
    layers: Vec<(LayerSpec, Linear, View)>,
    grad_buf: [View; 2],
}

impl Mlp {
    pub fn declare(cfg: &EncoderConfig, t: &mut Tensors) -> Vec<LinearSlots> {
        layers(cfg).iter().map(|l| LinearSlots::declare(t, &l.torch_index.to_string(), l.in_features, l.out_features)).collect()
    }

    pub fn build<D: Device>(cfg: &EncoderConfig, arenas: &Arenas, dev: &mut D, max_rows: usize) -> Result<Self> {
        let specs = layers(cfg);
        let mut scratch = Tensors::default();
        let slots = Self::declare(cfg, &mut scratch);
        let mut out = Vec::with_capacity(specs.len());
        for (s, slot) in specs.iter().zip(slots) {
            out.push((*s, slot.bind(arenas), dev.alloc(max_rows * s.out_features)?));
        }
        let widest = specs.iter().map(|s| s.in_features.max(s.out_features)).max().unwrap_or(1);
        let grad_buf = [dev.alloc(max_rows * widest)?, dev.alloc(max_rows * widest)?];
        Ok(Mlp { layers: out, grad_buf })
    }

    pub(crate) fn forward<D: Device>(&mut self, dev: &mut D, io: &mut Inputs) -> View {
        let rows = io.rows;
        let mut input = io.x;
        for (li, (s, lin, h)) in self.layers.iter().enumerate() {
            let out = h.prefix(rows * s.out_features);
            lin.matmul(dev, input, out, rows);
            let dropout = match io.mode {
                Mode::Train { key } if s.dropout > 0.0 => Some(Dropout { p: s.dropout, key: mix_key(key, 0xD0, li as u64) }),
                _ => None,
            };
            dev.bias_act_forward(out, lin.b, s.out_features, s.relu, dropout);
            input = out;
        }
        input
    }

    pub(crate) fn backward<D: Device>(&self, dev: &mut D, io: &mut Inputs, dz: View, accumulate: bool) {
        let rows = io.rows;
        let mut dy = dz;
        let mut ping = 0;
        for li in (0..self.layers.len()).rev() {
            let (s, lin, h) = self.layers[li];
            if s.relu {
                dev.act_backward(dy, h.prefix(rows * s.out_features), Dropout::scale(s.dropout));
            }
            let input = if li == 0 { io.x } else { self.layers[li - 1].2.prefix(rows * s.in_features) };
            // The first layer's input needs no gradient.
            let dx = (li > 0).then(|| self.grad_buf[ping].prefix(rows * s.in_features));
            lin.backward(dev, input, dy, dx, rows, accumulate, false, s.relu);
            if let Some(dx) = dx {
                dy = dx;
                ping ^= 1;
            }
        }
    }
}
