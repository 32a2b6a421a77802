//! The benchmark suite of contrastive-id (SPEC §5, the seed's
//! `performance_benchmark_suite.md`): six categories measured on the real pipeline and engine,
//! sound statistics, the seed's targets, baselines with a regression rule, PyTorch reference
//! ratios, and reports (JSON, Markdown, self-contained HTML, PNG charts, a log).
//!
//! ```no_run
//! let mut b = bench::Benchmark::new("bench-results").quick(true);
//! b.training().unwrap();
//! b.scalability().unwrap();
//! b.report().unwrap();
//! ```

pub mod categories;
pub mod chart;
pub mod compare;
pub mod error;
pub mod fingerprint;
pub mod measure;
pub mod plots;
pub mod reference;
pub mod registry;
pub mod report;
pub mod results;
pub mod stats;
pub mod svg;
pub mod targets;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::{BenchError, Result};
pub use registry::{CategoryKind, DeviceSel, MetricId, MetricName, Selection};
pub use results::Results;

use categories::Settings;
use fingerprint::Fingerprint;
use results::{Category, Metric, Recommendation, Status};
use targets::Targets;

/// The charts: file under the save directory, the category it draws, how.
type Plot = (&'static str, CategoryKind, fn(&Results, &Path) -> Result<()>);
/// The name of a run's scratch directory in the save directory, before its random part.
const WORK_PREFIX: &str = ".work-";

/// A run's scratch directory and the lock on it ([`files::remove_abandoned_scratch`] leaves a
/// directory whose lock is held). The directory goes when this drops.
struct Scratch {
    _dir: tempfile::TempDir,
    _lock: Option<files::DirLock>,
}

const PLOTS: [Plot; 3] = [
    ("plots/training_performance.png", CategoryKind::Training, plots::training),
    ("plots/scalability_analysis.png", CategoryKind::Scalability, plots::scalability),
    ("plots/hardware_optimization.png", CategoryKind::Hardware, plots::hardware),
];

/// Whether a run's results get the PNG chart of category `kind`: where it measured something.
fn charted(r: &Results, kind: CategoryKind) -> bool {
    r.categories.iter().any(|c| c.kind == kind && !c.metrics.is_empty())
}

/// The PNG charts a run's results get (files under the save directory, and their category).
pub(crate) fn charts_of(r: &Results) -> impl Iterator<Item = (&'static str, CategoryKind)> + '_ {
    PLOTS.into_iter().filter(|&(_, kind, _)| charted(r, kind)).map(|(file, kind, _)| (file, kind))
}

/// A benchmark run: settings, results so far, and where they go.
pub struct Benchmark {
    save_dir: PathBuf,
    settings: Settings,
    device: DeviceSel,
    targets: Targets,
    results: Results,
    started: Instant,
    log: Vec<String>,
    /// Called with each category as it starts.
    on_category: Option<Box<dyn FnMut(CategoryKind) + Send>>,
    /// Called with each line of the log as it is written (the library prints nothing).
    on_log: Option<Box<dyn FnMut(&str) + Send>>,
    /// This run's scratch directory (`<save-dir>/.work-XXXXXX`: the stores the data categories
    /// write), made at the first category and removed with everything in it by [`Self::report`]
    /// or on drop, and the lock on it this run holds meanwhile. Its own, so that a user's
    /// directory of that name, or a second run into the same save directory, is never touched;
    /// one a killed run left goes at a later run's start, its lock free.
    work: Option<Scratch>,
}

impl Benchmark {
    pub fn new(save_dir: impl Into<PathBuf>) -> Self {
        let save_dir = save_dir.into();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let settings = Settings {
            quick: false,
            threads,
            work_dir: PathBuf::new(),
            quality_data: None,
            encoder: engine::EncoderKind::MlpMedium,
            quality_encoder: engine::EncoderKind::Cnn,
            progress: Default::default(),
        };
        Benchmark {
            results: Results {
                schema_version: results::SCHEMA_VERSION,
                started_unix,
                quick: false,
                encoders: Some(encoders_text(settings.encoder, settings.quality_encoder)),
                device: "cpu".into(),
                fingerprint: Fingerprint::collect(threads),
                categories: Vec::new(),
                recommendations: Vec::new(),
                baseline: None,
                baseline_warnings: Vec::new(),
                unmeasured_targets: Vec::new(),
                reference: None,
                seconds: 0.0,
            },
            save_dir,
            settings,
            device: DeviceSel::Cpu,
            targets: targets::default_targets(),
            started: Instant::now(),
            log: Vec::new(),
            on_category: None,
            on_log: None,
            work: None,
        }
    }

    pub fn quick(mut self, quick: bool) -> Self {
        self.settings.quick = quick;
        self.results.quick = quick;
        self
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.settings.threads = threads.max(1);
        self.results.fingerprint.threads = self.settings.threads;
        self
    }

    /// The device asked for. Every category measures the CPU device (GPU benchmarking is not
    /// implemented yet), so the results name the CPU, and the request beside it.
    pub fn device(mut self, device: DeviceSel) -> Self {
        self.device = device;
        self.results.device = match device {
            DeviceSel::Cpu => "cpu".into(),
            other => format!("cpu ({other} requested: the GPU is not benchmarked yet)"),
        };
        self
    }

    pub fn targets(mut self, t: Targets) -> Self {
        self.targets = t;
        self
    }

    /// The encoder of the training, scalability and hardware categories.
    pub fn encoder(mut self, kind: engine::EncoderKind) -> Self {
        self.settings.encoder = kind;
        self.results.encoders = Some(encoders_text(kind, self.settings.quality_encoder));
        self
    }

    /// The encoder the quality category trains.
    pub fn quality_encoder(mut self, kind: engine::EncoderKind) -> Self {
        self.settings.quality_encoder = kind;
        self.results.encoders = Some(encoders_text(self.settings.encoder, kind));
        self
    }

    pub fn quality_data(mut self, data: PathBuf, meta: PathBuf) -> Self {
        self.settings.quality_data = Some((data, meta));
        self
    }

    /// Called with a short line per unit of work inside a long category (each point of the
    /// scalability sweep); neither logged nor in the results.
    pub fn on_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.settings.progress = categories::Progress::new(f);
        self
    }

    pub fn on_category(mut self, f: impl FnMut(CategoryKind) + Send + 'static) -> Self {
        self.on_category = Some(Box::new(f));
        self
    }

    pub fn results(&self) -> &Results {
        &self.results
    }

    fn log(&mut self, line: String) {
        if let Some(f) = self.on_log.as_mut() {
            f(&line);
        }
        self.log.push(line);
    }

    pub fn on_log(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_log = Some(Box::new(f));
        self
    }

    /// Runs one category; a failure is recorded in the results (status error) and logged, and the
    /// suite goes on.
    pub fn run(&mut self, kind: CategoryKind) -> Result<&Category> {
        if let Some(cb) = self.on_category.as_mut() {
            cb(kind);
        }
        if self.work.is_none() {
            std::fs::create_dir_all(&self.save_dir).map_err(|e| BenchError::io(&self.save_dir, e))?;
            // A run killed before its report left its scratch directory (stores of up to
            // gigabytes): it goes once no process holds its lock.
            files::remove_abandoned_scratch(&self.save_dir, WORK_PREFIX);
            let dir = tempfile::Builder::new().prefix(WORK_PREFIX).tempdir_in(&self.save_dir).map_err(|e| BenchError::io(&self.save_dir, e))?;
            let lock = files::DirLock::try_acquire(dir.path()).map_err(|e| BenchError::io(dir.path(), e))?;
            self.settings.work_dir = dir.path().to_path_buf();
            self.work = Some(Scratch { _dir: dir, _lock: lock });
        }
        let calibration = measure::calibration_ms(self.settings.threads);
        let (t, contention) = (Instant::now(), measure::Contention::start());
        let s = &self.settings;
        let outcome = match kind {
            CategoryKind::Training => categories::training(s),
            CategoryKind::Data => categories::data(s),
            CategoryKind::Model => categories::model(s),
            CategoryKind::Scalability => categories::scalability(s),
            CategoryKind::Hardware => categories::hardware(s, self.device),
            CategoryKind::Quality => categories::quality(s),
        };
        let mut cat = match outcome {
            Ok(c) => c,
            Err(e) => {
                let mut c = Category::new(kind);
                c.status = Status::Error;
                c.notes.push(e.to_string());
                c
            }
        };
        cat.seconds = t.elapsed().as_secs_f64();
        cat.others_cpu_share = contention.others_share();
        cat.calibration_ms = Some(calibration);
        if let Some(note) = cat.contention_note() {
            cat.notes.push(note);
        }
        targets::evaluate(&mut cat.metrics, &self.targets);
        // Samples far outside the rest: taken while the machine did something else.
        for m in &cat.metrics {
            if let Some(s) = m.summary.as_ref().filter(|s| s.outliers.severe() as f64 > stats::SEVERE_OUTLIER_SHARE * s.n as f64) {
                self.log(format!(
                    "warning: {}: {} among {} samples (the severe ones past 3 IQR: samples far from the rest, most often taken while the machine did something else; the median stands, the CI widens)",
                    m.id, s.outliers, s.n
                ));
            }
        }
        let (p, n) = cat.pass_count();
        let line = format!(
            "[{kind}] {:?}: {} metrics, {p}/{n} targets passed, {:.1} s{}",
            cat.status,
            cat.metrics.len(),
            cat.seconds,
            if cat.notes.is_empty() { String::new() } else { format!(" ({})", cat.notes.join("; ")) }
        );
        self.log(line);
        self.results.categories.retain(|c| c.kind != kind);
        self.results.categories.push(cat);
        Ok(self.results.categories.last().expect("just pushed"))
    }

    pub fn training(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Training)
    }
    pub fn data(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Data)
    }
    pub fn model(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Model)
    }
    pub fn scalability(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Scalability)
    }
    pub fn hardware(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Hardware)
    }
    pub fn quality(&mut self) -> Result<&Category> {
        self.run(CategoryKind::Quality)
    }

    /// Runs the selected categories in order.
    pub fn run_selection(&mut self, which: Selection) -> Result<()> {
        for kind in which.categories() {
            self.run(kind)?;
        }
        Ok(())
    }

    /// Puts PyTorch's numbers beside ours ([`reference::Reference::load`]: `torch_ref.py --json`).
    pub fn with_reference(&mut self, reference: &reference::Reference) {
        let unanswered = reference::attach(&mut self.results, reference);
        self.results.reference = Some(reference.path.display().to_string());
        if !unanswered.is_empty() {
            let shown: Vec<String> = unanswered.iter().take(4).map(|id| id.to_string()).collect();
            let more = if unanswered.len() > shown.len() { format!(", and {} more", unanswered.len() - shown.len()) } else { String::new() };
            self.log(format!(
                "warning: --reference {}: no metric of this run answers {} of its values ({}{more}): the suite times torch_ref.py's configs (small, medium, large); encoders_ref.py's are compared side by side by scripts/cpu_generation_check.sh",
                reference.path.display(),
                unanswered.len(),
                shown.join(", ")
            ));
        }
    }

    /// Compares with a baseline (a name under `<save_dir>/baselines/` or a file).
    pub fn compare_baseline(&mut self, name_or_file: &str, noise: f64) -> Result<()> {
        let base = load_baseline(&self.save_dir, name_or_file)?;
        self.compare_with(name_or_file, &base, noise);
        Ok(())
    }

    /// Compares with a baseline already read ([`load_baseline`]), named `name` in the reports;
    /// each warning is logged.
    pub fn compare_with(&mut self, name: &str, base: &Results, noise: f64) {
        for w in compare::compare(&mut self.results, name, base, noise) {
            self.log(format!("warning: {w}"));
        }
    }

    /// Derives recommendations, writes every report, chart and the log (atomically), and removes
    /// the run's scratch directory, written or not. Returns the files written.
    pub fn report(&mut self) -> Result<Vec<PathBuf>> {
        let written = self.write_reports();
        // (Dropping the directory removes it and everything in it.)
        self.work = None;
        written
    }

    fn write_reports(&mut self) -> Result<Vec<PathBuf>> {
        self.results.seconds = self.started.elapsed().as_secs_f64();
        let answered: std::collections::BTreeSet<String> = self.results.metrics().filter_map(|m| m.target.as_ref().map(|t| t.target.clone())).collect();
        self.results.unmeasured_targets = self.targets.iter().flat_map(|(section, keys)| keys.keys().map(move |k| format!("{section}.{k}"))).filter(|t| !answered.contains(t)).collect();
        self.results.recommendations = recommendations(&self.results);
        std::fs::create_dir_all(self.save_dir.join("plots")).map_err(|e| BenchError::io(&self.save_dir, e))?;
        let mut written = Vec::new();
        for (file, kind, draw) in PLOTS {
            let path = self.save_dir.join(file);
            // A chart of a category this run did not run, or that failed before measuring anything,
            // would be empty axes; one an earlier run left here would show that run's numbers
            // beside this run's reports.
            if !charted(&self.results, kind) {
                // (A killed renderer's temporary of this chart goes too.)
                files::claim_tmp_path_keeping_extension(&path);
                if path.is_file() {
                    std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
                }
                continue;
            }
            // Named with `.png` last: the renderer picks its format from the extension. A run
            // killed while drawing leaves it; the next run's claim removes it.
            let tmp = files::claim_tmp_path_keeping_extension(&path);
            // A chart that fails to draw leaves no half-written file behind.
            if let Err(e) = draw(&self.results, &tmp).and_then(|()| files::publish(&tmp, &path).map_err(|e| BenchError::io(&path, e))) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            written.push(path);
        }
        written.extend(report::write_all(&self.results, &self.save_dir)?);
        self.log(format!("pass rate {}; {} regression(s)", self.results.pass_rate_text(), self.results.regressions().len()));
        let log_path = self.save_dir.join("benchmark.log");
        let mut text = String::new();
        for l in &self.log {
            text.push_str(l);
            text.push('\n');
        }
        files::write_atomic(&log_path, text.as_bytes()).map_err(|e| BenchError::io(&log_path, e))?;
        written.push(log_path);
        Ok(written)
    }

    /// Stores the current results as baseline `name` under `<save_dir>/baselines/`.
    pub fn save_baseline(&self, name: &str) -> Result<PathBuf> {
        check_baseline_name(name)?;
        let path = self.save_dir.join("baselines").join(format!("{name}.json"));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| BenchError::io(p, e))?;
        }
        let bytes = serde_json::to_vec_pretty(&self.results).map_err(|e| BenchError::Report(e.to_string()))?;
        files::write_atomic(&path, &bytes).map_err(|e| BenchError::io(&path, e))?;
        Ok(path)
    }
}

