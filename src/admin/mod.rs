//! The admin routes: `/` (a live dashboard), `/metrics`, `/health`, `/backends`,
//! `/backends/{id}`, `/history`, `/decisions`, `/decisions/stream` and `/capacity`.
//!
//! An axum `Router` the library exports, so an embedding app can mount it wherever it likes;
//! the binary serves it on `admin_addr` (loopback by default: backend state is not for the
//! public). The dashboard is one HTML file embedded in the binary; it fetches nothing from
//! the internet and updates by polling `/backends` and following `/decisions/stream`.
//! [`auth`] guards the routes: state-changing ones need the admin token when one is set.

pub mod auth;
pub mod history;

use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    middleware,
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use futures_util::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::Serialize;

use metrics::{counter, gauge};

use history::{History, Point};

use crate::{
    balance::{availability::Transition, BackendId, Endpoint},
    capacity::CapacityView,
    config::AdminAuthConfig,
    decision::{DecisionLog, DecisionRecord, DecisionView},
    dns::SourceStatus,
    layer::rate_limit::{store::StoreView, RedisStore},
    proxy::{LiveProxy, Proxy},
    route::Routing,
    router::{MirrorView, RouteState, RouteView},
    telemetry::{
        BACKENDS_ALIVE, BACKEND_IN_FLIGHT, BACKEND_LATENCY_EWMA, BACKEND_SCORE, BACKEND_UP,
        TLS_INVALID_SNI_TOTAL,
    },
};

/// How often the decision stream looks for new decisions.
const STREAM_POLL: Duration = Duration::from_millis(100);
/// Decisions returned by `/decisions` unless `limit` says otherwise.
const DEFAULT_DECISIONS: usize = 1000;

/// What the admin routes read and control.
#[derive(Clone, Debug)]
pub struct AdminState {
    source: Source,
    prometheus: PrometheusHandle,
    history: Arc<History>,
}

#[derive(Clone, Debug)]
enum Source {
    /// A balancer built by an embedding app: read-only.
    Fixed(Snapshot),
    /// The binary's proxy: follows reloads, and can reload, drain and enable.
    Live(Arc<LiveProxy>),
}

/// The pools, routes and decisions that a request to the admin routes looks at.
#[derive(Clone, Debug)]
struct Snapshot {
    pools: Vec<PoolSnapshot>,
    routes: Vec<Arc<RouteState>>,
    decisions: Arc<DecisionLog>,
    /// The rate limit's Redis store, for `/health`.
    store: Option<Arc<RedisStore>>,
}

/// One pool's routing and backends.
#[derive(Clone, Debug)]
struct PoolSnapshot {
    name: Arc<str>,
    routing: Arc<Routing>,
    endpoints: Vec<Arc<Endpoint>>,
}

impl AdminState {
    /// Admin routes over a routing service's state and its backends (read-only: no reload
    /// or drain).
    pub fn new(
        routing: Arc<Routing>,
        endpoints: Vec<Arc<Endpoint>>,
        prometheus: PrometheusHandle,
    ) -> Self {
        AdminState {
            source: Source::Fixed(Snapshot {
                decisions: routing.decisions().clone(),
                pools: vec![PoolSnapshot {
                    name: crate::config::Defaults::POOL.into(),
                    routing,
                    endpoints,
                }],
                routes: Vec::new(),
                store: None,
            }),
            prometheus,
            history: Arc::default(),
        }
    }

    /// Admin routes over a live proxy, with `POST /reload` and drain/enable.
    pub fn live(live: Arc<LiveProxy>, prometheus: PrometheusHandle) -> Self {
        AdminState {
            source: Source::Live(live),
            prometheus,
            history: Arc::default(),
        }
    }

