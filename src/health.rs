//! Active health checks, producing the balancer's discovery changes.
//!
//! Every `interval`, each backend gets `GET <backend><path>` with `timeout`; only a 2xx
//! counts as good (the original project accepted only 200; any 2xx is what nginx and
//! HAProxy accept). A backend leaves the set after `unhealthy_threshold` failures in a row
//! and comes back after `healthy_threshold` successes in a row, like HAProxy's `fall`/`rise`.
//! Each transition is logged with its cause and sent to the balancer as a `Change`.
//! Backends start in service, as in the original project; one task per backend keeps a slow
//! check of one backend from delaying the others.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode};
use tokio::task::JoinHandle;

use serde::Serialize;

use crate::{
    balance::{discover::DiscoverSender, Endpoint},
    telemetry::HEALTH_CHECKS_TOTAL,
    upstream::{caused_by_tls, root_cause, BackendClient},
};

/// Active health checks.
#[derive(Debug, Clone, Serialize)]
pub struct HealthConfig {
    /// Path requested on every backend.
    pub path: String,
    /// Time between checks.
    #[serde(with = "crate::humantime_serde")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(with = "crate::humantime_serde")]
    pub timeout: Duration,
    /// Consecutive good checks to come back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks to leave.
    pub unhealthy_threshold: u32,
}

/// What one check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// A 2xx answer.
    Healthy,
    /// A non-2xx status.
    BadStatus(StatusCode),
    /// No answer within the timeout.
    Timeout(Duration),
    /// Connection or protocol failure.
    Failed(String),
}

impl CheckResult {
    fn is_healthy(&self) -> bool {
        matches!(self, CheckResult::Healthy)
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CheckResult::Healthy => "healthy",
            CheckResult::BadStatus(_) => "bad_status",
            CheckResult::Timeout(_) => "timeout",
            CheckResult::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckResult::Healthy => f.write_str("healthy"),
            CheckResult::BadStatus(s) => write!(f, "status {}", s.as_u16()),
            CheckResult::Timeout(t) => {
                write!(f, "no answer within {}", humantime::format_duration(*t))
            }
            CheckResult::Failed(e) => f.write_str(e),
        }
    }
}

/// Runs the checks of a set of endpoints.
#[derive(Debug)]
pub struct HealthChecker {
    config: HealthConfig,
    client: BackendClient,
    changes: DiscoverSender,
}

impl HealthChecker {
    /// A checker that reports transitions to `changes`.
    pub fn new(config: HealthConfig, client: BackendClient, changes: DiscoverSender) -> Self {
        HealthChecker {
            config,
            client,
            changes,
        }
    }

    /// Puts every endpoint that is in service into the set and starts one checking task per
    /// endpoint.
    pub fn spawn(self, endpoints: &[Arc<Endpoint>]) -> Vec<JoinHandle<()>> {
        let this = Arc::new(self);
        endpoints
            .iter()
            .map(|ep| {
                this.changes.sync(ep);
                tokio::spawn(this.clone().watch(ep.clone()))
            })
            .collect()
    }

    async fn watch(self: Arc<Self>, endpoint: Arc<Endpoint>) {
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut streak = 0u32; // consecutive results that disagree with the current state
        loop {
            ticks.tick().await;
            let result = self.check(&endpoint).await;
            metrics::counter!(HEALTH_CHECKS_TOTAL,
                "backend" => endpoint.name().to_owned(), "result" => result.label())
            .increment(1);
            let up = endpoint.is_up();
            if result.is_healthy() == up {
                streak = 0;
                continue;
            }
            streak += 1;
            let threshold = if up {
                self.config.unhealthy_threshold
            } else {
                self.config.healthy_threshold
            };
            tracing::debug!(backend = endpoint.name(), %result, streak, threshold, "health check");
            if streak < threshold {
                continue;
            }
            streak = 0;
            let cause = if up {
                format!("{threshold} health checks failed in a row, last: {result}")
            } else {
                format!("{threshold} health checks passed in a row")
            };
            if up {
                tracing::warn!(backend = endpoint.name(), %cause, "backend is DOWN");
                endpoint.set_up(false, cause);
                self.changes.sync(&endpoint);
            } else {
                tracing::info!(backend = endpoint.name(), %cause, "backend is UP");
                endpoint.set_up(true, cause);
                self.changes.sync(&endpoint);
            }
        }
    }

    async fn check(&self, endpoint: &Endpoint) -> CheckResult {
        let uri = format!(
            "{}://{}{}",
            endpoint.backend.scheme(),
            endpoint.name(),
            self.config.path
        );
        let request = match Request::get(uri)
            .header(http::header::USER_AGENT, "alb-health-check")
            .body(Body::empty())
        {
            Ok(r) => r,
            Err(e) => return CheckResult::Failed(e.to_string()),
        };
        let timeout = self.config.timeout;
        let response = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read the body so the pooled connection can be reused.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match response {
            Err(_) => CheckResult::Timeout(timeout),
            Ok(Err(e)) if caused_by_tls(&e) => {
                CheckResult::Failed(format!("TLS handshake failed: {}", root_cause(&e)))
            }
            Ok(Err(e)) => CheckResult::Failed(root_cause(&e)),
            Ok(Ok(status)) if status.is_success() => CheckResult::Healthy,
            Ok(Ok(status)) => CheckResult::BadStatus(status),
        }
    }
}
