//! The curriculum architecture search, end to end.
//!
//! A search runs stages; each stage allows a set of operations (`--mode op`: the first k of an
//! order drawn from the seed, sep_conv_3x3 first), a number of searched nodes (`--mode node`),
//! or everything (`--mode fixed`). A stage is `warmup_epochs` epochs of weight training with
//! uniformly sampled architectures, then `epochs` epochs of weight training with the
//! controllers' samples, each followed by `controller_steps` REINFORCE updates on held-out
//! batches; then candidates are derived and saved. Supernet and controllers carry over.
//!
//! # Run directory
//! - `config.json`: every option, the seed, the data options, the operation order, versions;
//! - `metrics.jsonl`: one line per epoch and phase (and per derive);
//! - `checkpoint.safetensors`: weights of the supernet and both controllers, both optimizers'
//!   state, and (in its metadata) the position, the baseline and the metrics line count;
//!   written atomically after every epoch, so a kill loses at most the epoch in progress;
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
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::controller::{reinforce_loss, uniform_cell, Baseline, Controller, ControllerConfig};
use crate::data::{to_device, Data, DataArgs, DataConfig, Loader, LoaderOptions, Part};
use crate::error::{Error, Result};
use crate::optim::{clip_grad_norm, Adam, Sgd};
use crate::space::{Cell, Genotype, Primitive};
use crate::supernet::{ParamUse, Supernet, SupernetConfig};
use crate::train::DataParallel;

/// How the search space grows from stage to stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CurriculumMode {
    /// Start with one operation (sep_conv_3x3) and add one per stage, in an order drawn from
    /// the seed: 8 stages.
    Op,
    /// Grow the number of searched nodes from 1 to all, with every operation.
    Node,
    /// One stage over the full space (the ablation without curriculum).
    Fixed,
}

/// Every number of a search. [`SearchOptions::default`] is the paper's configuration,
/// [`SearchOptions::quick`] a tiny one that still runs every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchOptions {
    pub mode: CurriculumMode,
    /// Supernet channels (C) and cells (L); reductions at L/3 and 2L/3.
    pub init_channels: i64,
    pub layers: i64,
    /// Intermediate nodes per cell.
    pub nodes: usize,
    pub batch_size: usize,
    pub warmup_epochs: usize,
    pub epochs: usize,
    /// REINFORCE updates after each epoch of weight training.
    pub controller_steps: usize,
    /// Weights: SGD (Nesterov) on the weight-training split.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    /// Controller: Adam on held-out batches.
    pub controller_lr: f64,
    pub controller_weight_decay: f64,
    pub controller_hidden: i64,
    pub entropy_weight: f64,
    pub baseline_decay: f64,
    pub temperature: Option<f64>,
    pub tanh_constant: Option<f64>,
    /// Candidates at the end of a stage: `derive_rounds` rounds of `derive_samples` samples,
    /// each scored on the same `derive_batches` held-out batches; each round's best is kept.
    pub derive_rounds: usize,
    pub derive_samples: usize,
    pub derive_batches: usize,
    /// Use at most this many images of each search split (None: all).
    pub max_images: Option<usize>,
    pub seed: u64,
    /// Data-parallel runs: BatchNorm statistics over every rank's batch (the supernet's
    /// BatchNorm always normalises with batch statistics, so this makes a rank's step the
    /// global batch's, as in one process).
    pub sync_bn: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            mode: CurriculumMode::Op,
            init_channels: 16,
            layers: 8,
            nodes: 4,
            batch_size: 96,
            warmup_epochs: 20,
            epochs: 40,
            controller_steps: 50,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            controller_lr: 3e-4,
            controller_weight_decay: 5e-4,
            controller_hidden: 128,
            entropy_weight: 0.005,
            baseline_decay: 0.99,
            temperature: None,
            tanh_constant: None,
            derive_rounds: 3,
            derive_samples: 10,
            derive_batches: 1,
            max_images: None,
            seed: 0,
            sync_bn: false,
        }
    }
}

impl SearchOptions {
    /// Small enough for a laptop CPU in minutes, and still every stage of the curriculum.
    pub fn quick() -> Self {
        SearchOptions {
            init_channels: 8,
            layers: 5,
            batch_size: 32,
            warmup_epochs: 1,
            epochs: 1,
            controller_steps: 8,
            derive_samples: 4,
            max_images: Some(512),
            controller_lr: 3.5e-3,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::BadOption(m.to_string()));
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1");
        }
        if self.epochs == 0 && self.warmup_epochs == 0 {
            return bad("a stage needs at least one epoch: --warmup-epochs and --epochs are both 0");
        }
        if self.derive_rounds == 0 || self.derive_samples == 0 || self.derive_batches == 0 {
            return bad("--derive-rounds, --derive-samples and --derive-batches must be at least 1");
        }
        if self.max_images == Some(0) {
            return bad("--max-images must be at least 1");
        }
        if !(self.lr > 0.0 && self.controller_lr > 0.0) {
            return bad("learning rates must be positive");
        }
        if !(0.0..1.0).contains(&self.baseline_decay) {
            return bad("--baseline-decay must be in [0, 1)");
        }
        Ok(())
    }
}

/// One stage of the curriculum: which ops (a mask over the supernet's primitive list) and how
/// many nodes the controllers choose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub allowed: Vec<bool>,
    pub searched_nodes: usize,
    /// Names of the allowed ops, in curriculum order (for logs and metrics).
    pub ops: Vec<String>,
}

