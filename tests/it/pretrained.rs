//! Pretrained weights: `cnas download pretrained` against a local HTTP server (127.0.0.1,
//! ephemeral port) serving a file laid out like the published CNAS ImageNet weights (PyTorch's
//! ImageNet network of the CNAS cell, 48 channels × 14 cells, auxiliary head, a plain
//! `torch.save(state_dict)` in the pre-1.6 format the CNAS code's PyTorch 1.5 wrote), resumed
//! after a cut, checked by the SHA-256 prefix in its name; then `cnas predict` with it matches
//! PyTorch's logits. Also: legacy-format files read exactly like zip ones.
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::common::http::{serve, Behaviour};
use crate::common::{self, cnas_quiet as cnas, entries};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn published_layout_downloads_resumes_verifies_and_predicts_like_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let genotype = dir.path().join("cnas.json");
    let cnas_genotype = cnas::space::published("CNAS").unwrap();
    common::write_genotype(&genotype, &cnas_genotype);
    common::run_reference(
        "check_export.py",
        &[
            "pretrained",
            "--legacy",
            "--genotype",
            genotype.to_str().unwrap(),
            "--out",
            reference.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let body = std::fs::read(reference.join("weights.pth")).unwrap();
    let name = format!("cnas-imagenet-{}.pth", &sha256_hex(&body)[..8]);

    // Cut after a third, then resumed with a Range request.
    let server = serve(&format!("/models/{name}"), body.clone(), Behaviour::CutOnceThenGood, 2);
    let url = &server.url;
    let data = dir.path().join("data");
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(entries(&data), [format!("{name}.part")]);
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.ranges(), ["".to_string(), format!("bytes={}-", body.len() / 3)]);
    assert_eq!(entries(&data), [name.as_str()]);
    let weights = data.join(&name);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), weights.to_str().unwrap());
    assert_eq!(std::fs::read(&weights).unwrap(), body);
    // Already there and intact: no request (the server is done answering).
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let input = reference.join("input.npy");
    let out = cnas(&[
        "predict",
        "--arch",
        "CNAS",
        "--dataset",
        "imagenet",
        "--weights",
        weights.to_str().unwrap(),
        "--json",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prediction: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<f32> =
        prediction["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let theirs = &Tensor::read_safetensors(reference.join("logits.safetensors")).unwrap()[0].1;
    let ours = Tensor::from_slice(&ours).view([1, 1000]);
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let d = (&ours - theirs).abs().max().double_value(&[]) / scale;
    eprintln!("CNAS ImageNet 48×14 at 224 px, published layout: max relative |diff| {d:.3e}");
    assert!(d <= 1e-4, "predict's logits differ from PyTorch's by {d:e}");
}

#[test]
fn a_file_whose_hash_does_not_match_its_name_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"PK\x03\x04 not the weights you asked for".to_vec();
    let wrong = if sha256_hex(&body).starts_with("00") { "11111111" } else { "00000000" };
    let server = serve(&format!("/models/cnas-imagenet-{wrong}.pth"), body, Behaviour::Good, 1);
    let url = &server.url;
    let out = cnas(&["download", "pretrained", "--data", dir.path().to_str().unwrap(), "--url", url]);
    crate::failures::assert_exit(&out, 3, &format!("expected one starting with {wrong}"));
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve("/models/cnas-imagenet-602b7057.pth", Vec::new(), Behaviour::NotFound, 1);
    let url = &server.url;
    let out = cnas(&["download", "pretrained", "--data", dir.path().to_str().unwrap(), "--url", url]);
    crate::failures::assert_exit(&out, 3, "404");
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

#[test]
fn legacy_torch_files_read_like_zip_ones() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "check_export.py",
        &["legacy".to_string(), "--out".into(), dir.path().to_str().unwrap().into()],
    );
    let zip = cnas::weights::read(&dir.path().join("zip.pth")).unwrap();
    let legacy = cnas::weights::read(&dir.path().join("legacy.pth")).unwrap();
    let checkpoint = cnas::weights::read(&dir.path().join("checkpoint_legacy.pth")).unwrap();
    let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&zip), ["base", "bn.num_batches_tracked", "conv.weight", "double", "scalar"]);
    assert_eq!(names(&legacy), [names(&zip), vec!["view".to_string()]].concat());
    let prefixed: Vec<String> = names(&legacy).iter().map(|n| format!("module.{n}")).collect();
    assert_eq!(names(&checkpoint), prefixed);
    for ((name, a), ((_, b), (_, c))) in zip.iter().zip(legacy.iter().zip(&checkpoint)) {
        assert_eq!((a.size(), a.kind()), (b.size(), b.kind()), "{name}");
        assert!(a.equal(b) && a.equal(c), "{name} differs");
    }
    assert!(legacy[5].1.equal(&checkpoint[5].1));
    let by_name: std::collections::HashMap<_, _> = legacy.into_iter().collect();
    assert_eq!(by_name["view"].size(), [3, 3]);
    assert!(by_name["view"].equal(&by_name["base"].narrow(0, 1, 3).slice(1, 0, None, 2)));
    assert_eq!(by_name["bn.num_batches_tracked"].int64_value(&[]), 7);
}
