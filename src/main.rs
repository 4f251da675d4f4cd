//! The `cnas` command line: a thin layer over the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cnas::device::DeviceChoice;
use cnas::report::ArchInfo;

mod cli;
use cli::args::*;
use cli::launch::launch;

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
) -> anyhow::Result<(Option<cnas::dist::DataParallel>, tch::Device)> {
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
    let parallel = cnas::dist::DataParallel::new(std::sync::Arc::new(group)).with_bucket_bytes(bucket_bytes);
    Ok((Some(parallel), device))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = cli.device.resolve()?;
    match cli.command {
        Command::Search(args) => {
            let (run_dir, start) = start_mode(&args.resume, &args.out, args.force, "RUN_DIR")?;
            let (parallel, device) = join_run(device, cli.dist_timeout, cli.bucket_mb)?;
            let main = cnas::run::is_writer(parallel.as_ref());
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
            use cnas::run::StartMode;
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
            let main = cnas::run::is_writer(parallel.as_ref());
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
            let cnas::weights::OpenedNetwork { vs: _vs, network, .. } =
                cnas::weights::open_network(&weights, device, true, |described| {
                    match (&net.arch, described) {
                        // A cnas weights file knows its network unless the user says otherwise.
                        (None, Some(config)) => Ok(config),
                        _ => net.config().map(|(_, config)| config).map_err(|e| {
                            match e.downcast::<cnas::Error>() {
                                Ok(e) => e,
                                Err(e) => cnas::Error::BadOption(e.to_string()),
                            }
                        }),
                    }
                })?;
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

/// The run directory and how to start in it, from `--resume DIR` / `-o DIR [--force]`.
fn start_mode(
    resume: &Option<PathBuf>,
    out: &Option<PathBuf>,
    force: bool,
    placeholder: &str,
) -> anyhow::Result<(PathBuf, cnas::search::StartMode)> {
    use cnas::run::StartMode;
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
