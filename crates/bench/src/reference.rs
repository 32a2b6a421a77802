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

pub fn attach(r: &mut Results, path: &Path) -> Result<()> {
    let text = files::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| BenchError::Input(format!("{}: not a torch_ref.py JSON: {e}", path.display())))?;
    let found = pairs(&j);
    if found.is_empty() {
        return Err(BenchError::Input(format!("{}: no train or data section in this torch_ref.py JSON", path.display())));
    }
    for c in r.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            if let Some((_, v)) = found.iter().find(|(id, _)| *id == m.metric_id()) {
                let speedup = if m.lower_is_better { v / m.value } else { m.value / v };
                m.reference = Some(ReferenceValue { value: *v, speedup });
            }
        }
    }
    Ok(())
}
