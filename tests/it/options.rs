//! Numeric options out of range: `cnas` refuses them before any work, with exit code 2 and one
//! error line naming the option; the library's option structs refuse them too (its callers and
//! resumed runs do not go through the command line). The full table of every option is the
//! binary's unit test `cli::args::tests`.
use std::process::Output;

use cnas::data::DatasetKind;
use cnas::search::SearchOptions;
use cnas::train::TrainOptions;

use crate::common::{self, assert_user_error_naming, cifar10_arg, cnas_quiet};

/// Exit code 2, no panic, and one error line that names `flag` (clap adds a usage hint below
/// its own errors).
fn refused_naming(out: &Output, flag: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "expected exit code 2, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {err}");
    assert!(errors[0].contains(flag), "expected '{flag}' in: {err}");
    errors[0].to_string()
}

#[test]
fn search_refuses_a_non_finite_or_negative_entropy_weight_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = cifar10_arg();
    for value in ["nan", "inf", "-inf", "-1"] {
        let weight = format!("--entropy-weight={value}");
        let args = ["search", "--preset", "quick", "--data", &data, "-o", run.to_str().unwrap(), &weight];
        let started = std::time::Instant::now();
        refused_naming(&cnas_quiet(&args), "--entropy-weight");
        assert!(started.elapsed().as_secs() < 30, "refused only after {:?}", started.elapsed());
        assert!(!run.exists(), "--entropy-weight {value}: the run directory was made");
    }
    // 0 (no entropy bonus) stays valid.
    let args = [
        "search",
        "--preset",
        "quick",
        "--data",
        &data,
        "-o",
        run.to_str().unwrap(),
        "--entropy-weight",
        "0",
    ];
    let out = cnas_quiet(&[&args[..], &["--stop-after-epochs", "0"]].concat());
    common::ok(&out);
}

#[test]
fn predict_refuses_top_0() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("x.png");
    image::RgbImage::new(32, 32).save(&png).unwrap();
    let weights = dir.path().join("w.pth"); // never read: the option is refused first
    let out =
        cnas_quiet(&["predict", "--weights", weights.to_str().unwrap(), "--top", "0", png.to_str().unwrap()]);
    refused_naming(&out, "--top");
    let out = cnas_quiet(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--batch-size",
        "0",
        png.to_str().unwrap(),
    ]);
    refused_naming(&out, "--batch-size");
}

#[test]
fn train_momentum_and_grad_clip_errors_name_the_wrong_option_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = cifar10_arg();
    // Small enough to end quickly should one of them be accepted.
    let small = ["--init-channels", "4", "--layers", "2", "--epochs", "1", "--max-images", "64"];
    let cases = [
        ("--grad-clip=0", "--grad-clip", "--momentum"),
        ("--grad-clip=nan", "--grad-clip", "--momentum"),
        ("--momentum=-1", "--momentum", "--grad-clip"),
        ("--momentum=1.5", "--momentum", "--grad-clip"),
        ("--momentum=inf", "--momentum", "--grad-clip"),
    ];
    for (arg, named, not_named) in cases {
        let mut args = vec!["train", "--arch", "CNAS", "--data", &data, "-o", out.to_str().unwrap(), arg];
        args.extend(small);
        let line = refused_naming(&cnas_quiet(&args), named);
        assert!(!line.contains(not_named), "{arg}: '{line}' also names {not_named}");
        assert!(!out.exists(), "{arg}: the run directory was made");
    }
    // What only the library sees (a resumed run's config.json, a library caller): one option
    // named per error.
    let paper = TrainOptions::paper(DatasetKind::Cifar10);
    let e = TrainOptions { grad_clip: 0.0, ..paper.clone() }.validate().unwrap_err();
    assert!(!e.to_string().contains("--momentum"), "{e}");
    assert_user_error_naming(e, "--grad-clip");
    let e = TrainOptions { momentum: -1.0, ..paper }.validate().unwrap_err();
    assert!(!e.to_string().contains("--grad-clip"), "{e}");
    assert_user_error_naming(e, "--momentum");
}

