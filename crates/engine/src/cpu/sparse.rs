//! A GEMM that skips the zeros of its left operand: `C = A · B` where `A` is mostly exact zeros.
//!
//! Why: behind every ReLU + dropout the output gradient `dY` is zero wherever the unit was off
//! or dropped — about 60 % of it in mlp-medium (half the units off, a fifth of the rest dropped).
//! The weight gradient `dW = dYᵀ · X` and the input gradient `dX = dY · W` multiply those zeros
//! densely; xl's `dW₁` alone is 4.3 GFLOP, ~40 % of its step. Here each row of `A` is first
//! compressed to its non-zeros (a list of `(row of B, value)`), then each row of `C` is the sum
//! of the rows of `B` its list names, held in 8 vector registers per 64 columns.
//!
//! The dense kernel ([`crate::cpu::sgemm`]) reuses each loaded element of B six times from registers;
//! this one loads every element of B it uses (from L1: see [`DEPTH`]), so it runs at about half
//! the dense kernel's rate per useful multiply-add. Measured on xl's weight gradient it breaks even
//! at ~85 % non-zeros on AVX2 (on AVX-512, where the dense kernel is twice as fast, near 35 %);
//! the caller declines an A with more than 60 % non-zeros from the count [`SparseLhs::compress`]
//! returns, and where measuring runs the strips only on shapes they measured faster on.
//!
//! Skipping a zero is exact: `0 · b` contributes nothing — unless `b` is infinite or NaN, where
//! the dense product would turn the result NaN. The operands it is used on (inputs checked
//! finite, weights of a run that has not diverged) are finite.

use rayon::prelude::*;

use crate::cpu::sgemm::{flush_subnormal, flush_subnormals, pack_panel, Isa, Operand, Panel};

/// Columns of C per register strip: 8 vectors of 8 lanes (AVX2), or 4 of 16 (AVX-512).
pub const STRIP: usize = 64;

/// One non-zero of A: its depth index `p` (the row of B it multiplies) and its value.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Entry {
    p: u32,
    value: f32,
}

/// The rows of A compressed to their non-zeros, in buffers that grow to the largest shape and are
/// then reused (a step allocates nothing).
#[derive(Default)]
pub struct SparseLhs {
    /// Row `i`'s non-zeros from `entries[i·k]`, in increasing `p`.
    entries: Vec<Entry>,
    /// Row `i`'s entries of depth chunk `d` (`p` in `d·DEPTH..(d+1)·DEPTH`) are
    /// `starts[i·(chunks+1) + d] .. starts[i·(chunks+1) + d + 1]` (counted from `i·k`).
    starts: Vec<u32>,
    /// Rows and depth of the last compression.
    m: usize,
    k: usize,
}

/// Depth of a chunk: a 64-deep slice of a strip of B is 16 KiB, held in L1 while a block of rows
/// of C takes its non-zeros of that chunk. (On the development machine a whole strip read from
/// L2 — 128 KiB at depth 512 — ran within the noise of this; the chunks keep the loads of the
/// inner loop in L1 where L2 is slower.)
pub const DEPTH: usize = 64;

/// Rows of C per block: their 64-column tile (4 KiB) stays in L1 beside a chunk of B.
const ROWS: usize = 16;

/// One worker's copy of a 64-column strip of B (`k × 64`, contiguous). Rows of B are often far
/// apart (32 KiB in xl's `X`): read in place, the rows a list names would fall into the same few
/// cache sets and each on its own page.
#[derive(Default)]
pub struct StripBuffer(Vec<f32>);

impl StripBuffer {
    pub fn allocated_bytes(&self) -> usize {
        4 * self.0.len()
    }

