//! The data set a command works on, opened from [`DataArgs`], and the loaders it hands out.
use std::path::PathBuf;
use std::sync::Arc;

use tch::Device;

use super::args::{DataArgs, DatasetKind};
use super::cifar10::{self, Cifar10, CifarSource, CIFAR10_CLASSES};
use super::download;
use super::folder::{FolderSource, ImageFolder, ImageNet};
use super::loader::{default_workers, Loader, LoaderConfig, Source};
use super::rng;
use super::transforms::{CifarAugment, FolderAugment, FolderTransform};
use crate::error::{Error, Result};

/// What a network needs to know about an opened data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    pub kind: DatasetKind,
    /// Side of the square images the loaders produce.
    pub input_size: usize,
    pub num_classes: usize,
    pub class_names: Vec<String>,
}

/// Which images a loader walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole training set (final training).
    Train,
    /// The `train_portion` share of the training set that trains weights during search.
    SearchWeights,
    /// The rest of the training set, held out to score architectures during search.
    SearchHeldOut,
    /// CIFAR-10's test set, or ImageNet's `val/`; never used to choose.
    Test,
}

/// Per-loader choices a command makes (the rest comes from [`DataArgs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    /// Training augmentation (crop, flip, cutout / random resized crop, flip, jitter).
    pub augment: bool,
    pub drop_last: bool,
    pub rank: usize,
    pub world_size: usize,
    /// See [`LoaderConfig::every_sample`]; on for [`LoaderOptions::eval`].
    pub every_sample: bool,
    /// Where batches will be used; pinned memory when it is a CUDA device.
    pub device: Device,
    /// Cutout length for CIFAR training when `--cutout` is not given (0: none).
    pub default_cutout: usize,
}

impl LoaderOptions {
    /// Shuffled and augmented, last partial batch kept.
    pub fn train(batch_size: usize) -> Self {
        LoaderOptions {
            batch_size,
            shuffle: true,
            augment: true,
            drop_last: false,
            rank: 0,
            world_size: 1,
            every_sample: false,
            device: Device::Cpu,
            default_cutout: 0,
        }
    }

    /// In order, no augmentation; sharded, the ranks together see every sample once.
    pub fn eval(batch_size: usize) -> Self {
        LoaderOptions { shuffle: false, augment: false, every_sample: true, ..Self::train(batch_size) }
    }

    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    pub fn shard(mut self, rank: usize, world_size: usize) -> Self {
        self.rank = rank;
        self.world_size = world_size;
        self
    }

    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    pub fn default_cutout(mut self, length: usize) -> Self {
        self.default_cutout = length;
        self
    }
}

/// Splits `0..n` as the released CNAS code does: the first `floor(n · train_portion)` of
/// `torch.randperm(n)` (a generator seeded with `seed`) train weights, the rest is held out.
/// Both lists are returned sorted.
pub fn split_indices(n: usize, train_portion: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(train_portion > 0.0 && train_portion <= 1.0) {
        return Err(Error::BadOption(format!(
            "--train-portion {train_portion} must be above 0 and at most 1"
        )));
    }
    // As released: torch.randperm(n) from a generator seeded with the seed, the first part
    // trains weights.
    let mut order = rng::torch_randperm(n, seed)?;
    // The epsilon keeps 0.4 · 50000 at 20000 despite rounding in the product.
    let k = ((n as f64 * train_portion) + 1e-9).floor() as usize;
    let mut held = order.split_off(k.min(n));
    order.sort_unstable();
    held.sort_unstable();
    Ok((order, held))
}

enum Storage {
    Cifar(Cifar10),
    Folder(ImageNet),
}

/// An opened data set: see the module docs of [`crate::data`] for how commands use it.
pub struct Data {
    info: DatasetInfo,
    storage: Storage,
    seed: u64,
    workers: usize,
    train_portion: f64,
    cutout: Option<usize>,
    skip_bad_images: bool,
    image_size: usize,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data").field("info", &self.info).field("seed", &self.seed).finish_non_exhaustive()
    }
}

