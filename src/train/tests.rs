use super::*;
use tch::{nn, Device, Kind};

#[test]
fn label_smoothing_matches_a_direct_computation() {
    let rows: [[f64; 4]; 3] = [[2.0, -1.0, 0.5, 0.25], [0.0, 3.0, 1.0, -2.0], [1.5, 1.5, -0.5, 4.0]];
    let labels = [0usize, 2, 3];
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    let logits = Tensor::from_slice(&flat).reshape([3, 4]);
    let label_tensor = Tensor::from_slice(&labels.map(|l| l as i64));
    // The released LabelSmoothCrossEntropyLoss: target 1-ε on the label and ε/(K-1) on each
    // other class, loss -Σ_k target_k·log_softmax_k, averaged over the batch.
    let released = |eps: f64| {
        let mut total = 0.0;
        for (row, &label) in rows.iter().zip(&labels) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            for (k, v) in row.iter().enumerate() {
                let target = if k == label { 1.0 - eps } else { eps / 3.0 };
                total -= target * (v - lse);
            }
        }
        total / 3.0
    };
    for eps in [0.0, 0.1, 0.3] {
        let got = classification_loss(&logits, &label_tensor, eps).double_value(&[]);
        let want = released(eps);
        assert!((got - want).abs() < 1e-6, "ε {eps}: {got} vs {want}");
    }
    // Not PyTorch's label_smoothing (ε/K on every class): the two differ.
    let pytorch = logits
        .cross_entropy_loss::<Tensor>(&label_tensor, None, Reduction::Mean, -100, 0.1)
        .double_value(&[]);
    assert!((pytorch - released(0.1)).abs() > 1e-3, "{pytorch} vs {}", released(0.1));
    // bf16 logits still give an fp32 loss, with or without smoothing; gradients flow.
    for eps in [0.0, 0.1] {
        let half = classification_loss(&logits.to_kind(Kind::BFloat16), &label_tensor, eps);
        assert_eq!(half.kind(), Kind::Float);
    }
    let x = logits.copy().set_requires_grad(true);
    classification_loss(&x, &label_tensor, 0.1).backward();
    // d loss / d logits = (softmax - target) / N: each row sums to 0.
    let row_sums = x.grad().sum_dim_intlist(-1, false, Kind::Float);
    assert!(row_sums.abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn no_bias_decay_spares_exactly_the_parameters_named_bias() {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = NetworkConfig {
        init_channels: 8,
        layers: 3,
        ..NetworkConfig::paper(NetworkKind::Cifar, crate::space::published("CNAS").unwrap())
    };
    let _net = Network::new(&vs.root(), config).unwrap();
    let params: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    for (name, _) in &params {
        assert_eq!(exempt_from_decay(name), name.contains("bias"), "{name}");
    }
    // BatchNorm: the bias (β) is exempt, the weight (γ) is decayed; so are convolutions.
    let bn_weights: Vec<&String> =
        params.iter().filter(|(n, t)| n.ends_with(".weight") && t.dim() == 1).map(|(n, _)| n).collect();
    assert!(!bn_weights.is_empty());
    assert!(bn_weights.iter().all(|n| !exempt_from_decay(n)), "{bn_weights:?}");
    assert!(params.iter().any(|(n, t)| n.ends_with(".bias") && t.dim() == 1 && exempt_from_decay(n)));
    assert!(params.iter().any(|(n, _)| n == "classifier.bias" && exempt_from_decay(n)));
    assert!(params.iter().any(|(n, _)| n == "classifier.weight" && !exempt_from_decay(n)));
    assert!(params.iter().filter(|(_, t)| t.dim() == 4).all(|(n, _)| !exempt_from_decay(n)));

    // One step of the optimizer as the trainer sets it up, every parameter 0.5 and every
    // gradient 0: only decay moves parameters, so exactly the "bias" ones stay at 0.5.
    tch::no_grad(|| {
        for (_, t) in &params {
            let _ = t.shallow_clone().fill_(0.5);
        }
    });
    for (_, t) in &params {
        (t.sum(Kind::Float) * 0.0).backward();
    }
    let shallow = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let mut sgd = Sgd::new(shallow, 1.0, 0.0, 0.1, false);
    sgd.exempt_from_decay(exempt_from_decay);
    sgd.step().unwrap();
    for (name, t) in &params {
        let want = if name.contains("bias") { 0.5 } else { 0.45 };
        let worst = (t.detach() - want).abs().max().double_value(&[]);
        assert!(worst < 1e-6, "{name}: {worst} away from {want}");
    }
}

#[test]
fn drop_path_drops_the_asked_share_and_keeps_the_mean() {
    tch::manual_seed(3);
    let x = Tensor::ones([20000, 1, 2, 2], (Kind::Float, Device::Cpu));
    let y = crate::ops::drop_path(&x, 0.3);
    let per_sample = y.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
    let dropped = per_sample.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((dropped - 0.3).abs() < 0.015, "dropped share {dropped}");
    let kept_value = per_sample.max().double_value(&[]);
    assert!((kept_value - 1.0 / 0.7).abs() < 1e-5);
    let mean = y.mean(Kind::Float).double_value(&[]);
    assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    // The probability rises linearly over training with the 1-based epoch, as the released
    // code: 0.2·e/T, so 0.02 in the first of 10 epochs and 0.2 in the last.
    let o = TrainOptions { epochs: 10, drop_path_prob: 0.2, ..TrainOptions::paper(DatasetKind::Cifar10) };
    assert!((o.drop_path_at(0) - 0.02).abs() < 1e-12);
    assert!((o.drop_path_at(4) - 0.1).abs() < 1e-12);
    assert!((o.drop_path_at(9) - 0.2).abs() < 1e-12);
}

#[test]
fn paper_recipes_and_option_checks() {
    // The released commands: CIFAR-10 on 2 GPUs × 64, ImageNet on 4 GPUs × 64 with
    // --no_bias_decay and without --label_smooth; lr 0.05 both.
    let c = TrainOptions::paper(DatasetKind::Cifar10);
    assert_eq!((c.init_channels, c.layers, c.epochs, c.batch_size), (36, 20, 600, 128));
    assert_eq!((c.lr, c.momentum, c.weight_decay, c.scheduler), (0.05, 0.9, 3e-4, SchedulerKind::Cosine));
    assert_eq!((c.auxiliary_weight, c.drop_path_prob, c.grad_clip), (0.4, 0.2, 5.0));
    assert_eq!((c.label_smooth, c.no_bias_decay, c.warmup_epochs, c.lr_min), (0.0, false, 0, 0.0));
    let i = TrainOptions::paper(DatasetKind::ImageNet);
    assert_eq!((i.init_channels, i.layers, i.epochs, i.scheduler), (48, 14, 250, SchedulerKind::Linear));
    assert_eq!((i.batch_size, i.lr, i.label_smooth, i.no_bias_decay), (256, 0.05, 0.0, true));
    assert_eq!((i.momentum, i.weight_decay, i.auxiliary_weight, i.drop_path_prob), (0.9, 3e-4, 0.4, 0.2));
    assert!(c.validate().is_ok() && i.validate().is_ok());
    // The batch is global: divided over the ranks, which must share it evenly.
    assert_eq!(c.per_rank_batch(1).unwrap(), 128);
    assert_eq!(c.per_rank_batch(2).unwrap(), 64);
    assert_eq!(i.per_rank_batch(4).unwrap(), 64);
    let e = c.per_rank_batch(3).unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("--batch-size 128"), "{e}");
    assert!(e.to_string().contains("world size 3"), "{e}");
    let small = TrainOptions { batch_size: 4, ..c.clone() };
    assert!(small.per_rank_batch(4).unwrap_err().is_user_error());
    for bad in [
        TrainOptions { epochs: 0, ..c.clone() },
        TrainOptions { batch_size: 1, ..c.clone() },
        TrainOptions { drop_path_prob: 1.0, ..c.clone() },
        TrainOptions { label_smooth: -0.1, ..c.clone() },
        TrainOptions { warmup_epochs: 600, ..c.clone() },
        TrainOptions { lr: f64::NAN, ..c.clone() },
    ] {
        assert!(bad.validate().unwrap_err().is_user_error());
    }
}

