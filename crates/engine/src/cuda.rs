//! The CUDA device: cuBLAS for the GEMMs, NVRTC-compiled kernels (`cuda_kernels.cu`) for the
//! rest, the same arithmetic as the CPU device kernel for kernel. CUDA is loaded at run time
//! (cudarc's dynamic loading), so this builds and the rest of the engine runs on machines
//! without CUDA; `CudaDevice::new` then returns an error.
//!
//! Status: written and compiled without a GPU (none was lent to the session that wrote it); the
//! parity test (`tests/cuda_parity.rs`) runs it against the CPU device where a GPU exists and
//! says SKIPPED otherwise. Not yet done: CUDA-graph capture of the step, bf16/fp16 compute, the
//! pinned-memory input pipeline.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use crate::device::{AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, View};
use crate::error::{EngineError, Result};

const SOURCE: &str = include_str!("cuda_kernels.cu");

fn dev_err(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Device(format!("{e:?}"))
}

struct Kernels {
    fill: CudaFunction,
    bias_act_forward: CudaFunction,
    act_backward: CudaFunction,
    bias_grad: CudaFunction,
    sum_squares_partial: CudaFunction,
    adam: CudaFunction,
    normalize_rows: CudaFunction,
    col_lse: CudaFunction,
    row_softmax_grad: CudaFunction,
    normalize_backward: CudaFunction,
    _module: Arc<CudaModule>,
}

/// Device memory in one arena (grown only while building), plus scratch for the loss kernel.
pub struct CudaDevice {
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

fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(block).max(1), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
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
        let f = |name: &str| module.load_function(name).map_err(dev_err);
        let k = Kernels {
            fill: f("fill")?,
            bias_act_forward: f("bias_act_forward")?,
            act_backward: f("act_backward")?,
            bias_grad: f("bias_grad")?,
            sum_squares_partial: f("sum_squares_partial")?,
            adam: f("adam")?,
            normalize_rows: f("normalize_rows")?,
            col_lse: f("col_lse")?,
            row_softmax_grad: f("row_softmax_grad")?,
            normalize_backward: f("normalize_backward")?,
            _module: module.clone(),
        };
        let mem = stream.alloc_zeros::<f32>(1).map_err(dev_err)?;
        let scratch = stream.alloc_zeros::<f32>(1).map_err(dev_err)?;
        let partial = stream.alloc_zeros::<f64>(SUM_CHUNKS).map_err(dev_err)?;
        Ok(CudaDevice { stream, blas, k, mem, len: 0, scratch, partial })
    }

    fn base(&self) -> u64 {
        let (p, _sync) = self.mem.device_ptr(&self.stream);
        p
    }

    /// Raw device address of a view (kernels take plain pointers into the arena).
    fn ptr(&self, v: View) -> u64 {
        self.base() + 4 * v.offset as u64
    }

    fn scratch_ptr(&self, offset: usize) -> u64 {
        let (p, _sync) = self.scratch.device_ptr(&self.stream);
        p + 4 * offset as u64
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
            blas::sgemm(*self.blas.handle(), op_b, op_a, g.n as i32, g.m as i32, g.k as i32, &alpha, b as *const f32, ldb.max(1) as i32, a as *const f32, lda.max(1) as i32, &beta, c as *mut f32, g.n.max(1) as i32)
        };
        r.unwrap_or_else(|e| panic!("cuBLAS sgemm failed: {e:?}"));
    }
}

impl Device for CudaDevice {
    fn alloc(&mut self, len: usize) -> View {
        let v = View { offset: self.len, len };
        let need = self.len + len;
        if need > self.mem.len() {
            // Building only: grow the arena and keep what was written (views are offsets).
            let cap = need.max(2 * self.mem.len());
            let mut bigger = Self::check(self.stream.alloc_zeros::<f32>(cap));
            if self.len > 0 {
                Self::check(self.stream.memcpy_dtod(&self.mem.slice(..self.len), &mut bigger.slice_mut(..self.len)));
            }
            self.mem = bigger;
        }
        self.len = need;
        v
    }

