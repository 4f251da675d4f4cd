//! The CNAS/ENAS-style LSTM controller that samples cells, its REINFORCE loss and the
//! moving-average reward baseline.
//!
//! A search keeps one [`Controller`] per cell type (normal, reduction). For each intermediate
//! node `i` (0-based, feeding cell node `i + 2`) the controller makes four choices in this
//! order: input 1, input 2, op 1, op 2; op `k` goes on the edge from input `k`. The sampled cell
//! lists its edges in exactly that order, `(op1, in1, i+2), (op2, in2, i+2)`, and concatenates
//! every sampled node.
//!
//! # Network
//!
//! * An LSTM cell (PyTorch's formulation via `Tensor::lstm_cell`: gates `i, f, g, o` from
//!   `x·W_ihᵀ + h·W_hhᵀ + b`, `c' = f⊙c + i⊙g`, `h' = o⊙tanh(c')`) with one bias vector; its
//!   input and hidden size are both `hidden`. It starts from `h = c = 0` with a zero input (as
//!   the released CNAS controller), and every choice's embedding is the input of the next step.
//! * Input choice for node `i`: additive attention over the `i + 2` states available to it,
//!   `score_j = v · tanh(W_key·node_emb[j] + W_query·h)`; the chosen node's embedding is the
//!   next input. `node_emb` has `nodes + 1` rows, the most any node can choose among.
//! * Op choice: a linear head `h → num_ops` logits, masked to the allowed ops (disallowed ops
//!   are dropped from the distribution, which is the same as a logit of −∞: probability 0,
//!   entropy contribution 0, never sampled, and no NaN in the gradient). The chosen op's
//!   embedding is the next input.
//! * Both kinds of logits are shaped as `C · tanh(logits / T)`: the temperature `T` first, then
//!   the tanh clipping `C` ([`ControllerConfig::shape_logits`]), as in ENAS.
//!
//! Every weight is initialised uniform(−0.1, 0.1), as ENAS does; this starts the controller
//! close to uniform over every choice, so early sampling explores. The initialisation draws from
//! libtorch's generator (seed it with `tch::manual_seed` for reproducible weights); the
//! *choices* never do, see below.
//!
//! Variables, under the [`tch::nn::Path`] given to [`Controller::new`]: `node_emb`
//! `[nodes+1, hidden]`, `op_emb` `[num_ops, hidden]`, `lstm.w_ih` and
//! `lstm.w_hh` `[4·hidden, hidden]`, `lstm.b` `[4·hidden]`, `attn.w_key` and `attn.w_query`
//! `[hidden, hidden]`, `attn.v` `[hidden]`, `op_head.weight` `[num_ops, hidden]`,
//! `op_head.bias` `[num_ops]`.
//!
//! # Randomness
//!
//! Every choice is drawn from the caller's `rand` generator, from the probability vector read
//! back to the host, never from libtorch's generator, so a search that checkpoints its own
//! seeded generator reproduces its samples exactly when resumed. The controller is meant to
//! live on the CPU: sampling a tiny LSTM step by step on a GPU is bound by kernel launches and
//! by the device-to-host copy every choice needs.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::space::{Cell, Edge, Primitive, SpaceError};

/// Shape of a controller and how it shapes its logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerConfig {
    /// Intermediate nodes of a full cell.
    pub nodes: usize,
    /// Length of the primitive list the controller chooses from.
    pub num_ops: usize,
    /// LSTM hidden size, also the size of every embedding.
    pub hidden: i64,
    /// Logits are divided by this before clipping; `None` = 1.
    pub temperature: Option<f64>,
    /// Logits (after the temperature) become `C · tanh(logits)`; `None` = no clipping.
    pub tanh_constant: Option<f64>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { nodes: 4, num_ops: 8, hidden: 128, temperature: None, tanh_constant: None }
    }
}

impl ControllerConfig {
    /// Checks every field; the message names the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadOption(m));
        if self.nodes == 0 {
            return bad("controller: nodes must be at least 1".into());
        }
        if self.num_ops == 0 {
            return bad("controller: num_ops must be at least 1".into());
        }
        if self.hidden < 1 {
            return bad(format!("controller: hidden size must be at least 1, got {}", self.hidden));
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("controller: temperature must be a positive number, got {t}"));
            }
        }
        if let Some(c) = self.tanh_constant {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("controller: tanh constant must be a positive number, got {c}"));
            }
        }
        Ok(())
    }

    /// `C · tanh(logits / T)`: temperature first, then tanh clipping; each only when set.
    pub fn shape_logits(&self, logits: &Tensor) -> Tensor {
        let mut out = match self.temperature {
            Some(t) => logits / t,
            None => logits.shallow_clone(),
        };
        if let Some(c) = self.tanh_constant {
            out = out.tanh() * c;
        }
        out
    }
}

