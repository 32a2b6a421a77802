//! The CPU device: GEMMs on our packed AVX2 kernel ([`crate::sgemm`]) or on faer where the CPU
//! lacks AVX2/FMA, the products marked `sparse_a` on the zero-skipping kernel ([`crate::sparse`])
//! where A has few enough non-zeros, and hand-written loops, parallel with rayon where the work
//! is large enough to pay for it. This is the reference implementation every other device is
//! checked against, and it is itself checked against finite differences in f64
//! (tests/gradcheck.rs).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::device::{AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, View};
use crate::sgemm::{self, Operand, PackBuffers};
use crate::sparse::{self, SparseLhs, StripBuffer};

/// Work (multiply-adds) below which a kernel runs on the calling thread: forking costs more.
const PAR_GEMM_WORK: usize = 1 << 18;
const PAR_ELEMENTS: usize = 1 << 15;
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

/// The GEMM kernel a [`CpuDevice`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuGemm {
    /// Our packed AVX2 + FMA kernel ([`crate::sgemm`]).
    Packed,
    /// faer's sequential kernels (any CPU).
    Faer,
}

impl CpuGemm {
    /// The packed kernel where the CPU supports it, unless the environment asks for faer with
    /// `CID_CPU_GEMM=faer` (to compare the two on one machine).
    pub fn detect() -> Self {
        let forced_faer = std::env::var("CID_CPU_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("faer"));
        if sgemm::supported() && !forced_faer {
            CpuGemm::Packed
        } else {
            CpuGemm::Faer
        }
    }
}

/// Device memory in one `Vec<f32>`, plus scratch for the loss kernel.
pub struct CpuDevice {
    mem: Vec<f32>,
    scratch: Vec<f32>,
    transpose_scratch: Vec<f32>,
    /// Packing buffers of the AVX2 GEMM, one per worker of a parallel GEMM.
    packs: Vec<PackBuffers>,
    /// The compressed left operand of a zero-skipping GEMM, and one strip buffer per worker.
    sparse: SparseLhs,
    strips: Vec<StripBuffer>,
    gemm: CpuGemm,
    threads: usize,
}

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuDevice {
    /// Uses the current rayon pool (size it with `rayon::ThreadPoolBuilder`) and the GEMM kernel
    /// of [`CpuGemm::detect`].
    pub fn new() -> Self {
        Self::with_gemm(CpuGemm::detect())
    }

    /// A device running the given GEMM kernel.
    ///
    /// # Panics
    /// [`CpuGemm::Packed`] on a CPU without AVX2 and FMA.
    pub fn with_gemm(gemm: CpuGemm) -> Self {
        assert!(gemm == CpuGemm::Faer || sgemm::supported(), "the packed GEMM needs AVX2 and FMA");
        let threads = rayon::current_num_threads();
        let packs = (0..threads).map(|_| PackBuffers::default()).collect();
        let strips = (0..threads).map(|_| StripBuffer::default()).collect();
        CpuDevice { mem: Vec::new(), scratch: Vec::new(), transpose_scratch: Vec::new(), packs, sparse: SparseLhs::default(), strips, gemm, threads }
    }

    pub fn gemm_kernel(&self) -> CpuGemm {
        self.gemm
    }

    /// Direct read access (tests, checkpoints).
    pub fn slice(&self, v: View) -> &[f32] {
        &self.mem[v.offset..v.offset + v.len]
    }

    pub fn slice_mut(&mut self, v: View) -> &mut [f32] {
        &mut self.mem[v.offset..v.offset + v.len]
    }

    /// One output view and `N` input views at once, without allocating.
    ///
    /// Kernels write one view while reading others; views from `alloc` never overlap, and the
    /// assertions check the one way a caller could break that (a sub-view of the output).
    fn split<const N: usize>(&mut self, out: View, inputs: [View; N]) -> (&mut [f32], [&[f32]; N]) {
        let len = self.mem.len();
        assert!(out.offset + out.len <= len);
        for i in inputs {
            let disjoint = i.offset + i.len <= out.offset || out.offset + out.len <= i.offset;
            assert!(disjoint || i.len == 0 || out.len == 0, "kernel output {out:?} overlaps input {i:?}");
            assert!(i.offset + i.len <= len);
        }
        let base = self.mem.as_mut_ptr();
        // SAFETY: every range is in bounds and the output is disjoint from every input
        // (asserted), so the one mutable slice aliases none of the shared ones.
        unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(out.offset), out.len),
                inputs.map(|i| std::slice::from_raw_parts(base.add(i.offset) as *const f32, i.len)),
            )
        }
    }
}

