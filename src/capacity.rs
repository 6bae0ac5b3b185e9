//! The capacity signal: how many backends a pool needs, for an autoscaler to act on.
//!
//! ALB sees every request of its pool, so it can tell an autoscaler (Kubernetes HPA, KEDA)
//! how busy the backends are without asking them. Per pool:
//!
//! ```text
//!   L(t)          = Σ in_flight(e)  over the pool's endpoints      (sampled every 50 ms)
//!   L̄             = (1/N) Σ_{i<N} L(t − iΔ),  Δ = 50 ms, N = window / Δ
//!   utilization   = L̄ / (in_service × concurrency)
//!   raw           = clamp(ceil(in_service × utilization / target_utilization), min, max)
//!                 = clamp(ceil(L̄ / (concurrency × target_utilization)), min, max)
//!   recommended   = max{ raw(s) : now − scale_down_delay < s ≤ now }
//! ```
//!
//! - **Load.** `L̄` is the time average of requests in flight over the sliding `window`: the
//!   sum of the samples approximates `(1/W) ∫ L(s) ds` over the window. By Little's law it
//!   equals arrival rate × time in ALB, so it counts queueing at the backends as well as
//!   service (a request is in flight until its response body ends). The samples are read
//!   from the endpoints' own in-flight atomics by a task of the pool, off the request path:
//!   sampling adds no lock, no allocation and no write to a request.
//! - **Raw recommendation.** The backends that would carry `L̄` at `target_utilization` of
//!   their `concurrency` (requests one backend serves at once): the Kubernetes HPA's formula
//!   `ceil(current × metric / target)` (kubernetes.io, "Horizontal Pod Autoscaling",
//!   algorithm details) with `current` = backends in service. `in_service` cancels out, so
//!   the recommendation stays defined when none is in service (utilization is then reported
//!   against one backend, so the gauge stays finite). A tiny epsilon keeps an exact
//!   quotient (2.8 / 2.8) from rounding up through floating-point noise.
//! - **Smoothing.** Scale up at once, scale down only after the lower value has held for
//!   `scale_down_delay`: the recommendation is the highest raw value of that trailing
//!   window, which is the HPA's scale-down stabilization window. A monotonic deque keeps
//!   the candidates (strictly decreasing values, so at most `max − min + 1` entries).
//!
//! Every change of the recommendation is logged once, with its inputs; the gauges
//! `lb_pool_utilization{pool}` and `lb_pool_recommended_backends{pool}` and the admin route
//! `GET /capacity` show the inputs at any moment.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use metrics::{gauge, Gauge};
use serde::{Deserialize, Serialize};
use tokio::{task::AbortHandle, time::Instant};

use crate::{
    balance::Balancer,
    telemetry::{POOL_RECOMMENDED_BACKENDS, POOL_UTILIZATION},
};

/// Time between two samples of the requests in flight.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Guards the ceiling against floating-point noise in an exact quotient.
const CEIL_EPSILON: f64 = 1e-9;

/// Where the per-backend concurrency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcurrencySource {
    /// `autoscale.backend_concurrency`.
    #[serde(rename = "autoscale.backend_concurrency")]
    BackendConcurrency,
    /// `max_connections` (requests in flight per backend before it counts as full).
    #[serde(rename = "max_connections")]
    MaxConnections,
}

/// The `autoscale` settings of a pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleConfig {
    /// Utilization the recommendation aims at (0 to 1).
    pub target_utilization: f64,
    /// Requests one backend serves at once.
    pub backend_concurrency: usize,
    /// Which key gave `backend_concurrency`.
    pub concurrency_from: ConcurrencySource,
    /// Fewest backends ever recommended.
    pub min: u32,
    /// Most backends ever recommended.
    pub max: u32,
    /// A lower recommendation must hold this long before it is given.
    #[serde(with = "crate::humantime_serde")]
    pub scale_down_delay: Duration,
    /// Sliding window of the requests-in-flight average.
    #[serde(with = "crate::humantime_serde")]
    pub window: Duration,
}

impl AutoscaleConfig {
    /// Samples in the averaging window (at least one).
    fn window_samples(&self) -> usize {
        ((self.window.as_nanos() / SAMPLE_INTERVAL.as_nanos()) as usize).max(1)
    }