/// One sampled (or evaluated) cell and what the controller thinks of it.
#[derive(Debug)]
pub struct CellSample {
    pub cell: Cell,
    /// Sum of the log-probabilities of every choice (0-dim, with grad).
    pub log_prob: Tensor,
    /// Sum over input choices of the entropy of each choice's distribution (0-dim, with grad).
    pub node_entropy: Tensor,
    /// Sum over op choices of the entropy of each choice's distribution (0-dim, with grad).
    pub op_entropy: Tensor,
    /// Raw choices in order (per node: input 1, input 2, op 1, op 2). An input choice is the
    /// cell node it reads; an op choice is an index into the primitive list.
    pub choices: Vec<usize>,
    /// The distribution each choice was drawn from, aligned with `choices`: for an input choice
    /// of node `i`, `i + 2` probabilities (one per available node); for an op choice,
    /// `num_ops` probabilities with 0 for every disallowed op.
    pub probs: Vec<Vec<f64>>,
}

/// The LSTM controller of one cell type. See the module documentation.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    device: Device,
    node_emb: Tensor,
    op_emb: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b: Tensor,
    w_key: Tensor,
    w_query: Tensor,
    v: Tensor,
    head_w: Tensor,
    head_b: Tensor,
}

/// How the choices of one pass are made. One code path serves sampling, argmax and teacher
/// forcing, so `evaluate` computes exactly what `sample` did.
enum Pick<'a> {
    Draw(&'a mut dyn FnMut() -> f64),
    Argmax,
    Forced(&'a [usize]),
}

impl Pick<'_> {
    /// Chooses an index of `probs` (`step` counts the choices made so far).
    fn pick(&mut self, step: usize, probs: &[f64]) -> usize {
        match self {
            Pick::Draw(uniform) => draw(uniform(), probs),
            Pick::Argmax => {
                // First maximum, so ties resolve the same way every time.
                let mut best = 0;
                for (j, &p) in probs.iter().enumerate() {
                    if p > probs[best] {
                        best = j;
                    }
                }
                best
            }
            Pick::Forced(choices) => choices[step],
        }
    }
}

