//! Errors of the engine. A bad setting names the engine's own field ([`Setting`]); the crates
//! above map it to their vocabulary (the train crate to its YAML key), so the engine knows
//! nothing of configuration files.

pub type Result<T> = std::result::Result<T, EngineError>;

/// A setting of the engine that a caller can get wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    /// Samples per window W.
    Window,
    /// Channels per window C.
    Channels,
    /// Embedding size D.
    Embedding,
    /// Output size of the projection head InfoNCE is taken on.
    Projection,
    /// Pairs per batch.
    Batch,
    Encoder,
    Temperature,
    LearningRate,
    WeightDecay,
    Betas,
    Eps,
    ClipNorm,
    NumPatches,
    PatchLen,
    PatchChannels,
    DModel,
    Heads,
    Layers,
    FeedForward,
    Dropout,
    Activation,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::Window => "window size",
            Setting::Channels => "channel count",
            Setting::Embedding => "embedding size",
            Setting::Projection => "projection size",
            Setting::Batch => "batch size",
            Setting::Encoder => "encoder",
            Setting::Temperature => "temperature",
            Setting::LearningRate => "learning rate",
            Setting::WeightDecay => "weight decay",
            Setting::Betas => "Adam betas",
            Setting::Eps => "Adam eps",
            Setting::ClipNorm => "gradient clip norm",
            Setting::NumPatches => "number of patches",
            Setting::PatchLen => "patch length",
            Setting::PatchChannels => "patch channels",
            Setting::DModel => "model width",
            Setting::Heads => "attention heads",
            Setting::Layers => "encoder layers",
            Setting::FeedForward => "feed-forward width",
            Setting::Dropout => "dropout",
            Setting::Activation => "activation",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid {setting}: {reason}")]
    Invalid { setting: Setting, reason: String },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("device: {0}")]
    Device(String),
    #[error("out of memory: {bytes} bytes could not be had ({reason})")]
    OutOfMemory { bytes: u128, reason: String },
    /// A size set from outside that does not fit in the process's memory budget.
    #[error(transparent)]
    OverBudget(#[from] limits::OverBudget),
}

impl EngineError {
    pub(crate) fn invalid(setting: Setting, reason: impl Into<String>) -> Self {
        EngineError::Invalid { setting, reason: reason.into() }
    }
}
