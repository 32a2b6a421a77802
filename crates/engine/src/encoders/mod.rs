//! The encoders of SPEC §2, each a short list of ops ([`crate::ops`]) with its forward and
//! backward: the three MLPs ([`mlp`]), the 1-D CNN ([`cnn`]) and PHM-Vibench's ISFM
//! ([`isfm`]). [`EncoderConfig`] describes one (documented defaults, validation) and
//! [`EncoderConfig::init`] builds it on a device as an [`Encoder`]: parameters, gradients, Adam
//! moments and running statistics in arenas ([`crate::arena`]), activation buffers sized once for
//! the largest batch.
//!
//! A window `[W, C]` enters row-major, as cut from the signal. A forward runs `rows` windows as
//! `groups` equal groups (each group one forward call in PyTorch: the contrastive step's anchor
//! and positive views, so BatchNorm normalises each view by its own statistics).

pub mod cnn;
pub mod isfm;
mod lanes;
pub mod mlp;

use std::str::FromStr;

use crate::arena::{Arenas, TensorSpec, Tensors};
use crate::device::{dropout_hash, Device, View};
use crate::error::{EngineError, Result, Setting};

pub use cnn::CnnConfig;
pub use isfm::IsfmConfig;
pub use lanes::view_key;

/// Which encoder, by name (`model.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncoderKind {
    MlpSimple,
    MlpMedium,
    MlpComplex,
    Cnn,
    Isfm,
}

impl EncoderKind {
    pub const ALL: [EncoderKind; 5] = [EncoderKind::MlpSimple, EncoderKind::MlpMedium, EncoderKind::MlpComplex, EncoderKind::Cnn, EncoderKind::Isfm];
}

impl FromStr for EncoderKind {
    type Err = EngineError;
    /// The product's names, and PHM-Vibench's `M_01_ISFM` for the ISFM.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "mlp-simple" | "simple" => Ok(EncoderKind::MlpSimple),
            "mlp-medium" | "medium" | "mlp" => Ok(EncoderKind::MlpMedium),
            "mlp-complex" | "complex" => Ok(EncoderKind::MlpComplex),
            "cnn" | "wdcnn" => Ok(EncoderKind::Cnn),
            "isfm" | "m-01-isfm" => Ok(EncoderKind::Isfm),
            other => Err(EngineError::invalid(Setting::Encoder, format!("unknown encoder {other:?}; expected one of mlp-simple, mlp-medium, mlp-complex, cnn, isfm (or M_01_ISFM)"))),
        }
    }
}

impl std::fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncoderKind::MlpSimple => "mlp-simple",
            EncoderKind::MlpMedium => "mlp-medium",
            EncoderKind::MlpComplex => "mlp-complex",
            EncoderKind::Cnn => "cnn",
            EncoderKind::Isfm => "isfm",
        })
    }
}

/// The architecture and its own settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Arch {
    MlpSimple,
    MlpMedium,
    MlpComplex,
    Cnn(CnnConfig),
    Isfm(IsfmConfig),
}

impl Arch {
    /// The architecture of `kind` with its default settings.
    pub fn default_for(kind: EncoderKind) -> Arch {
        match kind {
            EncoderKind::MlpSimple => Arch::MlpSimple,
            EncoderKind::MlpMedium => Arch::MlpMedium,
            EncoderKind::MlpComplex => Arch::MlpComplex,
            EncoderKind::Cnn => Arch::Cnn(CnnConfig::default()),
            EncoderKind::Isfm => Arch::Isfm(IsfmConfig::default()),
        }
    }

    pub fn kind(&self) -> EncoderKind {
        match self {
            Arch::MlpSimple => EncoderKind::MlpSimple,
            Arch::MlpMedium => EncoderKind::MlpMedium,
            Arch::MlpComplex => EncoderKind::MlpComplex,
            Arch::Cnn(_) => EncoderKind::Cnn,
            Arch::Isfm(_) => EncoderKind::Isfm,
        }
    }
}

/// An encoder's shape. [`init`](Self::init) builds it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub arch: Arch,
    /// Samples per window W.
    pub window: usize,
    /// Channels per window C.
    pub channels: usize,
    /// Embedding size D (default 128).
    pub embed: usize,
}

/// Training (dropout on, keyed; BatchNorm on batch statistics) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `key` seeds every random choice of the forward (dropout masks, ISFM patch starts).
    Train {
        key: u64,
    },
    Eval,
}

impl Mode {
    pub fn key(&self) -> Option<u64> {
        match self {
            Mode::Train { key } => Some(*key),
            Mode::Eval => None,
        }
    }
}

