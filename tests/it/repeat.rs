//! `cnas search --config` and `cnas train --config`: a run repeated from its recorded
//! config.json ends exactly like the original, options given on the command line win and are
//! recorded, and a config of the wrong kind, with an unknown key or a wrongly typed value is one
//! line and exit code 2.
use std::path::Path;

use crate::common::{self, assert_user_error, ok};
use crate::search::{equal_cost_run, metrics_without_timing};
use crate::train::timeless;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn cnas(args: &[&str]) -> std::process::Output {
    common::cnas().args(["--device", "cpu", "--quiet"]).args(args).output().expect("run cnas")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The op curriculum's shared 8-stage test search, repeated from its config.json alone (no
/// other option, not even the data folder): same genotype, same candidates at every stage, same
/// metrics but for timing, and the same options recorded. Then options given beside --config
/// win and are what the new config.json records.
#[test]
fn a_search_repeated_from_its_config_ends_the_same() {
    let original = equal_cost_run("op", "1");
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again");
    ok(&cnas(&["search", "--config", p(&original.join("config.json")), "-o", p(&again)]));
    assert_eq!(text(&again.join("genotype.json")), text(&original.join("genotype.json")));
    for stage in 1..=8 {
        let candidates = format!("stage-{stage}/candidates.json");
        assert_eq!(text(&again.join(&candidates)), text(&original.join(&candidates)), "{candidates}");
    }
    assert_eq!(metrics_without_timing(&again), metrics_without_timing(&original));
    let (a, b) = (json(&original.join("config.json")), json(&again.join("config.json")));
    for key in ["search", "data", "op_order", "budget"] {
        assert_eq!(a[key], b[key], "config.json's {key}");
    }

    // Given options override (the run folder works as well as its config.json); the rest is
    // the recorded run's, not the defaults of a fresh command line.
    let changed = dir.path().join("changed");
    ok(&cnas(&[
        "search",
        "--config",
        p(&original),
        "-o",
        p(&changed),
        "--derive-samples",
        "3",
        "--seed",
        "5",
        "--stop-after-epochs",
        "1",
    ]));
    let c = json(&changed.join("config.json"));
    assert_eq!((c["search"]["derive_samples"].as_u64(), c["search"]["seed"].as_u64()), (Some(3), Some(5)));
    assert_eq!(c["data"]["seed"], 5);
    let mut expected = a["search"].clone();
    expected["derive_samples"] = 3.into();
    expected["seed"] = 5.into();
    assert_eq!(c["search"], expected);
    assert_eq!(c["data"]["max_images"], a["data"]["max_images"]);
    assert_eq!(c["data"]["data"], a["data"]["data"]);
}

/// A tiny training run repeated from its config ends with the same metrics and weights; an
/// override (`--epochs`) is recorded; `--arch` replaces the recorded genotype.
#[test]
fn a_training_run_repeated_from_its_config_ends_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar10_arg();
    let first = dir.path().join("first");
    let args = [
        "train",
        "--arch",
        "DARTS_V2",
        "--data",
        &data,
        "--init-channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-images",
        "48",
        "--max-eval-images",
        "32",
        "--seed",
        "11",
        "--workers",
        "1",
    ];
    ok(&cnas(&[&args[..], &["-o", p(&first)]].concat()));
    let again = dir.path().join("again");
    ok(&cnas(&["train", "--config", p(&first.join("config.json")), "-o", p(&again)]));
    let timeless = |run: &Path| timeless(common::read_metrics(run));
    assert_eq!(timeless(&again), timeless(&first));
    assert_eq!(
        std::fs::read(again.join("last.safetensors")).ok().map(|b| b.len()),
        std::fs::read(first.join("last.safetensors")).ok().map(|b| b.len())
    );
    let weights = |run: &Path| -> std::collections::BTreeMap<String, tch::Tensor> {
        cnas::weights::read(&run.join("best.safetensors")).unwrap().into_iter().collect()
    };
    let (w1, w2) = (weights(&first), weights(&again));
    assert_eq!(w1.keys().collect::<Vec<_>>(), w2.keys().collect::<Vec<_>>());
    for (name, t) in &w1 {
        assert!(t.equal(&w2[name]), "{name} differs");
    }
    let (a, b) = (json(&first.join("config.json")), json(&again.join("config.json")));
    for key in ["kind", "arch", "network", "options", "data"] {
        assert_eq!(a[key], b[key], "config.json's {key}");
    }

    let longer = dir.path().join("longer");
    ok(&cnas(&["train", "--config", p(&first), "-o", p(&longer), "--epochs", "2", "--arch", "CNAS"]));
    let c = json(&longer.join("config.json"));
    assert_eq!((c["options"]["epochs"].as_u64(), c["arch"].as_str()), (Some(2), Some("CNAS")));
    assert_eq!(c["options"]["max_images"], a["options"]["max_images"]);
    assert_eq!(
        c["network"]["genotype"],
        serde_json::to_value(cnas::space::published("CNAS").unwrap()).unwrap()
    );
    assert_eq!(common::read_metrics(&longer).len(), 2);

    // Mistakes in the config: one line each, exit code 2, before anything is written.
    let edited = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut config = a.clone();
        edit(&mut config);
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        path
    };
    let unknown = edited("unknown.json", &|c| c["options"]["learning_rate"] = 0.1.into());
    let wrong = edited("wrong.json", &|c| c["options"]["lr"] = "fast".into());
    let search_config = equal_cost_run("op", "1").join("config.json");
    let genotype = equal_cost_run("op", "1").join("genotype.json");
    let missing = dir.path().join("missing.json");
    let cases: [(&[&str], &str); 6] = [
        (&["train", "--config", p(&unknown)], "unknown key options.learning_rate"),
        (&["train", "--config", p(&wrong)], "options.lr: invalid type: string \"fast\""),
        (
            &["train", "--config", p(&search_config)],
            "this is a search's config; repeat it with `cnas search --config`",
        ),
        (
            &["search", "--config", p(&first)],
            "this is a training run's config; repeat it with `cnas train --config`",
        ),
        (&["search", "--config", p(&genotype)], "not the config.json of a cnas search or training run"),
        (&["search", "--config", p(&missing)], "missing.json"),
    ];
    for (i, (args, needle)) in cases.into_iter().enumerate() {
        let out_dir = dir.path().join(format!("refused-{i}"));
        assert_user_error(&cnas(&[args, &["-o", p(&out_dir)]].concat()), needle);
        assert!(!out_dir.exists(), "{args:?} created its run folder");
    }
}
