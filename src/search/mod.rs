//! The curriculum architecture search, end to end, as the released CNAS code runs it.
//!
//! A search runs stages; each stage allows a set of operations (`--mode op`: the first k of
//! an order drawn from the seed with `torch.randperm`, sep_conv_3x3 first), a number of
//! searched nodes (`--mode node`), or everything (`--mode fixed`). A stage is `warmup_epochs`
//! epochs of weight training with uniformly sampled architectures, then `epochs` epochs of
//! weight training with the controllers' samples, each followed by a pass of REINFORCE
//! updates over the held-out batches (or `controller_steps` of them); then candidates are
//! sampled, scored on un-augmented held-out images, and saved. Supernet and controllers carry
//! over. See [`weight_step`] for the supernet's update rule (PyTorch 1.5's, by default).
//! `--mode random` is the baseline at op's cost: one stage whose warm-up has all of op's
//! weight epochs and whose search epochs are rounds of uniform candidates (see `random.rs`).
//!
//! # Run directory
//! - `config.json`: every option, the seed, the data options, the operation order, versions,
//!   the budget ([`SearchBudget`]), the supernet's shape and stem ([`SupernetConfig`]);
//! - `metrics.jsonl`: one line per epoch and phase (and per derive);
//! - `checkpoint.safetensors`: weights of the supernet and both controllers, both optimizers'
//!   state, and (in its metadata) the position, the baseline and the metrics line count;
//!   written atomically after every epoch, so a kill loses at most the epoch in progress;
//!   `checkpoint.previous.safetensors` is the one before it, resumed from when the latest
//!   cannot be read;
//! - `.cnas.lock`: held by the process writing the run (one at a time), with its process id;
//! - `stage-K/`: `supernet.safetensors`, `controllers.safetensors`, `candidates.json` and the
//!   stage's best `genotype.json`;
//! - `genotype.json`: the best candidate of the last stage;
//! - `tb/`: the numbers of metrics.jsonl as TensorBoard scalars, one event file per process.
//!
//! # Determinism
//! Every random draw of a step comes from a stream keyed by (seed, stage, phase, epoch): the
//! architecture samples (drawn in Rust, not by libtorch), the loader's shuffles and
//! augmentations. Resuming from a checkpoint therefore replays exactly what an uninterrupted
//! run does; on the CPU the two end bit-identical.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::controller::{reinforce_loss, uniform_cell, Baseline, CellSample, Controller, ControllerConfig};
use crate::data::{to_device, Data, DataArgs, DataConfig, Epoch, Loader, LoaderOptions, Part};
use crate::dist::DataParallel;
use crate::error::{Error, Result};
use crate::optim::{clip_grad_norm, trainable_params, Adam, Sgd};
use crate::space::{Cell, Genotype, Primitive};
use crate::supernet::{ParamUse, Supernet, SupernetConfig, SupernetStem};

mod checkpoint;
mod curriculum;
mod derive;
mod epochs;
mod options;
mod pace;
mod random;
mod score;
mod step;
#[cfg(test)]
mod tests;

pub use curriculum::*;
pub use derive::*;
pub use options::*;
use pace::*;
pub use random::{BudgetInputs, SearchBudget};
pub use score::*;
pub use step::*;

/// Where a search stands: the next thing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Warmup,
    Search,
    Derive,
}

impl Phase {
    fn id(self) -> u64 {
        match self {
            Phase::Warmup => 1,
            Phase::Search => 2,
            Phase::Derive => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    stage: usize,
    phase: Phase,
    epoch: usize,
}

/// What a checkpoint keeps besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// The next thing to do.
    position: Position,
    baseline: Baseline,
    /// Lines of metrics.jsonl that belong to the work done so far.
    metrics_lines: usize,
    /// Random mode: the candidates scored so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scored: Vec<Candidate>,
}

/// What `cnas search` writes into config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub search: SearchOptions,
    pub data: DataConfig,
    /// The curriculum's operation order.
    pub op_order: Vec<String>,
    pub versions: BTreeMap<String, String>,
    /// What the search spends (absent in runs of an older cnas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SearchBudget>,
    /// The supernet the run builds, stem included (absent in runs of an older cnas, whose
    /// supernet always had the CIFAR stem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supernet: Option<SupernetConfig>,
}

