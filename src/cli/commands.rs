//! One function per subcommand: turn its arguments into a library call and print the result.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tch::Device;

use super::args::{
    CompareArgs, DownloadArgs, DrawArgs, EvalArgs, ExportArgs, InfoArgs, PredictArgs, ReportArgs, ScoreArgs,
    SearchArgs, TrainArgs,
};
use cnas::dist::DataParallel;
use cnas::report::ArchInfo;
use cnas::run::StartMode;

/// The options every subcommand shares.
pub(crate) struct Global {
    pub(crate) device: Device,
    pub(crate) quiet: bool,
    pub(crate) dist_timeout: Duration,
    pub(crate) bucket_mb: f64,
}

pub(crate) fn search(args: &SearchArgs, g: &Global) -> anyhow::Result<()> {
    let (run_dir, start) = start_mode(&args.resume, &args.out, args.force, "RUN_DIR")?;
    let (parallel, device) = join_run(g)?;
    let writer = cnas::run::is_writer(parallel.as_ref());
    let (options, data) = match &args.config {
        Some(config) => super::config::search(config, args)?,
        None => (args.options()?, args.data.clone()),
    };
    let stop_after = args.stop_after_epochs;
    let outcome =
        cnas::search::search(&options, &data, &run_dir, start, device, g.quiet, stop_after, parallel)?;
    if let Some(outcome) = outcome.filter(|_| writer) {
        println!("{}", outcome.best.genotype);
        println!(
            "held-out score {:.2}% (stage {}); genotype written to {}",
            outcome.best.score * 100.0,
            outcome.best.stage,
            outcome.run_dir.join("genotype.json").display()
        );
    }
    Ok(())
}

pub(crate) fn train(args: &TrainArgs, g: &Global) -> anyhow::Result<()> {
    let (run_dir, start) = start_mode(&args.resume, &args.out, args.force, "OUT")?;
    // A new run's architecture, options and data: repeated from a config, or from the arguments.
    let new_run = match (&args.config, &args.arch) {
        _ if start == StartMode::Resume => None,
        (Some(config), _) => Some(super::config::train(config, args)?),
        (None, Some(arch)) => {
            let (name, genotype) = cnas::space::resolve_arch(arch)?;
            Some((name, genotype, args.options(), args.data.clone()))
        }
        (None, None) => None,
    };
    let request = new_run.as_ref().map(|(arch, genotype, options, data)| cnas::train::TrainRequest {
        arch: arch.clone(),
        genotype: genotype.clone(),
        options: options.clone(),
        data,
    });
    let (parallel, device) = join_run(g)?;
    let writer = cnas::run::is_writer(parallel.as_ref());
    let workers = args.data.workers;
    let stop_after = args.stop_after_epochs;
    let summary =
        cnas::train::train(request, workers, &run_dir, start, device, g.quiet, stop_after, parallel)?;
    if let Some(summary) = summary.filter(|_| writer) {
        println!("{summary}");
    }
    Ok(())
}

pub(crate) fn eval(args: &EvalArgs, g: &Global) -> anyhow::Result<()> {
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
    let result = cnas::eval::evaluate_weights(&request, g.device, g.quiet)?;
    if let Some(dir) = &args.out {
        cnas::eval::write_result(&result, dir)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{result}");
    }
    Ok(())
}

pub(crate) fn info(args: &InfoArgs, g: &Global) -> anyhow::Result<()> {
    let (name, config) = args.net.config()?;
    let info = ArchInfo::measure(name, config, g.device)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(())
}