    /// Who may call the routes: the running config's settings for a live proxy (so a
    /// reload can rotate the token); open for an embedding app's balancer, which puts its
    /// own authentication in front of the router.
    fn auth(&self) -> AdminAuthConfig {
        match &self.source {
            Source::Fixed(_) => AdminAuthConfig::default(),
            Source::Live(live) => live.admin_auth(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.source.snapshot()
    }
}

impl Source {
    fn snapshot(&self) -> Snapshot {
        match self {
            Source::Fixed(s) => s.clone(),
            Source::Live(live) => Snapshot::of(&live.current()),
        }
    }
}

/// The admin router. Routes that change state need the admin token whenever one is set;
/// with `admin_auth: "all"`, every route does ([`auth`]).
pub fn router(state: AdminState) -> Router {
    // The source only: holding the state would hold the history and keep the task alive.
    let sampled = state.source.clone();
    History::spawn_sampler(&state.history, move |now| {
        let s = sampled.snapshot();
        s.pools
            .iter()
            .flat_map(|pool| {
                pool.endpoints
                    .iter()
                    .map(move |ep| (ep.name().to_owned(), pool.point(ep, now)))
            })
            .collect()
    });
    let changes = Router::new()
        .route("/backends/{id}/drain", post(drain))
        .route("/backends/{id}/enable", post(enable))
        .route("/reload", post(reload))
        .route("/routes/{name}/split", post(set_split))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::guard_change,
        ));
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/backends", get(backends))
        .route("/backends/{id}", get(backend_detail))
        .route("/history", get(history))
        .route("/decisions", get(decisions))
        .route("/decisions/stream", get(decision_stream))
        .route("/capacity", get(capacity))
        .route("/routes", get(routes))
        .route("/mirror", get(mirror))
        .route("/", get(dashboard))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::guard_read,
        ));
    changes.merge(reads).with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let s = state.snapshot();
    publish_backend_gauges(&s.pools);
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
    /// With `rate_limit.store`: Redis's state (a store that is down does not make ALB
    /// unhealthy: `on_error` keeps deciding).
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_store: Option<StoreView>,
}

async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    let state = state.snapshot();
    let endpoints = || state.pools.iter().flat_map(|p| &p.endpoints);
    let alive = endpoints().filter(|e| e.in_service()).count();
    let status = if alive > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if alive > 0 { "ok" } else { "no backend alive" },
        backends_alive: alive,
        backends_total: endpoints().count(),
        rate_limit_store: state.store.as_ref().map(|s| s.view()),
    };
    (status, Json(body))
}

/// Sets the per-backend gauges from the endpoints' live state, at scrape time.
fn publish_backend_gauges(pools: &[PoolSnapshot]) {
    let now = Instant::now();
    let mut alive = 0;
    for (balancer, ep) in pools
        .iter()
        .flat_map(|p| p.endpoints.iter().map(|ep| (p.routing.balancer(), ep)))
    {
        let backend = ep.name().to_owned();
        let up = ep.is_up();
        alive += usize::from(up);
        gauge!(BACKEND_UP, "backend" => backend.clone()).set(if up { 1.0 } else { 0.0 });
        gauge!(BACKEND_IN_FLIGHT, "backend" => backend.clone()).set(ep.in_flight() as f64);
        gauge!(BACKEND_LATENCY_EWMA, "backend" => backend.clone()).set(ep.ewma_secs(now));
        gauge!(BACKEND_SCORE, "backend" => backend).set(balancer.strategy().score(ep, now));
    }
    gauge!(BACKENDS_ALIVE).set(alive as f64);
    // Counted inside (ALB's patched) rustls, which has no metrics of its own.
    counter!(TLS_INVALID_SNI_TOTAL).absolute(rustls::server::invalid_sni_ignored());
}

/// One backend as `/backends` shows it.
#[derive(Serialize)]
pub struct BackendView {
    /// Stable id: the same for the same `host:port` across reloads.
    pub id: BackendId,
    /// The pool it is in.
    pub pool: String,
    /// URL as configured.
    pub url: String,
    /// `host:port`.
    pub backend: String,
    /// The DNS name it was found under; absent for a configured URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Relative share.
    pub weight: u32,
    /// Slow start: the share of its weight it gets now, while it warms up after returning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<f64>,
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
struct PoolSummary {
    name: String,
    strategy: &'static str,
}

#[derive(Serialize)]
struct Backends {
    /// The first pool's strategy (the flat format's one pool).
    strategy: &'static str,
    pools: Vec<PoolSummary>,
    backends: Vec<BackendView>,
    /// DNS backend entries: name, last good addresses, last error, next lookup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    discovery: Vec<SourceStatus>,
}

impl Snapshot {
    fn of(proxy: &Proxy) -> Snapshot {
        Snapshot {
            pools: proxy
                .pools
                .iter()
                .map(|p| PoolSnapshot {
                    name: p.name.clone(),
                    routing: p.routing.clone(),
                    endpoints: p.endpoints.clone(),
                })
                .collect(),
            routes: proxy.routes.clone(),
            decisions: proxy.decisions().clone(),
            store: proxy.rate_limit_store().cloned(),
        }
    }

