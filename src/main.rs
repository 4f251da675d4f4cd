//! The `cnas` command line: a thin layer over the library.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Curriculum architecture search on CIFAR-10 (resumable); leaves the best genotype in
    /// RUN_DIR/genotype.json.
    Search(Box<SearchArgs>),
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
    /// Fetch a data set: CIFAR-10's official archive, MD5-checked, resumable, unpacked in one step.
    Download {
        /// What to fetch.
        #[arg(value_enum)]
        what: cnas::data::download::DownloadTarget,
        /// Folder to put it in [default: ./data].
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
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
    /// The paper's configuration: C=16, 8 cells, batch 96, 8 stages of 20 + 40 epochs.
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
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    preset: Preset,
    /// Curriculum: op (grow the operation set), node (grow the searched nodes), fixed (none).
    #[arg(long, value_enum)]
    mode: Option<cnas::search::CurriculumMode>,
    /// Supernet channels [paper: 16].
    #[arg(long)]
    init_channels: Option<i64>,
    /// Supernet cells [paper: 8].
    #[arg(long)]
    layers: Option<i64>,
    /// Intermediate nodes per cell [4].
    #[arg(long)]
    nodes: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Warm-up epochs per stage (uniform sampling) [paper: 20].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Search epochs per stage (weights, then controller) [paper: 40].
    #[arg(long)]
    epochs: Option<usize>,
    /// REINFORCE updates after each search epoch [50].
    #[arg(long)]
    controller_steps: Option<usize>,
    /// Weight learning rate (SGD, Nesterov) [0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// Controller learning rate (Adam) [3e-4].
    #[arg(long)]
    controller_lr: Option<f64>,
    /// Entropy bonus weight [0.005].
    #[arg(long)]
    entropy_weight: Option<f64>,
    /// Controller logit temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Controller tanh logit clipping constant.
    #[arg(long)]
    tanh_constant: Option<f64>,
    /// Rounds of candidates derived at the end of each stage [3].
    #[arg(long)]
    derive_rounds: Option<usize>,
    /// Samples per derive round [10].
    #[arg(long)]
    derive_samples: Option<usize>,
    /// Held-out batches each candidate is scored on [1].
    #[arg(long)]
    derive_batches: Option<usize>,
    /// Use at most this many images of each search split [quick: 512].
    #[arg(long)]
    max_images: Option<usize>,
    /// Stop (as if interrupted) after this many epochs; for testing resume.
    #[arg(long, hide = true)]
    stop_after_epochs: Option<usize>,
}

impl SearchArgs {
    fn options(&self) -> cnas::search::SearchOptions {
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
        set!(mode, init_channels, layers, nodes, batch_size, warmup_epochs, epochs, controller_steps, lr);
        set!(controller_lr, entropy_weight, derive_rounds, derive_samples, derive_batches);
        set_optional!(temperature, tanh_constant, max_images);
        o.seed = self.data.seed;
        o
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let user = err
                .chain()
                .any(|cause| cause.downcast_ref::<cnas::Error>().is_some_and(cnas::Error::is_user_error));
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = cli.device.resolve()?;
    match cli.command {
        Command::Search(args) => {
            use cnas::search::StartMode;
            let (run_dir, start) = match (&args.resume, &args.out) {
                (Some(dir), _) => (dir.clone(), StartMode::Resume),
                (None, Some(dir)) if args.force => (dir.clone(), StartMode::Force),
                (None, Some(dir)) => (dir.clone(), StartMode::New),
                (None, None) => {
                    anyhow::bail!(cnas::Error::BadOption("give -o RUN_DIR or --resume RUN_DIR".into()))
                }
            };
            let outcome = cnas::search::search(
                &args.options(),
                &args.data,
                &run_dir,
                start,
                device,
                cli.quiet,
                args.stop_after_epochs,
            )?;
            if let Some(outcome) = outcome {
                println!("{}", outcome.best.genotype);
                println!(
                    "held-out score {:.2}% (stage {}); genotype written to {}",
                    outcome.best.score * 100.0,
                    outcome.best.stage,
                    outcome.run_dir.join("genotype.json").display()
                );
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
            let (_, mut config) = match (&net.arch, network_from_metadata(&metadata)?) {
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
        Command::Download { what, data } => {
            let dir = data.unwrap_or_else(|| PathBuf::from("data"));
            let placed = cnas::data::download::download(what, &dir, !cli.quiet)?;
            println!("{}", placed.display());
        }
    }
    Ok(())
}

/// The network a cnas weights file describes in its metadata, if it does.
fn network_from_metadata(metadata: &BTreeMap<String, String>) -> anyhow::Result<Option<NetworkConfig>> {
    match metadata.get("network") {
        None => Ok(None),
        Some(json) => {
            Ok(Some(serde_json::from_str(json).context("weights metadata: bad network description")?))
        }
    }
}
