//! Training a fixed network from scratch (`cnas train`) with the paper's recipe, resumable.
//!
//! # Run directory
//! - `config.json`: `"kind": "train"`, the architecture, the network, every option, the data
//!   options, versions; `--resume` reads everything back from it;
//! - `metrics.jsonl`: one line per epoch (learning rate, drop-path probability, train and
//!   validation loss/top-1/top-5, images trained on and optimizer steps, images/s, epoch time);
//! - `last.safetensors`: the network and the optimizer's momentum buffers, the epoch, the best
//!   accuracy so far (in its metadata), written atomically after every epoch;
//!   `last.previous.safetensors` is the one before it, resumed from when the latest cannot be
//!   read;
//! - `.cnas.lock`: held by the process writing the run (one at a time), with its process id;
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

mod checkpoint;
mod options;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::data::{to_device, Data, DataArgs, DataConfig, DatasetKind, Loader, LoaderOptions, Part};
use crate::dist::DataParallel;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult, Totals};
use crate::model::{Network, NetworkConfig, NetworkKind};
use crate::optim::{clip_grad_norm, trainable_params, Sgd};
pub use crate::run::metrics::EpochMetrics;
use crate::space::Genotype;
pub use options::TrainOptions;
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

/// What `cnas train` writes into config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Always "train": tells a training run from a search run.
    pub kind: String,
    /// The published name or file the genotype came from.
    pub arch: String,
    /// The genotype file `--arch` named, made absolute (absent for a published name, and in
    /// runs of an older cnas): tells `cnas compare` which search a training run came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_file: Option<PathBuf>,
    pub network: NetworkConfig,
    pub options: TrainOptions,
    pub data: DataConfig,
    pub versions: BTreeMap<String, String>,
}

/// How a training run is started.
pub use crate::run::StartMode;

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

use crate::run::{self, CONFIG, METRICS, TENSORBOARD};
const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";
const EVAL: &str = "eval.json";
/// Files whose presence means a directory holds a run.
const RUN_FILES: [&str; 5] = [CONFIG, METRICS, LAST, BEST, EVAL];

fn json_error(e: serde_json::Error) -> Error {
    Error::Internal(e.to_string())
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
    let main = crate::run::is_writer(parallel.as_ref());
    let world_size = parallel.as_ref().map_or(1, DataParallel::world_size);
    // A global batch the ranks cannot share is refused before a new run touches its directory
    // (a resumed run is checked against its recorded batch in Trainer::new).
    if let Some(r) = &request {
        r.options.validate()?;
        r.options.per_rank_batch(world_size)?;
    }
    // One writer per run directory, for the whole run: rank 0 (or a single process).
    let _lock = if main { run::RunLock::acquire(run_dir, start != StartMode::Resume)? } else { None };
    let config = run_config(request, run_dir, start)?;
    let mut data_args = DataArgs { workers, ..DataArgs::default() };
    config.data.apply(&mut data_args)?;
    // Data and network are built before anything is written into the run, so a start that
    // fails on them leaves the directory as it was.
    let mut run = Trainer::new(config, &data_args, run_dir, device, quiet || !main, parallel)?;
    run.begin(start)?;
    run.run(stop_after).map_err(|e| {
        crate::run::interrupt::explain(e, || {
            format!("{}; resume with: cnas train --resume {}", run.where_it_stands(), run_dir.display())
        })
    })
}

/// The run's configuration: on resume its config.json; for a new run the request's, once
/// checked and once the directory is free for it (nothing is written yet).
fn run_config(request: Option<TrainRequest<'_>>, run_dir: &Path, start: StartMode) -> Result<TrainConfig> {
    if start == StartMode::Resume {
        let config: TrainConfig = run::read_config(run_dir, "training run")?;
        if config.kind != "train" {
            return Err(Error::bad_file(run_dir.join(CONFIG), "not a cnas training run"));
        }
        return Ok(config);
    }
    let request =
        request.ok_or_else(|| Error::BadOption("a new training run needs an architecture".into()))?;
    request.options.validate()?;
    request.data.validate()?;
    run::check_free(run_dir, start, &RUN_FILES)?;
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
    // A published name wins over a file of the same name, as in resolve_arch.
    let arch_file = match crate::space::published_name(&request.arch) {
        Some(_) => None,
        None => Path::new(&request.arch).canonicalize().ok().filter(|p| p.is_file()),
    };
    Ok(TrainConfig {
        kind: "train".into(),
        arch: request.arch,
        arch_file,
        network,
        options: request.options,
        data: DataConfig::from_args(request.data),
        versions: crate::util::versions(),
    })
}

