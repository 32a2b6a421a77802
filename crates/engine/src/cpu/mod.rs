//! The CPU device: GEMMs on our packed kernel ([`sgemm`], AVX2 or AVX-512; bf16 products also on
//! AVX512-BF16 or AMX, [`amx`]) or on faer, whichever measured fastest on each shape and
//! precision ([`plan`];
//! faer alone where the CPU lacks AVX2/FMA), split over the workers (`cpu/gemm.rs`), the products
//! marked `sparse_a` on the zero-skipping kernel ([`sparse`]) where it measured faster than
//! their dense kernel (the plan's choice too) and A has few enough non-zeros, and the element-wise, normalisation, pooling, attention and patch
//! kernels of [`crate::ops`] (compiled for the CPU's vector extensions with `multiversion`),
//! parallel with rayon where the work is large enough to pay for it.
//!
//! This is the reference implementation every other device is checked against, and it is
//! itself checked against finite differences in f64 (tests/gradcheck.rs). Parallel work is split
//! statically, and every sum runs in an order that depends on neither thread timing nor the
//! thread count (reductions over a fixed number of blocks; each output of a GEMM or a row kernel
//! computed whole by one worker, or, for deep narrow GEMMs, as fixed depth parts summed in
//! order): a resumed run is bit-identical, and so is a run on another
//! number of threads (tests/step.rs), as long as the GEMMs run on the packed kernel. faer picks
//! its inner kernel by block size, so its products can differ in the last bits between thread
//! counts; the kernel plan is keyed by thread count for that reason. (bf16's kernels — AMX,
//! `vdpbf16ps`, the fp32 kernels on rounded operands — each give the same bits on any number of
//! workers, but sum in orders of their own: where the plan picks another of them for another
//! thread count, the last bits differ there too.)

pub mod amx;
pub mod fp16;
mod gemm;
pub mod math;
pub mod plan;
pub mod sgemm;
pub mod sparse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use multiversion::multiversion;
use rayon::prelude::*;

use crate::device::{next_device_id, AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, Precision, View};
use crate::error::{EngineError, Result};
use crate::loss::{self, infonce_scratch_floats, LOSS_TILE};
use crate::ops::act::{self, Activation};
use crate::ops::attention::{self, AttentionScratch, AttentionShape};
use crate::ops::conv1d::{self, ConvShape};
use crate::ops::norm::{self, BatchNormArgs};
use crate::ops::patch::{self, PatchShape};
use crate::ops::pool::{self, PoolShape};
pub use gemm::gemm_strided;
use gemm::{GemmScratch, PAR_GEMM_WORK};
use plan::{GemmKey, GemmPolicy};
use sgemm::{PackBuffers, Rounding};
use sparse::{SparseLhs, StripBuffer};

/// Elements below which an element-wise or reduction kernel runs on the calling thread.
const PAR_ELEMENTS: usize = 1 << 15;

/// The GEMM kernel a [`CpuDevice`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuGemm {
    /// Our packed kernel ([`sgemm`]) on its AVX2 + FMA micro-kernel (bf16 and fp16 products:
    /// operands rounded as they are packed, fp32 FMA).
    Packed,
    /// Our packed kernel on its AVX-512F micro-kernel (bf16 and fp16 as [`CpuGemm::Packed`]).
    PackedAvx512,
    /// bf16 products only: our packed kernel on AVX512-BF16's dot products (`vdpbf16ps`, two
    /// depths per instruction, fp32 accumulation).
    Bf16Dot,
    /// bf16 products only: AMX tiles (`TDPBF16PS`, [`amx`]).
    Amx,
    /// fp16 products only: AVX512-FP16's `vfmadd231ph`, sums of 32 depths in fp16 added in fp32
    /// ([`fp16`]).
    Fp16Runs,
    /// fp16 products only: [`CpuGemm::Fp16Runs`]'s sums on a tile twice as wide (6 × 64), for
    /// twelve chains of multiply-adds instead of six (the same bits).
    Fp16RunsWide,
    /// faer's sequential kernels (any CPU; fp32 products only).
    Faer,
}

impl CpuGemm {
    /// Every kernel, in the order plans and reports list them.
    pub const ALL: [CpuGemm; 7] = [CpuGemm::Packed, CpuGemm::PackedAvx512, CpuGemm::Bf16Dot, CpuGemm::Amx, CpuGemm::Fp16Runs, CpuGemm::Fp16RunsWide, CpuGemm::Faer];

    /// `packed`, `packed-avx512`, `avx512-bf16`, `amx`, `avx512-fp16`, `avx512-fp16-wide` or
    /// `faer`, as plans, reports and `CID_CPU_GEMM` write it.
    pub fn name(self) -> &'static str {
        match self {
            CpuGemm::Packed => "packed",
            CpuGemm::PackedAvx512 => "packed-avx512",
            CpuGemm::Bf16Dot => "avx512-bf16",
            CpuGemm::Amx => "amx",
            CpuGemm::Fp16Runs => "avx512-fp16",
            CpuGemm::Fp16RunsWide => "avx512-fp16-wide",
            CpuGemm::Faer => "faer",
        }
    }

    /// The kernel of that name.
    pub fn from_name(name: &str) -> Option<CpuGemm> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Our micro-kernel's vector instruction set (the zero-skipping kernel's vectors), or `None`
    /// for faer.
    pub fn isa(self) -> Option<sgemm::Isa> {
        match self {
            CpuGemm::Packed => Some(sgemm::Isa::Avx2),
            CpuGemm::PackedAvx512 | CpuGemm::Bf16Dot | CpuGemm::Amx | CpuGemm::Fp16Runs | CpuGemm::Fp16RunsWide => Some(sgemm::Isa::Avx512),
            CpuGemm::Faer => None,
        }
    }

    /// Columns of its widest micro-tile, the unit a split across columns keeps whole: the ISA's
    /// ([`sgemm::Isa::nr`]), twice that for the wide fp16 tile, AVX2's for faer.
    pub fn tile_cols(self) -> usize {
        match (self, self.isa()) {
            (CpuGemm::Fp16RunsWide, _) => fp16::NR_WIDE,
            (_, Some(isa)) => isa.nr(),
            (_, None) => sgemm::NR,
        }
    }

    /// Whether this CPU can run it (AMX: and `CID_CPU_AMX` does not turn it off).
    pub fn supported(self) -> bool {
        match self {
            CpuGemm::Bf16Dot => sgemm::bf16_dot_products(),
            CpuGemm::Amx => sgemm::Isa::Avx512.supported() && amx::enabled(),
            CpuGemm::Fp16Runs | CpuGemm::Fp16RunsWide => fp16::supported(),
            k => k.isa().is_none_or(sgemm::Isa::supported),
        }
    }

    /// Whether it computes products of this precision: faer fp32 ones only (it cannot round
    /// operands as it packs them), the bf16 kernels bf16 ones only, the fp16 kernel fp16 ones.
    pub fn runs(self, precision: Precision) -> bool {
        match self {
            CpuGemm::Faer => precision == Precision::Fp32,
            CpuGemm::Bf16Dot | CpuGemm::Amx => precision == Precision::Bf16,
            CpuGemm::Fp16Runs | CpuGemm::Fp16RunsWide => precision == Precision::Fp16,
            CpuGemm::Packed | CpuGemm::PackedAvx512 => true,
        }
    }

    /// The kernels this CPU can run.
    pub fn available() -> Vec<CpuGemm> {
        Self::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// The kernels a product of this precision is measured on here.
    pub fn candidates(precision: Precision) -> Vec<CpuGemm> {
        Self::ALL.into_iter().filter(|k| k.runs(precision) && k.supported()).collect()
    }

    /// This kernel where it runs `precision`, else the kernel that runs it in its place: a bf16
    /// or fp16 kernel's other products go on the AVX-512 kernel. (Faer runs no rounded products;
    /// a device refuses that precision on it.)
    pub fn for_precision(self, precision: Precision) -> CpuGemm {
        match self {
            CpuGemm::Bf16Dot | CpuGemm::Amx | CpuGemm::Fp16Runs | CpuGemm::Fp16RunsWide if !self.runs(precision) => CpuGemm::PackedAvx512,
            k => k,
        }
    }

    /// The nearest kernel this CPU runs to one it does not (a plan saved on another machine): AMX
    /// and AVX512-BF16 fall back to each other and to AVX-512's, AVX-512's to AVX2's, ours to
    /// faer; the fp16 kernels (both there or neither) to AVX-512's.
    pub fn nearest_supported(self) -> CpuGemm {
        let chain: &[CpuGemm] = match self {
            CpuGemm::Amx => &[CpuGemm::Amx, CpuGemm::Bf16Dot, CpuGemm::PackedAvx512, CpuGemm::Packed],
            CpuGemm::Bf16Dot => &[CpuGemm::Bf16Dot, CpuGemm::Amx, CpuGemm::PackedAvx512, CpuGemm::Packed],
            CpuGemm::Fp16Runs => &[CpuGemm::Fp16Runs, CpuGemm::PackedAvx512, CpuGemm::Packed],
            CpuGemm::Fp16RunsWide => &[CpuGemm::Fp16RunsWide, CpuGemm::PackedAvx512, CpuGemm::Packed],
            CpuGemm::PackedAvx512 => &[CpuGemm::PackedAvx512, CpuGemm::Packed],
            CpuGemm::Packed => &[CpuGemm::Packed],
            CpuGemm::Faer => &[],
        };
        chain.iter().copied().find(|k| k.supported()).unwrap_or(CpuGemm::Faer)
    }

    /// How this kernel runs products of a reduced precision (bf16 or fp16), for reports.
    pub fn products(self, precision: Precision) -> String {
        let kernel = match self {
            CpuGemm::Amx => return "AMX tiles (TDPBF16PS) on operands packed as bf16 pairs, fp32 accumulation".into(),
            CpuGemm::Bf16Dot => return "AVX512-BF16 dot products (vdpbf16ps) on operands packed as bf16 pairs, fp32 accumulation".into(),
            CpuGemm::Fp16Runs => return format!("AVX512-FP16 (vfmadd231ph) on operands packed as binary16, sums of {} depths in fp16 added in fp32", fp16::RUN),
            CpuGemm::Fp16RunsWide => return format!("AVX512-FP16 (vfmadd231ph) on a 6 × 64 tile, sums of {} depths in fp16 added in fp32", fp16::RUN),
            CpuGemm::Faer => return format!("not run (faer has no {precision} products)"),
            CpuGemm::Packed => "AVX2",
            CpuGemm::PackedAvx512 => "AVX-512",
        };
        format!("operands rounded to {precision} as they are packed, fp32 FMA on the {kernel} kernel")
    }

    /// Our widest fp32 kernel this CPU runs (the default of products outside the plan), or
    /// faer on a CPU with neither.
    pub fn best_packed() -> CpuGemm {
        [CpuGemm::PackedAvx512, CpuGemm::Packed].into_iter().find(|k| k.supported()).unwrap_or(CpuGemm::Faer)
    }

    /// The kernel of bf16 products outside the plan (attention heads): AMX, else AVX512-BF16's
    /// dot products, else [`best_packed`](Self::best_packed).
    pub fn best_bf16() -> CpuGemm {
        [CpuGemm::Amx, CpuGemm::Bf16Dot].into_iter().find(|k| k.supported()).unwrap_or_else(Self::best_packed)
    }

    /// The kernel of fp16 products outside the plan: AVX512-FP16's, else
    /// [`best_packed`](Self::best_packed).
    pub fn best_fp16() -> CpuGemm {
        Some(CpuGemm::Fp16Runs).filter(|k| k.supported()).unwrap_or_else(Self::best_packed)
    }
}

