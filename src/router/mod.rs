//! Routes and pools: which pool a request goes to, and the experiments on the way.
//!
//! ```text
//!  request ─► Router: first route whose match holds (matcher)   no match ─► 404 `alb:`
//!             └─► Fault (the route's injected delays and aborts, layer::fault)
//!                 └─► RouteTarget: pool, or weighted choice of pool (split)
//!                      ├─ mirror: a copy to the mirror pool, fire-and-forget (mirror)
//!                      ├─► the pool's routing (pick, retry, forward: `Route`)
//!                      └─ canary guard: the answer tallied, the canary judged (canary)
//!             ◄─ x-alb-route, x-alb-pool
//! ```
//!
//! Routes are tried in config order; the first match wins (as nginx `location`s with
//! prefixes are not, but as Envoy's and HAProxy's `use_backend` rules are). The route table
//! is built once per config (a reload builds a new one); per route, the split, its canary
//! guard and its mirror task are shared by the listeners' stacks. A reload keeps a route's
//! split weights and canary state when its `split` and `canary` settings did not change, so
//! a live weight change or a rollback survives an unrelated reload.
//!
//! The router is generic over the pool's service, so it does not depend on how a pool
//! routes (the `route` module's `Route` in the binary).

pub mod canary;
pub mod matcher;
pub mod mirror;
pub mod split;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::body::Body;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use serde::Serialize;
use tower::{Layer, Service};

pub use canary::{CanaryConfig, CanaryGuard, CanaryState, CanaryView};
pub use matcher::{HostMatch, RouteMatch};
pub use mirror::{Mirror, MirrorConfig, MirrorService, MirrorView};
pub use split::{Split, SplitError};

use crate::{
    decision::RouteName,
    layer::fault::{Fault, FaultConfig, FaultLayer},
    local_reply::local_reply,
    telemetry::ROUTE_NOT_FOUND_TOTAL,
};

/// Response header naming the route that matched.
pub static X_ALB_ROUTE: HeaderName = HeaderName::from_static("x-alb-route");
/// Response header naming the pool that served.
pub static X_ALB_POOL: HeaderName = HeaderName::from_static("x-alb-pool");

/// One route as configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// The route's name (`x-alb-route`, metrics, `/routes`).
    pub name: String,
    /// Which requests it takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Where they go.
    #[serde(flatten)]
    pub target: RouteTarget,
    /// The canary guard of a split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryConfig>,
    /// Copies to another pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Injected delays and aborts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTarget {
    /// One pool.
    Pool(String),
    /// Pools by weight.
    Split(Vec<SplitTarget>),
}

/// One pool of a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitTarget {
    /// The pool.
    pub pool: String,
    /// Its relative share.
    pub weight: u32,
}

impl RouteTarget {
    /// The pools, in config order.
    pub fn pools(&self) -> Vec<&str> {
        match self {
            RouteTarget::Pool(p) => vec![p.as_str()],
            RouteTarget::Split(targets) => targets.iter().map(|t| t.pool.as_str()).collect(),
        }
    }
}

/// A route's state, shared by the listeners' stacks.
#[derive(Debug)]
pub struct RouteState {
    /// The config it was built from.
    pub config: RouteConfig,
    name: Arc<str>,
    name_header: HeaderValue,
    /// Global pool index and `x-alb-pool` value of each target, in config order.
    targets: Vec<(usize, HeaderValue)>,
    split: Option<Arc<Split>>,
    canary: Option<Arc<CanaryGuard>>,
    mirror: Option<Arc<Mirror>>,
}

/// How `/routes` shows a route.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Name.
    pub name: String,
    /// Its match.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Its pools.
    pub pools: Vec<String>,
    /// The weights in force, by pool (a split only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitTarget>>,
    /// The canary's state and window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    /// The mirror's settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// The injected faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
}

/// Why a live split change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetSplitError {
    /// No such route.
    #[error("no route named {0:?}")]
    NoRoute(String),
    /// The route sends to one pool.
    #[error("route {0:?} has no split (it sends to one pool)")]
    NotSplit(String),
    /// A pool not in the split, or one of the split missing.
    #[error("weights must name exactly the split's pools {expected:?}; got {got:?}")]
    Pools {
        /// The split's pools.
        expected: Vec<String>,
        /// The pools given.
        got: Vec<String>,
    },
    /// Weights refused.
    #[error(transparent)]
    Weights(#[from] SplitError),
}