/// The files a run writes under `save_dir` (with `--save-baseline NAME`, its baseline too),
/// checked before anything runs: a directory where a file goes, or a file where a directory goes,
/// would fail the run after the whole suite had been measured.
pub fn check_save_dir(save_dir: &Path, save_baseline: Option<&str>) -> Result<()> {
    let mut outputs: Vec<PathBuf> = report::files();
    outputs.extend(PLOTS.iter().map(|(file, _, _)| PathBuf::from(file)));
    outputs.push("benchmark.log".into());
    if let Some(name) = save_baseline {
        check_baseline_name(name)?;
        outputs.push(Path::new("baselines").join(format!("{name}.json")));
    }
    if save_dir.exists() && !save_dir.is_dir() {
        return Err(BenchError::Input(format!("--save-dir {}: not a directory", save_dir.display())));
    }
    if let (Err(e), Ok(_)) = (std::fs::metadata(save_dir), save_dir.symlink_metadata()) {
        return Err(BenchError::Input(format!("--save-dir {}: a symbolic link that leads nowhere ({e})", save_dir.display())));
    }
    for file in outputs {
        let path = save_dir.join(&file);
        for dir in path.ancestors().skip(1).take_while(|d| d.starts_with(save_dir) && *d != save_dir) {
            // (A link that leads nowhere is in the way too.)
            if dir.symlink_metadata().is_ok() && !dir.is_dir() {
                return Err(BenchError::Input(format!("{}: a file where the run writes a directory (for {})", dir.display(), file.display())));
            }
        }
        if path.exists() && !path.is_file() {
            return Err(BenchError::Input(format!("{}: in the way of a file the run writes (not a plain file)", path.display())));
        }
    }
    Ok(())
}

