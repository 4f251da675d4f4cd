//! Numerical equality with PyTorch: the same networks defined in PyTorch
//! (scripts/ref/darts_model.py) and in cnas, the same weights, the same inputs: identical
//! parameter names and counts, multiply-adds, logits in eval and train mode, auxiliary logits,
//! gradients of the training loss, BatchNorm running statistics, and drop-path masks.
use std::collections::HashMap;
use std::path::Path;

use cnas::model::{Network, NetworkConfig, NetworkKind};
use cnas::space::{Genotype, Primitive};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::common;

const TOL: f64 = 1e-4;

struct Case {
    genotype: Genotype,
    kind: NetworkKind,
    channels: i64,
    layers: i64,
    auxiliary: bool,
    image_size: i64,
    classes: i64,
    drop_path: f64,
    batch: i64,
}

/// Largest |a - b| relative to max(1, max |b|).
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let scale = b.abs().max().double_value(&[]).max(1.0);
    (a - b).abs().max().double_value(&[]) / scale
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    let d = max_rel_diff(&ours.to_kind(Kind::Float), &reference.to_kind(Kind::Float));
    assert!(d <= TOL, "{what}: max relative difference {d:e} > {TOL:e}");
}

fn run_case(name: &str, case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let genotype_path = dir.path().join("genotype.json");
    common::write_genotype(&genotype_path, &case.genotype);
    let out = dir.path().join("ref");
    let dataset = match case.kind {
        NetworkKind::Cifar => "cifar10",
        NetworkKind::Imagenet => "imagenet",
    };
    let mut args: Vec<String> = [
        "--genotype",
        genotype_path.to_str().unwrap(),
        "--dataset",
        dataset,
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("--channels", case.channels.to_string()),
        ("--layers", case.layers.to_string()),
        ("--batch", case.batch.to_string()),
        ("--image-size", case.image_size.to_string()),
        ("--classes", case.classes.to_string()),
        ("--drop-path", case.drop_path.to_string()),
        ("--seed", "7".to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if case.auxiliary {
        args.push("--auxiliary".into());
    }
    common::run_reference("make_reference.py", &args);
    compare(name, &case, &out, false);
    compare(&format!("{name} (channels-last)"), &case, &out, true);
}

/// Holds `common::torch_rng` throughout: it builds a network (random initialisation) and draws
/// drop-path masks, and a seeded drop-path forward must see exactly the draws PyTorch saw.
fn compare(name: &str, case: &Case, out: &Path, channels_last: bool) {
    let _rng = common::torch_rng();
    // As many intra-op threads as PyTorch's run (`--threads 2`): how convolution weight
    // gradients are summed depends on it, and other tests of this binary set 1, which then
    // holds for the test threads started after them.
    tch::set_num_threads(2);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("reference.safetensors")).unwrap().into_iter().collect();

    let config = NetworkConfig {
        kind: case.kind,
        genotype: case.genotype.clone(),
        init_channels: case.channels,
        layers: case.layers,
        num_classes: case.classes,
        auxiliary: case.auxiliary,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let mut net = Network::new(&vs.root(), config).unwrap();
    net.channels_last = channels_last;
    // In channels-last layout oneDNN sums convolution weight gradients in another order, so
    // they are compared with PyTorch's run in the same layout.
    let grad_key = if channels_last { "grad_channels_last" } else { "grad" };

    // Same parameter and buffer names and shapes as PyTorch's state_dict.
    let ours: HashMap<String, Vec<i64>> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    let mut theirs = HashMap::new();
    for entry in meta["names"].as_array().unwrap() {
        let name = entry[0].as_str().unwrap().to_string();
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let shape: Vec<i64> = entry[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
        theirs.insert(name, shape);
    }
    assert_eq!(ours, theirs, "{name}: state_dict names/shapes differ");

    let profile = cnas::profile::profile(&vs, &net, case.image_size);
    assert_eq!(profile.params, meta["params"].as_i64().unwrap(), "{name}: params");
    assert_eq!(profile.params_total, meta["params_total"].as_i64().unwrap(), "{name}: params_total");
    assert_eq!(profile.madds, meta["madds"].as_u64().unwrap(), "{name}: multiply-adds");

    // Load PyTorch's weights: plain, with DataParallel's prefix, and inside a checkpoint dict.
    for file in ["state_dict_module.pth", "checkpoint.pth", "state_dict.pth"] {
        let tensors = cnas::weights::read(&out.join(file)).unwrap();
        let report = cnas::weights::load_into(&vs, &tensors).unwrap();
        assert!(report.is_exact() && report.loaded > 0, "{name}: {file}: {report:?}");
    }

    let x = &reference["input"];
    let target = &reference["target"];
    let eval = tch::no_grad(|| net.forward_t(x, false));
    assert!(eval.auxiliary.is_none());
    assert_close(&format!("{name}: eval logits"), &eval.logits, &reference["logits_eval"]);

    let train = net.forward_t(x, true);
    assert_close(&format!("{name}: train logits"), &train.logits, &reference["logits_train"]);
    let mut loss = train.logits.cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, -100, 0.0);
    match (&train.auxiliary, reference.get("aux_train")) {
        (Some(aux), Some(reference_aux)) => {
            assert_close(&format!("{name}: auxiliary logits"), aux, reference_aux);
            loss += aux.cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, -100, 0.0) * 0.4;
        }
        (None, None) => {}
        (ours, _) => panic!("{name}: auxiliary logits present in one side only (ours: {})", ours.is_some()),
    }
    assert_close(&format!("{name}: loss"), &loss.reshape([1]), &reference["loss"]);
    loss.backward();
    let mut grads = 0;
    for (var_name, var) in vs.variables() {
        if var.requires_grad() {
            let reference_grad = &reference[&format!("{grad_key}.{var_name}")];
            let grad = var.grad();
            let grad = if grad.defined() { grad } else { var.zeros_like() };
            assert_close(&format!("{name}: gradient of {var_name}"), &grad, reference_grad);
            grads += 1;
        } else {
            assert_close(
                &format!("{name}: {var_name} after a training step"),
                &var,
                &reference[&format!("running_after.{var_name}")],
            );
        }
    }
    assert!(grads > 10);

    if case.drop_path > 0.0 {
        // Fresh weights from the file, the same seed: the same samples are dropped.
        let tensors = cnas::weights::read(&out.join("state_dict.pth")).unwrap();
        cnas::weights::load_into(&vs, &tensors).unwrap();
        net.drop_path_prob = case.drop_path;
        tch::manual_seed(7 + 1);
        let dropped = tch::no_grad(|| net.forward_t(x, true));
        assert_close(&format!("{name}: drop-path logits"), &dropped.logits, &reference["logits_droppath"]);
        assert!(
            max_rel_diff(&dropped.logits, &reference["logits_train"]) > 1e-3,
            "drop-path changed nothing"
        );
    }
}

#[test]
fn cnas_cifar_with_auxiliary_head_and_drop_path() {
    let genotype = cnas::space::published("CNAS").unwrap();
    let case = Case {
        genotype,
        kind: NetworkKind::Cifar,
        channels: 8,
        layers: 5,
        auxiliary: true,
        image_size: 32,
        classes: 10,
        drop_path: 0.3,
        batch: 3,
    };
    run_case("CNAS cifar", case);
}

#[test]
fn darts_v2_imagenet_small_input() {
    let genotype = cnas::space::published("DARTS_V2").unwrap();
    let case = Case {
        genotype,
        kind: NetworkKind::Imagenet,
        channels: 8,
        layers: 4,
        auxiliary: false,
        image_size: 64,
        classes: 7,
        drop_path: 0.2,
        batch: 2,
    };
    run_case("DARTS_V2 imagenet", case);
}

#[test]
fn cnas_imagenet_with_auxiliary_head() {
    let genotype = cnas::space::published("CNAS").unwrap();
    let case = Case {
        genotype,
        kind: NetworkKind::Imagenet,
        channels: 8,
        layers: 3,
        auxiliary: true,
        image_size: 224,
        classes: 5,
        drop_path: 0.0,
        batch: 2,
    };
    run_case("CNAS imagenet", case);
}

#[test]
fn every_operation_at_stride_one_and_two() {
    let (darts, wider) = Primitive::ALL.split_at(8);
    for (name, normal, reduce) in [("DARTS ops normal", darts, wider), ("wider ops normal", wider, darts)] {
        let case = Case {
            genotype: common::every_op_genotype(normal, reduce),
            kind: NetworkKind::Cifar,
            channels: 4,
            layers: 3,
            auxiliary: true,
            image_size: 32,
            classes: 10,
            drop_path: 0.25,
            batch: 2,
        };
        run_case(name, case);
    }
}

#[test]
fn nasnet_and_amoebanet_five_node_cells() {
    for arch in ["NASNet", "AmoebaNet"] {
        let case = Case {
            genotype: cnas::space::published(arch).unwrap(),
            kind: NetworkKind::Cifar,
            channels: 4,
            layers: 3,
            auxiliary: false,
            image_size: 32,
            classes: 10,
            drop_path: 0.0,
            batch: 2,
        };
        run_case(arch, case);
    }
}

/// The supernet's two update rules against PyTorch's SGD (Nesterov, weight decay) over steps
/// whose losses reach different subsets of the parameters, as sampled paths do: the released
/// rule (`Sgd::zero_grad_in_place` + `Sgd::step`) is `zero_grad(set_to_none=False)`, PyTorch
/// 1.5's behaviour, under which a parameter used once keeps moving; the sparse rule
/// (`Sgd::zero_grad` + `Sgd::step_subset` of the used ones) is `set_to_none=True`. Both
/// continue identically after a checkpoint in the middle.
#[test]
fn supernet_update_rules_match_pytorch_sgd() {
    use cnas::optim::Sgd;
    let (lr, momentum, wd) = (0.05, 0.9, 0.01);
    // p3 is first reached at step 3; p4 never.
    let steps: [&[usize]; 6] = [&[0, 1], &[1, 2], &[0], &[0, 3], &[2], &[1]];
    let rng = common::seed_torch(11);
    let start: Vec<Tensor> = (0..5).map(|i| Tensor::randn([3, 2 + i], (Kind::Float, Device::Cpu))).collect();
    let targets: Vec<Tensor> =
        start.iter().map(|p| Tensor::randn(p.size(), (Kind::Float, Device::Cpu))).collect();
    drop(rng);
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, (p, t)) in start.iter().zip(&targets).enumerate() {
        named.push((format!("p{i}"), p.shallow_clone()));
        named.push((format!("t{i}"), t.shallow_clone()));
    }
    Tensor::write_safetensors(&named, &inp).unwrap();
    let spec: Vec<String> =
        steps.iter().map(|s| s.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")).collect();
    common::run_reference(
        "sgd_rules.py",
        &[
            inp.to_str().unwrap().into(),
            out.to_str().unwrap().into(),
            "--lr".into(),
            lr.to_string(),
            "--momentum".into(),
            momentum.to_string(),
            "--weight-decay".into(),
            wd.to_string(),
            "--steps".into(),
            spec.join(";"),
        ],
    );
    let reference: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();

    let named = |params: &[Tensor]| -> Vec<(String, Tensor)> {
        params.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.shallow_clone())).collect()
    };
    for (rule, sparse) in [("zeroed", false), ("dropped", true)] {
        let before: Vec<Tensor> = start.iter().map(|p| p.copy().set_requires_grad(true)).collect();
        let mut sgd = Sgd::new(named(&before), lr, momentum, wd, true);
        run_steps(&before, &mut sgd, &steps[..3], 0, &targets, sparse);
        // A checkpoint after step 3: fresh parameters (no gradients) and a fresh optimizer
        // from the saved state must go on as the uninterrupted run.
        let state: HashMap<String, Tensor> = sgd.state().into_iter().collect();
        let params: Vec<Tensor> = before.iter().map(|p| p.detach().copy().set_requires_grad(true)).collect();
        let mut sgd = Sgd::new(named(&params), lr, momentum, wd, true);
        sgd.load_state(&state).unwrap();
        run_steps(&params, &mut sgd, &steps[3..], 3, &targets, sparse);
        for (i, p) in params.iter().enumerate() {
            let expected = &reference[&format!("{rule}.p{i}")];
            let d = (p - expected).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{rule}: p{i} differs from PyTorch by {d:e}");
        }
    }
    // The two rules really differ here (p0 is idle in steps 1 and 4).
    let d = (&reference["zeroed.p0"] - &reference["dropped.p0"]).abs().max().double_value(&[]);
    assert!(d > 1e-4, "the reference rules do not differ ({d:e})");
    assert!(reference["zeroed.p4"].equal(&start[4]) && reference["dropped.p4"].equal(&start[4]));
}

/// Steps `first..` of the update-rule test: step k's loss reaches the parameters `used`, then
/// the rule's update.
fn run_steps(
    params: &[Tensor],
    sgd: &mut cnas::optim::Sgd,
    steps: &[&[usize]],
    first: usize,
    targets: &[Tensor],
    sparse: bool,
) {
    for (j, used) in steps.iter().enumerate() {
        let k = first + j;
        if sparse {
            sgd.zero_grad().unwrap();
        } else {
            sgd.zero_grad_in_place().unwrap();
        }
        let loss = used
            .iter()
            .map(|&i| (&params[i] * (k as f64 + 1.0) - &targets[i]).square().sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        if sparse {
            sgd.step_subset(used).unwrap();
        } else {
            sgd.step().unwrap();
        }
    }
}
