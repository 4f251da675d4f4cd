//! One weight step of the supernet (the released and the sparse update rule) and one
//! REINFORCE step of the controllers.
use super::*;

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
    if !rule.sparse && rule.grad_clip.is_none() && parallel.is_none() {
        // The released rule in one process needs no list of the pair's parameters.
        sgd.step()?;
        return Ok((loss.detach(), logits.detach()));
    }
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

/// A pair from the controllers in `stage`: the normal cell's sample, then the reduction
/// cell's (the order in which they draw from `rng`).
pub fn sample_pair(
    [normal, reduce]: [&Controller; 2],
    rng: &mut ChaCha8Rng,
    stage: &Stage,
    primitives: &[Primitive],
) -> (CellSample, CellSample) {
    let n = normal.sample(rng, &stage.allowed, stage.searched_nodes, primitives);
    let r = reduce.sample(rng, &stage.allowed, stage.searched_nodes, primitives);
    (n, r)
}

/// One REINFORCE update of both controllers: sample a pair, score it on a held-out batch,
/// reward minus the moving-average baseline, entropy bonus, optional clipping, Adam. With `parallel`
/// (one rank of a data-parallel run) the reward is the mean of the
/// ranks' accuracies on their own held-out batches, so every rank makes the same update and
/// the controllers stay identical.
#[allow(clippy::too_many_arguments)]
pub fn controller_step(
    supernet: &Supernet,
    controllers: [&Controller; 2],
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
    let (n, r) = sample_pair(controllers, rng, stage, primitives);
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

/// A synchronised BatchNorm's failed collective (a layer cannot return it) as an error: the
/// search's scope, active on this thread.
pub(super) fn sync_batch_norm_ok() -> Result<()> {
    Ok(crate::dist::SyncBatchNormScope::check_active()?)
}