    fn allocated_bytes(&self) -> usize {
        4 * (self.len + self.scratch.len()) + 8 * self.partial.len()
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        assert_eq!(dst.len, src.len());
        Self::check(self.stream.memcpy_htod(src, &mut self.mem.slice_mut(dst.offset..dst.offset + dst.len)));
    }

    fn download(&self, src: View, dst: &mut [f32]) {
        assert_eq!(src.len, dst.len());
        Self::check(self.stream.memcpy_dtoh(&self.mem.slice(src.offset..src.offset + src.len), dst));
        Self::check(self.stream.synchronize());
    }

    fn fill(&mut self, dst: View, value: f32) {
        let (p, n) = (self.ptr(dst), dst.len as u64);
        let mut b = self.stream.launch_builder(&self.k.fill);
        b.arg(&p).arg(&value).arg(&n);
        Self::check(unsafe { b.launch(grid(dst.len, 256)) });
    }

    fn gemm(&mut self, g: Gemm, c: View, a: View, b: View) {
        self.gemm_raw(g, self.ptr(c), self.ptr(a), self.ptr(b), 1.0);
    }

    fn bias_act_forward(&mut self, y: View, bias: View, rows: usize, cols: usize, relu: bool, dropout: Option<Dropout>) {
        let (yp, bp) = (self.ptr(y), self.ptr(bias));
        let (has, threshold, scale, key) = match dropout {
            Some(d) if d.p > 0.0 => (1i32, Dropout::threshold(d.p), Dropout::scale(d.p), d.key),
            _ => (0, 0u32, 1.0f32, 0u64),
        };
        let (r, c, relu) = (rows as i32, cols as i32, relu as i32);
        let mut b = self.stream.launch_builder(&self.k.bias_act_forward);
        b.arg(&yp).arg(&bp).arg(&r).arg(&c).arg(&relu).arg(&has).arg(&threshold).arg(&scale).arg(&key);
        Self::check(unsafe { b.launch(grid(rows * cols, 256)) });
    }

    fn act_backward(&mut self, dy: View, h: View, scale: f32) {
        let (dp, hp, n) = (self.ptr(dy), self.ptr(h), dy.len as u64);
        let mut b = self.stream.launch_builder(&self.k.act_backward);
        b.arg(&dp).arg(&hp).arg(&scale).arg(&n);
        Self::check(unsafe { b.launch(grid(dy.len, 256)) });
    }

    fn bias_grad(&mut self, db: View, dy: View, rows: usize, cols: usize, accumulate: bool) {
        let (bp, dp) = (self.ptr(db), self.ptr(dy));
        let (r, c, acc) = (rows as i32, cols as i32, accumulate as i32);
        let mut b = self.stream.launch_builder(&self.k.bias_grad);
        b.arg(&bp).arg(&dp).arg(&r).arg(&c).arg(&acc);
        Self::check(unsafe { b.launch(grid(cols, 128)) });
    }

