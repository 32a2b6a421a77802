//! Multi-head self-attention, PyTorch's `nn.MultiheadAttention` as a Transformer encoder layer
//! calls it (`batch_first`, Q = K = V = x, no mask), forward and backward side by side.
//!
//! The projections are Linear layers: `in_proj` maps `x[rows, d]` to `qkv[rows, 3d]` (Q | K | V,
//! each split into heads along d, PyTorch's `in_proj_weight` layout), `out_proj` maps the heads'
//! concatenated outputs back to d. Between them, per sample and head, this op:
//!
//! - forward: `O = dropout(softmax(Q·Kᵀ/√dₕ))·V`, computed in query × key tiles of at most
//!   [`TILE`] × [`TILE`] with an online softmax (FlashAttention): no `seq × seq` matrix is kept,
//!   only the log-sum-exp of each row (`lse`);
//! - backward: per tile, the weights are recomputed from `lse` (`P = exp(S − lse)`), and with
//!   `Dᵢ = dOᵢ·Oᵢ`: `dV += Aᵀ·dO`, `dA = dO·Vᵀ`, `dS = P ∘ (dA∘mask − D)`, `dQ += dS·K/√dₕ`,
//!   `dK += dSᵀ·Q/√dₕ`, where `A = P ∘ mask` is the dropped-out weights.
//!
//! The attention-weight dropout mask of sample `s`, head `h`, is keyed by `(key, s·heads + h)`
//! and numbered `i·seq + j`, so it is recomputed, never stored. Softmax runs in fp32.

use crate::arena::{Arenas, Init, Tensors};
use crate::cpu::math;
use crate::cpu::sgemm::{Operand, PackBuffers};
use crate::cpu::{gemm_strided, CpuGemm};
use crate::device::{Device, Dropout, View};
use crate::encoders::mix_key;
use crate::ops::linear::{Linear, LinearSlots};

/// Query and key rows of one tile: a 128 × 128 tile of scores is 64 KiB, in L2 with its
/// operands.
pub const TILE: usize = 128;

/// An attention call: `samples` sequences of `seq` tokens, `heads` heads of `head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub samples: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn d_model(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Rows of `qkv` and `out`.
    pub fn rows(&self) -> usize {
        self.samples * self.seq
    }

    /// Values of `lse`.
    pub fn lse_len(&self) -> usize {
        self.samples * self.heads * self.seq
    }

    /// Multiply-adds of the forward (`Q·Kᵀ` and `A·V`) for all samples.
    pub fn macs(&self) -> usize {
        2 * self.samples * self.heads * self.seq * self.seq * self.head_dim
    }
}

/// `nn.MultiheadAttention(d, heads)`: the two projections and the head split.
#[derive(Clone, Copy, Debug)]
pub struct SelfAttention {
    pub heads: usize,
    /// `in_proj_weight [3d, d]`, `in_proj_bias [3d]`.
    pub in_proj: Linear,
    /// `out_proj.weight [d, d]`, `out_proj.bias [d]`.
    pub out_proj: Linear,
}

#[derive(Clone, Copy, Debug)]
pub struct SelfAttentionSlots {
    heads: usize,
    in_proj: LinearSlots,
    out_proj: LinearSlots,
}

impl SelfAttentionSlots {
    /// PyTorch's names and initialisation: `in_proj_weight` Xavier-uniform, `in_proj_bias` and
    /// `out_proj.bias` zero, `out_proj.weight` as a Linear's.
    pub fn declare(t: &mut Tensors, name: &str, d: usize, heads: usize) -> Self {
        let xavier = (6.0 / (d + 3 * d) as f32).sqrt();
        // `in_proj_weight`/`in_proj_bias` are flat names, not `in_proj.weight`: declared directly.
        let w = t.param(&format!("{name}.in_proj_weight"), &[3 * d, d], Init::Uniform(xavier));
        let b = t.param(&format!("{name}.in_proj_bias"), &[3 * d], Init::Constant(0.0));
        let in_proj = LinearSlots::from_slots(d, 3 * d, w, b);
        let out_proj = LinearSlots::declare_with(t, &format!("{name}.out_proj"), d, d, Init::Uniform(1.0 / (d as f32).sqrt()), Init::Constant(0.0));
        SelfAttentionSlots { heads, in_proj, out_proj }
    }

