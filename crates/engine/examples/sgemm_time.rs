//! Times each GEMM kernel this CPU runs (our packed kernel's micro-kernels, the bf16 ones under
//! PRECISION=bf16, and faer in fp32) on one thread.
//! `cargo run --release -p cid-engine --example sgemm_time -- M N K [ta tb]` (env: REPS, HUGE, PRECISION=bf16|fp16, KERNELS=a,b)
use engine::cpu::sgemm::{Operand, PackBuffers};
use engine::cpu::CpuGemm;
use engine::Precision;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|x| x.parse().ok()).collect();
    let (m, n, k) = (a[0], a[1], a[2]);
    let (ta, tb) = (a.get(3).copied().unwrap_or(0) == 1, a.get(4).copied().unwrap_or(0) == 1);
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    let huge = std::env::var("HUGE").is_ok();
    let alloc = |len: usize, v: f32| -> Vec<f32> {
        let mut x: Vec<f32> = Vec::with_capacity(len + 1024 * 1024);
        if huge {
            let p = x.as_mut_ptr() as usize;
            let start = (p + (1 << 21) - 1) & !((1 << 21) - 1);
            let r = unsafe { madvise(start as *mut _, (len * 4) & !((1 << 21) - 1), 14) };
            assert_eq!(r, 0);
        }
        x.resize(len, v);
        x
    };
    let av = alloc(m * k, 0.5);
    let bv = alloc(k * n, 0.25);
    let mut c = alloc(m * n, 0.0);
    let ao = if ta { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
    let bo = if tb { Operand { ptr: bv.as_ptr(), rs: 1, cs: k as isize } } else { Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 } };
    let mut buf = PackBuffers::default();
    // PRECISION=bf16 | fp16 times the product of rounded operands on each kernel that runs it.
    let precision = Precision::from_env("PRECISION").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    buf.round = engine::cpu::rounding(precision);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let flops = 2.0 * (m * n * k) as f64 * reps as f64;
    // Each kernel this CPU runs at this precision, interleaved round by round.
    // KERNELS=amx,faer times those alone (for a profile of one).
    let only = std::env::var("KERNELS").ok();
    let kernels: Vec<CpuGemm> = CpuGemm::candidates(precision).into_iter().filter(|k| only.as_ref().is_none_or(|o| o.split(',').any(|n| n == k.name()))).collect();
    if kernels.is_empty() {
        let here: Vec<&str> = CpuGemm::candidates(precision).into_iter().map(|k| k.name()).collect();
        eprintln!("KERNELS={}: none of these runs {precision} products here (those that do: {})", only.unwrap_or_default(), here.join(", "));
        std::process::exit(2);
    }
    let mut times: Vec<Vec<f64>> = vec![vec![]; kernels.len()];
    for _ in 0..15 {
        for (i, &kernel) in kernels.iter().enumerate() {
            let t0 = Instant::now();
            for _ in 0..reps {
                unsafe { engine::cpu::gemm_strided(kernel, m, n, k, 1.0, ao, bo, c.as_mut_ptr(), n as isize, false, &mut buf) };
            }
            times[i].push(flops / t0.elapsed().as_secs_f64() / 1e9);
        }
    }
    let names = kernels.iter().map(|k| k.name());
    let cols: Vec<String> = names
        .zip(&mut times)
        .map(|(name, t)| {
            t.sort_by(|a, b| b.total_cmp(a));
            format!("{name} {:.1} GFLOP/s (best {:.1})", t[7], t[0])
        })
        .collect();
    println!("{m}x{n}x{k} ta{} tb{}: {}", ta as u8, tb as u8, cols.join(" | "));
}
