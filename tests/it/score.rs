//! `cnas score`: it reproduces derivation's scores of a search's candidates (every stage), and
//! scores a supernet saved by the PyTorch definition of the released supernet as PyTorch does.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cnas::data::{Data, DataArgs, LoaderOptions};
use cnas::search::{derive_loader, load_released_supernet, released_op_order};
use cnas::space::{Genotype, Primitive};
use tch::{Device, Kind, Tensor};

use crate::common::{self, ok};

/// Two stages (node curriculum over 2 nodes, 1 then 2 searched nodes) of a tiny search, 3
/// candidates each on 32 held-out images: about 10 s of CPU in debug.
const TINY: [&str; 28] = [
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
    "32",
    "--batch-size",
    "16",
    "--controller-steps",
    "1",
    "--derive-rounds",
    "1",
    "--derive-samples",
    "3",
    "--derive-uniform",
    "0",
    "--derive-images",
    "32",
    "--derive-batch-size",
    "12",
    "--workers",
    "2",
];

/// `cnas --device cpu --quiet score ARGS`.
fn score(args: &[&str]) -> std::process::Output {
    common::cnas_quiet(&[&["score"], args].concat())
}

/// The genotypes of a stage's candidates.json, each written to a file: (file, score, images).
fn candidates(run: &Path, stage: usize, dir: &Path) -> Vec<(PathBuf, f64, u64)> {
    let text = std::fs::read_to_string(run.join(format!("stage-{stage}/candidates.json"))).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!list.is_empty());
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let genotype = Genotype::from_json_value(&c["genotype"]).unwrap();
            let file = dir.join(format!("stage{stage}-{i}.json"));
            common::write_genotype(&file, &genotype);
            (file, c["score"].as_f64().unwrap(), c["images"].as_u64().unwrap())
        })
        .collect()
}

/// Parses `cnas score --json`.
fn scores(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn score_reproduces_derivations_scores_of_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = common::cifar10_arg();
    let mut search = common::cnas();
    search.args(["--device", "cpu", "--quiet", "search", "--data", &data, "-o"]).arg(&run).args(TINY);
    ok(&search.output().unwrap());
    let run_arg = run.to_str().unwrap();

    for (stage, flags) in [(2, vec![]), (1, vec!["--stage", "1"])] {
        let cands = candidates(&run, stage, dir.path());
        let mut args = vec![run_arg, "--json"];
        args.extend(flags);
        args.push("--arch");
        args.extend(cands.iter().map(|(f, _, _)| f.to_str().unwrap()));
        let got = scores(&ok(&score(&args)));
        assert_eq!(got.len(), cands.len());
        for ((file, want, images), g) in cands.iter().zip(&got) {
            assert_eq!(g["arch"], file.to_str().unwrap());
            // Same images, same batches, same supernet: the very same number.
            assert_eq!(g["score"].as_f64().unwrap(), *want, "stage {stage}, {}", file.display());
            assert_eq!(g["images"].as_u64().unwrap(), *images);
        }
    }
    // The table, and --images capping the held-out images.
    let (file, _, _) = &candidates(&run, 2, dir.path())[0];
    let table = ok(&score(&[run_arg, "--images", "20", "--arch", file.to_str().unwrap()]));
    // (20 of the 32 derivation images, in batches of 12: a full one and a partial one.)
    assert!(table.lines().next().unwrap().starts_with("arch"), "{table}");
    assert!(table.lines().nth(1).unwrap().trim_end().ends_with(" 20"), "{table}");

    // User mistakes: one line, exit 2.
    let stage2 = file.to_str().unwrap();
    common::assert_user_error(&score(&[run_arg, "--stage", "3", "--arch", stage2]), "stages 1 to 2");
    // A two-node genotype in stage 1, which searched one node.
    common::assert_user_error(
        &score(&[run_arg, "--stage", "1", "--arch", stage2]),
        "has 2 intermediate nodes, the supernet searched 1",
    );
    common::assert_user_error(&score(&[run_arg, "--arch", "NoSuchNet"]), "unknown architecture");
    std::fs::remove_file(run.join("stage-2/supernet.safetensors")).unwrap();
    common::assert_user_error(&score(&[run_arg, "--arch", stage2]), "stage 2 of");
}

const IMAGES: usize = 32;
const BATCH: usize = 16;

