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

/// Every number of a search. [`SearchOptions::default`] is the configuration of the released
/// CNAS code (its `search.py` defaults), [`SearchOptions::quick`] a tiny one that still runs
/// every stage.
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
    /// REINFORCE updates after each epoch of weight training; `None`: one per batch of the
    /// held-out part (one pass over it, as released).
    pub controller_steps: Option<usize>,
    /// Weights: SGD (Nesterov) on the weight-training split.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Supernet update rule. `false` (released): gradients are zeroed in place, not dropped
    /// (PyTorch 1.5's `zero_grad()`), so every parameter that has been used once takes weight
    /// decay and momentum at every later step. `true`: only the sampled path moves.
    pub sparse_update: bool,
    /// Supernet gradient clipping (global L2 norm); `None`: none, as released.
    pub grad_clip: Option<f64>,
    /// Controller: Adam on held-out batches.
    pub controller_lr: f64,
    pub controller_weight_decay: f64,
    pub controller_hidden: i64,
    pub entropy_weight: f64,
    pub baseline_decay: f64,
    pub temperature: Option<f64>,
    pub tanh_constant: Option<f64>,
    /// Controllers' gradient clipping (global L2 norm over both); `None`: none.
    pub controller_grad_clip: Option<f64>,
    /// Candidates at the end of a stage: `derive_rounds` rounds of `derive_samples` samples,
    /// each scored on the same `derive_images` un-augmented held-out images (all of the
    /// held-out part when it is smaller); each round's best is kept.
    pub derive_rounds: usize,
    pub derive_samples: usize,
    pub derive_images: usize,
    /// Images per forward pass when scoring candidates (BatchNorm normalises with each batch's
    /// statistics, so this is part of the score); `None`: `batch_size`.
    pub derive_batch_size: Option<usize>,
    /// Uniformly sampled architectures scored beside the candidates at the end of each stage,
    /// to show whether the controller beats chance (not part of the released algorithm).
    pub derive_uniform: usize,
    /// Use at most this many images of each search split (None: all).
    pub max_images: Option<usize>,
    pub seed: u64,
    /// The curriculum's operation order (`--mode op`); `None`: sep_conv_3x3, then the other
    /// seven in the order `torch.randperm(7)` gives with a generator seeded with `seed`, as
    /// released.
    pub op_order: Option<Vec<Primitive>>,
    /// Data-parallel runs: BatchNorm statistics over every rank's batch (the supernet's
    /// BatchNorm always normalises with batch statistics, so this makes a rank's step the
    /// global batch's, as in one process).
    pub sync_bn: bool,
}

/// The released code's default seed.
pub const DEFAULT_SEED: u64 = 2020;

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
            controller_steps: None,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 3e-4,
            sparse_update: false,
            grad_clip: None,
            controller_lr: 3e-4,
            controller_weight_decay: 5e-4,
            controller_hidden: 128,
            entropy_weight: 0.005,
            baseline_decay: 0.99,
            temperature: None,
            tanh_constant: None,
            controller_grad_clip: Some(5.0),
            derive_rounds: 3,
            derive_samples: 10,
            derive_images: 10_000,
            derive_batch_size: None,
            derive_uniform: 0,
            max_images: None,
            seed: DEFAULT_SEED,
            op_order: None,
            sync_bn: false,
        }
    }
}

