//! Search on your own data: a small folder of real CIFAR-10 images written as JPEG files at 64
//! and 128 px, searched through every stage of the op curriculum with tiny settings, and the
//! genotype retrained with `cnas train` on the same folder. 64 px keeps the CIFAR stem; 128 px
//! gets the ImageNet-style stem (two halvings: the first cell sees 32 px).
use std::path::Path;
use std::process::Output;

use cnas::data::{read_records, CIFAR10_CLASSES};
use image::imageops::FilterType;
use image::{ImageFormat, RgbImage};

use crate::common::{self, ok};

/// Classes (CIFAR-10 labels) in the folder, and images per class in train/ and val/.
const CLASSES: [u8; 3] = [0, 1, 2];
const TRAIN_PER_CLASS: usize = 40;
const VAL_PER_CLASS: usize = 10;

/// `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg`: the first images of each class in
/// CIFAR-10's first training batch, upscaled to `side` px.
fn write_folder(root: &Path, side: u32) {
    let batch = common::cifar10_dir().join("cifar-10-batches-bin/data_batch_1.bin");
    let (images, labels) = read_records(&batch).unwrap();
    let mut seen = [0usize; 10];
    for (i, &label) in labels.iter().enumerate() {
        if !CLASSES.contains(&label) || seen[label as usize] >= TRAIN_PER_CLASS + VAL_PER_CLASS {
            continue;
        }
        let k = seen[label as usize];
        seen[label as usize] += 1;
        let planes = &images[i * 3072..(i + 1) * 3072];
        let img = RgbImage::from_fn(32, 32, |x, y| {
            let p = (y * 32 + x) as usize;
            image::Rgb([planes[p], planes[1024 + p], planes[2048 + p]])
        });
        let img = image::imageops::resize(&img, side, side, FilterType::Triangle);
        let split = if k < TRAIN_PER_CLASS { "train" } else { "val" };
        let dir = root.join(split).join(CIFAR10_CLASSES[label as usize]);
        std::fs::create_dir_all(&dir).unwrap();
        img.save_with_format(dir.join(format!("{i:05}.jpg")), ImageFormat::Jpeg).unwrap();
    }
    assert!(CLASSES.iter().all(|&c| seen[c as usize] == TRAIN_PER_CLASS + VAL_PER_CLASS));
}

/// Every stage of the op curriculum (8), one search epoch each (weights, then controller), one
/// candidate on 8 held-out images: seconds per stage in a debug build.
const TINY: [&str; 30] = [
    "--preset",
    "quick",
    "--warmup-epochs",
    "0",
    "--epochs",
    "1",
    "--nodes",
    "2",
    "--init-channels",
    "4",
    "--layers",
    "3",
    "--max-images",
    "16",
    "--batch-size",
    "8",
    "--controller-steps",
    "1",
    "--derive-rounds",
    "1",
    "--derive-samples",
    "1",
    "--derive-uniform",
    "0",
    "--derive-images",
    "8",
    "--workers",
    "2",
    "--seed",
    "5",
];

