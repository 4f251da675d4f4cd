//! The cnas side of the training-step benchmark (scripts/bench_step.sh runs both sides):
//! `cnas train`'s own step ([`cnas::train::train_step`]): zero grads, forward with auxiliary
//! head and drop-path 0.2 (bf16 autocast with `--amp`), cross-entropy + 0.4 × auxiliary loss,
//! backward, gradient clipping at 5, SGD (momentum 0.9, wd 3e-4).
//! Prints one JSON line like the PyTorch side (scripts/ref/bench_step.py).
use std::time::Instant;

use clap::Parser;
use cnas::data::DatasetKind;
use cnas::device::DeviceChoice;
use cnas::model::{Network, NetworkConfig, NetworkKind};
use cnas::optim::Sgd;
use cnas::train::{train_step, TrainOptions};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "CNAS")]
    arch: String,
    #[arg(long, default_value_t = 36)]
    channels: i64,
    #[arg(long, default_value_t = 20)]
    layers: i64,
    #[arg(long, default_value_t = 96)]
    batch: i64,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// bf16 autocast.
    #[arg(long)]
    amp: bool,
    /// Run the network in the contiguous layout (default: the device's default layout).
    #[arg(long)]
    contiguous: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let device = args.device.resolve()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let (_, genotype) = cnas::space::resolve_arch(&args.arch)?;
    let mut config = NetworkConfig::paper(NetworkKind::Cifar, genotype);
    config.init_channels = args.channels;
    config.layers = args.layers;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let mut net = Network::new(&vs.root(), config)?;
    net.drop_path_prob = 0.2;
    // The layout `cnas train` picks for this device and precision, unless told otherwise.
    net.channels_last = cnas::ops::channels_last_for(device, args.amp) && !args.contiguous;
    let mut sgd = Sgd::new(cnas::optim::trainable_params(&vs), 0.025, 0.9, 3e-4, false);
    let options = TrainOptions { amp: args.amp, ..TrainOptions::paper(DatasetKind::Cifar10) };
    let x = Tensor::randn([args.batch, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(10, [args.batch], (Kind::Int64, device));
    let mut last_loss = Tensor::from(0f32);
    let mut step = |net: &Network| -> anyhow::Result<()> {
        let (loss, _logits) = train_step(net, &mut sgd, &x, &y, &options, device, None)?;
        last_loss = loss;
        Ok(())
    };
    for _ in 0..args.warmup {
        step(&net)?;
    }
    sync(device);
    let start = Instant::now();
    for _ in 0..args.steps {
        step(&net)?;
    }
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    let ms = secs * 1e3 / args.steps as f64;
    println!(
        "{}",
        serde_json::json!({
            "engine": "cnas",
            "ms_per_step": ms,
            "images_per_s": args.batch as f64 * args.steps as f64 / secs,
            "threads": tch::get_num_threads(),
            "device": format!("{device:?}"),
            "amp": args.amp,
            "channels_last": net.channels_last,
            "final_loss": last_loss.double_value(&[]),
            "channels": args.channels, "layers": args.layers, "batch": args.batch,
        })
    );
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