fn write_config(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    run::write_config(run_dir, config)
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
    /// Synchronised BatchNorm for as long as the run lives (`--sync-bn`).
    sync_bn: Option<crate::dist::SyncBatchNormScope>,
}

/// The training loader (augmented, cutout 16 by default) and the test loader; each rank reads
/// its shard of every epoch and takes its share of the global batch (config.json records the
/// global batch, so a run resumed at another world size keeps it).
fn open_loaders(
    o: &TrainOptions,
    data: &Data,
    device: Device,
    parallel: Option<&DataParallel>,
) -> Result<(Loader, Loader)> {
    let (rank, world_size) = parallel.map_or((0, 1), |p| (p.rank(), p.world_size()));
    let batch = o.per_rank_batch(world_size)?;
    if world_size > 1 {
        tracing::info!("global batch {} = {world_size} ranks × {batch} images", o.batch_size);
    }
    let train_opts =
        LoaderOptions::train(batch).device(device).drop_last(true).default_cutout(16).shard(rank, world_size);
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
    Ok((train_loader, eval_loader))
}

/// The network, initialised from the seed, and its SGD.
fn build_network(
    config: &NetworkConfig,
    o: &TrainOptions,
    device: Device,
) -> Result<(nn::VarStore, Network, Sgd)> {
    tch::manual_seed(o.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut network = Network::new(&vs.root(), config.clone())?;
    network.channels_last = crate::ops::channels_last_for(device, o.amp);
    let mut sgd = Sgd::new(trainable_params(&vs), o.lr, o.momentum, o.weight_decay, false);
    if o.no_bias_decay {
        sgd.exempt_from_decay(exempt_from_decay);
    }
    Ok((vs, network, sgd))
}

/// What a training pass measured, over every rank.
struct TrainPass {
    loss: f64,
    top1: f64,
    top5: f64,
    images: usize,
    steps: usize,
}

/// The epoch's line in the log.
fn log_epoch(m: &EpochMetrics, epochs: usize) {
    let val = match (m.val_loss, m.val_top1, m.val_top5) {
        (Some(loss), Some(top1), Some(top5)) => {
            format!(", val loss {loss:.4} top-1 {:.2}% top-5 {:.2}%", top1 * 100.0, top5 * 100.0)
        }
        _ => String::new(),
    };
    tracing::info!(
        "epoch {}/{}: lr {:.5}, train loss {:.4} top-1 {:.2}%{val}, {:.0} images/s",
        m.epoch,
        epochs,
        m.lr,
        m.train_loss,
        m.train_top1 * 100.0,
        m.images_per_sec
    );
}

impl Trainer {
    fn new(
        mut config: TrainConfig,
        data_args: &DataArgs,
        run_dir: &Path,
        device: Device,
        quiet: bool,
        parallel: Option<DataParallel>,
    ) -> Result<Self> {
        let o = config.options.clone();
        let data = Data::open(data_args, !quiet)?;
        config.network.check_input_size(data.info().input_size as i64, true)?;
        // The classes come from the data set (begin() records them in config.json).
        config.network.num_classes = data.info().num_classes as i64;
        let (train_loader, eval_loader) = open_loaders(&o, &data, device, parallel.as_ref())?;
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let (vs, network, sgd) = build_network(&config.network, &o, device)?;
        Ok(Trainer {
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
            sync_bn: None,
        })
    }

    /// Takes the run directory (the writer of a new run clears what a forced-over run left and
    /// writes config.json; every writer removes temporary files a killed process left), loads
    /// the checkpoint to resume from, and joins the other ranks.
    fn begin(&mut self, start: StartMode) -> Result<()> {
        let main = self.is_main();
        if main {
            run::remove_leftovers(&self.run_dir);
            if start != StartMode::Resume {
                run::claim(&self.run_dir, start, &RUN_FILES, &[])?;
                let _ = std::fs::remove_file(self.run_dir.join(crate::eval::CONFUSION_SVG));
                write_config(&self.run_dir, &self.config)?;
            } else {
                // The data set's class count, recorded once it is known.
                let recorded: TrainConfig = run::read_config(&self.run_dir, "training run")?;
                if recorded.network.num_classes != self.config.network.num_classes {
                    write_config(&self.run_dir, &self.config)?;
                }
            }
        }
        // Other ranks of a new run start from scratch (rank 0 may be clearing an old run in
        // the same directory meanwhile); start() checks they all agree on where they are.
        if main || start == StartMode::Resume {
            self.restore(main)?;
        }
        self.join_ranks()
    }

    /// Where an interrupted run stands, for its message: the epoch in progress, which a resume
    /// redoes from the checkpoint before it.
    fn where_it_stands(&self) -> String {
        format!(
            "training stopped in epoch {} of {}, which a resume redoes from the last checkpoint",
            self.state.epoch + 1,
            self.config.options.epochs
        )
    }

    /// Data-parallel runs: every rank takes rank 0's weights and optimizer state, hooks the
    /// gradient all-reduce into the backward pass and, if asked, synchronises BatchNorm.
    fn join_ranks(&mut self) -> Result<()> {
        let Some(p) = self.parallel.clone() else { return Ok(()) };
        let optimizer: Vec<Tensor> = self.sgd.state().into_iter().map(|(_, t)| t).collect();
        p.start(&self.vs, &optimizer, self.state.epoch)?;
        if self.config.options.sync_bn {
            self.sync_bn = Some(crate::dist::SyncBatchNormScope::new(Arc::clone(p.group())));
        }
        self.grad_sync =
            Some(crate::dist::GradSync::new(Arc::clone(p.group()), self.sgd.params(), p.bucket_bytes())?);
        Ok(())
    }

    fn progress(&self, len: u64, prefix: String) -> ProgressBar {
        run::progress_bar(self.quiet, len, prefix, "{per_sec}, ")
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
        let pass = self.train_pass(&o)?;
        let train_seconds = start.elapsed().as_secs_f64();
        if !pass.loss.is_finite() {
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
            train_loss: pass.loss,
            train_top1: pass.top1,
            train_top5: pass.top5,
            train_images: Some(pass.images),
            steps: Some(pass.steps),
            val_loss: eval.as_ref().map(|r| r.loss),
            val_top1: eval.as_ref().map(|r| r.top1),
            val_top5: eval.as_ref().map(|r| r.top5),
            val_images: eval.as_ref().map(|r| r.images),
            images_per_sec: pass.images as f64 / train_seconds.max(1e-9),
            epoch_time_s: epoch_seconds,
        };
        log_epoch(&metrics, o.epochs);
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

    /// One pass over the training shard: a step per batch, then (data-parallel) the means over
    /// every rank and rank 0's BatchNorm statistics everywhere.
    fn train_pass(&mut self, o: &TrainOptions) -> Result<TrainPass> {
        let e = self.state.epoch;
        let batches = self.train_loader.epoch(e as u64);
        let bar = self.progress(batches.batch_count() as u64, format!("epoch {}/{}", e + 1, o.epochs));
        let mut totals = Totals::new(self.config.network.num_classes, false, self.device);
        let mut steps = 0;
        for (i, batch) in batches.enumerate() {
            crate::run::interrupt::check()?;
            let (images, labels) = batch?;
            let (images, labels) = (to_device(&images, self.device), to_device(&labels, self.device));
            let (loss, logits) = train_step(
                &self.network,
                &mut self.sgd,
                &images,
                &labels,
                o,
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
        let (mut means, mut images) = (totals.read(), totals.images);
        if let Some(p) = &self.parallel {
            (means, images) = p.reduce_means(means, totals.images)?;
            // Rank 0's BatchNorm statistics everywhere, then the weights must agree.
            p.end_epoch(&self.vs, e + 1)?;
        }
        bar.finish_and_clear();
        let (loss, top1, top5) = means;
        Ok(TrainPass { loss, top1, top5, images, steps })
    }

    /// Only rank 0 (or a single process) writes files.
    fn is_main(&self) -> bool {
        crate::run::is_writer(self.parallel.as_ref())
    }

    /// Evaluates on the validation set (this rank's shard, summed over the ranks).
    fn validate(&self, what: &str) -> Result<EvalResult> {
        let bar = self.progress(self.eval_loader.samples_per_epoch() as u64, what.into());
        let amp = self.config.options.amp;
        let r = evaluate(&self.network, &self.eval_loader, &self.class_names, self.device, amp, &bar)?;
        bar.finish_and_clear();
        match &self.parallel {
            Some(p) => crate::eval::reduce_over_ranks(p, r),
            None => Ok(r),
        }
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
    let out = crate::amp::autocast(device, options.amp, || network.forward_t(images, true))?;
    let mut loss = classification_loss(&out.logits, labels, options.label_smooth);
    if let Some(aux) = &out.auxiliary {
        loss += classification_loss(aux, labels, options.label_smooth) * options.auxiliary_weight;
    }
    if let Some(sync) = sync {
        let backward = sync.backward(|| loss.f_backward());
        // A synchronised BatchNorm's failed collective surfaces here (a layer returns none).
        crate::dist::SyncBatchNormScope::check_active()?;
        backward?;
    } else {
        loss.backward();
    }
    let _grad_norm = clip_grad_norm(sgd.params(), options.grad_clip)?;
    sgd.step()?;
    Ok((loss.detach(), out.logits.detach().to_kind(Kind::Float)))
}

#[cfg(test)]
mod tests;
