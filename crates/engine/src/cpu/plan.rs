//! Which GEMM kernel runs each product shape, chosen by measurement on the machine at hand.
//!
//! Neither kernel wins everywhere: on an AMD Zen 3 our packed AVX2 kernel beats faer on every
//! step shape although faer wins a large square probe; on an Intel Xeon with AVX-512 faer's
//! kernels run at nearly twice ours. So the first time a device meets a shape (m, n, k, the
//! transpositions and how many workers split it), it times every kernel the CPU runs on the real
//! operands, interleaved (two runs of each, more while they take under ≈ 4 ms), and keeps the
//! fastest for the rest of the process.
//! Faer must win by [`MARGIN`] (a third faster) to be chosen, so that a close call does not flip
//! from one run to the next: on this project's AMD Zen 3 machine, with a 10 % margin, the four
//! smallest shapes of the `small` workload went to one kernel or the other from run to run.
//!
//! The choices are process-wide (every device of a process runs a shape on the same kernel) and
//! are saved with a run's checkpoints: a resumed run pins them ([`parse_plan`], then
//! `Device::pin_kernel_plan`) and continues on the kernels it started with, so it stays
//! bit-identical. `CID_CPU_GEMM=packed|packed-avx512|avx512-bf16|amx|avx512-fp16|avx512-fp16-wide|faer` fixes the kernel
//! instead (`measure` is the default). Where the CPU has AVX-512F our packed kernel runs on either
//! micro-kernel, and the measurement takes all three.
//!
//! bf16 products are measured the same way, under keys of their own, among the kernels that run
//! them ([`CpuGemm::candidates`]): AMX tiles, AVX512-BF16 dot products, and our fp32 kernels on
//! operands rounded to bf16 as they are packed (faer cannot round them). No kernel wins
//! everywhere: on an Intel Xeon with AMX, `vdpbf16ps` runs at a third of AMX's speed on large
//! products and below the fp32 kernel's, while AMX loses to both on products 16 columns wide.
//!
//! Products whose A may hold zeros (gradients behind ReLU + dropout) choose the same way between
//! the zero-skipping strips ([`super::sparse`]) and their dense kernel, and save that choice
//! beside the kernels (`…/zeros=strips`, `…/zeros=dense`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{sgemm, CpuGemm};
use crate::device::{Gemm, Precision};

/// Faer is chosen only where its time is at most this fraction of the packed kernel's: a clear
/// win (as on AVX-512 CPUs, where faer runs large products at nearly twice our speed), not a
/// close call a noisy machine could decide either way from one run to the next.
pub const MARGIN: f64 = 0.75;

/// The environment variable that fixes the kernel: `packed`, `packed-avx512`, `avx512-bf16`,
/// `amx` (these two for bf16 products), `avx512-fp16` or `avx512-fp16-wide` (for fp16
/// products; a run's other products then go on `packed-avx512`), `faer`, or `measure`
/// (default).
pub const ENV: &str = "CID_CPU_GEMM";

/// How a device picks the kernel of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPolicy {
    /// Every product on this kernel.
    Fixed(CpuGemm),
    /// Each shape on the kernel that measured fastest (CPUs with AVX2 and FMA; elsewhere only
    /// faer runs).
    Measure,
}

impl GemmPolicy {
    /// `CID_CPU_GEMM`, else measuring where a packed kernel can run, else faer. A value
    /// [`check_env`] refuses counts as unset here (the binary checks it first).
    pub fn from_env() -> Self {
        let asked = std::env::var(ENV).unwrap_or_default().to_ascii_lowercase();
        match CpuGemm::from_name(&asked) {
            _ if !sgemm::supported() => GemmPolicy::Fixed(CpuGemm::Faer),
            Some(k) if k.supported() => GemmPolicy::Fixed(k),
            _ => GemmPolicy::Measure,
        }
    }

