//! The `cnn` encoder of SPEC §2, exactly `CNN` of `reference/encoders_ref.py`: a 1-D CNN in the
//! style of WDCNN for raw vibration.
//!
//! ```text
//! [W, C] → Conv1d(C, 16, k64, s16, p24) BN ReLU MaxPool2
//!        → Conv1d(16, 32, k3, p1) BN ReLU MaxPool2 → (32 → 64) … → (64 → 64) …
//!        → Conv1d(64, 64, k3, p1) BN ReLU → mean over time → Linear(64, D)
//! ```
//!
//! Activations are channels-last `[rows·L, channels]`; each convolution is an im2col GEMM
//! ([`crate::ops::conv1d`]; the CPU reads the im2col rows in place where they are evenly spaced,
//! which they are in every layer at the windows the configs use), BatchNorm + ReLU + MaxPool one
//! fused op ([`crate::ops::norm`]). PyTorch's names:
//! `blocks.{i}.0` (Conv1d), `blocks.{i}.1` (BatchNorm1d), `head`.

use crate::arena::{Arenas, Tensors};
use crate::device::{Device, View};
use crate::encoders::lanes::{run_views, Part, ViewLanes};
use crate::encoders::{EncoderConfig, Inputs, Mode};
use crate::error::{EngineError, Result, Setting};
use crate::ops::conv1d::{Conv1d, Conv1dSlots, ConvShape};
use crate::ops::linear::{Linear, LinearSlots};
use crate::ops::norm::{BatchNorm, BatchNormSlots};
use crate::ops::pool::PoolShape;

/// The CNN's settings; the defaults are the reference's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnnConfig {
    /// Output channels of each block (default 16, 32, 64, 64, 64). Every block but the last ends
    /// with a MaxPool1d(2).
    pub widths: Vec<usize>,
    /// The first convolution's kernel, stride and padding (default 64, 16, 24: a wide first
    /// kernel, as WDCNN); the others are k3, s1, p1.
    pub first_kernel: usize,
    pub first_stride: usize,
    pub first_padding: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        CnnConfig { widths: vec![16, 32, 64, 64, 64], first_kernel: 64, first_stride: 16, first_padding: 24 }
    }
}

/// One block's geometry for a window of a given length.
#[derive(Clone, Copy, Debug)]
struct BlockShape {
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    len_in: usize,
    len_out: usize,
    pool: bool,
}

impl BlockShape {
    fn conv(&self, samples: usize) -> ConvShape {
        ConvShape { samples, len_in: self.len_in, channels: self.cin, kernel: self.kernel, stride: self.stride, padding: self.padding }
    }

    /// The pool's argument of the block's BatchNorm: each sample's `len_out` steps, where the
    /// block has one.
    fn pool(&self) -> Option<usize> {
        self.pool.then_some(self.len_out)
    }

    /// Steps after the block (after its pool).
    fn len_next(&self) -> usize {
        if self.pool {
            self.len_out / 2
        } else {
            self.len_out
        }
    }
}

impl CnnConfig {
    /// Every block's geometry for windows `[window, channels]`, or why the window is too short.
    fn blocks(&self, window: usize, channels: usize) -> Result<Vec<BlockShape>> {
        let mut out = Vec::new();
        let (mut len, mut cin) = (window, channels);
        let n = self.widths.len();
        for (i, &cout) in self.widths.iter().enumerate() {
            let (kernel, stride, padding) = if i == 0 { (self.first_kernel, self.first_stride, self.first_padding) } else { (3, 1, 1) };
            let pool = i + 1 < n;
            let s = ConvShape { samples: 1, len_in: len, channels: cin, kernel, stride, padding };
            let len_out = s.len_out().filter(|&l| l >= if pool { 2 } else { 1 });
            let Some(len_out) = len_out else {
                return Err(EngineError::invalid(
                    Setting::Window,
                    format!("{window} samples are too few for the cnn encoder: block {i} gets {len} steps (the encoder needs a window of at least {} samples)", self.min_window()),
                ));
            };
            let b = BlockShape { cin, cout, kernel, stride, padding, len_in: len, len_out, pool };
            len = b.len_next();
            cin = cout;
            out.push(b);
        }
        Ok(out)
    }