/// The first held-out images of the default split (seed 2020, 40% trains weights), as
/// `cnas score` reads them, written to `path` as `images`, `labels`.
fn heldout_images(path: &Path) -> Vec<(Tensor, Tensor)> {
    let args = DataArgs { data: common::cifar10_dir(), workers: Some(0), ..Default::default() };
    let data = Data::open(&args, false).unwrap();
    let loader = derive_loader(&data, &LoaderOptions::eval(BATCH), None, IMAGES).unwrap();
    let batches: Vec<(Tensor, Tensor)> = loader.epoch(0).map(|b| b.unwrap()).collect();
    let images = Tensor::cat(&batches.iter().map(|b| &b.0).collect::<Vec<_>>(), 0);
    let labels = Tensor::cat(&batches.iter().map(|b| &b.1).collect::<Vec<_>>(), 0);
    Tensor::write_safetensors(&[("images", &images), ("labels", &labels)], path).unwrap();
    batches
}

#[test]
fn a_released_supernet_scores_as_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let images_file = dir.path().join("images.safetensors");
    let batches = heldout_images(&images_file);
    let order = released_op_order(2020).unwrap();
    let every = common::every_op_genotype(&Primitive::DARTS, &Primitive::DARTS);
    let every_file = dir.path().join("every.json");
    common::write_genotype(&every_file, &every);
    let archs: Vec<(String, Genotype)> = vec![
        ("CNAS".into(), cnas::space::published("CNAS").unwrap()),
        ("DARTS_V2".into(), cnas::space::published("DARTS_V2").unwrap()),
        (every_file.to_str().unwrap().into(), every),
    ];
    let edges = |c: &cnas::space::Cell| -> Vec<(String, usize, usize)> {
        c.edges.iter().map(|e| (e.op.name().to_string(), e.from, e.to)).collect()
    };
    let spec = serde_json::json!({
        "channels": 4, "layers": 3, "classes": 10, "seed": 5, "batch": BATCH,
        "images": images_file,
        "op_order": order.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "archs": archs.iter().map(|(_, g)| serde_json::json!({
            "normal": edges(&g.normal), "reduce": edges(&g.reduce)})).collect::<Vec<_>>(),
    });
    let spec_path = dir.path().join("spec.json");
    common::write(&spec_path, &spec.to_string());
    let out = dir.path().join("ref");
    common::run_reference(
        "score_released.py",
        &[spec_path.to_str().unwrap().into(), out.to_str().unwrap().into()],
    );
    let pth = out.join("supernet-1-0.pth");
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("logits.safetensors")).unwrap().into_iter().collect();
    let torch_scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();

    // Logits: the library's loader of released state_dicts, batch by batch.
    let (_vs, net) = load_released_supernet(&pth, &order, Device::Cpu).unwrap();
    assert_eq!((net.config().init_channels, net.config().layers, net.config().nodes), (4, 3, 4));
    for (a, (name, g)) in archs.iter().enumerate() {
        let ours = tch::no_grad(|| {
            let logits: Vec<Tensor> =
                batches.iter().map(|(x, _)| net.forward_t(x, &g.normal, &g.reduce, true).unwrap()).collect();
            Tensor::cat(&logits, 0)
        });
        let theirs = &reference[&format!("logits.{a}")];
        let scale = theirs.abs().max().double_value(&[]).max(1e-6);
        let diff = (ours.to_kind(Kind::Double) - theirs.to_kind(Kind::Double)).abs().max().double_value(&[]);
        assert!(diff / scale < 1e-4, "{name}: logits differ by {diff:e} (scale {scale:e})");
    }

    // The command: the same counts as PyTorch's on the same images.
    let data = common::cifar10_arg();
    let (images, batch) = (IMAGES.to_string(), BATCH.to_string());
    let mut args = vec!["--supernet", pth.to_str().unwrap(), "--data", &data, "--images", &images];
    args.extend(["--batch-size", &batch, "--json", "--arch"]);
    args.extend(archs.iter().map(|(n, _)| n.as_str()));
    let got = scores(&ok(&score(&args)));
    for (a, g) in got.iter().enumerate() {
        let correct = torch_scores["correct"][a].as_u64().unwrap();
        assert_eq!(g["correct"].as_u64().unwrap(), correct, "{}", archs[a].0);
        assert_eq!(g["images"].as_u64().unwrap(), IMAGES as u64);
        assert_eq!(g["score"].as_f64().unwrap(), correct as f64 / IMAGES as f64);
    }

    // Stage 1 of the released curriculum trained sep_conv_3x3 alone; a wrong order does not load.
    common::assert_user_error(
        &score(&["--supernet", pth.to_str().unwrap(), "--stage", "1", "--data", &data, "--arch", "CNAS"]),
        "is not allowed (allowed: sep_conv_3x3)",
    );
    let darts_order: Vec<&str> = Primitive::DARTS.iter().map(|p| p.name()).collect();
    let darts_order = darts_order.join(",");
    let wrong = score(&["--supernet", pth.to_str().unwrap(), "--op-order", &darts_order, "--arch", "CNAS"]);
    common::assert_user_error(&wrong, "do not fit");
}
