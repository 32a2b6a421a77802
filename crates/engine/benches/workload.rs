//! The WORKLOAD.md training step on the CPU engine: five configs, 10 warm-up and ≥ 50 timed
//! steps each, median ms, samples/s and achieved GFLOP/s next to the machine's measured SGEMM
//! rate (the best of the CPU device's two GEMM kernels, ours and faer's, on xl's first-layer
//! product 512×512×8192, same threads). Compare with
//! `python3 ../shared/reference/torch_ref.py --device cpu --configs small,medium,large,complex,xl --steps 50`
//! run on the same quiet machine.
//!
//! GFLOP/s counts the step's dense arithmetic (PyTorch's work): the CPU device skips the zeros of
//! gradients behind ReLU + dropout, so it can go past the SGEMM rate.
//!
//! `cargo bench -p cid-engine --bench workload [-- --threads 2 --steps 50 --configs small,xl --json out.json]`

use std::time::Instant;

use engine::*;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
}

/// FLOPs of one step, counted dense: forward of 2B rows, dW of every layer, dX of every layer
/// but the first.
fn step_flops(cfg: &EncoderConfig, b: usize) -> f64 {
    let rows = 2.0 * b as f64;
    let macs = cfg.forward_macs() as f64;
    let first = (cfg.layers()[0].in_features * cfg.layers()[0].out_features) as f64;
    2.0 * rows * (macs + macs + (macs - first))
}

fn sgemm_gflops(kernel: CpuGemm) -> f64 {
    let (m, k, n) = (512, 8192, 512);
    let mut dev = CpuDevice::with_gemm(kernel);
    let (a, b, c) = (dev.alloc(m * k), dev.alloc(n * k), dev.alloc(m * n));
    dev.fill(a, 0.5);
    dev.fill(b, 0.25);
    let g = Gemm { m, n, k, trans_a: false, trans_b: true, accumulate: false, sparse_a: false };
    for _ in 0..3 {
        dev.gemm(g, c, a, b);
    }
    let mut t = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        dev.gemm(g, c, a, b);
        t.push(t0.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / median(&t) / 1e9
}

fn main() {
    let threads: usize = arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(2);
    let steps: usize = arg("--steps").and_then(|v| v.parse().ok()).unwrap_or(50);
    let configs = arg("--configs").unwrap_or_else(|| "small,medium,large,complex,xl".into());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let all = [
        ("small", 16, 512, EncoderKind::MlpMedium),
        ("medium", 32, 1024, EncoderKind::MlpMedium),
        ("large", 64, 2048, EncoderKind::MlpMedium),
        ("complex", 64, 2048, EncoderKind::MlpComplex),
        ("xl", 256, 8192, EncoderKind::MlpMedium),
    ];
    let mut rows = Vec::new();
    pool.install(|| {
        let faer = sgemm_gflops(CpuGemm::Faer);
        let ours = if engine::sgemm::supported() { sgemm_gflops(CpuGemm::Packed) } else { 0.0 };
        let peak = faer.max(ours);
        println!("machine SGEMM (512x512x8192, {threads} threads): faer {faer:.1} GFLOP/s, packed AVX2 {ours:.1} GFLOP/s; the step runs {:?}", CpuGemm::detect());
        println!("{:<8} {:>4} {:>5} {:>11} {:>10} {:>12} {:>9} {:>7}", "config", "B", "W", "encoder", "median ms", "samples/s", "GFLOP/s", "% SGEMM");
        // (min ms, printed last: on a shared machine the fastest step shows what the code can do
        // when nothing else runs; the median is the number compared with PyTorch.)
        for (name, b, w, kind) in all {
            if !configs.split(',').any(|c| c == name) {
                continue;
            }
            let cfg = EncoderConfig::new(kind, w);
            let enc = cfg.init(CpuDevice::new(), 2 * b, 0).expect("init");
            let mut step = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0).expect("step");
            let mut s = 1u64;
            let mut data = || -> Vec<f32> {
                (0..b * w)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                    })
                    .collect()
            };
            let (a, p) = (data(), data());
            for _ in 0..10 {
                step.train_step(&a, &p).expect("step");
            }
            let mut t = Vec::with_capacity(steps);
            let mut last = 0.0;
            for _ in 0..steps {
                let t0 = Instant::now();
                last = step.train_step(&a, &p).expect("step").loss;
                t.push(t0.elapsed().as_secs_f64());
            }
            let med = median(&t);
            let gflops = step_flops(&cfg, b) / med / 1e9;
            println!(
                "{:<8} {:>4} {:>5} {:>11} {:>10.3} {:>12.0} {:>9.1} {:>6.0}%   min {:.3} ms",
                name, b, w, kind.to_string(), med * 1e3, b as f64 / med, gflops, 100.0 * gflops / peak, t.iter().copied().fold(f64::INFINITY, f64::min) * 1e3
            );
            assert!(last.is_finite());
            rows.push(format!(
                r#"{{"config":"{name}","B":{b},"W":{w},"encoder":"{kind}","median_ms":{:.4},"samples_per_s":{:.1},"gflops":{:.2},"sgemm_gflops":{peak:.2},"steps":{steps},"threads":{threads}}}"#,
                med * 1e3,
                b as f64 / med,
                gflops
            ));
        }
    });
    if let Some(path) = arg("--json") {
        std::fs::write(&path, format!("[{}]\n", rows.join(",\n"))).expect("write json");
        println!("wrote {path}");
    }
}
