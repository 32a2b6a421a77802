//! Per-sample, per-channel preprocessing: normalization and truncation (SPEC §1).
//!
//! Statistics are taken over the whole (truncated) signal once and kept as an affine map per
//! channel, `x' = (x - offset) * factor`, so a window read later is normalized exactly as if the
//! whole signal had been normalized first.

use std::str::FromStr;

use crate::error::{Result, SignalError};

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
            other => Err(SignalError::config(
                "data.normalization",
                format!("unknown normalization {other:?}; expected none, standardization or minmax"),
            )),
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
            return Err(SignalError::config("data.truncate_length", "must be > 0"));
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

/// Checks a `(L, C)` signal for NaN/Inf and derives its normalization map.
/// Returns the index of the first non-finite value on failure.
pub fn channel_affine(values: &[f32], channels: usize, norm: Normalization) -> std::result::Result<ChannelAffine, usize> {
    // One pass in f64: sum, sum of squares, min, max per channel; finiteness for free.
    let mut sum = vec![0.0f64; channels];
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    let mut finite = true;
    for row in values.chunks_exact(channels) {
        for (c, &x) in row.iter().enumerate() {
            finite &= x.is_finite();
            let xd = x as f64;
            sum[c] += xd;
            lo[c] = lo[c].min(x);
            hi[c] = hi[c].max(x);
        }
    }
    if !finite {
        return Err(values.iter().position(|x| !x.is_finite()).unwrap_or(0));
    }
    let n = (values.len() / channels).max(1) as f64;
    Ok(match norm {
        Normalization::None => ChannelAffine::identity(channels),
        Normalization::Standardization => {
            // Two-pass variance for accuracy: mean first, then squared deviations.
            let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
            let mut dev = vec![0.0f64; channels];
            for row in values.chunks_exact(channels) {
                for (c, &x) in row.iter().enumerate() {
                    let d = x as f64 - mean[c];
                    dev[c] += d * d;
                }
            }
            ChannelAffine {
                offset: mean.iter().map(|&m| m as f32).collect(),
                factor: dev.iter().map(|&d| (1.0 / ((d / n).sqrt() + 1e-8)) as f32).collect(),
            }
        }
        Normalization::MinMax => ChannelAffine {
            offset: lo.clone(),
            factor: lo
                .iter()
                .zip(&hi)
                .map(|(&l, &h)| {
                    let r = (h as f64) - (l as f64);
                    if r == 0.0 { 1.0 } else { (1.0 / r) as f32 }
                })
                .collect(),
        },
    })
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
    fn non_finite_values_are_found() {
        assert_eq!(channel_affine(&[1.0, f32::NAN, 2.0], 1, Normalization::None), Err(1));
        assert_eq!(channel_affine(&[1.0, 2.0, f32::INFINITY, 0.0], 2, Normalization::MinMax), Err(2));
    }

    #[test]
    fn names_parse_and_unknown_is_an_error_naming_the_key() {
        assert_eq!("true".parse::<Normalization>().unwrap(), Normalization::Standardization);
        assert_eq!("minmax".parse::<Normalization>().unwrap(), Normalization::MinMax);
        let e = "zlog".parse::<Normalization>().unwrap_err().to_string();
        assert!(e.contains("data.normalization") && e.contains("zlog"), "{e}");
    }
}
