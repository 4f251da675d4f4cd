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
