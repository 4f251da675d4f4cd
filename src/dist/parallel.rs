//! Data-parallel training and search over the ranks of a [`ProcessGroup`] (DDP's recipe, by
//! hand):
//!
//! - every rank builds the same network, then takes rank 0's weights and buffers
//!   ([`DataParallel::start`]), so they start identical even if their initialisations differ;
//! - every rank takes its shard of each epoch (the loader's `rank`/`world_size`: rank `r` gets
//!   positions `r, r + k, …` of the epoch's shuffled order) and its share of the global batch,
//!   `--batch-size / k` images per step;
//! - the gradients are averaged over the ranks in flat buckets (25 MiB, `--bucket-mb`), each
//!   all-reduced as soon as autograd has produced all of its gradients, while the backward pass
//!   goes on ([`crate::dist::GradSync`]); clipping and the optimizer step then do the same
//!   thing on every rank;
//! - BatchNorm statistics stay per rank unless `--sync-bn` ([`crate::dist::sync_batch_norm`]);
//!   at the end of every epoch rank 0's running statistics are copied to all ranks, so the
//!   network every rank validates and rank 0 saves is the same;
//! - epoch totals and validation are summed over the ranks, so logs and metrics describe the
//!   whole global batch and the whole validation set;
//! - every epoch a checksum of the weights must agree on every rank (an error otherwise).
use std::sync::Arc;

use tch::{nn, Tensor};

use super::ProcessGroup;
use crate::error::Result;

/// Bytes per gradient bucket by default (PyTorch DDP's 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// This process's part in a data-parallel run.
#[derive(Debug, Clone)]
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    bucket_bytes: usize,
}

impl DataParallel {
    pub fn new(group: Arc<ProcessGroup>) -> Self {
        DataParallel { group, bucket_bytes: BUCKET_BYTES }
    }

    /// Gradient buckets of at most about `bytes` (at least one tensor each).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Only rank 0 writes files, logs metrics and draws progress bars.
    pub fn is_main(&self) -> bool {
        self.group.is_main()
    }

    /// At the start (after a resume): every rank must be at the same epoch (they read the same
    /// checkpoint; a rank that cannot see it would start over), then all take rank 0's weights,
    /// buffers and optimizer state.
    pub fn start(&self, vs: &nn::VarStore, optimizer_state: &[Tensor], epoch: usize) -> Result<()> {
        self.group.check_same(
            "the epoch to start from (every rank must see the same run directory and last.safetensors)",
            &[epoch as i64, optimizer_state.len() as i64],
        )?;
        let mut tensors = sorted_variables(vs);
        tensors.extend(optimizer_state.iter().map(Tensor::shallow_clone));
        self.group.broadcast_from_main(&tensors, self.bucket_bytes)?;
        Ok(())
    }

    /// Averages the gradients of `params` over the ranks, in place.
    pub fn average_gradients(&self, params: &[Tensor]) -> Result<()> {
        self.group.average_gradients(params, self.bucket_bytes)?;
        Ok(())
    }

    /// End of an epoch: rank 0's BatchNorm running statistics (and any other buffer) to every
    /// rank, then a check that the weights are bit-identical everywhere. Returns the checksum.
    pub fn end_epoch(&self, vs: &nn::VarStore, epoch: usize) -> Result<u32> {
        let all = sorted_variables(vs);
        let (params, buffers): (Vec<Tensor>, Vec<Tensor>) = all.into_iter().partition(Tensor::requires_grad);
        self.group.broadcast_from_main(&buffers, self.bucket_bytes)?;
        let crc = crate::dist::checksum(&params);
        tracing::info!("rank {} epoch {epoch}: weights checksum {crc:08x}", self.rank());
        self.group.check_same(&format!("the weights after epoch {epoch}"), &[i64::from(crc)])?;
        Ok(crc)
    }

    /// Sums of per-rank (mean loss, top-1, top-5) over `images` each into global means and the
    /// global image count.
    pub fn reduce_means(
        &self,
        (loss, top1, top5): (f64, f64, f64),
        images: usize,
    ) -> Result<((f64, f64, f64), usize)> {
        let n = images as f64;
        let s = self.group.sum_f64(&[loss * n, top1 * n, top5 * n, n])?;
        let total = s[3].max(1.0);
        Ok(((s[0] / total, s[1] / total, s[2] / total), s[3] as usize))
    }
}

/// Every variable of `vs` (weights and buffers), in name order: the same order on every rank.
pub fn sorted_variables(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, t)| t).collect()
}
