//! Training a fixed network from scratch (`cnas train`) with the paper's recipe, resumable.
//!
//! # Run directory
//! - `config.json`: `"kind": "train"`, the architecture, the network, every option, the data
//!   options, versions; `--resume` reads everything back from it;
//! - `metrics.jsonl`: one line per epoch (learning rate, drop-path probability, train and
//!   validation loss/top-1/top-5, images trained on and optimizer steps, images/s, epoch time);
//! - `last.safetensors`: the network and the optimizer's momentum buffers, the epoch, the best
//!   accuracy so far (in its metadata), written atomically after every epoch;
//! - `best.safetensors`: the network at its best validation top-1 (cnas weights format, read
//!   by `cnas predict`, `cnas eval` and `cnas export`);
//! - `eval.json`: the final network's evaluation with per-class accuracy and confusion matrix,
//!   and `confusion.svg`, the matrix as a heat map;
//! - `tb/`: the metrics as TensorBoard scalars (`train/<key>`, step = epoch).
//!
//! # Determinism
//! Everything random in epoch `e` is drawn from streams keyed by (seed, e): the loader's
//! shuffle and augmentations, and libtorch's generator (drop-path masks), reseeded at the start
//! of every epoch. The learning rate is a closed form of `e`. A run resumed after epoch `e`
//! therefore replays exactly what the uninterrupted run did; on the CPU the two end
//! bit-identical.
pub mod amp;
pub mod parallel;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::data::{to_device, Data, DataArgs, DataConfig, DatasetKind, LoaderOptions, Part};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult, Totals};
use crate::model::{Network, NetworkConfig, NetworkKind};
use crate::optim::{clip_grad_norm, Sgd};
use crate::space::Genotype;
pub use parallel::DataParallel;
pub use schedule::{Schedule, SchedulerKind};

/// Cross-entropy of `logits` against `labels`, in fp32 whatever the logits' dtype, with label
/// smoothing `smooth` as the released CNAS code defines it: the target puts `1 - smooth` on the
/// label and `smooth / (K - 1)` on every other class, and the loss is the batch mean of
/// `-Σ_k target_k · log_softmax(logits)_k`. `smooth` 0 is PyTorch's plain cross-entropy.
pub fn classification_loss(logits: &Tensor, labels: &Tensor, smooth: f64) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let classes = logits.size().last().copied().unwrap_or(1);
    if smooth == 0.0 || classes < 2 {
        return logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0);
    }
    // Σ_k target_k·log p_k = (1-ε)·log p_y + ε/(K-1)·(Σ_k log p_k - log p_y): no one-hot target.
    let other = smooth / (classes - 1) as f64;
    let log_p = logits.log_softmax(-1, Kind::Float);
    let on_label = log_p.gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1);
    let all = log_p.sum_dim_intlist(-1, false, Kind::Float);
    -(on_label * (1.0 - smooth - other) + all * other).mean(Kind::Float)
}

/// Whether `--no-bias-decay` exempts the parameter `name` from weight decay: as the released
/// code, every parameter whose name contains "bias" (BatchNorm biases and convolution or linear
/// biases; BatchNorm weights are still decayed).
pub fn exempt_from_decay(name: &str) -> bool {
    name.contains("bias")
}

/// Every number of a training run. [`TrainOptions::paper`] is the paper's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub init_channels: i64,
    pub layers: i64,
    pub epochs: usize,
    /// The global batch: a data-parallel run of world size k takes `batch_size / k` images per
    /// rank and step (see [`TrainOptions::per_rank_batch`]).
    pub batch_size: usize,
    pub lr: f64,
    pub lr_min: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// No weight decay on the parameters whose name contains "bias" ([`exempt_from_decay`]).
    pub no_bias_decay: bool,
    pub scheduler: SchedulerKind,
    pub warmup_epochs: usize,
    /// For `--scheduler step`: every `step_size` epochs multiply by `gamma`.
    pub step_size: usize,
    pub gamma: f64,
    pub label_smooth: f64,
    /// Weight of the auxiliary head's loss; 0 builds no auxiliary head.
    pub auxiliary_weight: f64,
    /// Drop-path probability reached at the last epoch (it rises linearly from 0).
    pub drop_path_prob: f64,
    pub grad_clip: f64,
    /// bf16 autocast for the forward pass (the loss in fp32).
    pub amp: bool,
    /// Train on at most this many images of the training set (None: all).
    pub max_images: Option<usize>,
    /// Validate on at most this many test images (None: all).
    pub max_eval_images: Option<usize>,
    /// Validate every this many epochs (and always after the last).
    pub eval_every: usize,
    pub seed: u64,
    /// Data-parallel runs: BatchNorm statistics over the global batch instead of per rank
    /// (no effect in a single process).
    #[serde(default)]
    pub sync_bn: bool,
}

