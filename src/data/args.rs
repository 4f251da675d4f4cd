//! `--dataset/--data/--workers/--train-portion/--cutout/--seed/…`, shared by every command that
//! trains or evaluates: `#[command(flatten)] data: DataArgs`, then [`super::Data::open`].
use std::path::PathBuf;
use std::str::FromStr;

use super::cifar10::CIFAR10_CLASSES;
use crate::error::{Error, Result};

/// The seed of a run unless `--seed` says otherwise: the released CNAS code's default.
pub const DEFAULT_SEED: u64 = 2020;

/// Which kind of data set (`--dataset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum DatasetKind {
    /// CIFAR-10: 32×32 images, 10 classes.
    #[default]
    #[value(name = "cifar10", alias = "cifar-10")]
    Cifar10,
    /// ImageNet or any folder of class folders: 224×224 crops (`--image-size`), classes from
    /// the folders.
    #[value(name = "imagenet", aliases = ["folder", "image-folder"])]
    ImageNet,
}

impl DatasetKind {
    /// Side of the square network input.
    pub fn input_size(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 32,
            DatasetKind::ImageNet => 224,
        }
    }

    /// Number of classes when the kind fixes it (`None`: read from the folders).
    pub fn num_classes(self) -> Option<usize> {
        match self {
            DatasetKind::Cifar10 => Some(CIFAR10_CLASSES.len()),
            DatasetKind::ImageNet => None,
        }
    }
}

impl FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("unknown data set '{s}' (expected cifar10, or imagenet or folder)"))
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::ImageNet => "imagenet",
        })
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct DataArgs {
    /// Data set: cifar10, or imagenet (alias folder): ImageNet or any folder of class folders,
    /// any number of classes (see --data).
    #[arg(long, value_enum, default_value_t = DatasetKind::Cifar10)]
    pub dataset: DatasetKind,
    /// Data folder. cifar10: cifar-10-batches-bin/, its parent or cifar-10-binary.tar.gz
    /// (downloaded here when the folder is missing or empty); imagenet/folder: DIR/train/<class>/
    /// and DIR/val/<class>/ (images .jpg, .jpeg or .png), or DIR/<class>/ alone (search only: it
    /// holds out part of the training images; train and eval need val/).
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub data: PathBuf,
    /// Threads preparing batches; 0 prepares them in the consuming thread [default: number of
    /// cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Search: share of the training images (CIFAR-10's 50,000, or the folder's train/ or class
    /// folders) that trains weights, in (0, 1], drawn from --seed; the rest is held out to
    /// reward the controllers and score candidates (the log states both counts).
    #[arg(long, default_value_t = 0.4, value_parser = parse_portion)]
    pub train_portion: f64,
    /// Cutout length for CIFAR training, at most 32 (0: none) [default: the command's own, 16
    /// for final training, 0 for search].
    #[arg(long)]
    pub cutout: Option<usize>,
    /// Seed of everything random in a run: weights, data split, shuffling, augmentation, the
    /// search's samples and curriculum order (2020, the released CNAS code's default).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Leave out unreadable images with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Label file for a flat imagenet val/ folder (see the data module docs for its forms).
    #[arg(long, value_name = "FILE")]
    pub val_labels: Option<PathBuf>,
    /// Side of the imagenet/folder input crops, 8 to 4096 [default: 224; evaluation resizes to
    /// 256/224 of it]. Search: up to 64 px the supernet has the CIFAR stem (stride 1); above, an
    /// ImageNet-style stem of k = round(log2(side/28)) (at least 1) stride-2 convolutions, so
    /// the first cell sees about 28 px (96 → 24, 128 → 32, 224 → 28).
    #[arg(long, value_parser = parse_image_size)]
    pub image_size: Option<usize>,
}

/// `--train-portion`: a share in (0, 1] (checked at parse time, so that clap names the option).
fn parse_portion(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v), // false for NaN
        Ok(_) => Err("must be above 0 and at most 1".into()),
        Err(_) => Err("not a number".into()),
    }
}

/// The range of `--image-size`.
const IMAGE_SIZES: std::ops::RangeInclusive<usize> = 8..=4096;