    /// The shortest window every block can run on.
    pub fn min_window(&self) -> usize {
        (1..=1 << 16).find(|&w| self.blocks_unchecked(w)).unwrap_or(usize::MAX)
    }

    fn blocks_unchecked(&self, w: usize) -> bool {
        let n = self.widths.len();
        let mut len = w;
        for i in 0..n {
            let (k, s, p) = if i == 0 { (self.first_kernel, self.first_stride, self.first_padding) } else { (3, 1, 1) };
            let padded = len + 2 * p;
            if padded < k || s == 0 {
                return false;
            }
            let lo = (padded - k) / s + 1;
            let pool = i + 1 < n;
            if lo < if pool { 2 } else { 1 } {
                return false;
            }
            len = if pool { lo / 2 } else { lo };
        }
        true
    }

    pub fn validate(&self, window: usize) -> Result<()> {
        if self.widths.is_empty() || self.widths.contains(&0) {
            return Err(EngineError::invalid(Setting::Encoder, "the cnn needs at least one block, each with channels > 0"));
        }
        if self.first_kernel == 0 || self.first_stride == 0 {
            return Err(EngineError::invalid(Setting::Encoder, "the cnn's first kernel and stride must be > 0"));
        }
        if self.first_kernel > window {
            return Err(EngineError::invalid(
                Setting::Window,
                format!("{window} samples are too few for the cnn encoder (its first kernel is {} samples wide; it needs a window of at least {} samples)", self.first_kernel, self.min_window()),
            ));
        }
        if self.first_padding > window {
            return Err(EngineError::invalid(Setting::Encoder, format!("the cnn's first padding of {} is wider than the window of {window} samples", self.first_padding)));
        }
        if self.widths.len() > super::MAX_LAYERS || self.widths.iter().any(|&w| w > super::MAX_WIDTH) {
            return Err(EngineError::invalid(
                Setting::Encoder,
                format!(
                    "the cnn's {} blocks (widths up to {}) are more than {} blocks or wider than {}",
                    self.widths.len(),
                    self.widths.iter().max().copied().unwrap_or(0),
                    super::MAX_LAYERS,
                    super::MAX_WIDTH
                ),
            ));
        }
        self.blocks(window, 1).map(drop)
    }

    /// Multiply-adds of the first convolution per window.
    pub fn forward_macs_first(&self, cfg: &EncoderConfig) -> usize {
        self.blocks(cfg.window, cfg.channels).map_or(0, |b| b.first().map_or(0, |b| b.len_out * b.cout * b.cin * b.kernel))
    }

    pub fn forward_macs(&self, cfg: &EncoderConfig) -> usize {
        let convs: usize = self.blocks(cfg.window, cfg.channels).map_or(0, |b| b.iter().map(|b| b.len_out * b.cout * b.cin * b.kernel).sum());
        convs + self.widths.last().copied().unwrap_or(0) * cfg.embed
    }
}

/// One block's geometry and activation buffers (`[max_rows·L, ·]`, the rows of every window of
/// a forward; each view's rows are one contiguous range of them).
struct Block {
    shape: BlockShape,
    /// im2col matrix (none where the device reads the rows in place: `cols_width` 0, else `K·C`
    /// per output row), convolution output (BatchNorm's input), the block's output (BatchNorm +
    /// ReLU, pooled where the block has a pool) and the pool's argmax (empty without one).
    cols: View,
    cols_width: usize,
    /// Values per output row of the input gradient's im2col matrix: `K·C`, or 0 where the device
    /// runs the input gradient as a convolution ([`ConvShape::input_gradient_on`]) or the block needs
    /// none (the first).
    dcols_width: usize,
    y: View,
    out: View,
    argmax: View,
    /// BatchNorm's per-group statistics.
    stats: View,
}