impl TrainOptions {
    /// The paper's recipe for a data set, as the released code ran it (CIFAR-10: 36×20, 600
    /// epochs, cosine, global batch 128 = 2 GPUs × 64; ImageNet: 48×14, 250 epochs, linear decay,
    /// global batch 256 = 4 GPUs × 64, no weight decay on biases, no label smoothing; lr 0.05).
    pub fn paper(dataset: DatasetKind) -> Self {
        let cifar = TrainOptions {
            init_channels: 36,
            layers: 20,
            epochs: 600,
            batch_size: 128,
            lr: 0.05,
            lr_min: 0.0,
            momentum: 0.9,
            weight_decay: 3e-4,
            no_bias_decay: false,
            scheduler: SchedulerKind::Cosine,
            warmup_epochs: 0,
            step_size: 1,
            gamma: 0.97,
            label_smooth: 0.0,
            auxiliary_weight: 0.4,
            drop_path_prob: 0.2,
            grad_clip: 5.0,
            amp: false,
            max_images: None,
            max_eval_images: None,
            eval_every: 1,
            seed: 0,
            sync_bn: false,
        };
        match dataset {
            DatasetKind::Cifar10 => cifar,
            DatasetKind::ImageNet => TrainOptions {
                init_channels: 48,
                layers: 14,
                epochs: 250,
                batch_size: 256,
                scheduler: SchedulerKind::Linear,
                no_bias_decay: true,
                ..cifar
            },
        }
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            kind: self.scheduler,
            lr: self.lr,
            lr_min: self.lr_min,
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            step_size: self.step_size,
            gamma: self.gamma,
        }
    }

    /// Drop-path probability during epoch `epoch` (0-based), as the released code:
    /// `drop_path_prob · e / epochs` with `e = epoch + 1` the 1-based epoch, so the first epoch
    /// already drops a little and the last one runs at `drop_path_prob`.
    pub fn drop_path_at(&self, epoch: usize) -> f64 {
        self.drop_path_prob * (epoch + 1) as f64 / self.epochs.max(1) as f64
    }

    /// Images per rank and step at world size `world_size`: the global `--batch-size` divided
    /// over the ranks. A user error when it does not divide, or leaves a rank fewer than two
    /// images (BatchNorm needs two).
    pub fn per_rank_batch(&self, world_size: usize) -> Result<usize> {
        let k = world_size.max(1);
        if self.batch_size % k != 0 {
            return Err(Error::BadOption(format!(
                "--batch-size {} is the global batch and must be divisible by the world size {k} \
                 (WORLD_SIZE): each rank takes --batch-size / {k} images",
                self.batch_size
            )));
        }
        let per_rank = self.batch_size / k;
        if per_rank < 2 {
            return Err(Error::BadOption(format!(
                "--batch-size {} over world size {k} leaves {per_rank} image per rank; BatchNorm \
                 needs at least two (use --batch-size {} or more)",
                self.batch_size,
                2 * k
            )));
        }
        Ok(per_rank)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadOption(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad("--batch-size must be at least 2 (BatchNorm needs two samples)".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_prob) {
            return bad(format!("--drop-path-prob {} must be in [0, 1)", self.drop_path_prob));
        }
        if !(0.0..1.0).contains(&self.label_smooth) {
            return bad(format!("--label-smooth {} must be in [0, 1)", self.label_smooth));
        }
        let non_negative = |v: f64| v >= 0.0; // false for NaN too
        if !non_negative(self.auxiliary_weight)
            || !non_negative(self.momentum)
            || !self.grad_clip.is_finite()
            || self.grad_clip <= 0.0
        {
            return bad("--auxiliary-weight and --momentum must be ≥ 0, --grad-clip > 0".into());
        }
        if !non_negative(self.weight_decay) {
            return bad(format!("--weight-decay {} must be ≥ 0", self.weight_decay));
        }
        if self.eval_every == 0 {
            return bad("--eval-every must be at least 1".into());
        }
        if self.max_images.is_some_and(|n| n < self.batch_size) {
            return bad(format!(
                "--max-images must hold at least one batch of --batch-size {}",
                self.batch_size
            ));
        }
        self.schedule().validate()
    }
}

/// What `cnas train` writes into config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Always "train": tells a training run from a search run.
    pub kind: String,
    /// The published name or file the genotype came from.
    pub arch: String,
    pub network: NetworkConfig,
    pub options: TrainOptions,
    pub data: DataConfig,
    pub versions: BTreeMap<String, String>,
}

/// How a training run is started.
pub use crate::search::StartMode;

/// The position and bests a checkpoint records (in its metadata).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct TrainState {
    /// Epochs completed.
    epoch: usize,
    best_top1: f64,
    best_top5: f64,
    best_epoch: usize,
    metrics_lines: usize,
    /// Seconds spent in epochs so far (over all sessions).
    train_time_s: f64,
}

/// One line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub drop_path_prob: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub train_top5: f64,
    /// Images trained on in the epoch, over all ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// Optimizer steps in the epoch (every rank takes the same steps, each on its share of
    /// the global batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    pub val_loss: Option<f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    /// Images the validation scored (over all ranks in a distributed run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_images: Option<usize>,
    pub images_per_sec: f64,
    pub epoch_time_s: f64,
}

/// The summary a finished run prints (and what a paper table needs).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub params_m: f64,
    pub madds_m: f64,
    pub best_top1: f64,
    pub best_top5: f64,
    pub best_epoch: usize,
    pub final_top1: f64,
    pub final_top5: f64,
    pub train_time_s: f64,
}

