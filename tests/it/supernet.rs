//! The weight-sharing supernet: parameter layout and names, which operations a sampled
//! architecture runs (and trains), empty nodes, reductions, and one cell checked against a
//! direct computation from its variables, and the whole supernet (reduction cells included)
//! against the released CNAS code's search network in PyTorch (scripts/ref/released_supernet.py).
//! Tiny networks (C=4, L=3 or 5) so the file runs in seconds. A test that draws random
//! tensors or builds a supernet holds `common::torch_rng` meanwhile.
use std::collections::{HashMap, HashSet};

use cnas::space::{Cell, Edge, Primitive};
use cnas::supernet::{edge_index, op_path, Supernet, SupernetConfig};
use cnas::Error;
use tch::{nn, Device, Kind, Tensor};

use crate::common;

const C: i64 = 4;
const LAYERS: i64 = 3;
const NODES: usize = 4;

fn config(primitives: Vec<Primitive>) -> SupernetConfig {
    SupernetConfig {
        primitives,
        init_channels: C,
        layers: LAYERS,
        nodes: NODES,
        num_classes: 10,
        stem: Default::default(),
    }
}

fn build(primitives: Vec<Primitive>) -> (nn::VarStore, Supernet) {
    // Tests run in parallel on few cores: one intra-op thread each avoids oversubscription.
    tch::set_num_threads(1);
    let _rng = common::seed_torch(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Supernet::new(&vs.root(), config(primitives)).unwrap();
    (vs, net)
}

fn cell(edges: &[(Primitive, usize, usize)]) -> Cell {
    Cell { edges: edges.iter().map(|&(op, from, to)| Edge::new(op, from, to)).collect(), concat: vec![] }
}

fn k(p: Primitive) -> usize {
    Primitive::DARTS.iter().position(|&q| q == p).unwrap()
}

fn is_pool(p: Primitive) -> bool {
    matches!(p, Primitive::MaxPool3x3 | Primitive::AvgPool3x3)
}

/// Every edge of the supernet with every operation: runs each candidate once.
fn dense_cell(primitives: &[Primitive]) -> Cell {
    let mut edges = vec![];
    for to in 2..NODES + 2 {
        for from in 0..to {
            edges.extend(primitives.iter().map(|&op| Edge::new(op, from, to)));
        }
    }
    Cell { edges, concat: vec![2] }
}

fn abs_max(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn config_defaults_validation_and_serde() {
    let _rng = common::torch_rng();
    let cfg = SupernetConfig::cifar(Primitive::DARTS.to_vec());
    assert_eq!((cfg.init_channels, cfg.layers, cfg.nodes, cfg.num_classes), (16, 8, 4, 10));
    assert_eq!(cfg.num_edges(), 14);
    cfg.validate().unwrap();
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(text.contains("\"sep_conv_3x3\""), "{text}");
    assert_eq!(serde_json::from_str::<SupernetConfig>(&text).unwrap(), cfg);

    let bad = |f: &dyn Fn(&mut SupernetConfig), needle: &str| {
        let mut c = cfg.clone();
        f(&mut c);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, Error::BadOption(_)), "{e:?}");
        assert!(e.to_string().contains(needle), "{e}");
        let e = Supernet::new(&nn::VarStore::new(Device::Cpu).root(), c).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    };
    bad(&|c| c.init_channels = 5, "even");
    bad(&|c| c.init_channels = 0, "even");
    bad(&|c| c.layers = 0, "layers must be at least 1");
    bad(&|c| c.nodes = 0, "nodes must be at least 1");
    bad(&|c| c.num_classes = 0, "classes");
    bad(&|c| c.primitives.clear(), "at least one candidate");
    bad(&|c| c.primitives.push(Primitive::SkipConnect), "skip_connect is listed more than once");
}

#[test]
fn edge_numbering_and_paths() {
    let expected = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4), (3, 4), (0, 5)];
    for (e, &(from, to)) in expected.iter().enumerate() {
        assert_eq!(edge_index(from, to), e, "{from} -> {to}");
    }
    assert_eq!(edge_index(4, 5), 13);
    assert_eq!(op_path(3, 4, 2), "cells.3._ops.4._ops.2.");
}

