//! The one error type of the signal crate: every variant names the file, Id or setting at fault.
//! A bad setting names the crate's own field ([`Setting`]); the crates above map it to their
//! vocabulary (the train crate to its YAML key, the CLI to its flag).

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
    #[error("invalid {setting}: {reason}")]
    Invalid { setting: Setting, reason: String },
    #[error(transparent)]
    OverBudget(#[from] limits::OverBudget),
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// A setting of the data pipeline or the generator that a caller can get wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    WindowSize,
    Stride,
    NumWindow,
    WindowStrategy,
    Normalization,
    TruncateLength,
    TimeSplit,
    BatchSize,
    Prefetch,
    /// Signals to generate.
    Count,
    /// Time steps per generated signal.
    Length,
    /// Channels per generated signal.
    Channels,
    /// Label classes of generated signals.
    Classes,
    Complexity,
    /// Noise level of generated signals.
    Noise,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::WindowSize => "window size",
            Setting::Stride => "window stride",
            Setting::NumWindow => "windows per sample",
            Setting::WindowStrategy => "window sampling strategy",
            Setting::Normalization => "normalization",
            Setting::TruncateLength => "truncate length",
            Setting::TimeSplit => "time split",
            Setting::BatchSize => "batch size",
            Setting::Prefetch => "prefetch depth",
            Setting::Count => "signal count",
            Setting::Length => "signal length",
            Setting::Channels => "channel count",
            Setting::Classes => "class count",
            Setting::Complexity => "complexity",
            Setting::Noise => "noise level",
        })
    }
}

impl SignalError {
    pub(crate) fn invalid(setting: Setting, reason: impl Into<String>) -> Self {
        SignalError::Invalid { setting, reason: reason.into() }
    }
}

/// What the file system says of an input `path`: "not found" only where it is not there; any
/// other failure (a loop of symbolic links, a directory without permission) as the system says it.
pub(crate) fn metadata_of(path: &std::path::Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SignalError::NotFound { path: path.to_path_buf() },
        _ => SignalError::Io { path: path.to_path_buf(), source: e },
    })
}
