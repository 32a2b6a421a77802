//! What the encoder is fed for a batch of windows: the samples themselves (`data.input: time`) or
//! their log-magnitude spectrum (`data.input: spectrum`: `log(1 + |rFFT|)` of each mean-removed
//! window per channel, bins 1…W/2, as `quality_ref.py`'s `Spectrum`), their pre-whitened form
//! (`data.input: whitened`: the same rFFT with every bin scaled to magnitude 1, back to time), each
//! window standardized over its own samples (`data.input: standardized`), and each window's
//! sampling rate from the table (the ISFM's time channel).
//!
//! Training windows can be augmented first, each view on its own, to make the pretext harder
//! (telling recordings apart by their spectrum alone is easy): random gain, circular time shift,
//! additive noise, time masking, a slower playback ([`Augment`]). The draws are a pure function
//! of the run's seed, the step and the row, so a resumed run augments exactly as the
//! uninterrupted one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use signal::rng::{mix_seed, Rng};
use signal::{ContrastiveBatch, Dataset};

use crate::config::{Config, InputKind};
use crate::error::{Result, TrainError};

/// Training augmentations (all off by default): see the `data.augment_*` keys.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    pub gain: f64,
    pub shift: f64,
    pub noise: f64,
    pub mask: f64,
    pub stretch: f64,
}

impl Augment {
    pub fn from_config(cfg: &Config) -> Self {
        let d = &cfg.data;
        Augment { gain: d.augment_gain, shift: d.augment_shift, noise: d.augment_noise, mask: d.augment_mask, stretch: d.augment_stretch }
    }

    pub fn is_off(&self) -> bool {
        *self == Augment::default()
    }

