//! The CUDA device: cuBLAS for the GEMMs, NVRTC-compiled kernels (`kernels.cu`) for the rest,
//! the same arithmetic as the CPU device kernel for kernel. CUDA is loaded at run time (cudarc's
//! dynamic loading), so this builds and the rest of the engine runs on machines without CUDA;
//! `CudaDevice::new` then returns an error.
//!
//! Status: written and compiled without a GPU (none has been lent to the sessions that wrote it);
//! the parity test (`tests/cuda_parity.rs`) runs every encoder against the CPU device where a GPU
//! exists and says SKIPPED otherwise. The attention kernels are one thread per query (or key)
//! row, written for parity, not speed. Not yet done: CUDA-graph capture of the step, bf16/fp16
//! compute, the pinned-memory input pipeline.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use crate::device::{next_device_id, AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, View};
use crate::error::{EngineError, Result};
use crate::ops::act::Activation;
use crate::ops::attention::AttentionShape;
use crate::ops::conv1d::ConvShape;
use crate::ops::norm::BatchNormArgs;
use crate::ops::patch::PatchShape;
use crate::ops::pool::PoolShape;

const SOURCE: &str = include_str!("kernels.cu");

fn dev_err(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Device(format!("{e:?}"))
}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// Every kernel of `kernels.cu`, by its name.
        struct Kernels {
            $($name: CudaFunction,)*
            _module: Arc<CudaModule>,
        }

        impl Kernels {
            fn load(module: Arc<CudaModule>) -> Result<Self> {
                Ok(Kernels { $($name: module.load_function(stringify!($name)).map_err(dev_err)?,)* _module: module })
            }
        }
    };
}

kernels!(
    fill,
    scale_add,
    bias_act_forward,
    act_backward,
    bias_grad,
    act_forward,
    act_backward_pre,
    add_layernorm_forward,
    layernorm_backward_rows,
    layernorm_param_grads,
    batchnorm_moments,
    batchnorm_finish_stats,
    batchnorm_normalize,
    batchnorm_normalize_pool,
    batchnorm_backward_sums,
    batchnorm_param_grads,
    batchnorm_backward_dx,
    im2col,
    col2im,
    transpose_inner,
    conv_transposed_taps,
    maxpool_forward,
    maxpool_backward,
    meanpool_forward,
    meanpool_backward,
    attention_forward,
    attention_backward_q,
    attention_backward_kv,
    patch_starts,
    patch_gather,
    sum_squares_partial,
    adam,
    normalize_rows,
    col_lse,
    row_softmax_grad,
    normalize_backward,
);

/// Launches kernel `$f` of `$dev` with the given local variables as its arguments, in order.
macro_rules! launch {
    ($dev:expr, $f:ident, $cfg:expr; $($arg:ident),* $(,)?) => {{
        let mut b = $dev.stream.launch_builder(&$dev.k.$f);
        $( b.arg(&$arg); )*
        // SAFETY: the arguments match the kernel's parameters in kernels.cu, and every pointer
        // addresses a live allocation of the sizes the kernel reads.
        CudaDevice::check(unsafe { b.launch($cfg) });
    }};
}

/// Device memory in one arena (grown only while building), plus scratch for the loss and the
/// normalisations' reductions.
pub struct CudaDevice {
    id: u32,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    mem: CudaSlice<f32>,
    len: usize,
    scratch: CudaSlice<f32>,
    partial: CudaSlice<f64>,
}

// SAFETY: the device is used from one thread at a time (`&mut self` on every kernel); the raw
// cuBLAS handle inside is tied to its stream, not to a thread.
unsafe impl Send for CudaDevice {}

const SUM_CHUNKS: usize = 64;

/// One thread per element of `n`, blocks of `block`.
fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(block).max(1), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// One block of 128 threads per row.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

/// `(has, seed, threshold, scale)` of an optional dropout, as the kernels take it.
fn drop_args(d: Option<Dropout>) -> (i32, u32, u32, f32) {
    match Dropout::parts(d) {
        Some((seed, threshold, scale)) => (1, seed, threshold, scale),
        None => (0, 0, 0, 1.0),
    }
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Gelu => 2,
        Activation::Silu => 3,
    }
}

