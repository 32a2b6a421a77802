//! fp16 products on AVX512-FP16 (`trainer.precision: 16`): both operands packed as IEEE
//! binary16, multiplied and summed in fp16 by `vfmadd231ph` (32 lanes an instruction, twice the
//! fp32 kernel's), and each run of [`RUN`] depths' fp16 sum added to an fp32 accumulator.
//!
//! Why sums in fp16 at all: AVX512-FP16 has no fp16 product with fp32 sums (AMX-FP16, which
//! has, is newer than the Xeons with AVX512-FP16 this project has run on), so an fp16 product
//! with fp32 sums runs at fp32's speed (rounding the operands in packing, [`super::sgemm`]).
//! Summing a short run in fp16 before it joins an fp32 sum is the trade the GPUs' fp8 training
//! makes with their tensor cores' narrow sums (DeepSeek-V3 promotes every 128 depths): each
//! fp16 add rounds by at most 2⁻¹¹ of the run's partial sum, so a run of 32 is off by at most 32
//! of those, and in practice (random signs) by about √32 · 2⁻¹² ≈ 0.14 % of its magnitude —
//! the size of rounding one operand to bf16. A run's sum past ±65504 is ±inf, as an fp16 GPU
//! product's output would be: the loss scaler sees a non-finite gradient and skips the step.
//!
//! [`emulated_kernel`] computes the same sums one element at a time in f64 (each fused
//! multiply-add rounded once to binary16), on any CPU: the reference of the first-use check and
//! of the tests, which run the packing and the loops everywhere and the instruction where the
//! CPU has it.

#[cfg(target_arch = "x86_64")]
use super::sgemm::first_use_check;
use super::sgemm::{copy_block, loop_nest, pack_panel, Isa, Operand, PackBuffers, Packing, Panel, KC, MR, NR_MAX};
#[cfg(target_arch = "x86_64")]
use super::sgemm::{for_transposed_rows, map_eights};

/// Depths summed in fp16 before their sum joins the fp32 accumulator. 32 ran fastest on an
/// Intel Xeon with AVX512-FP16 (a micro-kernel loop in L1 on one core: 166 GFLOP/s, 64 depths
/// 129, the fp32 micro-kernel 87) and keeps a run's rounding near one bf16 rounding (the
/// module's doc).
pub const RUN: usize = 32;

/// `C[m, n] (+)= alpha · op(A) · op(B)` with both operands rounded to fp16, in runs of [`RUN`]
/// depths summed in fp16 and added in fp32 (the module's doc): [`super::sgemm`]'s loops on
/// operands packed as halves, 32 columns a tile.
///
/// # Safety
/// As [`super::sgemm::sgemm`], on a CPU where [`supported`] holds (the first-use check runs this
/// before that answers).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_fp16_runs(m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: the caller's contract; the kernel's tile is MR × NR_MAX on halves, as packed.
    unsafe { loop_nest::<NR_MAX>(Packing::Halves, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512_fp16, None) }
}

/// [`sgemm_fp16_runs`] on a tile twice as wide ([`kernel_avx512_fp16_wide`]): the same sums,
/// the same bits. Neither tile wins everywhere (on an Intel Xeon with AVX512-FP16, the wide one
/// ran xl's forward `512 × 512 × 8192` 25 % faster on one worker and its weight gradient
/// `512 × 8192 × 512` (A transposed) 10–20 % slower on two), so the device measures both per
/// shape ([`super::plan`]).
///
/// # Safety
/// As [`sgemm_fp16_runs`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_fp16_runs_wide(m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: the caller's contract; the kernel's tile is MR × NR_WIDE on halves, as packed.
    unsafe { loop_nest::<NR_WIDE>(Packing::Halves, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512_fp16_wide, None) }
}

/// Columns of the wide fp16 tile ([`kernel_avx512_fp16_wide`]): two registers of halves a row.
pub(crate) const NR_WIDE: usize = 64;

/// Whether fp16 products run on AVX512-FP16 here ([`sgemm_fp16_runs`]): the CPU has it (with
/// AVX-512F's kernel, whose packing it shares, and F16C) and it gives its emulation's sums on
/// products crossing every block edge, checked once per process.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        Isa::Avx512.supported() && has!("avx512fp16") && has!("avx512bw") && has!("avx512vl") && has!("f16c") && agrees()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn agrees() -> bool {
    static AGREES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AGREES.get_or_init(|| {
        // SAFETY: AVX512-FP16, AVX-512F/BW/VL and F16C are present (checked by the caller); whole matrices.
        let emulated = |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe { loop_nest::<NR_MAX>(Packing::Halves, m, n, k, 1.0, a, b, c, n as isize, true, buf, emulated_kernel, None) };
        // Both tiles, each against the emulation (the wide one's products cross its edges too).
        let agrees = first_use_check(1e-5, &|m, n, k, a, b, c, buf| unsafe { sgemm_fp16_runs(m, n, k, 1.0, a, b, c, n as isize, true, buf) }, &emulated)
            && first_use_check(1e-5, &|m, n, k, a, b, c, buf| unsafe { sgemm_fp16_runs_wide(m, n, k, 1.0, a, b, c, n as isize, true, buf) }, &emulated);
        if !agrees {
            eprintln!("warning: an AVX512-FP16 kernel disagrees with its emulation on this CPU; fp16 products run on the fp32 kernels");
        }
        agrees
    })
}

