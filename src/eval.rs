//! Scoring a fixed network on a labelled split: loss, top-1/top-5, per-class accuracy and the
//! confusion matrix. Used by `cnas eval` and by `cnas train`'s validation.
//!
//! Everything is accumulated on the device; the host reads the totals once, at the end.
use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::{to_device, Data, DataArgs, DatasetKind, Loader, LoaderOptions, Part};
use crate::error::{Error, Result};
use crate::model::{Network, NetworkConfig, NetworkKind};

/// What an evaluation found (`eval.json`). Accuracies are fractions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    pub images: usize,
    pub class_names: Vec<String>,
    /// Per true class: the share of its images predicted as it (NaN-free: 0 for absent classes).
    pub per_class_accuracy: Vec<f64>,
    /// Rows: true class; columns: predicted class.
    pub confusion: Vec<Vec<u64>>,
    pub images_per_sec: f64,
}

/// Running totals of an evaluation (or of a training epoch), kept on the device.
pub struct Totals {
    loss: Tensor,
    top1: Tensor,
    top5: Tensor,
    confusion: Option<Tensor>,
    num_classes: i64,
    pub images: usize,
}

impl Totals {
    /// With `confusion`, also counts (true, predicted) pairs.
    pub fn new(num_classes: i64, confusion: bool, device: Device) -> Self {
        let zero = |kind| Tensor::zeros([], (kind, device));
        Totals {
            loss: zero(Kind::Float),
            top1: zero(Kind::Int64),
            top5: zero(Kind::Int64),
            confusion: confusion.then(|| Tensor::zeros([num_classes * num_classes], (Kind::Int64, device))),
            num_classes,
            images: 0,
        }
    }

    /// Adds a batch: its mean `loss` (0-dim), its `logits` (N×K) and `labels` (N).
    pub fn add(&mut self, loss: &Tensor, logits: &Tensor, labels: &Tensor) {
        tch::no_grad(|| {
            let n = labels.size()[0];
            self.loss += loss.detach().to_kind(Kind::Float) * n as f64;
            let k = self.num_classes.min(5);
            let (_, top) = logits.topk(k, -1, true, true);
            let hits = top.eq_tensor(&labels.unsqueeze(1));
            self.top1 += hits.narrow(1, 0, 1).sum(Kind::Int64);
            self.top5 += hits.sum(Kind::Int64);
            if let Some(confusion) = &mut self.confusion {
                let pairs = labels * self.num_classes + top.select(1, 0);
                *confusion += pairs.bincount::<Tensor>(None, self.num_classes * self.num_classes);
            }
            self.images += n as usize;
        })
    }

    /// (mean loss, top-1, top-5): a host sync.
    pub fn read(&self) -> (f64, f64, f64) {
        let n = self.images.max(1) as f64;
        (self.loss.double_value(&[]) / n, self.top1.double_value(&[]) / n, self.top5.double_value(&[]) / n)
    }

    /// The confusion matrix, rows = true class (empty when not counted).
    pub fn confusion(&self) -> Result<Vec<Vec<u64>>> {
        let Some(c) = &self.confusion else { return Ok(Vec::new()) };
        let flat: Vec<i64> = Vec::try_from(&c.to_device(Device::Cpu))?;
        Ok(flat
            .chunks(self.num_classes as usize)
            .map(|row| row.iter().map(|&v| v as u64).collect())
            .collect())
    }
}

/// Per-class accuracy from a confusion matrix (0 for a class with no images).
pub fn per_class_accuracy(confusion: &[Vec<u64>]) -> Vec<f64> {
    confusion
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 {
                0.0
            } else {
                row[i] as f64 / total as f64
            }
        })
        .collect()
}

/// Evaluates `network` (in eval mode) on one pass of `loader`, with bf16 autocast when `amp`.
pub fn evaluate(
    network: &Network,
    loader: &Loader,
    class_names: &[String],
    device: Device,
    amp: bool,
    bar: &ProgressBar,
) -> Result<EvalResult> {
    let num_classes = network.config().num_classes;
    let start = Instant::now();
    let mut totals = Totals::new(num_classes, true, device);
    for batch in loader.epoch(0) {
        crate::run::interrupt::check()?;
        let (images, labels) = batch?;
        let (images, labels) = (to_device(&images, device), to_device(&labels, device));
        let logits =
            tch::no_grad(|| crate::amp::autocast(device, amp, || network.forward_t(&images, false).logits))?
                .to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
        totals.add(&loss, &logits, &labels);
        bar.inc(labels.size()[0] as u64);
    }
    let (loss, top1, top5) = totals.read();
    let seconds = start.elapsed().as_secs_f64();
    let confusion = totals.confusion()?;
    let mut names: Vec<String> = class_names.to_vec();
    names.resize_with(num_classes as usize, String::new);
    for (i, n) in names.iter_mut().enumerate() {
        if n.is_empty() {
            *n = format!("class {i}");
        }
    }
    Ok(EvalResult {
        top1,
        top5,
        loss,
        images: totals.images,
        class_names: names,
        per_class_accuracy: per_class_accuracy(&confusion),
        confusion,
        images_per_sec: totals.images as f64 / seconds.max(1e-9),
    })
}

/// What `cnas eval` scores: a weights file, the network it holds, the data.
pub struct EvalRequest<'a> {
    pub weights: &'a Path,
    /// The architecture when the file does not say (a .pth): a published name or a genotype
    /// file; it also overrides what a cnas file says.
    pub arch: Option<&'a str>,
    pub init_channels: Option<i64>,
    pub layers: Option<i64>,
    pub data: &'a DataArgs,
    pub batch_size: usize,
    /// Score the first N images of the split only.
    pub max_images: Option<usize>,
    pub amp: bool,
}

