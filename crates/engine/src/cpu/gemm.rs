//! How the CPU device runs a product: which kernel (measured per shape, [`super::plan`]), how
//! it is split over the workers (rows, columns, or depth parts summed in order), the
//! zero-skipping kernel for sparse left operands ([`super::sparse`]), and the convolutions whose
//! im2col rows are read in place.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::amx;
use super::fp16;
use super::plan::{self, GemmKey, GemmPolicy};
use super::sgemm::{self, Operand, PackBuffers};
use super::sparse::{self, StripBuffer};
use super::{take_grown, CpuDevice, CpuGemm, SendPtr};
use crate::device::{Gemm, Precision, View};
use crate::ops::conv1d::{self, ConvShape};

/// Work (multiply-adds) below which a GEMM runs on the calling thread: forking costs more.
pub(super) const PAR_GEMM_WORK: usize = 1 << 18;
/// The zero-skipping GEMM runs where at most this fraction of A is non-zero (it loads every
/// element of B it uses, so it needs the work it skips: measured on xl's weight gradient, it
/// breaks even with the dense kernel at ~85 % non-zeros) ...
const SPARSE_MAX_DENSITY: f64 = 0.6;
/// ... the depth is at most this: a 64-column strip of B (`k × 64`) is then at most 512 KiB ...
const SPARSE_MAX_DEPTH: usize = 2048;
/// ... and A has at most this many elements: its compressed form takes 8 bytes per element of A
/// (room for every one), 32 MiB at this size; xl's largest is a 16th of it. Past it (batches of
/// thousands of pairs) the dense kernel runs rather than the memory grow without bound.
const SPARSE_MAX_ELEMENTS: usize = 1 << 22;

/// A GEMM on strided operands on the calling thread: `C[m, n] (+)= alpha·op(A)·op(B)`, C with
/// column stride 1 and row stride `rsc`.
///
/// # Safety
/// `kernel` must be [`CpuGemm::supported`]; the operands must address whole matrices of these
/// shapes, C with a positive row stride; no other thread may touch the C written here.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided(kernel: CpuGemm, m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, pack: &mut PackBuffers) {
    let (bf16, fp16) = (pack.round == sgemm::Rounding::Bf16, pack.round == sgemm::Rounding::Fp16);
    // SAFETY (the four arms): as this function's contract; a kernel is only chosen where
    // supported, and the bf16 (fp16) kernels run only products whose operands are rounded to
    // bf16 (fp16) (the loss's fp32 products on such a device go on the AVX-512 kernel they share
    // vectors with).
    match kernel {
        CpuGemm::Amx if bf16 => return unsafe { amx::sgemm_on_tiles(&mut amx::Amx::configure(), m, n, k, alpha, a, b, c, rsc, accumulate, pack) },
        CpuGemm::Bf16Dot if bf16 => return unsafe { sgemm::sgemm_bf16_pairs(m, n, k, alpha, a, b, c, rsc, accumulate, pack) },
        CpuGemm::Fp16Runs if fp16 => return unsafe { fp16::sgemm_fp16_runs(m, n, k, alpha, a, b, c, rsc, accumulate, pack) },
        CpuGemm::Fp16RunsWide if fp16 => return unsafe { fp16::sgemm_fp16_runs_wide(m, n, k, alpha, a, b, c, rsc, accumulate, pack) },
        _ => {
            if let Some(isa) = kernel.isa() {
                return unsafe { sgemm::sgemm(isa, m, n, k, alpha, a, b, c, rsc, accumulate, pack) };
            }
        }
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: C is a whole m × n matrix (contract).
            unsafe { sgemm::clear(m, n, c, rsc) };
        }
        return;
    }
    // SAFETY: whole matrices of these shapes and strides (contract).
    let (cm, am, bm) = unsafe { (MatMut::from_raw_parts_mut(c, m, n, rsc, 1), MatRef::from_raw_parts(a.ptr, m, k, a.rs, a.cs), MatRef::from_raw_parts(b.ptr, k, n, b.rs, b.cs)) };
    let beta = if accumulate { Accum::Add } else { Accum::Replace };
    matmul(cm, beta, am, bm, alpha, Par::Seq);
    // (No `clear_upper_vector_state` here: what runs after a product in a step is compiled for
    // AVX, and clearing it changed no step's time, fp32 on faer, three configs, three rounds.)
}

/// Which dimension of C a parallel GEMM splits.
#[derive(Clone, Copy)]
enum Split {
    Rows,
    Cols,
}

/// The rows of a batch of `rows` convolution outputs that the in-place product covers: from the
/// first sample's first clean row to the last sample's last.
fn main_rows(edges: conv1d::InPlaceRows, rows: usize) -> std::ops::Range<usize> {
    edges.lead..rows - edges.trail
}

/// A product on strided operands: `C[m, n] (+)= alpha · op(A) · op(B)`, `op(A)` `m × k` and
/// `op(B)` `k × n` as [`Operand`]s, C with column stride 1 and row stride `rsc`.
#[derive(Clone, Copy)]
struct StridedGemm {
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    rsc: isize,
    alpha: f32,
    accumulate: bool,
}
// SAFETY: handed to the workers of one parallel product, which read the operands and write
// disjoint blocks of C.
unsafe impl Send for StridedGemm {}
unsafe impl Sync for StridedGemm {}

impl StridedGemm {
    /// A row-major GEMM of slices as strided operands.
    fn of(g: Gemm, c: &mut [f32], a: &[f32], b: &[f32], alpha: f32) -> Self {
        assert!(g.fits(c.len(), a.len(), b.len()), "operands smaller than the product {g:?}");
        let (a, b) = operands(g, a.as_ptr(), b.as_ptr());
        StridedGemm { m: g.m, n: g.n, k: g.k, a, b, c: c.as_mut_ptr(), rsc: g.n as isize, alpha, accumulate: g.accumulate }
    }

    /// `C[lo..hi, :]` (or `C[:, lo..hi]`) on the calling thread.
    ///
    /// # Safety
    /// The operands must address whole matrices of their shapes, and no other thread may write
    /// the block of C this call writes.
    unsafe fn block(self, kernel: CpuGemm, split: Split, lo: usize, hi: usize, pack: &mut PackBuffers) {
        let StridedGemm { m, n, k, a, b, c, rsc, alpha, accumulate } = self;
        // Offsets of a block inside whole matrices (wrapping: a pointer one past an empty block).
        let (c, a, b, mb, nb) = match split {
            Split::Rows => (c.wrapping_offset(lo as isize * rsc), Operand { ptr: a.ptr.wrapping_offset(lo as isize * a.rs), ..a }, b, hi - lo, n),
            Split::Cols => (c.wrapping_add(lo), a, Operand { ptr: b.ptr.wrapping_offset(lo as isize * b.cs), ..b }, m, hi - lo),
        };
        // SAFETY: the block lies inside the whole matrices (contract).
        unsafe { gemm_strided(kernel, mb, nb, k, alpha, a, b, c, rsc, accumulate, pack) }
    }
}

