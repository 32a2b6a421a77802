//! The reference workloads by name — `WORKLOAD.md`'s MLP configs and `encoders_ref.CONFIGS`'s
//! encoder configs — so every benchmark (the engine's `workload` bench, the suite's categories)
//! times exactly the shapes the PyTorch reference times under the same names.

use crate::encoders::{Arch, CnnConfig, EncoderConfig, IsfmConfig};

/// One reference training step: `batch` pairs of windows through `encoder`.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: &'static str,
    pub batch: usize,
    pub encoder: EncoderConfig,
    /// The sampling rate the reference feeds the ISFM (12 kHz).
    pub sample_rate: f32,
}

fn isfm(num_patches: usize, patch_size_l: usize, d_model: usize, d_ff: usize) -> Arch {
    Arch::Isfm(IsfmConfig { num_patches, patch_size_l, d_model, d_ff, num_heads: 4, e_layers: 2, ..IsfmConfig::default() })
}

/// Every workload, in the order the references list them.
pub fn all() -> Vec<Workload> {
    let w = |name, batch, window, channels, arch| Workload { name, batch, encoder: EncoderConfig { arch, window, channels, embed: 128 }, sample_rate: 12_000.0 };
    vec![
        w("small", 16, 512, 1, Arch::MlpMedium),
        w("medium", 32, 1024, 1, Arch::MlpMedium),
        w("large", 64, 2048, 1, Arch::MlpMedium),
        w("complex", 64, 2048, 1, Arch::MlpComplex),
        w("xl", 256, 8192, 1, Arch::MlpMedium),
        w("cnn-medium", 32, 1024, 2, Arch::Cnn(CnnConfig::default())),
        w("cnn-large", 64, 2048, 2, Arch::Cnn(CnnConfig::default())),
        w("isfm-small", 32, 1024, 2, isfm(32, 64, 128, 256)),
        w("isfm-base", 32, 1024, 2, isfm(64, 64, 256, 512)),
        w("isfm-pretrain", 32, 1024, 2, isfm(128, 256, 256, 512)),
    ]
}

/// The workload called `name`.
pub fn named(name: &str) -> Option<Workload> {
    all().into_iter().find(|w| w.name == name)
}