    fn infonce(&mut self, z: View, dz: Option<View>, b: usize, d: usize, tau: f32, symmetric: bool, grad_scale: f32) -> InfoNceOut {
        assert!(tau > 0.0, "temperature must be > 0");
        // scratch: zn [2b·d] | s [b·b] | dzn [2b·d] | norms [2b] | col lse [b] | out [2b]
        let need = 4 * b * d + b * b + 5 * b;
        if self.scratch.len() < need {
            self.scratch = Self::check(self.stream.alloc_zeros::<f32>(need));
        }
        let (zn, s, dzn, norms, clse, out) = (0, 2 * b * d, 2 * b * d + b * b, 4 * b * d + b * b, 4 * b * d + b * b + 2 * b, 4 * b * d + b * b + 3 * b);
        let (zp, znp, nrm) = (self.ptr(z), self.scratch_ptr(zn), self.scratch_ptr(norms));
        let di = d as i32;
        let cfg_rows = LaunchConfig { grid_dim: (2 * b as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let mut l = self.stream.launch_builder(&self.k.normalize_rows);
        l.arg(&zp).arg(&znp).arg(&nrm).arg(&di);
        Self::check(unsafe { l.launch(cfg_rows) });
        let (za, zpos, sp) = (znp, znp + 4 * (b * d) as u64, self.scratch_ptr(s));
        self.gemm_raw(Gemm { m: b, n: b, k: d, trans_a: false, trans_b: true, accumulate: false, sparse_a: false }, sp, za, zpos, 1.0 / tau);
        let (bi, cl, op) = (b as i32, self.scratch_ptr(clse), self.scratch_ptr(out));
        if symmetric {
            let mut l = self.stream.launch_builder(&self.k.col_lse);
            l.arg(&sp).arg(&cl).arg(&bi);
            Self::check(unsafe { l.launch(grid(b, 128)) });
        }
        let row_w = if symmetric { 0.5 } else { 1.0 } * grad_scale / b as f32;
        let (sym, want) = (symmetric as i32, dz.is_some() as i32);
        let mut l = self.stream.launch_builder(&self.k.row_softmax_grad);
        l.arg(&sp).arg(&cl).arg(&op).arg(&bi).arg(&sym).arg(&want).arg(&row_w);
        Self::check(unsafe { l.launch(grid(b, 128)) });
        if let Some(dz) = dz {
            let dznp = self.scratch_ptr(dzn);
            self.gemm_raw(Gemm { m: b, n: d, k: b, trans_a: false, trans_b: false, accumulate: false, sparse_a: false }, dznp, sp, zpos, 1.0 / tau);
            self.gemm_raw(Gemm { m: b, n: d, k: b, trans_a: true, trans_b: false, accumulate: false, sparse_a: false }, dznp + 4 * (b * d) as u64, sp, za, 1.0 / tau);
            let dzp = self.ptr(dz);
            let mut l = self.stream.launch_builder(&self.k.normalize_backward);
            l.arg(&dzp).arg(&znp).arg(&dznp).arg(&nrm).arg(&di);
            Self::check(unsafe { l.launch(cfg_rows) });
        }
        let mut host = vec![0.0f32; 2 * b];
        Self::check(self.stream.memcpy_dtoh(&self.scratch.slice(out..out + 2 * b), &mut host));
        Self::check(self.stream.synchronize());
        let loss: f64 = host.iter().step_by(2).map(|&x| x as f64).sum::<f64>() / b as f64;
        let acc = host.iter().skip(1).step_by(2).sum::<f32>() / b as f32;
        InfoNceOut { loss: loss as f32, accuracy: acc }
    }

    fn sum_squares(&mut self, x: View) -> f64 {
        let (xp, n) = (self.ptr(x), x.len as u64);
        let (pp, _sync) = self.partial.device_ptr(&self.stream);
        let cfg = LaunchConfig { grid_dim: (SUM_CHUNKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut l = self.stream.launch_builder(&self.k.sum_squares_partial);
        l.arg(&xp).arg(&n).arg(&pp);
        Self::check(unsafe { l.launch(cfg) });
        drop(_sync);
        let mut host = [0.0f64; SUM_CHUNKS];
        Self::check(self.stream.memcpy_dtoh(&self.partial, &mut host[..]));
        Self::check(self.stream.synchronize());
        host.iter().sum()
    }

    fn adam(&mut self, param: View, grad: View, m: View, v: View, h: AdamHyper, step: u64, grad_scale: f32) {
        assert!(param.len == grad.len && param.len == m.len && param.len == v.len);
        let AdamStep { step_size, bc2_sqrt, decay, l2 } = h.at_step(step);
        let (pp, gp, mp, vp, n) = (self.ptr(param), self.ptr(grad), self.ptr(m), self.ptr(v), param.len as u64);
        let mut l = self.stream.launch_builder(&self.k.adam);
        l.arg(&pp).arg(&gp).arg(&mp).arg(&vp).arg(&n).arg(&grad_scale).arg(&l2).arg(&decay).arg(&h.beta1).arg(&h.beta2).arg(&step_size).arg(&bc2_sqrt).arg(&h.eps);
        Self::check(unsafe { l.launch(grid(param.len, 256)) });
    }
}