/// `op(A)` and `op(B)` of a row-major GEMM as strided operands.
fn operands(g: Gemm, a: *const f32, b: *const f32) -> (Operand, Operand) {
    let (ars, acs) = if g.trans_a { (1, g.m as isize) } else { (g.k as isize, 1) };
    let (brs, bcs) = if g.trans_b { (1, g.k as isize) } else { (g.n as isize, 1) };
    (Operand { ptr: a, rs: ars, cs: acs }, Operand { ptr: b, rs: brs, cs: bcs })
}

/// `out[c, r] = src[r, c]` for a row-major `src[rows, cols]`, in cache-sized tiles, the columns
/// of `src` (rows of `out`) split among `parts` workers.
fn transpose(src: &[f32], rows: usize, cols: usize, out: &mut [f32], parts: usize) {
    const T: usize = 32;
    if rows == 0 || cols == 0 {
        return;
    }
    // Rows of `out` (columns of `src`) in whole tiles per worker.
    super::for_column_parts(parts, out, rows, T, |c_first, out| {
        let c_end = c_first + out.len() / rows;
        for r0 in (0..rows).step_by(T) {
            for c0 in (c_first..c_end).step_by(T) {
                for r in r0..(r0 + T).min(rows) {
                    for c in c0..(c0 + T).min(c_end) {
                        out[(c - c_first) * rows + r] = src[r * cols + c];
                    }
                }
            }
        }
    });
}

/// Splits `dim` among at most `workers` parts at multiples of `unit` (a micro-tile, a strip):
/// the number of parts and part `t`'s start (`bound(t)..bound(t + 1)` is part `t`). Parts narrower
/// than two units waste the kernel, so small dimensions get fewer parts.
fn partition(workers: usize, dim: usize, unit: usize) -> (usize, impl Fn(usize) -> usize + Sync) {
    let parts = workers.min(dim / (2 * unit)).max(1);
    let units = dim.div_ceil(unit);
    (parts, move |t: usize| (units * t / parts * unit).min(dim))
}

/// A product whose C has at most this many values ...
const NARROW_C: usize = 1 << 15;
/// ... and whose depth is at least one and a half of these is split along its depth, in parts
/// this deep. (From two parts' depth, the cnn's third weight gradient, `64 × 96` over 4094 rows,
/// ran on one worker: too shallow for two whole parts, too narrow for its 96 columns to be split
/// into 32-wide panels, two a worker. Split in two parts it takes 245–288 µs a call on cnn-large
/// instead of 346, on the AMD EPYC Zen 4 of docs/performance.md.)
const DEPTH_PART: usize = 2048;

/// `C (+)= alpha · op(A) · op(B)` on slices, its rows or columns split over one worker per pack
/// buffer. Each element of C is computed whole by one worker, so the result does not depend on
/// how many there are. The split is along the larger of C's dimensions, at micro-tile
/// boundaries: each block runs the sequential kernel at full per-core speed, and the split is
/// static, so it allocates nothing (faer's own parallel path allocates on every call).
/// Deep, narrow products are split along their depth instead ([`gemm_depth_parts`], with
/// `shared` as scratch for the partial products; AMX products may pack A into it ahead,
/// [`amx_columns_on_shared_a`]).
#[allow(clippy::too_many_arguments)]
fn gemm_parallel(kernel: CpuGemm, packs: &mut [PackBuffers], shared: &mut Vec<f32>, g: Gemm, c: &mut [f32], a: &[f32], b: &[f32], alpha: f32) {
    // SAFETY: whole matrices of the shapes `g` gives (asserted by `StridedGemm::of`).
    unsafe { gemm_parallel_strided(kernel, packs, shared, StridedGemm::of(g, c, a, b, alpha)) }
}

/// [`gemm_parallel`] on strided operands.
///
/// # Safety
/// The operands must address whole matrices of their shapes, C must overlap neither, and nothing
/// else may touch C meanwhile.
unsafe fn gemm_parallel_strided(kernel: CpuGemm, packs: &mut [PackBuffers], shared: &mut Vec<f32>, p: StridedGemm) {
    if p.m * p.n <= NARROW_C && 2 * p.k >= 3 * DEPTH_PART {
        // SAFETY: forwarded contract.
        return unsafe { gemm_depth_parts(kernel, packs, shared, p) };
    }
    // Whole micro-panels per worker: the kernel's tile width across columns (faer's too).
    let nr = kernel.tile_cols();
    let (split, dim, unit) = if p.n >= p.m { (Split::Cols, p.n, nr) } else { (Split::Rows, p.m, sgemm::MR) };
    let (parts, bound) = partition(packs.len(), dim, unit);
    let on_tiles = kernel == CpuGemm::Amx && packs[0].round == sgemm::Rounding::Bf16;
    if on_tiles && matches!(split, Split::Cols) && amx::PackedA::pays(p.m, p.n, p.k, parts) {
        // SAFETY: forwarded contract; AMX runs here (the kernel was chosen among those that do).
        return unsafe { amx_columns_on_shared_a(&mut packs[..parts], shared, p, bound) };
    }
    // SAFETY: whole matrices (the contract); blocks of different t are disjoint.
    let run = |(t, pack): (usize, &mut PackBuffers)| unsafe { p.block(kernel, split, bound(t), bound(t + 1), pack) };
    if parts == 1 {
        run((0, &mut packs[0]));
    } else {
        packs[..parts].par_iter_mut().enumerate().for_each(run);
    }
}

/// An AMX product split by columns over `packs.len()` workers (several: `PackedA::pays`), its A packed once ahead
/// ([`amx::PackedA`]), each worker packing a share, then each worker's columns on it (`bound` as
/// [`partition`]'s). The packed values and each element's sum are those of the unshared path,
/// so the bits do not change.
///
/// # Safety
/// As [`gemm_parallel_strided`]; AMX must be [`amx::enabled`].
unsafe fn amx_columns_on_shared_a(packs: &mut [PackBuffers], shared: &mut Vec<f32>, p: StridedGemm, bound: impl Fn(usize) -> usize + Sync) {
    let (m, k, workers) = (p.m, p.k, packs.len());
    // From a cache line, as the workers' own buffers (grows in the first steps, then reused).
    let room = amx::PackedA::floats(m, k) + sgemm::ALIGN;
    if shared.len() < room {
        shared.resize(room, 0.0);
    }
    let start = shared.as_ptr().align_offset(4 * sgemm::ALIGN);
    let out = SendPtr(shared[start..].as_mut_ptr());
    let pack = |share: usize| {
        // Capture the whole Send/Sync values, not their raw-pointer fields.
        let (out, p) = (out, p);
        // SAFETY: A is whole (the contract); `shared` holds `floats(m, k)` from `out`; shares are disjoint blocks.
        unsafe { amx::pack_a_share(m, k, p.a, out.0, share, workers) }
    };
    (0..workers).into_par_iter().for_each(pack);
    let packed = amx::PackedA::at(out.0, m);
    let run = |(t, buf): (usize, &mut PackBuffers)| {
        // As above: the whole values.
        let (p, packed) = (p, packed);
        let (lo, hi) = (bound(t), bound(t + 1));
        let b = Operand { ptr: p.b.ptr.wrapping_offset(lo as isize * p.b.cs), ..p.b };
        // SAFETY: whole matrices (the contract) and A packed whole above; the columns lo..hi of C are this worker's alone; AMX enabled (the contract).
        unsafe { amx::sgemm_on_tiles_packed_a(&mut amx::Amx::configure(), m, hi - lo, k, p.alpha, packed, b, p.c.wrapping_add(lo), p.rsc, p.accumulate, buf) }
    };
    packs.par_iter_mut().enumerate().for_each(run);
}

