//! The ops the encoders are made of, one file per op family: the op's parameters (declared under
//! PyTorch's names), its forward and backward side by side as calls to [`crate::Device`] kernels,
//! and the CPU kernels themselves (the CUDA ones are in `cuda/kernels.cu`, one section per file).
//!
//! Every activation is channels-last, `[rows, features]` row-major: a window `[W, C]` as cut
//! from the signal, a convolution's `[L, C]`, a Transformer's `[patches, d]`. Linear layers,
//! convolutions (as im2col GEMMs) and normalisations then all read rows.

pub mod act;
pub mod attention;
pub mod conv1d;
pub mod linear;
pub mod norm;
pub mod patch;
pub mod pool;
