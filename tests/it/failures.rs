//! Failures end in one line and the documented exit code (README, "Exit codes"): 2 when the
//! command or its inputs must change, 3 when the environment failed (full disk, failed
//! download), 1 when cnas or the engine did (a network too large for the memory). Never a
//! panic, and the message says what is wrong.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use cnas::model::{Network, NetworkConfig, NetworkKind};
use cnas::supernet::{Supernet, SupernetConfig};
use tch::{nn, Device, Kind, Tensor};

use crate::common::http::{serve, Behaviour};
use crate::common::{self, cnas_quiet as cnas};

/// Exit code `code`, no panic, and exactly one line on stderr that contains `needle`.
pub(crate) fn assert_exit(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}, stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_network_too_large_for_the_memory_is_refused_in_one_line_with_exit_code_1() {
    // About 11 TiB of parameters: refused from the shapes alone, before anything is allocated.
    let huge = ["--arch", "CNAS", "--init-channels", "100000", "--layers", "2"];
    let wanted = "building the network (init channels 100000, 2 layers) needs about";
    assert_exit(&cnas(&[&["info"], &huge[..]].concat()), 1, wanted);
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (common::cifar10_arg(), dir.path().join("train"));
    assert_exit(&cnas(&[&["train", "--data", &data, "-o", s(&out)], &huge[..]].concat()), 1, wanted);
    let out = dir.path().join("search");
    let search = ["search", "--data", &data, "-o", s(&out), "--init-channels", "100000", "--layers", "3"];
    assert_exit(
        &cnas(&search),
        1,
        "building the supernet (init channels 100000, 3 layers, 4 nodes) needs about",
    );
}

/// A small CIFAR network saved as `cnas train` saves its weights (with its description).
fn small_network(path: &Path) -> NetworkConfig {
    let config = NetworkConfig {
        kind: NetworkKind::Cifar,
        genotype: cnas::space::published("CNAS").unwrap(),
        init_channels: 4,
        layers: 3,
        num_classes: 10,
        auxiliary: false,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = common::with_torch_rng(|| Network::new(&vs.root(), config.clone())).unwrap();
    let meta = BTreeMap::from([("network".to_string(), serde_json::to_string(&config).unwrap())]);
    cnas::weights::save(&vs, path, meta).unwrap();
    config
}

#[test]
fn predict_and_export_call_a_bare_supernet_state_dict_a_supernet() {
    let dir = tempfile::tempdir().unwrap();
    // A supernet's variables without cnas's metadata, as a plain state_dict of DARTS's or the
    // released CNAS code's search network would hold them.
    let primitives = cnas::space::Primitive::DARTS.to_vec();
    let config = SupernetConfig {
        primitives,
        init_channels: 4,
        layers: 3,
        nodes: 2,
        num_classes: 10,
        stem: Default::default(),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = common::with_torch_rng(|| Supernet::new(&vs.root(), config)).unwrap();
    let weights = dir.path().join("supernet_state_dict.safetensors");
    cnas::weights::save(&vs, &weights, BTreeMap::new()).unwrap();
    let png = dir.path().join("x.png");
    image::RgbImage::new(32, 32).save(&png).unwrap();
    let small = ["--arch", "CNAS", "--init-channels", "4", "--layers", "3"];
    let out = cnas(&[&["predict", "--weights", s(&weights)], &small[..], &[s(&png)]].concat());
    assert_exit(&out, 2, "is a search supernet");
    let out = cnas(&["export", "--weights", s(&weights), "-o", s(&dir.path().join("x.onnx"))]);
    assert_exit(&out, 2, "is a search supernet");
}

#[test]
fn predict_refuses_inputs_with_odd_maps_before_the_network_runs() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("net.safetensors");
    small_network(&weights);
    // Reductions at cells 1 and 2: 33 is odd at the first, 34 → 17 at the second, where the
    // factorized reduce's two halves would differ (PyTorch fails there too).
    for (h, w, needle) in [
        (33, 33, "33×33 inputs do not fit this CIFAR network: cell 1 halves an odd 33×33 map"),
        (32, 34, "32×34 inputs do not fit this CIFAR network: cell 2 halves an odd map with a side of 17"),
    ] {
        let npy = dir.path().join(format!("x{h}x{w}.npy"));
        Tensor::zeros([1, 3, h, w], (Kind::Float, Device::Cpu)).write_npy(&npy).unwrap();
        let out = cnas(&["predict", "--weights", s(&weights), s(&npy)]);
        assert_exit(&out, 2, needle);
        assert_exit(&out, 2, &format!("x{h}x{w}.npy#0"));
    }
    // Even sides run.
    let npy = dir.path().join("fine.npy");
    Tensor::zeros([1, 3, 32, 36], (Kind::Float, Device::Cpu)).write_npy(&npy).unwrap();
    common::ok(&cnas(&["predict", "--weights", s(&weights), s(&npy)]));
}

#[test]
fn the_imagenet_auxiliary_head_message_says_what_it_needs_and_what_it_gets() {
    let config = NetworkConfig::paper(NetworkKind::Imagenet, cnas::space::published("CNAS").unwrap());
    let text = config.check_input_size(64, true).unwrap_err().to_string();
    assert_eq!(
        text,
        "64×64 inputs do not fit this ImageNet network: the auxiliary head after cell 9 pools with a \
         5×5 window at stride 2 and needs a map 7 to 8 pixels wide there to get the 2×2 it classifies, \
         but cell 9 gives a 2×2 map (use the family's usual input size or --auxiliary-weight 0)"
    );
}

#[test]
fn a_cifar_file_that_is_a_folder_is_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&batches).unwrap();
    for name in cnas::data::cifar10::TRAIN_FILES {
        std::fs::write(batches.join(name), vec![0u8; cnas::data::cifar10::RECORD_BYTES]).unwrap();
    }
    std::fs::create_dir(batches.join("test_batch.bin")).unwrap();
    let err = cnas::data::cifar10::Cifar10::open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("test_batch.bin: is a folder, not a file"), "{text}");
    assert!(!text.contains("missing") && err.is_user_error(), "{text}");
}

