//! The `cnas` command line: a thin layer over the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cnas::device::DeviceChoice;
use cnas::model::{Network, NetworkConfig, NetworkKind};
use cnas::report::ArchInfo;

#[derive(Parser, Debug)]
#[command(name = "cnas", version, about = "Curriculum Neural Architecture Search on libtorch")]
struct Cli {
    /// Where to compute: auto (CUDA when libtorch sees a GPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    /// Logs only: no progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Data-parallel runs (WORLD_SIZE > 1): how long to wait for the other ranks (to connect,
    /// or in any collective) before failing: seconds, or with a unit (90s, 10m, 1h).
    #[arg(long, global = true, default_value = "10m", value_parser = cnas::dist::parse_timeout)]
    dist_timeout: Duration,
    /// Data-parallel runs: size of the gradient buckets all-reduced together, in MiB.
    #[arg(long, global = true, default_value_t = 25.0, value_parser = parse_bucket_mb)]
    bucket_mb: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Curriculum architecture search on CIFAR-10 (resumable); leaves the best genotype in
    /// RUN_DIR/genotype.json.
    Search(Box<SearchArgs>),
    /// Train a genotype from scratch with the paper's recipe (resumable); leaves the best and
    /// last checkpoints, metrics and the final evaluation in OUT.
    Train(Box<TrainArgs>),
    /// Score trained weights on the test split: top-1/top-5, loss, per-class accuracy,
    /// confusion matrix.
    Eval(Box<EvalArgs>),
    /// Show a genotype and the size (params, multiply-adds) of the network built from it.
    Info {
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Classify images, CIFAR-10 .bin records or .npy arrays with trained weights.
    Predict {
        #[command(flatten)]
        net: NetArgs,
        /// Weights: a PyTorch state_dict (.pth), safetensors, or cnas's own weights file.
        #[arg(long)]
        weights: PathBuf,
        /// How many of the best classes to print per input.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Print one JSON object per input, with the raw logits.
        #[arg(long)]
        json: bool,
        /// PNG or JPEG images, CIFAR-10 .bin files, or normalised float32 N×3×H×W .npy arrays.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Draw the cells of a genotype (SVG, PNG or DOT, by the output's extension or --format).
    Draw(DrawArgs),
    /// One self-contained HTML page for a search or training run: configuration, curves, cells.
    Report(ReportArgs),
    /// Write trained weights as ONNX (inference graph), a PyTorch state_dict (.pth) or safetensors.
    Export(Box<ExportArgs>),
    /// Start N processes of a cnas command on this node as one data-parallel run, like
    /// `torchrun --nproc-per-node N --no-python cnas ...`: `cnas launch --nproc-per-node 2 --
    /// train --arch CNAS ...`.
    Launch(LaunchArgs),
    /// Fetch a data set or pretrained weights: CIFAR-10's official archive (MD5-checked,
    /// unpacked in one step) or the published CNAS ImageNet weights (SHA-256-checked); resumable.
    Download {
        /// What to fetch.
        #[arg(value_enum)]
        what: cnas::data::download::DownloadTarget,
        /// Folder to put it in [default: ./data].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Fetch from this address instead of the official one (a mirror).
        #[arg(long)]
        url: Option<String>,
    },
}

/// `cnas launch`: the environment torchrun would set, for each local process.
#[derive(Args, Debug)]
struct LaunchArgs {
    /// Processes on this node (one per GPU on a GPU node).
    #[arg(long, alias = "nproc_per_node", value_parser = clap::value_parser!(u32).range(1..=1024))]
    nproc_per_node: u32,
    /// Nodes in the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    nnodes: u32,
    /// This node's index, 0..nnodes.
    #[arg(long, alias = "node_rank", default_value_t = 0)]
    node_rank: u32,
    /// Address of node 0, where rank 0 hosts the rendezvous.
    #[arg(long, alias = "master_addr", default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long, alias = "master_port", default_value_t = 29500, value_parser = clap::value_parser!(u16).range(1..))]
    master_port: u16,
    /// The cnas command each process runs (after `--`), e.g. `train --arch CNAS -o OUT`.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// `cnas draw`.
#[derive(Args, Debug)]
struct DrawArgs {
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON or DARTS text).
    #[arg(long)]
    arch: String,
    /// Output file (.svg, .png or .dot).
    #[arg(short = 'o', long)]
    out: PathBuf,
    /// Output format [default: from the output's extension].
    #[arg(long, value_enum)]
    format: Option<cnas::draw::Format>,
    /// Graph layout: Graphviz dot when installed (auto), dot, or the built-in Rust layout.
    #[arg(long, value_enum, default_value_t = cnas::draw::Layout::Auto)]
    layout: cnas::draw::Layout,
    /// Which cells to draw.
    #[arg(long, value_enum, default_value_t = cnas::draw::Cells::Both)]
    cell: cnas::draw::Cells,
}

/// `cnas report`.
#[derive(Args, Debug)]
struct ReportArgs {
    /// A search or training run directory.
    run_dir: PathBuf,
    /// Output HTML file [default: RUN_DIR/report.html].
    #[arg(short = 'o', long)]
    out: Option<PathBuf>,
    /// Graph layout of the cells drawn in the report.
    #[arg(long, value_enum, default_value_t = cnas::draw::Layout::Auto)]
    layout: cnas::draw::Layout,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    /// The paper's configuration, as the released CNAS code runs it: C=16, 8 cells, batch 96,
    /// 8 stages of 20 + 40 epochs.
    #[value(alias = "released")]
    Paper,
    /// A tiny configuration that runs every stage in minutes on a CPU.
    Quick,
}

/// `cnas search`: every number has the paper's default (or the preset's) unless given.
#[derive(Args, Debug)]
struct SearchArgs {
    #[command(flatten)]
    data: cnas::data::DataArgs,
    /// Run directory (config, metrics, checkpoints, candidates, genotype).
    #[arg(short = 'o', long, value_name = "RUN_DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint, with its own options.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Start over in a RUN_DIR that holds another run, deleting it.
    #[arg(long)]
    force: bool,
    /// paper (or released): the paper's configuration as the released CNAS code runs it;
    /// quick: tiny, every stage, minutes on a CPU. Options given below replace the preset's.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    preset: Preset,
    /// Curriculum: op (grow the operation set), node (grow the searched nodes), fixed (none)
    /// [default: op].
    #[arg(long, value_enum)]
    mode: Option<cnas::search::CurriculumMode>,
    /// Operation order of the op curriculum, comma-separated, all 8 operations [default:
    /// sep_conv_3x3, then the other 7 permuted by torch.randperm(7) seeded with --seed, as
    /// released].
    #[arg(long, value_delimiter = ',', value_name = "OP,OP,...")]
    op_order: Option<Vec<String>>,
    /// Supernet channels [default: 16; quick: 8].
    #[arg(long)]
    init_channels: Option<i64>,
    /// Supernet cells [default: 8; quick: 5].
    #[arg(long)]
    layers: Option<i64>,
    /// Intermediate nodes per cell [default: 4].
    #[arg(long)]
    nodes: Option<usize>,
    /// Images per batch, per process [default: 96; quick: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Warm-up epochs per stage (uniform sampling) [default: 20; quick: 1].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Search epochs per stage (weights, then controller) [default: 40; quick: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// REINFORCE updates after each search epoch [default: one per held-out batch, a pass
    /// over the held-out part; quick: 8].
    #[arg(long)]
    controller_steps: Option<usize>,
    /// Supernet learning rate (SGD, Nesterov, constant) [default: 0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// Supernet SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Supernet weight decay [default: 3e-4].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Update only the sampled path's parameters (gradients dropped). Default, as released
    /// under PyTorch 1.5: gradients are zeroed in place, so every parameter used once keeps
    /// taking weight decay and momentum.
    #[arg(long)]
    sparse_update: bool,
    /// Clip the supernet's gradients to this global L2 norm [default: no clipping].
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Controller learning rate (Adam) [default: 3e-4; quick: 3.5e-3].
    #[arg(long)]
    controller_lr: Option<f64>,
    /// Controller weight decay (Adam, L2) [default: 5e-4].
    #[arg(long)]
    controller_weight_decay: Option<f64>,
    /// Controller LSTM hidden size [default: 128].
    #[arg(long)]
    controller_hidden: Option<i64>,
    /// Clip the controllers' gradients to this global L2 norm [default: 5].
    #[arg(long)]
    controller_grad_clip: Option<f64>,
    /// Do not clip the controllers' gradients.
    #[arg(long, conflicts_with = "controller_grad_clip")]
    no_controller_grad_clip: bool,
    /// Entropy bonus weight [default: 0.005].
    #[arg(long)]
    entropy_weight: Option<f64>,
    /// Decay of the reward's moving-average baseline [default: 0.99].
    #[arg(long)]
    baseline_decay: Option<f64>,
    /// Controller logit temperature [default: none].
    #[arg(long)]
    temperature: Option<f64>,
    /// Controller tanh logit clipping constant [default: none].
    #[arg(long)]
    tanh_constant: Option<f64>,
    /// Rounds of candidates derived at the end of each stage [default: 3].
    #[arg(long)]
    derive_rounds: Option<usize>,
    /// Candidates sampled per derive round [default: 10; quick: 4].
    #[arg(long)]
    derive_samples: Option<usize>,
    /// Un-augmented held-out images every candidate is scored on (all of the held-out part
    /// when it has fewer) [default: 10000; quick: 512].
    #[arg(long)]
    derive_images: Option<usize>,
    /// Images per forward pass when scoring candidates; BatchNorm uses each batch's
    /// statistics, so this is part of the score [default: --batch-size].
    #[arg(long)]
    derive_batch_size: Option<usize>,
    /// Uniformly sampled architectures also scored at the end of each stage, to compare the
    /// controller with chance [default: 0; quick: 4].
    #[arg(long)]
    derive_uniform: Option<usize>,
    /// Use at most this many images of each search split [default: all; quick: 512].
    #[arg(long)]
    max_images: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true)]
    stop_after_epochs: Option<usize>,
}