/// The ops of one lane: the model's own, or copies for the second view's lane that write their
/// gradients, running-statistics update and tap-major weights to spares of their own.
struct Ops {
    layers: Vec<(Conv1d, BatchNorm)>,
    head: Linear,
}

/// A built CNN.
pub struct Cnn {
    blocks: Vec<Block>,
    /// `ops[0]` the model's; `ops[1]` the second view's lane's.
    ops: Vec<Ops>,
    /// The second lane's spares, and whether the last forward ran on lanes.
    lanes: ViewLanes,
    /// Values per window, `W·C`.
    input: usize,
    /// Mean over time `[max_rows, channels]` and the embeddings `[max_rows, D]`.
    mean: View,
    z: View,
    /// Gradient buffers sized for the largest activation and the largest im2col matrix whose
    /// gradient is formed (the input gradients of every block but the first).
    g_act: [View; 2],
    g_cols: View,
}

pub struct CnnSlots {
    blocks: Vec<(Conv1dSlots, BatchNormSlots)>,
    head: LinearSlots,
}

impl CnnSlots {
    /// Binds every op to `arenas`, each convolution with tap-major copies of its own.
    fn bind<D: Device>(self, arenas: &Arenas, dev: &mut D) -> Result<Ops> {
        let layers = self.blocks.into_iter().map(|(conv, bn)| Ok((conv.bind(arenas, dev)?, bn.bind(arenas)))).collect::<Result<_>>()?;
        Ok(Ops { layers, head: self.head.bind(arenas) })
    }
}

impl Cnn {
    pub fn declare(c: &CnnConfig, cfg: &EncoderConfig, t: &mut Tensors) -> CnnSlots {
        let mut cin = cfg.channels;
        let mut blocks = Vec::new();
        for (i, &cout) in c.widths.iter().enumerate() {
            let (k, s, p) = if i == 0 { (c.first_kernel, c.first_stride, c.first_padding) } else { (3, 1, 1) };
            let conv = Conv1dSlots::declare(t, &format!("blocks.{i}.0"), cin, cout, k, s, p);
            let bn = BatchNormSlots::declare(t, &format!("blocks.{i}.1"), cout, true);
            blocks.push((conv, bn));
            cin = cout;
        }
        let head = LinearSlots::declare(t, "head", cin, cfg.embed);
        CnnSlots { blocks, head }
    }

    pub fn build<D: Device>(c: &CnnConfig, cfg: &EncoderConfig, arenas: &Arenas, dev: &mut D, max_rows: usize) -> Result<Self> {
        let shapes = c.blocks(cfg.window, cfg.channels)?;
        let mut blocks = Vec::new();
        // A block's buffers multiply the rows, its length and its channels: a product past usize
        // (a window of 2³² samples beside 2²⁰ channels) is a named error, not a wrapped size.
        let size = |what: &str, parts: &[usize]| -> Result<usize> {
            parts.iter().try_fold(1usize, |a, &p| a.checked_mul(p)).ok_or_else(|| {
                let factors: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                EngineError::invalid(Setting::Encoder, format!("the cnn's {what} of {} values is more than this machine can address", factors.join(" × ")))
            })
        };
        let (mut widest_act, mut widest_cols) = (max_rows * cfg.input(), 0);
        for (i, shape) in shapes.into_iter().enumerate() {
            let rows = size("output rows", &[max_rows, shape.len_out])?;
            let out_rows = size("pooled rows", &[max_rows, shape.len_next()])?;
            let y_len = size("activations", &[rows, shape.cout])?;
            widest_act = widest_act.max(y_len).max(size("block inputs", &[max_rows, shape.len_in, shape.cin])?);
            let backward_as_conv = shape.conv(max_rows).input_gradient_on(dev, shape.cout).is_some();
            let dcols_width = if i > 0 && !backward_as_conv { size("im2col width", &[shape.cin, shape.kernel])? } else { 0 };
            widest_cols = widest_cols.max(size("im2col gradient", &[rows, dcols_width])?);
            // (Whether the rows can be read in place does not depend on the batch: a smaller
            // batch reads them in place too, and an empty one needs no im2col matrix.)
            let cols_width = if dev.reads_conv_rows_in_place(shape.conv(max_rows)) { 0 } else { size("im2col width", &[shape.cin, shape.kernel])? };
            let pooled = size("pooled activations", &[out_rows, shape.cout])?;
            blocks.push(Block {
                shape,
                cols: dev.alloc(size("im2col matrix", &[rows, cols_width])?)?,
                cols_width,
                dcols_width,
                y: dev.alloc(y_len)?,
                out: dev.alloc(pooled)?,
                argmax: dev.alloc(if shape.pool { pooled } else { 0 })?,
                stats: dev.alloc(size("batch statistics", &[2, max_rows, shape.cout])?)?,
            });
        }
        let model = Self::declare(c, cfg, &mut Tensors::default()).bind(arenas, dev)?;
        let (lanes, spares) = ViewLanes::new(arenas, dev)?;
        let lane = Self::declare(c, cfg, &mut Tensors::default()).bind(&spares, dev)?;
        let channels = c.widths.last().copied().unwrap_or(1);
        Ok(Cnn {
            blocks,
            ops: vec![model, lane],
            lanes,
            input: cfg.input(),
            mean: dev.alloc(max_rows * channels)?,
            z: dev.alloc(max_rows * cfg.embed)?,
            g_act: [dev.alloc(widest_act)?, dev.alloc(widest_act)?],
            g_cols: dev.alloc(widest_cols)?,
        })
    }

