//! The catalogue of ALB's metrics: every name, its description, and the cached per-backend
//! handles the request path records into.
//!
//! Only the `metrics` facade is used here, so the core (balancer, outlier detection, retries)
//! can record without knowing how metrics are exposed; the `prometheus` module installs the
//! recorder and renders the exposition. Names follow the original project where it had them
//! (`lb_http_requests_total`, `lb_request_duration_seconds`, `lb_backends_alive`,
//! `lb_backend_latency_ewma`, `lb_rate_limited_requests_total`); `backend` labels are
//! `host:port`.

use std::sync::OnceLock;

use http::StatusCode;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Counter, Unit};

/// Requests answered, by method and status code.
pub const HTTP_REQUESTS_TOTAL: &str = "lb_http_requests_total";
/// Time to response headers, by method and status code.
pub const REQUEST_DURATION_SECONDS: &str = "lb_request_duration_seconds";
/// Backends currently in service.
pub const BACKENDS_ALIVE: &str = "lb_backends_alive";
/// Peak-EWMA latency estimate per backend, in seconds.
pub const BACKEND_LATENCY_EWMA: &str = "lb_backend_latency_ewma";
/// Requests answered `429`.
pub const RATE_LIMITED_REQUESTS_TOTAL: &str = "lb_rate_limited_requests_total";
/// Requests sent to each backend, by the status the client got.
pub const BACKEND_REQUESTS_TOTAL: &str = "lb_backend_requests_total";
/// Requests in flight per backend.
pub const BACKEND_IN_FLIGHT: &str = "lb_backend_in_flight";
/// 1 while a backend is in service.
pub const BACKEND_UP: &str = "lb_backend_up";
/// The strategy's load measure per backend (lower is preferred).
pub const BACKEND_SCORE: &str = "lb_backend_score";
/// Failed requests per backend, by kind.
pub const BACKEND_ERRORS_TOTAL: &str = "lb_backend_errors_total";
/// Health checks per backend, by result.
pub const HEALTH_CHECKS_TOTAL: &str = "lb_health_checks_total";
/// Requests refused by backpressure (`503`).
pub const LOAD_SHED_TOTAL: &str = "lb_load_shed_total";
/// Backends ejected by passive outlier detection.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "lb_outlier_ejections_total";
/// Requests retried on another backend, by the failure that caused it.
pub const RETRIES_TOTAL: &str = "lb_retries_total";
/// Retries refused because the retry budget was spent.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "lb_retry_budget_exhausted_total";
/// Access-log lines dropped because the writer could not keep up.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "lb_access_log_dropped_total";
/// Faults injected, by route and kind (`delay`, `abort`).
pub const FAULTS_INJECTED_TOTAL: &str = "lb_faults_injected_total";
/// Recorded-traffic lines dropped because the writer could not keep up.
pub const RECORD_DROPPED_TOTAL: &str = "lb_record_dropped_total";
/// Shadow strategies' decisions, by strategy and agreement with the active one.
pub const SHADOW_DECISIONS_TOTAL: &str = "lb_shadow_decisions_total";
/// Load probes sent by `prequal`, by result (`ok`, `timeout`, `error`, `invalid`).
pub const PROBES_TOTAL: &str = "lb_probes_total";
/// TLS handshakes whose SNI was not a valid host name and was treated as absent.
pub const TLS_INVALID_SNI_TOTAL: &str = "lb_tls_invalid_sni_total";
/// Calls to the rate-limit store (Redis) that failed or outlasted `rate_limit.store.timeout`.
pub const RATE_LIMIT_STORE_ERRORS_TOTAL: &str = "lb_rate_limit_store_errors_total";

/// Utilization of a pool's backends: time-averaged requests in flight / (backends in
/// service × per-backend concurrency), by pool.
pub const POOL_UTILIZATION: &str = "lb_pool_utilization";
/// Backends a pool needs at its target utilization, smoothed (the autoscaler's signal), by
/// pool.
pub const POOL_RECOMMENDED_BACKENDS: &str = "lb_pool_recommended_backends";

// === traffic management ===

/// Canary rollbacks, by route.
pub const CANARY_ROLLBACKS_TOTAL: &str = "lb_canary_rollbacks_total";
/// Mirrored requests, by route and result (`match`, `status_mismatch`, `body_mismatch`,
/// `ok` (not compared), `error`, `dropped`, `skipped`).
pub const MIRROR_REQUESTS_TOTAL: &str = "lb_mirror_requests_total";
/// Requests that matched no route (answered `404`).
pub const ROUTE_NOT_FOUND_TOTAL: &str = "lb_route_not_found_total";

// === DNS discovery ===

/// DNS lookups of a backend name, by result (`ok`, `error`).
pub const DNS_LOOKUPS_TOTAL: &str = "lb_dns_lookups_total";
/// Addresses of a backend name's last good answer (kept while lookups fail).
pub const DNS_ADDRESSES: &str = "lb_dns_addresses";

// === HTTP/2 upstream connections ===

/// Open HTTP/2 connections to a backend (`upstream_protocol: "h2"`), draining ones excepted.
pub const UPSTREAM_H2_CONNECTIONS: &str = "lb_upstream_h2_connections";
/// Requests sent again on another HTTP/2 connection because the backend refused their stream
/// unprocessed, by backend and reason (`goaway`, `refused_stream`).
pub const UPSTREAM_H2_RETRIES_TOTAL: &str = "lb_upstream_h2_retries_total";

