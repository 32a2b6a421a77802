//! The `cnn` and `isfm` encoders against PyTorch's `encoders_ref.py`, from fixtures written by
//! `scripts/make_encoder_fixtures.py` (so CI needs no torch): same weights and buffers under the
//! same names, same inputs (and patch starts) → the same embeddings in training mode, the same
//! gradient of `Σ z ⊙ r` for every parameter, the same running statistics after the forward, and
//! the same embeddings in evaluation mode — each within 1e-4 relative (vector norm).

use serde_json::Value;

use engine::*;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("a list").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("a list").iter().map(|x| x.as_u64().expect("an index") as usize).collect()
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let d: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    d / n.max(1e-12)
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture present")).expect("fixture JSON")
}

/// The encoder config of a fixture's constructor arguments.
fn config(c: &Value) -> (EncoderConfig, usize) {
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("config.{k}")) as usize;
    let arch = match c["kind"].as_str() {
        Some("cnn") => Arch::Cnn(CnnConfig { widths: usizes(&c["widths"]), ..CnnConfig::default() }),
        Some("isfm") => Arch::Isfm(IsfmConfig {
            num_patches: n("num_patches"),
            patch_size_l: n("patch_size_L"),
            patch_size_c: n("patch_size_C"),
            d_model: n("d_model"),
            num_heads: n("num_heads"),
            e_layers: n("e_layers"),
            d_ff: n("d_ff"),
            dropout: c["dropout"].as_f64().unwrap_or(0.0) as f32,
            activation: c["activation"].as_str().unwrap_or("gelu").parse().expect("activation"),
        }),
        other => panic!("unknown kind {other:?}"),
    };
    (EncoderConfig { arch, window: n("window"), channels: n("channels"), embed: n("embedding_dim") }, 0)
}

/// A flat arena in the encoder's layout from tensors by name (every name present, nothing else).
fn arena(enc_specs: &[TensorSpec], kind: TensorKind, named: &Value, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    let obj = named.as_object().expect("named tensors");
    let ours: Vec<&TensorSpec> = enc_specs.iter().filter(|s| s.kind == kind).collect();
    for s in &ours {
        let v = floats(obj.get(&s.name).unwrap_or_else(|| panic!("PyTorch has no tensor `{}`", s.name)));
        assert_eq!(v.len(), s.len(), "{}: {} values, the engine's shape {:?}", s.name, v.len(), s.shape);
        out[s.offset..s.offset + s.len()].copy_from_slice(&v);
    }
    out
}

fn check(fixture: &str) {
    let f = load(fixture);
    let (cfg, _) = config(&f["config"]);
    let b = f["inputs"]["batch"].as_u64().expect("batch") as usize;
    let mut enc = cfg.init(CpuDevice::new(), b, 0).expect("init");
    let specs = enc.tensors().to_vec();
    // The same names as PyTorch's state_dict, no more, no fewer (load_state_dict(strict=True)).
    let torch_names: std::collections::BTreeSet<String> = f["params"].as_object().unwrap().keys().chain(f["buffers_before"].as_object().unwrap().keys()).cloned().collect();
    let our_names: std::collections::BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
    assert_eq!(our_names, torch_names, "{fixture}: tensor names");
    let n_params = enc.params().len();
    let n_buffers = enc.buffers_to_vec().len();
    enc.set_params(&arena(&specs, TensorKind::Param, &f["params"], n_params)).unwrap();
    enc.set_buffers(&arena(&specs, TensorKind::Buffer, &f["buffers_before"], n_buffers)).unwrap();
    enc.set_input(0, &floats(&f["inputs"]["x"])).unwrap();
    if let Some(fs) = f["inputs"].get("fs") {
        enc.set_sample_rates(0, &floats(fs)).unwrap();
        enc.set_patch_starts(Some((&usizes(&f["inputs"]["sL"]), &usizes(&f["inputs"]["sC"])))).unwrap();
    }
    let z = enc.forward(b, 1, Mode::Train { key: 1 });
    let mut zv = vec![0.0; z.len()];
    enc.device.download(z, &mut zv);
    let e = rel(&zv, &floats(&f["z"]));
    assert!(e < 1e-4, "{fixture}: training-mode embeddings differ by {e:e}");
    let dz = enc.dz_buffer(b);
    enc.device.upload(dz, &floats(&f["r"]));
    enc.backward(b, dz, false);
    let grads = enc.grads_to_vec();
    // Some gradients are zero in exact arithmetic — a convolution's bias before BatchNorm, the
    // last LayerNorm's affine before BatchNorm (the batch statistics cancel them) — and both
    // sides hold rounding noise there: each tensor's error is measured against the larger of its
    // own norm and 1e-3 of the whole gradient's (f32 sums of ~10³ terms leave ~1e-6 there).
    let all = grads.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    for s in specs.iter().filter(|s| s.kind == TensorKind::Param) {
        let want = floats(&f["grads"][&s.name]);
        let got = &grads[s.offset..s.offset + s.len()];
        let diff = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        let e = diff / norm.max(1e-3 * all);
        assert!(e < 1e-4, "{fixture}: gradient of {} differs by {e:e} (norm {norm:e}, whole gradient {all:e})", s.name);
    }
    let buffers = enc.buffers_to_vec();
    for s in specs.iter().filter(|s| s.kind == TensorKind::Buffer) {
        let e = rel(&buffers[s.offset..s.offset + s.len()], &floats(&f["buffers_after"][&s.name]));
        assert!(e < 1e-5, "{fixture}: {} after the forward differs by {e:e}", s.name);
    }
    for (s, &count) in specs.iter().filter(|s| s.kind == TensorKind::Counter).zip(enc.counters()) {
        assert_eq!(count as f32, floats(&f["buffers_after"][&s.name])[0], "{fixture}: {}", s.name);
    }
    if f["inputs"].get("fs").is_some() {
        enc.set_patch_starts(None).unwrap();
    }
    let z = enc.forward(b, 1, Mode::Eval);
    enc.device.download(z, &mut zv);
    let e = rel(&zv, &floats(&f["z_eval"]));
    assert!(e < 1e-4, "{fixture}: evaluation-mode embeddings differ by {e:e}");
    eprintln!("{fixture}: embeddings, {} gradients, running statistics and evaluation output match PyTorch {}", specs.iter().filter(|s| s.kind == TensorKind::Param).count(), f["torch"]);
}

#[test]
fn cnn_matches_pytorch() {
    check("cnn_reference.json");
}

#[test]
fn isfm_matches_pytorch() {
    check("isfm_reference.json");
}
