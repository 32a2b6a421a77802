//! Per-sample, per-channel preprocessing: normalization and truncation (SPEC §1).
//!
//! Statistics are taken over the whole (truncated) signal once and kept as an affine map per
//! channel, `x' = (x - offset) * factor`, so a window read later is normalized exactly as if the
//! whole signal had been normalized first.

use std::str::FromStr;

use crate::error::{Result, Setting, SignalError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalization {
    #[default]
    None,
    /// `(x - mean) / (std + 1e-8)`, population std.
    Standardization,
    /// `(x - min) / (max - min)`, or `/ 1` where `max == min`.
    MinMax,
}

impl FromStr for Normalization {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "false" | "no" => Ok(Normalization::None),
            "standardization" | "standardize" | "zscore" | "true" | "yes" => Ok(Normalization::Standardization),
            "minmax" | "min_max" | "min-max" => Ok(Normalization::MinMax),
            other => Err(SignalError::invalid(Setting::Normalization, format!("unknown normalization {other:?}; expected none, standardization or minmax"))),
        }
    }
}

impl std::fmt::Display for Normalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Normalization::None => "none",
            Normalization::Standardization => "standardization",
            Normalization::MinMax => "minmax",
        })
    }
}

/// Preprocessing of one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreprocessConfig {
    pub normalization: Normalization,
    /// Keep only the first N time steps.
    pub truncate_length: Option<usize>,
}

impl PreprocessConfig {
    pub fn validate(&self) -> Result<()> {
        if self.truncate_length == Some(0) {
            return Err(SignalError::invalid(Setting::TruncateLength, "must be > 0"));
        }
        Ok(())
    }

    /// Length after truncation.
    pub fn effective_length(&self, length: usize) -> usize {
        self.truncate_length.map_or(length, |t| t.min(length))
    }
}

/// The affine map `x' = (x - offset[c]) * factor[c]` per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelAffine {
    pub offset: Vec<f32>,
    pub factor: Vec<f32>,
}

impl ChannelAffine {
    pub fn identity(channels: usize) -> Self {
        ChannelAffine { offset: vec![0.0; channels], factor: vec![1.0; channels] }
    }

    /// Normalizes `(rows, C)` row-major values in place.
    #[inline]
    pub fn apply(&self, values: &mut [f32]) {
        let c = self.offset.len();
        if c == 1 {
            let (o, f) = (self.offset[0], self.factor[0]);
            for v in values.iter_mut() {
                *v = (*v - o) * f;
            }
        } else {
            for row in values.chunks_exact_mut(c) {
                for ((v, o), f) in row.iter_mut().zip(&self.offset).zip(&self.factor) {
                    *v = (*v - o) * f;
                }
            }
        }
    }
}

/// Per-channel statistics of a signal read block by block, so a signal longer than memory is
/// checked with one block in memory: count, mean and sum of squared deviations (each block
/// two-pass, blocks merged as Chan et al.), minimum and maximum, and the first non-finite value.
#[derive(Clone, Debug)]
pub struct ChannelStats {
    rows: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// Values added so far (for the index of a non-finite one).
    seen: usize,
}

impl ChannelStats {
    pub fn new(channels: usize) -> Self {
        ChannelStats { rows: 0, mean: vec![0.0; channels], m2: vec![0.0; channels], lo: vec![f32::INFINITY; channels], hi: vec![f32::NEG_INFINITY; channels], seen: 0 }
    }

    /// Adds `(rows, C)` row-major values. On a NaN or infinity, returns its index counted from
    /// the first value ever added.
    pub fn add(&mut self, block: &[f32]) -> std::result::Result<(), usize> {
        let channels = self.mean.len();
        if let Some(i) = block.iter().position(|x| !x.is_finite()) {
            return Err(self.seen + i);
        }
        self.seen += block.len();
        let rows = block.len() / channels.max(1);
        if rows == 0 {
            return Ok(());
        }
        let mut sum = vec![0.0f64; channels];
        for row in block.chunks_exact(channels) {
            for (c, &x) in row.iter().enumerate() {
                sum[c] += x as f64;
                self.lo[c] = self.lo[c].min(x);
                self.hi[c] = self.hi[c].max(x);
            }
        }
        let nb = rows as f64;
        let block_mean: Vec<f64> = sum.iter().map(|s| s / nb).collect();
        let mut block_m2 = vec![0.0f64; channels];
        for row in block.chunks_exact(channels) {
            for (c, &x) in row.iter().enumerate() {
                let d = x as f64 - block_mean[c];
                block_m2[c] += d * d;
            }
        }
        if self.rows == 0 {
            self.mean = block_mean;
            self.m2 = block_m2;
        } else {
            let na = self.rows as f64;
            let n = na + nb;
            for c in 0..channels {
                let delta = block_mean[c] - self.mean[c];
                self.mean[c] += delta * nb / n;
                self.m2[c] += block_m2[c] + delta * delta * na * nb / n;
            }
        }
        self.rows += rows as u64;
        Ok(())
    }

    /// Whether values were added and every channel held one value throughout.
    pub fn constant(&self) -> bool {
        self.rows > 0 && self.lo.iter().zip(&self.hi).all(|(l, h)| l == h)
    }