impl EncoderConfig {
    /// `kind` with its default settings for windows `[window, channels]`, D = 128.
    pub fn new(kind: EncoderKind, window: usize, channels: usize) -> Self {
        EncoderConfig { arch: Arch::default_for(kind), window, channels, embed: 128 }
    }

    pub fn kind(&self) -> EncoderKind {
        self.arch.kind()
    }

    /// Values per window, `W·C`.
    pub fn input(&self) -> usize {
        self.window * self.channels
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [(Setting::Window, self.window), (Setting::Channels, self.channels), (Setting::Embedding, self.embed)];
        for (setting, v) in positive {
            if v == 0 {
                return Err(EngineError::invalid(setting, "must be > 0"));
            }
        }
        if self.window.checked_mul(self.channels).is_none_or(|n| n > u32::MAX as usize) {
            return Err(EngineError::invalid(Setting::Window, format!("a window of {} × {} values is too large", self.window, self.channels)));
        }
        if self.embed > MAX_WIDTH {
            return Err(EngineError::invalid(Setting::Embedding, format!("{} is larger than {MAX_WIDTH}", self.embed)));
        }
        match &self.arch {
            Arch::Cnn(c) => c.validate(self.window),
            Arch::Isfm(c) => c.validate(self.window, self.channels),
            _ => Ok(()),
        }
    }

    /// The tensors of this encoder in PyTorch's `state_dict` order.
    pub fn tensors(&self) -> Result<Tensors> {
        self.validate()?;
        let mut t = Tensors::default();
        match &self.arch {
            Arch::Cnn(c) => {
                cnn::Cnn::declare(c, self, &mut t);
            }
            Arch::Isfm(c) => {
                isfm::Isfm::declare(c, self, &mut t);
            }
            _ => {
                mlp::Mlp::declare(self, &mut t);
            }
        }
        Ok(t)
    }

    /// Trained parameters (weights and biases; running statistics excluded).
    pub fn param_count(&self) -> usize {
        self.tensors().map_or(0, |t| t.param_len())
    }

    /// Multiply-adds of one window's forward pass (the GEMMs and attention products).
    pub fn forward_macs(&self) -> usize {
        match &self.arch {
            Arch::Cnn(c) => c.forward_macs(self),
            Arch::Isfm(c) => c.forward_macs(self),
            _ => mlp::layers(self).iter().map(|l| l.in_features * l.out_features).sum(),
        }
    }

    /// Multiply-adds of the first layer's forward: its backward needs no input gradient.
    fn first_layer_macs(&self) -> usize {
        match &self.arch {
            Arch::Cnn(c) => c.forward_macs_first(self),
            Arch::Isfm(c) => 2 * c.patch_size_l * c.patch_size_c * c.d_model * c.num_patches,
            _ => mlp::layers(self).first().map_or(0, |l| l.in_features * l.out_features),
        }
    }

    /// Floating-point operations of one training step over `rows` windows, counted as PyTorch
    /// does the work: forward, then a weight gradient and an input gradient per product (none
    /// for the first layer's input). Recomputation (the attention's backward) is not counted.
    pub fn step_flops(&self, rows: usize) -> f64 {
        let f = self.forward_macs() as f64;
        2.0 * rows as f64 * (3.0 * f - self.first_layer_macs() as f64)
    }

    /// Builds the encoder on `device` for forwards of up to `max_rows` windows, initialised as
    /// PyTorch initialises the same modules (the draws differ; the distributions are PyTorch's).
    pub fn init<D: Device>(&self, mut device: D, max_rows: usize, seed: u64) -> Result<Encoder<D>> {
        if max_rows == 0 {
            return Err(EngineError::invalid(Setting::Batch, "must be > 0"));
        }
        // Rows, widths and patch counts are capped; each encoder checks the products of its own
        // sizes past those caps (a CNN's window × channels × rows), and the device checks each
        // buffer against the memory budget.
        if max_rows > MAX_ROWS {
            return Err(EngineError::invalid(Setting::Batch, format!("{max_rows} windows per forward is more than {MAX_ROWS}")));
        }
        let tensors = self.tensors()?;
        let arenas = tensors.allocate(&mut device, seed)?;
        let net = match &self.arch {
            Arch::Cnn(c) => Net::Cnn(cnn::Cnn::build(c, self, &arenas, &mut device, max_rows)?),
            Arch::Isfm(c) => Net::Isfm(isfm::Isfm::build(c, self, &arenas, &mut device, max_rows)?),
            _ => Net::Mlp(mlp::Mlp::build(self, &arenas, &mut device, max_rows)?),
        };
        let x = device.alloc(max_rows * self.input())?;
        let rates = device.alloc(max_rows)?;
        device.fill(rates, 1.0);
        let dz = device.alloc(max_rows * self.embed)?;
        Ok(Encoder { device, cfg: self.clone(), arenas, net, x, rates, dz, max_rows, last_forward: None, input_writes: 0 })
    }
}