fn cnas(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet"]).args(args);
    for (flag, path) in paths {
        // An empty flag: a positional argument.
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        cmd.arg(path);
    }
    cmd.output().expect("run cnas")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Searches `data` at `side` px (stopping after 4 epochs and resuming when `resume`), checks
/// that every stage ran with `stem`, and returns the search's log.
fn search_every_stage(
    data: &Path,
    run: &Path,
    side: &str,
    dataset: &str,
    stem: serde_json::Value,
    resume: bool,
) -> String {
    let mut args = vec!["search", "--dataset", dataset, "--image-size", side];
    args.extend(TINY);
    if resume {
        args.extend(["--stop-after-epochs", "4"]);
    }
    let first = cnas(&args, &[("--data", data), ("-o", run)]);
    let mut log = String::from_utf8_lossy(&first.stderr).into_owned();
    ok(&first);
    if resume {
        assert!(!run.join("genotype.json").exists(), "the search did not stop");
        let rest = cnas(&["search"], &[("--resume", run)]);
        log.push_str(&String::from_utf8_lossy(&rest.stderr));
        ok(&rest);
    }

    let metrics = common::read_metrics(run);
    for stage in 1..=8 {
        assert!(run.join(format!("stage-{stage}/supernet.safetensors")).is_file(), "stage {stage}");
        let phases: Vec<&str> =
            metrics.iter().filter(|m| m["stage"] == stage).map(|m| m["phase"].as_str().unwrap()).collect();
        assert_eq!(phases, ["weights", "controller", "derive"], "stage {stage}");
    }
    assert_eq!(metrics.len(), 24);
    assert!(run.join("genotype.json").is_file());

    let config = read_json(&run.join("config.json"));
    assert_eq!(config["supernet"]["stem"], stem, "{config}");
    assert_eq!(config["supernet"]["num_classes"], 3);
    assert_eq!(config["data"]["image_size"], side.parse::<u64>().unwrap());
    // The stage's supernet holds the stem's variables under the expected names.
    let names: Vec<String> = cnas::weights::read(&run.join("stage-8/supernet.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let has = |n: &str| names.iter().any(|m| m == n);
    if stem["kind"] == "cifar" {
        assert!(has("stem.0.weight") && !has("stem0.0.weight"), "{names:?}");
    } else {
        assert!(has("stem0.0.weight") && has("stem0.3.weight") && has("stem1.1.weight"), "{names:?}");
        assert!(!has("stem.0.weight"), "{names:?}");
    }
    // The split is stated: 120 training images, 40% train weights.
    assert!(log.contains(&format!("3 classes, {side}×{side} images")), "{log}");
    assert!(
        log.contains("120 training images by --train-portion 0.4 (seed 5): 48 train weights, 72 held out"),
        "{log}"
    );
    log
}

/// `cnas train` of the search's genotype on the same folder for one epoch.
fn retrain(data: &Path, run: &Path, out: &Path, side: &str) {
    let genotype = run.join("genotype.json");
    let args = [
        "train",
        "--dataset",
        "folder",
        "--image-size",
        side,
        "--epochs",
        "1",
        "--init-channels",
        "8",
        "--layers",
        "3",
        "--batch-size",
        "8",
        "--auxiliary-weight",
        "0",
        "--max-images",
        "24",
        "--workers",
        "2",
    ];
    ok(&cnas(&args, &[("--arch", &genotype), ("--data", data), ("-o", out)]));
    let eval = read_json(&out.join("eval.json"));
    assert_eq!(eval["class_names"], serde_json::json!(["airplane", "automobile", "bird"]));
    assert_eq!(eval["images"], 30, "every val image is scored");
}

#[test]
fn a_64_px_folder_searches_with_the_cifar_stem_and_retrains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, 64);
    let run = tmp.path().join("run");
    // train/ and val/ (val/ unused by the search); `imagenet` is the data set's older name.
    let log =
        search_every_stage(&data, &run, "64", "imagenet", serde_json::json!({ "kind": "cifar" }), false);
    assert!(log.contains("the CIFAR stem") && log.contains("the first cell sees 64×64"), "{log}");
    retrain(&data, &run, &tmp.path().join("train"), "64");
}

#[test]
fn a_128_px_folder_searches_with_the_imagenet_style_stem_resumes_and_retrains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, 128);
    let run = tmp.path().join("run");
    // The class folders alone (torchvision's ImageFolder layout): the search's own split.
    let stem = serde_json::json!({ "kind": "imagenet", "halvings": 2 });
    let log = search_every_stage(&data.join("train"), &run, "128", "folder", stem, true);
    assert!(log.contains("ImageNet-style stem of 2 stride-2 convolutions"), "{log}");
    assert!(log.contains("the first cell sees 32×32"), "{log}");

    // Every reader of the run builds the same supernet: cnas score in the last stage's.
    let genotype = run.join("genotype.json");
    let out = cnas(&["score", "--images", "8", "--json"], &[("", &run), ("--arch", &genotype)]);
    let scores: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(scores[0]["images"], 8, "{scores}");

    retrain(&data, &run, &tmp.path().join("train"), "128");
}

#[test]
fn own_data_mistakes_are_one_line_user_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, 32);
    let genotype = tmp.path().join("g.json");
    common::write_genotype(&genotype, &cnas::space::published("CNAS").unwrap());
    // Training needs a validation set: the class folders alone have none.
    let out = cnas(
        &[
            "train",
            "--dataset",
            "folder",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--auxiliary-weight",
            "0",
            "--batch-size",
            "8",
        ],
        &[("--arch", &genotype), ("--data", &data.join("train")), ("-o", &tmp.path().join("t"))],
    );
    common::assert_user_error(&out, "val");
    // A side whose maps turn odd at a reduction is refused before anything runs, with sides
    // that fit.
    let mut args = vec!["search", "--dataset", "folder", "--image-size", "100"];
    args.extend(TINY);
    let out = cnas(&args, &[("--data", &data), ("-o", &tmp.path().join("r2"))]);
    common::assert_user_error(&out, "sides that fit: 96, 111");
    assert!(!tmp.path().join("r2/config.json").exists());
    // A search needs two classes.
    let one = tmp.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::rename(data.join("train/bird"), one.join("bird")).unwrap();
    let mut args = vec!["search", "--dataset", "folder", "--image-size", "32"];
    args.extend(TINY);
    let out = cnas(&args, &[("--data", &one), ("-o", &tmp.path().join("r1"))]);
    common::assert_user_error(&out, "at least 2");
}
