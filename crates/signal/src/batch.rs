//! Contrastive batches: for each Id, preprocess and cut 2 windows → anchor and positive,
//! `[B, W, C]` each. Ids without 2 windows (too short, non-finite values) are skipped and
//! counted, each named once.
//!
//! [`BatchBuilder`] reads only the two windows of each Id from the store (hyperslabs). The
//! per-Id normalization statistics need the whole signal once; they are computed on first use
//! and kept, so later epochs read `2·W·C` values per Id and nothing more.

use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::error::{Result, Setting, SignalError};
use crate::preprocess::{ChannelAffine, ChannelStats, PreprocessConfig};
use crate::rng::{mix_seed, Rng};
use crate::store::SignalStore;
use crate::window::WindowConfig;

/// Anchor and positive windows of B Ids, `[B, W, C]` row-major each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContrastiveBatch {
    pub anchor: Vec<f32>,
    pub positive: Vec<f32>,
    /// The Ids of the rows, in order.
    pub ids: Vec<u64>,
    pub window: usize,
    pub channels: usize,
    /// Ids of this batch that were skipped.
    pub skipped: Vec<u64>,
}

impl ContrastiveBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Values per row: `W * C`.
    pub fn row_len(&self) -> usize {
        self.window * self.channels
    }
}

/// Why an Id yields no contrastive pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Fewer than two windows fit: in the signal of `length` samples, or in the `region` that
    /// `data.time_split` leaves of it (`region` = `length` without a split).
    TooShort {
        length: usize,
        region: usize,
        window: usize,
        /// Whether the whole signal would give a pair (then the split alone is at fault).
        whole_gives_pair: bool,
    },
    NonFinite {
        index: usize,
    },
    /// Another channel count than the store's (its most common one).
    Channels {
        channels: usize,
        store: usize,
    },
    /// Its values could not be read (a file cut short, a corrupt chunk).
    Unreadable {
        reason: String,
    },
    /// Every channel holds one value throughout (a dead recording): its windows are all alike,
    /// and normalized they are all 0.
    Constant,
    /// Finite values so large that normalizing them leaves f32's range.
    NormalizationOverflow {
        channel: usize,
        normalization: crate::Normalization,
    },
}

impl SkipReason {
    /// The setting that made an Id too short, where one did: the split of its time
    /// (`data.time_split`), the window's length (`data.window_size`, against the signal
    /// `data.truncate_length` leaves), or the step between sequential windows (`data.stride`).
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            SkipReason::TooShort { whole_gives_pair: true, .. } => Some("data.time_split"),
            SkipReason::TooShort { length, window, .. } if window >= length => Some("data.window_size"),
            SkipReason::TooShort { .. } => Some("data.stride"),
            _ => None,
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::TooShort { length, region, window, whole_gives_pair: true } if region < length => {
                write!(f, "the first {region} of its {length} samples (the part data.time_split leaves for training) give fewer than 2 windows of {window}")
            }
            // A window shorter than the signal gives two distinct starts; fewer means their step.
            SkipReason::TooShort { length, window, .. } if window < length => write!(f, "signal of length {length} gives fewer than 2 windows of {window} at data.stride apart"),
            SkipReason::TooShort { length, window, .. } => write!(f, "signal of length {length} gives fewer than 2 windows of {window} (data.window_size)"),
            SkipReason::NonFinite { index } => write!(f, "non-finite value (NaN or Inf) at flat index {index}"),
            SkipReason::Unreadable { reason } => write!(f, "unreadable: {reason}"),
            SkipReason::Constant => write!(f, "every channel holds one value throughout: its windows are all alike, nothing to contrast"),
            SkipReason::Channels { channels, store } => write!(f, "{channels} channels, where the store's signals have {store}"),
            SkipReason::NormalizationOverflow { channel, normalization } => {
                write!(f, "channel {channel}'s values are so large that normalizing them (data.normalization: {normalization}) overflows f32 (values near ±3.4e38)")
            }
        }
    }
}

/// Ids skipped so far, each with its reason, recorded once (the caller reports them: the library
/// prints nothing).
#[derive(Default, Debug)]
pub struct SkipLog {
    entries: Mutex<Vec<(u64, SkipReason)>>,
}

impl SkipLog {
    fn record(&self, id: u64, reason: SkipReason) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !e.iter().any(|(i, _)| *i == id) {
            e.push((id, reason));
        }
    }

    pub fn entries(&self) -> Vec<(u64, SkipReason)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What is known of one Id once checked: its normalization map or why it is skipped.