    /// The normalization map of everything added, where every normalized value is finite;
    /// else the first channel whose extremes the map takes past f32's range (finite values near
    /// ±3.4e38 overflow `x − mean` or `x − min`).
    pub fn checked_affine(&self, norm: Normalization) -> std::result::Result<ChannelAffine, usize> {
        let map = self.affine(norm);
        let normalized = |x: f32, c: usize| (x - map.offset[c]) * map.factor[c];
        match (0..self.lo.len()).find(|&c| self.rows > 0 && !(normalized(self.lo[c], c).is_finite() && normalized(self.hi[c], c).is_finite())) {
            Some(c) => Err(c),
            None => Ok(map),
        }
    }

    /// The normalization map of everything added.
    pub fn affine(&self, norm: Normalization) -> ChannelAffine {
        let n = self.rows.max(1) as f64;
        match norm {
            Normalization::None => ChannelAffine::identity(self.mean.len()),
            Normalization::Standardization => {
                ChannelAffine { offset: self.mean.iter().map(|&m| m as f32).collect(), factor: self.m2.iter().map(|&d| (1.0 / ((d / n).sqrt() + 1e-8)) as f32).collect() }
            }
            Normalization::MinMax => ChannelAffine {
                offset: self.lo.clone(),
                factor: self
                    .lo
                    .iter()
                    .zip(&self.hi)
                    .map(|(&l, &h)| {
                        let r = (h as f64) - (l as f64);
                        if r == 0.0 {
                            1.0
                        } else {
                            (1.0 / r) as f32
                        }
                    })
                    .collect(),
            },
        }
    }
}

/// Checks a `(L, C)` signal held in memory for NaN/Inf and derives its normalization map.
/// Returns the index of the first non-finite value on failure.
pub fn channel_affine(values: &[f32], channels: usize, norm: Normalization) -> std::result::Result<ChannelAffine, usize> {
    let mut stats = ChannelStats::new(channels);
    stats.add(values)?;
    Ok(stats.affine(norm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardization_gives_zero_mean_unit_std_per_channel() {
        let v: Vec<f32> = (0..2000).map(|i| if i % 2 == 0 { i as f32 * 0.5 } else { 3.0 - (i as f32).sin() * 4.0 }).collect();
        let a = channel_affine(&v, 2, Normalization::Standardization).unwrap();
        let mut w = v.clone();
        a.apply(&mut w);
        for c in 0..2 {
            let xs: Vec<f64> = w.iter().skip(c).step_by(2).map(|&x| x as f64).collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let s = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
            assert!(m.abs() < 1e-4 && (s - 1.0).abs() < 1e-4, "channel {c}: {m} {s}");
        }
    }

    #[test]
    fn minmax_maps_to_unit_interval_and_constant_channel_is_divided_by_one() {
        let v = vec![2.0, 5.0, 4.0, 5.0, 6.0, 5.0];
        let a = channel_affine(&v, 2, Normalization::MinMax).unwrap();
        let mut w = v.clone();
        a.apply(&mut w);
        assert_eq!(w, vec![0.0, 0.0, 0.5, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn statistics_merged_block_by_block_match_the_whole_signal() {
        let v: Vec<f32> = (0..30_001 * 3).map(|i| ((i as f32) * 0.37).sin() * 5.0 + (i % 3) as f32 * 100.0 + 1e4).collect();
        for norm in [Normalization::Standardization, Normalization::MinMax] {
            let whole = channel_affine(&v, 3, norm).unwrap();
            for block_rows in [1usize, 7, 4096, 30_001] {
                let mut s = ChannelStats::new(3);
                for b in v.chunks(block_rows * 3) {
                    s.add(b).unwrap();
                }
                let a = s.affine(norm);
                for c in 0..3 {
                    assert!((a.offset[c] - whole.offset[c]).abs() <= 1e-3 && ((a.factor[c] - whole.factor[c]) / whole.factor[c]).abs() < 1e-6, "{norm} blocks of {block_rows}: {a:?} vs {whole:?}");
                }
            }
        }
        let mut s = ChannelStats::new(2);
        s.add(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.add(&[5.0, f32::NAN]), Err(5), "index counted from the first value added");
    }

    #[test]
    fn non_finite_values_are_found() {
        assert_eq!(channel_affine(&[1.0, f32::NAN, 2.0], 1, Normalization::None), Err(1));
        assert_eq!(channel_affine(&[1.0, 2.0, f32::INFINITY, 0.0], 2, Normalization::MinMax), Err(2));
    }

    #[test]
    fn names_parse_and_unknown_is_an_error_naming_the_setting() {
        assert_eq!("true".parse::<Normalization>().unwrap(), Normalization::Standardization);
        assert_eq!("minmax".parse::<Normalization>().unwrap(), Normalization::MinMax);
        let e = "zlog".parse::<Normalization>().unwrap_err();
        assert!(matches!(&e, SignalError::Invalid { setting: Setting::Normalization, reason } if reason.contains("zlog")), "{e}");
    }
}
