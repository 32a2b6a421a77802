//! The results schema (`comprehensive_benchmark_results.json`, the source of truth that every
//! report is rendered from). Versioned: `SCHEMA_VERSION` changes whenever a field changes
//! meaning; docs/benchmarks.md documents each field.

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::registry::{CategoryKind, MetricId, MetricName};
use crate::stats::{Change, Summary};

/// 2: a summary of fewer than `stats::MIN_CI_SAMPLES` samples keeps its range in `ci_low` /
/// `ci_high` (no CI); `exact`, the `not_compared` verdict and `unmeasured_targets` added.
/// Version 1 files still load as baselines: what a comparison reads (samples, values) kept its
/// meaning.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest schema a baseline may have.
pub const OLDEST_READABLE_SCHEMA: u32 = 1;

/// A target a metric is checked against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// Name in the targets table, `section.key`.
    pub target: String,
    /// `<=` or `>=`.
    pub op: String,
    pub threshold: f64,
    pub passed: bool,
}

impl TargetCheck {
    /// A check of `value` against `threshold` in the direction `op` (`<=` or `>=`).
    pub fn of(target: String, op: &str, threshold: f64, value: f64) -> Self {
        let mut check = TargetCheck { target, op: op.to_string(), threshold, passed: false };
        check.passed = check.met_by(value);
        check
    }

    /// Whether `value` meets the target: the one rule a run's check and a comparison's reading
    /// of a saved file share (an `op` no build writes keeps the file's `passed`).
    pub fn met_by(&self, value: f64) -> bool {
        match self.op.as_str() {
            "<=" => value <= self.threshold,
            ">=" => value >= self.threshold,
            _ => self.passed,
        }
    }
}

/// PyTorch's number for the same metric, from `--reference torch_ref.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceValue {
    pub value: f64,
    /// How many times better ours is (`ref/ours` for lower-is-better, `ours/ref` otherwise).
    pub speedup: f64,
}

/// One measured quantity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Unique key, `category.config.name` ([`MetricId`]).
    pub id: String,
    pub category: CategoryKind,
    /// Which configuration (`small`, `B=32 W=1024`, …).
    pub config: String,
    pub name: MetricName,
    pub unit: String,
    /// The headline value (the median for timed metrics).
    pub value: f64,
    pub lower_is_better: bool,
    /// Raw samples, for timed metrics (what baselines compare).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
    /// Counted or computed, the same on every run of one build on one machine (parameters,
    /// engine bytes, a quick sweep's largest size): one value is enough for a baseline
    /// comparison. A single timing is not, nor a trained probe's accuracy (a fresh run's GEMM
    /// kernels are chosen by timing and round differently): `stats::compare`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// How it was measured.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Change>,
}

/// A category's state: measured, not available on this machine, or failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    NotAvailable,
    Error,
}

/// A point of a scalability sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub axis: String,
    pub batch: usize,
    pub window: usize,
    pub ok: bool,
    /// Median step time of the point's samples.
    pub step_ms: Option<f64>,
    /// 95 % CI of that median (bootstrap), and how many samples it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms_ci: Option<[f64; 2]>,
    #[serde(default)]
    pub samples: usize,
    pub memory_mb: Option<f64>,
    pub note: String,
}

impl SweepPoint {
    /// The size its axis varies: the batch of the batch sweep, the window of the window sweep.
    pub fn size(&self) -> usize {
        if self.axis == "batch" {
            self.batch
        } else {
            self.window
        }
    }
}

impl Metric {
    /// A metric of `id` with its unit, value and how it was measured; no samples.
    pub fn new(id: MetricId, value: f64, lower_is_better: bool, method: impl Into<String>) -> Self {
        Metric {
            id: id.to_string(),
            category: id.category,
            config: id.config,
            name: id.name,
            unit: id.name.unit().into(),
            value,
            lower_is_better,
            samples: Vec::new(),
            exact: false,
            summary: None,
            method: method.into(),
            target: None,
            reference: None,
            baseline: None,
        }
    }

