//! The LSTM controller: structure of sampled cells, masks, probabilities checked against an
//! independent forward pass, teacher forcing, uniform mode, temperature and clipping,
//! REINFORCE, the baseline and reproducibility.
use cnas::controller::{reinforce_loss, uniform_cell, Baseline, CellSample, Controller, ControllerConfig};
use cnas::space::{Cell, Edge, Primitive};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::common;

const PRIMS: [Primitive; 8] = Primitive::DARTS;
const ALL: [bool; 8] = [true; 8];

fn small_config() -> ControllerConfig {
    ControllerConfig { hidden: 32, ..ControllerConfig::default() }
}

fn controller(seed: i64, config: ControllerConfig) -> (nn::VarStore, Controller) {
    // Tiny ops: extra libtorch threads only contend (badly, on a busy machine).
    tch::set_num_threads(1);
    let _rng = common::seed_torch(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let c = Controller::new(&(vs.root() / "ctrl"), config);
    (vs, c)
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn entropy_of(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum()
}

/// Most entropy a cell of `n` nodes can have: uniform over the `i + 2` inputs of node `i` and
/// over the allowed ops.
fn max_entropies(n: usize, allowed_ops: usize) -> (f64, f64) {
    let node = (0..n).map(|i| 2.0 * ((i + 2) as f64).ln()).sum();
    (node, 2.0 * n as f64 * (allowed_ops as f64).ln())
}

fn check_structure(s: &CellSample, n: usize, allowed: &[bool]) {
    let cell = &s.cell;
    assert_eq!(cell.edges.len(), 2 * n);
    assert_eq!(cell.concat, (2..n + 2).collect::<Vec<_>>());
    assert_eq!(s.choices.len(), 4 * n);
    assert_eq!(s.probs.len(), 4 * n);
    for (k, e) in cell.edges.iter().enumerate() {
        assert_eq!(e.to, 2 + k / 2, "{cell:?}");
        assert!(e.from < e.to, "{cell:?}");
        let op = PRIMS.iter().position(|&p| p == e.op).unwrap();
        assert!(allowed[op], "{} is masked out: {cell:?}", e.op);
    }
    for i in 0..n {
        let c = &s.choices[4 * i..4 * i + 4];
        assert_eq!(cell.edges[2 * i], Edge::new(PRIMS[c[2]], c[0], i + 2));
        assert_eq!(cell.edges[2 * i + 1], Edge::new(PRIMS[c[3]], c[1], i + 2));
        assert_eq!(s.probs[4 * i].len(), i + 2);
        assert_eq!(s.probs[4 * i + 1].len(), i + 2);
        assert_eq!(s.probs[4 * i + 2].len(), 8);
        assert_eq!(s.probs[4 * i + 3].len(), 8);
    }
    let allowed_prims: Vec<Primitive> =
        PRIMS.iter().zip(allowed).filter(|(_, &a)| a).map(|(&p, _)| p).collect();
    cell.validate("normal", Some(&allowed_prims)).unwrap();
    for t in [&s.log_prob, &s.node_entropy, &s.op_entropy] {
        assert_eq!(t.dim(), 0);
        assert!(t.requires_grad());
    }
}

#[test]
fn config_defaults_serde_and_validation() {
    let d = ControllerConfig::default();
    assert_eq!((d.nodes, d.num_ops, d.hidden, d.temperature, d.tanh_constant), (4, 8, 128, None, None));
    let c = ControllerConfig { temperature: Some(5.0), tanh_constant: Some(2.5), ..d.clone() };
    let back: ControllerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let partial: ControllerConfig = serde_json::from_str(r#"{"nodes": 5}"#).unwrap();
    assert_eq!(partial, ControllerConfig { nodes: 5, ..d.clone() });

    for bad in [
        ControllerConfig { temperature: Some(0.0), ..d.clone() },
        ControllerConfig { tanh_constant: Some(f64::NAN), ..d.clone() },
        ControllerConfig { nodes: 0, ..d.clone() },
        ControllerConfig { num_ops: 0, ..d.clone() },
        ControllerConfig { hidden: 0, ..d.clone() },
    ] {
        let e = bad.validate().unwrap_err();
        assert!(e.is_user_error(), "{e}");
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(common::with_torch_rng(|| Controller::try_new(&vs.root(), bad)).is_err());
    }

    let (vs, ctrl) = controller(0, d);
    let vars = vs.variables();
    assert_eq!(vars["ctrl.node_emb"].size(), [5, 128]);
    assert_eq!(vars["ctrl.op_emb"].size(), [8, 128]);
    assert_eq!(vars["ctrl.lstm.w_ih"].size(), [512, 128]);
    // ENAS initialisation: uniform(-0.1, 0.1) everywhere.
    for (name, v) in &vars {
        let m = v.abs().max().double_value(&[]);
        assert!(m <= 0.1 && m > 0.05, "{name}: max |w| = {m}");
    }
    // Wrong arguments are reported, not sampled from.
    assert!(ctrl.check(&ALL, 5, &PRIMS).is_err());
    assert!(ctrl.check(&ALL, 0, &PRIMS).is_err());
    assert!(ctrl.check(&[true; 7], 4, &PRIMS[..7]).is_err());
    assert!(ctrl.check(&[false; 8], 4, &PRIMS).is_err());
    let mut dup = PRIMS;
    dup[7] = dup[0];
    assert!(ctrl.check(&ALL, 4, &dup).is_err());
    ctrl.check(&ALL, 4, &PRIMS).unwrap();
}

#[test]
#[should_panic(expected = "searched_nodes 5 exceeds")]
fn sample_panics_on_too_many_nodes() {
    let (_vs, ctrl) = controller(0, small_config());
    ctrl.sample(&mut rng(0), &ALL, 5, &PRIMS);
}

#[test]
fn sampled_cells_are_well_formed() {
    let (_vs, ctrl) = controller(1, small_config());
    let mut r = rng(1);
    for n in 1..=4 {
        for _ in 0..25 {
            let s = ctrl.sample(&mut r, &ALL, n, &PRIMS);
            check_structure(&s, n, &ALL);
        }
    }
}

#[test]
fn masks_are_respected() {
    let (_vs, ctrl) = controller(2, small_config());
    let mut r = rng(2);
    let mut allowed = [false; 8];
    for k in [0, 3, 5] {
        allowed[k] = true;
    }
    let mut seen = [0usize; 8];
    for _ in 0..200 {
        let s = ctrl.sample(&mut r, &allowed, 4, &PRIMS);
        check_structure(&s, 4, &allowed);
        for i in 0..4 {
            for slot in [2, 3] {
                let p = &s.probs[4 * i + slot];
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
                for k in 0..8 {
                    assert_eq!(p[k] > 0.0, allowed[k], "{p:?}");
                }
                seen[s.choices[4 * i + slot]] += 1;
            }
        }
    }
    assert_eq!(
        seen.iter().enumerate().filter(|&(_, &n)| n > 0).map(|(k, _)| k).collect::<Vec<_>>(),
        [0, 3, 5]
    );

    // One allowed op: always chosen, with certainty and no entropy.
    let mut only = [false; 8];
    only[6] = true;
    for _ in 0..20 {
        let s = ctrl.sample(&mut r, &only, 3, &PRIMS);
        check_structure(&s, 3, &only);
        assert!(s.cell.edges.iter().all(|e| e.op == Primitive::DilConv3x3));
        assert_eq!(scalar(&s.op_entropy), 0.0);
        let input_log_prob: f64 =
            (0..3).flat_map(|i| [4 * i, 4 * i + 1]).map(|k| s.probs[k][s.choices[k]].ln()).sum();
        assert!((scalar(&s.log_prob) - input_log_prob).abs() < 1e-5);
    }
}

/// The controller's forward pass rewritten from the documented equations, in f64, with the
/// mask as -inf logits: gives every choice's probability vector for the given choices.
fn reference_probs(
    vs: &nn::VarStore,
    config: &ControllerConfig,
    allowed: &[bool],
    choices: &[usize],
) -> Vec<Vec<f64>> {
    let vars = vs.variables();
    let w = |name: &str| vars[&format!("ctrl.{name}")].detach().to_kind(Kind::Double);
    let (node_emb, op_emb) = (w("node_emb"), w("op_emb"));
    let (w_ih, w_hh, b) = (w("lstm.w_ih"), w("lstm.w_hh"), w("lstm.b"));
    let (w_key, w_query, v) = (w("attn.w_key"), w("attn.w_query"), w("attn.v"));
    let (head_w, head_b) = (w("op_head.weight"), w("op_head.bias"));
    let step = |x: &Tensor, h: &Tensor, c: &Tensor| {
        let gates = x.matmul(&w_ih.tr()) + h.matmul(&w_hh.tr()) + &b;
        let g = gates.chunk(4, 1);
        let c2 = g[1].sigmoid() * c + g[0].sigmoid() * g[2].tanh();
        let h2 = g[3].sigmoid() * c2.tanh();
        (h2, c2)
    };
    // Temperature, then clipping, then softmax; a masked (-inf) logit stays -inf and gets 0.
    let softmax = |logits: Vec<f64>| {
        let shaped: Vec<f64> = logits
            .iter()
            .map(|&l| {
                if l == f64::NEG_INFINITY {
                    return l;
                }
                let l = config.temperature.map_or(l, |t| l / t);
                config.tanh_constant.map_or(l, |cst| cst * l.tanh())
            })
            .collect();
        let m = shaped.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> =
            shaped.iter().map(|&l| if l == f64::NEG_INFINITY { 0.0 } else { (l - m).exp() }).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect::<Vec<f64>>()
    };
    let mut h = Tensor::zeros([1, config.hidden], (Kind::Double, Device::Cpu));
    let mut c = h.zeros_like();
    // The released controller's first input is a zero vector.
    let mut x = h.zeros_like();
    let mut out = Vec::new();
    for (k, &choice) in choices.iter().enumerate() {
        (h, c) = step(&x, &h, &c);
        let i = k / 4;
        if k % 4 < 2 {
            let mut scores = Vec::new();
            for j in 0..i + 2 {
                let s = (node_emb.get(j as i64).matmul(&w_key.tr()) + h.get(0).matmul(&w_query.tr())).tanh();
                scores.push(s.dot(&v).double_value(&[]));
            }
            out.push(softmax(scores));
            x = node_emb.get(choice as i64).unsqueeze(0);
        } else {
            let logits = Vec::<f64>::try_from(&(h.get(0).matmul(&head_w.tr()) + &head_b)).unwrap();
            let masked =
                logits.iter().zip(allowed).map(|(&l, &a)| if a { l } else { f64::NEG_INFINITY }).collect();
            out.push(softmax(masked));
            x = op_emb.get(choice as i64).unsqueeze(0);
        }
    }
    out
}

#[test]
fn log_prob_and_entropy_match_an_independent_computation() {
    let mut allowed = ALL;
    allowed[4] = false;
    for config in [
        small_config(),
        ControllerConfig { temperature: Some(0.3), tanh_constant: Some(1.5), ..small_config() },
    ] {
        let (vs, ctrl) = controller(3, config.clone());
        // Sharper than the initial near-uniform weights, so errors cannot hide in flat
        // distributions.
        tch::no_grad(|| {
            for (_, v) in vs.variables() {
                let mut v = v.shallow_clone();
                v *= 8.0;
            }
        });
        let mut r = rng(3);
        for n in [1, 4] {
            for _ in 0..5 {
                let s = ctrl.sample(&mut r, &allowed, n, &PRIMS);
                let reference = reference_probs(&vs, &config, &allowed, &s.choices);
                let (mut lp, mut ne, mut oe) = (0.0, 0.0, 0.0);
                for (k, (p, q)) in s.probs.iter().zip(&reference).enumerate() {
                    assert_eq!(p.len(), q.len());
                    for (a, b) in p.iter().zip(q) {
                        assert!((a - b).abs() < 1e-5, "choice {k}: {p:?} vs {q:?}");
                    }
                    lp += q[s.choices[k]].ln();
                    if k % 4 < 2 {
                        ne += entropy_of(q);
                    } else {
                        oe += entropy_of(q);
                    }
                }
                assert!((scalar(&s.log_prob) - lp).abs() < 1e-5, "{} vs {lp}", scalar(&s.log_prob));
                assert!((scalar(&s.node_entropy) - ne).abs() < 1e-5);
                assert!((scalar(&s.op_entropy) - oe).abs() < 1e-5);
                // ... and from the returned per-step distributions alone.
                let from_probs: f64 = s.probs.iter().zip(&s.choices).map(|(p, &c)| p[c].ln()).sum();
                assert!((scalar(&s.log_prob) - from_probs).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn evaluate_reproduces_sample_and_most_likely() {
    let (_vs, ctrl) = controller(4, small_config());
    let mut allowed = ALL;
    allowed[0] = false;
    let mut r = rng(4);
    for n in 1..=4 {
        for _ in 0..5 {
            let s = ctrl.sample(&mut r, &allowed, n, &PRIMS);
            let e = ctrl.evaluate(&s.cell, &allowed, &PRIMS).unwrap();
            assert_eq!(e.cell, s.cell);
            assert_eq!(e.choices, s.choices);
            // The same computation, but not always to the last bit: with other tests running
            // beside it, libtorch's matrix products may split their sums over other threads.
            assert_eq!(e.probs.len(), s.probs.len());
            for (pe, ps) in e.probs.iter().zip(&s.probs) {
                assert_eq!(pe.len(), ps.len());
                assert!(pe.iter().zip(ps).all(|(a, b)| (a - b).abs() < 1e-6), "{pe:?} vs {ps:?}");
            }
            assert!((scalar(&e.log_prob) - scalar(&s.log_prob)).abs() < 1e-5);
            assert!((scalar(&e.node_entropy) - scalar(&s.node_entropy)).abs() < 1e-5);
            assert!((scalar(&e.op_entropy) - scalar(&s.op_entropy)).abs() < 1e-5);
        }
        let m = ctrl.most_likely(&allowed, n, &PRIMS);
        check_structure(&m, n, &allowed);
        for (p, &c) in m.probs.iter().zip(&m.choices) {
            assert!(p.iter().all(|&q| q <= p[c]), "{p:?} {c}");
        }
        let e = ctrl.evaluate(&m.cell, &allowed, &PRIMS).unwrap();
        assert!((scalar(&e.log_prob) - scalar(&m.log_prob)).abs() < 1e-5);
    }
}

#[test]
fn evaluate_rejects_impossible_cells() {
    let (_vs, ctrl) = controller(5, small_config());
    let cell = |edges: Vec<Edge>| Cell { concat: vec![2], edges };
    let ok = cell(vec![Edge::new(Primitive::SepConv3x3, 0, 2), Edge::new(Primitive::SkipConnect, 1, 2)]);
    ctrl.evaluate(&ok, &ALL, &PRIMS).unwrap();

    let mut no_skip = ALL;
    no_skip[5] = false;
    let e = ctrl.evaluate(&ok, &no_skip, &PRIMS).unwrap_err().to_string();
    assert!(e.contains("skip_connect is masked out"), "{e}");
    let e =
        ctrl.evaluate(&ok, &[true; 2], &[Primitive::SepConv3x3, Primitive::None]).unwrap_err().to_string();
    assert!(e.contains("built for 8 operations"), "{e}");

    let bad = [
        cell(vec![]),
        cell(vec![Edge::new(Primitive::SepConv3x3, 0, 2)]),
        cell(vec![Edge::new(Primitive::SepConv3x3, 0, 3), Edge::new(Primitive::SepConv3x3, 1, 3)]),
        cell(vec![Edge::new(Primitive::SepConv3x3, 2, 2), Edge::new(Primitive::SepConv3x3, 1, 2)]),
        cell(vec![Edge::new(Primitive::Conv1x1, 0, 2), Edge::new(Primitive::SepConv3x3, 1, 2)]),
        // Five nodes for a four-node controller.
        cell((0..10).map(|k| Edge::new(Primitive::SepConv3x3, 0, 2 + k / 2)).collect()),
    ];
    for c in &bad {
        let e = ctrl.evaluate(c, &ALL, &PRIMS).unwrap_err();
        assert!(e.is_user_error(), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn uniform_cells_are_uniform() {
    let mut allowed = [false; 8];
    for k in [1, 2, 6] {
        allowed[k] = true;
    }
    let draws = 20_000;
    let mut r = rng(5);
    // counts[i][slot][value]
    let mut inputs = vec![vec![vec![0usize; 5]; 2]; 4];
    let mut ops = vec![vec![vec![0usize; 8]; 2]; 4];
    for _ in 0..draws {
        let cell = uniform_cell(&mut r, &allowed, 4, &PRIMS);
        assert_eq!(cell.concat, [2, 3, 4, 5]);
        for (k, e) in cell.edges.iter().enumerate() {
            assert_eq!(e.to, 2 + k / 2);
            inputs[k / 2][k % 2][e.from] += 1;
            ops[k / 2][k % 2][PRIMS.iter().position(|&p| p == e.op).unwrap()] += 1;
        }
    }
    // 4.5 standard deviations of a frequency near 1/2 over 20k draws.
    let tol = 4.5 * (0.25f64 / draws as f64).sqrt();
    for i in 0..4 {
        for slot in 0..2 {
            for (j, &count) in inputs[i][slot].iter().enumerate() {
                let f = count as f64 / draws as f64;
                let want = if j < i + 2 { 1.0 / (i + 2) as f64 } else { 0.0 };
                assert!((f - want).abs() < tol, "node {i} input {slot}: {j} has {f}, want {want}");
            }
            for (k, &count) in ops[i][slot].iter().enumerate() {
                let f = count as f64 / draws as f64;
                let want = if allowed[k] { 1.0 / 3.0 } else { 0.0 };
                assert!((f - want).abs() < tol, "node {i} op {slot}: {k} has {f}, want {want}");
            }
        }
    }
    // Fewer nodes, and the same stream gives the same cell.
    let a = uniform_cell(&mut rng(9), &allowed, 2, &PRIMS);
    assert_eq!(a.edges.len(), 4);
    assert_eq!(a, uniform_cell(&mut rng(9), &allowed, 2, &PRIMS));
}

#[test]
fn temperature_then_tanh() {
    let logits = Tensor::from_slice(&[100.0f32, -100.0, 0.5]);
    let both =
        ControllerConfig { temperature: Some(10.0), tanh_constant: Some(2.0), ..ControllerConfig::default() };
    let got = Vec::<f64>::try_from(&both.shape_logits(&logits)).unwrap();
    // Temperature first: 2·tanh(100/10); the other order would give 2·tanh(100)/10 = 0.2.
    let want = [2.0 * 10f64.tanh(), -2.0 * 10f64.tanh(), 2.0 * 0.05f64.tanh()];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?}");
    }
    let plain = Vec::<f64>::try_from(&ControllerConfig::default().shape_logits(&logits)).unwrap();
    assert_eq!(plain, [100.0, -100.0, 0.5]);

    // A peaked controller, and the same weights at a very high temperature: near uniform.
    let (vs, cold) = controller(6, small_config());
    tch::no_grad(|| {
        for (_, v) in vs.variables() {
            let mut v = v.shallow_clone();
            v *= 20.0;
        }
    });
    let rng_lock = common::torch_rng();
    let mut vs_hot = nn::VarStore::new(Device::Cpu);
    let hot = Controller::new(
        &(vs_hot.root() / "ctrl"),
        ControllerConfig { temperature: Some(1e4), ..small_config() },
    );
    vs_hot.copy(&vs).unwrap();
    let mut clipped_vs = nn::VarStore::new(Device::Cpu);
    let clipped = Controller::new(
        &(clipped_vs.root() / "ctrl"),
        ControllerConfig { tanh_constant: Some(0.5), ..small_config() },
    );
    clipped_vs.copy(&vs).unwrap();
    drop(rng_lock);

    let (max_node, max_op) = max_entropies(4, 8);
    let mut r = rng(6);
    let c = cold.sample(&mut r, &ALL, 4, &PRIMS);
    let h = hot.sample(&mut r, &ALL, 4, &PRIMS);
    let t = clipped.sample(&mut r, &ALL, 4, &PRIMS);
    let (cn, co) = (scalar(&c.node_entropy), scalar(&c.op_entropy));
    assert!(cn < 0.7 * max_node && co < 0.7 * max_op, "cold: {cn} {co} of {max_node} {max_op}");
    assert!((scalar(&h.node_entropy) - max_node).abs() < 1e-3, "{}", scalar(&h.node_entropy));
    assert!((scalar(&h.op_entropy) - max_op).abs() < 1e-3, "{}", scalar(&h.op_entropy));
    // Clipping to ±0.5 bounds every probability ratio by e.
    for p in &t.probs {
        let pos: Vec<f64> = p.iter().cloned().filter(|&x| x > 0.0).collect();
        let (lo, hi) = pos.iter().fold((1.0f64, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(hi / lo <= 1f64.exp() + 1e-4, "{p:?}");
    }
}

#[test]
fn reinforce_learns_a_rewarded_op() {
    let target = 3;
    let (vs, ctrl) = controller(7, small_config());
    let mut opt = nn::Adam::default().build(&vs, 0.02).unwrap();
    let mut r = rng(7);
    let measure = |r: &mut ChaCha8Rng| {
        tch::no_grad(|| {
            let samples: Vec<CellSample> = (0..100).map(|_| ctrl.sample(r, &ALL, 4, &PRIMS)).collect();
            let p = samples.iter().map(|s| s.probs[2][target]).sum::<f64>() / 100.0;
            let h = samples.iter().map(|s| entropy_of(&s.probs[2])).sum::<f64>() / 100.0;
            (p, h)
        })
    };
    let (p0, h0) = measure(&mut r);
    assert!((p0 - 0.125).abs() < 0.05, "{p0}");
    let mut baseline = Baseline::default();
    for _ in 0..200 {
        let s = ctrl.sample(&mut r, &ALL, 4, &PRIMS);
        let reward = if s.choices[2] == target { 1.0 } else { 0.0 };
        let advantage = baseline.update(reward);
        let loss = reinforce_loss(&[&s.log_prob], &[&s.node_entropy, &s.op_entropy], advantage, 1e-4);
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
    let (p1, h1) = measure(&mut r);
    assert!(p1 > 0.9, "p(op {target}) = {p1} after training (was {p0})");
    assert!(h1 < 0.5 * h0, "entropy {h1} (was {h0})");
}

#[test]
fn seeds_reproduce_samples() {
    let (_vs, ctrl) = controller(8, small_config());
    let run = |seed: u64| {
        let mut r = rng(seed);
        (0..5).map(|_| ctrl.sample(&mut r, &ALL, 4, &PRIMS).choices).collect::<Vec<_>>()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
    // libtorch's generator plays no part in the choices.
    let a = run(13);
    let rng_lock = common::seed_torch(999);
    let _ = Tensor::rand([10], (Kind::Float, Device::Cpu));
    drop(rng_lock);
    assert_eq!(a, run(13));
}

#[test]
fn baseline_and_loss() {
    let mut b = Baseline::default();
    assert_eq!(b.decay, 0.99);
    assert_eq!(b.update(0.5), 0.0);
    assert_eq!(b.value, Some(0.5));
    // The released rule: the baseline moves first, the advantage is against the moved value,
    // 0.99 * (1.5 - 0.5).
    assert!((b.update(1.5) - 0.99).abs() < 1e-12);
    assert!((b.value.unwrap() - (0.99 * 0.5 + 0.01 * 1.5)).abs() < 1e-12);
    let back: Baseline = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(back, b);
    let fresh: Baseline = serde_json::from_str(r#"{"value": null, "decay": 0.9}"#).unwrap();
    assert_eq!(fresh, Baseline::new(0.9));

    let lp1 = Tensor::from(-2.0f32).set_requires_grad(true);
    let lp2 = Tensor::from(-1.0f32).set_requires_grad(true);
    let ent = Tensor::from(3.0f32).set_requires_grad(true);
    let loss = reinforce_loss(&[&lp1, &lp2], &[&ent], 0.5, 0.1);
    assert!((scalar(&loss) - (3.0 * 0.5 - 0.3)).abs() < 1e-6);
    loss.backward();
    assert!((scalar(&lp1.grad()) + 0.5).abs() < 1e-6);
    assert!((scalar(&ent.grad()) + 0.1).abs() < 1e-6);
    assert_eq!(scalar(&reinforce_loss(&[], &[], 1.0, 1.0)), 0.0);
    assert!((scalar(&reinforce_loss(&[&lp1], &[], -2.0, 1.0)) + 4.0).abs() < 1e-6);
}