type Checked = std::result::Result<ChannelAffine, SkipReason>;

/// Values per block of the statistics pass (4 MiB of f32): the pass holds one block per worker,
/// whatever the signal's length.
const STATS_BLOCK_VALUES: usize = 1 << 20;

/// Builds contrastive batches from a store.
pub struct BatchBuilder {
    store: Arc<dyn SignalStore>,
    preprocess: PreprocessConfig,
    window: WindowConfig,
    channels: usize,
    checked: Vec<OnceLock<Checked>>,
    skips: SkipLog,
    /// Windows are cut from the first `time_split` of each (truncated) signal; statistics still
    /// cover the whole signal (the evaluation's time split keeps the rest unseen).
    time_split: f64,
}

impl BatchBuilder {
    /// Validates the configuration; all samples of the store must share one channel count.
    pub fn new(store: Arc<dyn SignalStore>, preprocess: PreprocessConfig, window: WindowConfig) -> Result<Self> {
        preprocess.validate()?;
        window.validate()?;
        let channels = store.channels();
        let checked = (0..store.samples().len()).map(|_| OnceLock::new()).collect();
        Ok(BatchBuilder { store, preprocess, window, channels, checked, skips: SkipLog::default(), time_split: 1.0 })
    }

    /// Restricts training windows to the first `fraction` of each signal (0 < fraction ≤ 1).
    pub fn with_time_split(mut self, fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(SignalError::invalid(Setting::TimeSplit, "must be in (0, 1]"));
        }
        self.time_split = fraction;
        Ok(self)
    }

    /// Rows of a signal of (truncated) length `len` that training windows may come from.
    fn window_region(&self, len: usize) -> usize {
        if self.time_split >= 1.0 {
            len
        } else {
            (len as f64 * self.time_split).floor() as usize
        }
    }

    pub fn store(&self) -> &Arc<dyn SignalStore> {
        &self.store
    }

    pub fn window(&self) -> &WindowConfig {
        &self.window
    }

    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Every Id skipped so far, with its reason.
    pub fn skips(&self) -> &SkipLog {
        &self.skips
    }

    /// Checks an Id: reads the (truncated) signal once, a block at a time, looks for NaN/Inf and derives the
    /// normalization map. Cached.
    pub fn check(&self, id: u64) -> Result<&Checked> {
        let idx = self.store.index_of(id)?;
        if let Some(c) = self.checked[idx].get() {
            return Ok(c);
        }
        let info = &self.store.samples()[idx];
        let len = self.preprocess.effective_length(info.length);
        let checked = if info.channels != self.channels {
            Err(SkipReason::Channels { channels: info.channels, store: self.channels })
        } else if !self.pair_possible(self.window_region(len)) {
            Err(SkipReason::TooShort { length: len, region: self.window_region(len), window: self.window.window_size, whole_gives_pair: self.pair_possible(len) })
        } else {
            let norm = self.preprocess.normalization;
            match self.stream_stats(id, len, info.channels) {
                // A store cut short or corrupt in this Id's values: the Id is named and left out,
                // not the whole run stopped at its first batch.
                Err(SignalError::BadSample { reason, .. }) => Err(SkipReason::Unreadable { reason }),
                Err(other) => return Err(other),
                Ok(Err(index)) => Err(SkipReason::NonFinite { index }),
                Ok(Ok(stats)) if stats.constant() => Err(SkipReason::Constant),
                Ok(Ok(stats)) => stats.checked_affine(norm).map_err(|channel| SkipReason::NormalizationOverflow { channel, normalization: norm }),
            }
        };
        if let Err(reason) = &checked {
            self.skips.record(id, reason.clone());
        }
        Ok(self.checked[idx].get_or_init(|| checked))
    }

    /// The statistics of the first `len` rows of `id`, read a block of rows at a time so a
    /// signal longer than memory needs one block of it (`Err(index)` at a non-finite value).
    fn stream_stats(&self, id: u64, len: usize, channels: usize) -> Result<std::result::Result<ChannelStats, usize>> {
        let block_rows = (STATS_BLOCK_VALUES / channels.max(1)).clamp(1, len.max(1));
        limits::check(
            || format!("{}: the statistics of Id {id} ({channels} channels, a block of {block_rows} rows)", self.store.path().display()),
            limits::bytes(&[block_rows, channels], 4).saturating_add(limits::bytes(&[channels], 40)),
        )?;
        let mut block = vec![0.0f32; block_rows * channels];
        let mut stats = ChannelStats::new(channels);
        let mut start = 0;
        while start < len {
            let rows = block_rows.min(len - start);
            let values = &mut block[..rows * channels];
            self.store.read_rows_into(id, start, rows, values)?;
            if let Err(index) = stats.add(values) {
                return Ok(Err(index));
            }
            start += rows;
        }
        Ok(Ok(stats))
    }

    /// Whether `id` gives a contrastive pair (checking it if needed).
    pub fn usable(&self, id: u64) -> Result<bool> {
        Ok(self.check(id)?.is_ok())
    }

    fn pair_possible(&self, len: usize) -> bool {
        let mut two = self.window;
        two.num_window = 2;
        two.count(len) >= 2
    }

    /// Checks many Ids in parallel (the first epoch's full reads), returning the usable ones.
    pub fn usable_ids(&self, ids: &[u64]) -> Result<Vec<u64>> {
        let flags: Vec<bool> = ids.par_iter().map(|&id| self.usable(id)).collect::<Result<_>>()?;
        Ok(ids.iter().zip(flags).filter(|(_, ok)| *ok).map(|(&id, _)| id).collect())
    }

    /// Assembles the batch for `ids` into `out`, reusing its buffers. Window draws depend only on
    /// `(seed, id)`, so a batch is the same whichever thread builds it.
    pub fn build_into(&self, ids: &[u64], seed: u64, out: &mut ContrastiveBatch) -> Result<()> {
        out.ids.clear();
        out.skipped.clear();
        // Checking is cached after an Id's first use; the first time it reads the whole signal, so
        // the checks of a batch run in parallel too.
        let usable: Vec<bool> = ids.par_iter().map(|&id| self.usable(id)).collect::<Result<_>>()?;
        for (&id, ok) in ids.iter().zip(usable) {
            if ok {
                out.ids.push(id);
            } else {
                out.skipped.push(id);
            }
        }
        let row = self.window.window_size * self.channels;
        let n = out.ids.len();
        out.window = self.window.window_size;
        out.channels = self.channels;
        out.anchor.resize(n * row, 0.0);
        out.positive.resize(n * row, 0.0);
        let w = self.window.window_size;
        let ids = &out.ids;
        out.anchor.par_chunks_mut(row.max(1)).zip(out.positive.par_chunks_mut(row.max(1))).zip(ids.par_iter()).try_for_each_init(Vec::new, |starts, ((a, p), &id)| -> Result<()> {
            let idx = self.store.index_of(id)?;
            let len = self.window_region(self.preprocess.effective_length(self.store.samples()[idx].length));
            let mut rng = Rng::new(mix_seed(&[seed, id]));
            let mut two = self.window;
            two.num_window = 2;
            two.starts(len, &mut rng, starts);
            self.store.read_rows_into(id, starts[0], w, a)?;
            self.store.read_rows_into(id, starts[1], w, p)?;
            if let Ok(affine) = self.check(id)? {
                affine.apply(a);
                affine.apply(p);
            }
            Ok(())
        })
    }

    pub fn build(&self, ids: &[u64], seed: u64) -> Result<ContrastiveBatch> {
        let mut b = ContrastiveBatch::default();
        self.build_into(ids, seed, &mut b)?;
        Ok(b)
    }

    /// K windows of one Id by this builder's strategy (for evaluation), `[K, W, C]`, normalized.
    /// `region` restricts the windows to rows `region.0..region.1` of the (truncated) signal.
    pub fn windows_of(&self, id: u64, region: (usize, usize), window: &WindowConfig, seed: u64) -> Result<Vec<f32>> {
        let affine = match self.check(id)? {
            Ok(a) => a.clone(),
            Err(reason) => return Err(SignalError::BadSample { path: self.store.path().to_path_buf(), id, reason: reason.to_string() }),
        };
        let (lo, hi) = region;
        let mut starts = Vec::new();
        window.starts(hi.saturating_sub(lo), &mut Rng::new(mix_seed(&[seed, id])), &mut starts);
        let row = window.window_size * self.channels;
        let mut out = vec![0.0f32; starts.len() * row];
        for (chunk, &s) in out.chunks_mut(row).zip(&starts) {
            self.store.read_rows_into(id, lo + s, window.window_size, chunk)?;
            affine.apply(chunk);
        }
        Ok(out)
    }
}
