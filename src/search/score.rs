//! `cnas score`: one-shot evaluation of given genotypes in a trained supernet (a stage of a
//! cnas search, or a `state_dict` of the released code's supernet), scored exactly as
//! derivation scores its candidates: the same un-augmented held-out images, the same batches,
//! BatchNorm on each batch's statistics ([`derive_loader`], [`supernet_correct`]).
use super::*;

/// What to score and in which supernet.
#[derive(Debug, Clone)]
pub struct ScoreRequest<'a> {
    /// A cnas search run: its data, options, operation order and stage supernets.
    pub run_dir: Option<&'a Path>,
    /// A `state_dict` of the released code's supernet (`supernet-{stage}-{epoch}.pth`) to score
    /// in instead of the run's.
    pub released: Option<&'a Path>,
    /// The released supernet's operation order (`op_type`); `None`: the run's order, else the
    /// released draw for the data seed.
    pub op_order: Option<Vec<Primitive>>,
    /// 1-based stage: the run's `stage-K/supernet.safetensors` (default: the last stage), or
    /// for a released file, that only the first K operations of the order were trained.
    pub stage: Option<usize>,
    /// (display name, genotype) to score, in order.
    pub archs: &'a [(String, Genotype)],
    /// Held-out images (default: the run's `derive_images`).
    pub images: Option<usize>,
    /// Images per forward pass (default: the run's derivation batch).
    pub batch_size: Option<usize>,
    /// Data options without a run (a run's own are used otherwise, except `data_dir`).
    pub data: DataArgs,
    /// Replaces the data folder a run recorded (moved runs, other machines).
    pub data_dir: Option<PathBuf>,
}

/// One genotype's score.
#[derive(Debug, Clone, Serialize)]
pub struct GenotypeScore {
    /// The `--arch` it came from (a published name, a file, or `arch N` for inline text).
    pub arch: String,
    /// Top-1 accuracy on the held-out images, and its standard error.
    pub score: f64,
    pub std_error: f64,
    pub correct: usize,
    pub images: usize,
    pub genotype: Genotype,
}

/// The supernet scored in, and what it was trained on.
struct Trained {
    _vs: nn::VarStore,
    supernet: Supernet,
    /// The operations trained by then (curriculum order) and the nodes searched.
    allowed: Vec<Primitive>,
    nodes: usize,
    /// "stage 2 of RUN (...)" for messages and the table's header.
    what: String,
}

/// Scores every genotype of `request`, in order.
pub fn score_genotypes(request: &ScoreRequest, device: Device, quiet: bool) -> Result<Vec<GenotypeScore>> {
    let run = request.run_dir.map(read_run).transpose()?;
    let trained = match (request.released, request.run_dir, &run) {
        (Some(file), _, _) => open_released(file, request, run.as_ref(), device)?,
        (None, Some(dir), Some(run)) => open_stage(dir, run, request.stage, device)?,
        _ => return Err(Error::BadOption("give a search's RUN_DIR or --supernet FILE".into())),
    };
    for (name, genotype) in request.archs {
        check_fits(name, genotype, &trained)?;
    }
    let mut args = request.data.clone();
    if let Some(run) = &run {
        run.data.apply(&mut args)?;
        args.workers = request.data.workers;
    }
    if let Some(dir) = &request.data_dir {
        args.data = dir.clone();
    }
    let defaults = run.as_ref().map_or_else(SearchOptions::default, |r| r.search.clone());
    let batch = request.batch_size.unwrap_or(defaults.derive_batch());
    let images = request.images.unwrap_or(defaults.derive_images);
    let max_images = run.as_ref().and_then(|r| r.search.max_images);
    let data = Data::open(&args, !quiet)?;
    let classes = trained.supernet.config().num_classes;
    if data.info().num_classes as i64 != classes {
        return Err(Error::BadOption(format!(
            "the supernet has {classes} classes, the data set {}",
            data.info().num_classes
        )));
    }
    trained.supernet.config().check_input_size(data.info().input_size as i64)?;
    let loader = derive_loader(&data, &LoaderOptions::eval(batch).device(device), max_images, images)?;
    let kept = keep_batches(&loader, device)?;
    let bar = run::progress_bar(
        quiet,
        (request.archs.len() * loader.batches_per_epoch()) as u64,
        "score".into(),
        "",
    );
    tracing::info!(
        "scoring {} genotype(s) in {} on {} held-out images, batches of {batch}",
        request.archs.len(),
        trained.what,
        loader.samples_per_epoch()
    );
    let mut scores = Vec::with_capacity(request.archs.len());
    for (name, genotype) in request.archs {
        let (correct, count) = score_pair(&trained.supernet, &loader, &kept, device, genotype, &bar)?;
        let score = correct as f64 / count.max(1) as f64;
        scores.push(GenotypeScore {
            arch: name.clone(),
            score,
            std_error: std_error(score, count),
            correct,
            images: count,
            genotype: genotype.clone(),
        });
    }
    bar.finish_and_clear();
    Ok(scores)
}

