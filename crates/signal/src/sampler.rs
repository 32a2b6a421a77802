//! The batch sampler: epochs over Ids in a seeded shuffle, each batch assembled in parallel and
//! prefetched on a producer thread through a bounded channel, so the consumer never waits on data
//! while the producer keeps up. Deterministic for a seed: batch `k` of epoch `e` is the same
//! whatever the thread timing, and a run can start at any `(epoch, batch)` (resume).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::batch::{BatchBuilder, ContrastiveBatch};
use crate::error::{Result, Setting, SignalError};
use crate::rng::{mix_seed, Rng};

/// Sampler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Ids per batch (default 32).
    pub batch_size: usize,
    /// Seed of shuffles and window draws (default 0).
    pub seed: u64,
    /// Shuffle Ids every epoch (default true).
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size` (default true: InfoNCE wants full batches).
    pub drop_last: bool,
    /// Batches prepared ahead (default 4).
    pub prefetch: usize,
    /// Epochs to run; `None` = forever.
    pub epochs: Option<usize>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { batch_size: 32, seed: 0, shuffle: true, drop_last: true, prefetch: 4, epochs: None }
    }
}

/// Where a batch sits in the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchPos {
    pub epoch: usize,
    pub batch: usize,
}

/// The Id order of one epoch.
pub fn epoch_order(ids: &[u64], seed: u64, epoch: usize, shuffle: bool) -> Vec<u64> {
    let mut order = ids.to_vec();
    if shuffle {
        Rng::new(mix_seed(&[seed, 0x5EED, epoch as u64])).shuffle(&mut order);
    }
    order
}

/// Number of batches per epoch for `n` usable Ids.
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// A prefetching iterator of `(position, batch)`.
/// The deepest prefetch the sampler accepts: batches beyond a few ahead only cost memory.
pub const MAX_PREFETCH: usize = 1024;

pub struct BatchSampler {
    rx: Option<Receiver<Result<(BatchPos, ContrastiveBatch)>>>,
    recycle: Sender<ContrastiveBatch>,
    worker: Option<JoinHandle<()>>,
    batches_per_epoch: usize,
}

impl BatchSampler {
    /// Starts producing from `start`, assembling batches on rayon's global pool. `ids` are
    /// checked first (Ids that cannot give a pair are dropped and logged once); an empty usable
    /// set or a zero batch size is an error.
    pub fn new(builder: Arc<BatchBuilder>, ids: &[u64], cfg: SamplerConfig, start: BatchPos) -> Result<Self> {
        Self::in_pool(None, builder, ids, cfg, start)
    }

    /// As [`new`](Self::new), assembling batches on `pool` (the run's one pool, shared with the
    /// compute device) where given.
    pub fn in_pool(pool: Option<Arc<rayon::ThreadPool>>, builder: Arc<BatchBuilder>, ids: &[u64], cfg: SamplerConfig, start: BatchPos) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(SignalError::invalid(Setting::BatchSize, "must be > 0"));
        }
        if cfg.prefetch > MAX_PREFETCH {
            return Err(SignalError::invalid(Setting::Prefetch, format!("{} batches ahead is more than the {MAX_PREFETCH} the sampler keeps", cfg.prefetch)));
        }
        // Batches in flight: the prefetched ones, the one being built and those recycled.
        let (window, channels) = (builder.window().window_size, builder.channels());
        limits::check(
            || format!("{} prefetched batches of 2 × {} windows of {window} × {channels}", cfg.prefetch + 3, cfg.batch_size),
            limits::bytes(&[cfg.prefetch + 3, 2, cfg.batch_size, window, channels], 4),
        )?;
        let usable = match &pool {
            Some(p) => p.install(|| builder.usable_ids(ids))?,
            None => builder.usable_ids(ids)?,
        };
        let per_epoch = batches_per_epoch(usable.len(), cfg.batch_size, cfg.drop_last);
        if per_epoch == 0 {
            return Err(SignalError::invalid(Setting::BatchSize, format!("{} usable Ids cannot fill one batch of {}", usable.len(), cfg.batch_size)));
        }
        let (tx, rx) = bounded(cfg.prefetch.max(1));
        let (recycle_tx, recycle_rx) = bounded::<ContrastiveBatch>(cfg.prefetch.max(1) + 2);
        let worker = std::thread::Builder::new()
            .name("batch-sampler".into())
            .spawn(move || {
                let mut pos = start;
                loop {
                    if cfg.epochs.is_some_and(|e| pos.epoch >= e) {
                        return;
                    }
                    let order = epoch_order(&usable, cfg.seed, pos.epoch, cfg.shuffle);
                    while pos.batch < per_epoch {
                        let lo = pos.batch * cfg.batch_size;
                        let hi = (lo + cfg.batch_size).min(order.len());
                        let mut batch = recycle_rx.try_recv().unwrap_or_default();
                        let seed = mix_seed(&[cfg.seed, pos.epoch as u64, pos.batch as u64]);
                        let mut build = || builder.build_into(&order[lo..hi], seed, &mut batch);
                        let r = match &pool {
                            Some(p) => p.install(build),
                            None => build(),
                        };
                        let r = r.map(|()| (pos, batch));
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            return; // consumer gone, or the error has been handed over
                        }
                        pos.batch += 1;
                    }
                    pos = BatchPos { epoch: pos.epoch + 1, batch: 0 };
                }
            })
            .map_err(|e| SignalError::Io { path: "batch-sampler thread".into(), source: e })?;
        Ok(BatchSampler { rx: Some(rx), recycle: recycle_tx, worker: Some(worker), batches_per_epoch: per_epoch })
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }

    /// Hands a used batch back so its buffers are reused (optional).
    pub fn recycle(&self, batch: ContrastiveBatch) {
        let _ = self.recycle.try_send(batch);
    }
}

impl Iterator for BatchSampler {
    type Item = Result<(BatchPos, ContrastiveBatch)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchSampler {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it exits.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
