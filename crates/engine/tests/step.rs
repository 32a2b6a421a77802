//! InfoNCE on hand-computed and edge cases, Adam/AdamW against PyTorch, and the toy that must learn.

use engine::*;

mod common;

fn infonce(z: &[f32], b: usize, d: usize, tau: f32, symmetric: bool) -> (InfoNceOut, Vec<f32>) {
    let mut dev = CpuDevice::new();
    let (zv, dzv) = (dev.alloc(z.len()).unwrap(), dev.alloc(z.len()).unwrap());
    dev.upload(zv, z);
    let out = dev.infonce(zv, Some(dzv), b, d, tau, symmetric, 1.0);
    (out, dev.slice(dzv).to_vec())
}

#[test]
fn infonce_hand_computed_case() {
    // z_a = z_p = identity rows, τ = 1: S = I, each row loses ln(e + 1) − 1.
    let z = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    let (out, _) = infonce(&z, 2, 2, 1.0, false);
    let want = ((1.0f64).exp() + 1.0).ln() - 1.0;
    assert!((out.loss as f64 - want).abs() < 1e-6, "{} vs {want}", out.loss);
    assert_eq!(out.accuracy, 1.0);
    // Rows are normalized first: scaling a row changes nothing.
    let z2 = [3.0, 0.0, 0.0, 0.5, 7.0, 0.0, 0.0, 2.0];
    assert!((infonce(&z2, 2, 2, 1.0, false).0.loss - out.loss).abs() < 1e-6);
    // Symmetric: S is symmetric here, so both directions agree.
    assert!((infonce(&z, 2, 2, 1.0, true).0.loss - out.loss).abs() < 1e-6);
}

#[test]
fn infonce_identical_rows_give_ln_b_and_no_gradient_direction() {
    let (b, d) = (8, 4);
    let z: Vec<f32> = (0..2 * b).flat_map(|_| [0.5, -1.0, 2.0, 0.25]).collect();
    let (out, dz) = infonce(&z, b, d, 0.07, false);
    assert!((out.loss - (b as f32).ln()).abs() < 1e-5, "{}", out.loss);
    // Ties go to the first column: only row 0 counts as correct.
    assert_eq!(out.accuracy, 1.0 / b as f32);
    assert!(dz.iter().all(|g| g.abs() < 1e-5), "all-equal similarities have zero gradient");
}

#[test]
fn infonce_is_stable_at_tiny_temperature() {
    let z = [1.0, 0.2, -0.3, 1.0, 0.9, 0.1, -0.2, 1.1];
    let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    for tau in [1.0, 1e-1, 1e-2, 1e-3, 1e-4] {
        let (out, dz) = infonce(&z, 2, 2, tau, true);
        assert!(out.loss.is_finite() && dz.iter().all(|g| g.is_finite()), "tau {tau}: {out:?}");
        assert_eq!(out.accuracy, 1.0);
        // The value, against the f64 reference: exp of a similarity gap over τ is far below
        // f32's range at the smallest τ, where the loss rounds to 0.
        let want = common::infonce64(&z64, 2, 2, tau as f64, true);
        assert!((out.loss as f64 - want).abs() <= 1e-6 + 1e-4 * want, "tau {tau}: {} vs {want}", out.loss);
    }
    assert!(common::infonce64(&z64, 2, 2, 1.0, true) > 0.1, "the largest τ tests a loss far from zero");
}

#[test]
fn infonce_single_pair_is_zero_loss() {
    let (out, dz) = infonce(&[1.0, 2.0, -1.0, 0.5], 1, 2, 0.07, false);
    assert_eq!(out.loss, 0.0);
    assert_eq!(out.accuracy, 1.0);
    assert!(dz.iter().all(|&g| g == 0.0));
}

#[test]
fn temperature_must_be_positive_and_its_inverse_finite() {
    for t in [0.0, -0.1, f32::NAN, f32::INFINITY, 1e-45, 1e-31] {
        let e = InfoNceConfig { temperature: t, symmetric: false }.validate().unwrap_err().to_string();
        assert!(e.contains("temperature"), "{t}: {e}");
    }
    // The smallest accepted one keeps the loss and its gradient finite, on pairs the wrong way
    // round (anchors [1, 0], [0, 1]; positives swapped), where both are as large as they get.
    let z = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
    assert!(InfoNceConfig { temperature: engine::loss::MIN_TEMPERATURE, symmetric: true }.validate().is_ok());
    let (out, dz) = infonce(&z, 2, 2, engine::loss::MIN_TEMPERATURE, true);
    assert!(out.loss.is_finite() && out.loss > 1e29 && dz.iter().all(|g| g.is_finite()) && dz.iter().any(|g| g.abs() > 1e29), "{out:?} {dz:?}");
}