impl RunConfig {
    /// The stem of the run's supernet: the recorded one, else the CIFAR stem older runs had.
    pub fn supernet_stem(&self) -> SupernetStem {
        self.supernet.as_ref().map(|s| s.stem).unwrap_or_default()
    }
}

pub use crate::run::StartMode;

/// The result of a finished search.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub best: Candidate,
    pub run_dir: PathBuf,
}

use crate::run::metrics::{ControllerEpoch, DeriveSummary, SearchLine, SearchRecord, WeightsEpoch};
use crate::run::{self, CONFIG, METRICS, TENSORBOARD};
const CHECKPOINT: &str = "checkpoint.safetensors";
const GENOTYPE: &str = "genotype.json";

/// Runs (or resumes) a search in `run_dir`. `stop_after` ends the process's work after that
/// many epochs (counting every phase) as if it had been interrupted: for tests of resume.
/// `parallel`: this process's part in a data-parallel run (`None`: a single process). The
/// supernet's gradients are averaged over the ranks, every rank samples the same architectures
/// (the same seeded streams and identical controllers), rewards and candidate scores are
/// averaged over the ranks' held-out batches before they are used, and checksums of supernet
/// and controllers must agree after every epoch. Only rank 0 writes into `run_dir`.
#[allow(clippy::too_many_arguments)]
pub fn search(
    options: &SearchOptions,
    data_args: &DataArgs,
    run_dir: &Path,
    start: StartMode,
    device: Device,
    quiet: bool,
    stop_after: Option<usize>,
    parallel: Option<DataParallel>,
) -> Result<Option<SearchOutcome>> {
    let main = crate::run::is_writer(parallel.as_ref());
    // One writer per run directory, for the whole run: rank 0 (or a single process).
    let _lock = if main { run::RunLock::acquire(run_dir, start != StartMode::Resume)? } else { None };
    let (options, data_args, stem) = run_options(options, data_args, run_dir, start)?;
    options.validate()?;
    // Data, supernet and controllers are built before anything is written into the run, so a
    // start that fails on them leaves the directory as it was.
    let mut search = Search::new(options, &data_args, stem, run_dir, device, quiet || !main, parallel)?;
    search.begin(start, &data_args)?;
    search.run(stop_after).map_err(|e| {
        let run_dir = run_dir.display();
        crate::run::interrupt::explain(e, || {
            format!("{}; resume with: cnas search --resume {run_dir}", search.where_it_stands())
        })
    })
}

/// The options to run with: on resume, those the run was started with (its config.json) and
/// its supernet's stem; for a new run, the given ones, once checked and once the directory is
/// free for them (the stem then follows the image size: `None`).
fn run_options(
    options: &SearchOptions,
    data_args: &DataArgs,
    run_dir: &Path,
    start: StartMode,
) -> Result<(SearchOptions, DataArgs, Option<SupernetStem>)> {
    if start == StartMode::Resume {
        let config: RunConfig = run::read_config(run_dir, "search")?;
        let mut args = data_args.clone();
        config.data.apply(&mut args)?;
        let stem = config.supernet_stem();
        return Ok((config.search, args, Some(stem)));
    }
    options.validate()?;
    run::check_free(run_dir, start, RUN_FILES)?;
    Ok((options.clone(), data_args.clone(), None))
}

/// The files that make a directory hold a search (a new search is refused there, `--force`
/// removes them with the stage folders).
const RUN_FILES: &[&str] = &[CONFIG, METRICS, CHECKPOINT, GENOTYPE];

struct Search {
    options: SearchOptions,
    run_dir: PathBuf,
    device: Device,
    quiet: bool,
    primitives: Vec<Primitive>,
    stages: Vec<Stage>,
    weights_loader: Loader,
    heldout_loader: Loader,
    /// The un-augmented held-out images candidates are scored on.
    derive_loader: Loader,
    supernet_vs: nn::VarStore,
    supernet: Supernet,
    controller_vs: nn::VarStore,
    normal_controller: Controller,
    reduce_controller: Controller,
    sgd: Sgd,
    adam: Adam,
    /// Which SGD parameters an architecture pair uses.
    param_use: ParamUse,
    baseline: Baseline,
    metrics_lines: usize,
    position: Position,
    /// What the search spends, planned from the options and the data.
    budget: SearchBudget,
    /// Random mode: the candidates scored so far (kept in the checkpoint).
    scored: Vec<Candidate>,
    /// Random mode: the derivation images once read ([`Search::derive_images`]).
    derive_cache: Option<Option<Vec<(Tensor, Tensor)>>>,
    /// TensorBoard scalars of every metrics line, opened at the first line this process logs.
    tensorboard: Option<crate::tensorboard::EventWriter>,
    /// This process's part in a data-parallel run (None: a single process).
    parallel: Option<DataParallel>,
    /// Synchronised BatchNorm for as long as the search lives (`--sync-bn`).
    sync_bn: Option<crate::dist::SyncBatchNormScope>,
}

