//! The `cnas` binary as a user runs it: info, predict on every input kind with PyTorch
//! weights, and one clear line with exit code 2 for every kind of bad input.
use std::path::{Path, PathBuf};
use std::process::Output;

use cnas::model::{Network, NetworkConfig, NetworkKind};
use tch::{nn, Device, Kind, Tensor};

use crate::common;

fn run(args: &[&str]) -> Output {
    common::cnas().args(["--device", "cpu"]).args(args).output().expect("run cnas")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn info_reports_the_published_cnas_size() {
    let out = run(&["info", "--arch", "CNAS"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("params: 3.70 M"), "{text}");
    let out = run(&["info", "--arch", "cnas", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 3.7M in the paper (36 channels, 20 cells, CIFAR-10), counted without the auxiliary head.
    assert_eq!(json["params"], 3_695_374);
    assert_eq!(json["init_channels"], 36);
    assert_eq!(json["layers"], 20);
    let genotype = cnas::space::Genotype::from_json_value(&json["genotype"]).unwrap();
    assert_eq!(genotype, cnas::space::published("CNAS").unwrap());
}

#[test]
fn info_reads_genotype_files_in_json_and_darts_text() {
    let dir = tempfile::tempdir().unwrap();
    let genotype = cnas::space::published("DARTS_V2").unwrap();
    let json = dir.path().join("g.json");
    common::write(&json, &genotype.to_json_pretty());
    let text = dir.path().join("g.txt");
    common::write(&text, &genotype.to_darts_string());
    let a = run(&["info", "--arch", json.to_str().unwrap(), "--json", "--dataset", "imagenet"]);
    let b = run(&["info", "--arch", text.to_str().unwrap(), "--json", "--dataset", "imagenet"]);
    let a: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(a["params"], 4_718_752); // DARTS V2 on ImageNet: 4.7M
    assert_eq!(a["params"], b["params"]);
    assert_eq!(a["madds"], b["madds"]);
}

/// PyTorch weights for a small CNAS CIFAR network (8 channels, 5 cells, auxiliary head).
fn reference_weights(dir: &Path) -> PathBuf {
    let genotype = dir.join("cnas.json");
    common::write(&genotype, &cnas::space::published("CNAS").unwrap().to_json_pretty());
    let out = dir.join("ref");
    let args: Vec<String> = [
        "--genotype",
        genotype.to_str().unwrap(),
        "--dataset",
        "cifar10",
        "--channels",
        "8",
        "--layers",
        "5",
        "--auxiliary",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    common::run_reference("make_reference.py", &args);
    out
}

const SMALL: [&str; 6] = ["--arch", "CNAS", "--init-channels", "8", "--layers", "5"];

#[test]
fn predict_every_input_kind_and_match_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_weights(dir.path());
    let weights = reference.join("state_dict.pth");

    // Three real CIFAR-10 test records.
    let test_batch =
        std::fs::read(common::cifar10_dir().join("cifar-10-batches-bin/test_batch.bin")).unwrap();
    let bin = dir.path().join("three.bin");
    std::fs::write(&bin, &test_batch[..3 * 3073]).unwrap();
    // The first record as a PNG.
    let rgb: Vec<u8> = (0..1024)
        .flat_map(|i| [test_batch[1 + i], test_batch[1 + 1024 + i], test_batch[1 + 2048 + i]])
        .collect();
    let png = dir.path().join("first.png");
    image::RgbImage::from_raw(32, 32, rgb).unwrap().save(&png).unwrap();
    // Two normalised random images as .npy.
    let npy = dir.path().join("two.npy");
    let arrays = common::with_torch_rng(|| Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
    arrays.write_npy(&npy).unwrap();

    let mut args = vec!["predict", "--json", "--weights", weights.to_str().unwrap()];
    args.extend(SMALL);
    args.extend([bin.to_str().unwrap(), png.to_str().unwrap(), npy.to_str().unwrap()]);
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["label"], 3); // the first test image is a cat
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 5);
    let logits = |i: usize| -> Tensor {
        let v: Vec<f32> =
            lines[i]["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        Tensor::from_slice(&v)
    };
    // The PNG holds the same pixels as record 0.
    assert!(logits(0).allclose(&logits(3), 1e-5, 1e-5, false));

    // The same network computed here from the same weights.
    let config = NetworkConfig {
        kind: NetworkKind::Cifar,
        genotype: cnas::space::published("CNAS").unwrap(),
        init_channels: 8,
        layers: 5,
        num_classes: 10,
        auxiliary: true,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = common::with_torch_rng(|| Network::new(&vs.root(), config)).unwrap();
    cnas::weights::load_into(&vs, &cnas::weights::read(&weights).unwrap()).unwrap();
    let direct = tch::no_grad(|| net.forward_t(&arrays, false).logits);
    assert!(direct.get(1).allclose(&logits(5), 1e-4, 1e-4, false));
    let mean = Tensor::from_slice(&cnas::data::CIFAR10_MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&cnas::data::CIFAR10_STD).view([1, 3, 1, 1]);
    let pixels = Tensor::from_slice(&test_batch[1..3073]).view([1, 3, 32, 32]).to_kind(Kind::Float) / 255.0;
    let direct = tch::no_grad(|| net.forward_t(&((pixels - mean) / std), false).logits);
    assert!(direct.get(0).allclose(&logits(0), 1e-4, 1e-4, false));
    let probs: f64 = lines[1]["top"].as_array().unwrap().iter().map(|c| c["prob"].as_f64().unwrap()).sum();
    assert!(probs > 0.0 && probs <= 1.0 + 1e-6);

    // Text output names CIFAR-10 classes and the true label.
    let mut args = vec!["predict", "--top", "3", "--weights", weights.to_str().unwrap()];
    args.extend(SMALL);
    args.push(bin.to_str().unwrap());
    let text = stdout(&run(&args));
    assert!(text.contains("#0 (label: cat)"), "{text}");
    assert_eq!(text.lines().count(), 3 * 4);
}

#[test]
fn bad_inputs_give_one_clear_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_weights(dir.path());
    let weights = reference.join("state_dict.pth");
    let w = weights.to_str().unwrap();

    let bad_json = dir.path().join("bad.json");
    common::write(&bad_json, "{\"normal\": {\"edges\": [[\"sep_conv_3x3\", 0, 2]");
    common::assert_user_error(&run(&["info", "--arch", bad_json.to_str().unwrap()]), "invalid genotype JSON");

    let bad_op = dir.path().join("bad_op.json");
    let text =
        cnas::space::published("CNAS").unwrap().to_json_pretty().replacen("dil_conv_3x3", "dil_conv_9x9", 1);
    common::write(&bad_op, &text);
    common::assert_user_error(&run(&["info", "--arch", bad_op.to_str().unwrap()]), "dil_conv_9x9");

    common::assert_user_error(&run(&["info", "--arch", "NoSuchNet"]), "unknown architecture 'NoSuchNet'");
    common::assert_user_error(&run(&["info", "--init-channels", "7"]), "init channels");

    let png = dir.path().join("x.png");
    image::RgbImage::new(32, 32).save(&png).unwrap();
    let p = png.to_str().unwrap();

    // Weights for another shape: names the tensors that do not fit.
    let out =
        run(&["predict", "--weights", w, "--arch", "CNAS", "--init-channels", "12", "--layers", "5", p]);
    common::assert_user_error(&out, "wrong shape");
    let out =
        run(&["predict", "--weights", w, "--arch", "DARTS_V2", "--init-channels", "8", "--layers", "5", p]);
    common::assert_user_error(&out, "weights do not fit this network");

    let truncated = dir.path().join("truncated.pth");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut args = vec!["predict", "--weights", truncated.to_str().unwrap()];
    args.extend(SMALL);
    args.push(p);
    common::assert_user_error(&run(&args), "truncated.pth");

    let not_image = dir.path().join("notes.png");
    common::write(&not_image, "this is not an image");
    let mut args = vec!["predict", "--weights", w];
    args.extend(SMALL);
    args.push(not_image.to_str().unwrap());
    common::assert_user_error(&run(&args), "not a readable PNG or JPEG image");

    let bad_bin = dir.path().join("short.bin");
    std::fs::write(&bad_bin, vec![0u8; 3000]).unwrap();
    let mut args = vec!["predict", "--weights", w];
    args.extend(SMALL);
    args.push(bad_bin.to_str().unwrap());
    common::assert_user_error(&run(&args), "short.bin");

    let mut args = vec!["predict", "--weights", "/nonexistent/w.pth"];
    args.extend(SMALL);
    args.push(p);
    common::assert_user_error(&run(&args), "/nonexistent/w.pth");

    if tch::Cuda::device_count() == 0 {
        let out = common::cnas().args(["--device", "cuda:0", "info"]).output().unwrap();
        common::assert_user_error(&out, "no CUDA device");
    }
}

#[test]
fn predict_imagenet_jpeg_with_the_evaluation_transform() {
    let dir = tempfile::tempdir().unwrap();
    let genotype = dir.path().join("g.json");
    common::write(&genotype, &cnas::space::published("DARTS_V2").unwrap().to_json_pretty());
    let out = dir.path().join("ref");
    let args: Vec<String> = [
        "--genotype",
        genotype.to_str().unwrap(),
        "--dataset",
        "imagenet",
        "--channels",
        "8",
        "--layers",
        "3",
        "--classes",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    common::run_reference("make_reference.py", &args);

    // A wide JPEG and a grey PNG: resized (shorter side 256) and centre-cropped to 224.
    let jpeg = dir.path().join("wide.jpg");
    image::RgbImage::from_fn(300, 260, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
        .save(&jpeg)
        .unwrap();
    let grey = dir.path().join("grey.png");
    image::GrayImage::from_fn(230, 400, |x, _| image::Luma([(x % 256) as u8])).save(&grey).unwrap();
    let weights = out.join("state_dict.pth");
    let args = [
        "predict",
        "--json",
        "--dataset",
        "imagenet",
        "--arch",
        genotype.to_str().unwrap(),
        "--init-channels",
        "8",
        "--layers",
        "3",
        "--classes",
        "5",
        "--weights",
        weights.to_str().unwrap(),
        jpeg.to_str().unwrap(),
        grey.to_str().unwrap(),
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["logits"].as_array().unwrap().len(), 5);
        assert_eq!(line["top"][0]["name"].as_str().unwrap().split(' ').next(), Some("class"));
    }
}
