//! The compute engine of contrastive-id, in the style of llm.c: explicit forward and backward per
//! layer, no general autograd.
//!
//! - [`device`]: the kernel boundary ([`Device`]), [`View`]s into device memory;
//! - [`cpu`]: the CPU device (packed AVX2 GEMM or faer, + rayon), the reference every other device is checked against;
//! - [`cuda`]: the CUDA device (cuBLAS + NVRTC kernels, loaded at run time; unverified on a GPU so far);
//! - [`sgemm`]: the packed AVX2 + FMA GEMM the CPU device runs where the CPU has it;
//! - [`sparse`]: the GEMM that skips the zeros of a gradient behind ReLU + dropout;
//! - [`model`]: the MLP encoders ([`EncoderConfig::init`] builds one), forward and backward side by side;
//! - [`step`]: InfoNCE + Adam/AdamW + clipping, the allocation-free training step.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod model;
pub mod sgemm;
pub mod sparse;
pub mod step;

pub use cpu::{CpuDevice, CpuGemm};
pub use cuda::CudaDevice;
pub use device::{AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, View};
pub use error::{EngineError, Result};
pub use model::{EncoderConfig, EncoderKind, Encoder, LayerSpec};
pub use step::{embed, ContrastiveStep, InfoNceConfig, OptimizerConfig, OptimizerKind, StepOutput};