/// Device memory in one `Vec<f32>`, plus per-worker scratch (GEMM packing, sparse strips,
/// attention tiles) and scratch for the loss and reductions. All scratch grows during the first
/// steps and is then reused: a step allocates nothing.
pub struct CpuDevice {
    id: u32,
    mem: Vec<f32>,
    scratch: Vec<f32>,
    reduce: Vec<f64>,
    transpose_scratch: Vec<f32>,
    /// Packing buffers of our GEMM kernels (one per worker) and what a product's workers share.
    gemm_scratch: GemmScratch,
    /// The compressed left operand of a zero-skipping GEMM, and one strip buffer per worker.
    sparse: SparseLhs,
    strips: Vec<StripBuffer>,
    attention: Vec<AttentionScratch>,
    /// The kernel of products outside the plan, and of all products under a fixed policy.
    gemm: CpuGemm,
    policy: GemmPolicy,
    /// The kernel of each product shape this device has run (a copy of the process's choices:
    /// a lookup here takes no lock).
    plan: HashMap<GemmKey, CpuGemm>,
    /// For products whose A may hold zeros, whether they run on the zero-skipping strips (a copy
    /// of the process's choices, as `plan`).
    strips_plan: HashMap<GemmKey, bool>,
    /// A resumed run's plan has kernels and no choice of the strips: saved before the strips
    /// were measured (every product that reaches them records its choice now, under a fixed
    /// kernel too), so its run took them wherever A was sparse enough, and this one does.
    strips_by_density: bool,
    /// bf16 or fp16 products: every pack buffer rounds the operands it packs (the loss's products
    /// excepted).
    precision: Precision,
    threads: usize,
    /// Set on a lane ([`Device::for_each_lane`]): the memory of the device it is a lane of
    /// (start, length), used in place of its own (empty) `mem`.
    shared: Option<(SendPtr, usize)>,
    /// This device's lanes, made on the first call that runs lanes at once and kept (their
    /// scratch grows once, as the device's does).
    lanes: Vec<CpuDevice>,
}

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuDevice {
    /// Uses the current rayon pool (size it with `rayon::ThreadPoolBuilder`) and the GEMM policy
    /// of `CID_CPU_GEMM` ([`GemmPolicy::from_env`]: by default each shape's kernel is measured).
    pub fn new() -> Self {
        Self::with_policy(GemmPolicy::from_env())
    }

    /// A device running every product on the given GEMM kernel.
    ///
    /// # Panics
    /// A kernel this CPU cannot run ([`CpuGemm::supported`]).
    pub fn with_gemm(gemm: CpuGemm) -> Self {
        Self::with_policy(GemmPolicy::Fixed(gemm))
    }

    /// A device choosing its GEMM kernels by `policy`.
    ///
    /// # Panics
    /// A policy that needs a kernel this CPU cannot run.
    pub fn with_policy(policy: GemmPolicy) -> Self {
        Self::with_policy_on(policy, rayon::current_num_threads())
    }

    /// A device whose kernels split their work into `threads` parts.
    fn with_policy_on(policy: GemmPolicy, threads: usize) -> Self {
        // The kernel named, not the one it runs fp32 on (a fixed bf16 kernel's is AVX-512's).
        // Where measuring, the defaults are kernels this CPU runs.
        if let GemmPolicy::Fixed(k) = policy {
            assert!(k.supported(), "the {} GEMM kernel does not run on this CPU", k.name());
        }
        let gemm = policy.default_kernel(Precision::Fp32);
        let per_worker = || (0..threads).map(|_| Default::default()).collect();
        CpuDevice {
            id: next_device_id(),
            mem: Vec::new(),
            scratch: Vec::new(),
            reduce: Vec::new(),
            transpose_scratch: Vec::new(),
            gemm_scratch: GemmScratch { packs: (0..threads).map(|_| PackBuffers::default()).collect(), shared: Vec::new() },
            sparse: SparseLhs::default(),
            strips: per_worker(),
            attention: (0..threads).map(|_| AttentionScratch::default()).collect(),
            gemm,
            policy,
            plan: HashMap::new(),
            strips_plan: HashMap::new(),
            strips_by_density: false,
            precision: Precision::Fp32,
            threads,
            shared: None,
            lanes: Vec::new(),
        }
    }

    /// A lane of this device ([`Device::for_each_lane`]) on `threads` workers: the same identity
    /// (its views are this device's), kernel policy, plan and precision, its own scratch.
    fn lane(&self, threads: usize) -> CpuDevice {
        let mut lane = CpuDevice::with_policy_on(self.policy, threads);
        lane.id = self.id;
        lane.gemm = self.gemm;
        lane.plan = self.plan.clone();
        (lane.strips_plan, lane.strips_by_density) = (self.strips_plan.clone(), self.strips_by_density);
        lane.apply_precision(self.precision);
        lane
    }

    fn apply_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.gemm = self.policy.default_kernel(precision);
        for p in &mut self.gemm_scratch.packs {
            p.round = rounding(precision);
        }
    }

    /// The start of the memory views index: the device's own, or on a lane its parent's.
    fn base(&mut self) -> *mut f32 {
        match self.shared {
            Some((p, _)) => p.0,
            None => self.mem.as_mut_ptr(),
        }
    }

    /// [`base`](Self::base) for reading.
    fn base_for_reading(&self) -> *const f32 {
        self.shared.map_or(self.mem.as_ptr(), |(p, _)| p.0 as *const f32)
    }

    /// Values of memory views may address.
    fn mem_len(&self) -> usize {
        self.shared.map_or(self.mem.len(), |(_, n)| n)
    }

    /// The kernel of products outside the plan (attention heads, the loss), and of every product
    /// under a fixed policy.
    pub fn gemm_kernel(&self) -> CpuGemm {
        self.gemm
    }

    /// Bytes of the device's tensors: the arenas (parameters, gradients, Adam moments, running
    /// statistics) and the activation buffers, without the scratch that
    /// [`Device::allocated_bytes`] adds (packing, strips, reductions, lanes' own scratch).
    pub fn tensor_bytes(&self) -> usize {
        4 * self.mem_len()
    }

    /// How this device picks the kernel of each product.
    pub fn gemm_policy(&self) -> GemmPolicy {
        self.policy
    }

    /// The kernel a product of this shape split over `parts` workers runs on here, if chosen.
    pub fn planned_kernel(&self, g: Gemm, parts: usize) -> Option<CpuGemm> {
        let key = GemmKey::of(g, parts, self.precision);
        match self.policy {
            GemmPolicy::Fixed(_) => Some(self.gemm),
            GemmPolicy::Measure => self.plan.get(&key).copied().or_else(|| plan::chosen(key)),
        }
    }

    /// Checks a view belongs to this device and lies in its memory.
    fn check(&self, v: View) {
        assert!(v.device() == self.id, "a view of device {} used on device {}", v.device(), self.id);
        assert!(v.end() <= self.mem_len(), "view {v:?} outside the {} values of device memory", self.mem_len());
    }

    /// Direct read access (tests, checkpoints).
    pub fn slice(&self, v: View) -> &[f32] {
        self.check(v);
        let base = self.base_for_reading();
        // SAFETY: in bounds (checked); on a lane no other lane writes what this one reads
        // (`for_each_lane`'s contract).
        unsafe { std::slice::from_raw_parts(base.add(v.offset()), v.len()) }
    }

    pub fn slice_mut(&mut self, v: View) -> &mut [f32] {
        self.check(v);
        // SAFETY: in bounds (checked); `&mut self` excludes every other slice of this device,
        // and on a lane no other lane touches what this one writes (`for_each_lane`'s contract).
        unsafe { std::slice::from_raw_parts_mut(self.base().add(v.offset()), v.len()) }
    }

    /// `M` output views and `N` input views at once, without allocating.
    ///
    /// # Panics
    /// Where an output overlaps another output or any input: two mutable slices of the same
    /// memory (or one mutable and one shared) would be undefined behaviour. Inputs may overlap
    /// each other.
    fn views<const M: usize, const N: usize>(&mut self, outs: [View; M], ins: [View; N]) -> ([&mut [f32]; M], [&[f32]; N]) {
        for (i, o) in outs.iter().enumerate() {
            self.check(*o);
            for p in &outs[i + 1..] {
                assert!(o.disjoint(p), "kernel outputs {o:?} and {p:?} overlap");
            }
            for p in &ins {
                assert!(o.disjoint(p), "kernel output {o:?} overlaps input {p:?}");
            }
        }
        for p in &ins {
            self.check(*p);
        }
        let base = self.base();
        // SAFETY: every range is in bounds (checked), every output is disjoint from every other
        // view (checked), so no mutable slice aliases another slice (nor, on a lane, one of
        // another lane: `for_each_lane`'s contract).
        unsafe { (outs.map(|o| std::slice::from_raw_parts_mut(base.add(o.offset()), o.len())), ins.map(|i| std::slice::from_raw_parts(base.add(i.offset()) as *const f32, i.len()))) }
    }

    /// One output view and `N` input views.
    fn split<const N: usize>(&mut self, out: View, ins: [View; N]) -> (&mut [f32], [&[f32]; N]) {
        let ([o], i) = self.views([out], ins);
        (o, i)
    }

    /// Workers for an element-wise pass over `elements` values.
    fn parts(&self, elements: usize) -> usize {
        if elements >= PAR_ELEMENTS && self.threads > 1 {
            self.threads
        } else {
            1
        }
    }

    /// A zeroed f64 scratch of `n` values (grown once).
    fn take_reduce(&mut self, n: usize) -> Vec<f64> {
        let mut r = take_grown(&mut self.reduce, n);
        r[..n].fill(0.0);
        r
    }
}

