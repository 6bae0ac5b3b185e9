//! The balancer: which backend gets this request.
//!
//! ```text
//!   Discover stream ──► apply changes ──► ArcSwap<BackendSet> (immutable snapshot)
//!   (config, health)                              │ load, no lock
//!   request ──► Balance::call ──► Strategy::pick(snapshot) ──► Endpoint::start (in flight +1)
//!                                 ──► inner service (the forwarder) with Routed { request, endpoint }
//!                                 ◄── response: record latency / failure, body carries InFlight
//! ```
//!
//! Selection (the strategies, one file each), state (`endpoint`) and discovery (`discover`,
//! fed by the health checker) are kept apart, as in pingora-load-balancing. The `Balance`
//! service is a cheap clone of an `Arc`; requests read the current snapshot through
//! `arc_swap` and never block on the task that applies changes.

pub mod adaptive;
pub mod discover;
pub mod endpoint;
pub mod ewma;
pub mod least_conn;
pub mod round_robin;
pub mod sticky;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use axum::body::Body;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use serde::Serialize;
use tower::{discover::Change, discover::Discover, Service};

use crate::{
    client_ip::ClientIp,
    decision::{self, mask_bit, CandidateState, DecisionLog, DecisionRecord},
    forward::ForwardError,
    guarded_body::GuardedBody,
    layer::backpressure::overloaded,
    local_reply::local_reply,
    outlier::OutlierDetector,
    prometheus::{RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL, SHADOW_DECISIONS_TOTAL},
    retry::{self, RetryBudget},
};
use endpoint::{BackendId, Endpoint};

/// Response header naming the backend that served a request.
pub static X_ALB_BACKEND: HeaderName = HeaderName::from_static("x-alb-backend");

/// The strategies, as named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Strict (smooth weighted) rotation.
    RoundRobin,
    /// Fewest requests in flight.
    LeastConn,
    /// Client-IP affinity by rendezvous hashing.
    Sticky,
    /// Peak-EWMA x in flight, power of two choices.
    Adaptive,
}

impl StrategyKind {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::RoundRobin,
        StrategyKind::LeastConn,
        StrategyKind::Sticky,
        StrategyKind::Adaptive,
    ];
    /// What the config accepts, for error messages.
    pub const EXPECTED: &'static str =
        "one of \"round_robin\", \"least_conn\", \"sticky\", \"adaptive\"";

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConn => "least_conn",
            StrategyKind::Sticky => "sticky",
            StrategyKind::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

/// What a strategy compared to make one pick: up to two candidates (set indices) with the
/// values compared, and for sticky the client's home backend. Filled on every pick (a few
/// stores, no allocation) so every decision can be explained.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickTrace {
    sampled: [(usize, f64); 2],
    len: u8,
    /// Sticky: the rendezvous winner among every known backend, healthy or not.
    pub sticky_home: Option<BackendId>,
}

impl PickTrace {
    /// Notes a compared candidate (the first two are kept).
    pub fn sample(&mut self, index: usize, score: f64) {
        if usize::from(self.len) < self.sampled.len() {
            self.sampled[usize::from(self.len)] = (index, score);
            self.len += 1;
        }
    }

    /// The compared candidates, as (set index, value).
    pub fn sampled(&self) -> &[(usize, f64)] {
        &self.sampled[..usize::from(self.len)]
    }
}

/// A strategy with its state.
#[derive(Debug)]
pub enum Strategy {
    /// See [`round_robin`].
    RoundRobin(round_robin::RoundRobin),
    /// See [`least_conn`].
    LeastConn(least_conn::LeastConn),
    /// See [`sticky`].
    Sticky(sticky::Sticky),
    /// See [`adaptive`].
    Adaptive(adaptive::Adaptive),
}

impl Strategy {
    /// A fresh strategy of this kind.
    pub fn new(kind: StrategyKind) -> Self {
        match kind {
            StrategyKind::RoundRobin => Strategy::RoundRobin(Default::default()),
            StrategyKind::LeastConn => Strategy::LeastConn(Default::default()),
            StrategyKind::Sticky => Strategy::Sticky(Default::default()),
            StrategyKind::Adaptive => Strategy::Adaptive(Default::default()),
        }
    }

