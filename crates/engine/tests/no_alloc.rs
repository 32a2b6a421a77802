//! A training step allocates nothing after the first call: counted by a global allocator that
//! sees every thread (rayon workers included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use engine::*;

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn training_steps_allocate_nothing_after_the_first() {
    // The training loop runs inside the rayon pool (as the trainer runs it): parallel kernels then
    // fork through the workers' own deques. Called from outside, every parallel kernel would be
    // injected through rayon's global queue, which allocates a block per 63 injections.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(steps_allocate_nothing);
}

fn steps_allocate_nothing() {
    // Sizes large enough that GEMMs and element-wise kernels take their parallel paths too; every
    // encoder (the ISFM with its sampling rates, as the trainer feeds it).
    let isfm = IsfmConfig { num_patches: 16, patch_size_l: 32, d_model: 64, num_heads: 4, e_layers: 2, d_ff: 128, ..IsfmConfig::default() };
    let cases = [
        (EncoderConfig::new(EncoderKind::MlpMedium, 1024, 1), 32),
        (EncoderConfig::new(EncoderKind::MlpComplex, 512, 1), 16),
        (EncoderConfig::new(EncoderKind::MlpSimple, 64, 1), 4),
        (EncoderConfig::new(EncoderKind::Cnn, 1024, 2), 32),
        (EncoderConfig { arch: Arch::Isfm(isfm.clone()), window: 1024, channels: 2, embed: 128 }, 16),
        // A BatchNorm wider than one strip of the CPU's column sums (256 columns).
        (EncoderConfig { arch: Arch::Isfm(IsfmConfig { d_model: 288, d_ff: 64, ..isfm }), window: 1024, channels: 2, embed: 128 }, 8),
    ];
    for (cfg, b) in cases {
        let w = cfg.input();
        let enc = cfg.init(CpuDevice::new(), 2 * b, 0).unwrap();
        let opt = OptimizerConfig { clip_norm: Some(1.0), ..Default::default() };
        let mut step = ContrastiveStep::new(enc, b, InfoNceConfig { temperature: 0.07, symmetric: true }, opt, 0).unwrap();
        let a: Vec<f32> = (0..b * w).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
        let p: Vec<f32> = (0..b * w).map(|i| ((i * 5) % 11) as f32 * 0.1).collect();
        let rates = vec![12_000.0f32; b];
        let pairs = Pairs::new(&a, &p).with_rates(&rates);
        // Warm-up: each worker thread grows its GEMM packing buffers once per shape it meets
        // (the CNN's evaluation runs both views at once, training each view on its own lane:
        // different shapes).
        for _ in 0..10 {
            step.train_step(pairs).unwrap();
            step.evaluate(pairs).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..30 {
            step.train_step(pairs).unwrap();
            step.evaluate(pairs).unwrap();
        }
        let n = ALLOCATIONS.load(Ordering::SeqCst) - before;
        let kind = cfg.kind();
        assert_eq!(n, 0, "{kind} B={b} W·C={w}: {n} allocations in 30 steps");
    }
}