#[test]
fn parameter_names_and_counts() {
    let prims = Primitive::DARTS.to_vec();
    let (vs, net) = build(prims.clone());
    assert_eq!(net.num_cells(), 3);
    let vars = vs.variables();
    let shape = |name: &str| vars.get(name).unwrap_or_else(|| panic!("missing {name}")).size();

    assert_eq!(shape("stem.0.weight"), [3 * C, 3, 3, 3]);
    assert_eq!(shape("stem.1.weight"), [3 * C]); // the stem's BN is affine
    assert_eq!(shape("stem.1.running_var"), [3 * C]);
    // Reductions at L/3 = 1 and 2L/3 = 2: C, 2C, 4C; cell outputs are 4 nodes wide.
    assert_eq!(shape("cells.0.preprocess0.op.1.weight"), [C, 3 * C, 1, 1]);
    assert_eq!(shape("cells.0.preprocess1.op.1.weight"), [C, 3 * C, 1, 1]);
    assert_eq!(shape("cells.1.preprocess0.op.1.weight"), [2 * C, 3 * C, 1, 1]);
    assert_eq!(shape("cells.1.preprocess1.op.1.weight"), [2 * C, 4 * C, 1, 1]);
    // Cell 2 follows a reduction: its first input is factorized down.
    assert_eq!(shape("cells.2.preprocess0.conv_1.weight"), [2 * C, 4 * C, 1, 1]);
    assert_eq!(shape("cells.2.preprocess0.bn.running_mean"), [4 * C]);
    assert_eq!(shape("cells.2.preprocess1.op.1.weight"), [4 * C, 8 * C, 1, 1]);
    assert_eq!(shape("classifier.weight"), [10, 16 * C]);
    assert_eq!(shape("classifier.bias"), [10]);

    // Every candidate op of every edge, with exactly the variables its primitive has.
    let mut expected: HashSet<String> = HashSet::new();
    for i in 0..3 {
        let reduction = i >= 1;
        let c = [C, 2 * C, 4 * C][i];
        for to in 2..NODES + 2 {
            for from in 0..to {
                let e = edge_index(from, to);
                for (kk, &p) in prims.iter().enumerate() {
                    let pre = op_path(i, e, kk);
                    let names: Vec<String> = match p {
                        Primitive::SepConv3x3 | Primitive::SepConv5x5 => [1, 2, 5, 6]
                            .iter()
                            .map(|j| format!("op.{j}.weight"))
                            .chain([3, 7].iter().flat_map(|j| {
                                [format!("op.{j}.running_mean"), format!("op.{j}.running_var")]
                            }))
                            .collect(),
                        Primitive::DilConv3x3 | Primitive::DilConv5x5 => vec![
                            "op.1.weight".into(),
                            "op.2.weight".into(),
                            "op.3.running_mean".into(),
                            "op.3.running_var".into(),
                        ],
                        Primitive::MaxPool3x3 | Primitive::AvgPool3x3 => {
                            vec!["1.running_mean".into(), "1.running_var".into()]
                        }
                        Primitive::SkipConnect if reduction && from < 2 => vec![
                            "conv_1.weight".into(),
                            "conv_2.weight".into(),
                            "bn.running_mean".into(),
                            "bn.running_var".into(),
                        ],
                        _ => vec![],
                    };
                    for n in names {
                        expected.insert(format!("{pre}{n}"));
                    }
                    if is_pool(p) {
                        assert_eq!(shape(&format!("{pre}1.running_mean")), [c]);
                    }
                    if p == Primitive::SepConv5x5 {
                        assert_eq!(shape(&format!("{pre}op.1.weight")), [c, 1, 5, 5]);
                    }
                }
            }
        }
    }
    let ops_vars: HashSet<String> = vars.keys().filter(|n| n.contains("._ops.")).cloned().collect();
    let missing: Vec<_> = expected.difference(&ops_vars).collect();
    let extra: Vec<_> = ops_vars.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    // 3 cells × 14 edges × 8 ops: count the op modules that own variables (sep, dil, pools
    // everywhere; skip only on the 8 stride-2 edges, from states 0 and 1, of the 2 reduction
    // cells).
    let modules: HashSet<String> =
        ops_vars.iter().map(|n| n.splitn(7, '.').take(6).collect::<Vec<_>>().join(".")).collect();
    assert_eq!(modules.len(), 3 * 14 * 6 + 2 * 8);

    // Everything else is stem, preprocessing or classifier; no BN below the stem is affine.
    for (name, t) in &vars {
        if name.contains("._ops.") {
            continue;
        }
        let ok = name.starts_with("stem.")
            || name.starts_with("classifier.")
            || (name.starts_with("cells.") && name.contains(".preprocess"));
        assert!(ok, "unexpected variable {name}");
        if name.starts_with("cells.") && name.ends_with(".weight") {
            assert_eq!(t.dim(), 4, "{name}: a BN weight in a search cell (must be non-affine)");
        }
    }
    for name in expected.iter().filter(|n| n.ends_with(".weight")) {
        assert_eq!(vars[name].dim(), 4, "{name}");
    }
}

