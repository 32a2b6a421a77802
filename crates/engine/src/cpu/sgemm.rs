//! A packed single-precision GEMM for x86-64: BLIS's loops around a register-blocked
//! micro-kernel, 6 × 16 with AVX2 + FMA or 6 × 32 with AVX-512F ([`Isa`]; 6 × 16 for products
//! to at most 16 columns).
//!
//! Why our own: the first layer's two GEMMs are ~85 % of an xl step. faer's sequential kernels
//! run a transposed A (the `dYᵀ·X` of every weight gradient) at ~70 % of their plain speed, so
//! the CPU device had to copy A transposed first; this kernel packs both operands from any
//! strides, so the transposes of backward cost nothing extra, into buffers its caller owns, so a
//! GEMM allocates nothing once they have grown to the largest shape. Measured on the development
//! machine (Zen 3, AVX2; docs/performance.md): on par with faer on the forward's shapes, faster on
//! the weight gradients. Machines without AVX2 + FMA use faer (`crate::cpu`); both are checked
//! against the same naive product in the tests.
//!
//! Loop nest (BLIS's, with the k loop split in two levels): `jc` over columns of C in blocks
//! whose packed `op(B)` block holds at most [`B_PACK`] floats (L2/L3), `kk` over k in
//! super-blocks of [`KK`] with one packed copy of `op(B)[kk, jc]`; `ic` over rows in blocks of
//! [`MC`] with a packed copy of `op(A)[ic, kk]`; then `pc` over [`KC`]-deep slices, `jr` over
//! `NR`-column micro-panels of B (16 KiB for AVX2's 16 columns, held in L1) and `ir` over 6-row micro-panels of A
//! (streamed from L2). A super-block of two slices keeps the `MC × nc` block of C in cache across
//! a 512-deep product (every weight gradient of a 256-pair batch): C is written to memory once.
//! Where C spans several blocks of B and A is small (a weight gradient `dYᵀ·X`), the order
//! changes: `kk` outermost, A packed whole once per super-block, then `jc` (each element of C
//! still gets its slices in the same order: the same bits; past one super-block C is read again
//! for each).
//! Operands whose depth is contiguous (both of the forward `X·Wᵀ`) are packed with 8 × 8 register
//! transposes; scalar packing cost a quarter of the GEMM's time on xl's shapes.
//!
//! The two instruction sets share everything but the micro-kernel, and that is written once
//! ([`micro_kernel!`]) for a vector type: the loops are generic over the tile's width `NR`, so the
//! AVX-512 driver (`NR` = 32) is exercised on any AVX2 machine by the AVX2 kernel at that width
//! (the tests do), and only the AVX-512 instructions themselves need an AVX-512 CPU.
//!
//! Packing reads subnormal operands as ±0 ([`flush_subnormals`], one pass over each packed block:
//! the MXCSR's "denormals are zero" done in software, which Rust cannot set), as bf16's and fp16's
//! packings already do. An Intel core takes a microcode assist of ~100 cycles for each
//! multiply-add with a subnormal operand, and its product feeds more: on one input an isfm-base
//! step's backward took 1.9 s instead of 0.2 s. Their values (below 1.2e-38) are far below any sum
//! they join. Not flushed: an A read unpacked (one panel of B's columns, A depth-contiguous; B is
//! still flushed), a C added to, and a sum that underflows on its own (a running sum made subnormal
//! by tiny products of normal values, which also costs an assist: the MXCSR's other half, "flush to
//! zero", has no software twin here).

/// Rows of the micro-tile: 6 rows × 2 vectors = 12 accumulators, 2 registers for B, 1 broadcast.
pub const MR: usize = 6;
/// Columns of the AVX2 micro-tile (two 8-lane vectors), and of AVX-512's one-vector tile for
/// products to at most 16 columns; [`Isa::nr`] gives each kernel's widest.
pub const NR: usize = 16;
/// The widest micro-tile (AVX-512: two 16-lane vectors; AMX: two 16-column tiles).
pub(crate) const NR_MAX: usize = 32;
/// Depth of a slice: a 16 × 256 micro-panel of B is 16 KiB, half of a 32 KiB L1. (AVX-512's
/// 32-wide panel is 32 KiB: a third of the 48 KiB L1 of Ice Lake and later Xeons, but all of
/// Skylake-SP's and Zen 4's 32 KiB; a shallower slice for that kernel is to be measured there.)
pub const KC: usize = 256;
/// Rows of a packed block of A: a 144 × 256 slice is 144 KiB, well inside a 512 KiB L2 (where
/// A is packed whole, [`loop_nest`], the rows of C run in blocks of this many over it).
pub const MC: usize = 144;
/// Most columns of a packed block of B.
pub const NC: usize = 4096;
/// Most depth packed at once (two slices).
pub const KK: usize = 512;
/// Most floats of a packed block of B (1 MiB): its column count is `B_PACK / slots` (the depth,
/// or half of it for bf16 pairs: [`block_cols`]).
pub const B_PACK: usize = 1 << 18;
/// Most floats of an A packed whole for a depth block (2 MiB): up to this size, a product whose C
/// spans several blocks of B packs A once per depth block rather than once per block of B
/// ([`loop_nest`]).
pub const A_WHOLE: usize = 1 << 19;

/// A matrix operand: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Operand {
    /// # Safety
    /// `(i, j)` must lie inside the matrix.
    #[cfg(test)]
    unsafe fn get(self, i: usize, j: usize) -> f32 {
        // SAFETY: `(i, j)` is inside the matrix (this function's contract), so the offset addresses one of its elements.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// Packing buffers of one thread. They grow to the largest blocks seen and are then reused.
#[derive(Default)]
pub struct PackBuffers {
    a: Vec<f32>,
    b: Vec<f32>,
    /// How both operands are rounded as they are packed (fp32 accumulation either way): to bf16,
    /// the operands of a bf16 product on AMX / AVX512-BF16 (their sums may be grouped
    /// otherwise), or to fp16, on any CPU this kernel runs on.
    pub round: Rounding,
}

/// The rounding of a product's operands ([`PackBuffers::round`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// fp32 operands as they are, but for subnormals: flushed ([`flush_subnormals`]), as the
    /// two roundings below flush them too.
    #[default]
    None,
    /// To the nearest bf16 (8 bits of mantissa, fp32's range): [`round_bf16`].
    Bf16,
    /// To the nearest IEEE binary16 (11 bits of mantissa, ±65504, subnormals from 2⁻²⁴):
    /// [`round_fp16`].
    Fp16,
}

impl Rounding {
    fn apply(self, v: &mut [f32]) {
        match self {
            Rounding::None => flush_subnormals(v),
            Rounding::Bf16 => round_bf16(v),
            Rounding::Fp16 => round_fp16(v),
        }
    }
}

/// How the loop nest packs its operands for a micro-kernel: the unit its panels are laid out
/// in, and so how many floats of a pack buffer a panel of `depths × lanes` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    /// One f32 per element (rounded as [`PackBuffers::round`] says): the fp32 kernels.
    Floats,
    /// Two depths of bf16 in each 32-bit slot ([`pack_block_pairs`]): `vdpbf16ps`.
    Bf16Pairs,
    /// IEEE binary16 in [`Packing::Floats`]'s order: B one half per element (two to a float;
    /// panels are 16, 32 or 64 lanes wide), A each half twice in a 32-bit word, which the kernel
    /// broadcasts with a plain load (a 16-bit broadcast costs a shuffle): the fp16 kernel
    /// ([`super::fp16`]).
    Halves,
}

impl Packing {
    /// Depths per 32-bit slot of a lane that a pack buffer must hold, which sets the blocks'
    /// sizes. Halves keep the fp32 kernel's blocks (packed, B's fill half of its buffer; larger
    /// blocks are not measured yet).
    fn slot_depths(self) -> usize {
        match self {
            Packing::Floats | Packing::Halves => 1,
            Packing::Bf16Pairs => 2,
        }
    }

    /// Floats that `depths` depths of `lanes` lanes of A take packed (a whole number of panels).
    fn a_floats(self, depths: usize, lanes: usize) -> usize {
        match self {
            Packing::Floats | Packing::Halves => depths * lanes,
            Packing::Bf16Pairs => depths.div_ceil(2) * lanes,
        }
    }

    /// Floats that `depths` depths of `lanes` lanes of B take packed (a whole number of panels).
    fn b_floats(self, depths: usize, lanes: usize) -> usize {
        match self {
            Packing::Floats => depths * lanes,
            Packing::Bf16Pairs => depths.div_ceil(2) * lanes,
            Packing::Halves => {
                debug_assert!(lanes.is_multiple_of(2));
                depths * lanes / 2
            }
        }
    }
}

impl PackBuffers {
    pub fn allocated_bytes(&self) -> usize {
        4 * (self.a.len() + self.b.len())
    }

    /// Room for the blocks of a product `k` deep and `n` wide whose packed blocks of A hold
    /// `a_rows` rows, in panels `nr` wide, `slot_depths` depths a slot.
    fn reserve(&mut self, a_rows: usize, n: usize, k: usize, nr: usize, slot_depths: usize) {
        let slots = KK.min(k).div_ceil(slot_depths);
        // Room to start each buffer on a cache line (the allocator aligns to 16 bytes only):
        // misaligned, every other 32-byte load of a B panel would straddle two lines.
        let a = a_rows.next_multiple_of(MR) * slots + ALIGN;
        let b = block_cols(n, slots, nr).next_multiple_of(nr) * slots + ALIGN;
        if self.a.len() < a {
            self.a.resize(a, 0.0);
        }
        if self.b.len() < b {
            self.b.resize(b, 0.0);
        }
    }

    /// Room for `a` and `b` floats (each from a cache line), for a kernel with its own blocking.
    pub(crate) fn reserve_floats(&mut self, a: usize, b: usize) {
        if self.a.len() < a + ALIGN {
            self.a.resize(a + ALIGN, 0.0);
        }
        if self.b.len() < b + ALIGN {
            self.b.resize(b + ALIGN, 0.0);
        }
    }

    /// The two buffers, each from its first cache-line boundary.
    pub(crate) fn aligned(&mut self) -> (&mut [f32], &mut [f32]) {
        let a = self.a.as_ptr().align_offset(4 * ALIGN);
        let b = self.b.as_ptr().align_offset(4 * ALIGN);
        (&mut self.a[a..], &mut self.b[b..])
    }
}

