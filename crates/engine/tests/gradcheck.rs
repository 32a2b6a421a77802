//! Every backward against central finite differences of an independent f64 forward
//! (`common/mod.rs`): each op on its own, then every encoder whole with InfoNCE on top.
//!
//! Each check recomputes the forward in f64 from the same parameters, inputs and dropout masks
//! (a mask is a pure function of `(key, index)`), perturbs one value by ±h, and compares
//! `(L(x+h) − L(x−h)) / 2h` with the engine's f32 gradient. Inputs are random from a fixed seed
//! (printed; `GRADCHECK_SEED` replays another).

mod common;

use common::*;
use engine::encoders::mix_key;
use engine::ops::attention::AttentionShape;
use engine::ops::conv1d::ConvShape;
use engine::ops::norm::BatchNormArgs;
use engine::ops::pool::PoolShape;
use engine::*;

const H: f64 = 1e-6;

/// Uploads `v` into a fresh view.
fn put(dev: &mut CpuDevice, v: &[f64]) -> View {
    let view = dev.alloc(v.len()).unwrap();
    dev.upload(view, &f32s(v));
    view
}

fn zeros(dev: &mut CpuDevice, n: usize) -> View {
    dev.alloc(n).unwrap()
}

/// Values kept away from 0 by at least `gap` (so ±h never crosses a ReLU kink).
fn off_zero(v: Vec<f64>, gap: f64) -> Vec<f64> {
    v.into_iter().map(|x| if x.abs() < gap { x.signum() * gap + x } else { x }).collect()
}

// ---------- linear layers and activations ----------

#[test]
fn linear_backward_matches_finite_differences() {
    let key = seed();
    let (rows, inf, outf) = (5, 7, 4);
    let (x, w, b, r) = (randn(key, rows * inf, 1.0), randn(key ^ 1, outf * inf, 0.5), randn(key ^ 2, outf, 0.5), randn(key ^ 3, rows * outf, 1.0));
    let mut dev = CpuDevice::new();
    let (xv, wv, rv) = (put(&mut dev, &x), put(&mut dev, &w), put(&mut dev, &r));
    let (dwv, dbv, dxv) = (zeros(&mut dev, w.len()), zeros(&mut dev, b.len()), zeros(&mut dev, x.len()));
    dev.gemm(Gemm::tn(outf, inf, rows), dwv, rv, xv);
    dev.bias_grad(dbv, rv, outf, false);
    dev.gemm(Gemm::nn(rows, inf, outf), dxv, rv, wv);
    let (dw, db, dx) = (dev.slice(dwv).to_vec(), dev.slice(dbv).to_vec(), dev.slice(dxv).to_vec());
    let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&linear64(x, w, b, rows, inf, outf), &r);
    let (mut cw, mut cb, mut cx) = (Check::default(), Check::default(), Check::default());
    cw.numeric("dW", &w, 0..w.len(), &dw, H, |w| loss(&x, w, &b));
    cb.numeric("db", &b, 0..b.len(), &db, H, |b| loss(&x, &w, b));
    cx.numeric("dX", &x, 0..x.len(), &dx, H, |x| loss(x, &w, &b));
    cw.assert("Linear dW");
    cb.assert("Linear db");
    cx.assert("Linear dX");
}

#[test]
fn bias_relu_dropout_backward_matches_finite_differences() {
    let key = seed();
    let (rows, cols) = (6, 9);
    let y0 = off_zero(randn(key, rows * cols, 1.0), 0.05);
    let r = randn(key ^ 7, rows * cols, 1.0);
    for p in [0.0f32, 0.3] {
        let dropout = (p > 0.0).then_some(Dropout { p, key: key ^ 99 });
        let mut dev = CpuDevice::new();
        let (yv, bv, dv) = (put(&mut dev, &y0), zeros(&mut dev, cols), put(&mut dev, &r));
        dev.bias_act_forward(yv, bv, cols, true, dropout);
        let want = act64(&y0, Activation::Relu, dropout);
        for (a, b) in dev.slice(yv).iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs {b}");
        }
        dev.act_backward(dv, yv, Dropout::scale(p));
        let d = dev.slice(dv).to_vec();
        let mut c = Check::default();
        c.numeric("dY", &y0, 0..y0.len(), &d, H, |y| dot(&act64(y, Activation::Relu, dropout), &r));
        c.assert(&format!("bias+ReLU+Dropout(p={p})"));
    }
}

#[test]
fn activations_with_a_kept_input_match_finite_differences() {
    let key = seed();
    let (rows, cols) = (7, 11);
    let x0 = off_zero(randn(key ^ 11, rows * cols, 1.5), 0.02);
    let bias = randn(key ^ 12, cols, 0.3);
    let r = randn(key ^ 13, rows * cols, 1.0);
    for act in [Activation::Gelu, Activation::Silu, Activation::Relu, Activation::Identity] {
        for p in [0.0f32, 0.25] {
            let dropout = (p > 0.0).then_some(Dropout { p, key: key ^ 5 });
            let mut dev = CpuDevice::new();
            let (pre, out, bv, d) = (put(&mut dev, &x0), zeros(&mut dev, x0.len()), put(&mut dev, &bias), put(&mut dev, &r));
            dev.act_forward(pre, out, Some(bv), cols, act, dropout);
            let with_bias: Vec<f64> = x0.iter().enumerate().map(|(i, v)| v + bias[i % cols]).collect();
            for (a, b) in dev.slice(out).iter().zip(&act64(&with_bias, act, dropout)) {
                assert!((*a as f64 - b).abs() < 2e-6 * b.abs().max(1.0), "{act} forward {a} vs {b}");
            }
            dev.act_backward_pre(d, pre, cols, act, dropout);
            let g = dev.slice(d).to_vec();
            let mut c = Check::default();
            c.numeric("dpre", &with_bias, 0..with_bias.len(), &g, H, |x| dot(&act64(x, act, dropout), &r));
            c.assert(&format!("{act} + Dropout(p={p})"));
        }
    }
}