/// A deep, narrow product — a convolution's weight gradient, `16 × 128` values of C summed over
/// 16 384 rows — in parts of [`DEPTH_PART`] depths, each written to its own partial C in
/// `partials`, then the partials summed in order. Split by rows or columns, every worker would
/// pack the whole of the operand the parts share, as much work as the products themselves at
/// this shape. Where there are more workers than depth parts, each part's columns are split
/// among them too (at micro-panel boundaries: a column split changes no sum). The parts depend
/// on the depth alone, as does the order of the sum, so the result does not depend on the
/// number of workers. (`partials` holds `⌈k / 2048⌉ · m · n ≤ 16·k + 32 768` values: no more than
/// the operands of any product with n ≥ 16.)
///
/// # Safety
/// The operands must address whole matrices of their shapes, C must overlap neither, and nothing
/// else may touch C meanwhile.
unsafe fn gemm_depth_parts(kernel: CpuGemm, packs: &mut [PackBuffers], partials: &mut Vec<f32>, p: StridedGemm) {
    let StridedGemm { m, n, k, c, rsc, accumulate, .. } = p;
    let (mn, chunks) = (m * n, k.div_ceil(DEPTH_PART));
    if partials.len() < chunks * mn {
        // Grows in the first steps, then reused.
        partials.resize(chunks * mn, 0.0);
    }
    // Column blocks per depth part, for the workers the parts leave idle.
    let nr = kernel.tile_cols();
    let (col_parts, col_bound) = partition(packs.len().div_ceil(chunks), n, nr);
    let tasks = chunks * col_parts;
    let workers = packs.len().min(tasks);
    let pp = SendPtr(partials.as_mut_ptr());
    let run = |(w, pack): (usize, &mut PackBuffers)| {
        // Capture the whole Send/Sync values, not their raw-pointer fields.
        let (pp, p) = (pp, p);
        let (ao, bo) = (p.a, p.b);
        for task in (w..tasks).step_by(workers) {
            let (j, (lo, hi)) = (task / col_parts, (col_bound(task % col_parts), col_bound(task % col_parts + 1)));
            let k0 = j * DEPTH_PART;
            // Depths k0.. of op(A) (its columns) and of op(B) (its rows), columns lo..hi of op(B),
            // into columns lo..hi of partial j.
            let part = StridedGemm {
                k: DEPTH_PART.min(k - k0),
                a: Operand { ptr: ao.ptr.wrapping_offset(k0 as isize * ao.cs), ..ao },
                b: Operand { ptr: bo.ptr.wrapping_offset(k0 as isize * bo.rs), ..bo },
                // SAFETY: inside `partials`, grown above to `chunks · m · n`.
                c: unsafe { pp.0.add(j * mn) },
                rsc: n as isize,
                accumulate: false,
                ..p
            };
            // SAFETY: the operands are whole matrices (the contract) and depths k0..k0 + kd lie inside them; columns lo..hi of partial j are this task's alone.
            unsafe { part.block(kernel, Split::Cols, lo, hi, pack) }
        }
    };
    if workers == 1 {
        run((0, &mut packs[0]));
    } else {
        packs[..workers].par_iter_mut().enumerate().for_each(run);
    }
    let partial_sums = &partials[..chunks * mn];
    for i in 0..m {
        // SAFETY: row i of C (m rows of n values, row stride `rsc`), which only this call touches (the contract).
        let row = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), n) };
        for (j, ci) in row.iter_mut().enumerate() {
            let sum = (0..chunks).fold(0.0f32, |s, part| s + partial_sums[part * mn + i * n + j]);
            *ci = if accumulate { *ci + sum } else { sum };
        }
    }
}

/// The scratch of a parallel GEMM: one packing buffer per worker, and what a product's workers
/// share (the partial products of a product split along its depth, or an A packed ahead for
/// AMX). Taken out of the device as one (so it can be used beside borrows of the device's
/// memory) and put back after.
#[derive(Default)]
pub(super) struct GemmScratch {
    pub(super) packs: Vec<PackBuffers>,
    pub(super) shared: Vec<f32>,
}

impl GemmScratch {
    /// A row-major GEMM of slices on `parts` workers ([`gemm_parallel`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(&mut self, kernel: CpuGemm, parts: usize, g: Gemm, c: &mut [f32], a: &[f32], b: &[f32], alpha: f32) {
        gemm_parallel(kernel, &mut self.packs[..parts], &mut self.shared, g, c, a, b, alpha)
    }

    /// A product on strided operands on `parts` workers ([`gemm_parallel_strided`]).
    ///
    /// # Safety
    /// As [`gemm_parallel_strided`].
    unsafe fn strided(&mut self, kernel: CpuGemm, parts: usize, p: StridedGemm) {
        // SAFETY: forwarded contract.
        unsafe { gemm_parallel_strided(kernel, &mut self.packs[..parts], &mut self.shared, p) }
    }
}

impl CpuDevice {
    /// Runs a product on `kernel`, split over `parts` workers.
    fn gemm_on(&mut self, kernel: CpuGemm, g: Gemm, parts: usize, c: View, a: View, b: View) {
        let large = g.work() >= PAR_GEMM_WORK;
        let mut scratch = std::mem::take(&mut self.gemm_scratch);
        if g.trans_a && large && kernel == CpuGemm::Faer {
            // faer's kernels run a transposed A (the dW = dYᵀ·X of every backward) at ~70 % of
            // their plain-A speed; transposing A first costs m·k copies against m·n·k
            // multiply-adds. (The packed kernel reads any strides at full speed.)
            let mut at = take_grown(&mut self.transpose_scratch, g.m * g.k);
            transpose(&self.slice(a)[..g.k * g.m], g.k, g.m, &mut at[..g.m * g.k], parts);
            let (cs, [bs]) = self.split(c, [b]);
            scratch.gemm(kernel, parts, Gemm { trans_a: false, ..g }, cs, &at, bs, 1.0);
            self.transpose_scratch = at;
        } else {
            let (cs, [as_, bs]) = self.split(c, [a, b]);
            scratch.gemm(kernel, parts, g, cs, as_, bs, 1.0);
        }
        self.gemm_scratch = scratch;
    }

