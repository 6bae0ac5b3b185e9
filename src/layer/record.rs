//! Traffic recording: one JSON line per sampled request, for `alb replay`.
//!
//! [`RecordLayer`] sits just inside the access log, so what it records is what the client
//! sent and what ALB answered (its own `429`s included). A line holds the time, the route and
//! pool, the backend, the method, path and query, the request headers with credentials
//! redacted ([`REDACTED_HEADERS`]), the request body as base64 when `bodies` is on and the
//! body is at most [`MAX_RECORDED_BODY`] bytes, the status and the time to response headers.
//! It is written when the response headers have arrived and the request body has been read
//! to its end (or abandoned: a backend that answers without reading it), through the access
//! log's writer (a bounded
//! queue and a thread: the request never waits for the disk; a line the queue has no room
//! for is counted in `lb_record_dropped_total`), which rotates the file at `max_bytes`.
//!
//! Sampling (`percent`) skips requests before any work is done; recording is off unless
//! configured, and then costs one line's formatting per recorded request.

use std::{
    convert::Infallible,
    io,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use axum::body::Body;
use base64::{prelude::BASE64_STANDARD, Engine as _};
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::{HeaderName, Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use super::access_log::LogWriter;
use crate::{decision::Outcome, telemetry::RECORD_DROPPED_TOTAL};

/// Request headers whose values never reach a recording: they carry credentials.
pub const REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// What a redacted header's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Largest request body recorded (with `bodies` on); a larger one is recorded without it.
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

/// Recording settings (`record`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordConfig {
    /// The file lines are appended to.
    pub path: PathBuf,
    /// Share of requests recorded, percent (0 to 100).
    pub percent: f64,
    /// Record request bodies (up to [`MAX_RECORDED_BODY`]).
    pub bodies: bool,
    /// Size past which the file is rotated to `PATH.1`.
    pub max_bytes: u64,
}

/// One recorded request: the line format, read back by `alb replay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Microseconds since the Unix epoch when the request arrived.
    pub at_us: u64,
    /// The route that matched.
    pub route: String,
    /// The pool it was sent to.
    pub pool: String,
    /// The backend of the last attempt (`host:port`), if one was tried.
    pub backend: Option<String>,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers in order, credentials redacted.
    pub headers: Vec<(String, String)>,
    /// Request body, base64, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The status ALB answered.
    pub status: u16,
    /// Time to response headers, milliseconds.
    pub latency_ms: f64,
}

/// Adds recording to a service; [`RecordLayer::off`] passes requests through.
#[derive(Debug, Clone)]
pub struct RecordLayer {
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    writer: LogWriter,
    percent: f64,
    bodies: bool,
}

// === impl RecordLayer ===

impl RecordLayer {
    /// Records as `config` says. Opens the file now, so a path that cannot be written fails
    /// before the proxy starts. The route and pool are read from the answer's `x-alb-route`
    /// and `x-alb-pool` (`-` when ALB answered before routing, a `429` say).
    pub fn new(config: &RecordConfig) -> io::Result<Self> {
        let writer = LogWriter::open_rotating(
            &config.path,
            config.max_bytes,
            "alb-record",
            metrics::counter!(RECORD_DROPPED_TOTAL),
        )?;
        Ok(RecordLayer {
            shared: Some(Arc::new(Shared {
                writer,
                percent: config.percent,
                bodies: config.bodies,
            })),
        })
    }

    /// No recording.
    pub fn off() -> Self {
        RecordLayer { shared: None }
    }

    /// Writes every queued line now, waiting at most `timeout` (blocks: for shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Some(shared) = &self.shared {
            shared.writer.flush(timeout);
        }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Record ===

/// The service of [`RecordLayer`].
#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

/// What is kept of a request until its response headers.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    started: Instant,
    at_us: u64,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Arc<Mutex<Captured>>>,
}

