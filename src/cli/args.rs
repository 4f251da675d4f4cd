//! The argument structs of the subcommands (clap derive) and how they become the library's
//! options.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use cnas::device::DeviceChoice;

use cnas::model::{NetworkConfig, NetworkKind};

#[derive(Parser, Debug)]
#[command(name = "cnas", version, about = "Curriculum Neural Architecture Search on libtorch")]
pub(crate) struct Cli {
    /// Where to compute: auto (CUDA when libtorch sees a GPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// Logs only: no progress bars.
    #[arg(long, global = true)]
    pub(crate) quiet: bool,
    /// Data-parallel runs (WORLD_SIZE > 1): how long to wait for the other ranks (to connect,
    /// or in any collective) before failing: seconds, or with a unit (90s, 10m, 1h).
    #[arg(long, global = true, default_value = "10m", value_parser = cnas::dist::parse_timeout)]
    pub(crate) dist_timeout: Duration,
    /// Data-parallel runs: size of the gradient buckets all-reduced together, in MiB.
    #[arg(long, global = true, default_value_t = 25.0, value_parser = parse_bucket_mb)]
    pub(crate) bucket_mb: f64,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    Info(InfoArgs),
    /// Classify images, CIFAR-10 .bin records or .npy arrays with trained weights.
    Predict(PredictArgs),
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
    Download(DownloadArgs),
}

fn parse_bucket_mb(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of MiB")),
    }
}

/// `cnas info`.
#[derive(Args, Debug)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    pub(crate) net: NetArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `cnas predict`.
#[derive(Args, Debug)]
pub(crate) struct PredictArgs {
    #[command(flatten)]
    pub(crate) net: NetArgs,
    /// Weights: a PyTorch state_dict (.pth), safetensors, or cnas's own weights file.
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// How many of the best classes to print per input.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Print one JSON object per input, with the raw logits.
    #[arg(long)]
    pub(crate) json: bool,
    /// PNG or JPEG images, CIFAR-10 .bin files, or normalised float32 N×3×H×W .npy arrays.
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
}

/// `cnas download`.
#[derive(Args, Debug)]
pub(crate) struct DownloadArgs {
    /// What to fetch.
    #[arg(value_enum)]
    pub(crate) what: cnas::data::download::DownloadTarget,
    /// Folder to put it in [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Fetch from this address instead of the official one (a mirror).
    #[arg(long)]
    pub(crate) url: Option<String>,
}

/// `cnas launch`: the environment torchrun would set, for each local process.
#[derive(Args, Debug)]
pub(crate) struct LaunchArgs {
    /// Processes on this node (one per GPU on a GPU node).
    #[arg(long, alias = "nproc_per_node", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) nproc_per_node: u32,
    /// Nodes in the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) nnodes: u32,
    /// This node's index, 0..nnodes.
    #[arg(long, alias = "node_rank", default_value_t = 0)]
    pub(crate) node_rank: u32,
    /// Address of node 0, where rank 0 hosts the rendezvous.
    #[arg(long, alias = "master_addr", default_value = "127.0.0.1")]
    pub(crate) master_addr: String,
    #[arg(long, alias = "master_port", default_value_t = 29500, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) master_port: u16,
    /// The cnas command each process runs (after `--`), e.g. `train --arch CNAS -o OUT`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub(crate) command: Vec<String>,
}

/// `cnas draw`.
#[derive(Args, Debug)]
pub(crate) struct DrawArgs {
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON or DARTS text).
    #[arg(long)]
    pub(crate) arch: String,
    /// Output file (.svg, .png or .dot).
    #[arg(short = 'o', long)]
    pub(crate) out: PathBuf,
    /// Output format [default: from the output's extension].
    #[arg(long, value_enum)]
    pub(crate) format: Option<cnas::draw::Format>,
    /// Graph layout: Graphviz dot when installed (auto), dot, or the built-in Rust layout.
    #[arg(long, value_enum, default_value_t = cnas::draw::Layout::Auto)]
    pub(crate) layout: cnas::draw::Layout,
    /// Which cells to draw.
    #[arg(long, value_enum, default_value_t = cnas::draw::Cells::Both)]
    pub(crate) cell: cnas::draw::Cells,
}