/// The widest layer (d_model, d_ff, channels of a block, embedding) an encoder accepts.
pub const MAX_WIDTH: usize = 1 << 20;
/// The most windows one forward takes (both views of a batch).
pub const MAX_ROWS: usize = 1 << 24;
/// The most layers (Transformer layers, CNN blocks) an encoder accepts.
pub const MAX_LAYERS: usize = 1024;

/// Derives a per-use key from a seed: `(seed, a, b)` → 64 random bits.
pub fn mix_key(seed: u64, a: u64, b: u64) -> u64 {
    let hi = dropout_hash(seed, a.wrapping_mul(0x1_0000_0001).wrapping_add(b)) as u64;
    let lo = dropout_hash(seed ^ 0xD1B5_4A32_D192_ED03, b.wrapping_mul(31).wrapping_add(a)) as u64;
    (hi << 32) | lo
}

/// What an encoder's forward needs besides its own views.
pub(crate) struct Inputs<'a> {
    pub x: View,
    pub rates: View,
    pub rows: usize,
    pub groups: usize,
    pub mode: Mode,
    pub counters: &'a mut [u64],
}

/// The encoder-specific part of an [`Encoder`].
#[allow(clippy::large_enum_variant)] // one per encoder, built once and never moved in a step
enum Net {
    Mlp(mlp::Mlp),
    Cnn(cnn::Cnn),
    Isfm(isfm::Isfm),
}

/// A forward whose backward may follow.
#[derive(Clone, Copy, Debug)]
struct LastForward {
    rows: usize,
    groups: usize,
    mode: Mode,
}

/// An encoder on a device: weights, gradients, Adam moments, running statistics, and the
/// activation buffers of its largest batch.
pub struct Encoder<D: Device> {
    pub device: D,
    pub cfg: EncoderConfig,
    arenas: Arenas,
    net: Net,
    x: View,
    rates: View,
    dz: View,
    max_rows: usize,
    last_forward: Option<LastForward>,
    /// Writes to the input or its rates so far ([`Self::input_writes`]).
    input_writes: u64,
}

impl<D: Device> Encoder<D> {
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// How many times the input windows or their rates have been written: a batch loaded for
    /// repeated steps (`ContrastiveStep::load`) is gone once this moves.
    pub fn input_writes(&self) -> u64 {
        self.input_writes
    }

    /// The parameter arena (every tensor in `state_dict` order).
    pub fn params(&self) -> View {
        self.arenas.params
    }

    /// The gradient arena, same layout.
    pub fn grads(&self) -> View {
        self.arenas.grads
    }

    /// Adam's first and second moments, same layout.
    pub fn moments(&self) -> (View, View) {
        (self.arenas.adam_m, self.arenas.adam_v)
    }