impl CudaDevice {
    /// Whether GPU `ordinal` can be opened (the libraries load and a context opens), without
    /// compiling the kernels `new` compiles: for reports and skips that only ask whether a GPU is
    /// there.
    pub fn probe(ordinal: usize) -> Result<()> {
        Self::open(ordinal).map(drop)
    }

    /// A context on GPU `ordinal`. An error (never a panic) where there is no CUDA driver,
    /// cuBLAS or NVRTC library, or no such GPU.
    fn open(ordinal: usize) -> Result<Arc<CudaContext>> {
        // SAFETY: only probes whether the libraries can be loaded.
        let present = unsafe { cudarc::driver::sys::is_culib_present() && cudarc::cublas::sys::is_culib_present() && cudarc::nvrtc::sys::is_culib_present() };
        if !present {
            return Err(EngineError::Device("no CUDA driver, cuBLAS or NVRTC library on this machine".into()));
        }
        match std::panic::catch_unwind(|| CudaContext::new(ordinal)) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(dev_err(e)),
            Err(_) => Err(EngineError::Device("the CUDA driver library could not be loaded".into())),
        }
    }

    /// Opens GPU `ordinal`, compiles the kernels. An error (never a panic) where there is no
    /// CUDA driver or no such GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = Self::open(ordinal)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err)?;
        let ptx = cudarc::nvrtc::compile_ptx(SOURCE).map_err(dev_err)?;
        let module = ctx.load_module(ptx).map_err(dev_err)?;
        let k = Kernels::load(module)?;
        let mem = stream.alloc_zeros::<f32>(1).map_err(dev_err)?;
        let scratch = stream.alloc_zeros::<f32>(1).map_err(dev_err)?;
        let partial = stream.alloc_zeros::<f64>(SUM_CHUNKS).map_err(dev_err)?;
        Ok(CudaDevice { id: next_device_id(), stream, blas, k, mem, len: 0, scratch, partial })
    }

    fn base(&self) -> u64 {
        let (p, _sync) = self.mem.device_ptr(&self.stream);
        p
    }

    /// Raw device address of a view (kernels take plain pointers into the arena).
    fn ptr(&self, v: View) -> u64 {
        assert!(v.device() == self.id, "a view of device {} used on device {}", v.device(), self.id);
        assert!(v.end() <= self.len, "view {v:?} outside the {} values of device memory", self.len);
        self.base() + 4 * v.offset() as u64
    }

    /// Checks that the output views overlap neither each other nor the inputs.
    fn disjoint(outs: &[View], ins: &[View]) {
        for (i, o) in outs.iter().enumerate() {
            for p in outs[i + 1..].iter().chain(ins) {
                assert!(o.disjoint(p), "kernel output {o:?} overlaps {p:?}");
            }
        }
    }

    /// Scratch of at least `n` values (grown while building; reused after).
    fn scratch_of(&mut self, n: usize) -> u64 {
        if self.scratch.len() < n {
            self.scratch = Self::check(self.stream.alloc_zeros::<f32>(n));
        }
        let (p, _sync) = self.scratch.device_ptr(&self.stream);
        p
    }

    fn check<T>(r: std::result::Result<T, cudarc::driver::DriverError>) -> T {
        // A failed launch leaves the device in an unknown state: stop loudly, as a CUDA error
        // in PyTorch does.
        r.unwrap_or_else(|e| panic!("CUDA kernel launch failed: {e:?}"))
    }

    /// Row-major GEMM through cuBLAS: C = op(A)·op(B) computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
    fn gemm_raw(&self, g: Gemm, c: u64, a: u64, b: u64, alpha: f32) {
        let (op_b, ldb) = if g.trans_b { (blas_sys::cublasOperation_t::CUBLAS_OP_T, g.k) } else { (blas_sys::cublasOperation_t::CUBLAS_OP_N, g.n) };
        let (op_a, lda) = if g.trans_a { (blas_sys::cublasOperation_t::CUBLAS_OP_T, g.m) } else { (blas_sys::cublasOperation_t::CUBLAS_OP_N, g.k) };
        let beta = if g.accumulate { 1.0f32 } else { 0.0 };
        // SAFETY: the pointers address whole matrices of these shapes inside live allocations.
        let r = unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op_b,
                op_a,
                g.n as i32,
                g.m as i32,
                g.k as i32,
                &alpha,
                b as *const f32,
                ldb.max(1) as i32,
                a as *const f32,
                lda.max(1) as i32,
                &beta,
                c as *mut f32,
                g.n.max(1) as i32,
            )
        };
        r.unwrap_or_else(|e| panic!("cuBLAS sgemm failed: {e:?}"));
    }
}