// === impl RouteState ===

impl RouteState {
    /// Builds a route's state. `pool_index` gives a pool's global index by name (the config
    /// was validated, so every name exists); `mirror` is the mirror pool's routing. A
    /// `previous` route of the same name with the same split and canary settings hands over
    /// its split (weights in force) and canary guard.
    pub fn new(
        config: RouteConfig,
        pool_index: impl Fn(&str) -> usize,
        mirror: Option<MirrorService>,
        previous: Option<&RouteState>,
    ) -> Result<Arc<RouteState>, SplitError> {
        let targets = config
            .target
            .pools()
            .into_iter()
            .map(|p| {
                (
                    pool_index(p),
                    HeaderValue::from_str(p).unwrap_or(HeaderValue::from_static("-")),
                )
            })
            .collect();
        let same = previous.filter(|p| {
            p.config.name == config.name
                && p.config.target == config.target
                && p.config.canary == config.canary
        });
        let split = match (&config.target, same) {
            (RouteTarget::Pool(_), _) => None,
            (RouteTarget::Split(_), Some(p)) => p.split.clone(),
            (RouteTarget::Split(t), None) => {
                Some(Split::new(&t.iter().map(|t| t.weight).collect::<Vec<_>>())?)
            }
        };
        let canary = match (&config.canary, &split, same) {
            (Some(_), Some(_), Some(p)) if p.canary.is_some() => p.canary.clone(),
            (Some(c), Some(split), _) => {
                let index = config
                    .target
                    .pools()
                    .iter()
                    .position(|p| *p == c.pool)
                    .unwrap_or(0);
                Some(Arc::new(CanaryGuard::new(
                    &config.name,
                    c.clone(),
                    index,
                    split.clone(),
                )))
            }
            _ => None,
        };
        let mirror = match (&config.mirror, mirror) {
            (Some(c), Some(service)) => Some(Mirror::start(&config.name, c.clone(), service)),
            _ => None,
        };
        Ok(Arc::new(RouteState {
            name: config.name.as_str().into(),
            name_header: HeaderValue::from_str(&config.name)
                .unwrap_or(HeaderValue::from_static("-")),
            targets,
            split,
            canary,
            mirror,
            config,
        }))
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's mirror, if it has one.
    pub fn mirror(&self) -> Option<&Arc<Mirror>> {
        self.mirror.as_ref()
    }

    /// Sets the split's weights by pool name; a rolled-back canary is watched again.
    pub fn set_split(&self, weights: &[(String, u32)]) -> Result<(), SetSplitError> {
        let Some(split) = &self.split else {
            return Err(SetSplitError::NotSplit(self.config.name.clone()));
        };
        let pools = self.config.target.pools();
        let mut ordered = Vec::with_capacity(pools.len());
        for pool in &pools {
            match weights.iter().find(|(p, _)| p == pool) {
                Some((_, w)) => ordered.push(*w),
                None => break,
            }
        }
        if ordered.len() != pools.len() || weights.len() != pools.len() {
            return Err(SetSplitError::Pools {
                expected: pools.iter().map(|p| (*p).to_owned()).collect(),
                got: weights.iter().map(|(p, _)| p.clone()).collect(),
            });
        }
        split.set(&ordered)?;
        if let Some(canary) = &self.canary {
            canary.reset();
        }
        tracing::info!(route = %self.config.name, ?weights, "split set");
        Ok(())
    }

    /// How `/routes` shows it.
    pub fn view(&self) -> RouteView {
        let pools: Vec<String> = self
            .config
            .target
            .pools()
            .into_iter()
            .map(str::to_owned)
            .collect();
        RouteView {
            name: self.config.name.clone(),
            matcher: self.config.matcher.clone(),
            split: self.split.as_ref().map(|s| {
                pools
                    .iter()
                    .zip(s.weights())
                    .map(|(pool, weight)| SplitTarget {
                        pool: pool.clone(),
                        weight,
                    })
                    .collect()
            }),
            pools,
            canary: self.canary.as_ref().map(|c| c.view()),
            mirror: self.config.mirror.clone(),
            fault: self.config.fault.clone(),
        }
    }
}

// === impl RouteTargetService ===

/// One route's way to its pools: split, mirror, canary guard, `x-alb-pool`.
#[derive(Debug, Clone)]
pub struct RouteTargetService<S> {
    route: Arc<RouteState>,
    /// Every pool's service, by global pool index.
    pools: Arc<[S]>,
}

/// The boxed future of the router's services.
pub type RouterFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for RouteTargetService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<AddHeader<S::Future>, RouterFuture>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Pools' services are always ready (they answer refusals themselves).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let route = &self.route;
        let target = route.split.as_ref().map_or(0, |s| s.choose());
        let (pool, pool_header) = route.targets[target].clone();
        let mut service = self.pools[pool].clone();
        request
            .extensions_mut()
            .insert(RouteName(route.name.clone()));
        let mirror = route.mirror.as_ref().filter(|m| m.sample()).cloned();
        if mirror.is_none() && route.canary.is_none() {
            // Nothing to do after the answer but name the pool: no box, no task.
            return Either::Left(AddHeader::new(
                service.call(request),
                &X_ALB_POOL,
                pool_header,
            ));
        }
        let route = route.clone();
        Either::Right(Box::pin(async move {
            let (request, primary) = match &mirror {
                Some(mirror) => match mirror.copy(request).await {
                    Ok((request, copy)) => (request, copy.and_then(|c| mirror.send(c))),
                    Err(reply) => return Ok(reply),
                },
                None => (request, None),
            };
            let started = Instant::now();
            let Ok(mut response) = service.call(request).await;
            let answered = Instant::now();
            let latency = answered.saturating_duration_since(started);
            if let Some(canary) = &route.canary {
                canary.observe(
                    target,
                    response.status().is_server_error(),
                    latency,
                    answered,
                );
            }
            response
                .headers_mut()
                .insert(X_ALB_POOL.clone(), pool_header);
            if let Some(done) = primary {
                let status = response.status().as_u16();
                response = response
                    .map(|body| Body::new(mirror::HashingBody::new(body, status, latency, done)));
                // An empty body may never be polled: end it now, so the hash is sent.
                if response.body().is_end_stream() {
                    let (parts, body) = response.into_parts();
                    let bytes = http_body_util::BodyExt::collect(body)
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    response = Response::from_parts(parts, Body::from(bytes));
                }
            }
            Ok(response)
        }))
    }
}

