//! The admin routes: `/` (a live dashboard), `/metrics`, `/health`, `/backends`,
//! `/backends/{id}`, `/decisions` and `/decisions/stream`.
//!
//! An axum `Router` the library exports, so an embedding app can mount it wherever it likes;
//! the binary serves it on `admin_addr` (loopback by default: backend state is not for the
//! public). The dashboard is one HTML file embedded in the binary; it fetches nothing from
//! the internet and updates by polling `/backends` and following `/decisions/stream`.

use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use futures_util::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::Serialize;

use crate::{
    balance::{
        endpoint::{Endpoint, Transition},
        Balancer,
    },
    decision::{DecisionLog, DecisionRecord, DecisionView},
    prometheus::publish_backend_gauges,
};

/// How often the decision stream looks for new decisions.
const STREAM_POLL: Duration = Duration::from_millis(100);
/// Decisions returned by `/decisions` unless `limit` says otherwise.
const DEFAULT_DECISIONS: usize = 1000;

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
        .route("/backends/{id}", get(backend_detail))
        .route("/decisions", get(decisions))
        .route("/decisions/stream", get(decision_stream))
        .route("/", get(dashboard))
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

impl AdminState {
    fn view(&self, ep: &Endpoint, now: Instant) -> BackendView {
        BackendView {
            id: ep.id,
            url: ep.url.clone(),
            backend: ep.name().to_owned(),
            weight: ep.weight,
            up: ep.is_up(),
            in_flight: ep.in_flight(),
            ewma_ms: ep.ewma_secs(now) * 1e3,
            score: self.balancer.strategy().score(ep, now),
            requests: ep.requests(),
            errors: ep.failures(),
            last_transition: ep.last_transition(),
        }
    }

    fn log(&self) -> &Arc<DecisionLog> {
        self.balancer.decisions()
    }
}

async fn backends(State(state): State<AdminState>) -> Json<Backends> {
    let now = Instant::now();
    Json(Backends {
        strategy: state.balancer.strategy().kind().as_str(),
        backends: state
            .endpoints
            .iter()
            .map(|ep| state.view(ep, now))
            .collect(),
    })
}

#[derive(Serialize)]
struct BackendDetail {
    #[serde(flatten)]
    backend: BackendView,
    transitions: Vec<Transition>,
}

/// One backend by position (`/backends/0`) or name (`/backends/127.0.0.1:8081`), with its
/// recent state transitions.
async fn backend_detail(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let found = state
        .endpoints
        .iter()
        .find(|ep| ep.name() == id || id.parse::<usize>() == Ok(ep.id));
    match found {
        Some(ep) => Json(BackendDetail {
            backend: state.view(ep, Instant::now()),
            transitions: ep.transitions(),
        })
        .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no backend {id:?}\n")).into_response(),
    }
}

/// Filters of `/decisions` and `/decisions/stream`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionFilter {
    /// Only decisions that chose this backend (`host:port`).
    backend: Option<String>,
    /// `ok` (2xx/3xx), `error` (anything else), or a status code.
    outcome: Option<String>,
    /// Most recent N (default 1000).
    limit: Option<usize>,
}

impl DecisionFilter {
    fn keeps(&self, view: &DecisionView) -> bool {
        if let Some(b) = &self.backend {
            if view.chosen.as_deref() != Some(b.as_str()) {
                return false;
            }
        }
        match self.outcome.as_deref() {
            None => true,
            Some("ok") => (200..400).contains(&view.status),
            Some("error") => !(200..400).contains(&view.status),
            Some(code) => code.parse::<u16>() == Ok(view.status),
        }
    }

    fn apply(
        &self,
        records: Vec<DecisionRecord>,
        endpoints: &[Arc<Endpoint>],
    ) -> Vec<DecisionView> {
        records
            .iter()
            .map(|r| DecisionView::new(r, endpoints))
            .filter(|v| self.keeps(v))
            .collect()
    }
}

#[derive(Serialize)]
struct Decisions {
    decisions: Vec<DecisionView>,
}

/// The latest decisions, newest first.
async fn decisions(
    State(state): State<AdminState>,
    Query(filter): Query<DecisionFilter>,
) -> Json<Decisions> {
    let mut views = filter.apply(state.log().since(0), &state.endpoints);
    views.reverse();
    views.truncate(filter.limit.unwrap_or(DEFAULT_DECISIONS));
    Json(Decisions { decisions: views })
}

/// New decisions as Server-Sent Events (`event: decision`, JSON data), as they happen.
async fn decision_stream(
    State(state): State<AdminState>,
    Query(filter): Query<DecisionFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = state.log().last_id();
    let stream = futures_util::stream::unfold(
        (state, filter, start, Vec::<Event>::new()),
        |(state, filter, mut last, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok(event), (state, filter, last, pending)));
                }
                tokio::time::sleep(STREAM_POLL).await;
                let records = state.log().since(last);
                if let Some(newest) = records.last() {
                    last = newest.id;
                }
                pending = filter
                    .apply(records, &state.endpoints)
                    .iter()
                    .rev()
                    .filter_map(|v| Event::default().event("decision").json_data(v).ok())
                    .collect();
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn dashboard() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(include_str!("dashboard.html")),
    )
}
