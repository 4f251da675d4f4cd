//! The weight-sharing search network (ENAS style): every edge of every cell holds every
//! candidate operation, and each forward pass runs only the operations of one sampled
//! architecture, so one batch trains one child network while all children share weights.
//!
//! # Layout and parameter names
//!
//! The layout and names follow the DARTS search model (`model_search.py`), so a supernet
//! `state_dict` lines up with PyTorch's:
//!
//! * inputs up to 64 px ([`SupernetStem::Cifar`], the released search's): `stem.0.weight`
//!   (conv 3×3, 3 → 3C), `stem.1.{weight,bias,running_mean,running_var}`; larger inputs
//!   ([`SupernetStem::Imagenet`]): `stem0.*` and `stem1.*` as the ImageNet network names them
//!   (see [`SupernetStem`]);
//! * `cells.{i}.preprocess0.*` (a ReLU-conv1×1-BN at `op.1`/`op.2`, or a factorized reduce at
//!   `conv_1`/`conv_2`/`bn` after a reduction cell) and `cells.{i}.preprocess1.op.*`, with
//!   non-affine BatchNorm;
//! * `cells.{i}._ops.{e}._ops.{k}.*`: operation `k` (its position in
//!   [`SupernetConfig::primitives`]) on edge `e` (see [`edge_index`]), built non-affine; a
//!   pooling operation is a Sequential of the pool (`0`, no variables) and a non-affine
//!   BatchNorm (`1.running_mean`, `1.running_var`), as DARTS's MixedOp builds it;
//! * `classifier.weight`, `classifier.bias`.
//!
//! Reductions sit at cells L/3 and 2L/3 and double the channels; a cell's output concatenates
//! all of its intermediate nodes (`nodes × C` channels).
//!
//! # Sampled architectures
//!
//! [`Supernet::forward_t`] takes one [`space::Cell`] for normal cells and one for reduction
//! cells. Unlike a genotype, a sampled cell may give a node any number of incoming edges
//! (including none: the node is then zeros of the node's shape, which is how the
//! node-growing curriculum leaves later nodes unsearched), and its `concat` is ignored (the
//! supernet always concatenates every node). Edges are checked once per call, in time linear
//! in the edge count and without touching tensors: an op outside `primitives` or an edge
//! outside the cell is a [`Error::BadOption`], never a panic.
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};
use crate::model::{CellRun, CellShape};
use crate::ops::{
    count_variables, Activation, BatchNorm2d, Conv2d, Conv2dSpec, Footprint, Linear, Op, Preprocess,
    ReluConvBn,
};
use crate::space::{self, Primitive};

/// Everything that determines the supernet's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupernetConfig {
    /// Candidate operations of every edge; an op's position here is its index `k` in the
    /// parameter names.
    pub primitives: Vec<Primitive>,
    /// Channels of the first cells (C); doubled at each reduction.
    pub init_channels: i64,
    /// Number of cells (L); reductions sit at L/3 and 2L/3.
    pub layers: i64,
    /// Intermediate nodes per cell.
    pub nodes: usize,
    pub num_classes: i64,
    /// How the input is brought down to the first cell (absent in older configs and
    /// checkpoints, whose supernets all had the CIFAR stem).
    #[serde(default)]
    pub stem: SupernetStem,
}

/// Inputs up to this side get the CIFAR stem; larger ones the ImageNet-style stem.
pub const CIFAR_STEM_MAX_SIDE: usize = 64;
/// The side the ImageNet-style stem aims at for the first cell (224 / 8, as in ImageNet).
pub const IMAGENET_STEM_TARGET_SIDE: f64 = 28.0;
/// Most halvings a stem may take (4096-px inputs need 7).
const MAX_STEM_HALVINGS: u32 = 12;

/// The supernet's stem: what the first cell sees.
///
/// * `Cifar` (inputs up to [`CIFAR_STEM_MAX_SIDE`] px): conv 3×3 to 3C and BN at stride 1, as
///   the released search builds it; both inputs of the first cell are its output.
/// * `Imagenet { halvings: k }` (larger inputs): the ImageNet network's stem with k stride-2
///   convolutions in all, k = round(log2(side / 28)), at least 1, so the first cell sees about
///   28 px (96 → 24, 128 → 32, 224 → 28, 448 → 28). `stem0` is conv 3×3 to C/2, BN, ReLU, conv
///   3×3 to C, BN, then (k > 3) ReLU, conv 3×3 C → C, BN per further halving; its first k − 1
///   convolutions have stride 2, the others stride 1. `stem1` is ReLU, conv 3×3 stride 2, BN.
///   The first cell reads `stem0` (through a factorized reduce, `reduction_prev`) and `stem1`,
///   as in the ImageNet network, which is exactly k = 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SupernetStem {
    #[default]
    Cifar,
    Imagenet {
        halvings: u32,
    },
}