    /// The kernel of products of this precision that no plan covers (each attention head's, the
    /// loss's): the fixed one ([`CpuGemm::for_precision`]), or where measuring our widest, for
    /// bf16 [`CpuGemm::best_bf16`], for fp16 [`CpuGemm::best_fp16`].
    pub fn default_kernel(self, precision: Precision) -> CpuGemm {
        match self {
            GemmPolicy::Fixed(k) => k.for_precision(precision),
            GemmPolicy::Measure => match precision {
                Precision::Bf16 => CpuGemm::best_bf16(),
                Precision::Fp16 => CpuGemm::best_fp16(),
                Precision::Fp32 => CpuGemm::best_packed(),
            },
        }
    }

    /// For fingerprints and reports: `measured per shape (packed, faer)` (each kernel this CPU
    /// runs), or the fixed kernel's name.
    pub fn describe(self) -> String {
        match self {
            GemmPolicy::Fixed(k) => k.name().to_string(),
            GemmPolicy::Measure => format!("measured per shape ({})", names(&CpuGemm::available())),
        }
    }

    /// For reports: how products of a reduced precision (bf16, fp16) run here, the fixed
    /// kernel's way or each candidate's.
    pub fn describe_products(self, precision: Precision) -> String {
        match self {
            GemmPolicy::Fixed(k) => k.for_precision(precision).products(precision),
            GemmPolicy::Measure => {
                let each: Vec<String> = CpuGemm::candidates(precision).into_iter().map(|k| format!("{}: {}", k.name(), k.products(precision))).collect();
                format!("measured per shape among {}", each.join("; "))
            }
        }
    }
}

/// An error naming `CID_CPU_GEMM` where it is set to something other than a kernel's name or
/// measure (any case), or to a kernel this CPU cannot run.
pub fn check_env() -> Result<(), String> {
    let Ok(v) = std::env::var(ENV) else { return Ok(()) };
    let asked = v.to_ascii_lowercase();
    match CpuGemm::from_name(&asked) {
        _ if asked.is_empty() || asked == "measure" => Ok(()),
        Some(k) if k.supported() => Ok(()),
        Some(k) => Err(format!(
            "{ENV}={v}: the {} kernel does not run here: this CPU lacks its instructions{} (available: {})",
            k.name(),
            if k == CpuGemm::Amx { ", or CID_CPU_AMX=off" } else { "" },
            names(&CpuGemm::available())
        )),
        None => Err(format!("{ENV}={v}: expected {} or measure", names(&CpuGemm::ALL))),
    }
}

/// `packed, packed-avx512, faer`.
fn names(kernels: &[CpuGemm]) -> String {
    kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// A product's shape as far as kernel speed goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GemmKey {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Workers the product is split over.
    pub parts: usize,
    /// The precision of its products (each has its own kernels).
    pub precision: Precision,
}

impl GemmKey {
    pub fn of(g: Gemm, parts: usize, precision: Precision) -> Self {
        GemmKey { m: g.m, n: g.n, k: g.k, trans_a: g.trans_a, trans_b: g.trans_b, parts, precision }
    }
}

/// Choices by product shape, shared by every device of the process.
struct Choices<V>(Mutex<BTreeMap<GemmKey, V>>);

impl<V: Copy> Choices<V> {
    const fn new() -> Self {
        Choices(Mutex::new(BTreeMap::new()))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<GemmKey, V>> {
        // A poisoned lock only means a panic elsewhere while it was held; the map is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: GemmKey) -> Option<V> {
        self.map().get(&key).copied()
    }

    /// The choice in force: `value` unless another device chose first.
    fn record(&self, key: GemmKey, value: V) -> V {
        *self.map().entry(key).or_insert(value)
    }
}

/// The kernel of each shape.
static CHOSEN: Choices<CpuGemm> = Choices::new();

/// The kernel this process runs `key` on, if it has chosen one.
pub fn chosen(key: GemmKey) -> Option<CpuGemm> {
    CHOSEN.get(key)
}

/// Records a measured choice unless another device chose first; returns the one in force.
pub fn record(key: GemmKey, kernel: CpuGemm) -> CpuGemm {
    CHOSEN.record(key, kernel)
}

/// Makes these choices the process's, replacing any made (a resumed run's kernels and strips).
pub fn pin(plan: &Plan) {
    CHOSEN.map().extend(plan.kernels.iter().copied());
    STRIPS.map().extend(plan.strips.iter().copied());
}

/// A plan read back ([`parse_plan`]): the kernel of each product shape, and for products whose
/// zeros may be skipped, whether they run on the strips.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub kernels: Vec<(GemmKey, CpuGemm)>,
    pub strips: Vec<(GemmKey, bool)>,
}

