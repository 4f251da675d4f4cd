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
    #[arg(long, global = true, default_value_t = 25.0, value_parser = positive)]
    pub(crate) bucket_mb: f64,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Notes which of the subcommand's arguments the command line gave (for `--config`).
    pub(crate) fn note_given_options(&mut self, matches: &clap::ArgMatches) {
        let Some((_, sub)) = matches.subcommand() else { return };
        match &mut self.command {
            Command::Search(args) => args.given = super::config::given_options(sub),
            Command::Train(args) => args.given = super::config::given_options(sub),
            _ => {}
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Curriculum architecture search on CIFAR-10 or your own images (resumable); leaves the
    /// best genotype in RUN_DIR/genotype.json.
    ///
    /// Own images: --dataset folder --data DIR --image-size N, where DIR holds one folder of
    /// images per class (DIR/<class>/*.jpg, as torchvision's ImageFolder reads it) or
    /// DIR/train/<class>/ (and DIR/val/<class>/, which search does not use); any number of
    /// classes, at least 2. The search splits the training images: --train-portion of them
    /// (0.4, drawn from --seed) train the supernet's weights, the rest is held out to reward the
    /// controllers and score candidates; the log states the counts. Up to 64 px the supernet has
    /// the CIFAR stem (conv 3×3 at stride 1, as released); above 64 px an ImageNet-style stem of
    /// k = round(log2(N/28)) stride-2 convolutions (at least 1), so the first cell sees about
    /// 28 px (96 → 24, 128 → 32, 224 → 28). Retrain the genotype with cnas train on the same
    /// folder (it needs val/).
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
    /// Many search and training runs side by side: cost, held-out score, retrained accuracy,
    /// mean ± std per mode (Markdown tables; an HTML page with curves and cells with -o).
    Compare(CompareArgs),
    /// Score genotypes in a trained supernet (a search's stage, or a released-code state_dict):
    /// held-out top-1 and its standard error, as derivation scores candidates.
    Score(Box<ScoreArgs>),
    /// Start N processes of a cnas command on this node as one data-parallel run, like
    /// `torchrun --nproc-per-node N --no-python cnas ...`: `cnas launch --nproc-per-node 2 --
    /// train --arch CNAS ...`.
    Launch(LaunchArgs),
    /// Fetch a data set or pretrained weights: CIFAR-10's official archive (MD5-checked,
    /// unpacked in one step) or the published CNAS ImageNet weights (SHA-256-checked); resumable.
    Download(DownloadArgs),
}

// Range checks of the numeric options, at parse time: clap's error then names the option
// ("invalid value 'nan' for '--lr <LR>': must be above 0") and exits 2 before anything starts.
// The library's validate functions check the same ranges for its own callers and for the
// options a resumed run reads back; what depends on two options is only checked there.

/// A finite number (no NaN, no infinity).
fn finite(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number".into()),
        Err(_) => Err("not a number".into()),
    }
}

/// A finite number above 0 (learning rates, clipping norms, temperatures).
fn positive(s: &str) -> Result<f64, String> {
    finite(s).and_then(|v| if v > 0.0 { Ok(v) } else { Err("must be above 0".into()) })
}

/// A finite number of at least 0 (weight decays, loss weights).
fn non_negative(s: &str) -> Result<f64, String> {
    finite(s).and_then(|v| if v >= 0.0 { Ok(v) } else { Err("must be at least 0".into()) })
}

/// A number in [0, 1) (momentum, decays, probabilities that 1 would make degenerate).
fn below_one(s: &str) -> Result<f64, String> {
    finite(s).and_then(|v| if (0.0..1.0).contains(&v) { Ok(v) } else { Err("must be in [0, 1)".into()) })
}

/// A whole number of at least `min`.
fn at_least<T>(min: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s: &str| match s.trim().parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        Ok(_) => Err(format!("must be at least {min}")),
        Err(_) => Err("not a whole number".into()),
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
    #[arg(long, default_value_t = 5, value_parser = at_least(1usize))]
    pub(crate) top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_parser = at_least(1usize))]
    pub(crate) batch_size: usize,
    /// Print one JSON object per input, with the raw logits.
    #[arg(long)]
    pub(crate) json: bool,
    /// PNG or JPEG images, CIFAR-10 .bin files, or normalised float32 N×3×H×W .npy arrays.
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
}

