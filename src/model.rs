//! Fixed (evaluation) networks built from a genotype: the CIFAR network and the ImageNet
//! network of the DARTS family, with PyTorch's parameter names so a `state_dict` written by
//! the PyTorch definition of the same network loads directly.
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};
use crate::ops::{
    drop_path, Activation, BatchNorm2d, Conv2d, Conv2dSpec, Linear, Op, Preprocess, ReluConvBn,
};
use crate::space::{Cell as CellSpec, Genotype};

mod trace;

/// Which network family: they differ in stem, auxiliary head and input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// 32×32 inputs: one stride-1 stem of 3C channels.
    Cifar,
    /// 224×224 inputs: two stride-2 stems (stride 8 overall), first cell sees a reduction.
    Imagenet,
}

impl std::str::FromStr for NetworkKind {
    type Err = String;
    /// Accepts the data set names (`cifar10`, `imagenet`) as well as the family names.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cifar10" | "cifar-10" | "cifar" => Ok(NetworkKind::Cifar),
            "imagenet" => Ok(NetworkKind::Imagenet),
            _ => Err(format!("unknown dataset '{s}' (expected cifar10 or imagenet)")),
        }
    }
}

impl NetworkKind {
    /// Classes of the data set the family is named after.
    pub fn default_num_classes(self) -> i64 {
        match self {
            NetworkKind::Cifar => 10,
            NetworkKind::Imagenet => 1000,
        }
    }

    /// The input side the paper evaluates this family at.
    pub fn default_image_size(self) -> i64 {
        match self {
            NetworkKind::Cifar => 32,
            NetworkKind::Imagenet => 224,
        }
    }
}

/// Everything that determines a network's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub kind: NetworkKind,
    pub genotype: Genotype,
    /// Channels of the first cells (C); doubled at each reduction.
    pub init_channels: i64,
    /// Number of cells (L); reductions sit at L/3 and 2L/3.
    pub layers: i64,
    pub num_classes: i64,
    /// Build the auxiliary classifier after cell 2L/3 (used in training only).
    pub auxiliary: bool,
}

impl NetworkConfig {
    /// The paper's evaluation settings: CIFAR-10 36 channels × 20 cells, ImageNet 48 × 14.
    pub fn paper(kind: NetworkKind, genotype: Genotype) -> Self {
        match kind {
            NetworkKind::Cifar => NetworkConfig {
                kind,
                genotype,
                init_channels: 36,
                layers: 20,
                num_classes: 10,
                auxiliary: true,
            },
            NetworkKind::Imagenet => NetworkConfig {
                kind,
                genotype,
                init_channels: 48,
                layers: 14,
                num_classes: 1000,
                auxiliary: true,
            },
        }
    }

    /// Cells that reduce (halve the resolution and double the channels).
    pub fn is_reduction(&self, cell: i64) -> bool {
        cell == self.layers / 3 || cell == 2 * self.layers / 3
    }

    /// The cell after which the auxiliary head reads.
    pub fn auxiliary_cell(&self) -> i64 {
        2 * self.layers / 3
    }

    /// Checks that `size`×`size` inputs fit the network: every FactorizedReduce needs an even
    /// map, and the auxiliary head (in training) needs a 2×2 map after its pooling (CIFAR 29
    /// to 40 pixels, ImageNet 193 to 256 around the usual 32 and 224).
    pub fn check_input_size(&self, size: i64, with_auxiliary: bool) -> Result<()> {
        let half = |s: i64| (s + 1) / 2; // a 3×3 (or k×k, padding k/2) stride-2 window
        let family = match self.kind {
            NetworkKind::Cifar => "CIFAR",
            NetworkKind::Imagenet => "ImageNet",
        };
        let bad = |why: String| {
            Err(Error::BadOption(format!("{size}×{size} inputs do not fit this {family} network: {why}")))
        };
        let (mut prev_prev, mut prev, mut reduction_prev) = match self.kind {
            NetworkKind::Cifar => (size, size, false),
            NetworkKind::Imagenet => {
                let s0 = half(half(size));
                (s0, half(s0), true)
            }
        };
        for i in 0..self.layers {
            let reduction = self.is_reduction(i);
            if reduction_prev && prev_prev % 2 != 0 {
                return bad(format!("cell {i} halves an odd {prev_prev}×{prev_prev} map"));
            }
            if reduction && prev % 2 != 0 {
                return bad(format!("cell {i} halves an odd {prev}×{prev} map"));
            }
            let out = if reduction { prev / 2 } else { prev };
            if with_auxiliary && self.auxiliary && i == self.auxiliary_cell() {
                let stride = match self.kind {
                    NetworkKind::Cifar => 3,
                    NetworkKind::Imagenet => 2,
                };
                if out < 5 || (out - 5) / stride + 1 != 2 {
                    return bad(format!(
                        "the auxiliary head needs a 2×2 map after its pooling, it gets {out}×{out} \
                         features (use the family's usual input size or --auxiliary-weight 0)"
                    ));
                }
            }
            (prev_prev, prev, reduction_prev) = (prev, out, reduction);
        }
        Ok(())
    }

