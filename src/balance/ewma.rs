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
//! One addition for forgiveness: an estimate no sample has refreshed for `stale_after` is
//! stale, and the next sample *replaces* it instead of blending in. Otherwise a backend that
//! stalled for two seconds and recovered keeps its two-second estimate for about
//! `decay × ln(2 s / normal latency)` (a minute with Linkerd's 10 s decay), however fast its
//! next answers are; the adaptive strategy probes such a backend so that next sample comes.
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
    stale_after: Duration,
}

/// The estimate and how old its last sample is, read together.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The decayed estimate, in seconds.
    pub estimate: f64,
    /// Time since the last sample (or since the start or reset).
    pub age: Duration,
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
    /// A new estimate starting at `initial`, decaying over `decay`, never stale.
    pub fn new(initial: Duration, decay: Duration) -> Self {
        PeakEwma::forgetting(initial, decay, Duration::MAX)
    }

    /// A new estimate starting at `initial`, decaying over `decay`, replaced by the next
    /// sample once no sample has come for `stale_after`.
    pub fn forgetting(initial: Duration, decay: Duration, stale_after: Duration) -> Self {
        PeakEwma {
            state: Mutex::new(State {
                estimate: initial.as_secs_f64(),
                stamp: Instant::now(),
            }),
            decay_secs: decay.as_secs_f64().max(1e-9),
            stale_after,
        }
    }

    /// Folds in one latency sample taken at `now`.
    pub fn observe(&self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let mut state = self.lock();
        let idle = now.saturating_duration_since(state.stamp);
        let weight = (-idle.as_secs_f64() / self.decay_secs).exp();
        state.estimate = if sample > state.estimate || idle >= self.stale_after {
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

    /// The estimate at `now` and the age of its last sample, under one lock.
    pub fn read(&self, now: Instant) -> Reading {
        let state = *self.lock();
        Reading {
            estimate: state.decayed(now, self.decay_secs),
            age: now.saturating_duration_since(state.stamp),
        }
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
    fn a_stale_estimate_is_replaced_by_the_next_sample() {
        let e = PeakEwma::forgetting(30 * MS, Duration::from_secs(10), Duration::from_secs(1));
        let t0 = Instant::now();
        e.observe(2000 * MS, t0);
        // Half a second later a fast answer only blends in: the estimate is recent.
        e.observe(5 * MS, t0 + Duration::from_millis(500));
        assert!(e.estimate(t0 + Duration::from_millis(500)) > 1.8);
        // A second without samples: the next one replaces it.
        let later = t0 + Duration::from_millis(1600);
        assert!(e.read(later).age >= Duration::from_secs(1));
        e.observe(5 * MS, later);
        assert!((e.estimate(later) - 0.005).abs() < 1e-9);
        assert_eq!(e.read(later).age, Duration::ZERO);
    }

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