impl SupernetStem {
    /// The stem for square inputs of `side` pixels (see the type's documentation).
    pub fn for_image_size(side: usize) -> Self {
        if side <= CIFAR_STEM_MAX_SIDE {
            return SupernetStem::Cifar;
        }
        // No side is near a rounding tie: log2(side / 28) is never k + 0.5 for whole sides.
        let k = (side as f64 / IMAGENET_STEM_TARGET_SIDE).log2().round().max(1.0);
        SupernetStem::Imagenet { halvings: k as u32 }
    }

    /// Sides of the two states the first cell reads (`s0`, `s1`) for `side`-pixel inputs: a
    /// stride-2 3×3 convolution with padding 1 gives ceil(side / 2).
    pub fn first_cell_sides(self, side: i64) -> (i64, i64) {
        let half = |s: i64| (s + 1) / 2;
        match self {
            SupernetStem::Cifar => (side, side),
            SupernetStem::Imagenet { halvings } => {
                let s0 = (1..halvings).fold(side, |s, _| half(s));
                (s0, half(s0))
            }
        }
    }
}

impl std::fmt::Display for SupernetStem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupernetStem::Cifar => f.write_str("the CIFAR stem (conv 3×3 to 3C at stride 1)"),
            SupernetStem::Imagenet { halvings } => write!(
                f,
                "an ImageNet-style stem of {halvings} stride-2 convolutions (1/{} of the input side)",
                1u64 << (*halvings).min(63)
            ),
        }
    }
}

impl SupernetConfig {
    /// The CNAS/DARTS search settings on CIFAR-10: 16 channels, 8 cells, 4 nodes, 10 classes.
    pub fn cifar(primitives: Vec<Primitive>) -> Self {
        SupernetConfig {
            primitives,
            init_channels: 16,
            layers: 8,
            nodes: 4,
            num_classes: 10,
            stem: SupernetStem::Cifar,
        }
    }

    /// Checks that `side`×`side` inputs fit: every factorized reduce (a reduction's skip edge,
    /// the cell after a reduction or after the ImageNet-style stem) needs an even map, as in the
    /// fixed networks. The error suggests the nearest sides that fit.
    pub fn check_input_size(&self, side: i64) -> Result<()> {
        let Err(why) = self.odd_map(side) else { return Ok(()) };
        let fits =
            |s: &i64| self.odd_map(*s).is_ok() && SupernetStem::for_image_size(*s as usize) == self.stem;
        let below = (side.saturating_sub(64).max(8)..side).rev().find(fits);
        let above = (side + 1..=side.saturating_add(64)).find(fits);
        let near: Vec<String> = below.into_iter().chain(above).map(|s| s.to_string()).collect();
        let hint =
            if near.is_empty() { String::new() } else { format!("; sides that fit: {}", near.join(", ")) };
        Err(Error::BadOption(format!(
            "{side}×{side} inputs do not fit the supernet's {} cells after {}: {why}{hint}",
            self.layers, self.stem
        )))
    }

    /// Why `side`-pixel inputs do not fit, if they do not.
    fn odd_map(&self, side: i64) -> std::result::Result<(), String> {
        if side < 1 {
            return Err(format!("a side of {side} pixels"));
        }
        let reduction_prev = matches!(self.stem, SupernetStem::Imagenet { .. });
        let map = |s: i64| format!("{s}×{s} map");
        crate::model::walk_cell_sides(
            self.layers,
            self.stem.first_cell_sides(side),
            reduction_prev,
            map,
            |_, _| Ok(()),
        )
    }

    /// Cells that reduce (halve the resolution and double the channels).
    pub fn is_reduction(&self, cell: i64) -> bool {
        crate::model::reduction_cells(self.layers).contains(&cell)
    }

    /// Edges per cell: intermediate node i (2..nodes+2) has one edge from each earlier state.
    pub fn num_edges(&self) -> usize {
        self.nodes * (self.nodes + 3) / 2
    }