/// The micro-kernel: `C[0..mr, 0..nr] (+)= alpha · Ã · B̃` for one `kc`-deep panel of MR rows
/// of A (32-bit words each holding one half twice, depth `p`, row `i` at `a[p·MR + i]`) and of
/// 32 columns of B (halves, `b[p·32 + j]`). Each row's 32 columns are one register of halves
/// through a run of [`RUN`] depths, then converted and added to two fp32 registers. Two runs
/// are summed at once, their depths interleaved, for twelve independent chains of multiply-adds:
/// one run's six left the FMA pipes idle through their latency, and xl's products ran 25–30 %
/// faster on one core with two runs at once. A's word is broadcast by a plain load
/// (`vpbroadcastd`): broadcasting a lone half, even within the
/// multiply-add (`{1to32}`), costs a shuffle, and in a loop in L1 the words ran 5–10 % faster.
///
/// # Safety
/// The CPU must have AVX512-FP16, AVX-512F/BW/VL; `a` must hold `kc · MR` words and `b`
/// `kc · 32` halves; `c` an `mr × nr` tile (row stride `rsc`) that no other thread touches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512fp16,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_fp16(kc: usize, a: *const f32, _rsa: isize, b: *const f32, c: *mut f32, rsc: isize, mr: usize, nr: usize, alpha: f32, add: bool) {
    use std::arch::x86_64::*;
    // SAFETY: the loads read `kc · MR` words of A and `kc · 32` halves of B (the contract); prefetch
    // addresses are formed with wrapping arithmetic and never fault; C's tile is written inside
    // `mr × nr` at row stride `rsc`: whole tiles directly, edge tiles through a local one.
    unsafe {
        let (mut a, mut b) = (a as *const i32, b as *const u16);
        for i in 0..mr {
            _mm_prefetch::<_MM_HINT_T0>(c.offset(i as isize * rsc) as *const i8);
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // Adds a run's sums (a row's 32 halves each) to the fp32 accumulators.
        let add_run = |acc: &mut [[__m512; 2]; MR], sums: &[__m512h; MR]| {
            for (row, s) in acc.iter_mut().zip(sums) {
                let bits = _mm512_castph_si512(*s);
                row[0] = _mm512_add_ps(row[0], _mm512_cvtph_ps(_mm512_castsi512_si256(bits)));
                row[1] = _mm512_add_ps(row[1], _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(bits)));
            }
        };
        let mut p = 0;
        // Two whole runs at a time, their depths interleaved: twelve chains of multiply-adds
        // instead of six, enough to keep two FMA pipes busy through their latency. Each run is
        // still summed alone, and added to the accumulators before the next: the same bits.
        while p + 2 * RUN <= kc {
            let (mut first, mut second) = ([_mm512_setzero_ph(); MR], [_mm512_setzero_ph(); MR]);
            let (a2, b2) = (a.add(RUN * MR), b.add(RUN * NR_MAX));
            for d in 0..RUN {
                // A streams from L2: fetch the next pair's words, two depths a step (48 bytes,
                // so every line of them is touched by the time this pair ends).
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add((2 * RUN + 2 * d) * MR) as *const i8);
                let b0 = _mm512_castsi512_ph(_mm512_loadu_si512(b.add(d * NR_MAX) as *const __m512i));
                let b1 = _mm512_castsi512_ph(_mm512_loadu_si512(b2.add(d * NR_MAX) as *const __m512i));
                for i in 0..MR {
                    first[i] = _mm512_fmadd_ph(_mm512_castsi512_ph(_mm512_set1_epi32(*a.add(d * MR + i))), b0, first[i]);
                    second[i] = _mm512_fmadd_ph(_mm512_castsi512_ph(_mm512_set1_epi32(*a2.add(d * MR + i))), b1, second[i]);
                }
            }
            add_run(&mut acc, &first);
            add_run(&mut acc, &second);
            a = a.add(2 * RUN * MR);
            b = b.add(2 * RUN * NR_MAX);
            p += 2 * RUN;
        }
        while p < kc {
            let run = RUN.min(kc - p);
            let mut sums = [_mm512_setzero_ph(); MR];
            let mut depth = || {
                // A streams from L2 (B's panel stays in L1): fetch it 16 depths ahead.
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR) as *const i8);
                let bv = _mm512_castsi512_ph(_mm512_loadu_si512(b as *const __m512i));
                for (i, s) in sums.iter_mut().enumerate() {
                    let ai = _mm512_castsi512_ph(_mm512_set1_epi32(*a.add(i)));
                    *s = _mm512_fmadd_ph(ai, bv, *s);
                }
                a = a.add(MR);
                b = b.add(NR_MAX);
            };
            // A whole run has a constant trip count, which the compiler unrolls (counted at run
            // time, the loop was not: its counter and branch took issue slots beside six FMAs a
            // depth).
            if run == RUN {
                (0..RUN).for_each(|_| depth());
            } else {
                (0..run).for_each(|_| depth());
            }
            add_run(&mut acc, &sums);
            p += run;
        }
        let va = _mm512_set1_ps(alpha);
        if mr == MR && nr == NR_MAX {
            for (i, row) in acc.iter().enumerate() {
                let cr = c.offset(i as isize * rsc);
                for (h, &v) in row.iter().enumerate() {
                    let mut v = _mm512_mul_ps(v, va);
                    if add {
                        v = _mm512_add_ps(v, _mm512_loadu_ps(cr.add(16 * h)));
                    }
                    _mm512_storeu_ps(cr.add(16 * h), v);
                }
            }
        } else {
            let mut tile = [0.0f32; MR * NR_MAX];
            for (i, row) in acc.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR_MAX + 16 * h), _mm512_mul_ps(v, va));
                }
            }
            store_edge::<NR_MAX>(&tile, c, rsc, mr, nr, add);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_fp16(_: usize, _: *const f32, _: isize, _: *const f32, _: *mut f32, _: isize, _: usize, _: usize, _: f32, _: bool) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// [`kernel_avx512_fp16`] on a tile twice as wide: `MR` rows × [`NR_WIDE`] columns of B's