impl Device for CudaDevice {
    fn alloc(&mut self, len: usize) -> Result<View> {
        let v = View::new(self.id, self.len, len);
        let need = self.len.checked_add(len).ok_or_else(|| EngineError::OutOfMemory { bytes: (self.len as u128 + len as u128) * 4, reason: "more than the address space".into() })?;
        if need > self.mem.len() {
            // Building only: grow the arena and keep what was written (views are offsets).
            let cap = need.max(2 * self.mem.len());
            let mut bigger =
                self.stream.alloc_zeros::<f32>(cap).or_else(|_| self.stream.alloc_zeros::<f32>(need)).map_err(|e| EngineError::OutOfMemory { bytes: need as u128 * 4, reason: format!("{e:?}") })?;
            if self.len > 0 {
                self.stream.memcpy_dtod(&self.mem.slice(..self.len), &mut bigger.slice_mut(..self.len)).map_err(dev_err)?;
            }
            self.mem = bigger;
        }
        self.len = need;
        Ok(v)
    }

    fn allocated_bytes(&self) -> usize {
        4 * (self.len + self.scratch.len()) + 8 * self.partial.len()
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        assert_eq!(dst.len(), src.len());
        self.ptr(dst);
        Self::check(self.stream.memcpy_htod(src, &mut self.mem.slice_mut(dst.offset()..dst.end())));
    }

    fn download(&self, src: View, dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        self.ptr(src);
        Self::check(self.stream.memcpy_dtoh(&self.mem.slice(src.offset()..src.end()), dst));
        Self::check(self.stream.synchronize());
    }

    fn fill(&mut self, dst: View, value: f32) {
        let (p, n) = (self.ptr(dst), dst.len() as u64);
        launch!(self, fill, grid(dst.len(), 256); p, value, n);
    }