    pub fn metric_id(&self) -> MetricId {
        MetricId::new(self.category, self.config.clone(), self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    #[serde(rename = "name")]
    pub kind: CategoryKind,
    pub status: Status,
    /// Why a category is not available or failed; other remarks.
    pub notes: Vec<String>,
    pub metrics: Vec<Metric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
    pub seconds: f64,
    /// Share of the machine's CPU time other processes used while the category ran
    /// ([`crate::measure::Contention`]); absent where /proc could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_cpu_share: Option<f64>,
    /// The machine's speed just before the category ran: [`crate::measure::calibration_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_ms: Option<f64>,
}

impl Category {
    pub fn new(kind: CategoryKind) -> Self {
        Category { kind, status: Status::Ok, notes: Vec::new(), metrics: Vec::new(), sweep: Vec::new(), seconds: 0.0, others_cpu_share: None, calibration_ms: None }
    }

    /// The note for timings taken beside a busy neighbour, where other processes took at least
    /// [`Contention::NOTABLE`](crate::measure::Contention::NOTABLE) of the machine.
    pub fn contention_note(&self) -> Option<String> {
        let share = self.others_cpu_share.filter(|&s| s >= crate::measure::Contention::NOTABLE)?;
        Some(format!("other processes used {:.0} % of the machine's CPU time while {} ran: its timings are slower for reasons of theirs", 100.0 * share, self.kind))
    }

    /// Targets passed and checked in this category.
    pub fn pass_count(&self) -> (usize, usize) {
        let checked: Vec<&TargetCheck> = self.metrics.iter().filter_map(|m| m.target.as_ref()).collect();
        (checked.iter().filter(|t| t.passed).count(), checked.len())
    }
}

/// A recommendation derived from a measured number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub topic: String,
    pub text: String,
    /// The metric id and value it rests on.
    pub evidence: String,
}

/// The whole result set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub quick: bool,
    /// The encoders measured: the workload's (training, model, scalability, hardware) and the
    /// quality category's. A baseline of other encoders is not compared on those categories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoders: Option<String>,
    pub device: String,
    pub fingerprint: Fingerprint,
    pub categories: Vec<Category>,
    pub recommendations: Vec<Recommendation>,
    /// Name or path of the baseline compared against, and fingerprint differences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_warnings: Vec<String>,
    /// Targets of the table that no metric of this run answered (`section.key`): a GPU target on
    /// a CPU run, a category not run, a metric the suite does not measure yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmeasured_targets: Vec<String>,
    /// Where the PyTorch reference numbers came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub seconds: f64,
}

impl Results {
    /// Passed / checked targets over all categories.
    pub fn pass_rate(&self) -> (usize, usize) {
        self.categories.iter().map(Category::pass_count).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The pass rate in words: `12/14 targets (86 %)`, or that none was checked (a run of
    /// categories without targets is not a run where every target failed).
    pub fn pass_rate_text(&self) -> String {
        match self.pass_rate() {
            (_, 0) => "no targets checked".into(),
            (p, t) => format!("{p}/{t} targets ({:.0} %)", 100.0 * p as f64 / t as f64),
        }
    }

    pub fn metrics(&self) -> impl Iterator<Item = &Metric> {
        self.categories.iter().flat_map(|c| c.metrics.iter())
    }

    pub fn metric(&self, id: &str) -> Option<&Metric> {
        self.metrics().find(|m| m.id == id)
    }

    /// The metric `category.config.name`.
    pub fn metric_of(&self, category: CategoryKind, config: &str, name: MetricName) -> Option<&Metric> {
        self.metrics().find(|m| m.category == category && m.config == config && m.name == name)
    }

    pub fn category(&self, kind: CategoryKind) -> Option<&Category> {
        self.categories.iter().find(|c| c.kind == kind)
    }

    pub fn regressions(&self) -> Vec<&Metric> {
        self.metrics().filter(|m| m.baseline.as_ref().is_some_and(|b| b.verdict == crate::stats::Verdict::Regression)).collect()
    }
}
