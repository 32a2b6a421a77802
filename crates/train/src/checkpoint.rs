//! Checkpoints: a directory holding
//!
//! - `model.safetensors`: the encoder's `state_dict` under PyTorch's names — parameters and
//!   buffers as F32, BatchNorm's `num_batches_tracked` as an I64 scalar — so
//!   `model.load_state_dict(safetensors.torch.load_file(path), strict=True)` works on the
//!   reference module; its metadata holds the architecture (`encoder_config`, JSON) and the
//!   resolved training configuration (`config_yaml`);
//! - `training_state.safetensors` (not with `save_weights_only`): Adam's two moments
//!   (`exp_avg.<name>`, `exp_avg_sq.<name>`), the projection head where the run has one
//!   (`projection.*`, with its moments: it is discarded after pretraining, so it is not part of
//!   the encoder's `state_dict`), and, in its metadata, the step counters, epoch position, seed,
//!   early-stopping state and the GEMM kernel the CPU device measured fastest for each product
//!   shape (`kernel_plan`: a resumed run pins it and stays bit-identical).
//!
//! A named checkpoint (`last`, `best-…`) is a symbolic link to a directory of that name and its
//! step (`last@s120`): a save writes and syncs a fresh directory, then atomically renames a new
//! link over the old one and syncs the parent, then removes the previous directory. At every
//! moment the name resolves to a complete checkpoint, the old one or the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::{ContrastiveStep, Device, Encoder, EncoderConfig, TensorKind, TensorSpec};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Result, TrainError};

/// The most optimizer steps (and forward passes) a resumable state may hold: 2⁵³, exact as an
/// f64 (the learning-rate schedule computes in f64), and far past any run.
pub const MAX_STEPS: u64 = 1 << 53;

/// Where training stood when a checkpoint was written.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training forward passes taken (keys the dropout masks and patch draws).
    pub micro_step: u64,
    /// The next batch to train on.
    pub epoch: usize,
    pub batch: usize,
    pub seed: u64,
    /// Best monitored value so far and validation checks since it improved.
    pub best: Option<f64>,
    pub checks_without_improvement: usize,
    /// Monitored value of this checkpoint (for top-k).
    pub monitor_value: Option<f64>,
    /// The resolved configuration, YAML.
    pub config_yaml: String,
    /// fp16's dynamic loss scale and the applied steps since it last changed (absent in other
    /// precisions), so a resumed run scales as the uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<(f32, u32)>,
    /// The epoch in progress so far, so that a run resumed in the middle of one logs (and
    /// monitors) that epoch's means over all of its batches. (Absent from checkpoints of earlier
    /// versions: the epoch's batches before the checkpoint are then not in its means.)
    #[serde(default)]
    pub epoch_sums: EpochSums,
}

/// Sums over the batches of an epoch in progress ([`TrainingState::epoch_sums`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochSums {
    pub loss: f64,
    pub accuracy: f64,
    pub batches: u64,
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Named tensors and metadata as safetensors bytes.
fn serialize(tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, b)| TensorView::new(*dt, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TrainError::Data(format!("safetensors: {e}")))?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| TrainError::Data(format!("safetensors: {e}")))
}

/// Every tensor of `specs` from its arena (`params`, `buffers`, `counters`), prefixed.
fn state_dict(specs: &[TensorSpec], prefix: &str, params: &[f32], buffers: &[f32], counters: &[u64], kinds: &[TensorKind]) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    for s in specs.iter().filter(|s| kinds.contains(&s.kind)) {
        let (dtype, bytes) = match s.kind {
            TensorKind::Param => (Dtype::F32, f32_bytes(&params[s.offset..s.offset + s.len()])),
            TensorKind::Buffer => (Dtype::F32, f32_bytes(&buffers[s.offset..s.offset + s.len()])),
            TensorKind::Counter => (Dtype::I64, (counters[s.offset] as i64).to_le_bytes().to_vec()),
        };
        out.push((format!("{prefix}{}", s.name), dtype, s.shape.clone(), bytes));
    }
    out
}

