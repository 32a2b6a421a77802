//! Times the element-wise activation kernels on one [rows, cols] block (GELU/SiLU/ReLU, with and
//! without dropout), 2 threads. `cargo run --release -p cid-engine --example act_time -- rows cols`
use engine::*;
fn main() {
    // Numbers only; anything else is a usage error, not a silent default.
    let usage = || -> ! {
        eprintln!("usage: act_time [rows cols] (sizes > 0)");
        std::process::exit(2)
    };
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>().unwrap_or_else(|| usage());
    let (rows, cols) = (a.first().copied().unwrap_or(4096), a.get(1).copied().unwrap_or(512));
    if rows == 0 || cols == 0 {
        usage();
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    pool.install(|| {
        let mut dev = CpuDevice::new();
        let n = rows.checked_mul(cols).unwrap_or_else(|| usage());
        let alloc = |dev: &mut CpuDevice| {
            dev.alloc(n).unwrap_or_else(|e| {
                eprintln!("{rows} × {cols}: {e}");
                std::process::exit(1)
            })
        };
        let (pre, out, d) = (alloc(&mut dev), alloc(&mut dev), alloc(&mut dev));
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
        for act in [Activation::Gelu, Activation::Silu, Activation::Relu] {
            for p in [0.0f32, 0.1] {
                let drop = (p > 0.0).then_some(Dropout { p, key: 7 });
                let reps = 50;
                let (mut f, mut b) = (0.0, 0.0);
                for _ in 0..reps {
                    dev.upload(pre, &v);
                    let t = std::time::Instant::now();
                    dev.act_forward(pre, out, None, cols, act, drop);
                    f += t.elapsed().as_secs_f64();
                    dev.upload(d, &v);
                    let t = std::time::Instant::now();
                    dev.act_backward_pre(d, pre, cols, act, drop);
                    b += t.elapsed().as_secs_f64();
                }
                println!(
                    "{act:?} dropout {p}: forward {:.3} ms, backward {:.3} ms ({:.2} / {:.2} ns per element)",
                    f * 1e3 / reps as f64,
                    b * 1e3 / reps as f64,
                    f * 1e9 / (reps * n) as f64,
                    b * 1e9 / (reps * n) as f64
                );
            }
        }
    });
}
