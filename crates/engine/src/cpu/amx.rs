//! bf16 products on Intel AMX tiles (`TDPBF16PS`): the bf16 path of the packed GEMM on CPUs with
//! AMX-BF16 (Sapphire Rapids and later), where PyTorch's bf16 autocast runs its products.
//!
//! A 32 × 32 block of C is held in four 16 × 16 fp32 tiles (`tmm0`–`tmm3`); each step loads two
//! 16-row tiles of A (`tmm4`, `tmm5`: 16 rows × 32 depths) and two 16-column tiles of B (`tmm6`,
//! `tmm7`: 32 depths × 16 columns) and issues four tile dot products. B is packed as the dot-product
//! kernel packs it (pairs of bf16 in 32-bit slots, depth-pair rows of 32 lanes,
//! [`sgemm::pack_block_pairs`]), which is AMX's layout for B; A is packed row by row
//! ([`pack_row_pairs`]): each row's 16 slots of a step side by side, as a tile row.
//!
//! The kernel is written against [`TileOps`], the five tile instructions it uses: [`Amx`] issues
//! them (inline assembly: Rust has no stable AMX intrinsics), [`TileEmulator`] computes the same
//! products in plain Rust (its order of additions and its denormals may differ from the
//! hardware's in the last bits). The tests run the packing, the loop nest and the kernel through
//! the emulator on any CPU; only the five instructions need an AMX CPU, and their own test runs
//! where there is one.
//!
//! It runs where the CPU has AMX-BF16, Linux grants the tile state, and a check at first use
//! agrees with the emulator ([`enabled`]; `CID_CPU_AMX=off` turns it off). Which products it runs
//! is measured per shape against the other kernels (`cpu::plan`): it wins the large ones. First
//! run on an AMX CPU (an Intel Xeon with AMX-BF16 and AVX512-FP16) in the session of
//! 2026-12-02 evening; `docs/performance.md` has the numbers.

use std::sync::OnceLock;

use super::sgemm::{self, block_cols, pack_block_pairs, pair_slots, Operand, PackBuffers, Panel, KC, NR_MAX};

/// Depth of a super-block: what a block of C sums in its tiles between a load and a store, and
/// the depth of a packed block of A or B. Four `KC` slices, where the fp32 kernels take two:
/// each super-block loads and stores C's tiles (8 KiB a block) around its steps, which holds
/// back deep products. On an Intel Xeon with AMX, one worker, runs paired in one process: xl's
/// first layer (`512 × 256 × 8192`) 6–11 % faster than at 512, 19–23 % slower at 256; xl's
/// whole bf16 forward 10.1 → 9.3 ms (medians of five alternating rounds; shallower products
/// within the VM's noise).
const KK: usize = 4 * KC;

/// Rows of a block of C: two 16-row tiles.
pub const MR: usize = 32;
/// Rows of a packed block of A (four blocks of C).
const MC: usize = 128;
/// Slots (bf16 pairs) a tile row holds: 64 bytes.
const STEP: usize = 16;