/// halves (`b[p·64 + j]`), two registers of halves a row. Why: a row's fp16 sum is a chain of
/// dependent multiply-adds, and six chains cannot keep two FMA pipes busy through their latency
/// (4 cycles: eight chains would); twelve can — here two columns of registers of one run, in the
/// narrow kernel two runs — and each broadcast of A feeds two multiply-adds instead of one
/// (fewer loads a multiply-add). Twelve registers of sums leave too few for the
/// 24 of fp32 accumulators, so those live in a tile on the stack (in L1), added to once a run.
/// Each element's sums are the narrow kernel's, in the same order: the same bits.
///
/// # Safety
/// As [`kernel_avx512_fp16`], with `b` holding `kc · 64` halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512fp16,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_fp16_wide(kc: usize, a: *const f32, _rsa: isize, b: *const f32, c: *mut f32, rsc: isize, mr: usize, nr: usize, alpha: f32, add: bool) {
    use std::arch::x86_64::*;
    // SAFETY: the loads read `kc · MR` words of A and `kc · 64` halves of B (the contract);
    // prefetch addresses are formed with wrapping arithmetic (a row's second line may lie past
    // C) and never fault; the accumulator tile is this call's own; C's tile is written inside
    // `mr × nr` at row stride `rsc`.
    unsafe {
        let (mut a, mut b) = (a as *const i32, b as *const u16);
        for i in 0..mr {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_offset(i as isize * rsc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_offset(i as isize * rsc + 32) as *const i8);
        }
        let mut acc = [0.0f32; MR * NR_WIDE];
        let mut p = 0;
        while p < kc {
            let run = RUN.min(kc - p);
            let mut sums = [[_mm512_setzero_ph(); 2]; MR];
            let mut depth = || {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR) as *const i8);
                let b0 = _mm512_castsi512_ph(_mm512_loadu_si512(b as *const __m512i));
                let b1 = _mm512_castsi512_ph(_mm512_loadu_si512(b.add(NR_WIDE / 2) as *const __m512i));
                for (i, s) in sums.iter_mut().enumerate() {
                    let ai = _mm512_castsi512_ph(_mm512_set1_epi32(*a.add(i)));
                    s[0] = _mm512_fmadd_ph(ai, b0, s[0]);
                    s[1] = _mm512_fmadd_ph(ai, b1, s[1]);
                }
                a = a.add(MR);
                b = b.add(NR_WIDE);
            };
            // (A constant trip count, unrolled, as in the narrow kernel.)
            if run == RUN {
                (0..RUN).for_each(|_| depth());
            } else {
                (0..run).for_each(|_| depth());
            }
            for (i, row) in sums.iter().enumerate() {
                for (h, s) in row.iter().enumerate() {
                    let bits = _mm512_castph_si512(*s);
                    let at = acc.as_mut_ptr().add(i * NR_WIDE + 32 * h);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_cvtph_ps(_mm512_castsi512_si256(bits))));
                    _mm512_storeu_ps(at.add(16), _mm512_add_ps(_mm512_loadu_ps(at.add(16)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(bits))));
                }
            }
            p += run;
        }
        let va = _mm512_set1_ps(alpha);
        for q in (0..MR * NR_WIDE).step_by(16) {
            _mm512_storeu_ps(acc.as_mut_ptr().add(q), _mm512_mul_ps(_mm512_loadu_ps(acc.as_ptr().add(q)), va));
        }
        if mr == MR && nr == NR_WIDE {
            for i in 0..MR {
                let cr = c.offset(i as isize * rsc);
                for q in (0..NR_WIDE).step_by(16) {
                    let mut v = _mm512_loadu_ps(acc.as_ptr().add(i * NR_WIDE + q));
                    if add {
                        v = _mm512_add_ps(v, _mm512_loadu_ps(cr.add(q)));
                    }
                    _mm512_storeu_ps(cr.add(q), v);
                }
            }
        } else {
            store_edge::<NR_WIDE>(&acc, c, rsc, mr, nr, add);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_fp16_wide(_: usize, _: *const f32, _: isize, _: *const f32, _: *mut f32, _: isize, _: usize, _: usize, _: f32, _: bool) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// Writes (or adds) the `mr × nr` corner of a tile `W` wide into C.
///
/// # Safety
/// `c` must address an `mr × nr` tile at row stride `rsc` that no other thread touches.
unsafe fn store_edge<const W: usize>(tile: &[f32], c: *mut f32, rsc: isize, mr: usize, nr: usize, add: bool) {
    debug_assert!(tile.len() >= mr * W && nr <= W, "a tile of {} for {mr} × {nr} at width {W}", tile.len());
    for i in 0..mr {
        // SAFETY: row `i < mr` of the tile, `nr` elements (the contract).
        let row = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), nr) };
        for (cv, &v) in row.iter_mut().zip(&tile[i * W..]) {
            *cv = if add { *cv + v } else { v };
        }
    }
}