/// Inverse-CDF draw for `u` in [0, 1). A zero-probability entry can never be chosen: its
/// cumulative sum equals its predecessor's, which `u` already failed to stay below. Rounding
/// (f32 probabilities that sum to slightly under 1) falls back to the last possible entry.
fn draw(u: f64, probs: &[f64]) -> usize {
    let mut cum = 0.0;
    for (j, &p) in probs.iter().enumerate() {
        cum += p;
        if u < cum && p > 0.0 {
            return j;
        }
    }
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// Checks what a search passes on every call: the mask and the primitive list agree, at least
/// one op is allowed, the list has no duplicates (an op must map to one choice, or
/// `evaluate` could not find the choice `sample` made) and `searched_nodes` is at least 1.
fn check_choice_space(allowed: &[bool], searched_nodes: usize, primitives: &[Primitive]) -> Result<()> {
    let bad = |m: String| Err(Error::BadOption(m));
    if allowed.len() != primitives.len() {
        return bad(format!(
            "controller: the op mask has {} entries but the primitive list has {}",
            allowed.len(),
            primitives.len()
        ));
    }
    if !allowed.iter().any(|&a| a) {
        return bad("controller: the op mask allows no operation".into());
    }
    for (i, p) in primitives.iter().enumerate() {
        if primitives[..i].contains(p) {
            return bad(format!("controller: primitive {p} is listed twice"));
        }
    }
    if searched_nodes == 0 {
        return bad("controller: searched_nodes must be at least 1".into());
    }
    Ok(())
}

fn build_cell(choices: &[usize], primitives: &[Primitive], searched_nodes: usize) -> Cell {
    let mut edges = Vec::with_capacity(2 * searched_nodes);
    for (i, c) in choices.chunks_exact(4).enumerate() {
        edges.push(Edge::new(primitives[c[2]], c[0], i + 2));
        edges.push(Edge::new(primitives[c[3]], c[1], i + 2));
    }
    Cell { edges, concat: (2..searched_nodes + 2).collect() }
}

/// Samples a cell with every choice uniform (inputs over the `i + 2` states available to node
/// `i`, ops over the allowed ones), with no network: the "uniform" search mode and a baseline.
/// Draws in the controller's order (in 1, in 2, op 1, op 2 per node).
///
/// # Panics
/// When the mask and primitive list disagree in length, allow nothing, or `searched_nodes` is
/// 0; check user input first with [`Controller::check`] or [`ControllerConfig::validate`].
pub fn uniform_cell(
    rng: &mut impl Rng,
    allowed: &[bool],
    searched_nodes: usize,
    primitives: &[Primitive],
) -> Cell {
    if let Err(e) = check_choice_space(allowed, searched_nodes, primitives) {
        panic!("uniform_cell: {e}");
    }
    let ops: Vec<usize> = (0..allowed.len()).filter(|&k| allowed[k]).collect();
    let mut choices = Vec::with_capacity(4 * searched_nodes);
    for i in 0..searched_nodes {
        choices.push(rng.random_range(0..i + 2));
        choices.push(rng.random_range(0..i + 2));
        choices.push(ops[rng.random_range(0..ops.len())]);
        choices.push(ops[rng.random_range(0..ops.len())]);
    }
    build_cell(&choices, primitives, searched_nodes)
}

/// REINFORCE: `loss = -(Σ log_probs)·advantage - entropy_weight·(Σ entropies)`. Empty slices
/// contribute 0; with both empty the loss is a constant 0 on the CPU.
pub fn reinforce_loss(
    log_probs: &[&Tensor],
    entropies: &[&Tensor],
    advantage: f64,
    entropy_weight: f64,
) -> Tensor {
    let sum = |ts: &[&Tensor]| ts.iter().map(|t| t.shallow_clone()).reduce(|a, b| a + b);
    let policy = sum(log_probs).map(|s| s * (-advantage));
    let bonus = sum(entropies).map(|s| s * (-entropy_weight));
    match (policy, bonus) {
        (Some(p), Some(b)) => p + b,
        (Some(p), None) => p,
        (None, Some(b)) => b,
        (None, None) => Tensor::from(0.0f32),
    }
}

/// Exponential moving average of the rewards, the REINFORCE baseline.
///
/// [`Baseline::update`] moves the baseline first and returns the reward minus the *moved*
/// baseline, as the released CNAS code does: `advantage = reward - (decay·b + (1 - decay)·reward)
/// = decay·(reward - b)`. The first reward initialises the baseline, so its advantage is 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub value: Option<f64>,
    pub decay: f64,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline { value: None, decay: 0.99 }
    }
}

impl Baseline {
    pub fn new(decay: f64) -> Self {
        Baseline { value: None, decay }
    }

    /// Moves the baseline, `value ← decay·value + (1 - decay)·reward` (the first reward sets
    /// it), and returns `reward - value` with the moved value.
    pub fn update(&mut self, reward: f64) -> f64 {
        let moved = match self.value {
            None => reward,
            Some(v) => self.decay * v + (1.0 - self.decay) * reward,
        };
        self.value = Some(moved);
        reward - moved
    }
}

