//! One epoch of weight training (architectures drawn on a thread of their own) and one pass of
//! controller training.
use super::*;

/// How many architecture pairs the sampling thread may draw ahead of the weight steps.
pub(super) const PAIRS_AHEAD: usize = 4;

/// Draws architecture pairs for a stage: uniformly, or from (frozen copies of) the normal and
/// reduction controllers. Owns everything it needs, so it can run on a thread of its own.
pub(super) struct PairSampler {
    pub(super) controllers: Option<[Controller; 2]>,
    pub(super) stage: Stage,
    pub(super) primitives: Vec<Primitive>,
}

impl PairSampler {
    pub(super) fn draw(&self, rng: &mut ChaCha8Rng) -> (Cell, Cell) {
        let (allowed, nodes, prims) = (&self.stage.allowed, self.stage.searched_nodes, &self.primitives);
        match &self.controllers {
            None => (uniform_cell(rng, allowed, nodes, prims), uniform_cell(rng, allowed, nodes, prims)),
            Some([normal, reduce]) => {
                let (n, r) = tch::no_grad(|| sample_pair([normal, reduce], rng, &self.stage, prims));
                (n.cell, r.cell)
            }
        }
    }

    /// Sends `count` pairs in order; stops early when the receiver is gone.
    pub(super) fn send(
        &self,
        rng: &mut ChaCha8Rng,
        count: usize,
        tx: std::sync::mpsc::SyncSender<(Cell, Cell)>,
    ) {
        for _ in 0..count {
            if tx.send(self.draw(rng)).is_err() {
                return;
            }
        }
    }
}

/// Totals of one epoch, accumulated on the device and read once at its end.
pub(super) struct Totals {
    pub(super) loss: Tensor,
    pub(super) correct: Tensor,
    pub(super) images: usize,
}

impl Totals {
    pub(super) fn new(device: Device) -> Self {
        Totals {
            loss: Tensor::zeros([], (Kind::Float, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            images: 0,
        }
    }

    pub(super) fn add(&mut self, loss: &Tensor, logits: &Tensor, labels: &Tensor) {
        let n = labels.size()[0];
        self.loss += loss.detach() * n as f64;
        self.correct += logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64);
        self.images += n as usize;
    }

    /// (mean loss, accuracy): the one host sync of an epoch.
    pub(super) fn read(&self) -> (f64, f64) {
        let n = self.images.max(1) as f64;
        (self.loss.double_value(&[]) / n, self.correct.double_value(&[]) / n)
    }
}

impl Search {
    /// What draws architecture pairs in the current stage: uniform or from frozen copies of
    /// the controllers.
    pub(super) fn pair_sampler(&self, uniform: bool) -> PairSampler {
        PairSampler {
            controllers: (!uniform)
                .then(|| [self.normal_controller.frozen_copy(), self.reduce_controller.frozen_copy()]),
            stage: self.stages[self.position.stage].clone(),
            primitives: self.primitives.clone(),
        }
    }

    /// One epoch of weight training on the weight split, with uniform (warm-up) or controller
    /// samples, one architecture pair per batch.
    pub(super) fn train_weights(&mut self, uniform: bool) -> Result<()> {
        let phase = if uniform { Phase::Warmup } else { Phase::Search };
        let p = self.position;
        let mut rng = stream(self.options.seed, p.stage as u64, phase.id(), p.epoch as u64);
        let epoch = self.weights_loader.epoch(self.loader_epoch(phase));
        let (warmup, epochs) = self.phase_epochs();
        let total_epochs = if uniform { warmup } else { epochs };
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
                crate::run::interrupt::check()?;
                let (images, labels) = batch?;
                let (images, labels) = (to_device(&images, self.device), to_device(&labels, self.device));
                let (normal, reduce) = pairs
                    .recv()
                    .map_err(|_| Error::Internal("the architecture sampler stopped early".into()))?;
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
        let epoch = WeightsEpoch {
            epoch: p.epoch + 1,
            loss,
            acc,
            lr: self.sgd.lr,
            images,
            images_per_s: images as f64 / secs,
            time_s: secs,
        };
        self.log_metrics(if uniform { SearchRecord::Warmup(epoch) } else { SearchRecord::Weights(epoch) })
    }

