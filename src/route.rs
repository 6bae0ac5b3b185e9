//! The routing service: one request's way through the balancer core, composed in one place.
//!
//! ```text
//!  request ─► pick (balance::Balancer::pick) ─► overflow (balance::overflow::check)
//!          ─► shadows (balance::shadow) ─► decision record (decision)
//!          ─► attempt: inner service (the forwarder) with Routed { request, endpoint }
//!               └─ outcome ─► endpoint load and EWMA, outlier detection (outlier)
//!               └─ failed before any response byte? ─► retry elsewhere within the budget (retry)
//!          ─► x-alb-backend, x-alb-decision, decision log
//! ```
//!
//! Each step is a plain function of its own module with its own unit tests; this file only
//! puts them in order. The record carries the backend set it was decided from and names
//! backends by stable id, so `x-alb-decision` and `/decisions` always name the backend that
//! `x-alb-backend` names, across reloads and health changes.

use std::{
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Service;

use crate::{
    balance::{
        endpoint::InFlight, overflow, shadow::Shadows, BackendId, BackendSet, Balancer, Endpoint,
        PickTrace, Routed,
    },
    client_ip::ClientIp,
    decision::{self, CandidateState, DecisionLog, DecisionRecord, InjectedFault, RouteName},
    forward::ForwardError,
    grpc::{self, WatchStatus},
    guarded_body::GuardedBody,
    headers::{X_ALB_BACKEND, X_ALB_DECISION, X_ALB_EXPLAIN, X_REQUEST_ID},
    local_reply::{local_reply, overloaded},
    outlier::OutlierDetector,
    retry::{Replay, RetryBudget},
    semantics::CLIENT_CLOSED_REQUEST,
    telemetry::{RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL},
};

/// How requests are routed besides the balancer's strategy.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
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
    /// Add a [`decision::Outcome`] to every response, for the access log and tracing.
    pub outcomes: bool,
    /// Include the strategy's `why` in the outcome (tracing puts it on spans).
    pub outcome_why: bool,
    /// Note each request's `x-request-id` in its record (the request-id layer is on, so
    /// the value is a sane, short one).
    pub request_ids: bool,
    /// The pool's name, noted in every record.
    pub pool: Option<Arc<str>>,
}

/// A failed gRPC call, as outlier detection names its cause.
struct GrpcFailure(u32);

impl std::fmt::Display for GrpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grpc-status {} {}", self.0, grpc::code_name(self.0))
    }
}

/// A decision record not logged yet. Dropped unfinished (the client went away, or the
/// connection was cut at shutdown, before the answer), it is logged with status 499, nginx's
/// "client closed request", so every decision shows in `/decisions`.
struct Unfinished {
    decisions: Arc<DecisionLog>,
    record: Option<DecisionRecord>,
    started: Instant,
}

impl Unfinished {
    fn get(&self) -> &DecisionRecord {
        self.record.as_ref().expect("taken only by take()")
    }

    fn get_mut(&mut self) -> &mut DecisionRecord {
        self.record.as_mut().expect("taken only by take()")
    }

    fn take(&mut self) -> DecisionRecord {
        self.record.take().expect("taken once")
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.status = CLIENT_CLOSED_REQUEST;
            record.latency_us =
                u32::try_from(self.started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.decisions.push(record);
        }
    }
}

/// What the pick and `max_connections` decided for one request.
#[derive(Debug)]
enum Choice {
    /// Nothing is in service.
    NoBackend,
    /// Every backend is at `max`.
    AllFull {
        trace: PickTrace,
        full: Box<[BackendId]>,
        max: usize,
    },
    /// This backend (an index into the set), passing over the `full` ones.
    Backend {
        index: usize,
        trace: PickTrace,
        full: Box<[BackendId]>,
    },
}

