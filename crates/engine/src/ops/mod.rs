//! The ops the encoders are made of, one file per op family: the op's parameters (declared under
//! PyTorch's names), its forward and backward side by side as calls to [`crate::Device`] kernels,
//! and the CPU kernels themselves (the CUDA ones are in `cuda/kernels.cu`, one section per file).
//!
//! Every activation is channels-last, `[rows, features]` row-major: a window `[W, C]` as cut
//! from the signal, a convolution's `[L, C]`, a Transformer's `[patches, d]`. Linear layers,
//! convolutions (as im2col GEMMs) and normalisations then all read rows.
//!
//! The CPU kernels are compiled once per instruction set with `multiversion`, each with the same
//! target list: `x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma`, `x86_64+avx2+fma`,
//! `x86_64+sse4.2`, `aarch64+neon`. (The crate's `"simd"` preset stops at AVX2; on an AMD EPYC
//! Zen 4 the AVX-512 clones made a cnn-large step 7 % and an isfm-base bf16 step 3 % faster.)

pub mod act;
pub mod attention;
pub mod conv1d;
pub mod linear;
pub mod norm;
pub mod patch;
pub mod pool;