    /// Every named tensor (parameters, buffers, counters), for checkpoints.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.arenas.specs
    }

    /// Copies `values` (whole windows, row-major `[rows, W·C]`) into the input at row `at`.
    pub fn set_input(&mut self, at: usize, values: &[f32]) -> Result<()> {
        let n = self.cfg.input();
        if !values.len().is_multiple_of(n) || at * n + values.len() > self.x.len() {
            return Err(EngineError::Shape(format!("{} values at row {at} are not whole windows of {n} within {} rows", values.len(), self.max_rows)));
        }
        self.input_writes += 1;
        self.device.upload(self.x.sub(at * n, values.len()), values);
        Ok(())
    }

    /// The sampling rate (Hz) of each window from row `at` (the ISFM's time channel; 1 Hz until
    /// set). Rates must be finite and > 0.
    pub fn set_sample_rates(&mut self, at: usize, rates: &[f32]) -> Result<()> {
        if at + rates.len() > self.max_rows {
            return Err(EngineError::Shape(format!("{} rates at row {at} exceed {} rows", rates.len(), self.max_rows)));
        }
        if let Some(bad) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return Err(EngineError::Shape(format!("sampling rate {bad} is not a finite number > 0")));
        }
        self.input_writes += 1;
        self.device.upload(self.rates.sub(at, rates.len()), rates);
        Ok(())
    }

    /// Gives the ISFM's patch starts (`sL`, `sC`: `windows × P` each) for the following forwards
    /// over exactly that many windows, instead of drawing them (the reference's
    /// `forward(x, fs, sL, sC)`); `None` goes back to drawing. An error for other encoders.
    /// While they are set, a forward over another number of windows panics (a caller's bug, as
    /// [`Self::forward`]'s others).
    pub fn set_patch_starts(&mut self, starts: Option<(&[usize], &[usize])>) -> Result<()> {
        match &mut self.net {
            Net::Isfm(n) => n.fix_starts(&mut self.device, starts),
            _ => Err(EngineError::invalid(Setting::Encoder, format!("{} has no patches", self.cfg.kind()))),
        }
    }

    /// Every window back to 1 Hz (inputs without rates).
    pub fn reset_sample_rates(&mut self) {
        self.input_writes += 1;
        self.device.fill(self.rates, 1.0);
    }

    /// Forward over the first `rows` windows of the input as `groups` equal groups. Returns the
    /// embeddings `[rows, D]`.
    ///
    /// # Panics
    /// Where `rows` exceeds the buffers or is not a multiple of `groups` (a caller's bug).
    pub fn forward(&mut self, rows: usize, groups: usize, mode: Mode) -> View {
        assert!(rows <= self.max_rows && groups > 0 && rows.is_multiple_of(groups), "{rows} rows in {groups} groups, buffers of {}", self.max_rows);
        let mut inputs = Inputs { x: self.x.prefix(rows * self.cfg.input()), rates: self.rates.prefix(rows), rows, groups, mode, counters: &mut self.arenas.counters };
        let out = match &mut self.net {
            Net::Mlp(n) => n.forward(&mut self.device, &mut inputs),
            Net::Cnn(n) => n.forward(&mut self.device, &mut inputs),
            Net::Isfm(n) => n.forward(&mut self.device, &mut inputs),
        };
        self.last_forward = Some(LastForward { rows, groups, mode });
        out
    }

    /// Backward from `dz = ∂loss/∂output` (`[rows, D]`, left modified) after a training forward
    /// over the same rows. Gradients are written, or added when `accumulate`.
    ///
    /// # Panics
    /// Without a matching training forward before it (a caller's bug).
    pub fn backward(&mut self, rows: usize, dz: View, accumulate: bool) {
        let last = self.last_forward.expect("backward without a forward");
        assert!(last.rows == rows, "backward over {rows} rows after a forward over {}", last.rows);
        let mut inputs = Inputs { x: self.x.prefix(rows * self.cfg.input()), rates: self.rates.prefix(rows), rows, groups: last.groups, mode: last.mode, counters: &mut self.arenas.counters };
        match &self.net {
            Net::Mlp(n) => n.backward(&mut self.device, &mut inputs, dz, accumulate),
            Net::Cnn(n) => n.backward(&mut self.device, &mut inputs, dz, accumulate),
            Net::Isfm(n) => n.backward(&mut self.device, &mut inputs, dz, accumulate),
        }
    }

    /// A buffer of `[rows, D]` for the caller's `∂loss/∂output` (read by `backward`, never
    /// written by it).
    pub fn dz_buffer(&self, rows: usize) -> View {
        self.dz.prefix(rows * self.cfg.embed)
    }

    fn download(&self, v: View) -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        self.device.download(v, &mut out);
        out
    }

    /// All parameters, downloaded (checkpoints, tests).
    pub fn params_to_vec(&self) -> Vec<f32> {
        self.download(self.arenas.params)
    }

    pub fn grads_to_vec(&self) -> Vec<f32> {
        self.download(self.arenas.grads)
    }

    /// Both Adam moments, downloaded.
    pub fn moments_to_vec(&self) -> (Vec<f32>, Vec<f32>) {
        (self.download(self.arenas.adam_m), self.download(self.arenas.adam_v))
    }

    /// The buffer arena (running statistics), downloaded.
    pub fn buffers_to_vec(&self) -> Vec<f32> {
        self.download(self.arenas.buffers)
    }

    /// BatchNorm's `num_batches_tracked`, in declaration order.
    pub fn counters(&self) -> &[u64] {
        &self.arenas.counters
    }

    fn upload_arena(&mut self, arena: View, values: &[f32], what: &str) -> Result<()> {
        if values.len() != arena.len() {
            return Err(EngineError::Shape(format!("{} {what} values for a model of {}", values.len(), arena.len())));
        }
        self.device.upload(arena, values);
        Ok(())
    }

    pub fn set_params(&mut self, values: &[f32]) -> Result<()> {
        self.upload_arena(self.arenas.params, values, "parameter")
    }

    pub fn set_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        self.upload_arena(self.arenas.adam_m, m, "first-moment")?;
        self.upload_arena(self.arenas.adam_v, v, "second-moment")
    }

    pub fn set_buffers(&mut self, values: &[f32]) -> Result<()> {
        self.upload_arena(self.arenas.buffers, values, "buffer")
    }

    pub fn set_counters(&mut self, counters: &[u64]) -> Result<()> {
        if counters.len() != self.arenas.counters.len() {
            return Err(EngineError::Shape(format!("{} counters for a model of {}", counters.len(), self.arenas.counters.len())));
        }
        self.arenas.counters.copy_from_slice(counters);
        Ok(())
    }
}