pin_project_lite::pin_project! {
    /// An answer with one more header (`x-alb-route`, `x-alb-pool`), without a box.
    pub struct AddHeader<F> {
        #[pin]
        inner: F,
        header: Option<(&'static HeaderName, HeaderValue)>,
    }
}

impl<F> AddHeader<F> {
    fn new(inner: F, name: &'static HeaderName, value: HeaderValue) -> Self {
        AddHeader {
            inner,
            header: Some((name, value)),
        }
    }
}

impl<F> Future for AddHeader<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        if let Some((name, value)) = this.header.take() {
            response.headers_mut().insert(name.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}

// === impl Router ===

/// One route's service: its faults, then its way to its pools.
pub type RouteService<S> = Fault<RouteTargetService<S>>;

/// The router: the first matching route's service, or `404`.
#[derive(Debug, Clone)]
pub struct Router<S> {
    routes: Arc<[(Arc<RouteState>, RouteService<S>)]>,
}

impl<S> Router<S> {
    /// A router over `routes` (in order), sending to `pools` (by global pool index).
    pub fn new(routes: &[Arc<RouteState>], pools: Arc<[S]>) -> Self {
        Router {
            routes: routes
                .iter()
                .map(|route| {
                    let target = RouteTargetService {
                        route: route.clone(),
                        pools: pools.clone(),
                    };
                    let fault = FaultLayer::new(route.config.fault.clone(), &route.config.name);
                    (route.clone(), fault.layer(target))
                })
                .collect(),
        }
    }
}

impl<S> Service<Request<Body>> for Router<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        AddHeader<<RouteService<S> as Service<Request<Body>>>::Future>,
        std::future::Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some((route, service)) = self
            .routes
            .iter()
            .find(|(r, _)| r.config.matcher.matches(&request))
        else {
            metrics::counter!(ROUTE_NOT_FOUND_TOTAL).increment(1);
            let reply = local_reply(StatusCode::NOT_FOUND, "no route matches this request");
            return Either::Right(std::future::ready(Ok(reply)));
        };
        // Every layer of a route is always ready, so a clone is as good as a ready one; the
        // answer is named by a small future, not a boxed one.
        let future = service.clone().call(request);
        Either::Left(AddHeader::new(
            future,
            &X_ALB_ROUTE,
            route.name_header.clone(),
        ))
    }
}