    /// The raw recommendation for an average of `in_flight` requests, clamped.
    pub fn raw_recommendation(&self, in_flight: f64) -> u32 {
        let needed = in_flight / (self.backend_concurrency as f64 * self.target_utilization);
        let needed = (needed - CEIL_EPSILON).ceil().max(0.0);
        // `as` saturates a huge float; the clamp brings it into range.
        (needed as u32).clamp(self.min, self.max)
    }
}

/// What the estimator says at one moment: the inputs and both recommendations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityView {
    /// The pool.
    pub pool: String,
    /// Requests in flight at the last sample.
    pub in_flight_now: u64,
    /// Time average of requests in flight over the window (`L̄`).
    pub in_flight_average: f64,
    /// The averaging window, seconds.
    pub window_secs: f64,
    /// The part of the window the average covers so far (less than the window after start).
    pub covered_secs: f64,
    /// Backends in service at the last sample.
    pub in_service: usize,
    /// Requests one backend serves at once.
    pub backend_concurrency: usize,
    /// Which key gave it.
    pub concurrency_from: ConcurrencySource,
    /// `L̄ / (in_service × backend_concurrency)`.
    pub utilization: f64,
    /// The utilization aimed at.
    pub target_utilization: f64,
    /// `clamp(ceil(in_service × utilization / target), min, max)`, now.
    pub recommended_raw: u32,
    /// The smoothed recommendation (the gauge): the highest raw value within the last
    /// `scale_down_delay`.
    pub recommended: u32,
    /// Seconds since `recommended` took its current value.
    pub since_secs: f64,
    /// While the raw value is lower: seconds until `recommended` falls if it stays lower.
    pub scale_down_in_secs: Option<f64>,
    /// Bounds of the recommendation.
    pub min: u32,
    /// Bounds of the recommendation.
    pub max: u32,
    /// The scale-down delay, seconds.
    pub scale_down_delay_secs: f64,
}

/// A change of the smoothed recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The value before.
    pub from: u32,
    /// The value now.
    pub to: u32,
}

/// The estimator of one pool: the sample ring, the stabilization window and the last
/// reading. Pure state, fed by [`CapacityEstimator::observe`]; no clock of its own.
#[derive(Debug)]
pub struct CapacityEstimator {
    config: AutoscaleConfig,
    /// The last `window_samples` samples, a ring (allocated once).
    samples: Box<[u32]>,
    next: usize,
    filled: usize,
    sum: u64,
    /// Raw recommendations within the scale-down delay, strictly decreasing in value:
    /// the front is the maximum.
    highs: VecDeque<(Instant, u32)>,
    recommended: u32,
    since: Instant,
    last: Last,
}

/// The inputs of the last observation.
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    in_flight: u32,
    in_service: usize,
    raw: u32,
}

impl CapacityEstimator {
    /// An estimator that starts at `config.min` backends at `now`.
    pub fn new(config: AutoscaleConfig, now: Instant) -> Self {
        let recommended = config.min;
        CapacityEstimator {
            samples: vec![0; config.window_samples()].into_boxed_slice(),
            next: 0,
            filled: 0,
            sum: 0,
            highs: VecDeque::new(),
            recommended,
            since: now,
            last: Last {
                raw: recommended,
                ..Last::default()
            },
            config,
        }
    }

    /// The settings it was built with.
    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Adds one sample (`in_flight` requests now, `in_service` backends) taken at `now`;
    /// returns the change of the smoothed recommendation, if any.
    pub fn observe(&mut self, in_flight: usize, in_service: usize, now: Instant) -> Option<Change> {
        let sample = u32::try_from(in_flight).unwrap_or(u32::MAX);
        let old = std::mem::replace(&mut self.samples[self.next], sample);
        self.next = (self.next + 1) % self.samples.len();
        if self.filled == self.samples.len() {
            self.sum -= u64::from(old);
        } else {
            self.filled += 1;
        }
        self.sum += u64::from(sample);
        let raw = self.config.raw_recommendation(self.average());
        self.last = Last {
            in_flight: sample,
            in_service,
            raw,
        };
        // The HPA's stabilization: the highest raw value of the trailing delay.
        while self.highs.back().is_some_and(|&(_, v)| v <= raw) {
            self.highs.pop_back();
        }
        self.highs.push_back((now, raw));
        let delay = self.config.scale_down_delay;
        while self.highs.len() > 1 && self.highs[0].0 + delay <= now {
            self.highs.pop_front();
        }
        let smoothed = self.highs[0].1;
        if smoothed == self.recommended {
            return None;
        }
        let change = Change {
            from: self.recommended,
            to: smoothed,
        };
        self.recommended = smoothed;
        self.since = now;
        Some(change)
    }

