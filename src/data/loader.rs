//! The batch loader: worker threads turn sample indices into `N × 3 × H × W` image tensors and
//! `N` label tensors ahead of the training loop.
//!
//! Order of work, per epoch:
//! 1. the loader's index list (a whole data set or a split of it) is permuted with a stream keyed
//!    by (seed, epoch) when shuffling; every rank computes the same permutation;
//! 2. the permutation is cut to a multiple of `world_size` (the last `n % world_size` entries of
//!    this epoch's order sit the epoch out) and rank `r` takes positions `r, r + world_size, …`,
//!    so every rank gets the same count and no index is seen twice in an epoch; with
//!    `every_sample` (evaluation) nothing is cut and the first `n % world_size` ranks get one
//!    sample more, so the ranks together see every sample exactly once;
//! 3. the rank's list is cut into batches of `batch_size` (the last, partial one kept or dropped
//!    as asked);
//! 4. batch `b` is built by worker `b % workers` and handed over through that worker's bounded
//!    queue, so batches arrive in order and at most `workers × prefetch` wait in memory;
//! 5. sample `i` of epoch `e` draws its augmentation from a stream keyed by (seed, e, i): the
//!    same seed gives the same batches whatever the number of workers.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Device, Tensor};

use super::rng::{self, Purpose, SampleRng};
use crate::error::{Error, Result};

/// Something that can prepare sample `index` as a normalised `3 × H × W` image.
///
/// Implementations must be cheap to call from several threads at once and must take every random
/// choice from `rng` (the sample's own stream), which keeps batches independent of scheduling.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(height, width)` of every prepared image.
    fn image_size(&self) -> (usize, usize);

    /// Writes sample `index` into `out` (`3 × H × W` floats) and returns its label. An error
    /// must name the file or record at fault.
    fn get(&self, index: usize, rng: &mut SampleRng, out: &mut [f32]) -> Result<i64>;
}

/// How a [`Loader`] cuts, orders and prepares an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Permute the samples every epoch (from `seed` and the epoch number).
    pub shuffle: bool,
    /// Leave out the last batch of an epoch when it is shorter than `batch_size`.
    pub drop_last: bool,
    pub seed: u64,
    /// Threads preparing batches; 0 prepares them in the consuming thread (for debugging).
    pub workers: usize,
    /// Batches each worker may hold ready ahead of the consumer.
    pub prefetch: usize,
    pub rank: usize,
    pub world_size: usize,
    /// Shard without leaving out the last `n % world_size` samples: ranks may then get one
    /// sample (and one batch) more than others, which suits evaluation (totals are summed once
    /// at the end) but not training (every step's collectives need every rank).
    pub every_sample: bool,
    /// Pin batches in page-locked memory for fast copies to this CUDA device. Ignored when the
    /// device is not CUDA or libtorch sees no GPU.
    pub device: Device,
    /// Leave out images that cannot be read (warning for each, count at the end of the epoch)
    /// instead of failing; their batches come out shorter.
    pub skip_bad_images: bool,
}

impl LoaderConfig {
    /// Defaults: no shuffle, keep the last batch, seed 0, one worker per core, two batches of
    /// look-ahead per worker, one rank, CPU, fail on bad images.
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: default_workers(),
            prefetch: 2,
            rank: 0,
            world_size: 1,
            every_sample: false,
            device: Device::Cpu,
            skip_bad_images: false,
        }
    }
}

/// Number of cores, the default worker count.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// One loaded batch: normalised images `N × 3 × H × W` (f32) and labels `N` (i64).
pub type Batch = (Tensor, Tensor);