#[test]
fn only_sampled_ops_get_gradients() {
    use Primitive as P;
    let _rng = common::torch_rng();
    let prims = Primitive::DARTS.to_vec();
    let (vs, net) = build(prims);
    // Nodes get 1, 2 or 3 edges; no conv reads an all-zero state, so every chosen conv matters.
    let normal = cell(&[
        (P::SepConv3x3, 0, 2),
        (P::DilConv3x3, 1, 2),
        (P::SkipConnect, 2, 3),
        (P::MaxPool3x3, 1, 3),
        (P::SepConv5x5, 3, 4),
        (P::AvgPool3x3, 4, 5),
        (P::DilConv5x5, 0, 5),
        (P::None, 2, 5),
    ]);
    let reduce = cell(&[
        (P::SkipConnect, 0, 2),
        (P::SepConv3x3, 1, 2),
        (P::MaxPool3x3, 0, 3),
        (P::DilConv5x5, 2, 3),
        (P::None, 1, 4),
        (P::SepConv5x5, 3, 4),
        (P::AvgPool3x3, 1, 4),
        (P::DilConv3x3, 4, 5),
    ]);
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let logits = net.forward_t(&x, &normal, &reduce, true).unwrap();
    assert_eq!(logits.size(), [2, 10]);
    let target = Tensor::from_slice(&[3i64, 7]);
    logits.cross_entropy_for_logits(&target).backward();

    let mut chosen: Vec<String> = vec![];
    for i in 0..3 {
        let arch = if i == 0 { &normal } else { &reduce };
        for e in &arch.edges {
            chosen.push(op_path(i, edge_index(e.from, e.to), k(e.op)));
        }
    }
    let mut conv_weights_seen = 0;
    for (name, t) in vs.variables() {
        let g = t.grad();
        let has_grad = g.defined() && abs_max(&g) > 0.0;
        if !name.contains("._ops.") {
            if t.requires_grad() {
                assert!(has_grad, "{name}: no gradient");
            }
            continue;
        }
        let is_chosen = chosen.iter().any(|p| name.starts_with(p.as_str()));
        if !is_chosen {
            assert!(!has_grad, "{name}: gradient on an op that did not run");
            if name.ends_with("running_mean") {
                assert_eq!(abs_max(&t), 0.0, "{name}: statistics of an op that did not run");
            }
        } else if name.ends_with(".weight") {
            assert!(has_grad, "{name}: no gradient on a chosen conv");
            conv_weights_seen += 1;
        } else if name.ends_with("running_mean") {
            assert!(abs_max(&t) > 0.0, "{name}: chosen op's statistics not updated");
        }
    }
    // normal: sep3 (4) + dil3 (2) + sep5 (4) + dil5 (2); reduce: fr (2) + sep3 + dil5 + sep5 +
    // dil3 (12), twice.
    assert_eq!(conv_weights_seen, 12 + 2 * 14);
}