/// A loader restricted to its first `max_images` images (the split's order is already drawn
/// from the seed, so these are a seeded subset).
fn limit(loader: Loader, max_images: Option<usize>) -> Result<Loader> {
    match max_images {
        None => Ok(loader),
        Some(n) => loader.limited(n),
    }
}

/// The search's loaders: weight training, held-out (controller rewards) and derivation
/// (un-augmented held-out images, in order); each rank reads its shard.
fn open_loaders(
    options: &SearchOptions,
    data: &Data,
    device: Device,
    parallel: Option<&DataParallel>,
) -> Result<[Loader; 3]> {
    let (rank, world_size) = parallel.map_or((0, 1), |p| (p.rank(), p.world_size()));
    let loader_opts =
        LoaderOptions::train(options.batch_size).device(device).drop_last(true).shard(rank, world_size);
    let weights = limit(data.loader(Part::SearchWeights, &loader_opts)?, options.max_images)?;
    let heldout = limit(data.loader(Part::SearchHeldOut, &loader_opts)?, options.max_images)?;
    // Sharded, the ranks together score each image once.
    let derive_opts = LoaderOptions::eval(options.derive_batch()).device(device).shard(rank, world_size);
    let derive = derive_loader(data, &derive_opts, options.max_images, options.derive_images)?;
    for (loader, what) in [(&weights, "weight-training"), (&heldout, "held-out")] {
        if loader.batches_per_epoch() == 0 {
            return Err(Error::BadOption(format!(
                "the {what} split has fewer images than one batch of {}",
                options.batch_size
            )));
        }
    }
    Ok([weights, heldout, derive])
}

/// The derivation images (`cnas score` reads the same): the first `images` of the held-out
/// split (of its first `max_images`), in order, without augmentation (`opts`: `eval` ones).
pub fn derive_loader(
    data: &Data,
    opts: &LoaderOptions,
    max_images: Option<usize>,
    images: usize,
) -> Result<Loader> {
    limit(data.loader(Part::SearchHeldOut, opts)?, max_images)?.first(images)
}

/// The supernet a search with these options builds on `num_classes` classes with `stem`.
pub fn supernet_config(
    options: &SearchOptions,
    primitives: &[Primitive],
    num_classes: i64,
    stem: SupernetStem,
) -> SupernetConfig {
    SupernetConfig {
        primitives: primitives.to_vec(),
        init_channels: options.init_channels,
        layers: options.layers,
        nodes: options.nodes,
        num_classes,
        stem,
    }
}

/// The supernet of `config` with its SGD (parameters in name order) and the map of which
/// parameters an architecture pair uses.
fn build_supernet(
    options: &SearchOptions,
    config: SupernetConfig,
    device: Device,
) -> Result<(nn::VarStore, Supernet, ParamUse, Sgd)> {
    let vs = nn::VarStore::new(device);
    let supernet = Supernet::new(&vs.root(), config)?;
    let params = trainable_params(&vs);
    let names: Vec<&String> = params.iter().map(|(n, _)| n).collect();
    let param_use = ParamUse::new(&names, supernet.config());
    let sgd = Sgd::new(params, options.lr, options.momentum, options.weight_decay, true);
    Ok((vs, supernet, param_use, sgd))
}

/// The normal and reduction cells' controllers with their Adam. They stay on the CPU: sampling
/// a tiny LSTM step by step is launch-bound on a GPU, and the samples are needed on the host
/// anyway.
fn build_controllers(
    options: &SearchOptions,
    num_ops: usize,
) -> Result<(nn::VarStore, [Controller; 2], Adam)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ControllerConfig {
        nodes: options.nodes,
        num_ops,
        hidden: options.controller_hidden,
        temperature: options.temperature,
        tanh_constant: options.tanh_constant,
    };
    let normal = Controller::try_new(&(vs.root() / "normal"), config.clone())?;
    let reduce = Controller::try_new(&(vs.root() / "reduce"), config)?;
    let adam = Adam::new(trainable_params(&vs), options.controller_lr, options.controller_weight_decay);
    Ok((vs, [normal, reduce], adam))
}