/// What every clone of [`Route`] shares: the balancer and the steps around its pick.
#[derive(Debug)]
pub struct Routing {
    balancer: Arc<Balancer>,
    client_ip: ClientIp,
    max_connections: Option<usize>,
    explain: bool,
    shadows: Option<Shadows>,
    outlier: Option<Arc<OutlierDetector>>,
    retry: Option<Arc<RetryBudget>>,
    decisions: Arc<DecisionLog>,
    outcomes: bool,
    outcome_why: bool,
    request_ids: bool,
    pool: Option<Arc<str>>,
}

// === impl Routing ===

impl Routing {
    /// Routing over `balancer` with `options`.
    pub fn new(balancer: Arc<Balancer>, options: RouteOptions) -> Arc<Self> {
        let shadows = options
            .shadow
            .then(|| Shadows::new(balancer.strategy().kind()));
        Arc::new(Routing {
            balancer,
            client_ip: options.client_ip,
            max_connections: options.max_connections,
            explain: options.explain,
            shadows,
            outlier: options.outlier,
            retry: options.retry,
            decisions: options.decisions.unwrap_or_else(DecisionLog::new),
            outcomes: options.outcomes,
            outcome_why: options.outcome_why,
            request_ids: options.request_ids,
            pool: options.pool,
        })
    }

    /// The balancer.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// The latest decisions.
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// The strategy's pick from `set`, then the overflow rule past `max_connections`.
    fn choose(&self, set: &BackendSet, client: Option<IpAddr>) -> Choice {
        let Some((index, trace)) = self.balancer.pick(set, client) else {
            return Choice::NoBackend;
        };
        let Some(max) = self.max_connections else {
            return Choice::Backend {
                index,
                trace,
                full: Box::default(),
            };
        };
        match overflow::check(set, index, max) {
            overflow::Overflow::Fits => Choice::Backend {
                index,
                trace,
                full: Box::default(),
            },
            overflow::Overflow::Spilled { to, full } => Choice::Backend {
                index: to,
                trace,
                full,
            },
            overflow::Overflow::AllFull { full } => Choice::AllFull { trace, full, max },
        }
    }

    fn wants_explanation<B>(&self, request: &Request<B>) -> bool {
        self.explain
            && request
                .headers()
                .get(&X_ALB_EXPLAIN)
                .is_some_and(|v| v.as_bytes() == b"1")
    }

