//! How long the rest of a search should take, from the pace so far.
use super::*;

/// Warm-up and search epochs still to run after `p` in a search of `stages` stages of
/// `warmup` + `epochs` epochs.
pub(super) fn epochs_left(p: Position, stages: usize, warmup: usize, epochs: usize) -> (usize, usize) {
    let later_stages = stages.saturating_sub(p.stage + 1);
    let (warmup_now, search_now) = match p.phase {
        Phase::Warmup => (warmup.saturating_sub(p.epoch), epochs),
        Phase::Search => (0, epochs.saturating_sub(p.epoch)),
        Phase::Derive => (0, 0),
    };
    (warmup_now + later_stages * warmup, search_now + later_stages * epochs)
}

/// Mean seconds per epoch of each kind in this process, for the time-left estimate.
#[derive(Default)]
pub(super) struct Pace {
    pub(super) warmup: RunningMean,
    pub(super) search: RunningMean,
}

#[derive(Default)]
pub(super) struct RunningMean {
    pub(super) sum: f64,
    pub(super) count: usize,
}

impl RunningMean {
    pub(super) fn add(&mut self, x: f64) {
        self.sum += x;
        self.count += 1;
    }

    pub(super) fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

impl Pace {
    /// Seconds for `warmup` and `search` more epochs; an epoch kind not timed yet is taken to
    /// last as long as the other (a search epoch also trains the controllers, so early
    /// estimates run short). `None` before any epoch.
    pub(super) fn time_left(&self, warmup: usize, search: usize) -> Option<f64> {
        let w = self.warmup.mean().or(self.search.mean())?;
        let s = self.search.mean().unwrap_or(w);
        Some(warmup as f64 * w + search as f64 * s)
    }
}