    pub(crate) fn forward<D: Device>(&mut self, dev: &mut D, io: &mut Inputs) -> View {
        let train = matches!(io.mode, Mode::Train { .. });
        match self.lanes.plan_forward(dev, io, true) {
            None => self.forward_part(dev, &self.ops[0], io.x, Part::whole(io.rows, io.groups), train),
            Some(rows) => {
                let (this, x) = (&*self, io.x);
                // SAFETY: `forward_part` writes its part's rows of the activation buffers and of
                // `mean` and `z`, its share of BatchNorm's statistics, and its own ops' tap-major
                // weights and running statistics; it reads besides only the windows and weights.
                unsafe { run_views(dev, rows, |dev, p| this.forward_part(dev, &this.ops[p.lane], x, p, true)) };
                for ((_, bn), (_, spare)) in self.ops[0].layers.iter().zip(&self.ops[1].layers) {
                    bn.fold_running(dev, spare);
                }
            }
        }
        if train {
            for (_, bn) in &self.ops[0].layers {
                bn.count(io.counters, io.groups);
            }
        }
        self.z.prefix(io.rows * self.head().out_features)
    }

    fn head(&self) -> &Linear {
        &self.ops[0].head
    }

    /// The forward of the windows of `part` (`windows`: the whole batch's) through `ops`.
    fn forward_part<D: Device>(&self, dev: &mut D, ops: &Ops, windows: View, p: Part, train: bool) {
        let windows = p.rows_of(windows, self.input);
        for (i, (b, (conv, bn))) in self.blocks.iter().zip(&ops.layers).enumerate() {
            let s = b.shape;
            let (x, y) = (self.block_input(i, windows, p), p.rows_of(b.y, s.len_out * s.cout));
            conv.forward(dev, x, p.rows_of(b.cols, s.len_out * b.cols_width), y, s.conv(p.rows));
            let (out, argmax) = b.output(p);
            bn.forward(dev, y, out, argmax, b.stats_of(p), p.groups, s.pool(), train);
        }
        let x = self.block_input(self.blocks.len(), windows, p);
        let last = self.last();
        let mean = p.rows_of(self.mean, last.cout);
        dev.meanpool_forward(x, mean, PoolShape { samples: p.rows, len: last.len_out, cols: last.cout });
        ops.head.forward(dev, mean, p.rows_of(self.z, ops.head.out_features), p.rows);
    }