    /// The config name of this strategy.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::RoundRobin(_) => StrategyKind::RoundRobin,
            Strategy::LeastConn(_) => StrategyKind::LeastConn,
            Strategy::Sticky(_) => StrategyKind::Sticky,
            Strategy::Adaptive(_) => StrategyKind::Adaptive,
        }
    }

    /// Picks an index into a non-empty `set.endpoints`, noting what it compared in `trace`.
    pub fn pick(
        &self,
        set: &BackendSet,
        client: Option<std::net::IpAddr>,
        trace: &mut PickTrace,
    ) -> usize {
        match self {
            Strategy::RoundRobin(s) => s.pick(set, trace),
            Strategy::LeastConn(s) => s.pick(set, trace),
            Strategy::Sticky(s) => s.pick(set, client, trace),
            Strategy::Adaptive(s) => s.pick(set, trace),
        }
    }

    /// The strategy's load measure for one backend (lower is preferred), for metrics and the
    /// admin routes. Round robin and sticky do not measure load; they report in-flight requests.
    pub fn score(&self, ep: &Endpoint, now: Instant) -> f64 {
        match self {
            Strategy::Adaptive(_) => adaptive::cost(ep, now),
            Strategy::LeastConn(_) => ep.in_flight() as f64 / f64::from(ep.weight),
            Strategy::RoundRobin(_) | Strategy::Sticky(_) => ep.in_flight() as f64,
        }
    }
}

/// The backends in service, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// Healthy endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Every endpoint ever inserted, in service or not, in config order (sticky's homes).
    pub known: Vec<Arc<Endpoint>>,
    /// The smooth weighted round-robin cycle over `endpoints`.
    pub cycle: Vec<u32>,
    /// Known endpoints that are out of service, as a mask of ids.
    pub excluded: u64,
    /// Every known endpoint has the same weight (sticky can then skip logarithms).
    pub uniform_weights: bool,
}

impl BackendSet {
    /// A snapshot of `endpoints` (in service) out of `known` (all).
    pub fn new(endpoints: Vec<Arc<Endpoint>>, known: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let healthy: u64 = endpoints
            .iter()
            .map(|e| mask_bit(e.id))
            .fold(0, |a, b| a | b);
        let all: u64 = known.iter().map(|e| mask_bit(e.id)).fold(0, |a, b| a | b);
        let uniform_weights = known.windows(2).all(|w| w[0].weight == w[1].weight);
        BackendSet {
            cycle: round_robin::smooth_cycle(&weights),
            endpoints,
            known,
            excluded: all & !healthy,
            uniform_weights,
        }
    }
}

/// How a [`Balancer`] behaves besides its strategy.
#[derive(Debug, Clone, Default)]
pub struct BalancerOptions {
    /// Resolves the client address (sticky, decision records).
    pub client_ip: ClientIp,
    /// A backend with this many requests in flight is full: it is passed over, and when
    /// every backend is full the request is shed with `503`.
    pub max_connections: Option<usize>,
    /// Answer `x-alb-explain: 1` with an `x-alb-decision` header.
    pub explain: bool,
    /// Also evaluate the other strategies on every request, without acting on them.
    pub shadow: bool,
    /// Passive outlier detection, fed with every request's outcome.
    pub outlier: Option<Arc<OutlierDetector>>,
    /// Retries of requests that never reached a backend, and their budget.
    pub retry: Option<Arc<RetryBudget>>,
    /// The decision log to write to (a reload hands the old one on); a new one if `None`.
    pub decisions: Option<Arc<DecisionLog>>,
}

/// Shadow strategies and their agreement counters.
#[derive(Debug)]
struct Shadows {
    strategies: Vec<(usize, Strategy)>,
    agree: Vec<[metrics::Counter; 2]>,
}

/// State shared by every clone of [`Balance`]: the snapshot, the strategy, the decision log.
#[derive(Debug)]
pub struct Balancer {
    set: ArcSwap<BackendSet>,
    strategy: Strategy,
    options: BalancerOptions,
    decisions: Arc<DecisionLog>,
    shadows: Option<Shadows>,
}

