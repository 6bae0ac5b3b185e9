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
    time::Instant,
};

use arc_swap::ArcSwap;
use axum::body::Body;
use futures_util::FutureExt;
use http::{HeaderName, Request, Response, StatusCode};
use serde::Serialize;
use tower::{discover::Change, discover::Discover, Service};

use crate::{
    client_ip::ClientIp, forward::ForwardError, guarded_body::GuardedBody,
    layer::backpressure::overloaded, local_reply::local_reply,
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

    /// Picks an index into a non-empty `set.endpoints`.
    pub fn pick(&self, set: &BackendSet, client: Option<std::net::IpAddr>) -> usize {
        match self {
            Strategy::RoundRobin(s) => s.pick(set),
            Strategy::LeastConn(s) => s.pick(set),
            Strategy::Sticky(s) => s.pick(set, client),
            Strategy::Adaptive(s) => s.pick(set),
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

    fn needs_client_ip(&self) -> bool {
        matches!(self, Strategy::Sticky(_))
    }
}

/// The backends in service, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// Healthy endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The smooth weighted round-robin cycle over `endpoints`.
    pub cycle: Vec<u32>,
}

impl BackendSet {
    fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        BackendSet {
            cycle: round_robin::smooth_cycle(&weights),
            endpoints,
        }
    }
}

/// State shared by every clone of [`Balance`]: the snapshot and the strategy.
#[derive(Debug)]
pub struct Balancer {
    set: ArcSwap<BackendSet>,
    strategy: Strategy,
    client_ip: ClientIp,
    max_connections: Option<usize>,
}

impl Balancer {
    /// A balancer fed by `discover`. Changes already waiting in the stream (the initial
    /// backends) are applied before this returns, so the first request sees them; later ones
    /// are applied by a background task.
    /// A backend with `max_connections` requests in flight is full: it is passed over, and
    /// when every backend is full the request is shed with `503`.
    pub fn new<D>(
        strategy: Strategy,
        client_ip: ClientIp,
        max_connections: Option<usize>,
        discover: D,
    ) -> Arc<Self>
    where
        D: Discover<Key = BackendId, Service = Arc<Endpoint>> + Send + Unpin + 'static,
        D::Error: fmt::Display,
    {
        let balancer = Arc::new(Balancer {
            set: ArcSwap::from_pointee(BackendSet::default()),
            strategy,
            client_ip,
            max_connections,
        });
        let mut discover = discover;
        let mut members = BTreeMap::new();
        let mut changed = false;
        while let Some(Some(change)) = poll_discover(&mut discover).now_or_never() {
            changed |= apply(&mut members, change);
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
                if apply(&mut members, change) {
                    balancer.publish(&members);
                }
            }
        });
        balancer
    }

    fn publish(&self, members: &BTreeMap<BackendId, Arc<Endpoint>>) {
        self.set.store(Arc::new(BackendSet::new(
            members.values().cloned().collect(),
        )));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
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

fn apply(
    members: &mut BTreeMap<BackendId, Arc<Endpoint>>,
    change: Change<BackendId, Arc<Endpoint>>,
) -> bool {
    match change {
        Change::Insert(id, ep) => members.insert(id, ep).is_none(),
        Change::Remove(id) => members.remove(&id).is_some(),
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

/// The balancing service: picks a backend, tracks the request, wraps the forwarder `S`.
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

impl<S, B, RB> Service<Request<B>> for Balance<S>
where
    S: Service<Routed<B>, Response = Response<RB>, Error = ForwardError>,
    S::Future: Send + 'static,
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
        let balancer = &self.balancer;
        let set = balancer.set.load();
        if set.endpoints.is_empty() {
            return Box::pin(std::future::ready(Ok(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy backend",
            ))));
        }
        let client = if balancer.strategy.needs_client_ip() {
            balancer.client_ip.resolve(&request)
        } else {
            None
        };
        let mut endpoint = &set.endpoints[balancer.strategy.pick(&set, client)];
        if let Some(max) = balancer.max_connections {
            if endpoint.in_flight() >= max {
                // The strategy's choice is full: take the least busy one with room, if any.
                match set
                    .endpoints
                    .iter()
                    .filter(|e| e.in_flight() < max)
                    .min_by_key(|e| e.in_flight())
                {
                    Some(e) => endpoint = e,
                    None => {
                        let reply = overloaded(format_args!(
                            "overloaded: every backend has {max} requests in flight"
                        ));
                        return Box::pin(std::future::ready(Ok(reply)));
                    }
                }
            }
        }
        let guard = endpoint.start();
        let endpoint = endpoint.clone();
        let response = self.inner.call(Routed {
            request,
            endpoint: endpoint.clone(),
        });
        Box::pin(async move {
            let result = response.await;
            let now = Instant::now();
            let latency = now.saturating_duration_since(guard.started());
            let mut response = match result {
                Ok(response) => {
                    let failed = response.status().is_server_error();
                    endpoint.record(latency, failed, now);
                    if failed {
                        endpoint.metrics.error("status_5xx");
                    }
                    response.map(|body| Body::new(GuardedBody::new(body, guard)))
                }
                Err(error) => {
                    endpoint.record(latency, true, now);
                    endpoint.metrics.error(error.kind());
                    error.into_response(endpoint.name())
                }
            };
            endpoint.metrics.request(response.status());
            response
                .headers_mut()
                .insert(X_ALB_BACKEND.clone(), endpoint.header_value.clone());
            Ok(response)
        })
    }
}
