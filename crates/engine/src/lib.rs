//! The compute engine of contrastive-id, in the style of llm.c: explicit forward and backward per
//! layer, no general autograd.
//!
//! - [`device`]: the kernel boundary ([`Device`]), [`View`]s into device memory;
//! - [`cpu`]: the CPU device (faer GEMMs + rayon), the reference every other device is checked against;
//! - [`cuda`]: the CUDA device (cuBLAS + NVRTC kernels, loaded at run time; unverified on a GPU so far);
//! - [`model`]: the MLP encoders ([`EncoderConfig::init`] builds one), forward and backward side by side;
//! - [`step`]: InfoNCE + Adam/AdamW + clipping, the allocation-free training step.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod model;
pub mod step;

pub use cpu::CpuDevice;
pub use cuda::CudaDevice;
pub use device::{AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, View};
pub use error::{EngineError, Result};
pub use model::{EncoderConfig, EncoderKind, Encoder, LayerSpec};
pub use step::{embed, ContrastiveStep, InfoNceConfig, OptimizerConfig, OptimizerKind, StepOutput};
