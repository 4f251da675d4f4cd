//! `--mode random`: random search with weight sharing at the cost of `--mode op`, and the
//! search cost every mode records in config.json.
//!
//! Equal cost: the supernet takes the weight steps of op's 8 stages, all with uniform
//! samples over the full space; the held-out images op's controllers and derivations put
//! through the supernet (every REINFORCE step's batch, every derived candidate's images) go to
//! scoring uniform candidates, each on the derivation's images, so every score is measured
//! as a derivation's and the best of them is the genotype.
use super::*;
use crate::run::metrics::RandomRound;

/// What a search spends, planned from its options and data (config.json's `budget`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchBudget {
    /// Epochs of weight training over all stages, and the weight steps they take (each rank
    /// takes every step, on its share of the batch).
    pub weight_epochs: usize,
    pub weight_steps: usize,
    /// REINFORCE steps over all stages (none in random mode).
    pub controller_steps: usize,
    /// Candidates scored to choose the genotype (the diagnostic `--derive-uniform` samples
    /// not counted), and the held-out images each is scored on (over every rank).
    pub candidates: usize,
    pub images_per_candidate: usize,
    /// Held-out images put through the supernet to choose the genotype: the controller
    /// steps' batches and the candidates' images, over every rank.
    pub heldout_images: usize,
}

/// What a search's budget depends on besides its options.
#[derive(Debug, Clone, Copy)]
pub struct BudgetInputs {
    /// Stages of the mode's curriculum (random mode: of `--mode op`'s).
    pub stages: usize,
    /// Weight steps per epoch, REINFORCE steps per search epoch.
    pub weight_batches: usize,
    pub controller_steps: usize,
    /// Images of one REINFORCE step over every rank (batch × world size).
    pub controller_batch: usize,
    /// Images each candidate is scored on, over every rank.
    pub images_per_candidate: usize,
}

impl SearchBudget {
    /// The budget of a curriculum mode (op, node, fixed) with `inputs.stages` stages.
    pub fn curriculum(o: &SearchOptions, i: BudgetInputs) -> Self {
        let weight_epochs = i.stages * (o.warmup_epochs + o.epochs);
        let controller_steps = i.stages * o.epochs * i.controller_steps;
        let candidates = i.stages * o.derive_rounds * o.derive_samples;
        SearchBudget {
            weight_epochs,
            weight_steps: weight_epochs * i.weight_batches,
            controller_steps,
            candidates,
            images_per_candidate: i.images_per_candidate,
            heldout_images: controller_steps * i.controller_batch + candidates * i.images_per_candidate,
        }
    }

    /// Random mode's budget: op mode's (`inputs.stages` its stage count) weight epochs, and as
    /// many whole candidates as op mode's held-out images pay for (at least one).
    pub fn random(o: &SearchOptions, i: BudgetInputs) -> Self {
        let op = Self::curriculum(o, i);
        let per = i.images_per_candidate.max(1);
        let candidates = (op.heldout_images / per).max(1);
        SearchBudget {
            controller_steps: 0,
            candidates,
            heldout_images: candidates * i.images_per_candidate,
            ..op
        }
    }

    /// Random mode's rounds of `per_round` candidates (the last one may be short).
    pub fn rounds(&self, per_round: usize) -> usize {
        self.candidates.div_ceil(per_round.max(1))
    }
}

/// A candidate read back from a checkpoint, with exactly the score it was written with:
/// serde_json's parsing can be an ulp off, and a score is whole images over `images`.
pub(super) fn exact_score(mut c: Candidate) -> Candidate {
    if c.images > 0 {
        let n = c.images as f64;
        c.score = (c.score * n).round() / n;
        c.std_error = std_error(c.score, c.images);
    }
    c
}

impl Search {
    pub(super) fn is_random(&self) -> bool {
        self.options.mode == CurriculumMode::Random
    }

    /// Epochs of a stage's warm-up and search phases: random mode's single stage warms up
    /// for all of op mode's weight epochs and scores a round of candidates per search epoch.
    pub(super) fn phase_epochs(&self) -> (usize, usize) {
        if self.is_random() {
            (self.budget.weight_epochs, self.budget.rounds(self.options.derive_samples))
        } else {
            (self.options.warmup_epochs, self.options.epochs)
        }
    }

    /// One round of random search: `--derive-samples` uniform pairs (fewer in the last round)
    /// scored on the derivation images and kept for the pick.
    pub(super) fn score_random_round(&mut self) -> Result<()> {
        let round = self.position.epoch;
        let first = round * self.options.derive_samples;
        let count = self.options.derive_samples.min(self.budget.candidates.saturating_sub(first));
        let mut rng = stream(self.options.seed, 0, Phase::Search.id(), round as u64);
        // Read once per process, not per round: the same images score every candidate.
        let images = match self.derive_cache.take() {
            Some(kept) => kept,
            None => self.derive_images()?,
        };
        let what = format!("random round {}/{}", round + 1, self.phase_epochs().1);
        let bar = self.progress(count as u64, what);
        let start = Instant::now();
        let sampler = self.pair_sampler(true);
        let mut scored = Vec::with_capacity(count);
        for sample in 0..count {
            crate::run::interrupt::check()?;
            let (normal, reduce) = sampler.draw(&mut rng);
            let (score, images) = self.score(&images, &normal, &reduce)?;
            scored.push(Candidate {
                stage: 1,
                round: round + 1,
                sample: sample + 1,
                genotype: Genotype { normal, reduce },
                score,
                std_error: std_error(score, images),
                images,
                // No controller: uniform samples have no log-probability of their own here.
                log_prob: 0.0,
                entropy: 0.0,
                round_best: false,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.derive_cache = Some(images);
        if let Some(i) = best_index(&scored) {
            scored[i].round_best = true;
        }
        self.scored.extend(scored.iter().cloned());
        self.log_random_round(&scored, start.elapsed().as_secs_f64())
    }

    fn log_random_round(&mut self, scored: &[Candidate], secs: f64) -> Result<()> {
        let scores: Vec<f64> = scored.iter().map(|c| c.score).collect();
        let top = |s: &[f64]| s.iter().copied().fold(f64::NAN, f64::max);
        let images: usize = scored.iter().map(|c| c.images).sum();
        let all: Vec<f64> = self.scored.iter().map(|c| c.score).collect();
        let line = RandomRound {
            epoch: self.position.epoch + 1,
            mean: scores.iter().sum::<f64>() / scores.len().max(1) as f64,
            round_best: top(&scores),
            best_so_far: top(&all),
            images,
            images_per_s: images as f64 / secs,
            time_s: secs,
            scores,
        };
        tracing::info!(
            "random round {}: best {:.2}%, mean {:.2}%, best so far {:.2}% ({} candidates)",
            line.epoch,
            line.round_best * 100.0,
            line.mean * 100.0,
            line.best_so_far * 100.0,
            all.len()
        );
        self.log_metrics(SearchRecord::Random(line))
    }

    /// The end of random search: the supernet saved, every scored candidate recorded and the
    /// best (the earliest of the highest scores) picked.
    pub(super) fn finish_random(&mut self) -> Result<Candidate> {
        let dir = self.stage_dir(0);
        if self.is_main() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let meta = self.supernet_metadata("cnas-supernet")?;
            crate::weights::save(&self.supernet_vs, &dir.join("supernet.safetensors"), meta)?;
        }
        let candidates = self.scored.clone();
        self.record_derivation(&dir, &candidates, &[], f64::NAN)
    }
}