impl std::fmt::Display for TrainSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "params {:.2} M, multiply-adds {:.1} M", self.params_m, self.madds_m)?;
        writeln!(
            f,
            "final top-1 {:.2}%, top-5 {:.2}%; best top-1 {:.2}% (top-5 {:.2}%) at epoch {}",
            self.final_top1 * 100.0,
            self.final_top5 * 100.0,
            self.best_top1 * 100.0,
            self.best_top5 * 100.0,
            self.best_epoch
        )?;
        write!(f, "train time {:.1} min; run in {}", self.train_time_s / 60.0, self.run_dir.display())
    }
}

const CONFIG: &str = "config.json";
const METRICS: &str = "metrics.jsonl";
const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";
const EVAL: &str = "eval.json";
const TENSORBOARD: &str = "tb";
/// Files whose presence means a directory holds a run.
const RUN_FILES: [&str; 5] = [CONFIG, METRICS, LAST, BEST, EVAL];

fn json_error(e: serde_json::Error) -> Error {
    Error::BadOption(e.to_string())
}

/// A new training run: its architecture (name, genotype), options and data.
pub struct TrainRequest<'a> {
    pub arch: String,
    pub genotype: Genotype,
    pub options: TrainOptions,
    pub data: &'a DataArgs,
}

/// Trains (or resumes) in `run_dir`. `request` is needed for a new run and ignored on resume
/// (the run's own config.json is used). `stop_after` ends the process's work after that many
/// epochs as if it had been interrupted (for tests of resume). `parallel`: this process's part
/// in a data-parallel run (`None`: a single process). Every
/// rank must call it with the same arguments; only rank 0 writes into `run_dir` (the others
/// read it on `--resume`, so it must be on a file system they all see).
#[allow(clippy::too_many_arguments)]
pub fn train(
    request: Option<TrainRequest<'_>>,
    workers: Option<usize>,
    run_dir: &Path,
    start: StartMode,
    device: Device,
    quiet: bool,
    stop_after: Option<usize>,
    parallel: Option<DataParallel>,
) -> Result<Option<TrainSummary>> {
    let main = parallel.as_ref().is_none_or(DataParallel::is_main);
    let world_size = parallel.as_ref().map_or(1, DataParallel::world_size);
    // A global batch the ranks cannot share is refused before a new run touches its directory
    // (a resumed run is checked against its recorded batch in Trainer::new).
    if let Some(r) = &request {
        r.options.validate()?;
        r.options.per_rank_batch(world_size)?;
    }
    let config = prepare_run_dir(request, run_dir, start, main)?;
    let mut data_args = DataArgs { workers, ..DataArgs::default() };
    config.data.apply(&mut data_args)?;
    let mut run = Trainer::new(config, &data_args, run_dir, device, quiet || !main, start, parallel)?;
    let result = run.run(stop_after);
    crate::dist::set_sync_batch_norm(None);
    result
}

/// The run's configuration; `writer` (rank 0 or a single process) also checks and prepares
/// the directory and writes config.json.
fn prepare_run_dir(
    request: Option<TrainRequest<'_>>,
    run_dir: &Path,
    start: StartMode,
    writer: bool,
) -> Result<TrainConfig> {
    let config_path = run_dir.join(CONFIG);
    if start == StartMode::Resume {
        if !config_path.is_file() {
            return Err(Error::bad_file(run_dir, "no training run to resume here (config.json is missing)"));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: TrainConfig = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&config_path, format!("not a cnas training config: {e}")))?;
        if config.kind != "train" {
            return Err(Error::bad_file(&config_path, "not a cnas training run"));
        }
        return Ok(config);
    }
    let request =
        request.ok_or_else(|| Error::BadOption("a new training run needs an architecture".into()))?;
    request.options.validate()?;
    request.data.validate()?;
    let occupied = writer && RUN_FILES.iter().any(|f| run_dir.join(f).exists());
    if occupied && start == StartMode::New {
        return Err(Error::BadOption(format!(
            "{} holds another run: use --resume to continue it or --force to start over",
            run_dir.display()
        )));
    }
    if writer {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        for f in RUN_FILES {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
        let _ = std::fs::remove_file(run_dir.join(crate::eval::CONFUSION_SVG));
        let _ = std::fs::remove_dir_all(run_dir.join(TENSORBOARD));
    }
    let kind = match request.data.dataset {
        DatasetKind::Cifar10 => NetworkKind::Cifar,
        DatasetKind::ImageNet => NetworkKind::Imagenet,
    };
    let o = &request.options;
    let network = NetworkConfig {
        kind,
        genotype: request.genotype,
        init_channels: o.init_channels,
        layers: o.layers,
        // Set from the data set once it is open.
        num_classes: kind.default_num_classes(),
        auxiliary: o.auxiliary_weight > 0.0,
    };
    network.validate()?;
    let config = TrainConfig {
        kind: "train".into(),
        arch: request.arch,
        network,
        options: request.options,
        data: DataConfig::from_args(request.data),
        versions: crate::util::versions(),
    };
    if writer {
        write_config(run_dir, &config)?;
    }
    Ok(config)
}

