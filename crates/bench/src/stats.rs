//! Statistics of repeated measurements: median, IQR, a bootstrap 95 % CI of the median (from
//! [`MIN_CI_SAMPLES`] samples on: below that a percentile bootstrap covers far less than it
//! claims — with 3 samples its interval is the sample's range, which holds the median 75 % of the
//! time), and the regression rule (a change is called only where its CI lies wholly beyond a
//! noise band, or, for a value counted rather than timed, where the change itself does), and
//! outliers by Tukey's fences (criterion's classification: mild past 1.5 IQR from the quartiles,
//! severe past 3).

use serde::{Deserialize, Serialize};

/// Summary of a sample of measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
    pub iqr: f64,
    /// Bootstrap 95 % confidence interval of the median (percentile method, 2000 resamples);
    /// with fewer than [`MIN_CI_SAMPLES`] samples the sample's range instead, which is no 95 %
    /// interval: [`Summary::ci`] gives the interval only where it is one.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Samples past Tukey's fences. (Absent from results of earlier versions: none counted.)
    #[serde(default)]
    pub outliers: Outliers,
}

/// Samples outside Tukey's fences: mild between 1.5 and 3 IQR below the first quartile or above
/// the third, severe past 3 IQR. A timing is skewed high by a busy neighbour or a page fault:
/// high outliers are samples taken while the machine did something else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outliers {
    pub low_severe: usize,
    pub low_mild: usize,
    pub high_mild: usize,
    pub high_severe: usize,
}

impl Outliers {
    /// Counts the samples of `sorted` past the fences of its quartiles `q1`, `q3`.
    fn classify(sorted: &[f64], q1: f64, q3: f64) -> Self {
        let iqr = q3 - q1;
        let (low_severe, low_mild, high_mild, high_severe) = (q1 - 3.0 * iqr, q1 - 1.5 * iqr, q3 + 1.5 * iqr, q3 + 3.0 * iqr);
        let mut o = Outliers::default();
        for &x in sorted {
            match x {
                x if x < low_severe => o.low_severe += 1,
                x if x < low_mild => o.low_mild += 1,
                x if x > high_severe => o.high_severe += 1,
                x if x > high_mild => o.high_mild += 1,
                _ => {}
            }
        }
        o
    }

    pub fn total(&self) -> usize {
        self.low_severe + self.low_mild + self.high_mild + self.high_severe
    }

    pub fn severe(&self) -> usize {
        self.low_severe + self.high_severe
    }
}

impl std::fmt::Display for Outliers {
    /// `3 outliers (2 high mild, 1 high severe)` (criterion's words), or `no outliers`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.total() == 0 {
            return f.write_str("no outliers");
        }
        let kinds = [(self.low_severe, "low severe"), (self.low_mild, "low mild"), (self.high_mild, "high mild"), (self.high_severe, "high severe")];
        let parts: Vec<String> = kinds.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        write!(f, "{} outlier{} ({})", self.total(), if self.total() == 1 { "" } else { "s" }, parts.join(", "))
    }
}

/// Past this share of severe outliers a metric's samples are said to be disturbed (criterion
/// warns at any; a shared VM has some in most categories).
pub const SEVERE_OUTLIER_SHARE: f64 = 0.1;

/// The fewest samples a 95 % CI of the median is given for.
pub const MIN_CI_SAMPLES: usize = 8;

impl Summary {
    /// The 95 % CI of the median, where there are enough samples for one.
    pub fn ci(&self) -> Option<(f64, f64)> {
        (self.n >= MIN_CI_SAMPLES).then_some((self.ci_low, self.ci_high))
    }
}

/// Linear-interpolated quantile of sorted data (type 7, as numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    quantile(&s, 0.5)
}

/// A small deterministic generator for resampling (results must not depend on a global RNG).
struct SplitMix(u64);
impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) as u128 * n as u128) >> 64) as usize
    }
}

pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Bootstrap percentile CI of `stat` over resamples of `v`.
fn bootstrap(v: &[f64], seed: u64, stat: impl Fn(&mut [f64]) -> f64) -> (f64, f64) {
    let mut rng = SplitMix(seed);
    let mut buf = vec![0.0; v.len()];
    let mut stats: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            for b in buf.iter_mut() {
                *b = v[rng.below(v.len())];
            }
            stat(&mut buf)
        })
        .collect();
    stats.sort_by(|a, b| a.total_cmp(b));
    (quantile(&stats, 0.025), quantile(&stats, 0.975))
}