/// The process's choices of the zero-skipping strips ([`super::sparse`]) for products whose A
/// may hold zeros (`Gemm::sparse_a`: gradients behind ReLU + dropout): `true` where the strips
/// measured faster than the product's dense kernel on its first operands. Keyed as the kernels
/// are; saved in the same text (`…/zeros=strips` or `…/zeros=dense`) and pinned with it.
static STRIPS: Choices<bool> = Choices::new();

/// Whether this process runs `key`'s zeros on the strips, if it has chosen.
pub fn chosen_strips(key: GemmKey) -> Option<bool> {
    STRIPS.get(key)
}

/// Records a measured choice of the strips unless another device chose first; returns the one
/// in force.
pub fn record_strips(key: GemmKey, strips: bool) -> bool {
    STRIPS.record(key, strips)
}

/// The fastest kernel from each one's best time (in seconds): the faster of ours, unless faer
/// beats it by [`MARGIN`]. Faer where none of ours was timed.
pub fn decide(best: &[(CpuGemm, f64)]) -> CpuGemm {
    let faer = best.iter().find(|(k, _)| *k == CpuGemm::Faer).map_or(f64::INFINITY, |&(_, t)| t);
    let ours = best.iter().filter(|(k, _)| k.isa().is_some()).min_by(|a, b| a.1.total_cmp(&b.1));
    match ours {
        Some(&(k, t)) if faer > MARGIN * t => k,
        _ => CpuGemm::Faer,
    }
}

/// Choices as text: `m×n×k/nt/p2=packed` entries separated by `;`, in shape order; a bf16 or
/// fp16 product's shape ends in its precision (`64x512x256/nt/p2/bf16=amx`).
pub fn to_text<'a>(entries: impl IntoIterator<Item = (&'a GemmKey, &'a CpuGemm)>) -> String {
    let mut sorted: Vec<_> = entries.into_iter().collect();
    sorted.sort_by_key(|(k, _)| **k);
    sorted.iter().map(|(k, g)| format!("{}={}", shape_text(k), g.name())).collect::<Vec<_>>().join(";")
}

/// [`to_text`] with the strips' choices after the kernels': `512x1024x64/tn/p2/zeros=strips`.
pub fn to_text_with_strips<'a>(kernels: impl IntoIterator<Item = (&'a GemmKey, &'a CpuGemm)>, strips: impl IntoIterator<Item = (&'a GemmKey, &'a bool)>) -> String {
    let mut sorted: Vec<_> = strips.into_iter().collect();
    sorted.sort_by_key(|(k, _)| **k);
    let strips = sorted.iter().map(|(k, &on)| format!("{}/{ZEROS}={}", shape_text(k), if on { "strips" } else { "dense" }));
    std::iter::once(to_text(kernels)).chain(strips).filter(|e| !e.is_empty()).collect::<Vec<_>>().join(";")
}

/// The component that marks a strips entry.
const ZEROS: &str = "zeros";

/// `64x512x256/nt/p2`, then `/bf16` or `/fp16` for a reduced precision.
fn shape_text(k: &GemmKey) -> String {
    let t = |b: bool| if b { 't' } else { 'n' };
    let precision = if k.precision == Precision::Fp32 { String::new() } else { format!("/{}", k.precision) };
    format!("{}x{}x{}/{}{}/p{}{precision}", k.m, k.n, k.k, t(k.trans_a), t(k.trans_b), k.parts)
}