/// The values of tensor `name`: F32 as is, F64/F16/BF16 converted, integers as their value.
fn read_tensor(path: &Path, st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|_| ckpt_err(path, format!("tensor `{name}` missing: the checkpoint is of another architecture")))?;
    let n: usize = shape.iter().product();
    if t.shape().iter().product::<usize>() != n || (t.shape() != shape && !shape.is_empty()) {
        return Err(ckpt_err(path, format!("tensor `{name}` has shape {:?}, the encoder needs {shape:?}: another architecture", t.shape())));
    }
    let d = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| engine::cpu::fp16::f32_of_half(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
        Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        other => return Err(ckpt_err(path, format!("tensor `{name}` is {other:?}; expected F32 (or F64, F16, BF16, I64)"))),
    };
    if values.len() != n {
        return Err(ckpt_err(path, format!("tensor `{name}` holds {} values, expected {n}", values.len())));
    }
    Ok(values)
}

/// The value of counter tensor `name` (BatchNorm's `num_batches_tracked`): an I64 read exactly
/// (through f32 it lost its last digits past 2²⁴ batches), a float where a converted state dict
/// holds one, as long as it is a whole number ≥ 0.
fn read_counter(path: &Path, st: &SafeTensors, name: &str) -> Result<u64> {
    let t = st.tensor(name).map_err(|_| ckpt_err(path, format!("tensor `{name}` missing: the checkpoint is of another architecture")))?;
    let d = t.data();
    let not_a_count = |value: String| ckpt_err(path, format!("tensor `{name}` holds {value}, not a count"));
    if let (Dtype::I64, Ok(bytes)) = (t.dtype(), <[u8; 8]>::try_from(d)) {
        let value = i64::from_le_bytes(bytes);
        return u64::try_from(value).map_err(|_| not_a_count(value.to_string()));
    }
    let value = read_tensor(path, st, name, &[])?[0];
    if !(value >= 0.0 && value.fract() == 0.0 && value.is_finite()) {
        return Err(not_a_count(value.to_string()));
    }
    Ok(value as u64)
}

/// The architecture and configuration recorded in a `model.safetensors` (`None` where the file
/// has no such metadata: a state dict saved by PyTorch). `path` is the file or its checkpoint
/// directory; a missing file is a checkpoint error naming it ([`ModelFile::read`]).
pub fn read_metadata(path: &Path) -> Result<(Option<EncoderConfig>, Option<String>)> {
    ModelFile::read(path).map(|m| (m.arch, m.config_yaml))
}

/// A `model.safetensors` read once: its bytes and the metadata it records, so a caller that
/// needs both (evaluate) does not read the file again.
pub struct ModelFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
    /// The encoder's architecture (`None` for a state dict saved by PyTorch).
    pub arch: Option<EncoderConfig>,
    /// The training configuration as YAML, where the product wrote the file.
    pub config_yaml: Option<String>,
}

impl ModelFile {
    /// Reads a checkpoint directory's `model.safetensors`, or that file itself.
    pub fn read(path: &Path) -> Result<Self> {
        let given = path;
        let path = model_file(path);
        if !path.exists() {
            // A run directory given for its checkpoint (its `checkpoints/last` is what to give).
            let last = given.join("checkpoints").join("last");
            let hint = if last.is_dir() { format!(" (a run directory: its last checkpoint is {})", last.display()) } else { String::new() };
            return Err(ckpt_err(&path, format!("not found{hint}")));
        }
        let bytes = files::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(&path, format!("not a safetensors file: {e}")))?;
        let m = meta.metadata().clone().unwrap_or_default();
        let arch = match m.get("encoder_config") {
            Some(json) => {
                let arch: engine::EncoderConfig = serde_json::from_str(json).map_err(|e| ckpt_err(&path, format!("bad encoder_config metadata: {e}")))?;
                // Checked here, where the file can be named, rather than as a config key later.
                arch.validate().map_err(|e| ckpt_err(&path, format!("its encoder_config metadata is not a valid encoder: {e}")))?;
                Some(arch)
            }
            None => None,
        };
        Ok(ModelFile { arch, config_yaml: m.get("config_yaml").cloned(), path, bytes })
    }

    /// Loads weights, running statistics and counters into `enc` by name. The architecture
    /// must match the file's metadata where it has some; a PyTorch state dict without it loads
    /// where every name and shape matches.
    /// Consumes the file: its bytes are freed once the values are in the encoder.
    pub fn load_into<D: Device>(self, enc: &mut Encoder<D>) -> Result<()> {
        let file = &self.path;
        if let Some(arch) = &self.arch {
            if *arch != enc.cfg {
                return Err(ckpt_err(file, format!("holds another encoder than the run's: {}", encoder_differences(arch, &enc.cfg).join("; "))));
            }
        }
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| ckpt_err(file, e.to_string()))?;
        let specs = enc.tensors().to_vec();
        let expected: std::collections::BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(&n[..])) {
            return Err(ckpt_err(file, format!("tensor `{extra}` is not part of the {} encoder: another architecture", enc.cfg.kind())));
        }
        let mut params = vec![0.0; enc.params().len()];
        let mut buffers = enc.buffers_to_vec();
        let mut counters = enc.counters().to_vec();
        for s in &specs {
            if s.kind == TensorKind::Counter {
                counters[s.offset] = read_counter(file, &st, &s.name)?;
                continue;
            }
            let v = read_tensor(file, &st, &s.name, &s.shape)?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ckpt_err(file, format!("tensor `{}` holds NaN or infinite values", s.name)));
            }
            match s.kind {
                TensorKind::Param => params[s.offset..s.offset + s.len()].copy_from_slice(&v),
                _ => buffers[s.offset..s.offset + s.len()].copy_from_slice(&v),
            }
        }
        enc.set_params(&params)?;
        enc.set_buffers(&buffers)?;
        enc.set_counters(&counters)?;
        Ok(())
    }
}

