//! Times the CNN's `BatchNorm → ReLU → MaxPool` on one block's shape, fused (one BatchNorm call
//! with its pool) and as the separate ops (BatchNorm + ReLU, then MaxPool), forward and backward,
//! 2 threads, two views; the median and the fastest of 200 calls (the fastest is the figure a
//! noisy machine disturbs least). `cargo run --release -p cid-engine --example bn_time -- samples len cols`
//! (default 128 128 16: cnn-large's first block).
use engine::ops::norm::BatchNormArgs;
use engine::ops::pool::PoolShape;
use engine::*;

fn main() {
    // Numbers only; anything else is a usage error, not a silent default.
    let usage = || -> ! {
        eprintln!("usage: bn_time [samples len cols] (sizes > 0, samples even, len ≥ 2)");
        std::process::exit(2)
    };
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>().unwrap_or_else(|| usage());
    let (samples, len, cols) = (a.first().copied().unwrap_or(128), a.get(1).copied().unwrap_or(128), a.get(2).copied().unwrap_or(16));
    if samples == 0 || samples % 2 == 1 || len < 2 || cols == 0 || samples.checked_mul(len).and_then(|r| r.checked_mul(cols)).is_none_or(|n| n > 1 << 28) {
        usage();
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    pool.install(|| {
        let mut dev = CpuDevice::new();
        let (n, m) = (samples * len * cols, samples * (len / 2) * cols);
        let mut alloc = |k: usize| dev.alloc(k).expect("sizes checked above");
        let (x, a, da, dx, pooled, argmax, dp) = (alloc(n), alloc(n), alloc(n), alloc(n), alloc(m), alloc(m), alloc(m));
        let (gamma, beta, dg, db, running, stats) = (alloc(cols), alloc(cols), alloc(cols), alloc(cols), alloc(2 * cols), alloc(4 * cols));
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
        dev.upload(x, &v);
        dev.upload(dp, &v[..m]);
        dev.upload(gamma, &vec![1.0; cols]);
        let args = BatchNormArgs { cols, groups: 2, eps: 1e-5, momentum: 0.1, train: true, relu: true, pool: None };
        let p = PoolShape { samples, len, cols };
        let reps = 200;
        for fused in [true, false, true, false] {
            let (mut f, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
            for _ in 0..reps {
                let t = std::time::Instant::now();
                if fused {
                    dev.batchnorm_forward(x, pooled, argmax, stats, gamma, beta, running, BatchNormArgs { pool: Some(len), ..args });
                } else {
                    dev.batchnorm_forward(x, a, a.prefix(0), stats, gamma, beta, running, args);
                    dev.maxpool_forward(a, pooled, argmax, p);
                }
                f.push(t.elapsed().as_secs_f64() * 1e6);
                let t = std::time::Instant::now();
                if fused {
                    dev.batchnorm_backward(dp, pooled, argmax, x, stats, gamma, dg, db, dx, BatchNormArgs { pool: Some(len), ..args }, false);
                } else {
                    dev.maxpool_backward(dp, argmax, da, p);
                    dev.batchnorm_backward(da, a, a.prefix(0), x, stats, gamma, dg, db, dx, args, false);
                }
                b.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let name = if fused { "fused   " } else { "separate" };
            let stats = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (v[v.len() / 2], v[0])
            };
            let ((fm, f0), (bm, b0)) = (stats(&mut f), stats(&mut b));
            println!("{name}: forward {fm:.1} µs (fastest {f0:.1}), backward {bm:.1} µs (fastest {b0:.1}) ({samples} × {len} × {cols})");
        }
    });
}
