//! `cnas export` checked with the tools its outputs are for: onnxruntime runs the ONNX graph on
//! real CIFAR-10 test images (batch 1 and 5) and PyTorch loads the `.pth` into its own
//! definition of the network (strict), both matching cnas's evaluation logits; plus the
//! safetensors round trip and one clear line (exit code 2) for every user mistake.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use cnas::export::{export, ExportFormat, ExportOptions};
use cnas::model::{Network, NetworkConfig, NetworkKind};
use cnas::space::{Cell, Edge, Genotype, Primitive};
use tch::{nn, Device, Kind, Tensor};

use crate::common;

/// Largest |a − b| over all logits.
const TOL: f64 = 1e-4;

struct Trained {
    config: NetworkConfig,
    vs: nn::VarStore,
    net: Network,
}

fn config(
    kind: NetworkKind,
    genotype: Genotype,
    channels: i64,
    layers: i64,
    auxiliary: bool,
) -> NetworkConfig {
    NetworkConfig { kind, genotype, init_channels: channels, layers, num_classes: 10, auxiliary }
}

/// A network with random weights and BatchNorm statistics far from the identity, so that
/// folding BatchNorm is really exercised. Built and randomised holding `common::torch_rng`, so
/// each test gets the values it seeded.
fn trained(config: NetworkConfig, seed: i64) -> Trained {
    let _rng = common::seed_torch(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), config.clone()).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if t.dim() != 1 {
                continue;
            }
            if name.ends_with("running_mean") || name.ends_with(".bias") {
                let _ = t.normal_(0.0, 0.1);
            } else {
                // BatchNorm's running_var and weight.
                let _ = t.uniform_(0.5, 1.5);
            }
        }
    });
    Trained { config, vs, net }
}