/// A name `--save-baseline` can save under: a plain file name.
pub fn check_baseline_name(name: &str) -> Result<()> {
    if !files::is_plain_name(name) {
        return Err(BenchError::Input(format!("baseline name `{name}` must be a plain file name")));
    }
    Ok(())
}

/// Reads a baseline (a name under `<save_dir>/baselines/` or a file) and checks its schema.
pub fn load_baseline(save_dir: &Path, name_or_file: &str) -> Result<Results> {
    let path = baseline_path(save_dir, name_or_file)?;
    // A FIFO or a device would block the read, or never end.
    if path.exists() && !path.is_file() {
        return Err(BenchError::Input(format!("{}: not a regular file", path.display())));
    }
    let text = files::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    let text = text.trim_start_matches('\u{feff}');
    // serde would judge anything but an object by where its first field should be ("expected
    // a boolean at column 8" for `[1, 2, 3]`): say what the file is instead.
    let kind = match text.trim_start().chars().next() {
        Some('{') => None,
        Some('[') => Some("a JSON array"),
        Some(_) => Some("not JSON, or a bare JSON value"),
        None => Some("empty"),
    };
    if let Some(kind) = kind {
        return Err(BenchError::Input(format!("{}: not a results file: it is {kind}, where a results file is a JSON object (a run's comprehensive_benchmark_results.json)", path.display())));
    }
    let base: Results = serde_json::from_str(text).map_err(|e| BenchError::Input(format!("{}: not a results file: {e}", path.display())))?;
    if !(results::OLDEST_READABLE_SCHEMA..=results::SCHEMA_VERSION).contains(&base.schema_version) {
        return Err(BenchError::Input(format!("{}: schema version {} (this build reads {} to {})", path.display(), base.schema_version, results::OLDEST_READABLE_SCHEMA, results::SCHEMA_VERSION)));
    }
    for c in &base.categories {
        check_baseline_category(c).map_err(|why| BenchError::Input(format!("{}: category {}: {why}", path.display(), c.kind)))?;
    }
    let mut seen = std::collections::HashSet::new();
    for m in base.metrics() {
        check_baseline_metric(m).map_err(|why| BenchError::Input(format!("{}: metric {}: {why}", path.display(), m.id)))?;
        if !seen.insert(m.id.as_str()) {
            return Err(BenchError::Input(format!("{}: metric {} appears twice: which one is the baseline?", path.display(), m.id)));
        }
    }
    Ok(base)
}

