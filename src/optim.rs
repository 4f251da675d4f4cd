//! Optimizers with PyTorch's update rules and with their state in the open, so checkpoints can
//! save and restore it exactly (tch's optimizers keep their state inside libtorch, out of
//! reach). Each works on a fixed list of named parameters. A weight-sharing supernet needs
//! two rules: [`Sgd::zero_grad_in_place`] then [`Sgd::step`] is PyTorch 1.5's (the released
//! CNAS code's): gradients are zeroed, not dropped, so a parameter used once keeps taking
//! weight decay and momentum; [`Sgd::zero_grad`] then [`Sgd::step_subset`] leaves the
//! parameters of ops the sampled architecture did not use alone, as PyTorch does for
//! parameters whose gradient is `None`.
//!
//! The hot calls (dropping or zeroing gradients, the SGD update, gradient clipping) are libtorch's
//! multi-tensor operators through `csrc/optim.cpp`: a few kernel launches per step on a GPU,
//! whatever the number of parameters.
use std::collections::HashMap;
use std::ffi::c_int;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::sys::{self, pointers};

fn shim_error(what: &str) -> Error {
    let msg = sys::last_error();
    let first = msg.lines().next().unwrap_or("");
    Error::Torch(tch::TchError::Torch(format!("{what}: {first}")))
}

/// Drops the gradients of `params` (`zero_grad(set_to_none=True)`, PyTorch's default): the
/// next backward pass gives a gradient only to what it reaches, and nothing is zeroed.
pub fn set_grads_to_none(params: &[Tensor]) -> Result<()> {
    let mut ptrs = pointers(params);
    // SAFETY: the pointers are live tch tensors for the duration of the call.
    let rc = unsafe { sys::cnas_grads_set_none(ptrs.as_mut_ptr(), ptrs.len() as c_int) };
    if rc != 0 {
        return Err(shim_error("dropping gradients"));
    }
    Ok(())
}

/// Zeroes the gradients of `params` in place and keeps them (`zero_grad()` of PyTorch before
/// 1.7, which the released CNAS code ran on): a parameter that has had a gradient keeps a (zero)
/// one, so a later step still applies weight decay and momentum to it. Parameters whose
/// `materialize` flag is set get a zero gradient if they have none (restoring that state after
/// a resume). One multi-tensor kernel on a GPU.
pub fn zero_grads_in_place(params: &[Tensor], materialize: &[bool]) -> Result<()> {
    let mut ptrs = pointers(params);
    // No flags (a null pointer) in the usual case, where nothing is to be materialized.
    let flags: Vec<c_int> = if materialize.iter().any(|&m| m) {
        (0..params.len()).map(|i| c_int::from(materialize.get(i).copied().unwrap_or(false))).collect()
    } else {
        Vec::new()
    };
    let flags_ptr = if flags.is_empty() { std::ptr::null() } else { flags.as_ptr() };
    // SAFETY: the pointers are live tch tensors; `flags` is null or has one entry per pointer.
    let rc = unsafe { sys::cnas_grads_zero(ptrs.as_mut_ptr(), ptrs.len() as c_int, flags_ptr) };
    if rc != 0 {
        return Err(shim_error("zeroing gradients"));
    }
    Ok(())
}

/// Scales the gradients of `params` (those that have one) so that their joint L2 norm is at
/// most `max_norm`, as PyTorch's `clip_grad_norm_`, and returns the norm before clipping as a
/// 0-dim tensor. Nothing is read back to the host.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor> {
    let mut ptrs = pointers(params);
    // SAFETY: live tch tensors; a non-null result is a heap-allocated at::Tensor handed over.
    let out = unsafe {
        sys::take_tensor(sys::cnas_clip_grad_norm(ptrs.as_mut_ptr(), ptrs.len() as c_int, max_norm))
    };
    out.ok_or_else(|| shim_error("clipping gradients"))
}