/// How a precision rounds the operands of the products.
pub fn rounding(precision: Precision) -> Rounding {
    match precision {
        Precision::Fp32 => Rounding::None,
        Precision::Bf16 => Rounding::Bf16,
        Precision::Fp16 => Rounding::Fp16,
    }
}

/// Whether `trainer.precision: 16` runs on this CPU: where it has AVX512-FP16 (the CPUs whose
/// PyTorch autocasts to fp16), or anywhere with `CID_CPU_FP16=emulate` (operands rounded to fp16,
/// fp32 sums, loss scaling — not the sums in fp16 runs of AVX512-FP16's kernel, [`fp16`], nor
/// its speed: for tests and study).
/// Elsewhere bf16 is the CPU's mixed precision.
pub fn fp16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    let hardware = std::arch::is_x86_feature_detected!("avx512fp16");
    #[cfg(not(target_arch = "x86_64"))]
    let hardware = false;
    hardware || fp16_emulation() == Ok(true)
}

/// `CID_CPU_FP16`: unset (or empty), or `emulate`; any other value is an error naming it (a misspelt
/// setting is not silently no setting).
pub fn fp16_emulation() -> std::result::Result<bool, String> {
    match std::env::var("CID_CPU_FP16") {
        // Empty is unset, as for CID_CPU_GEMM and CID_CPU_AMX (`CID_CPU_FP16= cmd`).
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(v) if v.is_empty() => Ok(false),
        Ok(v) if v == "emulate" => Ok(true),
        Ok(v) => Err(format!("CID_CPU_FP16={v:?}: expected `emulate` (or unset)")),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!("CID_CPU_FP16={v:?}: expected `emulate` (or unset)")),
    }
}

/// Takes a scratch buffer out of the device (so it can be used beside borrows of the device's
/// memory), grown to at least `n` values: it grows in the first steps and is then reused (the
/// caller puts it back).
fn take_grown<T: Copy + Default>(slot: &mut Vec<T>, n: usize) -> Vec<T> {
    let mut v = std::mem::take(slot);
    if v.len() < n {
        v.resize(n, T::default());
    }
    v
}

/// Runs `f(first_column, part)` over `data` laid out column after column (`column_len` values
/// each, `data.len() / column_len` columns), split into at most `parts` parts of whole
/// `align`-wide groups of columns (in parallel where there are several): the column-wise twin of
/// [`for_row_blocks`], for work in which every column is one worker's.
fn for_column_parts(parts: usize, data: &mut [f32], column_len: usize, align: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let cols = data.len() / column_len.max(1);
    let per = cols.div_ceil(parts.max(1)).next_multiple_of(align.max(1));
    if parts <= 1 || per >= cols {
        f(0, data);
    } else {
        data.par_chunks_mut(per * column_len).enumerate().for_each(|(i, part)| f(i * per, part));
    }
}

/// Rows per part when `rows` rows are split into `parts` parts (the last may be shorter).
fn rows_per_part(rows: usize, parts: usize) -> usize {
    rows.div_ceil(parts.max(1)).max(1)
}

/// Runs `f(first_row, block)` over blocks of whole rows of `data` (one per part, in parallel
/// where `parts > 1`).
fn for_row_blocks(parts: usize, data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let per = rows_per_part(data.len() / cols.max(1), parts);
    if parts <= 1 {
        f(0, data);
    } else {
        data.par_chunks_mut(per * cols).enumerate().for_each(|(i, c)| f(i * per, c));
    }
}

/// Splits the `n` rows of a block that starts at row `r0` at the boundaries of groups of
/// `group_rows` rows (BatchNorm's per-view statistics: a block may straddle two views) and runs
/// `f(group, rows)` on each piece, `rows` counted from the block's start.
fn for_each_group_span(r0: usize, n: usize, group_rows: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
    let mut r = 0;
    while r < n {
        let g = (r0 + r) / group_rows;
        let end = ((g + 1) * group_rows - r0).min(n);
        f(g, r..end);
        r = end;
    }
}

/// Runs `f(sample, out)` for each sample's `len` outputs of `data` (blocks of samples, one per
/// part, in parallel where `parts > 1`); `f` reads its inputs by the sample index.
fn for_each_sample(parts: usize, data: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if len == 0 {
        return;
    }
    for_row_blocks(parts, data, len, |s0, block| block.chunks_exact_mut(len).enumerate().for_each(|(k, out)| f(s0 + k, out)));
}

/// As [`for_row_blocks`] over two outputs of the same row count.
fn for_row_blocks2(parts: usize, a: &mut [f32], a_cols: usize, b: &mut [f32], b_cols: usize, f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send) {
    assert!(a_cols > 0 && b_cols > 0 && a.len() / a_cols == b.len() / b_cols, "two outputs of different row counts");
    let per = rows_per_part(a.len() / a_cols.max(1), parts);
    if parts <= 1 {
        f(0, a, b);
    } else {
        a.par_chunks_mut(per * a_cols).zip(b.par_chunks_mut(per * b_cols)).enumerate().for_each(|(i, (x, y))| f(i * per, x, y));
    }
}

/// `vzeroupper` on the calling thread: faer's AVX-512 kernels return with the vector
/// registers' upper halves in use, and until they are cleared the code after them runs slowly
/// (on an Intel Xeon with AMX, libm's `exp` after a faer product took ~190 ns a call instead
/// of ~20: the probe's evaluation ran 8.4 s instead of 2.0). For code after a faer product
/// that is compiled for SSE. Our own kernels need none: the compiler clears the state where a
/// function compiled for AVX returns.
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        /// # Safety
        /// The CPU must have AVX.
        #[target_feature(enable = "avx")]
        unsafe fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: AVX is present (checked above).
        unsafe { zero_upper() }
    }
}

/// Runs `f` (a training step) on this thread while another worker of the current rayon pool polls
/// for the jobs of its parallel kernels ([`poll_for_work`]), until `f` returns or unwinds.
///
/// Why: a step's ~60 parallel kernels are each a few tens of µs apart, and a rayon worker that
/// finds nothing to do for a few µs goes to sleep; on a virtual machine waking it took 30–55 µs
/// per kernel (the 2-core Zen 4 VM of docs/performance.md, `examples/region_time.rs`), a large
/// part of a CNN step's loss to its second worker.
///
/// One poller, whatever the pool's size: it is pushed (a `rayon::join` half: nothing allocated)
/// before the step's first kernel, and other workers steal the oldest job of a queue first, so
/// it is taken before any of the step's kernel jobs can leave this thread, and no worker can be
/// inside one of them when it takes it: a poller never runs on top of a frame the step waits
/// for. (A second poller could, with three or more workers: taken by a worker inside a kernel
/// job stolen from the first poller, it would keep that job from finishing until the step did.)
/// In a larger pool the other workers sleep and wake as rayon has them. Polling is skipped
/// outside a rayon pool, with one worker, where `workers` or the pool exceed the cores this
/// process may run on (a poller would take a core the step needs), and on devices without host
/// workers (`workers` 0).
pub fn with_workers_polling<R: Send>(workers: usize, f: impl FnOnce() -> R + Send) -> R {
    let caller = rayon::current_thread_index();
    let pool = rayon::current_num_threads();
    if workers < 2 || pool < 2 || caller.is_none() || pool.max(workers) > cores() {
        return f();
    }
    /// Stops the poller when the step returns or unwinds (a panic would otherwise leave it
    /// polling, and the join waiting on it, forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let stop = AtomicBool::new(false);
    let (out, ()) = rayon::join(
        || {
            let _stop = StopOnDrop(&stop);
            f()
        },
        || poll_for_work(&stop, caller),
    );
    out
}

