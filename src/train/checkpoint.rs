//! A training run's files: the checkpoint it resumes from (`last.safetensors`: network,
//! optimizer, position), the best network so far, and its metrics lines and TensorBoard scalars.
use super::*;

impl Trainer {
    /// Loads the newest readable generation of last.safetensors if there is one, and
    /// (`writer`) trims metrics.jsonl to the epochs it covers.
    pub(super) fn restore(&mut self, writer: bool) -> Result<()> {
        let path = self.run_dir.join(LAST);
        let Some(state) = run::restore_checkpoint(&path, |path| self.load_checkpoint(path))? else {
            if writer {
                run::truncate_lines(&self.run_dir.join(METRICS), 0)?;
            }
            return Ok(());
        };
        self.state = state;
        if writer {
            run::truncate_lines(&self.run_dir.join(METRICS), state.metrics_lines)?;
        }
        tracing::info!("resuming after epoch {} of {}", state.epoch, self.config.options.epochs);
        Ok(())
    }

    /// Loads network and optimizer from the checkpoint at `path`.
    fn load_checkpoint(&mut self, path: &Path) -> Result<TrainState> {
        let metadata = crate::weights::read_metadata(path)?.unwrap_or_default();
        let state: TrainState =
            metadata.get("train_state").and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| {
                Error::bad_file(path, "not a cnas training checkpoint (no train_state in its metadata)")
            })?;
        let mut network = Vec::new();
        let mut optimizer = HashMap::new();
        for (name, t) in crate::weights::read_all(path)? {
            match name.strip_prefix(crate::weights::OPTIMIZER_PREFIX) {
                Some(rest) => {
                    optimizer.insert(rest.to_string(), t);
                }
                None => network.push((name, t)),
            }
        }
        crate::weights::load_into(&self.vs, &network)?;
        self.sgd.load_state(&optimizer)?;
        Ok(state)
    }

    pub(super) fn metadata(&self, extra: Vec<(&str, String)>) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::from([
            ("format".to_string(), "cnas".to_string()),
            ("network".to_string(), serde_json::to_string(&self.config.network).map_err(json_error)?),
            ("arch".to_string(), self.config.arch.clone()),
        ]);
        m.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        Ok(m)
    }

    pub(super) fn network_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(super) fn save_last(&self) -> Result<()> {
        let mut tensors = self.network_tensors();
        tensors.extend(
            self.sgd
                .state()
                .into_iter()
                .map(|(n, t)| (format!("{}{n}", crate::weights::OPTIMIZER_PREFIX), t)),
        );
        let state = serde_json::to_string(&self.state).map_err(json_error)?;
        let metadata = self.metadata(vec![("train_state", state)])?;
        run::save_checkpoint(&self.run_dir.join(LAST), &tensors, metadata)
    }

    pub(super) fn save_best(&self, top1: f64, top5: f64) -> Result<()> {
        let metadata = self.metadata(vec![
            ("epoch", self.state.epoch.to_string()),
            ("top1", format!("{top1}")),
            ("top5", format!("{top5}")),
        ])?;
        crate::weights::save_tensors(&self.network_tensors(), &self.run_dir.join(BEST), metadata)
    }

    pub(super) fn log_metrics(&mut self, metrics: &EpochMetrics) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        run::append_line(&self.run_dir.join(METRICS), metrics)?;
        self.state.metrics_lines += 1;
        self.log_tensorboard(metrics)
    }

    /// The epoch's numbers as TensorBoard scalars `train/<key>`, step = epoch. A resumed
    /// process starts its event file with a restart marker at its first epoch, so readers drop
    /// what an interrupted process logged for the epochs that are redone.
    pub(super) fn log_tensorboard(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let line = serde_json::to_value(metrics).map_err(json_error)?;
        let dir = self.run_dir.join(TENSORBOARD);
        crate::tensorboard::log_line(
            &mut self.tensorboard,
            &dir,
            "train",
            metrics.epoch as i64,
            &line,
            &["epoch", "train_images", "steps"],
        )
    }
}