    /// Records how an attempt on `endpoint` went: its load and latency estimate, its error
    /// counters, and outlier detection. Returns when it ended, whether it ejected the
    /// backend, and the response or the error to act on.
    ///
    /// A gRPC answer counts by its `grpc-status` (see [`crate::grpc`]): a trailers-only
    /// answer carries it in its headers and is recorded here; otherwise nothing is recorded
    /// yet, and [`Routing::observe_grpc`] records the call when its trailers arrive.
    fn observe<RB>(
        &self,
        endpoint: &Arc<Endpoint>,
        started: Instant,
        result: Result<Response<RB>, ForwardError>,
    ) -> (Instant, bool, Result<Response<RB>, ForwardError>) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        let failed = match &result {
            Ok(response) if grpc::is_grpc(response.headers()) => {
                match grpc::status(response.headers()) {
                    None if !response.status().is_server_error() => return (now, false, result),
                    code => response.status().is_server_error() || code.is_some_and(|c| c != 0),
                }
            }
            Ok(response) => response.status().is_server_error(),
            // The client's body was too large or malformed: nothing the backend did.
            Err(ForwardError::BodyTooLarge | ForwardError::ClientBody) => {
                return (now, false, result)
            }
            Err(_) => true,
        };
        let streak = endpoint.record(latency, failed, now);
        let ejected = match &result {
            Ok(response) if failed && !response.status().is_server_error() => {
                endpoint.metrics.error("grpc_status");
                let code = grpc::status(response.headers()).unwrap_or_default();
                self.feed_outlier(endpoint, streak, &GrpcFailure(code))
            }
            Ok(response) if failed => {
                endpoint.metrics.error("status_5xx");
                self.feed_outlier(endpoint, streak, &response.status())
            }
            Ok(_) => false,
            Err(error) => {
                endpoint.metrics.error(error.kind());
                self.feed_outlier(endpoint, streak, error)
            }
        };
        (now, ejected, result)
    }

    /// Records a gRPC call whose status came in its trailers (or never came: `None`, the
    /// stream broke or the client left, which says nothing about the backend). `latency` is
    /// the time to its response headers, as for any other request.
    fn observe_grpc(
        &self,
        endpoint: &Arc<Endpoint>,
        latency: std::time::Duration,
        code: Option<u32>,
        decision: u64,
    ) {
        let failed = code.is_some_and(|c| c != 0);
        let streak = endpoint.record(latency, failed, Instant::now());
        if let Some(code) = code {
            self.decisions.note_grpc_status(decision, code);
        }
        if failed {
            endpoint.metrics.error("grpc_status");
            let code = code.unwrap_or_default();
            if self.feed_outlier(endpoint, streak, &GrpcFailure(code)) {
                tracing::debug!(
                    backend = endpoint.name(),
                    code,
                    "ejected after gRPC failures"
                );
            }
        }
    }

    /// Tells outlier detection about a failure; returns whether it ejected the backend.
    fn feed_outlier(
        &self,
        endpoint: &Arc<Endpoint>,
        streak: u32,
        what: &dyn std::fmt::Display,
    ) -> bool {
        match &self.outlier {
            Some(detector) if streak > 0 => detector.observe(endpoint, streak, &what.to_string()),
            _ => false,
        }
    }

    /// Where a failed attempt goes next, if anywhere: only an error before any response
    /// byte, of a replayable request, with retries left, to another backend, within budget.
    fn retry_target(
        &self,
        set: &BackendSet,
        error: &ForwardError,
        failed: &Endpoint,
        client: Option<IpAddr>,
        replayable: bool,
        retries_left: u32,
    ) -> Option<Arc<Endpoint>> {
        let budget = self.retry.as_ref()?;
        if !replayable || retries_left == 0 || !error.retryable() {
            return None;
        }
        let next = self
            .balancer
            .pick_other(set, failed.id(), client, self.max_connections)?;
        if !budget.withdraw() {
            metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).increment(1);
            return None;
        }
        metrics::counter!(RETRIES_TOTAL, "reason" => error.kind()).increment(1);
        tracing::debug!(from = failed.name(), to = next.name(), %error, "retrying");
        Some(next)
    }

    /// Logs the decision and, if asked, explains it in the response; returns its id.
    fn finish(
        &self,
        mut record: DecisionRecord,
        latency: std::time::Duration,
        explanation: Option<Vec<CandidateState>>,
        response: &mut Response<Body>,
    ) -> u64 {
        record.status = response.status().as_u16();
        record.latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if let Some(candidates) = explanation {
            let text = decision::explain(&record, &candidates);
            if let Ok(value) = HeaderValue::from_str(&text) {
                response.headers_mut().insert(X_ALB_DECISION.clone(), value);
            }
        }
        self.decisions.push(record)
    }

    /// A request no backend gets: recorded, explained, answered at once.
    fn refuse(
        &self,
        record: DecisionRecord,
        started: Instant,
        explanation: Option<Vec<CandidateState>>,
        mut reply: Response<Body>,
    ) -> RouteFuture {
        let outcome = self.outcomes.then(|| decision::Outcome {
            decision_id: 0,
            backend: None,
            strategy: record.strategy,
            retried: false,
            ejected: false,
            upstream: std::time::Duration::ZERO,
            why: self
                .outcome_why
                .then(|| "no backend could take it".to_owned()),
            route: record.route.clone(),
            pool: record.pool.clone(),
        });
        let id = self.finish(record, started.elapsed(), explanation, &mut reply);
        if let Some(mut outcome) = outcome {
            outcome.decision_id = id;
            reply.extensions_mut().insert(outcome);
        }
        Box::pin(std::future::ready(Ok(reply)))
    }
}

