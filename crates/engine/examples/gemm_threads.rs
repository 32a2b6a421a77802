//! How a product scales from one worker to several on this machine: `CpuDevice::gemm` on one
//! shape with our packed kernel, timed in a pool of 1 worker and one of `threads`, interleaved
//! (median, best, 10th and 90th percentile GFLOP/s of `ROUNDS` rounds, default 15), with a
//! worker polling for the products' halves as in a training step.
//! `cargo run --release -p cid-engine --example gemm_threads -- M N K [ta tb] [threads]`
//! (`REPS` products per round, default 10; `PRECISION=bf16|fp16` for products of rounded operands,
//! on the widest packed kernel).
use std::time::Instant;

use engine::cpu::plan::GemmPolicy;
use engine::cpu::CpuGemm;
use engine::*;

fn main() {
    let usage = || -> ! {
        eprintln!("usage: gemm_threads M N K [ta tb] [threads]  (positive sizes; ta, tb 0 or 1; threads ≥ 1; ROUNDS, REPS ≥ 1)");
        std::process::exit(2)
    };
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap_or_else(|_| usage())).collect();
    if a.len() < 3 || a[..3].contains(&0) || a.get(5) == Some(&0) {
        usage();
    }
    let (m, n, k) = (a[0], a[1], a[2]);
    if a.len() > 6 || a.iter().skip(3).take(2).any(|&t| t > 1) {
        usage();
    }
    let (ta, tb) = (a.get(3) == Some(&1), a.get(4) == Some(&1));
    // Each matrix's size, checked: a wrapped product would allocate too little.
    let sizes = [m.checked_mul(n), m.checked_mul(k), k.checked_mul(n)].map(|s| s.unwrap_or_else(|| usage()));
    let threads = a.get(5).copied().unwrap_or(2);
    let count = |var: &str, default: usize| match std::env::var(var) {
        Err(_) => default,
        Ok(v) => v.parse().ok().filter(|&r| r > 0).unwrap_or_else(|| usage()),
    };
    let reps = count("REPS", 10);
    let precision = Precision::from_env("PRECISION").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, accumulate: false, sparse_a: false };
    let flops = 2.0 * m as f64 * n as f64 * k as f64 * reps as f64;
    let pools: Vec<rayon::ThreadPool> = [1, threads].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("pool")).collect();
    let mut devs: Vec<(CpuDevice, [View; 3])> = pools
        .iter()
        .map(|pool| {
            pool.install(|| {
                let rounded = precision != Precision::Fp32;
                let mut dev = CpuDevice::with_gemm(if rounded { GemmPolicy::Measure.default_kernel(precision) } else { CpuGemm::Packed });
                if let Err(e) = dev.set_precision(precision) {
                    eprintln!("PRECISION: {e}");
                    std::process::exit(2)
                }
                let views = sizes.map(|len| {
                    dev.alloc(len).unwrap_or_else(|e| {
                        eprintln!("{m} × {n} × {k}: {e}");
                        std::process::exit(2)
                    })
                });
                dev.upload(views[1], &(0..m * k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>());
                dev.upload(views[2], &(0..k * n).map(|i| (i % 5) as f32 * 0.1).collect::<Vec<_>>());
                (dev, views)
            })
        })
        .collect();
    let mut rates = vec![vec![]; 2];
    let rounds = count("ROUNDS", 15);
    for _ in 0..rounds {
        for (i, (pool, (dev, [c, x, y]))) in pools.iter().zip(devs.iter_mut()).enumerate() {
            pool.install(|| {
                // With another worker polling for the products' halves, as a training step runs
                // them (`ContrastiveStep`): a worker left to sleep between them would time its
                // wake-up too.
                let workers = dev.host_workers();
                let t0 = Instant::now();
                engine::cpu::with_workers_polling(workers, || {
                    for _ in 0..reps {
                        dev.gemm(g, *c, *x, *y);
                    }
                });
                rates[i].push(flops / t0.elapsed().as_secs_f64() / 1e9);
            });
        }
    }
    let shown: Vec<String> = [1, threads]
        .iter()
        .zip(&mut rates)
        .map(|(t, r)| {
            r.sort_by(|a, b| b.total_cmp(a));
            format!("{t} worker(s) {:.1} GFLOP/s (best {:.1}, p10 {:.1}, p90 {:.1})", r[r.len() / 2], r[0], r[r.len() * 9 / 10], r[r.len() / 10])
        })
        .collect();
    println!("{m}x{n}x{k} ta{} tb{}: {}", ta as u8, tb as u8, shown.join(" | "));
}
