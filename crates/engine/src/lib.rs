//! The compute engine of contrastive-id, in the style of llm.c: explicit forward and backward per
//! op, no general autograd.
//!
//! - [`device`]: the kernel boundary ([`Device`]), [`View`]s into device memory;
//! - [`ops`]: the op families (linear, activations, norms, convolution, pooling, attention, patch
//!   embedding), each with its forward, backward and CPU kernels side by side;
//! - [`encoders`]: the MLPs, the CNN and the ISFM as lists of ops ([`EncoderConfig::init`] builds
//!   one); [`arena`]: where their tensors live, under PyTorch's names;
//! - [`loss`], [`optim`], [`step`]: InfoNCE, Adam/AdamW + clipping, the allocation-free training step;
//! - [`workloads`]: the reference's benchmark shapes by name;
//! - [`cpu`]: the CPU device (our packed GEMM, AVX2 or AVX-512, or faer, + rayon), the reference every other device
//!   is checked against; [`cuda`]: the CUDA device (cuBLAS + NVRTC kernels, loaded at run time).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod arena;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod encoders;
pub mod error;
pub mod head;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod step;
pub mod workloads;

pub use arena::{TensorKind, TensorSpec};
pub use cpu::{CpuDevice, CpuGemm};
pub use cuda::CudaDevice;
pub use device::{AdamHyper, AdamStep, Device, Dropout, Gemm, InfoNceOut, Precision, View};
pub use encoders::{view_key, Arch, CnnConfig, Encoder, EncoderConfig, EncoderKind, IsfmConfig, Mode};
pub use error::{EngineError, Result, Setting};
pub use head::ProjectionHead;
pub use loss::InfoNceConfig;
pub use ops::act::Activation;
pub use optim::{OptimizerConfig, OptimizerKind};
pub use step::{embed, ContrastiveStep, LossScaler, Pairs, StepOutput, Update};