/// The most samples a baseline metric may hold: a run records at most a few hundred per metric,
/// and the comparison resamples them a thousand times.
pub const MAX_BASELINE_SAMPLES: usize = 10_000;

/// The magnitudes a measured value can have (ms, MB, samples/s, parameters, ratios): 0, or
/// between these. Past them a value is no measurement, and a change against it overflows (a
/// timing of 1e308 ms compared as "no change").
pub const MEASURABLE: std::ops::RangeInclusive<f64> = 1e-12..=1e15;

/// What a run could have measured: finite values, of a sign the metric can take, 0 or of a
/// magnitude in [`MEASURABLE`], and no more samples than a run records.
fn check_baseline_metric(m: &results::Metric) -> std::result::Result<(), String> {
    if m.samples.len() > MAX_BASELINE_SAMPLES {
        return Err(format!("{} samples, more than the {MAX_BASELINE_SAMPLES} a run records", m.samples.len()));
    }
    for v in std::iter::once(m.value).chain(m.samples.iter().copied()) {
        let why = if !v.is_finite() {
            "is not finite"
        } else if v < 0.0 && !m.name.can_be_negative() {
            "is negative, which a measured value of this metric cannot be"
        } else if v != 0.0 && !MEASURABLE.contains(&v.abs()) {
            "is past the magnitudes a measurement has (0, or 1e-12 to 1e15)"
        } else {
            continue;
        };
        return Err(format!("the value {v:e} {why}"));
    }
    Ok(())
}

