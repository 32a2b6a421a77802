//! Configuration, checkpoints, resume, early stopping and accumulation, on real files.

use std::path::{Path, PathBuf};

use engine::{Arch, ContrastiveStep, CpuDevice, Device, EncoderConfig, EncoderKind, InfoNceConfig, OptimizerConfig, Pairs};
use signal::synth::{generate, SynthConfig};
use signal::{Complexity, Layout};
use std::ops::ControlFlow;
use train::config::{Config, Mode, Monitor, Precision, Scheduler};
use train::trainer::{train, Quiet};
use train::{Observer, StepLog};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_configs_load_with_their_values() {
    let d = Config::load(&root().join("configs/debug.yaml"), &[]).unwrap();
    assert_eq!((d.data.window_size, d.stride(), d.data.batch_size), (256, 128, 4));
    assert_eq!(d.data.truncate_length, Some(2048));
    assert_eq!(d.task.temperature, 0.07);
    assert_eq!(d.trainer.gradient_clip_val, Some(1.0));
    assert_eq!((d.model.name, d.model.d_model), (EncoderKind::Isfm, 64));
    assert!(d.unused_keys.iter().any(|k| k.starts_with("data.factory_name")), "{:?}", d.unused_keys);
    let p = Config::load(&root().join("configs/production.yaml"), &[]).unwrap();
    assert_eq!((p.data.window_size, p.data.batch_size, p.data.num_window), (2048, 64, 4));
    assert_eq!((p.task.temperature, p.task.lr), (0.05, 5e-4));
    assert_eq!(p.trainer.accumulate_grad_batches, 2);
    assert_eq!((p.trainer.monitor, p.mode()), (Monitor::ValAcc, Mode::Max));
    assert_eq!(p.early_stopping(), Some(15));
    assert_eq!(p.trainer.lr_scheduler, Scheduler::Cosine);
    let q = Config::load(&root().join("configs/cwru_quality.yaml"), &[]).unwrap();
    assert_eq!((q.data.time_split, q.trainer.max_steps), (0.7, Some(4000)));
    // The bearing-transfer config is the quality protocol stopped at 1000 steps, nothing else.
    let t = Config::load(&root().join("configs/cwru_bearing.yaml"), &[]).unwrap();
    assert_eq!(t.trainer.max_steps, Some(1000));
    let shortened = Config::load(&root().join("configs/cwru_quality.yaml"), &["trainer.max_steps=1000".into(), "environment.experiment_name=cwru_bearing".into()]).unwrap();
    assert_eq!(t, shortened);
    // Every config shipped loads.
    for f in std::fs::read_dir(root().join("configs")).unwrap().flatten().filter(|f| f.path().extension().is_some_and(|e| e == "yaml")) {
        Config::load(&f.path(), &[]).unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
    }
}

/// YAML's empty value is no name: a run is not named `null` by accident, nor ` ` (a name with
/// a space at either end); as `lr_scheduler` it is no schedule, as `false` is. A whole number
/// past 2^53 written as a float is told to be written in digits, not called "not whole".
#[test]
fn empty_values_and_float_written_counts_are_read_as_meant() {
    for empty in ["environment:\n  experiment_name:\n", "environment:\n  experiment_name: ~\n", "environment:\n  experiment_name: null\n"] {
        let e = Config::from_yaml(empty, &[]).unwrap_err().to_string();
        assert!(e.contains("environment.experiment_name") && e.contains("no value given"), "{empty}: {e}");
    }
    let e = Config::from_yaml("", &["environment.experiment_name=".into()]).unwrap_err().to_string();
    assert!(e.contains("environment.experiment_name") && e.contains("no value given"), "{e}");
    for spaced in [" ", " run", "run "] {
        let e = Config::from_yaml(&format!("environment:\n  experiment_name: \"{spaced}\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("environment.experiment_name") && e.contains("no space at either end"), "{spaced:?}: {e}");
    }
    assert_eq!(Config::from_yaml("environment:\n  experiment_name: \"a run\"\n", &[]).unwrap().environment.experiment_name, "a run");
    for none in ["", "~", "null", "false", "none", "'null'"] {
        let c = Config::from_yaml(&format!("trainer:\n  lr_scheduler: {none}\n"), &[]).unwrap_or_else(|e| panic!("{none:?}: {e}"));
        assert_eq!(c.trainer.lr_scheduler, Scheduler::Constant, "{none:?}");
    }
    let e = Config::from_yaml("trainer:\n  lr_scheduler: linear\n", &[]).unwrap_err().to_string();
    assert!(e.contains("trainer.lr_scheduler") && e.contains("cosine"), "{e}");
    let e = Config::from_yaml("", &["data.truncate_length=1e18".into()]).unwrap_err().to_string();
    assert!(e.contains("data.truncate_length") && e.contains("1e18 is a whole number past 2^53 written as a float") && e.contains("in digits"), "{e}");
    let e = Config::from_yaml("", &["trainer.epochs=2.5".into()]).unwrap_err().to_string();
    assert!(e.contains("trainer.epochs") && e.contains("expected a whole number >= 0, got 2.5"), "{e}");
}

#[test]
fn overrides_reach_every_section_and_round_trip_through_yaml() {
    let c = Config::from_yaml(
        "data:\n  batch_size: 8\n",
        &["data.window_size=512".into(), "task.lr=3e-4".into(), "trainer.precision=32".into(), "model.name=mlp-complex".into(), "environment.save_dir=/tmp/x".into()],
    )
    .unwrap();
    assert_eq!((c.data.batch_size, c.data.window_size, c.stride()), (8, 512, 512));
    assert_eq!(c.task.lr, 3e-4);
    assert_eq!(c.model.name, EncoderKind::MlpComplex);
    assert_eq!(c.trainer.precision, Precision::F32);
    assert_eq!(c.environment.save_dir, Path::new("/tmp/x"));
    let again = Config::from_yaml(&c.to_yaml(), &[]).unwrap();
    assert_eq!(again, c);
    // A byte-order mark before the first key (as Windows editors save) is no second document.
    let with_bom = Config::from_yaml("\u{feff}data:\n  batch_size: 8\n", &[]).unwrap();
    assert_eq!(with_bom.data.batch_size, 8);
}

#[test]
fn bad_keys_and_values_name_the_key() {
    let cases = [
        ("data:\n  batch_sise: 4\n", "data.batch_sise", "data.batch_size"),
        ("data:\n  window_size: 0\n", "data.window_size", ""),
        ("data:\n  window_size: -3\n", "data.window_size", ""),
        ("data:\n  window_size: 1e12\n", "data.window_size", ""),
        ("data:\n  window_sampling_strategy: spiral\n", "data.window_sampling_strategy", "spiral"),
        ("data:\n  input: 0\n", "data.input", "expected one of `time`, `spectrum`, `whitened`"),
        // Something other than one name (a third probe of 2026-12-02): said as what it is.
        ("data:\n  input:\n", "data.input", "no value given; expected one of `time`"),
        ("data:\n  input: [a]\n", "data.input", "a list where one name goes; expected one of `time`"),
        ("data:\n  input: {a: 1}\n", "data.input", "a mapping where one name goes; expected one of"),
        ("data:\n  window_size: 1\n", "data.window_size", "at least 2"),
        ("trainer:\n  monitor: -1\n", "trainer.monitor", "expected one of"),
        ("task:\n  temperature: 0\n", "task.temperature", ""),
        ("task:\n  lr: fast\n", "task.lr", ""),
        ("trainer:\n  precision: 8\n", "trainer.precision", ""),
        ("trainer:\n  precision: bf16\n  accelerator: gpu\n", "trainer.precision", "CPU device only"),
        ("trainer:\n  monitor: f1\n", "trainer.monitor", ""),
        ("model:\n  name: patchtst\n", "model.name", "isfm"),
        ("model:\n  name: isfm\n  backbone: B_04_Dlinear\n", "model.backbone", "B_08_PatchTST"),
        ("model:\n  name: isfm\n  num_heads: 3\n", "model.num_heads", "d_model"),
        ("data:\n  batch_size: 1e12x\n", "data.batch_size", "number"),
        ("optimiser:\n  lr: 1\n", "optimiser", ""),
        ("data:\n  batch_size: !foo 4\n", "data.batch_size", "YAML tag !foo"),
        ("trainer:\n  accelerator: !gpu cpu\n", "trainer.accelerator", "YAML tag !gpu"),
        ("data: !mytag\n  batch_size: 4\n", "data", "YAML tag !mytag"),
        ("data:\n  batch_size: 18446744073709551616\n", "data.batch_size", "past the largest whole number"),
        // Keys that are not names, and YAML 1.1's merge key (the adversarial probe of 2026-12-03).
        ("data:\n  1: 2\n", "data.1", "a key in `data` is a number"),
        ("? [a, b]\n: 1\n", "[…]", "a key in the top level is a list or mapping"),
        ("data:\n  <<: {window_size: 256}\n", "data.<<", "merge key"),
        // Each error names the key as written (a second probe of 2026-12-02).
        ("model:\n  name: isfm\n  num_layers: 0\n", "model.num_layers (read as model.e_layers)", "must be > 0"),
        ("model:\n  name: isfm\n  num_layers: 2\n  e_layers: 3\n", "model.num_layers", "while model.e_layers is 3"),
        ("model:\n  name: isfm\n  output_dim: 0\n", "model.output_dim", "must be > 0"),
        ("model:\n  name: isfm\n  output_dim: 1e12\n", "model.output_dim", "larger than"),
        ("model:\n  name: isfm\n  patch_size_L: 16\n  patch_size_C: 65536\n", "model.patch_size_C", "16 steps × 65536 channels"),
        ("model:\n  name: isfm\n  patch_size_C: 1e12\n", "model.patch_size_C", "is more than"),
        ("model:\n  name: isfm\n  activation: silu\n", "model.activation", "relu or gelu"),
        ("model:\n  name: isfm\n  d_model: 1\n  num_heads: 1\n", "model.d_model", "LayerNorm over a single feature"),
        ("model:\n  name: cnn\ndata:\n  input: spectrum\n  window_size: 16\n", "data.window_size", "frequency bins"),
        ("model:\n  name: cnn\ndata:\n  window_size: 48\n", "data.window_size", "needs a window of at least"),
    ];
    for (yaml, key, extra) in cases {
        let e = Config::from_yaml(yaml, &[]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(extra), "{yaml:?}: {e}");
    }
    // A run's name is a directory inside save_dir: it may not climb out, replace it or outgrow a
    // file name (the message shows the start of a long one, not all of it).
    for name in ["../../escape", "/tmp/x", "a/../../b", "''"] {
        let e = Config::from_yaml("", &[format!("environment.experiment_name={name}")]).unwrap_err().to_string();
        assert!(e.contains("environment.experiment_name") && e.contains("inside environment.save_dir"), "{name:?}: {e}");
    }
    let long = "a".repeat(1 << 20);
    let e = Config::from_yaml(&format!("environment:\n  experiment_name: {long}\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("environment.experiment_name") && e.len() < 400, "{}", &e[..e.len().min(400)]);
    assert_eq!(Config::from_yaml("", &["environment.experiment_name=group/run_1".into()]).unwrap().environment.experiment_name, "group/run_1");
    assert_eq!(Config::from_yaml("environment:\n  experiment_name: 2024\n", &[]).unwrap().environment.experiment_name, "2024");
    // precision 16 loads on any machine (a checkpoint trained in fp16 evaluates anywhere); whether
    // the CPU trains in it is asked when training starts (the CLI test precision_16_…).
    assert_eq!(Config::from_yaml("trainer:\n  precision: 16\n", &[]).unwrap().precision(), engine::Precision::Fp16);
    // The two names of the layer count, agreeing, are one value; a cnn config names num_layers as
    // written among the isfm's keys it does not use.
    let c = Config::from_yaml("model:\n  name: isfm\n  num_layers: 3\n  e_layers: 3.0\n", &[]).unwrap();
    assert_eq!(c.model.e_layers, 3);
    let c = Config::from_yaml("model:\n  name: isfm\n  num_layers: 4\n", &[]).unwrap();
    assert_eq!((c.model.e_layers, Config::from_yaml(&c.to_yaml(), &[]).unwrap().model.e_layers), (4, 4));
    let c = Config::from_yaml("model:\n  name: isfm\n  d_model: 64\n  output_dim: 48\n", &[]).unwrap();
    assert!(c.unused_keys.iter().any(|k| k.starts_with("model.d_model (64: model.output_dim = 48")), "{:?}", c.unused_keys);
    let c = Config::from_yaml("model:\n  name: isfm\n  d_model: 64.0\n  output_dim: 64\n", &[]).unwrap();
    assert!(!c.unused_keys.iter().any(|k| k.starts_with("model.d_model")), "one value, two spellings: {:?}", c.unused_keys);
    let e = Config::from_yaml("model:\n  name: isfm\n  output_dim: 33\n  num_heads: 2\n", &[]).unwrap_err().to_string();
    assert!(e.contains("model.num_heads") && e.contains("the width (model.output_dim) = 33"), "{e}");
    let c = Config::from_yaml("model:\n  name: cnn\n  num_layers: 4\n", &[]).unwrap();
    assert!(c.unused_keys.iter().any(|k| k.starts_with("model.num_layers")), "{:?}", c.unused_keys);
    let e = Config::from_yaml("", &["trainer.epochz=3".into()]).unwrap_err().to_string();
    assert!(e.contains("trainer.epochz") && e.contains("trainer.epochs"), "{e}");
    let e = Config::from_yaml("", &["nodot".into()]).unwrap_err().to_string();
    assert!(e.contains("nodot"), "{e}");
    let e = Config::load(Path::new("/no/such/config.yaml"), &[]).unwrap_err().to_string();
    assert!(e.contains("/no/such/config.yaml"), "{e}");
}

/// A key at fault in a config file is named with the file; one an `--override` set, with that
/// override; a flag's error is not called a config's.
#[test]
fn a_bad_key_says_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, "task:\n  temprature: 0.1\n").unwrap();
    let e = Config::load(&file, &[]).unwrap_err().to_string();
    assert!(e.contains("`task.temprature`: unknown key; did you mean `task.temperature`?") && e.ends_with(&format!("(in {})", file.display())), "{e}");
    std::fs::write(&file, "task:\n  temperature: 0.1\n").unwrap();
    let e = Config::load(&file, &["task.temprature=0.2".into()]).unwrap_err().to_string();
    assert!(e.ends_with("(from --override task.temprature=0.2)"), "{e}");
    // The override that took effect (the last of the key), one without `=`, and a moved key.
    let e = Config::load(&file, &["trainer.max_steps=10".into(), "trainer.max_steps=0".into()]).unwrap_err().to_string();
    assert!(e.contains("trainer.max_steps") && e.ends_with("(from --override trainer.max_steps=0)"), "{e}");
    let e = Config::load(&file, &["trainer.max_steps".into()]).unwrap_err().to_string();
    assert!(e.ends_with("(from --override trainer.max_steps)"), "{e}");
    let e = Config::load(&file, &["bogus.key=1".into()]).unwrap_err().to_string();
    assert!(e.contains("`bogus`: unknown key") && e.ends_with("(from --override bogus.key=1)"), "{e}");
    let e = Config::load(&file, &["environment.seed=abc".into()]).unwrap_err().to_string();
    assert!(e.contains("environment.seed (read as trainer.seed)") && e.ends_with("(from --override environment.seed=abc)"), "{e}");
    // A value the file sets, out of range.
    std::fs::write(&file, "trainer:\n  max_steps: 0\n").unwrap();
    let e = Config::load(&file, &[]).unwrap_err().to_string();
    assert!(e.contains("`trainer.max_steps`: must be > 0") && e.ends_with(&format!("(in {})", file.display())), "{e}");
    std::fs::write(&file, "task:\n  temperature: 0.1\n").unwrap();
    let flag = train::TrainError::Flag { flag: "--windows".into(), reason: "must be > 0".into() }.to_string();
    assert_eq!(flag, "invalid `--windows`: must be > 0");
}

/// A run directory given as a checkpoint is answered with the checkpoint to give.
#[test]
fn a_run_directory_given_as_a_checkpoint_names_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("checkpoints/last")).unwrap();
    let e = train::checkpoint::ModelFile::read(dir.path()).err().expect("no model file").to_string();
    assert!(e.contains("not found (a run directory: its last checkpoint is") && e.contains("checkpoints/last"), "{e}");
    let e = train::checkpoint::ModelFile::read(&dir.path().join("elsewhere")).err().expect("no model file").to_string();
    assert!(e.ends_with("not found"), "{e}");
}