/// Row-major GEMM on slices, on the calling thread (shared by the GEMM kernel and the loss kernel).
fn gemm_slices(kernel: CpuGemm, g: Gemm, c: &mut [f32], a: &[f32], b: &[f32], alpha: f32, pack: &mut PackBuffers) {
    assert!(c.len() >= g.m * g.n && a.len() >= g.m * g.k && b.len() >= g.k * g.n);
    // SAFETY: the slices cover the whole matrices (asserted) and `c` is exclusively borrowed.
    unsafe { gemm_block(kernel, g, c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), alpha, Split::Rows, 0, g.m, pack) }
}

/// Which dimension of C a parallel GEMM splits.
#[derive(Clone, Copy)]
enum Split {
    Rows,
    Cols,
}

/// `C[lo..hi, :]` (or `C[:, lo..hi]`) of a row-major GEMM on the calling thread.
///
/// # Safety
/// The pointers must address whole row-major matrices of the shapes `g` gives, and no other
/// thread may write the block of C this call writes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(kernel: CpuGemm, g: Gemm, c: *mut f32, a: *const f32, b: *const f32, alpha: f32, split: Split, lo: usize, hi: usize, pack: &mut PackBuffers) {
    let (m, n, k) = (g.m, g.n, g.k);
    let crs = n as isize;
    let (a, b) = operands(g, a, b);
    let (c, a, b, mb, nb) = match split {
        Split::Rows => (c.offset(lo as isize * crs), Operand { ptr: a.ptr.offset(lo as isize * a.rs), ..a }, b, hi - lo, n),
        Split::Cols => (c.add(lo), a, Operand { ptr: b.ptr.offset(lo as isize * b.cs), ..b }, m, hi - lo),
    };
    if kernel == CpuGemm::Packed {
        sgemm::sgemm(mb, nb, k, alpha, a, b, c, crs, g.accumulate, pack);
        return;
    }
    if k == 0 {
        if !g.accumulate {
            sgemm::clear(mb, nb, c, crs);
        }
        return;
    }
    let cm = MatMut::from_raw_parts_mut(c, mb, nb, crs, 1);
    let am = MatRef::from_raw_parts(a.ptr, mb, k, a.rs, a.cs);
    let bm = MatRef::from_raw_parts(b.ptr, k, nb, b.rs, b.cs);
    let beta = if g.accumulate { Accum::Add } else { Accum::Replace };
    matmul(cm, beta, am, bm, alpha, Par::Seq);
}

/// `op(A)` and `op(B)` of a row-major GEMM as strided operands.
fn operands(g: Gemm, a: *const f32, b: *const f32) -> (Operand, Operand) {
    let (ars, acs) = if g.trans_a { (1, g.m as isize) } else { (g.k as isize, 1) };
    let (brs, bcs) = if g.trans_b { (1, g.k as isize) } else { (g.n as isize, 1) };
    (Operand { ptr: a, rs: ars, cs: acs }, Operand { ptr: b, rs: brs, cs: bcs })
}