impl SearchOptions {
    /// Small enough for a laptop CPU in minutes, and still every stage of the curriculum: fewer
    /// controller steps (8) and derivation images (512) than a pass over the held-out part.
    pub fn quick() -> Self {
        SearchOptions {
            init_channels: 8,
            layers: 5,
            batch_size: 32,
            warmup_epochs: 1,
            epochs: 1,
            controller_steps: Some(8),
            derive_samples: 4,
            derive_images: 512,
            derive_uniform: 4,
            max_images: Some(512),
            controller_lr: 3.5e-3,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadOption(m));
        if self.batch_size < 2 {
            return bad("--batch-size must be at least 2 (BatchNorm needs two images)".into());
        }
        if self.epochs == 0 && self.warmup_epochs == 0 {
            return bad("a stage needs at least one epoch: --warmup-epochs and --epochs are both 0".into());
        }
        if self.derive_rounds == 0 || self.derive_samples == 0 || self.derive_images == 0 {
            return bad("--derive-rounds, --derive-samples and --derive-images must be at least 1".into());
        }
        if self.derive_batch_size.is_some_and(|b| b < 2) {
            return bad("--derive-batch-size must be at least 2".into());
        }
        if self.controller_steps == Some(0) {
            return bad("--controller-steps must be at least 1".into());
        }
        if self.max_images == Some(0) {
            return bad("--max-images must be at least 1".into());
        }
        if self.init_channels < 1 || self.layers < 1 || self.nodes < 1 || self.controller_hidden < 1 {
            return bad(
                "--init-channels, --layers, --nodes and --controller-hidden must be at least 1".into()
            );
        }
        let positive = [
            ("--lr", Some(self.lr)),
            ("--controller-lr", Some(self.controller_lr)),
            ("--grad-clip", self.grad_clip),
            ("--controller-grad-clip", self.controller_grad_clip),
            ("--temperature", self.temperature),
            ("--tanh-constant", self.tanh_constant),
        ];
        for (name, value) in positive {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return bad(format!("{name} {v} must be a positive number"));
            }
        }
        let non_negative = [
            ("--weight-decay", self.weight_decay),
            ("--controller-weight-decay", self.controller_weight_decay),
            ("--entropy-weight", self.entropy_weight),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} {v} must be a number of at least 0"));
            }
        }
        for (name, v) in [("--momentum", self.momentum), ("--baseline-decay", self.baseline_decay)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} {v} must be in [0, 1)"));
            }
        }
        if let Some(order) = &self.op_order {
            check_op_order(order)?;
        }
        Ok(())
    }

    /// The curriculum's operation order: `op_order` if given, else the released draw from the
    /// seed ([`released_op_order`]).
    pub fn resolved_op_order(&self) -> Result<Vec<Primitive>> {
        match &self.op_order {
            Some(order) => {
                check_op_order(order)?;
                Ok(order.clone())
            }
            None => released_op_order(self.seed),
        }
    }

    /// The batch candidates are scored in.
    pub fn derive_batch(&self) -> usize {
        self.derive_batch_size.unwrap_or(self.batch_size)
    }
}

/// An operation order given by hand must list each of the 8 DARTS operations once.
fn check_op_order(order: &[Primitive]) -> Result<()> {
    let mut sorted = order.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut all = Primitive::DARTS.to_vec();
    all.sort();
    if order.len() != Primitive::DARTS.len() || sorted != all {
        let names: Vec<&str> = Primitive::DARTS.iter().map(|p| p.name()).collect();
        return Err(Error::BadOption(format!(
            "--op-order must list each of the 8 operations once ({})",
            names.join(",")
        )));
    }
    Ok(())
}