/// A cache line, in floats.
pub(crate) const ALIGN: usize = 16;

/// Columns of C per packed block of B for a super-block `slots` deep, in panels `nr` wide. The
/// packed kernel passes the depth, or half of it for bf16 pairs; AMX passes the depth (smaller
/// blocks than its pairs allow; not tuned: on an Intel Xeon with AMX the tiles ran large
/// products at 3–4× the fp32 kernel as it is).
pub(crate) fn block_cols(n: usize, slots: usize, nr: usize) -> usize {
    (B_PACK / slots / nr * nr).clamp(nr, NC).min(n)
}

/// The instruction set of a micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA: a 6 × 16 tile in twelve 8-lane registers (of 16).
    Avx2,
    /// AVX-512F: a 6 × 32 tile in twelve 16-lane registers (of 32); per depth two loads of B and
    /// six broadcasts feed twelve FMAs, within the two loads a cycle of the cores that have it.
    /// Products to at most 16 columns run on a 6 × 16 tile of one register a row
    /// ([`avx512_nest`]).
    Avx512,
}

impl Isa {
    /// Whether this CPU can run the kernel (detected at run time).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Avx2 => has!("avx2") && has!("fma"),
                // The shared packing routines use AVX2 too. A kernel that has never run on such a
                // CPU is not trusted blind: it must first match the AVX2 kernel.
                Isa::Avx512 => has!("avx512f") && has!("avx2") && has!("fma") && avx512_agrees(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// Columns of the ISA's widest fp32 micro-tile: the width B is packed in, but for AVX-512's
    /// products to at most 16 columns (16 wide; no split across columns cuts them, a split
    /// needing two units), and the unit of a split across columns (`CpuGemm::tile_cols`, which
    /// doubles it for the wide fp16 tile).
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx2 => NR,
            Isa::Avx512 => NR_MAX,
        }
    }
}

/// Whether this CPU can run the AVX2 packed kernel.
pub fn supported() -> bool {
    Isa::Avx2.supported()
}

/// `C[0..m, 0..n] = 0` (the product of an empty depth), C with row stride `rsc`.
///
/// # Safety
/// C must address a whole `m × n` matrix that nothing else touches meanwhile.
pub unsafe fn clear(m: usize, n: usize, c: *mut f32, rsc: isize) {
    // SAFETY: C is a whole `m × n` matrix of row stride `rsc` that only this call touches (the contract): each row slice lies inside it.
    unsafe {
        for i in 0..m {
            std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), n).fill(0.0);
        }
    }
}

/// `C[m, n] = alpha · op(A) · op(B)` (or `+=` with `accumulate`) on the fp32 micro-kernel of
/// `isa`, the operands rounded as `buf.round` says while they are packed; C has column stride 1
/// and row stride `rsc`. (bf16's own instructions: [`sgemm_bf16_pairs`], [`super::amx`].)
///
/// # Safety
/// `isa` must be [`Isa::supported`]; `a` (`m × k`), `b` (`k × n`) and `c` must address whole
/// matrices of those shapes, and no other thread may touch the part of C written here.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(isa: Isa, m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: forwarded contract; each kernel pair is the one of a supported `isa`.
    unsafe {
        match isa {
            Isa::Avx2 => loop_nest::<NR>(Packing::Floats, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx2::<true, 2>, Some(kernel_avx2::<false, 2>)),
            Isa::Avx512 => avx512_nest(m, n, k, alpha, a, b, c, rsc, accumulate, buf),
        }
    }
}

/// AVX-512's fp32 loops: tiles two vectors (32 columns) wide, or one where the product has at
/// most 16 columns (a convolution to 16 channels), which the wide tile would compute twice over,
/// half of it for nothing. (AMX's bf16 tiles stay 32 wide.)
///
/// # Safety
/// As [`sgemm`], on a CPU with AVX-512F.
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_nest(m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: the caller's contract, and each loop nest is given kernels whose tile is as wide
    // as its `NR` (V vectors of 16 lanes: 1 × 16 = NR, 2 × 16 = NR_MAX) on fp32 slots, as
    // `loop_nest` requires.
    unsafe {
        if n <= NR {
            loop_nest::<NR>(Packing::Floats, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512::<true, 1>, Some(kernel_avx512::<false, 1>))
        } else {
            loop_nest::<NR_MAX>(Packing::Floats, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512::<true, 2>, Some(kernel_avx512::<false, 2>))
        }
    }
}

/// `C[m, n] (+)= alpha · op(A) · op(B)` with both operands rounded to bf16, on AVX512-BF16's dot
/// products (`vdpbf16ps`, fp32 accumulation): [`sgemm`]'s loops, one or two vectors wide as
/// [`avx512_nest`], on operands packed as bf16 pairs.
///
/// # Safety
/// As [`sgemm`], on a CPU with AVX-512F and AVX512-BF16 ([`bf16_dot_products`]; the first-use
/// check runs this before that answers).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_bf16_pairs(m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: the caller's contract, and each loop nest is given a kernel whose tile is as wide
    // as its `NR` (1 × 16 = NR, 2 × 16 = NR_MAX lanes) on slots of two bf16 depths, as
    // `Packing::Bf16Pairs` packs them.
    unsafe {
        if n <= NR {
            loop_nest::<NR>(Packing::Bf16Pairs, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512_bf16::<true, 1>, None)
        } else {
            loop_nest::<NR_MAX>(Packing::Bf16Pairs, m, n, k, alpha, a, b, c, rsc, accumulate, buf, kernel_avx512_bf16::<true, 2>, None)
        }
    }
}

/// Whether bf16 products ([`Rounding::Bf16`]) can run as bf16 dot products here
/// ([`sgemm_bf16_pairs`]): AVX-512F with AVX512-BF16 (`vdpbf16ps`: two depths per instruction,
/// fp32 accumulation). Every CPU can round the operands to bf16 as they are packed and multiply
/// them on the fp32 kernel: the same numbers up to the order of the sums (which of these runs
/// each product is measured, `cpu::plan`).
pub fn bf16_dot_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.supported() && std::arch::is_x86_feature_detected!("avx512bf16") && bf16_dot_products_agree()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 kernel gives the AVX2 kernel's products bit for bit (the same FMAs in the
/// same order per element) on products that cross every block edge, in place and packed: checked
/// once per process, with a warning where it does not (and AVX2's kernel runs instead).
#[cfg(target_arch = "x86_64")]
fn avx512_agrees() -> bool {
    static AGREES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AGREES.get_or_init(|| {
        // SAFETY: AVX-512F, AVX2 and FMA are present (checked by the caller); whole matrices.
        let agrees = first_use_check(0.0, &|m, n, k, a, b, c, buf| unsafe { avx512_nest(m, n, k, 1.0, a, b, c, n as isize, true, buf) }, &|m, n, k, a, b, c, buf| unsafe {
            loop_nest::<NR>(Packing::Floats, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2::<true, 2>, Some(kernel_avx2::<false, 2>))
        });
        if !agrees {
            eprintln!("warning: the AVX-512 GEMM kernel disagrees with the AVX2 kernel on this CPU; the AVX2 kernel runs instead");
        }
        agrees
    })
}

/// Whether `vdpbf16ps` gives its AVX2 emulation's products (to the order of its two adds) on
/// products that cross every block edge: checked once, as [`avx512_agrees`].
#[cfg(target_arch = "x86_64")]
fn bf16_dot_products_agree() -> bool {
    static AGREES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AGREES.get_or_init(|| {
        // SAFETY: AVX-512F, AVX512-BF16, AVX2 and FMA are present (checked by the caller); whole matrices.
        let agrees = first_use_check(1e-5, &|m, n, k, a, b, c, buf| unsafe { sgemm_bf16_pairs(m, n, k, 1.0, a, b, c, n as isize, true, buf) }, &|m, n, k, a, b, c, buf| unsafe {
            loop_nest::<NR_MAX>(Packing::Bf16Pairs, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2_bf16_emulated::<true, 4>, None)
        });
        if !agrees {
            eprintln!("warning: the AVX512-BF16 kernel disagrees with its emulation on this CPU; bf16 products run on the other kernels");
        }
        agrees
    })
}

/// A product `C (+)= A·B` of `m × k` and `k × n` row-major operands into `c` (row stride `n`).
#[cfg(target_arch = "x86_64")]
pub(crate) type CheckedProduct = dyn Fn(usize, usize, usize, Operand, Operand, *mut f32, &mut PackBuffers);

/// Whether `new` and `reference` agree (within `rel` relative; 0 for bit for bit) on three
/// accumulating products: `45 × 70 × 300` (packed A, partial tiles, two slices),
/// `151 × 20 × 600` (A in place where the kernel has that path, two MC blocks, a KK super-block)
/// and `40 × 16 × 300` (the one-vector tile of AVX-512's narrow products).
#[cfg(target_arch = "x86_64")]
pub(crate) fn first_use_check(rel: f32, new: &CheckedProduct, reference: &CheckedProduct) -> bool {
    [(45, 70, 300), (151, 20, 600), (40, 16, 300)].into_iter().all(|(m, n, k)| {
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        let (av, bv): (Vec<f32>, Vec<f32>) = ((0..m * k).map(value).collect(), (0..k * n).map(|i| value(i + 17)).collect());
        let (a, b) = (Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 }, Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 });
        let run = |f: &CheckedProduct| {
            let mut c: Vec<f32> = (0..m * n).map(|i| value(i + 5)).collect();
            f(m, n, k, a, b, c.as_mut_ptr(), &mut PackBuffers::default());
            c
        };
        let (got, want) = (run(new), run(reference));
        got.iter().zip(&want).all(|(g, w)| if rel == 0.0 { g.to_bits() == w.to_bits() } else { (g - w).abs() <= rel * w.abs().max(1.0) })
    })
}

/// A micro-kernel (see [`micro_kernel!`]): `(kc, a, rsa, b, c, rsc, mr, nr, alpha, add)`.
pub(crate) type Kernel = unsafe fn(usize, *const f32, isize, *const f32, *mut f32, isize, usize, usize, f32, bool);