fn write_config(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    let json = serde_json::to_string_pretty(config).map_err(json_error)?;
    crate::util::write_atomic(&run_dir.join(CONFIG), json.as_bytes())
}

/// The stream of epoch `epoch`'s libtorch draws (drop-path masks): a hash of (seed, epoch).
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7472_6169_6e00_0000);
    rng.set_stream(epoch as u64);
    (rng.next_u64() >> 1) as i64
}

struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    quiet: bool,
    class_names: Vec<String>,
    train_loader: crate::data::Loader,
    eval_loader: crate::data::Loader,
    vs: nn::VarStore,
    network: Network,
    sgd: Sgd,
    state: TrainState,
    last_eval: Option<EvalResult>,
    /// Opened at the first metrics line this process writes.
    tensorboard: Option<crate::tensorboard::EventWriter>,
    /// This process's part in a data-parallel run (None: a single process).
    parallel: Option<DataParallel>,
    /// Data-parallel runs: the gradient all-reduce hooked into the backward pass.
    grad_sync: Option<crate::dist::GradSync>,
}

impl Trainer {
    fn new(
        mut config: TrainConfig,
        data_args: &DataArgs,
        run_dir: &Path,
        device: Device,
        quiet: bool,
        start: StartMode,
        parallel: Option<DataParallel>,
    ) -> Result<Self> {
        let o = config.options.clone();
        let main = parallel.as_ref().is_none_or(DataParallel::is_main);
        let (rank, world_size) = parallel.as_ref().map_or((0, 1), |p| (p.rank(), p.world_size()));
        let data = Data::open(data_args, !quiet)?;
        let num_classes = data.info().num_classes as i64;
        config.network.check_input_size(data.info().input_size as i64, true)?;
        if config.network.num_classes != num_classes {
            config.network.num_classes = num_classes;
            if main {
                write_config(run_dir, &config)?;
            }
        }
        // Each rank takes its shard of every epoch (and of the validation set) and its share of
        // the global batch (config.json records the global batch, so a run resumed at another
        // world size keeps it).
        let batch = o.per_rank_batch(world_size)?;
        if world_size > 1 {
            tracing::info!("global batch {} = {world_size} ranks × {batch} images", o.batch_size);
        }
        let train_opts = LoaderOptions::train(batch)
            .device(device)
            .drop_last(true)
            .default_cutout(16)
            .shard(rank, world_size);
        let mut train_loader = data.loader(Part::Train, &train_opts)?;
        if let Some(n) = o.max_images {
            train_loader = train_loader.limited(n)?;
        }
        if train_loader.batches_per_epoch() == 0 {
            return Err(Error::BadOption(format!(
                "the training set has fewer images per rank than one batch of {batch} \
                 (--batch-size {} over {world_size} rank(s))",
                o.batch_size
            )));
        }
        let eval_batch = (batch * 2).max(64);
        let eval_opts = LoaderOptions::eval(eval_batch).device(device).shard(rank, world_size);
        let mut eval_loader = data.loader(Part::Test, &eval_opts)?;
        if let Some(n) = o.max_eval_images {
            eval_loader = eval_loader.limited(n)?;
        }
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }

        tch::manual_seed(o.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut network = Network::new(&vs.root(), config.network.clone())?;
        network.channels_last = crate::ops::channels_last_for(device, o.amp);
        let mut params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sgd = Sgd::new(params, o.lr, o.momentum, o.weight_decay, false);
        if o.no_bias_decay {
            sgd.exempt_from_decay(exempt_from_decay);
        }

        let mut trainer = Trainer {
            class_names: data.info().class_names.clone(),
            config,
            run_dir: run_dir.to_path_buf(),
            device,
            quiet,
            train_loader,
            eval_loader,
            vs,
            network,
            sgd,
            state: TrainState::default(),
            last_eval: None,
            tensorboard: None,
            parallel,
            grad_sync: None,
        };
        // Other ranks of a new run start from scratch (rank 0 may be clearing an old run in
        // the same directory meanwhile); start() checks they all agree on where they are.
        if main || start == StartMode::Resume {
            trainer.restore(main)?;
        }
        if let Some(p) = &trainer.parallel {
            let optimizer: Vec<Tensor> = trainer.sgd.state().into_iter().map(|(_, t)| t).collect();
            p.start(&trainer.vs, &optimizer, trainer.state.epoch)?;
            if o.sync_bn {
                crate::dist::set_sync_batch_norm(Some(Arc::clone(p.group())));
            }
            let sync =
                crate::dist::GradSync::new(Arc::clone(p.group()), trainer.sgd.params(), p.bucket_bytes())?;
            trainer.grad_sync = Some(sync);
        }
        Ok(trainer)
    }