/// Opens the data, builds the network `request` describes, loads the weights and evaluates
/// them on the test split (CIFAR-10's test set, ImageNet's val/).
pub fn evaluate_weights(request: &EvalRequest<'_>, device: Device, quiet: bool) -> Result<EvalResult> {
    let path = request.weights;
    let kind = match request.data.dataset {
        DatasetKind::Cifar10 => NetworkKind::Cifar,
        DatasetKind::ImageNet => NetworkKind::Imagenet,
    };
    let data = Data::open(request.data, !quiet)?;
    let info = data.info();
    let crate::weights::OpenedNetwork { vs: _vs, mut network, .. } =
        crate::weights::open_network(path, device, true, |from_file| {
            let mut config = match (request.arch, from_file) {
                (None, Some(config)) => config,
                (arch, _) => {
                    let (_, genotype) = crate::space::resolve_arch(arch.unwrap_or("CNAS"))?;
                    NetworkConfig::paper(kind, genotype)
                }
            };
            if config.kind != kind {
                return Err(Error::BadOption(format!(
                    "{} holds a {:?} network but --dataset is {}",
                    path.display(),
                    config.kind,
                    request.data.dataset
                )));
            }
            config.init_channels = request.init_channels.unwrap_or(config.init_channels);
            config.layers = request.layers.unwrap_or(config.layers);
            config.num_classes = info.num_classes as i64;
            config.check_input_size(info.input_size as i64, false)?;
            Ok(config)
        })?;
    network.channels_last = crate::ops::channels_last_for(device, request.amp);
    let mut loader = data.loader(Part::Test, &LoaderOptions::eval(request.batch_size).device(device))?;
    if let Some(n) = request.max_images {
        loader = loader.first(n)?;
    }
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(loader.samples_per_epoch() as u64) };
    let result = evaluate(&network, &loader, &data.info().class_names, device, request.amp, &bar);
    bar.finish_and_clear();
    result
}

/// The heat map [`write_result`] writes beside `eval.json`.
pub const CONFUSION_SVG: &str = "confusion.svg";

/// Writes `eval.json` and `confusion.svg` (the confusion matrix as a heat map) into `dir`,
/// created if needed.
pub fn write_result(result: &EvalResult, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string(result).map_err(|e| Error::Internal(e.to_string()))?;
    crate::util::write_atomic(&dir.join("eval.json"), json.as_bytes())?;
    let svg = crate::report::plot::confusion_svg(&result.class_names, &result.confusion);
    crate::util::write_atomic(&dir.join(CONFUSION_SVG), svg.as_bytes())
}

impl std::fmt::Display for EvalResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} images: top-1 {:.2}%, top-5 {:.2}%, loss {:.4} ({:.0} images/s)",
            self.images,
            self.top1 * 100.0,
            self.top5 * 100.0,
            self.loss,
            self.images_per_sec
        )?;
        // Per-class lines only where they fit on a screen.
        if self.class_names.len() <= 20 {
            for (name, acc) in self.class_names.iter().zip(&self.per_class_accuracy) {
                writeln!(f, "  {name:<12} {:.2}%", acc * 100.0)?;
            }
        }
        Ok(())
    }
}

/// One rank's evaluation of its shard, combined into the evaluation of all shards.
pub fn reduce_over_ranks(parallel: &crate::dist::DataParallel, r: EvalResult) -> Result<EvalResult> {
    let n = r.images as f64;
    let k = r.confusion.len();
    let mut values = vec![r.loss * n, r.top1 * n, r.top5 * n, n, r.images_per_sec];
    values.extend(r.confusion.iter().flatten().map(|&v| v as f64));
    let s = parallel.group().sum_f64(&values)?;
    let total = s[3].max(1.0);
    let confusion: Vec<Vec<u64>> = if k == 0 {
        Vec::new()
    } else {
        s[5..].chunks(k).map(|row| row.iter().map(|&v| v as u64).collect()).collect()
    };
    Ok(EvalResult {
        loss: s[0] / total,
        top1: s[1] / total,
        top5: s[2] / total,
        images: s[3] as usize,
        images_per_sec: s[4],
        per_class_accuracy: per_class_accuracy(&confusion),
        confusion,
        class_names: r.class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_top1_top5_and_confusion() {
        // 6 classes, 3 samples: label 0 ranked first, label 2 ranked third, label 5 ranked last.
        let logits = Tensor::from_slice(&[
            9f32, 1.0, 2.0, 3.0, 4.0, 5.0, //
            1.0, 9.0, 5.0, 8.0, 0.0, 0.0, //
            9.0, 8.0, 7.0, 6.0, 5.0, 4.0,
        ])
        .reshape([3, 6]);
        let labels = Tensor::from_slice(&[0i64, 2, 5]);
        let loss = Tensor::from(0.5f32);
        let mut t = Totals::new(6, true, Device::Cpu);
        t.add(&loss, &logits, &labels);
        let (l, top1, top5) = t.read();
        assert!((l - 0.5).abs() < 1e-6);
        assert!((top1 - 1.0 / 3.0).abs() < 1e-9);
        assert!((top5 - 2.0 / 3.0).abs() < 1e-9);
        let c = t.confusion().unwrap();
        assert_eq!(c[0][0], 1);
        assert_eq!(c[2][1], 1);
        assert_eq!(c[5][0], 1);
        assert_eq!(c.iter().flatten().sum::<u64>(), 3);
        let acc = per_class_accuracy(&c);
        assert_eq!(acc[0], 1.0);
        assert_eq!(acc[2], 0.0);
        assert_eq!(acc[3], 0.0);
    }
}