/// The loop nest around a micro-kernel `NR` columns wide: `packed_kernel` for a packed A, and
/// `in_place_kernel` (where given: fp32 values only) for a depth-contiguous A read in place;
/// the operands packed as `packing` says, the kernels reading that layout.
///
/// # Safety
/// As [`sgemm`], with kernels this CPU can run whose tile is `MR × NR` and whose operands are
/// packed as `packing` says (halves: the CPU has AVX2 and F16C).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn loop_nest<const NR: usize>(
    packing: Packing, m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers, packed_kernel: Kernel,
    in_place_kernel: Option<Kernel>,
) {
    // SAFETY: the operands are whole matrices of the shapes given (the contract); packing reads only `(p, q)` inside them, and the packed buffers were reserved for these block sizes; each micro-tile of C written lies inside the `m × n` C that only this call touches.
    unsafe {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                clear(m, n, c, rsc);
            }
            return;
        }
        // Depth along the columns of op(A) and the rows of op(B); lanes across the others.
        let (a, b) = (Panel::of_a(a), Panel::of_b(b));
        // With one panel of B's columns (n ≤ NR: a convolution to 16 channels), each value of A
        // is used once: packing it would only copy it. A depth-contiguous A is then read in
        // place, six rows side by side, the kernel fetching the next six ahead; a block's last,
        // partial panel of rows is still packed (zero-padded to MR). bf16 and fp16 round in packing.
        let in_place = in_place_kernel.filter(|_| n <= NR && a.sp == 1 && buf.round == Rounding::None && packing == Packing::Floats);
        // A block of B holds as many slots as it would floats: twice the columns for bf16 pairs,
        // so each packed block of A serves twice the columns (packing is a larger share of a
        // product that runs twice as fast).
        let ncb = block_cols(n, KK.min(k).div_ceil(packing.slot_depths()), NR);
        // Where C spans several blocks of B and A is small (a weight gradient `dYᵀ·X`: a few
        // hundred rows of `dYᵀ` against thousands of columns of `X`), A is packed whole once per
        // depth block and serves every block of B; otherwise a block of its rows is packed again
        // for each block of B (xl's first weight gradient in fp16: eight times per worker).
        // Either way each element of C adds its depth slices in the same order: the same bits.
        let m_width = m.next_multiple_of(MR);
        let whole_a = in_place.is_none() && n > ncb && packing.a_floats(KK.min(k), m_width) <= A_WHOLE;
        buf.reserve(if whole_a { m } else { MC.min(m) }, n, k, NR, packing.slot_depths());
        let buf_round = buf.round;
        let (abuf, bbuf) = buf.aligned();
        // The kernels of rows `ic..ic + mc` of C against one packed block of B (`nc` columns from
        // `jc`, depths `kk..kk + kd`): A's rows from row `a_row` of a packed block `a_width` lanes
        // wide (its first `in_place_rows` rows read in place instead).
        let kernels = |ablock: *const f32, a_width: usize, a_row: usize, bblock: *const f32, (ic, mc, in_place_rows): (usize, usize, usize), (jc, nc): (usize, usize), (kk, kd): (usize, usize)| {
            for pc in (0..kd).step_by(KC) {
                let kc = KC.min(kd - pc);
                // The first slice of k writes C (or adds to it when accumulating); later ones add.
                let add = accumulate || kk + pc > 0;
                // Slice `pc` of a packed block starts after `pc` full slices of every panel.
                let (ap, bp) = (ablock.add(packing.a_floats(pc, a_width) + packing.a_floats(kc, a_row)), bblock.add(packing.b_floats(pc, nc.next_multiple_of(NR))));
                for jr in (0..nc).step_by(NR) {
                    let bj = bp.add(packing.b_floats(kc, jr));
                    for ir in (0..mc).step_by(MR) {
                        let ct = c.offset((ic + ir) as isize * rsc + (jc + jr) as isize);
                        let (mr, nr) = (MR.min(mc - ir), NR.min(nc - jr));
                        if let Some(in_place_kernel) = in_place.filter(|_| ir < in_place_rows) {
                            in_place_kernel(kc, a.at(kk + pc, ic + ir).ptr, a.sq, bj, ct, rsc, mr, nr, alpha, add);
                        } else {
                            packed_kernel(kc, ap.add(packing.a_floats(kc, ir - in_place_rows)), 1, bj, ct, rsc, mr, nr, alpha, add);
                        }
                    }
                }
            }
        };
        if whole_a {
            for kk in (0..k).step_by(KK) {
                let kd = KK.min(k - kk);
                pack::<MR>(packing, Side::A, kd, m, a.at(kk, 0), abuf, buf_round);
                for jc in (0..n).step_by(ncb) {
                    let nc = ncb.min(n - jc);
                    pack::<NR>(packing, Side::B, kd, nc, b.at(kk, jc), bbuf, buf_round);
                    for ic in (0..m).step_by(MC) {
                        // (MC is a whole number of panels, so row `ic` starts one.)
                        kernels(abuf.as_ptr(), m_width, ic, bbuf.as_ptr(), (ic, MC.min(m - ic), 0), (jc, nc), (kk, kd));
                    }
                }
            }
            return;
        }
        for jc in (0..n).step_by(ncb) {
            let nc = ncb.min(n - jc);
            for kk in (0..k).step_by(KK) {
                let kd = KK.min(k - kk);
                pack::<NR>(packing, Side::B, kd, nc, b.at(kk, jc), bbuf, buf_round);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let in_place_rows = if in_place.is_some() { mc / MR * MR } else { 0 };
                    if in_place_rows < mc {
                        pack::<MR>(packing, Side::A, kd, mc - in_place_rows, a.at(kk, ic + in_place_rows), abuf, buf_round);
                    }
                    kernels(abuf.as_ptr(), (mc - in_place_rows).next_multiple_of(MR), 0, bbuf.as_ptr(), (ic, mc, in_place_rows), (jc, nc), (kk, kd));
                }
            }
        }
    }
}

/// Which operand a block packs: their layouts differ for halves ([`Packing::Halves`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Packs a block of `side` as `packing` says: [`pack_block`] (floats, rounded as `round` says),
/// [`pack_block_pairs`] (rounding to bf16 as it goes), or for halves
/// [`super::fp16::pack_block_halves`] (B) and [`super::fp16::pack_block_doubled_halves`] (A).
///
/// # Safety
/// `src` must address `kd × lanes` elements; for halves the CPU must have AVX2 and F16C.
#[allow(clippy::too_many_arguments)]
unsafe fn pack<const W: usize>(packing: Packing, side: Side, kd: usize, lanes: usize, src: Panel, out: &mut [f32], round: Rounding) {
    // SAFETY: forwarded contract.
    unsafe {
        match (packing, side) {
            (Packing::Floats, _) => pack_block::<W>(kd, lanes, src, out, round),
            (Packing::Bf16Pairs, _) => pack_block_pairs::<W, 1>(kd, lanes, src, out),
            (Packing::Halves, Side::A) => super::fp16::pack_block_doubled_halves::<W>(kd, lanes, src, out),
            (Packing::Halves, Side::B) => super::fp16::pack_block_halves::<W>(kd, lanes, src, out),
        }
    }
}

/// Packs a block as pairs of bf16 for a dot-product kernel: for each `KC`-deep slice, one panel
/// of `slots × W` 32-bit slots per `W` lanes, slot `(p2, q)` holding lane `q` at depths `2·p2`
/// (low half) and `2·p2 + 1` (high half), each rounded to bf16 — `vdpbf16ps`'s operand layout
/// (a broadcast slot of A against a vector of B's slots) and AMX's for B. `slots` is `⌈kc/2⌉`
/// rounded up to a multiple of `SLOT_MULTIPLE` (AMX multiplies 16 slots at a time). An odd last depth,
/// the padding slots and the padding lanes are zeros.
///
/// # Safety
/// `src` must address `kd × lanes` elements.
pub(crate) unsafe fn pack_block_pairs<const W: usize, const SLOT_MULTIPLE: usize>(kd: usize, lanes: usize, src: Panel, out: &mut [f32]) {
    // SAFETY: `src` addresses `kd × lanes` elements and every read is at `p < kd`, `q < lanes` (the vector packings' contracts: whole slots of the slice, lanes below `lanes`); `out` holds the whole block (asserted), and every write is below that.
    unsafe {
        let width = lanes.next_multiple_of(W);
        assert!(out.len() >= width * pair_slots::<SLOT_MULTIPLE>(kd));
        for slice in (0..kd).step_by(KC) {
            let kc = KC.min(kd - slice);
            let slots = pair_slots::<SLOT_MULTIPLE>(kc);
            let base = slice / 2 * width;
            // Whole slots go through AVX512-BF16's conversions where the CPU has them (every CPU
            // whose kernels take bf16 pairs: scalar rounding and shuffling took a quarter of a
            // bf16 product's time), in the source's order: where its depth is contiguous, 8
            // lanes × 16 depths at a time, panel by panel; where its lanes are, two depths at a
            // time across every panel, in the long runs the prefetchers follow.
            #[cfg(target_arch = "x86_64")]
            let vectored = if !bf16_conversions() {
                0
            } else if src.sp == 1 {
                for q0 in (0..width).step_by(W) {
                    pack_pair_tiles::<W>(kc / 16 * 8, src.at(slice, 0), q0, lanes, out.as_mut_ptr().add(base + q0 * slots));
                }
                kc / 16 * 8
            } else if src.sq == 1 {
                pack_pair_rows::<W>(kc / 2, src.at(slice, 0), lanes, slots, out.as_mut_ptr().add(base));
                kc / 2
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let vectored = 0;
            for q0 in (0..width).step_by(W) {
                let panel = base + q0 * slots;
                // The rest (a slice's last depths, padding slots) one slot at a time, the
                // source's contiguous direction innermost.
                let mut put = |p2: usize, q: usize| {
                    let (p, lane) = (slice + 2 * p2, q0 + q);
                    out[panel + p2 * W + q] = pair_bits(src, kd, lanes, p, lane);
                };
                if src.sp == 1 {
                    (0..W).for_each(|q| (vectored..slots).for_each(|p2| put(p2, q)));
                } else {
                    (vectored..slots).for_each(|p2| (0..W).for_each(|q| put(p2, q)));
                }
            }
        }
    }
}

/// Whether this CPU converts fp32 to bf16 in vectors (AVX512-BF16's `vcvtneps2bf16` and
/// `vcvtne2ps2bf16`, with the AVX512-BW shuffles, AVX512-VL widths and AVX2 transposes the
/// packing uses).
#[cfg(target_arch = "x86_64")]
pub(crate) fn bf16_conversions() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bf16") && has!("avx512bw") && has!("avx512vl") && has!("avx2") && has!("fma")
}