    /// Checks what would otherwise fail deep inside libtorch or build a meaningless network.
    pub fn validate(&self) -> Result<()> {
        if self.primitives.is_empty() {
            return Err(Error::BadOption("the supernet needs at least one candidate operation".into()));
        }
        for (i, p) in self.primitives.iter().enumerate() {
            if self.primitives[..i].contains(p) {
                return Err(Error::BadOption(format!(
                    "candidate operation {p} is listed more than once (each edge holds one copy of each)"
                )));
            }
        }
        crate::model::check_sizes(self.init_channels, self.layers, self.num_classes)?;
        if self.nodes < 1 {
            return Err(Error::BadOption(format!("nodes must be at least 1, got {}", self.nodes)));
        }
        if let SupernetStem::Imagenet { halvings } = self.stem {
            if !(1..=MAX_STEM_HALVINGS).contains(&halvings) {
                return Err(Error::BadOption(format!(
                    "the ImageNet-style stem takes 1 to {MAX_STEM_HALVINGS} halvings, got {halvings}"
                )));
            }
        }
        Ok(())
    }
}

/// The stem's layers (see [`SupernetStem`]).
#[derive(Debug)]
enum Stem {
    /// `stem`: conv 3×3 to 3C, BN.
    Cifar { conv: Conv2d, bn: BatchNorm2d },
    /// `stem0`: (conv, BN) pairs with a ReLU between them; `stem1`: ReLU, conv s2, BN.
    Imagenet { stem0: Vec<(Conv2d, BatchNorm2d)>, conv1: Conv2d, bn1: BatchNorm2d },
}

impl Stem {
    /// The stem for `c` init channels and the shape the first cell reads:
    /// (C_prev_prev, C_prev, reduction_prev).
    fn new(p: &nn::Path, kind: SupernetStem, c: i64) -> (Self, (i64, i64, bool)) {
        match kind {
            SupernetStem::Cifar => {
                let s = p / "stem";
                let c_stem = c.saturating_mul(3);
                let conv = Conv2d::new(&s / 0, 3, c_stem, Conv2dSpec::new(3).padding(1));
                let bn = BatchNorm2d::new(&s / 1, c_stem, true);
                (Stem::Cifar { conv, bn }, (c_stem, c_stem, false))
            }
            SupernetStem::Imagenet { halvings } => {
                let (s0, s1) = (p / "stem0", p / "stem1");
                let k3 = |stride: i64| Conv2dSpec::new(3).stride(stride).padding(1);
                // stem1 takes the last halving; stem0 the others, with at least the ImageNet
                // network's two convolutions (stride 1 once the halvings run out).
                let convs = (halvings.saturating_sub(1)).max(2);
                let stem0 = (0..convs)
                    .map(|j| {
                        let c_in = match j {
                            0 => 3,
                            1 => c / 2,
                            _ => c,
                        };
                        let c_out = if j == 0 { c / 2 } else { c };
                        let stride = if j + 1 < halvings { 2 } else { 1 };
                        // Sequential indices: conv 3j, BN 3j + 1, ReLU 3j + 2.
                        let conv = Conv2d::new(&s0 / (3 * j), c_in, c_out, k3(stride));
                        (conv, BatchNorm2d::new(&s0 / (3 * j + 1), c_out, true))
                    })
                    .collect();
                let conv1 = Conv2d::new(&s1 / 1, c, c, k3(2));
                let bn1 = BatchNorm2d::new(&s1 / 2, c, true);
                (Stem::Imagenet { stem0, conv1, bn1 }, (c, c, true))
            }
        }
    }

    /// The two states the first cell reads (one shared state for the CIFAR stem).
    fn forward_t(&self, x: &Tensor, train: bool) -> (Rc<Activation>, Rc<Activation>) {
        match self {
            Stem::Cifar { conv, bn } => {
                // The stem output is both inputs of the first cell: one shared ReLU.
                let s = Rc::new(Activation::new(bn.forward_t(&conv.forward(x), train)));
                (Rc::clone(&s), s)
            }
            Stem::Imagenet { stem0, conv1, bn1 } => {
                let mut h = x.shallow_clone();
                for (j, (conv, bn)) in stem0.iter().enumerate() {
                    if j > 0 {
                        h = h.relu();
                    }
                    h = bn.forward_t(&conv.forward(&h), train);
                }
                let s0 = Activation::new(h);
                let s1 = bn1.forward_t(&conv1.forward(s0.relu()), train);
                (Rc::new(s0), Rc::new(Activation::new(s1)))
            }
        }
    }
}

impl SupernetConfig {
    fn cell_runs(&self, stem: (i64, i64, bool)) -> Vec<CellRun> {
        let multiplier = i64::try_from(self.nodes).unwrap_or(i64::MAX);
        crate::model::cell_runs(self.layers, self.init_channels, stem, |_| multiplier)
    }