impl Balancer {
    /// A balancer fed by `discover`. Changes already waiting in the stream (the initial
    /// backends) are applied before this returns, so the first request sees them; later ones
    /// are applied by a background task.
    pub fn new<D>(kind: StrategyKind, options: BalancerOptions, discover: D) -> Arc<Self>
    where
        D: Discover<Key = BackendId, Service = Arc<Endpoint>> + Send + Unpin + 'static,
        D::Error: fmt::Display,
    {
        let shadows = options.shadow.then(|| {
            let others: Vec<(usize, Strategy)> = StrategyKind::ALL
                .iter()
                .enumerate()
                .filter(|(_, k)| **k != kind)
                .map(|(i, k)| (i, Strategy::new(*k)))
                .collect();
            let agree = others
                .iter()
                .map(|(_, s)| {
                    [false, true].map(|agrees| {
                        metrics::counter!(SHADOW_DECISIONS_TOTAL,
                            "strategy" => s.kind().as_str(), "agrees" => if agrees { "true" } else { "false" })
                    })
                })
                .collect();
            Shadows {
                strategies: others,
                agree,
            }
        });
        let decisions = options.decisions.clone().unwrap_or_else(DecisionLog::new);
        let balancer = Arc::new(Balancer {
            set: ArcSwap::from_pointee(BackendSet::default()),
            strategy: Strategy::new(kind),
            options,
            decisions,
            shadows,
        });
        let mut discover = discover;
        let mut members = Members::default();
        let mut changed = false;
        while let Some(Some(change)) = poll_discover(&mut discover).now_or_never() {
            changed |= members.apply(change);
        }
        if changed {
            balancer.publish(&members);
        }
        let weak = Arc::downgrade(&balancer);
        tokio::spawn(async move {
            while let Some(change) = poll_discover(&mut discover).await {
                let Some(balancer) = weak.upgrade() else {
                    return;
                };
                if members.apply(change) {
                    balancer.publish(&members);
                }
            }
        });
        balancer
    }

    fn publish(&self, members: &Members) {
        self.set.store(Arc::new(BackendSet::new(
            members.healthy.values().cloned().collect(),
            members.known.values().cloned().collect(),
        )));
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The latest decisions.
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// Evaluates the shadow strategies, recording their choices and agreement.
    fn shadow(
        &self,
        set: &BackendSet,
        client: Option<std::net::IpAddr>,
        record: &mut DecisionRecord,
    ) {
        let Some(shadows) = &self.shadows else { return };
        for ((kind_index, strategy), counters) in shadows.strategies.iter().zip(&shadows.agree) {
            let mut trace = PickTrace::default();
            let id = set.endpoints[strategy.pick(set, client, &mut trace)].id as u32;
            record.shadow[*kind_index] = Some(id);
            counters[usize::from(Some(id) == record.chosen)].increment(1);
        }
    }
}

/// The discovery task's view: healthy members and every endpoint ever seen.
#[derive(Debug, Default)]
struct Members {
    healthy: BTreeMap<BackendId, Arc<Endpoint>>,
    known: BTreeMap<BackendId, Arc<Endpoint>>,
}

impl Members {
    fn apply(&mut self, change: Change<BackendId, Arc<Endpoint>>) -> bool {
        match change {
            Change::Insert(id, ep) => {
                self.known.insert(id, ep.clone());
                self.healthy.insert(id, ep).is_none()
            }
            Change::Remove(id) => self.healthy.remove(&id).is_some(),
        }
    }
}

async fn poll_discover<D>(discover: &mut D) -> Option<Change<D::Key, D::Service>>
where
    D: Discover + Unpin,
    D::Error: fmt::Display,
{
    match futures_util::future::poll_fn(|cx| Pin::new(&mut *discover).poll_discover(cx)).await {
        Some(Ok(change)) => Some(change),
        Some(Err(e)) => {
            tracing::error!(error = %e, "backend discovery failed; keeping the last backend set");
            None
        }
        None => None,
    }
}

/// A request with the backend chosen for it: what the forwarder receives.
#[derive(Debug)]
pub struct Routed<B> {
    /// The client's request.
    pub request: Request<B>,
    /// Where it goes.
    pub endpoint: Arc<Endpoint>,
}

/// The balancing service: picks a backend, tracks the request, records the decision, wraps
/// the forwarder `S`.
#[derive(Debug, Clone)]
pub struct Balance<S> {
    balancer: Arc<Balancer>,
    inner: S,
}

impl<S> Balance<S> {
    /// Balances requests over `balancer`'s set, sending each through `inner`.
    pub fn new(balancer: Arc<Balancer>, inner: S) -> Self {
        Balance { balancer, inner }
    }
}

/// The boxed future of [`Balance`].
pub type BalanceFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Request header asking for an explanation (when the config allows it).
pub static X_ALB_EXPLAIN: HeaderName = HeaderName::from_static("x-alb-explain");
/// Response header carrying the explanation.
pub static X_ALB_DECISION: HeaderName = HeaderName::from_static("x-alb-decision");

impl Balancer {
    fn wants_explanation<B>(&self, request: &Request<B>) -> bool {
        self.options.explain
            && request
                .headers()
                .get(&X_ALB_EXPLAIN)
                .is_some_and(|v| v.as_bytes() == b"1")
    }