/// How many shapes of a plan (in [`to_text_with_strips`]'s form) each kernel runs: `packed 12, faer 3`
/// (the other kernels only where they ran any), then how many products with zeros to skip run
/// on the strips.
pub fn summary(text: &str) -> String {
    match parse_plan(text) {
        Ok(plan) => {
            let kernels = CpuGemm::ALL
                .into_iter()
                .map(|k| (k, plan.kernels.iter().filter(|(_, e)| *e == k).count()))
                .filter(|&(k, n)| n > 0 || matches!(k, CpuGemm::Packed | CpuGemm::Faer))
                .map(|(k, n)| format!("{} {n}", k.name()));
            // `zero-skipping strips 2 of 3` where products with zeros to skip were measured.
            let strips = (!plan.strips.is_empty()).then(|| format!("zero-skipping strips {} of {}", plan.strips.iter().filter(|(_, on)| *on).count(), plan.strips.len()));
            kernels.chain(strips).collect::<Vec<_>>().join(", ")
        }
        Err(e) => e,
    }
}

/// The most entries a plan may have: a model runs a few dozen product shapes, so a plan past
/// this comes from a damaged or hostile file, not from a run.
pub const MAX_ENTRIES: usize = 4096;

/// The kernels of [`to_text_with_strips`]'s form read back ([`parse_plan`]).
pub fn parse(text: &str) -> Result<Vec<(GemmKey, CpuGemm)>, String> {
    parse_plan(text).map(|plan| plan.kernels)
}

/// Reads [`to_text_with_strips`]'s form back; an error names the entry it cannot read.
pub fn parse_plan(text: &str) -> Result<Plan, String> {
    enum Entry {
        Kernel(GemmKey, CpuGemm),
        Strips(GemmKey, bool),
    }
    let entry = |e: &str| -> Option<Entry> {
        let (shape, kernel) = e.split_once('=')?;
        // A strips entry: the shape, `/zeros`, and `strips` or `dense`.
        if let Some(shape) = shape.strip_suffix(&format!("/{ZEROS}")) {
            let on = match kernel {
                "strips" => true,
                "dense" => false,
                _ => return None,
            };
            // (The strips run fp32 products only.)
            return key_of(shape).filter(|key| key.precision == Precision::Fp32).map(|key| Entry::Strips(key, on));
        }
        let key = key_of(shape)?;
        // A kernel this CPU lacks (a plan saved on another machine) runs on the nearest it has;
        // one that does not run the entry's precision, on the one that does in its place.
        let kernel = CpuGemm::from_name(kernel)?.nearest_supported().for_precision(key.precision);
        let kernel = if kernel.runs(key.precision) { kernel } else { CpuGemm::best_packed() };
        Some(Entry::Kernel(key, kernel))
    };
    let entries = text.split(';').filter(|e| !e.is_empty());
    if entries.clone().nth(MAX_ENTRIES).is_some() {
        return Err(format!("a GEMM plan of more than {MAX_ENTRIES} entries"));
    }
    let mut plan = Plan::default();
    for e in entries {
        match entry(e) {
            Some(Entry::Kernel(key, kernel)) => plan.kernels.push((key, kernel)),
            Some(Entry::Strips(key, on)) => plan.strips.push((key, on)),
            None => {
                let shown: String = e.chars().take(64).collect();
                return Err(format!(
                    "cannot read the GEMM plan entry `{shown}` (expected m×n×k as MxNxK/nt/pN[/bf16|/fp16]=KERNEL, KERNEL one of {}, or MxNxK/nt/pN/{ZEROS}=strips|dense)",
                    names(&CpuGemm::ALL)
                ));
            }
        }
    }
    Ok(plan)
}