    /// Channels after the last cell.
    fn output_channels(&self, runs: &[CellRun]) -> i64 {
        let multiplier = i64::try_from(self.nodes).unwrap_or(i64::MAX);
        runs.last().map_or(0, |r| multiplier.saturating_mul(r.shape.c))
    }

    /// What the supernet's variables take, counted on shapes alone without allocating: per
    /// run of identical cells, one cell's preprocessing and one edge's candidates at each
    /// stride, so neither depth nor node count makes it costly.
    pub fn footprint(&self) -> Footprint {
        let scratch = nn::VarStore::new(tch::Device::Cpu);
        let p = scratch.root();
        let mut stem_shape = (0, 0, false);
        let mut total = count_variables(|| stem_shape = Stem::new(&p, self.stem, self.init_channels).1);
        let runs = self.cell_runs(stem_shape);
        let n = self.nodes as f64;
        let edges = n * (n + 3.0) / 2.0;
        for run in &runs {
            let CellShape { c_prev_prev, c_prev, c, reduction, reduction_prev } = run.shape;
            let mut cell = count_variables(|| {
                Preprocess::new(&p / "p0", c_prev_prev, c, reduction_prev, false);
                ReluConvBn::new(&p / "p1", c_prev, c, Conv2dSpec::new(1), false);
            });
            let edge = |stride: i64| {
                count_variables(|| {
                    for (k, &prim) in self.primitives.iter().enumerate() {
                        CandidateOp::new(&p / "e" / k, prim, c, stride);
                    }
                })
            };
            // A reduction cell's edges from its two inputs have stride 2.
            let strided = if reduction { 2.0 * n } else { 0.0 };
            cell += edge(1).times(edges - strided);
            if reduction {
                cell += edge(2).times(strided);
            }
            total += cell.times(run.count as f64);
        }
        total +=
            count_variables(|| Linear::new(&p / "classifier", self.output_channels(&runs), self.num_classes));
        total
    }
}

/// Index of the edge `from → to` in a cell's `_ops` list: edges are numbered node by node
/// (node 2 takes edges 0, 1 from states 0, 1; node 3 takes 2, 3, 4 from states 0, 1, 2; ...).
/// Meaningful only for `from < to` and `to >= 2`, which [`Supernet::check_arch`] guarantees.
pub fn edge_index(from: usize, to: usize) -> usize {
    debug_assert!(to >= 2 && from < to, "edge {from} -> {to} is not an edge of a cell");
    // Nodes 2..to take 2 + 3 + ... + (to - 1) edges = to(to-1)/2 - 1.
    (to * to.saturating_sub(1) / 2 + from).saturating_sub(1)
}

/// Which trainable parameters of a supernet an architecture pair uses: the shared ones (stem,
/// preprocessing, classifier) and those of the ops on the sampled edges. The optimizer updates
/// only these, as PyTorch does for parameters whose gradient is `None`.
#[derive(Debug, Clone)]
pub struct ParamUse {
    /// Per parameter (in the order given to [`ParamUse::new`]): the (cell, edge, op) owning it.
    owners: Vec<Option<(usize, usize, usize)>>,
    reduction: Vec<bool>,
    primitives: Vec<Primitive>,
}

impl ParamUse {
    /// For the parameters named `names` of a supernet built from `config`.
    pub fn new<S: AsRef<str>>(names: &[S], config: &SupernetConfig) -> Self {
        ParamUse {
            owners: names.iter().map(|n| op_owner(n.as_ref())).collect(),
            reduction: (0..config.layers).map(|i| config.is_reduction(i)).collect(),
            primitives: config.primitives.clone(),
        }
    }