    /// Every healthy candidate's numbers, read before the chosen one counts this request.
    fn candidates(&self, set: &BackendSet) -> Vec<CandidateState> {
        let now = Instant::now();
        set.endpoints
            .iter()
            .map(|ep| CandidateState {
                id: ep.id,
                name: ep.name().to_owned(),
                ewma_secs: ep.ewma_secs(now),
                in_flight: ep.in_flight(),
                weight: ep.weight,
                score: self.strategy.score(ep, now),
            })
            .collect()
    }

    /// Another in-service backend than `failed` for a retry: the strategy's choice if it
    /// differs within a few tries, else the first other one.
    fn retry_target(
        &self,
        failed: &Endpoint,
        client: Option<std::net::IpAddr>,
    ) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        let others = || set.endpoints.iter().filter(|e| e.id != failed.id);
        others().next()?;
        for _ in 0..3 {
            let ep = &set.endpoints[self.strategy.pick(&set, client, &mut PickTrace::default())];
            if ep.id != failed.id {
                return Some(ep.clone());
            }
        }
        others().next().cloned()
    }

    fn observe(&self, endpoint: &Arc<Endpoint>, streak: u32, what: &dyn fmt::Display) {
        if let Some(detector) = &self.options.outlier {
            if streak > 0 {
                detector.observe(endpoint, streak, &what.to_string());
            }
        }
    }

    /// Logs the decision and, if asked, explains it in the response.
    fn finish(
        &self,
        mut record: DecisionRecord,
        latency: Duration,
        explanation: Option<Vec<CandidateState>>,
        response: &mut Response<Body>,
    ) {
        record.status = response.status().as_u16();
        record.latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if let Some(candidates) = explanation {
            let set = self.set.load();
            let text = decision::explain(&record, &candidates, &set.known);
            if let Ok(value) = HeaderValue::from_str(&text) {
                response.headers_mut().insert(X_ALB_DECISION.clone(), value);
            }
        }
        self.decisions.push(record);
    }
}

/// What is needed to send a request again: everything but the body, which must be empty.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    peer: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
}

impl Replay {
    fn of<B>(request: &Request<B>) -> Self {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            peer: request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .copied(),
        }
    }

    fn request<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        request
    }
}

