//! The suite's vocabulary, defined once: the benchmark categories (in run order) and the names
//! of the metrics they measure, each with its unit. Targets, PyTorch references,
//! recommendations, plots, reports and the CLI's `--test` all use these types; a category or a
//! metric is added here and nowhere else (CONTRIBUTING.md).

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($(#[$doc:meta])* $vis:vis enum $ty:ident { $($(#[$vdoc:meta])* $v:ident => $s:literal $(, $unit:literal)?;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        $vis enum $ty {
            $($(#[$vdoc])* #[serde(rename = $s)] $v,)*
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v,)*];

            /// The name in metric ids, the results JSON and the CLI.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$v => $s,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                Self::ALL.iter().copied().find(|x| x.as_str() == s).ok_or_else(|| {
                    format!("unknown {} `{s}`; expected one of {}", stringify!($ty), Self::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                })
            }
        }
    };
}

names! {
    /// A benchmark category of the seed document.
    pub enum CategoryKind {
        /// Full training steps of the seed's three configurations.
        Training => "training";
        /// The data pipeline on real files: store reads, windowing, batch preparation.
        Data => "data";
        /// Every encoder's forward, backward, loss, memory and size.
        Model => "model";
        /// Batch and window sweeps until a limit.
        Scalability => "scalability";
        /// Threads, devices and precisions.
        Hardware => "hardware";
        /// Time to a linear-probe accuracy on a real dataset.
        Quality => "quality";
    }
}

names! {
    /// What a metric measures.
    pub enum MetricName {
        SamplesPerS => "samples_per_s";
        BatchTimeMs => "batch_time_ms";
        EpochTimeMin => "epoch_time_min";
        ForwardMs => "forward_ms";
        BackwardMs => "backward_ms";
        InfonceMs => "infonce_ms";
        OptimizerMs => "optimizer_ms";
        MemoryMb => "memory_mb";
        MemoryPerSampleMb => "memory_per_sample_mb";
        RssRiseMb => "rss_rise_mb";
        MemoryGrowthRate => "memory_growth_rate";
        GenerationSignalsPerS => "generation_signals_per_s";
        StoreReadMbPerS => "store_read_mb_per_s";
        WindowsPerS => "windows_per_s";
        BatchPrepMs => "batch_prep_ms";
        Parameters => "parameters";
        SizeMb => "size_mb";
        TrainingStateMb => "training_state_mb";
        MaxBatchSize => "max_batch_size";
        MaxWindowSize => "max_window_size";
        MemoryScalingFactor => "memory_scaling_factor";
        TimeScalingExponent => "time_scaling_exponent";
        StepMs => "step_ms";
        ThreadSpeedup => "thread_speedup";
        MixedPrecisionSpeedup => "mixed_precision_speedup";
        AccuracyDrop => "accuracy_drop";
        GpuMemoryPerSampleMb => "gpu_memory_per_sample_mb";
        RandomInitProbeAcc => "random_init_probe_acc";
        FinalProbeAcc => "final_probe_acc";
        StepsToTarget => "steps_to_target";
        SecondsToTarget => "seconds_to_target";
    }
}

impl MetricName {
    /// Whether a value below zero means something: an accuracy drop (bf16 more accurate than
    /// fp32), an RSS that fell, and a time scaling exponent (step times that fell along a
    /// sweep, as noise can make them over a short one). Every other metric counts, times or
    /// sizes something.
    pub fn can_be_negative(self) -> bool {
        matches!(self, MetricName::AccuracyDrop | MetricName::RssRiseMb | MetricName::TimeScalingExponent)
    }

    /// The unit values of this metric are in.
    pub fn unit(self) -> &'static str {
        use MetricName::*;
        match self {
            SamplesPerS => "samples/s",
            BatchTimeMs | ForwardMs | BackwardMs | InfonceMs | OptimizerMs | BatchPrepMs | StepMs => "ms",
            EpochTimeMin => "min",
            MemoryMb | MemoryPerSampleMb | RssRiseMb | SizeMb | TrainingStateMb | GpuMemoryPerSampleMb => "MB",
            GenerationSignalsPerS => "signals/s",
            StoreReadMbPerS => "MB/s",
            WindowsPerS => "windows/s",
            Parameters => "count",
            MaxBatchSize => "samples",
            MaxWindowSize => "samples/window",
            MemoryScalingFactor => "ratio",
            TimeScalingExponent => "exponent",
            MemoryGrowthRate => "fraction",
            ThreadSpeedup | MixedPrecisionSpeedup => "x",
            RandomInitProbeAcc | FinalProbeAcc | AccuracyDrop => "fraction",
            StepsToTarget => "steps",
            SecondsToTarget => "s",
        }
    }
}