/// The operation order (`--mode op`: sep_conv_3x3 first, the rest shuffled by the seed) and
/// the stages it gives.
pub fn curriculum(
    mode: CurriculumMode,
    primitives: &[Primitive],
    nodes: usize,
    seed: u64,
) -> (Vec<Primitive>, Vec<Stage>) {
    let mut order: Vec<Primitive> = primitives.to_vec();
    if let Some(first) = order.iter().position(|&p| p == Primitive::SepConv3x3) {
        order.swap(0, first);
    }
    let mut rng = stream(seed, u64::MAX, 0, 0);
    order[1..].shuffle(&mut rng);
    let mask = |k: usize| -> Vec<bool> { primitives.iter().map(|p| order[..k].contains(p)).collect() };
    let names = |k: usize| -> Vec<String> { order[..k].iter().map(|p| p.name().to_string()).collect() };
    let stages = match mode {
        CurriculumMode::Op => (1..=order.len())
            .map(|k| Stage { allowed: mask(k), searched_nodes: nodes, ops: names(k) })
            .collect(),
        CurriculumMode::Node => (1..=nodes)
            .map(|n| Stage { allowed: mask(order.len()), searched_nodes: n, ops: names(order.len()) })
            .collect(),
        CurriculumMode::Fixed => {
            vec![Stage { allowed: mask(order.len()), searched_nodes: nodes, ops: names(order.len()) }]
        }
    };
    (order, stages)
}

/// The random stream of one (stage, phase, epoch): every draw of a step comes from here.
pub fn stream(seed: u64, stage: u64, phase: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stage.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (phase << 56) ^ epoch);
    rng
}

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
}

/// A derived architecture and its score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub stage: usize,
    pub round: usize,
    pub genotype: Genotype,
    /// Top-1 accuracy on the derive batches of the held-out split.
    pub score: f64,
    pub log_prob: f64,
    pub entropy: f64,
}

/// What `cnas search` writes into config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub search: SearchOptions,
    pub data: DataConfig,
    /// The curriculum's operation order.
    pub op_order: Vec<String>,
    pub versions: BTreeMap<String, String>,
}

/// How a search is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// A fresh run; refuses a run directory that holds another run.
    New,
    /// A fresh run, clearing what a previous run left in the directory.
    Force,
    /// Continue the run in the directory from its last checkpoint.
    Resume,
}

/// The result of a finished search.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub best: Candidate,
    pub run_dir: PathBuf,
}

const CONFIG: &str = "config.json";
const METRICS: &str = "metrics.jsonl";
const CHECKPOINT: &str = "checkpoint.safetensors";
const GENOTYPE: &str = "genotype.json";
const TENSORBOARD: &str = "tb";

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
    let main = parallel.as_ref().is_none_or(DataParallel::is_main);
    let (options, data_args) = prepare_run_dir(options, data_args, run_dir, start, main)?;
    options.validate()?;
    let result = Search::new(options, &data_args, run_dir, device, quiet || !main, start, parallel)
        .and_then(|mut search| search.run(stop_after));
    crate::dist::set_sync_batch_norm(None);
    result
}

