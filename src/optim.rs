//! Optimizers with PyTorch's update rules and with their state in the open, so checkpoints can
//! save and restore it exactly (tch's optimizers keep their state inside libtorch, out of
//! reach). Each works on a fixed list of named parameters; [`Sgd::step_subset`] and
//! [`Adam::step_subset`] update only some of them, which is what a weight-sharing supernet
//! needs: parameters of ops the sampled architecture did not use are left alone, as
//! PyTorch does for parameters whose gradient is `None`.
use std::collections::HashMap;

use tch::Tensor;

use crate::error::{Error, Result};

/// Stochastic gradient descent: L2 weight decay, momentum (heavy-ball or Nesterov), as
/// `torch.optim.SGD` with dampening 0.
pub struct Sgd {
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Per parameter: whether weight decay applies (off for biases with no-bias-decay).
    decay: Vec<bool>,
    momentum_buffers: Vec<Option<Tensor>>,
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

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Updates every parameter that has a gradient.
    pub fn step(&mut self) {
        let all: Vec<usize> = (0..self.params.len()).collect();
        self.step_subset(&all);
    }

    /// Updates only the parameters at `indices` (into the list given to [`Sgd::new`]).
    pub fn step_subset(&mut self, indices: &[usize]) {
        tch::no_grad(|| {
            for &i in indices {
                let p = &mut self.params[i];
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d_p = if self.weight_decay != 0.0 && self.decay[i] {
                    grad + &*p * self.weight_decay
                } else {
                    grad
                };
                if self.momentum != 0.0 {
                    let buf = match self.momentum_buffers[i].take() {
                        None => d_p.detach().copy(),
                        Some(mut buf) => {
                            let _ = buf.g_mul_scalar_(self.momentum).g_add_(&d_p);
                            buf
                        }
                    };
                    d_p = if self.nesterov { d_p + &buf * self.momentum } else { buf.shallow_clone() };
                    self.momentum_buffers[i] = Some(buf);
                }
                let _ = p.g_sub_(&(d_p * self.lr));
            }
        })
    }

    /// Momentum buffers as named tensors (`momentum.<param>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .zip(&self.momentum_buffers)
            .filter_map(|(n, b)| b.as_ref().map(|b| (format!("momentum.{n}"), b.shallow_clone())))
            .collect()
    }

    /// Restores what [`Sgd::state`] saved; parameters without a saved buffer start afresh.
    ///
    /// A parameter that has been updated has a gradient from then on (zeroed, not removed, by
    /// `zero_grad`), and [`Sgd::step_subset`] decays and moves it even when a later step's graph
    /// does not reach it; one that never has been has none and is skipped. The restored state
    /// must behave the same, so every parameter with a momentum buffer gets a zero gradient.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            self.momentum_buffers[i] = match state.get(&format!("momentum.{name}")) {
                None => None,
                Some(t) => Some(checked_copy(t, &self.params[i], name)?),
            };
        }
        let touched: Vec<Tensor> = self
            .params
            .iter()
            .zip(&self.momentum_buffers)
            .filter(|(p, b)| b.is_some() && !p.grad().defined())
            .map(|(p, _)| p.sum(p.kind()) * 0.0)
            .collect();
        if !touched.is_empty() {
            Tensor::stack(&touched, 0).sum(tch::Kind::Float).backward();
        }
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

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
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
                Box::new(move || o.step())
            },
            |vs| nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 3e-4, nesterov: true }.build(vs, 0.01).unwrap(),
        );
        compare(
            |p| {
                let mut o = Sgd::new(p, 0.05, 0.9, 0.0, false);
                Box::new(move || o.step())
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
            sgd_a.zero_grad();
            loss(&a);
            sgd_a.step();
            adam_a.zero_grad();
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
                sgd.zero_grad();
                loss(p);
                sgd.step();
                adam.zero_grad();
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
        sgd.step_subset(&[0]);
        assert!((a.double_value(&[0]) - (1.0 - 0.1 * (2.0 + 0.1))).abs() < 1e-6);
        assert_eq!(b.double_value(&[0]), 1.0);
        assert!(sgd.state().iter().all(|(n, _)| n == "momentum.a"));
    }
}