/// Batches of a [`Source`] restricted to an index list; see the module docs for the order.
#[derive(Clone)]
pub struct Loader {
    source: Arc<dyn Source>,
    indices: Arc<Vec<usize>>,
    cfg: LoaderConfig,
    pin: bool,
    skipped_total: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.indices.len())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// A loader over `indices` of `source` (all of it when `None`).
    pub fn new(source: Arc<dyn Source>, indices: Option<Vec<usize>>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::BadOption("batch size must be at least 1".into()));
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(Error::BadOption(format!(
                "rank {} does not exist in a world of {} process(es)",
                cfg.rank, cfg.world_size
            )));
        }
        let n = source.len();
        let indices = match indices {
            Some(list) => {
                if let Some(bad) = list.iter().find(|&&i| i >= n) {
                    return Err(Error::BadOption(format!(
                        "sample index {bad} is past the end of a set of {n}"
                    )));
                }
                list
            }
            None => (0..n).collect(),
        };
        let pin = cfg.device.is_cuda() && tch::Cuda::is_available();
        Ok(Loader {
            source,
            indices: Arc::new(indices),
            cfg,
            pin,
            skipped_total: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The same loader over a seeded subset of at most `max_samples` of its samples (kept in
    /// their original order): small, quick runs on a part of a data set. The subset is drawn
    /// from the loader's seed, so it is not biased towards early files or early classes.
    pub fn limited(&self, max_samples: usize) -> Result<Self> {
        if max_samples == 0 {
            return Err(Error::BadOption("a loader needs at least one sample".into()));
        }
        let mut indices: Vec<usize> = self.indices.as_ref().clone();
        if indices.len() > max_samples {
            // Pick positions, then keep them in order, so the subset keeps the loader's order.
            let mut positions: Vec<usize> = (0..indices.len()).collect();
            rng::shuffle(&mut positions, &mut rng::stream(self.cfg.seed, Purpose::Subset, 0, 0));
            positions.truncate(max_samples);
            positions.sort_unstable();
            indices = positions.into_iter().map(|p| indices[p]).collect();
        }
        Ok(Loader { indices: Arc::new(indices), ..self.clone() })
    }

    /// The same loader over its first `n` samples, in order (e.g. the first N test images).
    pub fn first(&self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::BadOption("a loader needs at least one sample".into()));
        }
        let indices: Vec<usize> = self.indices.iter().copied().take(n).collect();
        Ok(Loader { indices: Arc::new(indices), ..self.clone() })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// `[3, H, W]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        let (h, w) = self.source.image_size();
        [3, h, w]
    }

    /// Samples of the loader's whole set, over every rank.
    pub fn total_samples(&self) -> usize {
        self.indices.len()
    }

    /// Samples this rank sees in one epoch.
    pub fn samples_per_epoch(&self) -> usize {
        let (n, ws) = (self.indices.len(), self.cfg.world_size);
        if self.cfg.every_sample {
            n.saturating_sub(self.cfg.rank).div_ceil(ws)
        } else {
            n / ws
        }
    }

    /// Batches this rank gets in one epoch (the same on every rank unless `every_sample`).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples_per_epoch();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// Images left out as unreadable so far, over all epochs (with `skip_bad_images`).
    pub fn skipped_total(&self) -> usize {
        self.skipped_total.load(Ordering::Relaxed)
    }

    /// The data set indices this rank sees in `epoch`, in order (before batching).
    pub fn epoch_indices(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = self.indices.as_ref().clone();
        if self.cfg.shuffle {
            let mut r = rng::stream(self.cfg.seed, Purpose::Shuffle, epoch, 0);
            rng::shuffle(&mut order, &mut r);
        }
        let ws = self.cfg.world_size;
        if !self.cfg.every_sample {
            order.truncate(order.len() - order.len() % ws);
        }
        order.into_iter().skip(self.cfg.rank).step_by(ws).collect()
    }

    fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mine = self.epoch_indices(epoch);
        let bs = self.cfg.batch_size;
        mine.chunks(bs).filter(|c| !self.cfg.drop_last || c.len() == bs).map(<[usize]>::to_vec).collect()
    }

    /// The batches of `epoch`, prepared by the worker threads. Iterate it:
    /// `for batch in loader.epoch(e) { let (images, labels) = batch?; … }`. After an error the
    /// iterator ends; dropping it early stops the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let batches = Arc::new(self.epoch_batches(epoch));
        let ctx = Arc::new(BatchContext {
            source: Arc::clone(&self.source),
            seed: self.cfg.seed,
            epoch,
            skip_bad: self.cfg.skip_bad_images,
            pin: self.pin.then_some(self.cfg.device),
            skipped: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let workers = self.cfg.workers.min(batches.len());
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
            let (ctx, batches) = (Arc::clone(&ctx), Arc::clone(&batches));
            let spawned = std::thread::Builder::new()
                .name(format!("cnas-loader-{w}"))
                .spawn(move || worker(w, workers, &ctx, &batches, tx));
            match spawned {
                Ok(h) => {
                    receivers.push(rx);
                    handles.push(Some(h));
                }
                // Out of threads: the ones we have (or the consumer itself) do the work.
                Err(err) => {
                    tracing::warn!("could not start loader worker {w}: {err}");
                    break;
                }
            }
        }
        if receivers.len() < workers {
            // Batches were dealt to the missing workers too; start over without threads.
            ctx.stop.store(true, Ordering::Relaxed);
            drop(receivers);
            handles.into_iter().flatten().for_each(|h| {
                let _ = h.join();
            });
            receivers = Vec::new();
            handles = Vec::new();
            ctx.stop.store(false, Ordering::Relaxed);
            ctx.skipped.store(0, Ordering::Relaxed);
        }
        Epoch {
            batches,
            next: 0,
            ctx,
            receivers,
            handles,
            finished: false,
            skipped_total: Arc::clone(&self.skipped_total),
        }
    }
}

