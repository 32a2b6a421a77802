//! PyTorch's numbers beside ours: reads the JSON `torch_ref.py --json` writes and attaches, to
//! each of our metrics that has a counterpart, the reference value and the speed-up.

use std::path::Path;

use crate::error::{BenchError, Result};
use crate::results::{ReferenceValue, Results};

/// (our metric id, reference value, lower is better) pairs found in a torch_ref JSON.
fn pairs(j: &serde_json::Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Some(train) = j["train"].as_array() {
        for t in train {
            if t["amp"].as_str().unwrap_or("none") != "none" {
                continue;
            }
            let Some(cfg) = t["config"].as_str() else { continue };
            if let Some(v) = t["step_median_ms"].as_f64() {
                out.push((format!("training.{cfg}.batch_time_ms"), v));
            }
            if let Some(v) = t["samples_per_s"].as_f64() {
                out.push((format!("training.{cfg}.samples_per_s"), v));
            }
            if let Some(v) = t["infonce_fwdbwd_median_ms"].as_f64() {
                out.push((format!("training.{cfg}.infonce_ms"), v));
            }
        }
    }
    if let Some(d) = j.get("data") {
        if let Some(v) = d["vectorized"]["batch_prep_ms_median"].as_f64() {
            out.push(("data.medium.B32.batch_prep_ms".into(), v));
        }
    }
    out
}

pub fn attach(r: &mut Results, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| BenchError::Input(format!("{}: not a torch_ref.py JSON: {e}", path.display())))?;
    let found = pairs(&j);
    if found.is_empty() {
        return Err(BenchError::Input(format!("{}: no train or data section in this torch_ref.py JSON", path.display())));
    }
    for c in r.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            if let Some((_, v)) = found.iter().find(|(id, _)| *id == m.id) {
                let speedup = if m.lower_is_better { v / m.value } else { m.value / v };
                m.reference = Some(ReferenceValue { value: *v, speedup });
            }
        }
    }
    Ok(())
}