/// The run's config.json.
fn read_run(run_dir: &Path) -> Result<RunConfig> {
    let path = run_dir.join(run::CONFIG);
    if !path.is_file() {
        return Err(Error::bad_file(run_dir, "not a cnas search run (config.json is missing)"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, format!("not a cnas search config: {e}")))
}

/// Stage `stage` (1-based; default the last) of a cnas search: its supernet, operations, nodes.
fn open_stage(run_dir: &Path, run: &RunConfig, stage: Option<usize>, device: Device) -> Result<Trained> {
    let order = run.search.resolved_op_order()?;
    let primitives = Primitive::DARTS.to_vec();
    let stages = curriculum(run.search.mode, &primitives, &order, run.search.nodes);
    let k = stage.unwrap_or(stages.len());
    let Some(s) = k.checked_sub(1).and_then(|i| stages.get(i)) else {
        return Err(Error::BadOption(format!(
            "--stage {k}: {} has stages 1 to {}",
            run_dir.display(),
            stages.len()
        )));
    };
    let file = run_dir.join(format!("stage-{k}")).join("supernet.safetensors");
    if !file.is_file() {
        return Err(Error::BadOption(format!(
            "stage {k} of {} has not finished: {} is missing (pick a finished one with --stage)",
            run_dir.display(),
            file.display()
        )));
    }
    let tensors = crate::weights::read_all(&file)?;
    let config =
        super::supernet_config(&run.search, &primitives, classes_of(&file, &tensors)?, run.supernet_stem());
    let (vs, supernet) = load_supernet(&file, config, &tensors, device)?;
    let allowed: Vec<Primitive> = s.ops.iter().filter_map(|n| Primitive::from_name(n)).collect();
    let what = format!("stage {k} of {} ({})", run_dir.display(), s.ops.join(", "));
    Ok(Trained { _vs: vs, supernet, allowed, nodes: s.searched_nodes, what })
}

/// A released supernet `state_dict`; its operation order from the request or the run, else
/// the released draw for the data seed.
fn open_released(
    file: &Path,
    request: &ScoreRequest,
    run: Option<&RunConfig>,
    device: Device,
) -> Result<Trained> {
    let order = match (&request.op_order, run) {
        (Some(order), _) => {
            check_op_order(order)?;
            order.clone()
        }
        (None, Some(run)) => run.search.resolved_op_order()?,
        (None, None) => released_op_order(request.data.seed)?,
    };
    let (vs, supernet) = load_released_supernet(file, &order, device)?;
    let k = request.stage.unwrap_or(order.len());
    if k == 0 || k > order.len() {
        return Err(Error::BadOption(format!(
            "--stage {k}: the operation curriculum has stages 1 to {}",
            order.len()
        )));
    }
    let allowed = order[..k].to_vec();
    let nodes = supernet.config().nodes;
    let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
    let what = format!("{} (released supernet; trained operations: {})", file.display(), names.join(", "));
    Ok(Trained { _vs: vs, supernet, allowed, nodes, what })
}

/// Builds the supernet of the released code's `state_dict` in `file`, whose candidate `k` on
/// each edge is `op_order[k]` (cnas's is `Primitive::DARTS[k]`: names are remapped), with the
/// shape (C, cells, nodes, classes) read from the tensors.
pub fn load_released_supernet(
    file: &Path,
    op_order: &[Primitive],
    device: Device,
) -> Result<(nn::VarStore, Supernet)> {
    let tensors = crate::weights::read_all(file)?;
    let bad = |m: String| Error::bad_file(file, m);
    let shape = |name: &str| -> Result<Vec<i64>> {
        let found = tensors.iter().find(|(n, _)| n.strip_prefix("module.").unwrap_or(n) == name);
        found.map(|(_, t)| t.size()).ok_or_else(|| bad(format!("not a supernet state_dict: no {name}")))
    };
    let stem = shape("stem.0.weight")?;
    let (mut cells, mut edges, mut ops) = (0usize, 0usize, 0usize);
    let mut renamed = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let name = name.strip_prefix("module.").unwrap_or(name);
        let parts: Vec<&str> = name.split('.').collect();
        if let (Some(&"cells"), Some(cell)) =
            (parts.first(), parts.get(1).and_then(|c| c.parse::<usize>().ok()))
        {
            cells = cells.max(cell + 1);
        }
        let mut out = name.to_string();
        if parts.len() > 5 && parts[0] == "cells" && parts[2] == "_ops" && parts[4] == "_ops" {
            let (e, k) = match (parts[3].parse::<usize>(), parts[5].parse::<usize>()) {
                (Ok(e), Ok(k)) => (e, k),
                _ => return Err(bad(format!("{name}: not a supernet variable name"))),
            };
            (edges, ops) = (edges.max(e + 1), ops.max(k + 1));
            let op = op_order.get(k).ok_or_else(|| {
                bad(format!(
                    "{name}: operation {k} on an edge, but the operation order lists {}",
                    op_order.len()
                ))
            })?;
            let ours = Primitive::DARTS.iter().position(|p| p == op).ok_or_else(|| {
                Error::BadOption(format!("--op-order: {op} is not one of the supernet's operations"))
            })?;
            let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            p[5] = ours.to_string();
            out = p.join(".");
        }
        renamed.push((out, t.shallow_clone()));
    }
    let nodes = (1..=64)
        .find(|n| n * (n + 3) / 2 == edges)
        .ok_or_else(|| bad(format!("{edges} edges per cell is not the edge count of any number of nodes")))?;
    if ops != op_order.len() {
        return Err(bad(format!(
            "{ops} operations per edge, but the operation order lists {}",
            op_order.len()
        )));
    }
    let config = SupernetConfig {
        primitives: Primitive::DARTS.to_vec(),
        init_channels: stem.first().copied().unwrap_or(0) / 3,
        layers: cells as i64,
        nodes,
        num_classes: classes_of(file, &renamed)?,
        // The released code searches CIFAR-10 only.
        stem: crate::supernet::SupernetStem::Cifar,
    };
    load_supernet(file, config, &renamed, device).map_err(|e| match e {
        Error::BadFile { path, message } => Error::BadFile {
            path,
            message: format!("{message} (is the operation order right? see --op-order)"),
        },
        e => e,
    })
}