/// The released code's operation order for `seed`: the DARTS list's first operation
/// (sep_conv_3x3), then the other seven permuted by `torch.randperm(7)` from a generator
/// seeded with `seed`.
pub fn released_op_order(seed: u64) -> Result<Vec<Primitive>> {
    let (first, rest) =
        Primitive::DARTS.split_first().ok_or_else(|| Error::BadOption("no primitives".into()))?;
    let perm = crate::data::rng::torch_randperm(rest.len(), seed)?;
    Ok(std::iter::once(*first).chain(perm.into_iter().map(|i| rest[i])).collect())
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

/// The stages of a curriculum over `primitives` (the supernet's list; every mask indexes it)
/// with the operation order `order` (`--mode op`: stage k allows the first k operations of it).
pub fn curriculum(
    mode: CurriculumMode,
    primitives: &[Primitive],
    order: &[Primitive],
    nodes: usize,
) -> Vec<Stage> {
    let mask = |k: usize| -> Vec<bool> { primitives.iter().map(|p| order[..k].contains(p)).collect() };
    let names = |k: usize| -> Vec<String> { order[..k].iter().map(|p| p.name().to_string()).collect() };
    match mode {
        CurriculumMode::Op => (1..=order.len())
            .map(|k| Stage { allowed: mask(k), searched_nodes: nodes, ops: names(k) })
            .collect(),
        CurriculumMode::Node => (1..=nodes)
            .map(|n| Stage { allowed: mask(order.len()), searched_nodes: n, ops: names(order.len()) })
            .collect(),
        CurriculumMode::Fixed => {
            vec![Stage { allowed: mask(order.len()), searched_nodes: nodes, ops: names(order.len()) }]
        }
    }
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
    /// Its place in the round (1-based).
    #[serde(default)]
    pub sample: usize,
    pub genotype: Genotype,
    /// Top-1 accuracy on the derivation images (un-augmented held-out images).
    pub score: f64,
    /// Standard error of `score`, `sqrt(score·(1 - score)/images)`.
    #[serde(default)]
    pub std_error: f64,
    /// Images the score was measured on.
    #[serde(default)]
    pub images: usize,
    /// Log-probability of the pair under the controllers, and their entropies summed.
    pub log_prob: f64,
    pub entropy: f64,
    /// The best of its round (the first of the highest scores, as released).
    #[serde(default)]
    pub round_best: bool,
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
            let order = options.resolved_op_order()?;
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
        // Candidates are scored on the first `derive_images` of the same held-out images, in
        // order and without augmentation; sharded, the ranks together score each image once.
        let derive_opts = LoaderOptions::eval(options.derive_batch()).device(device).shard(rank, world_size);
        let derive_loader = limit(data.loader(Part::SearchHeldOut, &derive_opts)?, options.max_images)?
            .first(options.derive_images)?;
        for (loader, what) in [(&weights_loader, "weight-training"), (&heldout_loader, "held-out")] {
            if loader.batches_per_epoch() == 0 {
                return Err(Error::BadOption(format!(
                    "the {what} split has fewer images than one batch of {}",
                    options.batch_size
                )));
            }
        }
        let primitives = Primitive::DARTS.to_vec();
        let order = options.resolved_op_order()?;
        let stages = curriculum(options.mode, &primitives, &order, options.nodes);

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
                    UpdateRule::of(&self.options),
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

    /// REINFORCE updates per search epoch: `--controller-steps`, or one per held-out batch.
    fn controller_steps(&self) -> usize {
        self.options.controller_steps.unwrap_or_else(|| self.heldout_loader.batches_per_epoch())
    }

    /// `controller_steps` REINFORCE updates of both controllers on held-out batches.
    fn train_controllers(&mut self) -> Result<()> {
        let p = self.position;
        let mut rng = stream(self.options.seed, p.stage as u64, 4, p.epoch as u64);
        let stage = self.stages[p.stage].clone();
        let steps = self.controller_steps();
        let bar = self.progress(
            steps as u64,
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
        for _ in 0..steps {
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
                self.options.controller_grad_clip,
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
        let steps = steps.max(1) as f64;
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
            "steps": steps as usize,
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
        let images = self.derive_images()?;
        let start = Instant::now();
        let bar = self.progress(
            (self.options.derive_rounds * self.options.derive_samples + self.options.derive_uniform) as u64,
            format!("stage {}/{} derive", stage_index + 1, self.stages.len()),
        );
        let mut candidates = Vec::with_capacity(self.options.derive_rounds * self.options.derive_samples);
        for round in 0..self.options.derive_rounds {
            let first = candidates.len();
            for sample in 0..self.options.derive_samples {
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
                let (score, count) = self.score(&images, &n.cell, &r.cell)?;
                candidates.push(Candidate {
                    stage: stage_index + 1,
                    round: round + 1,
                    sample: sample + 1,
                    genotype: Genotype { normal: n.cell, reduce: r.cell },
                    score,
                    std_error: std_error(score, count),
                    images: count,
                    log_prob: n.log_prob.double_value(&[]) + r.log_prob.double_value(&[]),
                    entropy: [&n.node_entropy, &n.op_entropy, &r.node_entropy, &r.op_entropy]
                        .iter()
                        .map(|t| t.double_value(&[]))
                        .sum(),
                    round_best: false,
                });
                bar.inc(1);
            }
            if let Some(i) = best_index(&candidates[first..]) {
                candidates[first + i].round_best = true;
            }
        }
        // Uniform samples on the same images: does the controller beat chance?
        let mut uniform_scores = Vec::with_capacity(self.options.derive_uniform);
        let uniform = self.pair_sampler(true);
        for _ in 0..self.options.derive_uniform {
            let (n, r) = uniform.draw(&mut rng);
            uniform_scores.push(self.score(&images, &n, &r)?.0);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let controller_scores: Vec<f64> = candidates.iter().map(|c| c.score).collect();
        let text = serde_json::to_string_pretty(&candidates).map_err(|e| Error::BadOption(e.to_string()))?;
        let best =
            best_of(candidates.clone()).ok_or_else(|| Error::BadOption("no candidate derived".into()))?;
        if main {
            crate::util::write_atomic(&dir.join("candidates.json"), text.as_bytes())?;
            crate::util::write_atomic(&dir.join(GENOTYPE), best.genotype.to_json_pretty().as_bytes())?;
        }
        let uniform_mean = (!uniform_scores.is_empty()).then(|| mean(&uniform_scores));
        tracing::info!(
            "stage {} done: best candidate {:.2}% ± {:.2} on {} held-out images (controller samples {:.2}% on average{})\n{}",
            stage_index + 1,
            best.score * 100.0,
            best.std_error * 100.0,
            best.images,
            mean(&controller_scores) * 100.0,
            uniform_mean.map_or(String::new(), |u| format!(", uniform samples {:.2}%", u * 100.0)),
            best.genotype
        );
        self.log_metrics(serde_json::json!({
            "phase": "derive",
            "candidates": controller_scores,
            "round_best": candidates.iter().filter(|c| c.round_best).map(|c| c.score).collect::<Vec<_>>(),
            "best_score": best.score,
            "best_std_error": best.std_error,
            "images": best.images,
            "controller_mean": mean(&controller_scores),
            "uniform_mean": uniform_mean,
            "samples": controller_scores.len(),
            "uniform_samples": uniform_scores.len(),
            "genotype": best.genotype,
            "scored_per_s": ((controller_scores.len() + uniform_scores.len()) * best.images) as f64
                / start.elapsed().as_secs_f64(),
            "time_s": start.elapsed().as_secs_f64(),
        }))?;
        Ok(best)
    }

    /// The derivation images: on the device, batched, when they fit in a modest budget (scored
    /// once per candidate, so kept); otherwise `None` and every candidate reads them again.
    fn derive_images(&self) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        const KEEP_BYTES: usize = 2 << 30;
        let [c, h, w] = self.derive_loader.image_shape();
        if self.derive_loader.samples_per_epoch() * c * h * w * 4 > KEEP_BYTES {
            return Ok(None);
        }
        let mut batches = Vec::with_capacity(self.derive_loader.batches_per_epoch());
        for batch in self.derive_loader.epoch(0) {
            let (images, labels) = batch?;
            batches.push((to_device(&images, self.device), to_device(&labels, self.device)));
        }
        Ok(Some(batches))
    }

    /// Top-1 accuracy of the supernet running a pair on the derivation images, and how many
    /// images that is (over every rank): one host sync per candidate.
    fn score(
        &self,
        kept: &Option<Vec<(Tensor, Tensor)>>,
        normal: &Cell,
        reduce: &Cell,
    ) -> Result<(f64, usize)> {
        let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
        let mut count = 0usize;
        let mut add = |images: &Tensor, labels: &Tensor| -> Result<()> {
            correct += supernet_correct(&self.supernet, (images, labels), (normal, reduce))?;
            count += labels.size()[0] as usize;
            Ok(())
        };
        match kept {
            Some(batches) => {
                for (images, labels) in batches {
                    add(images, labels)?;
                }
            }
            None => {
                for batch in self.derive_loader.epoch(0) {
                    let (images, labels) = batch?;
                    add(&to_device(&images, self.device), &to_device(&labels, self.device))?;
                }
            }
        }
        let (mut correct, mut count) = (correct.double_value(&[]), count as f64);
        if let Some(p) = &self.parallel {
            let sums = p.group().sum_f64(&[correct, count])?;
            (correct, count) = (sums[0], sums[1]);
        }
        Ok((correct / count.max(1.0), count as usize))
    }
}

/// Standard error of an accuracy `p` measured on `n` images.
pub fn std_error(p: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (p * (1.0 - p) / n as f64).sqrt()
}

/// How the supernet's parameters are updated after a weight step's backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateRule {
    /// Only the sampled path moves (gradients dropped) instead of the released rule (gradients
    /// zeroed in place, every parameter used once keeps moving).
    pub sparse: bool,
    /// Global L2 norm the gradients are clipped to, if any.
    pub grad_clip: Option<f64>,
}

impl UpdateRule {
    pub fn of(options: &SearchOptions) -> Self {
        UpdateRule { sparse: options.sparse_update, grad_clip: options.grad_clip }
    }
}

/// One weight update of the supernet on a batch with one architecture pair: forward,
/// cross-entropy, backward, optional gradient clipping and an SGD step. Returns the loss and
/// logits (on the device; nothing is read back).
///
/// The released rule (`rule.sparse` false) zeroes gradients in place, as PyTorch 1.5's
/// `zero_grad()` did, so the step updates every parameter that has ever had a gradient: the
/// sampled path by its gradient, the rest by weight decay and momentum alone. The sparse rule
/// drops gradients and updates only the parameters the pair uses. Either way the step is one
/// fused multi-tensor update per parameter group. With `parallel` (one rank of a data-parallel
/// run) the gradients of the parameters the pair uses (the same on every rank) are averaged
/// over the ranks before clipping; the others are zero everywhere.
pub fn weight_step(
    supernet: &Supernet,
    sgd: &mut Sgd,
    param_use: &ParamUse,
    (images, labels): (&Tensor, &Tensor),
    (normal, reduce): (&Cell, &Cell),
    rule: UpdateRule,
    parallel: Option<&DataParallel>,
) -> Result<(Tensor, Tensor)> {
    let logits = supernet.forward_t(images, normal, reduce, true)?;
    let loss = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0);
    if rule.sparse {
        sgd.zero_grad()?;
    } else {
        sgd.zero_grad_in_place()?;
    }
    loss.backward();
    sync_batch_norm_ok()?;
    let active = param_use.active(normal, reduce);
    let params: Vec<Tensor> = active.iter().map(|&i| sgd.params()[i].shallow_clone()).collect();
    if let Some(p) = parallel {
        p.average_gradients(&params)?;
    }
    if let Some(max_norm) = rule.grad_clip {
        // Gradients outside the pair are zero (or absent): they add nothing to the norm.
        let _grad_norm = clip_grad_norm(&params, max_norm)?;
    }
    if rule.sparse {
        sgd.step_subset(&active)?;
    } else {
        sgd.step()?;
    }
    Ok((loss.detach(), logits.detach()))
}

/// Images the supernet running an architecture pair classifies correctly in a batch, as a
/// 0-dim tensor on the device (nothing is read back). Batch statistics (training-mode BN), as
/// the weights were trained with and as the released code scores: the running statistics of a
/// weight-sharing supernet belong to no single architecture.
pub fn supernet_correct(
    supernet: &Supernet,
    (images, labels): (&Tensor, &Tensor),
    (normal, reduce): (&Cell, &Cell),
) -> Result<Tensor> {
    let logits = tch::no_grad(|| supernet.forward_t(images, normal, reduce, true))?;
    sync_batch_norm_ok()?;
    Ok(logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64))
}