/// The routing service: picks a backend, records and explains the decision, retries what
/// is safe to retry, and sends each attempt through the forwarder `S`.
#[derive(Debug, Clone)]
pub struct Route<S> {
    routing: Arc<Routing>,
    inner: S,
}

/// The boxed future of [`Route`].
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

// === impl Route ===

impl<S> Route<S> {
    /// Routes requests with `routing`, sending each attempt through `inner`.
    pub fn new(routing: Arc<Routing>, inner: S) -> Self {
        Route { routing, inner }
    }
}

/// One request's state between its attempts.
struct InFlightRequest<S> {
    inner: S,
    client: Option<IpAddr>,
    replay: Option<Replay>,
    endpoint: Arc<Endpoint>,
    guard: InFlight,
}

pin_project! {
    /// One routed request after its pick: its attempts (a failed one retried on another
    /// backend when safe), then the decision's record and the answer's `x-alb-*` headers.
    ///
    /// Written by hand rather than as an `async fn`: an `async fn` keeps its arguments and
    /// the locals they move into in separate slots of its state, so its first poll copied
    /// the forwarder's future, the decision record and the rest (callgrind: ten `memcpy`
    /// calls per GET). Here each lives in one field from the start.
    struct Attempts<S, B, RB>
    where
        S: Service<Routed<B>>,
    {
        #[pin]
        attempt: S::Future,
        routing: Arc<Routing>,
        // `None` once answered.
        state: Option<InFlightRequest<S>>,
        record: Unfinished,
        explanation: Option<Vec<CandidateState>>,
        started: Instant,
        retries_left: u32,
        ejected: bool,
        // A retry waits for the forwarder's readiness before its attempt starts.
        readying: bool,
        // When the last failed attempt ended.
        failed_at: Instant,
        _types: PhantomData<fn(B) -> RB>,
    }
}

impl<S, B, RB> Service<Request<B>> for Route<S>
where
    S: Service<Routed<B>, Response = Response<RB>, Error = ForwardError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Default + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The forwarder's error type is for requests only; readiness cannot fail.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> RouteFuture {
        let routing = self.routing.clone();
        let started = Instant::now();
        let set = routing.balancer.snapshot();
        let client = routing.client_ip.resolve(&request);
        let strategy = routing.balancer.strategy();
        let explanation = routing
            .wants_explanation(&request)
            .then(|| decision::candidates(&set, strategy));

        // 1-2. The strategy's pick, then max_connections.
        let choice = routing.choose(&set, client);

        // 3. Shadow strategies, for comparison only.
        let shadow = match (&routing.shadows, &choice) {
            (Some(shadows), Choice::Backend { index, .. }) => {
                shadows.evaluate(&set, client, set.endpoints[*index].id())
            }
            _ => [None; crate::balance::StrategyKind::ALL.len()],
        };

        // The record takes the snapshot: the one reference this request holds.
        let mut record = DecisionRecord::new(strategy.kind(), client, started, set);
        if routing.request_ids {
            // A copy: the received value is a slice of the connection's read buffer, which
            // the record, kept in the ring, would otherwise hold on to.
            record.request_id = request
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        }
        record.shadow = shadow;
        record.fault = request.extensions().get::<InjectedFault>().copied();
        record.route = request.extensions().get::<RouteName>().map(|r| r.0.clone());
        record.pool = routing.pool.clone();
        let index = match choice {
            Choice::NoBackend => {
                let reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend");
                return routing.refuse(record, started, explanation, reply);
            }
            Choice::AllFull { trace, full, max } => {
                record.note_trace(&trace);
                record.full = full;
                let reply = overloaded(format_args!(
                    "overloaded: every backend has {max} requests in flight"
                ));
                return routing.refuse(record, started, explanation, reply);
            }
            Choice::Backend { index, trace, full } => {
                record.note_trace(&trace);
                record.full = full;
                index
            }
        };
        let endpoint = record.set.endpoints[index].clone();
        record.chosen = Some(endpoint.id());

        // 4. What a retry would need, taken before the request is handed over.
        let replay = routing
            .retry
            .as_ref()
            .filter(|budget| budget.attempts() > 0)
            .and_then(|_| Replay::of(&mut request));
        if let Some(budget) = &routing.retry {
            budget.deposit();
        }

        // 5. The first attempt; the rest happens in the future.
        let guard = endpoint.start_at(started);
        let first = self.inner.call(Routed {
            request,
            endpoint: endpoint.clone(),
        });
        let state = InFlightRequest {
            inner: self.inner.clone(),
            client,
            replay,
            endpoint,
            guard,
        };
        let record = Unfinished {
            decisions: routing.decisions.clone(),
            record: Some(record),
            started,
        };
        let retries_left = routing.retry.as_ref().map_or(0, |b| b.attempts());
        Box::pin(Attempts {
            attempt: first,
            routing,
            state: Some(state),
            record,
            explanation,
            started,
            retries_left,
            ejected: false,
            readying: false,
            failed_at: started,
            _types: PhantomData,
        })
    }
}