    /// Grows the buffer for a product of depth `k` (a no-op once it has grown), returning the
    /// strip and the tile of C, each from a cache-line boundary.
    pub fn reserve(&mut self, k: usize) -> (*mut f32, *mut f32) {
        // Room to start on a cache line: the allocator aligns to 16 bytes only.
        let need = k * STRIP + ROWS * STRIP + 16;
        if self.0.len() < need {
            self.0.resize(need, 0.0);
        }
        let base = self.0.as_mut_ptr();
        // SAFETY: the offsets stay inside the buffer just sized.
        unsafe {
            let strip = base.add(base.align_offset(64));
            (strip, strip.add(k * STRIP))
        }
    }
}

impl SparseLhs {
    pub fn allocated_bytes(&self) -> usize {
        std::mem::size_of::<Entry>() * self.entries.len() + 4 * self.starts.len()
    }

    fn chunks(&self) -> usize {
        self.k.div_ceil(DEPTH)
    }

    /// Compresses `op(A)` (`m × k`, any strides), rows in parallel. Returns the number of non-zeros.
    ///
    /// # Safety
    /// `a` must address a whole `m × k` matrix.
    pub unsafe fn compress(&mut self, m: usize, k: usize, a: Operand) -> usize {
        assert!(k <= u32::MAX as usize, "depth {k} too large for the compressed form");
        (self.m, self.k) = (m, k);
        let stride = self.chunks() + 1;
        if self.entries.len() < m * k {
            self.entries.resize(m * k, Entry::default());
        }
        if self.starts.len() < m * stride {
            self.starts.resize(m * stride, 0);
        }
        if k == 0 {
            self.starts[..m].fill(0);
            return 0;
        }
        let a = SharedOperand(a);
        let compress_row = |(i, (row, starts)): (usize, (&mut [Entry], &mut [u32]))| {
            let mut n = 0;
            for (d, p0) in (0..k).step_by(DEPTH).enumerate() {
                starts[d] = n as u32;
                for p in p0..(p0 + DEPTH).min(k) {
                    // SAFETY: (i, p) lies inside A (the caller's contract).
                    let value = flush_subnormal(unsafe { a.at(i, p) });
                    // Branch-free append: the zero test is unpredictable (~60 % zeros at random).
                    // A subnormal is dropped as a zero, as packing flushes it (`sgemm`'s doc).
                    row[n] = Entry { p: p as u32, value };
                    n += (value != 0.0) as usize;
                }
            }
            starts[stride - 1] = n as u32;
        };
        self.entries[..m * k].par_chunks_mut(k).zip(self.starts[..m * stride].par_chunks_mut(stride)).enumerate().for_each(compress_row);
        (0..m).map(|i| self.starts[i * stride + stride - 1] as usize).sum()
    }

