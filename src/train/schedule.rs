//! Learning-rate schedules, per epoch and closed-form: the rate of epoch `e` depends only on
//! `e`, so a resumed run needs no scheduler state.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The decay after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Half a cosine from `lr` down to `lr_min` (CIFAR's recipe).
    Cosine,
    /// A straight line from `lr` down to `lr_min` (ImageNet's recipe).
    Linear,
    /// Multiply by `gamma` every `step_size` epochs.
    Step,
}

/// A learning-rate schedule over `epochs` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: SchedulerKind,
    pub lr: f64,
    pub lr_min: f64,
    pub epochs: usize,
    /// Epochs rising linearly from lr/warmup to lr before the decay starts.
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

    /// The rate used throughout epoch `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return self.lr * (epoch + 1) as f64 / self.warmup_epochs as f64;
        }
        let t = (epoch - self.warmup_epochs) as f64;
        let span = (self.epochs - self.warmup_epochs).max(1) as f64;
        match self.kind {
            SchedulerKind::Cosine => {
                self.lr_min + (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * t / span).cos()) / 2.0
            }
            SchedulerKind::Linear => self.lr_min + (self.lr - self.lr_min) * (1.0 - t / span),
            SchedulerKind::Step => {
                self.lr * self.gamma.powi(((epoch - self.warmup_epochs) / self.step_size) as i32)
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
    fn cosine_matches_the_closed_form() {
        let s = schedule(SchedulerKind::Cosine, 0);
        // 0.05·(1 + cos(πe/10)), written out for a few epochs.
        let expected = [0.1, 0.0975528258147577, 0.0904508497187474, 0.05, 0.0024471741852423];
        for (e, want) in [0, 1, 2, 5, 9].into_iter().zip(expected) {
            assert!(close(s.lr_at(e), want), "epoch {e}: {} vs {want}", s.lr_at(e));
        }
        let with_min = Schedule { lr_min: 0.01, ..s };
        assert!(close(with_min.lr_at(5), 0.055));
    }

    #[test]
    fn linear_falls_by_equal_steps() {
        let s = schedule(SchedulerKind::Linear, 0);
        for e in 0..10 {
            assert!(close(s.lr_at(e), 0.1 * (1.0 - e as f64 / 10.0)));
        }
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
        let s = schedule(SchedulerKind::Cosine, 2);
        assert!(close(s.lr_at(0), 0.05));
        assert!(close(s.lr_at(1), 0.1));
        assert!(close(s.lr_at(2), 0.1));
        // Cosine over the 8 epochs after the warm-up.
        assert!(close(s.lr_at(6), 0.05));
        let l = schedule(SchedulerKind::Linear, 2);
        assert!(close(l.lr_at(4), 0.1 * (1.0 - 2.0 / 8.0)));
    }

    #[test]
    fn rejects_impossible_settings() {
        assert!(schedule(SchedulerKind::Cosine, 10).validate().is_err());
        assert!(Schedule { lr: 0.0, ..schedule(SchedulerKind::Cosine, 0) }.validate().is_err());
        assert!(Schedule { step_size: 0, ..schedule(SchedulerKind::Step, 0) }.validate().is_err());
        assert!(schedule(SchedulerKind::Step, 1).validate().is_ok());
    }
}