// ---------- normalisations ----------

#[test]
fn residual_layernorm_backward_matches_finite_differences() {
    let key = seed();
    let (rows, cols) = (5, 12);
    let (a, b) = (randn(key ^ 21, rows * cols, 1.0), randn(key ^ 22, rows * cols, 1.0));
    let (gamma, beta) = (randn(key ^ 23, cols, 1.0), randn(key ^ 24, cols, 0.5));
    let r = randn(key ^ 25, rows * cols, 1.0);
    for p in [0.0f32, 0.2] {
        let dropout = (p > 0.0).then_some(Dropout { p, key: key ^ 26 });
        let mut dev = CpuDevice::new();
        let (av, bv, gv, btv, rv) = (put(&mut dev, &a), put(&mut dev, &b), put(&mut dev, &gamma), put(&mut dev, &beta), put(&mut dev, &r));
        let (sum, out, stats) = (zeros(&mut dev, a.len()), zeros(&mut dev, a.len()), zeros(&mut dev, 2 * rows));
        let (dsum, db, dg, dbt) = (zeros(&mut dev, a.len()), zeros(&mut dev, a.len()), zeros(&mut dev, cols), zeros(&mut dev, cols));
        dev.add_layernorm_forward(av, bv, dropout, sum, out, stats, gv, btv, cols, 1e-5);
        for (x, y) in dev.slice(out).iter().zip(&add_layernorm64(&a, &b, dropout, &gamma, &beta)) {
            assert!((*x as f64 - y).abs() < 1e-5, "forward {x} vs {y}");
        }
        dev.layernorm_backward(rv, sum, stats, gv, dg, dbt, dsum, db, dropout, cols, false);
        let loss = |a: &[f64], b: &[f64], g: &[f64], bt: &[f64]| dot(&add_layernorm64(a, b, dropout, g, bt), &r);
        let mut c = Check::default();
        c.numeric("da", &a, 0..a.len(), dev.slice(dsum), H, |x| loss(x, &b, &gamma, &beta));
        c.numeric("db", &b, 0..b.len(), dev.slice(db), H, |x| loss(&a, x, &gamma, &beta));
        c.numeric("dγ", &gamma, 0..cols, dev.slice(dg), H, |x| loss(&a, &b, x, &beta));
        c.numeric("dβ", &beta, 0..cols, dev.slice(dbt), H, |x| loss(&a, &b, &gamma, x));
        c.assert(&format!("LayerNorm(a + Dropout(p={p})(b))"));
    }
}

#[test]
fn batchnorm_backward_matches_finite_differences_per_group() {
    let key = seed();
    // The CPU kernels run strips of 64 columns (32 for the backward's two sums), each width of
    // 64, 32, 16 and 8 its own copy of the loop: 300 = 4 · 64 + 44 (and 9 · 32 + 12), 96 = 64 + 32
    // (3 · 32), 72 = 64 + 8 (2 · 32 + 8), 40 (one strip of any width; 32 + 8), 16 alone, and 3 and 5
    // take the copy of any width. With a pool (`Some(len)`:
    // MaxPool1d(2) over samples of `len` rows fused after the ReLU), odd lengths drop each
    // sample's last row.
    let cases = [
        (12, 2, true, 5, None),
        (9, 1, false, 5, None),
        (16, 4, true, 5, None),
        (6, 2, true, 300, None),
        (12, 2, true, 5, Some(3)),
        (16, 2, true, 3, Some(4)),
        (12, 1, false, 300, Some(6)),
        (8, 2, true, 16, Some(4)),
        (10, 2, false, 40, None),
        (6, 1, true, 72, Some(3)),
        (8, 2, true, 96, None),
    ];
    for (rows, groups, relu, cols, pool) in cases {
        let mut x = randn(key ^ rows as u64 ^ (cols as u64) << 8, rows * cols, 2.0);
        if let Some(len) = pool {
            // Each pooled pair's second row 3 apart from its first, up or down by pair, so that
            // ±h never swaps a maximum (γ is kept off 0 for the same reason).
            for (i, v) in x.iter_mut().enumerate() {
                let step = i / cols % len;
                *v += (step % 2) as f64 * if step / 2 % 2 == 0 { 3.0 } else { -3.0 };
            }
        }
        let (gamma, beta) = (off_zero(randn(key ^ 31, cols, 1.0), 0.3), randn(key ^ 32, cols, 0.5));
        let forward64 = |x: &[f64], g: &[f64], b: &[f64]| {
            let y = batchnorm64(x, g, b, groups, relu);
            pool.map_or(y.clone(), |len| maxpool64(&y, rows / len, len, cols))
        };
        let want = forward64(&x, &gamma, &beta);
        let r = randn(key ^ 33, want.len(), 1.0);
        let mut dev = CpuDevice::new();
        let (xv, gv, bv, rv) = (put(&mut dev, &x), put(&mut dev, &gamma), put(&mut dev, &beta), put(&mut dev, &r));
        let argmax_len = if pool.is_some() { want.len() } else { 0 };
        let (out, argmax, stats, running) = (zeros(&mut dev, want.len()), zeros(&mut dev, argmax_len), zeros(&mut dev, 2 * groups * cols), zeros(&mut dev, 2 * cols));
        let (dx, dg, db) = (zeros(&mut dev, x.len()), zeros(&mut dev, cols), zeros(&mut dev, cols));
        let args = BatchNormArgs { cols, groups, eps: 1e-5, momentum: 0.1, train: true, relu, pool };
        dev.batchnorm_forward(xv, out, argmax, stats, gv, bv, running, args);
        for (a, b) in dev.slice(out).iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs {b}");
        }
        // ReLU kinks: the check perturbs x, so keep the outputs of this draw away from 0 (else
        // the numeric gradient straddles the kink).
        assert!(batchnorm64(&x, &gamma, &beta, groups, relu).iter().all(|v| *v == 0.0 || v.abs() > 1e-4));
        dev.batchnorm_backward(rv, out, argmax, xv, stats, gv, dg, db, dx, args, false);
        let loss = |x: &[f64], g: &[f64], b: &[f64]| dot(&forward64(x, g, b), &r);
        let mut c = Check::default();
        c.numeric("dx", &x, 0..x.len(), dev.slice(dx), H, |v| loss(v, &gamma, &beta));
        c.numeric("dγ", &gamma, 0..cols, dev.slice(dg), H, |v| loss(&x, v, &beta));
        c.numeric("dβ", &beta, 0..cols, dev.slice(db), H, |v| loss(&x, &gamma, v));
        c.assert(&format!("BatchNorm rows={rows} cols={cols} groups={groups} relu={relu} pool={pool:?}"));
    }
}

