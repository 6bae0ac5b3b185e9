//! Records every answer in `lb_http_requests_total{method,code}` and
//! `lb_request_duration_seconds{method,code}` (time to response headers).
//!
//! Outermost, so answers written by inner layers (429, 503) are counted like any other (the
//! original project missed them). Label sets are built once per (method, status) pair and
//! the handles cached; the request path only increments. Methods outside the standard set
//! are counted as `OTHER`, so a client cannot grow the label space.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http::{Method, Request, Response, StatusCode};
use metrics::{counter, histogram, Counter, Histogram};
use tower::{Layer, Service};

use crate::telemetry::{HTTP_REQUESTS_TOTAL, REQUEST_DURATION_SECONDS};

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER",
];
const STATUS_SLOTS: usize = 500; // 100..=599

fn method_index(method: &Method) -> usize {
    METHODS[..9]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(9)
}

/// Cached handles, one pair per (method, status).
#[derive(Debug)]
pub struct Handles {
    cells: Box<[OnceLock<(Counter, Histogram)>]>,
}

impl Handles {
    fn new() -> Self {
        Handles {
            cells: (0..METHODS.len() * STATUS_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    fn record(&self, method: usize, status: StatusCode, seconds: f64) {
        let slot = usize::from(status.as_u16()).saturating_sub(100);
        let Some(cell) = self.cells.get(method * STATUS_SLOTS + slot) else {
            return;
        };
        let (count, duration) = cell.get_or_init(|| {
            let code = status.as_str().to_owned();
            (
                counter!(HTTP_REQUESTS_TOTAL, "method" => METHODS[method], "code" => code.clone()),
                histogram!(REQUEST_DURATION_SECONDS, "method" => METHODS[method], "code" => code),
            )
        });
        count.increment(1);
        duration.record(seconds);
    }
}

/// Adds request metrics to a service.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    handles: Arc<Handles>,
}

impl MetricsLayer {
    /// A layer recording into the global `metrics` recorder (see `prometheus::install`).
    pub fn new() -> Self {
        MetricsLayer {
            handles: Arc::new(Handles::new()),
        }
    }
}

impl Default for MetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S, B, RB> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        MetricsFuture {
            method: method_index(request.method()),
            started: Instant::now(),
            handles: self.handles.clone(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Metrics`]: records the answer when the inner future yields it
    /// (a concrete type, so the layer adds no allocation).
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        method: usize,
        started: Instant,
        handles: Arc<Handles>,
    }
}

impl<F, RB, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.handles.record(
                *this.method,
                response.status(),
                this.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(result)
    }
}