// === impl Attempts ===

impl<S, B, RB> Future for Attempts<S, B, RB>
where
    S: Service<Routed<B>, Response = Response<RB>, Error = ForwardError>,
    B: Default,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let state = this.state.as_mut().expect("polled after it answered");
        let (answered, outcome) = loop {
            if *this.readying {
                // The forwarder is always ready (see `Forward::poll_ready`); readiness errors
                // cannot happen, and an attempt's own error is handled like any other.
                let ready = std::task::ready!(state.inner.poll_ready(cx));
                *this.readying = false;
                let replay = state
                    .replay
                    .as_ref()
                    .expect("only a replayable request retries");
                match ready {
                    Ok(()) => this.attempt.set(state.inner.call(Routed {
                        request: replay.request(),
                        endpoint: state.endpoint.clone(),
                    })),
                    Err(error) => {
                        break (
                            *this.failed_at,
                            Err(error.into_response(state.endpoint.name())),
                        )
                    }
                }
            }
            let result = std::task::ready!(this.attempt.as_mut().poll(cx));
            let (now, ejected_now, result) =
                this.routing
                    .observe(&state.endpoint, state.guard.started(), result);
            *this.ejected |= ejected_now;
            let error = match result {
                Ok(response) => break (now, Ok(response)),
                Err(error) => error,
            };
            let next = this.routing.retry_target(
                &this.record.get().set,
                &error,
                &state.endpoint,
                state.client,
                state.replay.is_some(),
                *this.retries_left,
            );
            let Some(next) = next.filter(|_| state.replay.is_some()) else {
                break (now, Err(error.into_response(state.endpoint.name())));
            };
            *this.retries_left -= 1;
            let record = this.record.get_mut();
            record.retried_from = Some(state.endpoint.id());
            record.chosen = Some(next.id());
            state.guard = next.start();
            state.endpoint = next;
            *this.failed_at = now;
            *this.readying = true;
        };
        let state = this.state.take().expect("taken once, here");
        let attempt_started = state.guard.started();
        let response = match outcome {
            Ok(response) => {
                let guard = state.guard;
                response.map(|body| Body::new(GuardedBody::new(body, guard)))
            }
            Err(local) => local,
        };
        let answer = Answer {
            endpoint: state.endpoint,
            record: this.record.take(),
            explanation: this.explanation.take(),
            started: *this.started,
            attempt_started,
            answered,
            ejected: *this.ejected,
        };
        Poll::Ready(Ok(this.routing.answer(answer, response)))
    }
}

/// How a routed request ended, for [`Routing::answer`].
struct Answer {
    endpoint: Arc<Endpoint>,
    record: DecisionRecord,
    explanation: Option<Vec<CandidateState>>,
    /// When the request was routed.
    started: Instant,
    /// When its last attempt was handed over.
    attempt_started: Instant,
    /// When that attempt ended.
    answered: Instant,
    ejected: bool,
}