    /// `L̄`: the mean of the samples in the window.
    pub fn average(&self) -> f64 {
        self.sum as f64 / self.filled.max(1) as f64
    }

    /// The smoothed recommendation.
    pub fn recommended(&self) -> u32 {
        self.recommended
    }

    /// The utilization at the last sample.
    pub fn utilization(&self) -> f64 {
        self.average() / (self.last.in_service.max(1) * self.config.backend_concurrency) as f64
    }

    /// Everything it knows, as of `now`.
    pub fn view(&self, pool: &str, now: Instant) -> CapacityView {
        let c = &self.config;
        let scale_down_in = (self.last.raw < self.recommended).then(|| {
            // The front (the current maximum) leaves the window at its time + delay.
            let leaves = self.highs[0].0 + c.scale_down_delay;
            leaves.saturating_duration_since(now).as_secs_f64()
        });
        CapacityView {
            pool: pool.to_owned(),
            in_flight_now: u64::from(self.last.in_flight),
            in_flight_average: self.average(),
            window_secs: c.window.as_secs_f64(),
            covered_secs: (SAMPLE_INTERVAL * self.filled as u32).as_secs_f64(),
            in_service: self.last.in_service,
            backend_concurrency: c.backend_concurrency,
            concurrency_from: c.concurrency_from,
            utilization: self.utilization(),
            target_utilization: c.target_utilization,
            recommended_raw: self.last.raw,
            recommended: self.recommended,
            since_secs: now.saturating_duration_since(self.since).as_secs_f64(),
            scale_down_in_secs: scale_down_in,
            min: c.min,
            max: c.max,
            scale_down_delay_secs: c.scale_down_delay.as_secs_f64(),
        }
    }
}

/// The capacity signal of one pool: its estimator and its gauges. What a pool object will
/// own once ALB has several; today the one pool is `default`.
#[derive(Debug)]
pub struct PoolCapacity {
    pool: String,
    // Touched by the pool's sampler (20 times a second) and the admin route, never by a
    // request.
    estimator: Mutex<CapacityEstimator>,
    utilization: Gauge,
    recommended: Gauge,
}

impl PoolCapacity {
    /// The signal of `pool`, starting now at `config.min` backends.
    pub fn new(pool: &str, config: AutoscaleConfig) -> Arc<Self> {
        let utilization = gauge!(POOL_UTILIZATION, "pool" => pool.to_owned());
        let recommended = gauge!(POOL_RECOMMENDED_BACKENDS, "pool" => pool.to_owned());
        utilization.set(0.0);
        recommended.set(f64::from(config.min));
        Arc::new(PoolCapacity {
            pool: pool.to_owned(),
            estimator: Mutex::new(CapacityEstimator::new(config, Instant::now())),
            utilization,
            recommended,
        })
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The settings in use.
    pub fn config(&self) -> AutoscaleConfig {
        self.lock().config().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CapacityEstimator> {
        self.estimator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample of `balancer`'s endpoints at `now`: publishes the gauges and logs a
    /// change of the recommendation.
    pub fn sample(&self, balancer: &Balancer, now: Instant) {
        let set = balancer.snapshot();
        // Every known endpoint: a backend just taken out still serves what it was sent.
        let in_flight: usize = set.known.iter().map(|e| e.in_flight()).sum();
        let mut estimator = self.lock();
        let change = estimator.observe(in_flight, set.endpoints.len(), now);
        self.utilization.set(estimator.utilization());
        self.recommended.set(f64::from(estimator.recommended()));
        if let Some(change) = change {
            let view = estimator.view(&self.pool, now);
            drop(estimator);
            tracing::info!(
                pool = %self.pool,
                from = change.from,
                to = change.to,
                in_flight_average = format_args!("{:.2}", view.in_flight_average),
                in_service = view.in_service,
                utilization = format_args!("{:.3}", view.utilization),
                "recommended backends {} -> {}",
                change.from,
                change.to
            );
        }
    }

    /// What `GET /capacity` shows for this pool.
    pub fn view(&self) -> CapacityView {
        self.lock().view(&self.pool, Instant::now())
    }

    /// Samples `balancer` every [`SAMPLE_INTERVAL`] until the balancer is gone or the task is
    /// aborted.
    pub fn spawn(self: &Arc<Self>, balancer: &Arc<Balancer>) -> AbortHandle {
        let capacity = self.clone();
        let balancer: Weak<Balancer> = Arc::downgrade(balancer);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            // A late tick is one sample late, not a burst of samples at one instant.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let now = ticks.tick().await;
                let Some(balancer) = balancer.upgrade() else {
                    return;
                };
                capacity.sample(&balancer, now);
            }
        })
        .abort_handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        discover, test_support::endpoints, Balancer, Endpoint, Strategy, StrategyKind,
    };