/// `cnas score`.
#[derive(Args, Debug)]
pub(crate) struct ScoreArgs {
    /// A `cnas search` run directory: its data split, options and stage supernets.
    #[arg(value_name = "RUN_DIR", required_unless_present = "supernet")]
    pub(crate) run_dir: Option<PathBuf>,
    /// Genotypes to score: published names, genotype files (JSON or DARTS text), or inline
    /// genotype text; repeat or list several.
    #[arg(long, required = true, num_args = 1..)]
    pub(crate) arch: Vec<String>,
    /// The supernet of stage K (RUN_DIR/stage-K) [default: the last stage]; with --supernet,
    /// that only the first K operations of the order were trained.
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) stage: Option<usize>,
    /// Score on the first N held-out images [default: the run's --derive-images; 10000].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) images: Option<usize>,
    /// Images per forward pass; BatchNorm uses each batch's statistics, so this is part of the
    /// score [default: the run's derivation batch; 96].
    #[arg(long, value_parser = at_least(2usize))]
    pub(crate) batch_size: Option<usize>,
    /// A state_dict of the released CNAS code's supernet (supernet-{stage}-{epoch}.pth) to
    /// score in, instead of the run's.
    #[arg(long, value_name = "FILE")]
    pub(crate) supernet: Option<PathBuf>,
    /// --supernet: its operation order (op_type), all 8 operations [default: the run's, else
    /// the released draw for --seed].
    #[arg(long, value_delimiter = ',', value_name = "OP,OP,...", requires = "supernet")]
    pub(crate) op_order: Option<Vec<String>>,
    /// Data folder [default: the run's recorded one; ./data].
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Threads preparing batches [default: number of cores].
    #[arg(long, value_parser = at_least(0usize))]
    pub(crate) workers: Option<usize>,
    /// Without RUN_DIR: seed of the held-out split (and of the released operation order) [2020].
    #[arg(long, conflicts_with = "run_dir")]
    pub(crate) seed: Option<u64>,
    /// Without RUN_DIR: share of the training set that trained weights; the rest is held out
    /// [0.4].
    #[arg(long, value_parser = portion, conflicts_with = "run_dir")]
    pub(crate) train_portion: Option<f64>,
    /// Print a JSON array, one object per genotype.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A share in (0, 1].
