//! Every backward against central finite differences of an independent f64 forward.
//!
//! Each check recomputes the forward in f64 from the same parameters and dropout masks (the mask
//! is a pure function of `(key, index)`), perturbs one value by ±h, and compares
//! `(L(x+h) − L(x−h)) / 2h` with the engine's f32 gradient. Inputs are random and fresh each run
//! (the seed is printed so a failure can be replayed with `GRADCHECK_SEED`).

use engine::device::dropout_hash;
use engine::*;

fn seed() -> u64 {
    let s = std::env::var("GRADCHECK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("GRADCHECK_SEED={s}");
    s
}

fn randn(key: u64, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u1 = (dropout_hash(key, 2 * i as u64) as f64 + 1.0) / 4_294_967_297.0;
            let u2 = dropout_hash(key, 2 * i as u64 + 1) as f64 / 4_294_967_296.0;
            scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Collects (analytic, numeric) pairs of one gradient and judges them together: the relative
/// error of the whole vector, ‖a − n‖ / ‖n‖ < 1e-4 (the usual gradcheck measure: f32 analytic
/// values carry ~1e-7 absolute noise, which is no error on an element a thousand times smaller
/// than the largest), and every element within 1e-3 of the largest gradient (a wrong element
/// cannot hide in the norm).
#[derive(Default)]
struct Check {
    pairs: Vec<(String, f64, f64)>,
}

impl Check {
    fn add(&mut self, what: String, analytic: f64, numeric: f64) {
        self.pairs.push((what, analytic, numeric));
    }

    fn assert(&self, name: &str) {
        assert!(!self.pairs.is_empty(), "{name}: nothing checked");
        let diff: f64 = self.pairs.iter().map(|(_, a, n)| (a - n).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = self.pairs.iter().map(|(_, _, n)| n * n).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-12);
        assert!(rel < 1e-4, "{name}: relative error of the gradient vector {rel:e} ({} values)", self.pairs.len());
        let scale = self.pairs.iter().map(|(_, _, n)| n.abs()).fold(0.0, f64::max);
        for (what, a, n) in &self.pairs {
            assert!((a - n).abs() <= 1e-3 * scale.max(1e-9), "{name} {what}: analytic {a:e} vs numeric {n:e} (largest {scale:e})");
        }
    }
}

// ---------- f64 reference forward ----------

fn linear64(x: &[f64], w: &[f64], b: &[f64], rows: usize, inf: usize, outf: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * outf];
    for r in 0..rows {
        for o in 0..outf {
            let mut s = b[o];
            for i in 0..inf {
                s += x[r * inf + i] * w[o * inf + i];
            }
            y[r * outf + o] = s;
        }
    }
    y
}

fn act64(y: &mut [f64], cols: usize, relu: bool, dropout: Option<Dropout>) {
    for (i, v) in y.iter_mut().enumerate() {
        if relu && *v < 0.0 {
            *v = 0.0;
        }
        if let Some(d) = dropout {
            let keep = Dropout::keep(d.key, i as u64, Dropout::threshold(d.p));
            *v = if keep { *v * Dropout::scale(d.p) as f64 } else { 0.0 };
        }
    }
    let _ = cols;
}

fn infonce64(z: &[f64], b: usize, d: usize, tau: f64, symmetric: bool) -> f64 {
    let zn: Vec<f64> = z
        .chunks(d)
        .flat_map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            r.iter().map(move |x| x / n).collect::<Vec<_>>()
        })
        .collect();
    let s = |i: usize, j: usize| (0..d).map(|k| zn[i * d + k] * zn[(b + j) * d + k]).sum::<f64>() / tau;
    let lse = |v: Vec<f64>| {
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let rows: f64 = (0..b).map(|i| lse((0..b).map(|j| s(i, j)).collect()) - s(i, i)).sum::<f64>() / b as f64;
    if !symmetric {
        return rows;
    }
    let cols: f64 = (0..b).map(|j| lse((0..b).map(|i| s(i, j)).collect()) - s(j, j)).sum::<f64>() / b as f64;
    0.5 * (rows + cols)
}

// ---------- per-layer checks ----------