/// What a run could have recorded of a category's machine: a share of the CPUs in [0, 1], and a
/// reference time of a measurable magnitude (a 0 or negative one made every comparison warn of
/// an infinitely slower machine).
fn check_baseline_category(c: &results::Category) -> std::result::Result<(), String> {
    if let Some(share) = c.others_cpu_share.filter(|s| !(0.0..=1.0).contains(s)) {
        return Err(format!("others_cpu_share {share:e} is not a share of the CPUs (0 to 1)"));
    }
    if let Some(ms) = c.calibration_ms.filter(|ms| !MEASURABLE.contains(ms)) {
        return Err(format!("calibration_ms {ms:e} is not a time a run measures (1e-12 to 1e15 ms)"));
    }
    Ok(())
}

/// How [`Results::encoders`] names a run's encoders.
fn encoders_text(workload: engine::EncoderKind, quality: engine::EncoderKind) -> String {
    format!("workload encoder {workload}, quality encoder {quality}")
}

/// A baseline argument: an existing file, a run's save directory (its results file), or a name
/// under `<save_dir>/baselines/`. A bare name that is both a saved baseline and a file or
/// directory here is refused as ambiguous, naming both.
pub fn baseline_path(save_dir: &Path, name_or_file: &str) -> Result<PathBuf> {
    let p = PathBuf::from(name_or_file);
    let named = save_dir.join("baselines").join(format!("{name_or_file}.json"));
    // A path (it has a separator, or ends in .json) is a file as given; a bare name may be either.
    let bare = !name_or_file.ends_with(".json") && !name_or_file.contains(['/', '\\']);
    if bare && named.is_file() && p.exists() {
        return Err(BenchError::Input(format!("`{name_or_file}` is both the baseline {} and {} here: write one of those paths", named.display(), p.display())));
    }
    Ok(if bare && named.is_file() {
        named
    } else if p.is_dir() {
        p.join(report::RESULTS_FILE)
    } else if p.exists() || !bare {
        p
    } else {
        // No such file here: a baseline, and the error, if there is none, says where it looked.
        named
    })
}

