//! Peak EWMA: a latency estimate that rises at once and falls slowly.
//!
//! From Finagle, as used by Linkerd and tower's `load::PeakEwma`:
//!
//! - a sample above the estimate replaces it at once (the "peak"), so a backend that turns
//!   slow is avoided from its next response on;
//! - a sample below it is blended in with weight `1 - exp(-elapsed / decay)`, so one fast
//!   answer does not undo a slow history;
//! - between samples the estimate decays towards zero with the same factor, so a backend
//!   that was avoided is eventually tried again (otherwise one bad sample would exile it).
//!
//! Reading decays the stored value to "now" without writing it back, so readers never
//! contend with each other; the lock is per backend and held for a few arithmetic operations.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A peak-EWMA latency estimate in seconds.
#[derive(Debug)]
pub struct PeakEwma {
    state: Mutex<State>,
    decay_secs: f64,
}

#[derive(Debug, Clone, Copy)]
struct State {
    estimate: f64,
    stamp: Instant,
}

impl State {
    fn decayed(&self, now: Instant, decay_secs: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.estimate * (-elapsed / decay_secs).exp()
    }
}

impl PeakEwma {
    /// A new estimate starting at `initial`, decaying over `decay`.
    pub fn new(initial: Duration, decay: Duration) -> Self {
        PeakEwma {
            state: Mutex::new(State {
                estimate: initial.as_secs_f64(),
                stamp: Instant::now(),
            }),
            decay_secs: decay.as_secs_f64().max(1e-9),
        }
    }

    /// Folds in one latency sample taken at `now`.
    pub fn observe(&self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let mut state = self.lock();
        let elapsed = now.saturating_duration_since(state.stamp).as_secs_f64();
        let weight = (-elapsed / self.decay_secs).exp();
        state.estimate = if sample > state.estimate {
            sample
        } else {
            state.estimate * weight + sample * (1.0 - weight)
        };
        state.stamp = now;
    }

    /// The estimate at `now`, in seconds.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.lock().decayed(now, self.decay_secs)
    }

    /// Forgets the history, as for a backend that just came back.
    pub fn reset(&self, initial: Duration) {
        *self.lock() = State {
            estimate: initial.as_secs_f64(),
            stamp: Instant::now(),
        };
    }

    /// Copies another estimate's state (same backend, after a reload).
    pub fn copy_from(&self, other: &PeakEwma) {
        let state = *other.lock();
        *self.lock() = state;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain numbers: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_replaces_at_once() {
        let e = PeakEwma::new(30 * MS, Duration::from_secs(10));
        let now = Instant::now();
        e.observe(100 * MS, now);
        assert!((e.estimate(now) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn lower_samples_blend_in_over_the_decay_window() {
        let e = PeakEwma::new(100 * MS, Duration::from_secs(1));
        let t0 = Instant::now();
        e.observe(100 * MS, t0);
        e.observe(MS, t0 + Duration::from_secs(1));
        let est = e.estimate(t0 + Duration::from_secs(1));
        let expected = 0.1 * (-1.0f64).exp() + 0.001 * (1.0 - (-1.0f64).exp());
        assert!((est - expected).abs() < 1e-9, "{est} vs {expected}");
    }

    #[test]
    fn idle_estimate_decays_towards_zero() {
        let e = PeakEwma::new(100 * MS, Duration::from_secs(1));
        let t0 = Instant::now();
        e.observe(100 * MS, t0);
        assert!(e.estimate(t0 + Duration::from_secs(5)) < 0.001);
    }
}