#[test]
fn fused_batchnorm_and_pool_give_the_bits_of_the_two_ops_in_turn() {
    // The CNN's `BN → ReLU → MaxPool` as one op against BatchNorm then `maxpool_forward` /
    // `maxpool_backward`: the same values in the same order, so the same bits, forward and
    // backward, on one worker and on several. The backward forms the routed gradient in blocks of
    // 128 rows, which in (16, 33, 64) start and end inside samples, between the two rows of a
    // pair and at an odd length's dropped row; the last two shapes are also large enough (2^15
    // values) for the CPU to split the forward's pooled rows and the input gradient's rows among
    // workers.
    let key = seed();
    for (samples, len, cols, groups, relu) in [(8, 7, 5, 2, true), (4, 32, 64, 2, true), (6, 10, 300, 3, false), (16, 33, 64, 2, true), (10, 7, 500, 2, true)] {
        let rows = samples * len;
        let x = randn(key ^ 61 ^ len as u64, rows * cols, 2.0);
        let (gamma, beta) = (randn(key ^ 62, cols, 1.0), randn(key ^ 63, cols, 0.5));
        let half = len / 2;
        let r = randn(key ^ 64, samples * half * cols, 1.0);
        let p = PoolShape { samples, len, cols };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let run = |fused: bool| {
                pool.install(|| {
                    let mut dev = CpuDevice::new();
                    let (xv, gv, bv, rv) = (put(&mut dev, &x), put(&mut dev, &gamma), put(&mut dev, &beta), put(&mut dev, &r));
                    let (pooled, argmax, stats, running) = (zeros(&mut dev, r.len()), zeros(&mut dev, r.len()), zeros(&mut dev, 2 * groups * cols), zeros(&mut dev, 2 * cols));
                    let (dx, dg, db) = (zeros(&mut dev, x.len()), zeros(&mut dev, cols), zeros(&mut dev, cols));
                    let args = BatchNormArgs { cols, groups, eps: 1e-5, momentum: 0.1, train: true, relu, pool: None };
                    if fused {
                        let args = BatchNormArgs { pool: Some(len), ..args };
                        dev.batchnorm_forward(xv, pooled, argmax, stats, gv, bv, running, args);
                        dev.batchnorm_backward(rv, pooled, argmax, xv, stats, gv, dg, db, dx, args, false);
                    } else {
                        let (a, da) = (zeros(&mut dev, x.len()), zeros(&mut dev, x.len()));
                        dev.batchnorm_forward(xv, a, a.prefix(0), stats, gv, bv, running, args);
                        dev.maxpool_forward(a, pooled, argmax, p);
                        dev.maxpool_backward(rv, argmax, da, p);
                        dev.batchnorm_backward(da, a, a.prefix(0), xv, stats, gv, dg, db, dx, args, false);
                    }
                    [pooled, argmax, running, dx, dg, db].map(|v| dev.slice(v).to_vec())
                })
            };
            let (fused, apart) = (run(true), run(false));
            for (name, (f, a)) in ["pooled", "argmax", "running statistics", "dx", "dγ", "dβ"].iter().zip(fused.iter().zip(&apart)) {
                assert!(f.iter().zip(a).all(|(f, a)| f.to_bits() == a.to_bits()), "{name} differs (samples {samples}, len {len}, cols {cols}, {threads} threads)");
            }
            assert!(fused[1].contains(&1.0) && fused[1].contains(&0.0), "both halves of the pairs win somewhere");
        }
    }
}