/// The first `tiled` slots (a multiple of 8) of the panel of lanes `q0..q0 + W` of a
/// depth-contiguous source into `dst` (`dst[s·W + q]`), 8 lanes × 8 slots at a time: each lane's
/// 16 depths converted to bf16 in one instruction (consecutive bf16, so already its 8 slots),
/// then 8 lanes transposed into 8 slots' lanes. Lanes from `lanes` on are zeros.
///
/// # Safety
/// [`bf16_conversions`] must hold; `src` must address `2·tiled` depths of `lanes` lanes, depth
/// contiguous, and `dst` room for `tiled · W` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
unsafe fn pack_pair_tiles<const W: usize>(tiled: usize, src: Panel, q0: usize, lanes: usize, dst: *mut f32) {
    debug_assert_eq!(src.sp, 1);
    // SAFETY: each tile reads 16 contiguous depths inside `2·tiled` of lanes below `lanes`, and writes `(W - g).min(8)` slots of 8 rows inside the panel (the contract).
    unsafe {
        use std::arch::x86_64::*;
        for g in (0..W).step_by(8) {
            // An A panel (W = 6) may read the next panel's first two lanes; it does not store them.
            let (keep, present) = ((W - g).min(8), lanes.saturating_sub(q0 + g).min(8));
            for s0 in (0..tiled).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (q, v) in r.iter_mut().enumerate().take(present) {
                    let lane = src.ptr.offset((2 * s0) as isize + (q0 + g + q) as isize * src.sq);
                    // The same depths of the next panel's lanes (`sq` apart: streams the
                    // prefetchers miss), as `transpose_panel` does.
                    _mm_prefetch::<_MM_HINT_T0>(lane.wrapping_offset(W as isize * src.sq) as *const i8);
                    *v = std::mem::transmute::<__m256bh, __m256>(_mm512_cvtneps_pbh(_mm512_loadu_ps(lane)));
                }
                for (s, v) in transpose8(r).into_iter().enumerate() {
                    let keep_mask: __mmask8 = if keep == 8 { 0xFF } else { (1 << keep) - 1 };
                    _mm256_mask_storeu_ps(dst.add((s0 + s) * W + g), keep_mask, v);
                }
            }
        }
    }
}

/// The first `pairs` slots of every panel of a lanes-contiguous source (`lanes` lanes; panels
/// `slots` deep from `dst`), two depths at a time across all the lanes, 16 lanes (or a panel's
/// 6) per conversion: each slot the even depth's bf16 in the low half, the odd depth's in the
/// high. Lanes from `lanes` on are zeros.
///
/// # Safety
/// [`bf16_conversions`] must hold; `src` must address `2·pairs` depths of `lanes` contiguous
/// lanes, and `dst` room for `lanes.next_multiple_of(W) · slots` slots, `slots ≥ pairs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
unsafe fn pack_pair_rows<const W: usize>(pairs: usize, src: Panel, lanes: usize, slots: usize, dst: *mut f32) {
    debug_assert_eq!(src.sq, 1);
    // SAFETY: masked loads read lanes below `lanes` of depths below `2·pairs`; masked stores write `keep` slots inside panel `q0`'s row `s` (the contract).
    unsafe {
        use std::arch::x86_64::*;
        // `vcvtne2ps2bf16` puts the even depth's 16 bf16 in the low half and the odd depth's in
        // the high; this interleaves them into 16 slots.
        let interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for s in 0..pairs {
            let (even, odd) = (src.ptr.offset((2 * s) as isize * src.sp), src.ptr.offset((2 * s + 1) as isize * src.sp));
            for q0 in (0..lanes).step_by(W) {
                for g in (0..W).step_by(16) {
                    let keep = (W - g).min(16);
                    let present = lanes.saturating_sub(q0 + g).min(keep);
                    let (load, store) = (((1u32 << present) - 1) as __mmask16, ((1u32 << keep) - 1) as __mmask16);
                    let at = q0 + g;
                    // The same lanes 8 depths on: the rows are long strided streams.
                    _mm_prefetch::<_MM_HINT_T0>(even.wrapping_offset(at as isize + 8 * src.sp) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(odd.wrapping_offset(at as isize + 8 * src.sp) as *const i8);
                    // Wrapping: past the last lane (`present` = 0, padding) the masked loads read
                    // nothing, but the address may lie past the source.
                    let pair = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(load, odd.wrapping_add(at)), _mm512_maskz_loadu_ps(load, even.wrapping_add(at)));
                    let slots16 = _mm512_permutexvar_epi16(interleave, std::mem::transmute::<__m512bh, __m512i>(pair));
                    _mm512_mask_storeu_epi32(dst.add(q0 * slots + s * W + g) as *mut i32, store, slots16);
                }
            }
        }
    }
}

/// Packs a block of `kd` depths × `lanes` lanes (element `(p, q)` of `src`): for each `KC`-deep
/// slice, one `kc × W` micro-panel per `W` lanes (`out[p·W + q]`), the last one zero-padded.
/// The source is read in its own order, in long runs: where the lanes are contiguous (a
/// row-major X or W as `op(B)`, `dYᵀ` as `op(A)`), depth by depth across every panel; where the
/// depth is, panel by panel. A block of `op(A)` has its rows as lanes (`W` = [`MR`]), a block of
/// `op(B)` its columns (`W` = the kernel's [`Isa::nr`]). Then one pass over the block, in
/// cache, rounds it as `round` says (fp32: flushes its subnormals); it costs little beside the
/// products the block feeds (the flush: 1.5 % of an isfm-base step on AVX-512, against 3 % for
/// flushing in the copies).
///
/// # Safety
/// `src` must address `kd × lanes` elements.
pub(crate) unsafe fn pack_block<const W: usize>(kd: usize, lanes: usize, src: Panel, out: &mut [f32], round: Rounding) {
    // SAFETY: forwarded contract; the copy fills the first `lanes` rounded up to `W` times `kd` floats.
    unsafe {
        copy_block::<W>(kd, lanes, src, out);
        round.apply(&mut out[..lanes.next_multiple_of(W) * kd]);
    }
}

/// [`pack_block`]'s copy alone: the source's values as they are, subnormals too (for a packing
/// that converts them next, which flushes them: fp16's A).
///
/// # Safety
/// As [`pack_block`].
pub(crate) unsafe fn copy_block<const W: usize>(kd: usize, lanes: usize, src: Panel, out: &mut [f32]) {
    // SAFETY: `src` addresses `kd × lanes` elements and `out` was reserved for `lanes` rounded up to `W` × `kd` (asserted), so every panel read and written lies inside them.
    unsafe {
        let width = lanes.next_multiple_of(W);
        assert!(out.len() >= width * kd);
        if src.sq == 1 && src.sp != 1 {
            // Lanes contiguous: each depth's `lanes` values are one run of the source; panel by
            // panel would read them W at a time, `sp` apart, a stream of short strided reads the
            // prefetchers follow poorly (two thirds of a narrow weight gradient's time).
            for slice in (0..kd).step_by(KC) {
                let kc = KC.min(kd - slice);
                let base = out.as_mut_ptr().add(slice * width);
                for p in 0..kc {
                    let row = src.ptr.offset((slice + p) as isize * src.sp);
                    for q0 in (0..lanes).step_by(W) {
                        copy_lanes::<W>(row.add(q0), base.add(q0 * kc + p * W), W.min(lanes - q0));
                    }
                }
            }
        } else {
            for q0 in (0..lanes).step_by(W) {
                for slice in (0..kd).step_by(KC) {
                    let kc = KC.min(kd - slice);
                    let dst = out.as_mut_ptr().add(slice * width + q0 * kc);
                    pack_panel::<W>(kc, src.at(slice, q0), W.min(lanes - q0), dst);
                }
            }
        }
    }
}

/// The slot of lane `q` at depths `p` (low half) and `p + 1` (high half), each rounded to bf16;
/// zero past the `kd × lanes` source.
///
/// # Safety
/// `src` must address `kd × lanes` elements.
#[inline]
pub(crate) unsafe fn pair_bits(src: Panel, kd: usize, lanes: usize, p: usize, q: usize) -> f32 {
    // SAFETY: read only at `p < kd`, `q < lanes`, inside the source (the contract).
    let value = |p: usize| if p < kd && q < lanes { bf16_bits(unsafe { *src.ptr.offset(p as isize * src.sp + q as isize * src.sq) }) } else { 0 };
    f32::from_bits(value(p) >> 16 | value(p + 1))
}

/// Slots of a `kd`-deep block packed as bf16 pairs, slice by slice, each slice's `⌈kc/2⌉` rounded
/// up to a multiple of `SLOT_MULTIPLE` (a full `KC` slice is 128 slots, already a multiple of 16).
pub(crate) fn pair_slots<const SLOT_MULTIPLE: usize>(kd: usize) -> usize {
    let full = kd / KC * (KC / 2);
    let last = (kd % KC).div_ceil(2).next_multiple_of(SLOT_MULTIPLE);
    full + last
}

/// Rounds each value to the nearest bf16 (ties to even), kept as f32: the upper 16 bits of the
/// f32 after adding half of the dropped part; past bf16's largest value, ±inf. A NaN stays a
/// (quiet) NaN: the carry of the rounding could otherwise turn it into an infinity or a zero.
/// A subnormal becomes ±0, as in AVX512-BF16's conversions (whose results the pair packing
/// must give bit for bit) and in its and AMX's dot products, which read bf16 subnormals as zero.
pub fn round_bf16(v: &mut [f32]) {
    for x in v {
        *x = f32::from_bits(bf16_bits(*x));
    }
}