    fn log(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// The backend named by `id` (its stable id, `/backends/0`, or its `host:port`) in
    /// every pool that has it.
    fn find(&self, id: &str) -> Vec<(&PoolSnapshot, &Arc<Endpoint>)> {
        self.pools
            .iter()
            .flat_map(|p| p.endpoints.iter().map(move |ep| (p, ep)))
            .filter(|(_, ep)| ep.name() == id || id.parse::<BackendId>() == Ok(ep.id()))
            .collect()
    }
}

impl PoolSnapshot {
    fn view(&self, ep: &Endpoint, now: Instant) -> BackendView {
        BackendView {
            id: ep.id(),
            pool: self.name.to_string(),
            url: ep.backend.url.clone(),
            backend: ep.name().to_owned(),
            dns_name: ep.backend.dns_name.as_deref().map(str::to_owned),
            weight: ep.weight(),
            slow_start: Some(ep.slow_start_factor_at(now)).filter(|f| *f < 1.0),
            up: ep.is_up(),
            in_flight: ep.in_flight(),
            ewma_ms: ep.ewma_secs(now) * 1e3,
            score: self.routing.balancer().strategy().score(ep, now),
            requests: ep.requests(),
            errors: ep.failures(),
            last_transition: ep.availability.last_transition(),
        }
    }

