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
/// Returns the values of a category that ran which no metric answers to: a file of other
/// configs than the suite's (`encoders_ref.py`'s, whose `cnn-…` and `isfm-…` steps the suite does
/// not time under those names), which would otherwise attach nothing without a word.
pub fn attach(r: &mut Results, reference: &Reference) -> Vec<MetricId> {
    let found = &reference.values;
    let mut used = vec![false; found.len()];
    for c in r.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            if let Some(i) = found.iter().position(|(id, _)| *id == m.metric_id()) {
                let v = found[i].1;
                let speedup = if m.lower_is_better { v / m.value } else { m.value / v };
                m.reference = Some(ReferenceValue { value: v, speedup });
                used[i] = true;
            }
        }
    }
    // A category that failed measured nothing to attach to: its values are not asked about.
    let ran = |id: &MetricId| r.category(id.category).is_some_and(|c| c.status == crate::results::Status::Ok);
    found.iter().zip(used).filter(|((id, _), used)| !used && ran(id)).map(|((id, _), _)| id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Category, Metric};

    fn reference(dir: &Path, name: &str, json: &str) -> Reference {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        Reference::load(&path).unwrap()
    }

    /// torch_ref.py's fp32 values sit beside the metrics they answer, with our speed-up; the
    /// values of a category that ran which no metric answers (encoders_ref.py's configs) are
    /// named in the log, and those of a category that did not run are not asked about.
    #[test]
    fn a_reference_attaches_where_it_answers_and_names_what_nothing_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = crate::Benchmark::new(dir.path());
        let mut training = Category::new(CategoryKind::Training);
        training.metrics.push(Metric::new(MetricId::new(CategoryKind::Training, "small", MetricName::BatchTimeMs), 2.0, true, "timed"));
        training.metrics.push(Metric::new(MetricId::new(CategoryKind::Training, "small", MetricName::SamplesPerS), 8000.0, false, "timed"));
        b.results.categories.push(training);
        let torch = reference(
            dir.path(),
            "torch.json",
            r#"{"train":[{"config":"small","amp":"bf16","step_median_ms":1.0},{"config":"small","amp":"none","step_median_ms":4.0,"samples_per_s":4000.0}],"data":{"vectorized":{"batch_prep_ms_median":50.0}}}"#,
        );
        let mut r = b.results.clone();
        assert_eq!(attach(&mut r, &torch), Vec::<MetricId>::new(), "the data category did not run: its value is not asked about");
        for (id, value) in [("training.small.batch_time_ms", 4.0), ("training.small.samples_per_s", 4000.0)] {
            let got = r.metric(id).and_then(|m| m.reference.clone()).unwrap_or_else(|| panic!("{id}: no reference"));
            assert_eq!((got.value, got.speedup), (value, 2.0), "{id}: fp32's value (not bf16's) and ours against it");
        }
        let encoders = reference(dir.path(), "encoders.json", r#"{"train":[{"config":"cnn-medium","amp":"none","median_ms":9.0,"samples_per_s":3500.0}]}"#);
        let mut r = b.results.clone();
        assert_eq!(attach(&mut r, &encoders), vec![MetricId::new(CategoryKind::Training, "cnn-medium", MetricName::SamplesPerS)]);
        assert!(r.metrics().all(|m| m.reference.is_none()));
        b.with_reference(&encoders);
        assert!(b.log.iter().any(|l| l.contains("no metric of this run answers 1 of its values (training.cnn-medium.samples_per_s)") && l.contains("encoders_ref.py")), "{:?}", b.log);
    }
}