struct BatchContext {
    source: Arc<dyn Source>,
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    pin: Option<Device>,
    skipped: AtomicUsize,
    stop: AtomicBool,
}

/// `None`: every image of the batch was skipped.
type Prepared = Result<Option<Batch>>;

fn worker(w: usize, workers: usize, ctx: &BatchContext, batches: &[Vec<usize>], tx: SyncSender<Prepared>) {
    let mut buf = Vec::new();
    for batch in batches.iter().skip(w).step_by(workers) {
        if ctx.stop.load(Ordering::Relaxed) {
            return;
        }
        let prepared = make_batch(ctx, batch, &mut buf);
        let failed = prepared.is_err();
        if tx.send(prepared).is_err() || failed {
            return; // consumer gone, or it will stop at this error
        }
    }
}

fn make_batch(ctx: &BatchContext, indices: &[usize], buf: &mut Vec<f32>) -> Prepared {
    let (h, w) = ctx.source.image_size();
    let per = 3 * h * w;
    buf.resize(indices.len() * per, 0.0);
    let mut labels = Vec::with_capacity(indices.len());
    for &index in indices {
        if ctx.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = labels.len();
        let mut r = rng::sample_rng(ctx.seed, ctx.epoch, index);
        match ctx.source.get(index, &mut r, &mut buf[n * per..(n + 1) * per]) {
            Ok(label) => labels.push(label),
            Err(err) if ctx.skip_bad && err.is_user_error() => {
                tracing::warn!("skipping unreadable image: {err}");
                ctx.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => return Err(err),
        }
    }
    let n = labels.len();
    if n == 0 {
        return Ok(None);
    }
    let images = Tensor::f_from_slice(&buf[..n * per])?.f_view([n as i64, 3, h as i64, w as i64])?;
    let labels = Tensor::f_from_slice(&labels)?;
    match ctx.pin {
        Some(device) => Ok(Some((images.f_pin_memory(device)?, labels.f_pin_memory(device)?))),
        None => Ok(Some((images, labels))),
    }
}

/// The batches of one epoch, in order; see [`Loader::epoch`].
pub struct Epoch {
    batches: Arc<Vec<Vec<usize>>>,
    next: usize,
    ctx: Arc<BatchContext>,
    receivers: Vec<Receiver<Prepared>>,
    handles: Vec<Option<JoinHandle<()>>>,
    finished: bool,
    skipped_total: Arc<AtomicUsize>,
}

impl Epoch {
    /// Images left out as unreadable so far in this epoch.
    pub fn skipped(&self) -> usize {
        self.ctx.skipped.load(Ordering::Relaxed)
    }

    /// Batches this epoch yields at most.
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    fn take(&mut self, b: usize) -> Option<Prepared> {
        if self.receivers.is_empty() {
            let mut buf = Vec::new();
            return Some(make_batch(&self.ctx, &self.batches[b], &mut buf));
        }
        let w = b % self.receivers.len();
        match self.receivers[w].recv() {
            Ok(p) => Some(p),
            Err(_) => {
                // The worker hung up without sending: it panicked. Surface its panic here.
                if let Some(Err(payload)) = self.handles[w].take().map(JoinHandle::join) {
                    std::panic::resume_unwind(payload);
                }
                None
            }
        }
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let skipped = self.skipped();
        self.skipped_total.fetch_add(skipped, Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!("{skipped} unreadable image(s) left out of epoch {}", self.ctx.epoch);
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished && self.next < self.batches.len() {
            let b = self.next;
            self.next += 1;
            match self.take(b) {
                Some(Ok(Some(batch))) => return Some(Ok(batch)),
                Some(Ok(None)) => continue, // all of it skipped
                Some(Err(err)) => {
                    self.finish();
                    return Some(Err(err));
                }
                None => break,
            }
        }
        self.finish();
        None
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::Relaxed);
        // Hanging up first unblocks workers waiting on a full queue.
        self.receivers.clear();
        for h in self.handles.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
    }
}