/// [`kernel_avx512_fp16`]'s sums one element at a time, on any CPU: each multiply-add
/// `fp16(a·b + s)` rounded once (the product of two halves and the sum are exact in f64 but for
/// sums across 2⁵³ of range, which no test meets), each run's sum added to an fp32 accumulator,
/// then `alpha ·` it and C's value added in fp32, in the kernel's order.
///
/// # Safety
/// As [`kernel_avx512_fp16`], on any CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn emulated_kernel(kc: usize, a: *const f32, _rsa: isize, b: *const f32, c: *mut f32, rsc: isize, mr: usize, nr: usize, alpha: f32, add: bool) {
    // SAFETY: `kc · MR` words of A and `kc · 32` halves of B (the contract).
    let (a, b) = unsafe { (std::slice::from_raw_parts(a as *const u32, kc * MR), std::slice::from_raw_parts(b as *const u16, kc * NR_MAX)) };
    let mut tile = [0.0f32; MR * NR_MAX];
    // Only the tile's `mr × nr` corner is stored: the padding's sums are not computed.
    for (i, j) in (0..mr).flat_map(|i| (0..nr).map(move |j| (i, j))) {
        let mut acc = 0.0f32;
        for run in (0..kc).step_by(RUN) {
            let mut sum = 0.0f32;
            for p in run..(run + RUN).min(kc) {
                sum = fp16_of_f64(f64::from(f32_of_half(a[p * MR + i] as u16)) * f64::from(f32_of_half(b[p * NR_MAX + j])) + f64::from(sum));
            }
            acc += sum;
        }
        tile[i * NR_MAX + j] = acc * alpha;
    }
    // SAFETY: forwarded contract.
    unsafe { store_edge::<NR_MAX>(&tile, c, rsc, mr, nr, add) }
}

/// Packs a block of B (`W` = 16, 32 or 64) of `kd` depths × `lanes` lanes as halves, in
/// [`super::sgemm`]'s panel layout (for each `KC`-deep slice, one `kc × W` panel per `W` lanes,
/// half `(p, q)` at `p·W + q`, the last panel zero-padded), each value rounded to the nearest
/// binary16 as it is converted. One pass over the source, read in its own order as the fp32
/// packing does: where the lanes are contiguous, depth by depth across every panel, each depth's
/// lanes converted straight into place; where the depth is, panel by panel, eight lanes × eight
/// depths transposed in registers and converted into place ([`transpose_panel_halves`]), or, for
/// a partial panel or a slice whose depth is not a multiple of 8, through a panel of floats on
/// the stack (the fp32 packing) converted from L1.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `src` must address `kd × lanes` elements, and `out` must hold
/// `lanes` rounded up to `W` times `kd` halves (asserted).
pub(crate) unsafe fn pack_block_halves<const W: usize>(kd: usize, lanes: usize, src: Panel, out: &mut [f32]) {
    let width = lanes.next_multiple_of(W);
    // B's panel widths (16, 32, 64): every panel and slice starts on a whole float of the
    // buffer, and each depth of a panel is whole eights of halves.
    assert!(2 * out.len() >= width * kd && W <= NR_WIDE && W.is_multiple_of(8));
    let halves = out.as_mut_ptr() as *mut u16;
    // SAFETY: every read is of `(p, q)` with `p < kd`, `q < lanes`, inside the source, and every
    // write lies inside the `width · kd` halves of `out` (asserted): panel `q0` of the slice at
    // `slice` spans `slice · width + q0 · kc` plus `kc · W`.
    unsafe {
        // Room for the widest panel (64 KiB on the stack), whatever `W` this call packs.
        let mut panel = [0.0f32; KC * NR_WIDE];
        for slice in (0..kd).step_by(KC) {
            let kc = KC.min(kd - slice);
            let base = halves.add(slice * width);
            if src.sq == 1 && src.sp != 1 {
                for p in 0..kc {
                    let row = src.ptr.offset((slice + p) as isize * src.sp);
                    for q0 in (0..lanes).step_by(W) {
                        to_halves(row.add(q0), W.min(lanes - q0), base.add(q0 * kc + p * W), W);
                    }
                }
            } else {
                for q0 in (0..lanes).step_by(W) {
                    let (from, to) = (src.at(slice, q0), base.add(q0 * kc));
                    if from.sp == 1 && from.sq != 1 && lanes - q0 >= W && kc.is_multiple_of(8) {
                        transpose_panel_halves::<W>(kc, from, to);
                    } else {
                        pack_panel::<W>(kc, from, W.min(lanes - q0), panel.as_mut_ptr());
                        to_halves(panel.as_ptr(), kc * W, to, kc * W);
                    }
                }
            }
        }
    }
}