impl Routing {
    /// Finishes an answered request: its backend's counters, `x-alb-backend`, the decision
    /// logged (and explained if asked), and a gRPC answer's status watched for in its
    /// trailers.
    fn answer(self: &Arc<Self>, answer: Answer, mut response: Response<Body>) -> Response<Body> {
        let Answer {
            endpoint,
            mut record,
            explanation,
            started,
            attempt_started,
            answered,
            ejected,
        } = answer;
        endpoint.metrics.request(response.status());
        response
            .headers_mut()
            .insert(X_ALB_BACKEND.clone(), endpoint.backend.header_value.clone());
        let latency = answered.saturating_duration_since(started);
        // A gRPC answer: its status now (trailers-only) or when its trailers come.
        let grpc_pending = grpc::is_grpc(response.headers()) && {
            record.grpc_status = grpc::status(response.headers());
            record.grpc_status.is_none() && !response.status().is_server_error()
        };
        let upstream = answered.saturating_duration_since(attempt_started);
        let outcome = self.outcomes.then(|| decision::Outcome {
            decision_id: 0,
            backend: Some(endpoint.clone()),
            strategy: record.strategy,
            retried: record.retried_from.is_some(),
            ejected,
            upstream,
            why: self.outcome_why.then(|| decision::why(&record)),
            route: record.route.clone(),
            pool: record.pool.clone(),
        });
        let id = self.finish(record, latency, explanation, &mut response);
        if let Some(mut outcome) = outcome {
            outcome.decision_id = id;
            response.extensions_mut().insert(outcome);
        }
        if grpc_pending {
            let routing = self.clone();
            response = response.map(|body| {
                Body::new(WatchStatus::new(body, move |code| {
                    routing.observe_grpc(&endpoint, upstream, code, id)
                }))
            });
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        balance::{discover, test_support::endpoints, Strategy, StrategyKind},
        decision::DecisionView,
        retry::RetryConfig,
    };

    /// A forwarder that answers `200` from every backend but `refusing`, which refuses.
    #[derive(Clone)]
    struct Answering {
        refusing: Option<crate::balance::BackendId>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<Routed<Body>> for Answering {
        type Response = Response<Body>;
        type Error = ForwardError;
        type Future = std::future::Ready<Result<Response<Body>, ForwardError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, routed: Routed<Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::Relaxed);
            std::future::ready(if Some(routed.endpoint.id()) == self.refusing {
                Err(ForwardError::Connect("connection refused".into()))
            } else {
                Ok(Response::new(Body::from(routed.endpoint.name().to_owned())))
            })
        }
    }

    fn routing(kind: StrategyKind, options: RouteOptions) -> (Arc<Routing>, Vec<Arc<Endpoint>>) {
        let eps = endpoints(&[1, 1, 1]);
        let (changes, stream) = discover::channel();
        eps.iter().for_each(|e| changes.sync(e));
        let balancer = Balancer::new(Strategy::seeded(kind, 1), eps.clone(), stream);
        (Routing::new(balancer, options), eps)
    }

    fn explain_request() -> Request<Body> {
        Request::get("/")
            .header("x-alb-explain", "1")
            .body(Body::empty())
            .unwrap()
    }

    fn decision_chosen(response: &Response<Body>) -> String {
        let text = response.headers()["x-alb-decision"].to_str().unwrap();
        let chosen = text.split("; ").find_map(|p| p.strip_prefix("chosen="));
        chosen.unwrap().to_owned()
    }

