//! The canary guard: watches a split's canary pool against the stable pools over a sliding
//! window, and takes its weight to 0 when it does worse than allowed.
//!
//! Every answer of the route is tallied by second, for the canary pool or the stable pools
//! (the split's others): requests, failures (a 5xx, which includes ALB's own `502` for a
//! connect error and `504` for a timeout) and latency to the response headers, in a
//! log-scale histogram (four buckets per doubling, so a percentile is known to within 19%).
//! Once the canary has served `min_requests` inside the last `window`:
//!
//! ```text
//! rollback  ⇐  errors / requests > max_error_rate
//!          or  p99(canary) > max_latency_ratio × p99(stable)   (when both sides served
//!              and p99(canary) − p99(stable) > 5 ms            `min_requests` and 100 answers)
//! ```
//!
//! A p99 of fewer than 100 answers is their maximum, which one stall decides.
//!
//! The 5 ms floor keeps the jitter of two fast pools (0.4 ms against 0.1 ms is 4x) from
//! counting as a regression.
//!
//! as Flagger and Argo Rollouts judge a canary step, but continuously rather than per step.
//! A rollback sets the canary's weight to 0, logs `canary rolled back` with the numbers,
//! counts `lb_canary_rollbacks_total{route}`, and holds until the split is set again
//! (`POST /routes/{name}/split`), which starts a new window.
//!
//! The tallies sit behind a mutex of their own (one per guarded route, taken once per
//! answer on that route only): a route without a canary never touches it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::split::Split;
use crate::telemetry::CANARY_ROLLBACKS_TOTAL;

/// A route's canary settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryConfig {
    /// The canary pool (one of the split's).
    pub pool: String,
    /// Highest error rate allowed, 0 to 1.
    pub max_error_rate: f64,
    /// Highest p99 allowed, as a multiple of the stable pools' p99.
    pub max_latency_ratio: f64,
    /// The sliding window judged.
    #[serde(with = "crate::humantime_serde")]
    pub window: Duration,
    /// Requests the canary must have served in the window before it is judged.
    pub min_requests: u64,
}

/// Answers each side needs in the window before their p99s are compared.
pub const P99_MIN_ANSWERS: u64 = 100;

/// The least p99 difference, in milliseconds, that can roll a canary back on latency.
pub const LATENCY_FLOOR_MS: f64 = 5.0;

/// Latency buckets: four per doubling from 1 µs, so bucket 127 starts near 3.6 minutes.
const BUCKETS: usize = 128;

fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
fn bucket_ms(index: usize) -> f64 {
    2f64.powf((index + 1) as f64 / 4.0) / 1000.0
}

/// One second's answers of one side.
#[derive(Debug, Clone)]
struct Tally {
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// The p99 in milliseconds (the upper bound of its bucket); `None` without answers.
    fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(bucket_ms(i));
            }
        }
        None
    }
}

/// The tallies of the seconds inside the window.
#[derive(Debug, Default)]
struct Window {
    /// (second since the guard started, canary, stable), oldest first.
    seconds: VecDeque<(u64, Tally, Tally)>,
}

/// Whether the canary is still on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CanaryState {
    /// Judged as it serves.
    Watching,
    /// Weight 0 since `since_unix`, for `reason`.
    RolledBack {
        /// Why, with the numbers.
        reason: String,
        /// When, seconds since the Unix epoch.
        since_unix: u64,
    },
}

/// The window's numbers, as `/routes` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryView {
    /// The canary pool.
    pub pool: String,
    /// Watching or rolled back, and why.
    #[serde(flatten)]
    pub state: CanaryState,
    /// The canary's answers in the window.
    pub requests: u64,
    /// Its failures in the window.
    pub errors: u64,
    /// Its error rate in the window.
    pub error_rate: f64,
    /// Its p99 in the window, milliseconds.
    pub p99_ms: Option<f64>,
    /// The stable pools' answers in the window.
    pub stable_requests: u64,
    /// The stable pools' p99 in the window, milliseconds.
    pub stable_p99_ms: Option<f64>,
    /// The settings.
    pub config: CanaryConfig,
}

