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
        if self.d_model % self.num_heads != 0 {
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

    pub fn forward_macs(&self, cfg: &EncoderConfig) -> usize {
        let (p, d, f) = (self.num_patches, self.d_model, self.d_ff);
        let embed = 2 * self.patch_size_l * self.patch_size_c * d + d * d;
        let layer = 4 * d * d + 2 * d * f + 2 * p * d;
        p * (embed + self.e_layers * layer) + d * cfg.embed
    }
}

/// One Transformer encoder layer's ops and buffers (`N = max_rows·P` rows).
struct Layer {
    attn: SelfAttention,
    ff1: Linear,
    ff2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
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

/// A built ISFM.
pub struct Isfm {
    cfg: IsfmConfig,
    /// Windows whose patch starts were given ([`Isfm::fix_starts`]) instead of drawn.
    fixed_starts: Option<usize>,
    enc: EncoderConfig,
    linear1: Linear,
    linear2: Linear,
    layers: Vec<Layer>,
    norm: BatchNorm,
    head: Linear,
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
        let slots = Self::declare(c, cfg, &mut Tensors::default());
        let (p, d, f) = (c.num_patches, c.d_model, c.d_ff);
        let n = max_rows.checked_mul(p).ok_or_else(|| EngineError::invalid(Setting::NumPatches, "batch × patches overflows"))?;
        let shape = c.patch_shape(cfg, max_rows);
        let mut layers = Vec::with_capacity(c.e_layers);
        for (attn, ff1, ff2, n1, n2) in slots.layers {
            layers.push(Layer {
                attn: attn.bind(arenas),
                ff1: ff1.bind(arenas),
                ff2: ff2.bind(arenas),
                norm1: n1.bind(arenas),
                norm2: n2.bind(arenas),
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
        Ok(Isfm {
            cfg: c.clone(),
            fixed_starts: None,
            enc: cfg.clone(),
            linear1: slots.linear1.bind(arenas),
            linear2: slots.linear2.bind(arenas),
            layers,
            norm: slots.norm.bind(arenas),
            head: slots.head.bind(arenas),
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
        let (rows, groups, mode) = (io.rows, io.groups, io.mode);
        let c = &self.cfg;
        let (d, f) = (c.d_model, c.d_ff);
        let n = rows * c.num_patches;
        let shape = c.patch_shape(&self.enc, rows);
        let starts = self.starts.prefix(shape.starts_len());
        match self.fixed_starts {
            Some(n) => assert_eq!(n, rows, "patch starts were fixed for {n} windows, the forward has {rows}"),
            None => dev.patch_starts(starts, shape, mode.key().map(|k| mix_key(k, 0x5A, 0))),
        }
        let patches = self.patches.prefix(n * shape.row_len());
        dev.patch_gather(io.x, io.rates, starts, patches, shape);
        let (pre1, h1, x0) = (self.pre1.prefix(n * d), self.h1.prefix(n * d), self.x0.prefix(n * d));
        self.linear1.forward_act(dev, patches, pre1, h1, n, Activation::Silu, None);
        self.linear2.forward(dev, h1, x0, n);
        let mut x = x0;
        let a = self.layers.first().map(|l| l.attn.shape(rows, c.num_patches));
        for (li, l) in self.layers.iter().enumerate() {
            let a = a.expect("layers exist");
            let (ln1, ln2) = (l.ln1.prefix(n * d), l.ln2.prefix(n * d));
            let attn_out = l.attn_out.prefix(n * d);
            l.attn.forward(dev, x, l.qkv.prefix(n * 3 * d), l.ctx.prefix(n * d), l.lse.prefix(a.lse_len()), attn_out, a, self.dropout(mode, li, DropSite::Attention));
            l.norm1.forward_residual(dev, x, attn_out, self.dropout(mode, li, DropSite::Residual1), l.sum1.prefix(n * d), ln1, l.stats1.prefix(2 * n));
            let (ff_act, ff_out) = (l.ff_act.prefix(n * f), l.ff_out.prefix(n * d));
            l.ff1.forward_act(dev, ln1, l.ff_pre.prefix(n * f), ff_act, n, c.activation, self.dropout(mode, li, DropSite::FeedForward));
            l.ff2.forward(dev, ff_act, ff_out, n);
            l.norm2.forward_residual(dev, ln1, ff_out, self.dropout(mode, li, DropSite::Residual2), l.sum2.prefix(n * d), ln2, l.stats2.prefix(2 * n));
            x = ln2;
        }
        let bn_out = self.bn_out.prefix(n * d);
        // (No pool after this BatchNorm: no argmax.)
        let train = matches!(mode, Mode::Train { .. });
        self.norm.forward(dev, x, bn_out, bn_out.prefix(0), self.bn_stats.prefix(2 * groups * d), groups, None, train);
        if train {
            self.norm.count(io.counters, groups);
        }
        let pooled = self.pooled.prefix(rows * d);
        dev.meanpool_forward(bn_out, pooled, PoolShape { samples: rows, len: c.num_patches, cols: d });
        let z = self.z.prefix(rows * self.head.out_features);
        self.head.forward(dev, pooled, z, rows);
        z
    }

    pub(crate) fn backward<D: Device>(&self, dev: &mut D, io: &mut Inputs, dz: View, accumulate: bool) {
        let (rows, groups, mode) = (io.rows, io.groups, io.mode);
        let c = &self.cfg;
        let (d, f) = (c.d_model, c.d_ff);
        let n = rows * c.num_patches;
        let g_pooled = self.g_pooled.prefix(rows * d);
        self.head.backward(dev, self.pooled.prefix(rows * d), dz, Some(g_pooled), rows, accumulate, false, false);
        let (ga, gb) = (self.g[0].prefix(n * d), self.g[1].prefix(n * d));
        dev.meanpool_backward(g_pooled, ga, PoolShape { samples: rows, len: c.num_patches, cols: d });
        let last_out = self.layers.last().map_or(self.x0, |l| l.ln2).prefix(n * d);
        self.norm.backward(dev, ga, self.bn_out.prefix(n * d), self.bn_out.prefix(0), last_out, self.bn_stats.prefix(2 * groups * d), gb, groups, None, accumulate);
        // The residual stream's gradient stays in `x`; `y` holds the inner sum's.
        let (x, y) = (gb, ga);
        let (g_sub, g_ff) = (self.g_sub.prefix(n * d), self.g_ff.prefix(n * f));
        for (li, l) in self.layers.iter().enumerate().rev() {
            let a = l.attn.shape(rows, c.num_patches);
            let ln1 = l.ln1.prefix(n * d);
            let input = if li == 0 { self.x0 } else { self.layers[li - 1].ln2 }.prefix(n * d);
            // x = ∂L/∂ln2 → y = ∂L/∂sum2 (= ∂L/∂ln1 through the residual), g_sub = ∂L/∂ff_out
            l.norm2.backward_residual(dev, x, l.sum2.prefix(n * d), l.stats2.prefix(2 * n), y, g_sub, self.dropout(mode, li, DropSite::Residual2), accumulate);
            l.ff2.backward(dev, l.ff_act.prefix(n * f), g_sub, Some(g_ff), n, accumulate, false, false);
            dev.act_backward_pre(g_ff, l.ff_pre.prefix(n * f), f, c.activation, self.dropout(mode, li, DropSite::FeedForward));
            // y += the feed-forward branch's gradient: y = ∂L/∂ln1
            l.ff1.backward(dev, ln1, g_ff, Some(y), n, accumulate, true, false);
            // y → x = ∂L/∂sum1 (= ∂L/∂input through the residual), g_sub = ∂L/∂attn_out
            l.norm1.backward_residual(dev, y, l.sum1.prefix(n * d), l.stats1.prefix(2 * n), x, g_sub, self.dropout(mode, li, DropSite::Residual1), accumulate);
            // x += the attention branch's gradient: x = ∂L/∂input
            l.attn.backward(
                dev,
                input,
                l.qkv.prefix(n * 3 * d),
                l.ctx.prefix(n * d),
                l.lse.prefix(a.lse_len()),
                g_sub,
                self.g_ctx.prefix(n * d),
                self.g_qkv.prefix(n * 3 * d),
                x,
                a,
                self.dropout(mode, li, DropSite::Attention),
                accumulate,
            );
        }
        // x = ∂L/∂x0 → y = ∂L/∂h1 → ∂L/∂pre1; the patches need no gradient.
        self.linear2.backward(dev, self.h1.prefix(n * d), x, Some(y), n, accumulate, false, false);
        dev.act_backward_pre(y, self.pre1.prefix(n * d), d, Activation::Silu, None);
        let patches = self.patches.prefix(n * c.patch_shape(&self.enc, rows).row_len());
        self.linear1.backward(dev, patches, y, None, n, accumulate, false, false);
    }
}
