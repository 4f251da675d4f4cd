//! The lines of `metrics.jsonl`: one set of types that search and training write and that
//! `cnas report` reads back.
//!
//! A number that was not finite (a diverged loss) is written as `null`, as JSON has no NaN;
//! reading takes such a `null` back as NaN. A number missing from a line (a line written by an
//! older cnas) reads as NaN too, and a count as 0, so that a report still draws the rest.
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::space::Genotype;

/// `null` (a non-finite number written out) read back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One line of a search's metrics: what it measured, and where in the curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchLine {
    #[serde(flatten)]
    pub record: SearchRecord,
    /// The curriculum stage, 1-based.
    pub stage: usize,
    /// The operations the stage samples from.
    pub ops: Vec<String>,
    /// The intermediate nodes the stage searches.
    pub nodes: usize,
}

/// A search line by phase (the `phase` key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum SearchRecord {
    /// An epoch of uniformly sampled weight steps.
    Warmup(WeightsEpoch),
    /// An epoch of weight steps on the controllers' samples.
    Weights(WeightsEpoch),
    /// The REINFORCE updates that follow a weights epoch.
    Controller(ControllerEpoch),
    /// The end of a stage: candidates scored and the best kept.
    Derive(DeriveSummary),
    /// `--mode random`: a round of uniformly sampled candidates scored on the derivation
    /// images.
    Random(RandomRound),
}

impl SearchRecord {
    /// Seconds the line measured (NaN where it did not time itself).
    pub fn time_s(&self) -> f64 {
        match self {
            SearchRecord::Warmup(r) | SearchRecord::Weights(r) => r.time_s,
            SearchRecord::Controller(r) => r.time_s,
            SearchRecord::Derive(r) => r.time_s,
            SearchRecord::Random(r) => r.time_s,
        }
    }
}

/// A supernet epoch. Loss and accuracy are means over every rank's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WeightsEpoch {
    /// 1-based, within its phase of the stage.
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    pub images: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub time_s: f64,
}

/// An epoch of controller updates; means over its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerEpoch {
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub reward: f64,
    /// The moving-average baseline after the epoch (none before its first step).
    pub baseline: Option<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub controller_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub node_entropy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub op_entropy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub controller_lr: f64,
    pub steps: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub time_s: f64,
}

/// A stage's derivation, summed up (every candidate is in the stage's `candidates.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeriveSummary {
    /// The scores of the controllers' candidates, in sampling order.
    #[serde(default)]
    pub candidates: Vec<f64>,
    /// The score of each round's best.
    #[serde(default)]
    pub round_best: Vec<f64>,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub best_score: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub best_std_error: f64,
    /// Images each candidate was scored on.
    #[serde(default)]
    pub images: usize,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub controller_mean: f64,
    /// Mean score of the uniform samples (`--derive-uniform`), if any.
    #[serde(default)]
    pub uniform_mean: Option<f64>,
    #[serde(default)]
    pub samples: usize,
    #[serde(default)]
    pub uniform_samples: usize,
    /// The stage's pick.
    pub genotype: Genotype,
    /// Images scored per second, all candidates together.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub scored_per_s: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub time_s: f64,
}

/// A round of random search's candidates (`--mode random`), each scored on the same
/// un-augmented held-out images as a derivation's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RandomRound {
    /// The round, 1-based (the search phase's epoch).
    pub epoch: usize,
    /// The round's scores, in sampling order.
    pub scores: Vec<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub round_best: f64,
    /// The best score of every round so far, this one included.
    #[serde(deserialize_with = "nan_if_null")]
    pub best_so_far: f64,
    /// Held-out images scored in the round (candidates × images each, over every rank).
    pub images: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub time_s: f64,
}

impl Default for RandomRound {
    fn default() -> Self {
        let n = f64::NAN;
        RandomRound {
            epoch: 0,
            scores: Vec::new(),
            mean: n,
            round_best: n,
            best_so_far: n,
            images: 0,
            images_per_s: n,
            time_s: n,
        }
    }
}