impl<S, B, RB> Service<Request<B>> for Balance<S>
where
    S: Service<Routed<B>, Response = Response<RB>, Error = ForwardError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Default + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BalanceFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The forwarder's error type is for requests only; readiness cannot fail.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let balancer = self.balancer.clone();
        let started = Instant::now();
        let set = balancer.set.load();
        let client = balancer.options.client_ip.resolve(&request);
        let mut record = DecisionRecord::new(balancer.strategy.kind(), client, started);
        record.healthy = u16::try_from(set.endpoints.len()).unwrap_or(u16::MAX);
        record.excluded = set.excluded;
        let explanation = balancer
            .wants_explanation(&request)
            .then(|| balancer.candidates(&set));
        if set.endpoints.is_empty() {
            let mut reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend");
            balancer.finish(record, started.elapsed(), explanation, &mut reply);
            return Box::pin(std::future::ready(Ok(reply)));
        }
        let mut trace = PickTrace::default();
        let mut endpoint = &set.endpoints[balancer.strategy.pick(&set, client, &mut trace)];
        for (index, score) in trace.sampled() {
            let id = set.endpoints[*index].id as u32;
            record.sampled[usize::from(record.sampled_len)] = decision::Sampled {
                backend: id,
                score: *score,
            };
            record.sampled_len += 1;
        }
        record.sticky_home = trace.sticky_home.map(|h| h as u32);
        if let Some(max) = balancer.options.max_connections {
            if endpoint.in_flight() >= max {
                // The strategy's choice is full: take the least busy one with room, if any.
                for ep in set.endpoints.iter().filter(|e| e.in_flight() >= max) {
                    record.full |= mask_bit(ep.id);
                }
                match set
                    .endpoints
                    .iter()
                    .filter(|e| e.in_flight() < max)
                    .min_by_key(|e| e.in_flight())
                {
                    Some(e) => endpoint = e,
                    None => {
                        let mut reply = overloaded(format_args!(
                            "overloaded: every backend has {max} requests in flight"
                        ));
                        balancer.finish(record, started.elapsed(), explanation, &mut reply);
                        return Box::pin(std::future::ready(Ok(reply)));
                    }
                }
            }
        }
        record.chosen = Some(endpoint.id as u32);
        balancer.shadow(&set, client, &mut record);
        let budget = balancer.options.retry.clone();
        let replay = budget
            .as_ref()
            .filter(|b| {
                b.attempts() > 0
                    && retry::idempotent(request.method())
                    && request.body().is_end_stream()
            })
            .map(|_| Replay::of(&request));
        if let Some(b) = &budget {
            b.deposit();
        }
        let mut guard = endpoint.start_at(started);
        let mut endpoint = endpoint.clone();
        drop(set);
        let mut attempt = self.inner.call(Routed {
            request,
            endpoint: endpoint.clone(),
        });
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut retries_left = budget.as_ref().map_or(0, |b| b.attempts());
            let mut answered;
            let mut response = loop {
                let result = attempt.await;
                let now = Instant::now();
                answered = now;
                let latency = now.saturating_duration_since(guard.started());
                let error = match result {
                    Ok(response) => {
                        let failed = response.status().is_server_error();
                        let streak = endpoint.record(latency, failed, now);
                        if failed {
                            endpoint.metrics.error("status_5xx");
                            balancer.observe(&endpoint, streak, &response.status());
                        }
                        break response.map(|body| Body::new(GuardedBody::new(body, guard)));
                    }
                    Err(error) => error,
                };
                let streak = endpoint.record(latency, true, now);
                endpoint.metrics.error(error.kind());
                balancer.observe(&endpoint, streak, &error);
                let next = match (&replay, &budget) {
                    (Some(_), Some(budget)) if retries_left > 0 && error.retryable() => {
                        match balancer.retry_target(&endpoint, client) {
                            Some(next) if budget.withdraw() => Some(next),
                            Some(_) => {
                                metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).increment(1);
                                None
                            }
                            None => None,
                        }
                    }
                    _ => None,
                };
                let (Some(next), Some(replay)) = (next, &replay) else {
                    break error.into_response(endpoint.name());
                };
                retries_left -= 1;
                metrics::counter!(RETRIES_TOTAL, "reason" => error.kind()).increment(1);
                tracing::debug!(from = endpoint.name(), to = next.name(), %error, "retrying");
                record.retried_from = Some(endpoint.id as u32);
                record.chosen = Some(next.id as u32);
                guard = next.start();
                endpoint = next;
                let _ = tower::ServiceExt::ready(&mut inner).await;
                attempt = inner.call(Routed {
                    request: replay.request(),
                    endpoint: endpoint.clone(),
                });
            };
            endpoint.metrics.request(response.status());
            response
                .headers_mut()
                .insert(X_ALB_BACKEND.clone(), endpoint.header_value.clone());
            let latency = answered.saturating_duration_since(started);
            balancer.finish(record, latency, explanation, &mut response);
            Ok(response)
        })
    }
}
