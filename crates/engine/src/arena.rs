//! Where an encoder's tensors live. Parameters, their gradients and the two Adam moments are four
//! arenas of one layout (one fused Adam pass, one gradient-norm pass over each); BatchNorm's
//! running statistics are a fifth arena the optimizer never touches; `num_batches_tracked`
//! counters stay on the host.
//!
//! An encoder first declares its tensors in a [`Tensors`] list — PyTorch's names and shapes, in
//! PyTorch's `state_dict` order, each with its initialiser — and gets a [`Slot`] per tensor;
//! [`Tensors::allocate`] then makes the arenas on a device, and each slot becomes a [`View`]. The
//! list ([`TensorSpec`]) is what checkpoints read and write.

use crate::device::{dropout_hash, Device, View};
use crate::error::Result;

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]` (PyTorch's Kaiming-uniform and Xavier-uniform defaults).
    Uniform(f32),
    Constant(f32),
}

/// Which arena a tensor lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Trained: parameters, gradients, Adam moments.
    Param,
    /// Kept, not trained (BatchNorm's running statistics).
    Buffer,
    /// An integer counter kept on the host (BatchNorm's `num_batches_tracked`, int64 in PyTorch).
    Counter,
}

/// One named tensor of an encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// PyTorch's `state_dict` key.
    pub name: String,
    /// PyTorch's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    pub kind: TensorKind,
    /// Offset into its arena (the counter's index for a counter).
    pub offset: usize,
    pub init: Init,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A declared tensor: where it will be once the arenas exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    kind: TensorKind,
    offset: usize,
    len: usize,
}

impl Slot {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// The tensors of an encoder, declared in order.
#[derive(Clone, Debug, Default)]
pub struct Tensors {
    specs: Vec<TensorSpec>,
    param_len: usize,
    buffer_len: usize,
    counters: usize,
}

impl Tensors {
    fn push(&mut self, name: &str, shape: &[usize], kind: TensorKind, init: Init) -> Slot {
        // Shapes come from configurations and checkpoints: products and offsets saturate, and a
        // saturated arena fails [`Tensors::allocate`] instead of wrapping into a small one.
        let len = shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        let (end, step) = match kind {
            TensorKind::Param => (&mut self.param_len, len),
            TensorKind::Buffer => (&mut self.buffer_len, len),
            TensorKind::Counter => (&mut self.counters, 1),
        };
        let offset = *end;
        *end = end.saturating_add(step);
        self.specs.push(TensorSpec { name: name.to_string(), shape: shape.to_vec(), kind, offset, init });
        Slot { kind, offset, len }
    }

    /// A trained tensor.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Slot {
        self.push(name, shape, TensorKind::Param, init)
    }

    /// A kept, untrained tensor.
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Slot {
        self.push(name, shape, TensorKind::Buffer, init)
    }

    /// A host-side integer counter (a scalar in the checkpoint).
    pub fn counter(&mut self, name: &str) -> Slot {
        self.push(name, &[], TensorKind::Counter, Init::Constant(0.0))
    }

    /// Values of the parameter arena.
    pub fn param_len(&self) -> usize {
        self.param_len
    }

    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Allocates the arenas on `dev` and writes every tensor's initial value, drawn from `seed`
    /// (each tensor from its own stream, so adding a tensor does not change the others).
    pub fn allocate<D: Device>(self, dev: &mut D, seed: u64) -> Result<Arenas> {
        let n = self.param_len;
        // Four arenas of the parameters (values, gradients, two moments) and the buffers.
        limits::check(|| format!("an encoder of {n} parameters and {} buffer values", self.buffer_len), limits::bytes(&[n, 4], 4).saturating_add(limits::bytes(&[self.buffer_len], 4)))?;
        let (params, grads, adam_m, adam_v) = (dev.alloc(n)?, dev.alloc(n)?, dev.alloc(n)?, dev.alloc(n)?);
        let buffers = dev.alloc(self.buffer_len)?;
        let mut pv = vec![0.0f32; n];
        let mut bv = vec![0.0f32; self.buffer_len];
        for (ti, s) in self.specs.iter().enumerate() {
            let target = match s.kind {
                TensorKind::Param => &mut pv[s.offset..s.offset + s.len()],
                TensorKind::Buffer => &mut bv[s.offset..s.offset + s.len()],
                TensorKind::Counter => continue,
            };
            match s.init {
                Init::Constant(c) => target.fill(c),
                Init::Uniform(bound) => {
                    let key = crate::encoders::mix_key(seed, 0x1417, ti as u64);
                    for (i, v) in target.iter_mut().enumerate() {
                        let u = dropout_hash(key, i as u64) as f64 / 4_294_967_296.0;
                        *v = ((2.0 * u - 1.0) * bound as f64) as f32;
                    }
                }
            }
        }
        dev.upload(params, &pv);
        dev.upload(buffers, &bv);
        Ok(Arenas { params, grads, adam_m, adam_v, buffers, counters: vec![0; self.counters], specs: self.specs })
    }
}

/// An encoder's arenas on its device, and the list of what is where.
#[derive(Clone, Debug)]
pub struct Arenas {
    pub params: View,
    pub grads: View,
    pub adam_m: View,
    pub adam_v: View,
    pub buffers: View,
    /// `num_batches_tracked` of every BatchNorm, in declaration order.
    pub counters: Vec<u64>,
    pub specs: Vec<TensorSpec>,
}

impl Arenas {
    pub fn param(&self, s: Slot) -> View {
        debug_assert_eq!(s.kind, TensorKind::Param);
        self.params.sub(s.offset, s.len)
    }

    pub fn grad(&self, s: Slot) -> View {
        debug_assert_eq!(s.kind, TensorKind::Param);
        self.grads.sub(s.offset, s.len)
    }

    pub fn buffer(&self, s: Slot) -> View {
        debug_assert_eq!(s.kind, TensorKind::Buffer);
        self.buffers.sub(s.offset, s.len)
    }

    /// The buffers from `first` through `last` as one view (declared one after the other).
    pub fn buffer_span(&self, first: Slot, last: Slot) -> View {
        assert!(first.kind == TensorKind::Buffer && last.kind == TensorKind::Buffer && last.offset >= first.offset);
        self.buffers.sub(first.offset, last.offset + last.len - first.offset)
    }
}