impl SearchArgs {
    fn options(&self) -> anyhow::Result<cnas::search::SearchOptions> {
        let mut o = match self.preset {
            Preset::Paper => cnas::search::SearchOptions::default(),
            Preset::Quick => cnas::search::SearchOptions::quick(),
        };
        // What the user gave replaces the preset's value; optional settings stay optional.
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { o.$field = v; })* };
        }
        macro_rules! set_optional {
            ($($field:ident),*) => { $(if self.$field.is_some() { o.$field = self.$field; })* };
        }
        set!(
            mode,
            init_channels,
            layers,
            nodes,
            batch_size,
            warmup_epochs,
            epochs,
            lr,
            momentum,
            weight_decay
        );
        set!(controller_lr, controller_weight_decay, controller_hidden, entropy_weight, baseline_decay);
        set!(derive_rounds, derive_samples, derive_images, derive_uniform);
        set_optional!(controller_steps, grad_clip, temperature, tanh_constant, max_images, derive_batch_size);
        set_optional!(controller_grad_clip);
        if self.no_controller_grad_clip {
            o.controller_grad_clip = None;
        }
        if let Some(names) = &self.op_order {
            let order = names
                .iter()
                .map(|n| n.trim().parse::<cnas::space::Primitive>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cnas::error::Error::BadOption(format!("--op-order: {e}")))?;
            o.op_order = Some(order);
        }
        o.sparse_update = self.sparse_update;
        o.seed = self.data.seed;
        o.sync_bn = self.sync_bn;
        Ok(o)
    }
}

