//! The one error type of the signal crate: every variant names the file, Id or key at fault.

use std::path::PathBuf;

/// Result with [`SignalError`].
pub type Result<T> = std::result::Result<T, SignalError>;

/// What went wrong while reading, checking or cutting signals.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read as HDF5: {reason}")]
    NotHdf5 { path: PathBuf, reason: String },
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: Id {id}: {reason}")]
    BadSample { path: PathBuf, id: u64, reason: String },
    #[error("{path}: Id {id} is not in this signal store")]
    UnknownId { path: PathBuf, id: u64 },
    #[error("{path}: metadata table: {reason}")]
    BadTable { path: PathBuf, reason: String },
    #[error("invalid value for `{key}`: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl SignalError {
    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        SignalError::InvalidConfig { key: key.to_string(), reason: reason.into() }
    }
}
