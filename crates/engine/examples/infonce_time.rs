//! Times the fused InfoNCE kernel alone. `cargo run --release -p cid-engine --example infonce_time -- B D`
use engine::*;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|x| x.parse().ok()).collect();
    let (b, d) = (a.first().copied().unwrap_or(64), a.get(1).copied().unwrap_or(128));
    let mut dev = CpuDevice::new();
    let (z, dz) = (dev.alloc(2 * b * d).unwrap(), dev.alloc(2 * b * d).unwrap());
    let v: Vec<f32> = (0..2 * b * d).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
    dev.upload(z, &v);
    let t = std::time::Instant::now();
    for _ in 0..2000 {
        dev.infonce(z, Some(dz), b, d, 0.07, false, 1.0);
    }
    println!("B={b} D={d}: {:.4} ms per call", t.elapsed().as_secs_f64() * 1e3 / 2000.0);
}
