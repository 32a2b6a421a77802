//! Errors of the engine: bad configuration (naming the key) and shape mismatches.

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid value for `{key}`: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("device: {0}")]
    Device(String),
}

impl EngineError {
    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        EngineError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}