/// The tile instructions the kernel uses, tiles named by number: C in 0–3 (loaded where the
/// product adds to C), A in 4–5, B in 6–7, each 16 rows of 64 bytes.
pub trait TileOps {
    /// `tilezero tmmT`.
    ///
    /// # Safety
    /// Tiles must be configured.
    unsafe fn zero<const T: u8>(&mut self);
    /// `tileloadd tmmT, [ptr + stride·r]`: 16 rows of 64 bytes.
    ///
    /// # Safety
    /// `ptr` must address 16 rows of 64 bytes `stride` apart.
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize);
    /// `tdpbf16ps tmmC, tmmA, tmmB`: `C[m][n] += Σ_k A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1]`.
    ///
    /// # Safety
    /// Tiles must be configured.
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tilestored [ptr + stride·r], tmmT`.
    ///
    /// # Safety
    /// `ptr` must address 16 rows of 64 bytes `stride` apart that nothing else touches.
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize);
}

/// The AMX unit of this core, configured for eight 16 × 64-byte tiles while it lives (the
/// configuration is the thread's: an `Amx` is neither `Send` nor `Sync`).
pub struct Amx(std::marker::PhantomData<*const ()>);

/// `LDTILECFG`'s 64-byte operand: palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const ALL_16_BY_64: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    };
}

impl Amx {
    /// Configures the tiles of the calling thread.
    ///
    /// # Safety
    /// [`available`] must be true (AMX present and permitted for this process).
    pub unsafe fn configure() -> Amx {
        let cfg = TileConfig::ALL_16_BY_64;
        // SAFETY: `cfg` is a valid palette-1 configuration, 64-byte aligned; AMX is usable (the contract).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly))
        };
        Amx(std::marker::PhantomData)
    }
}

impl Drop for Amx {
    fn drop(&mut self) {
        // SAFETY: an `Amx` exists only where tiles were configured; releasing returns them to the init state.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        };
    }
}

// One arm per tile register: the register is part of the instruction.
#[cfg(target_arch = "x86_64")]
impl TileOps for Amx {
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        use std::arch::asm;
        // SAFETY: tiles configured (the contract of `configure`).
        unsafe {
            match T {
                0 => asm!("tilezero tmm0", options(nostack, nomem)),
                1 => asm!("tilezero tmm1", options(nostack, nomem)),
                2 => asm!("tilezero tmm2", options(nostack, nomem)),
                3 => asm!("tilezero tmm3", options(nostack, nomem)),
                _ => unreachable!("C tiles are 0–3"),
            }
        }
    }

    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        use std::arch::asm;
        // SAFETY: `ptr` addresses 16 rows of 64 bytes `stride` apart (the contract).
        unsafe {
            match T {
                0 => asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                1 => asm!("tileloadd tmm1, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                2 => asm!("tileloadd tmm2, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                3 => asm!("tileloadd tmm3, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                4 => asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                5 => asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                6 => asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                7 => asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)),
                _ => unreachable!("tiles are 0–7"),
            }
        }
    }

    #[inline(always)]
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        use std::arch::asm;
        // SAFETY: tiles configured; the four products the kernel issues.
        unsafe {
            match (C, A, B) {
                (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
                _ => unreachable!("the kernel multiplies tiles (0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7) only"),
            }
        }
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        use std::arch::asm;
        // SAFETY: `ptr` addresses 16 rows of 64 bytes `stride` apart that only this call writes (the contract).
        unsafe {
            match T {
                0 => asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                1 => asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                2 => asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                3 => asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) ptr, s = in(reg) stride, options(nostack)),
                _ => unreachable!("C tiles are 0–3"),
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileOps for Amx {
    unsafe fn zero<const T: u8>(&mut self) {
        unreachable!("no AMX off x86-64")
    }
    unsafe fn load<const T: u8>(&mut self, _: *const u8, _: usize) {
        unreachable!("no AMX off x86-64")
    }
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        unreachable!("no AMX off x86-64")
    }
    unsafe fn store<const T: u8>(&mut self, _: *mut u8, _: usize) {
        unreachable!("no AMX off x86-64")
    }
}

/// The tile instructions computed in Rust: per element of C, for each pair, the even product is
/// added, then the odd one (the order of the Intrinsics Guide's description; each product of two
/// bf16 is exact in fp32, so only the adds round). The hardware may group its additions
/// otherwise and flushes denormals, so it agrees to rounding, not bit for bit: the first-use
/// check and the tests allow for that.
pub struct TileEmulator {
    tiles: [[[u32; STEP]; 16]; 8],
}

impl Default for TileEmulator {
    fn default() -> Self {
        TileEmulator { tiles: [[[0; STEP]; 16]; 8] }
    }
}

impl TileOps for TileEmulator {
    unsafe fn zero<const T: u8>(&mut self) {
        self.tiles[T as usize] = [[0; STEP]; 16];
    }

    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        for (r, row) in self.tiles[T as usize].iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                // SAFETY: `ptr` addresses 16 rows of 64 bytes `stride` apart (the contract).
                *v = unsafe { (ptr.add(r * stride + 4 * j) as *const u32).read_unaligned() };
            }
        }
    }

    #[allow(clippy::needless_range_loop)] // the tiles' indices, as the instruction's pseudocode writes them
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (a, b) = (self.tiles[A as usize], self.tiles[B as usize]);
        let half = |slot: u32, odd: bool| f32::from_bits(if odd { slot & 0xFFFF_0000 } else { slot << 16 });
        for m in 0..16 {
            for n in 0..STEP {
                let mut acc = f32::from_bits(self.tiles[C as usize][m][n]);
                for k in 0..STEP {
                    acc += half(a[m][k], false) * half(b[k][n], false);
                    acc += half(a[m][k], true) * half(b[k][n], true);
                }
                self.tiles[C as usize][m][n] = acc.to_bits();
            }
        }
    }

    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        for (r, row) in self.tiles[T as usize].iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: `ptr` addresses 16 rows of 64 bytes `stride` apart (the contract).
                unsafe { (ptr.add(r * stride + 4 * j) as *mut u32).write_unaligned(*v) };
            }
        }
    }
}

/// Packs a block of A (`kd` depths × `rows` rows, element `(p, q)` of `src`) for the tiles: per
/// `KC`-deep slice, per panel of [`MR`] rows, per step of 16 slots, each row's 16 slots (bf16
/// pairs, even depth in the low half) side by side — 32 tile rows of 64 bytes. Padding rows,
/// slots and an odd last depth are zeros.
///
/// Whole steps go through AVX512-BF16's conversions where the CPU has them (every AMX CPU):
/// where the depth is contiguous, each row's 32 depths are one conversion, already its 16 slots;
/// where the rows are (the `dYᵀ` of a weight gradient), 16 rows' pair of depths is one
/// conversion, and 16 such vectors are transposed into 16 rows' slots. The scalar rounding they
/// replace took as long as the tile products.
///
/// # Safety
/// `src` must address `kd × rows` elements.
unsafe fn pack_row_pairs(kd: usize, rows: usize, src: Panel, out: &mut [f32]) {
    // SAFETY: `pair_bits` and the vector packings read only inside the `kd × rows` source; `out` holds the whole block (asserted).
    unsafe {
        let height = rows.next_multiple_of(MR);
        assert!(out.len() >= height * pair_slots::<STEP>(kd));
        for slice in (0..kd).step_by(KC) {
            let kc = KC.min(kd - slice);
            let slots = pair_slots::<STEP>(kc);
            let base = slice / 2 * height;
            // Steps whose 32 depths all lie in the slice.
            #[cfg(target_arch = "x86_64")]
            let whole = if !sgemm::bf16_conversions() || (src.sp != 1 && src.sq != 1) {
                0
            } else {
                let steps = kc / (2 * STEP);
                for q0 in (0..height).step_by(MR) {
                    let panel = out.as_mut_ptr().add(base + q0 * slots);
                    if src.sp == 1 {
                        pack_steps_depth_contiguous(steps, src.at(slice, 0), q0, rows, panel);
                    } else {
                        pack_steps_rows_contiguous(steps, src.at(slice, 0), q0, rows, panel);
                    }
                }
                steps
            };
            #[cfg(not(target_arch = "x86_64"))]
            let whole = 0;
            for q0 in (0..height).step_by(MR) {
                let panel = base + q0 * slots;
                for step in whole..slots / STEP {
                    for i in 0..MR {
                        for s in 0..STEP {
                            let (p, q) = (slice + 2 * (step * STEP + s), q0 + i);
                            out[panel + (step * MR + i) * STEP + s] = sgemm::pair_bits(src, kd, rows, p, q);
                        }
                    }
                }
            }
        }
    }
}

/// The first `steps` steps of the A panel of rows `q0..q0 + MR` from a depth-contiguous source:
/// each row's 32 depths of a step converted in one instruction. Rows from `rows` on are zeros.
///
/// # Safety
/// [`sgemm::bf16_conversions`] must hold; `src` must address `32·steps` contiguous depths of
/// `rows` rows, and `dst` room for `steps · MR · STEP` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_steps_depth_contiguous(steps: usize, src: Panel, q0: usize, rows: usize, dst: *mut f32) {
    // SAFETY: rows below `rows` are read at depths below `32·steps`; every store lies in the panel's first `steps` steps (the contract).
    unsafe {
        use std::arch::x86_64::*;
        for i in 0..MR {
            let q = q0 + i;
            for step in 0..steps {
                let out = dst.add((step * MR + i) * STEP) as *mut __m512i;
                if q < rows {
                    let row = src.ptr.offset(q as isize * src.sq + (2 * STEP * step) as isize);
                    let pairs = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row.add(16)), _mm512_loadu_ps(row));
                    _mm512_storeu_si512(out, std::mem::transmute::<__m512bh, __m512i>(pairs));
                } else {
                    _mm512_storeu_si512(out, _mm512_setzero_si512());
                }
            }
        }
    }
}

/// The first `steps` steps of the A panel of rows `q0..q0 + MR` from a rows-contiguous source:
/// per 16 rows and step, each of the 16 slots' pair of depths converted for the 16 rows at once
/// (as [`sgemm::pack_block_pairs`] packs B), then the 16 × 16 slots transposed into rows. Rows
/// from `rows` on are zeros.
///
/// # Safety
/// [`sgemm::bf16_conversions`] must hold; `src` must address `32·steps` depths of `rows`
/// contiguous rows, and `dst` room for `steps · MR · STEP` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_steps_rows_contiguous(steps: usize, src: Panel, q0: usize, rows: usize, dst: *mut f32) {
    // SAFETY: masked loads read rows below `rows` at depths below `32·steps`; every store lies in the panel's first `steps` steps (the contract).
    unsafe {
        use std::arch::x86_64::*;
        // `vcvtne2ps2bf16` puts the even depth's 16 bf16 in the low half and the odd depth's in
        // the high; this interleaves them into 16 slots.
        let interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for g in (0..MR).step_by(16) {
            let present = rows.saturating_sub(q0 + g).min(16);
            let load = ((1u32 << present) - 1) as __mmask16;
            for step in 0..steps {
                let mut slot_rows = [_mm512_setzero_si512(); 16];
                if present > 0 {
                    for (s, v) in slot_rows.iter_mut().enumerate() {
                        let p = 2 * (step * STEP + s);
                        // Wrapping: the masked-off rows of the last group may lie past the
                        // source (the loads do not read them).
                        let even = src.ptr.wrapping_offset(p as isize * src.sp + (q0 + g) as isize);
                        let odd = even.wrapping_offset(src.sp);
                        let pair = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(load, odd), _mm512_maskz_loadu_ps(load, even));
                        *v = _mm512_permutexvar_epi16(interleave, std::mem::transmute::<__m512bh, __m512i>(pair));
                    }
                }
                for (i, row) in transpose16(slot_rows).into_iter().enumerate() {
                    _mm512_storeu_si512(dst.add((step * MR + g + i) * STEP) as *mut __m512i, row);
                }
            }
        }
    }
}

/// The 16 × 16 transpose of 32-bit elements: element `j` of output `i` is element `i` of input
/// `j`. Two rounds of unpacks put four inputs' elements side by side in each 128-bit lane, two
/// rounds of lane shuffles gather the lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // t[2g], t[2g + 1]: inputs 2g and 2g + 1 interleaved (elements 0, 1 and 2, 3 of each lane).
    let t: [__m512i; 16] = std::array::from_fn(|x| if x % 2 == 0 { _mm512_unpacklo_epi32(r[x], r[x + 1]) } else { _mm512_unpackhi_epi32(r[x - 1], r[x]) });
    // u[4g + j]: lane L holds element 4L + j of inputs 4g..4g + 4.
    let u: [__m512i; 16] = std::array::from_fn(|x| {
        let (g, j) = (x / 4, x % 4);
        let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Output 4L + j: lane g from u[4g + j]'s lane L.
    std::array::from_fn(|i| {
        let (l, j) = (i / 4, i % 4);
        let (v, w) = if l % 2 == 0 {
            (_mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]), _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]))
        } else {
            (_mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]), _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]))
        };
        if l < 2 {
            _mm512_shuffle_i32x4::<0x88>(v, w)
        } else {
            _mm512_shuffle_i32x4::<0xDD>(v, w)
        }
    })
}

/// One 32 × 32 block of C: `C[0..mr, 0..nr] (+)= alpha · Ã · B̃` over a packed block's slices
/// of A panel `ir` ([`pack_row_pairs`], `height` rows) and B panel `jr` ([`pack_block_pairs`],
/// `width` lanes), `kd` depths, the sums held in the tiles across every slice. Where `alpha` is
/// 1, the tiles start from C (to add to it) and end in it, through a local block where the block
/// of C is not whole; elsewhere C gains `alpha` times the tiles' sums. Either way each element's
/// sum runs in the same order wherever its block starts, so a product split otherwise over the
/// workers gives the same bits.
///
/// # Safety
/// Tiles configured; `a` and `b` must hold those packed blocks, `c` an `mr × nr` block (row
/// stride `rsc`) that no other thread touches.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<O: TileOps>(
    ops: &mut O, kd: usize, a: *const f32, height: usize, ir: usize, b: *const f32, width: usize, jr: usize, c: *mut f32, rsc: isize, mr: usize, nr: usize, alpha: f32, add: bool,
) {
    // SAFETY: each step reads 32 rows × 16 slots of A and 16 rows × 32 slots of B inside their panels (a slice's slots are a multiple of 16); tile loads and stores address C's whole block or the local one; C is read and written inside its `mr × nr` block.
    unsafe {
        let panels = |pc: usize| {
            let slots = pair_slots::<STEP>(KC.min(kd - pc));
            // Slice `pc` starts after `pc / 2` slots of every panel (full slices are 128 slots).
            (slots, a.add(pc / 2 * height + ir * slots), b.add(pc / 2 * width + jr * slots))
        };
        // The tiles from `at` (16-row halves `row` bytes apart) or from zero, every slice's
        // products, the tiles back to `at`.
        let mut run = |at: *mut u8, row: usize, from_c: bool| {
            if from_c {
                ops.load::<0>(at, row);
                ops.load::<1>(at.add(64), row);
                ops.load::<2>(at.add(16 * row), row);
                ops.load::<3>(at.add(16 * row + 64), row);
            } else {
                ops.zero::<0>();
                ops.zero::<1>();
                ops.zero::<2>();
                ops.zero::<3>();
            }
            for pc in (0..kd).step_by(KC) {
                let (slots, ap, bp) = panels(pc);
                for step in 0..slots / STEP {
                    let a_step = ap.add(step * MR * STEP) as *const u8;
                    ops.load::<4>(a_step, 4 * STEP);
                    ops.load::<5>(a_step.add(16 * 4 * STEP), 4 * STEP);
                    let b_step = bp.add(step * STEP * NR_MAX) as *const u8;
                    ops.load::<6>(b_step, 4 * NR_MAX);
                    ops.load::<7>(b_step.add(4 * 16), 4 * NR_MAX);
                    ops.dot::<0, 4, 6>();
                    ops.dot::<1, 4, 7>();
                    ops.dot::<2, 5, 6>();
                    ops.dot::<3, 5, 7>();
                }
            }
            ops.store::<0>(at, row);
            ops.store::<1>(at.add(64), row);
            ops.store::<2>(at.add(16 * row), row);
            ops.store::<3>(at.add(16 * row + 64), row);
        };
        let from_c = add && alpha == 1.0;
        if mr == MR && nr == NR_MAX && alpha == 1.0 {
            return run(c as *mut u8, 4 * rsc as usize, from_c);
        }
        let mut block = [0.0f32; MR * NR_MAX];
        if from_c {
            for i in 0..mr {
                block[i * NR_MAX..i * NR_MAX + nr].copy_from_slice(std::slice::from_raw_parts(c.offset(i as isize * rsc), nr));
            }
        }
        run(block.as_mut_ptr() as *mut u8, 4 * NR_MAX, from_c);
        for i in 0..mr {
            let cr = std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), nr);
            for (cv, &v) in cr.iter_mut().zip(&block[i * NR_MAX..]) {
                *cv = match (alpha == 1.0, add) {
                    (true, _) => v,
                    (false, true) => *cv + alpha * v,
                    (false, false) => alpha * v,
                };
            }
        }
    }
}

/// `C[m, n] (+)= alpha · op(A) · op(B)` with both operands rounded to bf16, on tiles: the loop
/// nest of [`sgemm`](sgemm::sgemm) (blocks of B's columns, super-blocks of depth, blocks of A's
/// rows) around [`kernel`], which holds each block of C in the tiles across a super-block.
///
/// # Safety
/// As [`sgemm::sgemm`]; `ops` must be able to run (an [`Amx`] from [`Amx::configure`], or the
/// emulator).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_on_tiles<O: TileOps>(ops: &mut O, m: usize, n: usize, k: usize, alpha: f32, a: Operand, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: forwarded contract.
    unsafe { nest(ops, m, n, k, alpha, ASource::Unpacked(a), b, c, rsc, accumulate, buf) }
}

/// [`sgemm_on_tiles`] on an A packed ahead ([`PackedA`]): the loop nest reads its blocks instead
/// of packing them.
///
/// # Safety
/// As [`sgemm_on_tiles`]; `a` must hold the whole packed `m × k` A ([`pack_a_share`] by every
/// share, finished).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_on_tiles_packed_a<O: TileOps>(ops: &mut O, m: usize, n: usize, k: usize, alpha: f32, a: PackedA, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: forwarded contract.
    unsafe { nest(ops, m, n, k, alpha, ASource::Packed(a), b, c, rsc, accumulate, buf) }
}

/// Where the loop nest takes A's blocks from.
#[derive(Clone, Copy)]
enum ASource {
    /// Packed block by block as the nest reaches them, into the worker's own buffer.
    Unpacked(Operand),
    /// Packed ahead, every block.
    Packed(PackedA),
}

/// The loop nest of [`sgemm_on_tiles`] on either source of A.
///
/// # Safety
/// As [`sgemm_on_tiles`] (and [`sgemm_on_tiles_packed_a`] for a packed A).
#[allow(clippy::too_many_arguments)]
unsafe fn nest<O: TileOps>(ops: &mut O, m: usize, n: usize, k: usize, alpha: f32, a: ASource, b: Operand, c: *mut f32, rsc: isize, accumulate: bool, buf: &mut PackBuffers) {
    // SAFETY: the operands are whole matrices (the contract); packing reads inside them into buffers reserved for these blocks; each block of C written lies inside C.
    unsafe {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                sgemm::clear(m, n, c, rsc);
            }
            return;
        }
        // The tiles load and store C's rows `4·rsc` bytes apart.
        debug_assert!(rsc >= n as isize, "C's rows must not overlap");
        let kk = KK.min(k);
        let ncb = block_cols(n, kk, NR_MAX);
        let a_room = if matches!(a, ASource::Unpacked(_)) { MC.min(m).next_multiple_of(MR) * pair_slots::<STEP>(kk) } else { 0 };
        buf.reserve_floats(a_room, ncb.next_multiple_of(NR_MAX) * pair_slots::<STEP>(kk));
        let (abuf, bbuf) = buf.aligned();
        let b = Panel::of_b(b);
        for jc in (0..n).step_by(ncb) {
            let nc = ncb.min(n - jc);
            for kk in (0..k).step_by(KK) {
                let kd = KK.min(k - kk);
                pack_block_pairs::<NR_MAX, STEP>(kd, nc, b.at(kk, jc), bbuf);
                // The first super-block writes C (or adds to it when accumulating); later ones add.
                let add = accumulate || kk > 0;
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let a_block = match a {
                        ASource::Unpacked(a) => {
                            pack_row_pairs(kd, mc, Panel::of_a(a).at(kk, ic), abuf);
                            abuf.as_ptr()
                        }
                        ASource::Packed(packed) => packed.block(kk, ic, kd),
                    };
                    let (height, width) = (mc.next_multiple_of(MR), nc.next_multiple_of(NR_MAX));
                    // Blocks of C along its rows, not down its columns (the order of the fp32
                    // nest): each block stores 32 rows of 128 bytes, and along a row the next
                    // block's lines follow the last ones, which the L2 streamer fetches ahead;
                    // down a column each block's 32 lines were new store misses. On an Intel
                    // Xeon with AMX, 2 workers: xl's first weight gradient (512 × 8192 × 512)
                    // 275 → 461 GFLOP/s, complex's (1024 × 2048 × 128) 145 → 518.
                    for ir in (0..mc).step_by(MR) {
                        for jr in (0..nc).step_by(NR_MAX) {
                            let ct = c.offset((ic + ir) as isize * rsc + (jc + jr) as isize);
                            kernel(ops, kd, a_block, height, ir, bbuf.as_ptr(), width, jr, ct, rsc, MR.min(mc - ir), NR_MAX.min(nc - jr), alpha, add);
                        }
                    }
                }
            }
        }
    }
}

/// The whole of a product's A packed ahead of its products, to be shared by the workers that
/// split C's columns (`cpu::gemm`): split that way, each would pack all of A, and again for each
/// block of B its columns span ([`block_cols`]) — on xl's first weight gradient, each of two
/// workers packed its `dYᵀ` eight times.
/// Blocks as [`pack_row_pairs`] lays them out, one per super-block of depth (`KK`) and block of
/// rows (`MC`), super-block after super-block.
#[derive(Clone, Copy)]
pub struct PackedA {
    ptr: *const f32,
    /// A's rows, padded to whole tiles.
    height: usize,
}

// SAFETY: the `PackedA` the workers of a product share is only read, after every share is packed
// (`pack_a_share` writes through one of its own, never shared).
unsafe impl Send for PackedA {}
// SAFETY: as `Send`: shared reads of memory nothing writes meanwhile.
unsafe impl Sync for PackedA {}

impl PackedA {
    /// The most floats an A packed ahead may take (16 MiB): past it each worker packs its own
    /// blocks as the nest reaches them.
    pub const MAX_FLOATS: usize = 1 << 22;

    /// Floats the packed A of an `m × k` product takes.
    pub fn floats(m: usize, k: usize) -> usize {
        (0..k).step_by(KK).map(|kk| m.next_multiple_of(MR) * pair_slots::<STEP>(KK.min(k - kk))).sum()
    }

    /// Whether packing A ahead pays for an `m × n × k` product split over `workers` by columns:
    /// where there are several and each one's columns span more than one block of B, so that
    /// each would pack all of A, and again per block of B; and it fits
    /// [`MAX_FLOATS`](Self::MAX_FLOATS). (Only there: where each worker packs A once, sharing it
    /// halves the conversions but adds traffic — the packed A written, then read by each worker
    /// from L3 instead of its own L2 — and xl's first layer, `512 × 512 × 8192`, ran no faster
    /// shared on an Intel Xeon with AMX, while its first weight gradient, `512 × 8192 × 512`, ran
    /// 10–15 % faster. A lone worker spanning several blocks of B showed no difference through
    /// that machine's noise, so it keeps its 16 MiB.)
    pub fn pays(m: usize, n: usize, k: usize, workers: usize) -> bool {
        let per_worker = n.div_ceil(workers.max(1));
        workers > 1 && m > 0 && k > 0 && per_worker > block_cols(n, KK.min(k), NR_MAX) && Self::floats(m, k) <= Self::MAX_FLOATS
    }

    /// The packed A of an `m`-row product at `ptr`.
    pub fn at(ptr: *const f32, m: usize) -> Self {
        PackedA { ptr, height: m.next_multiple_of(MR) }
    }

    /// The block of super-block `kk` (`kd` deep) and rows `ic..`: the super-blocks before it are
    /// whole (`KK` deep), as are the blocks of rows before `ic` (`MC`, a multiple of `MR`).
    ///
    /// # Safety
    /// `kk` and `ic` must start a super-block and a block of rows of the packed product.
    unsafe fn block(self, kk: usize, ic: usize, kd: usize) -> *const f32 {
        // SAFETY: inside the packed A (the contract).
        unsafe { self.ptr.add(kk / KK * self.height * pair_slots::<STEP>(KK) + ic * pair_slots::<STEP>(kd)) }
    }
}

/// Packs share `share` of `shares` of A's blocks ([`PackedA`]) into `out`: every `shares`-th
/// block, so that workers packing different shares together pack all of it once.
///
/// # Safety
/// `a` must address a whole `m × k` matrix; `out` must hold [`PackedA::floats`]`(m, k)` floats,
/// whose blocks of this share nothing else touches meanwhile.
pub unsafe fn pack_a_share(m: usize, k: usize, a: Operand, out: *mut f32, share: usize, shares: usize) {
    let packed = PackedA::at(out, m);
    let a = Panel::of_a(a);
    let blocks = (0..k).step_by(KK).flat_map(|kk| (0..m).step_by(MC).map(move |ic| (kk, ic)));
    for (kk, ic) in blocks.skip(share).step_by(shares.max(1)) {
        let (kd, mc) = (KK.min(k - kk), MC.min(m - ic));
        let len = mc.next_multiple_of(MR) * pair_slots::<STEP>(kd);
        // SAFETY: the block lies inside `out` (the contract: `floats(m, k)` of them) and is this share's alone; the source block lies inside A.
        unsafe {
            let start = packed.block(kk, ic, kd);
            debug_assert!(start.offset_from(out as *const f32) as usize + len <= PackedA::floats(m, k), "block ({kk}, {ic}) past the packed A");
            let block = std::slice::from_raw_parts_mut(start as *mut f32, len);
            pack_row_pairs(kd, mc, a.at(kk, ic), block);
        }
    }
}

/// The environment variable that keeps bf16 products off AMX: `off`, or `on` (default: AMX
/// runs where the CPU has it).
pub const ENV: &str = "CID_CPU_AMX";

/// An error naming [`ENV`] where it is set to something other than `on` or `off`.
pub fn check_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(v) if !["on", "off", ""].contains(&v.to_ascii_lowercase().as_str()) => Err(format!("{ENV}={v}: expected on or off")),
        _ => Ok(()),
    }
}

/// A warning where `CID_CPU_AMX=on` asks explicitly for what this machine cannot give (no
/// AMX-BF16, or Linux refuses the tile state), so that the request is not ignored in silence.
pub fn env_warning() -> Option<String> {
    let asked = std::env::var(ENV).is_ok_and(|v| v.eq_ignore_ascii_case("on"));
    (asked && !available()).then(|| format!("{ENV}=on: this CPU has no AMX-BF16 (or Linux refused its tile state); bf16 products run on the other kernels"))
}

/// Whether this CPU has AMX-BF16 and Linux lets this process use its tiles (asked once: the
/// tile data is a large register state the kernel hands out on request).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            // (`unsafe` on the oldest Rust this crate builds with, 1.89; safe since.)
            #[allow(unused_unsafe)]
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this runs on (older ones read 0 bits).
            let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
            let has = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
            const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_ulong = 18;
            // SAFETY: a request for the tile state; it changes nothing else and fails harmlessly where unsupported.
            has && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Whether bf16 products may run on AMX: not turned off (`CID_CPU_AMX=off`), [`available`], and
/// checked once against the emulator on a product that crosses every block edge of a step. A
/// kernel that disagrees is not used, and a warning says so.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let off = std::env::var(ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off"));
        if off || !available() {
            return false;
        }
        let agrees = self_check();
        if !agrees {
            eprintln!("warning: the AMX kernel disagrees with its emulation on this CPU; bf16 products run on the other kernels");
        }
        agrees
    })
}

/// The AMX kernel and the emulator on the same product (`45 × 70 × 300`, accumulating): equal
/// up to the order of sums within an instruction.
fn self_check() -> bool {
    let (m, n, k) = (45, 70, 300);
    let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
    let (av, bv): (Vec<f32>, Vec<f32>) = ((0..m * k).map(value).collect(), (0..k * n).map(|i| value(i + 17)).collect());
    let (a, b) = (Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 }, Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 });
    let run = |amx: bool| {
        let mut c: Vec<f32> = (0..m * n).map(value).collect();
        let mut buf = PackBuffers::default();
        // SAFETY: whole matrices of these shapes; AMX available (checked by the caller).
        unsafe {
            if amx {
                sgemm_on_tiles(&mut Amx::configure(), m, n, k, 1.0, a, b, c.as_mut_ptr(), n as isize, true, &mut buf);
            } else {
                sgemm_on_tiles(&mut TileEmulator::default(), m, n, k, 1.0, a, b, c.as_mut_ptr(), n as isize, true, &mut buf);
            }
        }
        c
    };
    let (hw, emulated) = (run(true), run(false));
    hw.iter().zip(&emulated).all(|(h, e)| (h - e).abs() <= 1e-4 * e.abs().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing, loop nest and kernel on `ops`, against the naive product of the bf16-rounded
    /// operands, over sgemm's shapes (every transposition, accumulate or not; shapes that cross a
    /// tile, a block of C, `MC`, `KC` (and odd depths), `KK` and the 32-lane panels of B).
    fn check<O: TileOps>(what: &str, ops: &mut O) {
        sgemm::tests::check_against_naive(what, sgemm::Rounding::Bf16, |m, n, k, alpha, a, b, c, rsc, acc, buf| unsafe { sgemm_on_tiles(ops, m, n, k, alpha, a, b, c, rsc, acc, buf) });
    }

    #[test]
    fn the_tile_kernel_matches_the_naive_product_on_the_emulator() {
        check("emulated tiles", &mut TileEmulator::default());
    }

    /// An A packed ahead in shares (one to three) gives the bits of the nest that packs its own
    /// blocks, on the whole of C and on column blocks of it as the workers run them; over every
    /// transposition, and shapes with several blocks of rows, super-blocks of depth (the last
    /// short and odd) and blocks of B's columns.
    #[test]
    fn an_a_packed_ahead_gives_the_same_bits() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        for (m, n, k) in [(150, 600, 1201), (45, 1100, 300)] {
            let (av, bv): (Vec<f32>, Vec<f32>) = ((0..m * k).map(value).collect(), (0..k * n).map(|i| value(i + 17)).collect());
            for (ta, tb) in [(false, false), (true, false), (false, true)] {
                let a = if ta { Operand { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Operand { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
                let b = if tb { Operand { ptr: bv.as_ptr(), rs: 1, cs: k as isize } } else { Operand { ptr: bv.as_ptr(), rs: n as isize, cs: 1 } };
                let c0: Vec<f32> = (0..m * n).map(|i| value(i + 5)).collect();
                let mut buf = PackBuffers::default();
                let mut want = c0.clone();
                // SAFETY: whole matrices of these shapes.
                unsafe { sgemm_on_tiles(&mut TileEmulator::default(), m, n, k, 1.0, a, b, want.as_mut_ptr(), n as isize, true, &mut buf) };
                for shares in 1..=3 {
                    let mut packed = vec![f32::NAN; PackedA::floats(m, k)];
                    for share in 0..shares {
                        // SAFETY: A whole; `packed` holds `floats(m, k)`.
                        unsafe { pack_a_share(m, k, a, packed.as_mut_ptr(), share, shares) };
                    }
                    let mut got = c0.clone();
                    // Two column blocks, split at a panel edge, as two workers run them.
                    for (lo, hi) in [(0, 64.min(n)), (64.min(n), n)] {
                        let b = Operand { ptr: b.ptr.wrapping_offset(lo as isize * b.cs), ..b };
                        // SAFETY: A packed whole above; columns lo..hi of C.
                        unsafe { sgemm_on_tiles_packed_a(&mut TileEmulator::default(), m, hi - lo, k, 1.0, PackedA::at(packed.as_ptr(), m), b, got.as_mut_ptr().add(lo), n as isize, true, &mut buf) };
                    }
                    let differ = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                    assert_eq!(differ, 0, "{m}×{n}×{k} ta{ta} tb{tb}, A packed in {shares} shares: {differ} values differ");
                }
            }
        }
        assert!(PackedA::pays(150, 2000, 601, 2), "two workers, each over two blocks of B");
        assert!(!PackedA::pays(150, 2000, 601, 1), "one worker: nothing to share");
        assert!(!PackedA::pays(45, 1100, 300, 2), "each worker's columns in one block of B: packed once each");
        assert!(!PackedA::pays(8192, 8192, 8192, 2), "past MAX_FLOATS");
    }

    #[test]
    fn amx_matches_the_naive_product() {
        if !available() {
            eprintln!("SKIPPED (no AMX-BF16, or Linux refused the tile state): the AMX instructions were not run; the kernel around them was, on the emulator");
            return;
        }
        // SAFETY: AMX available (checked above).
        check("amx", &mut unsafe { Amx::configure() });
        assert!(self_check(), "the AMX kernel and its emulation disagree");
    }
}