/// `--image-size`: a side in [`IMAGE_SIZES`].
fn parse_image_size(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if IMAGE_SIZES.contains(&v) => Ok(v),
        Ok(_) => Err(format!("must be between {} and {}", IMAGE_SIZES.start(), IMAGE_SIZES.end())),
        Err(_) => Err("not a whole number".into()),
    }
}

impl Default for DataArgs {
    fn default() -> Self {
        DataArgs {
            dataset: DatasetKind::Cifar10,
            data: PathBuf::from("data"),
            workers: None,
            train_portion: 0.4,
            cutout: None,
            seed: DEFAULT_SEED,
            skip_bad_images: false,
            val_labels: None,
            image_size: None,
        }
    }
}

/// The data options of a run, as its config.json keeps them (resume reads them back; the
/// number of workers is the machine's business and is not kept).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataConfig {
    pub dataset: String,
    pub data: PathBuf,
    pub train_portion: f64,
    pub seed: u64,
    pub cutout: Option<usize>,
    #[serde(default)]
    pub skip_bad_images: bool,
    #[serde(default)]
    pub val_labels: Option<PathBuf>,
    #[serde(default)]
    pub image_size: Option<usize>,
}

impl DataConfig {
    pub fn from_args(args: &DataArgs) -> Self {
        DataConfig {
            dataset: args.dataset.to_string(),
            data: args.data.clone(),
            train_portion: args.train_portion,
            seed: args.seed,
            cutout: args.cutout,
            skip_bad_images: args.skip_bad_images,
            val_labels: args.val_labels.clone(),
            image_size: args.image_size,
        }
    }

    /// Puts the kept options into `args` (whose `workers` stays as given).
    pub fn apply(&self, args: &mut DataArgs) -> Result<()> {
        args.dataset =
            self.dataset.parse().map_err(|e: String| Error::BadOption(format!("config.json: {e}")))?;
        args.data = self.data.clone();
        args.train_portion = self.train_portion;
        args.seed = self.seed;
        args.cutout = self.cutout;
        args.skip_bad_images = self.skip_bad_images;
        args.val_labels = self.val_labels.clone();
        args.image_size = self.image_size;
        Ok(())
    }
}

impl DataArgs {
    /// Rejects values that cannot work, naming the option.
    pub fn validate(&self) -> Result<()> {
        if !(self.train_portion > 0.0 && self.train_portion <= 1.0) {
            return Err(Error::BadOption(format!(
                "--train-portion {} must be above 0 and at most 1",
                self.train_portion
            )));
        }
        if self.cutout.is_some_and(|c| c > 32) && self.dataset == DatasetKind::Cifar10 {
            return Err(Error::BadOption("--cutout is at most 32 on 32×32 CIFAR images".into()));
        }
        if self.image_size.is_some_and(|s| !IMAGE_SIZES.contains(&s)) {
            return Err(Error::BadOption(format!(
                "--image-size must be between {} and {}",
                IMAGE_SIZES.start(),
                IMAGE_SIZES.end()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        data: DataArgs,
    }

    #[test]
    fn flattens_with_defaults_and_parses_every_option() {
        let d = Cmd::try_parse_from(["x"]).unwrap().data;
        assert_eq!(d, DataArgs::default());
        let d = Cmd::try_parse_from([
            "x",
            "--dataset",
            "imagenet",
            "--data",
            "/d",
            "--workers",
            "3",
            "--train-portion",
            "0.5",
            "--cutout",
            "16",
            "--seed",
            "7",
            "--skip-bad-images",
            "--val-labels",
            "l.txt",
            "--image-size",
            "64",
        ])
        .unwrap()
        .data;
        assert_eq!(d.dataset, DatasetKind::ImageNet);
        assert_eq!((d.workers, d.train_portion, d.cutout, d.seed), (Some(3), 0.5, Some(16), 7));
        assert!(d.skip_bad_images && d.image_size == Some(64) && d.val_labels.is_some());
        assert!(d.validate().is_ok());
        assert!(Cmd::try_parse_from(["x", "--dataset", "mnist"]).is_err());
        let bad = DataArgs { train_portion: 0.0, ..DataArgs::default() };
        assert!(bad.validate().unwrap_err().is_user_error());
    }
}