    fn config(window: Duration, delay: Duration) -> AutoscaleConfig {
        AutoscaleConfig {
            target_utilization: 0.7,
            backend_concurrency: 4,
            concurrency_from: ConcurrencySource::BackendConcurrency,
            min: 1,
            max: 100,
            scale_down_delay: delay,
            window,
        }
    }

    /// Feeds `in_flight` for `duration`, one sample per interval, from `*now` on.
    fn feed(
        e: &mut CapacityEstimator,
        in_flight: usize,
        in_service: usize,
        duration: Duration,
        now: &mut Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for _ in 0..(duration.as_nanos() / SAMPLE_INTERVAL.as_nanos()) {
            *now += SAMPLE_INTERVAL;
            changes.extend(e.observe(in_flight, in_service, *now));
        }
        changes
    }

    #[test]
    fn raw_recommendation_is_the_hpa_formula_clamped() {
        let c = config(Duration::from_secs(1), Duration::ZERO);
        // 3 backends of 4, 3 in flight: utilization 0.25, ceil(3 × 0.25 / 0.7) = 2.
        assert_eq!(c.raw_recommendation(3.0), 2);
        // Exactly at target: 2.8 in flight on one backend is 0.7 of it, one backend.
        assert_eq!(c.raw_recommendation(2.8), 1);
        assert_eq!(c.raw_recommendation(2.81), 2);
        // 10 in flight: ceil(10 / 2.8) = 4.
        assert_eq!(c.raw_recommendation(10.0), 4);
        // Idle: the minimum; absurd load: the maximum.
        assert_eq!(c.raw_recommendation(0.0), 1);
        assert_eq!(c.raw_recommendation(1e12), 100);
        let bounded = AutoscaleConfig {
            min: 3,
            max: 5,
            ..c
        };
        assert_eq!(bounded.raw_recommendation(0.0), 3);
        assert_eq!(bounded.raw_recommendation(100.0), 5);
    }

    #[test]
    fn the_average_is_over_the_sliding_window() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut e = CapacityEstimator::new(config(Duration::from_secs(1), Duration::ZERO), t0);
        // Half the window at 8, half at 0: the mean of the samples is 4.
        feed(&mut e, 8, 3, Duration::from_millis(500), &mut now);
        assert_eq!(e.average(), 8.0, "only the covered part counts");
        feed(&mut e, 0, 3, Duration::from_millis(500), &mut now);
        assert!((e.average() - 4.0).abs() < 1e-9, "{}", e.average());
        // A full window later the 8s have left it.
        feed(&mut e, 2, 3, Duration::from_secs(1), &mut now);
        assert!((e.average() - 2.0).abs() < 1e-9, "{}", e.average());
        // utilization = 2 / (3 × 4)
        assert!((e.utilization() - 2.0 / 12.0).abs() < 1e-9);
        let view = e.view("default", now);
        assert_eq!(view.covered_secs, 1.0);
        assert_eq!(view.in_flight_now, 2);
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_delay() {
        let delay = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut now = t0;
        let mut e = CapacityEstimator::new(config(Duration::from_millis(50), delay), t0);
        // One-sample window: the raw value follows the load at once.
        let up = feed(&mut e, 11, 3, SAMPLE_INTERVAL, &mut now);
        assert_eq!(up, [Change { from: 1, to: 4 }]);
        // Load falls to one backend's worth: the recommendation holds for the delay...
        let before = now;
        let mut dropped_at = None;
        for _ in 0..400 {
            now += SAMPLE_INTERVAL;
            if let Some(change) = e.observe(1, 3, now) {
                assert_eq!(change, Change { from: 4, to: 1 });
                dropped_at = Some(now);
                break;
            }
            assert_eq!(e.view("default", now).recommended_raw, 1);
            let left = e.view("default", now).scale_down_in_secs.unwrap();
            assert!(left <= delay.as_secs_f64());
        }
        // ... and falls exactly when the last high value leaves the window.
        assert_eq!(dropped_at, Some(before + delay));
        assert_eq!(e.view("default", now).scale_down_in_secs, None);
    }