    #[tokio::test]
    async fn the_explanation_names_the_backend_that_answered() {
        for kind in StrategyKind::ALL {
            let options = RouteOptions {
                explain: true,
                shadow: true,
                ..Default::default()
            };
            let (routing, _) = routing(kind, options);
            let forward = Answering {
                refusing: None,
                calls: Arc::default(),
            };
            let mut route = Route::new(routing.clone(), forward);
            for _ in 0..20 {
                let response = route.call(explain_request()).await.unwrap();
                let served = response.headers()[&X_ALB_BACKEND].to_str().unwrap();
                assert_eq!(decision_chosen(&response), served, "{kind}");
            }
            let logged = routing.decisions().since(0);
            assert_eq!(logged.len(), 20);
            for record in &logged {
                let view = DecisionView::new(record);
                assert!(view.chosen.unwrap().starts_with("127.0.0.1:900"));
                assert_eq!(view.shadow.len(), StrategyKind::ALL.len() - 1);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_is_retried_once_on_another_backend() {
        let options = RouteOptions {
            explain: true,
            retry: Some(Arc::new(RetryBudget::new(RetryConfig {
                attempts: 1,
                budget_percent: 20,
                min_per_second: 10,
            }))),
            ..Default::default()
        };
        let (routing, eps) = routing(StrategyKind::RoundRobin, options);
        let calls = Arc::new(AtomicUsize::new(0));
        let forward = Answering {
            refusing: Some(eps[0].id()),
            calls: calls.clone(),
        };
        let mut route = Route::new(routing.clone(), forward);
        // Round robin starts with backend 0, which refuses: the retry goes elsewhere.
        let response = route.call(explain_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let served = response.headers()[&X_ALB_BACKEND]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(served, eps[0].name());
        assert_eq!(decision_chosen(&response), served);
        let text = response.headers()["x-alb-decision"].to_str().unwrap();
        assert!(
            text.contains(&format!("retried_from={}", eps[0].name())),
            "{text}"
        );
        // Every request is counted in flight until its body ends, then released.
        drop(response);
        assert!(eps.iter().all(|e| e.in_flight() == 0));
        // A POST is not replayed: the refusal reaches the client as a 502.
        let post = Request::post("/").body(Body::empty()).unwrap();
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(route.call(post_clone(&post)).await.unwrap().status());
        }
        assert!(answers.contains(&StatusCode::BAD_GATEWAY), "{answers:?}");
    }

    #[tokio::test]
    async fn a_client_body_over_the_limit_is_not_the_backends_failure() {
        #[derive(Clone)]
        struct TooLarge;
        impl Service<Routed<Body>> for TooLarge {
            type Response = Response<Body>;
            type Error = ForwardError;
            type Future = std::future::Ready<Result<Response<Body>, ForwardError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Routed<Body>) -> Self::Future {
                std::future::ready(Err(ForwardError::BodyTooLarge))
            }
        }
        let (routing, eps) = routing(StrategyKind::RoundRobin, RouteOptions::default());
        let mut route = Route::new(routing, TooLarge);
        for _ in 0..10 {
            let r = route
                .call(Request::post("/").body(Body::empty()).unwrap())
                .await;
            assert_eq!(r.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
        assert!(
            eps.iter().all(|e| e.failures() == 0),
            "counted as backend failures"
        );
    }

    fn post_clone(post: &Request<Body>) -> Request<Body> {
        Request::post(post.uri().clone())
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn every_backend_full_is_a_503_naming_them() {
        let options = RouteOptions {
            max_connections: Some(1),
            explain: true,
            ..Default::default()
        };
        let (routing, eps) = routing(StrategyKind::LeastConn, options);
        let _busy: Vec<_> = eps.iter().map(|e| e.start()).collect();
        let forward = Answering {
            refusing: None,
            calls: Arc::default(),
        };
        let response = Route::new(routing.clone(), forward)
            .call(explain_request())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(decision_chosen(&response), "none");
        let view = DecisionView::new(&routing.decisions().since(0)[0]);
        assert_eq!(view.excluded.len(), 3);
        assert!(view
            .excluded
            .iter()
            .all(|e| e.reason == "at max_connections"));
    }
}