/// Three steps of f(p) = ½ Σ aᵢ pᵢ² from p = [1, −2, 3, 0.5], a = [1, 2, 3, 4], lr 0.1. Expected
/// values from PyTorch 2.15:
/// ```python
/// p = torch.tensor([1.0, -2.0, 3.0, 0.5], requires_grad=True); a = torch.tensor([1.0, 2.0, 3.0, 4.0])
/// opt = torch.optim.Adam([p], lr=0.1)        # or weight_decay=0.1, or torch.optim.AdamW(..., weight_decay=0.1)
/// for _ in range(3):
///     opt.zero_grad(); (0.5 * (a * p * p).sum()).backward(); opt.step()
/// ```
/// and again with `a = torch.tensor([-0.05, 1.0, 0.02, -0.01])`: there the gradients of the
/// first and last weights are smaller than Adam's coupled L2 term and of the other sign, so that
/// decay turns those weights round (with the first `a`, Adam's normalisation hides it: the
/// coupled case moves each weight by under 10⁻⁷, within the tolerance).
#[test]
#[allow(clippy::excessive_precision)] // PyTorch's printed values, digit for digit
fn adam_and_adamw_reproduce_pytorch() {
    type Case = (f32, bool, [f32; 4]);
    let fixtures: [([f32; 4], [Case; 3]); 2] = [
        (
            [1.0, 2.0, 3.0, 4.0],
            [
                (0.0, false, [0.701586306, -1.700623393, 2.700381517, 0.204871252]),
                (0.1, false, [0.701586246, -1.700623393, 2.700381517, 0.204871267]),
                (0.1, true, [0.675101280, -1.644368649, 2.614406109, 0.193415612]),
            ],
        ),
        (
            [-0.05, 1.0, 0.02, -0.01],
            [
                (0.0, false, [1.300490022, -1.700623393, 2.700381517, 0.800294220]),
                (0.1, false, [0.701586366, -1.700623393, 2.700381517, 0.204871356]),
                (0.1, true, [1.267784357, -1.644368649, 2.614406109, 0.782497287]),
            ],
        ),
    ];
    for (a, cases) in fixtures {
        for (wd, decoupled, want) in cases {
            let mut dev = CpuDevice::new();
            let (p, g, m, v) = (dev.alloc(4).unwrap(), dev.alloc(4).unwrap(), dev.alloc(4).unwrap(), dev.alloc(4).unwrap());
            dev.upload(p, &[1.0, -2.0, 3.0, 0.5]);
            let h = AdamHyper { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, decoupled };
            for t in 1..=3 {
                let pv = dev.slice(p).to_vec();
                let grad: Vec<f32> = pv.iter().zip(&a).map(|(x, a)| a * x).collect();
                dev.upload(g, &grad);
                dev.adam(p, g, m, v, h, t, 1.0);
            }
            for (got, want) in dev.slice(p).iter().zip(want) {
                assert!((got - want).abs() < 2e-6, "a {a:?}, wd {wd} decoupled {decoupled}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn clipping_scales_the_update_to_the_max_norm() {
    // Through the step's own optimizer pass: the norm it reports is the gradients' global norm,
    // and Adam's first moment sees the gradient scaled by max / (norm + 1e-6) where the norm is
    // above the max, unscaled where it is below; a non-finite norm skips the update.
    let cfg = EncoderConfig::new(EncoderKind::MlpSimple, 64, 1);
    for (max, clips) in [(0.5f32, true), (1e6, false)] {
        let enc = cfg.init(CpuDevice::new(), 4, 0).unwrap();
        let opt = OptimizerConfig { clip_norm: Some(max), ..Default::default() };
        let mut st = ContrastiveStep::new(enc, 2, InfoNceConfig::default(), opt, 0).unwrap();
        let n = st.encoder.grads().len();
        let grads: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5).collect();
        let want_norm = grads.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
        let g = st.encoder.grads();
        st.encoder.device.upload(g, &grads);
        let (norm, skipped) = st.optimizer_step(1e-3);
        let norm = norm.expect("clipping reports the norm") as f64;
        assert!(skipped == Update::Applied && (norm - want_norm).abs() <= 1e-5 * want_norm, "norm {norm} vs {want_norm}");
        let scale = if clips { max as f64 / (want_norm + 1e-6) } else { 1.0 };
        assert_eq!(clips, scale < 1.0, "the test's own premise");
        let (m, _) = st.encoder.moments_to_vec();
        for (i, (&m, &g)) in m.iter().zip(&grads).enumerate() {
            let want = 0.1 * g as f64 * scale;
            assert!((m as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(), "max {max}, moment {i}: {m} vs {want}");
        }
    }
    let enc = cfg.init(CpuDevice::new(), 4, 0).unwrap();
    let opt = OptimizerConfig { clip_norm: Some(1.0), ..Default::default() };
    let mut st = ContrastiveStep::new(enc, 2, InfoNceConfig::default(), opt, 0).unwrap();
    let before = st.encoder.params_to_vec();
    let mut grads = vec![0.1; st.encoder.grads().len()];
    grads[3] = f32::NAN;
    let g = st.encoder.grads();
    st.encoder.device.upload(g, &grads);
    let (norm, skipped) = st.optimizer_step(1e-3);
    assert!(skipped == Update::NonFinite && norm.is_some_and(f32::is_nan), "a NaN gradient skips the update: {norm:?}");
    assert_eq!(st.encoder.params_to_vec(), before, "weights untouched");
}

/// Per-Id sinusoids of distinct frequency + noise (as torch_ref.py's sanity check): two random
/// windows of the same Id are a positive pair.
struct Toy {
    sig: Vec<Vec<f32>>,
}

impl Toy {
    fn new(n_ids: usize, len: usize, seed: u64) -> Self {
        let mut rng = seed;
        let mut next = || {
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            engine::device::dropout_hash(rng, 1) as f64 / 4_294_967_296.0
        };
        let sig = (0..n_ids)
            .map(|i| {
                let f = 0.005 + (0.12 - 0.005) * i as f64 / (n_ids - 1) as f64;
                let ph = next() * std::f64::consts::TAU;
                let raw: Vec<f64> = (0..len)
                    .map(|t| {
                        let noise = (-2.0 * (next() + 1e-12).ln()).sqrt() * (std::f64::consts::TAU * next()).cos();
                        (std::f64::consts::TAU * f * t as f64 + ph).sin() + 0.3 * noise
                    })
                    .collect();
                let m = raw.iter().sum::<f64>() / len as f64;
                let s = (raw.iter().map(|x| (x - m).powi(2)).sum::<f64>() / len as f64).sqrt();
                raw.iter().map(|x| ((x - m) / s) as f32).collect()
            })
            .collect();
        Toy { sig }
    }

    /// A batch of `b` distinct Ids, windows drawn from rows `lo..hi`.
    fn batch(&self, b: usize, w: usize, lo: usize, hi: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let h = |i: u64| engine::device::dropout_hash(seed, i) as usize;
        let mut ids: Vec<usize> = (0..self.sig.len()).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, h(i as u64) % (i + 1));
        }
        let (mut a, mut p) = (Vec::new(), Vec::new());
        for (k, &id) in ids[..b].iter().enumerate() {
            let span = hi - lo - w + 1;
            let s0 = lo + h(1000 + 2 * k as u64) % span;
            let mut s1 = lo + h(1001 + 2 * k as u64) % span;
            if s1 == s0 {
                s1 = lo + (s1 - lo + 1) % span;
            }
            a.extend_from_slice(&self.sig[id][s0..s0 + w]);
            p.extend_from_slice(&self.sig[id][s1..s1 + w]);
        }
        (a, p)
    }
}

#[test]
fn learns_the_sinusoid_toy_in_200_steps() {
    learns_the_toy(EncoderConfig::new(EncoderKind::MlpMedium, 512, 1), Precision::Fp32, 200, 0.5, 0.9);
}

#[test]
fn cnn_learns_the_sinusoid_toy_in_200_steps() {
    learns_the_toy(EncoderConfig::new(EncoderKind::Cnn, 512, 1), Precision::Fp32, 200, 0.5, 0.9);
}

#[test]
fn isfm_learns_the_sinusoid_toy_in_300_steps() {
    // (PyTorch's ISFM on the same toy: 4.96 → 0.57 in 300 steps; it learns slower than the CNN.)
    learns_the_toy(toy_isfm(), Precision::Fp32, 300, 1.0, 0.8);
}

fn toy_isfm() -> EncoderConfig {
    toy_isfm_of(512)
}

fn toy_isfm_of(window: usize) -> EncoderConfig {
    let isfm = IsfmConfig { num_patches: 16, patch_size_l: 32, d_model: 32, num_heads: 4, e_layers: 1, d_ff: 64, ..IsfmConfig::default() };
    EncoderConfig { arch: Arch::Isfm(isfm), window, channels: 1, embed: 128 }
}

/// bf16 products (operands rounded, fp32 accumulation) learn the toy as fp32 does, every encoder.
#[test]
fn every_encoder_learns_the_toy_with_bf16_products() {
    if CpuDevice::new().set_precision(Precision::Bf16).is_err() {
        eprintln!("SKIPPED: bf16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
        return;
    }
    learns_the_toy(EncoderConfig::new(EncoderKind::MlpMedium, 512, 1), Precision::Bf16, 200, 0.5, 0.9);
    learns_the_toy(EncoderConfig::new(EncoderKind::Cnn, 512, 1), Precision::Bf16, 200, 0.5, 0.9);
    learns_the_toy(toy_isfm(), Precision::Bf16, 300, 1.0, 0.8);
}

/// fp16 products (operands rounded to binary16, fp32 accumulation) with dynamic loss scaling: the
/// engine runs them on any CPU with the packed kernel (the trainer offers them where the CPU has
/// AVX512-FP16, or with CID_CPU_FP16=emulate).
#[test]
fn every_encoder_learns_the_toy_with_fp16_products_and_loss_scaling() {
    if CpuDevice::new().set_precision(Precision::Fp16).is_err() {
        eprintln!("SKIPPED: fp16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
        return;
    }
    learns_the_toy(EncoderConfig::new(EncoderKind::MlpMedium, 512, 1), Precision::Fp16, 200, 0.5, 0.9);
    learns_the_toy(EncoderConfig::new(EncoderKind::Cnn, 512, 1), Precision::Fp16, 200, 0.5, 0.9);
    learns_the_toy(toy_isfm(), Precision::Fp16, 300, 1.0, 0.8);
}

/// The loss scaler through the step's own optimizer pass: gradients that overflow at the current
/// scale leave the weights, Adam's state and the step count untouched and halve the scale;
/// finite ones are unscaled before Adam (its first moment sees the true gradient), and 2000 of
/// them in a row double the scale; a scale driven to its floor is a diverged run.
#[test]
fn the_loss_scaler_skips_overflows_unscales_and_grows() {
    let cfg = EncoderConfig::new(EncoderKind::MlpSimple, 64, 1);
    let mut enc = cfg.init(CpuDevice::new(), 4, 0).unwrap();
    if enc.device.set_precision(Precision::Fp16).is_err() {
        eprintln!("SKIPPED: fp16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
        return;
    }
    let mut st = ContrastiveStep::new(enc, 2, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
    assert_eq!(st.scaler, Some(LossScaler::new()), "fp16 products turn loss scaling on");
    let n = st.encoder.grads().len();
    let before = (st.encoder.params_to_vec(), st.encoder.moments_to_vec());
    // An overflow (as fp16 rounding gives: an infinity among the scaled gradients).
    let mut grads = vec![0.25 * LossScaler::INITIAL_SCALE; n];
    grads[7] = f32::INFINITY;
    let g = st.encoder.grads();
    st.encoder.device.upload(g, &grads);
    let (_, update) = st.optimizer_step(1e-3);
    assert_eq!(update, Update::ScaledDown);
    assert_eq!((st.encoder.params_to_vec(), st.encoder.moments_to_vec()), before, "weights and moments untouched");
    assert_eq!((st.step, st.scaler.unwrap().scale), (0, LossScaler::INITIAL_SCALE / 2.0));
    // Finite scaled gradients: Adam sees them divided by the scale in force.
    let scale = st.scaler.unwrap().scale;
    let grads: Vec<f32> = (0..n).map(|i| (((i * 37) % 11) as f32 * 0.1 - 0.5) * scale).collect();
    st.encoder.device.upload(g, &grads);
    let (norm, update) = st.optimizer_step(1e-3);
    assert_eq!((update, st.step), (Update::Applied, 1));
    let want_norm = grads.iter().map(|&x| (x / scale) as f64 * (x / scale) as f64).sum::<f64>().sqrt();
    assert!(norm.is_some_and(|v| (v as f64 - want_norm).abs() <= 1e-5 * want_norm), "unscaled norm {norm:?} vs {want_norm}");
    let (m, _) = st.encoder.moments_to_vec();
    for (i, (&m, &g)) in m.iter().zip(&grads).enumerate() {
        let want = 0.1 * (g / scale) as f64;
        assert!((m as f64 - want).abs() <= 1e-7 + 1e-5 * want.abs(), "moment {i}: {m} vs {want}");
    }
    // Growth: the interval's last applied step doubles the scale.
    st.scaler = Some(LossScaler { scale, good_steps: LossScaler::GROWTH_INTERVAL - 1 });
    let small = vec![1e-3f32; n];
    st.encoder.device.upload(g, &small);
    assert_eq!(st.optimizer_step(1e-3).1, Update::Applied);
    assert_eq!(st.scaler, Some(LossScaler { scale: 2.0 * scale, good_steps: 0 }));
    // The loss's gradient is scaled up in the backward: the same batch and weights at scale 1024
    // give gradients 1024 times those at scale 1 (to fp16's rounding, which a power of two leaves
    // alone inside its range).
    let grads_at = |scale: f32| {
        let mut enc = cfg.init(CpuDevice::new(), 4, 0).unwrap();
        enc.device.set_precision(Precision::Fp16).unwrap();
        let mut st = ContrastiveStep::new(enc, 2, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
        st.scaler = Some(LossScaler { scale, good_steps: 0 });
        let x: Vec<f32> = (0..2 * 64).map(|i| ((i * 13) % 7) as f32 * 0.3 - 1.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v * 0.9 + 0.05).collect();
        st.forward_backward(Pairs::new(&x, &y), false, 1.0).unwrap();
        let mut g = vec![0.0; n];
        st.encoder.device.download(st.encoder.grads(), &mut g);
        g
    };
    let (g1, g1024) = (grads_at(1.0), grads_at(1024.0));
    let norm = |g: &[f32]| g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    assert!(norm(&g1) > 0.0 && (norm(&g1024) / norm(&g1) - 1024.0).abs() < 1024.0 * 1e-3, "{} / {}", norm(&g1024), norm(&g1));
    // At the floor, an overflow is a diverged run, not another halving.
    st.scaler = Some(LossScaler { scale: LossScaler::MIN_SCALE, good_steps: 0 });
    st.encoder.device.upload(g, &grads.iter().map(|_| f32::NAN).collect::<Vec<_>>());
    assert_eq!(st.optimizer_step(1e-3).1, Update::NonFinite);
}

/// Trains `cfg` on the toy for `steps` steps at lr 1e-3: the loss falls below `final_loss`, and
/// windows from the held-out last 30 % of each signal are matched to their Id at least
/// `min_accuracy` of the time.
fn learns_the_toy(cfg: EncoderConfig, precision: Precision, steps: u64, final_loss: f32, min_accuracy: f32) {
    let (b, n_ids, len) = (32, 64, 8192);
    let w = cfg.window;
    let toy = Toy::new(n_ids, len, 0);
    let split = len * 7 / 10;
    let mut enc = cfg.init(CpuDevice::new(), 2 * b, 0).unwrap();
    enc.device.set_precision(precision).unwrap();
    let mut step = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
    let mut losses = Vec::new();
    // The ISFM's time channel is `t / rate`: a realistic 12 kHz keeps it small beside the values
    // (at 1 Hz the patch positions, up to W, would swamp the signal).
    let rates = vec![12_000.0f32; b];
    for s in 0..steps {
        let (a, p) = toy.batch(b, w, 0, split, s);
        let out = step.train_step(Pairs::new(&a, &p).with_rates(&rates)).unwrap();
        // fp16's first steps may overflow at the first loss scale and lower it: no divergence.
        assert!(out.update != Update::NonFinite, "step {s}: {out:?}");
        losses.push(out.loss);
    }
    let first = losses[0];
    let last = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    let kind = format!("{} ({precision:?})", cfg.kind());
    eprintln!("{kind}: loss first {first:.3} (ln B = {:.3}), last-10 mean {last:.3}", (b as f32).ln());
    // Untrained, the pairs are not yet told apart (a random CNN already separates frequencies
    // somewhat, and a random ISFM's embeddings spread wider than a random MLP's, so only "far
    // from solved" holds for every encoder).
    assert!(first > 1.0 && first.is_finite(), "{kind}: first loss {first}");
    assert!(last < final_loss, "{kind}: ends below {final_loss}: {last}");
    // Held-out: windows from the last 30 % of each signal, never trained on.
    let mut acc = 0.0;
    for s in 0..10 {
        let (a, p) = toy.batch(b, w, split, len, 10_000 + s);
        acc += step.evaluate(Pairs::new(&a, &p).with_rates(&rates)).unwrap().accuracy / 10.0;
    }
    eprintln!("{kind}: held-out contrastive accuracy {acc:.3}");
    assert!(acc >= min_accuracy, "{kind}: held-out contrastive accuracy {acc}");
}

#[test]
fn non_finite_input_skips_the_update_and_keeps_weights() {
    let (b, w) = (4, 16);
    let enc = EncoderConfig::new(EncoderKind::MlpSimple, w, 1).init(CpuDevice::new(), 2 * b, 1).unwrap();
    let mut step = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 1).unwrap();
    let before = step.encoder.params_to_vec();
    let mut a = vec![0.5f32; b * w];
    a[3] = f32::NAN;
    let out = step.train_step(Pairs::new(&a, &vec![0.1; b * w])).unwrap();
    assert!(out.update == Update::NonFinite && !out.loss.is_finite());
    assert_eq!(step.encoder.params_to_vec(), before);
    assert_eq!(step.step, 0);
}

/// A step on the batch `load` copied in is the step that copies it first, to the bit, for every
/// encoder (no op writes into its input), and stepping with no batch loaded is an error.
#[test]
fn steps_on_a_loaded_batch_equal_steps_that_copy_it() {
    let toy = Toy::new(8, 2048, 3);
    for cfg in [EncoderConfig::new(EncoderKind::MlpMedium, 256, 1), EncoderConfig::new(EncoderKind::Cnn, 256, 1), toy_isfm_of(256)] {
        let (b, w) = (4, cfg.window);
        let (a, p) = toy.batch(b, w, 0, 2048, 7);
        let rates = vec![12_000.0; b];
        let pairs = Pairs::new(&a, &p).with_rates(&rates);
        let new_step = || ContrastiveStep::new(cfg.clone().init(CpuDevice::new(), 2 * b, 5).unwrap(), b, InfoNceConfig::default(), OptimizerConfig::default(), 5).unwrap();
        let (mut copying, mut loaded) = (new_step(), new_step());
        assert!(loaded.train_step_loaded().is_err(), "{}: no batch loaded yet", cfg.kind());
        loaded.load(pairs).unwrap();
        for i in 0..3 {
            let (x, y) = (copying.train_step(pairs).unwrap(), loaded.train_step_loaded().unwrap());
            assert_eq!((x.loss.to_bits(), x.update), (y.loss.to_bits(), y.update), "{}: step {i}", cfg.kind());
        }
        assert_eq!(copying.encoder.params_to_vec(), loaded.encoder.params_to_vec(), "{}", cfg.kind());
        // Anything else that writes the input replaces the loaded batch: an evaluation of other
        // pairs, a step that copies its own, an embedding.
        let (va, vp) = toy.batch(b, w, 0, 2048, 8);
        let others = Pairs::new(&va, &vp).with_rates(&rates);
        type Overwrite<'a> = Box<dyn Fn(&mut ContrastiveStep<CpuDevice>) + 'a>;
        let overwrites: [(&str, Overwrite); 3] = [
            ("an evaluation", Box::new(|st| _ = st.evaluate(others).unwrap())),
            ("a copying step", Box::new(|st| _ = st.train_step(others).unwrap())),
            ("an embedding", Box::new(|st| drop(engine::step::embed(&mut st.encoder, &va, None).unwrap()))),
        ];
        for (what, overwrite) in overwrites {
            loaded.load(pairs).unwrap();
            loaded.train_step_loaded().unwrap();
            overwrite(&mut loaded);
            let e = loaded.train_step_loaded().unwrap_err().to_string();
            assert!(e.contains("overwritten"), "{}: after {what}: {e}", cfg.kind());
        }
        // A load that fails part way (the windows copied, then a bad rate) leaves no batch.
        loaded.load(pairs).unwrap();
        assert!(loaded.load(Pairs::new(&a, &p).with_rates(&[f32::NAN; 4][..b])).is_err());
        assert!(loaded.train_step_loaded().is_err(), "{}: a failed load leaves no batch to step on", cfg.kind());
        assert!(loaded.load(Pairs::new(&a, &p[..w])).is_err());
        assert!(loaded.train_step_loaded().is_err(), "{}: a failed load leaves no batch to step on", cfg.kind());
    }
}

#[test]
fn bad_shapes_are_errors() {
    let enc = EncoderConfig::new(EncoderKind::MlpSimple, 8, 1).init(CpuDevice::new(), 4, 1).unwrap();
    let mut step = ContrastiveStep::new(enc, 2, InfoNceConfig::default(), OptimizerConfig::default(), 1).unwrap();
    assert!(step.train_step(Pairs::new(&[0.0; 8], &[0.0; 16])).is_err());
    assert!(step.train_step(Pairs::new(&[0.0; 24], &[0.0; 24])).is_err(), "3 pairs exceed capacity 2");
    assert!(EncoderConfig::new(EncoderKind::MlpSimple, 0, 1).init(CpuDevice::new(), 4, 1).is_err());
    let e = "transformer-xl".parse::<EncoderKind>().unwrap_err().to_string();
    assert!(e.contains("encoder") && e.contains("transformer-xl"), "{e}");
    // A CNN's sizes as a checkpoint's metadata could carry them: a padding past the window (its
    // padded length overflowed), and buffers of 2²⁴ rows × 2³¹ steps × 2²⁰ channels (a size that
    // wrapped in a release build) are named errors.
    let cnn = |widths: Vec<usize>, first_padding: usize, window: usize| EncoderConfig {
        arch: Arch::Cnn(CnnConfig { widths, first_kernel: 1, first_stride: 1, first_padding }),
        window,
        channels: 1,
        embed: 8,
    };
    let e = cnn(vec![4], usize::MAX / 2, 64).init(CpuDevice::new(), 2, 0).err().expect("a padding past the window").to_string();
    assert!(e.contains("padding"), "{e}");
    let e = cnn(vec![1 << 20], 0, 1 << 31).init(CpuDevice::new(), 1 << 24, 0).err().expect("buffers past usize").to_string();
    assert!(e.contains("cnn") && e.contains("more than this machine can address"), "{e}");
    // The projection head's loss scratch is checked as the embedding's is.
    // (2¹⁴ pairs of 2²⁰ dimensions: a scratch of 2⁴⁸ bytes.)
    let enc = EncoderConfig::new(EncoderKind::MlpSimple, 8, 1).init(CpuDevice::new(), 1 << 15, 1).unwrap();
    let e = ContrastiveStep::new(enc, 1 << 14, InfoNceConfig::default(), OptimizerConfig::default(), 1).unwrap().with_projection(1 << 20).err().expect("a loss scratch past the budget").to_string();
    assert!(e.contains("projected"), "{e}");
}

#[test]
fn initialisation_follows_pytorch_bounds() {
    let cfg = EncoderConfig::new(EncoderKind::MlpMedium, 1024, 1);
    let enc = cfg.init(CpuDevice::new(), 2, 3).unwrap();
    let p = enc.params_to_vec();
    assert_eq!(p.len(), cfg.param_count());
    assert_eq!(cfg.param_count(), 1024 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128);
    let w0 = &p[..1024 * 512];
    let bound = 1.0 / 32.0;
    assert!(w0.iter().all(|v| v.abs() <= bound));
    let var = w0.iter().map(|v| (v * v) as f64).sum::<f64>() / w0.len() as f64;
    // U(−a, a) has variance a²/3.
    assert!((var - (bound * bound) as f64 / 3.0).abs() < 0.02 * (bound * bound) as f64 / 3.0, "{var}");
    let indices: Vec<usize> = engine::encoders::mlp::layers(&cfg).iter().map(|l| l.torch_index).collect();
    assert_eq!(indices, vec![0, 3, 6], "nn.Sequential positions of the Linear layers");
}

#[test]
fn dropout_drops_at_the_configured_rate() {
    let mut dev = CpuDevice::new();
    let (rows, cols) = (200, 500);
    let (y, bias) = (dev.alloc(rows * cols).unwrap(), dev.alloc(cols).unwrap());
    dev.fill(y, 1.0);
    dev.bias_act_forward(y, bias, cols, true, Some(Dropout { p: 0.3, key: 77 }));
    let h = dev.slice(y);
    let dropped = h.iter().filter(|&&v| v == 0.0).count() as f64 / h.len() as f64;
    assert!((dropped - 0.3).abs() < 0.005, "{dropped}");
    assert!(h.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
}

#[test]
fn every_gemm_kernel_trains_alike() {
    if !engine::cpu::sgemm::supported() {
        eprintln!("SKIPPED: this CPU lacks AVX2/FMA, so only the faer kernel exists here");
        return;
    }
    for (kernel, missing) in [
        (CpuGemm::PackedAvx512, "no AVX-512F"),
        (CpuGemm::Bf16Dot, "no AVX512-BF16"),
        (CpuGemm::Amx, "no AMX-BF16, or CID_CPU_AMX=off"),
        (CpuGemm::Fp16Runs, "no AVX512-FP16"),
        (CpuGemm::Fp16RunsWide, "no AVX512-FP16"),
    ] {
        if !kernel.supported() {
            eprintln!("SKIPPED ({missing}): the {} kernel is not compared here", kernel.name());
        }
    }
    // Shapes that cross the packed kernel's block edges (MR, NR, KC) in every layer's GEMMs.
    let (b, w) = (13, 300);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let run = |kernel: CpuGemm, precision: Precision| {
            let enc = EncoderConfig::new(EncoderKind::MlpComplex, w, 1).init(CpuDevice::with_gemm(kernel), 2 * b, 5).unwrap();
            let mut step = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 5).unwrap();
            step.set_precision(precision).unwrap();
            assert_eq!(step.encoder.device.gemm_kernel(), kernel);
            let anchor: Vec<f32> = (0..b * w).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
            let positive: Vec<f32> = (0..b * w).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect();
            let losses: Vec<f32> = (0..5).map(|_| step.train_step(Pairs::new(&anchor, &positive)).unwrap().loss).collect();
            (losses, step.encoder.params_to_vec())
        };
        // fp32 against faer; bf16 (every product's operands rounded alike) against the AVX2
        // kernel's fp32 FMAs on them.
        // bf16's tolerances are wider: a last-bit difference of an fp32 sum can round an
        // activation to the neighbouring bf16, 2⁻⁸ away, and the next layer multiplies it.
        let init = EncoderConfig::new(EncoderKind::MlpComplex, w, 1).init(CpuDevice::new(), 2 * b, 5).unwrap().params_to_vec();
        // fp16 (where the CPU offers it) likewise, AVX512-FP16's sums in runs of fp16 against the
        // AVX2 kernel's fp32 FMAs on the rounded operands: those sums round more (2⁻¹¹ of a run
        // per add, not 2⁻²⁴), so the losses of a fast-falling loss part by up to ~1 % in five
        // steps and the updates by ~12 % (0.116 on an Intel Xeon; and from fp32's 0.119, below
        // bf16's 0.180: checked below). Only those kernels (both tiles) get the wider bounds.
        let mut precisions = vec![(Precision::Fp32, CpuGemm::Faer, 1e-4, 5e-4, 0.1), (Precision::Bf16, CpuGemm::Packed, 5e-3, 1e-2, 0.1)];
        if engine::cpu::fp16_supported() {
            precisions.push((Precision::Fp16, CpuGemm::Packed, 5e-3, 1e-2, 0.1));
        } else {
            eprintln!("SKIPPED (no AVX512-FP16, CID_CPU_FP16 unset): fp16 products are not compared");
        }
        for (precision, reference, loss_rel, params_abs, gap_max) in precisions {
            let (ref_loss, ref_params) = run(reference, precision);
            for kernel in CpuGemm::candidates(precision).into_iter().filter(|k| *k != reference) {
                let (loss_rel, gap_max) = if matches!(kernel, CpuGemm::Fp16Runs | CpuGemm::Fp16RunsWide) { (2e-2, 0.15) } else { (loss_rel, gap_max) };
                let (loss, params) = run(kernel, precision);
                let (name, ref_name) = (kernel.name(), reference.name());
                for (p, f) in loss.iter().zip(&ref_loss) {
                    assert!((p - f).abs() <= loss_rel * f.abs().max(1.0), "{precision} loss {p} ({name}) vs {f} ({ref_name})");
                }
                // Five Adam steps of lr 1e-3 move a weight by at most ~5e-3. In fp32 summation order
                // alone differs between the kernels, so the parameters agree to a tenth of that
                // (Adam's normalised step turns a last-bit difference of a near-zero gradient into
                // up to ~1e-4). In bf16 Adam can turn such a gradient's step around (a parameter
                // ends up to 1e-2 away), so there the updates must agree as a whole.
                let worst = params.iter().zip(&ref_params).map(|(p, f)| (p - f).abs()).fold(0.0f32, f32::max);
                let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                let update_gap = norm(&mut params.iter().zip(&ref_params).map(|(p, f)| p - f)) / norm(&mut ref_params.iter().zip(&init).map(|(f, i)| f - i));
                eprintln!("{precision}: {name} against {ref_name}: parameters differ by up to {worst:.1e}, updates by {update_gap:.3} of their size; last loss {} against {}", loss[4], ref_loss[4]);
                assert!(worst < params_abs, "{precision}: {name} and {ref_name} parameters differ by up to {worst}");
                assert!(update_gap < gap_max, "{precision}: {name}'s and {ref_name}'s updates differ by {update_gap} of their size");
                assert!(loss[4] < loss[0], "the loss did not fall on {name} ({precision}): {loss:?}");
            }
        }
        // fp16's sums in runs keep its updates nearer fp32's than bf16's products do: of two
        // rounded precisions it stays the finer one.
        if CpuGemm::Fp16Runs.supported() {
            let (_, fp32) = run(CpuGemm::Faer, Precision::Fp32);
            let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            let gap = |kernel, precision| {
                let (_, params) = run(kernel, precision);
                norm(&mut params.iter().zip(&fp32).map(|(p, f)| p - f)) / norm(&mut fp32.iter().zip(&init).map(|(f, i)| f - i))
            };
            let (runs, bf16) = (gap(CpuGemm::Fp16Runs, Precision::Fp16), gap(CpuGemm::Packed, Precision::Bf16));
            eprintln!("updates apart from fp32's: fp16 in runs {runs:.3}, bf16 {bf16:.3}");
            assert!(runs < bf16, "fp16 in runs strays further from fp32 ({runs:.3}) than bf16 ({bf16:.3})");
            // The two fp16 tiles sum each element alike: five steps on either end with the same bits.
            let (narrow, wide) = (run(CpuGemm::Fp16Runs, Precision::Fp16), run(CpuGemm::Fp16RunsWide, Precision::Fp16));
            assert_eq!(narrow.0.iter().map(|l| l.to_bits()).collect::<Vec<_>>(), wide.0.iter().map(|l| l.to_bits()).collect::<Vec<_>>(), "fp16 losses on the two tiles");
            assert_eq!(narrow.1.iter().map(|w| w.to_bits()).collect::<Vec<_>>(), wide.1.iter().map(|w| w.to_bits()).collect::<Vec<_>>(), "fp16 weights on the two tiles");
        }
    });
}

#[test]
fn training_does_not_depend_on_the_thread_count() {
    if !engine::cpu::sgemm::supported() {
        eprintln!("SKIPPED: this CPU lacks AVX2/FMA; faer's kernels split by thread count");
        return;
    }
    // Sizes at which the element-wise kernels, the norms' reductions and the GEMMs take their
    // parallel paths; every encoder, with dropout on (its masks are keyed by element index).
    let isfm = IsfmConfig { num_patches: 16, patch_size_l: 32, d_model: 64, num_heads: 4, e_layers: 1, d_ff: 128, ..IsfmConfig::default() };
    let cases = [
        (EncoderConfig::new(EncoderKind::MlpMedium, 1024, 1), 16),
        (EncoderConfig::new(EncoderKind::Cnn, 1024, 2), 16),
        // 2 × 32 samples × 16 patches = 1024 rows of 64: LayerNorm's reductions run in parallel.
        (EncoderConfig { arch: Arch::Isfm(isfm), window: 1024, channels: 2, embed: 128 }, 32),
    ];
    for (cfg, b) in cases {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let enc = cfg.init(CpuDevice::with_gemm(CpuGemm::Packed), 2 * b, 3).unwrap();
                let opt = OptimizerConfig { clip_norm: Some(1.0), ..Default::default() };
                let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.07, symmetric: true }, opt, 3).unwrap();
                let w = cfg.input();
                let anchor: Vec<f32> = (0..b * w).map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0).collect();
                let positive: Vec<f32> = (0..b * w).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect();
                let rates = vec![12_000.0f32; b];
                let before = step.encoder.params_to_vec();
                let losses: Vec<f32> = (0..3).map(|_| step.train_step(Pairs::new(&anchor, &positive).with_rates(&rates)).unwrap().loss).collect();
                let after = step.encoder.params_to_vec();
                // Not vacuous: the runs train (finite losses, weights that moved).
                assert!(losses.iter().all(|l| l.is_finite()) && before != after, "{}: {losses:?}", cfg.kind());
                (losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(), after.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            })
        };
        // Two or three workers run the CNN's and the ISFM's views on lanes of one worker each,
        // four on lanes of two (whose kernels split again); the MLP splits each kernel over them
        // all.
        let one = run(1);
        for threads in [2, 3, 4] {
            let other = run(threads);
            let kind = cfg.kind();
            assert_eq!(one.0, other.0, "{kind}: losses differ between 1 and {threads} threads");
            assert!(one.1 == other.1, "{kind}: parameters differ between 1 and {threads} threads");
        }
    }
}