    fn last(&self) -> BlockShape {
        self.blocks.last().map(|b| b.shape).expect("a cnn has blocks")
    }

    /// The input of block `i` for the windows of `p` (`windows`: the part's), of the head for `i`
    /// = the block count: the windows, or the previous block's (pooled) output. The forward and
    /// the backward both take it from here.
    fn block_input(&self, i: usize, windows: View, p: Part) -> View {
        match i.checked_sub(1).map(|prev| &self.blocks[prev]) {
            None => windows,
            Some(prev) => prev.output(p).0,
        }
    }

    pub(crate) fn backward<D: Device>(&self, dev: &mut D, io: &mut Inputs, dz: View, accumulate: bool) {
        match self.lanes.rows() {
            None => self.backward_part(dev, &self.ops[0], io.x, dz, Part::whole(io.rows, io.groups), accumulate),
            Some(rows) => {
                let x = io.x;
                // SAFETY: as in the forward, and `backward_part` writes its share of the gradient
                // scratch, its own ops' gradients (the second lane's whole, never accumulating)
                // and their tap-major copies (`dw_taps`, `w_back`).
                unsafe { run_views(dev, rows, |dev, p| self.backward_part(dev, &self.ops[p.lane], x, dz, p, accumulate && p.lane == 0)) };
                self.lanes.add_spare_grads(dev);
            }
        }
    }

    /// The backward of [`forward_part`](Self::forward_part) from the whole batch's `dz`.
    fn backward_part<D: Device>(&self, dev: &mut D, ops: &Ops, windows: View, dz: View, p: Part, accumulate: bool) {
        let windows = p.rows_of(windows, self.input);
        let dz = p.rows_of(dz, ops.head.out_features);
        let last = self.last();
        // `d`, the gradient of a block's output, lives in one activation buffer, the gradient of
        // its convolution's output in the other: BatchNorm's backward reads the first and writes
        // the second, the convolution's reads the second and writes the first.
        let [g_conv, g_block] = self.g_act.map(|g| p.share(g));
        let g_cols = p.share(self.g_cols);
        let dmean = g_conv.prefix(p.rows * last.cout);
        ops.head.backward(dev, p.rows_of(self.mean, last.cout), dz, Some(dmean), p.rows, accumulate, false, false);
        let mut d = g_block.prefix(p.rows * last.len_out * last.cout);
        dev.meanpool_backward(dmean, d, PoolShape { samples: p.rows, len: last.len_out, cols: last.cout });
        for (i, (b, (conv, bn))) in self.blocks.iter().zip(&ops.layers).enumerate().rev() {
            let s = b.shape;
            let n = p.rows * s.len_out;
            let dy = g_conv.prefix(n * s.cout);
            let (out, argmax) = b.output(p);
            bn.backward(dev, d, out, argmax, p.rows_of(b.y, s.len_out * s.cout), b.stats_of(p), dy, p.groups, s.pool(), accumulate);
            // The first block's input (the windows) needs no gradient.
            let dx = (i > 0).then(|| g_block.prefix(p.rows * s.len_in * s.cin));
            let x = self.block_input(i, windows, p);
            let dcols = g_cols.prefix(n * b.dcols_width);
            conv.backward(dev, x, p.rows_of(b.cols, s.len_out * b.cols_width), dy, dcols, dx, s.conv(p.rows), accumulate);
            if let Some(dx) = dx {
                d = dx;
            }
        }
    }
}

impl Block {
    /// The block's output for the windows of `p` and the pool's argmax beside it (empty without
    /// a pool).
    fn output(&self, p: Part) -> (View, View) {
        let per_row = self.shape.len_next() * self.shape.cout;
        (p.rows_of(self.out, per_row), p.rows_of(self.argmax, if self.shape.pool { per_row } else { 0 }))
    }

    /// BatchNorm's statistics of the groups of `p` (each lane has its own).
    fn stats_of(&self, p: Part) -> View {
        let n = 2 * p.groups * self.shape.cout;
        self.stats.sub(p.lane * n, n)
    }
}
