//! Where a training step's time goes: input upload, forward, loss, backward and optimizer of a reference
//! workload ([`engine::workloads`]), each timed alone (median of 20 after 5 warm-up steps), and
//! the device's memory.
//! `cargo run --release -p cid-engine --example kernel_times -- isfm-small [threads] [steps]`
//! (more steps than the default 20 give a profiler a steady state to sample; `PRECISION=bf16`
//! or `fp16` times that precision).
use std::time::Instant;

use engine::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("xl", String::as_str);
    // A count that is not a positive number is a usage error, not a silent default.
    let count = |i: usize, default: usize, max: usize| -> usize {
        match args.get(i).map(|t| t.parse::<usize>()) {
            None => default,
            Some(Ok(v)) if (1..=max).contains(&v) => v,
            Some(_) => {
                eprintln!("usage: kernel_times [workload] [threads 1..=1024] [steps 1..=100000]");
                std::process::exit(2)
            }
        }
    };
    let (threads, steps) = (count(1, 2, 1024), count(2, 20, 100_000) as u64);
    let Some(w) = workloads::named(name) else {
        eprintln!("unknown workload {name}");
        std::process::exit(2);
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    pool.install(|| {
        let (b, cfg) = (w.batch, w.encoder.clone());
        let rows = 2 * b;
        let enc = cfg.init(CpuDevice::new(), rows, 0).expect("init");
        let mut st = ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 0).expect("step");
        if let Err(e) = Precision::from_env("PRECISION").and_then(|p| st.set_precision(p).map_err(|e| e.to_string())) {
            eprintln!("{e}");
            std::process::exit(2)
        }
        let x: Vec<f32> = (0..rows * cfg.input()).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        st.encoder.set_input(0, &x).expect("input");
        let (mut input, mut fwd, mut nce, mut bwd, mut opt) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..steps + 5 {
            // A worker polls for the kernels, as in `train_step` (the optimizer's step, below,
            // polls on its own: timed alone it includes that join's few µs).
            let workers = st.encoder.device.host_workers();
            let times = engine::cpu::with_workers_polling(workers, || {
                // The batch's upload, as `train_step` does it (PyTorch's reference times none).
                let t = Instant::now();
                st.encoder.set_input(0, &x).expect("input");
                let t_i = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let z = st.encoder.forward(rows, 2, Mode::Train { key: i });
                let t_f = t.elapsed().as_secs_f64() * 1e3;
                let dz = st.encoder.dz_buffer(rows);
                let t = Instant::now();
                st.encoder.device.infonce(z, Some(dz), b, cfg.embed, 0.07, false, 1.0);
                let t_n = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                st.encoder.backward(rows, dz, false);
                let t_b = t.elapsed().as_secs_f64() * 1e3;
                (t_i, t_f, t_n, t_b)
            });
            let (t_i, t_f, t_n, t_b) = times;
            let t = Instant::now();
            st.optimizer_step(1e-4);
            let t_o = t.elapsed().as_secs_f64() * 1e3;
            if i >= 5 {
                input.push(t_i);
                fwd.push(t_f);
                nce.push(t_n);
                bwd.push(t_b);
                opt.push(t_o);
            }
        }
        let (u, f, n, bw, o) = (median(input), median(fwd), median(nce), median(bwd), median(opt));
        let mb = st.encoder.device.allocated_bytes() as f64 / 1e6;
        println!(
            "{name} (B={b}, {threads} threads): input {u:.3} ms, forward {f:.3} ms, loss {n:.3} ms, backward {bw:.3} ms, optimizer {o:.3} ms; sum {:.3} ms; device memory {mb:.1} MB",
            u + f + n + bw + o
        );
        // Which kernel ran each product shape (the device's measured plan).
        println!("plan: {}", st.encoder.device.kernel_plan().replace(';', "\n      "));
    });
}
