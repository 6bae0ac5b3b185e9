//! A backend's own load, reported to balancers that ask: the server side of `prequal`.
//!
//! [`LoadReportLayer`] is a Tower layer any axum or hyper app can add. It counts the app's
//! requests in flight (RIF, "requests in flight" in the Prequal paper) and keeps an estimate
//! of their recent latency, and answers `GET` [`PROBE_PATH`] itself with both, as one line of
//! JSON (`{"rif":3,"latency_us":10512}`). The numbers are the backend's own, so they include
//! the requests every balancer replica and every other client sends it: what one replica's
//! own in-flight count cannot see.
//!
//! Latency is an exponentially weighted moving average of completed requests' times to
//! response headers over time: a sample finishing `Δt` after the previous one gets weight
//! `1 - exp(-Δt / 200 ms)`, so the figure describes the last fraction of a second whatever
//! the request rate, and the first answers after a quiet spell (a stall) replace it at
//! once. The probe requests themselves are neither counted nor timed. When no request has
//! finished for [`RECENT`] the report says `0` (nothing recent to report) rather than an
//! old figure: otherwise a backend
//! whose last requests were caught in a stall would report that stall's latency until a
//! balancer sent it traffic again, which it would not do while the report says it is slow.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

/// The path a balancer probes (`GET`).
pub const PROBE_PATH: &str = "/_alb/load";

/// How long a latency figure stays reportable after the last request finished.
pub const RECENT: std::time::Duration = std::time::Duration::from_secs(1);

/// Time constant of the latency average.
pub const LATENCY_DECAY: std::time::Duration = std::time::Duration::from_millis(200);

/// What a probe answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests in flight in the backend, the probe excluded.
    pub rif: u32,
    /// Recent latency of the backend's requests, microseconds.
    pub latency_us: u64,
}

impl LoadReport {
    /// Parses a probe's body; `None` unless it is a report.
    pub fn parse(body: &[u8]) -> Option<LoadReport> {
        serde_json::from_slice(body).ok()
    }
}

/// The shared counters of one app.
#[derive(Debug)]
struct Counters {
    in_flight: AtomicU64,
    /// EWMA latency in microseconds, 0 before the first request.
    latency_us: AtomicU64,
    /// When the last request finished, in microseconds after `start`.
    last_finished_us: AtomicU64,
    start: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            last_finished_us: AtomicU64::new(0),
            start: Instant::now(),
        }
    }
}

impl Counters {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn report(&self) -> LoadReport {
        let idle_us = self
            .now_us()
            .saturating_sub(self.last_finished_us.load(Ordering::Relaxed));
        let recent = idle_us <= RECENT.as_micros() as u64;
        LoadReport {
            rif: u32::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            latency_us: if recent {
                self.latency_us.load(Ordering::Relaxed)
            } else {
                0
            },
        }
    }

    fn observe(&self, sample_us: u64) {
        let now = self.now_us();
        let previous = self.last_finished_us.swap(now, Ordering::Relaxed);
        // A lost update under a race only drops one sample from a moving average.
        let old = self.latency_us.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(previous) as f64;
        let keep = (-elapsed / LATENCY_DECAY.as_micros() as f64).exp();
        let new = if old == 0 {
            sample_us
        } else {
            (old as f64 * keep + sample_us as f64 * (1.0 - keep)) as u64
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }
}

/// Adds [`LoadReportService`] to an app: its load is counted and served on [`PROBE_PATH`].
#[derive(Debug, Clone, Default)]
pub struct LoadReportLayer {
    counters: Arc<Counters>,
}

impl LoadReportLayer {
    /// A layer with fresh counters (one per app: every service it wraps shares them).
    pub fn new() -> Self {
        LoadReportLayer::default()
    }

    /// The current report (for the app's own metrics or tests).
    pub fn report(&self) -> LoadReport {
        self.counters.report()
    }
}

impl<S> Layer<S> for LoadReportLayer {
    type Service = LoadReportService<S>;

    fn layer(&self, inner: S) -> LoadReportService<S> {
        LoadReportService {
            inner,
            counters: self.counters.clone(),
        }
    }
}

/// The service of [`LoadReportLayer`].
#[derive(Debug, Clone)]
pub struct LoadReportService<S> {
    inner: S,
    counters: Arc<Counters>,
}

/// Counts one request in flight until dropped, and times it when finished.
struct InFlight {
    counters: Arc<Counters>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B, RB> Service<Request<B>> for LoadReportService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET && request.uri().path() == PROBE_PATH {
            let report = self.counters.report();
            let body = serde_json::to_string(&report).unwrap_or_default();
            let mut response = Response::new(RB::from(body));
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Box::pin(std::future::ready(Ok(response)));
        }
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            counters: self.counters.clone(),
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let micros = u64::try_from(guard.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            guard.counters.observe(micros.max(1));
            drop(guard);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn counts_in_flight_and_answers_the_probe() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let layer = LoadReportLayer::new();
        let app = layer.layer(tower::service_fn(move |_: Request<()>| {
            let wait = wait.clone();
            async move {
                if let Some(w) = wait.lock().await.take() {
                    let _ = w.await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
            }
        }));
        let held = tokio::spawn(app.clone().oneshot(Request::get("/work").body(()).unwrap()));
        while layer.report().rif == 0 {
            tokio::task::yield_now().await;
        }
        let probe = app
            .clone()
            .oneshot(Request::get(PROBE_PATH).body(()).unwrap())
            .await
            .unwrap();
        let report = LoadReport::parse(probe.body().as_bytes()).unwrap();
        assert_eq!(report.rif, 1, "the held request, not the probe");
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        let after = layer.report();
        assert_eq!(after.rif, 0);
        assert!(after.latency_us > 0);
    }

    #[test]
    fn latency_is_a_moving_average_over_time() {
        let c = Counters::default();
        c.observe(8000);
        assert_eq!(c.report().latency_us, 8000);
        // Back to back: the new sample barely moves it.
        c.observe(16000);
        let blended = c.report().latency_us;
        assert!((8000..9000).contains(&blended), "{blended}");
        // After a quiet spell of many time constants, a sample replaces it.
        let quiet = Counters {
            start: c.start - std::time::Duration::from_secs(5),
            ..Counters::default()
        };
        quiet.latency_us.store(8000, Ordering::Relaxed);
        quiet.observe(3000);
        let latest = quiet.latency_us.load(Ordering::Relaxed);
        assert!((2990..=3010).contains(&latest), "{latest}");
        // And with nothing finished for longer than RECENT, no latency is reported.
        let idle = Counters {
            start: c.start - std::time::Duration::from_secs(5),
            ..Counters::default()
        };
        idle.latency_us.store(8000, Ordering::Relaxed);
        assert_eq!(idle.report().latency_us, 0);
    }

    #[test]
    fn only_reports_parse() {
        assert_eq!(
            LoadReport::parse(br#"{"rif":2,"latency_us":10}"#),
            Some(LoadReport {
                rif: 2,
                latency_us: 10
            })
        );
        assert_eq!(LoadReport::parse(b"backend 8001\n"), None);
    }
}