pub(crate) fn predict(args: &PredictArgs, g: &Global) -> anyhow::Result<()> {
    let cnas::weights::OpenedNetwork { vs: _vs, network, .. } =
        cnas::weights::open_network(&args.weights, g.device, true, |described| {
            match (&args.net.arch, described) {
                // A cnas weights file knows its network unless the user says otherwise.
                (None, Some(config)) => Ok(config),
                _ => args.net.config().map(|(_, config)| config).map_err(|e| {
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
    for input in &args.inputs {
        samples.extend(cnas::predict::read_samples(input, kind, size)?);
    }
    cnas::predict::check_sizes(&network, &samples)?;
    for p in cnas::predict::predict(&network, &samples, g.device, args.batch_size, args.top) {
        if args.json {
            println!("{}", serde_json::to_string(&p)?);
            continue;
        }
        let label = p.label.map(|l| {
            format!(" (label: {})", cnas::predict::class_name(kind, network.config().num_classes, l))
        });
        println!("{}{}", p.input, label.unwrap_or_default());
        for (rank, c) in p.top.iter().enumerate() {
            println!("  {}. {:<24} {:.4}", rank + 1, c.name, c.prob);
        }
    }
    Ok(())
}

pub(crate) fn draw(args: DrawArgs) -> anyhow::Result<()> {
    let request = cnas::draw::DrawRequest {
        arch: args.arch,
        out: args.out,
        format: args.format,
        layout: args.layout,
        cells: args.cell,
    };
    cnas::draw::draw(&request)?;
    println!("{}", request.out.display());
    Ok(())
}

pub(crate) fn report(args: ReportArgs, g: &Global) -> anyhow::Result<()> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join("report.html"));
    cnas::report::html::write_report(&args.run_dir, &out, args.layout, g.device)?;
    println!("{}", out.display());
    Ok(())
}

pub(crate) fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let comparison = cnas::report::compare::compare(&args.runs)?;
    if let Some(out) = &args.out {
        let html = comparison.html(args.layout)?;
        cnas::util::write_atomic(out, html.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", comparison.markdown());
    }
    if let Some(out) = &args.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

pub(crate) fn export(args: &ExportArgs) -> anyhow::Result<()> {
    println!("{}", cnas::export::export(&args.weights, &args.out, &args.options()?)?);
    Ok(())
}

pub(crate) fn download(args: DownloadArgs, g: &Global) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(|| PathBuf::from("data"));
    let placed = cnas::data::download::download_from(args.what, &dir, args.url.as_deref(), !g.quiet)?;
    println!("{}", placed.display());
    Ok(())
}

pub(crate) fn score(args: &ScoreArgs, g: &Global) -> anyhow::Result<()> {
    let archs = args
        .arch
        .iter()
        .enumerate()
        .map(|(i, a)| cnas::search::resolve_score_arch(a, i))
        .collect::<cnas::Result<Vec<_>>>()?;
    let op_order = match &args.op_order {
        Some(names) => Some(
            names
                .iter()
                .map(|n| n.trim().parse::<cnas::space::Primitive>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cnas::Error::BadOption(format!("--op-order: {e}")))?,
        ),
        None => None,
    };
    let mut data = cnas::data::DataArgs { workers: args.workers, ..Default::default() };
    data.seed = args.seed.unwrap_or(data.seed);
    data.train_portion = args.train_portion.unwrap_or(data.train_portion);
    let request = cnas::search::ScoreRequest {
        run_dir: args.run_dir.as_deref(),
        released: args.supernet.as_deref(),
        op_order,
        stage: args.stage,
        archs: &archs,
        images: args.images,
        batch_size: args.batch_size,
        data,
        data_dir: args.data.clone(),
    };
    let scores = cnas::search::score_genotypes(&request, g.device, g.quiet)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&scores)?);
        return Ok(());
    }
    let width = scores.iter().map(|s| s.arch.chars().count()).max().unwrap_or(0).max(4);
    println!("{:<width$}  {:>8}  {:>7}  {:>7}", "arch", "top-1", "± s.e.", "images");
    for s in &scores {
        println!(
            "{:<width$}  {:>7.2}%  {:>6.2}%  {:>7}",
            s.arch,
            s.score * 100.0,
            s.std_error * 100.0,
            s.images
        );
    }
    Ok(())
}

/// The run directory and how to start in it, from `--resume DIR` / `-o DIR [--force]`.
fn start_mode(
    resume: &Option<PathBuf>,
    out: &Option<PathBuf>,
    force: bool,
    placeholder: &str,
) -> anyhow::Result<(PathBuf, StartMode)> {
    Ok(match (resume, out) {
        (Some(dir), _) => (dir.clone(), StartMode::Resume),
        (None, Some(dir)) if force => (dir.clone(), StartMode::Force),
        (None, Some(dir)) => (dir.clone(), StartMode::New),
        (None, None) => {
            let message = format!("give -o {placeholder} or --resume {placeholder}");
            bail!(cnas::Error::BadOption(message))
        }
    })
}

/// For `search` and `train`: this process's part in a data-parallel run when WORLD_SIZE > 1
/// (one GPU per process, `cuda:LOCAL_RANK`, when the device is CUDA), and the device to use.
fn join_run(g: &Global) -> anyhow::Result<(Option<DataParallel>, Device)> {
    let Some(env) = cnas::dist::DistEnv::from_env().map_err(cnas::Error::from)? else {
        return Ok((None, g.device));
    };
    let device = if g.device.is_cuda() { Device::Cuda(env.local_rank) } else { g.device };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            bail!(cnas::Error::BadOption(format!(
                "LOCAL_RANK {n} needs cuda:{n} but libtorch sees {count} GPU(s); start at most {count} processes per node"
            )));
        }
    }
    tracing::info!(
        "{}: joining on {device:?} with {}",
        env.describe(),
        if device.is_cuda() { "NCCL" } else { "Gloo" }
    );
    let group = cnas::dist::ProcessGroup::init(&env, device, g.dist_timeout).map_err(cnas::Error::from)?;
    let bucket_bytes = (g.bucket_mb * (1u64 << 20) as f64) as usize;
    Ok((Some(DataParallel::new(Arc::new(group)).with_bucket_bytes(bucket_bytes)), device))
}

/// `println!` panics when standard output cannot be written (`cnas … > /dev/full`): say so in
/// one line instead and exit with the code the same error on a file gets (3 for a full disk).
pub(crate) fn report_stdout_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map_or("", String::as_str);
        let Some(cause) = message.strip_prefix("failed printing to stdout: ") else {
            return default(info);
        };
        let os_error = cause
            .rsplit_once("(os error ")
            .and_then(|(_, n)| n.trim_end_matches(')').parse().ok())
            .map(std::io::Error::from_raw_os_error);
        let code = os_error.map_or(1, |e| cnas::Error::io("standard output", e).exit_code());
        eprintln!("error: standard output: {cause}");
        std::process::exit(code.into());
    }));
}