/// `cnas train`: every number has the paper's default for the data set unless given.
#[derive(Args, Debug)]
struct TrainArgs {
    #[command(flatten)]
    data: cnas::data::DataArgs,
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON, e.g.
    /// RUN_DIR/genotype.json, or DARTS text).
    #[arg(long, required_unless_present = "resume")]
    arch: Option<String>,
    /// Run directory (config, metrics, last and best checkpoints, eval.json).
    #[arg(short = 'o', long, value_name = "OUT", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in OUT from its last checkpoint, with its own options.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["out", "arch"])]
    resume: Option<PathBuf>,
    /// Start over in an OUT that holds another run, deleting it.
    #[arg(long)]
    force: bool,
    /// Channels of the first cells [cifar10: 36, imagenet: 48].
    #[arg(long)]
    init_channels: Option<i64>,
    /// Number of cells [cifar10: 20, imagenet: 14].
    #[arg(long)]
    layers: Option<i64>,
    /// Training epochs [cifar10: 600, imagenet: 250]
    #[arg(long)]
    epochs: Option<usize>,
    /// Global batch: images per optimizer step over all ranks, divided evenly over the
    /// data-parallel ranks (WORLD_SIZE k: each takes batch / k) [cifar10: 128, imagenet: 256].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Initial learning rate (SGD; not rescaled with the batch) [0.05].
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate the decay ends at [0].
    #[arg(long)]
    lr_min: Option<f64>,
    /// SGD momentum [0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD weight decay (L2) [3e-4].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// No weight decay on parameters whose name contains "bias" (BatchNorm and convolution or
    /// linear biases; BatchNorm weights are still decayed) [cifar10: off, imagenet: on].
    #[arg(long, overrides_with = "bias_decay")]
    no_bias_decay: bool,
    /// Weight decay on biases too: turns the ImageNet default --no-bias-decay off.
    #[arg(long, overrides_with = "no_bias_decay")]
    bias_decay: bool,
    /// Learning-rate decay [cifar10: cosine, imagenet: linear].
    #[arg(long, value_enum)]
    scheduler: Option<cnas::train::SchedulerKind>,
    /// Epochs W of linear warm-up: epoch e < W (1-based) runs at lr·e/W, the decay starts
    /// from lr at e = W [0].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// --scheduler step: epochs between decays [1].
    #[arg(long)]
    step_size: Option<usize>,
    /// --scheduler step: decay factor [0.97].
    #[arg(long)]
    gamma: Option<f64>,
    /// Label smoothing ε: target 1-ε on the label and ε/(K-1) on each other class, as the
    /// released code [0].
    #[arg(long)]
    label_smooth: Option<f64>,
    /// Weight of the auxiliary head's loss; 0 trains without the head [0.4].
    #[arg(long)]
    auxiliary_weight: Option<f64>,
    /// Drop-path probability at the last epoch: epoch e of T (1-based) uses P·e/T [0.2].
    #[arg(long)]
    drop_path_prob: Option<f64>,
    /// Gradient clipping (global L2 norm) [5].
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Mixed precision: bf16 autocast for the forward pass, loss in fp32.
    #[arg(long)]
    amp: bool,
    /// Train on at most this many images of the training set.
    #[arg(long)]
    max_images: Option<usize>,
    /// Validate on at most this many test images.
    #[arg(long)]
    max_eval_images: Option<usize>,
    /// Validate every N epochs (and after the last) [1].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true)]
    stop_after_epochs: Option<usize>,
}

