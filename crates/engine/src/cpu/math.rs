//! Scalar functions of the CPU kernels, written to vectorize: inlined, branch-free (selects, not
//! jumps), no libm functions such as `expf` (a call per element: it was ~90 % of the loss kernel's
//! time before [`exp`] replaced it). And the loop shape of the kernels' sums down the rows
//! ([`for_strips!`]).
//!
//! Polynomials are evaluated with fused multiply-adds ([`horner`]): every caller is a
//! multiversioned kernel whose AVX2 and AVX-512 clones turn each into one `vfmadd`, half the
//! instructions and half the dependency chain of a multiply then an add (the exact GELU's forward
//! and backward ran 1.3–1.7× faster for it). The clones for a CPU without FMA — one older than
//! 2013, or a VM that hides FMA from its guest — call libm's `fmaf` per coefficient instead, which
//! keeps those loops scalar and several times slower; they stay correct, and a fused result is
//! the same on every CPU.

/// `e^x` to ~2 ulp over `[-87, 88]`, clamped above and 0 below (fp32's normals end near -87.3;
/// a subnormal result would cost an Intel core a microcode assist in each multiply it enters,
/// `crate::cpu::sgemm`'s doc): range reduction `x = k·ln2 + r`, a degree-6 polynomial for `e^r`
/// on |r| ≤ ln2/2, and `2^k` built in the exponent bits. `k` is rounded by adding and
/// subtracting 1.5·2²³ (the FPU's round-to-nearest), which needs no `round` instruction: it
/// vectorizes on any x86-64, even in code compiled for the SSE2 baseline.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2²³
    let underflows = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let k = t - SHIFTER;
    let r = (-k).mul_add(1.428_606_8e-6, (-k).mul_add(0.693_145_75, x));
    let p = horner(r, &[1.0, 1.0, 0.5, 0.166_666_67, 0.041_666_668, 0.008_333_334, 0.001_388_889]);
    // The low bits of t hold k (two's complement, offset by the shifter's mantissa).
    let ki = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let e = p * f32::from_bits(((ki + 127) as u32) << 23);
    if underflows {
        0.0
    } else {
        e
    }
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// SiLU `x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `d silu / dx = σ(x)·(1 + x·(1 − σ(x)))`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// `erfc(z)` for `z >= 0` with a fractional error below 1.2e-7 (Numerical Recipes' Chebyshev
/// fit), so tails keep their relative precision.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / z.mul_add(0.5, 1.0);
    let poly = horner(t, &[-1.265_512_2, 1.000_023_7, 0.374_091_96, 0.096_784_18, -0.186_288_06, 0.278_868_07, -1.135_203_98, 1.488_515_87, -0.822_152_23, 0.170_872_77]);
    t * exp((-z).mul_add(z, poly))
}

/// `c[0] + x·(c[1] + x·(c[2] + …))`, one fused multiply-add per coefficient (unrolled: the
/// coefficients are constants at every call).
#[inline(always)]
fn horner<const N: usize>(x: f32, coefficients: &[f32; N]) -> f32 {
    const { assert!(N > 0, "a polynomial has a coefficient") };
    let (last, rest) = (coefficients[N - 1], &coefficients[..N - 1]);
    rest.iter().rev().fold(last, |acc, &c| acc.mul_add(x, c))
}

/// The standard normal CDF `Φ(x) = ½·erfc(−x/√2)`.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x < 0.0 {
        half_tail
    } else {
        1.0 - half_tail
    }
}

/// The exact (erf) GELU, PyTorch's default: `x·Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `d gelu / dx = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    (x * INV_SQRT_2PI).mul_add(exp(-0.5 * x * x), normal_cdf(x))
}

