//! Independent f64 implementations of every op and encoder (written from PyTorch's definitions,
//! not from the engine's kernels), the oracle of the gradient checks: the engine's f32 backward
//! is compared with central differences of these forwards. Random data and the check itself are
//! here too.
#![allow(dead_code)]

use std::collections::HashMap;

use engine::device::dropout_hash;
use engine::encoders::mix_key;
use engine::*;

/// The checks' seed: fixed (so a run is reproducible), overridable with `GRADCHECK_SEED`, and
/// printed.
pub fn seed() -> u64 {
    let s = std::env::var("GRADCHECK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_201);
    eprintln!("GRADCHECK_SEED={s}");
    s
}

pub fn randn(key: u64, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u1 = (dropout_hash(key, 2 * i as u64) as f64 + 1.0) / 4_294_967_297.0;
            let u2 = dropout_hash(key, 2 * i as u64 + 1) as f64 / 4_294_967_296.0;
            scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Collects (analytic, numeric) pairs of one gradient and judges them together: the relative
/// error of the whole vector, ‖a − n‖ / ‖n‖ < 1e-4 (the usual gradcheck measure: f32 analytic
/// values carry ~1e-7 absolute noise, which is no error on an element a thousand times smaller
/// than the largest), and every element within 1e-3 of the largest gradient (a wrong element
/// cannot hide in the norm).
#[derive(Default)]
pub struct Check {
    pub pairs: Vec<(String, f64, f64)>,
}

impl Check {
    pub fn add(&mut self, what: String, analytic: f64, numeric: f64) {
        self.pairs.push((what, analytic, numeric));
    }

    /// Central differences of `loss` around `x` for the indices `idx`, against `analytic`.
    pub fn numeric(&mut self, name: &str, x: &[f64], idx: impl IntoIterator<Item = usize>, analytic: &[f32], h: f64, loss: impl Fn(&[f64]) -> f64) {
        for i in idx {
            let (mut p, mut m) = (x.to_vec(), x.to_vec());
            p[i] += h;
            m[i] -= h;
            self.add(format!("{name}[{i}]"), analytic[i] as f64, (loss(&p) - loss(&m)) / (2.0 * h));
        }
    }

    pub fn assert(&self, name: &str) {
        assert!(!self.pairs.is_empty(), "{name}: nothing checked");
        let diff: f64 = self.pairs.iter().map(|(_, a, n)| (a - n).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = self.pairs.iter().map(|(_, _, n)| n * n).sum::<f64>().sqrt();
        assert!(norm > 1e-9, "{name}: the numeric gradient is zero: the check would prove nothing");
        let rel = diff / norm;
        assert!(rel < 1e-4, "{name}: relative error of the gradient vector {rel:e} ({} values)", self.pairs.len());
        let scale = self.pairs.iter().map(|(_, _, n)| n.abs()).fold(0.0, f64::max);
        for (what, a, n) in &self.pairs {
            assert!((a - n).abs() <= 1e-3 * scale.max(1e-9), "{name} {what}: analytic {a:e} vs numeric {n:e} (largest {scale:e})");
        }
        eprintln!("{name}: {} values, relative error {rel:.2e}", self.pairs.len());
    }

    /// ‖numeric‖ of the values checked.
    pub fn numeric_norm(&self) -> f64 {
        self.pairs.iter().map(|(_, _, n)| n * n).sum::<f64>().sqrt()
    }

    /// [`Self::assert`]'s tests for one tensor among others, each tolerance widened by `floor`,
    /// the absolute noise of the f32 gradients (which a tensor of small or zero gradients cannot
    /// be asked to beat): ‖a − n‖ ≤ 1e-4 ‖n‖ + floor, and every element within 1e-3 of the
    /// tensor's largest + floor.
    pub fn assert_within(&self, name: &str, floor: f64) {
        assert!(!self.pairs.is_empty(), "{name}: nothing checked");
        let diff: f64 = self.pairs.iter().map(|(_, a, n)| (a - n).powi(2)).sum::<f64>().sqrt();
        let norm = self.numeric_norm();
        assert!(diff <= 1e-4 * norm + floor, "{name}: ‖analytic − numeric‖ {diff:e} against ‖numeric‖ {norm:e} (floor {floor:e}, {} values)", self.pairs.len());
        let scale = self.pairs.iter().map(|(_, _, n)| n.abs()).fold(0.0, f64::max);
        for (what, a, n) in &self.pairs {
            assert!((a - n).abs() <= 1e-3 * scale + floor, "{name} {what}: analytic {a:e} vs numeric {n:e} (largest {scale:e}, floor {floor:e})");
        }
    }
}

/// `Σ y ⊙ r`: a loss whose gradient with respect to `y` is `r`.
pub fn dot(y: &[f64], r: &[f64]) -> f64 {
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// `count` indices in `0..n`, spread by a hash (all of them when n ≤ count).
pub fn sample(key: u64, n: usize, count: usize) -> Vec<usize> {
    if n <= count {
        return (0..n).collect();
    }
    (0..count).map(|i| dropout_hash(key, i as u64) as usize % n).collect()
}

// ---------- ops ----------

pub fn linear64(x: &[f64], w: &[f64], b: &[f64], rows: usize, inf: usize, outf: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * outf];
    for r in 0..rows {
        for o in 0..outf {
            y[r * outf + o] = b[o] + (0..inf).map(|i| x[r * inf + i] * w[o * inf + i]).sum::<f64>();
        }
    }
    y
}

pub fn act_value(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// The multiplier of element `i` under a dropout (1 without): the engine's mask, by definition.
pub fn keep(dropout: Option<Dropout>, i: usize) -> f64 {
    match dropout.filter(|d| d.p > 0.0) {
        Some(d) => {
            if Dropout::keep(d.key, i as u64, Dropout::threshold(d.p)) {
                Dropout::scale(d.p) as f64
            } else {
                0.0
            }
        }
        None => 1.0,
    }
}

/// `dropout(act(x))`, element `i` numbered from 0.
pub fn act64(x: &[f64], act: Activation, dropout: Option<Dropout>) -> Vec<f64> {
    x.iter().enumerate().map(|(i, &v)| act_value(act, v) * keep(dropout, i)).collect()
}

/// `LN(a + dropout(b))·γ + β` per row (eps 1e-5).
pub fn add_layernorm64(a: &[f64], b: &[f64], dropout: Option<Dropout>, gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let cols = gamma.len();
    let s: Vec<f64> = a.iter().zip(b).enumerate().map(|(i, (x, y))| x + y * keep(dropout, i)).collect();
    let mut out = vec![0.0; s.len()];
    for (r, row) in s.chunks(cols).enumerate() {
        let mu = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / cols as f64;
        for j in 0..cols {
            out[r * cols + j] = (row[j] - mu) / (var + 1e-5).sqrt() * gamma[j] + beta[j];
        }
    }
    out
}

/// BatchNorm in training mode per group of rows, per column (biased variance, eps 1e-5), ReLU
/// after it when `relu`.
pub fn batchnorm64(x: &[f64], gamma: &[f64], beta: &[f64], groups: usize, relu: bool) -> Vec<f64> {
    let cols = gamma.len();
    let rows = x.len() / cols;
    let gr = rows / groups;
    let mut out = vec![0.0; x.len()];
    for g in 0..groups {
        for j in 0..cols {
            let col: Vec<f64> = (0..gr).map(|r| x[(g * gr + r) * cols + j]).collect();
            let mu = col.iter().sum::<f64>() / gr as f64;
            let var = col.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / gr as f64;
            for r in 0..gr {
                let y = (col[r] - mu) / (var + 1e-5).sqrt() * gamma[j] + beta[j];
                out[(g * gr + r) * cols + j] = if relu { y.max(0.0) } else { y };
            }
        }
    }
    out
}

/// `nn.Conv1d` on channels-last `x[S, L, C]` with weight `[O, C, K]`: `[S, Lout, O]`.
pub fn conv1d64(x: &[f64], w: &[f64], b: &[f64], samples: usize, len: usize, c: usize, k: usize, stride: usize, pad: usize) -> (Vec<f64>, usize) {
    let o = b.len();
    let lo = (len + 2 * pad - k) / stride + 1;
    let mut y = vec![0.0; samples * lo * o];
    for s in 0..samples {
        for t in 0..lo {
            for oc in 0..o {
                let mut acc = b[oc];
                for ic in 0..c {
                    for kk in 0..k {
                        let pos = (t * stride + kk) as isize - pad as isize;
                        if pos >= 0 && (pos as usize) < len {
                            acc += w[(oc * c + ic) * k + kk] * x[(s * len + pos as usize) * c + ic];
                        }
                    }
                }
                y[(s * lo + t) * o + oc] = acc;
            }
        }
    }
    (y, lo)
}

pub fn maxpool64(x: &[f64], samples: usize, len: usize, c: usize) -> Vec<f64> {
    let lo = len / 2;
    let mut y = vec![0.0; samples * lo * c];
    for s in 0..samples {
        for t in 0..lo {
            for j in 0..c {
                y[(s * lo + t) * c + j] = x[(s * len + 2 * t) * c + j].max(x[(s * len + 2 * t + 1) * c + j]);
            }
        }
    }
    y
}

pub fn meanpool64(x: &[f64], samples: usize, len: usize, c: usize) -> Vec<f64> {
    (0..samples * c).map(|i| (0..len).map(|t| x[((i / c) * len + t) * c + i % c]).sum::<f64>() / len as f64).collect()
}

/// Multi-head self-attention on `qkv[S·seq, 3d]`, PyTorch's definition; the attention-weight
/// dropout of (sample, head) keyed `mix_key(key, 0xA7, s·heads + h)`, element `i·seq + j`.
pub fn attention64(qkv: &[f64], samples: usize, seq: usize, heads: usize, dh: usize, dropout: Option<Dropout>) -> Vec<f64> {
    let d = heads * dh;
    let mut out = vec![0.0; samples * seq * d];
    for s in 0..samples {
        for h in 0..heads {
            let pair_drop = dropout.map(|dr| Dropout { key: mix_key(dr.key, 0xA7, (s * heads + h) as u64), ..dr });
            let at = |i: usize, part: usize, p: usize| qkv[(s * seq + i) * 3 * d + part * d + h * dh + p];
            for i in 0..seq {
                let scores: Vec<f64> = (0..seq).map(|j| (0..dh).map(|p| at(i, 0, p) * at(j, 1, p)).sum::<f64>() / (dh as f64).sqrt()).collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|v| (v - m).exp()).sum();
                for (j, &score) in scores.iter().enumerate() {
                    let w = (score - m).exp() / z * keep(pair_drop, i * seq + j);
                    for p in 0..dh {
                        out[(s * seq + i) * d + h * dh + p] += w * at(j, 2, p);
                    }
                }
            }
        }
    }
    out
}

/// The HSE patches of `x[S, W, C]`: per step `Cp` values then `Cp` times.
pub fn patches64(x: &[f64], rates: &[f64], sl: &[usize], sc: &[usize], p: engine::ops::patch::PatchShape) -> Vec<f64> {
    let mut out = Vec::new();
    for s in 0..p.samples {
        for q in 0..p.patches {
            let (t0, c0) = (sl[s * p.patches + q], sc[s * p.patches + q]);
            for l in 0..p.patch_len {
                let t = t0 + l;
                for j in 0..p.patch_channels {
                    out.push(x[(s * p.window + t) * p.channels + c0 + j]);
                }
                for _ in 0..p.patch_channels {
                    out.push((t as f32 / rates[s] as f32) as f64);
                }
            }
        }
    }
    out
}

pub fn infonce64(z: &[f64], b: usize, d: usize, tau: f64, symmetric: bool) -> f64 {
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

// ---------- whole encoders ----------

/// An encoder's parameters by PyTorch name, from the flat arena.
pub fn by_name(specs: &[TensorSpec], params: &[f64]) -> HashMap<String, Vec<f64>> {
    specs.iter().filter(|s| s.kind == TensorKind::Param).map(|s| (s.name.clone(), params[s.offset..s.offset + s.len()].to_vec())).collect()
}

/// `cnn` of encoders_ref.py on `x[rows, W, C]`, BatchNorm in training mode per group.
pub fn cnn64(cfg: &EncoderConfig, p: &HashMap<String, Vec<f64>>, x: &[f64], rows: usize, groups: usize) -> Vec<f64> {
    let Arch::Cnn(c) = &cfg.arch else { panic!("not a cnn") };
    let (mut h, mut len, mut cin) = (x.to_vec(), cfg.window, cfg.channels);
    let n = c.widths.len();
    for (i, &cout) in c.widths.iter().enumerate() {
        let (k, s, pad) = if i == 0 { (c.first_kernel, c.first_stride, c.first_padding) } else { (3, 1, 1) };
        let (y, lo) = conv1d64(&h, &p[&format!("blocks.{i}.0.weight")], &p[&format!("blocks.{i}.0.bias")], rows, len, cin, k, s, pad);
        let a = batchnorm64(&y, &p[&format!("blocks.{i}.1.weight")], &p[&format!("blocks.{i}.1.bias")], groups, true);
        (h, len, cin) = (a, lo, cout);
        if i + 1 < n {
            h = maxpool64(&h, rows, len, cin);
            len /= 2;
        }
    }
    let m = meanpool64(&h, rows, len, cin);
    linear64(&m, &p["head.weight"], &p["head.bias"], rows, cin, cfg.embed)
}

/// `isfm` of encoders_ref.py on `x[rows, W, C]` with the given patch starts and sampling rates,
/// BatchNorm in training mode per group, dropout keyed as the engine keys a training forward
/// with `key` (None: no dropout).
pub fn isfm64(cfg: &EncoderConfig, p: &HashMap<String, Vec<f64>>, x: &[f64], rates: &[f64], sl: &[usize], sc: &[usize], rows: usize, groups: usize, key: Option<u64>) -> Vec<f64> {
    let Arch::Isfm(c) = &cfg.arch else { panic!("not an isfm") };
    let shape = engine::ops::patch::PatchShape { samples: rows, window: cfg.window, channels: cfg.channels, patches: c.num_patches, patch_len: c.patch_size_l, patch_channels: c.patch_size_c };
    let n = rows * c.num_patches;
    let d = c.d_model;
    let drop = |layer: usize, site: u64| key.filter(|_| c.dropout > 0.0).map(|k| Dropout { p: c.dropout, key: mix_key(k, 0xE0 + site, layer as u64) });
    let e = patches64(x, rates, sl, sc, shape);
    let h1 = act64(&linear64(&e, &p["linear1.weight"], &p["linear1.bias"], n, shape.row_len(), d), Activation::Silu, None);
    let mut h = linear64(&h1, &p["linear2.weight"], &p["linear2.bias"], n, d, d);
    for l in 0..c.e_layers {
        let q = |s: &str| &p[&format!("encoder.layers.{l}.{s}")];
        let qkv = linear64(&h, q("self_attn.in_proj_weight"), q("self_attn.in_proj_bias"), n, d, 3 * d);
        let ctx = attention64(&qkv, rows, c.num_patches, c.num_heads, d / c.num_heads, drop(l, 0));
        let ao = linear64(&ctx, q("self_attn.out_proj.weight"), q("self_attn.out_proj.bias"), n, d, d);
        let x1 = add_layernorm64(&h, &ao, drop(l, 1), q("norm1.weight"), q("norm1.bias"));
        let f = act64(&linear64(&x1, q("linear1.weight"), q("linear1.bias"), n, d, c.d_ff), c.activation, drop(l, 2));
        let f2 = linear64(&f, q("linear2.weight"), q("linear2.bias"), n, c.d_ff, d);
        h = add_layernorm64(&x1, &f2, drop(l, 3), q("norm2.weight"), q("norm2.bias"));
    }
    let b = batchnorm64(&h, &p["norm.weight"], &p["norm.bias"], groups, false);
    let m = meanpool64(&b, rows, c.num_patches, d);
    linear64(&m, &p["head.weight"], &p["head.bias"], rows, d, cfg.embed)
}

/// The patch starts a training forward keyed `key` draws (`None`: evaluation's even starts).
pub fn starts(cfg: &EncoderConfig, rows: usize, key: Option<u64>) -> (Vec<usize>, Vec<usize>) {
    let Arch::Isfm(c) = &cfg.arch else { panic!("not an isfm") };
    let shape = engine::ops::patch::PatchShape { samples: rows, window: cfg.window, channels: cfg.channels, patches: c.num_patches, patch_len: c.patch_size_l, patch_channels: c.patch_size_c };
    let n = rows * c.num_patches;
    (0..n)
        .map(|i| match key {
            Some(k) => shape.random_start(Dropout::seed(mix_key(k, 0x5A, 0)), i),
            None => shape.even_start(i % c.num_patches),
        })
        .unzip()
}
