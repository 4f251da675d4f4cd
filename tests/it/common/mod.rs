//! Shared by the integration tests: paths to the repo's venv, its reference scripts, the real
//! CIFAR-10 copy, runners for `cnas` and the PyTorch reference, the lock on libtorch's global
//! random generator, and a local HTTP server ([`http`]).
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;

pub mod http;

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

/// The real CIFAR-10 copy as a command-line argument.
pub fn cifar10_arg() -> String {
    cifar10_dir().to_string_lossy().into_owned()
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

/// Runs `code` with `args` under the venv's Python; panics with its stderr on failure.
pub fn run_python(code: &str, args: &[String]) -> String {
    let out = Command::new(python()).arg("-c").arg(code).args(args).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `cnas` binary under test.
pub fn cnas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cnas"))
}

/// `cnas --device cpu --quiet ARGS`, run to completion.
pub fn cnas_quiet(args: &[&str]) -> Output {
    cnas().args(["--device", "cpu", "--quiet"]).args(args).output().expect("run cnas")
}

/// Asserts that `cnas` succeeded; its stdout.
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "cnas failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of a run's metrics.jsonl.
pub fn read_metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The names in `dir`, sorted; none when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Writes `genotype` as JSON to `path`.
pub fn write_genotype(path: &Path, genotype: &cnas::space::Genotype) {
    std::fs::write(path, serde_json::to_string(&genotype.to_json()).unwrap()).unwrap();
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
    let out = run_python(script, &[dir.to_string_lossy().into_owned()]);
    serde_json::from_str(&out).unwrap()
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

/// libtorch's random generator is global to the process, and the tests of this binary run on
/// several threads at once. Whoever seeds it or draws from it in this process (random tensors,
/// the random initialisation of a network, supernet or controller, drop-path masks) holds this
/// lock meanwhile, so a seeded test sees exactly its own draws (e.g. the drop-path masks
/// PyTorch drew with the same seed). Reentrant within a thread; released when the guard drops,
/// also when a test panics.
pub fn torch_rng() -> TorchRng {
    let me = std::thread::current().id();
    let mut owner = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match owner.0 {
            None => {
                *owner = (Some(me), 1);
                break;
            }
            Some(who) if who == me => {
                owner.1 += 1;
                break;
            }
            Some(_) => owner = TORCH_RNG_FREE.wait(owner).unwrap_or_else(|p| p.into_inner()),
        }
    }
    TorchRng { _not_send: std::marker::PhantomData }
}

/// [`torch_rng`], then `tch::manual_seed(seed)`.
pub fn seed_torch(seed: i64) -> TorchRng {
    let guard = torch_rng();
    tch::manual_seed(seed);
    guard
}

/// Runs `f` holding libtorch's generator ([`torch_rng`]).
pub fn with_torch_rng<T>(f: impl FnOnce() -> T) -> T {
    let _rng = torch_rng();
    f()
}

static TORCH_RNG: Mutex<(Option<ThreadId>, usize)> = Mutex::new((None, 0));
static TORCH_RNG_FREE: Condvar = Condvar::new();

/// Holds libtorch's generator for this thread (see [`torch_rng`]).
#[must_use = "the generator is only held while the guard lives"]
pub struct TorchRng {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for TorchRng {
    fn drop(&mut self) {
        let mut owner = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        owner.1 -= 1;
        if owner.1 == 0 {
            owner.0 = None;
            TORCH_RNG_FREE.notify_all();
        }
    }
}

/// Owned copies of command-line arguments.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
