//! Shared by the integration tests: paths to the repo's venv, its reference scripts, the real
//! CIFAR-10 copy, and a runner for the PyTorch reference.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python (scripts/setup.sh makes it), which has PyTorch 2.11.
pub fn python() -> PathBuf {
    repo().join(".venv/bin/python")
}

/// The real CIFAR-10 copy beside the checkout (read-only).
pub fn cifar10_dir() -> PathBuf {
    repo().join("../shared/data/cifar10")
}

/// Runs `scripts/ref/<script>` with `args` under the venv's Python; panics with its output
/// on failure (a test setup failure, not a finding).
pub fn run_reference(script: &str, args: &[String]) -> String {
    let out = Command::new(python())
        .arg(repo().join("scripts/ref").join(script))
        .args(args)
        .output()
        .expect("run the venv's python (run scripts/setup.sh first)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `cnas` binary under test.
pub fn cnas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cnas"))
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}