/// Stochastic gradient descent: L2 weight decay, momentum (heavy-ball or Nesterov), as
/// `torch.optim.SGD` with dampening 0.
pub struct Sgd {
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Per parameter: whether weight decay applies (off for biases with no-bias-decay).
    decay: Vec<bool>,
    momentum_buffers: Vec<Option<Tensor>>,
    /// Per parameter: whether a step has updated it (it has had a gradient).
    stepped: Vec<bool>,
    /// Set by [`Sgd::load_state`]: the next in-place zeroing gives the stepped parameters back
    /// the (zero) gradients they had before the checkpoint.
    restore_grads: bool,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    pub fn new(
        named_params: Vec<(String, Tensor)>,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    ) -> Self {
        let n = named_params.len();
        let (names, params) = named_params.into_iter().unzip();
        Sgd {
            names,
            params,
            decay: vec![true; n],
            momentum_buffers: (0..n).map(|_| None).collect(),
            stepped: vec![false; n],
            restore_grads: false,
            lr,
            momentum,
            weight_decay,
            nesterov,
        }
    }

    /// Turns weight decay off for the parameters `exempt` says (e.g. biases and BN weights).
    pub fn exempt_from_decay(&mut self, exempt: impl Fn(&str) -> bool) {
        for (d, name) in self.decay.iter_mut().zip(&self.names) {
            *d = !exempt(name);
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Drops every parameter's gradient (see [`set_grads_to_none`]).
    pub fn zero_grad(&mut self) -> Result<()> {
        set_grads_to_none(&self.params)
    }

    /// Zeroes the gradients in place instead of dropping them (see [`zero_grads_in_place`]):
    /// with [`Sgd::step`] after the backward pass, every parameter that has ever had a
    /// gradient is updated, as under PyTorch 1.5. After [`Sgd::load_state`] the parameters
    /// stepped before the checkpoint get their zero gradients back here.
    pub fn zero_grad_in_place(&mut self) -> Result<()> {
        let restore = std::mem::take(&mut self.restore_grads);
        zero_grads_in_place(&self.params, if restore { &self.stepped } else { &[] })
    }

    /// Updates every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        let all: Vec<usize> = (0..self.params.len()).collect();
        self.step_subset(&all)
    }

    /// Updates only the parameters at `indices` (into the list given to [`Sgd::new`]) that
    /// have a gradient. One fused multi-tensor update per group of parameters that share the
    /// weight decay and whether their momentum buffer exists yet (at most four groups).
    pub fn step_subset(&mut self, indices: &[usize]) -> Result<()> {
        let mut groups: [Vec<usize>; 4] = Default::default();
        for &i in indices {
            if !self.params[i].grad().defined() {
                continue;
            }
            self.stepped[i] = true;
            let decays = self.weight_decay != 0.0 && self.decay[i];
            let first = self.momentum != 0.0 && self.momentum_buffers[i].is_none();
            groups[usize::from(decays) * 2 + usize::from(first)].push(i);
        }
        for (g, members) in groups.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            let (decays, first) = (g / 2 == 1, g % 2 == 1);
            if first {
                for &i in members {
                    // Any contents: the first step sets the buffer to the gradient.
                    self.momentum_buffers[i] = Some(self.params[i].zeros_like());
                }
            }
            let mut params = pointers(members.iter().map(|&i| &self.params[i]));
            let mut bufs = if self.momentum != 0.0 {
                pointers(members.iter().filter_map(|&i| self.momentum_buffers[i].as_ref()))
            } else {
                Vec::new()
            };
            // SAFETY: live tch tensors; `bufs` is empty or as long as `params`.
            let rc = unsafe {
                sys::cnas_fused_sgd(
                    params.as_mut_ptr(),
                    bufs.as_mut_ptr(),
                    params.len() as c_int,
                    if decays { self.weight_decay } else { 0.0 },
                    self.momentum,
                    self.lr,
                    c_int::from(self.nesterov),
                    c_int::from(first),
                )
            };
            if rc != 0 {
                return Err(shim_error("the SGD step"));
            }
        }
        Ok(())
    }