    /// A backend's numbers for the dashboard's history.
    fn point(&self, ep: &Endpoint, now: Instant) -> Point {
        Point {
            requests: ep.requests(),
            in_flight: ep.in_flight(),
            ewma_ms: ep.ewma_secs(now) * 1e3,
            score: self.routing.balancer().strategy().score(ep, now),
            up: ep.is_up(),
        }
    }
}

#[derive(Serialize)]
struct HistoryView {
    interval_ms: u64,
    samples: Vec<history::Sample>,
}

/// The last minutes of per-second samples (the dashboard starts its charts from them).
async fn history(State(state): State<AdminState>) -> Json<HistoryView> {
    Json(HistoryView {
        interval_ms: history::SAMPLE_INTERVAL.as_millis() as u64,
        samples: state.history.samples(),
    })
}

async fn backends(State(state): State<AdminState>) -> Json<Backends> {
    let discovery = match &state.source {
        Source::Fixed(_) => Vec::new(),
        Source::Live(live) => live.discovery(),
    };
    let state = state.snapshot();
    let now = Instant::now();
    Json(Backends {
        strategy: state.pools[0].routing.balancer().strategy().kind().as_str(),
        pools: state
            .pools
            .iter()
            .map(|p| PoolSummary {
                name: p.name.to_string(),
                strategy: p.routing.balancer().strategy().kind().as_str(),
            })
            .collect(),
        backends: state
            .pools
            .iter()
            .flat_map(|p| p.endpoints.iter().map(move |ep| p.view(ep, now)))
            .collect(),
        discovery,
    })
}

#[derive(Serialize)]
struct BackendDetail {
    #[serde(flatten)]
    backend: BackendView,
    transitions: Vec<Transition>,
}

/// One backend by stable id (`/backends/0`) or name (`/backends/127.0.0.1:8081`), with its
/// recent state transitions.
async fn backend_detail(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let state = state.snapshot();
    match state.find(&id).first() {
        Some((pool, ep)) => Json(BackendDetail {
            backend: pool.view(ep, Instant::now()),
            transitions: ep.availability.transitions(),
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
    /// Only decisions of requests that matched this route.
    route: Option<String>,
    /// Only decisions made in this pool.
    pool: Option<String>,
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
        if self.route.is_some() && view.route != self.route {
            return false;
        }
        if self.pool.is_some() && view.pool != self.pool {
            return false;
        }
        match self.outcome.as_deref() {
            None => true,
            Some("ok") => (200..400).contains(&view.status),
            Some("error") => !(200..400).contains(&view.status),
            Some(code) => code.parse::<u16>() == Ok(view.status),
        }
    }

    fn apply(&self, records: Vec<DecisionRecord>) -> Vec<DecisionView> {
        records
            .iter()
            .map(DecisionView::new)
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
    let state = state.snapshot();
    let mut views = filter.apply(state.log().since(0));
    views.reverse();
    views.truncate(filter.limit.unwrap_or(DEFAULT_DECISIONS));
    Json(Decisions { decisions: views })
}

/// New decisions as Server-Sent Events (`event: decision`, JSON data), as they happen.
async fn decision_stream(
    State(state): State<AdminState>,
    Query(filter): Query<DecisionFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = state.snapshot().log().last_id();
    let stream = futures_util::stream::unfold(
        (state, filter, start, Vec::<Event>::new()),
        |(state, filter, mut last, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok(event), (state, filter, last, pending)));
                }
                tokio::time::sleep(STREAM_POLL).await;
                let now = state.snapshot();
                let records = now.log().since(last);
                if let Some(newest) = records.last() {
                    last = newest.id;
                }
                pending = filter
                    .apply(records)
                    .iter()
                    .rev()
                    .filter_map(|v| Event::default().event("decision").json_data(v).ok())
                    .collect();
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `POST /reload`: re-reads the config file, as SIGHUP does.
async fn reload(State(state): State<AdminState>) -> Response {
    let Source::Live(live) = &state.source else {
        return not_here("reload");
    };
    match live.reload_and_log() {
        Ok(summary) => (StatusCode::OK, format!("reloaded: {summary}\n")).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}

async fn drain(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    set_drained(&state, &id, true)
}

async fn enable(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    set_drained(&state, &id, false)
}

/// Drain (no new requests; in-flight ones finish) or enable a backend.
fn set_drained(state: &AdminState, id: &str, drained: bool) -> Response {
    let Source::Live(live) = &state.source else {
        return not_here("drain and enable");
    };
    let proxy = live.current();
    let snapshot = Snapshot::of(&proxy);
    let found = snapshot.find(id);
    if found.is_empty() {
        return (StatusCode::NOT_FOUND, format!("no backend {id:?}\n")).into_response();
    }
    // A backend in several pools is one server: drained in each.
    for (pool, ep) in &found {
        if let Some(live_pool) = proxy.pool(&pool.name) {
            live_pool.set_drained(ep, drained);
        }
    }
    let (pool, ep) = found[0];
    Json(pool.view(ep, Instant::now())).into_response()
}

fn not_here(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("{what} is only available on alb's own admin listener\n"),
    )
        .into_response()
}

/// `GET /capacity`: each pool's capacity signal with its inputs.
#[derive(Serialize)]
struct Capacity {
    pools: Vec<CapacityView>,
}

async fn capacity(State(state): State<AdminState>) -> Response {
    let views: Vec<CapacityView> = match &state.source {
        Source::Live(live) => live
            .current()
            .pools
            .iter()
            .filter_map(|p| p.capacity().map(|c| c.view()))
            .collect(),
        Source::Fixed(_) => Vec::new(),
    };
    match views.is_empty() {
        false => Json(Capacity { pools: views }).into_response(),
        true => (
            StatusCode::NOT_FOUND,
            "no capacity signal: add an \"autoscale\" block to the config \
             (e.g. {\"backend_concurrency\": 4})\n",
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct Routes {
    routes: Vec<RouteView>,
}

/// `GET /routes`: each route's match, pools, split in force, canary state and faults.
async fn routes(State(state): State<AdminState>) -> Json<Routes> {
    let state = state.snapshot();
    Json(Routes {
        routes: state.routes.iter().map(|r| r.view()).collect(),
    })
}

#[derive(Serialize)]
struct Mirrors {
    routes: Vec<MirrorView>,
}

/// `GET /mirror`: each mirrored route's counts, latencies and last mismatches.
async fn mirror(State(state): State<AdminState>) -> Json<Mirrors> {
    let state = state.snapshot();
    Json(Mirrors {
        routes: state
            .routes
            .iter()
            .filter_map(|r| r.mirror().map(|m| m.view()))
            .collect(),
    })
}

/// `POST /routes/{name}/split` with `{"api": 50, "api-v2": 50}`: new weights, in force for
/// the next request; a rolled-back canary is watched again.
async fn set_split(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Source::Live(live) = &state.source else {
        return not_here("setting a split");
    };
    let weights: std::collections::BTreeMap<String, u32> = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected weights by pool, such as {{\"api\": 50, \"api-v2\": 50}}: {e}\n"),
            )
                .into_response()
        }
    };
    let proxy = live.current();
    let Some(route) = proxy.route_named(&name) else {
        return (StatusCode::NOT_FOUND, format!("no route named {name:?}\n")).into_response();
    };
    let weights: Vec<(String, u32)> = weights.into_iter().collect();
    match route.set_split(&weights) {
        Ok(()) => Json(route.view()).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}

async fn dashboard() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(include_str!("dashboard.html")),
    )
}