#[test]
fn empty_nodes_are_zeros() {
    use Primitive as P;
    let _rng = common::torch_rng();
    let (vs, net) = build(Primitive::DARTS.to_vec());
    // Node 4 gets nothing; node 5 reads it (through a conv) and node 3.
    let arch = cell(&[
        (P::SepConv3x3, 0, 2),
        (P::SkipConnect, 2, 3),
        (P::MaxPool3x3, 1, 3),
        (P::DilConv3x3, 4, 5),
        (P::AvgPool3x3, 3, 5),
    ]);
    let opts = (Kind::Float, Device::Cpu);
    let stem = Tensor::randn([2, 3 * C, 16, 16], opts);
    let out = net.cell_forward_t(0, &stem, &stem, &arch, true).unwrap();
    assert_eq!(out.size(), [2, 4 * C, 16, 16]);
    for node in 2..6i64 {
        let slice = out.narrow(1, (node - 2) * C, C);
        assert_eq!(abs_max(&slice) == 0.0, node == 4, "node {node}");
    }

    // A reduction cell (cell 1, reading the stem and cell 0; 2C per node): empty nodes have
    // the halved resolution, and edges from intermediate nodes keep it.
    let wide = Tensor::randn([2, 4 * C, 16, 16], opts);
    let out = net.cell_forward_t(1, &stem, &wide, &arch, true).unwrap();
    assert_eq!(out.size(), [2, 8 * C, 8, 8]);
    assert_eq!(abs_max(&out.narrow(1, 4 * C, 2 * C)), 0.0);
    assert!(abs_max(&out.narrow(1, 6 * C, 2 * C)) > 0.0);

    // A cell with no edges at all outputs zeros; a network of such cells outputs the bias.
    let empty = cell(&[]);
    let out = net.cell_forward_t(1, &stem, &wide, &empty, false).unwrap();
    assert_eq!(out.size(), [2, 8 * C, 8, 8]);
    assert_eq!(abs_max(&out), 0.0);
    let x = Tensor::randn([2, 3, 16, 16], opts);
    let logits = net.forward_t(&x, &empty, &empty, true).unwrap();
    let bias = vs.variables()["classifier.bias"].shallow_clone();
    assert_eq!(abs_max(&(logits - bias.unsqueeze(0))), 0.0);
}

#[test]
fn every_op_runs_and_reductions_halve() {
    use Primitive as P;
    let _rng = common::torch_rng();
    let prims = Primitive::DARTS.to_vec();
    let (_vs, net) = build(prims.clone());
    let opts = (Kind::Float, Device::Cpu);
    // Every candidate of every edge once (kept to 16×16: depthwise convs are slow on CPU).
    let dense = dense_cell(&prims);
    let x = Tensor::randn([2, 3, 16, 16], opts);
    let logits = tch::no_grad(|| net.forward_t(&x, &dense, &dense, true).unwrap());
    assert_eq!(logits.size(), [2, 10]);
    assert_eq!(logits.isfinite().all().int64_value(&[]), 1);
    // Two reductions: the last cell works at a quarter of the input side; edges out of
    // intermediate nodes (stride 1) fit the halved states.
    let s0 = Tensor::randn([2, 4 * C, 16, 16], opts);
    let s1 = Tensor::randn([2, 8 * C, 8, 8], opts);
    let out = tch::no_grad(|| net.cell_forward_t(2, &s0, &s1, &dense, true).unwrap());
    assert_eq!(out.size(), [2, 16 * C, 4, 4]);

    let light = cell(&[
        (P::SkipConnect, 0, 2),
        (P::MaxPool3x3, 1, 2),
        (P::AvgPool3x3, 2, 3),
        (P::None, 0, 3),
        (P::SepConv3x3, 1, 4),
        (P::SkipConnect, 3, 5),
    ]);
    for side in [32, 16] {
        let x = Tensor::randn([2, 3, side, side], opts);
        for train in [true, false] {
            let logits = net.forward_t(&x, &light, &light, train).unwrap();
            assert_eq!(logits.size(), [2, 10], "{side}×{side}, train {train}");
            assert_eq!(logits.isfinite().all().int64_value(&[]), 1);
        }
    }
}

/// Non-affine batch norm in training mode, from scratch.
fn bn(x: &Tensor) -> Tensor {
    Tensor::batch_norm(
        x,
        None::<&Tensor>,
        None::<&Tensor>,
        None::<&Tensor>,
        None::<&Tensor>,
        true,
        0.1,
        1e-5,
        false,
    )
}