    fn scale_add(&mut self, dst: View, scale: f32, src: View) {
        assert_eq!(dst.len(), src.len(), "scale_add of views of {} and {} values", dst.len(), src.len());
        Self::disjoint(&[dst], &[src]);
        let (dp, sp, n) = (self.ptr(dst), self.ptr(src), dst.len() as u64);
        launch!(self, scale_add, grid(dst.len(), 256); dp, scale, sp, n);
    }

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View) {
        Self::disjoint(&[c], &[a, b]);
        // cuBLAS reads every size as an i32; the views must hold the matrices it is told of.
        assert!(g.fits(c.len(), a.len(), b.len()) && [g.m, g.n, g.k].iter().all(|&d| d <= i32::MAX as usize), "operands of {}, {} and {} floats for the product {g:?}", c.len(), a.len(), b.len());
        self.gemm_raw(g, self.ptr(c), self.ptr(a), self.ptr(b), 1.0);
    }

    fn bias_act_forward(&mut self, y: View, bias: View, cols: usize, relu: bool, dropout: Option<Dropout>) {
        Self::disjoint(&[y], &[bias]);
        let (yp, bp, n, c, relu) = (self.ptr(y), self.ptr(bias), y.len() as u64, cols as i32, relu as i32);
        let (has, seed, threshold, scale) = drop_args(dropout);
        launch!(self, bias_act_forward, grid(y.len(), 256); yp, bp, n, c, relu, has, seed, threshold, scale);
    }

    fn act_backward(&mut self, dy: View, h: View, scale: f32) {
        Self::disjoint(&[dy], &[h]);
        let (dp, hp, n) = (self.ptr(dy), self.ptr(h), dy.len() as u64);
        launch!(self, act_backward, grid(dy.len(), 256); dp, hp, scale, n);
    }

    fn bias_grad(&mut self, db: View, dy: View, cols: usize, accumulate: bool) {
        Self::disjoint(&[db], &[dy]);
        let (bp, dp, r, c, acc) = (self.ptr(db), self.ptr(dy), (dy.len() / cols) as i32, cols as i32, accumulate as i32);
        launch!(self, bias_grad, grid(cols, 128); bp, dp, r, c, acc);
    }

    fn act_forward(&mut self, pre: View, out: View, bias: Option<View>, cols: usize, act: Activation, dropout: Option<Dropout>) {
        Self::disjoint(&[pre, out], bias.as_slice());
        let (pp, op, n, c, a) = (self.ptr(pre), self.ptr(out), pre.len() as u64, cols as i32, act_code(act));
        let (bp, has_bias) = match bias {
            Some(b) => (self.ptr(b), 1i32),
            None => (pp, 0),
        };
        let (has, seed, threshold, scale) = drop_args(dropout);
        launch!(self, act_forward, grid(pre.len(), 256); pp, op, bp, has_bias, n, c, a, has, seed, threshold, scale);
    }

    fn act_backward_pre(&mut self, d: View, pre: View, _cols: usize, act: Activation, dropout: Option<Dropout>) {
        Self::disjoint(&[d], &[pre]);
        let (dp, pp, n, a) = (self.ptr(d), self.ptr(pre), d.len() as u64, act_code(act));
        let (has, seed, threshold, scale) = drop_args(dropout);
        launch!(self, act_backward_pre, grid(d.len(), 256); dp, pp, n, a, has, seed, threshold, scale);
    }

    fn add_layernorm_forward(&mut self, a: View, b: View, dropout: Option<Dropout>, sum: View, out: View, stats: View, gamma: View, beta: View, cols: usize, eps: f32) {
        Self::disjoint(&[sum, out, stats], &[a, b, gamma, beta]);
        let rows = a.len() / cols;
        let (ap, bp, sp, op, stp, gp, btp, r, c) = (self.ptr(a), self.ptr(b), self.ptr(sum), self.ptr(out), self.ptr(stats), self.ptr(gamma), self.ptr(beta), rows as i32, cols as i32);
        let (has, seed, threshold, scale) = drop_args(dropout);
        launch!(self, add_layernorm_forward, per_row(rows); ap, bp, sp, op, stp, gp, btp, r, c, eps, has, seed, threshold, scale);
    }

    fn layernorm_backward(&mut self, dout: View, sum: View, stats: View, gamma: View, dgamma: View, dbeta: View, dsum: View, db: View, dropout: Option<Dropout>, cols: usize, accumulate: bool) {
        Self::disjoint(&[dsum, db, dgamma, dbeta], &[dout, sum, stats, gamma]);
        let rows = dout.len() / cols;
        let (dp, sp, stp, gp, dsp, dbp, r, c) = (self.ptr(dout), self.ptr(sum), self.ptr(stats), self.ptr(gamma), self.ptr(dsum), self.ptr(db), rows as i32, cols as i32);
        let (has, seed, threshold, scale) = drop_args(dropout);
        launch!(self, layernorm_backward_rows, per_row(rows); dp, sp, stp, gp, dsp, dbp, r, c, has, seed, threshold, scale);
        let (dgp, dbtp, acc) = (self.ptr(dgamma), self.ptr(dbeta), accumulate as i32);
        launch!(self, layernorm_param_grads, grid(cols, 128); dp, sp, stp, dgp, dbtp, r, c, acc);
    }

    fn batchnorm_forward(&mut self, x: View, out: View, argmax: View, stats: View, gamma: View, beta: View, running: View, bn: BatchNormArgs) {
        Self::disjoint(&[out, argmax, stats, running], &[x, gamma, beta]);
        let rows = x.len() / bn.cols;
        assert!(out.len() == bn.out_rows(rows) * bn.cols && argmax.len() == if bn.pool.is_some() { out.len() } else { 0 });
        assert!(bn.pool.is_none_or(|len| len > 0 && (rows / bn.groups).is_multiple_of(len)), "a pool's samples must not straddle BatchNorm's groups");
        let (xp, op, stp, gp, bp, rp) = (self.ptr(x), self.ptr(out), self.ptr(stats), self.ptr(gamma), self.ptr(beta), self.ptr(running));
        let (gr, g, c) = ((rows / bn.groups) as i32, bn.groups as i32, bn.cols as i32);
        if bn.train {
            launch!(self, batchnorm_moments, grid(bn.groups * bn.cols, 128); xp, stp, gr, g, c);
        }
        let (eps, momentum, train, relu) = (bn.eps, bn.momentum, bn.train as i32, bn.relu as i32);
        launch!(self, batchnorm_finish_stats, grid(bn.cols, 128); stp, rp, gr, g, c, eps, momentum, train);
        let n = out.len() as u64;
        match bn.pool {
            None => launch!(self, batchnorm_normalize, grid(out.len(), 256); xp, op, stp, gp, bp, n, gr, g, c, relu),
            Some(_) if out.is_empty() => {}
            Some(len) => {
                let (ap, pl) = (self.ptr(argmax), len as i32);
                launch!(self, batchnorm_normalize_pool, grid(out.len(), 256); xp, op, ap, stp, gp, bp, n, gr, g, c, relu, pl);
            }
        }
    }

    fn batchnorm_backward(&mut self, dout: View, out: View, argmax: View, x: View, stats: View, gamma: View, dgamma: View, dbeta: View, dx: View, bn: BatchNormArgs, accumulate: bool) {
        Self::disjoint(&[dx, dgamma, dbeta], &[dout, out, argmax, x, stats, gamma]);
        let rows = x.len() / bn.cols;
        assert!(dout.len() == bn.out_rows(rows) * bn.cols && out.len() == dout.len() && dx.len() == x.len() && argmax.len() == if bn.pool.is_some() { dout.len() } else { 0 });
        assert!(bn.pool.is_none_or(|len| len > 0 && (rows / bn.groups).is_multiple_of(len)), "a pool's samples must not straddle BatchNorm's groups");
        let sums = self.scratch_of(2 * bn.groups * bn.cols);
        let (dp, op, ap, xp, stp, gp, dgp, dbp, dxp) =
            (self.ptr(dout), self.ptr(out), self.ptr(argmax), self.ptr(x), self.ptr(stats), self.ptr(gamma), self.ptr(dgamma), self.ptr(dbeta), self.ptr(dx));
        let (gr, g, c, relu, acc, n) = ((rows / bn.groups) as i32, bn.groups as i32, bn.cols as i32, bn.relu as i32, accumulate as i32, x.len() as u64);
        let pl = bn.pool.unwrap_or(0) as i32;
        launch!(self, batchnorm_backward_sums, grid(bn.groups * bn.cols, 128); dp, op, ap, xp, stp, sums, gr, g, c, relu, pl);
        launch!(self, batchnorm_param_grads, grid(bn.cols, 128); sums, dgp, dbp, g, c, acc);
        launch!(self, batchnorm_backward_dx, grid(x.len(), 256); dp, op, ap, xp, dxp, stp, sums, gp, n, gr, g, c, relu, pl);
    }

    fn im2col(&mut self, x: View, cols: View, s: ConvShape) {
        Self::disjoint(&[cols], &[x]);
        let (xp, cp) = (self.ptr(x), self.ptr(cols));
        let (sa, li, ch, k, st, pd, lo) = conv_args(s);
        launch!(self, im2col, grid(cols.len(), 256); xp, cp, sa, li, ch, k, st, pd, lo);
    }

    fn col2im(&mut self, dcols: View, dx: View, s: ConvShape) {
        Self::disjoint(&[dx], &[dcols]);
        let (cp, xp) = (self.ptr(dcols), self.ptr(dx));
        let (sa, li, ch, k, st, pd, lo) = conv_args(s);
        launch!(self, col2im, grid(dx.len(), 256); cp, xp, sa, li, ch, k, st, pd, lo);
    }

    fn transpose_inner(&mut self, src: View, dst: View, outer: usize, rows: usize, cols: usize, accumulate: bool) {
        Self::disjoint(&[dst], &[src]);
        let (sp, dp, n, r, c, acc) = (self.ptr(src), self.ptr(dst), (outer * rows * cols) as u64, rows as i32, cols as i32, accumulate as i32);
        launch!(self, transpose_inner, grid(src.len(), 256); sp, dp, n, r, c, acc);
    }

    fn conv_transposed_taps(&mut self, w: View, dst: View, out: usize, channels: usize, kernel: usize) {
        assert!(w.len() == out * channels * kernel && dst.len() == w.len(), "conv_transposed_taps of {} values for [{out}, {channels}, {kernel}]", w.len());
        Self::disjoint(&[dst], &[w]);
        let (wp, dp, o, c, k) = (self.ptr(w), self.ptr(dst), out as i32, channels as i32, kernel as i32);
        launch!(self, conv_transposed_taps, grid(w.len(), 256); wp, dp, o, c, k);
    }

    fn maxpool_forward(&mut self, x: View, out: View, argmax: View, s: PoolShape) {
        Self::disjoint(&[out, argmax], &[x]);
        let (xp, op, ap, sa, l, c) = (self.ptr(x), self.ptr(out), self.ptr(argmax), s.samples as i32, s.len as i32, s.cols as i32);
        launch!(self, maxpool_forward, grid(out.len(), 256); xp, op, ap, sa, l, c);
    }

    fn maxpool_backward(&mut self, dout: View, argmax: View, dx: View, s: PoolShape) {
        Self::disjoint(&[dx], &[dout, argmax]);
        let (dp, ap, xp, sa, l, c) = (self.ptr(dout), self.ptr(argmax), self.ptr(dx), s.samples as i32, s.len as i32, s.cols as i32);
        launch!(self, maxpool_backward, grid(dx.len(), 256); dp, ap, xp, sa, l, c);
    }

    fn meanpool_forward(&mut self, x: View, out: View, s: PoolShape) {
        Self::disjoint(&[out], &[x]);
        let (xp, op, sa, l, c) = (self.ptr(x), self.ptr(out), s.samples as i32, s.len as i32, s.cols as i32);
        launch!(self, meanpool_forward, grid(out.len(), 128); xp, op, sa, l, c);
    }

    fn meanpool_backward(&mut self, dout: View, dx: View, s: PoolShape) {
        Self::disjoint(&[dx], &[dout]);
        let (dp, xp, sa, l, c) = (self.ptr(dout), self.ptr(dx), s.samples as i32, s.len as i32, s.cols as i32);
        launch!(self, meanpool_backward, grid(dx.len(), 256); dp, xp, sa, l, c);
    }

    fn attention_forward(&mut self, qkv: View, out: View, lse: View, a: AttentionShape, dropout: Option<Dropout>) {
        Self::disjoint(&[out, lse], &[qkv]);
        let (qp, op, lp) = (self.ptr(qkv), self.ptr(out), self.ptr(lse));
        let (sa, sq, h, dh) = (a.samples as i32, a.seq as i32, a.heads as i32, a.head_dim as i32);
        let (has, key, threshold, scale) = match dropout.filter(|d| d.p > 0.0) {
            Some(d) => (1i32, d.key, Dropout::threshold(d.p), Dropout::scale(d.p)),
            None => (0, 0u64, 0u32, 1.0f32),
        };
        launch!(self, attention_forward, grid(a.lse_len(), 64); qp, op, lp, sa, sq, h, dh, has, key, threshold, scale);
    }

    fn attention_backward(&mut self, qkv: View, out: View, lse: View, dout: View, dqkv: View, a: AttentionShape, dropout: Option<Dropout>) {
        Self::disjoint(&[dqkv], &[qkv, out, lse, dout]);
        let (qp, op, lp, dp, gp) = (self.ptr(qkv), self.ptr(out), self.ptr(lse), self.ptr(dout), self.ptr(dqkv));
        let (sa, sq, h, dh) = (a.samples as i32, a.seq as i32, a.heads as i32, a.head_dim as i32);
        let (has, key, threshold, scale) = match dropout.filter(|d| d.p > 0.0) {
            Some(d) => (1i32, d.key, Dropout::threshold(d.p), Dropout::scale(d.p)),
            None => (0, 0u64, 0u32, 1.0f32),
        };
        launch!(self, attention_backward_q, grid(a.lse_len(), 64); qp, op, lp, dp, gp, sa, sq, h, dh, has, key, threshold, scale);
        launch!(self, attention_backward_kv, grid(a.lse_len(), 64); qp, op, lp, dp, gp, sa, sq, h, dh, has, key, threshold, scale);
    }

    fn patch_starts(&mut self, starts: View, p: PatchShape, key: Option<u64>) {
        let sp = self.ptr(starts);
        let (sa, pa, w, c, lp, cp) = (p.samples as i32, p.patches as i32, p.window as i32, p.channels as i32, p.patch_len as i32, p.patch_channels as i32);
        let (has_key, seed) = (key.is_some() as i32, key.map_or(0, Dropout::seed));
        launch!(self, patch_starts, grid(p.samples * p.patches, 128); sp, sa, pa, w, c, lp, cp, has_key, seed);
    }

    fn patch_gather(&mut self, x: View, rates: View, starts: View, out: View, p: PatchShape) {
        Self::disjoint(&[out], &[x, rates, starts]);
        let (xp, rp, sp, op) = (self.ptr(x), self.ptr(rates), self.ptr(starts), self.ptr(out));
        let (sa, pa, w, c, lp, cp) = (p.samples as i32, p.patches as i32, p.window as i32, p.channels as i32, p.patch_len as i32, p.patch_channels as i32);
        launch!(self, patch_gather, grid(out.len(), 256); xp, rp, sp, op, sa, pa, w, c, lp, cp);
    }

    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut {
        assert!(tau > 0.0, "temperature must be > 0");
        // scratch: zn [2b·d] | s [b·b] | dzn [2b·d] | norms [2b] | col lse [b] | out [2b]
        let need = 4 * b * d + b * b + 5 * b;
        let base = self.scratch_of(need);
        let at = |offset: usize| base + 4 * offset as u64;
        let (zn, s, dzn, norms, clse, out) = (0, 2 * b * d, 2 * b * d + b * b, 4 * b * d + b * b, 4 * b * d + b * b + 2 * b, 4 * b * d + b * b + 3 * b);
        let (zp, znp, nrm) = (self.ptr(z), at(zn), at(norms));
        let di = d as i32;
        launch!(self, normalize_rows, per_row(2 * b); zp, znp, nrm, di);
        let (za, zpos, sp) = (znp, znp + 4 * (b * d) as u64, at(s));
        self.gemm_raw(Gemm::nt(b, b, d), sp, za, zpos, 1.0 / tau);
        let (bi, cl, op) = (b as i32, at(clse), at(out));
        if symmetric {
            launch!(self, col_lse, grid(b, 128); sp, cl, bi);
        }
        let row_w = if symmetric { 0.5 } else { 1.0 } * grad_scale / b as f32;
        let (sym, want) = (symmetric as i32, dz.is_some() as i32);
        launch!(self, row_softmax_grad, grid(b, 128); sp, cl, op, bi, sym, want, row_w);
        if let Some(dz) = dz {
            let dznp = at(dzn);
            self.gemm_raw(Gemm::nn(b, d, b), dznp, sp, zpos, 1.0 / tau);
            self.gemm_raw(Gemm::tn(b, d, b), dznp + 4 * (b * d) as u64, sp, za, 1.0 / tau);
            let dzp = self.ptr(dz);
            launch!(self, normalize_backward, per_row(2 * b); dzp, znp, dznp, nrm, di);
        }
        let mut host = vec![0.0f32; 2 * b];
        Self::check(self.stream.memcpy_dtoh(&self.scratch.slice(out..out + 2 * b), &mut host));
        Self::check(self.stream.synchronize());
        let loss: f64 = host.iter().step_by(2).map(|&x| x as f64).sum::<f64>() / b as f64;
        let acc = host.iter().skip(1).step_by(2).sum::<f32>() / b as f32;
        InfoNceOut { loss: loss as f32, accuracy: acc }
    }

    fn sum_squares(&mut self, x: View) -> f64 {
        let (xp, n) = (self.ptr(x), x.len() as u64);
        let (pp, sync) = self.partial.device_ptr(&self.stream);
        drop(sync);
        let cfg = LaunchConfig { grid_dim: (SUM_CHUNKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, sum_squares_partial, cfg; xp, n, pp);
        let mut host = [0.0f64; SUM_CHUNKS];
        Self::check(self.stream.memcpy_dtoh(&self.partial, &mut host[..]));
        Self::check(self.stream.synchronize());
        host.iter().sum()
    }

    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32) {
        assert!(param.len() == grad.len() && param.len() == m.len() && param.len() == v.len());
        Self::disjoint(&[param, m, v], &[grad]);
        let AdamStep { step_size, bc2_sqrt, decay, l2 } = h.at_step(step);
        let (pp, gp, mp, vp, n) = (self.ptr(param), self.ptr(grad), self.ptr(m), self.ptr(v), param.len() as u64);
        let (b1, b2, eps) = (h.beta1, h.beta2, h.eps);
        launch!(self, adam, grid(param.len(), 256); pp, gp, mp, vp, n, grad_scale, l2, decay, b1, b2, step_size, bc2_sqrt, eps);
    }
}