#[test]
fn linear_backward_matches_finite_differences() {
    let key = seed();
    let (rows, inf, outf) = (5, 7, 4);
    let x = randn(key, rows * inf, 1.0);
    let w = randn(key ^ 1, outf * inf, 0.5);
    let b = randn(key ^ 2, outf, 0.5);
    let r = randn(key ^ 3, rows * outf, 1.0); // loss = Σ y ⊙ r, so dL/dy = r
    let loss = |x: &[f64], w: &[f64], b: &[f64]| linear64(x, w, b, rows, inf, outf).iter().zip(&r).map(|(y, r)| y * r).sum::<f64>();

    let mut dev = CpuDevice::new();
    let (xv, wv, bv, rv) = (dev.alloc(x.len()), dev.alloc(w.len()), dev.alloc(b.len()), dev.alloc(r.len()));
    let (dwv, dbv, dxv) = (dev.alloc(w.len()), dev.alloc(b.len()), dev.alloc(x.len()));
    dev.upload(xv, &f32s(&x));
    dev.upload(wv, &f32s(&w));
    dev.upload(bv, &f32s(&b));
    dev.upload(rv, &f32s(&r));
    dev.gemm(Gemm { m: outf, n: inf, k: rows, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, dwv, rv, xv);
    dev.bias_grad(dbv, rv, rows, outf, false);
    dev.gemm(Gemm { m: rows, n: inf, k: outf, trans_a: false, trans_b: false, accumulate: false, sparse_a: false }, dxv, rv, wv);
    let (dw, db, dx) = (dev.slice(dwv).to_vec(), dev.slice(dbv).to_vec(), dev.slice(dxv).to_vec());
    let h = 1e-6;
    let (mut cw, mut cb, mut cx) = (Check::default(), Check::default(), Check::default());
    for i in 0..w.len() {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[i] += h;
        wm[i] -= h;
        cw.add(format!("dW[{i}]"), dw[i] as f64, (loss(&x, &wp, &b) - loss(&x, &wm, &b)) / (2.0 * h));
    }
    for i in 0..b.len() {
        let (mut bp, mut bm) = (b.clone(), b.clone());
        bp[i] += h;
        bm[i] -= h;
        cb.add(format!("db[{i}]"), db[i] as f64, (loss(&x, &w, &bp) - loss(&x, &w, &bm)) / (2.0 * h));
    }
    for i in 0..x.len() {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        cx.add(format!("dX[{i}]"), dx[i] as f64, (loss(&xp, &w, &b) - loss(&xm, &w, &b)) / (2.0 * h));
    }
    cw.assert("Linear dW");
    cb.assert("Linear db");
    cx.assert("Linear dX");
}

#[test]
fn bias_relu_dropout_backward_matches_finite_differences() {
    let key = seed();
    let (rows, cols) = (6, 9);
    // Pre-activations kept away from 0 so ±h never crosses the ReLU kink.
    let y0: Vec<f64> = randn(key, rows * cols, 1.0).into_iter().map(|v| if v.abs() < 0.05 { v + 0.1 } else { v }).collect();
    let bias = vec![0.0; cols];
    let r = randn(key ^ 7, rows * cols, 1.0);
    for p in [0.0f32, 0.3] {
        let dropout = (p > 0.0).then_some(Dropout { p, key: key ^ 99 });
        let loss = |y: &[f64]| {
            let mut h = y.to_vec();
            act64(&mut h, cols, true, dropout);
            h.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
        };
        let mut dev = CpuDevice::new();
        let (yv, bv, dv) = (dev.alloc(y0.len()), dev.alloc(cols), dev.alloc(y0.len()));
        dev.upload(yv, &f32s(&y0));
        dev.upload(bv, &f32s(&bias));
        dev.bias_act_forward(yv, bv, rows, cols, true, dropout);
        let mut h_ref = y0.clone();
        act64(&mut h_ref, cols, true, dropout);
        for (a, b) in dev.slice(yv).iter().zip(&h_ref) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs {b}");
        }
        dev.upload(dv, &f32s(&r));
        dev.act_backward(dv, yv, Dropout::scale(p));
        let d = dev.slice(dv).to_vec();
        let h = 1e-6;
        let mut c = Check::default();
        for i in 0..y0.len() {
            let (mut yp, mut ym) = (y0.clone(), y0.clone());
            yp[i] += h;
            ym[i] -= h;
            c.add(format!("dY[{i}]"), d[i] as f64, (loss(&yp) - loss(&ym)) / (2.0 * h));
        }
        c.assert(&format!("bias+ReLU+Dropout(p={p})"));
    }
}