    /// Loads last.safetensors if there is one, and (`writer`) trims metrics.jsonl to the
    /// epochs it covers.
    fn restore(&mut self, writer: bool) -> Result<()> {
        let path = self.run_dir.join(LAST);
        if !path.is_file() {
            if writer {
                truncate_lines(&self.run_dir.join(METRICS), 0)?;
            }
            return Ok(());
        }
        let metadata = crate::weights::read_metadata(&path)?.unwrap_or_default();
        let state: TrainState =
            metadata.get("train_state").and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| {
                Error::bad_file(&path, "not a cnas training checkpoint (no train_state in its metadata)")
            })?;
        let mut network = Vec::new();
        let mut optimizer = HashMap::new();
        for (name, t) in crate::weights::read_all(&path)? {
            match name.strip_prefix(crate::weights::OPTIMIZER_PREFIX) {
                Some(rest) => {
                    optimizer.insert(rest.to_string(), t);
                }
                None => network.push((name, t)),
            }
        }
        crate::weights::load_into(&self.vs, &network)?;
        self.sgd.load_state(&optimizer)?;
        self.state = state;
        if writer {
            truncate_lines(&self.run_dir.join(METRICS), state.metrics_lines)?;
        }
        tracing::info!("resuming after epoch {} of {}", state.epoch, self.config.options.epochs);
        Ok(())
    }

    fn metadata(&self, extra: Vec<(&str, String)>) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::from([
            ("format".to_string(), "cnas".to_string()),
            ("network".to_string(), serde_json::to_string(&self.config.network).map_err(json_error)?),
            ("arch".to_string(), self.config.arch.clone()),
        ]);
        m.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        Ok(m)
    }

    fn network_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn save_last(&self) -> Result<()> {
        let mut tensors = self.network_tensors();
        tensors.extend(
            self.sgd
                .state()
                .into_iter()
                .map(|(n, t)| (format!("{}{n}", crate::weights::OPTIMIZER_PREFIX), t)),
        );
        let state = serde_json::to_string(&self.state).map_err(json_error)?;
        let metadata = self.metadata(vec![("train_state", state)])?;
        crate::weights::save_tensors(&tensors, &self.run_dir.join(LAST), metadata)
    }

    fn save_best(&self, top1: f64, top5: f64) -> Result<()> {
        let metadata = self.metadata(vec![
            ("epoch", self.state.epoch.to_string()),
            ("top1", format!("{top1}")),
            ("top5", format!("{top5}")),
        ])?;
        crate::weights::save_tensors(&self.network_tensors(), &self.run_dir.join(BEST), metadata)
    }

    fn progress(&self, len: u64, prefix: String) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar
    }

    fn run(&mut self, stop_after: Option<usize>) -> Result<Option<TrainSummary>> {
        let epochs = self.config.options.epochs;
        let mut done_here = 0;
        while self.state.epoch < epochs {
            if stop_after.is_some_and(|n| done_here >= n) {
                tracing::info!("stopping after {done_here} epochs as asked; resume with --resume");
                return Ok(None);
            }
            self.epoch()?;
            done_here += 1;
        }
        self.finish().map(Some)
    }

    /// One epoch of training, then validation when it is due, then the checkpoints.
    fn epoch(&mut self) -> Result<()> {
        let o = self.config.options.clone();
        let e = self.state.epoch;
        let lr = o.schedule().lr_at(e);
        self.sgd.lr = lr;
        self.network.drop_path_prob = o.drop_path_at(e);
        tch::manual_seed(epoch_seed(o.seed, e));

        let start = Instant::now();
        let batches = self.train_loader.epoch(e as u64);
        let bar = self.progress(batches.batch_count() as u64, format!("epoch {}/{}", e + 1, o.epochs));
        let mut totals = Totals::new(self.config.network.num_classes, false, self.device);
        let mut steps = 0;
        for (i, batch) in batches.enumerate() {
            let (images, labels) = batch?;
            let (images, labels) = (to_device(&images, self.device), to_device(&labels, self.device));
            let (loss, logits) = train_step(
                &self.network,
                &mut self.sgd,
                &images,
                &labels,
                &o,
                self.device,
                self.grad_sync.as_ref(),
            )?;
            totals.add(&loss, &logits, &labels);
            steps += 1;
            bar.inc(1);
            // A host sync for the bar only now and then, never per step.
            if (i + 1) % 50 == 0 && !self.quiet {
                let (l, top1, _) = totals.read();
                bar.set_message(format!("loss {l:.3} top-1 {:.1}%", top1 * 100.0));
            }
        }
        let (mut train_loss, mut train_top1, mut train_top5) = totals.read();
        let mut train_images = totals.images;
        if let Some(p) = &self.parallel {
            ((train_loss, train_top1, train_top5), train_images) =
                p.reduce_means((train_loss, train_top1, train_top5), totals.images)?;
            // Rank 0's BatchNorm statistics everywhere, then the weights must agree.
            p.end_epoch(&self.vs, e + 1)?;
        }
        let train_seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        if !train_loss.is_finite() {
            return Err(Error::BadOption(format!(
                "the training loss diverged (not finite) in epoch {}; try a lower --lr",
                e + 1
            )));
        }

        let last = e + 1 == o.epochs;
        let eval =
            if last || (e + 1) % o.eval_every == 0 { Some(self.validate("validation")?) } else { None };
        let epoch_seconds = start.elapsed().as_secs_f64();
        self.state.epoch = e + 1;
        self.state.train_time_s += epoch_seconds;
        let metrics = EpochMetrics {
            epoch: e + 1,
            lr,
            drop_path_prob: self.network.drop_path_prob,
            train_loss,
            train_top1,
            train_top5,
            train_images: Some(train_images),
            steps: Some(steps),
            val_loss: eval.as_ref().map(|r| r.loss),
            val_top1: eval.as_ref().map(|r| r.top1),
            val_top5: eval.as_ref().map(|r| r.top5),
            val_images: eval.as_ref().map(|r| r.images),
            images_per_sec: train_images as f64 / train_seconds.max(1e-9),
            epoch_time_s: epoch_seconds,
        };
        let val = match &eval {
            Some(r) => {
                format!(", val loss {:.4} top-1 {:.2}% top-5 {:.2}%", r.loss, r.top1 * 100.0, r.top5 * 100.0)
            }
            None => String::new(),
        };
        tracing::info!(
            "epoch {}/{}: lr {lr:.5}, train loss {train_loss:.4} top-1 {:.2}%{val}, {:.0} images/s",
            e + 1,
            o.epochs,
            train_top1 * 100.0,
            metrics.images_per_sec
        );
        self.log_metrics(&metrics)?;
        if let Some(r) = &eval {
            if r.top1 > self.state.best_top1 || self.state.best_epoch == 0 {
                self.state.best_top1 = r.top1;
                self.state.best_top5 = r.top5;
                self.state.best_epoch = e + 1;
                if self.is_main() {
                    self.save_best(r.top1, r.top5)?;
                }
            }
        }
        self.last_eval = eval;
        if self.is_main() {
            self.save_last()?;
        }
        Ok(())
    }

    /// Only rank 0 (or a single process) writes files.
    fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(DataParallel::is_main)
    }

    /// Evaluates on the validation set (this rank's shard, summed over the ranks).
    fn validate(&self, what: &str) -> Result<EvalResult> {
        let bar = self.progress(self.eval_loader.samples_per_epoch() as u64, what.into());
        let amp = self.config.options.amp;
        let r = evaluate(&self.network, &self.eval_loader, &self.class_names, self.device, amp, &bar)?;
        bar.finish_and_clear();
        match &self.parallel {
            Some(p) => p.reduce_eval(r),
            None => Ok(r),
        }
    }

    fn log_metrics(&mut self, metrics: &EpochMetrics) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let path = self.run_dir.join(METRICS);
        let line = serde_json::to_string(metrics).map_err(json_error)?;
        let mut f =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))?;
        self.state.metrics_lines += 1;
        self.log_tensorboard(metrics)
    }

    /// The epoch's numbers as TensorBoard scalars `train/<key>`, step = epoch. A resumed
    /// process starts its event file with a restart marker at its first epoch, so readers drop
    /// what an interrupted process logged for the epochs that are redone.
    fn log_tensorboard(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let line = serde_json::to_value(metrics).map_err(json_error)?;
        let dir = self.run_dir.join(TENSORBOARD);
        crate::tensorboard::log_line(
            &mut self.tensorboard,
            &dir,
            "train",
            metrics.epoch as i64,
            &line,
            &["epoch", "train_images", "steps"],
        )
    }

    /// After the last epoch: the final evaluation (eval.json) and the summary.
    fn finish(&mut self) -> Result<TrainSummary> {
        let eval = match self.last_eval.take() {
            Some(r) => r,
            // Resumed after the last epoch: evaluate the final network again.
            None => self.validate("evaluation")?,
        };
        if self.is_main() {
            crate::eval::write_result(&eval, &self.run_dir)?;
        }
        let image_size = self.eval_loader.image_shape()[1] as i64;
        let profile = crate::profile::profile(&self.vs, &self.network, image_size);
        Ok(TrainSummary {
            run_dir: self.run_dir.clone(),
            params_m: profile.params as f64 / 1e6,
            madds_m: profile.madds as f64 / 1e6,
            best_top1: self.state.best_top1,
            best_top5: self.state.best_top5,
            best_epoch: self.state.best_epoch,
            final_top1: eval.top1,
            final_top5: eval.top5,
            train_time_s: self.state.train_time_s,
        })
    }
}