impl TrainArgs {
    fn options(&self) -> cnas::train::TrainOptions {
        let mut o = cnas::train::TrainOptions::paper(self.data.dataset);
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { o.$field = v; })* };
        }
        set!(init_channels, layers, epochs, batch_size, lr, lr_min, momentum, weight_decay, scheduler);
        set!(warmup_epochs, step_size, gamma, label_smooth, auxiliary_weight, drop_path_prob, grad_clip);
        set!(eval_every);
        o.max_images = self.max_images;
        o.max_eval_images = self.max_eval_images;
        if self.no_bias_decay || self.bias_decay {
            o.no_bias_decay = self.no_bias_decay;
        }
        o.amp = self.amp;
        o.sync_bn = self.sync_bn;
        o.seed = self.data.seed;
        o
    }
}

/// `cnas eval`: the network comes from the weights file (cnas format) or from --arch.
#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    data: cnas::data::DataArgs,
    /// Trained weights: OUT/best.safetensors or last.safetensors of `cnas train`, or a PyTorch
    /// state_dict (.pth) with --arch.
    #[arg(long, alias = "checkpoint", value_name = "FILE")]
    weights: PathBuf,
    /// The architecture, when the weights file does not say [CNAS].
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    init_channels: Option<i64>,
    #[arg(long)]
    layers: Option<i64>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    max_images: Option<usize>,
    /// bf16 autocast.
    #[arg(long)]
    amp: bool,
    /// Folder for eval.json (every number, the confusion matrix) and confusion.svg.
    #[arg(short = 'o', long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `cnas export`.