/// Writes `dir` as a symbolic link to a fresh directory holding `files`, atomically (see the
/// module doc). A plain directory of that name (older checkpoints) is replaced the same way.
pub fn write_atomic_dir(dir: &Path, tag: &str, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let parent = files::parent_of(dir);
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).ok_or_else(|| ckpt_err(dir, "a checkpoint needs a directory name"))?;
    // A fresh directory name, never the one the link points to now (the same step saved twice
    // gets a suffix): the live checkpoint is untouched until the link has moved.
    let target_name = (0..).map(|i| if i == 0 { format!("{name}@{tag}") } else { format!("{name}@{tag}.{i}") }).find(|n| !parent.join(n).exists()).unwrap_or_default();
    let target = parent.join(&target_name);
    let tmp = files::tmp_path(&target);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        for (file, bytes) in files {
            files::write_synced(&tmp.join(file), bytes).map_err(|e| TrainError::io(tmp.join(file), e))?;
        }
        files::sync_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| TrainError::io(&target, e))
    })();
    if written.is_err() {
        // A full disk's partial checkpoint is not left on it.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    let previous = std::fs::read_link(dir).ok();
    files::replace_with_symlink(dir, Path::new(&target_name)).map_err(|e| TrainError::io(dir, e))?;
    files::sync_dir(parent).map_err(|e| TrainError::io(parent, e))?;
    match previous.as_deref().and_then(own_target) {
        Some(old) if old != target_name => {
            let _ = std::fs::remove_dir_all(parent.join(old));
        }
        _ => {}
    }
    Ok(())
}

/// The directory a checkpoint's link names where it is one a save made beside the link (a plain
/// name [`saved_name`] accepts), else `None`: a link a user pointed elsewhere (absolute, or out
/// through `..`) names something a replacement or a pruning must not delete.
fn own_target(link_target: &Path) -> Option<String> {
    let mut parts = link_target.components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(name)), None) => name.to_str().filter(|n| saved_name(n)).map(str::to_string),
        _ => None,
    }
}

