//! Fault injection (chaos testing), as Envoy's fault filter: delay a share of requests, abort
//! a share with a status, before the balancer sees them.
//!
//! Each request draws independently (`percent` chances in 100, from the thread's random
//! source: no lock, no shared counter, and no pattern a rotation could line up with): a
//! delayed request waits `duration`, then goes on to the balancer as usual; an aborted one
//! is answered at once with `status` and never reaches a backend. With `allow_header`, a
//! request may ask for its own fault with `x-alb-fault: delay=200ms`, `abort=503` or both
//! (comma-separated); the header is ALB's and is not forwarded, and a malformed one is a
//! `400`. Every injected fault is counted in `lb_faults_injected_total{route,kind}`, named in
//! the answer's `x-alb-fault` header, and a delay is noted in the request's decision record
//! (an abort is answered before any decision is made).

use std::{
    convert::Infallible,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use serde::Serialize;
use tower::{Layer, Service};

use super::LayerFuture;
pub use crate::decision::InjectedFault;
use crate::{local_reply::local_reply, telemetry::FAULTS_INJECTED_TOTAL};

/// The header that names an injected fault: asked for by a client (with `allow_header`),
/// and on every answer that had one.
pub static X_ALB_FAULT: HeaderName = HeaderName::from_static("x-alb-fault");

/// A delay of a share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DelayFault {
    /// Share of requests delayed, percent.
    pub percent: f64,
    /// How long.
    #[serde(with = "crate::humantime_serde")]
    pub duration: Duration,
}

/// An abort of a share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AbortFault {
    /// Share of requests aborted, percent.
    pub percent: f64,
    /// The status they are answered with.
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

/// Fault injection settings of one route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultConfig {
    /// Delays, if any.
    pub delay: Option<DelayFault>,
    /// Aborts, if any.
    pub abort: Option<AbortFault>,
    /// Whether a request may ask for a fault with `x-alb-fault`.
    pub allow_header: bool,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    delay: Option<Duration>,
    abort: Option<StatusCode>,
}

/// Reads `x-alb-fault: delay=200ms,abort=503`.
fn parse_header(value: &HeaderValue) -> Result<Faults, String> {
    let text = value
        .to_str()
        .map_err(|_| "x-alb-fault is not text".to_owned())?;
    let mut faults = Faults::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("delay", d)) => {
                let d = humantime::parse_duration(d.trim())
                    .map_err(|_| format!("x-alb-fault: bad delay {d:?} (e.g. delay=200ms)"))?;
                if d > MAX_HEADER_DELAY {
                    return Err(format!(
                        "x-alb-fault: delay {d:?} is longer than the {MAX_HEADER_DELAY:?} allowed"
                    ));
                }
                faults.delay = Some(d);
            }
            Some(("abort", s)) => {
                let status = s
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (400..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| {
                        format!("x-alb-fault: bad abort status {s:?} (400 to 599, e.g. abort=503)")
                    })?;
                faults.abort = Some(status);
            }
            _ => {
                return Err(format!(
                    "x-alb-fault: unknown fault {part:?} (delay=200ms or abort=503)"
                ))
            }
        }
    }
    Ok(faults)
}

/// Longest delay a request may ask for with the header: a client must not be able to park
/// connections on ALB for long.
pub const MAX_HEADER_DELAY: Duration = Duration::from_secs(60);

/// Adds fault injection to a service; [`FaultLayer::off`] passes requests through.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    config: Option<std::sync::Arc<(FaultConfig, std::sync::Arc<str>)>>,
}

// === impl FaultLayer ===

impl FaultLayer {
    /// Faults as `config` says, counted under `route`.
    pub fn new(config: Option<FaultConfig>, route: &str) -> Self {
        FaultLayer {
            config: config.map(|c| std::sync::Arc::new((c, route.into()))),
        }
    }

    /// No faults.
    pub fn off() -> Self {
        FaultLayer { config: None }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            config: self.config.clone(),
        }
    }
}

// === impl Fault ===

/// The service of [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    config: Option<std::sync::Arc<(FaultConfig, std::sync::Arc<str>)>>,
}

fn chance(percent: f64) -> bool {
    percent > 0.0 && (percent >= 100.0 || rand::random::<f64>() * 100.0 < percent)
}