/// What a search with these options spends on this data: its own curriculum's cost, or in
/// random mode op mode's (see [`random`]).
fn plan_budget(
    options: &SearchOptions,
    primitives: &[Primitive],
    order: &[Primitive],
    [weights, heldout, derive]: &[&Loader; 3],
) -> SearchBudget {
    let world_size = weights.config().world_size;
    let random = options.mode == CurriculumMode::Random;
    let mode = if random { CurriculumMode::Op } else { options.mode };
    let inputs = BudgetInputs {
        stages: curriculum(mode, primitives, order, options.nodes).len(),
        weight_batches: weights.batches_per_epoch(),
        controller_steps: options.controller_steps.unwrap_or_else(|| heldout.batches_per_epoch()),
        controller_batch: options.batch_size * world_size,
        images_per_candidate: derive.total_samples(),
    };
    if random {
        SearchBudget::random(options, inputs)
    } else {
        SearchBudget::curriculum(options, inputs)
    }
}

/// Logs what the search runs on: the data set, the split, the image size and the stem.
fn log_data(data: &Data, data_args: &DataArgs, loaders: [&Loader; 3], config: &SupernetConfig) -> Result<()> {
    let info = data.info();
    let [weights, heldout, derive] = loaders;
    let (n_weights, n_held) = (data.len(Part::SearchWeights)?, data.len(Part::SearchHeldOut)?);
    let used = if (weights.total_samples(), heldout.total_samples()) == (n_weights, n_held) {
        String::new()
    } else {
        format!(" (--max-images: {} and {} of them used)", weights.total_samples(), heldout.total_samples())
    };
    tracing::info!(
        "data: {} ({}), {} classes, {}×{} images; split of the {} training images by \
         --train-portion {} (seed {}): {n_weights} train weights, {n_held} held out{used}; \
         candidates are scored on {} un-augmented held-out images",
        data_args.data.display(),
        info.kind,
        info.num_classes,
        info.input_size,
        info.input_size,
        data.len(Part::Train)?,
        data_args.train_portion,
        data_args.seed,
        derive.total_samples()
    );
    let (s0, s1) = config.stem.first_cell_sides(info.input_size as i64);
    let first = if s0 == s1 {
        format!("{s1}×{s1}")
    } else {
        format!("{s1}×{s1} (stem1, and stem0's {s0}×{s0} through a factorized reduce)")
    };
    tracing::info!("supernet: {}, the first cell sees {first}", config.stem);
    Ok(())
}