    /// Indices of the parameters that `normal` and `reduce` use.
    pub fn active(&self, normal: &space::Cell, reduce: &space::Cell) -> Vec<usize> {
        let op_index = |p: space::Primitive| self.primitives.iter().position(|&q| q == p);
        let mut used: Vec<[bool; 2]> = Vec::new();
        for (kind, arch) in [normal, reduce].into_iter().enumerate() {
            for e in &arch.edges {
                if let (true, Some(k)) = (e.from < e.to && e.to >= 2, op_index(e.op)) {
                    let slot = edge_index(e.from, e.to) * self.primitives.len() + k;
                    if used.len() <= slot {
                        used.resize(slot + 1, [false; 2]);
                    }
                    used[slot][kind] = true;
                }
            }
        }
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, owner)| match owner {
                None => true,
                Some((cell, edge, op)) => {
                    let kind = usize::from(self.reduction.get(*cell).copied().unwrap_or(false));
                    used.get(edge * self.primitives.len() + op).is_some_and(|u| u[kind])
                }
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The (cell, edge, op) a variable named `cells.C._ops.E._ops.K....` belongs to.
fn op_owner(name: &str) -> Option<(usize, usize, usize)> {
    let mut parts = name.strip_prefix("cells.")?.split('.');
    let cell = parts.next()?.parse().ok()?;
    (parts.next()? == "_ops").then_some(())?;
    let edge = parts.next()?.parse().ok()?;
    (parts.next()? == "_ops").then_some(())?;
    let op = parts.next()?.parse().ok()?;
    Some((cell, edge, op))
}

/// Variable name prefix of operation `op` on edge `edge` of cell `cell`, e.g.
/// `cells.3._ops.4._ops.2.` (the names of its variables start with it).
pub fn op_path(cell: usize, edge: usize, op: usize) -> String {
    format!("cells.{cell}._ops.{edge}._ops.{op}.")
}

/// One candidate operation on one edge; pools carry the non-affine BN DARTS adds after them
/// (without it, parameter-free pools would dominate the learned, normalised convolutions).
#[derive(Debug)]
struct CandidateOp {
    op: Op,
    bn: Option<BatchNorm2d>,
}

impl CandidateOp {
    fn new(p: nn::Path, primitive: Primitive, c: i64, stride: i64) -> Self {
        let is_pool = matches!(
            primitive,
            Primitive::MaxPool3x3 | Primitive::MaxPool5x5 | Primitive::MaxPool7x7 | Primitive::AvgPool3x3
        );
        if is_pool {
            CandidateOp {
                op: Op::new(&p / 0, primitive, c, stride, false),
                bn: Some(BatchNorm2d::new(&p / 1, c, false)),
            }
        } else {
            CandidateOp { op: Op::new(p, primitive, c, stride, false), bn: None }
        }
    }

    fn forward_t(&self, x: &Activation, train: bool) -> Tensor {
        let y = self.op.forward_shared(x, train);
        match &self.bn {
            Some(bn) => bn.forward_t(&y, train),
            None => y,
        }
    }
}

/// One search cell: every candidate op on every edge.
#[derive(Debug)]
struct SearchCell {
    reduction: bool,
    /// Channels of each node (C at this depth).
    channels: i64,
    preprocess0: Preprocess,
    preprocess1: ReluConvBn,
    /// `ops[edge_index(from, to)][k]`.
    ops: Vec<Vec<CandidateOp>>,
}

impl SearchCell {
    fn new(p: nn::Path, config: &SupernetConfig, shape: CellShape) -> Self {
        let CellShape { c_prev_prev, c_prev, c, reduction, reduction_prev } = shape;
        let preprocess0 = Preprocess::new(&p / "preprocess0", c_prev_prev, c, reduction_prev, false);
        let preprocess1 = ReluConvBn::new(&p / "preprocess1", c_prev, c, Conv2dSpec::new(1), false);
        let ops_path = &p / "_ops";
        let mut ops = Vec::with_capacity(config.num_edges());
        for to in 2..config.nodes + 2 {
            for from in 0..to {
                let stride = if reduction && from < 2 { 2 } else { 1 };
                let edge_path = &ops_path / edge_index(from, to) / "_ops";
                ops.push(
                    config
                        .primitives
                        .iter()
                        .enumerate()
                        .map(|(k, &prim)| CandidateOp::new(&edge_path / k, prim, c, stride))
                        .collect(),
                );
            }
        }
        SearchCell { reduction, channels: c, preprocess0, preprocess1, ops }
    }

    /// Runs the edges of `arch`, whose ops are already mapped to slots by `slots` and whose
    /// edges were checked by [`Supernet::check_arch`].
    fn forward_t(
        &self,
        s0: &Activation,
        s1: &Activation,
        arch: &space::Cell,
        slots: &[Option<usize>],
        nodes: usize,
        train: bool,
    ) -> Tensor {
        let mut states: Vec<Activation> = Vec::with_capacity(nodes + 2);
        states.push(Activation::new(self.preprocess0.forward_t(s0, train)));
        states.push(Activation::new(self.preprocess1.forward_relu(s1.relu(), train)));
        for to in 2..nodes + 2 {
            let mut node: Option<Tensor> = None;
            for e in arch.edges.iter().filter(|e| e.to == to) {
                // Checked before the call: a missing slot cannot happen here.
                let Some(k) = slots.get(e.op as usize).copied().flatten() else { continue };
                let op = &self.ops[edge_index(e.from, to)][k];
                if op.op.is_zero() {
                    // Adds nothing: two kernels and their backward saved.
                    continue;
                }
                let h = op.forward_t(&states[e.from], train);
                node = Some(match node {
                    None => h,
                    Some(acc) => acc + h,
                });
            }
            let node = node.unwrap_or_else(|| self.empty_node(states[1].tensor()));
            states.push(Activation::new(node));
        }
        let nodes: Vec<&Tensor> = states[2..].iter().map(Activation::tensor).collect();
        Tensor::cat(&nodes, 1)
    }

    /// Zeros shaped like an intermediate node, for a node the sampled cell gives no edge.
    /// Shapes are host metadata, so this does not synchronise with the device.
    fn empty_node(&self, s1: &Tensor) -> Tensor {
        let size = s1.size();
        let (n, mut h, mut w) = (size[0], size[2], size[3]);
        if self.reduction {
            // What every stride-2 op gives (kernel k, padding k/2): ceil(side / 2).
            h = (h + 1) / 2;
            w = (w + 1) / 2;
        }
        Tensor::zeros([n, self.channels, h, w], (s1.kind(), s1.device()))
    }
}

/// The weight-sharing search network. See the module documentation.
#[derive(Debug)]
pub struct Supernet {
    config: SupernetConfig,
    stem: Stem,
    cells: Vec<SearchCell>,
    classifier: Linear,
    /// Position in `config.primitives` of each primitive, indexed by `Primitive as usize`:
    /// built once so a forward pass maps sampled ops to candidate slots without searching.
    slots: Vec<Option<usize>>,
    /// Run in channels-last layout (faster on the CPU); set from the device at construction.
    pub channels_last: bool,
}

impl Supernet {
    /// Builds the supernet's variables under `p` (normally a VarStore's root). One whose
    /// parameters would not fit in the device's free memory is refused before anything is
    /// allocated, and an allocation that fails all the same is an error, not a panic.
    pub fn new(p: &nn::Path, config: SupernetConfig) -> Result<Self> {
        config.validate()?;
        let mut slots = vec![None; Primitive::ALL.len()];
        for (k, &prim) in config.primitives.iter().enumerate() {
            match slots.get_mut(prim as usize) {
                Some(slot) => *slot = Some(k),
                // Only if Primitive gained a variant that ALL does not list.
                None => return Err(Error::BadOption(format!("operation {prim} cannot be searched"))),
            }
        }
        let what = || {
            let stem = match config.stem {
                SupernetStem::Cifar => String::new(),
                stem => format!(", {stem}"),
            };
            format!(
                "the supernet (init channels {}, {} layers, {} nodes{stem})",
                config.init_channels, config.layers, config.nodes
            )
        };
        let footprint = config.footprint();
        crate::ops::build_within_memory(p.device(), footprint, what, || Self::build(p, &config, slots))
    }

    /// The variables in the same order, names and shapes as the PyTorch reference's.
    fn build(p: &nn::Path, config: &SupernetConfig, slots: Vec<Option<usize>>) -> Self {
        let (stem, stem_shape) = Stem::new(p, config.stem, config.init_channels);
        let runs = config.cell_runs(stem_shape);
        let cells_path = p / "cells";
        let mut cells = Vec::new();
        for run in &runs {
            for i in run.first..run.first + run.count {
                cells.push(SearchCell::new(&cells_path / i, config, run.shape));
            }
        }
        let classifier = Linear::new(p / "classifier", config.output_channels(&runs), config.num_classes);
        let channels_last = crate::ops::channels_last_default(p.device());
        Supernet { config: config.clone(), stem, cells, classifier, slots, channels_last }
    }

    pub fn config(&self) -> &SupernetConfig {
        &self.config
    }

    /// Number of cells (L).
    pub fn num_cells(&self) -> usize {
        self.cells.len()
    }

    /// Checks that every edge of a sampled cell exists in the supernet (`from < to`,
    /// `2 <= to < nodes + 2`) and carries one of the candidate operations. Any number of edges
    /// per node is fine; `concat` is not looked at.
    pub fn check_arch(&self, cell: &space::Cell) -> Result<()> {
        let last = self.config.nodes + 1;
        for (i, e) in cell.edges.iter().enumerate() {
            if e.to < 2 || e.to > last || e.from >= e.to {
                return Err(Error::BadOption(format!(
                    "sampled cell, edge {i} {e}: not an edge of the supernet (needs from < to and 2 <= to <= {last})"
                )));
            }
            if self.slots.get(e.op as usize).copied().flatten().is_none() {
                return Err(Error::BadOption(format!(
                    "sampled cell, edge {i} {e}: operation {} is not a candidate of the supernet",
                    e.op
                )));
            }
        }
        Ok(())
    }

    /// Logits for a batch N×3×H×W (H, W even at each reduction, see
    /// [`SupernetConfig::check_input_size`]) with normal cells running
    /// `normal`'s edges and reduction cells running `reduce`'s. Fails only when a sampled
    /// cell does not fit the supernet (see [`Supernet::check_arch`]).
    pub fn forward_t(
        &self,
        x: &Tensor,
        normal: &space::Cell,
        reduce: &space::Cell,
        train: bool,
    ) -> Result<Tensor> {
        self.check_arch(normal)?;
        self.check_arch(reduce)?;
        let x = if self.channels_last { crate::ops::to_channels_last(x) } else { x.shallow_clone() };
        let (mut s0, mut s1) = self.stem.forward_t(&x, train);
        for cell in &self.cells {
            let arch = if cell.reduction { reduce } else { normal };
            let next = cell.forward_t(&s0, &s1, arch, &self.slots, self.config.nodes, train);
            s0 = std::mem::replace(&mut s1, Rc::new(Activation::new(next)));
        }
        let pooled = s1.tensor().adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        Ok(self.classifier.forward(&pooled))
    }

    /// Output of cell `index` alone for inputs `s0` (the cell before last) and `s1` (the last
    /// cell), running `arch`'s edges: N × (nodes·C) × H' × W', node i at channels
    /// `(i-2)·C..(i-1)·C`. For tests and diagnostics; `index` and `arch` are checked.
    pub fn cell_forward_t(
        &self,
        index: usize,
        s0: &Tensor,
        s1: &Tensor,
        arch: &space::Cell,
        train: bool,
    ) -> Result<Tensor> {
        let cell = self.cells.get(index).ok_or_else(|| {
            Error::BadOption(format!("cell {index} does not exist (the supernet has {})", self.cells.len()))
        })?;
        self.check_arch(arch)?;
        let (s0, s1) = (Activation::new(s0.shallow_clone()), Activation::new(s1.shallow_clone()));
        Ok(cell.forward_t(&s0, &s1, arch, &self.slots, self.config.nodes, train))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stem_follows_the_image_size() {
        use SupernetStem::{Cifar, Imagenet};
        let k = |halvings| Imagenet { halvings };
        for (side, stem) in [
            (8, Cifar),
            (32, Cifar),
            (64, Cifar),
            (65, k(1)),
            (79, k(1)),
            (80, k(2)),
            (96, k(2)),
            (128, k(2)),
            (158, k(2)),
            (159, k(3)),
            (224, k(3)),
            (316, k(3)),
            (317, k(4)),
            (448, k(4)),
            (4096, k(7)),
        ] {
            assert_eq!(SupernetStem::for_image_size(side), stem, "{side} px");
        }
        // (side, s0, s1): the first cell sees about 28 px.
        for (side, s0, s1) in
            [(32, 32, 32), (64, 64, 64), (72, 72, 36), (96, 48, 24), (128, 64, 32), (224, 56, 28)]
        {
            let stem = SupernetStem::for_image_size(side);
            assert_eq!(stem.first_cell_sides(side as i64), (s0, s1), "{side} px");
        }
        // Older configs have no stem: the CIFAR one, which they all had.
        let old = r#"{"primitives":["sep_conv_3x3"],"init_channels":4,"layers":3,"nodes":2,"num_classes":3}"#;
        assert_eq!(serde_json::from_str::<SupernetConfig>(old).unwrap().stem, Cifar);
        let new = SupernetConfig { stem: k(3), ..SupernetConfig::cifar(vec![Primitive::SkipConnect]) };
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains(r#""stem":{"kind":"imagenet","halvings":3}"#), "{text}");
        assert_eq!(serde_json::from_str::<SupernetConfig>(&text).unwrap(), new);
        let bad = SupernetConfig { stem: k(0), ..new };
        assert!(bad.validate().unwrap_err().is_user_error());
    }

    #[test]
    fn an_imagenet_style_supernet_has_the_imagenet_stem_and_classifies() {
        let arch = |op| space::Cell {
            edges: vec![space::Edge { op, from: 0, to: 2 }, space::Edge { op, from: 1, to: 3 }],
            concat: vec![2, 3],
        };
        for (side, stem0_convs) in [(72, 2), (128, 2), (224, 2), (448, 3)] {
            let config = SupernetConfig {
                primitives: vec![Primitive::SepConv3x3, Primitive::SkipConnect, Primitive::MaxPool3x3],
                init_channels: 4,
                layers: 3,
                nodes: 2,
                num_classes: 5,
                stem: SupernetStem::for_image_size(side),
            };
            config.check_input_size(side as i64).unwrap();
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let net = Supernet::new(&vs.root(), config.clone()).unwrap();
            assert_eq!(config.footprint(), crate::model::tests::held(&vs), "{side} px");
            let vars = vs.variables();
            assert!(!vars.contains_key("stem.0.weight"));
            // The ImageNet network's names and shapes: stem0 3 → C/2 → C, stem1 C → C.
            assert_eq!(vars["stem0.0.weight"].size(), [2, 3, 3, 3]);
            assert_eq!(vars["stem0.3.weight"].size(), [4, 2, 3, 3]);
            assert_eq!(vars["stem1.1.weight"].size(), [4, 4, 3, 3]);
            assert!(vars.contains_key("stem1.2.running_var"));
            let extra = format!("stem0.{}.weight", 3 * stem0_convs);
            assert!(
                !vars.contains_key(&extra)
                    && vars.contains_key(&format!("stem0.{}.weight", 3 * (stem0_convs - 1)))
            );
            // The first cell reads stem0 through a factorized reduce.
            assert!(vars.contains_key("cells.0.preprocess0.conv_1.weight"), "{side} px");

            let x = Tensor::zeros([2, 3, side as i64, side as i64], (tch::Kind::Float, tch::Device::Cpu));
            let (s0, s1) = tch::no_grad(|| net.stem.forward_t(&x, true));
            let (e0, e1) = config.stem.first_cell_sides(side as i64);
            assert_eq!(s0.tensor().size(), [2, 4, e0, e0], "{side} px");
            assert_eq!(s1.tensor().size(), [2, 4, e1, e1], "{side} px");
            for op in [Primitive::SepConv3x3, Primitive::SkipConnect] {
                let logits = tch::no_grad(|| net.forward_t(&x, &arch(op), &arch(op), true)).unwrap();
                assert_eq!(logits.size(), [2, 5], "{side} px");
            }
        }
    }

    #[test]
    fn the_input_size_check_agrees_with_libtorch() {
        let arch = space::Cell {
            edges: vec![
                space::Edge { op: Primitive::SkipConnect, from: 0, to: 2 },
                space::Edge { op: Primitive::SkipConnect, from: 1, to: 2 },
            ],
            concat: vec![2],
        };
        for (stem, sides) in [
            (SupernetStem::Cifar, vec![28, 30, 32, 33, 48, 50]),
            (SupernetStem::Imagenet { halvings: 2 }, vec![96, 100, 104, 111, 128, 130]),
            (SupernetStem::Imagenet { halvings: 1 }, vec![65, 66, 72, 76]),
        ] {
            let config = SupernetConfig {
                primitives: vec![Primitive::SkipConnect],
                init_channels: 2,
                layers: 3,
                nodes: 1,
                num_classes: 2,
                stem,
            };
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let net = Supernet::new(&vs.root(), config.clone()).unwrap();
            for side in sides {
                let x = Tensor::zeros([2, 3, side, side], (tch::Kind::Float, tch::Device::Cpu));
                let runs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = tch::no_grad(|| net.forward_t(&x, &arch, &arch, true)).unwrap();
                }))
                .is_ok();
                let fits = config.check_input_size(side);
                assert_eq!(fits.is_ok(), runs, "{stem:?} at {side}: {fits:?}");
                if let Err(e) = fits {
                    assert!(e.is_user_error() && e.to_string().contains("sides that fit"), "{e}");
                }
            }
        }
    }

    #[test]
    fn the_footprint_is_what_is_built() {
        for (primitives, init_channels, layers, nodes) in [
            (Primitive::DARTS.to_vec(), 4, 5, 2),
            (Primitive::DARTS.to_vec(), 2, 8, 4),
            (Primitive::ALL.to_vec(), 2, 3, 3),
            (vec![Primitive::MaxPool3x3, Primitive::SkipConnect], 6, 1, 1),
        ] {
            let config = SupernetConfig {
                primitives,
                init_channels,
                layers,
                nodes,
                num_classes: 3,
                stem: SupernetStem::Cifar,
            };
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _net = Supernet::new(&vs.root(), config.clone()).unwrap();
            assert_eq!(config.footprint(), crate::model::tests::held(&vs), "{config:?}");
        }
    }
}
