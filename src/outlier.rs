//! Passive outlier detection: eject a backend that keeps failing real requests.
//!
//! Active health checks see a dead backend only at the next check, and some failures
//! (5xx under load, resets) never show on `/health` at all. Like Envoy's consecutive-5xx
//! detector, a backend whose last `consecutive_failures` requests all failed (5xx, connect
//! error, reset, timeout) leaves the set at once. It comes back after an ejection time that
//! grows with each ejection (`base_ejection_time` x times ejected, capped at
//! `max_ejection_time`), and never more than `max_ejection_percent` of the backends are
//! ejected at once (at least one may be, as in Envoy), so a fault that hits every backend
//! cannot empty the pool.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

use crate::{
    balance::{discover::DiscoverSender, Endpoint},
    telemetry::OUTLIER_EJECTIONS_TOTAL,
};

/// Outlier detection settings.
#[derive(Debug, Clone, Serialize)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th lasts n times as long.
    #[serde(with = "crate::humantime_serde")]
    pub base_ejection_time: Duration,
    /// Longest ejection.
    #[serde(with = "crate::humantime_serde")]
    pub max_ejection_time: Duration,
    /// Most backends ejected at once, as a percentage of all (at least one).
    pub max_ejection_percent: u32,
}

/// Watches request outcomes and ejects backends.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    changes: DiscoverSender,
    endpoints: Vec<Arc<Endpoint>>,
    // Held only on the rare path where a backend reaches the threshold, so two requests
    // cannot both eject past the cap.
    deciding: Mutex<()>,
}

impl OutlierDetector {
    /// A detector over `endpoints`, reporting ejections to `changes`.
    pub fn new(
        config: OutlierConfig,
        endpoints: Vec<Arc<Endpoint>>,
        changes: DiscoverSender,
    ) -> Arc<Self> {
        Arc::new(OutlierDetector {
            config,
            changes,
            endpoints,
            deciding: Mutex::new(()),
        })
    }

    fn allowed_ejections(&self) -> usize {
        (self.endpoints.len() * self.config.max_ejection_percent as usize / 100).max(1)
    }

    /// Called after every request to `endpoint` with its failures in a row (0 on success)
    /// and what the last failure was; returns whether this call ejected it.
    pub fn observe(&self, endpoint: &Arc<Endpoint>, streak: u32, last: &str) -> bool {
        if streak < self.config.consecutive_failures || endpoint.availability.is_ejected() {
            return false;
        }
        let _deciding = self.deciding.lock().unwrap_or_else(|e| e.into_inner());
        if endpoint.availability.is_ejected() {
            return false;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.availability.is_ejected())
            .count();
        if ejected >= self.allowed_ejections() {
            tracing::warn!(
                backend = endpoint.name(),
                ejected,
                max_ejection_percent = self.config.max_ejection_percent,
                "outlier not ejected: too many backends are ejected already"
            );
            return false;
        }
        let cause = format!("{streak} failures in a row, last: {last}");
        let times = endpoint.availability.eject(cause.clone());
        let duration = self
            .config
            .base_ejection_time
            .saturating_mul(times)
            .min(self.config.max_ejection_time);
        tracing::warn!(
            backend = endpoint.name(),
            %cause,
            ejected_for = %humantime::format_duration(duration),
            "backend EJECTED by outlier detection"
        );
        metrics::counter!(OUTLIER_EJECTIONS_TOTAL, "backend" => endpoint.name().to_owned())
            .increment(1);
        self.changes.sync(endpoint);
        let (endpoint, changes) = (endpoint.clone(), self.changes.clone());
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let cause = format!("ejection of {} ended", humantime::format_duration(duration));
            tracing::info!(backend = endpoint.name(), %cause, "backend back from ejection");
            endpoint.uneject(cause);
            changes.sync(&endpoint);
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{discover, test_support::endpoints, BackendSet, Balancer, Strategy};

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(45),
            max_ejection_percent: 50,
        }
    }

    /// Lets spawned tasks (the discovery task, ejection timers) run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn ids(set: &BackendSet) -> Vec<u32> {
        set.endpoints.iter().map(|e| e.id().get()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_returns_after_the_ejection_time() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let (changes, stream) = discover::channel();
        eps.iter().for_each(|e| changes.sync(e));
        let balancer = Balancer::new(
            Strategy::new(crate::balance::StrategyKind::RoundRobin),
            eps.clone(),
            stream,
        );
        let detector = OutlierDetector::new(config(), eps.clone(), changes);
        let failed = || eps[1].record(Duration::from_millis(1), true, std::time::Instant::now());

        // Two failures in a row are not enough; a success resets the streak.
        detector.observe(&eps[1], failed(), "status 503");
        detector.observe(&eps[1], failed(), "status 503");
        let ok = eps[1].record(Duration::from_millis(1), false, std::time::Instant::now());
        detector.observe(&eps[1], ok, "");
        detector.observe(&eps[1], failed(), "status 503");
        assert!(!eps[1].availability.is_ejected());

        detector.observe(&eps[1], failed(), "status 503");
        detector.observe(&eps[1], failed(), "status 503");
        assert!(eps[1].availability.is_ejected());
        let cause = eps[1].availability.last_transition().unwrap();
        assert_eq!(cause.source, "outlier_detection");
        assert!(
            cause
                .cause
                .contains("3 failures in a row, last: status 503"),
            "{cause:?}"
        );
        settle().await;
        assert_eq!(ids(&balancer.snapshot()), [0, 2, 3]);

        // The first ejection lasts base_ejection_time.
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(eps[1].availability.is_ejected());
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(!eps[1].availability.is_ejected());
        assert_eq!(ids(&balancer.snapshot()), [0, 1, 2, 3]);

        // The second lasts twice as long, capped at max_ejection_time (45 s, not 60 s).
        for _ in 0..3 {
            detector.observe(&eps[1], failed(), "connect");
        }
        assert!(eps[1].availability.is_ejected());
        settle().await;
        tokio::time::advance(Duration::from_secs(44)).await;
        settle().await;
        assert!(eps[1].availability.is_ejected());
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(!eps[1].availability.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_the_allowed_share() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let (changes, _stream) = discover::channel();
        let detector = OutlierDetector::new(config(), eps.clone(), changes);
        for ep in &eps {
            for _ in 0..3 {
                let streak = ep.record(Duration::ZERO, true, std::time::Instant::now());
                detector.observe(ep, streak, "status 500");
            }
        }
        // 50% of 4 backends: two ejected, the other two kept whatever they do.
        assert_eq!(
            eps.iter().filter(|e| e.availability.is_ejected()).count(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_backend_may_always_be_ejected() {
        let eps = endpoints(&[1]);
        let (changes, _stream) = discover::channel();
        let detector = OutlierDetector::new(config(), eps.clone(), changes);
        for _ in 0..3 {
            let streak = eps[0].record(Duration::ZERO, true, std::time::Instant::now());
            detector.observe(&eps[0], streak, "status 500");
        }
        assert!(
            eps[0].availability.is_ejected(),
            "at least one may be ejected, as in Envoy"
        );
    }
}
