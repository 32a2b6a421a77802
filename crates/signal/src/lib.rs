//! Signal data for contrastive ID pretraining: the HDF5 signal store, the metadata table,
//! preprocessing, windowing, synthetic data, and the parallel prefetching batch sampler
//! (SPEC §1). Everything a trainer needs to turn files on disk into `[B, W, C]` anchor/positive
//! batches.

pub mod batch;
pub mod dataset;
pub mod error;
pub mod meta;
pub mod preprocess;
pub mod rng;
pub mod sampler;
pub mod store;
pub mod synth;
pub mod window;

pub use batch::{BatchBuilder, ContrastiveBatch, SkipReason};
pub use dataset::Dataset;
pub use error::{Result, Setting, SignalError};
pub use meta::{MetaRow, Metadata};
pub use preprocess::{Normalization, PreprocessConfig};
pub use sampler::{BatchPos, BatchSampler, SamplerConfig};
pub use store::{Hdf5Store, Layout, SampleInfo, SignalStore};
pub use synth::{Complexity, SynthConfig};
pub use window::{WindowConfig, WindowStrategy};
