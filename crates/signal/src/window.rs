//! Windowing: where the windows of a signal of length L start (SPEC §1).

use std::str::FromStr;

use crate::error::{Result, Setting, SignalError};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WindowStrategy {
    /// Starts `i * stride`.
    Sequential,
    /// Distinct uniform starts in `0..=L-W`.
    #[default]
    Random,
    /// Starts spread evenly over `0..=L-W`.
    EvenlySpaced,
}

impl FromStr for WindowStrategy {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sequential" => Ok(WindowStrategy::Sequential),
            "random" => Ok(WindowStrategy::Random),
            "evenly_spaced" | "evenly-spaced" | "even" => Ok(WindowStrategy::EvenlySpaced),
            other => Err(SignalError::invalid(Setting::WindowStrategy, format!("unknown strategy {other:?}; expected sequential, random or evenly_spaced"))),
        }
    }
}

impl std::fmt::Display for WindowStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowStrategy::Sequential => "sequential",
            WindowStrategy::Random => "random",
            WindowStrategy::EvenlySpaced => "evenly_spaced",
        })
    }
}

/// How windows are cut. Defaults follow PHM-Vibench's contrastive configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// W, samples per window (default 1024).
    pub window_size: usize,
    /// Step between sequential windows (default W).
    pub stride: usize,
    /// Windows per sample (default 2: anchor and positive).
    pub num_window: usize,
    pub strategy: WindowStrategy,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { window_size: 1024, stride: 1024, num_window: 2, strategy: WindowStrategy::Random }
    }
}

impl WindowConfig {
    pub fn validate(&self) -> Result<()> {
        for (setting, v) in [(Setting::WindowSize, self.window_size), (Setting::Stride, self.stride), (Setting::NumWindow, self.num_window)] {
            if v == 0 {
                return Err(SignalError::invalid(setting, "must be > 0"));
            }
        }
        Ok(())
    }

    /// How many windows a signal of length `len` yields (0 when `len < W`).
    pub fn count(&self, len: usize) -> usize {
        let w = self.window_size;
        if len < w {
            return 0;
        }
        let positions = len - w + 1;
        match self.strategy {
            WindowStrategy::Sequential => self.num_window.min((len - w) / self.stride + 1),
            // At most one window per start: more would repeat one (a pair of one window twice).
            WindowStrategy::Random | WindowStrategy::EvenlySpaced => self.num_window.min(positions),
        }
    }

    /// Appends the window starts for a signal of length `len` to `out` (cleared first).
    /// `rng` is used by the random strategy only.
    pub fn starts(&self, len: usize, rng: &mut Rng, out: &mut Vec<usize>) {
        out.clear();
        let w = self.window_size;
        if len < w {
            return;
        }
        let span = len - w;
        match self.strategy {
            WindowStrategy::Sequential => out.extend((0..self.count(len)).map(|i| i * self.stride)),
            WindowStrategy::EvenlySpaced => {
                // (With k ≤ span + 1 the starts are at least one apart before rounding: distinct.)
                let k = self.count(len);
                if k == 1 {
                    out.push(span / 2);
                } else {
                    let span_f = span as f64;
                    out.extend((0..k).map(|i| (i as f64 * span_f / (k - 1) as f64).round() as usize));
                }
            }
            WindowStrategy::Random => random_distinct(span + 1, self.num_window, rng, out),
        }
    }
}