/// `cnas report`.
#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// A search or training run directory.
    pub(crate) run_dir: PathBuf,
    /// Output HTML file [default: RUN_DIR/report.html].
    #[arg(short = 'o', long)]
    pub(crate) out: Option<PathBuf>,
    /// Graph layout of the cells drawn in the report.
    #[arg(long, value_enum, default_value_t = cnas::draw::Layout::Auto)]
    pub(crate) layout: cnas::draw::Layout,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preset {
    /// The paper's configuration, as the released CNAS code runs it: C=16, 8 cells, batch 96,
    /// 8 stages of 20 + 40 epochs.
    #[value(alias = "released")]
    Paper,
    /// A tiny configuration that runs every stage in minutes on a CPU.
    Quick,
}

/// `cnas search`: every number has the paper's default (or the preset's) unless given.
#[derive(Args, Debug)]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    pub(crate) data: cnas::data::DataArgs,
    /// Run directory (config, metrics, checkpoints, candidates, genotype).
    #[arg(short = 'o', long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint, with its own options.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub(crate) resume: Option<PathBuf>,
    /// Start over in a RUN_DIR that holds another run, deleting it.
    #[arg(long)]
    pub(crate) force: bool,
    /// paper (or released): the paper's configuration as the released CNAS code runs it;
    /// quick: tiny, every stage, minutes on a CPU. Options given below replace the preset's.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    pub(crate) preset: Preset,
    /// Curriculum: op (grow the operation set), node (grow the searched nodes), fixed (none)
    /// [default: op].
    #[arg(long, value_enum)]
    pub(crate) mode: Option<cnas::search::CurriculumMode>,
    /// Operation order of the op curriculum, comma-separated, all 8 operations [default:
    /// sep_conv_3x3, then the other 7 permuted by torch.randperm(7) seeded with --seed, as
    /// released].
    #[arg(long, value_delimiter = ',', value_name = "OP,OP,...")]
    pub(crate) op_order: Option<Vec<String>>,
    /// Supernet channels [default: 16; quick: 8].
    #[arg(long)]
    pub(crate) init_channels: Option<i64>,
    /// Supernet cells [default: 8; quick: 5].
    #[arg(long)]
    pub(crate) layers: Option<i64>,
    /// Intermediate nodes per cell [default: 4].
    #[arg(long)]
    pub(crate) nodes: Option<usize>,
    /// Images per batch, per process [default: 96; quick: 32].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Warm-up epochs per stage (uniform sampling) [default: 20; quick: 1].
    #[arg(long)]
    pub(crate) warmup_epochs: Option<usize>,
    /// Search epochs per stage (weights, then controller) [default: 40; quick: 1].
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// REINFORCE updates after each search epoch [default: one per held-out batch, a pass
    /// over the held-out part; quick: 8].
    #[arg(long)]
    pub(crate) controller_steps: Option<usize>,
    /// Supernet learning rate (SGD, Nesterov, constant) [default: 0.01].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Supernet SGD momentum [default: 0.9].
    #[arg(long)]
    pub(crate) momentum: Option<f64>,
    /// Supernet weight decay [default: 3e-4].
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    /// Update only the sampled path's parameters (gradients dropped). Default, as released
    /// under PyTorch 1.5: gradients are zeroed in place, so every parameter used once keeps
    /// taking weight decay and momentum.
    #[arg(long)]
    pub(crate) sparse_update: bool,
    /// Clip the supernet's gradients to this global L2 norm [default: no clipping].
    #[arg(long)]
    pub(crate) grad_clip: Option<f64>,
    /// Controller learning rate (Adam) [default: 3e-4; quick: 3.5e-3].
    #[arg(long)]
    pub(crate) controller_lr: Option<f64>,
    /// Controller weight decay (Adam, L2) [default: 5e-4].
    #[arg(long)]
    pub(crate) controller_weight_decay: Option<f64>,
    /// Controller LSTM hidden size [default: 128].
    #[arg(long)]
    pub(crate) controller_hidden: Option<i64>,
    /// Clip the controllers' gradients to this global L2 norm [default: 5].
    #[arg(long)]
    pub(crate) controller_grad_clip: Option<f64>,
    /// Do not clip the controllers' gradients.
    #[arg(long, conflicts_with = "controller_grad_clip")]
    pub(crate) no_controller_grad_clip: bool,
    /// Entropy bonus weight [default: 0.005].
    #[arg(long)]
    pub(crate) entropy_weight: Option<f64>,
    /// Decay of the reward's moving-average baseline [default: 0.99].
    #[arg(long)]
    pub(crate) baseline_decay: Option<f64>,
    /// Controller logit temperature [default: none].
    #[arg(long)]
    pub(crate) temperature: Option<f64>,
    /// Controller tanh logit clipping constant [default: none].
    #[arg(long)]
    pub(crate) tanh_constant: Option<f64>,
    /// Rounds of candidates derived at the end of each stage [default: 3].
    #[arg(long)]
    pub(crate) derive_rounds: Option<usize>,
    /// Candidates sampled per derive round [default: 10; quick: 4].
    #[arg(long)]
    pub(crate) derive_samples: Option<usize>,
    /// Un-augmented held-out images every candidate is scored on (all of the held-out part
    /// when it has fewer) [default: 10000; quick: 512].
    #[arg(long)]
    pub(crate) derive_images: Option<usize>,
    /// Images per forward pass when scoring candidates; BatchNorm uses each batch's
    /// statistics, so this is part of the score [default: --batch-size].
    #[arg(long)]
    pub(crate) derive_batch_size: Option<usize>,
    /// Uniformly sampled architectures also scored at the end of each stage, to compare the
    /// controller with chance [default: 0; quick: 4].
    #[arg(long)]
    pub(crate) derive_uniform: Option<usize>,
    /// Use at most this many images of each search split [default: all; quick: 512].
    #[arg(long)]
    pub(crate) max_images: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    pub(crate) sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true)]
    pub(crate) stop_after_epochs: Option<usize>,
}

