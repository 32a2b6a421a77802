//! Times each GEMM kernel this CPU runs (our packed kernel's micro-kernels, the bf16 ones under
//! PRECISION=bf16, and faer in fp32) on one thread.
//! `cargo run --release -p cid-engine --example sgemm_time -- M N K [ta tb]` (env: REPS, HUGE, PRECISION=bf16|fp16, KERNELS=a,b)
use engine::cpu::sgemm::{Operand, PackBuffers};
use engine::cpu::CpuGemm;
use engine::Precision;
use std::time::Instant;

fn main() {
    let usage = || -> ! {
        eprintln!("usage: sgemm_time M N K [ta tb]  (positive sizes; ta, tb 0 or 1; REPS ≥ 1)");
        std::process::exit(2)
    };
    // Numbers only, each in its place: anything else is a usage error, not a shifted argument.
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap_or_else(|_| usage())).collect();
    if !(3..=5).contains(&a.len()) || a[..3].contains(&0) || a[3..].iter().any(|&t| t > 1) {
        usage();
    }
    let (m, n, k) = (a[0], a[1], a[2]);
    let (ta, tb) = (a.get(3) == Some(&1), a.get(4) == Some(&1));
    // Each matrix's size, checked against overflow and the memory budget before anything is allocated.
    let size = |x: usize, y: usize| {
        let len = x.checked_mul(y).unwrap_or_else(|| usage());
        if let Err(e) = limits::check(|| format!("a {x} × {y} matrix"), len as u128 * 4) {
            eprintln!("{e}");
            std::process::exit(2)
        }
        len
    };
    let (a_len, b_len, c_len) = (size(m, k), size(k, n), size(m, n));
    let huge = std::env::var("HUGE").is_ok();
    let alloc = |len: usize, v: f32| -> Vec<f32> {
        let mut x: Vec<f32> = Vec::with_capacity(len + 1024 * 1024);
        #[cfg(target_os = "linux")]
        if huge {
            let p = x.as_mut_ptr() as usize;
            let start = (p + (1 << 21) - 1) & !((1 << 21) - 1);
            // SAFETY: advice on whole 2 MiB pages inside the reserved capacity; it changes no contents.
            let r = unsafe { libc::madvise(start as *mut _, (len * 4) & !((1 << 21) - 1), libc::MADV_HUGEPAGE) };
            if r != 0 {
                eprintln!("HUGE: madvise refused huge pages ({}); timing on 4 KiB pages", std::io::Error::last_os_error());
            }
        }
        x.resize(len, v);
        x
    };
    let av = alloc(a_len, 0.5);
    let bv = alloc(b_len, 0.25);
    let mut c = alloc(c_len, 0.0);
    let ao = if ta { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
    let bo = if tb { Operand { ptr: bv.as_ptr(), rs: 1, cs: k as isize } } else { Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 } };
    let mut buf = PackBuffers::default();
    // PRECISION=bf16 | fp16 times the product of rounded operands on each kernel that runs it.
    let precision = Precision::from_env("PRECISION").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    buf.round = engine::cpu::rounding(precision);
    let reps: usize = match std::env::var("REPS") {
        Err(_) => 1,
        Ok(v) => v.parse().ok().filter(|&r| r > 0).unwrap_or_else(|| usage()),
    };
    let flops = 2.0 * m as f64 * n as f64 * k as f64 * reps as f64;
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
