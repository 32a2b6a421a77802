//! Contrastive batch preparation from a store on disk: B=32, W=1024, 2 random windows per Id,
//! standardization on, from a generated 1000 × 8192 store (the PyTorch reference's `data`
//! section measures the same). Prints windows/s and ms per batch: the first epoch (which reads
//! every signal whole once for its statistics) and the steady epochs after it, built directly
//! and through the prefetching sampler.
//!
//! `cargo bench -p cid-signal --bench batch_prep [-- --epochs 5 --threads 2]`

use std::sync::Arc;
use std::time::Instant;

use signal::synth::{generate, SynthConfig};
use signal::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let epochs = arg("--epochs", 5);
    let threads = arg("--threads", 2);
    let (n, len, w, b) = (arg("--signals", 1000), arg("--length", 8192), 1024usize, 32usize);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    let dir = std::env::temp_dir().join(format!("cid-batch-prep-{}", std::process::id()));
    let cfg = SynthConfig { complexity: Complexity::Medium, count: n, length: len, channels: 1, seed: 0, ..Default::default() };
    let t0 = Instant::now();
    let g = generate(&cfg, &dir, "data", Layout::Contiguous, &|_| {}).expect("generate");
    println!("generated {n} x {len} store on disk in {:.2} s: {}", t0.elapsed().as_secs_f64(), g.store.display());
    let store: Arc<dyn SignalStore> = Arc::new(Hdf5Store::open(&g.store).expect("open"));
    let builder = Arc::new(
        BatchBuilder::new(store, PreprocessConfig { normalization: Normalization::Standardization, truncate_length: None }, WindowConfig { window_size: w, ..Default::default() }).expect("builder"),
    );
    let ids: Vec<u64> = (1..=n as u64).collect();

    // Direct: one batch at a time on the calling thread (assembly parallel inside).
    let mut batch = ContrastiveBatch::default();
    let mut per_batch = Vec::new();
    let mut first_epoch_s = 0.0;
    let mut steady_windows = 0usize;
    let mut steady_s = 0.0;
    for e in 0..epochs {
        let order = signal::sampler::epoch_order(&ids, 0, e, true);
        let te = Instant::now();
        for (k, chunk) in order.chunks(b).enumerate() {
            let t = Instant::now();
            builder.build_into(chunk, (e * 1000 + k) as u64, &mut batch).expect("batch");
            let dt = t.elapsed().as_secs_f64();
            if e > 0 {
                steady_windows += 2 * batch.len();
                steady_s += dt;
                if batch.len() == b {
                    per_batch.push(dt * 1e3);
                }
            }
        }
        if e == 0 {
            first_epoch_s = te.elapsed().as_secs_f64();
        }
    }
    let med = median(&mut per_batch);
    println!("first epoch (statistics from whole-signal reads): {:.0} windows/s", 2.0 * n as f64 / first_epoch_s);
    println!("steady epochs, direct: median {:.4} ms/batch, {:.0} windows/s ({} batches, {threads} threads)", med, steady_windows as f64 / steady_s, per_batch.len());

    // Through the prefetching sampler, consumer takes batches as fast as they come.
    let sampler = BatchSampler::new(builder.clone(), &ids, SamplerConfig { batch_size: b, epochs: Some(epochs), ..Default::default() }, BatchPos { epoch: 1, batch: 0 }).expect("sampler");
    let t = Instant::now();
    let mut windows = 0usize;
    for r in sampler {
        let (_, batch) = r.expect("batch");
        windows += 2 * batch.len();
    }
    println!("steady epochs, prefetching sampler: {:.0} windows/s", windows as f64 / t.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
