//! Errors of training and evaluation; each names the file, key, Id or step at fault.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, TrainError>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config key (`section.key`) out of range or unknown.
    #[error("config: invalid `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// A command-line flag (`--name`) out of range.
    #[error("invalid `{flag}`: {reason}")]
    Flag { flag: String, reason: String },
    /// An environment variable (`CID_…`) holding a value it cannot.
    #[error("environment variable `{variable}`: {reason}")]
    Env { variable: String, reason: String },
    #[error("config: {0}")]
    Yaml(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data-pipeline error other than a bad setting (those become [`TrainError::Config`]).
    #[error(transparent)]
    Signal(signal::SignalError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// A size from a file, a key or a flag that does not fit in the memory budget.
    #[error(transparent)]
    OverBudget(#[from] limits::OverBudget),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("non-finite {what} ({value}) at step {step} (epoch {epoch}); training stopped, {}", match last_checkpoint {
        Some(p) => format!("the last good checkpoint is intact: {}", p.display()),
        None => "no checkpoint was saved by this run".into(),
    })]
    NonFinite { what: &'static str, value: f32, step: u64, epoch: usize, last_checkpoint: Option<PathBuf> },
    /// Finite training steps whose weights give a non-finite validation loss (diverged: a
    /// learning rate far too high); found before the step's checkpoint is written.
    #[error("validation {what} is {value} after step {step} (epoch {epoch}): the weights have diverged (a learning rate too high?); training stopped, this step was not checkpointed")]
    NonFiniteValidation { what: &'static str, value: f64, step: u64, epoch: usize },
    #[error("{0}")]
    Data(String),
}

impl From<signal::SignalError> for TrainError {
    /// A setting of the data pipeline is named by its YAML key.
    fn from(e: signal::SignalError) -> Self {
        match e {
            signal::SignalError::Invalid { setting, reason } => TrainError::Config { key: crate::config::signal_setting_key(setting).into(), reason },
            signal::SignalError::OverBudget(e) => TrainError::OverBudget(e),
            other => TrainError::Signal(other),
        }
    }
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}
