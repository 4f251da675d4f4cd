//! What a paper table reports about a network: parameters and multiply-adds.
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::model::Network;

/// Sizes of one network, counted the way the DARTS family counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Trainable parameters, auxiliary head excluded (what papers report).
    pub params: i64,
    /// Trainable parameters including the auxiliary head.
    pub params_total: i64,
    /// Multiply-adds of one image's inference forward pass (convolutions and linear layers).
    pub madds: u64,
    /// The input side the multiply-adds were counted at.
    pub image_size: i64,
}

/// (params without auxiliary head, all params) of the trainable variables in `vs`.
pub fn count_params(vs: &nn::VarStore) -> (i64, i64) {
    let mut without_aux = 0;
    let mut total = 0;
    for (name, t) in vs.variables() {
        if !t.requires_grad() {
            continue;
        }
        let n = t.numel() as i64;
        total += n;
        if !name.starts_with("auxiliary_head.") {
            without_aux += n;
        }
    }
    (without_aux, total)
}

/// Multiply-adds of one forward pass of a single `image_size`² image in inference mode.
pub fn count_madds(net: &Network, image_size: i64, device: Device) -> u64 {
    let x = Tensor::zeros([1, 3, image_size, image_size], (Kind::Float, device));
    let (_, madds) = crate::ops::count_madds(|| tch::no_grad(|| net.forward_t(&x, false)));
    madds
}

/// Both counts for a network built in `vs`.
pub fn profile(vs: &nn::VarStore, net: &Network, image_size: i64) -> Profile {
    let (params, params_total) = count_params(vs);
    Profile { params, params_total, madds: count_madds(net, image_size, vs.device()), image_size }
}