#[test]
fn batchnorm_running_statistics_follow_pytorch() {
    // Two groups (two forward calls in PyTorch): the running update is applied once per group, in
    // order, with the unbiased variance; evaluation then normalises by the running statistics.
    let (cols, gr) = (2, 3);
    let x = [1.0, 10.0, 2.0, 20.0, 6.0, 60.0, /* group 2 */ 0.0, 0.0, 0.0, 3.0, 3.0, 6.0];
    let mut dev = CpuDevice::new();
    let xv = put(&mut dev, &x);
    let (gv, bv) = (put(&mut dev, &[1.0, 1.0]), zeros(&mut dev, cols));
    let running = put(&mut dev, &[0.0, 0.0, 1.0, 1.0]);
    let (out, stats) = (zeros(&mut dev, x.len()), zeros(&mut dev, 4 * cols));
    dev.batchnorm_forward(xv, out, out.prefix(0), stats, gv, bv, running, BatchNormArgs { cols, groups: 2, eps: 1e-5, momentum: 0.1, train: true, relu: false, pool: None });
    let mut m = [0.0f64, 0.0];
    let mut v = [1.0f64, 1.0];
    for g in 0..2 {
        for j in 0..cols {
            let col: Vec<f64> = (0..gr).map(|r| x[(g * gr + r) * cols + j]).collect();
            let mu = col.iter().sum::<f64>() / 3.0;
            let unbiased = col.iter().map(|c| (c - mu).powi(2)).sum::<f64>() / 2.0;
            m[j] = 0.9 * m[j] + 0.1 * mu;
            v[j] = 0.9 * v[j] + 0.1 * unbiased;
        }
    }
    let got = dev.slice(running).to_vec();
    for (a, b) in got.iter().zip(m.iter().chain(&v)) {
        assert!((*a as f64 - b).abs() < 1e-5, "running {got:?} vs {m:?} {v:?}");
    }
    dev.batchnorm_forward(xv, out, out.prefix(0), stats.prefix(2 * cols), gv, bv, running, BatchNormArgs { cols, groups: 1, eps: 1e-5, momentum: 0.1, train: false, relu: false, pool: None });
    let y = dev.slice(out).to_vec();
    for (i, &xi) in x.iter().enumerate() {
        let j = i % cols;
        let want = (xi - m[j]) / (v[j] + 1e-5).sqrt();
        assert!((y[i] as f64 - want).abs() < 1e-4, "eval {i}: {} vs {want}", y[i]);
    }
}

// ---------- convolution and pooling ----------

#[test]
fn conv1d_backward_matches_finite_differences() {
    let key = seed();
    // (samples, len, C, out, k, stride, pad): the encoder's wide first layer in small, a k3 p1, one
    // whose rows are not evenly spaced (the im2col path), a k4 s2 p1, and one with no edge rows
    // at all. All but the third read their rows in place.
    // Two more of stride 1, whose input gradient the CPU runs as a convolution of dy where it
    // reads that one's rows in place (k5 p2 does; k3 p0, of another length, does not).
    for (samples, len, c, o, k, stride, pad) in
        [(2, 40, 3, 4, 8, 4, 3), (3, 9, 2, 3, 3, 1, 1), (1, 17, 1, 2, 5, 2, 0), (3, 12, 2, 3, 4, 2, 1), (2, 12, 2, 3, 2, 2, 0), (2, 11, 3, 4, 5, 1, 2), (2, 10, 2, 3, 3, 1, 0)]
    {
        let x = randn(key ^ len as u64, samples * len * c, 1.0);
        let w = randn(key ^ 41, o * c * k, 0.5);
        let b = randn(key ^ 42, o, 0.5);
        let s = ConvShape { samples, len_in: len, channels: c, kernel: k, stride, padding: pad };
        let lo = s.len_out().unwrap();
        let r = randn(key ^ 43, samples * lo * o, 1.0);
        let mut dev = CpuDevice::new();
        let (xv, wv, bv, rv) = (put(&mut dev, &x), put(&mut dev, &w), put(&mut dev, &b), put(&mut dev, &r));
        let (cols, y) = (zeros(&mut dev, samples * lo * c * k), zeros(&mut dev, samples * lo * o));
        let (dw, db, dcols, dx) = (zeros(&mut dev, w.len()), zeros(&mut dev, o), zeros(&mut dev, samples * lo * c * k), zeros(&mut dev, x.len()));
        // The op's sequence: the weight made tap-major, the product (rows in place, or im2col and
        // GEMM), bias.
        let (w_taps, dw_taps) = (zeros(&mut dev, w.len()), zeros(&mut dev, w.len()));
        dev.transpose_inner(wv, w_taps, o, c, k, false);
        dev.conv_forward_product(xv, w_taps, cols, y, s, o);
        dev.bias_act_forward(y, bv, o, false, None);
        let (want, lo64) = conv1d64(&x, &w, &b, samples, len, c, k, stride, pad);
        assert_eq!(lo, lo64);
        for (a, e) in dev.slice(y).iter().zip(&want) {
            assert!((*a as f64 - e).abs() < 1e-5, "forward {a} vs {e}");
        }
        dev.conv_weight_product(xv, cols, rv, dw_taps, s, o);
        dev.transpose_inner(dw_taps, dw, o, k, c, false);
        dev.bias_grad(db, rv, o, false);
        dev.gemm(Gemm::nn(samples * lo, c * k, o), dcols, rv, w_taps);
        dev.col2im(dcols, dx, s);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&conv1d64(x, w, b, samples, len, c, k, stride, pad).0, &r);
        let mut ch = Check::default();
        ch.numeric("dx", &x, 0..x.len(), dev.slice(dx), H, |v| loss(v, &w, &b));
        ch.numeric("dW", &w, 0..w.len(), dev.slice(dw), H, |v| loss(&x, v, &b));
        ch.numeric("db", &b, 0..o, dev.slice(db), H, |v| loss(&x, &w, v));
        ch.assert(&format!("Conv1d C={c} k={k} s={stride} p={pad}"));
        // The input gradient as a convolution (`Conv1d::backward`'s path where it applies): dy's
        // rows against the flipped taps give the same dx.
        if let Some(t) = s.input_gradient_on(&dev, o) {
            let (w_back, dx2) = (zeros(&mut dev, w.len()), zeros(&mut dev, x.len()));
            dev.conv_transposed_taps(wv, w_back, o, c, k);
            dev.conv_forward_product(rv, w_back, dx2.prefix(0), dx2, t, c);
            let (a, e) = (dev.slice(dx2).to_vec(), dev.slice(dx).to_vec());
            assert!(a.iter().zip(&e).all(|(a, e)| (a - e).abs() < 1e-5), "Conv1d C={c} k={k} p={pad}: dx as a convolution {a:?} vs {e:?}");
        } else {
            assert!(stride != 1 || (k, pad) == (3, 0), "Conv1d C={c} k={k} s={stride} p={pad}: a same-length stride-1 convolution runs its input gradient as one");
        }
    }
}

