//! cnas: Curriculum Neural Architecture Search on libtorch.
//!
//! One module per concern: [`space`] (primitives, genotypes), [`ops`] (the operations an edge
//! can carry), [`model`] (fixed CIFAR and ImageNet networks), [`weights`] (state_dict I/O),
//! [`profile`] (parameter and multiply-add counts), [`input`] (images and arrays to predict
//! on), [`device`] (`--device`).
pub mod device;
pub mod error;
pub mod space;

pub use error::{Error, Result};
pub mod controller;
pub mod data;
pub mod draw;
pub mod model;
pub mod ops;
pub mod optim;
pub mod predict;
pub mod profile;
pub mod report;
pub mod search;
pub mod supernet;
pub mod tensorboard;
pub mod train;
pub mod util;
pub mod weights;