#[test]
fn normalize_infonce_backward_matches_finite_differences() {
    let key = seed();
    for (b, d, tau, symmetric) in [(4, 5, 0.07, false), (6, 3, 0.5, true), (1, 4, 0.1, false), (3, 8, 0.05, true)] {
        let z = randn(key ^ b as u64, 2 * b * d, 1.0);
        let mut dev = CpuDevice::new();
        let (zv, dzv) = (dev.alloc(z.len()), dev.alloc(z.len()));
        dev.upload(zv, &f32s(&z));
        let out = dev.infonce(zv, Some(dzv), b, d, tau as f32, symmetric, 1.0);
        let want = infonce64(&z, b, d, tau, symmetric);
        assert!((out.loss as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "loss {} vs {want}", out.loss);
        let dz = dev.slice(dzv).to_vec();
        let h = 1e-6;
        let mut c = Check::default();
        for i in 0..z.len() {
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[i] += h;
            zm[i] -= h;
            let num = (infonce64(&zp, b, d, tau, symmetric) - infonce64(&zm, b, d, tau, symmetric)) / (2.0 * h);
            c.add(format!("dz[{i}]"), dz[i] as f64, num);
        }
        if b > 1 {
            c.assert(&format!("normalize+InfoNCE b={b} d={d} tau={tau} symmetric={symmetric}"));
        } else {
            // One pair: the loss is identically 0, so is every gradient.
            assert!(c.pairs.iter().all(|(_, a, n)| a.abs() < 1e-9 && n.abs() < 1e-9));
        }
    }
}

// ---------- whole model + InfoNCE ----------

/// The f64 loss of an encoder with parameters `params` on the pair, dropout keyed like the engine.
fn model_loss64(cfg: &EncoderConfig, params: &[f64], x: &[f64], rows: usize, dropout_key: u64, tau: f64) -> f64 {
    let mut h = x.to_vec();
    let mut off = 0;
    for (li, s) in cfg.layers().iter().enumerate() {
        let nw = s.in_features * s.out_features;
        let w = &params[off..off + nw];
        let b = &params[off + nw..off + nw + s.out_features];
        off += nw + s.out_features;
        let mut y = linear64(&h, w, b, rows, s.in_features, s.out_features);
        if s.relu {
            let d = (s.dropout > 0.0).then(|| Dropout { p: s.dropout, key: engine::model::mix_key(dropout_key, 0xD0, li as u64) });
            act64(&mut y, s.out_features, true, d);
        }
        h = y;
    }
    infonce64(&h, rows / 2, cfg.embed, tau, false)
}

#[test]
fn whole_model_and_infonce_gradients_match_finite_differences() {
    let key = seed();
    // The last case is large enough that the CPU device runs its weight and input gradients on the
    // zero-skipping kernel (`sparse_a`, where the CPU has AVX2 + FMA).
    let cases = [(EncoderKind::MlpSimple, 6, 4), (EncoderKind::MlpMedium, 6, 4), (EncoderKind::MlpComplex, 6, 4), (EncoderKind::MlpMedium, 64, 8)];
    for (kind, input, b) in cases {
        let cfg = EncoderConfig { kind, input, embed: 8 };
        let enc = cfg.init(CpuDevice::new(), 2 * b, key).unwrap();
        let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.1, symmetric: false }, OptimizerConfig::default(), key).unwrap();
        let x = randn(key ^ 5, 2 * b * cfg.input, 1.0);
        let params: Vec<f64> = step.encoder.params_to_vec().iter().map(|&v| v as f64).collect();
        let dropout_key = engine::model::mix_key(key, 0xF0, 0); // the first training forward's key
        let xf = f32s(&x);
        let out = step.forward_backward(&xf[..b * cfg.input], &xf[b * cfg.input..], false, 1.0).unwrap();
        let l0 = model_loss64(&cfg, &params, &x, 2 * b, dropout_key, 0.1);
        assert!((out.loss as f64 - l0).abs() < 1e-4 * l0.max(1.0), "{kind} W={input}: loss {} vs {l0}", out.loss);
        let grads = step.encoder.grads_to_vec();
        // A random sample of all parameters, plus a random sample of each layer's weights and biases
        // (the first layer's weights are few among the rest).
        let n = params.len();
        let mut idx: Vec<usize> = (0..120).map(|i| (dropout_hash(key ^ 0xABC, i) as usize) % n).collect();
        let mut off = 0;
        for (li, s) in cfg.layers().iter().enumerate() {
            let nw = s.in_features * s.out_features;
            let pick = |j: u64, span: usize| (dropout_hash(key ^ 0xDEF ^ li as u64, j) as usize) % span;
            idx.extend((0..24).map(|j| off + pick(j, nw)));
            idx.extend((0..12).map(|j| off + nw + pick(100 + j, s.out_features)));
            off += nw + s.out_features;
        }
        let h = 1e-6;
        let mut c = Check::default();
        for i in idx {
            let (mut pp, mut pm) = (params.clone(), params.clone());
            pp[i] += h;
            pm[i] -= h;
            let num = (model_loss64(&cfg, &pp, &x, 2 * b, dropout_key, 0.1) - model_loss64(&cfg, &pm, &x, 2 * b, dropout_key, 0.1)) / (2.0 * h);
            c.add(format!("param[{i}]"), grads[i] as f64, num);
        }
        assert!(c.pairs.len() >= 120 + 36 * cfg.layers().len());
        c.assert(&format!("{kind} W={input} + InfoNCE"));
    }
}
