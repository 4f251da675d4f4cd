//! The cnas side of the search-step benchmark (scripts/bench_search.sh runs both sides): the
//! weight phase (uniform architecture pair, supernet forward/backward, SGD with the released
//! update rule: gradients zeroed in place, every parameter used so far updated; `--sparse-update`:
//! gradients dropped, clipped at 5, only the pair's parameters updated) and the controller phase (two CPU controllers sample, supernet
//! scores on a held-out batch, REINFORCE with Adam), exactly the steps `cnas search` runs
//! (`search::weight_step`, `search::controller_step`). Writes the architecture pairs of its
//! weight steps to `--archs-out` so the PyTorch side can run the same ones; prints one JSON line.
use std::time::Instant;

use clap::Parser;
use cnas::controller::{uniform_cell, Baseline, Controller, ControllerConfig};
use cnas::device::DeviceChoice;
use cnas::optim::{clip_grad_norm, Adam, Sgd};
use cnas::search::{controller_step, curriculum, weight_step, CurriculumMode, UpdateRule};
use cnas::space::Primitive;
use cnas::supernet::{ParamUse, Supernet, SupernetConfig};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 16)]
    channels: i64,
    #[arg(long, default_value_t = 8)]
    layers: i64,
    #[arg(long, default_value_t = 96)]
    batch: i64,
    /// Side of the square random images (small sides make the step overhead-bound).
    #[arg(long, default_value_t = 32)]
    image_size: i64,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    controller_steps: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time the weight step's parts (forward with loss, backward, clipping and SGD) over
    /// the same pairs again, synchronising the device between parts.
    #[arg(long)]
    breakdown: bool,
    /// Where to write the weight steps' architecture pairs (JSON).
    #[arg(long)]
    archs_out: Option<std::path::PathBuf>,
    /// The sparse update rule (`cnas search --sparse-update --grad-clip 5`).
    #[arg(long)]
    sparse_update: bool,
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
    tch::manual_seed(args.seed as i64);
    let primitives = Primitive::DARTS.to_vec();
    let config = SupernetConfig {
        primitives: primitives.clone(),
        init_channels: args.channels,
        layers: args.layers,
        nodes: 4,
        num_classes: 10,
        stem: Default::default(),
    };
    let vs = nn::VarStore::new(device);
    let supernet = Supernet::new(&vs.root(), config)?;
    let named = cnas::optim::trainable_params(&vs);
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let param_use = ParamUse::new(&names, supernet.config());
    let mut sgd = Sgd::new(named, 0.01, 0.9, 3e-4, true);

    let cvs = nn::VarStore::new(Device::Cpu);
    let normal = Controller::try_new(&(cvs.root() / "normal"), ControllerConfig::default())?;
    let reduce = Controller::try_new(&(cvs.root() / "reduce"), ControllerConfig::default())?;
    let mut cparams: Vec<(String, Tensor)> = cvs.variables().into_iter().collect();
    cparams.sort_by(|a, b| a.0.cmp(&b.0));
    let mut adam = Adam::new(cparams, 3e-4, 5e-4);
    let mut baseline = Baseline::new(0.99);
    let stages = curriculum(CurriculumMode::Fixed, &primitives, &primitives, 4);
    // The released rule by default; the sparse one clips the supernet's gradients at 5 as
    // cnas's search did before it followed the released code.
    let rule = UpdateRule { sparse: args.sparse_update, grad_clip: args.sparse_update.then_some(5.0) };
    let stage = &stages[0];

    let shape = [args.batch, 3, args.image_size, args.image_size];
    let x = Tensor::randn(shape, (Kind::Float, device));
    let y = Tensor::randint(10, [args.batch], (Kind::Int64, device));
    let x_held = Tensor::randn(shape, (Kind::Float, device));
    let y_held = Tensor::randint(10, [args.batch], (Kind::Int64, device));

    let mut rng = cnas::search::stream(args.seed, 0, 1, 0);
    let pairs: Vec<_> = (0..args.warmup + args.steps)
        .map(|_| {
            let n = uniform_cell(&mut rng, &stage.allowed, 4, &primitives);
            let r = uniform_cell(&mut rng, &stage.allowed, 4, &primitives);
            (n, r)
        })
        .collect();
    if let Some(path) = &args.archs_out {
        let edges = |c: &cnas::space::Cell| -> Vec<serde_json::Value> {
            c.edges.iter().map(|e| serde_json::json!([e.op.name(), e.from, e.to])).collect()
        };
        let json: Vec<serde_json::Value> =
            pairs.iter().map(|(n, r)| serde_json::json!([edges(n), edges(r)])).collect();
        std::fs::write(path, serde_json::to_string(&json)?)?;
    }

    let mut last_loss = Tensor::from(0f32);
    let mut weight_secs = 0.0;
    for (i, (n, r)) in pairs.iter().enumerate() {
        if i == args.warmup {
            sync(device);
            weight_secs = -elapsed();
        }
        last_loss = weight_step(&supernet, &mut sgd, &param_use, (&x, &y), (n, r), rule, None)?.0;
    }
    sync(device);
    weight_secs += elapsed();

    // The parts of `search::weight_step`, each timed to the end of its device work.
    let mut parts = [0.0f64; 3];
    if args.breakdown {
        for (n, r) in pairs.iter().skip(args.warmup) {
            let mut t = elapsed();
            let mut lap = |k: usize| {
                sync(device);
                let now = elapsed();
                parts[k] += now - t;
                t = now;
            };
            let logits = supernet.forward_t(&x, n, r, true)?;
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
            lap(0);
            if rule.sparse {
                sgd.zero_grad()?;
            } else {
                sgd.zero_grad_in_place()?;
            }
            loss.backward();
            lap(1);
            let active = param_use.active(n, r);
            if rule.sparse {
                let params: Vec<Tensor> = active.iter().map(|&i| sgd.params()[i].shallow_clone()).collect();
                let _norm = clip_grad_norm(&params, 5.0)?;
                sgd.step_subset(&active)?;
            } else {
                sgd.step()?;
            }
            lap(2);
        }
    }
    let per_step = |secs: f64| secs * 1e3 / args.steps.max(1) as f64;
    let breakdown = args.breakdown.then(|| {
        serde_json::json!({"forward": per_step(parts[0]), "backward": per_step(parts[1]), "update": per_step(parts[2])})
    });

    let mut crng = cnas::search::stream(args.seed, 0, 4, 0);
    let mut controller_secs = 0.0;
    let mut reward = 0.0;
    for i in 0..args.warmup + args.controller_steps {
        if i == args.warmup {
            controller_secs = -elapsed();
        }
        let step = controller_step(
            &supernet,
            [&normal, &reduce],
            &mut adam,
            &mut baseline,
            &mut crng,
            stage,
            &primitives,
            (&x_held, &y_held),
            0.005,
            Some(5.0),
            None,
        )?;
        reward += step.reward;
    }
    controller_secs += elapsed();
    let batch = args.batch as f64;
    println!(
        "{}",
        serde_json::json!({
            "engine": "cnas",
            "weights_images_per_s": batch * args.steps as f64 / weight_secs,
            "controller_images_per_s": batch * args.controller_steps as f64 / controller_secs,
            "weights_ms_per_step": weight_secs * 1e3 / args.steps as f64,
            "controller_ms_per_step": controller_secs * 1e3 / args.controller_steps as f64,
            "threads": tch::get_num_threads(),
            "device": format!("{device:?}"),
            "channels": args.channels, "layers": args.layers, "batch": args.batch, "image_size": args.image_size,
            "final_loss": last_loss.double_value(&[]),
            "mean_reward": reward / (args.warmup + args.controller_steps) as f64,
            "breakdown_ms_per_step": breakdown,
        })
    );
    Ok(())
}

/// Seconds since the first call (a monotonic clock for the timings above).
fn elapsed() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
