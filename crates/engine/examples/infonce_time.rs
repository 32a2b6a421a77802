//! Times the fused InfoNCE kernel alone (forward and backward), on a pool of `threads` workers.
//! `cargo run --release -p cid-engine --example infonce_time -- B D [symmetric 0|1] [threads]`
use engine::*;
fn main() {
    // Numbers only; anything else is a usage error, not a silent default.
    let usage = || -> ! {
        eprintln!("usage: infonce_time B D [symmetric 0|1] [threads] (sizes > 0)");
        std::process::exit(2)
    };
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>().unwrap_or_else(|| usage());
    let (b, d) = (a.first().copied().unwrap_or(64), a.get(1).copied().unwrap_or(128));
    let symmetric = a.get(2).copied().unwrap_or(0) == 1;
    let threads = a.get(3).copied().unwrap_or(1);
    if b == 0 || d == 0 || threads == 0 || threads > 1024 {
        usage();
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    pool.install(|| {
        let mut dev = CpuDevice::new();
        let n = b.checked_mul(2 * d).unwrap_or_else(|| usage());
        let alloc = |dev: &mut CpuDevice| {
            dev.alloc(n).unwrap_or_else(|e| {
                eprintln!("B={b} D={d}: {e}");
                std::process::exit(1)
            })
        };
        let (z, dz) = (alloc(&mut dev), alloc(&mut dev));
        let v: Vec<f32> = (0..2 * b * d).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        dev.upload(z, &v);
        // Warm-up (scratch growth, the GEMM plan's measurements), then ~2 s of calls.
        let t = std::time::Instant::now();
        dev.infonce(z, Some(dz), b, d, 0.07, symmetric, 1.0);
        let reps = (2.0 / t.elapsed().as_secs_f64()).clamp(3.0, 2000.0) as usize;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            dev.infonce(z, Some(dz), b, d, 0.07, symmetric, 1.0);
        }
        println!("B={b} D={d} symmetric={symmetric} threads={threads}: {:.4} ms per call ({reps} calls)", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    });
}