/// Rounds each value to the nearest IEEE binary16 (ties to even), kept as f32: past ±65504 (from
/// 65520, halfway to the next binade) ±inf; below 2⁻¹⁴ onto the subnormal grid of 2⁻²⁴, and below
/// half of that to ±0; NaN stays NaN. fp16's floor is why fp16 training scales its loss.
pub fn round_fp16(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: F16C (and the AVX it implies) is present.
        return unsafe { round_fp16_f16c(v) };
    }
    for x in v {
        *x = fp16(*x);
    }
}

/// `v` through `eight`, eight floats at a time as one AVX vector, and `one` for the last few: the
/// loop of the in-place F16C passes ([`round_fp16_f16c`], the fp16 kernel's words of A).
///
/// # Safety
/// The CPU must run what `eight` and `one` do: call this from a function compiled for it, into
/// which it is inlined with the closures defined there.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn map_eights(v: &mut [f32], eight: impl Fn(std::arch::x86_64::__m256) -> std::arch::x86_64::__m256, one: impl Fn(f32) -> f32) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr() as *mut std::arch::x86_64::__m256;
        // SAFETY: `c` holds 8 floats, one vector; unaligned reads and writes.
        unsafe { p.write_unaligned(eight(p.read_unaligned())) };
    }
    for x in chunks.into_remainder() {
        *x = one(*x);
    }
}

/// [`round_fp16`] eight values at a time through F16C's conversions (`vcvtps2ph` to nearest
/// even, then back), which give [`fp16`]'s results bit for bit for every number (checked on
/// every exponent, both signs, in the tests); a NaN stays a NaN (F16C quiets it and cuts its
/// payload).
///
/// # Safety
/// The CPU must have F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn round_fp16_f16c(v: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: F16C (and AVX) are present (the contract), and the closures are compiled with them.
    unsafe { map_eights(v, |x| _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x)), fp16) }
}

/// `x` rounded as [`round_fp16`] does.
#[inline]
pub(crate) fn fp16(x: f32) -> f32 {
    const SUBNORMAL_STEP: f32 = 1.0 / (1u32 << 24) as f32;
    let a = x.abs();
    if x.is_nan() {
        x
    } else if a >= 65520.0 {
        f32::INFINITY.copysign(x)
    } else if a < 1.0 / (1u32 << 14) as f32 {
        // Scaling by powers of two is exact, so this rounds once, on fp16's subnormal grid.
        (x / SUBNORMAL_STEP).round_ties_even() * SUBNORMAL_STEP
    } else {
        // Normal: keep 10 of the 23 mantissa bits, adding half of the dropped part (ties to even).
        let b = x.to_bits();
        f32::from_bits(b.wrapping_add(0x0FFF + ((b >> 13) & 1)) & 0xFFFF_E000)
    }
}

/// `x` rounded to bf16 as [`round_bf16`] does, as f32 bits (the low 16 are zero).
#[inline]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = if x.is_nan() {
        b | 0x0040_0000
    } else if x.is_subnormal() {
        b & 0x8000_0000
    } else {
        b.wrapping_add(0x7FFF + ((b >> 16) & 1))
    };
    rounded & 0xFFFF_0000
}

/// The source of one micro-panel: element `(p, q)` (depth `p`, lane `q`) at `ptr + p·sp + q·sq`.
#[derive(Clone, Copy)]
pub(crate) struct Panel {
    pub(crate) ptr: *const f32,
    pub(crate) sp: isize,
    pub(crate) sq: isize,
}

impl Panel {
    /// `op(A)` as panels: depth along its columns, lanes down its rows.
    pub(crate) fn of_a(a: Operand) -> Panel {
        Panel { ptr: a.ptr, sp: a.cs, sq: a.rs }
    }

    /// `op(B)` as panels: depth down its rows, lanes along its columns.
    pub(crate) fn of_b(b: Operand) -> Panel {
        Panel { ptr: b.ptr, sp: b.rs, sq: b.cs }
    }

    /// The source shifted to depth `p`, lane `q`.
    ///
    /// # Safety
    /// `(p, q)` must lie inside the matrix.
    pub(crate) unsafe fn at(self, p: usize, q: usize) -> Panel {
        // SAFETY: `(p, q)` is inside the matrix (the contract), so the shifted pointer addresses one of its elements.
        unsafe { Panel { ptr: self.ptr.offset(p as isize * self.sp + q as isize * self.sq), ..self } }
    }
}

/// Writes `dst[p·W + q]` = source `(p, q)` for `p < kc`, `q < lanes`, and 0 for the padding lanes.
/// (Also packs the strips of [`crate::cpu::sparse`].) Subnormals are copied: the caller flushes.
///
/// # Safety
/// The source must hold `kc × lanes` elements and `dst` room for `kc · W`.
pub(crate) unsafe fn pack_panel<const W: usize>(kc: usize, src: Panel, lanes: usize, dst: *mut f32) {
    // SAFETY: the source holds `kc × lanes` elements and `dst` room for `kc · W` (the contract): every read is at `p < kc`, `q < lanes`, every write below `kc · W`.
    unsafe {
        // Lanes strided, depth contiguous (a row-major A, a transposed B: both operands of a forward
        // X·Wᵀ): 8 × 8 register transposes up to the last whole group of 8, then the loop below.
        #[cfg(target_arch = "x86_64")]
        let p0 = if src.sp == 1 && src.sq != 1 && lanes == W {
            transpose_panel::<W>(kc / 8 * 8, src, dst);
            kc / 8 * 8
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let p0 = 0;
        for p in p0..kc {
            let d = dst.add(p * W);
            if src.sq == 1 {
                copy_lanes::<W>(src.ptr.offset(p as isize * src.sp), d, lanes);
            } else {
                for q in 0..lanes {
                    *d.add(q) = *src.ptr.offset(p as isize * src.sp + q as isize * src.sq);
                }
                std::slice::from_raw_parts_mut(d.add(lanes), W - lanes).fill(0.0);
            }
        }
    }
}

/// One depth of a panel from contiguous lanes: `dst[..n] = src[..n]`, `dst[n..W] = 0`.
///
/// # Safety
/// `src` must hold `n ≤ W` floats and `dst` room for `W`.
#[inline(always)]
unsafe fn copy_lanes<const W: usize>(src: *const f32, dst: *mut f32, n: usize) {
    // SAFETY: `src` holds `n` floats and `dst` room for `W ≥ n` (the contract).
    unsafe {
        if n == W {
            // A constant length: inlined vector moves, not a call to memcpy.
            std::ptr::copy_nonoverlapping(src, dst, W);
        } else {
            std::ptr::copy_nonoverlapping(src, dst, n);
            std::slice::from_raw_parts_mut(dst.add(n), W - n).fill(0.0);
        }
    }
}

/// `x`, or ±0 where `x` is subnormal (its exponent bits are zero): what the packings give our
/// kernels (the module's doc says why).
#[inline(always)]
pub(crate) fn flush_subnormal(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits(if bits & 0x7F80_0000 == 0 { bits & 0x8000_0000 } else { bits })
}

/// [`flush_subnormal`] over a packed block: 16 lanes at a time where the CPU has AVX-512 (F and
/// DQ), 8 where it has AVX2 (every CPU our kernels run on), else one by one.
pub(crate) fn flush_subnormals(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") {
            // SAFETY: AVX-512F and AVX-512DQ are present.
            return unsafe { flush_subnormals_avx512(v) };
        }
        if has!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { flush_subnormals_avx2(v) };
        }
    }
    flush_each(v)
}

/// [`flush_subnormal`] on each value, vectorized for whatever the caller is compiled for.
#[inline(always)]
fn flush_each(v: &mut [f32]) {
    for x in v {
        *x = flush_subnormal(*x);
    }
}

/// [`flush_each`] compiled with AVX2: 8 lanes a compare and a select.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn flush_subnormals_avx2(v: &mut [f32]) {
    flush_each(v)
}