/// `Σ a[i]·b[i]` with eight independent accumulators, so it vectorizes without reassociating.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `Σ a[i]` with eight independent accumulators (vectorizes without reassociating).
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let c = a.chunks_exact(8);
    let rest: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ (a[i] − mean)²` with eight independent accumulators.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let c = a.chunks_exact(8);
    let rest: f32 = c.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for x in c {
        for l in 0..8 {
            let d = x[l] - mean;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Columns per strip of the sums down the rows (BatchNorm's statistics and gradients, bias
/// gradients). A strip's f32 partial sums stay in registers only where the compiler sees its
/// width as a constant: with a width known at run time alone they live on the stack, and every
/// row waits on a store and a reload of each vector (the CNN's BatchNorm forward took 2.5× its
/// time so). [`for_strips!`] gives the widths 64, 32, 16 and 8 each its own copy of the loop —
/// every strip of the CNN's 16–64 channels and of any width that is a multiple of 64 — and any
/// other width the same loop with its width known at run time only.
pub(crate) const STRIP_COLS: usize = 64;

/// Rows per block of the sums down the rows: a block stays in cache while each strip of its
/// columns is summed, and BatchNorm adds each block's f32 sums into f64 totals (a block's f32
/// rounding is ~1e-6 relative; the blocks add in f64).
pub(crate) const BLOCK_ROWS: usize = 128;

/// `for c0 in (0..cols).step_by(max)`, `$w` the strip's width (`max` or the last strip's rest),
/// the body copied once per constant width (see [`STRIP_COLS`]). The strips and each column's
/// order of summation are the same whatever the width, so the sums are too.
macro_rules! for_strips {
    ($cols:expr, $max:expr, |$c0:ident, $w:ident| $body:block) => {
        let (cols, max): (usize, usize) = ($cols, $max);
        debug_assert!(max <= $crate::cpu::math::STRIP_COLS);
        for $c0 in (0..cols).step_by(max) {
            match max.min(cols - $c0) {
                64 => {
                    let $w = 64;
                    $body
                }
                32 => {
                    let $w = 32;
                    $body
                }
                16 => {
                    let $w = 16;
                    $body
                }
                8 => {
                    let $w = 8;
                    $body
                }
                $w => $body,
            }
        }
    };
}
pub(crate) use for_strips;

#[cfg(test)]
mod tests {
    use super::*;

    /// The larger error, NaN once either is (`f64::max` would drop a NaN: a function that
    /// returned NaN somewhere would pass every bound).
    fn nan_max(w: f64, e: f64) -> f64 {
        if e.is_nan() || e > w {
            e
        } else {
            w
        }
    }

    fn worst(f: impl Fn(f32) -> f32, g: impl Fn(f64) -> f64, lo: f32, hi: f32) -> f64 {
        let mut w = 0.0f64;
        let mut x = lo;
        while x <= hi {
            let (a, b) = (f(x) as f64, g(x as f64));
            w = nan_max(w, ((a - b) / b.abs().max(1e-30)).abs());
            x += 0.0137;
        }
        w
    }

    #[test]
    fn a_nan_is_the_worst_error() {
        assert!(nan_max(nan_max(0.0, f64::NAN), 1.0).is_nan());
        assert!(worst(|x| if x > 1.0 { f32::NAN } else { x }, |x| x, 0.5, 2.0).is_nan());
    }

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        assert!(worst(exp, f64::exp, -87.0, 10.0) < 1e-6);
    }

    /// Below -87 (`e^-87` is fp32's smallest normals' binade) `exp` is 0, not a floor of
    /// `e^-87` nor a subnormal: an attention's far weights are exact zeros, and so is their gradient.
    #[test]
    fn exp_flushes_to_zero_below_the_normals() {
        assert!(exp(-87.0) >= f32::MIN_POSITIVE && exp(-87.0).is_normal());
        for x in [-87.01, -90.0, -103.0, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp(x).to_bits(), 0, "exp({x})");
        }
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(1000.0), exp(88.0), "clamped above");
    }

    #[test]
    fn gelu_and_silu_match_their_f64_definitions() {
        // Φ through erfc: 1 + erf(x) cancels to nothing in the left tail.
        let gelu64 = |x: f64| 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2);
        let gelu_grad64 = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let silu64 = |x: f64| x / (1.0 + (-x).exp());
        // Relative error against f64 where the values matter (away from the zero at x = 0, where
        // relative error is moot; beyond |x| = 5 the left tail is below 1e-6 and f32's rounding of
        // x² leaves ~1e-5 relative, far below any absolute difference that matters).
        for (lo, hi) in [(-5.0, -0.05), (0.05, 12.0)] {
            let wg = worst(gelu, gelu64, lo, hi);
            assert!(wg < 2e-6, "gelu {wg:e}");
            let ws = worst(silu, silu64, lo, hi);
            assert!(ws < 2e-6, "silu {ws:e}");
        }
        let abs_gelu = (-1200..1200).map(|i| i as f32 * 0.01).map(|x| (gelu(x) as f64 - gelu64(x as f64)).abs()).fold(0.0, nan_max);
        assert!(abs_gelu < 1e-6, "gelu absolute {abs_gelu:e}");
        let abs = |f: &dyn Fn(f32) -> f32, g: &dyn Fn(f64) -> f64| (-1200..1200).map(|i| i as f32 * 0.01).map(|x| (f(x) as f64 - g(x as f64)).abs()).fold(0.0, nan_max);
        assert!(abs(&gelu_grad, &gelu_grad64) < 1e-6, "gelu'");
        assert!(
            abs(&silu_grad, &|x: f64| {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }) < 1e-6,
            "silu'"
        );
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-4);
    }
}