#[test]
fn infonce_does_not_depend_on_the_thread_count() {
    // Batches whose similarity tiles are large enough for the parallel row and column passes:
    // several tiles (2·LOSS_TILE + 37 pairs) and one tile (200 pairs), both directions.
    for (b, symmetric) in [(2 * engine::loss::LOSS_TILE + 37, true), (2 * engine::loss::LOSS_TILE + 37, false), (200, true)] {
        let d = 32;
        let z: Vec<f32> = (0..2 * b * d).map(|i| ((i * 7919) % 1009) as f32 / 504.5 - 1.0).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut dev = CpuDevice::with_gemm(if engine::cpu::sgemm::supported() { CpuGemm::Packed } else { CpuGemm::Faer });
                let (zv, dzv) = (dev.alloc(z.len()).unwrap(), dev.alloc(z.len()).unwrap());
                dev.upload(zv, &z);
                let out = dev.infonce(zv, Some(dzv), b, d, 0.1, symmetric, 1.0);
                (out.loss, out.accuracy, dev.slice(dzv).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            })
        };
        let (one, three) = (run(1), run(3));
        assert!(one.0.is_finite() && one.0 > 0.0 && one.2.iter().any(|&g| f32::from_bits(g) != 0.0), "B={b}: {}", one.0);
        if !engine::cpu::sgemm::supported() {
            eprintln!("SKIPPED (bit equality): no AVX2/FMA, and faer's products split by thread count");
            continue;
        }
        assert_eq!((one.0.to_bits(), one.1.to_bits()), (three.0.to_bits(), three.1.to_bits()), "B={b} symmetric={symmetric}: loss/accuracy differ between 1 and 3 threads");
        assert!(one.2 == three.2, "B={b} symmetric={symmetric}: gradients differ between 1 and 3 threads");
    }
}