    /// Momentum buffers as named tensors (`momentum.<param>`), for a checkpoint; a parameter
    /// stepped without a buffer (momentum 0) is marked by a 0-dim `stepped.<param>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            match &self.momentum_buffers[i] {
                Some(b) => out.push((format!("momentum.{n}"), b.shallow_clone())),
                None if self.stepped[i] => out.push((format!("stepped.{n}"), Tensor::from(1i64))),
                None => {}
            }
        }
        out
    }

    /// Restores what [`Sgd::state`] saved; parameters without a saved buffer start afresh.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            self.momentum_buffers[i] = match state.get(&format!("momentum.{name}")) {
                None => None,
                Some(t) => Some(checked_copy(t, &self.params[i], name)?),
            };
            self.stepped[i] =
                self.momentum_buffers[i].is_some() || state.contains_key(&format!("stepped.{name}"));
        }
        self.restore_grads = true;
        Ok(())
    }
}

fn checked_copy(saved: &Tensor, param: &Tensor, name: &str) -> Result<Tensor> {
    if saved.size() != param.size() {
        return Err(Error::WeightMismatch(format!(
            "optimizer state for {name} has shape {:?}, the parameter {:?}",
            saved.size(),
            param.size()
        )));
    }
    Ok(saved.to_kind(param.kind()).to_device(param.device()).detach().copy())
}

/// Adam with L2 weight decay added to the gradient, as `torch.optim.Adam`.
pub struct Adam {
    names: Vec<String>,
    params: Vec<Tensor>,
    exp_avg: Vec<Option<Tensor>>,
    exp_avg_sq: Vec<Option<Tensor>>,
    steps: Vec<i64>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Adam {
    pub fn new(named_params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Self {
        let n = named_params.len();
        let (names, params) = named_params.into_iter().unzip();
        Adam {
            names,
            params,
            exp_avg: (0..n).map(|_| None).collect(),
            exp_avg_sq: (0..n).map(|_| None).collect(),
            steps: vec![0; n],
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
        }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Drops every parameter's gradient (see [`set_grads_to_none`]).
    pub fn zero_grad(&mut self) -> Result<()> {
        set_grads_to_none(&self.params)
    }

    pub fn step(&mut self) {
        let all: Vec<usize> = (0..self.params.len()).collect();
        self.step_subset(&all);
    }

    pub fn step_subset(&mut self, indices: &[usize]) {
        let (b1, b2) = self.betas;
        tch::no_grad(|| {
            for &i in indices {
                let p = &mut self.params[i];
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if self.weight_decay != 0.0 { grad + &*p * self.weight_decay } else { grad };
                self.steps[i] += 1;
                let t = self.steps[i] as i32;
                let m = self.exp_avg[i].get_or_insert_with(|| p.zeros_like());
                let _ = m.g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
                let v = self.exp_avg_sq[i].get_or_insert_with(|| p.zeros_like());
                let _ = v.g_mul_scalar_(b2).g_add_(&(&grad * &grad * (1.0 - b2)));
                let bias1 = 1.0 - b1.powi(t);
                let bias2 = 1.0 - b2.powi(t);
                let denom = v.sqrt() / bias2.sqrt() + self.eps;
                let _ = p.g_sub_(&(&*m / denom * (self.lr / bias1)));
            }
        })
    }

    /// Moments and step counts as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if let (Some(m), Some(v)) = (&self.exp_avg[i], &self.exp_avg_sq[i]) {
                out.push((format!("exp_avg.{name}"), m.shallow_clone()));
                out.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
                out.push((format!("step.{name}"), Tensor::from(self.steps[i])));
            }
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            let p = &self.params[i];
            self.exp_avg[i] =
                state.get(&format!("exp_avg.{name}")).map(|t| checked_copy(t, p, name)).transpose()?;
            self.exp_avg_sq[i] =
                state.get(&format!("exp_avg_sq.{name}")).map(|t| checked_copy(t, p, name)).transpose()?;
            self.steps[i] = state.get(&format!("step.{name}")).map(|t| t.int64_value(&[])).unwrap_or(0);
        }
        Ok(())
    }
}