    /// Checks what would otherwise fail deep inside libtorch.
    pub fn validate(&self) -> Result<()> {
        self.genotype.validate(None)?;
        check_sizes(self.init_channels, self.layers, self.num_classes)?;
        if self.kind == NetworkKind::Imagenet && self.init_channels % 4 != 0 {
            return Err(Error::BadOption(format!(
                "ImageNet init channels must be a multiple of 4 (the first stem has C/2), got {}",
                self.init_channels
            )));
        }
        Ok(())
    }
}

/// The checks every cell network (fixed or supernet) needs on its sizes.
pub(crate) fn check_sizes(init_channels: i64, layers: i64, num_classes: i64) -> Result<()> {
    if init_channels < 2 || init_channels % 2 != 0 {
        return Err(Error::BadOption(format!(
            "init channels must be even and at least 2 (factorized reduce splits them in two), got {init_channels}"
        )));
    }
    if layers < 1 {
        return Err(Error::BadOption(format!("layers must be at least 1, got {layers}")));
    }
    if num_classes < 1 {
        return Err(Error::BadOption(format!("classes must be at least 1, got {num_classes}")));
    }
    Ok(())
}

/// One cell of a fixed network.
#[derive(Debug)]
pub struct Cell {
    preprocess0: Preprocess,
    preprocess1: ReluConvBn,
    /// Operations in evaluation order; `inputs[k]` is the state op k reads.
    ops: Vec<Op>,
    inputs: Vec<usize>,
    concat: Vec<usize>,
}

impl Cell {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        spec: &CellSpec,
        c_prev_prev: i64,
        c_prev: i64,
        c: i64,
        reduction: bool,
        reduction_prev: bool,
    ) -> Self {
        let preprocess0 = Preprocess::new(&p / "preprocess0", c_prev_prev, c, reduction_prev, true);
        let preprocess1 = ReluConvBn::new(&p / "preprocess1", c_prev, c, Conv2dSpec::new(1), true);
        let edges = spec.edges_by_node();
        let ops_path = &p / "_ops";
        let ops = edges
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let stride = if reduction && e.from < 2 { 2 } else { 1 };
                Op::new(&ops_path / k, e.op, c, stride, true)
            })
            .collect();
        Cell {
            preprocess0,
            preprocess1,
            ops,
            inputs: edges.iter().map(|e| e.from).collect(),
            concat: spec.concat.clone(),
        }
    }

    /// Output channels per input channel count C.
    fn multiplier(spec: &CellSpec) -> i64 {
        spec.concat.len() as i64
    }

    /// The cell on its two inputs, whose ReLUs it shares with the other cell that reads them.
    pub fn forward_t(&self, s0: &Activation, s1: &Activation, drop_prob: f64, train: bool) -> Tensor {
        let mut states = Vec::with_capacity(2 + self.ops.len() / 2);
        states.push(Activation::new(self.preprocess0.forward_t(s0, train)));
        states.push(Activation::new(self.preprocess1.forward_relu(s1.relu(), train)));
        for (ops, inputs) in self.ops.chunks(2).zip(self.inputs.chunks(2)) {
            let mut node: Option<Tensor> = None;
            for (op, &from) in ops.iter().zip(inputs) {
                let mut h = op.forward_shared(&states[from], train);
                if train && drop_prob > 0.0 && !op.is_identity() {
                    h = drop_path(&h, drop_prob);
                }
                node = Some(match node {
                    None => h,
                    Some(acc) => acc + h,
                });
            }
            if let Some(node) = node {
                states.push(Activation::new(node));
            }
        }
        let outputs: Vec<&Tensor> = self.concat.iter().map(|&i| states[i].tensor()).collect();
        Tensor::cat(&outputs, 1)
    }
}

/// `auxiliary_head`: a small classifier on the features after cell 2L/3.
#[derive(Debug)]
struct AuxiliaryHead {
    kind: NetworkKind,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    /// The CIFAR head normalises after its second convolution; the ImageNet one (as trained in
    /// the DARTS family, a typo kept for compatibility) does not.
    bn2: Option<BatchNorm2d>,
    classifier: Linear,
}