#[test]
fn a_training_forward_of_two_views_is_two_forward_calls() {
    // The CNN and the ISFM run a step's two views each on its own lane, into spare gradients and
    // running statistics folded in afterwards, each view drawing from its own key; PyTorch runs
    // two forward calls. Both must give the same embeddings, the sum of both views' gradients,
    // running statistics updated by one view after the other, and two counts per BatchNorm — on
    // one worker (lanes one after another) and two.
    let isfm = IsfmConfig { num_patches: 8, patch_size_l: 32, d_model: 32, num_heads: 4, e_layers: 1, d_ff: 64, dropout: 0.1, ..IsfmConfig::default() };
    for cfg in [EncoderConfig::new(EncoderKind::Cnn, 1024, 2), EncoderConfig { arch: Arch::Isfm(isfm), window: 1024, channels: 2, embed: 128 }] {
        two_views_are_two_forward_calls(&cfg);
    }
}

fn two_views_are_two_forward_calls(cfg: &EncoderConfig) {
    let (b, w, d) = (8, cfg.input(), cfg.embed);
    let x: Vec<f32> = (0..2 * b * w).map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0).collect();
    let dz: Vec<f32> = (0..2 * b * d).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let init = || cfg.init(CpuDevice::with_gemm(CpuGemm::best_packed()), 2 * b, 5).unwrap();
            // Both views in one call, as the step runs them.
            let mut both = init();
            both.set_input(0, &x).unwrap();
            let z = both.forward(2 * b, 2, Mode::Train { key: 1 });
            let mut z_both = vec![0.0; z.len()];
            both.device.download(z, &mut z_both);
            let dzv = both.dz_buffer(2 * b);
            both.device.upload(dzv, &dz);
            both.backward(2 * b, dzv, false);
            // One call per view, the second accumulating its gradients.
            let mut each = init();
            let mut z_each = Vec::new();
            for v in 0..2 {
                each.set_input(0, &x[v * b * w..(v + 1) * b * w]).unwrap();
                let z = each.forward(b, 1, Mode::Train { key: view_key(1, v) });
                let mut zv = vec![0.0; z.len()];
                each.device.download(z, &mut zv);
                z_each.extend(zv);
                let dzv = each.dz_buffer(b);
                each.device.upload(dzv, &dz[v * b * d..(v + 1) * b * d]);
                each.backward(b, dzv, v > 0);
            }
            let rel = |a: &[f32], e: &[f32]| {
                let diff = a.iter().zip(e).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                diff / e.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt()
            };
            assert_eq!(z_both, z_each, "{} on {threads} workers: embeddings", cfg.kind());
            let (g_both, g_each) = (both.grads_to_vec(), each.grads_to_vec());
            assert!(g_each.iter().any(|g| *g != 0.0) && rel(&g_both, &g_each) < 1e-6, "{} on {threads} workers: gradients differ by {:e}", cfg.kind(), rel(&g_both, &g_each));
            let (r_both, r_each) = (both.buffers_to_vec(), each.buffers_to_vec());
            assert!(r_both != cfg.init(CpuDevice::new(), 2, 5).unwrap().buffers_to_vec(), "the running statistics moved");
            assert_eq!(r_both, r_each, "{} on {threads} workers: running statistics", cfg.kind());
            assert!(both.counters().iter().all(|&c| c == 2) && both.counters() == each.counters(), "{:?}", both.counters());
        });
    }
}

