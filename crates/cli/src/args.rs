//! Flags shared by several sub-commands, defined once.

use std::path::PathBuf;

/// `--data`'s help, wherever it is taken.
const DATA_HELP: &str = "HDF5 signal store (one dataset per Id)";
/// `--meta`'s help, wherever it is taken.
const META_HELP: &str = "Metadata table (.csv or .xlsx) with at least `Id` and `Label`";

/// `--data` and `--meta`: a signal store and its table.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    #[arg(long, value_name = "FILE.h5", help = DATA_HELP)]
    pub data: PathBuf,
    #[arg(long, value_name = "FILE.csv|FILE.xlsx", help = META_HELP)]
    pub meta: PathBuf,
}

/// `--data` and `--meta` where a sub-command can do without them: both or neither.
#[derive(clap::Args, Debug, Clone)]
pub struct OptionalDataArgs {
    #[arg(long, value_name = "FILE.h5", help = DATA_HELP, requires = "meta")]
    pub data: Option<PathBuf>,
    #[arg(long, value_name = "FILE.csv|FILE.xlsx", help = META_HELP, requires = "data")]
    pub meta: Option<PathBuf>,
}

impl OptionalDataArgs {
    /// Both paths, where given.
    pub fn paths(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.data.as_ref().zip(self.meta.as_ref())
    }
}

/// `--save-dir`: where the benchmark suite's results, reports and baselines live.
#[derive(clap::Args, Debug, Clone)]
pub struct SaveDirArgs {
    /// The benchmark's directory: where a run writes its results, reports, plots and baselines,
    /// and where a baseline NAME is looked up (<save-dir>/baselines/NAME.json).
    #[arg(long, default_value = "bench-results")]
    pub save_dir: PathBuf,
}

/// `--noise`: the regression rule's band.
#[derive(clap::Args, Debug, Clone)]
pub struct NoiseArgs {
    /// Relative noise band of the regression rule: a change is called only where its whole 95 %
    /// CI lies beyond it.
    #[arg(long, default_value_t = 0.05)]
    pub noise: f64,
}

impl NoiseArgs {
    /// The band, checked: in [0, 1).
    pub fn checked(&self) -> anyhow::Result<f64> {
        if !(self.noise >= 0.0 && self.noise < 1.0) {
            anyhow::bail!("--noise must be in [0, 1), got {}", self.noise);
        }
        Ok(self.noise)
    }
}