/// One line of a training run's metrics: an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EpochMetrics {
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub drop_path_prob: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_top1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_top5: f64,
    /// Images trained on in the epoch, over all ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// Optimizer steps in the epoch (every rank takes the same steps, each on its share of
    /// the global batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    pub val_loss: Option<f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    /// Images the validation scored (over all ranks in a distributed run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_images: Option<usize>,
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_sec: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub epoch_time_s: f64,
}

fn nan() -> f64 {
    f64::NAN
}

impl Default for WeightsEpoch {
    fn default() -> Self {
        let n = f64::NAN;
        WeightsEpoch { epoch: 0, loss: n, acc: n, lr: n, images: 0, images_per_s: n, time_s: n }
    }
}

impl Default for ControllerEpoch {
    fn default() -> Self {
        let n = f64::NAN;
        ControllerEpoch {
            epoch: 0,
            reward: n,
            baseline: None,
            controller_loss: n,
            node_entropy: n,
            op_entropy: n,
            controller_lr: n,
            steps: 0,
            images_per_s: n,
            time_s: n,
        }
    }
}

impl Default for EpochMetrics {
    fn default() -> Self {
        let n = f64::NAN;
        EpochMetrics {
            epoch: 0,
            lr: n,
            drop_path_prob: n,
            train_loss: n,
            train_top1: n,
            train_top5: n,
            train_images: None,
            steps: None,
            val_loss: None,
            val_top1: None,
            val_top5: None,
            val_images: None,
            images_per_sec: n,
            epoch_time_s: n,
        }
    }
}

/// Every line of a metrics file (none when there is no file yet); a line that is not a `T`
/// is an error naming the file and the line.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights_line() -> SearchLine {
        SearchLine {
            record: SearchRecord::Weights(WeightsEpoch {
                epoch: 2,
                loss: f64::NAN,
                acc: 0.25,
                lr: 0.05,
                images: 96,
                images_per_s: 10.0,
                time_s: 9.6,
            }),
            stage: 1,
            ops: vec!["max_pool_3x3".into()],
            nodes: 4,
        }
    }

    #[test]
    fn a_search_line_is_flat_json_with_its_phase_and_reads_back() {
        let line = weights_line();
        let value = serde_json::to_value(&line).unwrap();
        assert_eq!(value["phase"], "weights");
        assert_eq!(value["stage"], 1);
        assert_eq!(value["epoch"], 2);
        assert!(value["loss"].is_null(), "a NaN loss is written as null");
        let back: SearchLine = serde_json::from_value(value).unwrap();
        let SearchRecord::Weights(w) = &back.record else { panic!("{back:?}") };
        assert!(w.loss.is_nan() && w.acc == 0.25 && back.ops == line.ops && back.nodes == 4);
    }

    #[test]
    fn missing_numbers_read_as_nan_and_counts_as_zero() {
        let line: SearchLine = serde_json::from_str(
            r#"{"phase":"controller","epoch":1,"reward":0.5,"stage":2,"ops":[],"nodes":4}"#,
        )
        .unwrap();
        let SearchRecord::Controller(c) = &line.record else { panic!("{line:?}") };
        assert!(c.reward == 0.5 && c.op_entropy.is_nan() && c.steps == 0 && c.baseline.is_none());
        let epoch: EpochMetrics = serde_json::from_str(r#"{"epoch": 1, "train_loss": null}"#).unwrap();
        assert!(
            epoch.epoch == 1 && epoch.train_loss.is_nan() && epoch.lr.is_nan() && epoch.val_top1.is_none()
        );
    }

    #[test]
    fn reading_names_the_line_that_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert!(read_lines::<SearchLine>(&path).unwrap().is_empty());
        let good = serde_json::to_string(&weights_line()).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"phase\":\"weights\",\"partial\":true}}\n")).unwrap();
        let err = read_lines::<SearchLine>(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
        assert_eq!(read_lines::<SearchLine>(&path).unwrap().len(), 2);
    }
}
