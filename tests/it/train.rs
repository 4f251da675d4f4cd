//! `cnas train` and `cnas eval` end to end on the real CIFAR-10 copy, with small networks.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{self, cifar10_arg as data_arg, cifar10_dir, cnas, read_metrics as metrics};

fn run_ok(args: &[&str]) -> String {
    let out = cnas().args(args).output().expect("run cnas");
    assert!(
        out.status.success(),
        "cnas {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code 2 and one line naming the problem.
fn run_user_error(args: &[&str], expect: &str) {
    let out = cnas().args(args).output().expect("run cnas");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "cnas {args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expect), "expected '{expect}' in: {stderr}");
}

/// The metrics without what depends on the machine's speed.
pub(crate) fn timeless(mut lines: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for l in &mut lines {
        let o = l.as_object_mut().unwrap();
        o.remove("images_per_sec");
        o.remove("epoch_time_s");
    }
    lines
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect()
}

#[test]
fn training_learns_and_eval_agrees_with_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = data_arg();
    let stdout = run_ok(&[
        "--quiet",
        "train",
        "--arch",
        "CNAS",
        "--data",
        &data,
        "-o",
        out.to_str().unwrap(),
        "--init-channels",
        "8",
        "--layers",
        "3",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--max-images",
        "2048",
        "--max-eval-images",
        "512",
        "--auxiliary-weight",
        "0",
        "--drop-path-prob",
        "0",
        "--cutout",
        "0",
        "--lr",
        "0.1",
    ]);
    assert!(stdout.contains("final top-1"), "{stdout}");
    let lines = metrics(&out);
    assert_eq!(lines.len(), 3);
    let loss = |i: usize| lines[i]["train_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0) - 0.1, "training loss did not fall: {lines:?}");
    let top1 = lines[2]["val_top1"].as_f64().unwrap();
    // Chance is 10%; 512 held-out test images put chance's 99.9% bound near 14%.
    assert!(top1 > 0.2, "held-out top-1 {top1} is not above chance");
    for f in ["config.json", "best.safetensors", "last.safetensors", "eval.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["kind"], "train");
    assert_eq!(config["network"]["init_channels"], 8);

    // `cnas eval` on the best checkpoint against PyTorch's DARTS network on the same images.
    let best = out.join("best.safetensors");
    let eval_dir = dir.path().join("eval");
    let json = run_ok(&[
        "--quiet",
        "eval",
        "--weights",
        best.to_str().unwrap(),
        "--data",
        &data,
        "--max-images",
        "500",
        "--batch-size",
        "128",
        "-o",
        eval_dir.to_str().unwrap(),
        "--json",
    ]);
    let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(ours["confusion"], written["confusion"]);
    let reference = common::run_reference(
        "eval_reference.py",
        &[
            "--weights",
            best.to_str().unwrap(),
            "--genotype",
            common::repo().join("scripts/ref/genotypes/cnas.json").to_str().unwrap(),
            "--channels",
            "8",
            "--layers",
            "3",
            "--images",
            "500",
            "--test-batch",
            cifar10_dir().join("cifar-10-batches-bin/test_batch.bin").to_str().unwrap(),
        ]
        .map(String::from),
    );
    let theirs: serde_json::Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(ours["images"], 500);
    for key in ["top1", "top5"] {
        let (a, b) = (ours[key].as_f64().unwrap(), theirs[key].as_f64().unwrap());
        // At most one image's prediction may flip on a float near-tie.
        assert!((a - b).abs() <= 1.0 / 500.0 + 1e-9, "{key}: {a} vs {b}");
    }
    let (a, b) = (ours["loss"].as_f64().unwrap(), theirs["loss"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-4, "loss {a} vs {b}");
    let differing: u64 = (0..10)
        .flat_map(|i| (0..10).map(move |j| (i, j)))
        .map(|(i, j)| {
            ours["confusion"][i][j].as_i64().unwrap().abs_diff(theirs["confusion"][i][j].as_i64().unwrap())
        })
        .sum();
    assert!(differing <= 2, "confusion matrices differ by {differing}");
    let per_class = ours["per_class_accuracy"].as_array().unwrap();
    assert_eq!(per_class.len(), 10);
}

#[test]
fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_arg();
    let common = |out: &Path| -> Vec<String> {
        [
            "--quiet",
            "train",
            "--arch",
            "DARTS_V2",
            "--data",
            &data,
            "-o",
            out.to_str().unwrap(),
            "--init-channels",
            "4",
            "--layers",
            "3",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--max-images",
            "96",
            "--max-eval-images",
            "64",
            "--eval-every",
            "2",
            "--seed",
            "5",
            "--no-bias-decay",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = dir.path().join("whole");
    let args = common(&whole);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let parts = dir.path().join("parts");
    let mut args = common(&parts);
    args.extend(["--stop-after-epochs".to_string(), "1".to_string()]);
    let stdout = run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!stdout.contains("final top-1"), "stopped early yet finished: {stdout}");
    assert_eq!(metrics(&parts).len(), 1);
    // Resume twice: once for one more epoch, once to the end.
    let p = parts.to_str().unwrap();
    run_ok(&["--quiet", "train", "--resume", p, "--stop-after-epochs", "1"]);
    // The latest checkpoint cut short: the resume goes back to the previous generation (after
    // epoch 1), redoes epoch 2 and still ends bit-identical.
    let last = std::fs::read(parts.join("last.safetensors")).unwrap();
    std::fs::write(parts.join("last.safetensors"), &last[..last.len() / 3]).unwrap();
    assert!(parts.join("last.previous.safetensors").is_file());
    run_ok(&["--quiet", "train", "--resume", p]);

    assert_eq!(timeless(metrics(&whole)), timeless(metrics(&parts)));
    assert_eq!(metrics(&whole).len(), 3);
    assert!(metrics(&whole)[0]["val_top1"].is_null(), "validation is every 2 epochs");
    for f in ["last.safetensors", "best.safetensors"] {
        assert_eq!(tensors(&whole.join(f)), tensors(&parts.join(f)), "{f} differs");
    }
    let eval = |d: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("images_per_sec");
        v
    };
    assert_eq!(eval(&whole), eval(&parts));
    // TensorBoard: every epoch once, despite two interruptions, with metrics.jsonl's numbers.
    let scalars = common::read_tensorboard(&parts.join("tb"));
    let lines = metrics(&whole);
    let loss: Vec<(i64, f64)> = serde_json::from_value(scalars["train/train_loss"].clone()).unwrap();
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    for (i, (_, v)) in loss.iter().enumerate() {
        let want = lines[i]["train_loss"].as_f64().unwrap();
        assert!((v - want).abs() <= 1e-6 * want.abs(), "epoch {}: {v} vs {want}", i + 1);
    }
    let val: Vec<(i64, f64)> = serde_json::from_value(scalars["train/val_top1"].clone()).unwrap();
    assert_eq!(val.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 3]);
    assert!(parts.join("confusion.svg").is_file());

    // Momentum buffers are part of the checkpoint; eval and predict read only the network.
    assert!(tensors(&whole.join("last.safetensors")).keys().any(|k| k.starts_with("optimizer.momentum.")));
    let weights = cnas::weights::read(&whole.join("last.safetensors")).unwrap();
    assert!(weights.iter().all(|(n, _)| !n.starts_with("optimizer.")));
}

#[test]
fn amp_runs_on_the_cpu_and_user_mistakes_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_arg();
    let out = dir.path().join("amp");
    let o = out.to_str().unwrap();
    let tiny = [
        "--init-channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-images",
        "32",
        "--max-eval-images",
        "32",
    ];
    let mut args = vec!["--quiet", "train", "--arch", "CNAS", "--data", &data, "-o", o, "--amp"];
    args.extend(tiny);
    run_ok(&args);
    let line = &metrics(&out)[0];
    assert!(line["train_loss"].as_f64().unwrap().is_finite());

    // Occupied run directory, nothing to resume, impossible options.
    let mut again = vec!["train", "--arch", "CNAS", "--data", &data, "-o", o];
    again.extend(tiny);
    run_user_error(&again, "--resume");
    let missing = dir.path().join("nothing");
    run_user_error(&["train", "--resume", missing.to_str().unwrap()], "no training run to resume");
    let fresh = dir.path().join("fresh");
    let f = fresh.to_str().unwrap();
    run_user_error(&["train", "--arch", "CNAS", "--data", &data, "-o", f, "--lr=-1"], "--lr");
    run_user_error(
        &["train", "--arch", "CNAS", "--data", &data, "-o", f, "--epochs", "2", "--warmup-epochs", "2"],
        "--warmup-epochs",
    );
    run_user_error(&["train", "--arch", "NOPE", "--data", &data, "-o", f], "NOPE");

    // eval: a missing file, a search checkpoint, a network that does not fit the weights.
    let absent = dir.path().join("absent.safetensors");
    run_user_error(&["eval", "--weights", absent.to_str().unwrap(), "--data", &data], "absent.safetensors");
    let supernet = dir.path().join("supernet.safetensors");
    let meta = BTreeMap::from([("format".to_string(), "cnas-supernet".to_string())]);
    cnas::weights::save_tensors(
        &[("x".to_string(), tch::Tensor::zeros([2], tch::kind::FLOAT_CPU))],
        &supernet,
        meta,
    )
    .unwrap();
    run_user_error(&["eval", "--weights", supernet.to_str().unwrap(), "--data", &data], "search supernet");
    let best = out.join("best.safetensors");
    run_user_error(
        &["eval", "--weights", best.to_str().unwrap(), "--data", &data, "--init-channels", "8"],
        "weights do not fit this network",
    );
}

#[test]
fn imagenet_style_folders_train_with_label_smoothing_and_a_linear_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folders");
    for (split, count) in [("train", 6u32), ("val", 2)] {
        for (class, colour) in [("ant", [200u8, 30, 30]), ("bee", [30, 30, 200])] {
            let folder = root.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count {
                let img = image::RgbImage::from_fn(72, 80, |x, y| {
                    image::Rgb([colour[0], colour[1].wrapping_add((x * i + y) as u8), colour[2]])
                });
                img.save_with_format(folder.join(format!("{i}.JPEG")), image::ImageFormat::Png).unwrap();
            }
        }
    }
    let out = dir.path().join("run");
    let (r, o) = (root.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "--quiet",
        "train",
        "--arch",
        "CNAS",
        "--dataset",
        "imagenet",
        "--data",
        r,
        "-o",
        o,
        "--image-size",
        "64",
        "--init-channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--auxiliary-weight",
        "0",
        "--warmup-epochs",
        "2",
        "--label-smooth",
        "0.1",
    ];
    run_ok(&args);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["data"]["dataset"], "imagenet");
    assert_eq!(config["network"]["num_classes"], 2);
    assert_eq!(config["options"]["scheduler"], "linear");
    assert_eq!(config["options"]["label_smooth"], 0.1);
    // ImageNet's released recipe: no weight decay on biases.
    assert_eq!(config["options"]["no_bias_decay"], true);
    let lines = metrics(&out);
    // With the 1-based epoch e of the released schedulers: warm-up lr·e/2 at e = 1, the decay
    // from lr at e = 2, down to 0 at the last epoch; drop-path 0.2·e/3.
    let lr: Vec<f64> = lines.iter().map(|l| l["lr"].as_f64().unwrap()).collect();
    assert_eq!(lr, [0.025, 0.05, 0.0]);
    for (i, l) in lines.iter().enumerate() {
        let p = l["drop_path_prob"].as_f64().unwrap();
        assert!((p - 0.2 * (i + 1) as f64 / 3.0).abs() < 1e-12, "epoch {}: {p}", i + 1);
        // 12 training images in batches of 4.
        assert_eq!((l["steps"].as_u64(), l["train_images"].as_u64()), (Some(3), Some(12)), "{l}");
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["class_names"], serde_json::json!(["ant", "bee"]));
    assert_eq!(eval["images"], 4);

    // A real training run makes a report with its curves, its cells and its confusion matrix.
    run_ok(&["--quiet", "report", o]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Confusion matrix"), "no confusion matrix in the report");
    assert!(html.matches("<svg").count() >= 8, "expected curves, two cells and a confusion matrix");
    assert!(out.join("confusion.svg").is_file());

    // --bias-decay turns ImageNet's default --no-bias-decay off; the last of the two wins.
    for (flags, want) in [(&["--bias-decay"][..], false), (&["--bias-decay", "--no-bias-decay"][..], true)] {
        let d = dir.path().join("decay");
        let mut a = vec!["--quiet", "train", "--arch", "CNAS", "--dataset", "imagenet", "--data", r];
        a.extend(["-o", d.to_str().unwrap(), "--force", "--image-size", "64", "--auxiliary-weight", "0"]);
        a.extend(["--init-channels", "4", "--layers", "3", "--batch-size", "4", "--stop-after-epochs", "0"]);
        a.extend(flags);
        run_ok(&a);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["options"]["no_bias_decay"], want, "{flags:?}");
    }

    // The auxiliary head cannot run on 64-pixel ImageNet inputs: said before training starts.
    let aux = dir.path().join("aux");
    run_user_error(
        &[
            "train",
            "--arch",
            "CNAS",
            "--dataset",
            "imagenet",
            "--data",
            r,
            "-o",
            aux.to_str().unwrap(),
            "--image-size",
            "64",
            "--init-channels",
            "4",
            "--layers",
            "3",
        ],
        "auxiliary head",
    );
}
