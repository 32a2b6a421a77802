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
pub use error::{Result, SignalError};
pub use meta::{MetaRow, Metadata};
pub use preprocess::{Normalization, PreprocessConfig};
pub use sampler::{BatchPos, BatchSampler, SamplerConfig};
pub use store::{Hdf5Store, Layout, SampleInfo, SignalStore};
pub use synth::{Complexity, SynthConfig};
pub use window::{WindowConfig, WindowStrategy};

use std::path::{Path, PathBuf};

/// The temporary sibling a file is written to before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let io = |e| SignalError::Io { path: path.to_path_buf(), source: e };
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io)
}