/// [`flush_subnormals`] with AVX-512: a lane the fpclass test finds subnormal keeps its sign.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn flush_subnormals_avx512(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let sign = _mm512_set1_epi32(i32::MIN);
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` holds 16 floats.
        unsafe {
            let x = _mm512_loadu_si512(c.as_ptr() as *const _);
            let subnormal = _mm512_fpclass_ps_mask::<0x20>(_mm512_castsi512_ps(x));
            _mm512_storeu_si512(c.as_mut_ptr() as *mut _, _mm512_mask_and_epi32(x, subnormal, x, sign));
        }
    }
    flush_each(chunks.into_remainder())
}

/// `pack_panel` for depth-contiguous sources, `p < kc` (a multiple of 8), all `W` lanes present:
/// [`for_transposed_rows`], each row of eight stored in the panel (`W` = 6 stores 6 of the 8
/// transposed lanes, `W` = 16 does two lane groups).
///
/// # Safety
/// AVX2 must be present; the source must hold `kc` depths (contiguous) of `W` lanes, and `dst`
/// room for `kc · W`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_panel<const W: usize>(kc: usize, src: Panel, dst: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is present and this is its context (the contract); each store writes the `lanes` values of depth `p`, lanes `q0..`, inside the `kc · W` panel.
    unsafe {
        for_transposed_rows::<W>(kc, src, |p, q0, lanes, v| {
            let d = dst.add(p * W + q0);
            if lanes == 8 {
                _mm256_storeu_ps(d, v);
            } else {
                // W = 6: four lanes, then two.
                _mm_storeu_ps(d, _mm256_castps256_ps128(v));
                _mm_store_sd(d.add(4) as *mut f64, _mm_castps_pd(_mm256_extractf128_ps::<1>(v)));
            }
        })
    }
}

/// The loop of the packings that transpose in registers ([`transpose_panel`], and fp16's halves
/// and words): for each group of eight lanes `q0` of a `W`-lane panel and each eight depths, the
/// group's `lanes` (= min(8, W − q0)) are loaded as 8 vectors (the rest zero), transposed, and
/// each transposed row — depth `p`, the group's lanes — handed to `store(p, q0, lanes, row)`.
///
/// # Safety
/// The CPU must have AVX2: call this from a function compiled for it, into which it is inlined
/// with `store`; the source must hold `kc` depths (contiguous, `kc` a multiple of 8) of `W` lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn for_transposed_rows<const W: usize>(kc: usize, src: Panel, mut store: impl FnMut(usize, usize, usize, std::arch::x86_64::__m256)) {
    use std::arch::x86_64::*;
    debug_assert!(kc.is_multiple_of(8));
    // SAFETY: each 8-float load reads depths `p..p + 8 ≤ kc` of a lane below `W` (the contract); the prefetch addresses are formed with wrapping arithmetic and a prefetch never faults, so they may lie past the matrix.
    unsafe {
        for q0 in (0..W).step_by(8) {
            let lanes = (W - q0).min(8);
            for p in (0..kc).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (q, v) in r.iter_mut().enumerate().take(lanes) {
                    let row = src.ptr.offset(p as isize + (q0 + q) as isize * src.sq);
                    // The same depths of the next panel's lanes: the block is packed panel by
                    // panel, and its rows, `sq` apart, are streams the prefetchers miss.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_offset(W as isize * src.sq) as *const i8);
                    *v = _mm256_loadu_ps(row);
                }
                for (i, v) in transpose8(r).into_iter().enumerate() {
                    store(p + i, q0, lanes, v);
                }
            }
        }
    }
}

/// Transposes an 8 × 8 block held in 8 vectors (row `i` in `r[i]`; the result's `t[j]` is column `j`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // s0: columns 0 and 4 of rows 0–3; s1: columns 1 and 5; s2: 2 and 6; s3: 3 and 7 (s4–s7: rows 4–7).
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// Defines a micro-kernel `$name::<PACKED_A, V>` for one instruction set: `C[0..mr, 0..nr] (+)=
/// alpha · Ã · B̃` for one `kc`-deep panel of MR rows of A and one packed `kc × NR` panel of B
/// (`NR` = `V` vectors of `$lanes`), the MR × NR tile held in `MR · V` registers throughout.
/// A is packed (`PACKED_A`: depth `p`, row `i` at `a[p·MR + i]`) or read in place (row `i` at
/// `a + i·rsa`, its depth contiguous; the next MR rows are prefetched as it goes).
///
/// Written once for both vector types so the AVX-512 kernel is the AVX2 one, tested here, with
/// wider registers: the macro's arguments are the only per-ISA code.
macro_rules! micro_kernel {
    ($name:ident, $feature:literal, $vec:ident, $lanes:literal, $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $mul:ident, $add:ident, $store:ident) => {
        micro_kernel!($name, $feature, $vec, $lanes, $zero, $load, $splat, $fmadd, $mul, $add, $store, depths_per_slot: 1);
    };
    // `$fmadd(a, b, acc)` takes one slot of A (broadcast) and of B per step: a product of one
    // depth, or of two (bf16 pairs, `depths_per_slot: 2`, A packed).
    ($name:ident, $feature:literal, $vec:ident, $lanes:literal, $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $mul:ident, $add:ident, $store:ident, depths_per_slot: $depths:literal) => {
        /// # Safety
        /// The CPU must have the instruction set; `b` must hold `⌈kc / depths⌉ · NR` packed slots,
        /// `a` as many times MR, or MR rows of `kc` floats `rsa` apart (in place), and `c` an `mr × nr` tile (row
        /// stride `rsc`) that no other thread touches.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const PACKED_A: bool, const V: usize>(kc: usize, a: *const f32, rsa: isize, b: *const f32, c: *mut f32, rsc: isize, mr: usize, nr: usize, alpha: f32, add: bool) {
            // SAFETY: `a` holds the panel of A the contract describes and `b` a packed `kc · NR` panel, so the loads stay inside them; prefetch addresses are formed with wrapping arithmetic and never fault; C's `mr × nr` tile at row stride `rsc` lies inside the caller's C: full tiles are stored whole, edge tiles through a local tile, element by element.
            unsafe {
                use std::arch::x86_64::*;
                let nr_full = V * $lanes;
                debug_assert!(nr_full <= NR_MAX && (PACKED_A || $depths == 1));
                let mut acc = [[$zero(); V]; MR];
                for i in 0..mr {
                    _mm_prefetch::<_MM_HINT_T0>(c.offset(i as isize * rsc) as *const i8);
                }
                // Where row i of A is: packed rows are adjacent, in-place rows `rsa` apart.
                let (row_step, depth_step) = if PACKED_A { (1, MR) } else { (rsa, 1) };
                let (mut a, mut b) = (a, b);
                for p in 0..kc.div_ceil($depths) {
                    if PACKED_A {
                        // A streams from L2 (B's panel stays in L1): fetch it 16 steps ahead.
                        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * MR) as *const i8);
                    } else if p % 16 == 0 {
                        // In place, A's rows are six short streams the prefetchers miss: fetch the
                        // line of the next six rows (the next call's) at this depth.
                        for i in 0..MR {
                            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_offset((MR + i) as isize * rsa) as *const i8);
                        }
                    }
                    let mut bv = [$zero(); V];
                    for (h, v) in bv.iter_mut().enumerate() {
                        *v = $load(b.add(h * $lanes));
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let ai = $splat(*a.offset(i as isize * row_step));
                        for (r, &bh) in row.iter_mut().zip(&bv) {
                            *r = $fmadd(ai, bh, *r);
                        }
                    }
                    a = a.add(depth_step);
                    b = b.add(nr_full);
                }
                let va = $splat(alpha);
                if mr == MR && nr == nr_full {
                    for (i, row) in acc.iter().enumerate() {
                        let cr = c.offset(i as isize * rsc);
                        for (h, &v) in row.iter().enumerate() {
                            let mut v = $mul(v, va);
                            if add {
                                v = $add(v, $load(cr.add($lanes * h)));
                            }
                            $store(cr.add($lanes * h), v);
                        }
                    }
                } else {
                    let mut tile = [0.0f32; MR * NR_MAX];
                    for (i, row) in acc.iter().enumerate() {
                        for (h, &v) in row.iter().enumerate() {
                            $store(tile.as_mut_ptr().add(i * nr_full + $lanes * h), $mul(v, va));
                        }
                    }
                    for i in 0..mr {
                        let cr = c.offset(i as isize * rsc);
                        for j in 0..nr {
                            let v = tile[i * nr_full + j];
                            *cr.add(j) = if add { *cr.add(j) + v } else { v };
                        }
                    }
                }
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const PACKED_A: bool, const V: usize>(_: usize, _: *const f32, _: isize, _: *const f32, _: *mut f32, _: isize, _: usize, _: usize, _: f32, _: bool) {
            unreachable!("no packed kernel runs off x86-64 (Isa::supported is false)")
        }
    };
}

micro_kernel!(kernel_avx2, "avx2,fma", __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_storeu_ps);
micro_kernel!(kernel_avx512, "avx512f", __m512, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_storeu_ps);
micro_kernel!(kernel_avx512_bf16, "avx512f,avx512bf16", __m512, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, dpbf16, _mm512_mul_ps, _mm512_add_ps, _mm512_storeu_ps, depths_per_slot: 2);

/// `vdpbf16ps` on AVX2 (the reference of the AVX512-BF16 kernel's first-use check and of the
/// tests): per lane `acc + a_hi·b_hi + a_lo·b_lo`, the instruction's order (a product of two bf16
/// is exact in fp32, so a fused multiply-add rounds where the instruction's add does).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dpbf16_emulated(a: std::arch::x86_64::__m256, b: std::arch::x86_64::__m256, acc: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let hi = |x: __m256| _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0xFFFF_0000u32 as i32)));
    let lo = |x: __m256| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_castps_si256(x)));
    _mm256_fmadd_ps(lo(a), lo(b), _mm256_fmadd_ps(hi(a), hi(b), acc))
}
micro_kernel!(kernel_avx2_bf16_emulated, "avx2,fma", __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, dpbf16_emulated, _mm256_mul_ps, _mm256_add_ps, _mm256_storeu_ps, depths_per_slot: 2);

