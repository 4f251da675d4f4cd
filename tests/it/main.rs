//! The integration tests, one binary (each test binary links libtorch, and linking dominated
//! the build of the tests): one module per area, helpers in `common`.
//!
//! Run one area with `cargo test --test it search::`, one test by its path, e.g.
//! `cargo test --test it dist::launch_and_environment_mistakes_are_user_errors`.
//!
//! The tests run on several threads of one process, so what is global to the process is
//! handled here:
//! - libtorch's random generator: whoever seeds it or draws from it in this process holds
//!   `common::torch_rng` meanwhile (`common::seed_torch`, `common::with_torch_rng`);
//! - `tch::set_num_threads(1)` (controller, supernet and search tests) also sets the intra-op
//!   thread count of the test threads started after them. Where a result depends on the count
//!   (gradients compared with PyTorch's: `reference` sets PyTorch's 2, `supernet` the released
//!   run's 1) the test sets it itself; elsewhere it changes speed and float rounding only, and
//!   the results have a tolerance or are counted in whole images;
//! - autocast state is libtorch's thread-local state; the synchronised-BatchNorm group of
//!   `cnas::dist` is only set by `cnas` processes (the `dist` tests run ranks as processes);
//! - no test sets environment variables or the working directory in this process, installs
//!   a tracing subscriber, or uses a fixed port or a fixed temporary path: servers and
//!   distributed runs take free ports, files go to temporary folders of their own.
mod common;

mod cli;
mod compare;
mod controller;
mod data_cifar;
mod data_download;
mod data_folder;
mod data_loader;
mod dist;
mod export;
mod failures;
mod fuzz;
mod options;
mod own_data;
mod pretrained;
mod recovery;
mod reference;
mod repeat;
mod score;
mod search;
mod see;
mod supernet;
mod torchrun;
mod train;
mod weights;