fn portion(s: &str) -> Result<f64, String> {
    finite(s)
        .and_then(|v| if v > 0.0 && v <= 1.0 { Ok(v) } else { Err("must be above 0 and at most 1".into()) })
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

/// `cnas compare`.
#[derive(Args, Debug)]
pub(crate) struct CompareArgs {
    /// Search and training runs, any number, any order (training runs are matched to the
    /// search whose genotype file their --arch named).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub(crate) runs: Vec<PathBuf>,
    /// Also write the comparison as one self-contained HTML page (curves, cells) here.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Print the comparison as JSON instead of Markdown tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Graph layout of the cells drawn in the page.
    #[arg(long, value_enum, default_value_t = cnas::draw::Layout::Auto)]
    pub(crate) layout: cnas::draw::Layout,
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
    /// Start a new run (-o) with every option recorded in a search's config.json (or its run
    /// folder); options given on the command line replace the recorded ones, and the new run's
    /// config.json records the result.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["resume", "preset"])]
    pub(crate) config: Option<PathBuf>,
    /// The arguments given on the command line (filled after parsing): what `--config` lets
    /// win over the recorded options.
    #[arg(skip)]
    pub(crate) given: Vec<String>,
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
    /// Curriculum: op (grow the operation set), node (grow the searched nodes), fixed (none);
    /// or random: random search with weight sharing at op's cost [default: op].
    #[arg(long, value_enum)]
    pub(crate) mode: Option<cnas::search::CurriculumMode>,
    /// Operation order of the op curriculum, comma-separated, all 8 operations [default:
    /// sep_conv_3x3, then the other 7 permuted by torch.randperm(7) seeded with --seed, as
    /// released].
    #[arg(long, value_delimiter = ',', value_name = "OP,OP,...")]
    pub(crate) op_order: Option<Vec<String>>,
    /// Supernet channels [default: 16; quick: 8].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) init_channels: Option<i64>,
    /// Supernet cells [default: 8; quick: 5].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) layers: Option<i64>,
    /// Intermediate nodes per cell [default: 4].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) nodes: Option<usize>,
    /// Images per batch, per process, at least 2 [default: 96; quick: 32].
    #[arg(long, value_parser = at_least(2usize))]
    pub(crate) batch_size: Option<usize>,
    /// Warm-up epochs per stage (uniform sampling) [default: 20; quick: 1].
    #[arg(long, value_parser = at_least(0usize))]
    pub(crate) warmup_epochs: Option<usize>,
    /// Search epochs per stage (weights, then controller) [default: 40; quick: 1].
    #[arg(long, value_parser = at_least(0usize))]
    pub(crate) epochs: Option<usize>,
    /// REINFORCE updates after each search epoch [default: one per held-out batch, a pass
    /// over the held-out part; quick: 8].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) controller_steps: Option<usize>,
    /// Supernet learning rate (SGD, Nesterov, constant) [default: 0.01].
    #[arg(long, value_parser = positive)]
    pub(crate) lr: Option<f64>,
    /// Supernet SGD momentum, in [0, 1) [default: 0.9].
    #[arg(long, value_parser = below_one)]
    pub(crate) momentum: Option<f64>,
    /// Supernet weight decay [default: 3e-4].
    #[arg(long, value_parser = non_negative)]
    pub(crate) weight_decay: Option<f64>,
    /// Update only the sampled path's parameters (gradients dropped). Default, as released
    /// under PyTorch 1.5: gradients are zeroed in place, so every parameter used once keeps
    /// taking weight decay and momentum.
    #[arg(long)]
    pub(crate) sparse_update: bool,
    /// Clip the supernet's gradients to this global L2 norm [default: no clipping].
    #[arg(long, value_parser = positive)]
    pub(crate) grad_clip: Option<f64>,
    /// Controller learning rate (Adam) [default: 3e-4; quick: 3.5e-3].
    #[arg(long, value_parser = positive)]
    pub(crate) controller_lr: Option<f64>,
    /// Controller weight decay (Adam, L2) [default: 5e-4].
    #[arg(long, value_parser = non_negative)]
    pub(crate) controller_weight_decay: Option<f64>,
    /// Controller LSTM hidden size [default: 128].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) controller_hidden: Option<i64>,
    /// Clip the controllers' gradients to this global L2 norm [default: 5].
    #[arg(long, value_parser = positive)]
    pub(crate) controller_grad_clip: Option<f64>,
    /// Do not clip the controllers' gradients.
    #[arg(long, conflicts_with = "controller_grad_clip")]
    pub(crate) no_controller_grad_clip: bool,
    /// Entropy bonus weight, at least 0 (0: no bonus) [default: 0.005].
    #[arg(long, value_parser = non_negative)]
    pub(crate) entropy_weight: Option<f64>,
    /// Decay of the reward's moving-average baseline, in [0, 1) [default: 0.99].
    #[arg(long, value_parser = below_one)]
    pub(crate) baseline_decay: Option<f64>,
    /// Controller logit temperature [default: none].
    #[arg(long, value_parser = positive)]
    pub(crate) temperature: Option<f64>,
    /// Controller tanh logit clipping constant [default: none].
    #[arg(long, value_parser = positive)]
    pub(crate) tanh_constant: Option<f64>,
    /// Rounds of candidates derived at the end of each stage [default: 3].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) derive_rounds: Option<usize>,
    /// Candidates sampled per derive round [default: 10; quick: 4].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) derive_samples: Option<usize>,
    /// Un-augmented held-out images every candidate is scored on (all of the held-out part
    /// when it has fewer) [default: 10000; quick: 512].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) derive_images: Option<usize>,
    /// Images per forward pass when scoring candidates; BatchNorm uses each batch's
    /// statistics, so this is part of the score [default: --batch-size].
    #[arg(long, value_parser = at_least(2usize))]
    pub(crate) derive_batch_size: Option<usize>,
    /// Uniformly sampled architectures also scored at the end of each stage, to compare the
    /// controller with chance [default: 0; quick: 4].
    #[arg(long, value_parser = at_least(0usize))]
    pub(crate) derive_uniform: Option<usize>,
    /// Use at most this many images of each search split [default: all; quick: 512].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) max_images: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    pub(crate) sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true, value_parser = at_least(0usize))]
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
    #[arg(long, required_unless_present_any = ["resume", "config"])]
    pub(crate) arch: Option<String>,
    /// Run directory (config, metrics, last and best checkpoints, eval.json).
    #[arg(short = 'o', long, value_name = "OUT", required_unless_present = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Start a new run (-o) with every option recorded in a training run's config.json (or its
    /// run folder), the architecture included; options given on the command line (--arch too)
    /// replace the recorded ones, and the new run's config.json records the result.
    #[arg(long, value_name = "CONFIG", conflicts_with = "resume")]
    pub(crate) config: Option<PathBuf>,
    /// The arguments given on the command line (filled after parsing).
    #[arg(skip)]
    pub(crate) given: Vec<String>,
    /// Continue the run in OUT from its last checkpoint, with its own options.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["out", "arch"])]
    pub(crate) resume: Option<PathBuf>,
    /// Start over in an OUT that holds another run, deleting it.
    #[arg(long)]
    pub(crate) force: bool,
    /// Channels of the first cells [cifar10: 36, imagenet: 48].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) init_channels: Option<i64>,
    /// Number of cells [cifar10: 20, imagenet: 14].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) layers: Option<i64>,
    /// Training epochs [cifar10: 600, imagenet: 250]
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) epochs: Option<usize>,
    /// Global batch: images per optimizer step over all ranks, divided evenly over the
    /// data-parallel ranks (WORLD_SIZE k: each takes batch / k) [cifar10: 128, imagenet: 256].
    #[arg(long, value_parser = at_least(2usize))]
    pub(crate) batch_size: Option<usize>,
    /// Initial learning rate (SGD; not rescaled with the batch) [0.05].
    #[arg(long, value_parser = positive)]
    pub(crate) lr: Option<f64>,
    /// Learning rate the decay ends at, from 0 to --lr [0].
    #[arg(long, value_parser = non_negative)]
    pub(crate) lr_min: Option<f64>,
    /// SGD momentum, in [0, 1) [0.9].
    #[arg(long, value_parser = below_one)]
    pub(crate) momentum: Option<f64>,
    /// SGD weight decay (L2) [3e-4].
    #[arg(long, value_parser = non_negative)]
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
    /// Epochs W < --epochs of linear warm-up: epoch e < W (1-based) runs at lr·e/W, the decay starts
    /// from lr at e = W [0].
    #[arg(long, value_parser = at_least(0usize))]
    pub(crate) warmup_epochs: Option<usize>,
    /// --scheduler step: epochs between decays [1].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) step_size: Option<usize>,
    /// --scheduler step: decay factor [0.97].
    #[arg(long, value_parser = positive)]
    pub(crate) gamma: Option<f64>,
    /// Label smoothing ε in [0, 1): target 1-ε on the label and ε/(K-1) on each other class, as the
    /// released code [0].
    #[arg(long, value_parser = below_one)]
    pub(crate) label_smooth: Option<f64>,
    /// Weight of the auxiliary head's loss; 0 trains without the head [0.4].
    #[arg(long, value_parser = non_negative)]
    pub(crate) auxiliary_weight: Option<f64>,
    /// Drop-path probability at the last epoch, in [0, 1): epoch e of T (1-based) uses P·e/T [0.2].
    #[arg(long, value_parser = below_one)]
    pub(crate) drop_path_prob: Option<f64>,
    /// Gradient clipping (global L2 norm) [5].
    #[arg(long, value_parser = positive)]
    pub(crate) grad_clip: Option<f64>,
    /// Mixed precision: bf16 autocast for the forward pass, loss in fp32.
    #[arg(long)]
    pub(crate) amp: bool,
    /// Train on at most this many images of the training set.
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) max_images: Option<usize>,
    /// Validate on at most this many test images.
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) max_eval_images: Option<usize>,
    /// Validate every N epochs (and after the last) [1].
    #[arg(long, value_parser = at_least(1usize))]
    pub(crate) eval_every: Option<usize>,
    /// Data-parallel runs: BatchNorm statistics over the global batch (every rank's images)
    /// instead of each rank's own; costs three small all-reduces per BatchNorm layer and step.
    #[arg(long)]
    pub(crate) sync_bn: bool,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true, value_parser = at_least(0usize))]
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
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) init_channels: Option<i64>,
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) layers: Option<i64>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256, value_parser = at_least(1usize))]
    pub(crate) batch_size: usize,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = at_least(1usize))]
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
    /// Output format [default: from the output's extension: .onnx, .pth/.pt, .safetensors,
    /// .torchscript].
    #[arg(long, value_enum)]
    pub(crate) format: Option<cnas::export::ExportFormat>,
    /// The file to write.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub(crate) out: PathBuf,
    /// Leave the auxiliary head's weights out (.pth, safetensors, TorchScript; ONNX never has
    /// it, and a TorchScript module's forward never runs it).
    #[arg(long)]
    pub(crate) drop_auxiliary: bool,
    /// ONNX: keep BatchNormalization nodes instead of folding them into the convolutions.
    #[arg(long)]
    pub(crate) keep_bn: bool,
    /// ONNX and TorchScript: input height and width [default: 32 for cifar10, 224 for
    /// imagenet].
    #[arg(long, value_parser = at_least(1i64))]
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
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) init_channels: Option<i64>,
    /// Number of cells [default: 20 for cifar10, 14 for imagenet].
    #[arg(long, value_parser = at_least(1i64))]
    pub(crate) layers: Option<i64>,
    /// Number of classes [default: 10 for cifar10, 1000 for imagenet].
    #[arg(long, value_parser = at_least(1i64))]
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

