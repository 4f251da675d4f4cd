//! The run directory's checkpoint, metrics lines and TensorBoard scalars: written after every
//! epoch, read back on resume.
use super::*;

impl Search {
    /// Loads the newest readable checkpoint generation, if there is one, and trims
    /// metrics.jsonl to the work it covers.
    pub(super) fn restore(&mut self) -> Result<()> {
        let path = self.run_dir.join(CHECKPOINT);
        let Some(state) = run::restore_checkpoint(&path, |path| self.load_checkpoint(path))? else {
            self.truncate_metrics(0)?;
            return Ok(());
        };
        self.baseline = state.baseline;
        self.position = state.position;
        self.scored = state.scored.into_iter().map(random::exact_score).collect();
        self.truncate_metrics(state.metrics_lines)?;
        tracing::info!(
            "resuming at stage {}, {:?} epoch {}",
            self.position.stage + 1,
            self.position.phase,
            self.position.epoch + 1
        );
        Ok(())
    }

    /// Loads supernet, controllers and both optimizers from the checkpoint at `path`.
    fn load_checkpoint(&mut self, path: &Path) -> Result<CheckpointState> {
        let metadata = crate::weights::read_metadata(path)?.unwrap_or_default();
        let state: CheckpointState =
            metadata.get("state").and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| {
                Error::bad_file(path, "not a cnas search checkpoint (no state in its metadata)")
            })?;
        // A supernet recorded in the checkpoint (cnas since the ImageNet-style stem) must be the
        // one this run builds; loading would otherwise fail on names or shapes, less clearly.
        if let Some(recorded) = metadata.get("supernet") {
            let recorded: SupernetConfig = serde_json::from_str(recorded)
                .map_err(|e| Error::bad_file(path, format!("unreadable supernet record: {e}")))?;
            if &recorded != self.supernet.config() {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "holds a different supernet ({}, {} classes) than this run builds ({}, {} classes)",
                        recorded.stem,
                        recorded.num_classes,
                        self.supernet.config().stem,
                        self.supernet.config().num_classes
                    ),
                ));
            }
        }
        let tensors = crate::weights::read(path)?;
        let mut groups: HashMap<&str, Vec<(String, Tensor)>> = HashMap::new();
        for (name, t) in tensors {
            let Some((group, rest)) = name.split_once('/') else {
                return Err(Error::bad_file(path, format!("unexpected tensor {name}")));
            };
            let group = match group {
                "supernet" => "supernet",
                "controller" => "controller",
                "sgd" => "sgd",
                "adam" => "adam",
                _ => return Err(Error::bad_file(path, format!("unexpected tensor {name}"))),
            };
            groups.entry(group).or_default().push((rest.to_string(), t));
        }
        let take =
            |groups: &mut HashMap<&str, Vec<(String, Tensor)>>, g: &str| groups.remove(g).unwrap_or_default();
        crate::weights::load_into(&self.supernet_vs, &take(&mut groups, "supernet"))?;
        crate::weights::load_into(&self.controller_vs, &take(&mut groups, "controller"))?;
        self.sgd.load_state(&take(&mut groups, "sgd").into_iter().collect())?;
        self.adam.load_state(&take(&mut groups, "adam").into_iter().collect())?;
        Ok(state)
    }

    /// Keeps the first `lines` lines of metrics.jsonl (an interrupted epoch may have written
    /// its line before its checkpoint; it will be written again).
    pub(super) fn truncate_metrics(&mut self, lines: usize) -> Result<()> {
        self.metrics_lines =
            if self.is_main() { run::truncate_lines(&self.run_dir.join(METRICS), lines)? } else { lines };
        Ok(())
    }

    pub(super) fn log_metrics(&mut self, record: SearchRecord) -> Result<()> {
        if !self.is_main() {
            // Counted all the same: every rank's checkpoint position agrees.
            self.metrics_lines += 1;
            return Ok(());
        }
        let stage = &self.stages[self.position.stage];
        let line = SearchLine {
            record,
            stage: self.position.stage + 1,
            ops: stage.ops.clone(),
            nodes: stage.searched_nodes,
        };
        // Through a JSON value, whose keys are sorted: the lines read the same as ever.
        let line =
            serde_json::to_value(&line).map_err(|e| Error::Internal(format!("a metrics line: {e}")))?;
        run::append_line(&self.run_dir.join(METRICS), &line)?;
        self.metrics_lines += 1;
        self.log_tensorboard(&line)
    }

    /// The numbers of a metrics line as TensorBoard scalars `search/<phase>/<key>`. The step
    /// counts epochs and derives over all stages (a controller line shares the step of its
    /// weights epoch), so it depends only on the position: a resumed run repeats it, and every
    /// line it redoes has a step at or after the one where the process started.
    pub(super) fn log_tensorboard(&mut self, line: &serde_json::Value) -> Result<()> {
        let p = self.position;
        let (warmup, epochs) = self.phase_epochs();
        let within = match p.phase {
            Phase::Warmup => p.epoch + 1,
            Phase::Search => warmup + p.epoch + 1,
            Phase::Derive => warmup + epochs + 1,
        };
        let step = (p.stage * (warmup + epochs + 1) + within) as i64;
        let phase = line.get("phase").and_then(|v| v.as_str()).unwrap_or("other");
        let dir = self.run_dir.join(TENSORBOARD);
        crate::tensorboard::log_line(
            &mut self.tensorboard,
            &dir,
            &format!("search/{phase}"),
            step,
            line,
            &["epoch"],
        )
    }

    pub(super) fn save_checkpoint(&self) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (group, vs) in [("supernet", &self.supernet_vs), ("controller", &self.controller_vs)] {
            tensors.extend(vs.variables().into_iter().map(|(n, t)| (format!("{group}/{n}"), t)));
        }
        tensors.extend(self.sgd.state().into_iter().map(|(n, t)| (format!("sgd/{n}"), t)));
        tensors.extend(self.adam.state().into_iter().map(|(n, t)| (format!("adam/{n}"), t)));
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let state = CheckpointState {
            position: self.position,
            baseline: self.baseline.clone(),
            metrics_lines: self.metrics_lines,
            scored: self.scored.clone(),
        };
        let mut metadata = self.supernet_metadata("cnas-search-checkpoint")?;
        metadata.insert(
            "state".to_string(),
            serde_json::to_string(&state).map_err(|e| Error::Internal(e.to_string()))?,
        );
        run::save_checkpoint(&self.run_dir.join(CHECKPOINT), &tensors, metadata)
    }

    /// Metadata of a file holding the supernet: its `format` and the supernet's config.
    pub(super) fn supernet_metadata(&self, format: &str) -> Result<BTreeMap<String, String>> {
        let config =
            serde_json::to_string(self.supernet.config()).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(BTreeMap::from([("format".to_string(), format.to_string()), ("supernet".to_string(), config)]))
    }

    pub(super) fn read_stage_best(&self, stage: usize) -> Result<Candidate> {
        let path = self.stage_dir(stage).join("candidates.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let candidates: Vec<Candidate> = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("corrupt candidates: {e}")))?;
        best_of(candidates).ok_or_else(|| Error::bad_file(&path, "no candidates"))
    }
}
