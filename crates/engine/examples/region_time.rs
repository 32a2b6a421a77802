//! What one parallel kernel costs beyond its work on this machine: `n` regions of two halves
//! (each `work` µs of spinning), with `gap` µs of work on one thread between them (a step's
//! serial code between its kernels), in a pool of 2 workers — once as rayon runs them (an idle
//! worker sleeps after a few µs), once with the other worker polling for them
//! ([`engine::cpu::with_workers_polling`], as a training step runs). Prints the overhead per
//! region (time per region − gap − work), the median of `ROUNDS` (default 5) interleaved rounds.
//! `cargo run --release -p cid-engine --example region_time`
use std::time::Instant;

use rayon::prelude::*;

/// Busy for `us` µs (the work of a kernel, or the serial code between two).
fn busy(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {
        std::hint::spin_loop();
    }
}

fn main() {
    let rounds = match std::env::var("ROUNDS").map(|v| v.parse::<usize>()) {
        Err(_) => 5,
        Ok(Ok(r)) if (1..=1000).contains(&r) => r,
        Ok(_) => {
            eprintln!("ROUNDS must be a count from 1 to 1000");
            std::process::exit(2)
        }
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of 2 workers");
    let regions = 500;
    pool.install(|| {
        println!("2 workers, {regions} regions a run, median of {rounds} rounds: overhead per region, µs");
        println!("gap µs  work µs  sleeping workers  polling workers");
        for gap in [0.0, 20.0, 50.0, 100.0] {
            for work in [20.0, 50.0] {
                let run = || {
                    let t = Instant::now();
                    for _ in 0..regions {
                        (0..2).into_par_iter().for_each(|_| busy(work));
                        busy(gap);
                    }
                    t.elapsed().as_secs_f64() * 1e6 / regions as f64 - gap - work
                };
                let (mut asleep, mut polling) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    asleep.push(run());
                    polling.push(engine::cpu::with_workers_polling(2, run));
                }
                let median = |mut v: Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                println!("{gap:6.0}  {work:7.0}  {:16.1}  {:15.1}", median(asleep), median(polling));
            }
        }
    });
}