#[cfg(test)]
mod tests {
    //! Every numeric option of every command has its range checked: the table below lists each
    //! with values that must be refused and one that must be accepted, and the test fails when
    //! a numeric option is missing from it (a new option cannot be forgotten).
    use std::any::TypeId;
    use std::collections::{BTreeMap, BTreeSet};

    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    use super::*;

    /// A numeric option, the commands that have it ("" for a global option), values that must
    /// be refused (NaN and ±inf are added for floating-point options) and one that must pass.
    struct Case {
        commands: &'static [&'static str],
        flag: &'static str,
        bad: &'static [&'static str],
        good: &'static str,
    }

    const fn case(
        commands: &'static [&'static str],
        flag: &'static str,
        bad: &'static [&'static str],
        good: &'static str,
    ) -> Case {
        Case { commands, flag, bad, good }
    }

    const DATA: &[&str] = &["search", "train", "eval"];
    const NET: &[&str] = &["info", "predict", "export"];
    const SEARCH: &[&str] = &["search"];
    const TRAIN: &[&str] = &["train"];
    const BOTH: &[&str] = &["search", "train"];

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        case(&[""], "--bucket-mb", &["0", "-1"], "0.5"),
        case(&[""], "--dist-timeout", &["0", "-5", "1e300h"], "90s"),
        // The data options.
        case(DATA, "--workers", &["-1"], "0"),
        case(DATA, "--train-portion", &["0", "-0.1", "1.5"], "1"),
        case(DATA, "--cutout", &["-1", "33"], "0"),
        case(DATA, "--seed", &["-1"], "0"),
        case(DATA, "--image-size", &["7", "4097"], "64"),
        // search and train.
        case(BOTH, "--init-channels", &["0", "-16"], "8"),
        case(BOTH, "--layers", &["0"], "5"),
        case(BOTH, "--batch-size", &["0", "1"], "2"),
        case(BOTH, "--lr", &["0", "-0.01"], "0.1"),
        case(BOTH, "--momentum", &["1", "-0.1", "1.5"], "0"),
        case(BOTH, "--weight-decay", &["-1e-4"], "0"),
        case(BOTH, "--grad-clip", &["0", "-5"], "5"),
        case(BOTH, "--stop-after-epochs", &["-1"], "0"),
        // search.
        case(SEARCH, "--nodes", &["0"], "2"),
        case(SEARCH, "--epochs", &["-1"], "0"),
        case(SEARCH, "--warmup-epochs", &["-1"], "0"),
        case(SEARCH, "--max-images", &["0"], "1"),
        case(SEARCH, "--controller-steps", &["0"], "1"),
        case(SEARCH, "--controller-lr", &["0"], "3e-4"),
        case(SEARCH, "--controller-weight-decay", &["-1"], "0"),
        case(SEARCH, "--controller-hidden", &["0"], "64"),
        case(SEARCH, "--controller-grad-clip", &["0"], "5"),
        case(SEARCH, "--entropy-weight", &["-1"], "0"),
        case(SEARCH, "--baseline-decay", &["1", "-0.5"], "0"),
        case(SEARCH, "--temperature", &["0"], "5"),
        case(SEARCH, "--tanh-constant", &["0"], "2.5"),
        case(SEARCH, "--derive-rounds", &["0"], "1"),
        case(SEARCH, "--derive-samples", &["0"], "1"),
        case(SEARCH, "--derive-images", &["0"], "1"),
        case(SEARCH, "--derive-batch-size", &["0", "1"], "2"),
        case(SEARCH, "--derive-uniform", &["-1"], "0"),
        // train: --warmup-epochs must be below --epochs, --lr-min at most --lr, one batch of
        // --max-images (600 epochs, lr 0.05, batch 128 by default).
        case(TRAIN, "--epochs", &["0"], "1"),
        case(TRAIN, "--lr-min", &["-1", "1"], "0"),
        case(TRAIN, "--warmup-epochs", &["-1", "600"], "5"),
        case(TRAIN, "--max-images", &["0", "127"], "128"),
        case(TRAIN, "--step-size", &["0"], "1"),
        case(TRAIN, "--gamma", &["0", "-0.97"], "1"),
        case(TRAIN, "--label-smooth", &["1", "-0.1"], "0.1"),
        case(TRAIN, "--auxiliary-weight", &["-0.4"], "0"),
        case(TRAIN, "--drop-path-prob", &["1", "-0.2"], "0"),
        case(TRAIN, "--max-eval-images", &["0"], "1"),
        case(TRAIN, "--eval-every", &["0"], "1"),
        // eval, and the network options of info, predict and export.
        case(&["eval"], "--init-channels", &["0", "-2"], "8"),
        case(&["eval"], "--layers", &["0"], "5"),
        case(&["eval"], "--batch-size", &["0"], "1"),
        case(&["eval"], "--max-images", &["0"], "1"),
        case(NET, "--init-channels", &["0", "-2"], "8"),
        case(NET, "--layers", &["0"], "5"),
        case(NET, "--classes", &["0", "-10"], "2"),
        case(&["predict"], "--top", &["0"], "1"),
        case(&["predict"], "--batch-size", &["0"], "1"),
        case(&["export"], "--image-size", &["0", "-32"], "32"),
        case(&["score"], "--stage", &["0", "-1"], "1"),
        case(&["score"], "--images", &["0"], "1"),
        case(&["score"], "--batch-size", &["0", "1"], "2"),
        case(&["score"], "--workers", &["-1"], "0"),
        case(&["score"], "--seed", &["-1"], "0"),
        case(&["score"], "--train-portion", &["0", "-0.1", "1.5"], "1"),
        // launch: --node-rank must be below --nnodes (1 by default).
        case(&["launch"], "--nproc-per-node", &["0", "1025"], "2"),
        case(&["launch"], "--nnodes", &["0", "4097"], "2"),
        case(&["launch"], "--node-rank", &["-1", "1"], "0"),
        case(&["launch"], "--master-port", &["0", "65536"], "29500"),
    ];

    /// The arguments a command needs besides the option under test: before it, after it.
    fn frame(command: &str) -> (Vec<&'static str>, Vec<&'static str>) {
        match command {
            "" => (vec![], vec!["info"]),
            "search" => (vec!["search", "-o", "run"], vec![]),
            "train" => (vec!["train", "--arch", "CNAS", "-o", "out"], vec![]),
            "eval" => (vec!["eval", "--weights", "w.safetensors"], vec![]),
            "info" => (vec!["info"], vec![]),
            "predict" => (vec!["predict", "--weights", "w.pth"], vec!["x.png"]),
            "export" => (vec!["export", "--weights", "w.pth", "-o", "x.onnx"], vec![]),
            "launch" => (vec!["launch", "--nproc-per-node", "1"], vec!["--", "info"]),
            "score" => (vec!["score", "--supernet", "s.pth", "--arch", "CNAS"], vec![]),
            other => panic!("no frame for `cnas {other}`: add one to this test"),
        }
    }

    /// The checks a command makes after parsing, before it starts any work.
    fn checks(cli: &Cli) -> Result<(), String> {
        let lib = |r: cnas::Result<()>| r.map_err(|e| e.to_string());
        match &cli.command {
            Command::Search(a) => {
                lib(a.data.validate())?;
                lib(a.options().map_err(|e| e.to_string())?.validate())
            }
            Command::Train(a) => lib(a.data.validate()).and(lib(a.options().validate())),
            Command::Eval(a) => lib(a.data.validate()),
            Command::Launch(a) => lib(crate::cli::launch::validate(a)),
            _ => Ok(()),
        }
    }

    /// `cnas [frame] FLAG=VALUE [frame]`: parsed and checked; the error's text when refused.
    fn outcome(command: &str, flag: &str, value: &str) -> Result<(), String> {
        let (mut before, after) = frame(command);
        if let Some(i) = before.iter().position(|a| *a == flag) {
            before.drain(i..i + 2); // the option under test replaces the frame's
        }
        let arg = format!("{flag}={value}");
        let argv: Vec<&str> = ["cnas"].into_iter().chain(before).chain([arg.as_str()]).chain(after).collect();
        match Cli::try_parse_from(&argv) {
            Ok(cli) => checks(&cli),
            Err(e) => {
                // Not some other parse error (a repeated option, a missing argument).
                assert_eq!(e.kind(), ErrorKind::ValueValidation, "{argv:?}: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Every numeric option: (command, --flag) → whether it takes fractions (NaN and
    /// infinities must then be refused).
    fn numeric_options() -> BTreeMap<(String, String), bool> {
        let floats = [TypeId::of::<f64>(), TypeId::of::<f32>(), TypeId::of::<Duration>()];
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ];
        let cli = Cli::command();
        let commands = std::iter::once(("", &cli)).chain(cli.get_subcommands().map(|c| (c.get_name(), c)));
        let mut out = BTreeMap::new();
        for (name, command) in commands {
            for arg in command.get_arguments() {
                let id = arg.get_value_parser().type_id();
                let float = floats.iter().any(|t| id == *t);
                if !float && !integers.iter().any(|t| id == *t) {
                    continue;
                }
                let long = arg.get_long().unwrap_or_else(|| panic!("numeric positional {:?}", arg.get_id()));
                out.insert((name.to_string(), format!("--{long}")), float);
            }
        }
        out
    }

    #[test]
    fn every_numeric_option_refuses_bad_values_naming_the_option() {
        let numeric = numeric_options();
        // The detection works: a float, an integer and a global option are among them.
        for key in [("search", "--entropy-weight"), ("predict", "--top"), ("", "--bucket-mb")] {
            assert!(numeric.contains_key(&(key.0.to_string(), key.1.to_string())), "{key:?}");
        }
        let mut covered = BTreeSet::new();
        for case in CASES {
            for &command in case.commands {
                let key = (command.to_string(), case.flag.to_string());
                let float = *numeric.get(&key).unwrap_or_else(|| panic!("{key:?} is not a numeric option"));
                assert!(covered.insert(key), "{command} {} is in the table twice", case.flag);
                let non_finite: &[&str] = if float { &["nan", "NaN", "inf", "-inf"] } else { &[] };
                for value in case.bad.iter().chain(non_finite) {
                    match outcome(command, case.flag, value) {
                        Ok(()) => panic!("cnas {command} {}={value} was accepted", case.flag),
                        Err(e) => assert!(e.contains(case.flag), "'{e}' does not name {}", case.flag),
                    }
                }
                if let Err(e) = outcome(command, case.flag, case.good) {
                    panic!("cnas {command} {}={} was refused: {e}", case.flag, case.good);
                }
            }
        }
        let missing: Vec<_> = numeric.keys().filter(|k| !covered.contains(*k)).collect();
        assert!(missing.is_empty(), "numeric options without a range in this test's table: {missing:?}");
    }

    #[test]
    fn the_defaults_pass_their_own_checks() {
        for argv in [
            &["cnas", "search", "-o", "run"][..],
            &["cnas", "search", "-o", "run", "--preset", "quick"],
            &["cnas", "train", "--arch", "CNAS", "-o", "out"],
            &["cnas", "train", "--arch", "CNAS", "-o", "out", "--dataset", "imagenet"],
            &["cnas", "eval", "--weights", "w"],
            &["cnas", "launch", "--nproc-per-node", "2", "--", "info"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            checks(&cli).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}