    /// Augments one window `[W, C]` in place with draws from `rng`.
    pub fn apply(&self, x: &mut [f32], channels: usize, rng: &mut Rng) {
        let w = x.len() / channels.max(1);
        if w == 0 {
            return;
        }
        if self.stretch > 0.0 && w > 1 {
            // Output step t reads the source at t·(n − 1)/(w − 1) of its first n = w / (1 + s)
            // samples: the same signal, played 1 + s times slower.
            let s = self.stretch * rng.next_f64();
            let n = ((w as f64 / (1.0 + s)).round() as usize).clamp(2, w);
            if n < w {
                // In place, last step first: step t reads samples t − 1 and t at most, which no
                // later (smaller) step has written yet; step 0 is sample 0 itself.
                let step = (n - 1) as f64 / (w - 1) as f64;
                for t in (1..w).rev() {
                    let p = t as f64 * step;
                    let i = (p.floor() as usize).min(n - 2);
                    let frac = p - i as f64;
                    for c in 0..channels {
                        let (a, b) = (x[i * channels + c] as f64, x[(i + 1) * channels + c] as f64);
                        x[t * channels + c] = (a + (b - a) * frac) as f32;
                    }
                }
            }
        }
        if self.gain > 0.0 {
            let g = (1.0 + self.gain * (2.0 * rng.next_f64() - 1.0)) as f32;
            x.iter_mut().for_each(|v| *v *= g);
        }
        if self.shift > 0.0 {
            let most = ((self.shift * w as f64) as usize).min(w - 1);
            if most > 0 {
                let by = rng.below(2 * most as u64 + 1) as usize; // 0..=2·most ↦ −most..=most
                let r = (by + w - most) % w;
                x.rotate_right(r * channels);
            }
        }
        if self.noise > 0.0 {
            for c in 0..channels {
                let n = w as f64;
                let mean = (0..w).map(|t| x[t * channels + c] as f64).sum::<f64>() / n;
                let sd = ((0..w).map(|t| (x[t * channels + c] as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                for t in 0..w {
                    x[t * channels + c] += (self.noise * sd * rng.normal()) as f32;
                }
            }
        }
        if self.mask > 0.0 {
            let len = ((self.mask * w as f64 * rng.next_f64()) as usize).min(w);
            let start = rng.below((w - len + 1) as u64) as usize;
            x[start * channels..(start + len) * channels].fill(0.0);
        }
    }
}

/// Turns windows into encoder inputs.
pub struct Inputs {
    kind: InputKind,
    window: usize,
    channels: usize,
    /// The forward rFFT (spectrum and whitened inputs) and the inverse (whitened).
    fft: Option<Arc<dyn RealToComplex<f32>>>,
    ifft: Option<Arc<dyn ComplexToReal<f32>>>,
    rates: HashMap<u64, f32>,
}

/// Bins whose magnitude is below this fraction of the window's largest are zeroed by the
/// whitening instead of raised to 1: they hold no signal, only rounding.
const WHITEN_FLOOR: f32 = 1e-6;

/// The FFT scratch of one worker.
struct FftBuffers {
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    inverse_scratch: Vec<Complex<f32>>,
}

impl Inputs {
    pub fn new(cfg: &Config, ds: &Dataset) -> Result<Self> {
        let channels = ds.store.channels();
        Self::with_rates(cfg.data.input, cfg.data.window_size, channels, crate::trainer::sample_rates(ds))
    }

    pub fn with_rates(kind: InputKind, window: usize, channels: usize, rates: HashMap<u64, f32>) -> Result<Self> {
        if kind != InputKind::Time && window < 2 {
            return Err(TrainError::Config { key: "data.input".into(), reason: format!("a {kind} input needs windows of at least 2 samples, not {window}") });
        }
        if matches!(kind, InputKind::Spectrum | InputKind::Whitened) {
            // A plan holds twiddles and scratch of about the window's length in complex values.
            limits::check(|| format!("the FFT of windows of {window} samples (data.input = {kind})"), limits::bytes(&[window], 32)).map_err(TrainError::OverBudget)?;
        }
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = matches!(kind, InputKind::Spectrum | InputKind::Whitened).then(|| planner.plan_fft_forward(window));
        let ifft = (kind == InputKind::Whitened).then(|| planner.plan_fft_inverse(window));
        Ok(Inputs { kind, window, channels, fft, ifft, rates })
    }

    /// Values per encoder input row.
    pub fn row_len(&self) -> usize {
        match self.kind {
            InputKind::Time | InputKind::Whitened | InputKind::Standardized => self.window * self.channels,
            InputKind::Spectrum => self.window / 2 * self.channels,
        }
    }

    /// Windows `[n, W, C]` as encoder input (borrowed as they are in the time domain).
    pub fn of<'a>(&self, windows: &'a [f32]) -> Result<Cow<'a, [f32]>> {
        let (w, c) = (self.window, self.channels);
        let row = self.row_len();
        if self.kind != InputKind::Time && !windows.len().is_multiple_of(w * c) {
            return Err(TrainError::Data(format!("{} values are not whole windows of {w} × {c}", windows.len())));
        }
        if self.kind == InputKind::Standardized {
            let mut out = windows.to_vec();
            self.standardize(&mut out);
            return Ok(Cow::Owned(out));
        }
        let Some(fft) = &self.fft else { return Ok(Cow::Borrowed(windows)) };
        let mut out = vec![0.0f32; windows.len() / (w * c) * row];
        let buffers = || FftBuffers {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            inverse_scratch: self.ifft.as_ref().map_or_else(Vec::new, |i| i.make_scratch_vec()),
        };
        out.par_chunks_mut(row).zip(windows.par_chunks(w * c)).try_for_each_init(buffers, |b, (o, x)| -> Result<()> {
            for ch in 0..c {
                let mean = (0..w).map(|t| x[t * c + ch] as f64).sum::<f64>() / w as f64;
                for (t, v) in b.input.iter_mut().enumerate() {
                    *v = (x[t * c + ch] as f64 - mean) as f32;
                }
                fft.process_with_scratch(&mut b.input, &mut b.spectrum, &mut b.scratch).map_err(|e| TrainError::Data(format!("FFT: {e}")))?;
                match &self.ifft {
                    None => {
                        for (k, s) in b.spectrum[1..=w / 2].iter().enumerate() {
                            o[k * c + ch] = s.norm().ln_1p();
                        }
                    }
                    Some(ifft) => {
                        whiten(&mut b.spectrum, w);
                        ifft.process_with_scratch(&mut b.spectrum, &mut b.input, &mut b.inverse_scratch).map_err(|e| TrainError::Data(format!("inverse FFT: {e}")))?;
                        for (t, &v) in b.input.iter().enumerate() {
                            o[t * c + ch] = v;
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(Cow::Owned(out))
    }

    /// The anchor and positive of a batch as encoder input.
    pub fn pair<'a>(&self, batch: &'a ContrastiveBatch) -> Result<(Cow<'a, [f32]>, Cow<'a, [f32]>)> {
        Ok((self.of(&batch.anchor)?, self.of(&batch.positive)?))
    }

    /// As [`pair`](Self::pair) with each view augmented on its own, row by row, the draws keyed
    /// by `seed` (the run's seed and the step).
    pub fn augmented_pair(&self, batch: &ContrastiveBatch, aug: &Augment, seed: u64) -> Result<(Vec<f32>, Vec<f32>)> {
        let row = self.window * self.channels;
        let mut views = [batch.anchor.clone(), batch.positive.clone()];
        for (v, x) in views.iter_mut().enumerate() {
            x.par_chunks_mut(row.max(1)).enumerate().for_each(|(r, w)| aug.apply(w, self.channels, &mut Rng::new(mix_seed(&[seed, v as u64, r as u64]))));
        }
        let [mut a, mut p] = views;
        match self.kind {
            // The augmented copies are the model's input already, or become it in place.
            InputKind::Time => return Ok((a, p)),
            InputKind::Standardized => {
                self.standardize(&mut a);
                self.standardize(&mut p);
                return Ok((a, p));
            }
            InputKind::Spectrum | InputKind::Whitened => {}
        }
        Ok((self.of(&a)?.into_owned(), self.of(&p)?.into_owned()))
    }

    /// Whole windows `[n, W, C]` standardized in place, each over its own samples.
    fn standardize(&self, windows: &mut [f32]) {
        windows.par_chunks_mut((self.window * self.channels).max(1)).for_each(|x| standardize_window(x, self.channels));
    }

    /// The sampling rate of each Id (1 Hz where the table has none).
    pub fn rates(&self, ids: &[u64]) -> Vec<f32> {
        ids.iter().map(|id| self.rates.get(id).copied().unwrap_or(1.0)).collect()
    }
}

/// A window `[W, C]` standardized per channel over its own samples: `(x − mean) / (std + 1e-8)`
/// (population std, the store's standardization applied to one window).
fn standardize_window(x: &mut [f32], c: usize) {
    let w = x.len() / c;
    for ch in 0..c {
        let mean = (0..w).map(|t| x[t * c + ch] as f64).sum::<f64>() / w as f64;
        let var = (0..w).map(|t| (x[t * c + ch] as f64 - mean).powi(2)).sum::<f64>() / w as f64;
        let scale = 1.0 / (var.sqrt() + 1e-8);
        for t in 0..w {
            x[t * c + ch] = ((x[t * c + ch] as f64 - mean) * scale) as f32;
        }
    }
}

/// Scales the rFFT `spectrum` of a window of `w` samples so that every bin but DC has magnitude 1
/// (phases kept; DC, the mean, zero; bins below [`WHITEN_FLOOR`] of the largest zero), and by
/// `1/√w` so that the inverse transform (unnormalised) has about unit variance per sample.
fn whiten(spectrum: &mut [Complex<f32>], w: usize) {
    let largest = spectrum.iter().skip(1).map(|s| s.norm()).fold(0.0f32, f32::max);
    let scale = 1.0 / (w as f32).sqrt();
    spectrum[0] = Complex::new(0.0, 0.0);
    for s in spectrum.iter_mut().skip(1) {
        let m = s.norm();
        *s = if m > WHITEN_FLOOR * largest { *s * (scale / m) } else { Complex::new(0.0, 0.0) };
    }
    if w.is_multiple_of(2) {
        // The Nyquist bin of an even window is real: keep it so (its sign is its phase).
        let last = spectrum.len() - 1;
        spectrum[last].im = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentations_do_what_they_say_and_repeat_for_a_seed() {
        let (w, c) = (100, 2);
        let x: Vec<f32> = (0..w * c).map(|i| 1.0 + (i % 7) as f32).collect();
        let run = |a: Augment, seed: u64| {
            let mut y = x.clone();
            a.apply(&mut y, c, &mut Rng::new(seed));
            y
        };
        assert_eq!(run(Augment::default(), 1), x, "off is the identity");
        // Each augmentation over 20 seeds: within its bound on every draw, and not the identity
        // on all of them.
        let seeds = 1..=20u64;
        let ratios: Vec<f32> = seeds
            .clone()
            .map(|seed| {
                let g = run(Augment { gain: 0.5, ..Default::default() }, seed);
                let ratio = g[0] / x[0];
                assert!((0.5..=1.5).contains(&ratio) && g.iter().zip(&x).all(|(a, b)| (a / b - ratio).abs() < 1e-5), "one gain for the window");
                ratio
            })
            .collect();
        assert!(ratios.iter().any(|r| (r - 1.0).abs() > 0.05), "gains drawn: {ratios:?}");
        let shifts: Vec<usize> = seeds
            .clone()
            .map(|seed| {
                let s = run(Augment { shift: 0.1, ..Default::default() }, seed);
                (0..=20)
                    .map(|k| (k + w - 10) % w)
                    .find(|&r| {
                        let mut y = x.clone();
                        y.rotate_right(r * c);
                        y == s
                    })
                    .expect("a circular shift of at most 10 steps")
            })
            .collect();
        assert!(shifts.iter().any(|&r| r != 0), "shifts drawn: {shifts:?}");
        let masked: Vec<usize> = seeds
            .map(|seed| {
                let m = run(Augment { mask: 0.3, ..Default::default() }, seed);
                let zeros: Vec<usize> = (0..m.len()).filter(|&i| m[i] == 0.0).collect();
                assert!(zeros.len() <= 30 * c && zeros.len().is_multiple_of(c), "at most 30 whole steps");
                assert!(zeros.windows(2).all(|p| p[1] == p[0] + 1), "one contiguous span");
                zeros.len()
            })
            .collect();
        assert!(masked.iter().any(|&z| z > 0), "spans drawn: {masked:?}");
        // Noise of 0.1 × each channel's own standard deviation: the added values' spread, per
        // channel, within 30 % of it (4σ for 100 draws).
        let n = run(Augment { noise: 0.1, ..Default::default() }, 4);
        let sd = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        for ch in 0..c {
            let signal: Vec<f64> = (0..w).map(|t| x[t * c + ch] as f64).collect();
            let added: Vec<f64> = (0..w).map(|t| (n[t * c + ch] - x[t * c + ch]) as f64).collect();
            let ratio = sd(&added) / (0.1 * sd(&signal));
            assert!((0.7..1.3).contains(&ratio), "channel {ch}: noise spread {ratio} × the expected");
        }
        let all = Augment { gain: 0.2, shift: 0.1, noise: 0.1, mask: 0.2, stretch: 0.1 };
        assert_eq!(run(all, 9), run(all, 9), "repeatable");
    }

    /// A ramp played slower is a ramp: each channel's window becomes its first `n` samples
    /// stretched over the window, `n` between `w / (1 + stretch)` and `w`, its two ends kept.
    #[test]
    fn a_stretched_window_is_its_first_samples_played_slower() {
        let (w, c) = (200, 2);
        let x: Vec<f32> = (0..w).flat_map(|t| [t as f32, 1000.0 - 2.0 * t as f32]).collect();
        let mut lengths = Vec::new();
        for seed in 1..=20u64 {
            let mut y = x.clone();
            Augment { stretch: 0.25, ..Default::default() }.apply(&mut y, c, &mut Rng::new(seed));
            // The last step reads the source's sample n − 1.
            let last = y[(w - 1) * c];
            let n = last.round() as usize + 1;
            assert!((160..=w).contains(&n) && (last - (n - 1) as f32).abs() < 1e-3, "seed {seed}: the window ends at source sample {last}");
            for t in 0..w {
                let p = t as f32 * (n - 1) as f32 / (w - 1) as f32;
                assert!((y[t * c] - p).abs() < 1e-3 && (y[t * c + 1] - (1000.0 - 2.0 * p)).abs() < 2e-3, "seed {seed}, step {t}: {} {}", y[t * c], y[t * c + 1]);
            }
            lengths.push(n);
        }
        assert!(lengths.iter().any(|&n| n < 190), "playback rates drawn: {lengths:?}");
    }

    #[test]
    fn spectrum_is_log1p_of_the_rfft_magnitudes_without_the_mean() {
        // Two channels: a cosine at bin 2 plus an offset (removed), and zeros.
        let (w, c) = (8, 2);
        let x: Vec<f32> = (0..w).flat_map(|t| [3.0 + (2.0 * std::f32::consts::PI * 2.0 * t as f32 / w as f32).cos(), 0.0]).collect();
        let inp = Inputs::with_rates(InputKind::Spectrum, w, c, HashMap::new()).unwrap();
        let s = inp.of(&x).unwrap();
        assert_eq!(s.len(), w / 2 * c);
        // |rFFT| of cos at bin 2 over 8 samples: 4 at bin 2, 0 elsewhere; bins 1..=4 kept.
        for k in 0..w / 2 {
            let want = if k + 1 == 2 { 4.0f32.ln_1p() } else { 0.0 };
            assert!((s[k * c] - want).abs() < 1e-5, "bin {}: {} vs {want}", k + 1, s[k * c]);
            assert!(s[k * c + 1].abs() < 1e-6);
        }
        assert!(matches!(Inputs::with_rates(InputKind::Time, w, c, HashMap::new()).unwrap().of(&x).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn standardized_windows_have_mean_0_and_std_1_per_channel() {
        let (w, c) = (64, 2);
        // Two windows; channel 1 at 100× the level of channel 0 and offset.
        let x: Vec<f32> = (0..2 * w * c).map(|i| if i % c == 0 { (i as f32 * 0.37).sin() } else { 100.0 * (i as f32 * 0.11).cos() + 7.0 }).collect();
        let inp = Inputs::with_rates(InputKind::Standardized, w, c, HashMap::new()).unwrap();
        let y = inp.of(&x).unwrap();
        for (win, orig) in y.chunks(w * c).zip(x.chunks(w * c)) {
            for ch in 0..c {
                let v: Vec<f64> = (0..w).map(|t| win[t * c + ch] as f64).collect();
                let mean = v.iter().sum::<f64>() / w as f64;
                let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / w as f64).sqrt();
                assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-5, "window channel {ch}: mean {mean}, std {std}");
                // The waveform is kept: (x − its mean) / its std, value by value.
                let o: Vec<f64> = (0..w).map(|t| orig[t * c + ch] as f64).collect();
                let (om, os) = (o.iter().sum::<f64>() / w as f64, (o.iter().map(|a| (a - o.iter().sum::<f64>() / w as f64).powi(2)).sum::<f64>() / w as f64).sqrt());
                for (t, (&y, &x)) in v.iter().zip(&o).enumerate() {
                    assert!((y - (x - om) / os).abs() < 1e-5, "channel {ch} sample {t}: {y} against {}", (x - om) / os);
                }
            }
        }
    }

    #[test]
    fn standardized_views_are_standardized_after_their_augmentations() {
        let (w, c) = (64, 1);
        let batch =
            ContrastiveBatch { anchor: (0..2 * w).map(|i| (i as f32 * 0.3).sin() * 50.0).collect(), positive: (0..2 * w).map(|i| (i as f32 * 0.2).cos() * 9.0 + 4.0).collect(), ..Default::default() };
        let aug = Augment { shift: 0.5, noise: 0.1, ..Default::default() };
        let inp = Inputs::with_rates(InputKind::Standardized, w, c, HashMap::new()).unwrap();
        let (a, p) = inp.augmented_pair(&batch, &aug, 7).unwrap();
        for win in a.chunks(w).chain(p.chunks(w)) {
            let mean = win.iter().map(|&x| x as f64).sum::<f64>() / w as f64;
            let std = (win.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w as f64).sqrt();
            assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-4, "mean {mean}, std {std}");
        }
    }

    #[test]
    fn input_names_read_back_as_their_kinds() {
        for kind in [InputKind::Time, InputKind::Spectrum, InputKind::Whitened, InputKind::Standardized] {
            assert_eq!(serde_norway::from_str::<InputKind>(&kind.to_string()).unwrap(), kind);
        }
    }

    #[test]
    fn whitened_windows_have_a_flat_spectrum_and_keep_the_timing_of_impulses() {
        // A decaying resonance struck at t = 40 and t = 117 (a fault's impacts through a colored
        // path) plus an offset; the second channel is silent.
        let (w, c) = (256, 2);
        let ring = |t: usize| if t >= 40 { (-(t as f32 - 40.0) / 6.0).exp() * (0.9 * t as f32).sin() } else { 0.0 };
        let x: Vec<f32> = (0..w).flat_map(|t| [2.0 + ring(t) + if t >= 117 { ring(t - 77) } else { 0.0 }, 0.0]).collect();
        let inp = Inputs::with_rates(InputKind::Whitened, w, c, HashMap::new()).unwrap();
        assert_eq!(inp.row_len(), w * c);
        let y = inp.of(&x).unwrap();
        assert_eq!(y.len(), w * c);
        let ch0: Vec<f32> = (0..w).map(|t| y[t * c]).collect();
        assert!((0..w).all(|t| y[t * c + 1] == 0.0), "a silent channel stays silent");
        // Flat: every bin but DC has magnitude 1/√w (up to rounding), the mean is gone. (The
        // Nyquist bin is a true zero of two impacts 77 steps apart in 256, and stays zero.)
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(w);
        let (mut input, mut spec) = (ch0.clone(), fft.make_output_vec());
        fft.process(&mut input, &mut spec).unwrap();
        let want = (w as f32).sqrt();
        assert!(spec[0].norm() < 1e-3, "no mean left: {}", spec[0]);
        for (k, s) in spec.iter().enumerate().take(w / 2).skip(1) {
            assert!((s.norm() - want).abs() < 1e-3 * want, "bin {k}: |X| = {} (want {want})", s.norm());
        }
        assert!(spec[w / 2].norm() < 1e-3);
        let variance = ch0.iter().map(|v| v * v).sum::<f32>() / w as f32;
        assert!((variance - 1.0).abs() < 0.02, "about unit variance: {variance}");
        // The two largest samples sit at the two impacts: whitening undoes the ringing.
        let mut order: Vec<usize> = (0..w).collect();
        order.sort_by(|&a, &b| ch0[b].abs().total_cmp(&ch0[a].abs()));
        let mut top = [order[0], order[1]];
        top.sort();
        assert!(top[0].abs_diff(40) <= 1 && top[1].abs_diff(117) <= 1, "peaks at {top:?}");
        let too_short = Inputs::with_rates(InputKind::Whitened, 1, 1, HashMap::new());
        assert!(matches!(too_short, Err(TrainError::Config { ref key, .. }) if key == "data.input"));
    }
}
