//! The binary end to end: real files in, exit codes and messages out.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_contrastive-id"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn inspect_cwru_reports_the_real_dataset() {
    let data = root().join("../shared/data/cwru12k_de.h5");
    if !data.exists() {
        eprintln!("SKIPPED: {} is not present", data.display());
        return;
    }
    let o = bin().arg("inspect").arg("--data").arg(&data).arg("--meta").arg(root().join("../shared/data/cwru12k_de.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Ids       53"), "{t}");
    assert!(t.contains("labels    0:1 1:12 2:12 3:28"), "{t}");
    assert!(t.contains("channels  2") && t.contains("12000 Hz"), "{t}");
    assert!(t.contains("min 121265") && t.contains("max 243938"), "{t}");
    assert!(t.contains("mismatch  none"), "{t}");
}

#[test]
fn inspect_names_each_mismatch() {
    let f = root().join("tests/fixtures");
    let o = bin().arg("inspect").arg("--data").arg(f.join("default_f32.h5")).arg("--meta").arg(f.join("meta_mismatch.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Id 9: in the table, not in the store"), "{t}");
    assert!(t.contains("Id 5: in the store, not in the table"), "{t}");
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_culprit() {
    let f = root().join("tests/fixtures");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["inspect".into(), "--data".into(), "/no/such.h5".into(), "--meta".into(), f.join("meta.csv").display().to_string()], "/no/such.h5"),
        (vec!["inspect".into(), "--data".into(), f.join("not_hdf5.h5").display().to_string(), "--meta".into(), f.join("meta.csv").display().to_string()], "not_hdf5.h5"),
        (vec!["inspect".into(), "--data".into(), f.join("default_f32.h5").display().to_string(), "--meta".into(), f.join("meta_no_label.csv").display().to_string()], "Label"),
        (vec!["generate".into(), "--count".into(), "0".into(), "--out".into(), "/tmp/x".into()], "count"),
        (vec!["generate".into(), "--complexity".into(), "fancy".into(), "--out".into(), "/tmp/x".into()], "fancy"),
    ];
    for (args, needle) in cases {
        let o = bin().args(&args).output().unwrap();
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} should fail: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
}

#[test]
fn generate_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["generate", "--complexity", "complex", "--count", "30", "--length", "2048", "--channels", "2", "--name", "s", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = bin().arg("inspect").arg("--data").arg(dir.path().join("s.h5")).arg("--meta").arg(dir.path().join("s.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success() && t.contains("Ids       30") && t.contains("channels  2"), "{t}");
}
