//! What the encoder is fed for a batch of windows: the samples themselves (`data.input: time`) or
//! their log-magnitude spectrum (`data.input: spectrum`: `log(1 + |rFFT|)` of each mean-removed
//! window per channel, bins 1…W/2, as `quality_ref.py`'s `Spectrum`), and each window's sampling
//! rate from the table (the ISFM's time channel).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};
use signal::{ContrastiveBatch, Dataset};

use crate::config::{Config, InputKind};
use crate::error::{Result, TrainError};

/// Turns windows into encoder inputs.
pub struct Inputs {
    kind: InputKind,
    window: usize,
    channels: usize,
    fft: Option<Arc<dyn RealToComplex<f32>>>,
    rates: HashMap<u64, f32>,
}

impl Inputs {
    pub fn new(cfg: &Config, ds: &Dataset) -> Result<Self> {
        let channels = ds.store.samples().first().map_or(1, |s| s.channels);
        Self::with_rates(cfg.data.input, cfg.data.window_size, channels, crate::trainer::sample_rates(ds))
    }

    pub fn with_rates(kind: InputKind, window: usize, channels: usize, rates: HashMap<u64, f32>) -> Result<Self> {
        let fft = match kind {
            InputKind::Time => None,
            InputKind::Spectrum if window < 2 => return Err(TrainError::Config { key: "data.input".into(), reason: format!("a spectrum needs windows of at least 2 samples, not {window}") }),
            InputKind::Spectrum => Some(RealFftPlanner::<f32>::new().plan_fft_forward(window)),
        };
        Ok(Inputs { kind, window, channels, fft, rates })
    }

    /// Values per encoder input row.
    pub fn row_len(&self) -> usize {
        match self.kind {
            InputKind::Time => self.window * self.channels,
            InputKind::Spectrum => self.window / 2 * self.channels,
        }
    }

    /// Windows `[n, W, C]` as encoder input (borrowed as they are in the time domain).
    pub fn of<'a>(&self, windows: &'a [f32]) -> Result<Cow<'a, [f32]>> {
        let Some(fft) = &self.fft else { return Ok(Cow::Borrowed(windows)) };
        let (w, c) = (self.window, self.channels);
        let bins = w / 2;
        if windows.len() % (w * c) != 0 {
            return Err(TrainError::Data(format!("{} values are not whole windows of {w} × {c}", windows.len())));
        }
        let mut out = vec![0.0f32; windows.len() / (w * c) * bins * c];
        out.par_chunks_mut(bins * c).zip(windows.par_chunks(w * c)).try_for_each_init(
            || (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec()),
            |(input, spectrum, scratch), (o, x)| -> Result<()> {
                for ch in 0..c {
                    let mean = (0..w).map(|t| x[t * c + ch] as f64).sum::<f64>() / w as f64;
                    for (t, v) in input.iter_mut().enumerate() {
                        *v = (x[t * c + ch] as f64 - mean) as f32;
                    }
                    fft.process_with_scratch(input, spectrum, scratch).map_err(|e| TrainError::Data(format!("FFT: {e}")))?;
                    for (k, s) in spectrum[1..=bins].iter().enumerate() {
                        o[k * c + ch] = s.norm().ln_1p();
                    }
                }
                Ok(())
            },
        )?;
        Ok(Cow::Owned(out))
    }

    /// The anchor and positive of a batch as encoder input.
    pub fn pair<'a>(&self, batch: &'a ContrastiveBatch) -> Result<(Cow<'a, [f32]>, Cow<'a, [f32]>)> {
        Ok((self.of(&batch.anchor)?, self.of(&batch.positive)?))
    }

    /// The sampling rate of each Id (1 Hz where the table has none).
    pub fn rates(&self, ids: &[u64]) -> Vec<f32> {
        ids.iter().map(|id| self.rates.get(id).copied().unwrap_or(1.0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