#[test]
fn a_backward_takes_the_path_its_forward_took() {
    // A training forward of two views runs on lanes, whose buffers are laid out unlike a whole
    // batch's; giving the ISFM patch starts between the forward and its backward (which makes
    // the next forward run whole) must not change the backward's path.
    let isfm = IsfmConfig { num_patches: 4, patch_size_l: 16, d_model: 16, num_heads: 2, e_layers: 1, d_ff: 32, ..IsfmConfig::default() };
    let cfg = EncoderConfig { arch: Arch::Isfm(isfm), window: 128, channels: 1, embed: 8 };
    let (b, w) = (4, cfg.input());
    let x: Vec<f32> = (0..2 * b * w).map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0).collect();
    let dz: Vec<f32> = (0..2 * b * 8).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
    let grads = |fix_between: bool| {
        let mut enc = cfg.init(CpuDevice::with_gemm(CpuGemm::best_packed()), 2 * b, 5).unwrap();
        enc.set_input(0, &x).unwrap();
        enc.forward(2 * b, 2, Mode::Train { key: 3 });
        if fix_between {
            let starts = vec![0usize; 2 * b * 4];
            enc.set_patch_starts(Some((&starts, &starts))).unwrap();
        }
        let dzv = enc.dz_buffer(2 * b);
        enc.device.upload(dzv, &dz);
        enc.backward(2 * b, dzv, false);
        enc.grads_to_vec()
    };
    let plain = grads(false);
    assert!(plain.iter().any(|g| *g != 0.0));
    assert_eq!(plain, grads(true));
}