impl<S, B> Service<Request<B>> for Fault<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, LayerFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(config) = &self.config else {
            return Either::Left(self.inner.call(request));
        };
        let (config, route) = (&config.0, config.1.clone());
        let mut faults = Faults {
            delay: config
                .delay
                .filter(|d| chance(d.percent))
                .map(|d| d.duration),
            abort: config.abort.filter(|a| chance(a.percent)).map(|a| a.status),
        };
        if let Some(asked) = request.headers_mut().remove(&X_ALB_FAULT) {
            if config.allow_header {
                match parse_header(&asked) {
                    Ok(wanted) => {
                        faults.delay = wanted.delay.or(faults.delay);
                        faults.abort = wanted.abort.or(faults.abort);
                    }
                    Err(reason) => {
                        let reply = local_reply(StatusCode::BAD_REQUEST, reason);
                        return Either::Right(Box::pin(std::future::ready(Ok(reply))));
                    }
                }
            }
        }
        if faults == Faults::default() {
            return Either::Left(self.inner.call(request));
        }
        // The ready service answers this request; a clone takes its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let mut applied = Vec::with_capacity(2);
            if let Some(delay) = faults.delay {
                let fault = InjectedFault::Delay(delay);
                count(&route, fault);
                tokio::time::sleep(delay).await;
                applied.push(fault);
            }
            let mut response = match faults.abort {
                Some(status) => {
                    let fault = InjectedFault::Abort(status);
                    count(&route, fault);
                    applied.push(fault);
                    local_reply(status, "fault injected: abort")
                }
                None => {
                    request.extensions_mut().insert(applied[0]);
                    let Ok(response) = inner.call(request).await;
                    response
                }
            };
            let text: Vec<String> = applied.iter().map(|f| f.header_text()).collect();
            if let Ok(value) = HeaderValue::from_str(&text.join(",")) {
                response.headers_mut().insert(X_ALB_FAULT.clone(), value);
            }
            Ok(response)
        }))
    }
}

fn count(route: &str, fault: InjectedFault) {
    metrics::counter!(FAULTS_INJECTED_TOTAL, "route" => route.to_owned(), "kind" => fault.kind())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn ok_service(
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
           + Clone
           + Send
           + 'static {
        tower::service_fn(|request: Request<Body>| async move {
            let noted = request.extensions().get::<InjectedFault>().copied();
            let mut response = Response::new(Body::empty());
            if let Some(fault) = noted {
                response.headers_mut().insert(
                    "x-noted",
                    HeaderValue::from_str(&fault.header_text()).unwrap(),
                );
            }
            Ok::<_, Infallible>(response)
        })
    }

    #[test]
    fn the_header_asks_for_delays_and_aborts() {
        let h = |s: &str| parse_header(&HeaderValue::from_str(s).unwrap());
        assert_eq!(
            h("delay=200ms").unwrap().delay,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            h("abort=503").unwrap().abort,
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        let both = h("delay=1s, abort=429").unwrap();
        assert_eq!(both.delay, Some(Duration::from_secs(1)));
        assert_eq!(both.abort, Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(h("abort=200").is_err(), "an abort is an error status");
        assert!(h("delay=soon").is_err());
        assert!(h("delay=2h").is_err(), "longer than allowed");
        assert!(h("explode=1").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_routes_it_and_says_so() {
        let config = FaultConfig {
            delay: Some(DelayFault {
                percent: 100.0,
                duration: Duration::from_millis(100),
            }),
            ..FaultConfig::default()
        };
        let service = FaultLayer::new(Some(config), "r").layer(ok_service());
        let started = tokio::time::Instant::now();
        let response = service.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(response.headers()["x-alb-fault"], "delay=100ms");
        assert_eq!(
            response.headers()["x-noted"],
            "delay=100ms",
            "routing saw it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_answers_without_routing() {
        let config = FaultConfig {
            abort: Some(AbortFault {
                percent: 100.0,
                status: StatusCode::SERVICE_UNAVAILABLE,
            }),
            ..FaultConfig::default()
        };
        let service = FaultLayer::new(Some(config), "r").layer(ok_service());
        let response = service.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["x-alb-fault"], "abort=503");
        assert!(response.headers().get("x-noted").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_is_obeyed_only_when_allowed_and_never_forwarded() {
        let asking = || {
            Request::builder()
                .header("x-alb-fault", "abort=418")
                .body(Body::empty())
                .unwrap()
        };
        let allowed = FaultConfig {
            allow_header: true,
            ..FaultConfig::default()
        };
        let r = FaultLayer::new(Some(allowed), "r")
            .layer(ok_service())
            .oneshot(asking())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 418);
        let r = FaultLayer::new(Some(FaultConfig::default()), "r")
            .layer(tower::service_fn(|request: Request<Body>| async move {
                assert!(request.headers().get("x-alb-fault").is_none());
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }))
            .oneshot(asking())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "not allowed: ignored");
    }
}