impl AuxiliaryHead {
    fn new(p: nn::Path, kind: NetworkKind, c: i64, num_classes: i64) -> Self {
        let f = &p / "features";
        let bn2 = match kind {
            NetworkKind::Cifar => Some(BatchNorm2d::new(&f / 6, 768, true)),
            NetworkKind::Imagenet => None,
        };
        AuxiliaryHead {
            kind,
            conv1: Conv2d::new(&f / 2, c, 128, Conv2dSpec::new(1)),
            bn1: BatchNorm2d::new(&f / 3, 128, true),
            conv2: Conv2d::new(&f / 5, 128, 768, Conv2dSpec::new(2)),
            bn2,
            classifier: Linear::new(&p / "classifier", 768, num_classes),
        }
    }

    /// Reads the ReLU of its input that the next cells share.
    fn forward_t(&self, x: &Activation, train: bool) -> Tensor {
        // CIFAR: 8×8 → 2×2 (stride 3); ImageNet: 7×7 → 2×2 (stride 2).
        let stride = match self.kind {
            NetworkKind::Cifar => 3,
            NetworkKind::Imagenet => 2,
        };
        let x = x.relu().avg_pool2d([5, 5], [stride, stride], [0, 0], false, false, None::<i64>);
        let mut x = self.bn1.forward_t(&self.conv1.forward(&x), train);
        let _ = x.relu_(); // BatchNorm's backward does not keep its output
        let mut x = self.conv2.forward(&x);
        if let Some(bn) = &self.bn2 {
            x = bn.forward_t(&x, train);
        }
        self.classifier.forward(&x.relu().flatten(1, -1))
    }
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per network
enum Stem {
    /// `stem`: conv 3×3 to 3C, BN.
    Cifar { conv: Conv2d, bn: BatchNorm2d },
    /// `stem0`: conv s2 to C/2, BN, ReLU, conv s2 to C, BN; `stem1`: ReLU, conv s2, BN.
    Imagenet {
        conv0a: Conv2d,
        bn0a: BatchNorm2d,
        conv0b: Conv2d,
        bn0b: BatchNorm2d,
        conv1: Conv2d,
        bn1: BatchNorm2d,
    },
}

impl Stem {
    /// Returns (s0, s1): the two states the first cell reads (one shared state on CIFAR).
    fn forward_t(&self, x: &Tensor, train: bool) -> (Rc<Activation>, Rc<Activation>) {
        match self {
            Stem::Cifar { conv, bn } => {
                let s = Rc::new(Activation::new(bn.forward_t(&conv.forward(x), train)));
                (Rc::clone(&s), s)
            }
            Stem::Imagenet { conv0a, bn0a, conv0b, bn0b, conv1, bn1 } => {
                let s0 = bn0a.forward_t(&conv0a.forward(x), train).relu();
                let s0 = Activation::new(bn0b.forward_t(&conv0b.forward(&s0), train));
                let s1 = bn1.forward_t(&conv1.forward(s0.relu()), train);
                (Rc::new(s0), Rc::new(Activation::new(s1)))
            }
        }
    }
}

/// A fixed network: stem, L cells, optional auxiliary head, global pooling and classifier.
#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    stem: Stem,
    cells: Vec<Cell>,
    auxiliary_head: Option<AuxiliaryHead>,
    classifier: Linear,
    /// Drop-path probability applied to non-identity edges in training (0 = off).
    pub drop_path_prob: f64,
    /// Run in channels-last layout (faster on the CPU); set from the device at construction.
    pub channels_last: bool,
}

/// The outputs of a forward pass.
pub struct Logits {
    pub logits: Tensor,
    /// The auxiliary head's logits: only in training mode with an auxiliary head.
    pub auxiliary: Option<Tensor>,
}