/// A convolution's shape as the `int` arguments of the im2col / col2im kernels: samples, input
/// length, channels, kernel, stride, padding, output length.
fn conv_args(s: ConvShape) -> (i32, i32, i32, i32, i32, i32, i32) {
    let (len_out, _, _) = s.sample_lens();
    (s.samples as i32, s.len_in as i32, s.channels as i32, s.kernel as i32, s.stride as i32, s.padding as i32, len_out as i32)
}

#[cfg(test)]
mod tests {
    //! What can be checked of the CUDA side without a GPU: every kernel the device loads is
    //! defined in `kernels.cu`, and every launch passes as many arguments as its kernel takes (a
    //! missing or extra argument would read garbage on the GPU, silently).

    use std::collections::HashMap;

    /// The text between the parenthesis at `open` and its match.
    fn inside(text: &str, open: usize) -> &str {
        let mut depth = 0;
        for (i, ch) in text[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' if depth == 1 => return &text[open + 1..open + i],
                ')' => depth -= 1,
                _ => {}
            }
        }
        panic!("unbalanced parenthesis at byte {open}")
    }

    /// The source's `#define NAME text` macros (continued lines joined).
    fn defines() -> HashMap<String, String> {
        let joined = super::SOURCE.replace("\\\n", " ");
        joined.lines().filter_map(|l| l.strip_prefix("#define ")).filter_map(|d| d.split_once(' ')).map(|(n, t)| (n.to_string(), t.to_string())).collect()
    }

    /// Each `extern "C" __global__` kernel of the source, by name, with its parameter count (a
    /// parameter list written as one macro is expanded).
    fn kernel_params() -> HashMap<String, usize> {
        let (marker, macros) = ("extern \"C\" __global__ void ", defines());
        let mut out = HashMap::new();
        for (at, _) in super::SOURCE.match_indices(marker) {
            let name_at = at + marker.len();
            let open = name_at + super::SOURCE[name_at..].find('(').expect("a kernel's parameter list");
            let params = inside(super::SOURCE, open).trim();
            let params = macros.get(params).map_or(params, String::as_str);
            out.insert(super::SOURCE[name_at..open].trim().to_string(), params.split(',').count());
        }
        out
    }

    #[test]
    fn every_kernel_is_defined_and_every_launch_passes_its_parameter_count() {
        let kernels = kernel_params();
        // (The device's code, not this test's, which names the patterns it looks for.)
        let device = include_str!("mod.rs").split("#[cfg(test)]").next().expect("the device's code");
        let list_at = device.find("kernels!(\n").expect("the kernel list");
        let listed: Vec<&str> = inside(device, list_at + "kernels!".len()).split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        assert!(listed.len() > 30, "the kernel list was read: {listed:?}");
        for name in &listed {
            assert!(kernels.contains_key(*name), "kernel {name} is loaded but kernels.cu does not define it");
        }
        let mut launches = 0;
        for (at, _) in device.match_indices("launch!(self, ") {
            let call = inside(device, at + "launch!".len());
            let name = call.split(',').nth(1).expect("a kernel name").trim();
            let (_, args) = call.split_once(';').expect("launch arguments after ';'");
            let given = args.split(',').filter(|a| !a.trim().is_empty()).count();
            let want = kernels.get(name).unwrap_or_else(|| panic!("launch of {name}, which kernels.cu does not define"));
            assert_eq!(given, *want, "launch of {name} passes {given} arguments, the kernel takes {want}");
            launches += 1;
        }
        assert!(launches > 30, "the launches were read ({launches})");
    }
}
