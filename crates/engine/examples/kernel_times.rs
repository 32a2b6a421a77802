//! Times the individual kernels of one training step (where a step's time goes).
//! `cargo run --release -p cid-engine --example kernel_times -- B W`
use std::time::Instant;
use engine::*;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (b, w) = (args.first().copied().unwrap_or(256), args.get(1).copied().unwrap_or(8192));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let rows = 2 * b;
        let mut dev = CpuDevice::new();
        let (x, w1, y, dy, dw) = (dev.alloc(rows * w), dev.alloc(512 * w), dev.alloc(rows * 512), dev.alloc(rows * 512), dev.alloc(512 * w));
        let n = 512 * w;
        let dyt = dev.alloc(rows * 512);
        let xt = dev.alloc(rows * w);
        let (p, g, m, v) = (dev.alloc(n), dev.alloc(n), dev.alloc(n), dev.alloc(n));
        dev.fill(x, 0.1);
        dev.fill(w1, 0.01);
        dev.fill(dy, 0.01);
        let time = |name: &str, dev: &mut CpuDevice, f: &dyn Fn(&mut CpuDevice)| {
            for _ in 0..2 { f(dev); }
            let mut t: Vec<f64> = (0..10).map(|_| { let t0 = Instant::now(); f(dev); t0.elapsed().as_secs_f64() * 1e3 }).collect();
            t.sort_by(|a, b| a.total_cmp(b));
            println!("{name:28} {:8.3} ms", t[5]);
        };
        time("fwd L1  Y = X W^T", &mut dev, &|d| d.gemm(Gemm { m: rows, n: 512, k: w, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, y, x, w1));
        time("dW L1   dW = dY^T X", &mut dev, &|d| d.gemm(Gemm { m: 512, n: w, k: rows, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, dw, dy, x));
        time("dW L1   dW = (dY^T) X", &mut dev, &|d| d.gemm(Gemm { m: 512, n: w, k: rows, trans_a: false, trans_b: false, accumulate: false, sparse_a: false }, dw, dyt, x));
        time("dW L1   dW = (dY^T) (X^T)^T", &mut dev, &|d| d.gemm(Gemm { m: 512, n: w, k: rows, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, dw, dyt, xt));
        time("adam", &mut dev, &|d| d.adam(p, g, m, v, AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }, 1, 1.0));
        time("sum_squares", &mut dev, &|d| { d.sum_squares(g); });
        let enc = EncoderConfig::new(EncoderKind::MlpMedium, w).init(CpuDevice::new(), rows, 0).unwrap();
        let mut st = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
        let a = vec![0.3f32; b * w];
        let pp: Vec<f32> = (0..b * w).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut tf = vec![]; let mut to = vec![]; let mut tfo = vec![];
        for _ in 0..12 {
            let t0 = Instant::now();
            st.encoder.set_input(0, &a); st.encoder.set_input(b, &pp);
            let _z = st.encoder.forward(rows, Some(1));
            tfo.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            st.forward_backward(&a, &pp, false, 1.0).unwrap();
            tf.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            st.optimizer_step(1e-3);
            to.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        for v in [&mut tf, &mut to, &mut tfo] { v.sort_by(|a, b| a.total_cmp(b)); }
        let l0 = st.encoder.layers[0];
        let xv = st.encoder.x;
        time("real-data dW L1 (h as dY)", &mut st.encoder.device, &|d| d.gemm(Gemm { m: 512, n: w, k: rows, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, l0.dw, l0.h, xv));
        time("real-data dW L1, zeros skipped", &mut st.encoder.device, &|d| d.gemm(Gemm { m: 512, n: w, k: rows, trans_a: true, trans_b: false, accumulate: false, sparse_a: true }, l0.dw, l0.h, xv));
        time("real-data fwd L1", &mut st.encoder.device, &|d| d.gemm(Gemm { m: rows, n: 512, k: w, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, l0.h, xv, l0.w));
        let mut tt = vec![];
        for _ in 0..8 {
            st.encoder.device.gemm(Gemm { m: rows, n: 512, k: w, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, l0.h, xv, l0.w);
            let t0 = Instant::now();
            st.encoder.device.gemm(Gemm { m: 512, n: w, k: rows, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, l0.dw, l0.h, xv);
            tt.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        tt.sort_by(|a, b| a.total_cmp(b));
        println!("dW L1 after a forward GEMM {:.3} ms", tt[4]);
        let dz = st.encoder.dz_buffer(rows);
        let mut tb = vec![];
        for _ in 0..8 { let t0 = Instant::now(); st.encoder.backward(rows, dz, false); tb.push(t0.elapsed().as_secs_f64() * 1e3); }
        tb.sort_by(|a, b| a.total_cmp(b));
        println!("backward alone {:.3} ms", tb[4]);
        println!("step: forward only {:.3} ms, forward+backward {:.3} ms, optimizer {:.3} ms", tfo[6], tf[6], to[6]);
    });
}