#[test]
fn cell_matches_direct_computation() {
    use Primitive as P;
    let _rng = common::torch_rng();
    let (vs, net) = build(Primitive::DARTS.to_vec());
    let vars = vs.variables();
    let w = |name: String| vars.get(&name).unwrap_or_else(|| panic!("missing {name}")).shallow_clone();
    let opts = (Kind::Float, Device::Cpu);
    let s0 = Tensor::randn([2, 3 * C, 8, 8], opts);
    let s1 = Tensor::randn([2, 3 * C, 8, 8], opts);
    // Written out of node order, with a duplicated edge (summed twice).
    let arch = cell(&[
        (P::AvgPool3x3, 2, 3),
        (P::SkipConnect, 1, 2),
        (P::MaxPool3x3, 0, 2),
        (P::SepConv3x3, 0, 4),
        (P::None, 3, 5),
        (P::SkipConnect, 4, 5),
        (P::SkipConnect, 4, 5),
    ]);
    let ours = tch::no_grad(|| net.cell_forward_t(0, &s0, &s1, &arch, true).unwrap());

    let conv = |x: &Tensor, name: String, pad: i64, groups: i64| {
        x.conv2d(&w(name), None::<&Tensor>, [1, 1], [pad, pad], [1, 1], groups)
    };
    let expected = tch::no_grad(|| {
        let p0 = bn(&conv(&s0.relu(), "cells.0.preprocess0.op.1.weight".into(), 0, 1));
        let p1 = bn(&conv(&s1.relu(), "cells.0.preprocess1.op.1.weight".into(), 0, 1));
        let n2 = &p1 + bn(&p0.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false));
        let n3 = bn(&n2.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>));
        let pre = op_path(0, edge_index(0, 4), k(P::SepConv3x3));
        let h = conv(&p0.relu(), format!("{pre}op.1.weight"), 1, C);
        let h = bn(&conv(&h, format!("{pre}op.2.weight"), 0, 1));
        let h = conv(&h.relu(), format!("{pre}op.5.weight"), 1, C);
        let n4 = bn(&conv(&h, format!("{pre}op.6.weight"), 0, 1));
        let n5 = &n4 * 2.0;
        Tensor::cat(&[n2, n3, n4, n5], 1)
    });
    assert_eq!(ours.size(), expected.size());
    let d = abs_max(&(&ours - &expected));
    assert!(d < 1e-5, "max difference {d:e}");
}