/// The cores this process may run on (read once).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The poller: runs the pool's pending jobs (the other halves of the step's parallel kernels) as
/// they come, polling in between, until `stop`. Every 64 empty polls it yields the core to any
/// other thread that wants it, as rayon's own idle loop does before it sleeps. `yield_now` also
/// runs jobs injected into the pool from outside (the data loader's batch builds when they share
/// it): the step's end then waits for the one it is running. The step's own thread takes the
/// poller back when no worker has stolen it by the time it waits on a kernel (or returns); there
/// it returns at once: polling on the thread that must set `stop` would never end.
fn poll_for_work(stop: &AtomicBool, caller: Option<usize>) {
    if rayon::current_thread_index() == caller {
        return;
    }
    let mut idle = 0u32;
    while !stop.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
        } else {
            idle = idle.wrapping_add(1);
            if idle.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
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
// SAFETY: only used to hand disjoint blocks of one matrix to the workers of one parallel kernel,
// and a device's memory to its lanes, which write disjoint views (`Device::for_each_lane`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl CpuDevice {
    /// Runs `f(pair, pack, scratch)` for every (sample, head) of an attention call, the pairs
    /// split statically over the workers.
    fn for_attention_pairs(&mut self, pairs: usize, f: impl Fn(usize, &mut PackBuffers, &mut AttentionScratch) + Sync + Send) {
        let (mut packs, mut scratch) = (std::mem::take(&mut self.gemm_scratch.packs), std::mem::take(&mut self.attention));
        let parts = self.threads.min(pairs).max(1);
        let per = pairs.div_ceil(parts);
        let run = |(t, (pack, sc)): (usize, (&mut PackBuffers, &mut AttentionScratch))| {
            for pair in t * per..((t + 1) * per).min(pairs) {
                f(pair, pack, sc);
            }
        };
        if parts == 1 {
            run((0, (&mut packs[0], &mut scratch[0])));
        } else {
            packs[..parts].par_iter_mut().zip(scratch[..parts].par_iter_mut()).enumerate().for_each(run);
        }
        (self.gemm_scratch.packs, self.attention) = (packs, scratch);
    }
}

impl Device for CpuDevice {
    fn host_workers(&self) -> usize {
        self.threads
    }