#[test]
fn library_options_refuse_non_finite_and_out_of_range_numbers() {
    let train = TrainOptions::paper(DatasetKind::Cifar10);
    type TrainField = fn(&mut TrainOptions, f64);
    let train_fields: [(&str, TrainField); 9] = [
        ("--lr", |o, v| o.lr = v),
        ("--lr-min", |o, v| o.lr_min = v),
        ("--momentum", |o, v| o.momentum = v),
        ("--weight-decay", |o, v| o.weight_decay = v),
        ("--gamma", |o, v| o.gamma = v),
        ("--label-smooth", |o, v| o.label_smooth = v),
        ("--auxiliary-weight", |o, v| o.auxiliary_weight = v),
        ("--drop-path-prob", |o, v| o.drop_path_prob = v),
        ("--grad-clip", |o, v| o.grad_clip = v),
    ];
    for (flag, set) in train_fields {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            let mut o = train.clone();
            set(&mut o, v);
            assert_user_error_naming(o.validate().unwrap_err(), flag);
        }
    }
    assert_user_error_naming(
        TrainOptions { momentum: 1.0, ..train.clone() }.validate().unwrap_err(),
        "--momentum",
    );
    for (flag, o) in [
        ("--eval-every", TrainOptions { eval_every: 0, ..train.clone() }),
        ("--step-size", TrainOptions { step_size: 0, ..train.clone() }),
        ("--max-eval-images", TrainOptions { max_eval_images: Some(0), ..train.clone() }),
    ] {
        assert_user_error_naming(o.validate().unwrap_err(), flag);
    }

    let search = SearchOptions::default();
    type SearchField = fn(&mut SearchOptions, f64);
    let search_fields: [(&str, SearchField); 11] = [
        ("--lr", |o, v| o.lr = v),
        ("--momentum", |o, v| o.momentum = v),
        ("--weight-decay", |o, v| o.weight_decay = v),
        ("--grad-clip", |o, v| o.grad_clip = Some(v)),
        ("--controller-lr", |o, v| o.controller_lr = v),
        ("--controller-weight-decay", |o, v| o.controller_weight_decay = v),
        ("--controller-grad-clip", |o, v| o.controller_grad_clip = Some(v)),
        ("--entropy-weight", |o, v| o.entropy_weight = v),
        ("--baseline-decay", |o, v| o.baseline_decay = v),
        ("--temperature", |o, v| o.temperature = Some(v)),
        ("--tanh-constant", |o, v| o.tanh_constant = Some(v)),
    ];
    for (flag, set) in search_fields {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            let mut o = search.clone();
            set(&mut o, v);
            assert_user_error_naming(o.validate().unwrap_err(), flag);
        }
    }
    for (flag, o) in [
        ("--nodes", SearchOptions { nodes: 0, ..search.clone() }),
        ("--controller-hidden", SearchOptions { controller_hidden: 0, ..search.clone() }),
        ("--derive-samples", SearchOptions { derive_samples: 0, ..search.clone() }),
        ("--derive-batch-size", SearchOptions { derive_batch_size: Some(1), ..search.clone() }),
    ] {
        assert_user_error_naming(o.validate().unwrap_err(), flag);
    }
    // 0 stays valid where it means "none".
    let zero = SearchOptions { entropy_weight: 0.0, weight_decay: 0.0, momentum: 0.0, ..search };
    zero.validate().unwrap();
    let zero = TrainOptions { auxiliary_weight: 0.0, drop_path_prob: 0.0, weight_decay: 0.0, ..train };
    zero.validate().unwrap();
}

#[test]
fn a_huge_dist_timeout_is_refused_not_a_panic() {
    for value in ["1e300h", "nan", "inf", "0"] {
        let out = cnas_quiet(&["--dist-timeout", value, "info"]);
        refused_naming(&out, "--dist-timeout");
    }
}
