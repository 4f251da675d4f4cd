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

/// The scalars in an event directory, read by TensorBoard's EventAccumulator:
/// tag → [(step, value)].
pub fn read_tensorboard(dir: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(dir).output().expect("run python");
    assert!(out.status.success(), "EventAccumulator failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