impl SearchArgs {
    pub(crate) fn options(&self) -> anyhow::Result<cnas::search::SearchOptions> {
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
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: cnas::data::DataArgs,
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON, e.g.
    /// RUN_DIR/genotype.json, or DARTS text).
    #[arg(long, required_unless_present = "resume")]
    pub(crate) arch: Option<String>,
    /// Run directory (config, metrics, last and best checkpoints, eval.json).
    #[arg(short = 'o', long, value_name = "OUT", required_unless_present = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in OUT from its last checkpoint, with its own options.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["out", "arch"])]
    pub(crate) resume: Option<PathBuf>,
    /// Start over in an OUT that holds another run, deleting it.
    #[arg(long)]
    pub(crate) force: bool,
    /// Channels of the first cells [cifar10: 36, imagenet: 48].
    #[arg(long)]
    pub(crate) init_channels: Option<i64>,
    /// Number of cells [cifar10: 20, imagenet: 14].
    #[arg(long)]
    pub(crate) layers: Option<i64>,
    /// Training epochs [cifar10: 600, imagenet: 250]
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Global batch: images per optimizer step over all ranks, divided evenly over the
    /// data-parallel ranks (WORLD_SIZE k: each takes batch / k) [cifar10: 128, imagenet: 256].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Initial learning rate (SGD; not rescaled with the batch) [0.05].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Learning rate the decay ends at [0].
    #[arg(long)]
    pub(crate) lr_min: Option<f64>,
    /// SGD momentum [0.9].
    #[arg(long)]
    pub(crate) momentum: Option<f64>,
    /// SGD weight decay (L2) [3e-4].
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    /// No weight decay on parameters whose name contains "bias" (BatchNorm and convolution or
    /// linear biases; BatchNorm weights are still decayed) [cifar10: off, imagenet: on].
    #[arg(long, overrides_with = "bias_decay")]
    pub(crate) no_bias_decay: bool,
    /// Weight decay on biases too: turns the ImageNet default --no-bias-decay off.
    #[arg(long, overrides_with = "no_bias_decay")]
    pub(crate) bias_decay: bool,
    /// Learning-rate decay [cifar10: cosine, imagenet: linear].
    #[arg(long, value_enum)]
    pub(crate) scheduler: Option<cnas::train::SchedulerKind>,
    /// Epochs W of linear warm-up: epoch e < W (1-based) runs at lr·e/W, the decay starts
    /// from lr at e = W [0].
    #[arg(long)]
    pub(crate) warmup_epochs: Option<usize>,
    /// --scheduler step: epochs between decays [1].
    #[arg(long)]
    pub(crate) step_size: Option<usize>,
    /// --scheduler step: decay factor [0.97].
    #[arg(long)]
    pub(crate) gamma: Option<f64>,
    /// Label smoothing ε: target 1-ε on the label and ε/(K-1) on each other class, as the
    /// released code [0].
    #[arg(long)]
    pub(crate) label_smooth: Option<f64>,
    /// Weight of the auxiliary head's loss; 0 trains without the head [0.4].
    #[arg(long)]
    pub(crate) auxiliary_weight: Option<f64>,
    /// Drop-path probability at the last epoch: epoch e of T (1-based) uses P·e/T [0.2].
    #[arg(long)]
    pub(crate) drop_path_prob: Option<f64>,
    /// Gradient clipping (global L2 norm) [5].
    #[arg(long)]
    pub(crate) grad_clip: Option<f64>,
    /// Mixed precision: bf16 autocast for the forward pass, loss in fp32.
    #[arg(long)]
    pub(crate) amp: bool,
    /// Train on at most this many images of the training set.
    #[arg(long)]
    pub(crate) max_images: Option<usize>,
    /// Validate on at most this many test images.
    #[arg(long)]
    pub(crate) max_eval_images: Option<usize>,
    /// Validate every N epochs (and after the last) [1].
    #[arg(long)]
    pub(crate) eval_every: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    pub(crate) sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true)]
    pub(crate) stop_after_epochs: Option<usize>,
}