/// Checks and sets up the run directory; on resume returns the options the run was started with.
fn prepare_run_dir(
    options: &SearchOptions,
    data_args: &DataArgs,
    run_dir: &Path,
    start: StartMode,
    writer: bool,
) -> Result<(SearchOptions, DataArgs)> {
    let config_path = run_dir.join(CONFIG);
    match start {
        StartMode::Resume => {
            if !config_path.is_file() {
                return Err(Error::bad_file(run_dir, "no search to resume here (config.json is missing)"));
            }
            let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config: RunConfig = serde_json::from_str(&text)
                .map_err(|e| Error::bad_file(&config_path, format!("not a cnas search config: {e}")))?;
            let mut args = data_args.clone();
            config.data.apply(&mut args)?;
            Ok((config.search, args))
        }
        // Other ranks of a new run leave the directory to rank 0.
        StartMode::New | StartMode::Force if !writer => {
            options.validate()?;
            Ok((options.clone(), data_args.clone()))
        }
        StartMode::New | StartMode::Force => {
            let occupied = [CONFIG, METRICS, CHECKPOINT, GENOTYPE].iter().any(|f| run_dir.join(f).exists());
            if occupied && start == StartMode::New {
                return Err(Error::BadOption(format!(
                    "{} holds another run: use --resume to continue it or --force to start over",
                    run_dir.display()
                )));
            }
            std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
            if occupied {
                for f in [CONFIG, METRICS, CHECKPOINT, GENOTYPE] {
                    let _ = std::fs::remove_file(run_dir.join(f));
                }
                let _ = std::fs::remove_dir_all(run_dir.join(TENSORBOARD));
                if let Ok(entries) = std::fs::read_dir(run_dir) {
                    for e in entries.flatten() {
                        if e.file_name().to_string_lossy().starts_with("stage-") {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
            options.validate()?;
            let (order, _) = curriculum(options.mode, &Primitive::DARTS, options.nodes, options.seed);
            let config = RunConfig {
                search: options.clone(),
                data: DataConfig::from_args(data_args),
                op_order: order.iter().map(|p| p.name().to_string()).collect(),
                versions: crate::util::versions(),
            };
            let json = serde_json::to_string_pretty(&config).map_err(|e| Error::BadOption(e.to_string()))?;
            crate::util::write_atomic(&config_path, json.as_bytes())?;
            Ok((options.clone(), data_args.clone()))
        }
    }
}

/// Warm-up and search epochs still to run after `p` in a search of `stages` stages of
/// `warmup` + `epochs` epochs.
fn epochs_left(p: Position, stages: usize, warmup: usize, epochs: usize) -> (usize, usize) {
    let later_stages = stages.saturating_sub(p.stage + 1);
    let (warmup_now, search_now) = match p.phase {
        Phase::Warmup => (warmup.saturating_sub(p.epoch), epochs),
        Phase::Search => (0, epochs.saturating_sub(p.epoch)),
        Phase::Derive => (0, 0),
    };
    (warmup_now + later_stages * warmup, search_now + later_stages * epochs)
}

/// Mean seconds per epoch of each kind in this process, for the time-left estimate.
#[derive(Default)]
struct Pace {
    warmup: RunningMean,
    search: RunningMean,
}

#[derive(Default)]
struct RunningMean {
    sum: f64,
    count: usize,
}

impl RunningMean {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.count += 1;
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

impl Pace {
    /// Seconds for `warmup` and `search` more epochs; an epoch kind not timed yet is taken to
    /// last as long as the other (a search epoch also trains the controllers, so early
    /// estimates run short). `None` before any epoch.
    fn time_left(&self, warmup: usize, search: usize) -> Option<f64> {
        let w = self.warmup.mean().or(self.search.mean())?;
        let s = self.search.mean().unwrap_or(w);
        Some(warmup as f64 * w + search as f64 * s)
    }
}

/// How many architecture pairs the sampling thread may draw ahead of the weight steps.
const PAIRS_AHEAD: usize = 4;

/// Draws architecture pairs for a stage: uniformly, or from (frozen copies of) the normal and
/// reduction controllers. Owns everything it needs, so it can run on a thread of its own.
struct PairSampler {
    controllers: Option<[Controller; 2]>,
    stage: Stage,
    primitives: Vec<Primitive>,
}

impl PairSampler {
    fn draw(&self, rng: &mut ChaCha8Rng) -> (Cell, Cell) {
        let (allowed, nodes, prims) = (&self.stage.allowed, self.stage.searched_nodes, &self.primitives);
        match &self.controllers {
            None => (uniform_cell(rng, allowed, nodes, prims), uniform_cell(rng, allowed, nodes, prims)),
            Some([normal, reduce]) => tch::no_grad(|| {
                let n = normal.sample(rng, allowed, nodes, prims);
                let r = reduce.sample(rng, allowed, nodes, prims);
                (n.cell, r.cell)
            }),
        }
    }

    /// Sends `count` pairs in order; stops early when the receiver is gone.
    fn send(&self, rng: &mut ChaCha8Rng, count: usize, tx: std::sync::mpsc::SyncSender<(Cell, Cell)>) {
        for _ in 0..count {
            if tx.send(self.draw(rng)).is_err() {
                return;
            }
        }
    }
}

/// Totals of one epoch, accumulated on the device and read once at its end.
struct Totals {
    loss: Tensor,
    correct: Tensor,
    images: usize,
}

impl Totals {
    fn new(device: Device) -> Self {
        Totals {
            loss: Tensor::zeros([], (Kind::Float, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            images: 0,
        }
    }

    fn add(&mut self, loss: &Tensor, logits: &Tensor, labels: &Tensor) {
        let n = labels.size()[0];
        self.loss += loss.detach() * n as f64;
        self.correct += logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64);
        self.images += n as usize;
    }

    /// (mean loss, accuracy): the one host sync of an epoch.
    fn read(&self) -> (f64, f64) {
        let n = self.images.max(1) as f64;
        (self.loss.double_value(&[]) / n, self.correct.double_value(&[]) / n)
    }
}

struct Search {
    options: SearchOptions,
    run_dir: PathBuf,
    device: Device,
    quiet: bool,
    primitives: Vec<Primitive>,
    stages: Vec<Stage>,
    weights_loader: Loader,
    heldout_loader: Loader,
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
    /// TensorBoard scalars of every metrics line, opened at the first line this process logs.
    tensorboard: Option<crate::tensorboard::EventWriter>,
    /// This process's part in a data-parallel run (None: a single process).
    parallel: Option<DataParallel>,
}

impl Search {
    fn new(
        options: SearchOptions,
        data_args: &DataArgs,
        run_dir: &Path,
        device: Device,
        quiet: bool,
        start: StartMode,
        parallel: Option<DataParallel>,
    ) -> Result<Self> {
        let data = Data::open(data_args, !quiet)?;
        if device.is_cuda() {
            // A supernet has few distinct convolution shapes, each met many times.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let (rank, world_size) = parallel.as_ref().map_or((0, 1), |p| (p.rank(), p.world_size()));
        let loader_opts =
            LoaderOptions::train(options.batch_size).device(device).drop_last(true).shard(rank, world_size);
        let weights_loader = limit(data.loader(Part::SearchWeights, &loader_opts)?, options.max_images)?;
        let heldout_loader = limit(data.loader(Part::SearchHeldOut, &loader_opts)?, options.max_images)?;
        for (loader, what) in [(&weights_loader, "weight-training"), (&heldout_loader, "held-out")] {
            if loader.batches_per_epoch() == 0 {
                return Err(Error::BadOption(format!(
                    "the {what} split has fewer images than one batch of {}",
                    options.batch_size
                )));
            }
        }
        let primitives = Primitive::DARTS.to_vec();
        let (_, stages) = curriculum(options.mode, &primitives, options.nodes, options.seed);

        tch::manual_seed(options.seed as i64);
        let supernet_vs = nn::VarStore::new(device);
        let config = SupernetConfig {
            primitives: primitives.clone(),
            init_channels: options.init_channels,
            layers: options.layers,
            nodes: options.nodes,
            num_classes: data.info().num_classes as i64,
        };
        let supernet = Supernet::new(&supernet_vs.root(), config)?;
        // The controllers stay on the CPU: sampling a tiny LSTM step by step is launch-bound
        // on a GPU, and the samples are needed on the host anyway.
        let controller_vs = nn::VarStore::new(Device::Cpu);
        let controller_config = ControllerConfig {
            nodes: options.nodes,
            num_ops: primitives.len(),
            hidden: options.controller_hidden,
            temperature: options.temperature,
            tanh_constant: options.tanh_constant,
        };
        let normal_controller =
            Controller::try_new(&(controller_vs.root() / "normal"), controller_config.clone())?;
        let reduce_controller = Controller::try_new(&(controller_vs.root() / "reduce"), controller_config)?;

        let mut supernet_params: Vec<(String, Tensor)> =
            supernet_vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        supernet_params.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&String> = supernet_params.iter().map(|(n, _)| n).collect();
        let param_use = ParamUse::new(&names, supernet.config());
        let sgd = Sgd::new(supernet_params, options.lr, options.momentum, options.weight_decay, true);
        let mut controller_params: Vec<(String, Tensor)> =
            controller_vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        controller_params.sort_by(|a, b| a.0.cmp(&b.0));
        let adam = Adam::new(controller_params, options.controller_lr, options.controller_weight_decay);

        let mut search = Search {
            baseline: Baseline::new(options.baseline_decay),
            options,
            run_dir: run_dir.to_path_buf(),
            device,
            quiet,
            primitives,
            stages,
            weights_loader,
            heldout_loader,
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
            tensorboard: None,
            parallel,
        };
        // Other ranks of a new run start from scratch (rank 0 may be clearing an old run).
        if search.is_main() || start == StartMode::Resume {
            search.restore()?;
        }
        if let Some(p) = &search.parallel {
            let p = p.clone();
            let mut optimizers: Vec<Tensor> = search.sgd.state().into_iter().map(|(_, t)| t).collect();
            optimizers.extend(search.adam.state().into_iter().map(|(_, t)| t));
            let position = search.loader_epoch(search.position.phase) as i64;
            p.group().check_same(
                "the search position (every rank must see the same run directory and checkpoint)",
                &[position, search.position.stage as i64, search.metrics_lines as i64],
            )?;
            p.start(&search.supernet_vs, &optimizers, 0)?;
            p.start(&search.controller_vs, &[], 0)?;
            if search.options.sync_bn {
                crate::dist::set_sync_batch_norm(Some(std::sync::Arc::clone(p.group())));
            }
        }
        Ok(search)
    }

    /// Only rank 0 (or a single process) writes files.
    fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(DataParallel::is_main)
    }

    /// Data-parallel runs: the mean of `value` over the ranks (a reward, a score).
    fn mean_over_ranks(&self, value: f64) -> Result<f64> {
        match &self.parallel {
            Some(p) => Ok(p.group().mean_f64(&[value])?[0]),
            None => Ok(value),
        }
    }

    /// Data-parallel runs, after an epoch: rank 0's supernet buffers everywhere, and the
    /// supernet's weights and the controllers must be bit-identical on every rank.
    fn check_replicas(&self, what: &str) -> Result<()> {
        let Some(p) = &self.parallel else { return Ok(()) };
        p.end_epoch(&self.supernet_vs, self.position.epoch + 1)?;
        let controllers = crate::train::parallel::sorted_variables(&self.controller_vs);
        let crc = crate::dist::checksum(&controllers);
        tracing::info!("rank {} {what}: controllers checksum {crc:08x}", p.rank());
        p.group().check_same(&format!("the controllers after {what}"), &[i64::from(crc)])?;
        Ok(())
    }

    /// Loads the checkpoint if there is one and trims metrics.jsonl to the work it covers.
    fn restore(&mut self) -> Result<()> {
        let path = self.run_dir.join(CHECKPOINT);
        if !path.is_file() {
            self.truncate_metrics(0)?;
            return Ok(());
        }
        let metadata = crate::weights::read_metadata(&path)?.unwrap_or_default();
        let state: CheckpointState =
            metadata.get("state").and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| {
                Error::bad_file(&path, "not a cnas search checkpoint (no state in its metadata)")
            })?;
        let tensors = crate::weights::read(&path)?;
        let mut groups: HashMap<&str, Vec<(String, Tensor)>> = HashMap::new();
        for (name, t) in tensors {
            let Some((group, rest)) = name.split_once('/') else {
                return Err(Error::bad_file(&path, format!("unexpected tensor {name}")));
            };
            let group = match group {
                "supernet" => "supernet",
                "controller" => "controller",
                "sgd" => "sgd",
                "adam" => "adam",
                _ => return Err(Error::bad_file(&path, format!("unexpected tensor {name}"))),
            };
            groups.entry(group).or_default().push((rest.to_string(), t));
        }
        let take =
            |groups: &mut HashMap<&str, Vec<(String, Tensor)>>, g: &str| groups.remove(g).unwrap_or_default();
        crate::weights::load_into(&self.supernet_vs, &take(&mut groups, "supernet"))?;
        crate::weights::load_into(&self.controller_vs, &take(&mut groups, "controller"))?;
        self.sgd.load_state(&take(&mut groups, "sgd").into_iter().collect())?;
        self.adam.load_state(&take(&mut groups, "adam").into_iter().collect())?;
        self.baseline = state.baseline;
        self.position = state.position;
        self.truncate_metrics(state.metrics_lines)?;
        tracing::info!(
            "resuming at stage {}, {:?} epoch {}",
            self.position.stage + 1,
            self.position.phase,
            self.position.epoch + 1
        );
        Ok(())
    }

    /// Keeps the first `lines` lines of metrics.jsonl (an interrupted epoch may have written
    /// its line before its checkpoint; it will be written again).
    fn truncate_metrics(&mut self, lines: usize) -> Result<()> {
        if !self.is_main() {
            self.metrics_lines = lines;
            return Ok(());
        }
        let path = self.run_dir.join(METRICS);
        let kept: Vec<String> = match std::fs::File::open(&path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .take(lines)
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(&path, e))?,
            Err(_) => Vec::new(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::util::write_atomic(&path, text.as_bytes())?;
        self.metrics_lines = kept.len();
        Ok(())
    }

    fn log_metrics(&mut self, mut line: serde_json::Value) -> Result<()> {
        if !self.is_main() {
            // Counted all the same: every rank's checkpoint position agrees.
            self.metrics_lines += 1;
            return Ok(());
        }
        let p = self.position;
        let stage = &self.stages[p.stage];
        if let Some(obj) = line.as_object_mut() {
            obj.insert("stage".into(), (p.stage + 1).into());
            obj.insert("ops".into(), serde_json::json!(stage.ops));
            obj.insert("nodes".into(), stage.searched_nodes.into());
        }
        let path = self.run_dir.join(METRICS);
        let mut f =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))?;
        self.metrics_lines += 1;
        self.log_tensorboard(&line)
    }

    /// The numbers of a metrics line as TensorBoard scalars `search/<phase>/<key>`. The step
    /// counts epochs and derives over all stages (a controller line shares the step of its
    /// weights epoch), so it depends only on the position: a resumed run repeats it, and every
    /// line it redoes has a step at or after the one where the process started.
    fn log_tensorboard(&mut self, line: &serde_json::Value) -> Result<()> {
        let p = self.position;
        let (warmup, epochs) = (self.options.warmup_epochs, self.options.epochs);
        let within = match p.phase {
            Phase::Warmup => p.epoch + 1,
            Phase::Search => warmup + p.epoch + 1,
            Phase::Derive => warmup + epochs + 1,
        };
        let step = (p.stage * (warmup + epochs + 1) + within) as i64;
        let phase = line.get("phase").and_then(|v| v.as_str()).unwrap_or("other");
        let dir = self.run_dir.join(TENSORBOARD);
        crate::tensorboard::log_line(
            &mut self.tensorboard,
            &dir,
            &format!("search/{phase}"),
            step,
            line,
            &["epoch"],
        )
    }

    fn save_checkpoint(&self) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (group, vs) in [("supernet", &self.supernet_vs), ("controller", &self.controller_vs)] {
            tensors.extend(vs.variables().into_iter().map(|(n, t)| (format!("{group}/{n}"), t)));
        }
        tensors.extend(self.sgd.state().into_iter().map(|(n, t)| (format!("sgd/{n}"), t)));
        tensors.extend(self.adam.state().into_iter().map(|(n, t)| (format!("adam/{n}"), t)));
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let state = CheckpointState {
            position: self.position,
            baseline: self.baseline.clone(),
            metrics_lines: self.metrics_lines,
        };
        let metadata = BTreeMap::from([
            ("format".to_string(), "cnas-search-checkpoint".to_string()),
            (
                "state".to_string(),
                serde_json::to_string(&state).map_err(|e| Error::BadOption(e.to_string()))?,
            ),
        ]);
        crate::weights::save_tensors(&tensors, &self.run_dir.join(CHECKPOINT), metadata)
    }

    fn progress(&self, len: u64, what: String) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(what);
        bar
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
        while self.position.stage < self.stages.len() {
            if stop_after.is_some_and(|n| epochs_done >= n) {
                tracing::info!("stopping after {epochs_done} epochs as asked; resume with --resume");
                return Ok(None);
            }
            let p = self.position;
            match p.phase {
                Phase::Warmup if p.epoch >= self.options.warmup_epochs => {
                    self.position = Position { phase: Phase::Search, epoch: 0, ..p };
                }
                Phase::Search if p.epoch >= self.options.epochs => {
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
                    self.train_weights(false)?;
                    self.train_controllers()?;
                    self.position.epoch += 1;
                    self.save_checkpoint()?;
                    epochs_done += 1;
                    pace.search.add(start.elapsed().as_secs_f64());
                    self.log_time_left(&pace);
                }
                Phase::Derive => {
                    last = Some(self.finish_stage()?);
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
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::BadOption(e.to_string()))?;
        if self.is_main() {
            crate::util::write_atomic(&self.run_dir.join(GENOTYPE), text.as_bytes())?;
        }
        Ok(Some(SearchOutcome { best, run_dir: self.run_dir.clone() }))
    }

    /// Logs how long the rest of the search should take at this process's pace so far.
    fn log_time_left(&self, pace: &Pace) {
        let o = &self.options;
        let (warmup, search) = epochs_left(self.position, self.stages.len(), o.warmup_epochs, o.epochs);
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

    fn read_stage_best(&self, stage: usize) -> Result<Candidate> {
        let path = self.stage_dir(stage).join("candidates.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let candidates: Vec<Candidate> = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("corrupt candidates: {e}")))?;
        best_of(candidates).ok_or_else(|| Error::bad_file(&path, "no candidates"))
    }

    /// What draws architecture pairs in the current stage: uniform or from frozen copies of
    /// the controllers.
    fn pair_sampler(&self, uniform: bool) -> PairSampler {
        PairSampler {
            controllers: (!uniform)
                .then(|| [self.normal_controller.frozen_copy(), self.reduce_controller.frozen_copy()]),
            stage: self.stages[self.position.stage].clone(),
            primitives: self.primitives.clone(),
        }
    }

    /// One epoch of weight training on the weight split, with uniform (warm-up) or controller
    /// samples, one architecture pair per batch.
    fn train_weights(&mut self, uniform: bool) -> Result<()> {
        let phase = if uniform { Phase::Warmup } else { Phase::Search };
        let p = self.position;
        let mut rng = stream(self.options.seed, p.stage as u64, phase.id(), p.epoch as u64);
        let epoch = self.weights_loader.epoch(self.loader_epoch(phase));
        let total_epochs = if uniform { self.options.warmup_epochs } else { self.options.epochs };
        let bar = self.progress(
            epoch.batch_count() as u64,
            format!(
                "stage {}/{} {} {}/{}",
                p.stage + 1,
                self.stages.len(),
                if uniform { "warm-up" } else { "weights" },
                p.epoch + 1,
                total_epochs
            ),
        );
        let start = Instant::now();
        let mut totals = Totals::new(self.device);
        // The pairs come from a thread of their own, a few batches ahead, in the order one
        // thread would draw them: sampling the controllers' LSTM (milliseconds on a CPU core)
        // stays off the thread that launches the GPU's work.
        let sampler = self.pair_sampler(uniform);
        let batches = epoch.batch_count();
        std::thread::scope(|scope| -> Result<()> {
            let (tx, pairs) = std::sync::mpsc::sync_channel(PAIRS_AHEAD);
            scope.spawn(move || sampler.send(&mut rng, batches, tx));
            for (i, batch) in epoch.enumerate() {
                let (images, labels) = batch?;
                let (images, labels) = (to_device(&images, self.device), to_device(&labels, self.device));
                let (normal, reduce) = pairs
                    .recv()
                    .map_err(|_| Error::BadOption("the architecture sampler stopped early".into()))?;
                let (loss, logits) = weight_step(
                    &self.supernet,
                    &mut self.sgd,
                    &self.param_use,
                    (&images, &labels),
                    (&normal, &reduce),
                    self.options.grad_clip,
                    self.parallel.as_ref(),
                )?;
                totals.add(&loss, &logits, &labels);
                bar.inc(1);
                // Running figures for the bar: one host sync per 50 batches, none when quiet.
                if (i + 1) % 50 == 0 && !self.quiet {
                    let (l, a) = totals.read();
                    bar.set_message(format!("loss {l:.3} acc {:.1}%", a * 100.0));
                }
            }
            Ok(())
        })?;
        let (mut loss, mut acc) = totals.read();
        let mut images = totals.images;
        if let Some(p) = &self.parallel {
            let ((l, a, _), n) = p.reduce_means((loss, acc, 0.0), totals.images)?;
            (loss, acc, images) = (l, a, n);
        }
        self.check_replicas(if uniform { "a warm-up epoch" } else { "a weights epoch" })?;
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "stage {} {} epoch {}: loss {loss:.4}, accuracy {:.2}%",
            p.stage + 1,
            if uniform { "warm-up" } else { "weights" },
            p.epoch + 1,
            acc * 100.0
        );
        self.log_metrics(serde_json::json!({
            "phase": if uniform { "warmup" } else { "weights" },
            "epoch": p.epoch + 1,
            "loss": loss,
            "acc": acc,
            "lr": self.sgd.lr,
            "images": images,
            "images_per_s": images as f64 / secs,
            "time_s": secs,
        }))
    }

    fn accuracy(&self, images: &Tensor, labels: &Tensor, normal: &Cell, reduce: &Cell) -> Result<f64> {
        supernet_accuracy(&self.supernet, (images, labels), (normal, reduce))
    }

    /// `controller_steps` REINFORCE updates of both controllers on held-out batches.
    fn train_controllers(&mut self) -> Result<()> {
        let p = self.position;
        let mut rng = stream(self.options.seed, p.stage as u64, 4, p.epoch as u64);
        let stage = self.stages[p.stage].clone();
        let bar = self.progress(
            self.options.controller_steps as u64,
            format!(
                "stage {}/{} controller {}/{}",
                p.stage + 1,
                self.stages.len(),
                p.epoch + 1,
                self.options.epochs
            ),
        );
        let start = Instant::now();
        let (mut reward_sum, mut loss_sum, mut node_ent, mut op_ent) = (0.0, 0.0, 0.0, 0.0);
        let mut pass = 0u64;
        let mut batches = self.heldout_loader.epoch(self.loader_epoch(Phase::Search));
        let mut images_seen = 0usize;
        for _ in 0..self.options.controller_steps {
            let batch = match batches.next() {
                Some(b) => b,
                None => {
                    // More steps than held-out batches: walk the split again, reshuffled.
                    pass += 1;
                    batches = self.heldout_loader.epoch(self.loader_epoch(Phase::Search) | (pass << 24));
                    batches
                        .next()
                        .ok_or_else(|| Error::BadOption("the held-out split yields no batch".into()))?
                }
            };
            let (images, labels) = batch?;
            let (images, labels) = (to_device(&images, self.device), to_device(&labels, self.device));
            images_seen += labels.size()[0] as usize;
            let step = controller_step(
                &self.supernet,
                [&self.normal_controller, &self.reduce_controller],
                &mut self.adam,
                &mut self.baseline,
                &mut rng,
                &stage,
                &self.primitives,
                (&images, &labels),
                self.options.entropy_weight,
                self.options.grad_clip,
                self.parallel.as_ref(),
            )?;
            reward_sum += step.reward;
            loss_sum += step.loss;
            node_ent += step.node_entropy;
            op_ent += step.op_entropy;
            bar.inc(1);
            bar.set_message(format!("reward {:.3}", reward_sum / bar.position() as f64));
        }
        bar.finish_and_clear();
        self.check_replicas("a controller epoch")?;
        let images_seen = match &self.parallel {
            Some(p) => p.group().sum_f64(&[images_seen as f64])?[0] as usize,
            None => images_seen,
        };
        let steps = self.options.controller_steps.max(1) as f64;
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "stage {} controller epoch {}: reward {:.4}, baseline {:.4}, entropy {:.3} (nodes) {:.3} (ops)",
            p.stage + 1,
            p.epoch + 1,
            reward_sum / steps,
            self.baseline.value.unwrap_or(0.0),
            node_ent / steps,
            op_ent / steps
        );
        self.log_metrics(serde_json::json!({
            "phase": "controller",
            "epoch": p.epoch + 1,
            "reward": reward_sum / steps,
            "baseline": self.baseline.value,
            "controller_loss": loss_sum / steps,
            "node_entropy": node_ent / steps,
            "op_entropy": op_ent / steps,
            "controller_lr": self.adam.lr,
            "images_per_s": images_seen as f64 / secs,
            "time_s": secs,
        }))
    }

    /// End of a stage: save supernet and controllers, derive and save candidates.
    fn finish_stage(&mut self) -> Result<Candidate> {
        let stage_index = self.position.stage;
        let dir = self.stage_dir(stage_index);
        let main = self.is_main();
        if main {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let meta = |kind: &str| BTreeMap::from([("format".to_string(), kind.to_string())]);
            crate::weights::save(
                &self.supernet_vs,
                &dir.join("supernet.safetensors"),
                meta("cnas-supernet"),
            )?;
            crate::weights::save(
                &self.controller_vs,
                &dir.join("controllers.safetensors"),
                meta("cnas-controllers"),
            )?;
        }

        let stage = self.stages[stage_index].clone();
        let mut rng = stream(self.options.seed, stage_index as u64, Phase::Derive.id(), 0);
        // Every candidate is scored on the same held-out batches.
        let mut batches = Vec::with_capacity(self.options.derive_batches);
        for batch in
            self.heldout_loader.epoch(self.loader_epoch(Phase::Derive)).take(self.options.derive_batches)
        {
            let (images, labels) = batch?;
            batches.push((to_device(&images, self.device), to_device(&labels, self.device)));
        }
        let start = Instant::now();
        let mut candidates = Vec::with_capacity(self.options.derive_rounds);
        let mut controller_scores = Vec::new();
        for round in 0..self.options.derive_rounds {
            let mut best: Option<Candidate> = None;
            for _ in 0..self.options.derive_samples {
                let (n, r) = tch::no_grad(|| {
                    let n = self.normal_controller.sample(
                        &mut rng,
                        &stage.allowed,
                        stage.searched_nodes,
                        &self.primitives,
                    );
                    let r = self.reduce_controller.sample(
                        &mut rng,
                        &stage.allowed,
                        stage.searched_nodes,
                        &self.primitives,
                    );
                    (n, r)
                });
                let mut score = 0.0;
                for (images, labels) in &batches {
                    score += self.accuracy(images, labels, &n.cell, &r.cell)?;
                }
                score /= batches.len().max(1) as f64;
                // Each rank scored its own held-out batches: all must pick the same best.
                let score = self.mean_over_ranks(score)?;
                controller_scores.push(score);
                let candidate = Candidate {
                    stage: stage_index + 1,
                    round: round + 1,
                    genotype: Genotype { normal: n.cell, reduce: r.cell },
                    score,
                    log_prob: n.log_prob.double_value(&[]) + r.log_prob.double_value(&[]),
                    entropy: [&n.node_entropy, &n.op_entropy, &r.node_entropy, &r.op_entropy]
                        .iter()
                        .map(|t| t.double_value(&[]))
                        .sum(),
                };
                if best.as_ref().is_none_or(|b| candidate.score > b.score) {
                    best = Some(candidate);
                }
            }
            candidates.extend(best);
        }
        // As many uniform samples on the same batches: does the controller beat chance?
        let mut uniform_scores = Vec::with_capacity(controller_scores.len());
        let uniform = self.pair_sampler(true);
        for _ in 0..controller_scores.len() {
            let (n, r) = uniform.draw(&mut rng);
            let mut score = 0.0;
            for (images, labels) in &batches {
                score += self.accuracy(images, labels, &n, &r)?;
            }
            uniform_scores.push(self.mean_over_ranks(score / batches.len().max(1) as f64)?);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let text = serde_json::to_string_pretty(&candidates).map_err(|e| Error::BadOption(e.to_string()))?;
        let best =
            best_of(candidates.clone()).ok_or_else(|| Error::BadOption("no candidate derived".into()))?;
        if main {
            crate::util::write_atomic(&dir.join("candidates.json"), text.as_bytes())?;
            crate::util::write_atomic(&dir.join(GENOTYPE), best.genotype.to_json_pretty().as_bytes())?;
        }
        tracing::info!(
            "stage {} done: best candidate {:.2}% on held-out batches (controller samples {:.2}% on average, uniform samples {:.2}%)\n{}",
            stage_index + 1,
            best.score * 100.0,
            mean(&controller_scores) * 100.0,
            mean(&uniform_scores) * 100.0,
            best.genotype
        );
        self.log_metrics(serde_json::json!({
            "phase": "derive",
            "candidates": candidates.iter().map(|c| c.score).collect::<Vec<_>>(),
            "best_score": best.score,
            "controller_mean": mean(&controller_scores),
            "uniform_mean": mean(&uniform_scores),
            "samples": controller_scores.len(),
            "genotype": best.genotype,
            "time_s": start.elapsed().as_secs_f64(),
        }))?;
        Ok(best)
    }
}

/// One weight update of the supernet on a batch with one architecture pair: forward,
/// cross-entropy, backward, gradient clipping and an SGD step over the parameters the pair
/// uses. Returns the loss and logits (on the device; nothing is read back). With `parallel`
/// (one rank of a data-parallel run) the gradients of the parameters the
/// pair uses (the same on every rank) are averaged over the ranks before clipping.
pub fn weight_step(
    supernet: &Supernet,
    sgd: &mut Sgd,
    param_use: &ParamUse,
    (images, labels): (&Tensor, &Tensor),
    (normal, reduce): (&Cell, &Cell),
    grad_clip: f64,
    parallel: Option<&DataParallel>,
) -> Result<(Tensor, Tensor)> {
    let logits = supernet.forward_t(images, normal, reduce, true)?;
    let loss = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0);
    sgd.zero_grad()?;
    loss.backward();
    sync_batch_norm_ok()?;
    let active = param_use.active(normal, reduce);
    let params: Vec<Tensor> = active.iter().map(|&i| sgd.params()[i].shallow_clone()).collect();
    if let Some(p) = parallel {
        p.average_gradients(&params)?;
    }
    let _grad_norm = clip_grad_norm(&params, grad_clip)?;
    sgd.step_subset(&active)?;
    Ok((loss.detach(), logits.detach()))
}

/// Top-1 accuracy of the supernet running an architecture pair on a batch (a host sync).
/// Batch statistics (training-mode BN), as the weights were trained with: the running
/// statistics of a weight-sharing supernet belong to no single architecture.
pub fn supernet_accuracy(
    supernet: &Supernet,
    (images, labels): (&Tensor, &Tensor),
    (normal, reduce): (&Cell, &Cell),
) -> Result<f64> {
    let logits = tch::no_grad(|| supernet.forward_t(images, normal, reduce, true))?;
    sync_batch_norm_ok()?;
    Ok(logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]))
}

/// What one REINFORCE update saw.
#[derive(Debug, Clone, Copy)]
pub struct ControllerStep {
    pub reward: f64,
    pub advantage: f64,
    pub loss: f64,
    /// Means over the two controllers.
    pub node_entropy: f64,
    pub op_entropy: f64,
}

/// One REINFORCE update of both controllers: sample a pair, score it on a held-out batch,
/// reward minus the moving-average baseline, entropy bonus, clipping, Adam. With `parallel`
/// (one rank of a data-parallel run) the reward is the mean of the
/// ranks' accuracies on their own held-out batches, so every rank makes the same update and
/// the controllers stay identical.
#[allow(clippy::too_many_arguments)]
pub fn controller_step(
    supernet: &Supernet,
    [normal_controller, reduce_controller]: [&Controller; 2],
    adam: &mut Adam,
    baseline: &mut Baseline,
    rng: &mut ChaCha8Rng,
    stage: &Stage,
    primitives: &[Primitive],
    batch: (&Tensor, &Tensor),
    entropy_weight: f64,
    grad_clip: f64,
    parallel: Option<&DataParallel>,
) -> Result<ControllerStep> {
    let n = normal_controller.sample(rng, &stage.allowed, stage.searched_nodes, primitives);
    let r = reduce_controller.sample(rng, &stage.allowed, stage.searched_nodes, primitives);
    let mut reward = supernet_accuracy(supernet, batch, (&n.cell, &r.cell))?;
    if let Some(p) = parallel {
        reward = p.group().mean_f64(&[reward])?[0];
    }
    let advantage = baseline.update(reward);
    let loss = reinforce_loss(
        &[&n.log_prob, &r.log_prob],
        &[&n.node_entropy, &n.op_entropy, &r.node_entropy, &r.op_entropy],
        advantage,
        entropy_weight,
    );
    adam.zero_grad()?;
    loss.backward();
    let _grad_norm = clip_grad_norm(adam.params(), grad_clip)?;
    adam.step();
    Ok(ControllerStep {
        reward,
        advantage,
        loss: loss.double_value(&[]),
        node_entropy: (n.node_entropy.double_value(&[]) + r.node_entropy.double_value(&[])) / 2.0,
        op_entropy: (n.op_entropy.double_value(&[]) + r.op_entropy.double_value(&[])) / 2.0,
    })
}

/// A synchronised BatchNorm's failed collective (a layer cannot return it) as an error.
fn sync_batch_norm_ok() -> Result<()> {
    match crate::dist::take_sync_batch_norm_error() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The highest-scoring candidate (the earliest on ties).
fn best_of(candidates: Vec<Candidate>) -> Option<Candidate> {
    candidates.into_iter().reduce(|best, c| if c.score > best.score { c } else { best })
}

/// A loader restricted to its first `max_images` images (the split's order is already drawn
/// from the seed, so these are a seeded subset).
fn limit(loader: Loader, max_images: Option<usize>) -> Result<Loader> {
    match max_images {
        None => Ok(loader),
        Some(n) => loader.limited(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_curriculum_starts_with_sep_conv_and_adds_one_op_per_stage() {
        let (order, stages) = curriculum(CurriculumMode::Op, &Primitive::DARTS, 4, 5);
        assert_eq!(order[0], Primitive::SepConv3x3);
        assert_eq!(stages.len(), 8);
        for (k, stage) in stages.iter().enumerate() {
            assert_eq!(stage.allowed.iter().filter(|&&a| a).count(), k + 1);
            assert_eq!(stage.ops.len(), k + 1);
            assert_eq!(stage.searched_nodes, 4);
        }
        let mut sorted = order.clone();
        sorted.sort();
        let mut all = Primitive::DARTS.to_vec();
        all.sort();
        assert_eq!(sorted, all);
    }

    #[test]
    fn op_order_comes_from_the_seed() {
        let a = curriculum(CurriculumMode::Op, &Primitive::DARTS, 4, 1).0;
        let b = curriculum(CurriculumMode::Op, &Primitive::DARTS, 4, 1).0;
        assert_eq!(a, b);
        let differs = (2..10).any(|s| curriculum(CurriculumMode::Op, &Primitive::DARTS, 4, s).0 != a);
        assert!(differs);
    }

    #[test]
    fn node_and_fixed_curricula() {
        let (_, stages) = curriculum(CurriculumMode::Node, &Primitive::DARTS, 4, 0);
        assert_eq!(stages.iter().map(|s| s.searched_nodes).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(stages.iter().all(|s| s.allowed.iter().all(|&a| a)));
        let (_, stages) = curriculum(CurriculumMode::Fixed, &Primitive::DARTS, 4, 0);
        assert_eq!(stages.len(), 1);
        assert!(stages[0].allowed.iter().all(|&a| a));
    }

    /// The sampling thread hands over exactly the pairs one thread would have drawn, in order,
    /// for uniform and controller sampling.
    #[test]
    fn pairs_from_the_sampling_thread_are_the_inline_draws() {
        let (_, stages) = curriculum(CurriculumMode::Op, &Primitive::DARTS, 4, 3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ControllerConfig::default();
        let normal = Controller::new(&(vs.root() / "normal"), config.clone());
        let reduce = Controller::new(&(vs.root() / "reduce"), config);
        for with_controllers in [false, true] {
            let make = || PairSampler {
                controllers: with_controllers.then(|| [normal.frozen_copy(), reduce.frozen_copy()]),
                stage: stages[3].clone(),
                primitives: Primitive::DARTS.to_vec(),
            };
            let sampler = make();
            let mut inline_rng = stream(7, 3, 1, 0);
            let inline: Vec<(Cell, Cell)> = (0..12).map(|_| sampler.draw(&mut inline_rng)).collect();
            let (moved, mut thread_rng) = (make(), stream(7, 3, 1, 0));
            let threaded: Vec<(Cell, Cell)> = std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel(PAIRS_AHEAD);
                scope.spawn(move || moved.send(&mut thread_rng, 12, tx));
                rx.iter().collect()
            });
            assert_eq!(threaded, inline);
            let distinct: std::collections::HashSet<String> =
                inline.iter().map(|(n, r)| format!("{n:?}{r:?}")).collect();
            assert!(distinct.len() > 1, "the draws do not vary");
        }
    }

    #[test]
    fn time_left_uses_each_kind_of_epoch_and_stands_in_for_the_untimed_one() {
        let mut pace = Pace::default();
        assert_eq!(pace.time_left(3, 4), None);
        pace.warmup.add(10.0);
        pace.warmup.add(20.0);
        assert_eq!(pace.time_left(2, 3), Some(2.0 * 15.0 + 3.0 * 15.0));
        pace.search.add(40.0);
        assert_eq!(pace.time_left(2, 3), Some(2.0 * 15.0 + 3.0 * 40.0));
        assert_eq!(pace.time_left(0, 0), Some(0.0));
    }

    #[test]
    fn epochs_left_counts_this_stage_and_the_later_ones() {
        let at = |stage, phase, epoch| Position { stage, phase, epoch };
        assert_eq!(epochs_left(at(0, Phase::Warmup, 0), 8, 20, 40), (160, 320));
        assert_eq!(epochs_left(at(0, Phase::Warmup, 20), 8, 20, 40), (140, 320));
        assert_eq!(epochs_left(at(2, Phase::Search, 15), 8, 20, 40), (100, 225));
        assert_eq!(epochs_left(at(7, Phase::Derive, 0), 8, 20, 40), (0, 0));
    }
}