    pub fn bind(self, a: &Arenas) -> SelfAttention {
        SelfAttention { heads: self.heads, in_proj: self.in_proj.bind(a), out_proj: self.out_proj.bind(a) }
    }
}

impl SelfAttention {
    pub fn shape(&self, samples: usize, seq: usize) -> AttentionShape {
        let d = self.out_proj.out_features;
        AttentionShape { samples, seq, heads: self.heads, head_dim: d / self.heads }
    }

    /// `y = out_proj(attention(in_proj(x)))` (y before the residual's dropout).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<D: Device>(&self, dev: &mut D, x: View, qkv: View, ctx: View, lse: View, y: View, a: AttentionShape, dropout: Option<Dropout>) {
        let rows = a.rows();
        self.in_proj.forward(dev, x, qkv, rows);
        dev.attention_forward(qkv, ctx, lse, a, dropout);
        self.out_proj.forward(dev, ctx, y, rows);
    }

    /// From `dy`: the parameter gradients and `dx` (added to what `dx` holds: the residual's).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(
        &self, dev: &mut D, x: View, qkv: View, ctx: View, lse: View, dy: View, dctx: View, dqkv: View, dx: View, a: AttentionShape, dropout: Option<Dropout>, accumulate: bool,
    ) {
        let rows = a.rows();
        self.out_proj.backward(dev, ctx, dy, Some(dctx), rows, accumulate, false, false);
        dev.attention_backward(qkv, ctx, lse, dctx, dqkv, a, dropout);
        self.in_proj.backward(dev, x, dqkv, Some(dx), rows, accumulate, true, false);
    }
}

// ---- CPU kernels ------------------------------------------------------------------------------

/// One worker's tiles: scores (then weights), their gradient, and per-row running statistics.
#[derive(Default)]
pub(crate) struct AttentionScratch {
    s: Vec<f32>,
    da: Vec<f32>,
    acc: Vec<f32>,
    row: Vec<f32>,
}

impl AttentionScratch {
    fn reserve(&mut self, head_dim: usize) {
        for (v, n) in [(&mut self.s, TILE * TILE), (&mut self.da, TILE * TILE), (&mut self.acc, TILE * head_dim), (&mut self.row, 3 * TILE)] {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    }

    pub(crate) fn allocated_bytes(&self) -> usize {
        4 * (self.s.len() + self.da.len() + self.acc.len() + self.row.len())
    }
}

/// Pointers into `qkv`, `out`/`dout` and `dqkv` for one (sample, head).
#[derive(Clone, Copy)]
struct Head {
    q: *const f32,
    k: *const f32,
    v: *const f32,
    /// Row stride of qkv (3d) and of out (d).
    qkv_rs: isize,
    out_rs: isize,
}

impl Head {
    /// # Safety
    /// `qkv` must hold the whole `[samples·seq, 3d]` matrix.
    unsafe fn new(qkv: *const f32, a: AttentionShape, sample: usize, head: usize) -> Head {
        // SAFETY: the caller upholds this function's contract (# Safety above): qkv, out, lse and their gradients are whole matrices of the shape `a` gives, and this (sample, head)'s columns and rows are written by this call alone.
        unsafe {
            let d = a.d_model();
            let base = qkv.add(sample * a.seq * 3 * d + head * a.head_dim);
            Head { q: base, k: base.add(d), v: base.add(2 * d), qkv_rs: 3 * d as isize, out_rs: d as isize }
        }
    }

    fn rows(ptr: *const f32, rs: isize, first: usize) -> Operand {
        Operand { ptr: ptr.wrapping_offset(first as isize * rs), rs, cs: 1 }
    }