/// A small generated dataset: 24 Ids of 2048 samples, 2 channels.
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = SynthConfig { complexity: Complexity::Medium, count: 24, length: 2048, channels: 2, seed: 3, ..Default::default() };
    let g = generate(&cfg, dir, "toy", Layout::Contiguous, &|_| {}).unwrap();
    (g.store, g.meta)
}

fn small_config(save: &Path, extra: &[&str]) -> Config {
    let mut o: Vec<String> = vec![
        "data.window_size=128".into(),
        "data.batch_size=6".into(),
        "data.val_fraction=0.25".into(),
        "model.name=mlp-medium".into(),
        "trainer.epochs=4".into(),
        "trainer.log_every_n_steps=1".into(),
        "trainer.seed=7".into(),
        format!("environment.save_dir={}", save.display()),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    Config::from_yaml("", &o).unwrap()
}

/// An interruption for the resume tests: stops a run once it has taken `.0` steps.
struct StopAt(u64);

impl Observer for StopAt {
    fn step(&mut self, log: &StepLog) -> ControlFlow<()> {
        if log.step >= self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Each epoch's line: its number and training loss and accuracy means.
fn epoch_means(run: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| (v["epoch"].as_u64().unwrap(), v["train_contrastive_loss"].as_f64().unwrap(), v["train_contrastive_acc"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    // 18 train Ids, batch 6: 3 steps per epoch, 12 steps in all. Cosine schedule and dropout on.
    let full = small_config(&dir.path().join("a"), &["trainer.lr_scheduler=cosine", "trainer.warmup_steps=2", "trainer.gradient_clip_val=0.5"]);
    let s_full = train(&full, &h5, &csv, None, &mut Quiet).unwrap();
    assert_eq!(s_full.steps, 12);
    // The same run, interrupted after step 5 (mid-epoch), then resumed from its checkpoint.
    let first = small_config(&dir.path().join("b"), &["trainer.lr_scheduler=cosine", "trainer.warmup_steps=2", "trainer.gradient_clip_val=0.5"]);
    let s_first = train(&first, &h5, &csv, None, &mut StopAt(5)).unwrap();
    assert_eq!(s_first.steps, 5, "stopped mid-epoch");
    let rest = small_config(&dir.path().join("b"), &["trainer.lr_scheduler=cosine", "trainer.warmup_steps=2", "trainer.gradient_clip_val=0.5"]);
    let ckpt = s_first.last_checkpoint.clone().unwrap();
    let s_rest = train(&rest, &h5, &csv, Some(&ckpt), &mut Quiet).unwrap();
    assert_eq!(s_rest.steps, 12);
    let a = step_losses(&s_full.run_dir);
    let b = step_losses(&s_rest.run_dir);
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "losses of the resumed run equal the uninterrupted run's, step for step");
    // And so do its epochs' means, the one it was stopped in among them (its batches before the
    // checkpoint are in it).
    let (ea, eb) = (epoch_means(&s_full.run_dir), epoch_means(&s_rest.run_dir));
    assert_eq!(ea.len(), 4);
    assert_eq!(ea, eb, "epoch means of the resumed run equal the uninterrupted run's");
    assert_eq!(s_full.last_loss, s_rest.last_loss);
    // Resuming a run that has reached trainer.max_steps (here with a smaller one than it ran)
    // takes no step and writes no checkpoint: before, each such resume ran one more step.
    let capped = small_config(&dir.path().join("b"), &["trainer.lr_scheduler=cosine", "trainer.warmup_steps=2", "trainer.gradient_clip_val=0.5", "trainer.max_steps=4"]);
    let last = s_rest.last_checkpoint.clone().unwrap();
    // Each entry of checkpoints/ with its modification time: a file rewritten under its old
    // name changes too.
    let checkpoints = |run: &std::path::Path| {
        let stamp = |p: &std::path::Path| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
        std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| (e.file_name(), stamp(&e.path()), stamp(&e.path().join("model.safetensors")))).collect::<std::collections::BTreeSet<_>>()
    };
    let before = checkpoints(&s_rest.run_dir);
    let s_again = train(&capped, &h5, &csv, Some(&last), &mut Quiet).unwrap();
    assert_eq!(s_again.steps, 12, "no step past max_steps");
    assert_eq!(step_losses(&s_again.run_dir).len(), 12, "no step logged");
    assert_eq!(checkpoints(&s_again.run_dir), before, "no checkpoint written");
    // Nor one at the end of its epochs: no checkpoint rewritten, the summary left as it was.
    let summary = std::fs::read(s_rest.run_dir.join("summary.json")).unwrap();
    let s_done = train(&rest, &h5, &csv, Some(&last), &mut Quiet).unwrap();
    assert_eq!((s_done.steps, checkpoints(&s_done.run_dir)), (12, before.clone()));
    assert_eq!(std::fs::read(s_done.run_dir.join("summary.json")).unwrap(), summary);
    // A run named into another run's directory (its checkpoints/ even) is refused: the outer run
    // prunes and replaces what is there, and would delete it.
    let run_name = s_rest.run_dir.file_name().unwrap().to_string_lossy().to_string();
    for inner in [format!("{run_name}/checkpoints/last"), format!("{run_name}/inner")] {
        let nested = small_config(&dir.path().join("b"), &[&format!("environment.experiment_name={inner}")]);
        let e = train(&nested, &h5, &csv, None, &mut Quiet).unwrap_err().to_string();
        assert!(e.contains("environment.experiment_name") && e.contains("inside the run"), "{inner}: {e}");
    }
}

/// `trainer.precision: bf16` trains on the CPU (products in bf16) and learns like fp32 on the
/// same data; its first step's loss differs from fp32's (the products really are rounded).
#[test]
fn bf16_trains_like_fp32() {
    if CpuDevice::new().set_precision(engine::Precision::Bf16).is_err() {
        eprintln!("SKIPPED: bf16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let run = |precision: &str| {
        let setting = format!("trainer.precision={precision}");
        let cfg = small_config(&dir.path().join(precision), &["trainer.epochs=6", &setting]);
        let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
        step_losses(&s.run_dir).into_iter().map(|(_, l)| l).collect::<Vec<f64>>()
    };
    let (l32, l16) = (run("32"), run("bf16"));
    assert_eq!(l32.len(), l16.len());
    assert_ne!(l32[0], l16[0], "bf16 rounds the products: the first loss differs");
    let tail = |l: &[f64]| l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    let (a, b) = (tail(&l32), tail(&l16));
    eprintln!("fp32 {:.4} → {a:.4}, bf16 {:.4} → {b:.4}", l32[0], l16[0]);
    assert!(b < 0.9 * l16[0], "bf16 learns: {} → {b}", l16[0]);
    assert!((a - b).abs() < 0.15 * a.max(0.1), "the last losses agree within 15 %: fp32 {a}, bf16 {b}");
}

#[test]
fn checkpoint_round_trip_and_pytorch_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(&dir.path().join("run"), &["trainer.epochs=1"]);
    let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    let last = s.last_checkpoint.unwrap();
    let (arch, yaml) = train::checkpoint::read_metadata(&last.join("model.safetensors")).unwrap();
    let arch = arch.unwrap();
    assert_eq!(arch, EncoderConfig { arch: Arch::MlpMedium, window: 128, channels: 2, embed: 128 });
    assert_eq!(Config::from_yaml(&yaml.unwrap(), &[]).unwrap(), cfg);
    // Names and shapes of torch_ref.py's nn.Sequential(Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear).
    let bytes = std::fs::read(last.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    names.sort();
    let want = [("0.bias", vec![512]), ("0.weight", vec![512, 256]), ("3.bias", vec![256]), ("3.weight", vec![256, 512]), ("6.bias", vec![128]), ("6.weight", vec![128, 256])];
    assert_eq!(names, want.iter().map(|(n, s)| (n.to_string(), s.clone())).collect::<Vec<_>>());
    // Weights and optimizer state load back exactly.
    let mut step = ContrastiveStep::new(arch.init(CpuDevice::new(), 4, 99).unwrap(), 2, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
    let state = train::checkpoint::load_full(&last, &mut step).unwrap().state;
    // The GEMM kernels the run measured fastest are saved, and pinned by the load (this device
    // has run no product: every entry it knows came from the checkpoint).
    let ts = std::fs::read(last.join("training_state.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&ts).unwrap();
    let saved_plan = meta.metadata().as_ref().and_then(|m| m.get("kernel_plan").cloned()).expect("a kernel_plan entry");
    assert!(saved_plan.contains("=packed") || saved_plan.contains("=faer"), "{saved_plan}");
    if step.encoder.device.gemm_policy() == engine::cpu::plan::GemmPolicy::Measure {
        assert_eq!(step.encoder.device.kernel_plan(), saved_plan);
    } else {
        eprintln!("SKIPPED the plan's pinning: CID_CPU_GEMM fixes the kernel (or the CPU runs faer only)");
    }
    let enc = &step.encoder;
    assert_eq!(state.step, 3);
    assert_eq!(Config::from_yaml(&state.config_yaml, &[]).unwrap(), cfg);
    let mut enc2 = arch.init(CpuDevice::new(), 4, 1).unwrap();
    train::checkpoint::load_weights(&last, &mut enc2).unwrap();
    assert_eq!(enc.params_to_vec(), enc2.params_to_vec());
    assert_ne!(enc.params_to_vec(), arch.init(CpuDevice::new(), 4, 99).unwrap().params_to_vec());
    // Another architecture is refused with a clear message.
    let mut other = EncoderConfig::new(EncoderKind::MlpSimple, 128, 2).init(CpuDevice::new(), 4, 0).unwrap();
    let e = train::checkpoint::load_weights(&last, &mut other).unwrap_err().to_string();
    assert!(e.contains("mlp-medium") && e.contains("mlp-simple"), "{e}");
    // PyTorch loads it into the reference encoder, when torch is installed.
    let script = "import sys,torch,torch.nn as nn\nfrom safetensors.torch import load_file\nm=nn.Sequential(nn.Linear(256,512),nn.ReLU(),nn.Dropout(0.2),nn.Linear(512,256),nn.ReLU(),nn.Dropout(0.2),nn.Linear(256,128))\nm.load_state_dict(load_file(sys.argv[1]))\nprint('loaded', sum(p.numel() for p in m.parameters()))";
    match std::process::Command::new("python3").arg("-c").arg(script).arg(last.join("model.safetensors")).output() {
        Ok(o) if o.status.success() => assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("loaded {}", arch.param_count())),
        Ok(o) => eprintln!("SKIPPED PyTorch load check (torch/safetensors not importable): {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => eprintln!("SKIPPED PyTorch load check: {e}"),
    }
}

/// A training state at optimizer (and forward) step `step`, everything else at its start.
fn state_at_step(step: u64) -> train::checkpoint::TrainingState {
    train::checkpoint::TrainingState {
        step,
        micro_step: step,
        epoch: 0,
        batch: 0,
        seed: 0,
        best: None,
        checks_without_improvement: 0,
        monitor_value: None,
        config_yaml: String::new(),
        loss_scale: None,
        epoch_sums: train::checkpoint::EpochSums::default(),
    }
}

/// BatchNorm's batch counters (I64 `num_batches_tracked`) load back exactly, past 2²⁴ (through
/// f32 they lost their last digits), and a negative one is named.
#[test]
fn batch_counters_load_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncoderConfig::new(EncoderKind::Cnn, 256, 1);
    let mut step = ContrastiveStep::new(cfg.init(CpuDevice::new(), 4, 1).unwrap(), 2, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
    let counts: Vec<u64> = (0..step.encoder.counters().len() as u64).map(|i| (1 << 40) + 2 * i + 1).collect();
    assert!(!counts.is_empty(), "the CNN has BatchNorm counters");
    step.encoder.set_counters(&counts).unwrap();
    let state = state_at_step(0);
    let ckpt = dir.path().join("c");
    train::checkpoint::save(&ckpt, &step, &state, true).unwrap();
    let mut back = cfg.init(CpuDevice::new(), 4, 2).unwrap();
    train::checkpoint::load_weights(&ckpt, &mut back).unwrap();
    assert_eq!(back.counters(), &counts[..]);
    // A negative count (a hand-edited or foreign file) is refused, naming the tensor.
    let file = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (name, view) = st.tensors().into_iter().find(|(n, _)| n.ends_with("num_batches_tracked")).unwrap();
    let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut edited = bytes.clone();
    edited[at..at + 8].copy_from_slice(&(-5i64).to_le_bytes());
    std::fs::write(&file, &edited).unwrap();
    let e = train::checkpoint::load_weights(&ckpt, &mut cfg.init(CpuDevice::new(), 4, 2).unwrap()).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("-5") && e.contains("not a count"), "{e}");
}

/// A tensor of a hand-written state dict: name, shape, values, and whether it is a counter.
type Entry = (String, Vec<usize>, Vec<f32>, bool);

/// `entries` as a safetensors file without metadata (a PyTorch state dict), each float tensor in
/// `dtype` (its values already exact in it), each counter as I64.
fn write_state_dict(path: &Path, entries: &[Entry], dtype: safetensors::Dtype) {
    use safetensors::Dtype;
    // Exact for the values written here: zero or a normal binary16 (checked).
    let f16 = |x: f32| -> u16 {
        let b = x.to_bits();
        if x == 0.0 {
            return (b >> 16) as u16;
        }
        let exp = ((b >> 23) & 0xFF) as i32 - 127 + 15;
        assert!(exp > 0 && exp < 31 && b & 0x1FFF == 0, "{x} is not a normal binary16");
        ((b >> 16) & 0x8000 | (exp as u32) << 10 | (b >> 13) & 0x3FF) as u16
    };
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(name, shape, v, counter)| {
            let dt = if *counter { Dtype::I64 } else { dtype };
            let bytes = match dt {
                Dtype::I64 => v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
                Dtype::F64 => v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
                Dtype::F16 => v.iter().flat_map(|x| f16(*x).to_le_bytes()).collect(),
                Dtype::BF16 => v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect(),
                Dtype::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (name.clone(), dt, shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data.iter().map(|(n, dt, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A state dict saved by PyTorch (no metadata, so nothing but names and shapes to go by) loads
/// by tensor name — F64, F32, F16 and BF16 floats converted exactly, I64 counters — and a
/// missing or extra tensor, a wrong shape, a NaN, an infinity and an unsupported dtype are each
/// an error naming the tensor (docs/checkpoints.md).
#[test]
fn a_state_dict_without_metadata_loads_by_name_and_names_each_bad_tensor() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    // The CNN: weights, BatchNorm's running statistics (buffers) and batch counters.
    let cfg = EncoderConfig::new(EncoderKind::Cnn, 256, 1);
    let src = cfg.init(CpuDevice::new(), 4, 7).unwrap();
    let (params, buffers) = (src.params_to_vec(), src.buffers_to_vec());
    let counters: Vec<u64> = (0..src.counters().len() as u64).map(|i| 1000 + i).collect();
    assert!(!counters.is_empty() && !buffers.is_empty());
    // Every value a multiple of 2⁻¹⁰ in (-2, 2), so exact in binary16; BF16 keeps the top half of
    // each f32's bits, exact by construction.
    let representable = |dtype: Dtype, x: f32| match dtype {
        Dtype::F16 => ((x * 1024.0).round().clamp(-2047.0, 2047.0)) / 1024.0,
        Dtype::BF16 => f32::from_bits(x.to_bits() & 0xFFFF_0000),
        _ => x,
    };
    let entries = |dtype: Dtype| -> Vec<Entry> {
        src.tensors()
            .iter()
            .map(|s| {
                let values = match s.kind {
                    engine::TensorKind::Param => params[s.offset..s.offset + s.len()].iter().map(|&x| representable(dtype, x)).collect(),
                    engine::TensorKind::Buffer => buffers[s.offset..s.offset + s.len()].iter().map(|&x| representable(dtype, x)).collect(),
                    engine::TensorKind::Counter => vec![counters[s.offset] as f32],
                };
                (s.name.clone(), s.shape.clone(), values, s.kind == engine::TensorKind::Counter)
            })
            .collect()
    };
    for dtype in [Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16] {
        let file = dir.path().join(format!("{dtype:?}.safetensors"));
        write_state_dict(&file, &entries(dtype), dtype);
        assert_eq!(train::checkpoint::read_metadata(&file).unwrap(), (None, None), "no metadata");
        let mut back = cfg.init(CpuDevice::new(), 4, 8).unwrap();
        train::checkpoint::load_weights(&file, &mut back).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        let want = |v: &[f32]| v.iter().map(|&x| representable(dtype, x)).collect::<Vec<f32>>();
        assert_eq!(back.params_to_vec(), want(&params), "{dtype:?} weights");
        assert_eq!(back.buffers_to_vec(), want(&buffers), "{dtype:?} running statistics");
        assert_eq!(back.counters(), &counters[..], "{dtype:?} counters");
    }
    // Each defect on its own, in an otherwise loadable F32 state dict: the error names the tensor.
    let good = entries(Dtype::F32);
    let first = good[0].0.clone();
    let cases: Vec<(&str, Box<dyn Fn(&mut Vec<Entry>)>, Dtype, &str, &str)> = vec![
        ("missing", Box::new(|e: &mut Vec<Entry>| drop(e.remove(0))), Dtype::F32, &first, "missing"),
        ("extra", Box::new(|e: &mut Vec<Entry>| e.push(("extra.weight".into(), vec![2], vec![0.0, 1.0], false))), Dtype::F32, "extra.weight", "not part of the cnn encoder"),
        (
            "shape",
            Box::new(|e: &mut Vec<Entry>| {
                e[0].2.pop();
                e[0].1 = vec![e[0].2.len()];
            }),
            Dtype::F32,
            &first,
            "has shape",
        ),
        ("nan", Box::new(|e: &mut Vec<Entry>| e[0].2[3] = f32::NAN), Dtype::F32, &first, "NaN or infinite"),
        ("inf", Box::new(|e: &mut Vec<Entry>| e[0].2[0] = f32::NEG_INFINITY), Dtype::F32, &first, "NaN or infinite"),
        ("dtype", Box::new(|_: &mut Vec<Entry>| {}), Dtype::I32, &first, "is I32; expected F32"),
    ];
    for (case, edit, dtype, tensor, reason) in cases {
        let mut e = good.clone();
        edit(&mut e);
        let file = dir.path().join(format!("{case}.safetensors"));
        write_state_dict(&file, &e, dtype);
        let err = train::checkpoint::load_weights(&file, &mut cfg.init(CpuDevice::new(), 4, 8).unwrap()).unwrap_err().to_string();
        assert!(err.contains(&format!("`{tensor}`")) && err.contains(reason) && err.contains(&file.display().to_string()), "{case}: {err}");
    }
}

#[test]
fn early_stopping_stops_after_patience_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    // A min_delta no change can beat: every check after the first counts against patience.
    let cfg = small_config(&dir.path().join("run"), &["trainer.epochs=20", "trainer.patience=2", "trainer.min_delta=100", "trainer.save_top_k=2"]);
    let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.epochs_completed, 3, "the first check sets the best, two more without improvement stop");
    let ckpts = s.run_dir.join("checkpoints");
    // Each kept checkpoint is a name (a link) and its directory; the index lists the names.
    let best: Vec<_> = std::fs::read_dir(&ckpts).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("best-") && !n.contains('@')).collect();
    assert!(!best.is_empty() && best.len() <= 2, "{best:?}");
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpts.join("top_k.json")).unwrap()).unwrap();
    let listed: Vec<String> = index["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
    let mut sorted = best.clone();
    sorted.sort();
    let mut l = listed.clone();
    l.sort();
    assert_eq!(sorted, l, "the index names exactly the kept checkpoints");
    assert_eq!(s.best_checkpoint.unwrap(), ckpts.join(&listed[0]));
}

#[test]
fn a_fresh_run_in_a_used_directory_starts_its_log_and_ranking_anew() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let run = |batch: &str| {
        let cfg = small_config(&dir.path().join("run"), &["trainer.epochs=2", "trainer.save_top_k=2", batch]);
        train(&cfg, &h5, &csv, None, &mut Quiet).unwrap()
    };
    let lines = |s: &train::trainer::Summary| std::fs::read_to_string(s.run_dir.join("metrics.jsonl")).unwrap().lines().count();
    let ranked = |s: &train::trainer::Summary| -> Vec<String> {
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.run_dir.join("checkpoints/top_k.json")).unwrap()).unwrap();
        index["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
    };
    // Two runs with other step counts per epoch (batch 6, then 4): their checkpoints have other
    // names.
    let first = run("data.batch_size=6");
    let (first_lines, first_ranked) = (lines(&first), ranked(&first));
    let second = run("data.batch_size=4");
    assert!(!first_ranked.is_empty() && ranked(&second).iter().all(|n| !first_ranked.contains(n)), "the second run ranks only its own checkpoints: {:?} then {:?}", first_ranked, ranked(&second));
    assert!(second.best_checkpoint.as_ref().is_some_and(|b| !first_ranked.iter().any(|n| b.ends_with(n))));
    let again = run("data.batch_size=6");
    assert_eq!(lines(&again), first_lines, "the log holds one run, not three");
    // Its checkpoint carries its configuration: a second one on the command line is refused
    // rather than ignored, and --resume names a file it cannot take.
    let last = again.last_checkpoint.clone().unwrap();
    let ds = train::trainer::open_dataset(&h5, &csv).unwrap();
    let cfg = small_config(&dir.path().join("run"), &[]);
    let opts = train::eval::EvalOptions { windows: 2, config: Some(cfg.clone()), ..Default::default() };
    let e = train::eval::evaluate(&last, &ds, &opts).unwrap_err().to_string();
    assert!(e.contains("--config") && e.contains("carries its training configuration"), "{e}");
    let e = train(&cfg, &h5, &csv, Some(&last.join("model.safetensors")), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("directory"), "{e}");
    // A negative second moment in the optimizer state (a corrupt file) is named at resume.
    let state = last.join("training_state.safetensors");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (name, _) = st.tensors().into_iter().find(|(n, _)| n.starts_with("exp_avg_sq.")).unwrap();
        st.tensor(&name).unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    bytes[at..at + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
    std::fs::write(&state, &bytes).unwrap();
    let e = train(&cfg, &h5, &csv, Some(&last), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("training_state.safetensors") && e.contains("Adam state is corrupt"), "{e}");
}

#[test]
fn accumulated_gradients_are_the_mean_of_the_micro_batches() {
    // mlp-simple has no dropout, so a micro-batch's gradient does not depend on the forward count.
    let (b, w) = (4, 32);
    let mk = || {
        let enc = EncoderConfig::new(EncoderKind::MlpSimple, w, 1).init(CpuDevice::new(), 2 * b, 5).unwrap();
        ContrastiveStep::new(enc, b, InfoNceConfig::default(), OptimizerConfig::default(), 5).unwrap()
    };
    let data = |k: usize| -> Vec<f32> { (0..b * w).map(|i| ((i * 31 + k * 17) % 29) as f32 * 0.07 - 1.0).collect() };
    let (a1, p1, a2, p2) = (data(1), data(2), data(3), data(4));
    let mut acc = mk();
    acc.forward_backward(Pairs::new(&a1, &p1), false, 0.5).unwrap();
    acc.forward_backward(Pairs::new(&a2, &p2), true, 0.5).unwrap();
    let mut one = mk();
    one.forward_backward(Pairs::new(&a1, &p1), false, 1.0).unwrap();
    let g1 = one.encoder.grads_to_vec();
    one.forward_backward(Pairs::new(&a2, &p2), false, 1.0).unwrap();
    let g2 = one.encoder.grads_to_vec();
    for ((g, x), y) in acc.encoder.grads_to_vec().iter().zip(&g1).zip(&g2) {
        assert!((g - 0.5 * (x + y)).abs() <= 1e-6 * (1.0 + g.abs()), "{g} vs {}", 0.5 * (x + y));
    }
}

#[test]
fn gpu_accelerator_selects_the_cuda_device_or_fails_naming_the_key() {
    let c = Config::from_yaml("trainer:\n  accelerator: gpu\n  devices: [1]\n", &[]).unwrap();
    assert!(c.on_gpu() && c.trainer.devices.index == 1);
    assert_eq!(Config::from_yaml(&c.to_yaml(), &[]).unwrap(), c);
    if engine::CudaDevice::probe(0).is_ok() {
        eprintln!("SKIPPED the no-GPU error check: this machine has a GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(&dir.path().join("run"), &["trainer.accelerator=cuda"]);
    let e = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("trainer.accelerator") && e.contains("cuda"), "{e}");
}

#[test]
fn missing_files_and_too_few_ids_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(&dir.path().join("run"), &[]);
    let e = train(&cfg, Path::new("/no/such.h5"), &csv, None, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("/no/such.h5"), "{e}");
    let big = small_config(&dir.path().join("run"), &["data.batch_size=64"]);
    let e = train(&big, &h5, &csv, None, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("data.batch_size"), "{e}");
    let e = train(&cfg, &h5, &csv, Some(Path::new("/no/ckpt")), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("/no/ckpt"), "{e}");
}

#[test]
fn evaluation_of_separable_data_scores_the_pretrained_encoder_no_lower_than_random_init() {
    let dir = tempfile::tempdir().unwrap();
    let synth = SynthConfig { complexity: Complexity::Medium, count: 40, length: 4096, channels: 1, seed: 11, classes: 4, ..Default::default() };
    let g = generate(&synth, dir.path(), "sep", Layout::Contiguous, &|_| {}).unwrap();
    let cfg = small_config(&dir.path().join("run"), &["data.batch_size=16", "data.val_fraction=0", "data.time_split=0.7", "trainer.epochs=60", "data.window_size=256"]);
    let s = train(&cfg, &g.store, &g.meta, None, &mut Quiet).unwrap();
    let ds = train::trainer::open_dataset(&g.store, &g.meta).unwrap();
    let r = train::eval::evaluate(&s.last_checkpoint.unwrap(), &ds, &train::eval::EvalOptions { windows: 8, ..Default::default() }).unwrap();
    assert_eq!(r.classes.len(), 4);
    assert_eq!(r.fit_windows, 40 * 8);
    assert!(r.pretrained.linear_probe_acc >= 0.9, "{r:?}");
    // The row it is set against, the same probes on a random-init encoder of the same shape: on
    // data this easy random features separate the classes too (both reach 100 % here), so the
    // check is that pretraining lost nothing, not that it gained.
    assert!(r.pretrained.linear_probe_acc >= r.random_init.linear_probe_acc && r.pretrained.knn_acc >= r.random_init.knn_acc, "{r:?}");
    assert!(r.random_init.linear_probe_acc > 0.25, "random init above chance on 4 classes: {r:?}");
    assert!(r.spectrum_baseline.linear_probe_acc >= 0.9, "the spectrum separates sinusoids of distinct frequency: {r:?}");
    assert_eq!((r.fit_ids.len(), r.test_ids.len()), (40, 40), "the time split fits and tests on every Id");
    assert!(r.held_out.is_empty());
}

/// The store's channel count is its most common one, for every part of a run: a first Id with
/// another (here Id 0, one channel beside 2-channel Ids, not even in the table) is skipped, and
/// the inputs, the encoder and evaluation all take 2 channels. (Inputs and evaluation took the
/// first Id's count: standardized windows were cut 1 channel wide, with no error, and evaluation
/// refused the checkpoint as trained on 2 channels where the store had 1.)
#[test]
fn a_first_id_with_another_channel_count_changes_nothing_but_its_skip() {
    use signal::store::{write_store, Hdf5Store, SampleData, SignalStore};
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let store = Hdf5Store::open(&h5).unwrap();
    let ids: Vec<u64> = store.samples().iter().map(|s| s.id).collect();
    assert!(ids.iter().all(|&id| id > 0) && store.channels() == 2);
    let values: Vec<Vec<f32>> = ids.iter().map(|&id| store.read(id).unwrap()).collect();
    let odd: Vec<f32> = (0..2048).map(|i| (i as f32 * 0.05).sin()).collect();
    let mixed = dir.path().join("mixed.h5");
    let samples = std::iter::once(SampleData { id: 0, values: &odd, channels: 1 }).chain(ids.iter().zip(&values).map(|(&id, v)| SampleData { id, values: v, channels: 2 }));
    write_store(&mixed, samples, Layout::Contiguous).unwrap();
    let cfg = small_config(&dir.path().join("run"), &["data.input=standardized", "trainer.epochs=1"]);
    let s = train(&cfg, &mixed, &csv, None, &mut Quiet).unwrap();
    let ds = train::trainer::open_dataset(&mixed, &csv).unwrap();
    let last = s.last_checkpoint.unwrap();
    let (arch, _) = train::checkpoint::read_metadata(&last).unwrap();
    assert_eq!(arch.map(|a| a.channels), Some(2), "the encoder takes the store's 2 channels");
    let r = train::eval::evaluate(&last, &ds, &train::eval::EvalOptions { windows: 2, ..Default::default() }).unwrap();
    // The same run on the store without Id 0 trains on the same Ids to the same loss (to the
    // rounding of the GEMM kernels each run measures fastest) and evaluates the same.
    let plain = train(&small_config(&dir.path().join("plain"), &["data.input=standardized", "trainer.epochs=1"]), &h5, &csv, None, &mut Quiet).unwrap();
    assert_eq!((s.train_ids, s.val_ids, s.steps), (plain.train_ids, plain.val_ids, plain.steps));
    assert!((s.last_loss - plain.last_loss).abs() <= 1e-3 * plain.last_loss.abs().max(1e-3), "{} against {}", s.last_loss, plain.last_loss);
    let r0 = train::eval::evaluate(&plain.last_checkpoint.unwrap(), &train::trainer::open_dataset(&h5, &csv).unwrap(), &train::eval::EvalOptions { windows: 2, ..Default::default() }).unwrap();
    assert_eq!((&r.fit_ids, r.test_windows, &r.classes), (&r0.fit_ids, r0.test_windows, &r0.classes), "the same Ids and windows evaluated");
    assert!(r.pretrained.linear_probe_acc.is_finite() && (r.pretrained.linear_probe_acc - r0.pretrained.linear_probe_acc).abs() <= 0.05, "{r:?}\n{r0:?}");
}

#[test]
fn the_probe_separates_what_is_separable_and_not_what_is_not() {
    // Four Gaussian clusters in 8 dimensions: a linear probe and k-NN find them ...
    let (d, classes, per) = (8, 4, 40);
    let noise = |i: usize| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5;
    let mut z = Vec::new();
    let mut y = Vec::new();
    for i in 0..classes * per {
        let c = i % classes;
        z.extend((0..d).map(|j| if j == c { 3.0 } else { 0.0 } + noise(i * d + j)));
        y.push(c);
    }
    let s = train::eval::probe(&z, &y, &z, &y, d, classes, 5);
    assert!(s.linear_probe_acc > 0.95 && s.knn_acc > 0.95, "{s:?}");
    // ... and labels that have nothing to do with the features are not predicted on new data.
    let shuffled: Vec<usize> = (0..y.len()).map(|i| (i * 7 + i / 3) % classes).collect();
    let (zf, zt) = z.split_at(z.len() / 2);
    let (yf, yt) = shuffled.split_at(y.len() / 2);
    let s = train::eval::probe(zf, yf, zt, yt, d, classes, 5);
    assert!(s.linear_probe_acc < 0.5 && s.knn_acc < 0.5, "chance is 0.25: {s:?}");
}

/// PHM-Vibench's `configs/id_contrastive/*.yaml`, key for key (their comments left out): each
/// names `M_01_ISFM` with `B_08_PatchTST`.
fn phm_vibench_config(name: &str) -> String {
    let (batch, workers, window, stride, trunc, d_model, lr, wd, temp, epochs, accel, devices, precision, clip, extra_trainer) = match name {
        "debug" => (4, 1, 256, 128, 2048, 64, "1e-3", "1e-4", 0.07, 1, "cpu", "1", "32", 1.0, "  check_val_every_n_epoch: 1\n  log_every_n_steps: 1\n"),
        "pretrain" => (32, 4, 1024, 512, 16384, 256, "1e-3", "1e-4", 0.07, 50, "gpu", "1", "16", 1.0, "  check_val_every_n_epoch: 5\n  log_every_n_steps: 50\n"),
        "ablation" => (32, 4, 1024, 512, 16384, 256, "1e-3", "1e-4", 0.07, 1, "gpu", "1", "16", 1.0, "  check_val_every_n_epoch: 5\n  log_every_n_steps: 50\n"),
        _ => (
            64,
            8,
            2048,
            1024,
            32768,
            512,
            "5e-4",
            "1e-5",
            0.05,
            100,
            "gpu",
            "[0]",
            "16",
            0.5,
            "  accumulate_grad_batches: 2\n  check_val_every_n_epoch: 10\n  log_every_n_steps: 100\n  patience: 15\n  monitor: \"val_contrastive_acc\"\n  save_top_k: 3\n  save_last: true\n",
        ),
    };
    format!(
        "data:\n  factory_name: \"id\"\n  dataset_name: \"ID_dataset\"\n  data_dir: \"data\"\n  metadata_file: \"metadata_6_1.xlsx\"\n  batch_size: {batch}\n  num_workers: {workers}\n  window_size: {window}\n  stride: {stride}\n  num_window: {}\n  window_sampling_strategy: \"random\"\n  normalization: true\n  truncate_length: {trunc}\n\
         model:\n  type: \"ISFM\"\n  name: \"M_01_ISFM\"\n  backbone: \"B_08_PatchTST\"\n  d_model: {d_model}\n\
         task:\n  type: \"pretrain\"\n  name: \"contrastive_id\"\n  lr: {lr}\n  weight_decay: {wd}\n  temperature: {temp}\n\
         trainer:\n  epochs: {epochs}\n  accelerator: \"{accel}\"\n  devices: {devices}\n  precision: {precision}\n  gradient_clip_val: {clip}\n{extra_trainer}\
         environment:\n  save_dir: \"save/\"\n  experiment_name: \"contrastive_{name}\"\n",
        if name == "production" { 4 } else { 2 }
    )
}

#[test]
fn phm_vibench_id_contrastive_configs_run_unchanged() {
    for name in ["debug", "pretrain", "ablation", "production"] {
        let yaml = phm_vibench_config(name);
        // Parsed as written: the ISFM at its d_model, the accepted-but-unused keys reported.
        let as_32 = Config::from_yaml(&yaml, &["trainer.precision=32".into(), "trainer.accelerator=cpu".into()]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(as_32.model.name, EncoderKind::Isfm, "{name}");
        assert!(as_32.unused_keys.iter().any(|k| k.starts_with("data.metadata_file")) && as_32.unused_keys.iter().any(|k| k.starts_with("task.type")), "{name}: {:?}", as_32.unused_keys);
        if name == "debug" {
            let c = Config::from_yaml(&yaml, &[]).unwrap();
            assert_eq!((c.model.d_model, c.stride(), c.data.truncate_length), (64, 128, Some(2048)));
        } else {
            // 16 on a GPU: the CUDA device computes in fp32, so a named error pointing to the CPU's
            // bf16, never a silent fallback.
            let e = Config::from_yaml(&yaml, &[]).unwrap_err().to_string();
            assert!(e.contains("trainer.precision") && e.contains("with bf16"), "{name}: {e}");
            let bf16 = Config::from_yaml(&yaml, &["trainer.precision=bf16".into(), "trainer.accelerator=cpu".into()]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(bf16.precision(), engine::Precision::Bf16);
        }
    }
    // The debug config trains as it is (on generated data: its data keys name PHM-Vibench's
    // files, the product takes --data/--meta).
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = Config::from_yaml(&phm_vibench_config("debug"), &[format!("environment.save_dir={}", dir.path().join("runs").display())]).unwrap();
    let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    assert!(s.steps > 0 && s.last_loss.is_finite(), "{s:?}");
    let (arch, _) = train::checkpoint::read_metadata(&s.last_checkpoint.unwrap().join("model.safetensors")).unwrap();
    assert!(matches!(arch.unwrap().arch, Arch::Isfm(ref i) if i.d_model == 64 && i.d_ff == 128));
    // Keys other PHM-Vibench configs carry: the progress bar and weights-only saves apply,
    // ReduceLROnPlateau's keys are reported as unused, never an error.
    let c = Config::from_yaml("trainer:\n  enable_progress_bar: false\n  save_weights_only: true\n  lr_scheduler_patience: 5\n  lr_reduce_factor: 0.5\n", &[]).unwrap();
    assert!(!c.trainer.enable_progress_bar && c.trainer.save_weights_only);
    assert!(c.unused_keys.iter().any(|k| k.starts_with("trainer.lr_scheduler_patience")) && c.unused_keys.iter().any(|k| k.starts_with("trainer.lr_reduce_factor")), "{:?}", c.unused_keys);
    // Unsupported PHM-Vibench components are named errors listing what is supported.
    for (key, value) in [("backbone", "B_06_TimesNet"), ("embedding", "E_03_Patch"), ("task_head", "H_02_distance_cla")] {
        let e = Config::from_yaml(&format!("model:\n  name: M_01_ISFM\n  {key}: {value}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains(&format!("model.{key}")) && e.contains(value) && e.contains("supported"), "{e}");
    }
    // output_dim is the Transformer width; num_layers is e_layers.
    let c = Config::from_yaml("model:\n  name: isfm\n  output_dim: 96\n  num_layers: 3\n  num_heads: 4\n", &[]).unwrap();
    match c.encoder(2).arch {
        Arch::Isfm(i) => assert_eq!((i.d_model, i.e_layers, i.d_ff), (96, 3, 192)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cnn_and_isfm_train_resume_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    for (name, extra) in [("cnn", vec!["data.window_size=256"]), ("isfm", vec!["model.num_patches=8", "model.patch_size_L=16", "model.d_model=32", "model.d_ff=64", "model.e_layers=1"])] {
        let mut o = vec![format!("model.name={name}"), "trainer.lr_scheduler=cosine".to_string(), "trainer.gradient_clip_val=1.0".to_string()];
        o.extend(extra.iter().map(|s| s.to_string()));
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let full = small_config(&dir.path().join(format!("{name}-a")), &o);
        let s_full = train(&full, &h5, &csv, None, &mut Quiet).unwrap();
        // Interrupted after step 5, resumed: the same losses step for step (dropout, patch draws
        // and BatchNorm's running statistics all restored).
        let part = small_config(&dir.path().join(format!("{name}-b")), &o);
        let s_part = train(&part, &h5, &csv, None, &mut StopAt(5)).unwrap();
        let s_rest = train(&part, &h5, &csv, s_part.last_checkpoint.as_deref(), &mut Quiet).unwrap();
        assert_eq!(step_losses(&s_full.run_dir), step_losses(&s_rest.run_dir), "{name}: resumed losses");
        let ds = train::trainer::open_dataset(&h5, &csv).unwrap();
        let r = train::eval::evaluate(&s_full.last_checkpoint.unwrap(), &ds, &train::eval::EvalOptions { windows: 4, ..Default::default() }).unwrap();
        assert!(r.encoder.starts_with(name) && r.fit_windows == 24 * 4, "{r:?}");
        // A dozen steps on 10 classes: above chance, not yet good.
        assert!(r.pretrained.linear_probe_acc > 1.5 / r.classes.len() as f64, "{name}: {r:?}");
    }
}

/// A resume with another encoder setting is refused naming each key that differs and both values
/// (the message's two halves used to read the same: only kind, window and embedding were shown).
#[test]
fn a_resume_with_another_encoder_names_the_keys_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let isfm = ["model.name=isfm", "model.num_patches=4", "model.patch_size_L=16", "model.d_model=16", "model.num_heads=2", "model.d_ff=32", "model.e_layers=1"];
    let first = small_config(dir.path(), &[&isfm[..], &["environment.experiment_name=a", "trainer.max_steps=2"]].concat());
    let ckpt = train(&first, &h5, &csv, None, &mut Quiet).unwrap().last_checkpoint.unwrap();
    let changed = small_config(dir.path(), &[&isfm[..], &["environment.experiment_name=a", "trainer.max_steps=4", "model.dropout=0.5", "model.num_heads=4"]].concat());
    let e = train(&changed, &h5, &csv, Some(&ckpt), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("model.dropout: 0.1 in the checkpoint, 0.5 in the run") && e.contains("model.num_heads: 2 in the checkpoint, 4 in the run"), "{e}");
    assert!(!e.contains("model.d_model"), "only what differs is named: {e}");
    let wider = small_config(dir.path(), &[&isfm[..], &["environment.experiment_name=a", "trainer.max_steps=4", "model.output_dim=32"]].concat());
    let e = train(&wider, &h5, &csv, Some(&ckpt), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("model.d_model (the width; model.output_dim where given): 16 in the checkpoint, 32 in the run"), "{e}");
    let cnn = small_config(dir.path(), &["model.name=cnn", "data.window_size=256", "environment.experiment_name=a", "trainer.max_steps=4"]);
    let e = train(&cnn, &h5, &csv, Some(&ckpt), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("model.name: isfm in the checkpoint, cnn in the run"), "{e}");
    // Same encoder, another view of the windows: refused by name too (it went on silently).
    let standardized = small_config(dir.path(), &[&isfm[..], &["environment.experiment_name=a", "trainer.max_steps=4", "data.input=standardized"]].concat());
    let e = train(&standardized, &h5, &csv, Some(&ckpt), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("data.input") && e.contains("trained on time input, this run has standardized"), "{e}");
}

#[test]
fn a_projection_head_trains_resumes_and_stays_out_of_the_encoder_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let o = ["model.projection_dim=16", "trainer.gradient_clip_val=1.0"];
    let full = small_config(&dir.path().join("a"), &o);
    let s_full = train(&full, &h5, &csv, None, &mut Quiet).unwrap();
    let part = small_config(&dir.path().join("b"), &o);
    let s_part = train(&part, &h5, &csv, None, &mut StopAt(4)).unwrap();
    let last = s_part.last_checkpoint.clone().unwrap();
    let s_rest = train(&part, &h5, &csv, Some(&last), &mut Quiet).unwrap();
    assert_eq!(step_losses(&s_full.run_dir), step_losses(&s_rest.run_dir), "the head's weights and moments resume too");
    let names = |f: &str| -> Vec<String> {
        let bytes = std::fs::read(last.join(f)).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(str::to_string).collect()
    };
    assert!(!names("model.safetensors").iter().any(|n| n.starts_with("projection")), "the encoder's state_dict has no head");
    assert!(names("training_state.safetensors").iter().any(|n| n == "projection.2.weight"));
    // A head-less run resumes the encoder and leaves the head behind; a run with a head cannot
    // resume from a checkpoint without one: the head's tensors are required and named.
    let no_head = small_config(&dir.path().join("c"), &[]);
    let mut said = Messages(Vec::new());
    let s_no_head = train(&no_head, &h5, &csv, Some(&last), &mut said).unwrap();
    assert!(s_no_head.steps > 4, "it went on from step 4");
    assert!(said.0.iter().any(|m| m.contains("projection head is not resumed")), "{:?}", said.0);
    let plain = small_config(&dir.path().join("d"), &["trainer.gradient_clip_val=1.0"]);
    let plain_last = train(&plain, &h5, &csv, None, &mut StopAt(4)).unwrap().last_checkpoint.unwrap();
    let with_head = small_config(&dir.path().join("e"), &o);
    let e = train(&with_head, &h5, &csv, Some(&plain_last), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("projection head") && e.contains("projection.0.weight"), "{e}");
    // A head of another size: the shapes are named, not "holds no".
    let other_head = small_config(&dir.path().join("f"), &["model.projection_dim=8", "trainer.gradient_clip_val=1.0"]);
    let e = train(&other_head, &h5, &csv, Some(&last), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("has shape [16, ") && e.contains("needs [8, "), "{e}");
}

#[test]
fn weights_only_checkpoints_evaluate_but_do_not_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(&dir.path().join("run"), &["trainer.epochs=1", "trainer.save_weights_only=true", "model.name=cnn", "data.window_size=256"]);
    let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    let last = s.last_checkpoint.unwrap();
    assert!(last.join("model.safetensors").exists() && !last.join("training_state.safetensors").exists());
    let e = train(&cfg, &h5, &csv, Some(&last), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("weights only"), "{e}");
    let ds = train::trainer::open_dataset(&h5, &csv).unwrap();
    let r = train::eval::evaluate(&last, &ds, &train::eval::EvalOptions { windows: 2, ..Default::default() }).unwrap();
    assert!(r.encoder.starts_with("cnn") && r.pretrained.linear_probe_acc.is_finite(), "{r:?}");
}

#[test]
fn cnn_and_isfm_checkpoints_load_in_pytorch_and_a_pytorch_state_dict_loads_here() {
    let reference = root().join("../shared/reference/encoders_ref.py");
    let probe = std::process::Command::new("python3").arg("-c").arg("import torch, safetensors").output();
    if !reference.exists() || !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: torch, safetensors or {} not available (CI has no torch)", reference.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    for (name, extra, ctor) in [
        ("cnn", vec!["data.window_size=256"], "CNN(2)"),
        (
            "isfm",
            vec!["model.num_patches=8", "model.patch_size_L=16", "model.d_model=32", "model.d_ff=64", "model.e_layers=1"],
            "ISFM(2, 128, num_patches=8, patch_size_L=16, d_model=32, num_heads=4, e_layers=1, d_ff=64)",
        ),
    ] {
        let mut o = vec![format!("model.name={name}"), "trainer.epochs=1".to_string()];
        o.extend(extra.iter().map(|s| s.to_string()));
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let cfg = small_config(&dir.path().join(name), &o);
        let s = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
        let model = s.last_checkpoint.unwrap().join("model.safetensors");
        // strict=True: every name and shape of the reference module, no more; then the reference
        // module's own state dict written back, which the product must load and evaluate.
        let out = dir.path().join(format!("{name}_from_torch.safetensors"));
        let script = format!(
            "import sys; sys.path.insert(0, {:?})\nimport torch\nfrom safetensors.torch import load_file, save_file\nfrom encoders_ref import CNN, ISFM\nm = {ctor}\nm.load_state_dict(load_file(sys.argv[1]), strict=True)\ntorch.manual_seed(1)\nfresh = {ctor}\nsave_file({{k: v.contiguous() for k, v in fresh.state_dict().items()}}, sys.argv[2])\nprint('loaded', sum(p.numel() for p in m.parameters()))",
            root().join("../shared/reference").display().to_string()
        );
        let o = std::process::Command::new("python3").arg("-c").arg(&script).arg(&model).arg(&out).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let enc = cfg.encoder(2);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("loaded {}", enc.param_count()));
        let ds = train::trainer::open_dataset(&h5, &csv).unwrap();
        let opts = train::eval::EvalOptions { windows: 2, config: Some(cfg.clone()), ..Default::default() };
        let r = train::eval::evaluate(&out, &ds, &opts).unwrap();
        assert!(r.encoder.starts_with(name), "{r:?}");
        // Without the config, a bare state dict is a named error.
        let e = train::eval::evaluate(&out, &ds, &train::eval::EvalOptions::default()).unwrap_err().to_string();
        assert!(e.contains("--config"), "{e}");
    }
}

#[test]
fn a_fresh_run_that_fails_leaves_the_previous_record_of_its_directory_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let run = dir.path().join("run");
    let good = small_config(&run, &[]);
    let s = train(&good, &h5, &csv, None, &mut Quiet).unwrap();
    let record = |name: &str| std::fs::read(s.run_dir.join(name)).unwrap();
    let before: Vec<Vec<u8>> = ["config.yaml", "metrics.jsonl", "summary.json"].iter().map(|f| record(f)).collect();
    // A fresh run whose first step fails: raw values near f32's limit (no normalization)
    // overflow the first layer, and step 1's loss is NaN.
    let huge = dir.path().join("huge.h5");
    // (Not one value throughout: a constant recording is skipped as such.)
    let values: Vec<f32> = (0..2048 * 2).map(|i| if i % 3 == 0 { 2.9e38 } else { 3.0e38 }).collect();
    let ids = train::trainer::open_dataset(&h5, &csv).unwrap().ids.clone();
    signal::store::write_store(&huge, ids.iter().map(|&id| signal::store::SampleData { id, values: &values, channels: 2 }), Layout::Contiguous).unwrap();
    let bad = small_config(&run, &["data.normalization=none"]);
    let e = train(&bad, &huge, &csv, None, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("non-finite loss") && e.contains("step 1") && e.contains("no checkpoint was saved by this run"), "{e}");
    let after: Vec<Vec<u8>> = ["config.yaml", "metrics.jsonl", "summary.json"].iter().map(|f| record(f)).collect();
    assert!(before == after, "the failed run changed the previous record");
    // A fresh run that trains replaces all of it: its own config and log, no stale summary until
    // its own is written.
    let other = small_config(&run, &["trainer.seed=9"]);
    train(&other, &h5, &csv, None, &mut Quiet).unwrap();
    assert!(String::from_utf8(record("config.yaml")).unwrap().contains("seed: 9"));
    assert_ne!(record("metrics.jsonl"), before[1]);
}

#[test]
fn a_second_run_in_a_directory_being_written_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(&dir.path().join("run"), &[]);
    let run_dir = cfg.environment.save_dir.join(&cfg.environment.experiment_name);
    std::fs::create_dir_all(run_dir.join("checkpoints")).unwrap();
    // What a run killed mid-checkpoint leaves: removed by the next run, once it holds the lock.
    std::fs::create_dir_all(run_dir.join("checkpoints/last@s7.4242.tmp")).unwrap();
    let held = files::DirLock::try_acquire(&run_dir).unwrap().expect("free");
    let e = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("another run is writing") && e.contains("environment.experiment_name"), "{e}");
    assert!(run_dir.join("checkpoints/last@s7.4242.tmp").exists(), "not touched while another run holds the directory");
    drop(held);
    train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    assert!(!run_dir.join("checkpoints/last@s7.4242.tmp").exists(), "the stale temporary went");
}

#[test]
fn whole_numbers_written_as_integers_are_exact_to_u64() {
    // Through f64, 2^53 + 1 became 2^53 and u64::MAX an error.
    for seed in [9_007_199_254_740_993u64, u64::MAX] {
        let c = Config::from_yaml("", &[format!("trainer.seed={seed}")]).unwrap();
        assert_eq!(c.trainer.seed, seed);
    }
    assert_eq!(Config::from_yaml("trainer:\n  seed: 3.0\n", &[]).unwrap().trainer.seed, 3, "a whole float is still whole");
    for bad in ["-1", "1.5", "1e30", "abc"] {
        let e = Config::from_yaml("", &[format!("trainer.seed={bad}")]).unwrap_err().to_string();
        assert!(e.contains("trainer.seed"), "{bad}: {e}");
    }
}

/// fp16's loss scale is saved with the training state and restored by a resume; a state whose
/// scale or step counters no run reaches is a named corrupt state (a step of 2^64 − 1 used to
/// wrap the next step to 0 and panic).
#[test]
fn the_training_state_keeps_the_loss_scale_and_refuses_counters_past_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncoderConfig::new(EncoderKind::MlpSimple, 64, 1);
    let fp16_step = || {
        let enc = cfg.init(CpuDevice::new(), 8, 0).unwrap();
        let mut st = ContrastiveStep::new(enc, 4, InfoNceConfig::default(), OptimizerConfig::default(), 0).unwrap();
        st.set_precision(engine::Precision::Fp16).map(|()| st)
    };
    let Ok(mut st) = fp16_step() else {
        eprintln!("SKIPPED: fp16 products need the packed GEMM kernel (AVX2 + FMA, CID_CPU_GEMM not faer)");
        return;
    };
    st.scaler = Some(engine::LossScaler { scale: 1024.0, good_steps: 7 });
    let state = state_at_step(3);
    let ckpt = dir.path().join("c");
    train::checkpoint::save(&ckpt, &st, &state, false).unwrap();
    let mut back = fp16_step().unwrap();
    assert_eq!(back.scaler, Some(engine::LossScaler::new()));
    let resumed = train::checkpoint::load_full(&ckpt, &mut back).unwrap();
    assert_eq!((back.scaler, resumed.state.loss_scale), (st.scaler, Some((1024.0, 7))));
    // The same checkpoint with its training state edited: each edit is refused, naming the field.
    let file = ckpt.join("training_state.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    for (from, to, named) in [
        ("\\\"step\\\":3", "\\\"step\\\":18446744073709551615", "`step`"),
        ("\\\"epoch\\\":0", "\\\"epoch\\\":18446744073709551615", "`epoch`"),
        ("\\\"batch\\\":0", "\\\"batch\\\":18446744073709551615", "`batch`"),
        ("\\\"checks_without_improvement\\\":0", "\\\"checks_without_improvement\\\":18446744073709551615", "`checks_without_improvement`"),
        ("\\\"batches\\\":0", "\\\"batches\\\":18446744073709551615", "`epoch_sums.batches`"),
        ("\\\"loss\\\":0.0", "\\\"loss\\\":-1.0", "`epoch_sums`"),
        ("[1024.0,7]", "[1e31,0]", "`loss_scale`"),
        ("[1024.0,7]", "[1024.0,2000]", "`loss_scale`"),
        ("[1024.0,7]", "[3.0,4]", "`loss_scale`"),
    ] {
        assert!(header.contains(from), "{from} in {header}");
        let mut edited = header.replacen(from, to, 1);
        while edited.len() % 8 != 0 {
            edited.push(' ');
        }
        let mut out = (edited.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(edited.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&file, &out).unwrap();
        let e = train::checkpoint::load_full(&ckpt, &mut fp16_step().unwrap()).unwrap_err().to_string();
        assert!(e.contains("training_state.safetensors") && e.contains(named) && e.contains("corrupt"), "{to}: {e}");
    }
}

#[test]
fn split_names_read_back_as_their_splits() {
    for split in [train::eval::Split::Time, train::eval::Split::Bearing] {
        assert_eq!(split.to_string().parse::<train::eval::Split>().unwrap(), split);
    }
}

/// The messages of a run.
#[derive(Default)]
struct Messages(Vec<String>);

impl Observer for Messages {
    fn message(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

/// A fresh run into a directory that holds a run says it replaces that run's checkpoint; the
/// first run into it and a resumed run do not.
#[test]
fn a_fresh_run_over_an_earlier_one_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(dir.path(), &["environment.experiment_name=twice", "trainer.epochs=1"]);
    let replaced = |resume: Option<&Path>| {
        let mut m = Messages::default();
        train(&cfg, &h5, &csv, resume, &mut m).unwrap();
        m.0.into_iter().filter(|w| w.contains("holds an earlier run")).collect::<Vec<_>>()
    };
    assert!(replaced(None).is_empty(), "the first run replaces nothing");
    let mut m = Messages::default();
    train(&cfg, &h5, &csv, None, &mut m).unwrap();
    let again: Vec<String> = m.0.iter().filter(|w| w.contains("holds an earlier run")).cloned().collect();
    // The earlier run's best checkpoints stay on disk, and are said to be no longer ranked.
    assert!(m.0.iter().any(|w| w.contains("the previous run's best checkpoints (best-") && w.contains("no longer ranked")), "{:?}", m.0);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].contains("--resume") && again[0].contains("checkpoints/last") && again[0].contains("environment.experiment_name"), "{}", again[0]);
    let last = dir.path().join("twice").join("checkpoints").join("last");
    assert!(last.is_dir(), "{}", last.display());
    assert!(replaced(Some(&last)).is_empty(), "a resumed run continues the earlier one");
}

/// What a resume changes is said and what it cannot continue is refused (docs/robustness.md):
/// the checkpoint's seed wins over the config's (for the split and the batches: the two
/// continuations train alike), other data settings and another precision are notes, a batch size
/// that leaves the checkpoint's batch outside an epoch is an error naming `data.batch_size`, and a
/// run resumed into another directory says the checkpoint's best ones stay behind, its summary's
/// best checkpoint being its own, with that checkpoint's value.
#[test]
fn a_resume_says_what_it_changes_and_refuses_what_it_cannot_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = |name: &str, extra: &[&str]| small_config(dir.path(), &[&[&format!("environment.experiment_name={name}")[..], "trainer.epochs=3", "trainer.save_top_k=2"][..], extra].concat());
    let first = train(&cfg("first", &[]), &h5, &csv, None, &mut StopAt(5)).unwrap();
    let last = first.last_checkpoint.unwrap();
    // Each continuation in a directory of its own: the checkpoint resumed stays as it is.
    let resume = |name: &str, extra: &[&str]| {
        let mut m = Messages::default();
        let r = train(&cfg(name, extra), &h5, &csv, Some(&last), &mut m);
        (r, m.0)
    };
    let said = |m: &[String], needle: &str| m.iter().any(|x| x.contains(needle));
    let (same_seed, m) = resume("same-seed", &[]);
    let same_seed = same_seed.unwrap();
    assert!(!said(&m, "resuming with seed") && !said(&m, "data differs") && !said(&m, "products"), "{m:?}");
    let (other_seed, m) = resume("other-seed", &["trainer.seed=8"]);
    assert!(said(&m, "resuming with seed 7 from the checkpoint (config has 8)"), "{m:?}");
    assert_eq!(step_losses(&other_seed.unwrap().run_dir), step_losses(&same_seed.run_dir), "the checkpoint's seed splits and draws");
    let (r, m) = resume("other-data", &["data.val_fraction=0.2"]);
    assert!(r.is_ok() && said(&m, "data differs from the checkpoint's (data.val_fraction = 0.25 → 0.2)"), "{m:?}");
    let (r, m) = resume("other-precision", &["trainer.precision=bf16"]);
    assert!(r.is_ok() && said(&m, "trained with fp32 products, this run continues with bf16"), "{m:?}");
    let e = resume("bigger-batches", &["data.batch_size=12"]).0.unwrap_err().to_string();
    assert!(e.contains("data.batch_size") && e.contains("stopped at batch 2 of epoch 1"), "{e}");
    // Into another directory: said, and the best checkpoint named is this run's, with its value.
    let (_, m) = resume("elsewhere", &[]);
    assert!(said(&m, "not beside the one it resumes") && said(&m, "first/checkpoints"), "{m:?}");
    let best = same_seed.best_checkpoint.as_ref().expect("a best checkpoint");
    assert!(best.starts_with(&same_seed.run_dir), "{}", best.display());
    let ranking: serde_json::Value = serde_json::from_slice(&std::fs::read(same_seed.run_dir.join("checkpoints/top_k.json")).unwrap()).unwrap();
    assert_eq!(same_seed.best_checkpoint_monitor, ranking["entries"][0]["value"].as_f64(), "{ranking}");
    assert!(same_seed.best_monitor.unwrap() <= same_seed.best_checkpoint_monitor.unwrap(), "early stopping's best counts the first run's too");
    // Into a directory that holds another run: that run's ranking is dropped (said), not
    // mixed with this run's, and its best checkpoints stay on disk.
    let other = train(&cfg("occupied", &["trainer.epochs=1"]), &h5, &csv, None, &mut Quiet).unwrap();
    let theirs = other.best_checkpoint.expect("the other run's best");
    let (into, m) = resume("occupied", &[]);
    let into = into.unwrap();
    assert!(said(&m, "no longer ranked") && said(&m, "holds an earlier run"), "{m:?}");
    assert!(theirs.exists() && into.best_checkpoint.as_ref() != Some(&theirs), "{:?}", into.best_checkpoint);
    let ranking: serde_json::Value = serde_json::from_slice(&std::fs::read(into.run_dir.join("checkpoints/top_k.json")).unwrap()).unwrap();
    let names: Vec<&str> = ranking["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&theirs.file_name().unwrap().to_str().unwrap()), "{names:?}");
    // A resume into another directory that trains nothing (the checkpoint is at max_steps)
    // leaves that directory's record as it was.
    let kept = train(&cfg("kept", &["trainer.epochs=1"]), &h5, &csv, None, &mut Quiet).unwrap();
    let record = |f: &str| std::fs::read(kept.run_dir.join(f)).unwrap();
    let before: Vec<Vec<u8>> = ["metrics.jsonl", "summary.json", "config.yaml", "checkpoints/top_k.json"].iter().map(|f| record(f)).collect();
    let (done, _) = resume("kept", &["trainer.max_steps=5"]);
    assert_eq!(done.unwrap().steps, 5, "nothing trained");
    let after: Vec<Vec<u8>> = ["metrics.jsonl", "summary.json", "config.yaml", "checkpoints/top_k.json"].iter().map(|f| record(f)).collect();
    assert!(before == after, "the directory's record was rewritten by a resume that trained nothing");
    // Into its own directory: nothing said.
    let mut m = Messages::default();
    train(&cfg("first", &[]), &h5, &csv, Some(&last), &mut m).unwrap();
    assert!(!said(&m.0, "not beside the one it resumes"), "{:?}", m.0);
}

/// What a run killed while replacing a checkpoint left — the old checkpoint's directory, part
/// of its files gone, no name linking to it — is removed by the next run into the directory;
/// linked checkpoints and directories of other names stay.
#[test]
fn a_half_removed_checkpoint_is_cleared_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(dir.path(), &["environment.experiment_name=debris", "trainer.epochs=1"]);
    let first = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap();
    let ckpts = first.run_dir.join("checkpoints");
    std::fs::create_dir(ckpts.join("last@s999")).unwrap();
    std::fs::create_dir(ckpts.join("best-epoch=0-step=1@s1")).unwrap();
    std::fs::write(ckpts.join("best-epoch=0-step=1@s1/model.safetensors"), b"part").unwrap();
    std::fs::create_dir(ckpts.join("notes")).unwrap();
    // Kept: a user's copy under another name, a directory a link names by its absolute path, and
    // one given to --resume by its own path.
    let live = std::fs::read_link(ckpts.join("last")).unwrap();
    let copy = |to: &str| {
        std::fs::create_dir(ckpts.join(to)).unwrap();
        for f in std::fs::read_dir(ckpts.join(&live)).unwrap().flatten() {
            std::fs::copy(f.path(), ckpts.join(to).join(f.file_name())).unwrap();
        }
    };
    copy("last@s3-keep");
    copy("best-mine@s2");
    std::os::unix::fs::symlink(ckpts.join("best-mine@s2"), ckpts.join("mine")).unwrap();
    copy("last@s77");
    let mut said = Messages::default();
    let again = train(&cfg, &h5, &csv, Some(&ckpts.join("last@s77")), &mut said).unwrap();
    let left: std::collections::BTreeSet<String> = std::fs::read_dir(&ckpts).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(!left.contains("last@s999") && !left.contains("best-epoch=0-step=1@s1"), "{left:?}");
    for kept in ["notes", "last@s3-keep", "best-mine@s2", "last@s77"] {
        assert!(left.contains(kept), "{kept}: {left:?}");
    }
    assert!(said.0.iter().any(|m| m.contains("removed 2 checkpoint directories") && m.contains("last@s999") && m.contains("best-epoch=0-step=1@s1")), "{:?}", said.0);
    let last = again.last_checkpoint.unwrap();
    assert!(last.join("model.safetensors").is_file(), "{}", last.display());
}

/// The isfm reads time as t / Sample_Rate: a table without rates for some Ids is said, naming
/// how many and the table (they take 1 Hz); a table with every rate says nothing.
#[test]
fn an_isfm_run_on_ids_without_a_sample_rate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let table = std::fs::read_to_string(&csv).unwrap();
    let rate = table.lines().next().unwrap().split(',').position(|c| c == "Sample_Rate").expect("the generated table has rates");
    // The first three Ids lose their rate (an empty cell).
    let blanked: String = table
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut cells: Vec<&str> = l.split(',').collect();
            if (1..=3).contains(&i) {
                cells[rate] = "";
            }
            cells.join(",") + "\n"
        })
        .collect();
    let partial = dir.path().join("partial.csv");
    std::fs::write(&partial, blanked).unwrap();
    let isfm = ["model.name=isfm", "model.num_patches=8", "model.patch_size_L=16", "model.d_model=32", "model.d_ff=64", "model.e_layers=1", "trainer.max_steps=1"];
    let warnings = |table: &Path, name: &str| {
        let mut m = Messages::default();
        train(&small_config(&dir.path().join(name), &isfm), &h5, table, None, &mut m).unwrap();
        m.0.into_iter().filter(|w| w.contains("Sample_Rate")).collect::<Vec<_>>()
    };
    let said = warnings(&partial, "partial");
    assert!(said.len() == 1 && said[0].contains("3 of 24 Ids have no Sample_Rate in ") && said[0].contains("partial.csv") && said[0].contains("1 Hz"), "{said:?}");
    assert_eq!(warnings(&csv, "whole"), Vec::<String>::new());
}