/// `k` distinct values from `0..n` (all of them if `k >= n`), in random order, in O(k)
/// expected time and memory (Floyd's algorithm, then a shuffle of the k picks).
pub fn random_distinct(n: usize, k: usize, rng: &mut Rng, out: &mut Vec<usize>) {
    if k >= n {
        out.extend(0..n);
        rng.shuffle(out);
        return;
    }
    let base = out.len();
    // k is small in training (2 per contrastive pair), where a linear scan of the picks beats
    // hashing; past a few dozen the scan would make the draw O(k²), so a set holds them.
    const SCAN: usize = 32;
    let mut seen = (k > SCAN).then(|| std::collections::HashSet::with_capacity(k));
    for j in (n - k)..n {
        let t = rng.below(j as u64 + 1) as usize;
        // Floyd: t if not yet picked, else j (never picked: every earlier pick is below j).
        let pick = match seen.as_mut() {
            Some(set) => {
                if set.insert(t) {
                    t
                } else {
                    set.insert(j);
                    j
                }
            }
            None if out[base..].contains(&t) => j,
            None => t,
        };
        out.push(pick);
    }
    rng.shuffle(&mut out[base..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(w: usize, stride: usize, k: usize, strategy: WindowStrategy) -> WindowConfig {
        WindowConfig { window_size: w, stride, num_window: k, strategy }
    }

    #[test]
    fn sequential_follows_the_spec_formula() {
        let mut r = Rng::new(0);
        let mut out = Vec::new();
        cfg(4, 3, 10, WindowStrategy::Sequential).starts(14, &mut r, &mut out);
        // (14 - 4) / 3 + 1 = 4 windows
        assert_eq!(out, vec![0, 3, 6, 9]);
        cfg(4, 3, 2, WindowStrategy::Sequential).starts(14, &mut r, &mut out);
        assert_eq!(out, vec![0, 3]);
    }

    #[test]
    fn evenly_spaced_one_and_many() {
        let mut r = Rng::new(0);
        let mut out = Vec::new();
        cfg(4, 1, 1, WindowStrategy::EvenlySpaced).starts(15, &mut r, &mut out);
        assert_eq!(out, vec![5]); // (15-4)/2
        cfg(4, 1, 3, WindowStrategy::EvenlySpaced).starts(15, &mut r, &mut out);
        assert_eq!(out, vec![0, 6, 11]); // round(5.5) = 6
                                         // Fewer starts than windows asked: each start once (two windows of a signal as long as
                                         // one window were the same window twice, a pair of identical views).
        let c = cfg(4, 1, 3, WindowStrategy::EvenlySpaced);
        c.starts(4, &mut r, &mut out);
        assert_eq!((out.clone(), c.count(4)), (vec![0], 1));
        c.starts(5, &mut r, &mut out);
        assert_eq!((out.clone(), c.count(5)), (vec![0, 1], 2));
    }

    #[test]
    fn random_starts_are_distinct_in_range_and_cover_uniformly() {
        let mut r = Rng::new(1);
        let mut out = Vec::new();
        let c = cfg(10, 1, 3, WindowStrategy::Random);
        let mut hits = [0usize; 11];
        for _ in 0..22_000 {
            c.starts(20, &mut r, &mut out);
            assert_eq!(out.len(), 3);
            let mut s = out.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
            for &x in &out {
                assert!(x <= 10);
                hits[x] += 1;
            }
        }
        // 66 000 picks over 11 positions: 6000 each expected.
        for h in hits {
            assert!((5_500..6_500).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn random_with_fewer_positions_than_asked_gives_all() {
        let mut r = Rng::new(2);
        let mut out = Vec::new();
        cfg(8, 1, 5, WindowStrategy::Random).starts(10, &mut r, &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn random_is_cheap_on_huge_signals() {
        // O(num_window): 2⁶² positions cannot be materialized (a list of them would abort on its
        // capacity), so a draw that built one would fail here.
        let mut r = Rng::new(3);
        let mut out = Vec::new();
        cfg(1024, 1, 2, WindowStrategy::Random).starts(1 << 62, &mut r, &mut out);
        assert!(out.len() == 2 && out[0] != out[1] && out.iter().all(|&s| s <= (1 << 62) - 1024), "{out:?}");
        assert!(out.capacity() < 1024);
    }

    /// Floyd's draw gives k distinct values in range, past the linear scan's size (through the
    /// set) as below it, and every value can be drawn.
    #[test]
    fn random_distinct_draws_distinct_values_at_every_size() {
        let mut r = Rng::new(11);
        for (n, k) in [(10, 3), (100, 32), (100, 33), (10_000, 5_000), (1 << 40, 1000)] {
            let mut out = vec![usize::MAX]; // what is already there stays
            random_distinct(n, k, &mut r, &mut out);
            assert_eq!((out.len(), out[0]), (k + 1, usize::MAX));
            let set: std::collections::HashSet<usize> = out[1..].iter().copied().collect();
            assert!(set.len() == k && set.iter().all(|&v| v < n), "{n}, {k}");
        }
        let mut hits = [0usize; 40];
        for _ in 0..2000 {
            let mut out = Vec::new();
            random_distinct(40, 35, &mut r, &mut out);
            out.iter().for_each(|&v| hits[v] += 1);
        }
        assert!(hits.iter().all(|&h| h > 1500 && h < 2000), "each of 40 values in ~7/8 of the draws: {hits:?}");
    }

    #[test]
    fn short_signal_gives_no_windows() {
        let mut r = Rng::new(0);
        let mut out = vec![7];
        for s in [WindowStrategy::Sequential, WindowStrategy::Random, WindowStrategy::EvenlySpaced] {
            cfg(100, 10, 2, s).starts(99, &mut r, &mut out);
            assert!(out.is_empty());
            assert_eq!(cfg(100, 10, 2, s).count(99), 0);
        }
    }

    #[test]
    fn zero_sizes_and_unknown_strategy_are_errors_naming_the_setting() {
        for (c, setting) in
            [(cfg(0, 1, 2, WindowStrategy::Random), Setting::WindowSize), (cfg(8, 0, 2, WindowStrategy::Random), Setting::Stride), (cfg(8, 1, 0, WindowStrategy::Random), Setting::NumWindow)]
        {
            let e = c.validate().unwrap_err();
            assert!(matches!(e, SignalError::Invalid { setting: s, .. } if s == setting), "{e}");
        }
        let e = "spiral".parse::<WindowStrategy>().unwrap_err();
        assert!(matches!(&e, SignalError::Invalid { setting: Setting::WindowStrategy, reason } if reason.contains("spiral")), "{e}");
    }
}