/// `acc + a·b` over bf16 pairs: per 32-bit lane, `acc + a_hi·b_hi + a_lo·b_lo` in fp32
/// (`vdpbf16ps`; its operands arrive as f32 vectors of packed pairs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn dpbf16(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512, acc: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: a reinterpretation of 512 bits as 512 bits.
    unsafe { _mm512_dpbf16_ps(acc, std::mem::transmute::<__m512, __m512bh>(a), std::mem::transmute::<__m512, __m512bh>(b)) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Naive triple loop in f64 over the same strided operands; returns each element's
    /// `|alpha| · Σ|a·b|`, the scale of its rounding.
    #[allow(clippy::too_many_arguments)]
    fn reference(m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: &mut [f32], accumulate: bool) -> Vec<f32> {
        let mut magnitude = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| unsafe { a.get(i, p) as f64 * b.get(p, j) as f64 }).sum();
                let v = alpha as f64 * s;
                c[i * n + j] = if accumulate { c[i * n + j] + v as f32 } else { v as f32 };
                magnitude[i * n + j] = (alpha.abs() as f64 * (0..k).map(|p| unsafe { (a.get(i, p) as f64 * b.get(p, j) as f64).abs() }).sum::<f64>()) as f32;
            }
        }
        magnitude
    }

    /// `len` values uniform in [-1, 1) from a 64-bit LCG at `seed` (advanced).
    pub(crate) fn uniform(seed: &mut u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Makes every `every`-th value subnormal, of its sign: from the largest subnormal down to
    /// the smallest (`f32::from_bits(1)`).
    pub(crate) fn make_some_subnormal(v: &mut [f32], every: usize) {
        for (i, x) in v.iter_mut().enumerate().filter(|(i, _)| i % every == 0) {
            let magnitude = f32::from_bits((0x007F_FFFF >> (i / every % 24)).max(1));
            assert!(magnitude.is_subnormal());
            *x = magnitude.copysign(*x);
        }
    }

    #[test]
    fn flushing_zeroes_subnormals_and_nothing_else() {
        let tiny = f32::from_bits(1);
        for (x, want) in [
            (tiny, 0.0),
            (-tiny, -0.0),
            (f32::MIN_POSITIVE / 2.0, 0.0),
            (f32::MIN_POSITIVE, f32::MIN_POSITIVE),
            (-f32::MIN_POSITIVE, -f32::MIN_POSITIVE),
            (0.0, 0.0),
            (-0.0, -0.0),
            (1.5, 1.5),
            (f32::MAX, f32::MAX),
            (f32::INFINITY, f32::INFINITY),
        ] {
            assert_eq!(flush_subnormal(x).to_bits(), f32::to_bits(want), "{x:e}");
        }
        assert!(flush_subnormal(f32::NAN).is_nan());
        // Every exponent (random bit patterns), through the slice's vector path and its tail.
        let mut seed = 7u64;
        let mut v: Vec<f32> = (0..10_007)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let bits = (seed >> 32) as u32;
                // A quarter of them with the exponent cleared: subnormals.
                f32::from_bits(if bits & 3 == 0 { bits & 0x807F_FFFF } else { bits })
            })
            .collect();
        let want: Vec<u32> = v.iter().map(|&x| if x.is_subnormal() { x.to_bits() & 0x8000_0000 } else { x.to_bits() }).collect();
        assert!(v.iter().filter(|x| x.is_subnormal()).count() > 2000);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        // Each path the CPU runs, not only the one `flush_subnormals` picks here.
        let mut each = v.clone();
        flush_each(&mut each);
        assert_eq!(bits(&each), want, "one by one");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut avx2 = v.clone();
            unsafe { flush_subnormals_avx2(&mut avx2) };
            assert_eq!(bits(&avx2), want, "AVX2");
        }
        flush_subnormals(&mut v);
        assert_eq!(bits(&v), want);
    }

    /// `v` with its subnormals flushed, one by one.
    pub(crate) fn flushed(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| flush_subnormal(x)).collect()
    }

    /// Packing reads subnormals as ±0: a product whose operands hold subnormals is, bit for bit,
    /// the product with zeros in their place, on each fp32 kernel this CPU runs, in every layout.
    /// A subnormal beside normal products is mostly lost in the sum's rounding, so whole rows of
    /// op(A) and columns of op(B) are subnormal too: their entries of C are 0 only if flushed.
    /// (n = 40 > NR_MAX: a depth-contiguous A read in place is the documented exception.)
    #[test]
    fn subnormal_operands_are_read_as_zero() {
        let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.supported()).collect();
        if isas.is_empty() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA, which our kernels need");
            return;
        }
        let (m, n, k) = (13, 40, 300);
        for isa in isas {
            let mut buf = PackBuffers::default();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut seed = 5;
                let (mut av, mut bv) = (uniform(&mut seed, m * k), uniform(&mut seed, k * n));
                make_some_subnormal(&mut av, 7);
                make_some_subnormal(&mut bv, 11);
                // Rows 0, 3, … of op(A) and columns 0, 5, … of op(B), wherever the layout puts them.
                for (p, i) in (0..k).flat_map(|p| (0..m).step_by(3).map(move |i| (p, i))) {
                    let at = if ta { p * m + i } else { i * k + p };
                    av[at] = f32::from_bits(0x0000_0100 + p as u32).copysign(av[at]);
                }
                for (p, j) in (0..k).flat_map(|p| (0..n).step_by(5).map(move |j| (p, j))) {
                    let at = if tb { j * k + p } else { p * n + j };
                    bv[at] = f32::from_bits(0x0040_0000 - p as u32).copysign(bv[at]);
                }
                let mut product = |av: &[f32], bv: &[f32]| {
                    let (a, b) = transposed(av, bv, (m, n, k), ta, tb);
                    let mut c = vec![f32::NAN; m * n];
                    unsafe { sgemm(isa, m, n, k, 1.0, a, b, c.as_mut_ptr(), n as isize, false, &mut buf) };
                    c.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
                };
                let want = product(&flushed(&av), &flushed(&bv));
                assert_eq!(product(&av, &bv), want, "{isa:?} ta{ta} tb{tb}");
                assert!(want.iter().filter(|&&c| f32::from_bits(c) == 0.0).count() >= m * n / 5, "the subnormal rows and columns give zeros");
            }
        }
    }

    /// `op(A)` (`m × k`) and `op(B)` (`k × n`) over row-major `av` and `bv`, read transposed where
    /// `ta` / `tb` (`av` then holds `k × m`, `bv` `n × k`).
    pub(crate) fn transposed(av: &[f32], bv: &[f32], (m, n, k): (usize, usize, usize), ta: bool, tb: bool) -> (Operand, Operand) {
        let a = if ta { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
        let b = if tb { Operand { ptr: bv.as_ptr(), rs: 1, cs: k as isize } } else { Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 } };
        (a, b)
    }

    /// Every layout (both transpositions), accumulate or not, and shapes that straddle every
    /// block edge: MR, NR (16 and 32), KC, MC, NC, KK and a packed block of B (512 columns at
    /// depth 512), plus the empty k; n ≤ NR reads a depth-contiguous A in place (whole panels of
    /// MR rows, the partial one packed) across MC blocks and KC/KK.
    /// With `bf16`, the product is of the operands rounded to bf16 (the pack buffers are told to
    /// round) and is compared with the naive product of the rounded operands.
    /// Runs `gemm` on products crossing every block edge, for every transposition and with and
    /// without accumulation, against the naive f64 product of the operands rounded by `round`.
    pub(crate) fn check_against_naive(what: &str, round: Rounding, gemm: impl FnMut(usize, usize, usize, f32, Operand, Operand, *mut f32, isize, bool, &mut PackBuffers)) {
        check_against_naive_within(what, round, 0.0, gemm)
    }

    /// [`check_against_naive`] for a kernel whose sums round more than fp32's: each element may
    /// also be off by `rel` of its `|alpha| · Σ|a·b|`.
    pub(crate) fn check_against_naive_within(what: &str, round: Rounding, rel: f32, mut gemm: impl FnMut(usize, usize, usize, f32, Operand, Operand, *mut f32, isize, bool, &mut PackBuffers)) {
        let mut buf = PackBuffers { round, ..Default::default() };
        let mut seed = 7u64;
        let mut rand = |len: usize| uniform(&mut seed, len);
        let shapes = [
            (1, 1, 1),
            (6, 16, 256),
            (7, 17, 257),
            (5, 15, 3),
            (145, 33, 300),
            (13, 4100, 20),
            (40, 40, 0),
            (150, 530, 600),
            (151, 16, 600),
            (300, 9, 513),
            (8, 32, 40),
            (9, 31, 9),
            (151, 33, 70),
            (20, 65, 300),
            // Past AMX's super-block of depth (1024).
            (33, 40, 1100),
        ];
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    let (av, bv) = (rand(m * k), rand(k * n));
                    let (a, b) = transposed(&av, &bv, (m, n, k), ta, tb);
                    let c0 = rand(m * n);
                    let (mut got, mut want) = (c0.clone(), c0);
                    gemm(m, n, k, 0.75, a, b, got.as_mut_ptr(), n as isize, accumulate, &mut buf);
                    let (mut ar, mut br) = (av.clone(), bv.clone());
                    round.apply(&mut ar);
                    round.apply(&mut br);
                    let (a, b) = (Operand { ptr: ar.as_ptr(), ..a }, Operand { ptr: br.as_ptr(), ..b });
                    let magnitude = reference(m, n, k, 0.75, a, b, &mut want, accumulate);
                    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0 + rel * magnitude[idx];
                        assert!((g - w).abs() <= tol, "{what}: m{m} n{n} k{k} ta{ta} tb{tb} acc{accumulate}: C[{idx}] = {g}, want {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn avx2_matches_the_naive_product_for_every_layout_and_edge() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED (no AVX2/FMA): the faer path is tested instead");
            return;
        }
        check_against_naive("avx2", Rounding::None, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm(Isa::Avx2, m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    /// The loops at AVX-512's tile width (32 columns), driven by the AVX2 micro-kernel at that
    /// width (four vectors a row): everything of the AVX-512 path but its instructions, on any
    /// AVX2 CPU.
    #[test]
    fn the_32_wide_driver_matches_the_naive_product() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED (no AVX2/FMA)");
            return;
        }
        check_against_naive("32-wide on avx2", Rounding::None, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe {
            loop_nest::<NR_MAX>(Packing::Floats, m, n, k, alpha, a, b, c, rsc, acc, buf, kernel_avx2::<true, 4>, Some(kernel_avx2::<false, 4>))
        });
    }

    /// The first-use check's premise, on AVX2: the loop nest gives the same bits at both tile
    /// widths (the AVX-512 kernel is held to that against AVX2's), and a kernel that is off by a
    /// little is caught.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_first_use_check_wants_the_same_bits_at_both_widths() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED (no AVX2/FMA)");
            return;
        }
        let narrow =
            |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe { loop_nest::<NR>(Packing::Floats, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2::<true, 2>, Some(kernel_avx2::<false, 2>)) };
        let wide = |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe {
            loop_nest::<NR_MAX>(Packing::Floats, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2::<true, 4>, Some(kernel_avx2::<false, 4>))
        };
        let off = |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe {
            loop_nest::<NR_MAX>(Packing::Floats, m, n, k, 1.0 + 1e-6, a, b, c, n as isize, true, buf, kernel_avx2::<true, 4>, Some(kernel_avx2::<false, 4>))
        };
        assert!(first_use_check(0.0, &wide, &narrow));
        assert!(!first_use_check(0.0, &off, &narrow));
        let pairs = |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe { loop_nest::<NR>(Packing::Bf16Pairs, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2_bf16_emulated::<true, 2>, None) };
        let wide_pairs =
            |m, n, k, a, b, c, buf: &mut PackBuffers| unsafe { loop_nest::<NR_MAX>(Packing::Bf16Pairs, m, n, k, 1.0, a, b, c, n as isize, true, buf, kernel_avx2_bf16_emulated::<true, 4>, None) };
        assert!(first_use_check(1e-5, &wide_pairs, &pairs));
        assert!(!first_use_check(1e-5, &narrow, &pairs), "fp32 products are not bf16 ones");
    }

    /// A product whose C spans several blocks of B packs a small A once per depth block
    /// ([`loop_nest`]'s whole A); computed block by block of B's columns instead (each call then
    /// packs A per block, as before), every element must come out with the same bits — for each
    /// packing, both layouts of A, accumulating or not — and a nest that misplaced a block of A's
    /// rows would not. (The naive products of `check_against_naive` cross the same path.)
    #[test]
    fn an_a_packed_whole_gives_the_same_bits_as_one_packed_per_block() {
        // (The halves' packing converts through F16C.)
        if !Isa::Avx2.supported() || !std::arch::is_x86_feature_detected!("f16c") {
            eprintln!("SKIPPED (no AVX2/FMA/F16C)");
            return;
        }
        // 151 rows: two blocks of MC, the last panel of rows partial; 600 deep: two depth blocks;
        // 1100 columns: past a block of B at every packing (512 columns of floats or halves, 1024
        // of bf16 pairs).
        let (m, n, k) = (151, 1100, 600);
        let mut seed = 11u64;
        let (av, bv) = (uniform(&mut seed, m * k), uniform(&mut seed, k * n));
        let nests: [(&str, Packing, Rounding, Kernel); 3] = [
            ("floats", Packing::Floats, Rounding::None, kernel_avx2::<true, 4>),
            ("bf16 pairs", Packing::Bf16Pairs, Rounding::Bf16, kernel_avx2_bf16_emulated::<true, 4>),
            ("halves", Packing::Halves, Rounding::Fp16, super::super::fp16::emulated_kernel),
        ];
        for (what, packing, round, kernel) in nests {
            let ncb = block_cols(n, KK.min(k).div_ceil(packing.slot_depths()), NR_MAX);
            assert!(n > ncb && packing.a_floats(KK, m.next_multiple_of(MR)) <= A_WHOLE, "{what}: the shape must take the whole-A path");
            for ta in [false, true] {
                let (a, b) = transposed(&av, &bv, (m, n, k), ta, false);
                for accumulate in [false, true] {
                    let c0 = uniform(&mut seed, m * n);
                    let mut buf = PackBuffers { round, ..Default::default() };
                    let mut whole = c0.clone();
                    // SAFETY: whole row-major matrices of the shapes given; the emulated kernels and the packings run on AVX2 with F16C (checked above).
                    unsafe { loop_nest::<NR_MAX>(packing, m, n, k, 0.75, a, b, whole.as_mut_ptr(), n as isize, accumulate, &mut buf, kernel, None) };
                    let mut by_blocks = c0;
                    for jc in (0..n).step_by(ncb) {
                        let b_cols = Operand { ptr: bv[jc..].as_ptr(), ..b };
                        // SAFETY: columns `jc..` of the same matrices, no wider than a block of B.
                        unsafe { loop_nest::<NR_MAX>(packing, m, ncb.min(n - jc), k, 0.75, a, b_cols, by_blocks[jc..].as_mut_ptr(), n as isize, accumulate, &mut buf, kernel, None) };
                    }
                    for (i, (w, p)) in whole.iter().zip(&by_blocks).enumerate() {
                        assert_eq!(w.to_bits(), p.to_bits(), "{what}, ta {ta}, accumulate {accumulate}: C[{}, {}] = {w} against {p}", i / n, i % n);
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_matches_the_naive_product_for_every_layout_and_edge() {
        if !Isa::Avx512.supported() {
            eprintln!("SKIPPED (no AVX-512F): the AVX-512 micro-kernel was not run; its loops were (the_32_wide_driver_matches_the_naive_product)");
            return;
        }
        check_against_naive("avx512", Rounding::None, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm(Isa::Avx512, m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    /// The vector pair packing gives the scalar [`pair_bits`] bit for bit, on both source layouts,
    /// at both panel widths and across slice and lane edges, for values that test the rounding:
    /// ties either way, the carry into the exponent, the largest finite values, subnormals,
    /// infinities and NaNs. (Without AVX512-BF16 the packing is scalar throughout, and this checks
    /// only its layout.)
    #[test]
    fn pair_packing_rounds_every_value_as_pair_bits() {
        if !bf16_conversions() {
            eprintln!("SKIPPED (no AVX512-BF16): the vector pair packing was not run; the scalar one's layout is checked below");
        }
        let special = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -(1.0 + 1.5 / 256.0), f32::MAX, -f32::MAX, 3.0e38, f32::MIN_POSITIVE / 3.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 1.999_999_9];
        // An odd depth: the last slice ends on a lone depth after its vector-packed slots.
        let (kd, lanes) = (301, 45);
        let values: Vec<f32> = (0..kd * lanes).map(|i| if i % 7 == 0 { special[i / 7 % special.len()] } else { (i as f32 * 0.618).sin() * 1e3 }).collect();
        for (sp, sq) in [(1, kd as isize), (lanes as isize, 1)] {
            let src = Panel { ptr: values.as_ptr(), sp, sq };
            // `multiple`: the slot count's rounding (16 for AMX), whose padding slots are zeros.
            let check = |width: usize, multiple: usize, pack: &dyn Fn(&mut [f32])| {
                let slots_of = |kd: usize| if multiple == 1 { pair_slots::<1>(kd) } else { pair_slots::<16>(kd) };
                // A value no slot holds: a slot the packing leaves unwritten (a padding lane's zeros) shows.
                let mut out = vec![f32::from_bits(0xDEAD_BEEF); lanes.next_multiple_of(width) * slots_of(kd)];
                pack(&mut out);
                for slice in (0..kd).step_by(KC) {
                    let slots = slots_of(KC.min(kd - slice));
                    for q in 0..lanes.next_multiple_of(width) {
                        for p2 in 0..slots {
                            let at = slice / 2 * lanes.next_multiple_of(width) + q / width * width * slots + p2 * width + q % width;
                            let want = unsafe { pair_bits(src, kd, lanes, slice + 2 * p2, q) };
                            assert_eq!(out[at].to_bits(), want.to_bits(), "sp {sp}, W {width}: lane {q}, slot {p2} of the slice at depth {slice}");
                        }
                    }
                }
            };
            check(MR, 1, &|out| unsafe { pack_block_pairs::<MR, 1>(kd, lanes, src, out) });
            check(NR, 1, &|out| unsafe { pack_block_pairs::<NR, 1>(kd, lanes, src, out) });
            check(NR_MAX, 1, &|out| unsafe { pack_block_pairs::<NR_MAX, 1>(kd, lanes, src, out) });
            check(NR_MAX, 16, &|out| unsafe { pack_block_pairs::<NR_MAX, 16>(kd, lanes, src, out) });
        }
    }

    /// The bf16 pair packing and the loop nest at two depths a slot, at both tile widths, through
    /// an AVX2 emulation of `vdpbf16ps`: everything of the AVX512-BF16 path but the instruction.
    #[test]
    fn bf16_pairs_match_the_naive_product_of_rounded_operands() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED (no AVX2/FMA)");
            return;
        }
        check_against_naive("bf16 pairs, 16 wide", Rounding::Bf16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe {
            loop_nest::<NR>(Packing::Bf16Pairs, m, n, k, alpha, a, b, c, rsc, acc, buf, kernel_avx2_bf16_emulated::<true, 2>, None)
        });
        check_against_naive("bf16 pairs, 32 wide", Rounding::Bf16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe {
            loop_nest::<NR_MAX>(Packing::Bf16Pairs, m, n, k, alpha, a, b, c, rsc, acc, buf, kernel_avx2_bf16_emulated::<true, 4>, None)
        });
        // And the path bf16 takes on this CPU (rounded in packing, fp32 kernel).
        check_against_naive("bf16 rounded in packing", Rounding::Bf16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm(Isa::Avx2, m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    /// fp16 rounding at each edge of binary16: ties to even in the normals, the subnormal grid
    /// (2⁻²⁴), flush below half of it, 65504 the largest, 65520 (halfway to 2¹⁶) and past to
    /// ±inf, NaN kept. Checked against F16C's `vcvtps2ph` (round to nearest) where the CPU has it.
    #[test]
    fn fp16_rounding_is_binary16_to_nearest_even() {
        let cases = [
            (1.0, 1.0),
            (1.0 + 1.0 / 2048.0, 1.0),                // a tie: to the even 1.0
            (1.0 + 3.0 / 2048.0, 1.0 + 2.0 / 1024.0), // a tie: to the even 1 + 2⁻⁹
            (1.0 + 1.5 / 2048.0, 1.0 + 1.0 / 1024.0), // past the tie
            (65504.0, 65504.0),
            (65519.0, 65504.0),
            (65520.0, f32::INFINITY),
            (-1e6, f32::NEG_INFINITY),
            (6.0e-8, 5.960_464_5e-8), // 2⁻²⁴, the smallest subnormal
            (2.9e-8, 0.0),            // below half of it
            (1.0e-5, 1.001_358e-5),   // on the subnormal grid: 168 · 2⁻²⁴
            (-3.0e-5, -2.998_113_6e-5),
        ];
        for (x, want) in cases {
            assert_eq!(fp16(x), want, "fp16({x:e})");
        }
        assert!(fp16(f32::NAN).is_nan());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            use std::arch::x86_64::*;
            let mut seed = 11u64;
            for _ in 0..200_000 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Every exponent fp16 has, and some past it.
                let x = f32::from_bits(((seed >> 32) as u32 & 0x807F_FFFF) | ((((seed >> 20) as u32 % 48) + 96) << 23));
                // SAFETY: F16C is present (checked above).
                let hw = unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set1_ps(x)))) };
                assert_eq!(fp16(x).to_bits(), hw.to_bits(), "fp16({x:e}) = {:e}, F16C gives {hw:e}", fp16(x));
            }
            // And the slice path (eight at a time through F16C, the tail scalar) on the listed values.
            let mut v: Vec<f32> = cases.iter().map(|c| c.0).collect();
            round_fp16(&mut v);
            assert_eq!(v, cases.iter().map(|c| c.1).collect::<Vec<_>>());
        } else {
            eprintln!("SKIPPED (no F16C): fp16 rounding checked on the listed values only");
        }
    }

    /// fp16 products: both operands rounded to fp16 as they are packed, fp32 accumulation.
    #[test]
    fn fp16_products_match_the_naive_product_of_rounded_operands() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED (no AVX2/FMA)");
            return;
        }
        check_against_naive("fp16 rounded in packing", Rounding::Fp16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm(Isa::Avx2, m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    #[test]
    fn avx512_bf16_matches_the_naive_product_of_rounded_operands() {
        if !bf16_dot_products() {
            eprintln!("SKIPPED (no AVX512-BF16): vdpbf16ps was not run; its packing and loops were (bf16_pairs_match_the_naive_product_of_rounded_operands)");
            return;
        }
        check_against_naive("avx512-bf16", Rounding::Bf16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm_bf16_pairs(m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }
}