#[derive(Args, Debug)]
struct ExportArgs {
    /// The network, when the weights file does not describe it (PyTorch and plain safetensors).
    #[command(flatten)]
    net: NetArgs,
    /// Trained weights: cnas's own file, a training checkpoint, a PyTorch state_dict, safetensors.
    #[arg(long, alias = "checkpoint", value_name = "FILE")]
    weights: PathBuf,
    /// Output format [default: from the output's extension].
    #[arg(long, value_enum)]
    format: Option<cnas::export::ExportFormat>,
    /// The file to write.
    #[arg(short = 'o', long, value_name = "OUT")]
    out: PathBuf,
    /// Leave the auxiliary head out (.pth, safetensors; ONNX never has it).
    #[arg(long)]
    drop_auxiliary: bool,
    /// ONNX: keep BatchNormalization nodes instead of folding them into the convolutions.
    #[arg(long)]
    keep_bn: bool,
    /// ONNX: input height and width [default: 32 for cifar10, 224 for imagenet].
    #[arg(long)]
    image_size: Option<i64>,
}

impl ExportArgs {
    fn options(&self) -> anyhow::Result<cnas::export::ExportOptions> {
        Ok(cnas::export::ExportOptions {
            format: self.format,
            network: self.net.config()?.1,
            network_given: self.net.arch.is_some(),
            drop_auxiliary: self.drop_auxiliary,
            keep_bn: self.keep_bn,
            image_size: self.image_size,
        })
    }
}

/// Which fixed network to build.
#[derive(Args, Debug, Clone)]
struct NetArgs {
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON or DARTS text).
    #[arg(long)]
    arch: Option<String>,
    /// The network family: cifar10 (32×32 inputs) or imagenet (224×224).
    #[arg(long, default_value = "cifar10")]
    dataset: NetworkKind,
    /// Channels of the first cells [default: 36 for cifar10, 48 for imagenet].
    #[arg(long)]
    init_channels: Option<i64>,
    /// Number of cells [default: 20 for cifar10, 14 for imagenet].
    #[arg(long)]
    layers: Option<i64>,
    /// Number of classes [default: 10 for cifar10, 1000 for imagenet].
    #[arg(long)]
    classes: Option<i64>,
}

impl NetArgs {
    /// The network these options describe, with the paper's settings for what is not given.
    fn config(&self) -> anyhow::Result<(String, NetworkConfig)> {
        let arg = self.arch.as_deref().unwrap_or("CNAS");
        let (name, genotype) = cnas::space::resolve_arch(arg)?;
        let mut config = NetworkConfig::paper(self.dataset, genotype);
        config.init_channels = self.init_channels.unwrap_or(config.init_channels);
        config.layers = self.layers.unwrap_or(config.layers);
        config.num_classes = self.classes.unwrap_or(config.num_classes);
        Ok((name, config))
    }
}

fn main() -> ExitCode {
    // Output into a closed pipe (`cnas predict … | head`) ends the process quietly, as it does
    // for Unix tools, instead of a panic in println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Ranks other than 0 of a data-parallel run only warn, unless RUST_LOG says otherwise.
    let quiet_rank = std::env::var("RANK").is_ok_and(|r| r.trim() != "0")
        && std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() != "1");
    let default_level = if quiet_rank { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match std::env::var("RANK") {
                Ok(rank) if std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() != "1") => {
                    eprintln!("error (rank {rank}): {err:#}")
                }
                _ => eprintln!("error: {err:#}"),
            }
            let user = err
                .chain()
                .any(|cause| cause.downcast_ref::<cnas::Error>().is_some_and(cnas::Error::is_user_error));
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

/// For `search` and `train`: this process's part in a data-parallel run when WORLD_SIZE > 1
/// (one GPU per process, `cuda:LOCAL_RANK`, when the device is CUDA), and the device to use.
fn parse_bucket_mb(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of MiB")),
    }
}