impl<S> Service<Request<Body>> for Record<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, RecordFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return Either::Left(self.inner.call(request));
        };
        if shared.percent < 100.0 && rand::random::<f64>() * 100.0 >= shared.percent {
            return Either::Left(self.inner.call(request));
        }
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), header_text(name, value)))
            .collect();
        let body = (shared.bodies && !request.body().is_end_stream()).then(|| {
            let captured = Arc::new(Mutex::new(Captured::default()));
            let inner = std::mem::take(request.body_mut());
            *request.body_mut() = Body::new(Tee {
                inner,
                captured: captured.clone(),
            });
            captured
        });
        let pending = Pending {
            shared: shared.clone(),
            started: Instant::now(),
            at_us: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            method: request.method().clone(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            headers,
            body,
        };
        Either::Right(RecordFuture {
            inner: self.inner.call(request),
            pending: Some(pending),
        })
    }
}

/// A header's value as recorded: redacted if it carries credentials, lossy UTF-8 otherwise.
fn header_text(name: &HeaderName, value: &http::HeaderValue) -> String {
    if REDACTED_HEADERS.contains(&name.as_str()) {
        REDACTED.to_owned()
    } else {
        String::from_utf8_lossy(value.as_bytes()).into_owned()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Record`]: writes the line when the response headers arrive.
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> std::future::Future for RecordFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        if let Some(p) = this.pending.take() {
            let outcome = response.extensions().get::<Outcome>();
            let line = Recorded {
                at_us: p.at_us,
                route: alb_header(&response, "x-alb-route"),
                pool: alb_header(&response, "x-alb-pool"),
                backend: outcome
                    .and_then(|o| o.backend.as_deref())
                    .map(|b| b.name().to_owned()),
                method: p.method.as_str().to_owned(),
                path: p.path,
                headers: p.headers,
                body_base64: None,
                status: response.status().as_u16(),
                latency_ms: p.started.elapsed().as_secs_f64() * 1e3,
            };
            match &p.body {
                // The body may still be on its way: whichever ends last writes the line.
                Some(captured) => {
                    let mut c = captured.lock().unwrap_or_else(|e| e.into_inner());
                    c.line = Some((p.shared.clone(), line));
                    if c.done {
                        c.write();
                    }
                }
                None => write(&p.shared, &line),
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// A response header ALB set, or `-`.
fn alb_header(response: &Response<Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn write(shared: &Shared, line: &Recorded) {
    if let Ok(mut out) = serde_json::to_vec(line) {
        out.push(b'\n');
        shared.writer.send(out);
    }
}

/// The request body as read so far, and the line waiting for it.
#[derive(Debug, Default)]
struct Captured {
    bytes: BytesMut,
    overflowed: bool,
    /// Read to its end.
    ended: bool,
    /// Ended or abandoned: nothing more will come.
    done: bool,
    /// The line, once the response headers have arrived.
    line: Option<(Arc<Shared>, Recorded)>,
}

impl Captured {
    /// Writes the waiting line, with the body if it was read whole within the cap.
    fn write(&mut self) {
        if let Some((shared, mut line)) = self.line.take() {
            if self.ended && !self.overflowed {
                line.body_base64 = Some(BASE64_STANDARD.encode(&self.bytes));
            }
            write(&shared, &line);
        }
    }

    /// Nothing more will come: write the line if it waits.
    fn finish(&mut self) {
        self.done = true;
        self.write();
    }
}

pin_project_lite::pin_project! {
    /// A request body that keeps a copy of what passes (up to the cap).
    struct Tee {
        #[pin]
        inner: Body,
        captured: Arc<Mutex<Captured>>,
    }

    impl PinnedDrop for Tee {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.captured.lock().unwrap_or_else(|e| e.into_inner()).finish();
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let mut c = this.captured.lock().unwrap_or_else(|e| e.into_inner());
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if c.bytes.len() + data.len() > MAX_RECORDED_BODY {
                        c.overflowed = true;
                        c.bytes = BytesMut::new();
                    } else if !c.overflowed {
                        c.bytes.extend_from_slice(data);
                    }
                }
            }
            None => c.ended = true,
            Some(Err(_)) => {}
        }
        // A body of known length ends with its last data frame, without a `None` poll.
        if this.inner.is_end_stream() {
            c.ended = true;
        }
        if c.ended && !c.done {
            c.finish();
        }
        drop(c);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
