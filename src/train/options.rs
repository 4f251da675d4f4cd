//! Every number of a training run, the paper's recipe as the released code ran it, and the
//! checks.
use serde::{Deserialize, Serialize};

use super::{Schedule, SchedulerKind};
use crate::data::DatasetKind;
use crate::error::{Error, Result};

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

    /// Rejects values that cannot work, naming the option: the ranges `cnas train` checks when
    /// it parses (for library callers and the options a resumed run reads back), and what
    /// involves two options.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadOption(m));
        let whole = [
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 2), // BatchNorm needs two samples
            ("--eval-every", self.eval_every, 1),
            ("--step-size", self.step_size, 1),
        ];
        for (name, v, min) in whole {
            if v < min {
                return bad(format!("{name} {v} must be at least {min}"));
            }
        }
        for (name, v) in [("--max-images", self.max_images), ("--max-eval-images", self.max_eval_images)] {
            if v == Some(0) {
                return bad(format!("{name} must be at least 1"));
            }
        }
        // Comparisons are false for NaN, so each range refuses it; infinities are refused too.
        let positive: fn(f64) -> bool = |v| v > 0.0;
        let non_negative: fn(f64) -> bool = |v| v >= 0.0;
        let below_one: fn(f64) -> bool = |v| (0.0..1.0).contains(&v);
        let ranges = [
            ("--lr", self.lr, positive, "above 0"),
            ("--lr-min", self.lr_min, non_negative, "at least 0"),
            ("--momentum", self.momentum, below_one, "in [0, 1)"),
            ("--weight-decay", self.weight_decay, non_negative, "at least 0"),
            ("--gamma", self.gamma, positive, "above 0"),
            ("--label-smooth", self.label_smooth, below_one, "in [0, 1)"),
            ("--auxiliary-weight", self.auxiliary_weight, non_negative, "at least 0"),
            ("--drop-path-prob", self.drop_path_prob, below_one, "in [0, 1)"),
            ("--grad-clip", self.grad_clip, positive, "above 0"),
        ];
        for (name, v, ok, range) in ranges {
            if !(v.is_finite() && ok(v)) {
                return bad(format!("{name} {v} must be a finite number {range}"));
            }
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