    /// `C[:, cols] (+)= A · op(B)[:, cols]` for the A last compressed; `op(B)` is `k × n`, C has
    /// column stride 1 and row stride `rsc`.
    ///
    /// Loops: strips of 64 columns (packed), chunks of [`DEPTH`] (in L1), rows of C; each row of C
    /// keeps its 64 columns in 8 registers (4 on AVX-512) over its non-zeros of the chunk.
    ///
    /// The inner loop runs on `isa`'s vectors.
    ///
    /// # Safety
    /// `isa` must be supported ([`Isa::supported`]); `b` must address a whole `k × n` matrix, `c` a
    /// whole `m × n` one, `cols` lie inside `0..n`, and no other thread may touch those columns of C.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn multiply(&self, isa: Isa, b: Operand, c: *mut f32, rsc: usize, cols: std::ops::Range<usize>, accumulate: bool, strip: &mut StripBuffer) {
        // SAFETY: as this function's contract (# Safety above): B and C are whole matrices, `cols` lies inside `0..n` and is this caller's alone; the strip and tile buffers are reserved below for depth `k` (64 floats per depth, then the tile), from a 64-byte boundary.
        unsafe {
            let (m, k) = (self.m, self.k);
            if k == 0 {
                if !accumulate {
                    for i in 0..m {
                        std::slice::from_raw_parts_mut(c.add(i * rsc + cols.start), cols.len()).fill(0.0);
                    }
                }
                return;
            }
            let (packed, tile) = strip.reserve(k);
            for j in cols.clone().step_by(STRIP) {
                let width = STRIP.min(cols.end - j);
                // The GEMM's own packing: depth p as rows, the strip's columns as lanes; a narrow last
                // strip is padded with zeros (only `width` columns go back to C).
                let src = Panel { ptr: b.ptr.offset(j as isize * b.cs), sp: b.rs, sq: b.cs };
                pack_panel::<STRIP>(k, src, width, packed);
                // (`packed` holds the `k × STRIP` panel just written: `reserve`.)
                flush_subnormals(std::slice::from_raw_parts_mut(packed, k * STRIP));
                // While this strip is multiplied, the rows of the next one are fetched, a share per
                // block of rows: B's rows are far apart, which defeats the hardware prefetcher, and
                // copied one by one they would wait on memory for every row. (With the streaming
                // stores of `write_row`, measured in the xl step: 74–76 ms against 77–83 without.)
                let next = (j + STRIP..cols.end.min(j + 2 * STRIP)).len();
                let share = k.div_ceil(m.div_ceil(ROWS));
                for (block, i0) in (0..m).step_by(ROWS).enumerate() {
                    if b.cs == 1 {
                        for p in (block * share..(block + 1) * share).take_while(|&p| p < k) {
                            prefetch(b.ptr.wrapping_offset(p as isize * b.rs + (j + STRIP) as isize), next);
                        }
                    }
                    let rows = i0..(i0 + ROWS).min(m);
                    for i in rows.clone() {
                        let t = tile.add((i - i0) * STRIP);
                        std::ptr::write_bytes(t, 0, STRIP);
                        if accumulate {
                            std::ptr::copy_nonoverlapping(c.add(i * rsc + j), t, width);
                        }
                    }
                    match isa {
                        Isa::Avx2 => multiply_block_avx2(self, rows.clone(), packed, tile),
                        Isa::Avx512 => multiply_block_avx512(self, rows.clone(), packed, tile),
                    }
                    for i in rows {
                        write_row(tile.add((i - i0) * STRIP), c.add(i * rsc + j), width);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            std::arch::x86_64::_mm_sfence(); // the streaming stores of write_row are weakly ordered
        }
    }
}

/// Defines `$block(lhs, rows, strip, tile)`: `tile[i - rows.start] += row i of A · strip` for
/// each row of the block, a depth chunk at a time so that chunk stays in L1 across the block's
/// rows; and its inner `$row`: `c[0..64] += Σ_list value · strip[p·64 .. p·64 + 64]`, the 64
/// columns held in `64 / $lanes` accumulators, one broadcast per non-zero. Written once for both
/// vector widths (the AVX2 one is tested on any AVX2 CPU; the AVX-512 one differs only in the
/// intrinsics named here).
macro_rules! strip_kernels {
    ($block:ident, $row:ident, $feature:literal, $lanes:literal, $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $store:ident) => {
        /// # Safety
        /// The CPU must have the instruction set; `rows` must lie inside A's rows, `strip` hold
        /// the 64-column strip of every depth the rows' lists name (packed by `multiply`, 64-byte
        /// aligned), and `tile` 64 floats per row of the block.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $block(lhs: &SparseLhs, rows: std::ops::Range<usize>, strip: *const f32, tile: *mut f32) {
            // SAFETY: the contract above; each list names depths of the strip.
            unsafe {
                let (k, stride) = (lhs.k, lhs.chunks() + 1);
                for d in 0..stride - 1 {
                    for i in rows.clone() {
                        let (lo, hi) = (lhs.starts[i * stride + d] as usize, lhs.starts[i * stride + d + 1] as usize);
                        $row(lhs.entries.get_unchecked(i * k + lo..i * k + hi), strip, tile.add((i - rows.start) * STRIP));
                    }
                }
            }
        }

        /// # Safety
        /// As the block's: `strip` holds 64 floats for every depth named in `list`, 64-byte
        /// aligned (`StripBuffer::reserve`), as the aligned loads need; `c` holds 64 floats, as aligned.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $row(list: &[Entry], strip: *const f32, c: *mut f32) {
            // SAFETY: the contract above.
            unsafe {
                use std::arch::x86_64::*;
                let mut acc = [$zero(); STRIP / $lanes];
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = $load(c.add($lanes * q));
                }
                for e in list {
                    let row = strip.add(e.p as usize * STRIP);
                    let v = $splat(e.value);
                    for (q, a) in acc.iter_mut().enumerate() {
                        *a = $fmadd(v, $load(row.add($lanes * q)), *a);
                    }
                }
                for (q, a) in acc.iter().enumerate() {
                    $store(c.add($lanes * q), *a);
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $block(_: &SparseLhs, _: std::ops::Range<usize>, _: *const f32, _: *mut f32) {
            unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
        }
    };
}

strip_kernels!(multiply_block_avx2, row_strip_avx2, "avx2,fma", 8, _mm256_setzero_ps, _mm256_load_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_store_ps);
strip_kernels!(multiply_block_avx512, row_strip_avx512, "avx512f", 16, _mm512_setzero_ps, _mm512_load_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_store_ps);

/// Copies `width` floats of a finished tile row to C. A whole aligned strip goes with streaming
/// stores: C's rows are far apart (32 KiB in xl's `dW`) and are not read again here, so a normal
/// store would first read every line of C from memory only to overwrite it.
#[inline(always)]
unsafe fn write_row(tile: *const f32, c: *mut f32, width: usize) {
    // SAFETY: `tile` holds `width` floats from a 64-byte boundary (`StripBuffer::reserve`), as the aligned loads need, and `c` has room for them in this caller's columns of C; the streaming stores run only where `c` is 32-byte aligned and the strip whole.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if width == STRIP && (c as usize).is_multiple_of(32) {
            use std::arch::x86_64::*;
            for q in (0..STRIP).step_by(8) {
                _mm256_stream_ps(c.add(q), _mm256_load_ps(tile.add(q)));
            }
            return;
        }
        std::ptr::copy_nonoverlapping(tile, c, width);
    }
}

