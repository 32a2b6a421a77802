//! Arbitrary bytes as a checkpoint: the first byte picks the file they replace in a valid
//! checkpoint directory (model.safetensors or training_state.safetensors); reading the metadata,
//! building the encoder it names and loading the weights and the training state end in a value
//! or an error, never a crash or an allocation past the budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

use engine::{CpuDevice, EncoderConfig, InfoNceConfig, OptimizerConfig};
use train::checkpoint;

fuzz_target!(|data: &[u8]| {
    limits::set_budget(256 << 20, "the fuzz target's 256 MiB");
    let Some((&which, bytes)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("cid-fuzz-ckpt-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let seed_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("base_checkpoint");
    for f in ["model.safetensors", "training_state.safetensors"] {
        let _ = std::fs::copy(seed_dir.join(f), dir.join(f));
    }
    let target = if which % 2 == 0 { "model.safetensors" } else { "training_state.safetensors" };
    if std::fs::write(dir.join(target), bytes).is_err() {
        return;
    }
    let Ok((arch, _yaml)) = checkpoint::read_metadata(&dir.join("model.safetensors")) else { return };
    let arch: EncoderConfig = arch.unwrap_or(EncoderConfig::new(engine::EncoderKind::MlpSimple, 64, 1));
    let Ok(enc) = arch.init(CpuDevice::new(), 4, 0) else { return };
    let Ok(mut step) = engine::ContrastiveStep::new(enc, 2, InfoNceConfig::default(), OptimizerConfig::default(), 0) else { return };
    let _ = checkpoint::load_weights(&dir, &mut step.encoder);
    let _ = checkpoint::load_full(&dir, &mut step);
});