    /// REINFORCE updates per search epoch: `--controller-steps`, or one per held-out batch.
    pub(super) fn controller_steps(&self) -> usize {
        self.options.controller_steps.unwrap_or_else(|| self.heldout_loader.batches_per_epoch())
    }

    /// `controller_steps` REINFORCE updates of both controllers on held-out batches.
    pub(super) fn train_controllers(&mut self) -> Result<()> {
        let p = self.position;
        let mut rng = stream(self.options.seed, p.stage as u64, 4, p.epoch as u64);
        let stage = self.stages[p.stage].clone();
        let steps = self.controller_steps();
        let what = format!(
            "stage {}/{} controller {}/{}",
            p.stage + 1,
            self.stages.len(),
            p.epoch + 1,
            self.options.epochs
        );
        let bar = self.progress(steps as u64, what);
        let start = Instant::now();
        let mut sums = ControllerSums::default();
        let mut pass = 0u64;
        let mut batches = self.heldout_loader.epoch(self.loader_epoch(Phase::Search));
        for _ in 0..steps {
            crate::run::interrupt::check()?;
            let (images, labels) = self.next_heldout_batch(&mut batches, &mut pass)?;
            sums.images += labels.size()[0] as usize;
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
            sums.add(&step);
            bar.inc(1);
            bar.set_message(format!("reward {:.3}", sums.reward / bar.position() as f64));
        }
        bar.finish_and_clear();
        self.check_replicas("a controller epoch")?;
        if let Some(p) = &self.parallel {
            sums.images = p.group().sum_f64(&[sums.images as f64])?[0] as usize;
        }
        self.log_controller_epoch(&sums, steps, start.elapsed().as_secs_f64())
    }

    /// The next held-out batch on the device; past the split's end, the split again,
    /// reshuffled (more steps than held-out batches).
    fn next_heldout_batch(&self, batches: &mut Epoch, pass: &mut u64) -> Result<(Tensor, Tensor)> {
        let batch = match batches.next() {
            Some(b) => b,
            None => {
                *pass += 1;
                *batches = self.heldout_loader.epoch(self.loader_epoch(Phase::Search) | (*pass << 24));
                batches.next().ok_or_else(|| Error::BadOption("the held-out split yields no batch".into()))?
            }
        };
        let (images, labels) = batch?;
        Ok((to_device(&images, self.device), to_device(&labels, self.device)))
    }

    fn log_controller_epoch(&mut self, sums: &ControllerSums, steps: usize, secs: f64) -> Result<()> {
        let p = self.position;
        let n = steps.max(1) as f64;
        tracing::info!(
            "stage {} controller epoch {}: reward {:.4}, baseline {:.4}, entropy {:.3} (nodes) {:.3} (ops)",
            p.stage + 1,
            p.epoch + 1,
            sums.reward / n,
            self.baseline.value.unwrap_or(0.0),
            sums.node_entropy / n,
            sums.op_entropy / n
        );
        self.log_metrics(SearchRecord::Controller(ControllerEpoch {
            epoch: p.epoch + 1,
            reward: sums.reward / n,
            baseline: self.baseline.value,
            controller_loss: sums.loss / n,
            node_entropy: sums.node_entropy / n,
            op_entropy: sums.op_entropy / n,
            controller_lr: self.adam.lr,
            steps: n as usize,
            images_per_s: sums.images as f64 / secs,
            time_s: secs,
        }))
    }
}

/// Sums over a controller epoch's steps (images over every rank once reduced).
#[derive(Default)]
struct ControllerSums {
    reward: f64,
    loss: f64,
    node_entropy: f64,
    op_entropy: f64,
    images: usize,
}

impl ControllerSums {
    fn add(&mut self, step: &ControllerStep) {
        self.reward += step.reward;
        self.loss += step.loss;
        self.node_entropy += step.node_entropy;
        self.op_entropy += step.op_entropy;
    }
}