    /// With at least one worker per lane, each lane is a [`CpuDevice`] on `threads / lanes`
    /// workers over this device's memory, all run at once; otherwise the lanes run one after
    /// another on this device. (Kernels compute the same bits on any number of workers, so
    /// either way the lanes' results are the same — on one kernel: the plan is keyed by the
    /// workers a product is split over, and where it picks another kernel for fewer workers
    /// (faer, or for bf16 another of AMX, `vdpbf16ps` and the fp32 kernels, which sum in other
    /// orders) they may differ in the last bits, as between thread counts.)
    unsafe fn for_each_lane<F: Fn(usize, &mut Self) + Sync>(&mut self, lanes: usize, f: F) {
        let per_lane = self.threads / lanes.max(1);
        if lanes < 2 || per_lane == 0 {
            for lane in 0..lanes {
                f(lane, self);
            }
            return;
        }
        if self.lanes.first().is_some_and(|l| l.threads != per_lane) {
            self.lanes.clear();
        }
        while self.lanes.len() < lanes {
            let lane = self.lane(per_lane);
            self.lanes.push(lane);
        }
        // (Set on every call: the memory moves when it grows, the precision may change.)
        let memory = (SendPtr(self.base()), self.mem_len());
        let precision = self.precision;
        for lane in &mut self.lanes[..lanes] {
            lane.shared = Some(memory);
            if lane.precision != precision {
                lane.apply_precision(precision);
            }
        }
        /// Takes the lanes' pointer to the memory away when they are done (or unwind): the
        /// memory may move when the device next grows.
        struct Detach<'a>(&'a mut [CpuDevice]);
        impl Drop for Detach<'_> {
            fn drop(&mut self) {
                self.0.iter_mut().for_each(|lane| lane.shared = None);
            }
        }
        let running = Detach(&mut self.lanes[..lanes]);
        running.0.par_iter_mut().enumerate().for_each(|(i, lane)| f(i, lane));
    }

    fn alloc(&mut self, len: usize) -> Result<View> {
        if self.shared.is_some() {
            return Err(EngineError::Device("a lane of the CPU device allocates nothing (its memory is its device's)".into()));
        }
        let need = self.mem.len().checked_add(len).filter(|n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize));
        let Some(need) = need else {
            return Err(EngineError::OutOfMemory { bytes: (self.mem.len() as u128 + len as u128) * 4, reason: "more than the address space".into() });
        };
        // Everything the device holds lives in this one arena, so its size after the growth is
        // what the budget must allow (under overcommit a failed reservation would surface only
        // as the OOM killer when the pages are touched).
        limits::check(|| format!("the CPU device's buffers ({} floats, {} more)", need, len), need as u128 * 4)?;
        let v = View::new(self.id, self.mem.len(), len);
        if need > self.mem.capacity() {
            // Grow into a fresh region advised for huge pages before any page of it is touched.
            let mut grown = Vec::new();
            grown
                .try_reserve_exact(need.max(2 * self.mem.capacity()))
                .or_else(|_| grown.try_reserve_exact(need))
                .map_err(|e| EngineError::OutOfMemory { bytes: need as u128 * 4, reason: e.to_string() })?;
            advise_huge_pages(&mut grown);
            grown.extend_from_slice(&self.mem);
            self.mem = grown;
        }
        self.mem.resize(need, 0.0);
        Ok(v)
    }

    fn allocated_bytes(&self) -> usize {
        // Lengths, not capacities: growth headroom of the Vecs is reserved address space that is never
        // touched, so it is not resident memory.
        4 * (self.mem.len() + self.scratch.len() + self.transpose_scratch.len() + self.gemm_scratch.shared.len())
            + 8 * self.reduce.len()
            + self.gemm_scratch.packs.iter().map(PackBuffers::allocated_bytes).sum::<usize>()
            + self.sparse.allocated_bytes()
            + self.strips.iter().map(StripBuffer::allocated_bytes).sum::<usize>()
            + self.attention.iter().map(AttentionScratch::allocated_bytes).sum::<usize>()
            + self.lanes.iter().map(Device::allocated_bytes).sum::<usize>()
    }

    fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if !self.policy.default_kernel(precision).runs(precision) {
            return Err(EngineError::Device(if sgemm::supported() {
                format!("{precision} products run on the packed GEMM kernel, and CID_CPU_GEMM=faer excludes it")
            } else {
                format!("{precision} products run on the packed GEMM kernel, which needs AVX2 and FMA; this CPU lacks them")
            }));
        }
        self.apply_precision(precision);
        Ok(())
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    /// The device's choices and its lanes' (whose products split over fewer workers).
    fn kernel_plan(&self) -> String {
        let (mut all, mut strips) = (self.plan.clone(), self.strips_plan.clone());
        for lane in &self.lanes {
            all.extend(lane.plan.iter().map(|(k, v)| (*k, *v)));
            strips.extend(lane.strips_plan.iter().map(|(k, v)| (*k, *v)));
        }
        plan::to_text_with_strips(&all, &strips)
    }

    fn pin_kernel_plan(&mut self, text: &str) -> std::result::Result<(), String> {
        let pinned = plan::parse_plan(text)?;
        if self.policy == GemmPolicy::Measure {
            plan::pin(&pinned);
            // A plan with kernels and no strips entry was saved before the strips were
            // measured: its run took them by A's density, so the resumed run does too.
            self.strips_by_density = pinned.strips.is_empty() && !pinned.kernels.is_empty();
            self.strips_plan.extend(pinned.strips);
            self.plan.extend(pinned.kernels);
            // Lanes are made again, from the pinned plan.
            self.lanes.clear();
        }
        Ok(())
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "upload of {} values into a view of {}", src.len(), dst.len());
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

    fn scale_add(&mut self, dst: View, scale: f32, src: View) {
        let parts = self.parts(dst.len());
        let (d, [s]) = self.split(dst, [src]);
        assert_eq!(d.len(), s.len(), "scale_add of views of {} and {} values", d.len(), s.len());
        for_row_blocks(parts, d, 1, |i0, d| d.iter_mut().zip(&s[i0..]).for_each(|(d, &s)| *d = scale * *d + s));
    }

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View) {
        self.product(g, c, a, b);
    }

    fn bias_act_forward(&mut self, y: View, bias: View, cols: usize, relu: bool, dropout: Option<Dropout>) {
        assert!(cols > 0, "a row of no columns");
        let parts = self.parts(y.len());
        let (ys, [bs]) = self.split(y, [bias]);
        assert!(bs.len() == cols && ys.len() % cols == 0);
        let drop = Dropout::parts(dropout);
        for_row_blocks(parts, ys, cols, |row0, block| act::bias_act_rows(block, bs, row0, relu, drop));
    }

    fn act_backward(&mut self, dy: View, h: View, scale: f32) {
        let parts = self.parts(dy.len());
        let (ds, [hs]) = self.split(dy, [h]);
        assert_eq!(ds.len(), hs.len());
        // Element-wise: blocks of one-value "rows".
        for_row_blocks(parts, ds, 1, |i0, d| act::relu_backward_rows(d, &hs[i0..i0 + d.len()], scale));
    }

    fn bias_grad(&mut self, db: View, dy: View, cols: usize, accumulate: bool) {
        assert!(cols > 0, "a row of no columns");
        let parts = self.parts(dy.len());
        let (dbs, [dys]) = self.split(db, [dy]);
        assert!(dbs.len() == cols && dys.len() % cols == 0);
        // Columns split among the workers, whole strips each: every column is summed by one
        // worker in row order, so the sums do not depend on how many there are.
        for_column_parts(parts, dbs, 1, math::STRIP_COLS, |c_first, d| act::bias_grad_rows(d, dys, cols, c_first, accumulate));
    }

    fn act_forward(&mut self, pre: View, out: View, bias: Option<View>, cols: usize, act: Activation, dropout: Option<Dropout>) {
        assert!(cols > 0, "a row of no columns");
        let parts = self.parts(pre.len());
        let bias = bias.unwrap_or(pre.prefix(0));
        let ([ps, os], [bs]) = self.views([pre, out], [bias]);
        assert!(ps.len() == os.len() && ps.len() % cols == 0 && (bs.is_empty() || bs.len() == cols));
        let bias = (!bs.is_empty()).then_some(bs);
        let drop = Dropout::parts(dropout);
        for_row_blocks2(parts, ps, cols, os, cols, |row0, p, o| act::act_forward_rows(p, o, bias, cols, row0, act, drop));
    }

    fn act_backward_pre(&mut self, d: View, pre: View, cols: usize, act: Activation, dropout: Option<Dropout>) {
        assert!(cols > 0, "a row of no columns");
        let parts = self.parts(d.len());
        let (ds, [ps]) = self.split(d, [pre]);
        assert!(ds.len() == ps.len() && ds.len() % cols == 0);
        let drop = Dropout::parts(dropout);
        for_row_blocks(parts, ds, cols, |row0, d| act::act_backward_rows(d, &ps[row0 * cols..row0 * cols + d.len()], cols, row0, act, drop));
    }

    fn add_layernorm_forward(&mut self, a: View, b: View, dropout: Option<Dropout>, sum: View, out: View, stats: View, gamma: View, beta: View, cols: usize, eps: f32) {
        assert!(cols > 0, "a row of no columns");
        let rows = a.len() / cols;
        let parts = self.parts(a.len());
        let ([ss, os, st], [as_, bs, gs, bts]) = self.views([sum, out, stats], [a, b, gamma, beta]);
        assert!(as_.len() == rows * cols && bs.len() == as_.len() && ss.len() == as_.len() && os.len() == as_.len() && st.len() == 2 * rows && gs.len() == cols && bts.len() == cols);
        let (mean, rstd) = st.split_at_mut(rows);
        let drop = Dropout::parts(dropout);
        let per = rows_per_part(rows, parts);
        let run = |(i, (((s, o), (m, r)), (x, y))): (usize, (((&mut [f32], &mut [f32]), (&mut [f32], &mut [f32])), (&[f32], &[f32])))| {
            norm::layernorm_forward_rows(x, y, s, o, m, r, gs, bts, i * per, eps, drop)
        };
        let pc = per * cols;
        if parts <= 1 {
            run((0, (((ss, os), (mean, rstd)), (as_, bs))));
        } else {
            ss.par_chunks_mut(pc).zip(os.par_chunks_mut(pc)).zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per))).zip(as_.par_chunks(pc).zip(bs.par_chunks(pc))).enumerate().for_each(run);
        }
    }

    fn layernorm_backward(&mut self, dout: View, sum: View, stats: View, gamma: View, dgamma: View, dbeta: View, dsum: View, db: View, dropout: Option<Dropout>, cols: usize, accumulate: bool) {
        assert!(cols > 0, "a row of no columns");
        // dγ and dβ are summed per block of rows, then the blocks in order: a fixed number of
        // blocks whatever the thread count, so the sums do not depend on it.
        const BLOCKS: usize = 64;
        let rows = dout.len() / cols;
        let parts = self.parts(dout.len());
        let mut partial = take_grown(&mut self.scratch, BLOCKS * 2 * cols);
        partial[..BLOCKS * 2 * cols].fill(0.0);
        let ([dss, dbs, dgs, dbts], [dos, ss, st, gs]) = self.views([dsum, db, dgamma, dbeta], [dout, sum, stats, gamma]);
        assert!(
            dos.len() == rows * cols
                && ss.len() == dos.len()
                && dss.len() == dos.len()
                && dbs.len() == dos.len()
                && st.len() == 2 * rows
                && gs.len() == cols
                && dgs.len() == cols
                && dbts.len() == cols
        );
        let (mean, rstd) = st.split_at(rows);
        let drop = Dropout::parts(dropout);
        let per = rows_per_part(rows, BLOCKS);
        let pc = per * cols;
        let run = |(i, ((p, (ds, d)), (x, s))): (usize, ((&mut [f32], (&mut [f32], &mut [f32])), (&[f32], &[f32])))| {
            let (pg, pb) = p.split_at_mut(cols);
            let r0 = i * per;
            let n = x.len() / cols;
            norm::layernorm_backward_rows(x, s, &mean[r0..r0 + n], &rstd[r0..r0 + n], gs, ds, d, pg, pb, r0, drop)
        };
        let partial_s = &mut partial[..BLOCKS * 2 * cols];
        if parts <= 1 {
            partial_s.chunks_mut(2 * cols).zip(dss.chunks_mut(pc).zip(dbs.chunks_mut(pc))).zip(dos.chunks(pc).zip(ss.chunks(pc))).enumerate().for_each(run);
        } else {
            partial_s.par_chunks_mut(2 * cols).zip(dss.par_chunks_mut(pc).zip(dbs.par_chunks_mut(pc))).zip(dos.par_chunks(pc).zip(ss.par_chunks(pc))).enumerate().for_each(run);
        }
        if !accumulate {
            dgs.fill(0.0);
            dbts.fill(0.0);
        }
        // (Blocks past the last row stay zero: adding them changes nothing.)
        for p in partial[..BLOCKS * 2 * cols].chunks_exact(2 * cols) {
            dgs.iter_mut().zip(&p[..cols]).for_each(|(o, &v)| *o += v);
            dbts.iter_mut().zip(&p[cols..]).for_each(|(o, &v)| *o += v);
        }
        self.scratch = partial;
    }

    fn batchnorm_forward(&mut self, x: View, out: View, argmax: View, stats: View, gamma: View, beta: View, running: View, bn: BatchNormArgs) {
        assert!(bn.cols > 0 && bn.groups > 0, "BatchNorm over no columns or no groups");
        let cols = bn.cols;
        let mut acc = self.take_reduce(bn.groups * cols);
        let parts = self.parts(x.len());
        let ([os, am, st, rs], [xs, gs, bs]) = self.views([out, argmax, stats, running], [x, gamma, beta]);
        let rows = xs.len() / cols;
        let pooled = bn.pool.is_some();
        assert!(rows.is_multiple_of(bn.groups) && os.len() == bn.out_rows(rows) * cols && am.len() == if pooled { os.len() } else { 0 });
        assert!(bn.pool.is_none_or(|len| len > 0 && (rows / bn.groups).is_multiple_of(len)), "a pool's samples must not straddle BatchNorm's groups");
        assert!(st.len() == 2 * bn.groups * cols && rs.len() == 2 * cols && gs.len() == cols && bs.len() == cols);
        let group_rows = rows / bn.groups;
        let (means, rstds) = st.split_at_mut(bn.groups * cols);
        let (rmean, rvar) = rs.split_at_mut(cols);
        if bn.train {
            // Moments per group (a group per worker), then the running update in group order.
            let work = |((x, acc), (m, v)): ((&[f32], &mut [f64]), (&mut [f32], &mut [f32]))| norm::column_moments(x, cols, acc, m, v);
            let gr = group_rows * cols;
            if parts > 1 && bn.groups > 1 {
                xs.par_chunks(gr).zip(acc.par_chunks_mut(cols)).zip(means.par_chunks_mut(cols).zip(rstds.par_chunks_mut(cols))).for_each(work);
            } else {
                xs.chunks(gr).zip(acc.chunks_mut(cols)).zip(means.chunks_mut(cols).zip(rstds.chunks_mut(cols))).for_each(work);
            }
            for (m, v) in means.chunks(cols).zip(rstds.chunks_mut(cols)) {
                let unbiased = group_rows as f32 / (group_rows.max(2) - 1) as f32;
                for j in 0..cols {
                    rmean[j] = (1.0 - bn.momentum) * rmean[j] + bn.momentum * m[j];
                    rvar[j] = (1.0 - bn.momentum) * rvar[j] + bn.momentum * v[j] * unbiased;
                    v[j] = 1.0 / (v[j] + bn.eps).sqrt();
                }
            }
        } else {
            for (m, r) in means.chunks_mut(cols).zip(rstds.chunks_mut(cols)) {
                m.copy_from_slice(rmean);
                r.iter_mut().zip(rvar.iter()).for_each(|(r, &v)| *r = 1.0 / (v + bn.eps).sqrt());
            }
        }
        let (means, rstds) = (&*means, &*rstds);
        let stats_of = |g: usize| (&means[g * cols..(g + 1) * cols], &rstds[g * cols..(g + 1) * cols]);
        match bn.pool {
            None => for_row_blocks(parts, os, cols, |r0, o| {
                for_each_group_span(r0, o.len() / cols, group_rows, |g, rows| {
                    let (m, s) = stats_of(g);
                    let x = &xs[(r0 + rows.start) * cols..(r0 + rows.end) * cols];
                    norm::batchnorm_normalize_rows(x, &mut o[rows.start * cols..rows.end * cols], m, s, gs, bs, bn.relu);
                });
            }),
            Some(_) if os.is_empty() => {}
            Some(len) => {
                // Output row t is pair t % half of sample t / half; a block of output rows is
                // cut at sample ends, where the pairs stop being contiguous in x.
                let half = len / 2;
                let sample_rows = group_rows / len;
                for_row_blocks2(parts, os, cols, am, cols, |t0, ob, ab| {
                    let mut t = 0;
                    while t < ob.len() / cols {
                        let (sample, pair) = ((t0 + t) / half, (t0 + t) % half);
                        let n = (half - pair).min(ob.len() / cols - t);
                        let (m, s) = stats_of(sample / sample_rows);
                        let first = sample * len + 2 * pair;
                        let x = &xs[first * cols..(first + 2 * n) * cols];
                        norm::batchnorm_normalize_pairs(x, &mut ob[t * cols..(t + n) * cols], &mut ab[t * cols..(t + n) * cols], m, s, gs, bs, bn.relu);
                        t += n;
                    }
                });
            }
        }
        self.reduce = acc;
    }

    fn batchnorm_backward(&mut self, dout: View, out: View, argmax: View, x: View, stats: View, gamma: View, dgamma: View, dbeta: View, dx: View, bn: BatchNormArgs, accumulate: bool) {
        assert!(bn.cols > 0 && bn.groups > 0, "BatchNorm over no columns or no groups");
        let cols = bn.cols;
        let mut acc = self.take_reduce(2 * bn.groups * cols);
        let mut means32 = take_grown(&mut self.scratch, 2 * bn.groups * cols);
        let parts = self.parts(x.len());
        let ([dxs, dgs, dbs], [ds, os, am, xs, st, gs]) = self.views([dx, dgamma, dbeta], [dout, out, argmax, x, stats, gamma]);
        let rows = xs.len() / cols;
        let pooled = bn.pool.is_some();
        assert!(rows.is_multiple_of(bn.groups) && dxs.len() == xs.len() && ds.len() == bn.out_rows(rows) * cols && os.len() == ds.len() && st.len() == 2 * bn.groups * cols);
        assert!(am.len() == if pooled { ds.len() } else { 0 } && bn.pool.is_none_or(|len| len > 0 && (rows / bn.groups).is_multiple_of(len)));
        let up = norm::Upstream { dout: ds, out: os, argmax: am, cols, relu: bn.relu, pool: bn.pool };
        let group_rows = rows / bn.groups;
        let (means, rstds) = st.split_at(bn.groups * cols);
        // Per group: the gradient reaching BatchNorm's output (`dout`, masked by the ReLU and
        // routed through the pool) formed into `dx` (the input gradient's pass below turns it
        // into dx in place, element by element), Σdy and Σdy·x̂.
        let (sum_dy, sum_dyx) = acc.split_at_mut(bn.groups * cols);
        let gr = group_rows * cols;
        let dy = &mut *dxs;
        let work =
            |(g, ((d, x), ((a, b), (m, s)))): (usize, ((&mut [f32], &[f32]), ((&mut [f64], &mut [f64]), (&[f32], &[f32]))))| norm::batchnorm_backward_sums(&up, g * group_rows, d, x, m, s, a, b);
        if parts > 1 && bn.groups > 1 {
            dy.par_chunks_mut(gr)
                .zip(xs.par_chunks(gr))
                .zip(sum_dy.par_chunks_mut(cols).zip(sum_dyx.par_chunks_mut(cols)).zip(means.par_chunks(cols).zip(rstds.par_chunks(cols))))
                .enumerate()
                .for_each(work);
        } else {
            dy.chunks_mut(gr).zip(xs.chunks(gr)).zip(sum_dy.chunks_mut(cols).zip(sum_dyx.chunks_mut(cols)).zip(means.chunks(cols).zip(rstds.chunks(cols)))).enumerate().for_each(work);
        }
        if !accumulate {
            dgs.fill(0.0);
            dbs.fill(0.0);
        }
        let n = group_rows as f64;
        let (mean_dy, mean_dyx) = means32.split_at_mut(bn.groups * cols);
        for g in 0..bn.groups {
            for j in 0..cols {
                let (a, b) = (sum_dy[g * cols + j], sum_dyx[g * cols + j]);
                dbs[j] += a as f32;
                dgs[j] += b as f32;
                mean_dy[g * cols + j] = (a / n) as f32;
                mean_dyx[g * cols + j] = (b / n) as f32;
            }
        }
        let (mean_dy, mean_dyx) = (&*mean_dy, &*mean_dyx);
        for_row_blocks(parts, dxs, cols, |r0, dxb| {
            for_each_group_span(r0, dxb.len() / cols, group_rows, |g, rows| {
                let cg = g * cols..(g + 1) * cols;
                let x = &xs[(r0 + rows.start) * cols..(r0 + rows.end) * cols];
                let dx = &mut dxb[rows.start * cols..rows.end * cols];
                norm::batchnorm_backward_rows(x, dx, &means[cg.clone()], &rstds[cg.clone()], gs, &mean_dy[cg.clone()], &mean_dyx[cg]);
            });
        });
        self.reduce = acc;
        self.scratch = means32;
    }

    fn im2col(&mut self, x: View, cols: View, s: ConvShape) {
        let (_, xi, co) = s.sample_lens();
        let parts = self.parts(cols.len());
        let (cs, [xs]) = self.split(cols, [x]);
        assert!(xs.len() == s.samples * xi && cs.len() == s.samples * co);
        for_each_sample(parts, cs, co, |i, c| conv1d::im2col_sample(&xs[i * xi..(i + 1) * xi], c, s));
    }

    fn col2im(&mut self, dcols: View, dx: View, s: ConvShape) {
        let (_, xi, co) = s.sample_lens();
        let parts = self.parts(dcols.len());
        let (dxs, [cs]) = self.split(dx, [dcols]);
        assert!(dxs.len() == s.samples * xi && cs.len() == s.samples * co);
        for_each_sample(parts, dxs, xi, |i, d| conv1d::col2im_sample(&cs[i * co..(i + 1) * co], d, s));
    }

    fn reads_conv_rows_in_place(&self, s: ConvShape) -> bool {
        s.in_place_rows().is_some()
    }

    /// Reads the im2col rows in place where they are evenly spaced ([`ConvShape::in_place_rows`],
    /// [`CpuDevice::conv_forward_in_place`]); the kernel chosen by measurement as for any product.
    fn conv_forward_product(&mut self, x: View, w_taps: View, cols: View, y: View, s: ConvShape, out: usize) {
        let Some(edges) = s.in_place_rows() else { return conv1d::forward_product_via_cols(self, x, w_taps, cols, y, s, out) };
        let g = Gemm::nt(s.samples * s.len_out().unwrap_or(0), out, s.patch());
        let parts = self.gemm_parts(g);
        let kernel = self.kernel_for(g, parts, y, &mut |dev, k| dev.conv_forward_in_place(k, parts, x, w_taps, y, s, out, edges));
        self.conv_forward_in_place(kernel, parts, x, w_taps, y, s, out, edges);
    }

    /// The weight gradient over the same in-place rows ([`CpuDevice::conv_weight_in_place`]).
    fn conv_weight_product(&mut self, x: View, cols: View, dy: View, dw_taps: View, s: ConvShape, out: usize) {
        let Some(edges) = s.in_place_rows() else { return conv1d::weight_product_via_cols(self, x, cols, dy, dw_taps, s, out) };
        let g = Gemm::tn(out, s.patch(), s.samples * s.len_out().unwrap_or(0));
        let parts = self.gemm_parts(g);
        let kernel = self.kernel_for(g, parts, dw_taps, &mut |dev, k| dev.conv_weight_in_place(k, parts, x, dy, dw_taps, s, out, edges));
        self.conv_weight_in_place(kernel, parts, x, dy, dw_taps, s, out, edges);
    }

    fn transpose_inner(&mut self, src: View, dst: View, outer: usize, rows: usize, cols: usize, accumulate: bool) {
        let (d, [s]) = self.split(dst, [src]);
        assert!(s.len() == outer * rows * cols && d.len() == s.len());
        conv1d::transpose_inner_cpu(s, d, rows, cols, accumulate);
    }

    fn conv_transposed_taps(&mut self, w: View, dst: View, out: usize, channels: usize, kernel: usize) {
        let (d, [ws]) = self.split(dst, [w]);
        assert!(ws.len() == out * channels * kernel && d.len() == ws.len());
        conv1d::transposed_taps_cpu(ws, d, out, channels, kernel);
    }

    fn maxpool_forward(&mut self, x: View, out: View, argmax: View, s: PoolShape) {
        let parts = self.parts(x.len());
        let ([os, am], [xs]) = self.views([out, argmax], [x]);
        let (li, lo) = (s.len * s.cols, s.pooled_len() * s.cols);
        assert!(xs.len() == s.samples * li && os.len() == s.samples * lo && am.len() == os.len());
        if lo == 0 {
            return;
        }
        for_row_blocks2(parts, os, lo, am, lo, |s0, ob, ab| {
            for (k, (o, a)) in ob.chunks_exact_mut(lo).zip(ab.chunks_exact_mut(lo)).enumerate() {
                let i = s0 + k;
                pool::maxpool_forward_sample(&xs[i * li..(i + 1) * li], o, a, s.cols);
            }
        });
    }

    fn maxpool_backward(&mut self, dout: View, argmax: View, dx: View, s: PoolShape) {
        let parts = self.parts(dx.len());
        let (dxs, [ds, am]) = self.split(dx, [dout, argmax]);
        let (li, lo) = (s.len * s.cols, s.pooled_len() * s.cols);
        assert!(dxs.len() == s.samples * li && ds.len() == s.samples * lo && am.len() == ds.len());
        if lo == 0 {
            dxs.fill(0.0);
            return;
        }
        for_each_sample(parts, dxs, li, |i, x| pool::maxpool_backward_sample(&ds[i * lo..(i + 1) * lo], &am[i * lo..(i + 1) * lo], x, s.cols));
    }

    fn meanpool_forward(&mut self, x: View, out: View, s: PoolShape) {
        let (os, [xs]) = self.split(out, [x]);
        assert!(xs.len() == s.samples * s.len * s.cols && os.len() == s.samples * s.cols && s.len > 0);
        os.chunks_exact_mut(s.cols).zip(xs.chunks_exact(s.len * s.cols)).for_each(|(o, x)| pool::meanpool_forward_sample(x, o));
    }

    fn meanpool_backward(&mut self, dout: View, dx: View, s: PoolShape) {
        let parts = self.parts(dx.len());
        let (dxs, [ds]) = self.split(dx, [dout]);
        assert!(dxs.len() == s.samples * s.len * s.cols && ds.len() == s.samples * s.cols && s.len > 0);
        for_each_sample(parts, dxs, s.len * s.cols, |i, x| pool::meanpool_backward_sample(&ds[i * s.cols..(i + 1) * s.cols], x));
    }

    fn attention_forward(&mut self, qkv: View, out: View, lse: View, a: AttentionShape, dropout: Option<Dropout>) {
        let ([os, ls], [qs]) = self.views([out, lse], [qkv]);
        assert!(qs.len() == a.rows() * 3 * a.d_model() && os.len() == a.rows() * a.d_model() && ls.len() == a.lse_len());
        let (q, o, l) = (SendPtr(qs.as_ptr() as *mut f32), SendPtr(os.as_mut_ptr()), SendPtr(ls.as_mut_ptr()));
        let kernel = self.gemm;
        self.for_attention_pairs(a.samples * a.heads, move |pair, pack, sc| {
            let (q, o, l) = (q, o, l);
            // SAFETY: whole matrices (asserted); each pair writes only its own columns and rows.
            unsafe { attention::forward_head(kernel, q.0, o.0, l.0, a, pair, dropout, pack, sc) }
        });
    }

    fn attention_backward(&mut self, qkv: View, out: View, lse: View, dout: View, dqkv: View, a: AttentionShape, dropout: Option<Dropout>) {
        let (dq, [qs, os, ls, ds]) = self.split(dqkv, [qkv, out, lse, dout]);
        assert!(qs.len() == a.rows() * 3 * a.d_model() && dq.len() == qs.len() && os.len() == a.rows() * a.d_model() && ds.len() == os.len() && ls.len() == a.lse_len());
        let ptr = |s: &[f32]| SendPtr(s.as_ptr() as *mut f32);
        let (q, o, l, d, g) = (ptr(qs), ptr(os), ptr(ls), ptr(ds), SendPtr(dq.as_mut_ptr()));
        let kernel = self.gemm;
        self.for_attention_pairs(a.samples * a.heads, move |pair, pack, sc| {
            let (q, o, l, d, g) = (q, o, l, d, g);
            // SAFETY: whole matrices (asserted); each pair writes only its own columns of dqkv.
            unsafe { attention::backward_head(kernel, q.0, o.0, l.0, d.0, g.0, a, pair, dropout, pack, sc) }
        });
    }

    fn patch_starts(&mut self, starts: View, p: PatchShape, key: Option<u64>) {
        let st = self.slice_mut(starts);
        assert_eq!(st.len(), p.starts_len());
        patch::starts_cpu(st, p, key);
    }

    fn patch_gather(&mut self, x: View, rates: View, starts: View, out: View, p: PatchShape) {
        let parts = self.parts(out.len());
        let (os, [xs, rs, st]) = self.split(out, [x, rates, starts]);
        let n = p.samples * p.patches;
        assert!(xs.len() == p.samples * p.window * p.channels && rs.len() == p.samples && st.len() == 2 * n && os.len() == n * p.row_len());
        let (sl, sc) = st.split_at(n);
        let (xi, oi) = (p.window * p.channels, p.patches * p.row_len());
        for_each_sample(parts, os, oi, |i, o| {
            let ps = i * p.patches..(i + 1) * p.patches;
            patch::gather_sample(&xs[i * xi..(i + 1) * xi], rs[i], &sl[ps.clone()], &sc[ps], o, p)
        });
    }

    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut {
        assert!(tau > 0.0, "temperature must be > 0");
        assert!(b > 0, "InfoNCE over no pairs");
        assert_eq!(z.len(), 2 * b * d);
        self.check(z);
        if let Some(dz) = dz {
            self.check(dz);
            assert!(dz.len() == z.len() && dz.disjoint(&z));
        }
        // The similarities are taken LOSS_TILE rows at a time, so memory grows as B, not B².
        // scratch: zn [2b·d] | s tile [t·b] | dzn [2b·d] | norms [2b] | col lse [b] | diag [b] |
        // per-row (loss, hit) of a tile [2t]
        let tile = b.min(LOSS_TILE);
        let mut scratch = take_grown(&mut self.scratch, infonce_scratch_floats(b, d));
        let mut col_sum = self.take_reduce(if symmetric { b } else { 0 });
        let (zn, rest) = scratch.split_at_mut(2 * b * d);
        let (s, rest) = rest.split_at_mut(tile * b);
        let (dzn, rest) = rest.split_at_mut(2 * b * d);
        let (norms, rest) = rest.split_at_mut(2 * b);
        let (col_lse, rest) = rest.split_at_mut(b);
        let (diag, rest) = rest.split_at_mut(b);
        let row_out = &mut rest[..2 * tile];
        // The element-wise passes over a tile are split over the workers where it is large.
        let parts = self.parts(tile * b);
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
        let tiles = (0..b).step_by(tile).map(|r0| r0..(r0 + tile).min(b));
        // The loss's products stay fp32 in every precision: the loss is where rounding would
        // cost most (similarities divided by a small temperature). Large ones are split over the
        // workers (a batch of thousands of pairs spends most of its step here).
        let mut gemm_scratch = std::mem::take(&mut self.gemm_scratch);
        for p in &mut gemm_scratch.packs {
            p.round = Rounding::None;
        }
        let (kernel, threads) = (self.gemm, self.threads);
        let mut gemm = |g: Gemm, c: &mut [f32], a: &[f32], b: &[f32]| {
            let parts = if g.work() >= PAR_GEMM_WORK { threads } else { 1 };
            gemm_scratch.gemm(kernel, parts, g, c, a, b, inv_tau);
        };
        // The symmetric form needs each column's log-sum-exp before any gradient: a first pass
        // over the tiles keeps a running (max, Σ exp) per column, rescaled as the max grows.
        let mut loss_cols = 0.0f64;
        if symmetric {
            col_lse.fill(f32::NEG_INFINITY); // the running column maxima, until the end of the pass
            for rows in tiles.clone() {
                let st = &mut s[..rows.len() * b];
                gemm(Gemm::nt(rows.len(), b, d), st, &za[rows.start * d..rows.end * d], zp);
                for (i, row) in rows.clone().zip(st.chunks_exact(b)) {
                    diag[i] = row[i];
                }
                loss::column_lse_update(st, b, col_lse, &mut col_sum[..b], parts);
            }
            for j in 0..b {
                col_lse[j] += col_sum[j].ln() as f32;
                loss_cols += (col_lse[j] - diag[j]) as f64;
            }
        }
        let row_w = if symmetric { 0.5 } else { 1.0 } * grad_scale / b as f32;
        let (dza, dzp) = dzn.split_at_mut(b * d);
        let mut loss_rows = 0.0f64;
        let mut correct = 0usize;
        // One tile of a symmetric loss is still in `s` from the column pass.
        let single_tile_done = symmetric && tile == b;
        for rows in tiles {
            let st = &mut s[..rows.len() * b];
            if !single_tile_done {
                gemm(Gemm::nt(rows.len(), b, d), st, &za[rows.start * d..rows.end * d], zp);
            }
            // Row log-sum-exp (max-subtracted), loss and accuracy; then the tile becomes dL/dS:
            // row softmax − I (and column softmax − I for the symmetric form). Rows in parallel;
            // their losses are summed after, in row order, so the sum does not depend on the split.
            let (r0, grad, cols_lse) = (rows.start, dz.is_some(), symmetric.then_some(&*col_lse));
            let diag_w = if symmetric { 2.0 } else { 1.0 } * row_w;
            let out = &mut row_out[..2 * rows.len()];
            for_row_blocks2(parts, st, b, out, 2, |first, block, out| {
                for (k, (row, o)) in block.chunks_exact_mut(b).zip(out.chunks_exact_mut(2)).enumerate() {
                    let i = r0 + first + k;
                    let (arg, lse) = loss::row_max_lse(row);
                    o[0] = lse - row[i];
                    o[1] = if arg == i { 1.0 } else { 0.0 };
                    if grad {
                        loss::row_softmax_grad(row, lse, cols_lse, row_w);
                        row[i] -= diag_w;
                    }
                }
            });
            for o in out.chunks_exact(2) {
                loss_rows += o[0] as f64;
                correct += (o[1] > 0.0) as usize;
            }
            if dz.is_some() {
                // dza_n = dS · zp_n / τ for these rows; dzp_n += dS_tileᵀ · za_n / τ over the tiles.
                gemm(Gemm::nn(rows.len(), d, b), &mut dza[rows.start * d..rows.end * d], st, zp);
                gemm(Gemm::tn(b, d, rows.len()).accumulate(rows.start > 0), dzp, st, &za[rows.start * d..rows.end * d]);
            }
        }
        let loss = if symmetric { 0.5 * (loss_rows + loss_cols) / b as f64 } else { loss_rows / b as f64 };
        let out = InfoNceOut { loss: loss as f32, accuracy: correct as f32 / b as f32 };
        if let Some(dz) = dz {
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
        self.reduce = col_sum;
        for p in &mut gemm_scratch.packs {
            p.round = rounding(self.precision);
        }
        self.gemm_scratch = gemm_scratch;
        out
    }

    fn sum_squares(&mut self, x: View) -> f64 {
        // Fixed chunks summed in a fixed order: the result does not depend on thread timing,
        // so clipping (and a resumed run) is bit-for-bit reproducible.
        const CHUNKS: usize = 64;
        let xs = self.slice(x);
        let chunk = xs.len().div_ceil(CHUNKS).max(1);
        let mut partial = [0.0f64; CHUNKS];
        if xs.len() >= PAR_ELEMENTS && self.threads > 1 {
            partial.par_iter_mut().zip(xs.par_chunks(chunk)).for_each(|(p, c)| *p = sum_squares_lanes(c));
        } else {
            partial.iter_mut().zip(xs.chunks(chunk)).for_each(|(p, c)| *p = sum_squares_lanes(c));
        }
        partial.iter().sum()
    }

    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32) {
        assert!(param.len() == grad.len() && param.len() == m.len() && param.len() == v.len());
        let parallel = param.len() >= PAR_ELEMENTS && self.threads > 1;
        let ([p, mm, vv], [g]) = self.views([param, m, v], [grad]);
        let c = AdamChunk { step: h.at_step(step), beta1: h.beta1, beta2: h.beta2, eps: h.eps, grad_scale };
        const CHUNK: usize = 1 << 14;
        if parallel {
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(mm.par_chunks_mut(CHUNK)).zip(vv.par_chunks_mut(CHUNK)).for_each(|(((p, g), m), v)| adam_chunk(p, g, m, v, c));
        } else {
            adam_chunk(p, g, mm, vv, c);
        }
    }
}

