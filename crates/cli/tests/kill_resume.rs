//! A training process killed with SIGKILL at 32 moments never leaves a checkpoint that does not
//! load, and resuming after every kill ends at the same final loss as a run never interrupted.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, text};

/// A small MLP run: 18 training Ids in batches of 6 (3 steps an epoch), validation and a
/// checkpoint (`last` and the top 2) every epoch, dropout and a cosine schedule on.
const CONFIG: &str = "\
data:
  window_size: 128
  batch_size: 6
  val_fraction: 0.25
model:
  name: mlp-medium
trainer:
  epochs: 150
  lr_scheduler: cosine
  warmup_steps: 5
  gradient_clip_val: 1.0
  check_val_every_n_epoch: 1
  save_top_k: 2
  save_last: true
  log_every_n_steps: 1000
  seed: 11
";

fn train(dir: &Path, save: &Path, resume: Option<&Path>) -> Command {
    let mut c = bin();
    // One GEMM kernel for every process: the uninterrupted run and the first killed one would
    // otherwise each measure their own (a resumed run pins its checkpoint's, tested in train).
    c.env("CID_CPU_GEMM", "packed");
    c.args(["train", "--config"]).arg(dir.join("run.yaml")).arg("--data").arg(dir.join("synthetic.h5")).arg("--meta").arg(dir.join("synthetic.csv"));
    c.args(["--override", &format!("environment.save_dir={}", save.display()), "--override", "environment.experiment_name=run", "--json"]);
    if let Some(r) = resume {
        c.arg("--resume").arg(r);
    }
    c
}

fn final_loss(o: &Output) -> f64 {
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)));
    summary["last_loss"].as_f64().unwrap_or_else(|| panic!("no last_loss: {}", text(o)))
}

/// A tiny deterministic generator for the kill moments (printed on failure).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sigkill_at_thirty_moments_leaves_a_loadable_last_and_resume_ends_where_the_uninterrupted_run_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("run.yaml"), CONFIG).unwrap();
    let g = bin().args(["generate", "--count", "24", "--length", "2048", "--channels", "2", "--seed", "3", "--out"]).arg(dir).output().unwrap();
    assert!(g.status.success(), "{}", text(&g));

    let t0 = Instant::now();
    let full = train(dir, &dir.join("full"), None).output().unwrap();
    assert!(full.status.success(), "{}", text(&full));
    let uninterrupted = final_loss(&full);
    let run_ms = t0.elapsed().as_millis() as u64;

    let save = dir.join("killed");
    let last: PathBuf = save.join("run/checkpoints/last");
    let mut rng = Lcg(20261201);
    let mut kills = 0;
    let mut loaded = 0;
    let mut attempts = 0;
    while kills < 32 {
        attempts += 1;
        assert!(attempts < 200, "the run kept finishing before its kill ({kills} kills)");
        let resume = last.exists().then_some(last.as_path());
        let mut child = train(dir, &save, resume).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Anywhere from start-up to well into the run (checkpoint writes included).
        let at = Duration::from_millis(20 + rng.below(run_ms.clamp(100, 3000) / 4));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_some() {
            // Finished before the kill: start over from scratch for more kills.
            std::fs::remove_dir_all(&save).unwrap();
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if last.exists() {
            // `last` always loads: a symlink to a complete directory, swapped atomically.
            let o = bin()
                .arg("evaluate")
                .arg("--checkpoint")
                .arg(&last)
                .arg("--data")
                .arg(dir.join("synthetic.h5"))
                .arg("--meta")
                .arg(dir.join("synthetic.csv"))
                .args(["--windows", "2"])
                .output()
                .unwrap();
            assert!(o.status.success(), "after kill {kills} at {at:?}: `last` does not load:\n{}", text(&o));
            loaded += 1;
        }
    }
    eprintln!("{kills} kills in {attempts} attempts, `last` loaded after {loaded}; the uninterrupted run took {run_ms} ms");
    // Not a timing claim, a coverage one: enough kills must land after a first checkpoint for
    // the loads above to have been exercised (on a loaded machine fewer do, never none).
    assert!(loaded >= 4, "only {loaded} of {kills} kills landed after a first checkpoint: `last` was hardly exercised");
    let rest = train(dir, &save, last.exists().then_some(last.as_path())).output().unwrap();
    assert!(rest.status.success(), "{}", text(&rest));
    assert_eq!(final_loss(&rest), uninterrupted, "after {kills} kills, the resumed run ends at the uninterrupted run's loss");
}