fn median_in_place(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    quantile(v, 0.5)
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    // No samples: every statistic is NaN (a mean of 0 would read as a measurement).
    let mean = if n == 0 { f64::NAN } else { s.iter().sum::<f64>() / n as f64 };
    let std = if n == 0 {
        f64::NAN
    } else if n > 1 {
        (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let (min, max) = (s.first().copied().unwrap_or(f64::NAN), s.last().copied().unwrap_or(f64::NAN));
    let (ci_low, ci_high) = if n >= MIN_CI_SAMPLES { bootstrap(&s, 0xB007 ^ n as u64, median_in_place) } else { (min, max) };
    let (q1, q3) = (quantile(&s, 0.25), quantile(&s, 0.75));
    // Fences need quartiles of something: with fewer than 4 samples there are none.
    let outliers = if n >= 4 { Outliers::classify(&s, q1, q3) } else { Outliers::default() };
    Summary { n, median: quantile(&s, 0.5), mean, std, min, max, q1, q3, iqr: q3 - q1, ci_low, ci_high, outliers }
}

/// What a comparison with a baseline concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regression,
    Improvement,
    NoChange,
    /// Too few samples on a side to tell a change from noise (a single timing, or fewer than
    /// [`MIN_CI_SAMPLES`]): the change is shown, no verdict is called.
    NotCompared,
}

/// A metric compared with its baseline: relative change of the median and its bootstrap CI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `(new − base) / |base|` of the medians (`new / base − 1` for a positive base): positive
    /// when the value rose, whatever the base's sign.
    pub change: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub verdict: Verdict,
}

/// `new` relative to `base`: `new / base − 1` for a positive base, `(new − base) / |base|` for a
/// negative one (an accuracy drop below zero), so a rise is positive either way.
fn relative_change(base: f64, new: f64) -> f64 {
    if base > 0.0 {
        new / base - 1.0
    } else {
        (new - base) / base.abs()
    }
}

/// Compares samples of a metric, or the single values of an `exact` one (counted or computed
/// rather than timed: parameters, engine bytes — which move by the packed kernel's buffers, tens
/// of KB, with the kernels a run's timing chose). The CI of the relative change of the median
/// comes from resampling both sides; a regression (improvement) is called only when the whole
/// CI lies beyond `noise` in the worse (better) direction. An exact value's CI is its change; a
/// measured one with fewer than [`MIN_CI_SAMPLES`] samples on a side gets no verdict.
pub fn compare(base: &[f64], new: &[f64], lower_is_better: bool, exact: bool, noise: f64) -> Change {
    let (mb, mn) = (median(base), median(new));
    let change = relative_change(mb, mn);
    let sampled = base.len() >= MIN_CI_SAMPLES && new.len() >= MIN_CI_SAMPLES;
    if !sampled && !exact {
        return Change { change, ci_low: change, ci_high: change, verdict: Verdict::NotCompared };
    }
    let (lo, hi) = if sampled {
        let mut rng = SplitMix(0xC0_FFEE);
        let (mut bb, mut nb) = (vec![0.0; base.len()], vec![0.0; new.len()]);
        let mut r: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
            .map(|_| {
                for x in bb.iter_mut() {
                    *x = base[rng.below(base.len())];
                }
                for x in nb.iter_mut() {
                    *x = new[rng.below(new.len())];
                }
                relative_change(median_in_place(&mut bb), median_in_place(&mut nb))
            })
            .collect();
        r.sort_by(|a, b| a.total_cmp(b));
        (quantile(&r, 0.025), quantile(&r, 0.975))
    } else {
        (change, change)
    };
    let (worse_beyond, better_beyond) = if lower_is_better { (lo > noise, hi < -noise) } else { (hi < -noise, lo > noise) };
    let verdict = if worse_beyond {
        Verdict::Regression
    } else if better_beyond {
        Verdict::Improvement
    } else {
        Verdict::NoChange
    };
    Change { change, ci_low: lo, ci_high: hi, verdict }
}

/// The least-squares slope of `ln y` on `ln x` over `(x, y)` points (at least two distinct
/// positive `x`, positive `y`).
pub fn log_log_slope(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let (mx, my) = (logs.iter().map(|p| p.0).sum::<f64>() / n, logs.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then_some(sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::log_log_slope;

    #[test]
    fn log_log_slope_recovers_a_power_law() {
        let points: Vec<(f64, f64)> = [256.0, 512.0, 1024.0, 4096.0].iter().map(|&x: &f64| (x, 3.0 * x.powf(1.5))).collect();
        assert!((log_log_slope(&points).unwrap() - 1.5).abs() < 1e-12);
        // A fixed cost pulls the slope below 1.
        let affine: Vec<(f64, f64)> = [4.0, 8.0, 16.0, 32.0].iter().map(|&x| (x, 10.0 + x)).collect();
        assert!(log_log_slope(&affine).unwrap() < 1.0);
        assert_eq!(log_log_slope(&[(8.0, 1.0)]), None);
        assert_eq!(log_log_slope(&[(8.0, 1.0), (8.0, 2.0)]), None, "one size: no slope");
    }
}
