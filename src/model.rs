//! Fixed (evaluation) networks built from a genotype: the CIFAR network and the ImageNet
//! network of the DARTS family, with PyTorch's parameter names so a `state_dict` written by
//! the PyTorch definition of the same network loads directly.
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};
use crate::ops::{
    count_variables, drop_path, Activation, BatchNorm2d, Conv2d, Conv2dSpec, Footprint, Linear, Op,
    Preprocess, ReluConvBn,
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
        reduction_cells(self.layers).contains(&cell)
    }

    /// The cell after which the auxiliary head reads.
    pub fn auxiliary_cell(&self) -> i64 {
        reduction_cells(self.layers)[1]
    }

    /// Checks that `size`×`size` inputs fit the network: every FactorizedReduce needs an even
    /// map, and the auxiliary head (in training) needs a 2×2 map after its pooling (CIFAR 29
    /// to 40 pixels, ImageNet 193 to 256 around the usual 32 and 224).
    pub fn check_input_size(&self, size: i64, with_auxiliary: bool) -> Result<()> {
        self.check_input_shape(size, size, with_auxiliary)
    }

    /// [`NetworkConfig::check_input_size`] for `height`×`width` inputs: each side must fit.
    pub fn check_input_shape(&self, height: i64, width: i64, with_auxiliary: bool) -> Result<()> {
        let family = match self.kind {
            NetworkKind::Cifar => "CIFAR",
            NetworkKind::Imagenet => "ImageNet",
        };
        for side in if height == width { vec![height] } else { vec![height, width] } {
            let map = |s: i64| {
                if height == width {
                    format!("{s}×{s} map")
                } else {
                    format!("map with a side of {s}")
                }
            };
            self.check_side(side, with_auxiliary, map).map_err(|why| {
                Error::BadOption(format!("{height}×{width} inputs do not fit this {family} network: {why}"))
            })?;
        }
        Ok(())
    }

    /// Why one side of the input does not fit, if it does not; `map` names a map by its side.
    fn check_side(&self, size: i64, with_auxiliary: bool, map: impl Fn(i64) -> String) -> Result<(), String> {
        let half = |s: i64| (s + 1) / 2; // a 3×3 (or k×k, padding k/2) stride-2 window
        let (s0, s1, reduction_prev) = match self.kind {
            NetworkKind::Cifar => (size, size, false),
            NetworkKind::Imagenet => {
                let s0 = half(half(size));
                (s0, half(s0), true)
            }
        };
        walk_cell_sides(self.layers, (s0, s1), reduction_prev, &map, |i, out| {
            if !(with_auxiliary && self.auxiliary && i == self.auxiliary_cell()) {
                return Ok(());
            }
            let stride = match self.kind {
                NetworkKind::Cifar => 3,
                NetworkKind::Imagenet => 2,
            };
            // A 5×5 window at this stride leaves 2×2 from sides 5 + stride to 4 + 2·stride.
            let (lo, hi) = (5 + stride, 4 + 2 * stride);
            if (lo..=hi).contains(&out) {
                return Ok(());
            }
            Err(format!(
                "the auxiliary head after cell {i} pools with a 5×5 window at stride {stride} and \
                 needs a map {lo} to {hi} pixels wide there to get the 2×2 it classifies, but \
                 cell {i} gives a {} (use the family's usual input size or --auxiliary-weight 0)",
                map(out)
            ))
        })
    }

    /// The genotype's cell for a normal or a reduction cell.
    fn spec(&self, reduction: bool) -> &CellSpec {
        if reduction {
            &self.genotype.reduce
        } else {
            &self.genotype.normal
        }
    }

    /// Channels after the auxiliary head's cell and after the last cell.
    fn output_channels(&self, runs: &[CellRun]) -> (i64, i64) {
        let out =
            |run: &CellRun| Cell::multiplier(self.spec(run.shape.reduction)).saturating_mul(run.shape.c);
        let aux = self.auxiliary_cell();
        let c_auxiliary = runs.iter().find(|r| (r.first..r.first + r.count).contains(&aux)).map_or(0, out);
        (c_auxiliary, runs.last().map_or(0, out))
    }

    /// What the network's variables take, counted on shapes alone without allocating: one cell
    /// of each run of identical cells is counted, so any depth costs the same.
    pub fn footprint(&self) -> Footprint {
        let scratch = nn::VarStore::new(tch::Device::Cpu);
        let p = scratch.root();
        let mut stem_shape = (0, 0, false);
        let mut total = count_variables(|| {
            let (_, c_pp, c_p, reduction_prev) = Stem::new(&p, self.kind, self.init_channels);
            stem_shape = (c_pp, c_p, reduction_prev);
        });
        let runs = cell_runs(self.layers, self.init_channels, stem_shape, |r| Cell::multiplier(self.spec(r)));
        for run in &runs {
            let cell = count_variables(|| Cell::new(&p / "cell", self.spec(run.shape.reduction), run.shape));
            total += cell.times(run.count as f64);
        }
        let (c_auxiliary, c_last) = self.output_channels(&runs);
        if self.auxiliary {
            total +=
                count_variables(|| AuxiliaryHead::new(&p / "aux", self.kind, c_auxiliary, self.num_classes));
        }
        total += count_variables(|| Linear::new(&p / "classifier", c_last, self.num_classes));
        total
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

/// The cells that reduce in a network of `layers` cells: L/3 and 2L/3 (computed so that no
/// depth overflows).
pub(crate) fn reduction_cells(layers: i64) -> [i64; 2] {
    [layers / 3, layers / 3 * 2 + layers % 3 * 2 / 3]
}

/// Follows one side of the feature maps through `layers` cells (fixed network or supernet) from
/// the sides of the two states the first cell reads, `reduction_prev` telling whether the first
/// of them goes through a factorized reduce. Fails at the first cell that would halve an odd
/// map (`map` names a map by its side); after every cell it visits, `visit(cell, side out)` may
/// fail too. Cells that neither reduce nor follow a reduction keep the map as it is and are
/// skipped (they are never visited), so any depth takes a few steps; the auxiliary head sits
/// after a reduction, which is always visited.
pub(crate) fn walk_cell_sides(
    layers: i64,
    (s0, s1): (i64, i64),
    reduction_prev: bool,
    map: impl Fn(i64) -> String,
    mut visit: impl FnMut(i64, i64) -> Result<(), String>,
) -> Result<(), String> {
    let (mut prev_prev, mut prev, mut reduction_prev) = (s0, s1, reduction_prev);
    let reductions = reduction_cells(layers);
    let mut i = 0;
    while i < layers {
        let reduction = reductions.contains(&i);
        // A factorized reduce concatenates two stride-2 halves, which differ on odd sides.
        for (halves, side) in [(reduction_prev, prev_prev), (reduction, prev)] {
            if halves && side % 2 != 0 {
                return Err(format!(
                    "cell {i} halves an odd {} (a factorized reduce needs even sides)",
                    map(side)
                ));
            }
        }
        let out = if reduction { prev / 2 } else { prev };
        visit(i, out)?;
        (prev_prev, prev, reduction_prev) = (prev, out, reduction);
        i += 1;
        let next = reductions.into_iter().filter(|&r| r >= i).min().unwrap_or(layers);
        if !reduction && next > i {
            (prev_prev, reduction_prev, i) = (prev, false, next);
        }
    }
    Ok(())
}

/// What a cell's constructor needs: its input and node channels, and whether it and the cell
/// before it reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CellShape {
    pub c_prev_prev: i64,
    pub c_prev: i64,
    pub c: i64,
    pub reduction: bool,
    pub reduction_prev: bool,
}