impl TrainArgs {
    pub(crate) fn options(&self) -> cnas::train::TrainOptions {
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
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) data: cnas::data::DataArgs,
    /// Trained weights: OUT/best.safetensors or last.safetensors of `cnas train`, or a PyTorch
    /// state_dict (.pth) with --arch.
    #[arg(long, alias = "checkpoint", value_name = "FILE")]
    pub(crate) weights: PathBuf,
    /// The architecture, when the weights file does not say [CNAS].
    #[arg(long)]
    pub(crate) arch: Option<String>,
    #[arg(long)]
    pub(crate) init_channels: Option<i64>,
    #[arg(long)]
    pub(crate) layers: Option<i64>,
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub(crate) max_images: Option<usize>,
    /// bf16 autocast.
    #[arg(long)]
    pub(crate) amp: bool,
    /// Folder for eval.json (every number, the confusion matrix) and confusion.svg.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `cnas export`.
#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// The network, when the weights file does not describe it (PyTorch and plain safetensors).
    #[command(flatten)]
    pub(crate) net: NetArgs,
    /// Trained weights: cnas's own file, a training checkpoint, a PyTorch state_dict, safetensors.
    #[arg(long, alias = "checkpoint", value_name = "FILE")]
    pub(crate) weights: PathBuf,
    /// Output format [default: from the output's extension].
    #[arg(long, value_enum)]
    pub(crate) format: Option<cnas::export::ExportFormat>,
    /// The file to write.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub(crate) out: PathBuf,
    /// Leave the auxiliary head out (.pth, safetensors; ONNX never has it).
    #[arg(long)]
    pub(crate) drop_auxiliary: bool,
    /// ONNX: keep BatchNormalization nodes instead of folding them into the convolutions.
    #[arg(long)]
    pub(crate) keep_bn: bool,
    /// ONNX: input height and width [default: 32 for cifar10, 224 for imagenet].
    #[arg(long)]
    pub(crate) image_size: Option<i64>,
}

impl ExportArgs {
    pub(crate) fn options(&self) -> anyhow::Result<cnas::export::ExportOptions> {
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
pub(crate) struct NetArgs {
    /// A published architecture (CNAS, DARTS_V2, ...) or a genotype file (JSON or DARTS text).
    #[arg(long)]
    pub(crate) arch: Option<String>,
    /// The network family: cifar10 (32×32 inputs) or imagenet (224×224).
    #[arg(long, default_value = "cifar10")]
    pub(crate) dataset: NetworkKind,
    /// Channels of the first cells [default: 36 for cifar10, 48 for imagenet].
    #[arg(long)]
    pub(crate) init_channels: Option<i64>,
    /// Number of cells [default: 20 for cifar10, 14 for imagenet].
    #[arg(long)]
    pub(crate) layers: Option<i64>,
    /// Number of classes [default: 10 for cifar10, 1000 for imagenet].
    #[arg(long)]
    pub(crate) classes: Option<i64>,
}

impl NetArgs {
    /// The network these options describe, with the paper's settings for what is not given.
    pub(crate) fn config(&self) -> anyhow::Result<(String, NetworkConfig)> {
        let arg = self.arch.as_deref().unwrap_or("CNAS");
        let (name, genotype) = cnas::space::resolve_arch(arg)?;
        let mut config = NetworkConfig::paper(self.dataset, genotype);
        config.init_channels = self.init_channels.unwrap_or(config.init_channels);
        config.layers = self.layers.unwrap_or(config.layers);
        config.num_classes = self.classes.unwrap_or(config.num_classes);
        Ok((name, config))
    }
}