#[test]
fn a_full_disk_and_failed_downloads_exit_with_3_a_read_only_place_with_2() {
    let draw = |out: &str| cnas(&["draw", "--arch", "CNAS", "--format", "svg", "-o", out]);
    if Path::new("/dev/full").exists() {
        assert_exit(&draw("/dev/full"), 3, "/dev/full: No space left on device");
        // Standard output on a full disk too (draw prints the path it wrote).
        let dir = tempfile::tempdir().unwrap();
        let out = common::cnas()
            .args(["draw", "--arch", "CNAS", "--format", "dot", "-o", s(&dir.path().join("x.dot"))])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_exit(&out, 3, "standard output: No space left on device");
    }
    // sysfs refuses new files, to root as well (EACCES, or EROFS where it is mounted read-only).
    if Path::new("/sys/kernel").is_dir() {
        let out = draw("/sys/kernel/cnas-test.svg");
        assert_exit(&out, 2, "/sys/kernel/cnas-test.svg");
    }

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let download = |what: &str, url: &str| cnas(&["download", what, "--data", s(&data), "--url", url]);
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = format!("http://127.0.0.1:{port}/cnas-imagenet-602b7057.pth");
    assert_exit(&download("pretrained", &closed), 3, &closed);
    // A body cut short.
    let server = serve("/cnas-imagenet-602b7057.pth", vec![7u8; 3000], Behaviour::CutOnceThenGood, 1);
    assert_exit(&download("pretrained", &server.url), 3, "download interrupted after");
    // An HTTP error status.
    let server = serve("/cifar-10-binary.tar.gz", Vec::new(), Behaviour::NotFound, 1);
    assert_exit(&download("cifar10", &server.url), 3, "the server answered HTTP 404");
    // A file that is not the published one.
    let server = serve("/cifar-10-binary.tar.gz", b"not the archive".to_vec(), Behaviour::Good, 1);
    assert_exit(&download("cifar10", &server.url), 3, "expected c32a1d4ab5d03f1284b67883e8d87530");
}
