//! Signals larger than the memory budget train (the statistics pass streams, windows are read as
//! row ranges), and a store truncated underneath a run ends it with exit code 1 and a message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, root, text};

/// Writes `count` signals of `length` × 2 (contiguous float32) under `dir`.
fn generate(dir: &Path, count: usize, length: usize) -> (String, String) {
    let o = bin().args(["generate", "--count", &count.to_string(), "--length", &length.to_string(), "--channels", "2", "--out"]).arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (dir.join("synthetic.h5").display().to_string(), dir.join("synthetic.csv").display().to_string())
}

fn train(data: &str, meta: &str, save: &Path, overrides: &[&str]) -> Command {
    let mut c = bin();
    c.args(["train", "--config"]).arg(root().join("configs/debug.yaml")).args(["--data", data, "--meta", meta]);
    for o in ["model.name=cnn", "data.window_size=1024", "data.batch_size=2", "data.val_fraction=0", &format!("environment.save_dir={}", save.display())].iter().chain(overrides) {
        c.args(["--override", o]);
    }
    c.env_remove("CID_MEMORY_BUDGET");
    c
}

#[test]
fn signals_larger_than_the_memory_budget_train() {
    // Four signals of 2²¹ × 2 float32: 16.8 MB each, 67 MB in all, under a budget of 12 MiB.
    // Reading any one signal whole would be refused by the budget; the run must not need to.
    let dir = tempfile::tempdir().unwrap();
    let (data, meta) = generate(dir.path(), 4, 1 << 21);
    assert!(std::fs::metadata(&data).unwrap().len() > 4 * (12 << 20));
    let o = train(&data, &meta, &dir.path().join("save"), &["trainer.max_steps=3"]).args(["--memory-budget", "12M"]).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("last ckpt"), "{t}");
    // The same budget refuses what would hold a signal whole.
    let o = bin().args(["--memory-budget", "12M", "generate", "--count", "1", "--length", &(1 << 21).to_string(), "--channels", "2", "--out"]).arg(dir.path().join("g")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("more than the memory budget") && t.contains("--memory-budget 12M"), "the error names the budget and the flag that set it: {t}");
}

#[test]
#[cfg(unix)]
fn a_store_truncated_underneath_a_run_ends_it_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (data, meta) = generate(dir.path(), 8, 1 << 18);
    let mut child = train(&data, &meta, &dir.path().join("save"), &["trainer.max_steps=100000000", "trainer.epochs=100000000", "trainer.save_last=false", "trainer.save_top_k=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it pass the statistics pass and start drawing windows through the map (its first
    // step's line in metrics.jsonl: `log_every_n_steps: 1`), then cut the file in place as a
    // lock-ignoring writer would (`truncate -s`).
    let metrics = dir.path().join("save/contrastive_debug/metrics.jsonl");
    let start = Instant::now();
    while std::fs::metadata(&metrics).map_or(true, |m| m.len() == 0) {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the run ended ({s}) before its first step was logged");
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("no step logged in {} after 120 s", metrics.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(4096).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the run went on after its store was truncated");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("changed underneath this run"), "{err}");
}