/// Recommendations derived from the results, each citing the number behind it.
pub fn recommendations(r: &Results) -> Vec<Recommendation> {
    let mut out = Vec::new();
    let mut rec = |topic: &str, text: String, evidence: String| out.push(Recommendation { topic: topic.into(), text, evidence });
    let sps = |c: &str| r.metric_of(CategoryKind::Training, c, MetricName::SamplesPerS).map(|m| m.value);
    if let (Some(s), Some(l)) = (sps("small"), sps("large")) {
        let ev = format!("training.small/large.samples_per_s = {s:.0} / {l:.0}");
        let text = if l > 1.2 * s {
            format!("Throughput grows from small (16×512) to large (64×2048): {s:.0} → {l:.0} samples/s. Larger batches use the machine better; use the largest batch memory allows.")
        } else if l < 0.8 * s {
            format!("Throughput falls from small (16×512) to large (64×2048): {s:.0} → {l:.0} samples/s, as each sample's work grows with the window. Choose the window for the signal, and the batch for the contrastive task (more negatives).")
        } else {
            format!("Throughput is about flat from small to large ({s:.0} vs {l:.0} samples/s): pick the batch for the contrastive task (more negatives), not for speed.")
        };
        rec("Batch size", text, ev);
    }
    if let Some(m) = r.metric_of(CategoryKind::Hardware, "cpu.fp32", MetricName::ThreadSpeedup) {
        let threads = r.fingerprint.threads;
        let eff = m.value / threads as f64;
        rec(
            "CPU threads",
            if eff < 0.6 {
                format!(
                    "{threads} threads give only {:.2}× over one ({:.0} % efficiency): the step is memory- or overhead-bound at this size; larger batches use the cores better.",
                    m.value,
                    100.0 * eff
                )
            } else {
                format!("{threads} threads give {:.2}× over one ({:.0} % efficiency): keep num_workers at the core count.", m.value, 100.0 * eff)
            },
            format!("{} = {:.2}", m.id, m.value),
        );
    }
    // Data loading (the seed's "faster storage"): whether preparing batches could bound
    // training here, from a batch's preparation against a training step on the same batch and
    // window. The sampler builds batches ahead, but on the step's own threads: what preparing
    // costs, the step waits for, at most.
    let prep = r.metric_of(CategoryKind::Data, "medium.B32", MetricName::BatchPrepMs);
    let step = r.metric_of(CategoryKind::Training, "medium", MetricName::BatchTimeMs);
    if let (Some(prep), Some(step)) = (prep, step) {
        let share = 100.0 * prep.value / (prep.value + step.value);
        let text = if prep.value >= step.value {
            format!(
                "Preparing a batch from the page cache ({:.2} ms) takes as long as the training step on it or longer ({:.2} ms): data preparation bounds training, up to {share:.0} % of each step, and on this CPU, not storage, since the signals were already in memory. Keep the store contiguous float32, so that windows are read in place without a copy or a decompression.",
                prep.value, step.value
            )
        } else {
            // Cold only where the store could be evicted before its passes (the metric's method says).
            let read = r
                .metric_of(CategoryKind::Data, "medium", MetricName::StoreReadMbPerS)
                .filter(|m| m.method.contains("evicted from the page cache"))
                .map_or(String::new(), |m| format!(" (reads from a cold cache here: {:.0} MB/s)", m.value));
            format!(
                "Preparing a batch from the page cache takes {:.2} ms, {:.1}× less than the training step on it ({:.2} ms): at most {share:.0} % of a step's time goes to data preparation here. Storage (local SSD or NVMe) matters for each signal's first read{read}, and for every read where the signals do not fit in memory.",
                prep.value,
                step.value / prep.value,
                step.value
            )
        };
        rec("Data loading", text, format!("{} = {:.3} ms; {} = {:.3} ms", prep.id, prep.value, step.id, step.value));
    }
    // Memory (the seed's "gradient checkpointing for large models"): what each pair adds to a
    // step (the batch sweep's two largest points, so weights and optimizer state, which do not
    // grow with the batch, are left out), and the batch that fits; past it, gradient
    // accumulation, which the trainer has.
    let batch_points: Vec<(f64, f64)> =
        r.category(CategoryKind::Scalability).map(|c| c.sweep.iter().filter(|p| p.axis == "batch" && p.ok).filter_map(|p| Some((p.batch as f64, p.memory_mb?))).collect()).unwrap_or_default();
    if let ([.., (b1, m1), (b2, m2)], Some(machine_mb)) = (&batch_points[..], r.fingerprint.memory_mb) {
        let per_pair = (m2 - m1) / (b2 - b1);
        if per_pair > 0.0 {
            let fixed = (m2 - per_pair * b2).max(0.0);
            let fits = ((0.5 * machine_mb - fixed) / per_pair).floor().max(0.0);
            rec(
                "Memory",
                format!(
                    "Each pair of windows adds {per_pair:.3} MB to a training step (the batch sweep, W = 1024: {m1:.1} MB at B = {b1:.0}, {m2:.1} MB at B = {b2:.0}; about {fixed:.1} MB do not grow with the batch): about {fits:.0} pairs fit in half this machine's memory ({machine_mb:.0} MB). Past that, trainer.accumulate_grad_batches trades steps for memory (negatives stay per micro-batch); the engine keeps every activation for the backward pass (it has no gradient checkpointing)."
                ),
                format!("scalability batch sweep: {m1:.3} MB at B = {b1:.0}, {m2:.3} MB at B = {b2:.0}; machine {machine_mb:.0} MB"),
            );
        }
    }
    // One recommendation per advice, naming every missed target it answers (a dozen data
    // metrics missing theirs gave a dozen copies of one sentence).
    struct Missed {
        advice: String,
        targets: Vec<String>,
        evidence: Vec<String>,
    }
    let mut missed: Vec<Missed> = Vec::new();
    for m in r.metrics().filter(|m| m.target.as_ref().is_some_and(|t| !t.passed)) {
        let t = m.target.as_ref().expect("filtered");
        let text = match (m.category, m.name) {
            (CategoryKind::Data, _) => "Data preparation misses its target: keep the store contiguous float32 (zero-copy reads), on local SSD, and raise prefetch.".to_string(),
            (CategoryKind::Scalability, MetricName::MemoryScalingFactor) => "Memory grows faster than the batch at the largest sizes. The CPU's InfoNCE holds its similarities in tiles of 256 rows (linear in the batch); on CUDA its B×B matrix grows quadratically. For very large effective batches use gradient accumulation (negatives stay per micro-batch).".to_string(),
            (CategoryKind::Scalability, _) => "The sweep stopped below the target: reduce memory per step (smaller window or batch with gradient accumulation), or run on a larger machine.".to_string(),
            (CategoryKind::Hardware, MetricName::MixedPrecisionSpeedup) if m.config == "cpu.fp16" => format!(
                "fp16 does not gain enough here (fp16 products: {}). Where AVX512-FP16 runs them its products are faster than fp32's, but the fp32 step skips the zeros of ReLU + dropout gradients, about as fast as fp16 multiplies them, packing the weights bounds both on small batches, and fp16 adds loss scaling's pass over the gradients. The Mixed precision recommendation names the fastest precision measured here.",
                engine::cpu::plan::GemmPolicy::from_env().describe_products(engine::Precision::Fp16)
            ),
            (CategoryKind::Hardware, MetricName::MixedPrecisionSpeedup) => "bf16 gains less than the target on this machine: the Mixed precision recommendation names the fastest precision measured here.".to_string(),
            (CategoryKind::Hardware, MetricName::AccuracyDrop) => format!(
                "The {} run's probe ends further below fp32's than the target allows, after the same steps from the same start. A short run's probe is one reading (`--quick` trains 100 steps): check on your data with `train --override trainer.precision=…` and `evaluate` before switching, and keep trainer.precision: 32 where the drop holds.",
                m.config.strip_prefix("cpu.").unwrap_or(&m.config)
            ),
            (CategoryKind::Training, MetricName::MemoryGrowthRate) => "The process's memory grew across the timed steps (the leak check): run `train` with a few hundred steps and watch its RSS; the engine allocates nothing per step after warm-up, so growth points at the data pipeline or the caller.".to_string(),
            (CategoryKind::Training | CategoryKind::Model, _) => "The step misses its time target: reduce the window or the encoder width, or use more cores / the GPU build.".to_string(),
            _ => "Misses its target.".to_string(),
        };
        let evidence = format!("{} = {:.4} {} (target {} {})", m.id, m.value, m.unit, t.op, t.threshold);
        match missed.iter_mut().find(|m| m.advice == text) {
            Some(m) => {
                if !m.targets.contains(&t.target) {
                    m.targets.push(t.target.clone());
                }
                m.evidence.push(evidence);
            }
            None => missed.push(Missed { advice: text, targets: vec![t.target.clone()], evidence: vec![evidence] }),
        }
    }
    for m in missed {
        rec(&format!("Target{} {}", if m.targets.len() > 1 { "s" } else { "" }, m.targets.join(", ")), m.advice, m.evidence.join("; "));
    }
    // The fastest precision measured here, whichever it is: which one wins depends on the CPU
    // (bf16 on AMX; fp16 where AVX512-BF16's dot products run no faster than fp32's FMAs).
    // (Each with the `trainer.precision` value that selects it.)
    let reduced: Vec<(engine::Precision, &str, &Metric)> = [(engine::Precision::Bf16, "bf16"), (engine::Precision::Fp16, "16")]
        .into_iter()
        .filter_map(|(precision, setting)| r.metric_of(CategoryKind::Hardware, &format!("cpu.{precision}"), MetricName::MixedPrecisionSpeedup).map(|m| (precision, setting, m)))
        .collect();
    if let Some(&(precision, setting, best)) = reduced.iter().max_by(|a, b| a.2.value.total_cmp(&b.2.value)) {
        let speeds = reduced.iter().map(|(p, _, m)| format!("{p} {:.2}×", m.value)).collect::<Vec<_>>().join(", ");
        let (name, products) = (precision.to_string(), engine::cpu::plan::GemmPolicy::from_env().describe_products(precision));
        let evidence = reduced.iter().map(|(_, _, m)| format!("{} = {:.2}", m.id, m.value)).collect::<Vec<_>>().join("; ");
        let text = if best.value > 1.0 {
            let drop = r.metric_of(CategoryKind::Hardware, &format!("cpu.{name}"), MetricName::AccuracyDrop).map_or("not measured".to_string(), |d| format!("{:+.1} points", 100.0 * d.value));
            format!(
                "{name} steps run at {:.2}× fp32's speed on this machine ({name} products here: {}), the fastest of the precisions measured ({speeds}): trainer.precision: {setting} is the faster choice where its accuracy is kept (the probe's drop from fp32 here: {drop}).",
                best.value,
                products
            )
        } else {
            format!("No lower precision runs faster than fp32 on this machine ({speeds}; {name} products here: {}): keep trainer.precision: 32 for speed.", products)
        };
        rec("Mixed precision", text, evidence);
    }
    if r.category(CategoryKind::Hardware).is_some() {
        rec("GPU", "Not measured yet: the suite benchmarks the CPU device only (the CUDA device has not run on a GPU).".into(), "hardware category notes".into());
    }
    for m in r.regressions() {
        if let Some(b) = &m.baseline {
            rec(
                "Regression",
                format!("{} got worse by {:+.1} % (CI {:+.1} … {:+.1} %) against the baseline.", m.id, 100.0 * b.change, 100.0 * b.ci_low, 100.0 * b.ci_high),
                format!("{} = {} {}", m.id, m.value, m.unit),
            );
        }
    }
    out
}