#[test]
fn pooling_backward_matches_finite_differences() {
    let key = seed();
    let (samples, len, c) = (3, 7, 4); // odd length: the last step is dropped by MaxPool1d(2)
                                       // Pairs far apart so ±h never swaps a maximum.
    let x: Vec<f64> = randn(key ^ 51, samples * len * c, 1.0).iter().enumerate().map(|(i, v)| v + ((i / c) % 2) as f64 * 3.0 * if (i / c / 2) % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let mut dev = CpuDevice::new();
    let xv = put(&mut dev, &x);
    let s = PoolShape { samples, len, cols: c };
    let lo = len / 2;
    let (out, arg, dx) = (zeros(&mut dev, samples * lo * c), zeros(&mut dev, samples * lo * c), zeros(&mut dev, x.len()));
    dev.maxpool_forward(xv, out, arg, s);
    let r = randn(key ^ 52, samples * lo * c, 1.0);
    let rv = put(&mut dev, &r);
    dev.maxpool_backward(rv, arg, dx, s);
    let mut chk = Check::default();
    chk.numeric("dx", &x, 0..x.len(), dev.slice(dx), H, |v| dot(&maxpool64(v, samples, len, c), &r));
    chk.assert("MaxPool1d(2)");
    let (mean, dxm) = (zeros(&mut dev, samples * c), zeros(&mut dev, x.len()));
    dev.meanpool_forward(xv, mean, s);
    let rm = randn(key ^ 53, samples * c, 1.0);
    let rmv = put(&mut dev, &rm);
    dev.meanpool_backward(rmv, dxm, s);
    let mut chk = Check::default();
    chk.numeric("dx", &x, 0..x.len(), dev.slice(dxm), H, |v| dot(&meanpool64(v, samples, len, c), &rm));
    chk.assert("mean over time");
}

#[test]
fn maxpool_keeps_the_first_of_equal_values() {
    let mut dev = CpuDevice::new();
    let x = put(&mut dev, &[2.0, 2.0, 1.0, 5.0]);
    let (out, arg, dx) = (zeros(&mut dev, 2), zeros(&mut dev, 2), zeros(&mut dev, 4));
    let s = PoolShape { samples: 1, len: 4, cols: 1 };
    dev.maxpool_forward(x, out, arg, s);
    let g = put(&mut dev, &[1.0, 1.0]);
    dev.maxpool_backward(g, arg, dx, s);
    assert_eq!(dev.slice(out), &[2.0, 5.0]);
    assert_eq!(dev.slice(dx), &[1.0, 0.0, 0.0, 1.0]);
}

// ---------- attention ----------

#[test]
fn attention_backward_matches_finite_differences_with_and_without_dropout() {
    let key = seed();
    // (samples, seq, heads, dh): one tile, and a sequence of three 128-row tiles (the online
    // softmax across key tiles and the accumulation across query tiles).
    for (samples, seq, heads, dh, p) in [(2, 5, 2, 3, 0.0f32), (2, 5, 2, 3, 0.3), (1, 300, 1, 2, 0.1)] {
        let d = heads * dh;
        let qkv = randn(key ^ seq as u64 ^ (p * 10.0) as u64, samples * seq * 3 * d, 1.0);
        let r = randn(key ^ 61, samples * seq * d, 1.0);
        let dropout = (p > 0.0).then_some(Dropout { p, key: key ^ 62 });
        let a = AttentionShape { samples, seq, heads, head_dim: dh };
        let mut dev = CpuDevice::new();
        let (qv, rv) = (put(&mut dev, &qkv), put(&mut dev, &r));
        let (out, lse, dq) = (zeros(&mut dev, samples * seq * d), zeros(&mut dev, a.lse_len()), zeros(&mut dev, qkv.len()));
        dev.attention_forward(qv, out, lse, a, dropout);
        let want = attention64(&qkv, samples, seq, heads, dh, dropout);
        for (x, y) in dev.slice(out).iter().zip(&want) {
            assert!((*x as f64 - y).abs() < 1e-5, "forward {x} vs {y}");
        }
        dev.attention_backward(qv, out, lse, rv, dq, a, dropout);
        let mut c = Check::default();
        c.numeric("dqkv", &qkv, sample(key ^ 63, qkv.len(), 400), dev.slice(dq), H, |v| dot(&attention64(v, samples, seq, heads, dh, dropout), &r));
        c.assert(&format!("attention seq={seq} heads={heads} dh={dh} dropout={p}"));
    }
}

// ---------- loss ----------

#[test]
fn normalize_infonce_backward_matches_finite_differences() {
    let key = seed();
    // The last two span several of the kernel's row tiles (the last one partial).
    let tiled = [(engine::loss::LOSS_TILE + 5, 4, 0.2, false), (2 * engine::loss::LOSS_TILE + 37, 6, 0.1, true)];
    for (b, d, tau, symmetric) in [(4, 5, 0.07, false), (6, 3, 0.5, true), (1, 4, 0.1, false), (3, 8, 0.05, true)].into_iter().chain(tiled) {
        let z = randn(key ^ b as u64, 2 * b * d, 1.0);
        let mut dev = CpuDevice::new();
        let (zv, dzv) = (put(&mut dev, &z), zeros(&mut dev, z.len()));
        let out = dev.infonce(zv, Some(dzv), b, d, tau as f32, symmetric, 1.0);
        let want = infonce64(&z, b, d, tau, symmetric);
        assert!((out.loss as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "loss {} vs {want}", out.loss);
        let dz = dev.slice(dzv).to_vec();
        let mut c = Check::default();
        // Large batches: a sample of coordinates that includes the first and last row of each tile.
        let coords: Vec<usize> = if b <= 8 { (0..z.len()).collect() } else { tile_edges(b, d).chain(sample(key ^ 71, z.len(), 120)).collect() };
        c.numeric("dz", &z, coords, &dz, H, |v| infonce64(v, b, d, tau, symmetric));
        if b > 1 {
            c.assert(&format!("normalize+InfoNCE b={b} d={d} tau={tau} symmetric={symmetric}"));
        } else {
            // One pair: the loss is identically 0, so is every gradient.
            assert!(c.pairs.iter().all(|(_, a, n)| a.abs() < 1e-9 && n.abs() < 1e-9));
        }
    }
}

/// The first coordinate of the first and last anchor and positive row of every loss tile.
fn tile_edges(b: usize, d: usize) -> impl Iterator<Item = usize> {
    let t = engine::loss::LOSS_TILE;
    (0..b).step_by(t).flat_map(move |r0| [r0, (r0 + t).min(b) - 1]).flat_map(move |r| [r * d, (b + r) * d])
}

// ---------- whole encoders + InfoNCE ----------

/// Checks every encoder parameter's gradient (a sample of each tensor) of one training step
/// against central differences of `loss64(params)`.
fn check_model(name: &str, step: &mut ContrastiveStep<CpuDevice>, pairs: Pairs, loss64: impl Fn(&[f64]) -> f64) {
    let params = f64s(&step.encoder.params_to_vec());
    let specs: Vec<TensorSpec> = step.encoder.tensors().to_vec();
    let out = step.forward_backward(pairs, false, 1.0).unwrap();
    let l0 = loss64(&params);
    assert!((out.loss as f64 - l0).abs() < 1e-4 * l0.max(1.0), "{name}: loss {} vs {l0}", out.loss);
    let grads = step.encoder.grads_to_vec();
    // Each tensor judged on its own: pooled, a tensor whose gradients are a thousandth of the
    // largest could be wrong, sign and all, inside the tolerance of the others. What no tensor
    // can be held to is f32's noise, ~1e-7 of the loss's scale: the floor is 1e-5 of the largest
    // tensor's gradient norm (a tensor whose true gradient is 0 — a convolution's bias before a
    // BatchNorm — must come out within it).
    let checks: Vec<(String, Check)> = specs
        .iter()
        .filter(|s| s.kind == TensorKind::Param)
        .enumerate()
        .map(|(ti, s)| {
            let idx: Vec<usize> = sample(0xC0FFEE ^ ti as u64, s.len(), 12).into_iter().map(|i| s.offset + i).collect();
            let mut c = Check::default();
            c.numeric(&s.name, &params, idx, &grads, H, &loss64);
            (s.name.clone(), c)
        })
        .collect();
    let largest = checks.iter().map(|(_, c)| c.numeric_norm()).fold(0.0, f64::max);
    assert!(largest > 1e-6, "{name}: every numeric gradient is zero: the check would prove nothing");
    for (tensor, c) in &checks {
        c.assert_within(&format!("{name}: {tensor}"), 1e-5 * largest);
    }
}

#[test]
fn whole_mlps_and_infonce_gradients_match_finite_differences() {
    let key = seed();
    // The last case is large enough that the CPU device runs its weight and input gradients on the
    // zero-skipping kernel (`sparse_a`, where the CPU has AVX2 + FMA).
    for (kind, window, b) in [(EncoderKind::MlpSimple, 6, 4), (EncoderKind::MlpMedium, 6, 4), (EncoderKind::MlpComplex, 6, 4), (EncoderKind::MlpMedium, 64, 8)] {
        let cfg = EncoderConfig { embed: 8, ..EncoderConfig::new(kind, window, 1) };
        let enc = cfg.init(CpuDevice::new(), 2 * b, key).unwrap();
        let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.1, symmetric: false }, OptimizerConfig::default(), key).unwrap();
        let x = randn(key ^ 5, 2 * b * window, 1.0);
        let xf = f32s(&x);
        let fkey = mix_key(key, 0xF0, 0); // the first training forward's key
        let layers = engine::encoders::mlp::layers(&cfg);
        let loss64 = |params: &[f64]| {
            let mut h = x.clone();
            let mut off = 0;
            for (li, s) in layers.iter().enumerate() {
                let nw = s.in_features * s.out_features;
                let y = linear64(&h, &params[off..off + nw], &params[off + nw..off + nw + s.out_features], 2 * b, s.in_features, s.out_features);
                off += nw + s.out_features;
                let drop = (s.dropout > 0.0).then(|| Dropout { p: s.dropout, key: mix_key(fkey, 0xD0, li as u64) });
                h = if s.relu { act64(&y, Activation::Relu, drop) } else { y };
            }
            infonce64(&h, b, cfg.embed, 0.1, false)
        };
        check_model(&format!("{kind} W={window} + InfoNCE"), &mut step, Pairs::new(&xf[..b * window], &xf[b * window..]), loss64);
    }
}