/// Asks for the cache lines of `len` floats from `ptr` (the addresses may lie past the matrix: a
/// prefetch never faults, and they are formed with wrapping arithmetic).
#[inline(always)]
unsafe fn prefetch(ptr: *const f32, len: usize) {
    // SAFETY: a prefetch never faults, and the addresses are formed with wrapping arithmetic, so they may lie past the matrix.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        for q in (0..len).step_by(16) {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.wrapping_add(q) as *const i8);
        }
    }
}

/// An operand that may be read from rayon's workers (A is only read while compressing).
#[derive(Clone, Copy)]
struct SharedOperand(Operand);
// SAFETY: read-only access to a matrix that outlives the parallel loop.
unsafe impl Send for SharedOperand {}
unsafe impl Sync for SharedOperand {}

impl SharedOperand {
    /// Element `(i, p)` (a method, so closures capture the whole operand, not its pointer field).
    ///
    /// # Safety
    /// `(i, p)` must lie inside the matrix.
    unsafe fn at(self, i: usize, p: usize) -> f32 {
        // SAFETY: `(i, p)` is inside the matrix (the contract).
        unsafe { *self.0.ptr.offset(i as isize * self.0.rs + p as isize * self.0.cs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_naive_product_with_zeros_strides_and_edges() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; the sparse GEMM runs only where it has them");
            return;
        }
        check_against_naive(Isa::Avx2);
    }

    #[test]
    fn avx512_matches_the_naive_product() {
        if !Isa::Avx512.supported() {
            eprintln!("SKIPPED (no AVX-512F): the AVX-512 strip kernel was not run; its AVX2 twin from the same macro was");
            return;
        }
        check_against_naive(Isa::Avx512);
    }

    /// Subnormals are read as zeros, as the packed kernels read them (`sgemm`'s doc): not kept as
    /// non-zeros of A, flushed in B's strips; the product is, bit for bit, that of the operands
    /// with zeros in their place.
    #[test]
    fn subnormal_operands_are_read_as_zero() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; the sparse GEMM runs only where it has them");
            return;
        }
        let (m, n, k) = (9, 150, 70);
        let mut seed = 3;
        let mut av = crate::cpu::sgemm::tests::uniform(&mut seed, m * k);
        let mut bv = crate::cpu::sgemm::tests::uniform(&mut seed, k * n);
        crate::cpu::sgemm::tests::make_some_subnormal(&mut av, 3);
        crate::cpu::sgemm::tests::make_some_subnormal(&mut bv, 5);
        let (av0, bv0) = (crate::cpu::sgemm::tests::flushed(&av), crate::cpu::sgemm::tests::flushed(&bv));
        for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.supported()) {
            let (mut sparse, mut strip) = (SparseLhs::default(), StripBuffer::default());
            let mut product = |av: &[f32], bv: &[f32]| {
                let nnz = unsafe { sparse.compress(m, k, Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 }) };
                let mut c = vec![f32::NAN; m * n];
                unsafe { sparse.multiply(isa, Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 }, c.as_mut_ptr(), n, 0..n, false, &mut strip) };
                (nnz, c.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
            };
            let (nnz, got) = product(&av, &bv);
            assert_eq!(nnz, av0.iter().filter(|&&x| x != 0.0).count(), "{isa:?}: subnormals are not non-zeros");
            assert_eq!(got, product(&av0, &bv0).1, "{isa:?}: the product of the flushed operands");
        }
    }

    fn check_against_naive(isa: Isa) {
        let mut seed = 11u64;
        let mut rand = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let (mut sparse, mut strip) = (SparseLhs::default(), StripBuffer::default());
        // Column counts straddle a strip, a vector and a scalar tail; k = 0 is the empty product.
        for &(m, n, k) in &[(1, 1, 1), (5, 64, 9), (7, 141, 33), (3, 200, 0), (33, 130, 300)] {
            for trans_a in [false, true] {
                for accumulate in [false, true] {
                    // ~60 % exact zeros, as behind ReLU + dropout.
                    let av: Vec<f32> = (0..m * k).map(|_| rand()).map(|x| if x < 0.2 { 0.0 } else { x }).collect();
                    let bv: Vec<f32> = (0..k * n).map(|_| rand()).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| rand()).collect();
                    let a = if trans_a { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
                    let a_at = |i: usize, p: usize| if trans_a { av[p * m + i] } else { av[i * k + p] };
                    let nnz = unsafe { sparse.compress(m, k, a) };
                    assert_eq!(nnz, av.iter().filter(|&&x| x != 0.0).count());
                    let mut got = c0.clone();
                    // Two column ranges, as two workers would split them.
                    let mid = (n / 2).next_multiple_of(8).min(n);
                    let b = Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 };
                    unsafe {
                        sparse.multiply(isa, b, got.as_mut_ptr(), n, 0..mid, accumulate, &mut strip);
                        sparse.multiply(isa, b, got.as_mut_ptr(), n, mid..n, accumulate, &mut strip);
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let dot: f64 = (0..k).map(|p| a_at(i, p) as f64 * bv[p * n + j] as f64).sum();
                            let want = if accumulate { c0[i * n + j] as f64 + dot } else { dot };
                            let g = got[i * n + j] as f64;
                            assert!((g - want).abs() <= 1e-5 * (k as f64).sqrt().max(1.0) * 4.0, "{isa:?} m{m} n{n} k{k} ta{trans_a} acc{accumulate}: C[{i},{j}] = {g}, want {want}");
                        }
                    }
                }
            }
        }
    }
}