/// A metric's identity: `category.config.name` in the results JSON.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetricId {
    pub category: CategoryKind,
    pub config: String,
    pub name: MetricName,
}

impl MetricId {
    pub fn new(category: CategoryKind, config: impl Into<String>, name: MetricName) -> Self {
        MetricId { category, config: config.into(), name }
    }
}

impl std::fmt::Display for MetricId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.category, self.config, self.name)
    }
}

/// What `--test` selects: one category, or all of them in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(CategoryKind),
}

impl Selection {
    pub fn categories(self) -> Vec<CategoryKind> {
        match self {
            Selection::All => CategoryKind::ALL.to_vec(),
            Selection::Only(c) => vec![c],
        }
    }
}

/// Every selection, `all` last: the categories in run order come from [`CategoryKind::ALL`].
#[cfg(feature = "clap")]
const SELECTIONS: [Selection; CategoryKind::ALL.len() + 1] = {
    let mut all = [Selection::All; CategoryKind::ALL.len() + 1];
    let mut i = 0;
    while i < CategoryKind::ALL.len() {
        all[i] = Selection::Only(CategoryKind::ALL[i]);
        i += 1;
    }
    all
};

/// `--test`'s possible values, from the registry (`clap` feature).
#[cfg(feature = "clap")]
impl clap::ValueEnum for Selection {
    fn value_variants<'a>() -> &'a [Self] {
        &SELECTIONS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Selection::All => "all",
            Selection::Only(c) => c.as_str(),
        }))
    }
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(Selection::All);
        }
        s.parse().map(Selection::Only).map_err(|e: String| format!("{e}, or all"))
    }
}

/// Where the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSel {
    Cpu,
    /// GPU N.
    Cuda(usize),
    /// The GPU where one is present, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceSel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSel::Cpu),
            "cuda" | "gpu" => Ok(DeviceSel::Cuda(0)),
            "auto" => Ok(DeviceSel::Auto),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) if n < 1024 => Ok(DeviceSel::Cuda(n)),
                Some(Ok(n)) => Err(format!("GPU index {n} is out of range (below 1024)")),
                _ => Err(format!("unknown device `{s}`; expected cpu, cuda, cuda:N or auto")),
            },
        }
    }
}

/// `--device`'s parser: typed like a `ValueEnum` (help lists the values, a wrong one is a usage
/// error saying why) but open-ended in `cuda:N`, which no enum can list (`clap` feature).
#[cfg(feature = "clap")]
impl clap::builder::ValueParserFactory for DeviceSel {
    type Parser = DeviceParser;
    fn value_parser() -> DeviceParser {
        DeviceParser
    }
}

/// See [`DeviceSel`]'s `ValueParserFactory`.
#[cfg(feature = "clap")]
#[derive(Clone, Copy, Debug)]
pub struct DeviceParser;

#[cfg(feature = "clap")]
impl clap::builder::TypedValueParser for DeviceParser {
    type Value = DeviceSel;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> std::result::Result<DeviceSel, clap::Error> {
        // A function parser renders clap's "invalid value 'X' for '--device <DEVICE>': <reason>".
        let parse = |text: &str| text.parse::<DeviceSel>();
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        use clap::builder::PossibleValue;
        // `cuda:N` stands for every GPU index.
        let values = [
            PossibleValue::new("cpu"),
            PossibleValue::new("cuda").alias("gpu").help("GPU 0"),
            PossibleValue::new("cuda:N").help("GPU N (N < 1024)"),
            PossibleValue::new("auto").help("the GPU where one is present, else the CPU"),
        ];
        Some(Box::new(values.into_iter()))
    }
}

impl std::fmt::Display for DeviceSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSel::Cpu => f.write_str("cpu"),
            DeviceSel::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSel::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_known() {
        for c in CategoryKind::ALL {
            assert_eq!(c.as_str().parse::<CategoryKind>().unwrap(), *c);
        }
        for m in MetricName::ALL {
            assert_eq!(m.as_str().parse::<MetricName>().unwrap(), *m);
            assert!(!m.unit().is_empty());
        }
        let e = "trainin".parse::<Selection>().unwrap_err();
        assert!(e.contains("training") && e.contains("all"), "{e}");
        assert_eq!("all".parse::<Selection>().unwrap().categories().len(), 6);
        assert_eq!(MetricId::new(CategoryKind::Training, "small", MetricName::SamplesPerS).to_string(), "training.small.samples_per_s");
        assert_eq!("cuda:2".parse::<DeviceSel>().unwrap(), DeviceSel::Cuda(2));
        assert!("tpu".parse::<DeviceSel>().unwrap_err().contains("cuda:N"));
    }
}