impl Controller {
    /// A controller whose variables live under `p` (see the module documentation for names,
    /// shapes and initialisation). Put `p` on the CPU.
    ///
    /// # Panics
    /// On a config that [`ControllerConfig::validate`] rejects; use [`Controller::try_new`]
    /// for configs a user wrote.
    pub fn new(p: &nn::Path, config: ControllerConfig) -> Self {
        match Controller::try_new(p, config) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Controller::new`] with the config checked first.
    pub fn try_new(p: &nn::Path, config: ControllerConfig) -> Result<Self> {
        config.validate()?;
        let h = config.hidden;
        let ops = config.num_ops as i64;
        let init = nn::Init::Uniform { lo: -0.1, up: 0.1 };
        let lstm = p / "lstm";
        let attn = p / "attn";
        let head = p / "op_head";
        Ok(Controller {
            device: p.device(),
            node_emb: p.var("node_emb", &[config.nodes as i64 + 1, h], init),
            op_emb: p.var("op_emb", &[ops, h], init),
            w_ih: lstm.var("w_ih", &[4 * h, h], init),
            w_hh: lstm.var("w_hh", &[4 * h, h], init),
            b: lstm.var("b", &[4 * h], init),
            w_key: attn.var("w_key", &[h, h], init),
            w_query: attn.var("w_query", &[h, h], init),
            v: attn.var("v", &[h], init),
            head_w: head.var("weight", &[ops, h], init),
            head_b: head.var("bias", &[ops], init),
            config,
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The same controller on the same storage, detached from autograd, to sample with on
    /// another thread while its weights are not being trained (tensors may move between
    /// threads but not be shared by reference).
    pub fn frozen_copy(&self) -> Controller {
        let t = |x: &Tensor| x.detach();
        Controller {
            config: self.config.clone(),
            device: self.device,
            node_emb: t(&self.node_emb),
            op_emb: t(&self.op_emb),
            w_ih: t(&self.w_ih),
            w_hh: t(&self.w_hh),
            b: t(&self.b),
            w_key: t(&self.w_key),
            w_query: t(&self.w_query),
            v: t(&self.v),
            head_w: t(&self.head_w),
            head_b: t(&self.head_b),
        }
    }

    /// Checks the arguments of [`Controller::sample`] / [`Controller::most_likely`] against
    /// this controller: the mask and primitive list have `num_ops` entries, allow at least one
    /// op, list no primitive twice, and `1 <= searched_nodes <= nodes`.
    pub fn check(&self, allowed: &[bool], searched_nodes: usize, primitives: &[Primitive]) -> Result<()> {
        check_choice_space(allowed, searched_nodes, primitives)?;
        if primitives.len() != self.config.num_ops {
            return Err(Error::BadOption(format!(
                "controller: built for {} operations but given a primitive list of {}",
                self.config.num_ops,
                primitives.len()
            )));
        }
        if searched_nodes > self.config.nodes {
            return Err(Error::BadOption(format!(
                "controller: searched_nodes {searched_nodes} exceeds the controller's {} nodes",
                self.config.nodes
            )));
        }
        Ok(())
    }

    /// Samples a cell of `searched_nodes` nodes (the first ones of a full cell: the node-growing
    /// curriculum), every choice drawn from `rng`: exactly one `f64` per choice, `4 ·
    /// searched_nodes` in all, by inverse CDF. The tensors carry grad.
    ///
    /// # Panics
    /// When [`Controller::check`] fails.
    pub fn sample(
        &self,
        rng: &mut impl Rng,
        allowed: &[bool],
        searched_nodes: usize,
        primitives: &[Primitive],
    ) -> CellSample {
        let mut uniform = || rng.random::<f64>();
        self.run_checked("sample", Pick::Draw(&mut uniform), allowed, searched_nodes, primitives)
    }

    /// The cell made of the most probable choice at each step (given the earlier ones).
    ///
    /// # Panics
    /// When [`Controller::check`] fails.
    pub fn most_likely(
        &self,
        allowed: &[bool],
        searched_nodes: usize,
        primitives: &[Primitive],
    ) -> CellSample {
        self.run_checked("most_likely", Pick::Argmax, allowed, searched_nodes, primitives)
    }

    /// Log-probability and entropies of a given cell (teacher forcing). The cell must be one
    /// the controller could sample: written node by node (edges `2k`, `2k+1` feed node
    /// `k + 2`), at most `nodes` nodes, inputs below their node, every op in `primitives` and
    /// allowed. Its `concat` is not a choice and is not checked; the returned sample holds the
    /// cell as given.
    pub fn evaluate(&self, cell: &Cell, allowed: &[bool], primitives: &[Primitive]) -> Result<CellSample> {
        let invalid = |m: String| Err(Error::Space(SpaceError::Invalid(m)));
        let nodes = cell.num_nodes();
        if cell.edges.is_empty() || cell.edges.len() % 2 != 0 {
            return invalid(format!(
                "cell has {} edges; the controller samples two per node",
                cell.edges.len()
            ));
        }
        self.check(allowed, nodes, primitives)?;
        let mut choices = vec![0; 4 * nodes];
        for (k, e) in cell.edges.iter().enumerate() {
            let (node, slot) = (k / 2, k % 2);
            if e.to != node + 2 {
                return invalid(format!(
                    "cell edge {k} {e} feeds node {}; the controller writes edges {} and {} into node {}",
                    e.to,
                    2 * node,
                    2 * node + 1,
                    node + 2
                ));
            }
            if e.from >= e.to {
                return invalid(format!("cell edge {k} {e}: from must be smaller than to"));
            }
            let op = match primitives.iter().position(|&p| p == e.op) {
                Some(op) if allowed[op] => op,
                Some(_) => return invalid(format!("cell edge {k} {e}: operation {} is masked out", e.op)),
                None => {
                    return invalid(format!(
                        "cell edge {k} {e}: operation {} is not in the primitive list",
                        e.op
                    ))
                }
            };
            choices[4 * node + slot] = e.from;
            choices[4 * node + 2 + slot] = op;
        }
        let mut sample = self.run(Pick::Forced(&choices), allowed, nodes, primitives);
        sample.cell = cell.clone();
        Ok(sample)
    }

    fn run_checked(
        &self,
        what: &str,
        pick: Pick<'_>,
        allowed: &[bool],
        searched_nodes: usize,
        primitives: &[Primitive],
    ) -> CellSample {
        if let Err(e) = self.check(allowed, searched_nodes, primitives) {
            panic!("Controller::{what}: {e}");
        }
        self.run(pick, allowed, searched_nodes, primitives)
    }

    /// One pass of the controller; the arguments are already checked.
    fn run(
        &self,
        mut pick: Pick<'_>,
        allowed: &[bool],
        searched_nodes: usize,
        primitives: &[Primitive],
    ) -> CellSample {
        let h0 = Tensor::zeros([1, self.config.hidden], (Kind::Float, self.device));
        let (mut h, mut c) = (h0.shallow_clone(), h0.shallow_clone());
        let mut x = h0;
        let allowed_idx: Vec<i64> = (0..allowed.len()).filter(|&k| allowed[k]).map(|k| k as i64).collect();
        let allowed_t = Tensor::from_slice(&allowed_idx).to_device(self.device);
        // The keys do not depend on the LSTM state: one matmul per pass.
        let keys = self.node_emb.matmul(&self.w_key.tr());

        let mut choices = Vec::with_capacity(4 * searched_nodes);
        let mut probs = Vec::with_capacity(4 * searched_nodes);
        let (mut log_probs, mut node_ent, mut op_ent) = (Vec::new(), Vec::new(), Vec::new());

        for i in 0..searched_nodes {
            let states = i as i64 + 2;
            for _ in 0..2 {
                (h, c) = x.lstm_cell(&[&h, &c], &self.w_ih, &self.w_hh, Some(&self.b), None);
                let query = h.matmul(&self.w_query.tr());
                let scores = (keys.narrow(0, 0, states) + query).tanh().matmul(&self.v);
                let (log_p, entropy, p) = self.distribution(&scores);
                let j = pick.pick(choices.len(), &p);
                log_probs.push(log_p.get(j as i64));
                node_ent.push(entropy);
                choices.push(j);
                probs.push(p);
                x = self.node_emb.get(j as i64).unsqueeze(0);
            }
            for _ in 0..2 {
                (h, c) = x.lstm_cell(&[&h, &c], &self.w_ih, &self.w_hh, Some(&self.b), None);
                let logits = h.linear(&self.head_w, Some(&self.head_b)).squeeze_dim(0);
                // Masking by selection: only allowed ops enter the softmax.
                let (log_p, entropy, p) = self.distribution(&logits.index_select(0, &allowed_t));
                let mut full = vec![0.0; allowed.len()];
                for (&k, &pk) in allowed_idx.iter().zip(&p) {
                    full[k as usize] = pk;
                }
                let op = pick.pick(choices.len(), &full);
                // `op` is allowed: drawn or argmax from `full` (zero elsewhere) or checked by
                // `evaluate`; its place among the allowed ops indexes `log_p`.
                let pos = allowed_idx.iter().position(|&k| k as usize == op).unwrap_or(0);
                log_probs.push(log_p.get(pos as i64));
                op_ent.push(entropy);
                choices.push(op);
                probs.push(full);
                x = self.op_emb.get(op as i64).unsqueeze(0);
            }
        }
        let total = |ts: Vec<Tensor>| Tensor::stack(&ts, 0).sum(Kind::Float);
        CellSample {
            cell: build_cell(&choices, primitives, searched_nodes),
            log_prob: total(log_probs),
            node_entropy: total(node_ent),
            op_entropy: total(op_ent),
            choices,
            probs,
        }
    }

    /// Log-probabilities, entropy and host copy of the probabilities of a 1-D logit vector.
    fn distribution(&self, logits: &Tensor) -> (Tensor, Tensor, Vec<f64>) {
        let log_p = self.config.shape_logits(logits).log_softmax(0, Kind::Float);
        let p = log_p.exp();
        let entropy = -(&p * &log_p).sum(Kind::Float);
        let host = match Vec::<f32>::try_from(&p.detach().to_device(Device::Cpu)) {
            Ok(v) => v.into_iter().map(f64::from).collect(),
            // A 1-D float tensor always converts; anything else is a fault in libtorch.
            Err(e) => panic!("controller: cannot read probabilities back: {e}"),
        };
        (log_p, entropy, host)
    }
}