/// `e^x` for the softmax arguments (`x <= 0` after max subtraction), to ~2 ulp: range reduction
/// `x = k·ln2 + r`, a degree-6 polynomial for `e^r` on |r| ≤ ln2/2, and `2^k` built in the
/// exponent bits. Inlined and branch-light so the loops vectorize; libm's `expf` is a call per
/// element and was ~90 % of the loss kernel's time.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// `out[c, r] = src[r, c]` for a row-major `src[rows, cols]`, in cache-sized tiles.
fn transpose(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Asks Linux to back a buffer's capacity with 2 MiB pages (transparent huge pages in `madvise`
/// mode). The arenas of a large model are tens of MiB read with large strides (the packing of a
/// GEMM reads rows 32 KiB apart): with 4 KiB pages nearly every row is a TLB miss, and a miss is a
/// two-level page walk under a hypervisor. Advice only: where it is refused nothing changes.
fn advise_huge_pages(buf: &mut Vec<f32>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + 4 * buf.capacity();
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the Vec's allocation; MADV_HUGEPAGE changes no contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// A pointer that may cross to rayon workers; each worker writes a disjoint block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint blocks of one matrix to the workers of one parallel GEMM.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Splits `dim` among at most `workers` parts at multiples of `unit` (a micro-tile, a strip):
/// the number of parts and part `t`'s start (`bound(t)..bound(t + 1)` is part `t`). Parts narrower
/// than two units waste the kernel, so small dimensions get fewer parts.
fn partition(workers: usize, dim: usize, unit: usize) -> (usize, impl Fn(usize) -> usize + Sync) {
    let parts = workers.min(dim / (2 * unit)).max(1);
    let units = dim.div_ceil(unit);
    (parts, move |t: usize| (units * t / parts * unit).min(dim))
}

/// A GEMM split over one worker per packing buffer along the larger of C's dimensions, at
/// micro-tile boundaries. Each block runs the sequential kernel at full per-core speed; the split
/// is static, so it allocates nothing (faer's own parallel path allocates on every call).
fn gemm_parallel(kernel: CpuGemm, packs: &mut [PackBuffers], g: Gemm, c: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(c.len() >= g.m * g.n && a.len() >= g.m * g.k && b.len() >= g.k * g.n);
    let (split, dim, unit) = if g.n >= g.m { (Split::Cols, g.n, sgemm::NR) } else { (Split::Rows, g.m, sgemm::MR) };
    let (parts, bound) = partition(packs.len(), dim, unit);
    let (cp, ap, bp) = (SendPtr(c.as_mut_ptr()), SendPtr(a.as_ptr() as *mut f32), SendPtr(b.as_ptr() as *mut f32));
    let run = |(t, pack): (usize, &mut PackBuffers)| {
        let (cp, ap, bp) = (cp, ap, bp);
        // SAFETY: whole matrices (asserted above); blocks of different t are disjoint.
        unsafe { gemm_block(kernel, g, cp.0, ap.0, bp.0, 1.0, split, bound(t), bound(t + 1), pack) }
    };
    if parts == 1 {
        run((0, &mut packs[0]));
    } else {
        packs[..parts].par_iter_mut().enumerate().for_each(run);
    }
}

impl CpuDevice {
    /// A `sparse_a` GEMM on the zero-skipping kernel, columns of C split over the workers.
    /// Returns false, having written nothing, where A has too many non-zeros for it to pay.
    fn gemm_sparse(&mut self, g: Gemm, c: View, a: View, b: View) -> bool {
        let (mut lhs, mut strips) = (std::mem::take(&mut self.sparse), std::mem::take(&mut self.strips));
        let (cs, [as_, bs]) = self.split(c, [a, b]);
        assert!(cs.len() >= g.m * g.n && as_.len() >= g.m * g.k && bs.len() >= g.k * g.n);
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
            let run = |(t, strip): (usize, &mut StripBuffer)| {
                let (cp, bp) = (cp, bp);
                let b = Operand { ptr: bp.0, ..b_op };
                // SAFETY: whole matrices (asserted); the column ranges of different t are disjoint.
                unsafe { lhs.multiply(b, cp.0, g.n, bound(t)..bound(t + 1), g.accumulate, strip) }
            };
            strips[..parts].par_iter_mut().enumerate().for_each(run);
        }
        (self.sparse, self.strips) = (lhs, strips);
        pays
    }
}

impl Device for CpuDevice {
    fn alloc(&mut self, len: usize) -> View {
        let v = View { offset: self.mem.len(), len };
        let need = self.mem.len() + len;
        if need > self.mem.capacity() {
            // Grow into a fresh region advised for huge pages before any page of it is touched.
            let mut grown = Vec::with_capacity(need.max(2 * self.mem.capacity()));
            advise_huge_pages(&mut grown);
            grown.extend_from_slice(&self.mem);
            self.mem = grown;
        }
        self.mem.resize(need, 0.0);
        v
    }

    fn allocated_bytes(&self) -> usize {
        // Lengths, not capacities: growth headroom of the Vecs is reserved address space that is never
        // touched, so it is not resident memory.
        4 * (self.mem.len() + self.scratch.len() + self.transpose_scratch.len())
            + self.packs.iter().map(PackBuffers::allocated_bytes).sum::<usize>()
            + self.sparse.allocated_bytes()
            + self.strips.iter().map(StripBuffer::allocated_bytes).sum::<usize>()
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        let parallel = src.len() >= PAR_ELEMENTS && self.threads > 1;
        let dst = self.slice_mut(dst);
        if parallel {
            // An xl batch is 16 MiB: one core alone cannot saturate the memory bus.
            const CHUNK: usize = 1 << 16;
            dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
        } else {
            dst.copy_from_slice(src);
        }
    }

    fn download(&self, src: View, dst: &mut [f32]) {
        dst.copy_from_slice(self.slice(src));
    }

    fn fill(&mut self, dst: View, value: f32) {
        self.slice_mut(dst).fill(value);
    }

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View) {
        let large = g.m * g.n * g.k >= PAR_GEMM_WORK;
        let sparse_fits = g.k <= SPARSE_MAX_DEPTH && g.m * g.k <= SPARSE_MAX_ELEMENTS;
        if g.sparse_a && large && self.gemm == CpuGemm::Packed && sparse_fits && self.gemm_sparse(g, c, a, b) {
            return;
        }
        let parts = if large { self.threads } else { 1 };
        let mut packs = std::mem::take(&mut self.packs);
        let kernel = self.gemm;
        if g.trans_a && large && kernel == CpuGemm::Faer {
            // faer's kernels run a transposed A (the dW = dYᵀ·X of every backward) at ~70 % of
            // their plain-A speed; transposing A first costs m·k copies against m·n·k
            // multiply-adds. (The packed kernel reads any strides at full speed.)
            let mut at = std::mem::take(&mut self.transpose_scratch);
            if at.len() < g.m * g.k {
                at.resize(g.m * g.k, 0.0);
            }
            transpose(&self.mem[a.offset..a.offset + g.k * g.m], g.k, g.m, &mut at[..g.m * g.k]);
            let (cs, [bs]) = self.split(c, [b]);
            gemm_parallel(kernel, &mut packs[..parts], Gemm { trans_a: false, ..g }, cs, &at, bs);
            self.transpose_scratch = at;
        } else {
            let (cs, [as_, bs]) = self.split(c, [a, b]);
            gemm_parallel(kernel, &mut packs[..parts], g, cs, as_, bs);
        }
        self.packs = packs;
    }

    fn bias_act_forward(&mut self, y: View, bias: View, rows: usize, cols: usize, relu: bool, dropout: Option<Dropout>) {
        let parallel = rows * cols >= PAR_ELEMENTS && self.threads > 1;
        let (ys, [bs]) = self.split(y, [bias]);
        let ys = &mut ys[..rows * cols];
        let (threshold, scale, key) = match dropout {
            Some(d) if d.p > 0.0 => (Dropout::threshold(d.p), Dropout::scale(d.p), Some(d.key)),
            _ => (0, 1.0, None),
        };
        let row = |(r, yr): (usize, &mut [f32])| {
            for (j, (v, &b)) in yr.iter_mut().zip(bs).enumerate() {
                let mut x = *v + b;
                if relu && x < 0.0 {
                    x = 0.0;
                }
                if let Some(key) = key {
                    x = if Dropout::keep(key, (r * cols + j) as u64, threshold) { x * scale } else { 0.0 };
                }
                *v = x;
            }
        };
        if parallel {
            ys.par_chunks_mut(cols).enumerate().for_each(row);
        } else {
            ys.chunks_mut(cols).enumerate().for_each(row);
        }
    }

    fn act_backward(&mut self, dy: View, h: View, scale: f32) {
        let parallel = dy.len >= PAR_ELEMENTS && self.threads > 1;
        let (ds, [hs]) = self.split(dy, [h]);
        let f = |(d, &hv): (&mut f32, &f32)| *d = if hv > 0.0 { *d * scale } else { 0.0 };
        if parallel {
            ds.par_iter_mut().zip(hs.par_iter()).for_each(f);
        } else {
            ds.iter_mut().zip(hs).for_each(f);
        }
    }

    fn bias_grad(&mut self, db: View, dy: View, rows: usize, cols: usize, accumulate: bool) {
        let (dbs, [dys]) = self.split(db, [dy]);
        if !accumulate {
            dbs.fill(0.0);
        }
        for r in dys[..rows * cols].chunks_exact(cols) {
            for (o, &x) in dbs.iter_mut().zip(r) {
                *o += x;
            }
        }
    }

    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut {
        assert!(tau > 0.0, "temperature must be > 0");
        assert_eq!(z.len, 2 * b * d);
        // scratch: zn [2b·d] | s [b·b] | dzn [2b·d] | norms [2b] | col lse [b]
        let need = 4 * b * d + b * b + 3 * b;
        if self.scratch.len() < need {
            self.scratch.resize(need, 0.0);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let (zn, rest) = scratch.split_at_mut(2 * b * d);
        let (s, rest) = rest.split_at_mut(b * b);
        let (dzn, rest) = rest.split_at_mut(2 * b * d);
        let (norms, rest) = rest.split_at_mut(2 * b);
        let col_lse = &mut rest[..b];
        let zs = self.slice(z);
        // Normalize rows: zn = z / max(‖z‖, 1e-12), as F.normalize.
        for r in 0..2 * b {
            let row = &zs[r * d..(r + 1) * d];
            let n = (row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sqrt().max(1e-12);
            norms[r] = n as f32;
            let inv = (1.0 / n) as f32;
            for (o, &x) in zn[r * d..(r + 1) * d].iter_mut().zip(row) {
                *o = x * inv;
            }
        }
        let (za, zp) = zn.split_at(b * d);
        let inv_tau = 1.0 / tau;
        let g = Gemm { m: b, n: b, k: d, trans_a: false, trans_b: true, accumulate: false, sparse_a: false };
        gemm_slices(self.gemm, g, s, za, zp, inv_tau, &mut self.packs[0]);
        // Row log-sum-exp (max-subtracted), loss and accuracy; then s becomes the row softmax.
        let mut loss_rows = 0.0f64;
        let mut correct = 0usize;
        // Column log-sum-exp first (needs the raw similarities) for the symmetric form.
        if symmetric {
            for j in 0..b {
                let mut mx = f32::NEG_INFINITY;
                for i in 0..b {
                    mx = mx.max(s[i * b + j]);
                }
                let sum: f64 = (0..b).map(|i| fast_exp(s[i * b + j] - mx) as f64).sum();
                col_lse[j] = mx + sum.ln() as f32;
            }
        }
        let mut loss_cols = 0.0f64;
        if symmetric {
            for j in 0..b {
                loss_cols += (col_lse[j] - s[j * b + j]) as f64;
            }
        }
        let row_w = if symmetric { 0.5 } else { 1.0 } * grad_scale / b as f32;
        let want_grad = dz.is_some();
        // s becomes dL/dS in place: row softmax − I (and column softmax − I for the symmetric form).
        for i in 0..b {
            let row = &mut s[i * b..(i + 1) * b];
            let mut mx = f32::NEG_INFINITY;
            let mut arg = 0;
            for (j, &x) in row.iter().enumerate() {
                if x > mx {
                    mx = x;
                    arg = j;
                }
            }
            correct += (arg == i) as usize;
            let sum: f64 = row.iter().map(|&x| fast_exp(x - mx) as f64).sum();
            let lse = mx + sum.ln() as f32;
            loss_rows += (lse - row[i]) as f64;
            if want_grad {
                for (j, x) in row.iter_mut().enumerate() {
                    let p_row = fast_exp(*x - lse);
                    let mut gsum = p_row - (i == j) as u32 as f32;
                    if symmetric {
                        let p_col = fast_exp(*x - col_lse[j]);
                        gsum += p_col - (i == j) as u32 as f32;
                    }
                    *x = gsum * row_w;
                }
            }
        }
        let loss = if symmetric { 0.5 * (loss_rows + loss_cols) / b as f64 } else { loss_rows / b as f64 };
        let out = InfoNceOut { loss: loss as f32, accuracy: correct as f32 / b as f32 };
        if let Some(dz) = dz {
            // s now holds dL/dS. dza_n = dS · zp_n / τ ; dzp_n = dSᵀ · za_n / τ.
            let (dza, dzp) = dzn.split_at_mut(b * d);
            gemm_slices(self.gemm, Gemm { m: b, n: d, k: b, trans_a: false, trans_b: false, accumulate: false, sparse_a: false }, dza, s, zp, inv_tau, &mut self.packs[0]);
            gemm_slices(self.gemm, Gemm { m: b, n: d, k: b, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, dzp, s, za, inv_tau, &mut self.packs[0]);
            // Through the normalization: dz = (dzn − zn·(zn·dzn)) / ‖z‖.
            let dzs = self.slice_mut(dz);
            for r in 0..2 * b {
                let zr = &zn[r * d..(r + 1) * d];
                let gr = &dzn[r * d..(r + 1) * d];
                let dot: f32 = zr.iter().zip(gr).map(|(a, b)| a * b).sum();
                let inv = 1.0 / norms[r];
                for ((o, &zv), &gv) in dzs[r * d..(r + 1) * d].iter_mut().zip(zr).zip(gr) {
                    *o = (gv - zv * dot) * inv;
                }
            }
        }
        self.scratch = scratch;
        out
    }

    fn sum_squares(&mut self, x: View) -> f64 {
        // Fixed chunks summed in a fixed order: the result does not depend on thread timing,
        // so clipping (and a resumed run) is bit-for-bit reproducible.
        const CHUNKS: usize = 64;
        let xs = self.slice(x);
        let chunk = xs.len().div_ceil(CHUNKS).max(1);
        let part = |c: &[f32]| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        let mut partial = [0.0f64; CHUNKS];
        if xs.len() >= PAR_ELEMENTS && self.threads > 1 {
            partial.par_iter_mut().zip(xs.par_chunks(chunk)).for_each(|(p, c)| *p = part(c));
        } else {
            partial.iter_mut().zip(xs.chunks(chunk)).for_each(|(p, c)| *p = part(c));
        }
        partial.iter().sum()
    }

    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32) {
        assert!(param.len == grad.len && param.len == m.len && param.len == v.len);
        let AdamStep { step_size, bc2_sqrt, decay, l2 } = h.at_step(step);
        let base = self.mem.as_mut_ptr();
        for view in [param, grad, m, v] {
            assert!(view.offset + view.len <= self.mem.len());
        }
        // SAFETY: four distinct allocations (the arenas), each in bounds (asserted).
        let (p, g, mm, vv) = unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(param.offset), param.len),
                std::slice::from_raw_parts(base.add(grad.offset) as *const f32, grad.len),
                std::slice::from_raw_parts_mut(base.add(m.offset), m.len),
                std::slice::from_raw_parts_mut(base.add(v.offset), v.len),
            )
        };
        let (b1, b2, eps) = (h.beta1, h.beta2, h.eps);
        let update = |(((p, &g), m), v): (((&mut f32, &f32), &mut f32), &mut f32)| {
            let g = g * grad_scale + l2 * *p;
            *p *= decay;
            *m += (g - *m) * (1.0 - b1);
            *v = *v * b2 + (1.0 - b2) * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p -= step_size * *m / denom;
        };
        const CHUNK: usize = 1 << 14;
        if p.len() >= PAR_ELEMENTS && self.threads > 1 {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(mm.par_chunks_mut(CHUNK))
                .zip(vv.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()).for_each(update));
        } else {
            p.iter_mut().zip(g).zip(mm.iter_mut()).zip(vv.iter_mut()).for_each(update);
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_gemm_splits_match_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut seed = 9u64;
            let mut rand = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            let kernels = if sgemm::supported() { vec![CpuGemm::Packed, CpuGemm::Faer] } else { vec![CpuGemm::Faer] };
            for kernel in kernels {
                let mut dev = CpuDevice::with_gemm(kernel);
                // Split by rows (m > n) and by columns, both past PAR_GEMM_WORK.
                for (m, n, k) in [(200, 40, 40), (40, 200, 40)] {
                    let (a, b, c) = (dev.alloc(m * k), dev.alloc(k * n), dev.alloc(m * n));
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
                                    assert!((g - want).abs() < 1e-4, "{kernel:?} {m}x{n}x{k} ta{trans_a} tb{trans_b} acc{accumulate}: C[{i},{j}] = {g}, want {want}");
                                }
                            }
                        }
                    }
                }
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
            let (a, b, c) = (dev.alloc(m * k), dev.alloc(k * n), dev.alloc(m * n));
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
    #[test]
    fn fast_exp_matches_libm_over_the_softmax_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (a, b) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "max relative error {worst:e}");
    }
}