#[test]
fn whole_cnn_and_infonce_gradients_match_finite_differences() {
    let key = seed();
    // A small CNN of the reference's shape: wide strided first kernel, pools, k3 blocks.
    let cnn = CnnConfig { widths: vec![4, 6, 5], first_kernel: 8, first_stride: 4, first_padding: 2 };
    let cfg = EncoderConfig { arch: Arch::Cnn(cnn), window: 64, channels: 2, embed: 6 };
    let b = 4;
    let enc = cfg.init(CpuDevice::new(), 2 * b, key).unwrap();
    let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.2, symmetric: true }, OptimizerConfig::default(), key).unwrap();
    let x = randn(key ^ 71, 2 * b * cfg.input(), 1.0);
    let xf = f32s(&x);
    let specs = step.encoder.tensors().to_vec();
    let loss64 = |params: &[f64]| {
        let z = cnn64(&cfg, &by_name(&specs, params), &x, 2 * b, 2);
        infonce64(&z, b, cfg.embed, 0.2, true)
    };
    check_model("cnn + InfoNCE (each view its own BatchNorm statistics)", &mut step, Pairs::new(&xf[..b * cfg.input()], &xf[b * cfg.input()..]), loss64);
}

#[test]
fn whole_isfm_and_infonce_gradients_match_finite_differences() {
    let key = seed();
    for (activation, dropout) in [(Activation::Gelu, 0.1f32), (Activation::Relu, 0.0)] {
        let isfm = IsfmConfig { num_patches: 5, patch_size_l: 4, patch_size_c: 1, d_model: 8, num_heads: 2, e_layers: 2, d_ff: 12, dropout, activation };
        let cfg = EncoderConfig { arch: Arch::Isfm(isfm), window: 24, channels: 2, embed: 6 };
        let b = 3;
        let enc = cfg.init(CpuDevice::new(), 2 * b, key).unwrap();
        let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.2, symmetric: false }, OptimizerConfig::default(), key).unwrap();
        let x = randn(key ^ 81, 2 * b * cfg.input(), 1.0);
        let xf = f32s(&x);
        let rates = [100.0f32, 12_000.0, 8.0];
        let rates64: Vec<f64> = rates.iter().chain(&rates).map(|&r| r as f64).collect();
        // The step runs each view on its own lane, drawing its patch starts and dropout masks
        // from a key of its own: two forward calls, as PyTorch's.
        let fkey = mix_key(key, 0xF0, 0);
        let keys = [view_key(fkey, 0), view_key(fkey, 1)];
        let view_starts = keys.map(|k| starts(&cfg, b, Some(k)));
        let specs = step.encoder.tensors().to_vec();
        let n = b * cfg.input();
        let loss64 = |params: &[f64]| {
            let named = by_name(&specs, params);
            let mut z = Vec::new();
            for (v, (k, (sl, sc))) in keys.iter().zip(&view_starts).enumerate() {
                z.extend(isfm64(&cfg, &named, &x[v * n..(v + 1) * n], &rates64[v * b..(v + 1) * b], sl, sc, b, 1, Some(*k)));
            }
            infonce64(&z, b, cfg.embed, 0.2, false)
        };
        let pairs = Pairs::new(&xf[..b * cfg.input()], &xf[b * cfg.input()..]).with_rates(&rates);
        check_model(&format!("isfm ({activation}, dropout {dropout}) + InfoNCE"), &mut step, pairs, loss64);
    }
}

