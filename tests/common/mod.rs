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

/// A user mistake: exit code 2, no panic, and exactly one line on stderr that contains
/// `needle`.
pub fn assert_user_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit code 2, stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

/// A library error that is the user's and names `what`.
pub fn assert_user_error_naming(err: cnas::Error, what: &str) {
    let text = err.to_string();
    assert!(err.is_user_error(), "not a user error: {text}");
    assert!(text.contains(what), "'{text}' does not name '{what}'");
}

/// A genotype whose edges all read a cell input, one per listed op, so in the reduction cell
/// every op runs at stride 2.
pub fn every_op_genotype(
    normal_ops: &[cnas::space::Primitive],
    reduce_ops: &[cnas::space::Primitive],
) -> cnas::space::Genotype {
    use cnas::space::{Cell, Edge, Genotype};
    let cell = |ops: &[cnas::space::Primitive]| Cell {
        edges: ops.iter().enumerate().map(|(i, &op)| Edge { op, from: i % 2, to: 2 + i / 2 }).collect(),
        concat: (2..2 + ops.len() / 2).collect(),
    };
    Genotype { normal: cell(normal_ops), reduce: cell(reduce_ops) }
}
