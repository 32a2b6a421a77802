//! The patch gather of PHM-Vibench's HSE embedding (`E_01_HSE`): P patches of `Lp` time steps ×
//! `Cp` channels cut from each window `x[W, C]`, each time step carrying its time `t / rate`
//! (its index in the window over the Id's sampling rate) beside its values. Patch `p` starts at
//! time `sL[p]` and channel `sC[p]`: uniform random in training, evenly spaced in evaluation.
//!
//! The layout of a patch row is PyTorch's `cat([values, time], -1).flatten()`: per time step, the
//! `Cp` values, then `Cp` copies of the time. The input needs no gradient (the first layer), so
//! this op has no backward.

use crate::device::Dropout;

/// A patch-embedding call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchShape {
    pub samples: usize,
    /// W and C of the window.
    pub window: usize,
    pub channels: usize,
    /// P, Lp, Cp.
    pub patches: usize,
    pub patch_len: usize,
    pub patch_channels: usize,
}

impl PatchShape {
    /// Values per patch row, `Lp · 2Cp`.
    pub fn row_len(&self) -> usize {
        2 * self.patch_len * self.patch_channels
    }

    /// Values of the starts view, `[sL; sC]`.
    pub fn starts_len(&self) -> usize {
        2 * self.samples * self.patches
    }

    /// The evenly spaced starts of evaluation for patch `i`, computed as the reference does:
    /// `round(i·(W − Lp) / max(P − 1, 1))` in fp32, ties to even; channel `i mod (C − Cp + 1)`.
    pub fn even_start(&self, i: usize) -> (usize, usize) {
        let span = (self.window - self.patch_len) as f32;
        let t = (i as f32 * span / (self.patches.max(2) - 1) as f32).round_ties_even() as usize;
        (t, i % (self.channels - self.patch_channels + 1))
    }

    /// The uniform random starts of training for patch `i` of a call (`i < samples·P`).
    #[inline(always)]
    pub fn random_start(&self, seed: u32, i: usize) -> (usize, usize) {
        let n = (self.samples * self.patches) as u32;
        let draw = |index: u32, range: usize| ((Dropout::bits(seed, index) as u64 * range as u64) >> 32) as usize;
        (draw(i as u32, self.window - self.patch_len + 1), draw(n.wrapping_add(i as u32), self.channels - self.patch_channels + 1))
    }
}

// ---- CPU kernels ------------------------------------------------------------------------------

/// Fills `[sL; sC]` for a call.
pub(crate) fn starts_cpu(starts: &mut [f32], p: PatchShape, key: Option<u64>) {
    let n = p.samples * p.patches;
    let (sl, sc) = starts.split_at_mut(n);
    let seed = key.map(Dropout::seed);
    for i in 0..n {
        let (t, c) = match seed {
            Some(seed) => p.random_start(seed, i),
            None => p.even_start(i % p.patches),
        };
        sl[i] = t as f32;
        sc[i] = c as f32;
    }
}

/// The patches of one sample: `out[P, Lp·2Cp]` from `x[W, C]`.
pub(crate) fn gather_sample(x: &[f32], rate: f32, sl: &[f32], sc: &[f32], out: &mut [f32], p: PatchShape) {
    let (cp, c) = (p.patch_channels, p.channels);
    for ((row, &t0), &c0) in out.chunks_exact_mut(p.row_len()).zip(sl).zip(sc) {
        let (t0, c0) = (t0 as usize, c0 as usize);
        for (l, step) in row.chunks_exact_mut(2 * cp).enumerate() {
            let t = t0 + l;
            let (values, times) = step.split_at_mut(cp);
            values.copy_from_slice(&x[t * c + c0..t * c + c0 + cp]);
            times.fill(t as f32 / rate);
        }
    }
}