/// Cells `first..first + count`, all of one shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CellRun {
    pub first: i64,
    pub count: i64,
    pub shape: CellShape,
}

/// The shapes of the `layers` cells of a cell network (fixed or supernet) whose stem gives
/// `stem` = (C_prev_prev, C_prev, reduction_prev), with `c` channels at first, doubled at cells
/// L/3 and 2L/3; a cell outputs `multiplier(reduction) × C` channels. Cells of one shape in a
/// row form one run, so the list is short for any depth. Channel counts saturate rather than
/// overflow (such a network is refused as too large before it is built).
pub(crate) fn cell_runs(
    layers: i64,
    c: i64,
    stem: (i64, i64, bool),
    multiplier: impl Fn(bool) -> i64,
) -> Vec<CellRun> {
    let reductions = reduction_cells(layers);
    let (mut c_prev_prev, mut c_prev, mut reduction_prev) = stem;
    let mut c = c;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < layers {
        let reduction = reductions.contains(&i);
        if reduction {
            c = c.saturating_mul(2);
        }
        let shape = CellShape { c_prev_prev, c_prev, c, reduction, reduction_prev };
        let c_out = multiplier(reduction).saturating_mul(c);
        // The next cells repeat this one until the next reduction when nothing changes.
        let steady = !reduction && !reduction_prev && c_prev_prev == c_prev && c_prev == c_out;
        let next_reduction = [reductions[0], reductions[1], layers].into_iter().filter(|&r| r > i).min();
        let count = if steady { next_reduction.unwrap_or(layers) - i } else { 1 };
        runs.push(CellRun { first: i, count, shape });
        (c_prev_prev, c_prev, reduction_prev) = (c_prev, c_out, reduction);
        i += count;
    }
    runs
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
    fn new(p: nn::Path, spec: &CellSpec, shape: CellShape) -> Self {
        let CellShape { c_prev_prev, c_prev, c, reduction, reduction_prev } = shape;
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
    /// The stem for `c` init channels and the shape the first cell reads:
    /// (C_prev_prev, C_prev, reduction_prev).
    fn new(p: &nn::Path, kind: NetworkKind, c: i64) -> (Self, i64, i64, bool) {
        match kind {
            NetworkKind::Cifar => {
                let s = p / "stem";
                // Saturating: an absurd width is refused as too large, not overflowed.
                let c_stem = c.saturating_mul(3);
                let stem = Stem::Cifar {
                    conv: Conv2d::new(&s / 0, 3, c_stem, Conv2dSpec::new(3).padding(1)),
                    bn: BatchNorm2d::new(&s / 1, c_stem, true),
                };
                (stem, c_stem, c_stem, false)
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
        }
    }

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
    /// Builds the network's variables under `p` (normally a VarStore's root). A network whose
    /// parameters would not fit in the device's free memory is refused before anything is
    /// allocated, and an allocation that fails all the same is an error, not a panic.
    pub fn new(p: &nn::Path, config: NetworkConfig) -> Result<Self> {
        config.validate()?;
        let what =
            || format!("the network (init channels {}, {} layers)", config.init_channels, config.layers);
        crate::ops::build_within_memory(p.device(), config.footprint(), what, || Self::build(p, &config))
    }

    /// The variables in the same order, names and shapes as PyTorch's definition.
    fn build(p: &nn::Path, config: &NetworkConfig) -> Self {
        let (stem, c_prev_prev, c_prev, reduction_prev) = Stem::new(p, config.kind, config.init_channels);
        let runs =
            cell_runs(config.layers, config.init_channels, (c_prev_prev, c_prev, reduction_prev), |r| {
                Cell::multiplier(config.spec(r))
            });
        let cells_path = p / "cells";
        let mut cells = Vec::new();
        for run in &runs {
            for i in run.first..run.first + run.count {
                cells.push(Cell::new(&cells_path / i, config.spec(run.shape.reduction), run.shape));
            }
        }
        let (c_auxiliary, c_last) = config.output_channels(&runs);
        let auxiliary_head = config
            .auxiliary
            .then(|| AuxiliaryHead::new(p / "auxiliary_head", config.kind, c_auxiliary, config.num_classes));
        let classifier = Linear::new(p / "classifier", c_last, config.num_classes);
        let channels_last = crate::ops::channels_last_default(p.device());
        Network {
            config: config.clone(),
            stem,
            cells,
            auxiliary_head,
            classifier,
            drop_path_prob: 0.0,
            channels_last,
        }
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
pub(crate) mod tests {
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

    /// What a VarStore holds: (values, variables).
    pub(crate) fn held(vs: &nn::VarStore) -> crate::ops::Footprint {
        let vars = vs.variables();
        let elements: i64 = vars.values().map(|t| t.numel() as i64).sum();
        crate::ops::Footprint { elements: elements as f64, tensors: vars.len() as f64 }
    }

    #[test]
    fn the_footprint_is_what_is_built() {
        let genotype = crate::space::published("CNAS").unwrap();
        let darts = crate::space::published("DARTS_V2").unwrap();
        for (kind, genotype, init_channels, layers, auxiliary) in [
            (NetworkKind::Cifar, &genotype, 4, 3, true),
            (NetworkKind::Cifar, &darts, 6, 1, false),
            (NetworkKind::Cifar, &genotype, 2, 2, true),
            (NetworkKind::Cifar, &darts, 4, 11, true),
            (NetworkKind::Imagenet, &genotype, 8, 5, true),
            (NetworkKind::Imagenet, &darts, 4, 9, false),
        ] {
            let config = NetworkConfig {
                kind,
                genotype: genotype.clone(),
                init_channels,
                layers,
                num_classes: 7,
                auxiliary,
            };
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _net = Network::new(&vs.root(), config.clone()).unwrap();
            assert_eq!(config.footprint(), held(&vs), "{kind:?} C={init_channels} L={layers}");
        }
    }

    #[test]
    fn a_network_too_large_for_memory_is_refused_before_anything_is_allocated() {
        let genotype = crate::space::published("CNAS").unwrap();
        let config = NetworkConfig {
            init_channels: 100_000,
            layers: 2,
            ..NetworkConfig::paper(NetworkKind::Cifar, genotype)
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        match Network::new(&vs.root(), config) {
            Err(e @ Error::OutOfMemory(_)) => {
                let text = e.to_string();
                assert!(text.contains("(init channels 100000, 2 layers) needs about 11028 GiB"), "{text}");
            }
            // Only where the free memory cannot be read (not Linux).
            Err(e) => assert!(!std::path::Path::new("/proc/meminfo").exists(), "{e}"),
            Ok(_) => panic!("built a 11 TiB network"),
        }
        assert!(vs.variables().is_empty());
    }

    #[test]
    fn any_depth_or_width_is_sized_and_checked_in_a_few_steps() {
        let genotype = crate::space::published("CNAS").unwrap();
        let deep = NetworkConfig { layers: i64::MAX, ..NetworkConfig::paper(NetworkKind::Cifar, genotype) };
        assert!(deep.check_input_size(32, true).is_ok());
        assert_eq!(reduction_cells(i64::MAX), [i64::MAX / 3, i64::MAX / 3 * 2]);
        assert_eq!(reduction_cells(20), [6, 13]);
        let wide = NetworkConfig { init_channels: i64::MAX - 1, ..deep.clone() };
        for config in [deep, wide] {
            let bytes = config.footprint().bytes();
            assert!(bytes.is_finite() && bytes > 1e18, "{bytes}");
        }
    }

    /// The input size check cell by cell, without skipping: whether `size` fits.
    fn fits_walking_every_cell(config: &NetworkConfig, size: i64) -> bool {
        let half = |s: i64| (s + 1) / 2;
        let (mut prev_prev, mut prev, mut reduction_prev) = match config.kind {
            NetworkKind::Cifar => (size, size, false),
            NetworkKind::Imagenet => (half(half(size)), half(half(half(size))), true),
        };
        for i in 0..config.layers {
            let reduction = config.is_reduction(i);
            if (reduction_prev && prev_prev % 2 != 0) || (reduction && prev % 2 != 0) {
                return false;
            }
            let out = if reduction { prev / 2 } else { prev };
            let stride = if config.kind == NetworkKind::Cifar { 3 } else { 2 };
            if config.auxiliary && i == config.auxiliary_cell() && (out < 5 || (out - 5) / stride + 1 != 2) {
                return false;
            }
            (prev_prev, prev, reduction_prev) = (prev, out, reduction);
        }
        true
    }

    #[test]
    fn skipping_unchanging_cells_checks_the_same() {
        let genotype = crate::space::published("CNAS").unwrap();
        for kind in [NetworkKind::Cifar, NetworkKind::Imagenet] {
            for layers in 1..24 {
                for auxiliary in [false, true] {
                    let config =
                        NetworkConfig { layers, auxiliary, ..NetworkConfig::paper(kind, genotype.clone()) };
                    for size in 8..300 {
                        let fits = config.check_input_size(size, true).is_ok();
                        assert_eq!(
                            fits,
                            fits_walking_every_cell(&config, size),
                            "{kind:?} L={layers} {size}"
                        );
                    }
                }
            }
        }
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
