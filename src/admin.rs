//! The admin routes: `/metrics`, `/health`, `/backends`.
//!
//! An axum `Router` the library exports, so an embedding app can mount it wherever it likes;
//! the binary serves it on `admin_addr` (loopback by default: backend state is not for the
//! public).

use std::{sync::Arc, time::Instant};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::{
    balance::{
        endpoint::{Endpoint, Transition},
        Balancer,
    },
    prometheus::publish_backend_gauges,
};

/// What the admin routes read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The balancer whose strategy scores backends.
    pub balancer: Arc<Balancer>,
    /// Every backend, up or down.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The Prometheus recorder's handle.
    pub prometheus: PrometheusHandle,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/backends", get(backends))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    publish_backend_gauges(&state.balancer, &state.endpoints);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prometheus.render(),
    )
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    backends_alive: usize,
    backends_total: usize,
}

async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    let alive = state.endpoints.iter().filter(|e| e.is_up()).count();
    let status = if alive > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if alive > 0 { "ok" } else { "no backend alive" },
        backends_alive: alive,
        backends_total: state.endpoints.len(),
    };
    (status, Json(body))
}

/// One backend as `/backends` shows it.
#[derive(Serialize)]
pub struct BackendView {
    /// Position in the config.
    pub id: usize,
    /// URL as configured.
    pub url: String,
    /// `host:port`.
    pub backend: String,
    /// Relative share.
    pub weight: u32,
    /// In service or not.
    pub up: bool,
    /// Requests in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency estimate, milliseconds.
    pub ewma_ms: f64,
    /// The strategy's load measure (lower is preferred).
    pub score: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests failed (5xx, connect, timeout).
    pub errors: u64,
    /// The last health transition and its cause.
    pub last_transition: Option<Transition>,
}

#[derive(Serialize)]
struct Backends {
    strategy: &'static str,
    backends: Vec<BackendView>,
}

async fn backends(State(state): State<AdminState>) -> Json<Backends> {
    let now = Instant::now();
    let strategy = state.balancer.strategy();
    Json(Backends {
        strategy: strategy.kind().as_str(),
        backends: state
            .endpoints
            .iter()
            .map(|ep| BackendView {
                id: ep.id,
                url: ep.url.clone(),
                backend: ep.name().to_owned(),
                weight: ep.weight,
                up: ep.is_up(),
                in_flight: ep.in_flight(),
                ewma_ms: ep.ewma_secs(now) * 1e3,
                score: strategy.score(ep, now),
                requests: ep.requests(),
                errors: ep.failures(),
                last_transition: ep.last_transition(),
            })
            .collect(),
    })
}