/// A run that cannot validate says so wherever validation was asked for or early stopping
/// watches a validation metric (it then never acts, nor the best checkpoint), naming the keys;
/// one that asked for none and stops on nothing hears nothing.
#[test]
fn a_run_without_validation_says_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let three = generate(&SynthConfig { count: 3, length: 2048, channels: 2, seed: 5, ..Default::default() }, dir.path(), "three", Layout::Contiguous, &|_| {}).unwrap();
    let warnings = |name: &str, extra: &[&str]| {
        let (h5, csv) = if name == "b" { (&three.store, &three.meta) } else { (&h5, &csv) };
        let mut o = vec![format!("environment.experiment_name={name}")];
        o.extend(extra.iter().map(|s| s.to_string()));
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let cfg = small_config(dir.path(), &[&o[..], &["trainer.epochs=1"]].concat());
        let mut m = Messages::default();
        train(&cfg, h5, csv, None, &mut m).unwrap();
        m.0.into_iter().filter(|w| w.contains("no validation")).collect::<Vec<_>>()
    };
    let none_asked = warnings("a", &["data.val_fraction=0", "trainer.monitor=val_acc", "trainer.patience=1"]);
    assert_eq!(none_asked.len(), 1, "{none_asked:?}");
    assert!(
        none_asked[0].contains("data.val_fraction = 0 of 24 Ids") && none_asked[0].contains("trainer.monitor = val_contrastive_acc") && none_asked[0].contains("trainer.patience"),
        "{}",
        none_asked[0]
    );
    // 3 Ids: validation asked for, none left over from the two a batch trains on; the training
    // loss monitored.
    let too_few = warnings("b", &["data.val_fraction=0.2", "data.batch_size=2", "trainer.monitor=train_contrastive_loss"]);
    assert_eq!(too_few.len(), 1, "{too_few:?}");
    assert!(too_few[0].contains("data.val_fraction = 0.2 of 3 Ids leaves no validation Id") && !too_few[0].contains("trainer.monitor"), "{}", too_few[0]);
    assert!(warnings("c", &["data.val_fraction=0", "trainer.monitor=train_contrastive_loss"]).is_empty(), "nothing asked, nothing said");
    // Validation off with the default (validation) monitor but no early stopping: the shipped
    // CWRU configs; nothing is ignored, nothing said.
    assert!(warnings("d", &["data.val_fraction=0"]).is_empty(), "no early stopping to ignore");
}

