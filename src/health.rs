//! Active health checks, producing the balancer's discovery changes.
//!
//! Every `interval`, each backend gets `GET <backend><path>` with `timeout`; only a 2xx
//! counts as good (the original project accepted only 200; any 2xx is what nginx and
//! HAProxy accept). A backend leaves the set after `unhealthy_threshold` failures in a row
//! and comes back after `healthy_threshold` successes in a row, like HAProxy's `fall`/`rise`.
//! Each transition is logged with its cause and sent to the balancer as a `Change`.
//! Configured backends start in service, as in the original project; a backend found by DNS
//! discovery starts out of service and comes in after its first passing check (Envoy: "during
//! startup, only a single successful health check is required to mark a host healthy").
//! One task per backend keeps a slow check of one backend from delaying the others.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode};
use tokio::task::JoinHandle;

use serde::Serialize;

use crate::{
    balance::{discover::DiscoverSender, Endpoint},
    grpc,
    telemetry::HEALTH_CHECKS_TOTAL,
    upstream::{caused_by_tls, root_cause, BackendClient},
};

/// Active health checks.
#[derive(Debug, Clone, Serialize)]
pub struct HealthConfig {
    /// `health_check.grpc_service`: check with the gRPC health protocol
    /// (`grpc.health.v1.Health/Check` for this service name; `""` is the whole server)
    /// instead of `GET path`.
    pub grpc_service: Option<String>,
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
    /// `upstream_protocol` is `h2`: a protocol failure is named as HTTP/2's, since the
    /// likely cause is a backend that does not speak it.
    h2: bool,
}

impl HealthChecker {
    /// A checker that reports transitions to `changes`.
    pub fn new(config: HealthConfig, client: BackendClient, changes: DiscoverSender) -> Self {
        HealthChecker {
            config,
            client,
            changes,
            h2: false,
        }
    }

    /// Checks over HTTP/2 only (`upstream_protocol: "h2"`); failures say so.
    pub fn speaking_h2(mut self, h2: bool) -> Self {
        self.h2 = h2;
        self
    }

    /// The cause of a failed check.
    fn failure(&self, e: &hyper_util::client::legacy::Error) -> CheckResult {
        if caused_by_tls(e) {
            return CheckResult::Failed(format!("TLS handshake failed: {}", root_cause(e)));
        }
        if self.h2 && !e.is_connect() {
            return CheckResult::Failed(format!(
                "HTTP/2 failed (upstream_protocol \"h2\"; does the backend speak it?): {}",
                root_cause(e)
            ));
        }
        CheckResult::Failed(root_cause(e))
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
            let pending = endpoint.availability.is_pending();
            let threshold = match (up, pending) {
                (true, _) => self.config.unhealthy_threshold,
                (false, true) => 1,
                (false, false) => self.config.healthy_threshold,
            };
            tracing::debug!(backend = endpoint.name(), %result, streak, threshold, "health check");
            if streak < threshold {
                continue;
            }
            streak = 0;
            let cause = if up {
                format!("{threshold} health checks failed in a row, last: {result}")
            } else if pending {
                "first health check passed".to_owned()
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
        if let Some(service) = &self.config.grpc_service {
            return self.check_grpc(endpoint, service).await;
        }
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
            Ok(Err(e)) => self.failure(&e),
            Ok(Ok(status)) if status.is_success() => CheckResult::Healthy,
            Ok(Ok(status)) => CheckResult::BadStatus(status),
        }
    }

    /// One check with the gRPC health protocol (grpc/grpc `doc/health-checking.md`): a
    /// unary `Check` call; healthy when the call ends with `grpc-status` 0 and the answer
    /// says `SERVING`. It needs HTTP/2 to the backend (`upstream_protocol: "h2"`, or ALPN).
    async fn check_grpc(&self, endpoint: &Endpoint, service: &str) -> CheckResult {
        let uri = format!(
            "{}://{}/grpc.health.v1.Health/Check",
            endpoint.backend.scheme(),
            endpoint.name()
        );
        let request = match Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "alb-health-check")
            .body(Body::from(grpc_health_request(service)))
        {
            Ok(r) => r,
            Err(e) => return CheckResult::Failed(e.to_string()),
        };
        let timeout = self.config.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            let (head, body) = response.into_parts();
            let collected = http_body_util::BodyExt::collect(body).await;
            Ok::<_, hyper_util::client::legacy::Error>((head, collected.ok()))
        })
        .await;
        let (head, collected) = match answer {
            Err(_) => return CheckResult::Timeout(timeout),
            Ok(Err(e)) => return self.failure(&e),
            Ok(Ok(answer)) => answer,
        };
        if !head.status.is_success() {
            return CheckResult::BadStatus(head.status);
        }
        let Some(collected) = collected else {
            return CheckResult::Failed("gRPC health check: the answer broke off".to_owned());
        };
        let code = collected
            .trailers()
            .and_then(grpc::status)
            .or_else(|| grpc::status(&head.headers));
        match code {
            Some(0) => {}
            Some(code) => {
                return CheckResult::Failed(format!(
                    "gRPC health check: grpc-status {code} {}",
                    grpc::code_name(code)
                ))
            }
            None => {
                return CheckResult::Failed(
                    "gRPC health check: no grpc-status (is it a gRPC server?)".to_owned(),
                )
            }
        }
        match grpc_serving_status(&collected.to_bytes()) {
            1 => CheckResult::Healthy,
            status => CheckResult::Failed(format!(
                "gRPC health check: service {service:?} is {}",
                match status {
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                }
            )),
        }
    }
}

/// A length-prefixed `HealthCheckRequest { service }` message: the gRPC frame header (no
/// compression, 4-byte big-endian length), then protobuf field 1 (a string) if not empty.
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// The `status` of a length-prefixed `HealthCheckResponse` (field 1, an enum: 1 is
/// `SERVING`); 0 (`UNKNOWN`) when absent or unreadable.
fn grpc_serving_status(framed: &[u8]) -> u64 {
    let Some(message) = framed.get(5..) else {
        return 0;
    };
    let mut i = 0;
    while i < message.len() {
        let key = message[i];
        i += 1;
        match key & 0x07 {
            0 => {
                let (mut value, mut shift) = (0u64, 0);
                while let Some(&b) = message.get(i) {
                    i += 1;
                    value |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 || shift > 63 {
                        break;
                    }
                }
                if key >> 3 == 1 {
                    return value;
                }
            }
            // Other wire types do not appear in this message; stop rather than guess.
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn health_request_and_response_encoding() {
        assert_eq!(grpc_health_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("a.B"),
            vec![0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), 1);
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), 2);
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), 0);
        assert_eq!(grpc_serving_status(&[0, 0]), 0);
    }
}
