//! Checkpoints: a directory holding
//!
//! - `model.safetensors`: the encoder's weights under the names of the equivalent PyTorch
//!   `nn.Sequential` (`0.weight` `[out, in]`, `0.bias`, `3.weight`, …), so
//!   `model.load_state_dict(safetensors.torch.load_file(path))` works directly; the
//!   architecture is in the file's metadata;
//! - `training_state.safetensors`: Adam's two moments (`exp_avg.<name>`, `exp_avg_sq.<name>`)
//!   and, in its metadata, the step counters, epoch position, seed, early-stopping state and the
//!   resolved configuration.
//!
//! A checkpoint is written into a temporary directory, every file synced, then renamed into
//! place: a crash leaves the previous checkpoint or the new one, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::{Device, Encoder, EncoderConfig, EncoderKind};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Result, TrainError};

/// Where training stood when a checkpoint was written.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training forward passes taken (keys the dropout masks).
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
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// PyTorch names of each layer's weight and bias, in arena order.
pub fn tensor_names(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for l in cfg.layers() {
        out.push((format!("{}.weight", l.torch_index), vec![l.out_features, l.in_features]));
        out.push((format!("{}.bias", l.torch_index), vec![l.out_features]));
    }
    out
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serializes a flat arena as named tensors (the layout of `tensor_names`), with metadata.
fn arena_to_safetensors(cfg: &EncoderConfig, prefix: &str, arena: &[f32], extra: Vec<(String, Vec<usize>, Vec<f32>)>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut off = 0;
    for (name, shape) in tensor_names(cfg) {
        let n: usize = shape.iter().product();
        owned.push((format!("{prefix}{name}"), shape, bytes_of(&arena[off..off + n])));
        off += n;
    }
    for (name, shape, values) in extra {
        owned.push((name, shape, bytes_of(&values)));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TrainError::Data(format!("safetensors: {e}")))?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| TrainError::Data(format!("safetensors: {e}")))
}

/// Reads named tensors back into a flat arena in `tensor_names` order; shapes must match.
fn safetensors_to_arena(path: &Path, st: &SafeTensors, cfg: &EncoderConfig, prefix: &str) -> Result<Vec<f32>> {
    let mut arena = Vec::with_capacity(cfg.param_count());
    for (name, shape) in tensor_names(cfg) {
        let full = format!("{prefix}{name}");
        let t = st.tensor(&full).map_err(|_| ckpt_err(path, format!("tensor `{full}` missing: the checkpoint is of another architecture")))?;
        if t.shape() != shape.as_slice() || t.dtype() != Dtype::F32 {
            return Err(ckpt_err(path, format!("tensor `{full}` is {:?} {:?}, the encoder needs F32 {shape:?}: another architecture", t.dtype(), t.shape())));
        }
        arena.extend(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    Ok(arena)
}

fn arch_metadata(cfg: &EncoderConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".into(), "pt".into()),
        ("encoder".into(), cfg.kind.to_string()),
        ("input".into(), cfg.input.to_string()),
        ("embed".into(), cfg.embed.to_string()),
    ])
}

/// The architecture recorded in a `model.safetensors`.
pub fn read_architecture(path: &Path) -> Result<EncoderConfig> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(path, format!("not a safetensors file: {e}")))?;
    let m = meta.metadata().as_ref().ok_or_else(|| ckpt_err(path, "no architecture metadata"))?;
    let get = |k: &str| m.get(k).ok_or_else(|| ckpt_err(path, format!("metadata has no `{k}`")));
    let kind: EncoderKind = get("encoder")?.parse().map_err(|e: engine::EngineError| ckpt_err(path, e.to_string()))?;
    let num = |k: &str| -> Result<usize> { get(k)?.parse().map_err(|_| ckpt_err(path, format!("metadata `{k}` is not a number"))) };
    Ok(EncoderConfig { kind, input: num("input")?, embed: num("embed")? })
}

/// Writes `dir` atomically: everything into `dir.tmp-<pid>`, synced, then renamed.
pub fn write_atomic_dir(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    use std::io::Write;
    let tmp = signal::tmp_path(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    for (name, bytes) in files {
        let p = tmp.join(name);
        let mut f = std::fs::File::create(&p).map_err(|e| TrainError::io(&p, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| TrainError::io(&p, e))?;
    }
    if dir.exists() {
        let old = dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    }
    Ok(())
}

/// Saves weights, optimizer state and `state` into the checkpoint directory `dir`.
pub fn save<D: Device>(dir: &Path, enc: &Encoder<D>, state: &TrainingState) -> Result<()> {
    let cfg = enc.cfg;
    let model = arena_to_safetensors(&cfg, "", &enc.params_to_vec(), Vec::new(), arch_metadata(&cfg))?;
    let mut m = vec![0.0; enc.adam_m.len];
    let mut v = vec![0.0; enc.adam_v.len];
    enc.device.download(enc.adam_m, &mut m);
    enc.device.download(enc.adam_v, &mut v);
    let mut meta = arch_metadata(&cfg);
    meta.insert("training_state".into(), serde_json::to_string(state).map_err(|e| TrainError::Data(e.to_string()))?);
    let mut extra = Vec::new();
    let mut off = 0;
    for (name, shape) in tensor_names(&cfg) {
        let n: usize = shape.iter().product();
        extra.push((format!("exp_avg_sq.{name}"), shape, v[off..off + n].to_vec()));
        off += n;
    }
    let opt = arena_to_safetensors(&cfg, "exp_avg.", &m, extra, meta)?;
    write_atomic_dir(dir, &[("model.safetensors", model), ("training_state.safetensors", opt)])
}

/// Resolves a checkpoint argument: a checkpoint directory or its `model.safetensors`.
pub fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() }
}

/// Loads weights into `enc` (whose architecture must match).
pub fn load_weights<D: Device>(path: &Path, enc: &mut Encoder<D>) -> Result<()> {
    let file = model_file(path);
    if !file.exists() {
        return Err(ckpt_err(&file, "not found"));
    }
    let arch = read_architecture(&file)?;
    if arch != enc.cfg {
        return Err(ckpt_err(&file, format!("holds {} with input {} and embedding {}, expected {} with input {} and embedding {}", arch.kind, arch.input, arch.embed, enc.cfg.kind, enc.cfg.input, enc.cfg.embed)));
    }
    let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(&file, e.to_string()))?;
    let arena = safetensors_to_arena(&file, &st, &enc.cfg, "")?;
    enc.set_params(&arena)?;
    Ok(())
}

/// Loads weights, both Adam moments and the training state.
pub fn load_full<D: Device>(dir: &Path, enc: &mut Encoder<D>) -> Result<TrainingState> {
    load_weights(dir, enc)?;
    let file = dir.join("training_state.safetensors");
    let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(&file, e.to_string()))?;
    let m = safetensors_to_arena(&file, &st, &enc.cfg, "exp_avg.")?;
    let v = safetensors_to_arena(&file, &st, &enc.cfg, "exp_avg_sq.")?;
    enc.device.upload(enc.adam_m, &m);
    enc.device.upload(enc.adam_v, &v);
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(&file, e.to_string()))?;
    let json = meta.metadata().as_ref().and_then(|m| m.get("training_state")).ok_or_else(|| ckpt_err(&file, "no training state"))?;
    serde_json::from_str(json).map_err(|e| ckpt_err(&file, format!("bad training state: {e}")))
}
