//! Times the zero-skipping GEMM against the dense packed one on one thread, for `C = op(A) · B`
//! with a fraction `zeros` of A exactly zero (as a gradient behind ReLU + dropout), on each
//! micro-kernel ISA the CPU has (AVX2, AVX-512F): one line each.
//! `cargo run --release -p cid-engine --example sparse_time -- M N K TA ZEROS`
//! (xl's weight gradient: `512 8192 512 1 0.6`; complex's second input gradient: `128 1024 512 0 0.65`).
use engine::cpu::sgemm::{self, Operand, PackBuffers};
use engine::cpu::sparse::{SparseLhs, StripBuffer};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| args.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(d);
    let (m, n, k) = (num(0, 512.0) as usize, num(1, 8192.0) as usize, num(2, 512.0) as usize);
    let (ta, zeros) = (num(3, 1.0) == 1.0, num(4, 0.6));
    let mut seed = 5u64;
    let mut rand = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 40) as f64 / (1u64 << 24) as f64
    };
    // Backed by 2 MiB pages where the kernel grants them, as the CPU device's arena is.
    let huge = |len: usize| -> Vec<f32> {
        let mut x: Vec<f32> = Vec::with_capacity(len + (1 << 19));
        #[cfg(target_os = "linux")]
        unsafe {
            let start = (x.as_mut_ptr() as usize).next_multiple_of(1 << 21);
            libc::madvise(start as *mut libc::c_void, (4 * len) & !((1 << 21) - 1), libc::MADV_HUGEPAGE);
        }
        x.resize(len, 0.0);
        x
    };
    let (mut av, mut bv, mut c) = (huge(m * k), huge(k * n), huge(m * n));
    av.iter_mut().for_each(|x| {
        let u = rand();
        *x = if u < zeros { 0.0 } else { u as f32 }
    });
    bv.iter_mut().for_each(|x| *x = rand() as f32);
    let ao = if ta { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
    let bo = Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 };
    let mut buf = PackBuffers::default();
    let (mut sparse, mut strip) = (SparseLhs::default(), StripBuffer::default());
    // Each ISA the CPU has, dense and zero-skipping alike, so the AVX-512 strips are timed
    // against the AVX2 ones on the same operands.
    for isa in [sgemm::Isa::Avx2, sgemm::Isa::Avx512].into_iter().filter(|isa| isa.supported()) {
        let (mut td, mut tc, mut ts) = (vec![], vec![], vec![]);
        for _ in 0..15 {
            let t0 = Instant::now();
            unsafe { sgemm::sgemm(isa, m, n, k, 1.0, ao, bo, c.as_mut_ptr(), n as isize, false, &mut buf) };
            td.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            unsafe { sparse.compress(m, k, ao) };
            tc.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            unsafe { sparse.multiply(isa, bo, c.as_mut_ptr(), n, 0..n, false, &mut strip) };
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        for t in [&mut td, &mut tc, &mut ts] {
            t.sort_by(|a, b| a.total_cmp(b));
        }
        println!("{isa:?} {m}x{n}x{k} ta{} zeros {zeros}: dense {:.2} ms (best {:.2}) | compress {:.2} + multiply {:.2} ms (best {:.2})", ta as u8, td[7], td[0], tc[7], ts[7], ts[0]);
    }
}