/// Packs a block of A for the kernel: [`super::sgemm`]'s panel layout, each value a 32-bit word
/// holding its binary16 (to nearest even) twice — the word the kernel broadcasts; the conversion
/// flushes subnormals. Where the depth is contiguous (the forward's X, the backward's dY), whole
/// panels are transposed in registers and converted in place ([`transpose_panel_doubled_halves`]);
/// otherwise, and for a partial panel or a slice whose depth is not a multiple of 8, the fp32
/// copy ([`copy_block`], [`pack_panel`]) is converted in place afterwards: words and floats have
/// the same layout and size, so the conversion cannot overtake them.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `src` must address `kd × lanes` elements, and `out` hold
/// `lanes` rounded up to `W` times `kd` floats (asserted).
pub(crate) unsafe fn pack_block_doubled_halves<const W: usize>(kd: usize, lanes: usize, src: Panel, out: &mut [f32]) {
    let width = lanes.next_multiple_of(W);
    assert!(out.len() >= width * kd);
    // SAFETY: forwarded contract: panel `q0` of the slice at `slice` spans `slice · width + q0 · kc`
    // plus `kc · W` floats, inside the `width · kd` asserted, and reads `(p, q)` inside the source.
    unsafe {
        if src.sp != 1 || src.sq == 1 {
            copy_block::<W>(kd, lanes, src, out);
            return doubled_halves_in_place(&mut out[..width * kd]);
        }
        // `copy_block`'s order for this layout: panel by panel, slice by slice.
        for q0 in (0..lanes).step_by(W) {
            for slice in (0..kd).step_by(KC) {
                let kc = KC.min(kd - slice);
                let (from, at) = (src.at(slice, q0), slice * width + q0 * kc);
                // (`pack` instantiates this for B's widths too; only A's, `MR`, runs.)
                if W == MR && lanes - q0 >= W && kc.is_multiple_of(8) {
                    transpose_panel_doubled_halves::<W>(kc, from, out.as_mut_ptr().add(at));
                } else {
                    pack_panel::<W>(kc, from, W.min(lanes - q0), out.as_mut_ptr().add(at));
                    doubled_halves_in_place(&mut out[at..at + kc * W]);
                }
            }
        }
    }
}