/// Guards one route's canary.
#[derive(Debug)]
pub struct CanaryGuard {
    route: String,
    config: CanaryConfig,
    /// The canary's index among the split's targets.
    canary: usize,
    split: Arc<Split>,
    started: Instant,
    window: Mutex<Window>,
    state: Mutex<CanaryState>,
}

// === impl CanaryGuard ===

impl CanaryGuard {
    /// A guard over `split`, whose target `canary` is the canary pool.
    pub fn new(route: &str, config: CanaryConfig, canary: usize, split: Arc<Split>) -> Self {
        CanaryGuard {
            route: route.to_owned(),
            config,
            canary,
            split,
            started: Instant::now(),
            window: Mutex::default(),
            state: Mutex::new(CanaryState::Watching),
        }
    }

    /// The canary's index among the split's targets.
    pub fn canary(&self) -> usize {
        self.canary
    }

    /// The state now.
    pub fn state(&self) -> CanaryState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Tallies one answer of the split's target `target`, then judges the canary. Returns
    /// the reason when this answer rolled it back.
    pub fn observe(
        &self,
        target: usize,
        failed: bool,
        latency: Duration,
        now: Instant,
    ) -> Option<String> {
        if self.state() != CanaryState::Watching {
            return None;
        }
        let second = now.saturating_duration_since(self.started).as_secs();
        let (canary, stable) = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let span = self.config.window.as_secs().max(1);
            while window
                .seconds
                .front()
                .is_some_and(|(s, _, _)| *s + span <= second)
            {
                window.seconds.pop_front();
            }
            if window.seconds.back().map(|(s, _, _)| *s) != Some(second) {
                window
                    .seconds
                    .push_back((second, Tally::default(), Tally::default()));
            }
            let (_, c, s) = window.seconds.back_mut().expect("pushed above");
            let tally = if target == self.canary { c } else { s };
            tally.requests += 1;
            tally.errors += u64::from(failed);
            tally.latency[bucket(latency)] += 1;
            if target != self.canary {
                return None;
            }
            sums(&window)
        };
        let reason = self.verdict(&canary, &stable)?;
        // Only one caller rolls back, and only while watching.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state != CanaryState::Watching {
            return None;
        }
        if let Err(e) = self.split.zero(self.canary) {
            tracing::warn!(route = %self.route, error = %e, "canary should roll back but cannot");
            return None;
        }
        *state = CanaryState::RolledBack {
            reason: reason.clone(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        metrics::counter!(CANARY_ROLLBACKS_TOTAL, "route" => self.route.clone()).increment(1);
        tracing::warn!(
            route = %self.route,
            pool = %self.config.pool,
            %reason,
            "canary rolled back"
        );
        Some(reason)
    }

    /// The rule: `None` while the canary is within bounds or not yet judged.
    fn verdict(&self, canary: &Tally, stable: &Tally) -> Option<String> {
        let c = &self.config;
        if canary.requests < c.min_requests.max(1) {
            return None;
        }
        let rate = canary.errors as f64 / canary.requests as f64;
        if rate > c.max_error_rate {
            return Some(format!(
                "error rate {:.1}% over {} requests in {}, above {:.1}%",
                rate * 100.0,
                canary.requests,
                humantime::format_duration(c.window),
                c.max_error_rate * 100.0
            ));
        }
        // A p99 of fewer than 100 answers is their maximum: one stall would decide.
        let judged = c.min_requests.max(P99_MIN_ANSWERS);
        if canary.requests < judged || stable.requests < judged {
            return None;
        }
        let (Some(p99), Some(stable_p99)) = (canary.p99_ms(), stable.p99_ms()) else {
            return None;
        };
        // Two fast pools differ by noise: a p99 within LATENCY_FLOOR_MS of the stable one is
        // never a regression, whatever the ratio (0.4 ms against 0.1 ms is 4x).
        (p99 > c.max_latency_ratio * stable_p99 && p99 - stable_p99 > LATENCY_FLOOR_MS).then(|| {
            format!(
                "p99 {p99:.1} ms is {:.2}x the stable pools' {stable_p99:.1} ms, above {}x",
                p99 / stable_p99,
                c.max_latency_ratio
            )
        })
    }

    /// Watching again from an empty window (the split was set again).
    pub fn reset(&self) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Window::default();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = CanaryState::Watching;
    }

    /// The state and the window's numbers.
    pub fn view(&self) -> CanaryView {
        let (canary, stable) = {
            let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            sums(&window)
        };
        CanaryView {
            pool: self.config.pool.clone(),
            state: self.state(),
            requests: canary.requests,
            errors: canary.errors,
            error_rate: if canary.requests == 0 {
                0.0
            } else {
                canary.errors as f64 / canary.requests as f64
            },
            p99_ms: canary.p99_ms(),
            stable_requests: stable.requests,
            stable_p99_ms: stable.p99_ms(),
            config: self.config.clone(),
        }
    }
}