#[test]
fn isfm_patches_are_the_references() {
    // Evaluation's evenly spaced starts, a time channel from the rate, channel starts cycling.
    let isfm = IsfmConfig { num_patches: 4, patch_size_l: 3, patch_size_c: 1, d_model: 8, num_heads: 2, e_layers: 1, d_ff: 8, dropout: 0.0, activation: Activation::Gelu };
    let cfg = EncoderConfig { arch: Arch::Isfm(isfm), window: 10, channels: 2, embed: 4 };
    let (sl, sc) = starts(&cfg, 1, None);
    // round(i · 7 / 3): 0, 2.33 → 2, 4.67 → 5, 7; channels i mod 2.
    assert_eq!(sl, vec![0, 2, 5, 7]);
    assert_eq!(sc, vec![0, 1, 0, 1]);
    let shape = engine::ops::patch::PatchShape { samples: 1, window: 10, channels: 2, patches: 4, patch_len: 3, patch_channels: 1 };
    let x: Vec<f64> = (0..20).map(|i| i as f64).collect();
    let p = patches64(&x, &[2.0], &sl, &sc, shape);
    // Patch 1 starts at t = 2 on channel 1: values x[2,1], x[3,1], x[4,1] = 5, 7, 9; times 1, 1.5, 2.
    assert_eq!(&p[6..12], &[5.0, 1.0, 7.0, 1.5, 9.0, 2.0]);
    let mut dev = CpuDevice::new();
    let (xv, rv, st, out) = (put(&mut dev, &x), put(&mut dev, &[2.0]), zeros(&mut dev, 8), zeros(&mut dev, 4 * 6));
    dev.patch_starts(st, shape, None);
    dev.patch_gather(xv, rv, st, out, shape);
    assert_eq!(f64s(dev.slice(out)), p);
    // Random starts stay inside the window and channels.
    let shape = engine::ops::patch::PatchShape { samples: 50, ..shape };
    let st = zeros(&mut dev, shape.starts_len());
    dev.patch_starts(st, shape, Some(7));
    let v = dev.slice(st).to_vec();
    assert!(v[..200].iter().all(|&t| (0.0..=7.0).contains(&t)) && v[200..].iter().all(|&c| c == 0.0 || c == 1.0));
    assert!(v[..200].contains(&0.0) && v[..200].contains(&7.0), "both ends of the range are drawn");
}

