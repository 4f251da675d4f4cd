//! Every number of a search, its defaults (the released code's) and their checks.
use super::*;

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

pub use crate::data::DEFAULT_SEED;

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

    /// Rejects values that cannot work, naming the option: the ranges `cnas search` checks when
    /// it parses (for library callers and the options a resumed run reads back), and what
    /// involves two options.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadOption(m));
        // i128 holds every i64 and usize exactly.
        let whole = [
            ("--init-channels", self.init_channels as i128, 1),
            ("--layers", self.layers as i128, 1),
            ("--nodes", self.nodes as i128, 1),
            ("--controller-hidden", self.controller_hidden as i128, 1),
            ("--batch-size", self.batch_size as i128, 2), // BatchNorm needs two images
            ("--derive-rounds", self.derive_rounds as i128, 1),
            ("--derive-samples", self.derive_samples as i128, 1),
            ("--derive-images", self.derive_images as i128, 1),
            ("--derive-batch-size", self.derive_batch() as i128, 2),
            ("--controller-steps", self.controller_steps.unwrap_or(1) as i128, 1),
            ("--max-images", self.max_images.unwrap_or(1) as i128, 1),
        ];
        for (name, v, min) in whole {
            if v < min {
                return bad(format!("{name} {v} must be at least {min}"));
            }
        }
        if self.epochs == 0 && self.warmup_epochs == 0 {
            return bad("a stage needs at least one epoch: --warmup-epochs and --epochs are both 0".into());
        }
        // Comparisons are false for NaN, so each range refuses it; infinities are refused too.
        let positive: fn(f64) -> bool = |v| v > 0.0;
        let non_negative: fn(f64) -> bool = |v| v >= 0.0;
        let below_one: fn(f64) -> bool = |v| (0.0..1.0).contains(&v);
        let ranges = [
            ("--lr", Some(self.lr), positive, "above 0"),
            ("--controller-lr", Some(self.controller_lr), positive, "above 0"),
            ("--grad-clip", self.grad_clip, positive, "above 0"),
            ("--controller-grad-clip", self.controller_grad_clip, positive, "above 0"),
            ("--temperature", self.temperature, positive, "above 0"),
            ("--tanh-constant", self.tanh_constant, positive, "above 0"),
            ("--weight-decay", Some(self.weight_decay), non_negative, "at least 0"),
            ("--controller-weight-decay", Some(self.controller_weight_decay), non_negative, "at least 0"),
            ("--entropy-weight", Some(self.entropy_weight), non_negative, "at least 0"),
            ("--momentum", Some(self.momentum), below_one, "in [0, 1)"),
            ("--baseline-decay", Some(self.baseline_decay), below_one, "in [0, 1)"),
        ];
        for (name, value, ok, range) in ranges {
            if let Some(v) = value.filter(|&v| !(v.is_finite() && ok(v))) {
                return bad(format!("{name} {v} must be a finite number {range}"));
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
