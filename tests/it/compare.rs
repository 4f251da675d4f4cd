//! `cnas compare` on runs made by the tests: searches of two modes (one of them over two seeds)
//! and training runs of their genotypes, matched by the file `--arch` named or by genotype.
use std::path::Path;

use cnas::space::Genotype;

use crate::common::{self, ok};
use crate::search::equal_cost_run;

/// A tiny training run of `arch` (one epoch on 32 images, evaluated on 32 test images).
fn train(out: &Path, arch: &Path, seed: &str) {
    let data = common::cifar10_dir();
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", "train", "--arch"])
        .arg(arch)
        .arg("-o")
        .arg(out)
        .arg("--data")
        .arg(&data);
    cmd.args(["--init-channels", "4", "--layers", "2", "--epochs", "1", "--batch-size", "16"]);
    cmd.args(["--max-images", "32", "--max-eval-images", "32", "--workers", "2", "--seed", seed]);
    ok(&cmd.output().expect("run cnas train"));
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn genotype(path: &Path) -> Genotype {
    Genotype::parse_any(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The table holds every search with its cost and its final genotype's held-out score (the
/// last derive's best), the final test top-1 of its genotype's training runs, and per mode the
/// mean and sample standard deviation; training runs of a stage's genotype are listed but not
/// counted, a copied genotype file is matched by genotype. The page renders in Chromium with
/// every mode's curves and every final cell.
#[test]
fn compare_puts_searches_and_their_retrainings_side_by_side() {
    let (op, random, random4) =
        (equal_cost_run("op", "2020"), equal_cost_run("random", "2020"), equal_cost_run("random", "4"));
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2, t3, t4) =
        (dir.path().join("t1"), dir.path().join("t2"), dir.path().join("t3"), dir.path().join("t4"));
    // Two trainings of op's genotype (seeds differ), one of op's first stage's, and one of a
    // copy of random seed 4's genotype made outside its run.
    train(&t1, &op.join("genotype.json"), "1");
    train(&t2, &op.join("genotype.json"), "2");
    train(&t3, &op.join("stage-1/genotype.json"), "1");
    let copy = dir.path().join("copied-genotype.json");
    std::fs::copy(random4.join("genotype.json"), &copy).unwrap();
    train(&t4, &copy, "1");

    let runs: Vec<&Path> = vec![&op, &random, &random4, &t1, &t2, &t3, &t4, &op];
    let mut cmd = common::cnas();
    cmd.args(["--quiet", "compare"]).args(&runs).arg("--json");
    let report: serde_json::Value = serde_json::from_str(&ok(&cmd.output().unwrap())).unwrap();

    let searches = report["searches"].as_array().unwrap();
    assert_eq!(searches.len(), 3, "a run given twice counts once");
    let top1 = |t: &Path| read_json(&t.join("eval.json"))["top1"].as_f64().unwrap();
    for (row, run) in searches.iter().zip([&op, &random, &random4]) {
        assert_eq!(row["run"].as_str().unwrap(), run.to_str().unwrap());
        assert_eq!(row["finished"], true);
        let config = read_json(&run.join("config.json"));
        assert_eq!(row["mode"], config["search"]["mode"]);
        assert_eq!(row["seed"], config["search"]["seed"]);
        // Cost: the weight steps' images (batch 16, one process) and the held-out budget.
        let budget = &config["budget"];
        assert_eq!(row["weight_images"].as_u64().unwrap(), budget["weight_steps"].as_u64().unwrap() * 16);
        assert_eq!(row["heldout_images"], budget["heldout_images"]);
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
        // The score is the final genotype's: the best of the last stage's candidates.
        let stages = row["stages"].as_u64().unwrap();
        let candidates = read_json(&run.join(format!("stage-{stages}/candidates.json")));
        let best = candidates
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["score"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(close(row["score"].as_f64().unwrap(), best), "{row}");
        assert_eq!(row["genotype"].as_str().unwrap(), genotype(&run.join("genotype.json")).to_darts_string());
    }
    assert_eq!(searches[0]["stages"], 8);
    let retrained: Vec<f64> =
        searches[0]["retrained_top1"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(retrained, vec![top1(&t1), top1(&t2)]);
    assert_eq!(searches[1]["retrained_top1"], serde_json::json!([]));
    assert_eq!(searches[2]["retrained_top1"], serde_json::json!([top1(&t4)]));

    let trainings = report["trainings"].as_array().unwrap();
    assert_eq!(trainings.len(), 4);
    for (t, (search, how)) in trainings.iter().zip([
        (&op, "arch file"),
        (&op, "arch file"),
        (&op, "arch file"),
        (&random4, "genotype"),
    ]) {
        assert_eq!(t["search"].as_str().unwrap(), search.to_str().unwrap(), "{t}");
        assert_eq!(t["matched_by"], how, "{t}");
        assert_eq!(t["epochs"], 1);
        assert_eq!(t["test_images"], 32);
    }
    let stage1_is_final = genotype(&op.join("stage-1/genotype.json")) == genotype(&op.join("genotype.json"));
    assert_eq!(trainings[2]["final_genotype"], stage1_is_final);
    assert_eq!(trainings[3]["final_genotype"], true);
    // The training config records the genotype file, absolute.
    let config = read_json(&t1.join("config.json"));
    assert_eq!(
        config["arch_file"].as_str().unwrap(),
        op.join("genotype.json").canonicalize().unwrap().to_str().unwrap()
    );

    // Per mode: op (one search), random (two seeds: sample standard deviation).
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(modes.iter().map(|m| m["mode"].as_str().unwrap()).collect::<Vec<_>>(), ["op", "random"]);
    assert_eq!((modes[0]["score"]["n"].as_u64(), modes[0]["score"]["std"].as_f64()), (Some(1), None));
    let (a, b) = (searches[1]["score"].as_f64().unwrap(), searches[2]["score"].as_f64().unwrap());
    assert!(close(modes[1]["score"]["mean"].as_f64().unwrap(), (a + b) / 2.0));
    assert!(close(modes[1]["score"]["std"].as_f64().unwrap(), (a - b).abs() / 2f64.sqrt()));
    assert!(close(modes[0]["retrained_top1"]["mean"].as_f64().unwrap(), (top1(&t1) + top1(&t2)) / 2.0));
    assert_eq!(modes[0]["retrained_top1"]["n"], 1, "one search, however many trainings");
    assert_eq!(modes[1]["retrained_top1"]["n"], 1);

    // The Markdown tables and the page.
    let page = dir.path().join("compare.html");
    let mut cmd = common::cnas();
    cmd.args(["--quiet", "compare"]).args(&runs).arg("-o").arg(&page);
    let text = ok(&cmd.output().unwrap());
    assert!(text.contains("| run | mode | seed | stages | weight images |"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("| random | 2 | ") && l.contains(" ± ")), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with('|')).count(), (2 + 3) + (2 + 2) + (2 + 4), "{text}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Per mode: supernet accuracy, held-out score and the retrained curves; then the training
    // run of op's first stage (unless it is op's final genotype).
    let plots = 6 + usize::from(!stage1_is_final);
    assert_eq!(html.matches("data-plot=").count(), plots);
    crate::see::check_in_chromium(&page, plots, 3);

    // A folder that holds no run is one clear line, exit 2.
    let mut cmd = common::cnas();
    cmd.args(["--quiet", "compare"]).arg(&op).arg(dir.path());
    common::assert_user_error(&cmd.output().unwrap(), "not a cnas run");
}