impl Data {
    /// Opens the data set `args` names. CIFAR-10 is downloaded first when `--data` holds
    /// nothing (with a progress bar when `progress`).
    pub fn open(args: &DataArgs, progress: bool) -> Result<Self> {
        args.validate()?;
        let path: PathBuf = args.data.clone();
        let (storage, info) = match args.dataset {
            DatasetKind::Cifar10 => {
                let cifar = match download::locate_or_download(
                    &path,
                    download::CIFAR10_URL,
                    download::CIFAR10_MD5,
                    progress,
                )? {
                    Some(cifar10::Location::Folder(dir)) => Cifar10::open_folder(&dir)?,
                    Some(cifar10::Location::Archive(file)) => Cifar10::open_archive(&file)?,
                    // Not empty, not CIFAR: let `open` phrase the error.
                    None => Cifar10::open(&path)?,
                };
                let info = DatasetInfo {
                    kind: DatasetKind::Cifar10,
                    input_size: 32,
                    num_classes: CIFAR10_CLASSES.len(),
                    class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
                };
                (Storage::Cifar(cifar), info)
            }
            DatasetKind::ImageNet => {
                let net = ImageNet::open(&path, args.val_labels.as_deref())?;
                let info = DatasetInfo {
                    kind: DatasetKind::ImageNet,
                    input_size: args.image_size.unwrap_or(224),
                    num_classes: net.classes.len(),
                    class_names: net.classes.clone(),
                };
                (Storage::Folder(net), info)
            }
        };
        Ok(Data {
            image_size: info.input_size,
            info,
            storage,
            seed: args.seed,
            workers: args.workers.unwrap_or_else(default_workers),
            train_portion: args.train_portion,
            cutout: args.cutout,
            skip_bad_images: args.skip_bad_images,
        })
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// Number of images in `part`.
    pub fn len(&self, part: Part) -> Result<usize> {
        Ok(self.indices(part)?.map_or_else(|| self.set_len(part), |v| v.len()))
    }

    fn set_len(&self, part: Part) -> usize {
        match (&self.storage, part) {
            (Storage::Cifar(c), Part::Test) => c.test.len(),
            (Storage::Cifar(c), _) => c.train.len(),
            (Storage::Folder(n), Part::Test) => n.val.as_ref().map_or(0, ImageFolder::len),
            (Storage::Folder(n), _) => n.train.as_ref().map_or(0, ImageFolder::len),
        }
    }

    /// The training-set indices of a search part (`None`: the whole set).
    fn indices(&self, part: Part) -> Result<Option<Vec<usize>>> {
        match part {
            Part::Train | Part::Test => Ok(None),
            Part::SearchWeights | Part::SearchHeldOut => {
                let (weights, held) =
                    split_indices(self.set_len(Part::Train), self.train_portion, self.seed)?;
                let chosen = if part == Part::SearchWeights { weights } else { held };
                if chosen.is_empty() {
                    return Err(Error::BadOption(format!(
                        "--train-portion {} leaves the {} part of the training set empty",
                        self.train_portion,
                        if part == Part::SearchWeights { "weight-training" } else { "held-out" }
                    )));
                }
                Ok(Some(chosen))
            }
        }
    }

    /// The source behind `part`, with or without training augmentation.
    pub fn source(&self, part: Part, augment: bool, default_cutout: usize) -> Result<Arc<dyn Source>> {
        Ok(match &self.storage {
            Storage::Cifar(c) => {
                let set = if part == Part::Test { c.test.clone() } else { c.train.clone() };
                let aug = augment.then(|| CifarAugment {
                    cutout: self.cutout.unwrap_or(default_cutout),
                    ..Default::default()
                });
                Arc::new(CifarSource::new(set, aug))
            }
            Storage::Folder(n) => {
                let (folder, name) = if part == Part::Test { (&n.val, "val") } else { (&n.train, "train") };
                let folder = folder.as_ref().ok_or_else(|| {
                    let why = if part == Part::Test {
                        // The one layout mistake a search does not catch: say what to add.
                        "missing: training and evaluation score on a validation set of class \
                         folders (val/<class>/*.jpg beside train/); a search holds out part of \
                         the training images instead and runs without it"
                    } else {
                        "missing (needed for this command)"
                    };
                    Error::bad_file(n.root.join(name), why)
                })?;
                let size = self.image_size;
                let transform = if augment {
                    FolderTransform::Train(FolderAugment::paper(size))
                } else {
                    // 256/224 of the crop, as ImageNet evaluation does.
                    FolderTransform::Eval { resize: (size * 256 + 112) / 224, crop: size }
                };
                Arc::new(FolderSource::new(Arc::new(folder.clone()), transform))
            }
        })
    }

    /// A loader over `part`.
    pub fn loader(&self, part: Part, opts: &LoaderOptions) -> Result<Loader> {
        let source = self.source(part, opts.augment, opts.default_cutout)?;
        let indices = self.indices(part)?;
        if indices.as_ref().map_or(source.len(), Vec::len) == 0 {
            return Err(Error::BadOption(format!("{part:?}: the data set part is empty")));
        }
        let cfg = LoaderConfig {
            batch_size: opts.batch_size,
            shuffle: opts.shuffle,
            drop_last: opts.drop_last,
            seed: self.seed,
            workers: self.workers,
            prefetch: 2,
            rank: opts.rank,
            world_size: opts.world_size,
            every_sample: opts.every_sample,
            device: opts.device,
            skip_bad_images: self.skip_bad_images,
        };
        Loader::new(source, indices, cfg)
    }
}