    /// `op(B)` = rows `first..` of a `[seq, dₕ]` block, transposed (dₕ × n).
    fn rows_t(ptr: *const f32, rs: isize, first: usize) -> Operand {
        Operand { ptr: ptr.wrapping_offset(first as isize * rs), rs: 1, cs: rs }
    }
}

/// The dropout of one (sample, head): `(seed, threshold, scale)` under its own key.
fn head_dropout(dropout: Option<Dropout>, pair: usize) -> Option<(u32, u32, f32)> {
    Dropout::parts(dropout.map(|d| Dropout { key: mix_key(d.key, 0xA7, pair as u64), ..d }))
}

/// Forward of one (sample, head), compiled for the CPU's vector extensions.
///
/// # Safety
/// The pointers must address the whole matrices of `a`; no other thread may write this
/// (sample, head)'s columns of `out` or its `lse` rows.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn forward_head(
    kernel: CpuGemm, qkv: *const f32, out: *mut f32, lse: *mut f32, a: AttentionShape, pair: usize, dropout: Option<Dropout>, pack: &mut PackBuffers, sc: &mut AttentionScratch,
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): qkv, out, lse and their gradients are whole matrices of the shape `a` gives, and this (sample, head)'s columns and rows are written by this call alone.
    unsafe {
        let (sample, head) = (pair / a.heads, pair % a.heads);
        let dh = a.head_dim;
        sc.reserve(dh);
        let h = Head::new(qkv, a, sample, head);
        let out = out.add(sample * a.seq * a.d_model() + head * dh);
        let lse = lse.add(pair * a.seq);
        let scale = 1.0 / (dh as f32).sqrt();
        let drop = head_dropout(dropout, pair);
        for q0 in (0..a.seq).step_by(TILE) {
            let nq = TILE.min(a.seq - q0);
            let (m, rest) = sc.row.split_at_mut(TILE);
            let l = &mut rest[..TILE];
            m[..nq].fill(f32::NEG_INFINITY);
            l[..nq].fill(0.0);
            for k0 in (0..a.seq).step_by(TILE) {
                let nk = TILE.min(a.seq - k0);
                let s = sc.s.as_mut_ptr();
                // S = Q·Kᵀ/√dₕ
                gemm_strided(kernel, nq, nk, dh, scale, Head::rows(h.q, h.qkv_rs, q0), Head::rows_t(h.k, h.qkv_rs, k0), s, nk as isize, false, pack);
                let st = &mut sc.s[..nq * nk];
                let acc = &mut sc.acc[..nq * dh];
                for (i, srow) in st.chunks_exact_mut(nk).enumerate() {
                    let mx = srow.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
                    let m_new = m[i].max(mx);
                    let correction = math::exp(m[i] - m_new);
                    let sum = exp_row(srow, m_new);
                    l[i] = l[i] * correction + sum;
                    m[i] = m_new;
                    if k0 > 0 {
                        acc[i * dh..(i + 1) * dh].iter_mut().for_each(|o| *o *= correction);
                    }
                    if let Some((seed, threshold, dscale)) = drop {
                        let base = ((q0 + i) * a.seq + k0) as u32;
                        mask_row(srow, seed, threshold, dscale, base);
                    }
                }
                // acc (+)= A·V
                gemm_strided(kernel, nq, dh, nk, 1.0, Operand { ptr: s, rs: nk as isize, cs: 1 }, Head::rows(h.v, h.qkv_rs, k0), sc.acc.as_mut_ptr(), dh as isize, k0 > 0, pack);
            }
            for i in 0..nq {
                let inv = 1.0 / l[i];
                let dst = std::slice::from_raw_parts_mut(out.offset((q0 + i) as isize * h.out_rs), dh);
                dst.iter_mut().zip(&sc.acc[i * dh..(i + 1) * dh]).for_each(|(o, &v)| *o = v * inv);
                *lse.add(q0 + i) = m[i] + l[i].ln();
            }
        }
    }
}

/// `row = exp(row − m)`, returning the sum. Two passes: a running sum in the first would be one
/// serial chain and keep the exponentials from vectorizing.
#[inline(always)]
fn exp_row(row: &mut [f32], m: f32) -> f32 {
    row.iter_mut().for_each(|x| *x = math::exp(*x - m));
    math::sum(row)
}

/// Applies the dropout mask (elements numbered from `base`) to a row in place.
#[inline(always)]
fn mask_row(row: &mut [f32], seed: u32, threshold: u32, scale: f32, base: u32) {
    for (j, x) in row.iter_mut().enumerate() {
        let keep = Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold;
        *x = if keep { *x * scale } else { 0.0 };
    }
}

