//! The reference training steps on the CPU engine: the MLP configs of WORKLOAD.md (small, medium,
//! large, complex, xl) and the encoder configs of `encoders_ref.CONFIGS` (cnn-medium, cnn-large,
//! isfm-small, isfm-base, isfm-pretrain), by the same names ([`engine::workloads`]). 10 warm-up
//! and ≥ 50 timed steps each, median ms, samples/s and achieved GFLOP/s next to the machine's
//! measured SGEMM rate (the best of the CPU device's two GEMM kernels, ours and faer's, on xl's
//! first-layer product 512×512×8192, same threads). Compare with
//! `python3 ../shared/reference/torch_ref.py --device cpu --configs small,medium,large,complex,xl --steps 50`
//! and `python3 ../shared/reference/encoders_ref.py --time --configs cnn-medium,isfm-small --threads 2`
//! run on the same quiet machine.
//!
//! Like the reference, which times a step on tensors made once, a step here runs on the batch
//! copied into the device once ([`ContrastiveStep::load`]); the copy is timed on its own
//! (`upload ms`, the median of as many copies) and is not in the step's time.
//!
//! GFLOP/s counts the step's arithmetic as PyTorch does it ([`engine::EncoderConfig::step_flops`]):
//! the CPU device skips the zeros of gradients behind ReLU + dropout, so it can go past the SGEMM
//! rate.
//!
//! `cargo bench -p cid-engine --bench workload [-- --threads 2 --steps 50 --configs small,isfm-small --precision fp32|bf16 --json out.json]`

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
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn sgemm_gflops(kernel: CpuGemm) -> f64 {
    let (m, k, n) = (512, 8192, 512);
    let mut dev = CpuDevice::with_gemm(kernel);
    let (a, b, c) = (dev.alloc(m * k).expect("alloc"), dev.alloc(n * k).expect("alloc"), dev.alloc(m * n).expect("alloc"));
    dev.fill(a, 0.5);
    dev.fill(b, 0.25);
    let g = Gemm::nt(m, n, k);
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

/// Deterministic standard-normal-ish data (a sum of uniforms).
fn data(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut s = 0.0f32;
            for _ in 0..4 {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s += (*seed >> 40) as f32 / (1u64 << 24) as f32;
            }
            (s - 2.0) * 1.732
        })
        .collect()
}

