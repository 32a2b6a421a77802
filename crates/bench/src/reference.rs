//! PyTorch's numbers beside ours: reads the JSON `torch_ref.py --json` writes and attaches, to
//! each of our metrics that has a counterpart, the reference value and the speed-up.

use std::path::Path;

use crate::error::{BenchError, Result};
use crate::registry::{CategoryKind, MetricId, MetricName};
use crate::results::{ReferenceValue, Results};

/// (our metric, reference value) pairs found in a torch_ref JSON.
fn pairs(j: &serde_json::Value) -> Vec<(MetricId, f64)> {
    let mut out = Vec::new();
    if let Some(train) = j["train"].as_array() {
        for t in train {
            if t["amp"].as_str().unwrap_or("none") != "none" {
                continue;
            }
            let Some(cfg) = t["config"].as_str() else { continue };
            for (key, name) in [("step_median_ms", MetricName::BatchTimeMs), ("samples_per_s", MetricName::SamplesPerS), ("infonce_fwdbwd_median_ms", MetricName::InfonceMs)] {
                if let Some(v) = t[key].as_f64() {
                    out.push((MetricId::new(CategoryKind::Training, cfg, name), v));
                }
            }
        }
    }
    if let Some(d) = j.get("data") {
        if let Some(v) = d["vectorized"]["batch_prep_ms_median"].as_f64() {
            out.push((MetricId::new(CategoryKind::Data, "medium.B32", MetricName::BatchPrepMs), v));
        }
    }
    out
}

/// The range a reference value (a time in ms, a rate per second) must lie in.
const MIN_VALUE: f64 = 1e-9;
const MAX_VALUE: f64 = 1e12;

/// PyTorch's numbers from one `torch_ref.py --json` file, checked: read before a suite runs, so
/// that a bad file stops it at once instead of after every category.
#[derive(Clone, Debug)]
pub struct Reference {
    pub path: std::path::PathBuf,
    values: Vec<(MetricId, f64)>,
}

impl Reference {
    /// Reads and checks the file: JSON with a train or data section whose times and rates are
    /// finite numbers > 0 (a speed-up against 0, −5 or 1e308 means nothing).
    pub fn load(path: &Path) -> Result<Reference> {
        let text = files::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        let j: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| BenchError::Input(format!("{}: not a torch_ref.py JSON: {e}", path.display())))?;
        let values = pairs(&j);
        if values.is_empty() {
            return Err(BenchError::Input(format!("{}: no train or data section in this torch_ref.py JSON", path.display())));
        }
        // Times in ms and rates per second: 1e-9 to 1e12 holds any machine's, and keeps every
        // speed-up against ours a finite number (1e-310 made one infinite, written as null).
        if let Some((id, v)) = values.iter().find(|(_, v)| !(MIN_VALUE..=MAX_VALUE).contains(v)) {
            return Err(BenchError::Input(format!("{}: the value {v} for {id} is not a time or rate between {MIN_VALUE:e} and {MAX_VALUE:e}", path.display())));
        }
        Ok(Reference { path: path.to_path_buf(), values })
    }
}

/// Puts each reference value, and our speed-up over it, beside the metric it answers to.
pub fn attach(r: &mut Results, reference: &Reference) {
    let found = &reference.values;
    for c in r.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            if let Some((_, v)) = found.iter().find(|(id, _)| *id == m.metric_id()) {
                let speedup = if m.lower_is_better { v / m.value } else { m.value / v };
                m.reference = Some(ReferenceValue { value: *v, speedup });
            }
        }
    }
}
