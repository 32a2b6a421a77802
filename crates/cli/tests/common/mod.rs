//! What the binary's integration tests share: the binary, the repository root, a run's output.
#![allow(dead_code)] // each test file uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `contrastive-id` binary cargo built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_contrastive-id"))
}

/// The repository root (configs/, tests/fixtures/, and ../shared beside it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Stdout then stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `generate` a single-channel store `NAME.h5` + `NAME.csv` of `count` signals of `length` in
/// `dir` (asserting it succeeds); returns the two paths.
pub fn generate(dir: &std::path::Path, name: &str, count: usize, length: usize) -> (PathBuf, PathBuf) {
    let o = bin().args(["generate", "--count", &count.to_string(), "--length", &length.to_string(), "--name", name, "--out"]).arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (dir.join(format!("{name}.h5")), dir.join(format!("{name}.csv")))
}