/// One optimisation step of a fixed network on a batch: forward (bf16 autocast when
/// `options.amp`), cross-entropy with label smoothing plus the weighted auxiliary loss,
/// backward, gradient clipping, SGD. Returns (loss, logits) without reading them (no host sync).
/// With `sync` (one rank of a data-parallel run) the gradients are averaged over the ranks
/// during the backward pass, before clipping.
pub fn train_step(
    network: &Network,
    sgd: &mut Sgd,
    images: &Tensor,
    labels: &Tensor,
    options: &TrainOptions,
    device: Device,
    sync: Option<&crate::dist::GradSync>,
) -> Result<(Tensor, Tensor)> {
    sgd.zero_grad()?;
    let out = amp::autocast(device, options.amp, || network.forward_t(images, true))?;
    let mut loss = classification_loss(&out.logits, labels, options.label_smooth);
    if let Some(aux) = &out.auxiliary {
        loss += classification_loss(aux, labels, options.label_smooth) * options.auxiliary_weight;
    }
    if let Some(sync) = sync {
        let backward = sync.backward(|| loss.f_backward());
        // A synchronised BatchNorm's failed collective surfaces here (a layer returns none).
        if let Some(e) = crate::dist::take_sync_batch_norm_error() {
            return Err(e.into());
        }
        backward?;
    } else {
        loss.backward();
    }
    let _grad_norm = clip_grad_norm(sgd.params(), options.grad_clip)?;
    sgd.step()?;
    Ok((loss.detach(), out.logits.detach().to_kind(Kind::Float)))
}

