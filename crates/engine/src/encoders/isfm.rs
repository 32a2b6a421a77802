//! The `isfm` encoder of SPEC §2: PHM-Vibench's `M_01_ISFM` with the `E_01_HSE` embedding and the
//! `B_08_PatchTST` backbone, exactly `ISFM` of `reference/encoders_ref.py`.
//!
//! ```text
//! [W, C] → P patches of Lp × Cp, each step with its time t/rate   (HSE patch gather)
//!        → Linear(2·Lp·Cp, d) → SiLU → Linear(d, d)
//!        → e_layers × post-norm Transformer encoder layer:
//!            x = LN(x + dropout(MHA(x)))            (dropout on the attention weights too)
//!            x = LN(x + dropout(W₂·dropout(act(W₁·x))))
//!        → BatchNorm over d → mean over patches → Linear(d, D)
//! ```
//!
//! Rows are `[samples·P, d]`; the attention of a sample sees its own P rows. PyTorch's names:
//! `linear1`, `linear2`, `encoder.layers.{i}.{self_attn.in_proj_weight, …, norm2.bias}`, `norm`,
//! `head`.

use crate::arena::{Arenas, Tensors};
use crate::device::{Device, Dropout, View};
use crate::encoders::lanes::{run_views, Part, ViewLanes};
use crate::encoders::{mix_key, EncoderConfig, Inputs, Mode};
use crate::error::{EngineError, Result, Setting};
use crate::ops::act::Activation;
use crate::ops::attention::{SelfAttention, SelfAttentionSlots};
use crate::ops::linear::{Linear, LinearSlots};
use crate::ops::norm::{BatchNorm, BatchNormSlots, LayerNorm, LayerNormSlots};
use crate::ops::patch::PatchShape;
use crate::ops::pool::PoolShape;

/// The ISFM's settings (PHM-Vibench's `model` keys); the defaults are the reference's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsfmConfig {
    /// Patches per window P (default 32).
    pub num_patches: usize,
    /// Time steps per patch Lp (default 64).
    pub patch_size_l: usize,
    /// Channels per patch Cp (default 1).
    pub patch_size_c: usize,
    /// Transformer width d (default 256).
    pub d_model: usize,
    /// Attention heads; must divide d (default 4).
    pub num_heads: usize,
    /// Transformer encoder layers (default 2).
    pub e_layers: usize,
    /// Feed-forward width (default 512).
    pub d_ff: usize,
    /// Dropout on attention weights and sub-layer outputs (default 0.1).
    pub dropout: f32,
    /// Feed-forward activation, relu or gelu (default gelu).
    pub activation: Activation,
}

impl Default for IsfmConfig {
    fn default() -> Self {
        IsfmConfig { num_patches: 32, patch_size_l: 64, patch_size_c: 1, d_model: 256, num_heads: 4, e_layers: 2, d_ff: 512, dropout: 0.1, activation: Activation::Gelu }
    }
}