impl Trained {
    fn logits(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(x, false).logits)
    }

    /// cnas's own file, as a training checkpoint writes it: with optimizer state beside the
    /// network's tensors.
    fn save_checkpoint(&self, path: &Path) {
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        for (i, t) in self.vs.trainable_variables().iter().enumerate() {
            tensors.push((format!("optimizer.momentum_buffer.{i}"), t.ones_like()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let metadata = BTreeMap::from([
            ("format".to_string(), "cnas".to_string()),
            ("network".to_string(), serde_json::to_string(&self.config).unwrap()),
        ]);
        cnas::weights::save_tensors(&tensors, path, metadata).unwrap();
    }
}

/// The first `n` CIFAR-10 test images, normalised as for evaluation.
fn cifar_images(n: usize) -> Tensor {
    let file = common::cifar10_dir().join("cifar-10-batches-bin/test_batch.bin");
    let (images, _) = cnas::data::cifar10::read_records(&file).expect("the real CIFAR-10 test batch");
    let pixels = cnas::data::cifar10::IMAGE_BYTES;
    let mut out = vec![0f32; n * pixels];
    cnas::data::normalize::planar_u8(
        &images[..n * pixels],
        &cnas::data::CIFAR10_MEAN,
        &cnas::data::CIFAR10_STD,
        &mut out,
    );
    Tensor::from_slice(&out).view([n as i64, 3, 32, 32])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn options(format: ExportFormat) -> ExportOptions {
    ExportOptions {
        format: Some(format),
        network: config(NetworkKind::Cifar, cnas::space::published("CNAS").unwrap(), 36, 20, false),
        network_given: false,
        drop_auxiliary: false,
        keep_bn: false,
        image_size: None,
    }
}

fn write_input(dir: &Path, x: &Tensor) -> PathBuf {
    let path = dir.join("input.safetensors");
    Tensor::write_safetensors(&[("input", x)], &path).unwrap();
    path
}

/// Exports `model` to ONNX (BatchNorm folded, then kept) and checks onnxruntime's logits on
/// `x`, one image at a time and as one batch, against cnas's.
fn check_onnx(name: &str, model: &Trained, x: &Tensor, image_size: Option<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("trained.safetensors");
    model.save_checkpoint(&weights);
    let input = write_input(dir.path(), x);
    let ours = model.logits(x);
    for keep_bn in [false, true] {
        let onnx = dir.path().join(format!("net-{keep_bn}.onnx"));
        let mut opts = options(ExportFormat::Onnx);
        opts.keep_bn = keep_bn;
        opts.image_size = image_size;
        let exported = export(&weights, &onnx, &opts).unwrap();
        assert!(!exported.config.auxiliary);
        let out = dir.path().join(format!("ort-{keep_bn}.safetensors"));
        let report = common::run_reference(
            "check_export.py",
            &["onnx", "--model", p(&onnx), "--input", p(&input), "--out", p(&out)].map(String::from),
        );
        let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        let ops: Vec<&str> = report["ops"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(ops.contains(&"BatchNormalization"), keep_bn, "{name}: {ops:?}");
        assert_eq!(report["opset"], serde_json::json!([17]));
        let side = image_size.unwrap_or(model.config.kind.default_image_size());
        assert_eq!(report["input"], serde_json::json!(["input", ["batch", 3, side, side]]));
        assert_eq!(report["output"], "logits");
        let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
        for key in ["logits_batch1", "logits_batchN"] {
            let d = max_abs_diff(&theirs[key], &ours);
            eprintln!("{name} (keep_bn {keep_bn}): onnxruntime {key}: max |diff| {d:.3e}");
            assert!(d <= TOL, "{name} (keep_bn {keep_bn}): {key} differs by {d:e}");
        }
        assert!(ours.abs().max().double_value(&[]) > 1e-3, "{name}: degenerate logits");
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A cell with a node whose both edges are `none` (all zeros, still concatenated) and a node
/// that sums a `none` edge and a skip.
fn zero_node_genotype() -> Genotype {
    use Primitive as P;
    let cell = Cell {
        edges: vec![
            Edge { op: P::None, from: 0, to: 2 },
            Edge { op: P::None, from: 1, to: 2 },
            Edge { op: P::SkipConnect, from: 0, to: 3 },
            Edge { op: P::None, from: 2, to: 3 },
            Edge { op: P::AvgPool3x3, from: 1, to: 4 },
            Edge { op: P::SkipConnect, from: 3, to: 4 },
        ],
        concat: vec![2, 3, 4],
    };
    Genotype { normal: cell.clone(), reduce: cell }
}

#[test]
fn onnx_cnas_and_darts_v2_cifar_match_onnxruntime_on_cifar_images() {
    let x = cifar_images(5);
    for (arch, seed) in [("CNAS", 1), ("DARTS_V2", 2)] {
        let genotype = cnas::space::published(arch).unwrap();
        let model = trained(config(NetworkKind::Cifar, genotype, 8, 5, true), seed);
        check_onnx(arch, &model, &x, None);
    }
}

#[test]
fn onnx_imagenet_network_at_64_pixels() {
    let x = cifar_images(5).upsample_bilinear2d([64, 64], false, None, None);
    let genotype = cnas::space::published("CNAS").unwrap();
    let mut cfg = config(NetworkKind::Imagenet, genotype, 8, 4, false);
    cfg.num_classes = 7;
    let model = trained(cfg, 3);
    check_onnx("CNAS imagenet 64px", &model, &x, Some(64));
}

#[test]
fn onnx_every_operation_at_stride_one_and_two() {
    let x = cifar_images(5);
    let (darts, wider) = Primitive::ALL.split_at(8);
    let cases = [
        ("DARTS ops normal", common::every_op_genotype(darts, wider)),
        ("wider ops normal", common::every_op_genotype(wider, darts)),
        ("zero nodes", zero_node_genotype()),
    ];
    for (seed, (name, genotype)) in cases.into_iter().enumerate() {
        let model = trained(config(NetworkKind::Cifar, genotype, 4, 3, true), 10 + seed as i64);
        check_onnx(name, &model, &x, None);
    }
}

fn run(args: &[&str]) -> Output {
    common::cnas().args(args).output().expect("run cnas")
}

fn genotype_file(dir: &Path, genotype: &Genotype) -> PathBuf {
    let path = dir.join("genotype.json");
    common::write_genotype(&path, genotype);
    path
}

/// PyTorch's `torch.load` (weights_only) and `load_state_dict(strict=True)` on the exported
/// file, then its logits against cnas's.
fn check_pth_in_pytorch(name: &str, model: &Trained, pth: &Path, auxiliary: bool, x: &Tensor) {
    let dir = tempfile::tempdir().unwrap();
    let genotype = genotype_file(dir.path(), &model.config.genotype);
    let input = write_input(dir.path(), x);
    let out = dir.path().join("torch.safetensors");
    let dataset = match model.config.kind {
        NetworkKind::Cifar => "cifar10",
        NetworkKind::Imagenet => "imagenet",
    };
    let mut args: Vec<String> = [
        "pth",
        "--weights",
        p(pth),
        "--genotype",
        p(&genotype),
        "--dataset",
        dataset,
        "--input",
        p(&input),
        "--out",
        p(&out),
    ]
    .map(String::from)
    .to_vec();
    for (flag, v) in [
        ("--channels", model.config.init_channels),
        ("--layers", model.config.layers),
        ("--classes", model.config.num_classes),
    ] {
        args.extend([flag.to_string(), v.to_string()]);
    }
    if auxiliary {
        args.push("--auxiliary".into());
    }
    let report: serde_json::Value =
        serde_json::from_str(common::run_reference("check_export.py", &args).trim()).unwrap();
    assert_eq!(report["type"], "OrderedDict", "{name}");
    assert_eq!(report["same_order_as_pytorch"], true, "{name}: {}", report["first_out_of_order"]);
    assert_eq!(report["counter_dtypes"], serde_json::json!(["torch.int64"]), "{name}");
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.iter().any(|k| k.as_str().unwrap().starts_with("auxiliary_head.")), auxiliary);
    let theirs = &Tensor::read_safetensors(&out).unwrap()[0].1;
    let d = max_abs_diff(theirs, &model.logits(x));
    eprintln!("{name}: PyTorch logits from the .pth: max |diff| {d:.3e}");
    assert!(d <= TOL, "{name}: PyTorch's logits differ by {d:e}");
}

#[test]
fn pth_loads_strictly_into_pytorch_with_and_without_auxiliary_head() {
    let dir = tempfile::tempdir().unwrap();
    let x = cifar_images(3);
    let model = trained(config(NetworkKind::Cifar, cnas::space::published("CNAS").unwrap(), 8, 5, true), 4);
    let weights = dir.path().join("checkpoint.safetensors");
    model.save_checkpoint(&weights);

    let pth = dir.path().join("cnas.pth");
    let out = run(&["export", "--checkpoint", p(&weights), "--format", "pth", "-o", p(&pth)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("auxiliary head"));
    check_pth_in_pytorch("CNAS cifar .pth", &model, &pth, true, &x);

    // cnas reads its own .pth back to the same tensors (and 0 batch counters).
    let back: HashMap<String, Tensor> = cnas::weights::read(&pth).unwrap().into_iter().collect();
    let variables = model.vs.variables();
    let counters = back.keys().filter(|k| k.ends_with("num_batches_tracked")).count();
    let bns = variables.keys().filter(|k| k.ends_with("running_mean")).count();
    assert_eq!((back.len(), counters), (variables.len() + bns, bns));
    for (name, t) in &variables {
        assert!(back[name].equal(t), "{name} changed");
    }

    let slim = dir.path().join("slim.pth");
    let out = run(&["export", "--weights", p(&weights), "--drop-auxiliary", "-o", p(&slim)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_pth_in_pytorch("CNAS cifar .pth without auxiliary head", &model, &slim, false, &x);
}

#[test]
fn pth_of_every_operation_and_of_an_imagenet_network() {
    let dir = tempfile::tempdir().unwrap();
    let (darts, wider) = Primitive::ALL.split_at(8);
    let x = cifar_images(2);
    let model = trained(config(NetworkKind::Cifar, common::every_op_genotype(wider, darts), 4, 3, false), 5);
    let weights = dir.path().join("w.safetensors");
    model.save_checkpoint(&weights);
    let pth = dir.path().join("every.pth");
    export(&weights, &pth, &options(ExportFormat::Pth)).unwrap();
    check_pth_in_pytorch("every op .pth", &model, &pth, false, &x);

    let x = x.upsample_bilinear2d([64, 64], false, None, None);
    let model =
        trained(config(NetworkKind::Imagenet, cnas::space::published("DARTS_V2").unwrap(), 8, 4, false), 6);
    model.save_checkpoint(&weights);
    export(&weights, &pth, &options(ExportFormat::Pth)).unwrap();
    check_pth_in_pytorch("DARTS_V2 imagenet .pth", &model, &pth, false, &x);
}

#[test]
fn safetensors_from_a_pytorch_file_describes_its_network() {
    let dir = tempfile::tempdir().unwrap();
    let genotype = cnas::space::published("DARTS_V2").unwrap();
    let model = trained(config(NetworkKind::Cifar, genotype.clone(), 6, 4, true), 7);
    // A PyTorch file (no network description): the network comes from the options.
    let pth = dir.path().join("torch.pth");
    let state: Vec<(String, Tensor)> =
        model.vs.variables().into_iter().map(|(n, t)| (format!("module.{n}"), t)).collect();
    cnas::export::pth::write_state_dict(&state, &pth).unwrap();
    let out = dir.path().join("net.safetensors");
    let arch = genotype_file(dir.path(), &genotype);
    let cli = run(&[
        "export",
        "--weights",
        p(&pth),
        "--arch",
        p(&arch),
        "--init-channels",
        "6",
        "--layers",
        "4",
        "-o",
        p(&out),
    ]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));

    let metadata = cnas::weights::read_metadata(&out).unwrap().unwrap();
    assert_eq!(metadata["format"], "cnas");
    let described: NetworkConfig = serde_json::from_str(&metadata["network"]).unwrap();
    assert_eq!(described, model.config);
    let back: HashMap<String, Tensor> = cnas::weights::read(&out).unwrap().into_iter().collect();
    let variables = model.vs.variables();
    assert_eq!(back.len(), variables.len());
    for (name, t) in &variables {
        assert!(back[name].equal(t), "{name} changed");
    }
    // The file alone is enough for the next export.
    let onnx = dir.path().join("net.onnx");
    let exported =
        export(&out, &onnx, &ExportOptions { format: None, ..options(ExportFormat::Pth) }).unwrap();
    assert_eq!(exported.format, ExportFormat::Onnx);
    assert_eq!(exported.config.genotype, genotype);
}

#[test]
fn user_mistakes_get_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = trained(config(NetworkKind::Cifar, cnas::space::published("CNAS").unwrap(), 4, 3, false), 8);
    let weights = d.join("w.safetensors");
    model.save_checkpoint(&weights);
    let onnx = d.join("out.onnx");

    let absent = d.join("absent.pth");
    common::assert_user_error(&run(&["export", "--weights", p(&absent), "-o", p(&onnx)]), "absent.pth");
    let text = d.join("notes.pth");
    common::write(&text, "not weights at all");
    common::assert_user_error(&run(&["export", "--weights", p(&text), "-o", p(&onnx)]), "not a weights file");
    // A PyTorch file says nothing of its network: the paper's CNAS is assumed, and the error
    // says what to give.
    let pth = d.join("small.pth");
    assert!(run(&["export", "--weights", p(&weights), "-o", p(&pth)]).status.success());
    common::assert_user_error(&run(&["export", "--weights", p(&pth), "-o", p(&onnx)]), "give --arch");
    let empty = d.join("empty.pth");
    common::write(&empty, "");
    common::assert_user_error(&run(&["export", "--weights", p(&empty), "-o", p(&onnx)]), "empty file");
    common::assert_user_error(
        &run(&["export", "--weights", p(&weights), "-o", p(&d.join("out.bin"))]),
        "give --format onnx, pth, safetensors or torchscript",
    );
    common::assert_user_error(&run(&["export", "--weights", p(&weights), "-o", p(d)]), "is a folder");
    let unwritable = d.join("no/such/folder/out.onnx");
    common::assert_user_error(&run(&["export", "--weights", p(&weights), "-o", p(&unwritable)]), "out.onnx");
    assert!(!unwritable.exists());
    common::assert_user_error(
        &run(&["export", "--weights", p(&weights), "-o", p(&onnx), "--image-size", "30"]),
        "30×30 inputs do not fit",
    );
    // Weights of another network.
    common::assert_user_error(
        &run(&[
            "export",
            "--weights",
            p(&weights),
            "--arch",
            "DARTS_V2",
            "--init-channels",
            "4",
            "--layers",
            "3",
            "-o",
            p(&onnx),
        ]),
        "weights do not fit",
    );

    // Search artefacts, by their metadata and by their layout.
    let supernet = d.join("supernet.safetensors");
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let tensors = vec![("cells.0.edges.0.weight".to_string(), t.shallow_clone())];
    let meta = BTreeMap::from([("format".to_string(), "cnas-supernet".to_string())]);
    cnas::weights::save_tensors(&tensors, &supernet, meta).unwrap();
    common::assert_user_error(
        &run(&["export", "--weights", p(&supernet), "-o", p(&onnx)]),
        "is a search supernet",
    );
    let checkpoint = d.join("checkpoint.safetensors");
    let tensors = vec![("supernet/stem.0.weight".to_string(), t)];
    cnas::weights::save_tensors(&tensors, &checkpoint, BTreeMap::new()).unwrap();
    common::assert_user_error(
        &run(&["export", "--weights", p(&checkpoint), "-o", p(&onnx)]),
        "not a trained network",
    );
    assert!(!onnx.exists(), "nothing is written on a mistake");
}

/// `cnas predict --json`'s logits for the images of `npy` (one line per image).
fn predict_logits(weights: &Path, npy: &Path) -> Tensor {
    let out = run(&["predict", "--weights", p(weights), p(npy), "--json", "--top", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<f32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect();
    let (n, k) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([n, k])
}

/// Exports `model` as TorchScript with the CLI (and as .pth, with the same auxiliary choice),
/// then checks the module in PyTorch (Python: `torch.jit.load`, batch 1 and N) and in C++
/// (libtorch's `torch::jit::load` through tch, no cnas code) against `cnas predict --json` on
/// the same images, and its state_dict against the .pth export.
fn check_torchscript(name: &str, model: &Trained, x: &Tensor, image_size: Option<i64>, drop_auxiliary: bool) {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("trained.safetensors");
    model.save_checkpoint(&weights);
    let module = dir.path().join("net.pt");
    let pth = dir.path().join("net.pth");
    let size = image_size.map(|s| s.to_string());
    for (path, format) in [(&module, "torchscript"), (&pth, "pth")] {
        let mut args = vec!["export", "--weights", p(&weights), "--format", format, "-o", p(path)];
        if let Some(size) = &size {
            args.extend(["--image-size", size]);
        }
        if drop_auxiliary {
            args.push("--drop-auxiliary");
        }
        let out = run(&args);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let npy = dir.path().join("images.npy");
    x.write_npy(&npy).unwrap();
    let predicted = predict_logits(&weights, &npy);
    assert!(max_abs_diff(&predicted, &model.logits(x)) <= TOL, "{name}: predict disagrees with the network");

    let input = write_input(dir.path(), x);
    let out = dir.path().join("torch.safetensors");
    let report = common::run_reference(
        "check_export.py",
        &["torchscript", "--model", p(&module), "--input", p(&input), "--out", p(&out), "--pth", p(&pth)]
            .map(String::from),
    );
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["equals_pth"], true, "{name}: the module's state_dict is not the .pth export's");
    let keys = report["keys"].as_array().unwrap();
    let auxiliary = keys.iter().any(|k| k.as_str().unwrap().starts_with("auxiliary_head."));
    assert_eq!(auxiliary, model.config.auxiliary && !drop_auxiliary, "{name}: auxiliary head");
    let parameters = report["parameters"].as_array().unwrap();
    // Parameters are the trainable variables (of the head too unless dropped), never buffers.
    let mut trainable: Vec<String> = (model.vs.variables().into_iter())
        .filter(|(n, t)| t.requires_grad() && !(drop_auxiliary && n.starts_with("auxiliary_head.")))
        .map(|(n, _)| n)
        .collect();
    let mut parameters: Vec<String> = parameters.iter().map(|k| k.as_str().unwrap().to_string()).collect();
    trainable.sort();
    parameters.sort();
    assert_eq!(parameters, trainable, "{name}: parameters");
    let side = image_size.unwrap_or(model.config.kind.default_image_size());
    assert_eq!(report["extra"]["input"]["shape"], serde_json::json!(["N", 3, side, side]), "{name}");
    assert_eq!(report["extra"]["network"]["num_classes"], model.config.num_classes, "{name}");
    let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    for key in ["logits_batch1", "logits_batchN"] {
        let d = max_abs_diff(&theirs[key], &predicted);
        eprintln!("{name}: PyTorch torch.jit.load {key}: max |diff| {d:.3e} against cnas predict");
        assert!(d <= TOL, "{name}: {key} differs by {d:e}");
    }

    let cpp = tch::CModule::load(&module).expect("libtorch loads the module");
    let logits = tch::no_grad(|| cpp.forward_ts(&[x]).unwrap());
    let d = max_abs_diff(&logits, &predicted);
    eprintln!("{name}: libtorch C++ torch::jit::load: max |diff| {d:.3e} against cnas predict");
    assert!(d <= TOL, "{name}: C++ logits differ by {d:e}");
    assert!(predicted.abs().max().double_value(&[]) > 1e-3, "{name}: degenerate logits");
}

#[test]
fn torchscript_modules_load_in_pytorch_and_cpp_and_match_predict() {
    let x = cifar_images(4);
    let genotype = cnas::space::published("CNAS").unwrap();
    let model = trained(config(NetworkKind::Cifar, genotype.clone(), 8, 5, true), 21);
    check_torchscript("CNAS cifar TorchScript", &model, &x, None, false);
    check_torchscript("CNAS cifar TorchScript without auxiliary head", &model, &x, None, true);

    let x = x.upsample_bilinear2d([64, 64], false, None, None);
    let mut cfg = config(NetworkKind::Imagenet, genotype, 8, 4, false);
    cfg.num_classes = 7;
    check_torchscript("CNAS imagenet 64px TorchScript", &trained(cfg, 22), &x, Some(64), false);
}