#[test]
fn amp_step_runs_in_bf16_and_stays_close_to_fp32() {
    // Other tests draw from libtorch's global generator concurrently: copy the weights
    // instead of relying on the same seed.
    let build = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = NetworkConfig {
            init_channels: 8,
            layers: 3,
            ..NetworkConfig::paper(NetworkKind::Cifar, crate::space::published("CNAS").unwrap())
        };
        let net = Network::new(&vs.root(), config).unwrap();
        let params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        (vs, net, params)
    };
    let (reference, _, _) = build();
    let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2, 3, 4]);
    let mut losses = Vec::new();
    for amp in [false, true] {
        let (mut vs, net, params) = build();
        vs.copy(&reference).unwrap();
        let mut sgd = Sgd::new(params, 0.05, 0.9, 3e-4, false);
        let o = TrainOptions { amp, drop_path_prob: 0.0, ..TrainOptions::paper(DatasetKind::Cifar10) };
        let (loss, logits) = train_step(&net, &mut sgd, &images, &labels, &o, Device::Cpu, None).unwrap();
        assert_eq!(logits.kind(), Kind::Float);
        losses.push(loss.double_value(&[]));
        let inside = crate::amp::autocast(Device::Cpu, amp, || net.forward_t(&images, false).logits).unwrap();
        assert_eq!(inside.kind(), if amp { Kind::BFloat16 } else { Kind::Float });
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!((losses[0] - losses[1]).abs() < 0.05 * losses[0].abs(), "{losses:?}");
}