impl IsfmConfig {
    pub fn validate(&self, window: usize, channels: usize) -> Result<()> {
        let positive = [
            (Setting::NumPatches, self.num_patches),
            (Setting::PatchLen, self.patch_size_l),
            (Setting::PatchChannels, self.patch_size_c),
            (Setting::DModel, self.d_model),
            (Setting::Heads, self.num_heads),
            (Setting::Layers, self.e_layers),
            (Setting::FeedForward, self.d_ff),
        ];
        for (setting, v) in positive {
            if v == 0 {
                return Err(EngineError::invalid(setting, "must be > 0"));
            }
        }
        // LayerNorm over one feature gives 0 for every input, then its bias: the encoder's output
        // would not depend on its input at all (a loss of exactly ln B from the first step).
        if self.d_model == 1 {
            return Err(EngineError::invalid(Setting::DModel, "1: LayerNorm over a single feature outputs its bias whatever the input, so nothing could be learned; use 2 or more"));
        }
        if self.patch_size_l > window {
            return Err(EngineError::invalid(Setting::PatchLen, format!("{} is longer than the window of {window}", self.patch_size_l)));
        }
        if self.patch_size_c > channels {
            return Err(EngineError::invalid(Setting::PatchChannels, format!("{} is more than the {channels} channels of the data", self.patch_size_c)));
        }
        if !self.d_model.is_multiple_of(self.num_heads) {
            return Err(EngineError::invalid(Setting::Heads, format!("{} heads do not divide d_model = {}", self.num_heads, self.d_model)));
        }
        // The attention-weight dropout numbers a head's P × P weights in 32 bits.
        if self.num_patches > 65_535 {
            return Err(EngineError::invalid(Setting::NumPatches, format!("{} is more than 65535", self.num_patches)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(EngineError::invalid(Setting::Dropout, format!("{} is not in [0, 1)", self.dropout)));
        }
        if !matches!(self.activation, Activation::Relu | Activation::Gelu) {
            return Err(EngineError::invalid(Setting::Activation, format!("{}: the isfm's feed-forward takes relu or gelu (those of PyTorch's TransformerEncoderLayer)", self.activation)));
        }
        for (setting, v) in [(Setting::DModel, self.d_model), (Setting::FeedForward, self.d_ff)] {
            if v > super::MAX_WIDTH {
                return Err(EngineError::invalid(setting, format!("{v} is larger than {}", super::MAX_WIDTH)));
            }
        }
        // A patch's values, its time channel's included, are one row of the embedding's input:
        // the larger of the two factors is named.
        let patch_values = self.patch_size_l.saturating_mul(self.patch_size_c).saturating_mul(2);
        if patch_values > super::MAX_WIDTH {
            let setting = if self.patch_size_c > self.patch_size_l { Setting::PatchChannels } else { Setting::PatchLen };
            let why = format!("a patch of {} steps × {} channels is {patch_values} values with its time channel, more than {}", self.patch_size_l, self.patch_size_c, super::MAX_WIDTH);
            return Err(EngineError::invalid(setting, why));
        }
        if self.e_layers > super::MAX_LAYERS {
            return Err(EngineError::invalid(Setting::Layers, format!("{} is more than {}", self.e_layers, super::MAX_LAYERS)));
        }
        Ok(())
    }

    fn patch_shape(&self, cfg: &EncoderConfig, samples: usize) -> PatchShape {
        PatchShape { samples, window: cfg.window, channels: cfg.channels, patches: self.num_patches, patch_len: self.patch_size_l, patch_channels: self.patch_size_c }
    }

    /// Multiply-adds of one window's forward (saturating: the sizes `validate` accepts can
    /// multiply past usize, and this is a count for reports, not a buffer).
    pub fn forward_macs(&self, cfg: &EncoderConfig) -> usize {
        let (p, d, f) = (self.num_patches, self.d_model, self.d_ff);
        let mul = |parts: &[usize]| parts.iter().fold(1usize, |a, &x| a.saturating_mul(x));
        let embed = mul(&[2, self.patch_size_l, self.patch_size_c, d]).saturating_add(mul(&[d, d]));
        let layer = mul(&[4, d, d]).saturating_add(mul(&[2, d, f])).saturating_add(mul(&[2, p, d]));
        mul(&[p, embed.saturating_add(mul(&[self.e_layers, layer]))]).saturating_add(mul(&[d, cfg.embed]))
    }
}

/// One Transformer encoder layer's buffers (`N = max_rows·P` rows).
struct Layer {
    qkv: View,
    ctx: View,
    lse: View,
    attn_out: View,
    sum1: View,
    ln1: View,
    stats1: View,
    ff_pre: View,
    ff_act: View,
    ff_out: View,
    sum2: View,
    ln2: View,
    stats2: View,
}

/// The ops of one lane: the model's own, or the second view's lane's copies that write their
/// gradients and running-statistics update to spares ([`crate::encoders::lanes`]).
struct Ops {
    linear1: Linear,
    linear2: Linear,
    layers: Vec<LayerOps>,
    norm: BatchNorm,
    head: Linear,
}

/// A Transformer layer's ops.
struct LayerOps {
    attn: SelfAttention,
    ff1: Linear,
    ff2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

/// A built ISFM.
pub struct Isfm {
    cfg: IsfmConfig,
    /// Windows whose patch starts were given ([`Isfm::fix_starts`]) instead of drawn.
    fixed_starts: Option<usize>,
    enc: EncoderConfig,
    /// `ops[0]` the model's; `ops[1]` the second view's lane's.
    ops: Vec<Ops>,
    /// The second lane's spares, and whether the last forward ran on lanes.
    lanes: ViewLanes,
    /// Activation buffers, each shared out equally between the lanes of a pass (the embeddings
    /// `z` by rows: the loss reads them whole).
    layers: Vec<Layer>,
    starts: View,
    patches: View,
    pre1: View,
    h1: View,
    x0: View,
    bn_out: View,
    bn_stats: View,
    pooled: View,
    z: View,
    /// Gradient buffers: two of `[N, d]` for the residual stream, one for a sub-layer's output,
    /// the heads' context, qkv, the feed-forward, and the pooled features.
    g: [View; 2],
    g_sub: View,
    g_ctx: View,
    g_qkv: View,
    g_ff: View,
    g_pooled: View,
}

pub struct IsfmSlots {
    linear1: LinearSlots,
    linear2: LinearSlots,
    layers: Vec<(SelfAttentionSlots, LinearSlots, LinearSlots, LayerNormSlots, LayerNormSlots)>,
    norm: BatchNormSlots,
    head: LinearSlots,
}

impl IsfmSlots {
    fn bind(self, a: &Arenas) -> Ops {
        let layers = self.layers.into_iter().map(|(attn, ff1, ff2, n1, n2)| LayerOps { attn: attn.bind(a), ff1: ff1.bind(a), ff2: ff2.bind(a), norm1: n1.bind(a), norm2: n2.bind(a) }).collect();
        Ops { linear1: self.linear1.bind(a), linear2: self.linear2.bind(a), layers, norm: self.norm.bind(a), head: self.head.bind(a) }
    }
}

/// Where each dropout of a layer draws its mask from.
#[derive(Clone, Copy)]
enum DropSite {
    Attention = 0,
    Residual1 = 1,
    FeedForward = 2,
    Residual2 = 3,
}

impl Isfm {
    pub fn declare(c: &IsfmConfig, cfg: &EncoderConfig, t: &mut Tensors) -> IsfmSlots {
        let d = c.d_model;
        let linear1 = LinearSlots::declare(t, "linear1", 2 * c.patch_size_l * c.patch_size_c, d);
        let linear2 = LinearSlots::declare(t, "linear2", d, d);
        let layers = (0..c.e_layers)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                // nn.TransformerEncoderLayer's registration order: self_attn, linear1, linear2, norm1, norm2.
                let attn = SelfAttentionSlots::declare(t, &format!("{p}.self_attn"), d, c.num_heads);
                let ff1 = LinearSlots::declare(t, &format!("{p}.linear1"), d, c.d_ff);
                let ff2 = LinearSlots::declare(t, &format!("{p}.linear2"), c.d_ff, d);
                let n1 = LayerNormSlots::declare(t, &format!("{p}.norm1"), d);
                let n2 = LayerNormSlots::declare(t, &format!("{p}.norm2"), d);
                (attn, ff1, ff2, n1, n2)
            })
            .collect();
        let norm = BatchNormSlots::declare(t, "norm", d, false);
        let head = LinearSlots::declare(t, "head", d, cfg.embed);
        IsfmSlots { linear1, linear2, layers, norm, head }
    }

    pub fn build<D: Device>(c: &IsfmConfig, cfg: &EncoderConfig, arenas: &Arenas, dev: &mut D, max_rows: usize) -> Result<Self> {
        let (p, d, f) = (c.num_patches, c.d_model, c.d_ff);
        let n = max_rows.checked_mul(p).ok_or_else(|| EngineError::invalid(Setting::NumPatches, "batch × patches overflows"))?;
        let shape = c.patch_shape(cfg, max_rows);
        let mut layers = Vec::with_capacity(c.e_layers);
        for _ in 0..c.e_layers {
            layers.push(Layer {
                qkv: dev.alloc(n * 3 * d)?,
                ctx: dev.alloc(n * d)?,
                lse: dev.alloc(n * c.num_heads)?,
                attn_out: dev.alloc(n * d)?,
                sum1: dev.alloc(n * d)?,
                ln1: dev.alloc(n * d)?,
                stats1: dev.alloc(2 * n)?,
                ff_pre: dev.alloc(n * f)?,
                ff_act: dev.alloc(n * f)?,
                ff_out: dev.alloc(n * d)?,
                sum2: dev.alloc(n * d)?,
                ln2: dev.alloc(n * d)?,
                stats2: dev.alloc(2 * n)?,
            });
        }
        let (lanes, spares) = ViewLanes::new(arenas, dev)?;
        let ops = vec![Self::declare(c, cfg, &mut Tensors::default()).bind(arenas), Self::declare(c, cfg, &mut Tensors::default()).bind(&spares)];
        Ok(Isfm {
            cfg: c.clone(),
            fixed_starts: None,
            enc: cfg.clone(),
            ops,
            lanes,
            layers,
            starts: dev.alloc(shape.starts_len())?,
            patches: dev.alloc(n * shape.row_len())?,
            pre1: dev.alloc(n * d)?,
            h1: dev.alloc(n * d)?,
            x0: dev.alloc(n * d)?,
            bn_out: dev.alloc(n * d)?,
            bn_stats: dev.alloc(2 * max_rows * d)?,
            pooled: dev.alloc(max_rows * d)?,
            z: dev.alloc(max_rows * cfg.embed)?,
            g: [dev.alloc(n * d)?, dev.alloc(n * d)?],
            g_sub: dev.alloc(n * d)?,
            g_ctx: dev.alloc(n * d)?,
            g_qkv: dev.alloc(n * 3 * d)?,
            g_ff: dev.alloc(n * f)?,
            g_pooled: dev.alloc(max_rows * d)?,
        })
    }

    /// Uses the given patch starts (`sL`, `sC`, `windows × P` each) in the following forwards
    /// over exactly that many windows, as the reference's `forward(x, fs, sL, sC)` does; `None`
    /// goes back to drawing them.
    pub fn fix_starts<D: Device>(&mut self, dev: &mut D, starts: Option<(&[usize], &[usize])>) -> Result<()> {
        let Some((sl, sc)) = starts else {
            self.fixed_starts = None;
            return Ok(());
        };
        let p = self.cfg.num_patches;
        let windows = sl.len() / p;
        let shape = self.cfg.patch_shape(&self.enc, windows);
        if sl.len() != sc.len() || sl.len() % p != 0 || shape.starts_len() > self.starts.len() {
            return Err(EngineError::Shape(format!("{} and {} patch starts are not whole windows of {p} patches within the buffers", sl.len(), sc.len())));
        }
        let (tmax, cmax) = (self.enc.window - self.cfg.patch_size_l, self.enc.channels - self.cfg.patch_size_c);
        if sl.iter().any(|&t| t > tmax) || sc.iter().any(|&c| c > cmax) {
            return Err(EngineError::Shape(format!("a patch start lies past {tmax} (time) or {cmax} (channel)")));
        }
        let values: Vec<f32> = sl.iter().chain(sc).map(|&v| v as f32).collect();
        dev.upload(self.starts.prefix(values.len()), &values);
        self.fixed_starts = Some(windows);
        Ok(())
    }

    fn dropout(&self, mode: Mode, layer: usize, site: DropSite) -> Option<Dropout> {
        match mode {
            Mode::Train { key } if self.cfg.dropout > 0.0 => Some(Dropout { p: self.cfg.dropout, key: mix_key(key, 0xE0 + site as u64, layer as u64) }),
            _ => None,
        }
    }

    pub(crate) fn forward<D: Device>(&mut self, dev: &mut D, io: &mut Inputs) -> View {
        let (x, rates, mode) = (io.x, io.rates, io.mode);
        // (Patch starts given for the whole batch run it whole.)
        match self.lanes.plan_forward(dev, io, self.fixed_starts.is_none()) {
            None => self.forward_part(dev, &self.ops[0], x, rates, Part::whole(io.rows, io.groups), mode),
            Some(rows) => {
                let this = &*self;
                // SAFETY: `forward_part` writes its share of the activation buffers (patch starts
                // and patches included), its part's rows of `z`, and its own ops' running
                // statistics; it reads besides only the windows, rates and weights.
                unsafe { run_views(dev, rows, |dev, p| this.forward_part(dev, &this.ops[p.lane], x, rates, p, p.mode(mode))) };
                self.ops[0].norm.fold_running(dev, &self.ops[1].norm);
            }
        }
        if matches!(mode, Mode::Train { .. }) {
            self.ops[0].norm.count(io.counters, io.groups);
        }
        self.z.prefix(io.rows * self.ops[0].head.out_features)
    }

    /// The forward of the windows of `p` (`x`, `rates`: the whole batch's) through `ops`.
    #[allow(clippy::too_many_arguments)]
    fn forward_part<D: Device>(&self, dev: &mut D, ops: &Ops, x: View, rates: View, p: Part, mode: Mode) {
        let c = &self.cfg;
        let (d, f, rows) = (c.d_model, c.d_ff, p.rows);
        let n = rows * c.num_patches;
        let share = |v: View| p.share(v);
        let shape = c.patch_shape(&self.enc, rows);
        let starts = share(self.starts).prefix(shape.starts_len());
        match self.fixed_starts {
            Some(n) => assert_eq!(n, rows, "patch starts were fixed for {n} windows, the forward has {rows}"),
            None => dev.patch_starts(starts, shape, mode.key().map(|k| mix_key(k, 0x5A, 0))),
        }
        let patches = share(self.patches).prefix(n * shape.row_len());
        dev.patch_gather(p.rows_of(x, self.enc.input()), p.rows_of(rates, 1), starts, patches, shape);
        let (pre1, h1, x0) = (share(self.pre1).prefix(n * d), share(self.h1).prefix(n * d), share(self.x0).prefix(n * d));
        ops.linear1.forward_act(dev, patches, pre1, h1, n, Activation::Silu, None);
        ops.linear2.forward(dev, h1, x0, n);
        let mut x = x0;
        for (li, (l, o)) in self.layers.iter().zip(&ops.layers).enumerate() {
            let a = o.attn.shape(rows, c.num_patches);
            let (ln1, ln2) = (share(l.ln1).prefix(n * d), share(l.ln2).prefix(n * d));
            let attn_out = share(l.attn_out).prefix(n * d);
            o.attn.forward(dev, x, share(l.qkv).prefix(n * 3 * d), share(l.ctx).prefix(n * d), share(l.lse).prefix(a.lse_len()), attn_out, a, self.dropout(mode, li, DropSite::Attention));
            o.norm1.forward_residual(dev, x, attn_out, self.dropout(mode, li, DropSite::Residual1), share(l.sum1).prefix(n * d), ln1, share(l.stats1).prefix(2 * n));
            let (ff_act, ff_out) = (share(l.ff_act).prefix(n * f), share(l.ff_out).prefix(n * d));
            o.ff1.forward_act(dev, ln1, share(l.ff_pre).prefix(n * f), ff_act, n, c.activation, self.dropout(mode, li, DropSite::FeedForward));
            o.ff2.forward(dev, ff_act, ff_out, n);
            o.norm2.forward_residual(dev, ln1, ff_out, self.dropout(mode, li, DropSite::Residual2), share(l.sum2).prefix(n * d), ln2, share(l.stats2).prefix(2 * n));
            x = ln2;
        }
        let bn_out = share(self.bn_out).prefix(n * d);
        // (No pool after this BatchNorm: no argmax.)
        ops.norm.forward(dev, x, bn_out, bn_out.prefix(0), share(self.bn_stats).prefix(2 * p.groups * d), p.groups, None, matches!(mode, Mode::Train { .. }));
        let pooled = share(self.pooled).prefix(rows * d);
        dev.meanpool_forward(bn_out, pooled, PoolShape { samples: rows, len: c.num_patches, cols: d });
        ops.head.forward(dev, pooled, p.rows_of(self.z, ops.head.out_features), rows);
    }

    pub(crate) fn backward<D: Device>(&self, dev: &mut D, io: &mut Inputs, dz: View, accumulate: bool) {
        let mode = io.mode;
        match self.lanes.rows() {
            None => self.backward_part(dev, &self.ops[0], dz, Part::whole(io.rows, io.groups), mode, accumulate),
            Some(rows) => {
                // SAFETY: as in the forward, and `backward_part` writes its share of the gradient
                // buffers and its own ops' gradients (the second lane's whole, never accumulating).
                unsafe { run_views(dev, rows, |dev, p| self.backward_part(dev, &self.ops[p.lane], dz, p, p.mode(mode), accumulate && p.lane == 0)) };
                self.lanes.add_spare_grads(dev);
            }
        }
    }

    /// The backward of [`forward_part`](Self::forward_part) from the whole batch's `dz`.
    fn backward_part<D: Device>(&self, dev: &mut D, ops: &Ops, dz: View, p: Part, mode: Mode, accumulate: bool) {
        let c = &self.cfg;
        let (d, f, rows) = (c.d_model, c.d_ff, p.rows);
        let n = rows * c.num_patches;
        let share = |v: View| p.share(v);
        let g_pooled = share(self.g_pooled).prefix(rows * d);
        ops.head.backward(dev, share(self.pooled).prefix(rows * d), p.rows_of(dz, ops.head.out_features), Some(g_pooled), rows, accumulate, false, false);
        let (ga, gb) = (share(self.g[0]).prefix(n * d), share(self.g[1]).prefix(n * d));
        dev.meanpool_backward(g_pooled, ga, PoolShape { samples: rows, len: c.num_patches, cols: d });
        let last_out = share(self.layers.last().map_or(self.x0, |l| l.ln2)).prefix(n * d);
        let bn_out = share(self.bn_out).prefix(n * d);
        ops.norm.backward(dev, ga, bn_out, bn_out.prefix(0), last_out, share(self.bn_stats).prefix(2 * p.groups * d), gb, p.groups, None, accumulate);
        // The residual stream's gradient stays in `x`; `y` holds the inner sum's.
        let (x, y) = (gb, ga);
        let (g_sub, g_ff) = (share(self.g_sub).prefix(n * d), share(self.g_ff).prefix(n * f));
        for (li, (l, o)) in self.layers.iter().zip(&ops.layers).enumerate().rev() {
            let a = o.attn.shape(rows, c.num_patches);
            let ln1 = share(l.ln1).prefix(n * d);
            let input = share(if li == 0 { self.x0 } else { self.layers[li - 1].ln2 }).prefix(n * d);
            // x = ∂L/∂ln2 → y = ∂L/∂sum2 (= ∂L/∂ln1 through the residual), g_sub = ∂L/∂ff_out
            o.norm2.backward_residual(dev, x, share(l.sum2).prefix(n * d), share(l.stats2).prefix(2 * n), y, g_sub, self.dropout(mode, li, DropSite::Residual2), accumulate);
            o.ff2.backward(dev, share(l.ff_act).prefix(n * f), g_sub, Some(g_ff), n, accumulate, false, false);
            dev.act_backward_pre(g_ff, share(l.ff_pre).prefix(n * f), f, c.activation, self.dropout(mode, li, DropSite::FeedForward));
            // y += the feed-forward branch's gradient: y = ∂L/∂ln1
            o.ff1.backward(dev, ln1, g_ff, Some(y), n, accumulate, true, false);
            // y → x = ∂L/∂sum1 (= ∂L/∂input through the residual), g_sub = ∂L/∂attn_out
            o.norm1.backward_residual(dev, y, share(l.sum1).prefix(n * d), share(l.stats1).prefix(2 * n), x, g_sub, self.dropout(mode, li, DropSite::Residual1), accumulate);
            // x += the attention branch's gradient: x = ∂L/∂input
            o.attn.backward(
                dev,
                input,
                share(l.qkv).prefix(n * 3 * d),
                share(l.ctx).prefix(n * d),
                share(l.lse).prefix(a.lse_len()),
                g_sub,
                share(self.g_ctx).prefix(n * d),
                share(self.g_qkv).prefix(n * 3 * d),
                x,
                a,
                self.dropout(mode, li, DropSite::Attention),
                accumulate,
            );
        }
        // x = ∂L/∂x0 → y = ∂L/∂h1 → ∂L/∂pre1; the patches need no gradient.
        ops.linear2.backward(dev, share(self.h1).prefix(n * d), x, Some(y), n, accumulate, false, false);
        dev.act_backward_pre(y, share(self.pre1).prefix(n * d), d, Activation::Silu, None);
        let patches = share(self.patches).prefix(n * c.patch_shape(&self.enc, rows).row_len());
        ops.linear1.backward(dev, patches, y, None, n, accumulate, false, false);
    }
}