#[test]
fn sampled_cells_that_do_not_fit_are_errors() {
    use Primitive as P;
    let _rng = common::seed_torch(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = SupernetConfig {
        primitives: vec![P::SkipConnect, P::MaxPool3x3],
        init_channels: 2,
        layers: 1,
        nodes: 2,
        num_classes: 3,
        stem: Default::default(),
    };
    let net = Supernet::new(&vs.root(), cfg).unwrap();
    let ok = cell(&[(P::SkipConnect, 0, 2), (P::MaxPool3x3, 2, 3)]);
    net.check_arch(&ok).unwrap();
    let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    // Layer 0 is a reduction when L = 1 (L/3 = 0).
    assert_eq!(net.forward_t(&x, &ok, &ok, false).unwrap().size(), [1, 3]);

    type Edges<'a> = &'a [(P, usize, usize)];
    let cases: [(Edges, &str); 5] = [
        (&[(P::SepConv3x3, 0, 2)], "operation sep_conv_3x3 is not a candidate"),
        (&[(P::SkipConnect, 0, 4)], "edge 0 (skip_connect, 0, 4): not an edge of the supernet"),
        (&[(P::SkipConnect, 0, 2), (P::SkipConnect, 3, 3)], "edge 1 (skip_connect, 3, 3)"),
        (&[(P::SkipConnect, 0, 1)], "2 <= to <= 3"),
        (&[(P::SkipConnect, 2, 2)], "needs from < to"),
    ];
    for (edges, needle) in cases {
        let bad = cell(edges);
        for e in [
            net.check_arch(&bad).unwrap_err(),
            net.forward_t(&x, &bad, &ok, false).unwrap_err(),
            net.forward_t(&x, &ok, &bad, false).unwrap_err(),
        ] {
            assert!(matches!(e, Error::BadOption(_)) && e.is_user_error(), "{e:?}");
            assert!(e.to_string().contains(needle), "{e} (wanted {needle})");
        }
    }
    let e = net.cell_forward_t(1, &x, &x, &ok, false).unwrap_err();
    assert!(e.to_string().contains("cell 1 does not exist"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The released CNAS supernet (github guoyongcs/CNAS, cnas/model/search.py), in PyTorch.
// ---------------------------------------------------------------------------------------------

/// The released search's `op_type`: the first DARTS primitive, then the other seven in the
/// order `torch.randperm(7, generator=torch.Generator().manual_seed(2020))` draws
/// ([2, 1, 4, 5, 3, 6, 0] with PyTorch 2.11): sep_conv_3x3, avg_pool_3x3, max_pool_3x3,
/// skip_connect, dil_conv_3x3, none, dil_conv_5x5, sep_conv_5x5. The released supernet's
/// `cells.i._ops.e._ops.k` is this list's k-th primitive, while cnas's is
/// `Primitive::DARTS[k]`: the test maps between the two.
fn released_op_order() -> Vec<Primitive> {
    let rest = &Primitive::DARTS[1..];
    std::iter::once(Primitive::DARTS[0]).chain([2, 1, 4, 5, 3, 6, 0].iter().map(|&i| rest[i])).collect()
}

/// `cells.{i}._ops.{e}._ops.{k}.rest` with k in `from` order → the same op's name with its
/// index in `to` order; other names unchanged.
fn remap_op_index(name: &str, from: &[Primitive], to: &[Primitive]) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 5 && parts[0] == "cells" && parts[2] == "_ops" && parts[4] == "_ops" {
        let k: usize = parts[5].parse().unwrap_or_else(|_| panic!("{name}: op index"));
        let op = *from.get(k).unwrap_or_else(|| panic!("{name}: op index {k} out of range"));
        let k2 = to.iter().position(|&p| p == op).unwrap_or_else(|| panic!("{name}: {op} not in {to:?}"));
        let mut out: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        out[5] = k2.to_string();
        out.join(".")
    } else {
        name.to_string()
    }
}

/// max |a - b| / max |b|, per tensor (a zero reference must be matched exactly up to 1e-12):
/// stricter than tests/it/reference.rs's `max_rel_diff`, whose scale is at least 1, because
/// gradients here are mostly far below 1.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

const RELEASED_TOL: f64 = 1e-4;

#[test]
fn matches_released_supernet_including_reduction_cells() {
    use Primitive as P;
    type Arch = Vec<(Primitive, usize, usize)>;
    // Three (normal, reduce) pairs, edges in node order as the released sampler emits them
    // (the released forward runs edges in list order, so a node must be complete before an
    // edge reads it, and an edge may not read a node that has no edges).
    let archs: Vec<(Arch, Arch)> = vec![
        // Every primitive once on normal edges; in the reduction cell, all but sep_conv_3x3 on
        // stride-2 edges (from states 0 and 1), sep_conv_3x3 at stride 1.
        (
            vec![
                (P::SepConv3x3, 0, 2),
                (P::DilConv5x5, 1, 2),
                (P::SkipConnect, 2, 3),
                (P::MaxPool3x3, 0, 3),
                (P::AvgPool3x3, 1, 4),
                (P::None, 3, 4),
                (P::DilConv3x3, 2, 5),
                (P::SepConv5x5, 4, 5),
            ],
            vec![
                (P::SkipConnect, 0, 2),
                (P::SepConv5x5, 1, 2),
                (P::DilConv3x3, 0, 3),
                (P::MaxPool3x3, 1, 3),
                (P::AvgPool3x3, 0, 4),
                (P::SepConv3x3, 2, 4),
                (P::None, 1, 5),
                (P::DilConv5x5, 0, 5),
            ],
        ),
        // Every primitive once in the reduction cell, all on stride-2 edges.
        (
            vec![
                (P::SkipConnect, 1, 2),
                (P::AvgPool3x3, 0, 2),
                (P::None, 0, 3),
                (P::SepConv5x5, 2, 3),
                (P::MaxPool3x3, 3, 4),
                (P::DilConv3x3, 1, 4),
                (P::SepConv3x3, 4, 5),
                (P::DilConv5x5, 0, 5),
            ],
            vec![
                (P::SepConv3x3, 0, 2),
                (P::DilConv5x5, 1, 2),
                (P::None, 0, 3),
                (P::SkipConnect, 1, 3),
                (P::SepConv5x5, 0, 4),
                (P::MaxPool3x3, 1, 4),
                (P::AvgPool3x3, 0, 5),
                (P::DilConv3x3, 1, 5),
            ],
        ),
        // Edge cases: a duplicated edge, three edges into one node, an empty last node
        // (zeros), a node fed only by `none` (zeros at the halved resolution) and a conv
        // reading it.
        (
            vec![
                (P::MaxPool3x3, 1, 2),
                (P::MaxPool3x3, 1, 2),
                (P::SepConv3x3, 0, 3),
                (P::None, 2, 3),
                (P::AvgPool3x3, 2, 4),
                (P::DilConv5x5, 3, 4),
                (P::SkipConnect, 0, 4),
            ],
            vec![
                (P::None, 0, 2),
                (P::None, 1, 2),
                (P::SkipConnect, 0, 3),
                (P::SkipConnect, 1, 3),
                (P::DilConv3x3, 2, 3),
                (P::SepConv5x5, 1, 4),
                (P::AvgPool3x3, 3, 4),
                (P::MaxPool3x3, 0, 5),
                (P::SepConv3x3, 4, 5),
            ],
        ),
    ];
    let released_order = released_op_order();
    assert_ne!(released_order, Primitive::DARTS.to_vec(), "the test needs a non-identity order");
    // L = 5: reductions at cells 1 and 3, each followed by a cell whose preprocess0 is a
    // factorized reduce. 16×16 inputs keep every reduced size even: the released
    // FactorizedReduce pads an odd input (1, 0, 1, 0) first, cnas's does not (it needs even
    // sizes at each reduction, see `Supernet::forward_t`), so odd sizes are not compared.
    let (layers, image_size, batch) = (5i64, 16i64, 4i64);

    let names = |a: &Arch| -> Vec<(String, usize, usize)> {
        a.iter().map(|&(op, f, t)| (op.name().to_string(), f, t)).collect()
    };
    let archs_json: Vec<serde_json::Value> =
        archs.iter().map(|(n, r)| serde_json::json!({"normal": names(n), "reduce": names(r)})).collect();
    let spec = serde_json::json!({
        "channels": C,
        "layers": layers,
        "classes": 10,
        "image_size": image_size,
        "batch": batch,
        "seed": 11,
        "op_order": released_order.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "archs": archs_json,
    });
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    common::write(&spec_path, &spec.to_string());
    let out = dir.path().join("ref");
    common::run_reference(
        "released_supernet.py",
        &[spec_path.to_str().unwrap().to_string(), out.to_str().unwrap().to_string()],
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("reference.safetensors")).unwrap().into_iter().collect();
    let get = |key: &str| reference.get(key).unwrap_or_else(|| panic!("reference lacks {key}"));
    let order_seen: Vec<&str> =
        meta["op_order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(order_seen, released_order.iter().map(|p| p.name()).collect::<Vec<_>>());

    tch::set_num_threads(1);
    let cfg = SupernetConfig {
        primitives: Primitive::DARTS.to_vec(),
        init_channels: C,
        layers,
        nodes: NODES,
        num_classes: 10,
        stem: Default::default(),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let mut net = common::with_torch_rng(|| Supernet::new(&vs.root(), cfg)).unwrap();
    assert_eq!((1..layers).filter(|&i| net.config().is_reduction(i)).collect::<Vec<_>>(), [1, 3]);
    let vars = vs.variables();

    // Released name → cnas name, 1:1. The op index is the only difference: the layout (ops as
    // `op.N`, a pool as Sequential(pool, BN) at `0`/`1`, factorized reduces at
    // `conv_1`/`conv_2`/`bn`) is the same, and cnas's shared ReLUs and skipped `none`
    // ops own no variables. The one thing left out is BatchNorm's `num_batches_tracked`: cnas
    // keeps no such counter, because with a fixed momentum (0.1, as here) PyTorch never reads
    // it.
    let mut released_of: HashMap<String, String> = HashMap::new();
    for entry in meta["names"].as_array().unwrap() {
        let theirs = entry.as_str().unwrap();
        if theirs.ends_with(".num_batches_tracked") {
            continue;
        }
        let ours = remap_op_index(theirs, &released_order, &Primitive::DARTS);
        let var =
            vars.get(&ours).unwrap_or_else(|| panic!("released {theirs} (cnas {ours}) has no cnas variable"));
        let value = get(&format!("state.{theirs}"));
        assert_eq!(var.size(), value.size(), "{theirs} → {ours}: shape");
        assert!(released_of.insert(ours.clone(), theirs.to_string()).is_none(), "{ours} mapped twice");
    }
    let missing: Vec<&String> = vars.keys().filter(|n| !released_of.contains_key(*n)).collect();
    assert!(missing.is_empty(), "cnas variables the released supernet lacks: {missing:?}");
    // Spot checks of the mapping on reduction cells: sep_conv_3x3 keeps index 0, the rest move.
    assert_eq!(released_of["cells.1._ops.0._ops.0.op.1.weight"], "cells.1._ops.0._ops.0.op.1.weight");
    assert_eq!(
        released_of[&format!("cells.3._ops.1._ops.{}.conv_1.weight", k(P::SkipConnect))],
        "cells.3._ops.1._ops.3.conv_1.weight"
    );
    assert_eq!(
        released_of[&format!("cells.1._ops.2._ops.{}.1.running_mean", k(P::AvgPool3x3))],
        "cells.1._ops.2._ops.1.1.running_mean"
    );

    let load = || {
        tch::no_grad(|| {
            for (ours, theirs) in &released_of {
                let mut v = vars[ours].shallow_clone();
                v.copy_(get(&format!("state.{theirs}")));
            }
        })
    };
    let x = get("input");
    let target = get("target");
    let trainable: Vec<(&String, &Tensor)> = vars.iter().filter(|(_, t)| t.requires_grad()).collect();
    // Parameters of reduction-cell ops (and the preprocessing after a reduction) whose
    // gradient must be nonzero (so compared for real) in arch 1, where every reduction edge is
    // stride 2 and from a cell input.
    let must_train: Vec<String> = vec![
        format!("{}op.1.weight", op_path(1, edge_index(0, 2), k(P::SepConv3x3))),
        format!("{}op.6.weight", op_path(3, edge_index(0, 2), k(P::SepConv3x3))),
        format!("{}op.1.weight", op_path(1, edge_index(1, 2), k(P::DilConv5x5))),
        format!("{}op.2.weight", op_path(3, edge_index(1, 5), k(P::DilConv3x3))),
        format!("{}op.5.weight", op_path(1, edge_index(0, 4), k(P::SepConv5x5))),
        format!("{}conv_1.weight", op_path(1, edge_index(1, 3), k(P::SkipConnect))),
        format!("{}conv_2.weight", op_path(3, edge_index(1, 3), k(P::SkipConnect))),
        "cells.2.preprocess0.conv_1.weight".into(),
        "cells.4.preprocess0.conv_2.weight".into(),
        "cells.3.preprocess1.op.1.weight".into(),
    ];
    let mut worst: Vec<(f64, String)> = vec![];
    for channels_last in [false, true] {
        net.channels_last = channels_last;
        load();
        let grad_key = if channels_last { "grad_cl" } else { "grad" };
        for (a, (normal, reduce)) in archs.iter().enumerate() {
            let what = format!("arch {a}{}", if channels_last { " (channels-last)" } else { "" });
            for (_, t) in &trainable {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let logits = net.forward_t(x, &cell(normal), &cell(reduce), true).unwrap();
            let d = rel_diff(&logits, get(&format!("logits.{a}")));
            assert!(d <= RELEASED_TOL, "{what}: logits differ by {d:e}");
            worst.push((d, format!("{what}: logits")));
            let loss = logits.cross_entropy_for_logits(target);
            let d = rel_diff(&loss.reshape([1]), get(&format!("loss.{a}")));
            assert!(d <= RELEASED_TOL, "{what}: loss differs by {d:e}");
            loss.backward();

            let no_grad: HashSet<&str> = meta[format!("no_grad.{a}")]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let mut compared = 0;
            for (ours, t) in &trainable {
                let theirs = &released_of[*ours];
                let g = t.grad();
                let g = if g.defined() { g } else { t.zeros_like() };
                if no_grad.contains(theirs.as_str()) {
                    assert_eq!(abs_max(&g), 0.0, "{what}: {ours}: gradient where the released net has none");
                    continue;
                }
                let reference_grad = get(&format!("{grad_key}.{a}.{theirs}"));
                let d = rel_diff(&g, reference_grad);
                assert!(
                    d <= RELEASED_TOL,
                    "{what}: gradient of {ours} (released {theirs}) differs by {d:e} (max |ref| {:e})",
                    abs_max(reference_grad)
                );
                worst.push((d, format!("{what}: grad {ours}")));
                compared += 1;
                if a == 1 && must_train.contains(ours) {
                    assert!(abs_max(reference_grad) > 0.0, "{ours}: zero gradient, compares nothing");
                }
            }
            assert!(compared > 50, "{what}: only {compared} gradients compared");
            if a == 1 {
                for name in &must_train {
                    let theirs = &released_of[name];
                    assert!(!no_grad.contains(theirs.as_str()), "{name} ({theirs}): not trained by arch 1");
                }
            }

            // Running statistics after this training-mode step: which BatchNorms ran, and
            // their batch mean and (unbiased) variance.
            for (ours, t) in vars.iter().filter(|(_, t)| !t.requires_grad()) {
                let theirs = &released_of[ours];
                let d = rel_diff(t, get(&format!("buffers.{a}.{theirs}")));
                assert!(
                    d <= RELEASED_TOL,
                    "{what}: {ours} (released {theirs}) after the step differs by {d:e}"
                );
            }
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("largest relative differences: {:?}", &worst[..5]);
}
