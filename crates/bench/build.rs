//! Records what the binary was built from, for the results' fingerprint: the commit (`git
//! describe --always --dirty`, "unknown" outside a git checkout) and the compiler that built it
//! (`$RUSTC -V`). Asked at run time, both named whatever the machine running the binary had: a
//! checkout moved on since the build, or another `rustc` on the PATH.

use std::process::Command;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let commit = output(Command::new("git").args(["describe", "--always", "--dirty", "--abbrev=7"]).current_dir(&manifest)).unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(Command::new(rustc).arg("-V")).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CID_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=CID_BUILD_RUSTC={version}");
    // Built again when the checkout moves (a commit, a checkout) or its index changes (what
    // `--dirty` sees of staged work).
    if let Some(git_dir) = output(Command::new("git").args(["rev-parse", "--absolute-git-dir"]).current_dir(&manifest)) {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{file}");
        }
        if let Some(head_ref) = output(Command::new("git").args(["symbolic-ref", "-q", "HEAD"]).current_dir(&manifest)) {
            println!("cargo:rerun-if-changed={git_dir}/{head_ref}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