/// Classes of a supernet's classifier.
fn classes_of(file: &Path, tensors: &[(String, Tensor)]) -> Result<i64> {
    tensors
        .iter()
        .find(|(n, _)| n.strip_prefix("module.").unwrap_or(n) == "classifier.weight")
        .and_then(|(_, t)| t.size().first().copied())
        .ok_or_else(|| Error::bad_file(file, "not a supernet: no classifier.weight"))
}

/// A supernet of `config` with `tensors` loaded (every variable, exact shapes).
fn load_supernet(
    file: &Path,
    config: SupernetConfig,
    tensors: &[(String, Tensor)],
    device: Device,
) -> Result<(nn::VarStore, Supernet)> {
    let vs = nn::VarStore::new(device);
    let supernet = Supernet::new(&vs.root(), config)?;
    let tensors: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    crate::weights::load_into(&vs, &tensors).map_err(|e| Error::bad_file(file, e.to_string()))?;
    Ok((vs, supernet))
}

/// A genotype must use only operations the supernet trained, and no more nodes than it searched.
fn check_fits(name: &str, genotype: &Genotype, trained: &Trained) -> Result<()> {
    let refuse =
        |why: String| Err(Error::BadOption(format!("--arch {name} does not fit {}: {why}", trained.what)));
    if let Err(e) = genotype.validate(Some(&trained.allowed)) {
        return refuse(e.to_string());
    }
    for (which, cell) in [("normal", &genotype.normal), ("reduce", &genotype.reduce)] {
        if cell.num_nodes() > trained.nodes {
            return refuse(format!(
                "its {which} cell has {} intermediate nodes, the supernet searched {}",
                cell.num_nodes(),
                trained.nodes
            ));
        }
    }
    Ok(())
}

/// Correct predictions and images of `genotype` on every batch: one host sync.
fn score_pair(
    supernet: &Supernet,
    loader: &Loader,
    kept: &Option<Vec<(Tensor, Tensor)>>,
    device: Device,
    genotype: &Genotype,
    bar: &ProgressBar,
) -> Result<(usize, usize)> {
    let pair = (&genotype.normal, &genotype.reduce);
    let (correct, count) = count_correct(supernet, loader, kept, device, pair, || bar.inc(1))?;
    Ok((correct.int64_value(&[]) as usize, count))
}

/// What `--arch` names: a published genotype or a genotype file ([`crate::space::resolve_arch`]),
/// or genotype text given inline (JSON or DARTS `Genotype(...)`), named `arch N` (1-based).
pub fn resolve_score_arch(arg: &str, index: usize) -> Result<(String, Genotype)> {
    match crate::space::resolve_arch(arg) {
        Ok(found) => Ok(found),
        Err(e) if !(arg.trim_start().starts_with('{') || arg.contains('(')) => Err(e),
        Err(_) => {
            let genotype = Genotype::parse_any(arg)
                .map_err(|e| Error::BadOption(format!("--arch (inline genotype {}): {e}", index + 1)))?;
            Ok((format!("arch {}", index + 1), genotype))
        }
    }
}
