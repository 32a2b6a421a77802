//! A training step's two views, each on its own lane ([`Device::for_each_lane`]): the CNN's and
//! the ISFM's forward and backward of a view are ~60–200 kernels, and split over the workers each
//! costs a fork and a join; the views are independent until the loss (BatchNorm's statistics are
//! per view), so each runs whole on its own share of the workers instead.
//!
//! An encoder that runs views on lanes keeps a second copy of its ops for the second view, bound
//! to spare gradients and running statistics ([`ViewLanes::new`]); after the lanes the spare
//! gradients are added to the model's and each BatchNorm folds the spare update into its own
//! ([`crate::ops::norm::BatchNorm::fold_running`]). Each view draws its dropout masks and patch
//! starts from a key of its own ([`view_key`]): PyTorch's two forward calls.

use crate::arena::Arenas;
use crate::device::{Device, View};
use crate::encoders::{mix_key, Inputs, Mode};
use crate::error::Result;

/// Lanes of a training step: one per view.
pub(crate) const VIEW_LANES: usize = 2;

/// The key of view `view`'s random draws (dropout masks, ISFM patch starts) in a training
/// forward keyed `key` that runs each view on its own lane.
pub fn view_key(key: u64, view: usize) -> u64 {
    mix_key(key, 0x1A4E, view as u64)
}

/// The windows a pass covers: `rows` from row `first`, in `groups` BatchNorm groups, on lane
/// `lane` of `lanes` (which share out the encoder's own buffers equally).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Part {
    pub first: usize,
    pub rows: usize,
    pub groups: usize,
    pub lane: usize,
    pub lanes: usize,
}

impl Part {
    /// Every window of a forward in one pass.
    pub fn whole(rows: usize, groups: usize) -> Part {
        Part { first: 0, rows, groups, lane: 0, lanes: 1 }
    }

    /// View `v` of a training batch of `2 · rows` windows, on lane `v`.
    pub fn view(v: usize, rows: usize) -> Part {
        Part { first: v * rows, rows, groups: 1, lane: v, lanes: VIEW_LANES }
    }

    /// This pass's rows of a buffer of `per_row` values per window (the inputs, the embeddings
    /// and their gradient: what the caller reads or writes by rows).
    pub fn rows_of(&self, buf: View, per_row: usize) -> View {
        buf.sub(self.first * per_row, self.rows * per_row)
    }

    /// This lane's share of a buffer whose layout only the encoder's own forward and backward
    /// read (the whole buffer on one lane). Buffers sized for `max_rows` windows hold a view's
    /// `max_rows / 2` in each half.
    pub fn share(&self, buf: View) -> View {
        let n = buf.len() / self.lanes;
        buf.sub(self.lane * n, n)
    }

    /// The mode of this pass: on a view's lane, training draws from a key of its own (each
    /// kernel call numbers its elements from zero, so two lanes on one key would draw the same
    /// dropout masks and patch starts for both views).
    pub fn mode(&self, mode: Mode) -> Mode {
        match mode {
            Mode::Train { key } if self.lanes > 1 => Mode::Train { key: view_key(key, self.lane) },
            other => other,
        }
    }
}

/// The spares of the second view's lane, and whether the last forward ran on lanes.
pub(crate) struct ViewLanes {
    grads: View,
    spare_grads: View,
    spare_buffers: View,
    /// Rows per view of the last forward where it ran on lanes: its backward must too (the two
    /// paths lay their buffers out differently).
    rows: Option<usize>,
}

impl ViewLanes {
    /// Spare gradients and buffers on `dev`, and the arenas the second lane's ops bind to: the
    /// model's parameters, the spares for its gradients and buffers (an encoder's buffers are its
    /// BatchNorms' running statistics).
    pub fn new<D: Device>(arenas: &Arenas, dev: &mut D) -> Result<(Self, Arenas)> {
        let (spare_grads, spare_buffers) = (dev.alloc(arenas.grads.len())?, dev.alloc(arenas.buffers.len())?);
        let spares = Arenas { grads: spare_grads, buffers: spare_buffers, ..arenas.clone() };
        Ok((ViewLanes { grads: arenas.grads, spare_grads, spare_buffers, rows: None }, spares))
    }

    /// Whether this forward runs on lanes: a training forward of a step's two views, where the
    /// encoder `allows` it. Returns the rows per view, remembered for the backward.
    pub fn plan_forward<D: Device>(&mut self, dev: &mut D, io: &Inputs, allows: bool) -> Option<usize> {
        let train = matches!(io.mode, Mode::Train { .. });
        self.rows = (allows && train && io.groups == VIEW_LANES).then_some(io.rows / VIEW_LANES);
        if self.rows.is_some() {
            // The second lane's BatchNorms update running statistics that start at −0:
            // `(1 − m)·(−0) + m·s` is exactly `m·s`, signed zeros included, so folding it in after
            // the first lane's update rounds as one update after the other.
            dev.fill(self.spare_buffers, -0.0);
        }
        self.rows
    }

    /// Rows per view of the last forward if it ran on lanes.
    pub fn rows(&self) -> Option<usize> {
        self.rows
    }

    /// After a backward on lanes: the second lane's gradients (written whole, never accumulated)
    /// added to the model's.
    pub fn add_spare_grads<D: Device>(&self, dev: &mut D) {
        dev.scale_add(self.grads, 1.0, self.spare_grads);
    }
}

/// Runs `f(dev, part)` for both views of a training batch of `2 · rows` windows, each on its own
/// lane.
///
/// # Safety
/// `f` writes only its part's rows ([`Part::rows_of`]) and share ([`Part::share`]) of the
/// encoder's buffers and what its own lane's ops own (gradients, running statistics, tap-major
/// weights: the spares for the second lane), and reads nothing the other part writes (the
/// weights and inputs are read by both, written by neither): [`Device::for_each_lane`]'s contract.
pub(crate) unsafe fn run_views<D: Device, F: Fn(&mut D, Part) + Sync>(dev: &mut D, rows: usize, f: F) {
    // SAFETY: the caller upholds `for_each_lane`'s contract (above).
    unsafe { dev.for_each_lane(VIEW_LANES, |v, dev| f(dev, Part::view(v, rows))) }
}