/// The constants of one Adam(W) update ([`adam_chunk`]).
#[derive(Clone, Copy)]
struct AdamChunk {
    step: AdamStep,
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
}

/// Lanes of [`sum_squares_lanes`]: four AVX-512 vectors of f64 (eight AVX2 ones), enough
/// independent sums to cover an add's latency.
const SQUARE_LANES: usize = 32;

/// `Σ v²` of a chunk in f64: element `i` adds to lane `i mod 32`, the lanes are added in order at
/// the end. One running sum (what this replaced) is a chain of dependent adds, 4 cycles an
/// element: 0.5 ms of a medium step's 0.9 ms optimizer under fp16 (whose loss scaler needs the
/// norm) or clipping. A fixed order still, so the norm does not depend on the instruction set
/// or on thread timing (each square of an f32 is exact in f64; only the adds round).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
fn sum_squares_lanes(c: &[f32]) -> f64 {
    let mut lanes = [0.0f64; SQUARE_LANES];
    let mut chunks = c.chunks_exact(SQUARE_LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v as f64 * v as f64;
        }
    }
    for (s, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *s += v as f64 * v as f64;
    }
    lanes.iter().sum()
}

/// Adam(W) on a chunk of the arenas: parameters, gradients and both moments side by side.
/// Compiled per instruction set: its square root and two divisions ran four lanes at a time in
/// the SSE2 baseline. Each is correctly rounded at any width, so every clone gives the same bits.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
fn adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamChunk) {
    let AdamChunk { step: AdamStep { step_size, bc2_sqrt, decay, l2 }, beta1, beta2, eps, grad_scale } = c;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * grad_scale + l2 * *p;
        *p *= decay;
        *m += (g - *m) * (1.0 - beta1);
        *v = *v * beta2 + (1.0 - beta2) * g * g;
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p -= step_size * *m / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lanes' sum of squares is the sum of squares: exactly where every partial sum is an
    /// integer f64 holds, to f64's rounding elsewhere, at every length around the lane count
    /// (whole lanes, a remainder, none); the device's norm over many chunks agrees too.
    #[test]
    fn sum_of_squares_over_lanes_is_the_sum_of_squares() {
        for len in [0, 1, 31, 32, 33, 64, 95, 1000, 4097] {
            let ints: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want: f64 = ints.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            assert_eq!(sum_squares_lanes(&ints), want, "integers, {len} values");
            let reals: Vec<f32> = (0..len).map(|i| ((i as f32 * 0.618).sin() * 3.7).exp()).collect();
            let want: f64 = reals.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let got = sum_squares_lanes(&reals);
            assert!((got - want).abs() <= 1e-13 * want, "{len} values: {got} against {want}");
        }
        let mut dev = CpuDevice::new();
        let xs: Vec<f32> = (0..300_001).map(|i| ((i % 13) as f32 - 6.0) * 0.5).collect();
        let x = dev.alloc(xs.len()).unwrap();
        dev.upload(x, &xs);
        let want: f64 = xs.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert_eq!(dev.sum_squares(x), want, "quarter-integers square and add exactly");
    }

    /// A step runs with a worker polling for its kernels and returns, in pools of 1 to 4 workers
    /// (the larger ones, on this 2-core CI, skip polling: more workers than cores) and with
    /// kernels whose halves split again (nested joins, as a kernel over 3 or 4 parts); a step
    /// that panics propagates its panic (instead of leaving the join waiting on its poller);
    /// outside a pool the step just runs. A watchdog aborts the test process if any of it hangs.
    #[test]
    fn a_step_runs_with_a_worker_polling_and_stops_it() {
        use rayon::prelude::*;
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let watched = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !watched.load(Ordering::Acquire) {
                if start.elapsed() > std::time::Duration::from_secs(120) {
                    eprintln!("a_step_runs_with_a_worker_polling_and_stops_it: hung for 120 s");
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let sum = |n: u32| (0..n).into_par_iter().with_min_len(1000).map(|i| u64::from(i) * u64::from(i)).sum::<u64>();
        let want: u64 = (0..100_000u64).map(|i| i * i).sum();
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                // Many parallel regions, as a step's kernels, each splitting into nested joins.
                for _ in 0..20 {
                    let got = with_workers_polling(threads, || (0..50).map(|_| sum(100_000)).collect::<Vec<_>>());
                    assert!(got.iter().all(|&g| g == want), "{threads} threads");
                }
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| with_workers_polling(threads, || -> u64 { panic!("a step that fails") })));
                assert!(panicked.is_err(), "{threads} threads: the step's panic reaches the caller");
            });
        }
        // Outside any pool: the step runs here.
        assert_eq!(with_workers_polling(4, || sum(100_000)), want);
        done.store(true, Ordering::Release);
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_and_keeps_infinities_and_nans() {
        let bf16 = |x: f32| {
            let mut v = [x];
            sgemm::round_bf16(&mut v);
            v[0]
        };
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 1.0, "a tie goes to the even mantissa");
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0, "a tie goes to the even mantissa");
        assert_eq!(bf16(1.0 + 1.5 / 256.0), 1.0 + 2.0 / 256.0);
        assert_eq!(bf16(-(1.0 + 3.0 / 256.0)), -(1.0 + 4.0 / 256.0), "the sign is kept");
        assert_eq!(bf16(f32::MAX), f32::INFINITY, "past bf16's largest value");
        assert_eq!(bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(bf16(1e-40).to_bits(), 0, "a subnormal flushes to zero, as AVX512-BF16's conversions do");
        assert_eq!(bf16(-1e-40).to_bits(), (-0.0f32).to_bits(), "a negative subnormal flushes to -0");
        assert_eq!(bf16(f32::MIN_POSITIVE), f32::MIN_POSITIVE, "the smallest normal stays");
        for nan in [f32::NAN, f32::from_bits(0x7F80_0001), f32::from_bits(0x7FFF_FFFF), f32::from_bits(0xFFFF_FFFF)] {
            assert!(bf16(nan).is_nan(), "{:#x} must stay a NaN", nan.to_bits());
        }
    }

    #[test]
    fn bf16_products_round_both_operands_and_accumulate_in_fp32() {
        // Two workers, so the larger product below is split and each worker's pack buffers round.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut dev = CpuDevice::new();
            if dev.set_precision(Precision::Bf16).is_err() {
                eprintln!("SKIPPED: bf16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
                return;
            }
            let bf16 = |x: f32| {
                let mut v = [x];
                sgemm::round_bf16(&mut v);
                v[0]
            };
            let mut seed = 5u64;
            let mut rand = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            // Past the depth of one packed slice, with a transposed operand, accumulating; then
            // one past PAR_GEMM_WORK, split over the two workers.
            for (m, n, k) in [(13, 37, 300), (96, 100, 64)] {
                let (a, b, c) = (dev.alloc(m * k).unwrap(), dev.alloc(n * k).unwrap(), dev.alloc(m * n).unwrap());
                let (av, bv, c0): (Vec<f32>, Vec<f32>, Vec<f32>) = ((0..m * k).map(|_| rand()).collect(), (0..n * k).map(|_| rand()).collect(), (0..m * n).map(|_| rand()).collect());
                dev.upload(a, &av);
                dev.upload(b, &bv);
                dev.upload(c, &c0);
                dev.gemm(Gemm::nt(m, n, k).accumulate(true), c, a, b);
                let got = dev.slice(c).to_vec();
                let mut off_fp32 = 0.0f64;
                for i in 0..m {
                    for j in 0..n {
                        let rounded: f64 = (0..k).map(|p| bf16(av[i * k + p]) as f64 * bf16(bv[j * k + p]) as f64).sum();
                        let exact: f64 = (0..k).map(|p| av[i * k + p] as f64 * bv[j * k + p] as f64).sum();
                        let g = got[i * n + j] as f64 - c0[i * n + j] as f64;
                        assert!((g - rounded).abs() < 1e-4, "{m}x{n}x{k}: C[{i},{j}] adds {g}, the bf16 product is {rounded}");
                        off_fp32 = off_fp32.max((g - exact).abs());
                    }
                }
                assert!(off_fp32 > 1e-3, "{m}x{n}x{k}: the result is the fp32 product: the operands were not rounded");
            }
            assert!(96 * 100 * 64 >= PAR_GEMM_WORK && dev.threads == 2, "the second product is split");
            // The loss's products stay fp32: the same InfoNCE loss in either precision.
            let z: Vec<f32> = (0..2 * 8 * 16).map(|_| rand()).collect();
            let loss = |dev: &mut CpuDevice| {
                let (zv, dzv) = (dev.alloc(z.len()).unwrap(), dev.alloc(z.len()).unwrap());
                dev.upload(zv, &z);
                dev.infonce(zv, Some(dzv), 8, 16, 0.1, true, 1.0).loss
            };
            assert_eq!(loss(&mut dev), loss(&mut CpuDevice::new()));
            assert_eq!(dev.gemm_scratch.packs[0].round, Rounding::Bf16, "products after the loss are bf16 again");
        });
    }

    #[test]
    fn a_pinned_plan_is_in_force_and_a_bad_one_is_named() {
        if !sgemm::supported() {
            eprintln!("SKIPPED: this CPU lacks AVX2/FMA; only faer runs, nothing is measured");
            return;
        }
        let mut dev = CpuDevice::with_policy(GemmPolicy::Measure);
        dev.pin_kernel_plan("41x43x47/nt/p1=faer;7x9x11/tn/p1=packed").unwrap();
        assert_eq!(dev.planned_kernel(Gemm::nt(41, 43, 47), 1), Some(CpuGemm::Faer));
        assert_eq!(CpuDevice::with_policy(GemmPolicy::Measure).planned_kernel(Gemm::tn(7, 9, 11), 1), Some(CpuGemm::Packed), "pinned for the whole process");
        assert!(dev.kernel_plan().contains("41x43x47/nt/p1=faer"));
        let e = dev.pin_kernel_plan("41x43/nt/p1=faer").unwrap_err();
        assert!(e.contains("41x43/nt/p1=faer"), "{e}");
        // A fixed policy keeps its kernel whatever a plan says.
        let mut fixed = CpuDevice::with_gemm(CpuGemm::Packed);
        fixed.pin_kernel_plan("41x43x47/nt/p1=faer").unwrap();
        assert_eq!(fixed.planned_kernel(Gemm::nt(41, 43, 47), 1), Some(CpuGemm::Packed));
    }
}
