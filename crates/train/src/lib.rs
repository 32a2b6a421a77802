//! The ContrastiveID task on top of the signal pipeline and the engine: configuration (SPEC §3),
//! the trainer, checkpoints, and the frozen-encoder evaluation (SPEC §4).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod input;
pub mod trainer;

pub use config::Config;
pub use error::{Result, TrainError};
pub use trainer::{train, EpochLog, Observer, StepLog, Summary};