impl Network {
    /// Builds the network's variables under `p` (normally a VarStore's root).
    pub fn new(p: &nn::Path, config: NetworkConfig) -> Result<Self> {
        config.validate()?;
        let c = config.init_channels;
        let (stem, mut c_prev_prev, mut c_prev, mut reduction_prev) = match config.kind {
            NetworkKind::Cifar => {
                let s = p / "stem";
                let stem = Stem::Cifar {
                    conv: Conv2d::new(&s / 0, 3, 3 * c, Conv2dSpec::new(3).padding(1)),
                    bn: BatchNorm2d::new(&s / 1, 3 * c, true),
                };
                (stem, 3 * c, 3 * c, false)
            }
            NetworkKind::Imagenet => {
                let s0 = p / "stem0";
                let s1 = p / "stem1";
                let k3s2 = Conv2dSpec::new(3).stride(2).padding(1);
                let stem = Stem::Imagenet {
                    conv0a: Conv2d::new(&s0 / 0, 3, c / 2, k3s2),
                    bn0a: BatchNorm2d::new(&s0 / 1, c / 2, true),
                    conv0b: Conv2d::new(&s0 / 3, c / 2, c, k3s2),
                    bn0b: BatchNorm2d::new(&s0 / 4, c, true),
                    conv1: Conv2d::new(&s1 / 1, c, c, k3s2),
                    bn1: BatchNorm2d::new(&s1 / 2, c, true),
                };
                (stem, c, c, true)
            }
        };
        let mut c_curr = c;
        let mut cells = Vec::with_capacity(config.layers as usize);
        let mut c_auxiliary = c_prev;
        let cells_path = p / "cells";
        for i in 0..config.layers {
            let reduction = config.is_reduction(i);
            if reduction {
                c_curr *= 2;
            }
            let spec = if reduction { &config.genotype.reduce } else { &config.genotype.normal };
            cells.push(Cell::new(
                &cells_path / i,
                spec,
                c_prev_prev,
                c_prev,
                c_curr,
                reduction,
                reduction_prev,
            ));
            reduction_prev = reduction;
            c_prev_prev = c_prev;
            c_prev = Cell::multiplier(spec) * c_curr;
            if i == config.auxiliary_cell() {
                c_auxiliary = c_prev;
            }
        }
        let auxiliary_head = config
            .auxiliary
            .then(|| AuxiliaryHead::new(p / "auxiliary_head", config.kind, c_auxiliary, config.num_classes));
        let classifier = Linear::new(p / "classifier", c_prev, config.num_classes);
        let channels_last = crate::ops::channels_last_default(p.device());
        Ok(Network { config, stem, cells, auxiliary_head, classifier, drop_path_prob: 0.0, channels_last })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Logits (and, in training with an auxiliary head, the auxiliary logits) for a batch of
    /// normalised images N×3×H×W.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Logits {
        let x = if self.channels_last { crate::ops::to_channels_last(x) } else { x.shallow_clone() };
        let (mut s0, mut s1) = self.stem.forward_t(&x, train);
        let mut auxiliary = None;
        for (i, cell) in self.cells.iter().enumerate() {
            let next = cell.forward_t(&s0, &s1, self.drop_path_prob, train);
            s0 = std::mem::replace(&mut s1, Rc::new(Activation::new(next)));
            if train && i as i64 == self.config.auxiliary_cell() {
                if let Some(head) = &self.auxiliary_head {
                    auxiliary = Some(head.forward_t(&s1, train));
                }
            }
        }
        let pooled = s1.tensor().adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        Logits { logits: self.classifier.forward(&pooled), auxiliary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a train-mode forward at `size` runs in libtorch.
    fn runs(config: &NetworkConfig, size: i64) -> bool {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Network::new(&vs.root(), config.clone()).unwrap();
        let x = Tensor::zeros([2, 3, size, size], (tch::Kind::Float, tch::Device::Cpu));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tch::no_grad(|| net.forward_t(&x, true));
        }))
        .is_ok()
    }

    #[test]
    fn the_input_size_check_agrees_with_libtorch() {
        let genotype = crate::space::published("CNAS").unwrap();
        let small = |kind| NetworkConfig {
            init_channels: 4,
            layers: 3,
            ..NetworkConfig::paper(kind, genotype.clone())
        };
        let cifar = small(NetworkKind::Cifar);
        assert!(cifar.check_input_size(32, true).is_ok());
        assert!(cifar.check_input_size(48, true).is_err());
        assert!(cifar.check_input_size(48, false).is_ok());
        let imagenet = small(NetworkKind::Imagenet);
        assert!(imagenet.check_input_size(224, true).is_ok());
        assert!(imagenet.check_input_size(64, true).is_err());
        assert!(imagenet.check_input_size(64, false).is_ok());
        for (config, sizes) in
            [(&cifar, vec![28, 30, 32, 33, 40, 42, 48]), (&imagenet, vec![64, 100, 192, 193, 224, 256, 264])]
        {
            for size in sizes {
                let predicted = config.check_input_size(size, true).is_ok();
                assert_eq!(predicted, runs(config, size), "{:?} at {size}", config.kind);
            }
        }
    }
}
