//! cnas: Curriculum Neural Architecture Search on libtorch.
//!
//! One module per concern: [`space`] (primitives, genotypes), [`ops`] (the operations an edge
//! can carry), [`model`] (fixed CIFAR and ImageNet networks), [`supernet`] and [`controller`]
//! (weight sharing and the LSTM that samples cells), [`search`] (the curriculum search),
//! [`train`] (retraining a genotype from scratch) and [`eval`] (scoring it), [`optim`],
//! [`data`] (data sets and the loader), [`weights`] (state_dict I/O), [`profile`] and
//! [`report`] (parameter and multiply-add counts), [`predict`], [`device`] (`--device`),
//! [`export`] (`.pth`, safetensors and ONNX out), [`dist`] (collectives of data-parallel runs);
//! `sys` is the one door to the C++ shims in `csrc/`.
pub mod amp;
pub mod controller;
pub mod data;
pub mod device;
pub mod dist;
pub mod draw;
pub mod error;
pub mod eval;
pub mod export;
pub mod model;
pub mod ops;
pub mod optim;
pub mod predict;
pub mod profile;
pub mod report;
pub mod run;
pub mod search;
pub mod space;
pub mod supernet;
mod sys;
pub mod tensorboard;
pub mod train;
pub mod util;
pub mod weights;

pub use error::{Error, Result};