/// The key of a shape written as [`shape_text`] writes it.
fn key_of(shape: &str) -> Option<GemmKey> {
    let mut parts = shape.split('/');
    let dims: Vec<usize> = parts.next()?.split('x').map(|d| d.parse().ok()).collect::<Option<_>>()?;
    let trans = parts.next()?.as_bytes();
    let workers = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let flag = |c: u8| match c {
        b'n' => Some(false),
        b't' => Some(true),
        _ => None,
    };
    let precision = match parts.next() {
        None => Precision::Fp32,
        Some(p) => p.parse().ok().filter(|&p| p != Precision::Fp32)?,
    };
    let ([m, n, k], [ta, tb], None) = (<[usize; 3]>::try_from(dims).ok()?, <[u8; 2]>::try_from(trans).ok()?, parts.next()) else { return None };
    Some(GemmKey { m, n, k, trans_a: flag(ta)?, trans_b: flag(tb)?, parts: workers, precision })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_bad_entries_are_named() {
        let k = GemmKey { m: 64, n: 128, k: 1024, trans_a: true, trans_b: false, parts: 2, precision: Precision::Fp32 };
        let faer = CpuGemm::Faer;
        let text = to_text([(&k, &faer)]);
        assert_eq!(text, "64x128x1024/tn/p2=faer");
        assert_eq!(summary(&text), "packed 0, faer 1");
        assert_eq!(parse(&text).unwrap(), vec![(k, faer)]);
        assert_eq!(parse("").unwrap(), vec![]);
        // A bf16 product's entry names its precision, and reads back to it.
        let (kb, packed) = (GemmKey { precision: Precision::Bf16, ..k }, CpuGemm::Packed);
        let text = to_text([(&kb, &packed), (&k, &faer)]);
        assert_eq!(text, "64x128x1024/tn/p2=faer;64x128x1024/tn/p2/bf16=packed");
        assert_eq!(parse(&text).unwrap(), vec![(k, faer), (kb, packed.nearest_supported())]);
        for bad in [
            "64x128/nn/p1=faer",
            "1x2x3/nx/p1=faer",
            "1x2x3/nn/p1=blas",
            "1x2x3/nn=faer",
            "1x2x3/nn/p1/x=faer",
            "1x2x3/nn/p1/fp32=faer",
            "1x2x3/nn/p1/bf16/x=faer",
            "99999999999999999999x1x1/nn/p1=faer",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let long = "1x1x1/nn/p1=faer;".repeat(MAX_ENTRIES + 1);
        assert!(parse(&long).unwrap_err().contains("more than 4096"));
        assert_eq!(parse(&long[..long.len() - 17]).unwrap().len(), MAX_ENTRIES);
        let e = parse(&"9".repeat(10_000)).unwrap_err();
        assert!(e.len() < 300, "a bad entry is cut short in the message: {} bytes", e.len());
    }

    #[test]
    fn the_strips_choices_round_trip_beside_the_kernels() {
        let k = GemmKey { m: 512, n: 1024, k: 64, trans_a: true, trans_b: false, parts: 2, precision: Precision::Fp32 };
        let k2 = GemmKey { n: 256, ..k };
        let packed = CpuGemm::Packed;
        let text = to_text_with_strips([(&k, &packed)], [(&k2, &false), (&k, &true)]);
        assert_eq!(text, "512x1024x64/tn/p2=packed;512x256x64/tn/p2/zeros=dense;512x1024x64/tn/p2/zeros=strips");
        let plan = parse_plan(&text).unwrap();
        assert_eq!(plan.kernels, vec![(k, packed.nearest_supported())]);
        assert_eq!(plan.strips, vec![(k2, false), (k, true)]);
        assert_eq!(parse(&text).unwrap(), plan.kernels, "parse reads the kernels");
        assert_eq!(to_text_with_strips([], [(&k, &true)]), "512x1024x64/tn/p2/zeros=strips");
        assert_eq!(to_text_with_strips([(&k, &packed)], []), to_text([(&k, &packed)]));
        assert!(summary(&text).ends_with("zero-skipping strips 1 of 2"), "{}", summary(&text));
        for bad in [
            "1x2x3/nn/p1/zeros=maybe",
            "1x2x3/nn/p1/zeros=faer",
            "1x2x3/nn/zeros=strips",
            "1x2x3/nn/p1/zeros/bf16=strips",
            "1x2x3/nn/p1/bf16/zeros=strips",
            "1x2x3/nn/p1=strips",
            "0x2x3/nn/p-1/zeros=strips",
            "1e12x2x3/nn/p1/zeros=dense",
            "-1x2x3/nn/p1/zeros=dense",
            "1x2x3/nn/p1/zeros=",
            "\u{0}/zeros=strips",
        ] {
            let e = parse_plan(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn faer_must_win_by_the_margin() {
        let (p, w, f) = (CpuGemm::Packed, CpuGemm::PackedAvx512, CpuGemm::Faer);
        assert_eq!(decide(&[(p, 1.0), (f, 0.85)]), p);
        assert_eq!(decide(&[(p, 1.0), (f, 0.7)]), f);
        assert_eq!(decide(&[(p, 1.0), (f, 1.5)]), p);
        // Our two kernels: the faster, with no margin between them; faer against the faster.
        assert_eq!(decide(&[(p, 1.0), (w, 0.95), (f, 0.8)]), w);
        assert_eq!(decide(&[(p, 0.9), (w, 1.0), (f, 0.8)]), p);
        assert_eq!(decide(&[(p, 1.0), (w, 0.9), (f, 0.6)]), f);
        assert_eq!(decide(&[(f, 2.0)]), f, "faer where none of ours ran");
    }

    #[test]
    fn a_plan_from_another_cpu_runs_on_the_nearest_kernel_here() {
        let parsed = parse("8x8x8/nn/p1=packed-avx512;8x8x9/nn/p1=packed;8x8x10/nn/p1/bf16=amx;8x8x11/nn/p1/bf16=avx512-bf16").unwrap();
        let expect = |k: CpuGemm| {
            if k.supported() {
                k
            } else if k == CpuGemm::Packed {
                CpuGemm::Faer
            } else {
                CpuGemm::best_packed()
            }
        };
        assert_eq!(parsed[0].1, expect(CpuGemm::PackedAvx512));
        assert_eq!(parsed[1].1, expect(CpuGemm::Packed));
        // The bf16 kernels fall back to each other before the fp32 kernels.
        let bf16 = |first: CpuGemm, second: CpuGemm| [first, second].into_iter().find(|k| k.supported()).unwrap_or_else(|| expect(CpuGemm::PackedAvx512));
        assert_eq!(parsed[2].1, bf16(CpuGemm::Amx, CpuGemm::Bf16Dot));
        assert_eq!(parsed[3].1, bf16(CpuGemm::Bf16Dot, CpuGemm::Amx));
        // A bf16 kernel named for an fp32 product runs fp32 on AVX-512's kernel.
        assert_eq!(parse("8x8x8/nn/p1=amx").unwrap()[0].1, expect(CpuGemm::PackedAvx512));
        // The fp16 kernel runs its own precision where the CPU has it, else AVX-512's; named for
        // a bf16 product, it runs that on AVX-512's.
        let fp16 = parse("8x8x12/nn/p1/fp16=avx512-fp16;8x8x13/nn/p1/bf16=avx512-fp16").unwrap();
        assert_eq!(fp16[0].1, if CpuGemm::Fp16Runs.supported() { CpuGemm::Fp16Runs } else { expect(CpuGemm::PackedAvx512) });
        assert_eq!(fp16[1].1, expect(CpuGemm::PackedAvx512));
        assert_eq!(to_text(fp16.iter().take(1).map(|(k, g)| (k, g))), format!("8x8x12/nn/p1/fp16={}", fp16[0].1.name()));
        // The wide fp16 tile runs where the narrow one does, else falls back to AVX-512's.
        let wide = parse("8x8x14/nn/p1/fp16=avx512-fp16-wide").unwrap();
        assert_eq!(wide[0].1, if CpuGemm::Fp16RunsWide.supported() { CpuGemm::Fp16RunsWide } else { expect(CpuGemm::PackedAvx512) });
        assert_eq!(summary("8x8x8/nn/p1=faer"), "packed 0, faer 1");
        assert_eq!(summary("8x8x8/nn/p1=faer;8x8x8/nn/p1/bf16=packed"), "packed 1, faer 1");
    }
}