/// One whole panel of A from a depth-contiguous source, `kc` a multiple of 8 (`W` = [`MR`]): the
/// fp32 packing's register transposes ([`for_transposed_rows`]), each transposed row's six lanes
/// converted to words holding their binary16 twice and stored in place.
///
/// # Safety
/// The CPU must have AVX2 and F16C; the source must hold `kc` depths (contiguous) of `W` lanes,
/// and `dst` room for `kc · W` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn transpose_panel_doubled_halves<const W: usize>(kc: usize, src: Panel, dst: *mut f32) {
    use std::arch::x86_64::*;
    assert_eq!(W, MR, "A's panels are MR lanes wide");
    // SAFETY: AVX2 and F16C are present and this is their context (the contract); each depth's six words are stored inside the `kc · W` panel, four then two.
    unsafe {
        for_transposed_rows::<W>(kc, src, |p, _, _, v| {
            let words = doubled_halves8(v);
            let d = dst.add(p * W);
            _mm_storeu_si128(d as *mut __m128i, _mm256_castsi256_si128(words));
            _mm_storel_epi64(d.add(4) as *mut __m128i, _mm256_extracti128_si256::<1>(words));
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_panel_doubled_halves<const W: usize>(_: usize, _: Panel, _: *mut f32) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// Eight floats as the words A is packed in: each one's binary16 (to nearest even) in both
/// halves of its word.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn doubled_halves8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let halves = _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
    _mm256_or_si256(halves, _mm256_slli_epi32::<16>(halves))
}

/// Each float of `v` as a word holding its binary16 in both halves ([`doubled_halves8`]), eight
/// at a time.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn doubled_halves_in_place(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let eight = |x: __m256| _mm256_castsi256_ps(doubled_halves8(x));
    let one = |x: f32| _mm256_cvtss_f32(eight(_mm256_set1_ps(x)));
    // SAFETY: AVX2 and F16C are present (the contract), and the closures are compiled with them.
    unsafe { map_eights(v, eight, one) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn doubled_halves_in_place(_: &mut [f32]) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// One whole panel of B from a depth-contiguous source, `kc` a multiple of 8: the fp32 packing's
/// register transposes ([`for_transposed_rows`]), each transposed row of eight converted to
/// binary16 (to nearest even) and stored in place, with no panel of floats between (in an fp16
/// medium step the forward's weights were a third of the packing's time).
///
/// # Safety
/// The CPU must have AVX2 and F16C; the source must hold `kc` depths (contiguous) of `W` lanes,
/// `W` a multiple of 8, and `dst` room for `kc · W` halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn transpose_panel_halves<const W: usize>(kc: usize, src: Panel, dst: *mut u16) {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and F16C are present and this is their context (the contract); each row's eight halves are stored inside the `kc · W` panel (W a multiple of 8).
    unsafe {
        for_transposed_rows::<W>(kc, src, |p, q0, _, v| {
            _mm_storeu_si128(dst.add(p * W + q0) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_panel_halves<const W: usize>(_: usize, _: Panel, _: *mut u16) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// `dst[..n]` = the `n` floats at `src` as binary16 (to nearest even), `dst[n..len]` = 0: eight
/// at a time through F16C, the last few through a masked load, whose lanes past `n` convert to
/// the zeros of the padding (`len` is a whole number of eights: B's panels are 16, 32 or 64 wide).
///
/// # Safety
/// The CPU must have AVX2 and F16C; `src` must hold `n` floats and `dst` room for `len ≥ n`
/// halves, `len` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_halves(src: *const f32, n: usize, dst: *mut u16, len: usize) {
    use std::arch::x86_64::*;
    debug_assert!(n <= len && len.is_multiple_of(8));
    // SAFETY: loads of floats below `n` (the masked load reads no lane past it), stores of eight halves below `len` (the contract).
    unsafe {
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            _mm_storeu_si128(dst.add(i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i))));
        }
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for i in (whole..len).step_by(8) {
            let present = n.saturating_sub(i).min(8);
            let x = _mm256_maskload_ps(src.wrapping_add(i), _mm256_cmpgt_epi32(_mm256_set1_epi32(present as i32), lane));
            _mm_storeu_si128(dst.add(i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_halves(_: *const f32, _: usize, _: *mut u16, _: usize) {
    unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
}

/// The value of an IEEE binary16 (exact in f32): the packings' read-back, and a state dict's
/// F16 tensors (`train::checkpoint`).
pub fn f32_of_half(h: u16) -> f32 {
    let (sign, exp, frac) = (if h & 0x8000 != 0 { -1.0f32 } else { 1.0 }, (h >> 10) & 0x1F, u32::from(h & 0x3FF));
    sign * match exp {
        0 => frac as f32 / (1u32 << 24) as f32,
        0x1F if frac == 0 => f32::INFINITY,
        0x1F => f32::NAN,
        e => f32::from_bits((u32::from(e) + 112) << 23 | frac << 13),
    }
}

/// `x` rounded once to the nearest binary16 (ties to even; ±inf from 65520 on; the subnormal
/// grid of 2⁻²⁴ below 2⁻¹⁴), as f32.
pub(crate) fn fp16_of_f64(x: f64) -> f32 {
    let a = x.abs();
    if x.is_nan() {
        return f32::NAN;
    }
    if a >= 65520.0 {
        return f32::INFINITY.copysign(x as f32);
    }
    // The spacing of binary16 values at `a`: 2^(e − 10) for `a` in [2^e, 2^(e+1)), e ≥ −14.
    let e = ((a.to_bits() >> 52) as i32 - 1023).max(-14);
    let ulp = f64::from_bits(((e - 10 + 1023) as u64) << 52);
    ((x / ulp).round_ties_even() * ulp) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::sgemm;
    use crate::cpu::sgemm::tests::check_against_naive_within;
    use crate::cpu::sgemm::Rounding;

    /// Whether the halves packing runs on this CPU (AVX2 and F16C); says so where it does not.
    #[cfg(target_arch = "x86_64")]
    fn packing_runs_here() -> bool {
        let runs = Isa::Avx2.supported() && std::arch::is_x86_feature_detected!("f16c");
        if !runs {
            eprintln!("SKIPPED (no AVX2/F16C)");
        }
        runs
    }

    /// Every kind of binary16 value reads as the f32 it is: normals, subnormals, zeros of both
    /// signs, infinities and NaN.
    #[test]
    fn every_kind_of_half_reads_exactly() {
        for (bits, want) in [
            (0x3C00u16, 1.0f32),
            (0xC000, -2.0),
            (0x7BFF, 65504.0),
            (0x0400, 2f32.powi(-14)),
            (0x0001, 2f32.powi(-24)),
            (0x83FF, -1023.0 * 2f32.powi(-24)),
            (0x0000, 0.0),
            (0x8000, -0.0),
            (0x7C00, f32::INFINITY),
            (0xFC00, f32::NEG_INFINITY),
        ] {
            assert_eq!(f32_of_half(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert!(f32_of_half(0x7E00).is_nan() && f32_of_half(0xFC01).is_nan());
    }

    #[test]
    fn halves_read_back_and_round_as_binary16() {
        // Every half's value, through the rounding of f64 and of f32 (the packing's), is itself.
        for h in 0..=u16::MAX {
            let v = f32_of_half(h);
            if v.is_nan() {
                assert!(fp16_of_f64(f64::from(v)).is_nan());
                continue;
            }
            assert_eq!(fp16_of_f64(f64::from(v)).to_bits(), v.to_bits(), "half {h:#06x}");
            assert_eq!(sgemm::fp16(v).to_bits(), v.to_bits(), "half {h:#06x}");
        }
        // Ties to even, the overflow edge, the subnormal grid, as the f32 rounding does.
        for x in [1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65519.0, 65520.0, -1e6, 6.0e-8, 2.9e-8, 1.0e-5, -3.0e-5, 0.1, 1.0 / 3.0] {
            assert_eq!(fp16_of_f64(x).to_bits(), sgemm::fp16(x as f32).to_bits(), "{x:e}");
        }
    }

    /// The halves packing gives the fp32 packing's floats rounded to binary16, in the same
    /// layout, for both source layouts (and a strided one), every panel width, partial panels
    /// and slices, and values that test the rounding: ties, overflow, subnormals, NaN; and A's
    /// packing each of those halves twice in a word, in the floats' places.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn halves_are_the_float_packing_rounded() {
        if !packing_runs_here() {
            return;
        }
        let special = [1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65519.0, 65520.0, -1e6, 6.0e-8, 2.9e-8, f32::NAN, -0.0];
        let (kd, lanes) = (301, 45);
        let values: Vec<f32> = (0..2 * kd * lanes).map(|i| if i % 7 == 0 { special[i / 7 % special.len()] } else { (i as f32 * 0.618).sin() * 1e3 }).collect();
        for (sp, sq) in [(1, kd as isize), (lanes as isize, 1), (2 * lanes as isize, 2)] {
            let src = Panel { ptr: values.as_ptr(), sp, sq };
            let check = |width: usize, floats: &dyn Fn(&mut [f32]), halves: &dyn Fn(&mut [f32])| {
                let len = lanes.next_multiple_of(width) * kd;
                let mut want = vec![0.0f32; len];
                floats(&mut want);
                // A value no packing writes, so a half left unwritten shows; and room past the
                // block, which must stay so.
                let mut got = vec![f32::from_bits(0xDEAD_BEEF); len.div_ceil(2) + 64];
                halves(&mut got);
                assert!(got[len.div_ceil(2)..].iter().all(|f| f.to_bits() == 0xDEAD_BEEF), "sp {sp} sq {sq} W {width}: a write past the block");
                let got: Vec<u16> = got.iter().flat_map(|f| [f.to_bits() as u16, (f.to_bits() >> 16) as u16]).collect();
                for (i, w) in want.iter().enumerate() {
                    let (g, w) = (f32_of_half(got[i]), sgemm::fp16(*w));
                    assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "sp {sp} sq {sq} W {width}: half {i} is {g:e}, want {w:e}");
                }
            };
            // A's packing: the same halves, each twice in its word, in the floats' places.
            let len = lanes.next_multiple_of(MR) * kd;
            let (mut want, mut got) = (vec![0.0f32; len], vec![f32::from_bits(0xDEAD_BEEF); len + 64]);
            unsafe { sgemm::pack_block::<MR>(kd, lanes, src, &mut want, Rounding::None) };
            unsafe { pack_block_doubled_halves::<MR>(kd, lanes, src, &mut got) };
            assert!(got[len..].iter().all(|f| f.to_bits() == 0xDEAD_BEEF), "sp {sp} sq {sq}: a write past A's block");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (lo, hi) = (g.to_bits() as u16, (g.to_bits() >> 16) as u16);
                let (g, w) = (f32_of_half(lo), sgemm::fp16(*w));
                assert!(lo == hi && (g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())), "sp {sp} sq {sq}: word {i} holds {lo:#06x} and {hi:#06x}, want {w:e} twice");
            }
            check(16, &|o| unsafe { sgemm::pack_block::<16>(kd, lanes, src, o, Rounding::None) }, &|o| unsafe { pack_block_halves::<16>(kd, lanes, src, o) });
            check(NR_MAX, &|o| unsafe { sgemm::pack_block::<NR_MAX>(kd, lanes, src, o, Rounding::None) }, &|o| unsafe { pack_block_halves::<NR_MAX>(kd, lanes, src, o) });
            check(NR_WIDE, &|o| unsafe { sgemm::pack_block::<NR_WIDE>(kd, lanes, src, o, Rounding::None) }, &|o| unsafe { pack_block_halves::<NR_WIDE>(kd, lanes, src, o) });
        }
    }

    /// The packing in halves and the loops, on any CPU with AVX2 (F16C), through the emulated
    /// kernel; and the AVX512-FP16 kernel itself where the CPU has it. Against the naive f64
    /// product of the rounded operands, within what runs of 32 fp16 adds may round away: each
    /// add at most 2⁻¹¹ of its run's magnitude, at most Σ|a·b| over the run, so 32 · 2⁻¹¹ of
    /// Σ|a·b| over the depth, at most.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp16_runs_match_the_naive_product_of_rounded_operands() {
        if !packing_runs_here() {
            return;
        }
        let bound = RUN as f32 / 2048.0;
        check_against_naive_within("fp16 runs, emulated", Rounding::Fp16, bound, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe {
            loop_nest::<NR_MAX>(Packing::Halves, m, n, k, alpha, a, b, c, rsc, acc, buf, emulated_kernel, None)
        });
        if !supported() {
            eprintln!("SKIPPED (no AVX512-FP16): vfmadd231ph was not run; its packing and loops were (emulated above)");
            return;
        }
        check_against_naive_within("avx512-fp16", Rounding::Fp16, bound, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm_fp16_runs(m, n, k, alpha, a, b, c, rsc, acc, buf) });
        check_against_naive_within("avx512-fp16-wide", Rounding::Fp16, bound, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm_fp16_runs_wide(m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    /// The packing, the loops and the kernel give, bit for bit, a model of their sums written
    /// from the definition alone: each element's depth cut into `KC`-deep slices (the calls of
    /// the kernel), each slice into runs of [`RUN`] from its start, each run summed in fp16 (each
    /// multiply-add of the rounded operands rounded once), the runs added in fp32, the slice's sum
    /// times alpha added to C. Every transposition, with and without accumulation, shapes across
    /// every edge of the tiles and blocks, and slices whose runs the kernel takes two at a time
    /// then one whole and one partial (k = 100, and 480's slice of 224); the emulated kernel on any CPU with AVX2, the
    /// AVX512-FP16 kernel where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp16_runs_are_the_runs_of_their_definition() {
        if !packing_runs_here() {
            return;
        }
        type Product = dyn Fn(usize, usize, usize, f32, Operand, Operand, *mut f32, bool, &mut PackBuffers);
        let emulated: &Product = &|m, n, k, alpha, a, b, c, acc, buf| unsafe { loop_nest::<NR_MAX>(Packing::Halves, m, n, k, alpha, a, b, c, n as isize, acc, buf, emulated_kernel, None) };
        let kernel: &Product = &|m, n, k, alpha, a, b, c, acc, buf| unsafe { sgemm_fp16_runs(m, n, k, alpha, a, b, c, n as isize, acc, buf) };
        let wide: &Product = &|m, n, k, alpha, a, b, c, acc, buf| unsafe { sgemm_fp16_runs_wide(m, n, k, alpha, a, b, c, n as isize, acc, buf) };
        let mut products = vec![("emulated", emulated)];
        if supported() {
            products.push(("avx512-fp16", kernel));
            products.push(("avx512-fp16-wide", wide));
        } else {
            eprintln!("SKIPPED (no AVX512-FP16): vfmadd231ph was not run; its packing and loops were (emulated)");
        }
        let mut seed = 3u64;
        let mut rand = |len: usize| sgemm::tests::uniform(&mut seed, len);
        let half = |x: f32| f64::from(sgemm::fp16(x));
        for (m, n, k) in [(1, 1, 1), (7, 17, 257), (145, 33, 300), (151, 16, 600), (13, 70, 513), (33, 40, 1100), (9, 31, 9), (64, 96, 520), (8, 40, 100), (13, 33, 480)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    let (av, bv, c0) = (rand(m * k), rand(k * n), rand(m * n));
                    let (a, b) = sgemm::tests::transposed(&av, &bv, (m, n, k), ta, tb);
                    let alpha = 0.75f32;
                    let mut want = c0.clone();
                    for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                        let c = &mut want[i * n + j];
                        for slice in (0..k).step_by(KC) {
                            let mut acc = 0.0f32;
                            for run in (slice..(slice + KC).min(k)).step_by(RUN) {
                                let mut sum = 0.0f32;
                                for p in run..(run + RUN).min(slice + KC).min(k) {
                                    let (x, y) = unsafe { (*a.ptr.offset(i as isize * a.rs + p as isize * a.cs), *b.ptr.offset(p as isize * b.rs + j as isize * b.cs)) };
                                    sum = fp16_of_f64(half(x) * half(y) + f64::from(sum));
                                }
                                acc += sum;
                            }
                            *c = if slice == 0 && !accumulate { acc * alpha } else { *c + acc * alpha };
                        }
                    }
                    for (what, product) in &products {
                        let mut got = c0.clone();
                        let mut buf = PackBuffers::default();
                        buf.round = Rounding::Fp16;
                        product(m, n, k, alpha, a, b, got.as_mut_ptr(), accumulate, &mut buf);
                        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(g.to_bits(), w.to_bits(), "{what}: m{m} n{n} k{k} ta{ta} tb{tb} acc{accumulate}: C[{idx}] = {g}, want {w}");
                        }
                    }
                }
            }
        }
    }

    /// The kernel gives its emulation's sums bit for bit on a product crossing every edge, both
    /// layouts of each operand (the first-use check holds the kernel to 1e-5 of them), and its
    /// sums are fp16's, not fp32's: a run whose fp16 sum rounds differs from the fp32 product.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_fp16_kernel_sums_as_its_emulation() {
        // A run of 32 depths: 1 + 31 · 2⁻¹² is 1 in fp16 (each 2⁻¹² is a quarter of fp16's
        // spacing at 1, 2⁻¹⁰, so each add rounds back to 1), and 1.0076 in fp32.
        let (m, n, k) = (1, 1, 32);
        let av: Vec<f32> = (0..k).map(|p| if p == 0 { 1.0 } else { 1.0 / 4096.0 }).collect();
        let bv = vec![1.0f32; k];
        let (a, b) = (Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 }, Operand { ptr: bv.as_ptr(), rs: 1, cs: 1 });
        let run = |gemm: &dyn Fn(*mut f32, &mut PackBuffers)| {
            let mut c = [0.0f32];
            let mut buf = PackBuffers::default();
            buf.round = Rounding::Fp16;
            gemm(c.as_mut_ptr(), &mut buf);
            c[0]
        };
        if !packing_runs_here() {
            return;
        }
        let emulated = run(&|c, buf| unsafe { loop_nest::<NR_MAX>(Packing::Halves, m, n, k, 1.0, a, b, c, n as isize, false, buf, emulated_kernel, None) });
        assert_eq!(emulated, 1.0, "fp16 sums round each add");
        if !supported() {
            eprintln!("SKIPPED (no AVX512-FP16): the kernel's own sums were not compared");
            return;
        }
        assert_eq!(run(&|c, buf| unsafe { sgemm_fp16_runs(m, n, k, 1.0, a, b, c, n as isize, false, buf) }), 1.0);
        let (m, n, k) = (45, 70, 300);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        let (av, bv): (Vec<f32>, Vec<f32>) = ((0..m * k).map(value).collect(), (0..k * n).map(|i| value(i + 17)).collect());
        for (ta, tb) in [(false, false), (true, true)] {
            let (a, b) = sgemm::tests::transposed(&av, &bv, (m, n, k), ta, tb);
            let product = |kernel: sgemm::Kernel, wide: bool| {
                let mut c = vec![0.5f32; m * n];
                let buf = &mut PackBuffers::default();
                if wide {
                    unsafe { loop_nest::<NR_WIDE>(Packing::Halves, m, n, k, 0.75, a, b, c.as_mut_ptr(), n as isize, true, buf, kernel, None) };
                } else {
                    unsafe { loop_nest::<NR_MAX>(Packing::Halves, m, n, k, 0.75, a, b, c.as_mut_ptr(), n as isize, true, buf, kernel, None) };
                }
                c
            };
            let want = product(emulated_kernel, false);
            for (what, got) in [("6 × 32", product(kernel_avx512_fp16, false)), ("6 × 64", product(kernel_avx512_fp16_wide, true))] {
                let differ = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                assert_eq!(differ, 0, "{what}, ta {ta} tb {tb}: {differ} of {} elements differ from the emulation", got.len());
            }
        }
    }
}