#[test]
fn projection_head_gradients_match_finite_differences() {
    // InfoNCE on Linear(D, D) → ReLU → Linear(D, P) of an MLP's embedding: the head's and the
    // encoder's gradients.
    let key = seed();
    let (window, b, proj) = (6, 4, 5);
    let cfg = EncoderConfig { embed: 8, ..EncoderConfig::new(EncoderKind::MlpSimple, window, 1) };
    let enc = cfg.init(CpuDevice::new(), 2 * b, key).unwrap();
    let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.2, symmetric: false }, OptimizerConfig::default(), key).unwrap().with_projection(proj).unwrap();
    let x = randn(key ^ 91, 2 * b * window, 1.0);
    let xf = f32s(&x);
    let layers = engine::encoders::mlp::layers(&cfg);
    let enc_params = f64s(&step.encoder.params_to_vec());
    let head_params = f64s(&step.head_state().unwrap()[0]);
    let loss64 = |ep: &[f64], hp: &[f64]| {
        let mut h = x.clone();
        let mut off = 0;
        for s in &layers {
            let nw = s.in_features * s.out_features;
            let y = linear64(&h, &ep[off..off + nw], &ep[off + nw..off + nw + s.out_features], 2 * b, s.in_features, s.out_features);
            off += nw + s.out_features;
            h = if s.relu { act64(&y, Activation::Relu, None) } else { y };
        }
        let d = cfg.embed;
        let (w1, rest) = hp.split_at(d * d);
        let (b1, rest) = rest.split_at(d);
        let (w2, b2) = rest.split_at(proj * d);
        let hid = act64(&linear64(&h, w1, b1, 2 * b, d, d), Activation::Relu, None);
        infonce64(&linear64(&hid, w2, b2, 2 * b, d, proj), b, proj, 0.2, false)
    };
    let out = step.forward_backward(Pairs::new(&xf[..b * window], &xf[b * window..]), false, 1.0).unwrap();
    assert!((out.loss as f64 - loss64(&enc_params, &head_params)).abs() < 1e-4);
    let grads = step.encoder.grads_to_vec();
    let head = step.head().unwrap();
    let mut head_grads = vec![0.0; head.arenas().grads.len()];
    step.encoder.device.download(head.arenas().grads, &mut head_grads);
    // Each tensor judged on its own, as `check_model` does: pooled, the head's larger gradients
    // would hide an encoder tensor's error inside their tolerance.
    let d = cfg.embed;
    let head_tensors = [("head 0.weight", 0..d * d), ("head 0.bias", d * d..d * d + d), ("head 2.weight", d * d + d..d * d + d + proj * d), ("head 2.bias", d * d + d + proj * d..head_params.len())];
    let mut checks: Vec<(String, Check)> = head_tensors
        .into_iter()
        .map(|(name, range)| {
            let mut c = Check::default();
            c.numeric(name, &head_params, range, &head_grads, H, |hp| loss64(&enc_params, hp));
            (name.to_string(), c)
        })
        .collect();
    for (ti, s) in step.encoder.tensors().iter().filter(|s| s.kind == TensorKind::Param).enumerate() {
        let idx: Vec<usize> = sample(key ^ 92 ^ ti as u64, s.len(), 12).into_iter().map(|i| s.offset + i).collect();
        let mut c = Check::default();
        c.numeric(&s.name, &enc_params, idx, &grads, H, |ep| loss64(ep, &head_params));
        checks.push((format!("encoder {}", s.name), c));
    }
    assert_eq!(checks.len(), 4 + 2 * layers.len(), "every tensor of the head and of the encoder");
    let largest = checks.iter().map(|(_, c)| c.numeric_norm()).fold(0.0, f64::max);
    assert!(largest > 1e-6, "every numeric gradient is zero: the check would prove nothing");
    for (tensor, c) in &checks {
        c.assert_within(&format!("encoder + projection head + InfoNCE: {tensor}"), 1e-5 * largest);
    }
}