/// The trainable variables of `vs` in name order: the parameter list of an optimizer, the
/// same on every rank and in every session.
pub fn trainable_params(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{nn, Device, Kind};

    /// Runs `steps` updates of ours and of libtorch's own optimizer on the same quadratic
    /// loss from the same start; they must agree.
    fn compare(
        ours: impl Fn(Vec<(String, Tensor)>) -> Box<dyn FnMut()>,
        theirs: impl Fn(&nn::VarStore) -> nn::Optimizer,
    ) {
        tch::manual_seed(3);
        let target = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let vs_a = nn::VarStore::new(Device::Cpu);
        let a = vs_a.root().var("w", &[5, 4], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let vs_b = nn::VarStore::new(Device::Cpu);
        let b = vs_b.root().var_copy("w", &a);
        let mut step_a = ours(vec![("w".into(), a.shallow_clone())]);
        let mut opt_b = theirs(&vs_b);
        for _ in 0..7 {
            let mut a2 = a.shallow_clone();
            a2.zero_grad();
            (&a - &target).square().sum(Kind::Float).backward();
            step_a();
            opt_b.zero_grad();
            (&b - &target).square().sum(Kind::Float).backward();
            opt_b.step();
        }
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "differs from libtorch's optimizer by {diff}");
    }

    #[test]
    fn sgd_matches_libtorch_with_nesterov_and_weight_decay() {
        compare(
            |p| {
                let mut o = Sgd::new(p, 0.01, 0.9, 3e-4, true);
                Box::new(move || o.step().unwrap())
            },
            |vs| nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 3e-4, nesterov: true }.build(vs, 0.01).unwrap(),
        );
        compare(
            |p| {
                let mut o = Sgd::new(p, 0.05, 0.9, 0.0, false);
                Box::new(move || o.step().unwrap())
            },
            |vs| nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 0.0, nesterov: false }.build(vs, 0.05).unwrap(),
        );
    }

    #[test]
    fn adam_matches_libtorch_with_weight_decay() {
        compare(
            |p| {
                let mut o = Adam::new(p, 3e-2, 5e-4);
                Box::new(move || o.step())
            },
            |vs| {
                nn::Adam { beta1: 0.9, beta2: 0.999, wd: 5e-4, eps: 1e-8, amsgrad: false }
                    .build(vs, 3e-2)
                    .unwrap()
            },
        );
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let make = || Tensor::from_slice(&[1f32, -2.0, 3.0]).set_requires_grad(true);
        let loss = |p: &Tensor| (p * p * p).sum(Kind::Float).backward();
        let (a, b) = (make(), make());
        let mut sgd_a = Sgd::new(vec![("p".into(), a.shallow_clone())], 0.01, 0.9, 1e-3, true);
        let mut adam_a = Adam::new(vec![("p".into(), a.shallow_clone())], 0.01, 1e-3);
        for _ in 0..3 {
            sgd_a.zero_grad().unwrap();
            loss(&a);
            sgd_a.step().unwrap();
            adam_a.zero_grad().unwrap();
            loss(&a);
            adam_a.step();
        }
        // b continues from a's saved state.
        tch::no_grad(|| b.shallow_clone().copy_(&a));
        let mut sgd_b = Sgd::new(vec![("p".into(), b.shallow_clone())], 0.01, 0.9, 1e-3, true);
        sgd_b.load_state(&sgd_a.state().into_iter().collect()).unwrap();
        let mut adam_b = Adam::new(vec![("p".into(), b.shallow_clone())], 0.01, 1e-3);
        adam_b.load_state(&adam_a.state().into_iter().collect()).unwrap();
        for (p, sgd, adam) in [(&a, &mut sgd_a, &mut adam_a), (&b, &mut sgd_b, &mut adam_b)] {
            for _ in 0..2 {
                sgd.zero_grad().unwrap();
                loss(p);
                sgd.step().unwrap();
                adam.zero_grad().unwrap();
                loss(p);
                adam.step();
            }
        }
        assert!(a.equal(&b));
    }

    #[test]
    fn step_subset_leaves_other_parameters_alone() {
        let a = Tensor::from_slice(&[1f32]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1f32]).set_requires_grad(true);
        (&a * 2 + &b * 3).sum(Kind::Float).backward();
        let mut sgd = Sgd::new(
            vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())],
            0.1,
            0.9,
            0.1,
            false,
        );
        sgd.step_subset(&[0]).unwrap();
        assert!((a.double_value(&[0]) - (1.0 - 0.1 * (2.0 + 0.1))).abs() < 1e-6);
        assert_eq!(b.double_value(&[0]), 1.0);
        assert!(sgd.state().iter().all(|(n, _)| n == "momentum.a"));
    }

    /// The fused update against the rule written out per parameter, over steps where the
    /// parameters fall into every group: with and without weight decay, with and without a
    /// momentum buffer yet, and one that gets no gradient at all.
    #[test]
    fn fused_sgd_groups_match_the_rule_per_parameter() {
        let (lr, m, wd) = (0.05, 0.9, 1e-2);
        tch::manual_seed(5);
        let start: Vec<Tensor> =
            (0..4).map(|i| Tensor::randn([3 + i, 2], (Kind::Float, Device::Cpu))).collect();
        let params: Vec<Tensor> = start.iter().map(|t| t.copy().set_requires_grad(true)).collect();
        let mut sgd = Sgd::new(
            params.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.shallow_clone())).collect(),
            lr,
            m,
            wd,
            true,
        );
        sgd.exempt_from_decay(|n| n == "p1");
        let mut expected: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
        let mut bufs: Vec<Option<Tensor>> = (0..4).map(|_| None).collect();
        // Which parameters each step's loss reaches: p2 joins late, p3 never.
        let reached: [&[usize]; 3] = [&[0, 1], &[0, 1, 2], &[1, 2]];
        for (step, used) in reached.iter().enumerate() {
            sgd.zero_grad().unwrap();
            let loss = used.iter().map(|&i| (&params[i] * (step as f64 + 1.0)).square().sum(Kind::Float));
            loss.reduce(|a, b| a + b).unwrap().backward();
            sgd.step().unwrap();
            for &i in used.iter() {
                let x = &expected[i];
                let mut d = x * 2.0 * (step as f64 + 1.0).powi(2);
                if i != 1 {
                    d += x * wd;
                }
                let buf = match bufs[i].take() {
                    None => d.copy(),
                    Some(b) => b * m + &d,
                };
                let update = &d + &buf * m;
                expected[i] = x - update * lr;
                bufs[i] = Some(buf);
            }
        }
        for (i, (p, e)) in params.iter().zip(&expected).enumerate() {
            let diff = (p - e).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "parameter {i} differs by {diff}");
        }
        assert!(params[3].equal(&start[3]));
        assert!(!params[3].grad().defined());
        let saved: Vec<String> = sgd.state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(saved, ["momentum.p0", "momentum.p1", "momentum.p2"]);
    }

    #[test]
    fn zero_grad_drops_gradients() {
        let a = Tensor::from_slice(&[1f32, 2.0]).set_requires_grad(true);
        (&a * 3).sum(Kind::Float).backward();
        assert!(a.grad().defined());
        let mut sgd = Sgd::new(vec![("a".into(), a.shallow_clone())], 0.1, 0.9, 0.0, false);
        sgd.zero_grad().unwrap();
        assert!(!a.grad().defined());
    }

    #[test]
    fn clip_grad_norm_scales_to_the_limit_and_returns_the_norm() {
        let a = Tensor::from_slice(&[3f32]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4f32]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[1f32]).set_requires_grad(true);
        (&a * &a / 2 + &b * &b / 2).sum(Kind::Float).backward();
        let params = [a.shallow_clone(), b.shallow_clone(), unused.shallow_clone()];
        let total = clip_grad_norm(&params, 1.0).unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        assert!((a.grad().double_value(&[0]) - 0.6).abs() < 1e-5);
        assert!((b.grad().double_value(&[0]) - 0.8).abs() < 1e-5);
        // Under the limit: unchanged.
        let total = clip_grad_norm(&params, 100.0).unwrap();
        assert!((total.double_value(&[]) - 1.0).abs() < 1e-5);
        assert!((a.grad().double_value(&[0]) - 0.6).abs() < 1e-5);
        assert!(!unused.grad().defined());
    }
}