/// Removes the checkpoint directories of `ckpt_dir` that no name links to: what a run killed
/// while removing a replaced checkpoint left (part of its files, or none). Only directories named
/// exactly as [`save`] names them (`last@s120`, `best-epoch=3-step=120@s120.1`) go, never `keep`
/// (a checkpoint given to `--resume` by its directory); a link protects its target whether it is
/// written relative or absolute. Best effort, like the removal it completes: returns the names
/// removed, for the caller to say. Call it while holding the run directory's lock.
pub fn remove_orphans(ckpt_dir: &Path, keep: Option<&Path>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(ckpt_dir) else { return Vec::new() };
    let entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
    let linked: std::collections::HashSet<std::ffi::OsString> = entries.iter().filter_map(|e| std::fs::read_link(e.path()).ok()?.file_name().map(|n| n.to_os_string())).collect();
    let keep = keep.and_then(|k| k.canonicalize().ok());
    let mut removed = Vec::new();
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let kept = keep.as_ref().is_some_and(|k| e.path().canonicalize().is_ok_and(|p| p == *k));
        if saved_name(&name) && is_dir && !linked.contains(&e.file_name()) && !kept && std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Whether `name` is one [`write_atomic_dir`] gives a checkpoint of [`save`]:
/// `<last|best-…>@s<step>`, with `.<n>` where that step was saved twice.
fn saved_name(name: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let Some((link, tag)) = name.rsplit_once('@') else { return false };
    let Some(tag) = tag.strip_prefix('s') else { return false };
    let step_ok = match tag.split_once('.') {
        Some((step, n)) => digits(step) && digits(n),
        None => digits(tag),
    };
    step_ok && (link == "last" || (link.starts_with("best-") && link.len() > 5))
}

/// Removes a named checkpoint: the link and the directory it points to.
pub fn remove(dir: &Path) {
    if let (Ok(target), Some(parent)) = (std::fs::read_link(dir), dir.parent()) {
        let _ = std::fs::remove_file(dir);
        // Only a directory a save made beside the link: never what a user's link names elsewhere.
        if let Some(own) = own_target(&target) {
            let _ = std::fs::remove_dir_all(parent.join(own));
        }
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Saves the encoder (and, unless `weights_only`, the optimizer state, the projection head and
/// `state`) as the named checkpoint `dir`.
pub fn save<D: Device>(dir: &Path, step: &ContrastiveStep<D>, state: &TrainingState, weights_only: bool) -> Result<()> {
    let enc = &step.encoder;
    let specs = enc.tensors();
    let params = enc.params_to_vec();
    let buffers = enc.buffers_to_vec();
    let arch_json = serde_json::to_string(&enc.cfg).map_err(|e| TrainError::Data(e.to_string()))?;
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string()), ("encoder".to_string(), enc.cfg.kind().to_string()), ("encoder_config".to_string(), arch_json.clone())]);
    meta.insert("config_yaml".into(), state.config_yaml.clone());
    let all = [TensorKind::Param, TensorKind::Buffer, TensorKind::Counter];
    let model = serialize(state_dict(specs, "", &params, &buffers, enc.counters(), &all), meta)?;
    let mut files = vec![("model.safetensors", model)];
    if !weights_only {
        let (m, v) = enc.moments_to_vec();
        let mut tensors = state_dict(specs, "exp_avg.", &m, &[], &[], &[TensorKind::Param]);
        tensors.extend(state_dict(specs, "exp_avg_sq.", &v, &[], &[], &[TensorKind::Param]));
        if let (Some(head), Some([hp, hm, hv])) = (step.head(), step.head_state()) {
            let hs = head.tensors();
            tensors.extend(state_dict(hs, "", &hp, &[], &[], &[TensorKind::Param]));
            tensors.extend(state_dict(hs, "exp_avg.", &hm, &[], &[], &[TensorKind::Param]));
            tensors.extend(state_dict(hs, "exp_avg_sq.", &hv, &[], &[], &[TensorKind::Param]));
        }
        let mut meta = HashMap::from([("encoder_config".to_string(), arch_json)]);
        let state = TrainingState { loss_scale: step.scaler.map(|s| (s.scale, s.good_steps)), ..state.clone() };
        meta.insert("training_state".into(), serde_json::to_string(&state).map_err(|e| TrainError::Data(e.to_string()))?);
        // The kernels the run measured fastest: a resumed run runs the same ones (bit-identical).
        meta.insert("kernel_plan".into(), enc.device.kernel_plan());
        files.push(("training_state.safetensors", serialize(tensors, meta)?));
    }
    write_atomic_dir(dir, &format!("s{}", state.step), &files)
}

/// Resolves a checkpoint argument: a checkpoint directory or its `model.safetensors`.
pub fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// Loads the weights of checkpoint `path` into `enc` ([`ModelFile::load_into`]).
pub fn load_weights<D: Device>(path: &Path, enc: &mut Encoder<D>) -> Result<()> {
    ModelFile::read(path)?.load_into(enc)
}

/// What [`load_full`] restored: the training state, and whether the checkpoint's projection head
/// was left behind (the run has none), which the caller says.
#[derive(Debug)]
pub struct Resumed {
    pub state: TrainingState,
    pub head_left_behind: bool,
}

/// Loads weights, both Adam moments, the projection head and the training state into `step`.
pub fn load_full<D: Device>(dir: &Path, step: &mut ContrastiveStep<D>) -> Result<Resumed> {
    let enc = &mut step.encoder;
    if dir.is_file() {
        return Err(ckpt_err(dir, "is a file: --resume takes the checkpoint's directory (e.g. RUN/checkpoints/last)"));
    }
    load_weights(dir, enc)?;
    let file = dir.join("training_state.safetensors");
    if !file.exists() {
        return Err(ckpt_err(dir, "holds weights only (saved with trainer.save_weights_only): it evaluates but cannot be resumed"));
    }
    let bytes = files::read(&file).map_err(|e| TrainError::io(&file, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(&file, e.to_string()))?;
    let specs = enc.tensors().to_vec();
    let n = enc.params().len();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for s in specs.iter().filter(|s| s.kind == TensorKind::Param) {
        m[s.offset..s.offset + s.len()].copy_from_slice(&read_tensor(&file, &st, &format!("exp_avg.{}", s.name), &s.shape)?);
        v[s.offset..s.offset + s.len()].copy_from_slice(&read_tensor(&file, &st, &format!("exp_avg_sq.{}", s.name), &s.shape)?);
    }
    // Adam's moments as the weights are checked: finite, and the second moment never negative (a
    // corrupt file named here, not as a NaN loss steps later).
    if let Some(i) = m.iter().position(|x| !x.is_finite()).or_else(|| v.iter().position(|x| !x.is_finite() || *x < 0.0)) {
        return Err(ckpt_err(&file, format!("its Adam state is corrupt (value {i}: not finite, or a negative second moment)")));
    }
    enc.set_moments(&m, &v)?;
    if let Some(head) = step.head() {
        let hs = head.tensors().to_vec();
        let n = head.arenas().params.len();
        let mut state = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for s in &hs {
            for (i, prefix) in ["", "exp_avg.", "exp_avg_sq."].iter().enumerate() {
                let name = format!("{prefix}{}", s.name);
                // Missing: the checkpoint has no head. Present with another shape: read_tensor's
                // own error names both shapes (a head of another projection_dim).
                let v = read_tensor(&file, &st, &name, &s.shape).map_err(|e| {
                    if st.tensor(&name).is_ok() {
                        e
                    } else {
                        ckpt_err(&file, format!("the run has a projection head and the checkpoint holds no `{name}`"))
                    }
                })?;
                state[i][s.offset..s.offset + s.len()].copy_from_slice(&v);
            }
        }
        if state.iter().any(|t| t.iter().any(|x| !x.is_finite())) || state[2].iter().any(|x| *x < 0.0) {
            return Err(ckpt_err(&file, "its projection head's weights or Adam state are corrupt (not finite, or a negative second moment)"));
        }
        step.set_head_state(&state)?;
    }
    let head_left_behind = step.head().is_none() && st.names().iter().any(|n| n.starts_with("projection."));
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(&file, e.to_string()))?;
    let json = meta.metadata().as_ref().and_then(|m| m.get("training_state")).ok_or_else(|| ckpt_err(&file, "no training state"))?;
    let state: TrainingState = serde_json::from_str(json).map_err(|e| ckpt_err(&file, format!("bad training state: {e}")))?;
    // Counters past any real run are a corrupt (or hand-edited) state: the next step would
    // overflow them.
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let (checks, epoch, batch) = (count(state.checks_without_improvement), count(state.epoch), count(state.batch));
    for (field, value) in
        [("step", state.step), ("micro_step", state.micro_step), ("epoch", epoch), ("batch", batch), ("checks_without_improvement", checks), ("epoch_sums.batches", state.epoch_sums.batches)]
    {
        if value > MAX_STEPS {
            return Err(ckpt_err(&file, format!("its training state's `{field}` is {value}, past the {MAX_STEPS} steps any run can reach: the state is corrupt")));
        }
    }
    // InfoNCE's loss is ≥ 0 and a batch's accuracy in [0, 1]; no batches, no loss: sums outside those no run makes.
    let sums = state.epoch_sums;
    if !(sums.loss.is_finite() && sums.loss >= 0.0 && (sums.batches > 0 || sums.loss == 0.0) && sums.accuracy >= 0.0 && sums.accuracy <= sums.batches as f64) {
        return Err(ckpt_err(
            &file,
            format!("its training state's `epoch_sums` (loss {}, accuracy {} over {} batches) are not sums a run makes: the state is corrupt", sums.loss, sums.accuracy, sums.batches),
        ));
    }
    // fp16's loss scale goes on where the run left it; a run of another precision starts at
    // the scaler's first scale.
    if let (Some(scaler), Some((scale, good_steps))) = (step.scaler.as_mut(), state.loss_scale) {
        // Every scale the scaler reaches is a power of two (no mantissa bits) between its floor
        // and its ceiling.
        let reachable = (engine::LossScaler::MIN_SCALE..=engine::LossScaler::MAX_SCALE).contains(&scale) && scale.to_bits() & 0x007F_FFFF == 0;
        if !reachable || good_steps >= engine::LossScaler::GROWTH_INTERVAL {
            return Err(ckpt_err(&file, format!("its training state's `loss_scale` ({scale}, {good_steps} good steps) is outside what the scaler reaches: the state is corrupt")));
        }
        *scaler = engine::LossScaler { scale, good_steps };
    }
    if let Some(plan) = meta.metadata().as_ref().and_then(|m| m.get("kernel_plan")) {
        step.encoder.device.pin_kernel_plan(plan).map_err(|e| ckpt_err(&file, e))?;
    }
    Ok(Resumed { state, head_left_behind })
}

/// What differs between a checkpoint's encoder and a run's, by the config key that sets it:
/// `model.dropout: 0.1 in the checkpoint, 0.5 in the run`.
fn encoder_differences(saved: &EncoderConfig, run: &EncoderConfig) -> Vec<String> {
    if saved.kind() != run.kind() {
        return vec![format!("model.name: {} in the checkpoint, {} in the run", saved.kind(), run.kind())];
    }
    let key = |field: &str| match field {
        "window" => "the encoder's window (data.window_size; its W/2 bins with data.input: spectrum)".to_string(),
        "channels" => "channels (the store's)".to_string(),
        "embed" => "model.embedding_dim".to_string(),
        "patch_size_l" => "model.patch_size_L".to_string(),
        "patch_size_c" => "model.patch_size_C".to_string(),
        "d_model" => "model.d_model (the width; model.output_dim where given)".to_string(),
        "d_ff" => "model.d_ff (twice the width unless given)".to_string(),
        other => format!("model.{other}"),
    };
    // Through the JSON text, where an f32 prints as written (0.1), not widened (0.10000000149…).
    let leaves = |c: &EncoderConfig| {
        let mut out = Vec::new();
        let value = serde_json::to_string(c).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        flatten(&value, &mut out);
        out
    };
    let run_leaves: HashMap<String, serde_json::Value> = leaves(run).into_iter().collect();
    let differences: Vec<String> = leaves(saved)
        .into_iter()
        .filter_map(|(field, va)| {
            let vb = run_leaves.get(&field)?;
            (va != *vb).then(|| format!("{}: {va} in the checkpoint, {vb} in the run", key(&field)))
        })
        .collect();
    if differences.is_empty() {
        // Not expected (equal fields are equal configs); said rather than left empty.
        return vec![format!("{saved:?} in the checkpoint, {run:?} in the run")];
    }
    differences
}

/// The leaves of a JSON value, each with the name of the field that holds it, in order.
fn flatten(v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    if let serde_json::Value::Object(map) = v {
        for (k, x) in map {
            match x {
                serde_json::Value::Object(_) => flatten(x, out),
                leaf => out.push((k.clone(), leaf.clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replacement or a pruning deletes only what a save made beside the link: not what a
    /// user's link names by an absolute path or through `..`.
    #[test]
    fn only_a_saved_directory_beside_its_link_is_its_own() {
        assert_eq!(own_target(Path::new("last@s12")), Some("last@s12".to_string()));
        assert_eq!(own_target(Path::new("best-epoch=1-step=4@s4.1")), Some("best-epoch=1-step=4@s4.1".to_string()));
        for not_ours in ["/runs/a/checkpoints/last@s12", "../other/checkpoints/last@s12", "./last@s12", "sub/last@s12", "mine", ""] {
            assert_eq!(own_target(Path::new(not_ours)), None, "{not_ours}");
        }
    }

    #[test]
    fn only_the_names_a_save_gives_are_checkpoint_names() {
        for yes in ["last@s120", "last@s0", "best-epoch=3-step=120@s120", "best-epoch=3-step=120@s120.1", "best-x@y@s5"] {
            assert!(saved_name(yes), "{yes}");
        }
        for no in ["last", "last@s", "last@s12-keep", "last@120", "last@s1.", "best-@s1", "mine@s1", "last@s1.2.3", "notes"] {
            assert!(!saved_name(no), "{no}");
        }
    }
}