    /// The kernel of this product: the policy's, the one this process chose for its shape, or
    /// the fastest measured now on these operands.
    /// `run` computes the product (into `c`) on a given kernel, for the measurement (a
    /// convolution's, under the key of the GEMM it replaces: a plain product of the same shape,
    /// were there one, would share the choice, which changes speed only).
    pub(super) fn kernel_for(&mut self, g: Gemm, parts: usize, c: View, run: &mut dyn FnMut(&mut CpuDevice, CpuGemm)) -> CpuGemm {
        let key = GemmKey::of(g, parts, self.precision);
        if let Some(&k) = self.plan.get(&key) {
            return k;
        }
        // Recorded under a fixed policy too: a run resumed without the same CID_CPU_GEMM then
        // pins the kernels it ran on.
        if let GemmPolicy::Fixed(_) = self.policy {
            self.plan.insert(key, self.gemm);
            return self.gemm;
        }
        let k = match plan::chosen(key) {
            Some(k) => k,
            None => {
                let measured = self.measure(g, c, run);
                plan::record(key, measured)
            }
        };
        self.plan.insert(key, k);
        k
    }

    /// Times every kernel this CPU runs on this product ([`best_times`](Self::best_times)) and
    /// returns the fastest ([`plan::decide`]).
    fn measure(&mut self, g: Gemm, c: View, run: &mut dyn FnMut(&mut CpuDevice, CpuGemm)) -> CpuGemm {
        let kernels = CpuGemm::candidates(self.precision);
        let best = self.best_times(g, c, kernels.len(), &mut |dev, i| run(dev, kernels[i]));
        plan::decide(&kernels.into_iter().zip(best).collect::<Vec<_>>())
    }

    /// The best time of each of `ways` ways of computing this product (`run(dev, i)` computes it
    /// the `i`-th way), interleaved, best of two runs each or more (up to 32 while the runs so
    /// far took under ≈ 4 ms). C is restored before each run and at the end, so an accumulating
    /// product still accumulates once.
    fn best_times(&mut self, g: Gemm, c: View, ways: usize, run: &mut dyn FnMut(&mut CpuDevice, usize)) -> Vec<f64> {
        /// Runs go on while one way's runs took less than this on average, in seconds ...
        const BUDGET_S: f64 = 4e-3;
        /// ... up to this many (and at least two, however long a product takes).
        const MAX_RUNS: usize = 32;
        // A copy of C for the trials, freed after them (measuring happens once per shape, in the
        // first steps, which may allocate).
        let saved = self.slice(c)[..g.m * g.n].to_vec();
        let mut best = vec![f64::INFINITY; ways];
        let (mut spent, mut runs) = (0.0, 0);
        while runs < 2 || (runs < MAX_RUNS && spent < BUDGET_S) {
            for (i, t_best) in best.iter_mut().enumerate() {
                self.slice_mut(c)[..g.m * g.n].copy_from_slice(&saved);
                let t = Instant::now();
                run(self, i);
                let s = t.elapsed().as_secs_f64();
                *t_best = t_best.min(s);
                spent += s / ways as f64;
            }
            runs += 1;
        }
        self.slice_mut(c)[..g.m * g.n].copy_from_slice(&saved);
        best
    }

    /// Workers of a product: all of them past [`PAR_GEMM_WORK`], else one.
    pub(super) fn gemm_parts(&self, g: Gemm) -> usize {
        if g.work() >= PAR_GEMM_WORK {
            self.threads
        } else {
            1
        }
    }