/// Top-1 accuracy of the supernet running an architecture pair on a batch (a host sync).
pub fn supernet_accuracy(
    supernet: &Supernet,
    (images, labels): (&Tensor, &Tensor),
    (normal, reduce): (&Cell, &Cell),
) -> Result<f64> {
    let correct = supernet_correct(supernet, (images, labels), (normal, reduce))?;
    Ok(correct.double_value(&[]) / labels.size()[0].max(1) as f64)
}

/// What one REINFORCE update saw.
#[derive(Debug, Clone)]
pub struct ControllerStep {
    pub reward: f64,
    pub advantage: f64,
    pub loss: f64,
    /// Means over the two controllers.
    pub node_entropy: f64,
    pub op_entropy: f64,
    /// The pair it sampled (normal, reduce).
    pub cells: (Cell, Cell),
}

/// One REINFORCE update of both controllers: sample a pair, score it on a held-out batch,
/// reward minus the moving-average baseline, entropy bonus, optional clipping, Adam. With `parallel`
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
    grad_clip: Option<f64>,
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
    if let Some(max_norm) = grad_clip {
        let _grad_norm = clip_grad_norm(adam.params(), max_norm)?;
    }
    adam.step();
    Ok(ControllerStep {
        reward,
        advantage,
        loss: loss.double_value(&[]),
        node_entropy: (n.node_entropy.double_value(&[]) + r.node_entropy.double_value(&[])) / 2.0,
        op_entropy: (n.op_entropy.double_value(&[]) + r.op_entropy.double_value(&[])) / 2.0,
        cells: (n.cell, r.cell),
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

/// Index of the highest score (the earliest on ties, as the released `if acc > best_acc`).
fn best_index(candidates: &[Candidate]) -> Option<usize> {
    (0..candidates.len())
        .reduce(|best, i| if candidates[i].score > candidates[best].score { i } else { best })
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
        let order = released_op_order(5).unwrap();
        assert_eq!(order[0], Primitive::SepConv3x3);
        let stages = curriculum(CurriculumMode::Op, &Primitive::DARTS, &order, 4);
        assert_eq!(stages.len(), 8);
        for (k, stage) in stages.iter().enumerate() {
            // The mask indexes the primitive list, not curriculum positions: exactly the first
            // k + 1 operations of the order are allowed, wherever they sit in the list.
            for (i, p) in Primitive::DARTS.iter().enumerate() {
                assert_eq!(stage.allowed[i], order[..=k].contains(p), "stage {k}, {p}");
            }
            assert_eq!(stage.ops, order[..=k].iter().map(|p| p.name().to_string()).collect::<Vec<_>>());
            assert_eq!(stage.searched_nodes, 4);
            if k > 0 {
                let before = &stages[k - 1].allowed;
                assert!(before.iter().zip(&stage.allowed).all(|(&a, &b)| !a || b), "stage {k} drops an op");
            }
        }
        let mut sorted = order.clone();
        sorted.sort();
        let mut all = Primitive::DARTS.to_vec();
        all.sort();
        assert_eq!(sorted, all);
        // An order that is not the list's own, so the mask test above means something.
        assert_ne!(order, Primitive::DARTS.to_vec());
    }

    #[test]
    fn op_order_comes_from_the_seed_or_by_hand() {
        let a = released_op_order(1).unwrap();
        assert_eq!(a, released_op_order(1).unwrap());
        assert!((2..10).any(|s| released_op_order(s).unwrap() != a));
        let o = SearchOptions { seed: 1, ..SearchOptions::default() };
        assert_eq!(o.resolved_op_order().unwrap(), a);
        let mut by_hand = Primitive::DARTS.to_vec();
        by_hand.reverse();
        let o = SearchOptions { op_order: Some(by_hand.clone()), ..o };
        assert_eq!(o.resolved_op_order().unwrap(), by_hand);
        for bad in [vec![Primitive::SepConv3x3; 8], Primitive::DARTS[..7].to_vec()] {
            let o = SearchOptions { op_order: Some(bad), ..SearchOptions::default() };
            assert!(o.validate().unwrap_err().is_user_error());
        }
    }

    #[test]
    fn node_and_fixed_curricula() {
        let order = Primitive::DARTS.to_vec();
        let stages = curriculum(CurriculumMode::Node, &Primitive::DARTS, &order, 4);
        assert_eq!(stages.iter().map(|s| s.searched_nodes).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(stages.iter().all(|s| s.allowed.iter().all(|&a| a)));
        let stages = curriculum(CurriculumMode::Fixed, &Primitive::DARTS, &order, 4);
        assert_eq!(stages.len(), 1);
        assert!(stages[0].allowed.iter().all(|&a| a));
    }

    #[test]
    fn defaults_are_the_released_code_s() {
        let o = SearchOptions::default();
        assert_eq!((o.init_channels, o.layers, o.nodes, o.batch_size), (16, 8, 4, 96));
        assert_eq!((o.warmup_epochs, o.epochs, o.controller_steps), (20, 40, None));
        assert_eq!(
            (o.lr, o.momentum, o.weight_decay, o.sparse_update, o.grad_clip),
            (0.01, 0.9, 3e-4, false, None)
        );
        assert_eq!((o.controller_lr, o.controller_weight_decay, o.controller_hidden), (3e-4, 5e-4, 128));
        assert_eq!((o.entropy_weight, o.baseline_decay, o.controller_grad_clip), (0.005, 0.99, Some(5.0)));
        assert_eq!((o.temperature, o.tanh_constant), (None, None));
        assert_eq!(
            (o.derive_rounds, o.derive_samples, o.derive_images, o.derive_batch()),
            (3, 10, 10_000, 96)
        );
        assert_eq!((o.seed, o.op_order.clone(), o.mode), (2020, None, CurriculumMode::Op));
        assert!(o.validate().is_ok() && SearchOptions::quick().validate().is_ok());
        for bad in [
            SearchOptions { entropy_weight: f64::NAN, ..o.clone() },
            SearchOptions { entropy_weight: -1.0, ..o.clone() },
            SearchOptions { grad_clip: Some(0.0), ..o.clone() },
            SearchOptions { controller_grad_clip: Some(f64::INFINITY), ..o.clone() },
            SearchOptions { momentum: 1.0, ..o.clone() },
            SearchOptions { derive_images: 0, ..o.clone() },
            SearchOptions { controller_steps: Some(0), ..o.clone() },
        ] {
            assert!(bad.validate().unwrap_err().is_user_error());
        }
    }

    #[test]
    fn round_and_stage_winners_are_the_first_highest_scores() {
        let genotype = crate::space::published("CNAS").unwrap();
        let c = |score: f64| Candidate {
            stage: 1,
            round: 1,
            sample: 1,
            genotype: genotype.clone(),
            score,
            std_error: 0.0,
            images: 10,
            log_prob: 0.0,
            entropy: 0.0,
            round_best: false,
        };
        let list = [c(0.2), c(0.5), c(0.1), c(0.5)];
        assert_eq!(best_index(&list), Some(1));
        assert_eq!(best_of(list.to_vec()).unwrap().score, 0.5);
        assert_eq!(best_index(&[]), None);
        assert!((std_error(0.5, 100) - 0.05).abs() < 1e-12);
        assert_eq!(std_error(1.0, 10), 0.0);
    }

    /// The sampling thread hands over exactly the pairs one thread would have drawn, in order,
    /// for uniform and controller sampling.
    #[test]
    fn pairs_from_the_sampling_thread_are_the_inline_draws() {
        let stages = curriculum(CurriculumMode::Op, &Primitive::DARTS, &released_op_order(3).unwrap(), 4);
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
