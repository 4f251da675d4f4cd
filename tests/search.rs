//! `cnas search` end to end on real CIFAR-10 images with tiny supernets: resume equality,
//! run-directory safety, and that the controller learns something in a short search.
mod common;

use std::path::Path;
use std::process::Output;

fn search(run_dir: &Path, extra: &[&str]) -> Output {
    let data = common::cifar10_dir();
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", "search", "--data"]).arg(&data).arg("-o").arg(run_dir);
    cmd.args(extra).output().expect("run cnas search")
}

fn resume(run_dir: &Path) -> Output {
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", "search", "--resume"]).arg(run_dir);
    cmd.output().expect("run cnas search --resume")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "cnas failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two stages (node curriculum over 2 nodes), one warm-up and one search epoch each.
const TINY: [&str; 22] = [
    "--preset",
    "quick",
    "--mode",
    "node",
    "--nodes",
    "2",
    "--init-channels",
    "4",
    "--layers",
    "3",
    "--max-images",
    "64",
    "--batch-size",
    "16",
    "--controller-steps",
    "3",
    "--derive-rounds",
    "2",
    "--derive-samples",
    "2",
    "--workers",
    "2",
];

/// metrics.jsonl without the fields that measure time.
fn metrics_without_timing(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            obj.remove("images_per_s");
            obj.remove("time_s");
            v
        })
        .collect()
}

#[test]
fn a_resumed_search_ends_exactly_like_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&search(&a, &TINY));
    let metrics_a = metrics_without_timing(&a);
    // 2 stages × (warm-up, weights, controller, derive)
    assert_eq!(metrics_a.len(), 8, "{metrics_a:?}");
    for stage in ["stage-1", "stage-2"] {
        for file in ["supernet.safetensors", "controllers.safetensors", "candidates.json", "genotype.json"] {
            assert!(a.join(stage).join(file).is_file(), "{stage}/{file} missing");
        }
    }
    let genotype = std::fs::read_to_string(a.join("genotype.json")).unwrap();
    let genotype = cnas::space::Genotype::parse_any(&genotype).unwrap();
    assert_eq!(genotype.normal.num_nodes(), 2);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["search"]["nodes"], 2);
    assert_eq!(config["op_order"][0], "sep_conv_3x3");

    // Interrupted after 3 epochs (inside stage 2), then resumed twice (once with nothing
    // left to interrupt), it must end with the same genotype, metrics and weights.
    let stopped = search(&b, &[&TINY[..], &["--stop-after-epochs", "3"]].concat());
    ok(&stopped);
    assert!(!b.join("genotype.json").exists());
    assert_eq!(metrics_without_timing(&b).len(), 5);
    // A line written after the last checkpoint (a kill between the two) is dropped on resume.
    let mut metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    metrics.push_str("{\"phase\":\"weights\",\"partial\":true}\n");
    std::fs::write(b.join("metrics.jsonl"), metrics).unwrap();
    ok(&resume(&b));
    assert_eq!(metrics_without_timing(&b), metrics_a);
    assert_eq!(
        std::fs::read_to_string(b.join("genotype.json")).unwrap(),
        std::fs::read_to_string(a.join("genotype.json")).unwrap()
    );
    for stage in ["stage-1", "stage-2"] {
        assert_eq!(
            std::fs::read_to_string(b.join(stage).join("candidates.json")).unwrap(),
            std::fs::read_to_string(a.join(stage).join("candidates.json")).unwrap(),
        );
    }
    for file in ["stage-2/supernet.safetensors", "stage-2/controllers.safetensors", "checkpoint.safetensors"]
    {
        let weights = |dir: &Path| {
            let mut w = cnas::weights::read(&dir.join(file)).unwrap();
            w.sort_by(|x, y| x.0.cmp(&y.0));
            w
        };
        let (wa, wb) = (weights(&a), weights(&b));
        assert_eq!(wa.len(), wb.len());
        for ((na, ta), (nb, tb)) in wa.iter().zip(wb.iter()) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{file}: {na} differs after resume");
        }
    }
    // Resuming a finished run changes nothing and succeeds.
    ok(&resume(&b));
    assert_eq!(metrics_without_timing(&b), metrics_a);
}

#[test]
fn a_run_directory_holding_another_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let stop = [&TINY[..], &["--stop-after-epochs", "1"]].concat();
    ok(&search(&run, &stop));
    let again = search(&run, &stop);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("holds another run"), "{err}");
    ok(&search(&run, &[&stop[..], &["--force"]].concat()));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = resume(&empty);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no search to resume"));
    let out = search(&dir.path().join("bad"), &["--batch-size", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn after_a_short_search_the_controller_beats_uniform_sampling() {
    // A small space (2 nodes, all 8 ops) and enough weight training for architectures to
    // differ: controller samples must then score higher than uniform ones on held-out images,
    // and the controllers must have become more certain than uniform choice.
    // Margins matter: CPUs with other SIMD units sum in other orders. At controller lr 0.006
    // the entropy ended at the limit on an AVX-512 machine (10.78 against 10.71); at 0.01 it
    // ends at 4.2 there, controller samples at 24.6% against uniform's 14.3%. Seed 1 at 0.01
    // fails the accuracy assertion (17.5% against 18.7%): the test can fail.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "--mode",
        "fixed",
        "--nodes",
        "2",
        "--init-channels",
        "8",
        "--layers",
        "3",
        "--max-images",
        "2048",
        "--batch-size",
        "64",
        "--warmup-epochs",
        "2",
        "--epochs",
        "4",
        "--controller-steps",
        "40",
        "--controller-lr",
        "0.01",
        "--derive-rounds",
        "2",
        "--derive-samples",
        "12",
        "--derive-batches",
        "4",
        "--workers",
        "2",
        "--seed",
        "2",
    ];
    ok(&search(&run, &args));
    let metrics = metrics_without_timing(&run);
    let controller: Vec<&serde_json::Value> = metrics.iter().filter(|m| m["phase"] == "controller").collect();
    let entropy =
        |m: &serde_json::Value| m["node_entropy"].as_f64().unwrap() + m["op_entropy"].as_f64().unwrap();
    // Uniform choice over 2 nodes and 8 ops: node i picks 2 of i+2 inputs and 2 of 8 ops.
    let uniform_entropy: f64 = (0..2).map(|i| 2.0 * ((i + 2) as f64).ln() + 2.0 * 8f64.ln()).sum();
    let last = entropy(controller[controller.len() - 1]);
    assert!(
        last < 0.9 * uniform_entropy,
        "entropy {last:.3} has not fallen from uniform's {uniform_entropy:.3}"
    );
    let derive = metrics.iter().find(|m| m["phase"] == "derive").unwrap();
    assert!(derive["samples"].as_u64().unwrap() >= 20);
    let (ours, uniform) =
        (derive["controller_mean"].as_f64().unwrap(), derive["uniform_mean"].as_f64().unwrap());
    assert!(ours > uniform, "controller samples {ours:.4} do not beat uniform samples {uniform:.4}");
}
