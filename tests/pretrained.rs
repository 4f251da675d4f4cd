//! Pretrained weights: `cnas download pretrained` against a local HTTP server (127.0.0.1,
//! ephemeral port) serving a file laid out like the published CNAS ImageNet weights (PyTorch's
//! ImageNet network of the CNAS cell, 48 channels × 14 cells, auxiliary head, a plain
//! `torch.save(state_dict)` in the pre-1.6 format the CNAS code's PyTorch 1.5 wrote), resumed
//! after a cut, checked by the SHA-256 prefix in its name; then `cnas predict` with it matches
//! PyTorch's logits. Also: legacy-format files read exactly like zip ones.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tch::Tensor;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `body` at `/models/NAME`; with `cut_first`, the first answer announces the whole
/// length, sends a third and hangs up. Records each request's Range header ("" when none).
fn serve(name: &str, body: Vec<u8>, cut_first: bool, requests: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/models/{name}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ranges);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answered = 0;
        while answered < requests && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            answered += 1;
            let _ = stream.set_nonblocking(false);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = v.trim().to_string();
                }
            }
            seen.lock().unwrap().push(range.clone());
            let start: usize =
                range.strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0);
            let (head, data) = if cut_first && answered == 1 {
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                (head, &body[..body.len() / 3])
            } else if start > 0 {
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    body.len() - 1,
                    body.len()
                );
                (head, &body[start..])
            } else {
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                (head, &body[..])
            };
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(data));
            let _ = stream.flush();
            if cut_first && answered == 1 {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            } else {
                let _ = reader.read(&mut [0u8; 16]);
            }
        }
    });
    (url, ranges)
}

fn cnas(args: &[&str]) -> Output {
    common::cnas().args(["--device", "cpu", "--quiet"]).args(args).output().expect("run cnas")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn published_layout_downloads_resumes_verifies_and_predicts_like_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let genotype = dir.path().join("cnas.json");
    let cnas_genotype = cnas::space::published("CNAS").unwrap();
    std::fs::write(&genotype, serde_json::to_string(&cnas_genotype.to_json()).unwrap()).unwrap();
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
    let (url, ranges) = serve(&name, body.clone(), true, 2);
    let data = dir.path().join("data");
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", &url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(entries(&data), [format!("{name}.part")]);
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ranges.lock().unwrap().clone(), ["".to_string(), format!("bytes={}-", body.len() / 3)]);
    assert_eq!(entries(&data), [name.as_str()]);
    let weights = data.join(&name);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), weights.to_str().unwrap());
    assert_eq!(std::fs::read(&weights).unwrap(), body);
    // Already there and intact: no request (the server is done answering).
    let out = cnas(&["download", "pretrained", "--data", data.to_str().unwrap(), "--url", &url]);
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
    let (url, _) = serve(&format!("cnas-imagenet-{wrong}.pth"), body, false, 1);
    let out = cnas(&["download", "pretrained", "--data", dir.path().to_str().unwrap(), "--url", &url]);
    common::assert_user_error(&out, &format!("expected one starting with {wrong}"));
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/models/cnas-imagenet-602b7057.pth", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                line.clear();
            }
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let out = cnas(&["download", "pretrained", "--data", dir.path().to_str().unwrap(), "--url", &url]);
    common::assert_user_error(&out, "404");
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
