//! The ContrastiveID task on top of the signal pipeline and the engine: configuration (SPEC §3),
//! the trainer, checkpoints, and the frozen-encoder evaluation (SPEC §4).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod input;
pub mod trainer;

pub use config::Config;

/// The first few of `reasons` joined for one error message, and how many more there are: an
/// error about thousands of Ids names five.
pub(crate) fn first_few(reasons: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown = reasons[..reasons.len().min(SHOWN)].join("; ");
    match reasons.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}
pub use error::{Result, TrainError};
pub use trainer::{train, EpochLog, Observer, StepLog, Summary};
