//! Errors of training and evaluation; each names the file, key, Id or step at fault.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, TrainError>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: invalid `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("config: {0}")]
    Yaml(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Signal(#[from] signal::SignalError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("non-finite loss ({loss}) at step {step} (epoch {epoch}); training stopped, the last good checkpoint is intact")]
    NonFinite { step: u64, epoch: usize, loss: f32 },
    #[error("{0}")]
    Data(String),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}