/// Where every training Id is too short for one setting, the error names that setting, not the
/// batch size it left empty: the window (longer than every signal), the stride (sequential
/// windows too far apart for two), the time split (too little of each signal left to train on).
#[test]
fn a_batch_no_id_can_fill_names_the_setting_that_emptied_it() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    for (extra, key) in [
        (&["data.window_size=4096"][..], "data.window_size"),
        (&["data.window_sampling_strategy=sequential", "data.stride=5000"][..], "data.stride"),
        (&["data.time_split=0.01"][..], "data.time_split"),
        (&["data.batch_size=100"][..], "data.batch_size"),
        // One Id cut short by a long window, among 18 that could never fill a batch of 100.
        (&["data.batch_size=100", "data.window_size=1100", "data.time_split=0.5"][..], "data.batch_size"),
    ] {
        let cfg = small_config(dir.path(), extra);
        let e = train(&cfg, &h5, &csv, None, &mut Quiet).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")) && e.contains("cannot fill one batch"), "{extra:?}: {e}");
    }
}

/// A warm-up longer than the run is said (the rate never reaches `task.lr`); a run name that
/// would be a hidden directory (YAML's unquoted `.nan` turned back into text) is refused.
#[test]
fn a_warm_up_past_the_run_is_said_and_a_hidden_run_name_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (h5, csv) = dataset(dir.path());
    let cfg = small_config(dir.path(), &["trainer.warmup_steps=1000", "trainer.epochs=1"]);
    let mut m = Messages::default();
    train(&cfg, &h5, &csv, None, &mut m).unwrap();
    assert!(m.0.iter().any(|w| w.contains("trainer.warmup_steps = 1000 outlasts the run's 3 optimizer steps")), "{:?}", m.0);
    // A GPU named for a run on the CPU is noted as unused.
    let cfg = small_config(dir.path(), &["trainer.epochs=1", "trainer.accelerator=cpu", "trainer.devices=[5]", "environment.experiment_name=gpu5"]);
    let mut m = Messages::default();
    train(&cfg, &h5, &csv, None, &mut m).unwrap();
    assert!(m.0.iter().any(|w| w.contains("trainer.devices names GPU 5")), "{:?}", m.0);
    for name in [".nan", "runs/.inf"] {
        let e = Config::from_yaml("", &[format!("environment.experiment_name={name}")]).unwrap_err().to_string();
        assert!(e.contains("environment.experiment_name") && e.contains("hidden directory"), "{name}: {e}");
    }
}
