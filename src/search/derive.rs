//! The end of a stage: candidates sampled from the controllers, scored on un-augmented
//! held-out images, and the picks.
use super::*;

/// A derived architecture and its score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub stage: usize,
    pub round: usize,
    /// Its place in the round (1-based).
    #[serde(default)]
    pub sample: usize,
    pub genotype: Genotype,
    /// Top-1 accuracy on the derivation images (un-augmented held-out images).
    pub score: f64,
    /// Standard error of `score`, `sqrt(score·(1 - score)/images)`.
    #[serde(default)]
    pub std_error: f64,
    /// Images the score was measured on.
    #[serde(default)]
    pub images: usize,
    /// Log-probability of the pair under the controllers, and their entropies summed.
    pub log_prob: f64,
    pub entropy: f64,
    /// The best of its round (the first of the highest scores, as released).
    #[serde(default)]
    pub round_best: bool,
}

/// Standard error of an accuracy `p` measured on `n` images.
pub fn std_error(p: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (p * (1.0 - p) / n as f64).sqrt()
}

/// The highest-scoring candidate (the earliest on ties).
pub(super) fn best_of(candidates: Vec<Candidate>) -> Option<Candidate> {
    candidates.into_iter().reduce(|best, c| if c.score > best.score { c } else { best })
}

/// Index of the highest score (the earliest on ties, as the released `if acc > best_acc`).
pub(super) fn best_index(candidates: &[Candidate]) -> Option<usize> {
    (0..candidates.len())
        .reduce(|best, i| if candidates[i].score > candidates[best].score { i } else { best })
}

impl Search {
    /// End of a stage: save supernet and controllers, derive and save candidates.
    pub(super) fn finish_stage(&mut self) -> Result<Candidate> {
        let stage_index = self.position.stage;
        let dir = self.stage_dir(stage_index);
        if self.is_main() {
            self.save_stage_models(&dir)?;
        }
        let mut rng = stream(self.options.seed, stage_index as u64, Phase::Derive.id(), 0);
        let images = self.derive_images()?;
        let start = Instant::now();
        let o = &self.options;
        let bar = self.progress(
            (o.derive_rounds * o.derive_samples + o.derive_uniform) as u64,
            format!("stage {}/{} derive", stage_index + 1, self.stages.len()),
        );
        let candidates = self.sample_candidates(&mut rng, &images, &bar)?;
        // Uniform samples on the same images: does the controller beat chance?
        let mut uniform_scores = Vec::with_capacity(self.options.derive_uniform);
        let uniform = self.pair_sampler(true);
        for _ in 0..self.options.derive_uniform {
            crate::run::interrupt::check()?;
            let (n, r) = uniform.draw(&mut rng);
            uniform_scores.push(self.score(&images, &n, &r)?.0);
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.record_derivation(&dir, &candidates, &uniform_scores, start.elapsed().as_secs_f64())
    }

    /// The stage's supernet and controllers, as they are when it ends.
    fn save_stage_models(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let meta = |kind: &str| BTreeMap::from([("format".to_string(), kind.to_string())]);
        let supernet_meta = self.supernet_metadata("cnas-supernet")?;
        crate::weights::save(&self.supernet_vs, &dir.join("supernet.safetensors"), supernet_meta)?;
        crate::weights::save(
            &self.controller_vs,
            &dir.join("controllers.safetensors"),
            meta("cnas-controllers"),
        )
    }

    /// `--derive-rounds` rounds of `--derive-samples` pairs from the controllers, each scored;
    /// the best of each round is marked.
    fn sample_candidates(
        &self,
        rng: &mut ChaCha8Rng,
        images: &Option<Vec<(Tensor, Tensor)>>,
        bar: &ProgressBar,
    ) -> Result<Vec<Candidate>> {
        let stage_index = self.position.stage;
        let stage = &self.stages[stage_index];
        let mut candidates = Vec::with_capacity(self.options.derive_rounds * self.options.derive_samples);
        for round in 0..self.options.derive_rounds {
            let first = candidates.len();
            for sample in 0..self.options.derive_samples {
                crate::run::interrupt::check()?;
                let controllers = [&self.normal_controller, &self.reduce_controller];
                let (n, r) = tch::no_grad(|| sample_pair(controllers, rng, stage, &self.primitives));
                let (score, count) = self.score(images, &n.cell, &r.cell)?;
                let entropies = [&n.node_entropy, &n.op_entropy, &r.node_entropy, &r.op_entropy];
                candidates.push(Candidate {
                    stage: stage_index + 1,
                    round: round + 1,
                    sample: sample + 1,
                    log_prob: n.log_prob.double_value(&[]) + r.log_prob.double_value(&[]),
                    entropy: entropies.iter().map(|t| t.double_value(&[])).sum(),
                    genotype: Genotype { normal: n.cell, reduce: r.cell },
                    score,
                    std_error: std_error(score, count),
                    images: count,
                    round_best: false,
                });
                bar.inc(1);
            }
            if let Some(i) = best_index(&candidates[first..]) {
                candidates[first + i].round_best = true;
            }
        }
        Ok(candidates)
    }

    /// Writes the stage's candidates and pick (rank 0), logs them and returns the pick. In
    /// random mode `candidates` are the uniform samples of every round, scored before (`secs`
    /// NaN): the line counts them as uniform samples, with no controller mean.
    pub(super) fn record_derivation(
        &mut self,
        dir: &Path,
        candidates: &[Candidate],
        uniform_scores: &[f64],
        secs: f64,
    ) -> Result<Candidate> {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let controller_scores: Vec<f64> = candidates.iter().map(|c| c.score).collect();
        let text = serde_json::to_string_pretty(candidates).map_err(|e| Error::Internal(e.to_string()))?;
        let best =
            best_of(candidates.to_vec()).ok_or_else(|| Error::Internal("no candidate derived".into()))?;
        if self.is_main() {
            crate::util::write_atomic(&dir.join("candidates.json"), text.as_bytes())?;
            crate::util::write_atomic(&dir.join(GENOTYPE), best.genotype.to_json_pretty().as_bytes())?;
        }
        let uniform_mean = (!uniform_scores.is_empty()).then(|| mean(uniform_scores));
        tracing::info!(
            "stage {} done: best candidate {:.2}% ± {:.2} on {} held-out images ({} samples {:.2}% on average{})\n{}",
            self.position.stage + 1,
            best.score * 100.0,
            best.std_error * 100.0,
            best.images,
            if self.is_random() { "uniform" } else { "controller" },
            mean(&controller_scores) * 100.0,
            uniform_mean.map_or(String::new(), |u| format!(", uniform samples {:.2}%", u * 100.0)),
            best.genotype
        );
        let scored = (controller_scores.len() + uniform_scores.len()) * best.images;
        let mut summary = DeriveSummary {
            round_best: candidates.iter().filter(|c| c.round_best).map(|c| c.score).collect(),
            best_score: best.score,
            best_std_error: best.std_error,
            images: best.images,
            controller_mean: mean(&controller_scores),
            uniform_mean,
            samples: controller_scores.len(),
            uniform_samples: uniform_scores.len(),
            genotype: best.genotype.clone(),
            scored_per_s: scored as f64 / secs,
            time_s: secs,
            candidates: controller_scores,
        };
        if self.is_random() {
            // The scores are in the rounds' lines; here only what they add up to.
            summary.uniform_mean = Some(summary.controller_mean);
            summary.uniform_samples = summary.samples;
            (summary.controller_mean, summary.samples, summary.candidates) = (f64::NAN, 0, Vec::new());
        }
        self.log_metrics(SearchRecord::Derive(summary))?;
        Ok(best)
    }

    /// The derivation images, kept on the device when they fit ([`keep_batches`]).
    pub(super) fn derive_images(&self) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        keep_batches(&self.derive_loader, self.device)
    }