/// Failure kinds counted in [`BACKEND_ERRORS_TOTAL`].
/// (`tls`: the handshake with an `https://` backend failed; `grpc_status`: a gRPC answer with
/// a `grpc-status` other than 0.)
pub const ERROR_KINDS: [&str; 6] = [
    "connect",
    "timeout",
    "upstream",
    "status_5xx",
    "tls",
    "grpc_status",
];

/// Describes every metric and creates the series that must exist from the start.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Requests answered, by method and status code."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from request to response headers, by method and status code."
    );
    describe_gauge!(BACKENDS_ALIVE, "Backends currently in service.");
    describe_gauge!(
        BACKEND_LATENCY_EWMA,
        Unit::Seconds,
        "Peak-EWMA latency estimate per backend."
    );
    describe_counter!(RATE_LIMITED_REQUESTS_TOTAL, "Requests answered 429.");
    describe_counter!(
        BACKEND_REQUESTS_TOTAL,
        "Requests sent to each backend, by the status the client got."
    );
    describe_gauge!(BACKEND_IN_FLIGHT, "Requests in flight per backend.");
    describe_gauge!(BACKEND_UP, "1 while a backend is in service, else 0.");
    describe_gauge!(
        BACKEND_SCORE,
        "The strategy's load measure per backend; lower is preferred."
    );
    describe_counter!(
        BACKEND_ERRORS_TOTAL,
        "Failed requests per backend, by kind."
    );
    describe_counter!(HEALTH_CHECKS_TOTAL, "Health checks per backend, by result.");
    describe_counter!(LOAD_SHED_TOTAL, "Requests refused by backpressure (503).");
    describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        "Backends ejected by outlier detection."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Requests retried on another backend, by cause."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries refused because the retry budget was spent."
    );
    describe_counter!(
        SHADOW_DECISIONS_TOTAL,
        "Shadow strategies' decisions, by whether they agree with the active strategy."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access-log lines dropped because the writer could not keep up."
    );
    describe_counter!(
        FAULTS_INJECTED_TOTAL,
        "Faults injected into requests, by route and kind (delay, abort)."
    );
    describe_counter!(
        RECORD_DROPPED_TOTAL,
        "Recorded-traffic lines dropped because the writer could not keep up."
    );
    describe_counter!(
        PROBES_TOTAL,
        "Load probes sent by the prequal strategy, by result."
    );
    describe_counter!(
        TLS_INVALID_SNI_TOTAL,
        "TLS handshakes whose SNI was not a valid host name (e.g. `localhost:8443`), served as if no SNI was sent."
    );
    describe_capacity();
    describe_upstream_h2();
    describe_counter!(
        RATE_LIMIT_STORE_ERRORS_TOTAL,
        "Calls to the rate-limit store (Redis) that failed or timed out."
    );
    // Series that exist from the start, so dashboards and alerts see 0 rather than nothing.
    counter!(RATE_LIMITED_REQUESTS_TOTAL).absolute(0);
    counter!(LOAD_SHED_TOTAL).absolute(0);
    counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).absolute(0);
    counter!(ACCESS_LOG_DROPPED_TOTAL).absolute(0);
    counter!(TLS_INVALID_SNI_TOTAL).absolute(0);
    describe_counter!(
        DNS_LOOKUPS_TOTAL,
        "DNS lookups of a backend name, by result (ok, error)."
    );
    describe_gauge!(
        DNS_ADDRESSES,
        "Addresses of a backend name's last good answer."
    );
}

/// Describes the HTTP/2 upstream connection metrics.
fn describe_upstream_h2() {
    describe_gauge!(
        UPSTREAM_H2_CONNECTIONS,
        "Open HTTP/2 connections per backend (upstream_protocol h2), draining ones excepted."
    );
    describe_counter!(
        UPSTREAM_H2_RETRIES_TOTAL,
        "Requests sent again on another HTTP/2 connection after the backend refused their stream unprocessed, by reason (goaway, refused_stream)."
    );
}

/// Describes the gauges of the pools' capacity signal.
fn describe_capacity() {
    describe_gauge!(
        POOL_UTILIZATION,
        "Time-averaged requests in flight / (backends in service x per-backend concurrency), by pool."
    );
    describe_gauge!(
        POOL_RECOMMENDED_BACKENDS,
        "Backends the pool needs at its target utilization, smoothed against flapping, by pool."
    );
}

/// Cached counter handles of one backend, so the request path never builds a label set.
#[derive(Debug)]
pub struct EndpointMetrics {
    backend: String,
    by_status: Box<[OnceLock<Counter>]>,
    errors: [Counter; ERROR_KINDS.len()],
}

/// Status codes 100..=599 each get a slot.
const STATUS_SLOTS: usize = 500;

impl EndpointMetrics {
    /// Handles for the backend named `backend`; error series start at zero.
    pub fn new(backend: &str) -> Self {
        EndpointMetrics {
            backend: backend.to_owned(),
            by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            errors: ERROR_KINDS.map(|kind| {
                let c =
                    counter!(BACKEND_ERRORS_TOTAL, "backend" => backend.to_owned(), "kind" => kind);
                c.absolute(0);
                c
            }),
        }
    }

    /// Counts one request answered with `status`.
    pub fn request(&self, status: StatusCode) {
        let slot = usize::from(status.as_u16()).saturating_sub(100);
        let Some(cell) = self.by_status.get(slot) else {
            return;
        };
        cell.get_or_init(|| {
            counter!(BACKEND_REQUESTS_TOTAL,
                "backend" => self.backend.clone(), "code" => status.as_str().to_owned())
        })
        .increment(1);
    }

    /// Counts one failure of `kind`, one of [`ERROR_KINDS`].
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].increment(1);
        }
    }
}