    /// `y = im2col(x)·w̃ᵀ` with the im2col rows read in place ([`ConvShape::in_place_rows`]): one
    /// product over every row from the first clean one to the last, then the edge rows recomputed
    /// from their true im2col rows and written over. No im2col matrix is formed: for the CNN's
    /// first layer that is 8 MB written and read again per step.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_forward_in_place(&mut self, kernel: CpuGemm, parts: usize, x: View, w_taps: View, y: View, s: ConvShape, out: usize, edges: conv1d::InPlaceRows) {
        let (len_out, xi, _) = s.sample_lens();
        let (patch, rows, per) = (s.patch(), s.samples * len_out, edges.per_sample());
        let mut gemm = std::mem::take(&mut self.gemm_scratch);
        let mut scratch = take_grown(&mut self.scratch, s.samples * per * (patch + out));
        let (ys, [xs, ws]) = self.split(y, [x, w_taps]);
        assert!(xs.len() == s.samples * xi && ws.len() == out * patch && ys.len() == rows * out);
        let (stride, first) = (s.stride * s.channels, (edges.lead * s.stride - s.padding) * s.channels);
        // op(B) = w̃ᵀ: `patch × out`, element (p, j) at w̃[j·patch + p].
        let w = Operand { ptr: ws.as_ptr(), rs: 1, cs: patch as isize };
        let main = StridedGemm {
            m: main_rows(edges, rows).len(),
            n: out,
            k: patch,
            a: Operand { ptr: xs[first..].as_ptr(), rs: stride as isize, cs: 1 },
            b: w,
            c: ys[edges.lead * out..].as_mut_ptr(),
            rsc: out as isize,
            alpha: 1.0,
            accumulate: false,
        };
        // SAFETY: rows lead..rows − trail of the batch start `first` values into x and end inside it (`in_place_rows`), one stride apart; they write rows of y that only this call touches.
        unsafe { gemm.strided(kernel, parts, main) };
        // The edge rows: their true im2col rows, one product, written over what the main
        // product left there (or never reached).
        if per > 0 {
            let (gathered, products) = scratch.split_at_mut(s.samples * per * patch);
            for (i, sample_rows) in gathered.chunks_exact_mut(per * patch).enumerate() {
                for (t, row) in edges.edges(len_out).zip(sample_rows.chunks_exact_mut(patch)) {
                    conv1d::im2col_row(&xs[i * xi..(i + 1) * xi], t, row, s);
                }
            }
            let edge_product = StridedGemm {
                m: s.samples * per,
                n: out,
                k: patch,
                a: Operand { ptr: gathered.as_ptr(), rs: patch as isize, cs: 1 },
                b: w,
                c: products.as_mut_ptr(),
                rsc: out as isize,
                alpha: 1.0,
                accumulate: false,
            };
            // SAFETY: `gathered` holds `samples · per` rows of `patch`, `products` as many of `out`, apart from each other.
            unsafe { gemm.strided(kernel, parts, edge_product) };
            for (i, sample_products) in products[..s.samples * per * out].chunks_exact(per * out).enumerate() {
                for (t, product) in edges.edges(len_out).zip(sample_products.chunks_exact(out)) {
                    ys[(i * len_out + t) * out..][..out].copy_from_slice(product);
                }
            }
        }
        (self.gemm_scratch, self.scratch) = (gemm, scratch);
    }

    /// `dw̃ = dyᵀ·im2col(x)` over the same in-place rows: one product over the main rows, then
    /// `dw̃ += dy_eᵀ·(true − in-place)` over the edge rows (`true` alone for the rows the main
    /// product did not reach).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_weight_in_place(&mut self, kernel: CpuGemm, parts: usize, x: View, dy: View, dw_taps: View, s: ConvShape, out: usize, edges: conv1d::InPlaceRows) {
        let (len_out, xi, _) = s.sample_lens();
        let (patch, rows, per) = (s.patch(), s.samples * len_out, edges.per_sample());
        let mut gemm = std::mem::take(&mut self.gemm_scratch);
        let mut scratch = take_grown(&mut self.scratch, s.samples * per * (patch + out));
        let (dws, [xs, dys]) = self.split(dw_taps, [x, dy]);
        assert!(xs.len() == s.samples * xi && dys.len() == rows * out && dws.len() == out * patch);
        let (stride, first) = (s.stride * s.channels, (edges.lead * s.stride - s.padding) * s.channels);
        let main_rows = main_rows(edges, rows);
        let main = StridedGemm {
            m: out,
            n: patch,
            k: main_rows.len(),
            // op(A) = dyᵀ over the main rows; op(B) = their im2col rows, in place.
            a: Operand { ptr: dys[main_rows.start * out..].as_ptr(), rs: 1, cs: out as isize },
            b: Operand { ptr: xs[first..].as_ptr(), rs: stride as isize, cs: 1 },
            c: dws.as_mut_ptr(),
            rsc: patch as isize,
            alpha: 1.0,
            accumulate: false,
        };
        // SAFETY: as the forward's: the main rows lie inside x one stride apart; dw̃ is this call's alone.
        unsafe { gemm.strided(kernel, parts, main) };
        if per > 0 {
            let (fixes, dy_edges) = scratch.split_at_mut(s.samples * per * patch);
            for (i, (sample_fixes, sample_dy)) in fixes.chunks_exact_mut(per * patch).zip(dy_edges.chunks_exact_mut(per * out)).enumerate() {
                for ((t, fix), d) in edges.edges(len_out).zip(sample_fixes.chunks_exact_mut(patch)).zip(sample_dy.chunks_exact_mut(out)) {
                    let r = i * len_out + t;
                    conv1d::im2col_row(&xs[i * xi..(i + 1) * xi], t, fix, s);
                    if main_rows.contains(&r) {
                        // What the main product took for this row: the input at its in-place place.
                        let at = first + (r - main_rows.start) * stride;
                        fix.iter_mut().zip(&xs[at..at + patch]).for_each(|(f, &v)| *f -= v);
                    }
                    d.copy_from_slice(&dys[r * out..(r + 1) * out]);
                }
            }
            let fix_up = StridedGemm {
                m: out,
                n: patch,
                k: s.samples * per,
                a: Operand { ptr: dy_edges.as_ptr(), rs: 1, cs: out as isize },
                b: Operand { ptr: fixes.as_ptr(), rs: patch as isize, cs: 1 },
                c: dws.as_mut_ptr(),
                rsc: patch as isize,
                alpha: 1.0,
                accumulate: true,
            };
            // SAFETY: `dy_edges` holds `samples · per` rows of `out`, `fixes` as many of `patch`; dw̃ (`out × patch`) is neither.
            unsafe { gemm.strided(kernel, parts, fix_up) };
        }
        (self.gemm_scratch, self.scratch) = (gemm, scratch);
    }

    /// A `sparse_a` GEMM on the zero-skipping kernel, columns of C split over the workers.
    /// Returns false, having written nothing, where A has too many non-zeros for it to pay.
    fn gemm_sparse(&mut self, g: Gemm, c: View, a: View, b: View) -> bool {
        let (mut lhs, mut strips) = (std::mem::take(&mut self.sparse), std::mem::take(&mut self.strips));
        let (cs, [as_, bs]) = self.split(c, [a, b]);
        assert!(g.fits(cs.len(), as_.len(), bs.len()), "operands smaller than the product {g:?}");
        let (a_op, b_op) = operands(g, as_.as_ptr(), bs.as_ptr());
        // SAFETY: the operands cover whole matrices (asserted).
        let nnz = unsafe { lhs.compress(g.m, g.k, a_op) };
        // Every worker's buffer is sized whatever the outcome, so a later step that crosses the
        // threshold allocates nothing.
        for s in strips.iter_mut() {
            s.reserve(g.k);
        }
        let pays = nnz as f64 <= SPARSE_MAX_DENSITY * (g.m * g.k) as f64;
        if pays {
            let (parts, bound) = partition(strips.len(), g.n, sparse::STRIP);
            let (cp, bp) = (SendPtr(cs.as_mut_ptr()), SendPtr(b_op.ptr as *mut f32));
            let lhs = &lhs;
            // The device's own kernel's vectors (the caller runs this only where it is one of ours).
            let isa = self.gemm.isa().unwrap_or(sgemm::Isa::Avx2);
            let run = |(t, strip): (usize, &mut StripBuffer)| {
                let (cp, bp) = (cp, bp);
                let b = Operand { ptr: bp.0, ..b_op };
                // SAFETY: whole matrices (asserted); the column ranges of different t are disjoint; `isa` is the device's kernel's, which this CPU runs.
                unsafe { lhs.multiply(isa, b, cp.0, g.n, bound(t)..bound(t + 1), g.accumulate, strip) }
            };
            strips[..parts].par_iter_mut().enumerate().for_each(run);
        }
        (self.sparse, self.strips) = (lhs, strips);
        pays
    }

    /// Whether a product whose A may hold zeros tries the zero-skipping strips (which still
    /// decline an A with too many non-zeros, [`gemm_sparse`](Self::gemm_sparse)): never on faer
    /// (the strips run on the vectors of the device's own kernel, which faer has not); always
    /// under another fixed kernel, or on a resumed plan from before the strips were measured;
    /// else as measured for its shape, once per process, against its dense kernel on its first
    /// operands (on AVX-512 the dense kernel is twice AVX2's speed while the strips gain less,
    /// so where they pay depends on the shape and the CPU: docs/performance.md). Recorded in
    /// the device's plan whichever way it was decided, as [`kernel_for`](Self::kernel_for)
    /// records kernels: a run resumed under another policy then pins what this one did.
    fn strips_for(&mut self, g: Gemm, parts: usize, c: View, a: View, b: View) -> bool {
        let key = GemmKey::of(g, parts, self.precision);
        if let Some(&on) = self.strips_plan.get(&key) {
            return on;
        }
        let on = if self.gemm.isa().is_none() {
            false
        } else if matches!(self.policy, GemmPolicy::Fixed(_)) || self.strips_by_density {
            true
        } else {
            match plan::chosen_strips(key) {
                Some(on) => on,
                None => {
                    let measured = self.measure_strips(g, parts, c, a, b);
                    plan::record_strips(key, measured)
                }
            }
        };
        self.strips_plan.insert(key, on);
        on
    }

    /// Times the strips against the product's dense kernel (chosen first, as
    /// [`kernel_for`](Self::kernel_for) chooses it), as kernels are timed
    /// ([`best_times`](Self::best_times)). An A the strips decline (too many non-zeros) is dense
    /// for good: its shape's gradients are taken as dense by nature, where measuring again at
    /// every step would cost a compression and two products each time.
    fn measure_strips(&mut self, g: Gemm, parts: usize, c: View, a: View, b: View) -> bool {
        let dense = self.kernel_for(g, parts, c, &mut |dev, k| dev.gemm_on(k, g, parts, c, a, b));
        let mut declined = false;
        let best = self.best_times(g, c, 2, &mut |dev, way| {
            if way == 0 {
                declined |= !dev.gemm_sparse(g, c, a, b);
            } else {
                dev.gemm_on(dense, g, parts, c, a, b);
            }
        });
        !declined && best[0] < best[1]
    }

    /// [`Device::gemm`]: on the zero-skipping kernel where [`strips_for`](Self::strips_for) says
    /// so and A is sparse enough to pay, else on the kernel measured (or fixed) for its
    /// shape, split over the workers.
    pub(super) fn product(&mut self, g: Gemm, c: View, a: View, b: View) {
        // Checked once here, so that every size below it (`m·n`, `m·k`, `k·n`) is in bounds.
        assert!(g.fits(c.len(), a.len(), b.len()), "operands of {}, {} and {} floats for the product {g:?}", c.len(), a.len(), b.len());
        let large = g.work() >= PAR_GEMM_WORK;
        let sparse_fits = g.k <= SPARSE_MAX_DEPTH && g.m * g.k <= SPARSE_MAX_ELEMENTS;
        // (The zero-skipping kernel reads its operands unpacked: it runs in fp32 only.)
        let fp32 = self.precision == Precision::Fp32;
        let parts = self.gemm_parts(g);
        if g.sparse_a && large && fp32 && sparse_fits && self.strips_for(g, parts, c, a, b) && self.gemm_sparse(g, c, a, b) {
            return;
        }
        // (bf16 and fp16 round operands as our kernels pack them: the kernels measured for those
        // are ours, `CpuGemm::candidates`.)
        let kernel = self.kernel_for(g, parts, c, &mut |dev, k| dev.gemm_on(k, g, parts, c, a, b));
        self.gemm_on(kernel, g, parts, c, a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn transpose_on_any_number_of_workers_is_the_transpose() {
        for (rows, cols) in [(1, 1), (37, 100), (64, 33), (5, 200)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            for parts in [1, 2, 3, 8] {
                let mut out = vec![f32::NAN; rows * cols];
                transpose(&src, rows, cols, &mut out, parts);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(out[c * rows + r], src[r * cols + c], "{rows} × {cols} on {parts} workers at ({r}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_gemm_splits_match_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut seed = 9u64;
            let mut rand = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            let kernels = CpuGemm::available();
            for kernel in kernels {
                let mut dev = CpuDevice::with_gemm(kernel);
                // Split by rows (m > n) and by columns, both past PAR_GEMM_WORK, and deep and
                // narrow ones along their depth (three parts, the last short; two; and two from
                // one and a half parts' depth, the least that splits).
                for (m, n, k) in [(200, 40, 40), (40, 200, 40), (7, 19, 2 * DEPTH_PART + 333), (16, 24, 2 * DEPTH_PART), (64, 96, 3 * DEPTH_PART / 2)] {
                    let (a, b, c) = (dev.alloc(m * k).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
                    for (trans_a, trans_b) in [(false, false), (true, false), (false, true)] {
                        for accumulate in [false, true] {
                            let (av, bv, c0): (Vec<f32>, Vec<f32>, Vec<f32>) = ((0..m * k).map(|_| rand()).collect(), (0..k * n).map(|_| rand()).collect(), (0..m * n).map(|_| rand()).collect());
                            dev.upload(a, &av);
                            dev.upload(b, &bv);
                            dev.upload(c, &c0);
                            dev.gemm(Gemm { m, n, k, trans_a, trans_b, accumulate, sparse_a: false }, c, a, b);
                            let got = dev.slice(c).to_vec();
                            for i in 0..m {
                                for j in 0..n {
                                    let at = |p: usize| if trans_a { av[p * m + i] } else { av[i * k + p] };
                                    let bt = |p: usize| if trans_b { bv[j * k + p] } else { bv[p * n + j] };
                                    let dot: f64 = (0..k).map(|p| at(p) as f64 * bt(p) as f64).sum();
                                    let want = if accumulate { c0[i * n + j] as f64 + dot } else { dot };
                                    let g = got[i * n + j] as f64;
                                    assert!((g - want).abs() < 1e-4 * (k as f64 / 40.0).sqrt(), "{kernel:?} {m}x{n}x{k} ta{trans_a} tb{trans_b} acc{accumulate}: C[{i},{j}] = {g}, want {want}");
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    /// A deep, narrow product on 1, 2 and 8 workers (8: more workers than depth parts, so each
    /// part's columns are split too): the same bits every time, and the naive product.
    #[test]
    fn depth_parts_give_the_same_bits_on_any_worker_count() {
        let (m, n, k) = (24, 100, 3 * DEPTH_PART / 2 + 77);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        let (av, bv): (Vec<f32>, Vec<f32>) = ((0..k * m).map(value).collect(), (0..k * n).map(|i| value(i + 3)).collect());
        let run = |threads: usize, kernel: CpuGemm| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                let mut dev = CpuDevice::with_gemm(kernel);
                let (a, b, c) = (dev.alloc(k * m).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
                dev.upload(a, &av);
                dev.upload(b, &bv);
                dev.gemm(Gemm::tn(m, n, k), c, a, b);
                dev.slice(c).to_vec()
            })
        };
        for kernel in CpuGemm::available() {
            let one = run(1, kernel);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| av[p * m + i] as f64 * bv[p * n + j] as f64).sum();
                    assert!((one[i * n + j] as f64 - want).abs() < 1e-3, "{kernel:?}: C[{i},{j}] = {}, want {want}", one[i * n + j]);
                }
            }
            for threads in [2, 8] {
                assert!(run(threads, kernel).iter().zip(&one).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?} on {threads} workers differs from 1");
            }
        }
    }

    /// bf16 products on every kernel that runs them, through the device's parallel path: two
    /// whose workers each span several blocks of B when there are two (on AMX, A is then packed
    /// once ahead and shared, `amx::PackedA`; one of them with two blocks of rows and three
    /// super-blocks of depth, the other unshared again on three workers) and two never shared;
    /// the same bits on 1 (never shared), 2 and 3 workers, and the naive product of the rounded
    /// operands.
    #[test]
    fn bf16_products_give_the_same_bits_on_any_worker_count() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        let bf16 = |v: &[f32]| -> Vec<f32> {
            let mut r = v.to_vec();
            sgemm::round_bf16(&mut r);
            r
        };
        if CpuGemm::candidates(Precision::Bf16).is_empty() {
            eprintln!("SKIPPED bf16 products on 1, 2 and 3 workers: no bf16 kernel runs here (they need AVX2 + FMA)");
        }
        for kernel in CpuGemm::candidates(Precision::Bf16) {
            for (m, n, k, trans_a) in [(40, 2000, 300, true), (150, 2000, 700, false), (150, 1100, 300, true), (64, 96, 200, false)] {
                let (av, bv): (Vec<f32>, Vec<f32>) = ((0..m * k).map(value).collect(), (0..k * n).map(|i| value(i + 3)).collect());
                let run = |threads: usize| {
                    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                        let mut dev = CpuDevice::with_gemm(kernel);
                        dev.set_precision(Precision::Bf16).unwrap();
                        let (a, b, c) = (dev.alloc(m * k).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
                        dev.upload(a, &av);
                        dev.upload(b, &bv);
                        let g = if trans_a { Gemm::tn(m, n, k) } else { Gemm { m, n, k, trans_a: false, trans_b: false, accumulate: false, sparse_a: false } };
                        dev.gemm(g, c, a, b);
                        dev.slice(c).to_vec()
                    })
                };
                let one = run(1);
                let (ar, br) = (bf16(&av), bf16(&bv));
                for i in (0..m).step_by(7) {
                    for j in (0..n).step_by(13) {
                        let at = |p: usize| if trans_a { ar[p * m + i] } else { ar[i * k + p] };
                        let want: f64 = (0..k).map(|p| at(p) as f64 * br[p * n + j] as f64).sum();
                        assert!((one[i * n + j] as f64 - want).abs() < 1e-3, "{kernel:?} {m}×{n}×{k}: C[{i},{j}] = {}, want {want}", one[i * n + j]);
                    }
                }
                for threads in [2, 3] {
                    assert!(run(threads).iter().zip(&one).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?} {m}×{n}×{k} on {threads} workers differs from 1");
                }
            }
        }
    }

    /// The convolution products with rows read in place against im2col + GEMM: batches whose
    /// weight gradient is deep enough for depth parts (the first two shapes), for each fixed
    /// kernel and under measurement, on 2 workers — and the same bits on 8 (more workers than
    /// depth parts: their columns split too).
    #[test]
    fn in_place_convolution_rows_give_the_im2col_products() {
        use crate::ops::conv1d::{self, ConvShape};
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        // (samples, len, C, out, K, stride, padding): the CNN's first layer, a k3 p1, no edges.
        for (samples, len, c, out, k, stride, pad) in [(257, 256, 2, 16, 64, 16, 24), (70, 64, 16, 32, 3, 1, 1), (9, 40, 3, 5, 2, 2, 0)] {
            let s = ConvShape { samples, len_in: len, channels: c, kernel: k, stride, padding: pad };
            assert!(s.in_place_rows().is_some(), "{s:?}");
            let rows = samples * s.len_out().unwrap();
            let policies = CpuGemm::available().into_iter().map(GemmPolicy::Fixed).chain([GemmPolicy::Measure]);
            for policy in policies {
                let run = |threads: usize, in_place: bool| {
                    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                        let mut dev = CpuDevice::with_policy(policy);
                        let (x, w, dy) = (dev.alloc(samples * len * c).unwrap(), dev.alloc(out * s.patch()).unwrap(), dev.alloc(rows * out).unwrap());
                        let (cols, y, dw) = (dev.alloc(rows * s.patch()).unwrap(), dev.alloc(rows * out).unwrap(), dev.alloc(out * s.patch()).unwrap());
                        for (v, salt) in [(x, 0), (w, 11), (dy, 23)] {
                            let data: Vec<f32> = (0..v.len()).map(|i| value(i + salt)).collect();
                            dev.upload(v, &data);
                        }
                        if in_place {
                            dev.conv_forward_product(x, w, cols, y, s, out);
                            dev.conv_weight_product(x, cols, dy, dw, s, out);
                        } else {
                            conv1d::forward_product_via_cols(&mut dev, x, w, cols, y, s, out);
                            conv1d::weight_product_via_cols(&mut dev, x, cols, dy, dw, s, out);
                        }
                        (dev.slice(y).to_vec(), dev.slice(dw).to_vec())
                    })
                };
                let ((y, dw), (y_cols, dw_cols)) = (run(2, true), run(2, false));
                for (what, got, want, tol) in [("y", &y, &y_cols, 1e-5), ("dw", &dw, &dw_cols, 1e-4 * (rows as f32).sqrt())] {
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        assert!((g - w).abs() <= tol * w.abs().max(1.0), "{policy:?} {s:?} {what}[{i}] = {g}, im2col gives {w}");
                    }
                }
                if matches!(policy, GemmPolicy::Fixed(_)) {
                    let (y8, dw8) = run(8, true);
                    assert!(y8.iter().zip(&y).chain(dw8.iter().zip(&dw)).all(|(a, b)| a.to_bits() == b.to_bits()), "{policy:?} {s:?}: 8 workers differ from 2");
                }
            }
        }
        // No sample: nothing to read in place (and nothing to compute).
        assert!(ConvShape { samples: 0, len_in: 256, channels: 2, kernel: 64, stride: 16, padding: 24 }.in_place_rows().is_none());
    }

    #[test]
    fn measuring_gives_the_product_once_and_keeps_its_choice() {
        if !sgemm::supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; only faer runs, nothing is measured");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut seed = 11u64;
            let mut rand = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            // Shapes no other test runs, so they are measured here: one on one worker, one split
            // over two; accumulating, so C restored between the trials is seen in the result.
            for (m, n, k, trans_a) in [(37, 53, 29, false), (203, 41, 43, true)] {
                let mut dev = CpuDevice::with_policy(GemmPolicy::Measure);
                let (a, b, c) = (dev.alloc(m * k).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
                let (av, bv, c0): (Vec<f32>, Vec<f32>, Vec<f32>) = ((0..m * k).map(|_| rand()).collect(), (0..k * n).map(|_| rand()).collect(), (0..m * n).map(|_| rand()).collect());
                dev.upload(a, &av);
                dev.upload(b, &bv);
                dev.upload(c, &c0);
                let g = Gemm { m, n, k, trans_a, trans_b: false, accumulate: true, sparse_a: false };
                let parts = if m * n * k >= PAR_GEMM_WORK { 2 } else { 1 };
                assert_eq!(dev.planned_kernel(g, parts), None, "{m}x{n}x{k} was measured before this test");
                dev.gemm(g, c, a, b);
                let got = dev.slice(c).to_vec();
                for i in 0..m {
                    for j in 0..n {
                        let at = |p: usize| if trans_a { av[p * m + i] } else { av[i * k + p] };
                        let dot: f64 = (0..k).map(|p| at(p) as f64 * bv[p * n + j] as f64).sum();
                        let want = c0[i * n + j] as f64 + dot;
                        assert!((got[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{n}x{k}: C[{i},{j}] = {}, want {want}", got[i * n + j]);
                    }
                }
                let chosen = dev.planned_kernel(g, parts).expect("measured");
                let entry = format!("{m}x{n}x{k}/{}n/p{parts}={}", if trans_a { 't' } else { 'n' }, chosen.name());
                assert!(dev.kernel_plan().contains(&entry), "{} lacks {entry}", dev.kernel_plan());
                // Every later device of the process runs the shape on the same kernel.
                assert_eq!(CpuDevice::with_policy(GemmPolicy::Measure).planned_kernel(g, parts), Some(chosen));
            }
        });
    }

    /// Where measuring, whether a product with zeros to skip runs on the strips is a choice of
    /// the plan, as its kernel is: measured once (and saved with the kernels), or pinned. The
    /// strips and the dense kernel sum in different orders, so C's bits tell which ran.
    #[test]
    fn the_strips_are_a_measured_choice_of_the_plan_and_pinned_as_one() {
        if !sgemm::supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; the zero-skipping GEMM runs only where it has them");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            // A weight gradient dW = dYᵀ·X behind ReLU + dropout: dY 60 % zeros (shapes of
            // this test alone: the choices are the process's).
            // Accumulating into a C that is not zero: measuring restores C, so the product adds once.
            let run = |dev: &mut CpuDevice, (m, n, k): (usize, usize, usize), sparse_a: bool| {
                let (a, b, c) = (dev.alloc(k * m).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
                let mut seed = 11u64;
                let mut rand = move || {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 40) as f32 / (1u64 << 24) as f32
                };
                let av: Vec<f32> = (0..m * k).map(|_| rand()).map(|u| if u < 0.6 { 0.0 } else { u - 0.5 }).collect();
                let bv: Vec<f32> = (0..k * n).map(|_| rand() - 0.5).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rand()).collect();
                dev.upload(a, &av);
                dev.upload(b, &bv);
                dev.upload(c, &c0);
                dev.gemm(Gemm::tn(m, n, k).accumulate(true).sparse_a(sparse_a), c, a, b);
                dev.slice(c).iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            };
            let kernel = CpuGemm::best_packed();
            for (shape, pinned) in [((96, 208, 301), "strips"), ((96, 208, 302), "dense")] {
                let (m, n, k) = shape;
                // The strips' bits (a fixed kernel takes them wherever A is sparse enough) and the
                // dense kernel's.
                let strips = run(&mut CpuDevice::with_gemm(kernel), shape, true);
                let dense = run(&mut CpuDevice::with_gemm(kernel), shape, false);
                assert_ne!(strips, dense, "{shape:?}: the two orders of summing agree, so this test could not tell them apart");
                let mut dev = CpuDevice::with_policy(GemmPolicy::Measure);
                dev.pin_kernel_plan(&format!("{m}x{n}x{k}/tn/p2={};{m}x{n}x{k}/tn/p2/zeros={pinned}", kernel.name())).unwrap();
                assert_eq!(run(&mut dev, shape, true), if pinned == "strips" { strips.clone() } else { dense.clone() }, "{shape:?} pinned to {pinned}");
                assert!(dev.kernel_plan().contains(&format!("{m}x{n}x{k}/tn/p2/zeros={pinned}")), "{}", dev.kernel_plan());
            }
            // Measured: the choice is recorded in the plan, and the product ran on it.
            let shape = (96, 208, 303);
            let mut dev = CpuDevice::with_policy(GemmPolicy::Measure);
            let got = run(&mut dev, shape, true);
            let text = dev.kernel_plan();
            let on = text.contains("96x208x303/tn/p2/zeros=strips");
            assert!(on || text.contains("96x208x303/tn/p2/zeros=dense"), "no choice of the strips in {text}");
            // The strips run on the vectors of the device's own kernel; the dense way, on the
            // kernel planned for the shape (faer, maybe).
            let want =
                if on { run(&mut CpuDevice::with_gemm(dev.gemm_kernel()), shape, true) } else { run(&mut CpuDevice::with_gemm(dev.planned_kernel(Gemm::tn(96, 208, 303), 2).unwrap()), shape, false) };
            assert_eq!(got, want, "the product ran on the choice recorded ({text})");
            // A plan saved before the strips were measured (kernels, no strips entry): the
            // resumed run takes them wherever A is sparse enough, as that run did.
            let shape = (96, 208, 304);
            let mut dev = CpuDevice::with_policy(GemmPolicy::Measure);
            dev.pin_kernel_plan(&format!("96x208x304/tn/p2={}", kernel.name())).unwrap();
            assert_eq!(run(&mut dev, shape, true), run(&mut CpuDevice::with_gemm(kernel), shape, true));
            assert!(dev.kernel_plan().contains("96x208x304/tn/p2/zeros=strips"), "and records it: {}", dev.kernel_plan());
            // Under a fixed kernel the choice is recorded too, so a run resumed under measuring
            // keeps it: the strips on ours, never on faer.
            let shape = (96, 208, 305);
            for (fixed, want) in [(kernel, "strips"), (CpuGemm::Faer, "dense")] {
                let mut dev = CpuDevice::with_gemm(fixed);
                run(&mut dev, shape, true);
                assert!(dev.kernel_plan().contains(&format!("96x208x305/tn/p2/zeros={want}")), "{}: {}", fixed.name(), dev.kernel_plan());
            }
        });
    }

    #[test]
    fn sparse_gemm_gives_the_dense_product_and_declines_a_dense_operand() {
        if !sgemm::supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; the zero-skipping GEMM runs only where it has them");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut dev = CpuDevice::with_gemm(CpuGemm::Packed);
            // Large enough for the parallel path; n = 200 leaves a narrow last strip.
            let (m, n, k) = (96, 200, 70);
            let (a, b, c) = (dev.alloc(m * k).unwrap(), dev.alloc(k * n).unwrap(), dev.alloc(m * n).unwrap());
            let mut seed = 3u64;
            let mut rand = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32
            };
            for (zeros, sparse_pays) in [(0.6, true), (0.0, false)] {
                for trans_a in [false, true] {
                    for accumulate in [false, true] {
                        let av: Vec<f32> = (0..m * k).map(|_| rand()).map(|u| if u < zeros { 0.0 } else { u - 0.5 }).collect();
                        let bv: Vec<f32> = (0..k * n).map(|_| rand() - 0.5).collect();
                        let c0: Vec<f32> = (0..m * n).map(|_| rand()).collect();
                        dev.upload(a, &av);
                        dev.upload(b, &bv);
                        dev.upload(c, &c0);
                        let g = Gemm { m, n, k, trans_a, trans_b: false, accumulate, sparse_a: true };
                        assert_eq!(dev.gemm_sparse(g, c, a, b), sparse_pays, "zeros {zeros}");
                        if !sparse_pays {
                            dev.gemm(g, c, a, b);
                        }
                        let got = dev.slice(c).to_vec();
                        for i in 0..m {
                            for j in 0..n {
                                let dot: f64 = (0..k).map(|p| (if trans_a { av[p * m + i] } else { av[i * k + p] }) as f64 * bv[p * n + j] as f64).sum();
                                let want = if accumulate { c0[i * n + j] as f64 + dot } else { dot };
                                let g = got[i * n + j] as f64;
                                assert!((g - want).abs() < 1e-4, "zeros {zeros} ta{trans_a} acc{accumulate}: C[{i},{j}] = {g}, want {want}");
                            }
                        }
                    }
                }
            }
        });
    }
}