/// Keeps the first `lines` lines of a text file (creating it empty when absent).
fn truncate_lines(path: &Path, lines: usize) -> Result<()> {
    let kept: Vec<String> = match std::fs::File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .take(lines)
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(path, e))?,
        Err(_) => Vec::new(),
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::util::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn label_smoothing_matches_a_direct_computation() {
        let rows: [[f64; 4]; 3] = [[2.0, -1.0, 0.5, 0.25], [0.0, 3.0, 1.0, -2.0], [1.5, 1.5, -0.5, 4.0]];
        let labels = [0usize, 2, 3];
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let logits = Tensor::from_slice(&flat).reshape([3, 4]);
        let label_tensor = Tensor::from_slice(&labels.map(|l| l as i64));
        // The released LabelSmoothCrossEntropyLoss: target 1-ε on the label and ε/(K-1) on each
        // other class, loss -Σ_k target_k·log_softmax_k, averaged over the batch.
        let released = |eps: f64| {
            let mut total = 0.0;
            for (row, &label) in rows.iter().zip(&labels) {
                let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                for (k, v) in row.iter().enumerate() {
                    let target = if k == label { 1.0 - eps } else { eps / 3.0 };
                    total -= target * (v - lse);
                }
            }
            total / 3.0
        };
        for eps in [0.0, 0.1, 0.3] {
            let got = classification_loss(&logits, &label_tensor, eps).double_value(&[]);
            let want = released(eps);
            assert!((got - want).abs() < 1e-6, "ε {eps}: {got} vs {want}");
        }
        // Not PyTorch's label_smoothing (ε/K on every class): the two differ.
        let pytorch = logits
            .cross_entropy_loss::<Tensor>(&label_tensor, None, Reduction::Mean, -100, 0.1)
            .double_value(&[]);
        assert!((pytorch - released(0.1)).abs() > 1e-3, "{pytorch} vs {}", released(0.1));
        // bf16 logits still give an fp32 loss, with or without smoothing; gradients flow.
        for eps in [0.0, 0.1] {
            let half = classification_loss(&logits.to_kind(Kind::BFloat16), &label_tensor, eps);
            assert_eq!(half.kind(), Kind::Float);
        }
        let x = logits.copy().set_requires_grad(true);
        classification_loss(&x, &label_tensor, 0.1).backward();
        // d loss / d logits = (softmax - target) / N: each row sums to 0.
        let row_sums = x.grad().sum_dim_intlist(-1, false, Kind::Float);
        assert!(row_sums.abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn no_bias_decay_spares_exactly_the_parameters_named_bias() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = NetworkConfig {
            init_channels: 8,
            layers: 3,
            ..NetworkConfig::paper(NetworkKind::Cifar, crate::space::published("CNAS").unwrap())
        };
        let _net = Network::new(&vs.root(), config).unwrap();
        let params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        for (name, _) in &params {
            assert_eq!(exempt_from_decay(name), name.contains("bias"), "{name}");
        }
        // BatchNorm: the bias (β) is exempt, the weight (γ) is decayed; so are convolutions.
        let bn_weights: Vec<&String> =
            params.iter().filter(|(n, t)| n.ends_with(".weight") && t.dim() == 1).map(|(n, _)| n).collect();
        assert!(!bn_weights.is_empty());
        assert!(bn_weights.iter().all(|n| !exempt_from_decay(n)), "{bn_weights:?}");
        assert!(params.iter().any(|(n, t)| n.ends_with(".bias") && t.dim() == 1 && exempt_from_decay(n)));
        assert!(params.iter().any(|(n, _)| n == "classifier.bias" && exempt_from_decay(n)));
        assert!(params.iter().any(|(n, _)| n == "classifier.weight" && !exempt_from_decay(n)));
        assert!(params.iter().filter(|(_, t)| t.dim() == 4).all(|(n, _)| !exempt_from_decay(n)));

        // One step of the optimizer as the trainer sets it up, every parameter 0.5 and every
        // gradient 0: only decay moves parameters, so exactly the "bias" ones stay at 0.5.
        tch::no_grad(|| {
            for (_, t) in &params {
                let _ = t.shallow_clone().fill_(0.5);
            }
        });
        for (_, t) in &params {
            (t.sum(Kind::Float) * 0.0).backward();
        }
        let shallow = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let mut sgd = Sgd::new(shallow, 1.0, 0.0, 0.1, false);
        sgd.exempt_from_decay(exempt_from_decay);
        sgd.step().unwrap();
        for (name, t) in &params {
            let want = if name.contains("bias") { 0.5 } else { 0.45 };
            let worst = (t.detach() - want).abs().max().double_value(&[]);
            assert!(worst < 1e-6, "{name}: {worst} away from {want}");
        }
    }

    #[test]
    fn drop_path_drops_the_asked_share_and_keeps_the_mean() {
        tch::manual_seed(3);
        let x = Tensor::ones([20000, 1, 2, 2], (Kind::Float, Device::Cpu));
        let y = crate::ops::drop_path(&x, 0.3);
        let per_sample = y.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        let dropped = per_sample.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((dropped - 0.3).abs() < 0.015, "dropped share {dropped}");
        let kept_value = per_sample.max().double_value(&[]);
        assert!((kept_value - 1.0 / 0.7).abs() < 1e-5);
        let mean = y.mean(Kind::Float).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        // The probability rises linearly over training with the 1-based epoch, as the released
        // code: 0.2·e/T, so 0.02 in the first of 10 epochs and 0.2 in the last.
        let o = TrainOptions { epochs: 10, drop_path_prob: 0.2, ..TrainOptions::paper(DatasetKind::Cifar10) };
        assert!((o.drop_path_at(0) - 0.02).abs() < 1e-12);
        assert!((o.drop_path_at(4) - 0.1).abs() < 1e-12);
        assert!((o.drop_path_at(9) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn paper_recipes_and_option_checks() {
        // The released commands: CIFAR-10 on 2 GPUs × 64, ImageNet on 4 GPUs × 64 with
        // --no_bias_decay and without --label_smooth; lr 0.05 both.
        let c = TrainOptions::paper(DatasetKind::Cifar10);
        assert_eq!((c.init_channels, c.layers, c.epochs, c.batch_size), (36, 20, 600, 128));
        assert_eq!((c.lr, c.momentum, c.weight_decay, c.scheduler), (0.05, 0.9, 3e-4, SchedulerKind::Cosine));
        assert_eq!((c.auxiliary_weight, c.drop_path_prob, c.grad_clip), (0.4, 0.2, 5.0));
        assert_eq!((c.label_smooth, c.no_bias_decay, c.warmup_epochs, c.lr_min), (0.0, false, 0, 0.0));
        let i = TrainOptions::paper(DatasetKind::ImageNet);
        assert_eq!((i.init_channels, i.layers, i.epochs, i.scheduler), (48, 14, 250, SchedulerKind::Linear));
        assert_eq!((i.batch_size, i.lr, i.label_smooth, i.no_bias_decay), (256, 0.05, 0.0, true));
        assert_eq!((i.momentum, i.weight_decay, i.auxiliary_weight, i.drop_path_prob), (0.9, 3e-4, 0.4, 0.2));
        assert!(c.validate().is_ok() && i.validate().is_ok());
        // The batch is global: divided over the ranks, which must share it evenly.
        assert_eq!(c.per_rank_batch(1).unwrap(), 128);
        assert_eq!(c.per_rank_batch(2).unwrap(), 64);
        assert_eq!(i.per_rank_batch(4).unwrap(), 64);
        let e = c.per_rank_batch(3).unwrap_err();
        assert!(e.is_user_error() && e.to_string().contains("--batch-size 128"), "{e}");
        assert!(e.to_string().contains("world size 3"), "{e}");
        let small = TrainOptions { batch_size: 4, ..c.clone() };
        assert!(small.per_rank_batch(4).unwrap_err().is_user_error());
        for bad in [
            TrainOptions { epochs: 0, ..c.clone() },
            TrainOptions { batch_size: 1, ..c.clone() },
            TrainOptions { drop_path_prob: 1.0, ..c.clone() },
            TrainOptions { label_smooth: -0.1, ..c.clone() },
            TrainOptions { warmup_epochs: 600, ..c.clone() },
            TrainOptions { lr: f64::NAN, ..c.clone() },
        ] {
            assert!(bad.validate().unwrap_err().is_user_error());
        }
    }

    #[test]
    fn amp_step_runs_in_bf16_and_stays_close_to_fp32() {
        // Other tests draw from libtorch's global generator concurrently: copy the weights
        // instead of relying on the same seed.
        let build = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let config = NetworkConfig {
                init_channels: 8,
                layers: 3,
                ..NetworkConfig::paper(NetworkKind::Cifar, crate::space::published("CNAS").unwrap())
            };
            let net = Network::new(&vs.root(), config).unwrap();
            let params: Vec<(String, Tensor)> =
                vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
            (vs, net, params)
        };
        let (reference, _, _) = build();
        let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, 2, 3, 4]);
        let mut losses = Vec::new();
        for amp in [false, true] {
            let (mut vs, net, params) = build();
            vs.copy(&reference).unwrap();
            let mut sgd = Sgd::new(params, 0.05, 0.9, 3e-4, false);
            let o = TrainOptions { amp, drop_path_prob: 0.0, ..TrainOptions::paper(DatasetKind::Cifar10) };
            let (loss, logits) = train_step(&net, &mut sgd, &images, &labels, &o, Device::Cpu, None).unwrap();
            assert_eq!(logits.kind(), Kind::Float);
            losses.push(loss.double_value(&[]));
            let inside = amp::autocast(Device::Cpu, amp, || net.forward_t(&images, false).logits).unwrap();
            assert_eq!(inside.kind(), if amp { Kind::BFloat16 } else { Kind::Float });
        }
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!((losses[0] - losses[1]).abs() < 0.05 * losses[0].abs(), "{losses:?}");
    }
}