/// The window's totals: (canary, stable).
fn sums(window: &Window) -> (Tally, Tally) {
    let mut canary = Tally::default();
    let mut stable = Tally::default();
    for (_, c, s) in &window.seconds {
        canary.add(c);
        stable.add(s);
    }
    (canary, stable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_error_rate: f64) -> (CanaryGuard, Arc<Split>) {
        let split = Split::new(&[90, 10]).unwrap();
        let config = CanaryConfig {
            pool: "v2".into(),
            max_error_rate,
            max_latency_ratio: 2.0,
            window: Duration::from_secs(10),
            min_requests: 50,
        };
        (CanaryGuard::new("api", config, 1, split.clone()), split)
    }

    #[test]
    fn a_failing_canary_is_rolled_back_once_judged() {
        let (guard, split) = guard(0.05);
        let at = guard.started;
        let ms = Duration::from_millis(5);
        for i in 0..49 {
            assert_eq!(
                guard.observe(1, true, ms, at),
                None,
                "{i}: too few to judge"
            );
        }
        let reason = guard.observe(1, true, ms, at).expect("the 50th judges");
        assert!(
            reason.starts_with("error rate 100.0% over 50 requests"),
            "{reason}"
        );
        assert_eq!(split.weights(), vec![90, 0]);
        assert!(matches!(guard.state(), CanaryState::RolledBack { .. }));
        assert_eq!(guard.observe(1, true, ms, at), None, "rolled back once");
        guard.reset();
        assert_eq!(guard.state(), CanaryState::Watching);
        assert_eq!(guard.view().requests, 0, "a new window");
    }

    #[test]
    fn a_healthy_canary_stays_and_old_seconds_leave_the_window() {
        let (guard, split) = guard(0.05);
        let ms = Duration::from_millis(5);
        let mut at = guard.started;
        // 4% errors for 30 s: under the limit.
        for i in 0..3000u32 {
            if i % 100 == 0 {
                at += Duration::from_secs(1);
            }
            assert_eq!(guard.observe(1, i % 25 == 24, ms, at), None);
            assert_eq!(guard.observe(0, false, ms, at), None);
        }
        assert_eq!(split.weights(), vec![90, 10]);
        let view = guard.view();
        assert_eq!(view.requests, 1000, "10 seconds of 100");
    }

    #[test]
    fn a_slow_canary_is_rolled_back_on_its_p99() {
        let (guard, split) = guard(1.0);
        let at = guard.started;
        for _ in 0..100 {
            guard.observe(0, false, Duration::from_millis(10), at);
        }
        let mut reason = None;
        for _ in 0..100 {
            reason = reason.or(guard.observe(1, false, Duration::from_millis(50), at));
        }
        let reason = reason.expect("5x slower than allowed");
        assert!(reason.contains("x the stable pools'"), "{reason}");
        assert_eq!(split.weights(), vec![90, 0]);
    }

    #[test]
    fn p99_buckets_are_within_a_fifth() {
        for ms in [1u64, 7, 50, 300, 2000] {
            let mut t = Tally::default();
            t.latency[bucket(Duration::from_millis(ms))] += 1;
            let p99 = t.p99_ms().unwrap();
            assert!(p99 >= ms as f64 && p99 <= ms as f64 * 1.2, "{ms}: {p99}");
        }
    }
}