    #[test]
    fn a_brief_dip_does_not_scale_down_and_a_brief_spike_scales_up() {
        let delay = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut now = t0;
        let mut e = CapacityEstimator::new(config(Duration::from_millis(50), delay), t0);
        feed(&mut e, 20, 6, Duration::from_secs(1), &mut now); // ceil(20 / 2.8) = 8
        assert_eq!(e.recommended(), 8);
        // Dips shorter than the delay, again and again: no flapping.
        for _ in 0..5 {
            assert!(feed(&mut e, 3, 6, Duration::from_secs(2), &mut now).is_empty());
            assert!(feed(&mut e, 20, 6, Duration::from_secs(1), &mut now).is_empty());
        }
        assert_eq!(e.recommended(), 8);
        // A step down in two stages: each lower value must hold for the delay.
        let changes = feed(&mut e, 14, 6, Duration::from_secs(6), &mut now); // 5
        assert_eq!(changes, [Change { from: 8, to: 5 }]);
        let changes = feed(&mut e, 3, 6, Duration::from_secs(6), &mut now); // 2
        assert_eq!(changes, [Change { from: 5, to: 2 }]);
        // The candidates stay few (strictly decreasing values).
        assert!(e.highs.len() <= 2, "{:?}", e.highs);
    }

    #[test]
    fn no_backend_in_service_keeps_the_numbers_finite() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut e = CapacityEstimator::new(config(Duration::from_secs(1), Duration::ZERO), t0);
        feed(&mut e, 0, 0, Duration::from_secs(1), &mut now);
        let view = e.view("default", now);
        assert_eq!(view.utilization, 0.0);
        assert_eq!(view.recommended, 1);
        let json = serde_json::to_string(&view).unwrap();
        assert!(json.contains("\"in_service\":0"), "{json}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_reads_the_balancers_in_flight_counts() {
        let eps = endpoints(&[1, 1, 1]);
        let (changes, stream) = discover::channel();
        for ep in &eps {
            changes.insert(ep.clone());
        }
        let balancer = Balancer::new(Strategy::new(StrategyKind::RoundRobin), eps.clone(), stream);
        let capacity = PoolCapacity::new(
            "default",
            config(Duration::from_secs(2), Duration::from_secs(3)),
        );
        let task = capacity.spawn(&balancer);
        // 12 requests in flight (4 per backend) for a whole window.
        let held: Vec<_> = eps
            .iter()
            .flat_map(|ep: &Arc<Endpoint>| (0..4).map(|_| ep.start()))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let view = capacity.view();
        assert!((view.in_flight_average - 12.0).abs() < 1e-9, "{view:?}");
        assert_eq!(view.in_service, 3);
        assert!((view.utilization - 1.0).abs() < 1e-9, "{view:?}");
        assert_eq!(view.recommended, 5, "ceil(12 / 2.8)");
        // The load ends: the raw value falls within a window, the smoothed one after
        // the delay.
        drop(held);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let view = capacity.view();
        assert_eq!((view.recommended_raw, view.recommended), (1, 5), "{view:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let view = capacity.view();
        assert_eq!(view.recommended, 1, "{view:?}");
        task.abort();
    }
}