fn main() {
    // A count that is given must be a number in 1..=max: not a silent default, not rayon's
    // "0 threads = every core" or a median of no steps, and not a step count whose timings
    // (reserved up front, so that the timed loop allocates nothing) exceed the memory.
    let count = |flag: &str, default: usize, max: usize| match arg(flag) {
        None => default,
        Some(v) => v.parse().ok().filter(|&n: &usize| (1..=max).contains(&n)).unwrap_or_else(|| {
            eprintln!("{flag} {v:?}: expected a whole number from 1 to {max}");
            std::process::exit(2)
        }),
    };
    let threads = count("--threads", 2, 1024);
    let steps = count("--steps", 50, 1_000_000);
    let configs = arg("--configs").unwrap_or_else(|| "small,medium,large,complex,xl".into());
    let precision: Precision = match arg("--precision").map_or(Ok(Precision::Fp32), |p| p.parse()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("--precision: {e}");
            std::process::exit(2);
        }
    };
    let precision_name = precision.to_string();
    for name in configs.split(',') {
        if workloads::named(name).is_none() {
            let known: Vec<&str> = workloads::all().iter().map(|w| w.name).collect();
            eprintln!("unknown config {name:?}; known: {}", known.join(", "));
            std::process::exit(2);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap_or_else(|e| {
        eprintln!("--threads {threads}: {e}");
        std::process::exit(2)
    });
    let mut rows = Vec::new();
    pool.install(|| {
        let faer = sgemm_gflops(CpuGemm::Faer);
        // Each of our micro-kernels this CPU runs.
        let ours: Vec<(CpuGemm, f64)> = CpuGemm::candidates(Precision::Fp32).into_iter().filter(|k| *k != CpuGemm::Faer).map(|k| (k, sgemm_gflops(k))).collect();
        let peak = ours.iter().fold(faer, |p, &(_, g)| p.max(g));
        let ours_text: String = ours.iter().map(|(k, g)| format!(", {} {g:.1} GFLOP/s", k.name())).collect();
        println!("machine SGEMM (512x512x8192, {threads} threads): faer {faer:.1} GFLOP/s{ours_text}; step GEMMs: {}", engine::cpu::plan::GemmPolicy::from_env().describe());
        println!("{:<14} {:>4} {:>5} {:>2} {:>11} {:>10} {:>12} {:>9} {:>7}", "config", "B", "W", "C", "encoder", "median ms", "samples/s", "GFLOP/s", "% SGEMM");
        // (min ms, printed last: on a shared machine the fastest step shows what the code can do
        // when nothing else runs; the median is the number compared with PyTorch.)
        for name in configs.split(',') {
            let w = workloads::named(name).expect("checked above");
            let (b, cfg) = (w.batch, w.encoder.clone());
            let enc = cfg.init(CpuDevice::new(), 2 * b, 0).expect("init");
            let mut step = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0).expect("step");
            if let Err(e) = step.set_precision(precision) {
                eprintln!("--precision {precision_name}: {e}");
                std::process::exit(2);
            }
            let mut seed = 1u64;
            let (a, p) = (data(b * cfg.input(), &mut seed), data(b * cfg.input(), &mut seed));
            let rates = vec![w.sample_rate; b];
            let pairs = Pairs::new(&a, &p).with_rates(&rates);
            for _ in 0..10 {
                step.train_step(pairs).expect("step");
            }
            let mut uploads = Vec::with_capacity(steps);
            for _ in 0..steps {
                let t0 = Instant::now();
                step.load(pairs).expect("load");
                uploads.push(t0.elapsed().as_secs_f64());
            }
            let mut t = Vec::with_capacity(steps);
            let mut last = 0.0;
            for _ in 0..steps {
                let t0 = Instant::now();
                last = step.train_step_loaded().expect("step").loss;
                t.push(t0.elapsed().as_secs_f64());
            }
            let (med, upload) = (median(&t), median(&uploads));
            // How many of the step's product shapes each kernel won (under the measuring policy).
            let plan = step.encoder.device.kernel_plan();
            let kernels = if plan.is_empty() { step.encoder.device.gemm_policy().describe() } else { engine::cpu::plan::summary(&plan) };
            let gflops = cfg.step_flops(2 * b) / med / 1e9;
            let kind = cfg.kind();
            println!(
                "{:<14} {:>4} {:>5} {:>2} {:>11} {:>10.3} {:>12.0} {:>9.1} {:>6.0}%   min {:.3} ms   upload {:.3} ms   shapes on {kernels}",
                name, b, cfg.window, cfg.channels, kind.to_string(), med * 1e3, b as f64 / med, gflops, 100.0 * gflops / peak, t.iter().copied().fold(f64::INFINITY, f64::min) * 1e3, upload * 1e3
            );
            assert!(last.is_finite());
            rows.push(format!(
                r#"{{"config":"{name}","B":{b},"W":{},"C":{},"encoder":"{kind}","params":{},"precision":"{precision_name}","median_ms":{:.4},"upload_ms":{:.4},"samples_per_s":{:.1},"gflops":{:.2},"sgemm_gflops":{peak:.2},"steps":{steps},"threads":{threads},"gemm_kernels":"{kernels}"}}"#,
                cfg.window,
                cfg.channels,
                cfg.param_count(),
                med * 1e3,
                upload * 1e3,
                b as f64 / med,
                gflops
            ));
        }
    });
    if let Some(path) = arg("--json") {
        // Through a temporary file beside it: an interrupted write leaves no half a JSON.
        if let Err(e) = files::write_atomic(std::path::Path::new(&path), format!("[{}]\n", rows.join(",\n")).as_bytes()) {
            eprintln!("--json {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
}
