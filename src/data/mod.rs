//! Data sets and the loader (CIFAR-10, ImageNet-style image folders).
//!
//! # In a command
//!
//! ```no_run
//! use cnas::data::{Data, DataArgs, LoaderOptions, Part};
//! # fn demo(args: DataArgs, device: tch::Device) -> cnas::Result<()> {
//! // `args` comes from `#[command(flatten)] data: DataArgs`.
//! let data = Data::open(&args, true)?; // downloads CIFAR-10 into an empty --data folder
//! let info = data.info(); // input_size, num_classes, class_names
//! let opts = LoaderOptions::train(64).device(device).default_cutout(16);
//! let train = data.loader(Part::Train, &opts)?;
//! for epoch in 0..2 {
//!     for batch in train.epoch(epoch) {
//!         let (images, labels) = batch?; // f32 N×3×H×W normalised, i64 N, on the CPU
//!         let (images, labels) = (images.to_device(device), labels.to_device(device));
//!         # let _ = (images, labels, info);
//!     }
//! }
//! let test = data.loader(Part::Test, &LoaderOptions::eval(256))?;
//! # let _ = test; Ok(()) }
//! ```
//!
//! Search uses [`Part::SearchWeights`] (the `--train-portion` share of the training set, 40% by
//! default) to train weights and [`Part::SearchHeldOut`] (the rest) to score architectures; the
//! split is drawn from `--seed`. [`Part::Test`] (CIFAR-10's test set, ImageNet's `val/`) is
//! never used to choose anything.
//!
//! # Guarantees
//!
//! - The same seed gives the same batches in the same order, whatever `--workers`: shuffling is
//!   keyed by (seed, epoch), each sample's augmentation by (seed, epoch, index).
//! - With `rank`/`world_size`, every rank gets the same number of samples and batches, and no
//!   index is seen twice in an epoch; when the set size is not a multiple of `world_size`, the
//!   last `n % world_size` samples of that epoch's order are left out. Evaluation loaders
//!   ([`LoaderOptions::eval`]) leave nothing out: the first `n % world_size` ranks get one
//!   sample more, and the ranks together see every sample once.
//! - Batches are prepared by `workers` threads, at most `workers × 2` ahead of the consumer;
//!   pinned memory when the loader's device is CUDA and libtorch sees a GPU, so the copy can be
//!   asynchronous: `images.to_device_(device, tch::Kind::Float, true, false)`.
//! - A file that cannot be used is an error naming it ([`crate::Error::BadFile`] or
//!   [`crate::Error::Io`], both user errors); with `--skip-bad-images` an unreadable image is a
//!   warning instead, a count is logged at the end of the epoch, and its batch comes out shorter.
//!
//! # Pieces
//!
//! - [`cifar10`]: the binary layout ([`cifar10::read_records`], [`cifar10::Cifar10`]), the
//!   class names; [`download`]: fetching it (MD5-checked, resumable, atomic);
//! - [`folder`]: class-folder data sets, flat `val/` with a label file, [`folder::decode_rgb`];
//! - [`transforms`]: the augmentations, each split into a seeded draw and a pure apply;
//! - [`loader`]: [`Loader`] over any [`Source`];
//! - [`normalize`]: channel means and standard deviations.
mod args;
pub mod cifar10;
mod dataset;
pub mod download;
pub mod folder;
pub mod loader;
pub mod normalize;
pub mod rng;
pub mod transforms;

pub use args::{DataArgs, DataConfig, DatasetKind, DEFAULT_SEED};
pub use cifar10::{read_records, CIFAR10_CLASSES};
pub use dataset::{split_indices, Data, DatasetInfo, LoaderOptions, Part};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, Source};
pub use normalize::{CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD};
pub use rng::{sample_rng, SampleRng};

/// Moves a batch to `device` without waiting for the copy: the loader hands over pinned memory
/// on CUDA, so the transfer overlaps with the work already queued.
pub fn to_device(t: &tch::Tensor, device: tch::Device) -> tch::Tensor {
    if device == tch::Device::Cpu {
        t.shallow_clone()
    } else {
        t.to_device_(device, t.kind(), true, false)
    }
}