fn join_run(
    device: tch::Device,
    timeout: Duration,
    bucket_mb: f64,
) -> anyhow::Result<(Option<cnas::train::DataParallel>, tch::Device)> {
    let Some(env) = cnas::dist::DistEnv::from_env().map_err(cnas::Error::from)? else {
        return Ok((None, device));
    };
    let device = if device.is_cuda() { tch::Device::Cuda(env.local_rank) } else { device };
    if let tch::Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            anyhow::bail!(cnas::Error::BadOption(format!(
                "LOCAL_RANK {n} needs cuda:{n} but libtorch sees {count} GPU(s); start at most {count} processes per node"
            )));
        }
    }
    tracing::info!(
        "rank {} of {} (local rank {}) on {device:?}: joining {}:{} ({} backend)",
        env.rank,
        env.world_size,
        env.local_rank,
        env.master_addr,
        env.master_port,
        if device.is_cuda() { "NCCL" } else { "Gloo" }
    );
    let group = cnas::dist::ProcessGroup::init(&env, device, timeout).map_err(cnas::Error::from)?;
    let bucket_bytes = (bucket_mb * (1u64 << 20) as f64) as usize;
    let parallel = cnas::train::DataParallel::new(std::sync::Arc::new(group)).with_bucket_bytes(bucket_bytes);
    Ok((Some(parallel), device))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = cli.device.resolve()?;
    match cli.command {
        Command::Search(args) => {
            let (run_dir, start) = start_mode(&args.resume, &args.out, args.force, "RUN_DIR")?;
            let (parallel, device) = join_run(device, cli.dist_timeout, cli.bucket_mb)?;
            let main = parallel.as_ref().is_none_or(cnas::train::DataParallel::is_main);
            let outcome = cnas::search::search(
                &args.options()?,
                &args.data,
                &run_dir,
                start,
                device,
                cli.quiet,
                args.stop_after_epochs,
                parallel,
            )?;
            if let Some(outcome) = outcome.filter(|_| main) {
                println!("{}", outcome.best.genotype);
                println!(
                    "held-out score {:.2}% (stage {}); genotype written to {}",
                    outcome.best.score * 100.0,
                    outcome.best.stage,
                    outcome.run_dir.join("genotype.json").display()
                );
            }
        }
        Command::Train(args) => {
            use cnas::search::StartMode;
            let (run_dir, start) = start_mode(&args.resume, &args.out, args.force, "OUT")?;
            let request = match &args.arch {
                Some(arch) if start != StartMode::Resume => {
                    let (name, genotype) = cnas::space::resolve_arch(arch)?;
                    Some(cnas::train::TrainRequest {
                        arch: name,
                        genotype,
                        options: args.options(),
                        data: &args.data,
                    })
                }
                _ => None,
            };
            let (parallel, device) = join_run(device, cli.dist_timeout, cli.bucket_mb)?;
            let main = parallel.as_ref().is_none_or(cnas::train::DataParallel::is_main);
            let summary = cnas::train::train(
                request,
                args.data.workers,
                &run_dir,
                start,
                device,
                cli.quiet,
                args.stop_after_epochs,
                parallel,
            )?;
            if let Some(summary) = summary.filter(|_| main) {
                println!("{summary}");
            }
        }
        Command::Eval(args) => {
            let request = cnas::eval::EvalRequest {
                weights: &args.weights,
                arch: args.arch.as_deref(),
                init_channels: args.init_channels,
                layers: args.layers,
                data: &args.data,
                batch_size: args.batch_size,
                max_images: args.max_images,
                amp: args.amp,
            };
            let result = cnas::eval::evaluate_weights(&request, device, cli.quiet)?;
            if let Some(dir) = &args.out {
                cnas::eval::write_result(&result, dir)?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{result}");
            }
        }
        Command::Info { net, json } => {
            let (name, config) = net.config()?;
            let info = ArchInfo::measure(name, config, device)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
        }
        Command::Predict { net, weights, top, batch_size, json, inputs } => {
            let tensors = cnas::weights::read(&weights)?;
            let metadata = cnas::weights::read_metadata(&weights)?.unwrap_or_default();
            let (_, mut config) =
                match (&net.arch, cnas::weights::network_from_metadata(&weights, &metadata)?) {
                    // A cnas weights file knows its network unless the user says otherwise.
                    (None, Some(config)) => (String::new(), config),
                    _ => net.config()?,
                };
            config.auxiliary = cnas::weights::has_auxiliary(&tensors);
            let vs = tch::nn::VarStore::new(device);
            let network = Network::new(&vs.root(), config)?;
            cnas::weights::load_into(&vs, &tensors)
                .with_context(|| format!("loading {}", weights.display()))?;
            let kind = network.config().kind;
            let size = kind.default_image_size();
            let mut samples = Vec::new();
            for input in &inputs {
                samples.extend(cnas::predict::read_samples(input, kind, size)?);
            }
            for p in cnas::predict::predict(&network, &samples, device, batch_size, top) {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    let label = p.label.map(|l| {
                        format!(
                            " (label: {})",
                            cnas::predict::class_name(kind, network.config().num_classes, l)
                        )
                    });
                    println!("{}{}", p.input, label.unwrap_or_default());
                    for (rank, c) in p.top.iter().enumerate() {
                        println!("  {}. {:<24} {:.4}", rank + 1, c.name, c.prob);
                    }
                }
            }
        }
        Command::Draw(a) => {
            let request = cnas::draw::DrawRequest {
                arch: a.arch,
                out: a.out,
                format: a.format,
                layout: a.layout,
                cells: a.cell,
            };
            cnas::draw::draw(&request)?;
            println!("{}", request.out.display());
        }
        Command::Report(a) => {
            let out = a.out.unwrap_or_else(|| a.run_dir.join("report.html"));
            cnas::report::html::write_report(&a.run_dir, &out, a.layout, device)?;
            println!("{}", out.display());
        }
        Command::Export(args) => {
            println!("{}", cnas::export::export(&args.weights, &args.out, &args.options()?)?);
        }
        Command::Download { what, data, url } => {
            let dir = data.unwrap_or_else(|| PathBuf::from("data"));
            let placed = cnas::data::download::download_from(what, &dir, url.as_deref(), !cli.quiet)?;
            println!("{}", placed.display());
        }
        Command::Launch(args) => launch(&args)?,
    }
    Ok(())
}

