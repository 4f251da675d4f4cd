//! Learning-rate schedules, per epoch and closed-form: the rate of epoch `e` depends only on
//! `e`, so a resumed run needs no scheduler state.
//!
//! Cosine, linear and the warm-up follow the released CNAS schedulers, which are evaluated at
//! the 1-based epoch `e` (`scheduler.step(epoch)` with `epoch` from 1 to T): warm-up
//! `lr · e / W` while `e < W`, then the decay at `t = e - W` of `T - W`, so the first epoch
//! after the warm-up already decays a little and the last one runs at `lr_min`.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The decay after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Half a cosine from `lr` down to `lr_min`, reached in the last epoch (CIFAR's recipe).
    Cosine,
    /// A straight line from `lr` down to `lr_min`, reached in the last epoch (ImageNet's recipe).
    Linear,
    /// Multiply by `gamma` every `step_size` epochs (the first decay epoch at `lr`, as DARTS's
    /// ImageNet `StepLR`).
    Step,
}

/// A learning-rate schedule over `epochs` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: SchedulerKind,
    pub lr: f64,
    pub lr_min: f64,
    pub epochs: usize,
    /// Warm-up: epochs 1 … W-1 (1-based) at `lr · e / W`, epoch W at `lr`, then the decay.
    pub warmup_epochs: usize,
    pub step_size: usize,
    pub gamma: f64,
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::BadOption(format!("--lr {} must be a positive number", self.lr)));
        }
        if !(self.lr_min >= 0.0 && self.lr_min <= self.lr) {
            return Err(Error::BadOption(format!("--lr-min {} must be between 0 and --lr", self.lr_min)));
        }
        if self.warmup_epochs >= self.epochs.max(1) {
            return Err(Error::BadOption(format!(
                "--warmup-epochs {} must be below --epochs {}",
                self.warmup_epochs, self.epochs
            )));
        }
        if self.kind == SchedulerKind::Step
            && (self.step_size == 0 || self.gamma.is_nan() || self.gamma <= 0.0)
        {
            return Err(Error::BadOption("--scheduler step needs --step-size ≥ 1 and --gamma > 0".into()));
        }
        Ok(())
    }

    /// The rate used throughout epoch `epoch` (0-based; the formulas use `e = epoch + 1`).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let e = epoch + 1;
        let warmup = self.warmup_epochs;
        if e < warmup {
            return self.lr * e as f64 / warmup as f64;
        }
        let t = (e - warmup) as f64;
        let span = self.epochs.saturating_sub(warmup).max(1) as f64;
        match self.kind {
            SchedulerKind::Cosine => {
                self.lr_min + (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * t / span).cos()) / 2.0
            }
            SchedulerKind::Linear => self.lr_min + (self.lr - self.lr_min) * (1.0 - t / span).max(0.0),
            SchedulerKind::Step => {
                self.lr * self.gamma.powi((epoch.saturating_sub(warmup) / self.step_size.max(1)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: SchedulerKind, warmup: usize) -> Schedule {
        Schedule { kind, lr: 0.1, lr_min: 0.0, epochs: 10, warmup_epochs: warmup, step_size: 3, gamma: 0.5 }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cosine_matches_the_released_closed_form() {
        let s = schedule(SchedulerKind::Cosine, 0);
        // The released WarmupCosineAnnealingLR at the 1-based epoch e: 0.05·(1 + cos(πe/10)).
        let expected = [0.0975528258147577, 0.0904508497187474, 0.0793892626146237, 0.05, 0.0];
        for (epoch, want) in [0, 1, 2, 4, 9].into_iter().zip(expected) {
            assert!(close(s.lr_at(epoch), want), "epoch {epoch}: {} vs {want}", s.lr_at(epoch));
        }
        for epoch in 0..10 {
            let e = (epoch + 1) as f64;
            assert!(close(s.lr_at(epoch), 0.1 * (1.0 + (std::f64::consts::PI * e / 10.0).cos()) / 2.0));
        }
        let with_min = Schedule { lr_min: 0.01, ..s };
        assert!(close(with_min.lr_at(4), 0.055));
        assert!(close(with_min.lr_at(9), 0.01));
    }

    #[test]
    fn linear_falls_by_equal_steps_to_lr_min_in_the_last_epoch() {
        let s = schedule(SchedulerKind::Linear, 0);
        for epoch in 0..10 {
            assert!(close(s.lr_at(epoch), 0.1 * (1.0 - (epoch + 1) as f64 / 10.0)));
        }
        assert!(close(s.lr_at(9), 0.0));
    }

    #[test]
    fn step_halves_every_three_epochs() {
        let s = schedule(SchedulerKind::Step, 0);
        let expected = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125];
        for (e, want) in expected.iter().enumerate() {
            assert!(close(s.lr_at(e), *want), "epoch {e}");
        }
    }

    #[test]
    fn warmup_rises_linearly_then_the_decay_starts_from_lr() {
        // Released: e < W gives lr·e/W, e = W gives lr (the decay at t = 0), then t = e - W.
        let s = schedule(SchedulerKind::Cosine, 2);
        assert!(close(s.lr_at(0), 0.05));
        assert!(close(s.lr_at(1), 0.1));
        assert!(close(s.lr_at(2), 0.05 * (1.0 + (std::f64::consts::PI / 8.0).cos())));
        // Cosine over the 8 epochs after the warm-up: halfway at e = 6, 0 at e = 10.
        assert!(close(s.lr_at(5), 0.05));
        assert!(close(s.lr_at(9), 0.0));
        let l = schedule(SchedulerKind::Linear, 2);
        assert!(close(l.lr_at(1), 0.1));
        assert!(close(l.lr_at(3), 0.1 * (1.0 - 2.0 / 8.0)));
        let long = Schedule { warmup_epochs: 5, ..schedule(SchedulerKind::Cosine, 0) };
        let warm: Vec<f64> = (0..5).map(|e| long.lr_at(e)).collect();
        for (got, want) in warm.iter().zip([0.02, 0.04, 0.06, 0.08, 0.1]) {
            assert!(close(*got, want), "{warm:?}");
        }
        // Step keeps its first decay epoch at lr.
        let st = schedule(SchedulerKind::Step, 2);
        assert!(close(st.lr_at(0), 0.05) && close(st.lr_at(1), 0.1) && close(st.lr_at(2), 0.1));
        assert!(close(st.lr_at(5), 0.05));
    }

    #[test]
    fn rejects_impossible_settings() {
        assert!(schedule(SchedulerKind::Cosine, 10).validate().is_err());
        assert!(Schedule { lr: 0.0, ..schedule(SchedulerKind::Cosine, 0) }.validate().is_err());
        assert!(Schedule { step_size: 0, ..schedule(SchedulerKind::Step, 0) }.validate().is_err());
        assert!(schedule(SchedulerKind::Step, 1).validate().is_ok());
    }
}