/// Backward of one (sample, head).
///
/// # Safety
/// As [`forward_head`]; no other thread may write this (sample, head)'s columns of `dqkv`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma", "x86_64+avx2+fma", "x86_64+sse4.2", "aarch64+neon"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn backward_head(
    kernel: CpuGemm, qkv: *const f32, out: *const f32, lse: *const f32, dout: *const f32, dqkv: *mut f32, a: AttentionShape, pair: usize, dropout: Option<Dropout>, pack: &mut PackBuffers,
    sc: &mut AttentionScratch,
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): qkv, out, lse and their gradients are whole matrices of the shape `a` gives, and this (sample, head)'s columns and rows are written by this call alone.
    unsafe {
        let (sample, head) = (pair / a.heads, pair % a.heads);
        let dh = a.head_dim;
        sc.reserve(dh);
        let h = Head::new(qkv, a, sample, head);
        let d = a.d_model();
        let row0 = sample * a.seq;
        let off = (row0 * d + head * dh) as isize;
        let (o, dout) = (out.offset(off), dout.offset(off));
        let g = Head::new(dqkv, a, sample, head);
        let (dq, dk, dv) = (g.q as *mut f32, g.k as *mut f32, g.v as *mut f32);
        let lse = lse.add(pair * a.seq);
        let scale = 1.0 / (dh as f32).sqrt();
        let drop = head_dropout(dropout, pair);
        let rs = h.qkv_rs;
        for q0 in (0..a.seq).step_by(TILE) {
            let nq = TILE.min(a.seq - q0);
            // Dᵢ = dOᵢ·Oᵢ
            let dd = &mut sc.row[..nq];
            for (i, di) in dd.iter_mut().enumerate() {
                let r = (q0 + i) as isize * h.out_rs;
                *di = math::dot(std::slice::from_raw_parts(dout.offset(r), dh), std::slice::from_raw_parts(o.offset(r), dh));
            }
            for k0 in (0..a.seq).step_by(TILE) {
                let nk = TILE.min(a.seq - k0);
                let (s, da) = (sc.s.as_mut_ptr(), sc.da.as_mut_ptr());
                gemm_strided(kernel, nq, nk, dh, scale, Head::rows(h.q, rs, q0), Head::rows_t(h.k, rs, k0), s, nk as isize, false, pack);
                // dA = dO·Vᵀ
                gemm_strided(kernel, nq, nk, dh, 1.0, Head::rows(dout, h.out_rs, q0), Head::rows_t(h.v, rs, k0), da, nk as isize, false, pack);
                let (st, dat) = (&mut sc.s[..nq * nk], &mut sc.da[..nq * nk]);
                for (i, (srow, darow)) in st.chunks_exact_mut(nk).zip(dat.chunks_exact_mut(nk)).enumerate() {
                    let li = *lse.add(q0 + i);
                    let di = sc.row[i];
                    // srow becomes A = P∘mask (for dV), darow dS = P∘(dA∘mask − D), P = exp(S − lse).
                    match drop {
                        None => {
                            for (p, g) in srow.iter_mut().zip(darow.iter_mut()) {
                                let pv = math::exp(*p - li);
                                *g = pv * (*g - di);
                                *p = pv;
                            }
                        }
                        Some((seed, threshold, dscale)) => {
                            let base = ((q0 + i) * a.seq + k0) as u32;
                            for (j, (p, g)) in srow.iter_mut().zip(darow.iter_mut()).enumerate() {
                                let pv = math::exp(*p - li);
                                let keep = Dropout::bits(seed, base.wrapping_add(j as u32)) >= threshold;
                                let m = if keep { dscale } else { 0.0 };
                                *g = pv * (*g * m - di);
                                *p = pv * m;
                            }
                        }
                    }
                }
                // dV[k0..] += Aᵀ·dO ; dK[k0..] += dSᵀ·Q/√dₕ ; dQ[q0..] += dS·K/√dₕ
                let first_q = q0 == 0;
                gemm_strided(kernel, nk, dh, nq, 1.0, Operand { ptr: s, rs: 1, cs: nk as isize }, Head::rows(dout, h.out_rs, q0), dv.offset(k0 as isize * rs), rs, !first_q, pack);
                gemm_strided(kernel, nk, dh, nq, scale, Operand { ptr: da, rs: 1, cs: nk as isize }, Head::rows(h.q, rs, q0), dk.offset(k0 as isize * rs), rs, !first_q, pack);
                gemm_strided(kernel, nq, dh, nk, scale, Operand { ptr: da, rs: nk as isize, cs: 1 }, Head::rows(h.k, rs, k0), dq.offset(q0 as isize * rs), rs, k0 > 0, pack);
            }
        }
    }
}