/// `cnas launch`: starts the local ranks with torchrun's variables, waits for them, and stops
/// the others as soon as one fails (then fails with its exit code).
fn launch(args: &LaunchArgs) -> anyhow::Result<()> {
    use std::process::{Command as Process, Stdio};
    if args.node_rank >= args.nnodes {
        anyhow::bail!(cnas::Error::BadOption(format!(
            "--node-rank {} does not exist among --nnodes {}",
            args.node_rank, args.nnodes
        )));
    }
    if args.command.first().is_some_and(|c| c == "launch") {
        anyhow::bail!(cnas::Error::BadOption("cnas launch cannot launch itself".into()));
    }
    let exe = std::env::current_exe().context("locating the cnas binary")?;
    let per_node = args.nproc_per_node as usize;
    let world = per_node * args.nnodes as usize;
    // As torchrun: one libtorch thread per process unless said otherwise, so N processes do
    // not fight over the cores with N thread pools each as wide as the machine.
    let one_thread = per_node > 1 && std::env::var_os("OMP_NUM_THREADS").is_none();
    let mut children = Vec::with_capacity(per_node);
    for local in 0..per_node {
        let rank = args.node_rank as usize * per_node + local;
        let mut process = Process::new(&exe);
        if one_thread {
            process.env("OMP_NUM_THREADS", "1");
        }
        let child = process
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", per_node.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    let mut failure: Option<(usize, i32)> = None;
    let mut running = children.len();
    while running > 0 {
        running = 0;
        for (rank, child) in &mut children {
            match child.try_wait().context("waiting for a rank")? {
                Some(status) if !status.success() && failure.is_none() => {
                    failure = Some((*rank, status.code().unwrap_or(1)));
                }
                Some(_) => {}
                None => running += 1,
            }
        }
        if failure.is_some() && running > 0 {
            // One rank failed: the others would only wait for it until --dist-timeout.
            for (_, child) in &mut children {
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failure {
        Some((rank, code)) => {
            eprintln!("error: rank {rank} exited with code {code}; stopped the other local ranks");
            std::process::exit(code.clamp(1, 255));
        }
        None => Ok(()),
    }
}

/// The run directory and how to start in it, from `--resume DIR` / `-o DIR [--force]`.
fn start_mode(
    resume: &Option<PathBuf>,
    out: &Option<PathBuf>,
    force: bool,
    placeholder: &str,
) -> anyhow::Result<(PathBuf, cnas::search::StartMode)> {
    use cnas::search::StartMode;
    Ok(match (resume, out) {
        (Some(dir), _) => (dir.clone(), StartMode::Resume),
        (None, Some(dir)) if force => (dir.clone(), StartMode::Force),
        (None, Some(dir)) => (dir.clone(), StartMode::New),
        (None, None) => {
            let message = format!("give -o {placeholder} or --resume {placeholder}");
            anyhow::bail!(cnas::Error::BadOption(message))
        }
    })
}