impl Search {
    fn new(
        options: SearchOptions,
        data_args: &DataArgs,
        stem: Option<SupernetStem>,
        run_dir: &Path,
        device: Device,
        quiet: bool,
        parallel: Option<DataParallel>,
    ) -> Result<Self> {
        let data = Data::open(data_args, !quiet)?;
        let info = data.info();
        if info.num_classes < 2 {
            return Err(Error::BadOption(format!(
                "{}: {} class, a search needs at least 2 (one folder per class)",
                data_args.data.display(),
                info.num_classes
            )));
        }
        let primitives = Primitive::DARTS.to_vec();
        let stem = stem.unwrap_or_else(|| SupernetStem::for_image_size(info.input_size));
        let supernet_config = supernet_config(&options, &primitives, info.num_classes as i64, stem);
        // Before any loader starts: an odd map would only fail inside libtorch.
        supernet_config.check_input_size(info.input_size as i64).map_err(|e| match e {
            Error::BadOption(m) => Error::BadOption(format!("--image-size {}: {m}", info.input_size)),
            e => e,
        })?;
        if device.is_cuda() {
            // A supernet has few distinct convolution shapes, each met many times.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let [weights_loader, heldout_loader, derive_loader] =
            open_loaders(&options, &data, device, parallel.as_ref())?;
        let order = options.resolved_op_order()?;
        let stages = curriculum(options.mode, &primitives, &order, options.nodes);

        // The seed fixes the supernet's initial weights, then the controllers'.
        tch::manual_seed(options.seed as i64);
        let (supernet_vs, supernet, param_use, sgd) = build_supernet(&options, supernet_config, device)?;
        let (controller_vs, [normal_controller, reduce_controller], adam) =
            build_controllers(&options, primitives.len())?;
        // Once everything is built (and the global generator has had its draws): a supernet too
        // large for the memory stays a one-line error.
        if crate::run::is_writer(parallel.as_ref()) {
            let loaders = [&weights_loader, &heldout_loader, &derive_loader];
            log_data(&data, data_args, loaders, supernet.config())?;
        }
        let budget =
            plan_budget(&options, &primitives, &order, &[&weights_loader, &heldout_loader, &derive_loader]);

        Ok(Search {
            baseline: Baseline::new(options.baseline_decay),
            options,
            run_dir: run_dir.to_path_buf(),
            device,
            quiet,
            primitives,
            stages,
            weights_loader,
            heldout_loader,
            derive_loader,
            supernet_vs,
            supernet,
            controller_vs,
            normal_controller,
            reduce_controller,
            sgd,
            adam,
            param_use,
            metrics_lines: 0,
            position: Position { stage: 0, phase: Phase::Warmup, epoch: 0 },
            budget,
            scored: Vec::new(),
            derive_cache: None,
            tensorboard: None,
            parallel,
            sync_bn: None,
        })
    }

    /// Takes the run directory (the writer of a new run clears what a forced-over run left and
    /// writes config.json; every writer removes temporary files a killed process left), loads
    /// the checkpoint to resume from, and joins the other ranks.
    fn begin(&mut self, start: StartMode, data_args: &DataArgs) -> Result<()> {
        if self.is_main() {
            run::remove_leftovers(&self.run_dir);
            if start != StartMode::Resume {
                run::claim(&self.run_dir, start, RUN_FILES, &["stage-*"])?;
                let order = self.options.resolved_op_order()?;
                let config = RunConfig {
                    search: self.options.clone(),
                    data: DataConfig::from_args(data_args),
                    op_order: order.iter().map(|p| p.name().to_string()).collect(),
                    versions: crate::util::versions(),
                    budget: Some(self.budget.clone()),
                    supernet: Some(self.supernet.config().clone()),
                };
                run::write_config(&self.run_dir, &config)?;
            }
        }
        // Other ranks of a new run start from scratch (rank 0 may be clearing an old run).
        if self.is_main() || start == StartMode::Resume {
            self.restore()?;
        }
        self.join_ranks()
    }

    /// Where an interrupted search stands, for its message: the epoch in progress, which a
    /// resume redoes from the checkpoint before it.
    fn where_it_stands(&self) -> String {
        let p = self.position;
        let stage = format!("stage {} of {}", p.stage + 1, self.stages.len());
        let (warmup, epochs) = self.phase_epochs();
        let search = if self.is_random() { "random round" } else { "search epoch" };
        let what = match p.phase {
            Phase::Warmup => format!("warm-up epoch {} of {warmup}", p.epoch + 1),
            Phase::Search => format!("{search} {} of {epochs}", p.epoch + 1),
            Phase::Derive => "derivation".to_string(),
        };
        format!("the search stopped in {stage}, {what}, which a resume redoes from the last checkpoint")
    }

    /// Data-parallel runs: checks that every rank is at the same position, gives every rank
    /// rank 0's weights and optimizer state, and starts synchronised BatchNorm if asked.
    fn join_ranks(&mut self) -> Result<()> {
        let Some(p) = self.parallel.clone() else { return Ok(()) };
        let mut optimizers: Vec<Tensor> = self.sgd.state().into_iter().map(|(_, t)| t).collect();
        optimizers.extend(self.adam.state().into_iter().map(|(_, t)| t));
        let position = self.loader_epoch(self.position.phase) as i64;
        p.group().check_same(
            "the search position (every rank must see the same run directory and checkpoint)",
            &[position, self.position.stage as i64, self.metrics_lines as i64],
        )?;
        p.start(&self.supernet_vs, &optimizers, 0)?;
        p.start(&self.controller_vs, &[], 0)?;
        if self.options.sync_bn {
            self.sync_bn = Some(crate::dist::SyncBatchNormScope::new(std::sync::Arc::clone(p.group())));
        }
        Ok(())
    }

    /// Only rank 0 (or a single process) writes files.
    fn is_main(&self) -> bool {
        run::is_writer(self.parallel.as_ref())
    }

    /// Data-parallel runs, after an epoch: rank 0's supernet buffers everywhere, and the
    /// supernet's weights and the controllers must be bit-identical on every rank.
    fn check_replicas(&self, what: &str) -> Result<()> {
        let Some(p) = &self.parallel else { return Ok(()) };
        p.end_epoch(&self.supernet_vs, self.position.epoch + 1)?;
        let controllers = crate::dist::sorted_variables(&self.controller_vs);
        let crc = crate::dist::checksum(&controllers);
        tracing::info!("rank {} {what}: controllers checksum {crc:08x}", p.rank());
        p.group().check_same(&format!("the controllers after {what}"), &[i64::from(crc)])?;
        Ok(())
    }

    fn progress(&self, len: u64, what: String) -> ProgressBar {
        run::progress_bar(self.quiet, len, what, "")
    }

    /// The loaders' epoch number for (stage, phase, epoch): distinct shuffles everywhere.
    fn loader_epoch(&self, phase: Phase) -> u64 {
        let p = self.position;
        ((p.stage as u64) << 40) | (phase.id() << 32) | p.epoch as u64
    }

    fn run(&mut self, stop_after: Option<usize>) -> Result<Option<SearchOutcome>> {
        let mut epochs_done = 0usize;
        let mut last: Option<Candidate> = None;
        let mut pace = Pace::default();
        let (warmup, epochs) = self.phase_epochs();
        while self.position.stage < self.stages.len() {
            if stop_after.is_some_and(|n| epochs_done >= n) {
                tracing::info!("stopping after {epochs_done} epochs as asked; resume with --resume");
                return Ok(None);
            }
            let p = self.position;
            match p.phase {
                Phase::Warmup if p.epoch >= warmup => {
                    self.position = Position { phase: Phase::Search, epoch: 0, ..p };
                }
                Phase::Search if p.epoch >= epochs => {
                    self.position = Position { phase: Phase::Derive, epoch: 0, ..p };
                }
                Phase::Warmup => {
                    let start = Instant::now();
                    self.train_weights(true)?;
                    self.position.epoch += 1;
                    self.save_checkpoint()?;
                    epochs_done += 1;
                    pace.warmup.add(start.elapsed().as_secs_f64());
                    self.log_time_left(&pace);
                }
                Phase::Search => {
                    let start = Instant::now();
                    self.search_epoch()?;
                    self.position.epoch += 1;
                    self.save_checkpoint()?;
                    epochs_done += 1;
                    pace.search.add(start.elapsed().as_secs_f64());
                    self.log_time_left(&pace);
                }
                Phase::Derive => {
                    last = Some(if self.is_random() { self.finish_random()? } else { self.finish_stage()? });
                    self.position = Position { stage: p.stage + 1, phase: Phase::Warmup, epoch: 0 };
                    self.save_checkpoint()?;
                }
            }
        }
        let best = match last {
            Some(best) => best,
            // Resumed after the last stage had finished: read its result back.
            None => self.read_stage_best(self.stages.len() - 1)?,
        };
        let mut json = best.genotype.to_json();
        if let Some(obj) = json.as_object_mut() {
            obj.insert("name".into(), "cnas-search".into());
            obj.insert(
                "source".into(),
                format!(
                    "cnas search, seed {}, stage {}, held-out score {:.4}",
                    self.options.seed, best.stage, best.score
                )
                .into(),
            );
        }
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Internal(e.to_string()))?;
        if self.is_main() {
            crate::util::write_atomic(&self.run_dir.join(GENOTYPE), text.as_bytes())?;
        }
        Ok(Some(SearchOutcome { best, run_dir: self.run_dir.clone() }))
    }

    /// An epoch of the search phase: weights then controllers, or a round of random search.
    fn search_epoch(&mut self) -> Result<()> {
        if self.is_random() {
            return self.score_random_round();
        }
        self.train_weights(false)?;
        self.train_controllers()
    }

    /// Logs how long the rest of the search should take at this process's pace so far.
    fn log_time_left(&self, pace: &Pace) {
        let (warmup, epochs) = self.phase_epochs();
        let (warmup, search) = epochs_left(self.position, self.stages.len(), warmup, epochs);
        if let Some(secs) = pace.time_left(warmup, search) {
            let mins = (secs / 60.0).round() as u64;
            tracing::info!(
                "{warmup} warm-up and {search} search epochs left: about {}h{:02}m at this pace",
                mins / 60,
                mins % 60
            );
        }
    }

    fn stage_dir(&self, stage: usize) -> PathBuf {
        self.run_dir.join(format!("stage-{}", stage + 1))
    }
}
