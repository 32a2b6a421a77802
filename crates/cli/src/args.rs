//! Flags shared by several sub-commands, defined once.

use std::path::PathBuf;

/// `--data` and `--meta`: a signal store and its table.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// HDF5 signal store (one dataset per Id).
    #[arg(long, value_name = "FILE.h5")]
    pub data: PathBuf,
    /// Metadata table (.csv or .xlsx) with at least `Id` and `Label`.
    #[arg(long, value_name = "FILE.csv|FILE.xlsx")]
    pub meta: PathBuf,
}