    /// Top-1 accuracy of the supernet running a pair on the derivation images, and how many
    /// images that is (over every rank): one host sync per candidate.
    pub(super) fn score(
        &self,
        kept: &Option<Vec<(Tensor, Tensor)>>,
        normal: &Cell,
        reduce: &Cell,
    ) -> Result<(f64, usize)> {
        let (correct, count) =
            count_correct(&self.supernet, &self.derive_loader, kept, self.device, (normal, reduce), || ())?;
        let (mut correct, mut count) = (correct.double_value(&[]), count as f64);
        if let Some(p) = &self.parallel {
            let sums = p.group().sum_f64(&[correct, count])?;
            (correct, count) = (sums[0], sums[1]);
        }
        Ok((correct / count.max(1.0), count as usize))
    }
}

/// A loader's batches on the device when they fit in a modest budget (scored once per
/// candidate, so kept); otherwise `None` and every candidate reads them again.
pub(super) fn keep_batches(loader: &Loader, device: Device) -> Result<Option<Vec<(Tensor, Tensor)>>> {
    const KEEP_BYTES: usize = 2 << 30;
    let [c, h, w] = loader.image_shape();
    if loader.samples_per_epoch() * c * h * w * 4 > KEEP_BYTES {
        return Ok(None);
    }
    let mut batches = Vec::with_capacity(loader.batches_per_epoch());
    for batch in loader.epoch(0) {
        let (images, labels) = batch?;
        batches.push((to_device(&images, device), to_device(&labels, device)));
    }
    Ok(Some(batches))
}

/// The supernet running `pair` on every batch (the `kept` ones, else the loader's): correct
/// predictions as a device scalar (no host sync) and the number of images; `on_batch` after each.
pub(super) fn count_correct(
    supernet: &Supernet,
    loader: &Loader,
    kept: &Option<Vec<(Tensor, Tensor)>>,
    device: Device,
    pair: (&Cell, &Cell),
    mut on_batch: impl FnMut(),
) -> Result<(Tensor, usize)> {
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    let mut count = 0usize;
    let mut add = |images: &Tensor, labels: &Tensor| -> Result<()> {
        correct += supernet_correct(supernet, (images, labels), pair)?;
        count += labels.size()[0] as usize;
        on_batch();
        Ok(())
    };
    match kept {
        Some(batches) => batches.iter().try_for_each(|(x, y)| add(x, y))?,
        None => {
            for batch in loader.epoch(0) {
                let (images, labels) = batch?;
                add(&to_device(&images, device), &to_device(&labels, device))?;
            }
        }
    }
    Ok((correct, count))
}
