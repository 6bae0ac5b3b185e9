//! The access log: one line per request, in JSON or nginx's `combined` format.
//!
//! [`AccessLogLayer`] sits outside every layer that can refuse a request (only the request
//! id and trace context layers are outside it), so every answer is logged, ALB's own
//! `429`s and `503`s included, and so is a request whose client left before the answer
//! (status 499, as nginx logs it). A line is written when the response body has been sent (or
//! the client went away), so it carries the real byte counts and the full duration, like
//! nginx's `$request_time`. What routing decided comes from the [`Outcome`] the route
//! service attaches to the response: the backend, the decision id (the same as in
//! `/decisions`), whether the request was retried, whether it ejected its backend.
//!
//! The request path only formats the line and hands it to a bounded queue ([`writer`]);
//! a thread does the writing. Sampling (`sample`) skips requests before any work is done.

pub mod format;
pub mod writer;

use std::{
    convert::Infallible,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use serde::Serialize;
use tower::{Layer, Service};

use crate::{
    client_ip::ClientIp, decision::Outcome, headers::X_REQUEST_ID,
    semantics::CLIENT_CLOSED_REQUEST, tls::TlsVersion,
};
pub use writer::{LogWriter, Target};

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// nginx's and Apache's combined log format.
    Combined,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// `stdout` or a file path.
    #[serde(serialize_with = "target_text")]
    pub target: Target,
    /// Line format.
    pub format: LogFormat,
    /// Fraction of requests logged, from 0 to 1.
    pub sample: f64,
}

fn target_text<S: serde::Serializer>(target: &Target, s: S) -> Result<S::Ok, S::Error> {
    match target {
        Target::Stdout => s.serialize_str("stdout"),
        Target::File(path) => s.collect_str(&path.display()),
    }
}

/// Adds the access log to a service; [`AccessLogLayer::off`] passes requests through.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    writer: LogWriter,
    format: LogFormat,
    sample: f64,
    client_ip: ClientIp,
}

// === impl AccessLogLayer ===

impl AccessLogLayer {
    /// A log as `config` says, with client addresses resolved by `client_ip`. Opens the
    /// file now, so a path that cannot be written fails before the proxy starts.
    pub fn new(config: &AccessLogConfig, client_ip: ClientIp) -> io::Result<Self> {
        Ok(AccessLogLayer {
            shared: Some(Arc::new(Shared {
                writer: LogWriter::open(&config.target)?,
                format: config.format,
                sample: config.sample,
                client_ip,
            })),
        })
    }

    /// No access log.
    pub fn off() -> Self {
        AccessLogLayer { shared: None }
    }

    /// Reopens the log file (after logrotate moved it: SIGUSR1).
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared.writer.reopen();
        }
    }

    /// Writes every queued line now, waiting at most `timeout` (blocks: for shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Some(shared) = &self.shared {
            shared.writer.flush(timeout);
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

/// What is kept of a request until its response ends.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    started: Instant,
    at: SystemTime,
    client: Option<IpAddr>,
    method: Method,
    uri: Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    tls: Option<&'static str>,
    received: Option<Arc<AtomicU64>>,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, AccessLogFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return Either::Left(self.inner.call(request));
        };
        if shared.sample < 1.0 && rand::random::<f64>() >= shared.sample {
            return Either::Left(self.inner.call(request));
        }
        let headers = request.headers();
        let header = |name: &http::HeaderName| headers.get(name).cloned();
        let received = (!request.body().is_end_stream()).then(Arc::default);
        let mut pending = Pending {
            shared: shared.clone(),
            started: Instant::now(),
            at: SystemTime::now(),
            client: shared.client_ip.resolve(&request),
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            user_agent: header(&header::USER_AGENT),
            referer: header(&header::REFERER),
            request_id: header(&X_REQUEST_ID),
            tls: request.extensions().get::<TlsVersion>().map(|t| t.0),
            received: None,
        };
        if let Some(count) = &received {
            let body = std::mem::take(request.body_mut());
            *request.body_mut() = Body::new(Counted {
                inner: body,
                count: Arc::clone(count),
            });
            pending.received = received;
        }
        Either::Right(AccessLogFuture {
            inner: self.inner.call(request),
            pending: Some(pending),
        })
    }
}

pin_project_lite::pin_project! {
    /// The future of [`AccessLog`]: wraps the response body so the line is written at its
    /// end. Dropped before the answer (the client went away, or shutdown cut it), it writes
    /// the line at once with status 499, nginx's "client closed request".
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for AccessLogFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                Line {
                    pending,
                    outcome: None,
                    status: CLIENT_CLOSED_REQUEST,
                }
                .write(0);
            }
        }
    }
}

impl<F> std::future::Future for AccessLogFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(Ok(response));
        };
        let outcome = response.extensions().get::<Outcome>().cloned();
        let status = response.status().as_u16();
        Poll::Ready(Ok(response.map(|body| {
            Body::new(Logged {
                inner: body,
                sent: 0,
                line: Some(Line {
                    pending,
                    outcome,
                    status,
                }),
            })
        })))
    }
}

/// Everything but the byte count and the end time.
#[derive(Debug)]
struct Line {
    pending: Pending,
    outcome: Option<Outcome>,
    status: u16,
}

impl Line {
    fn write(self, sent: u64) {
        let p = &self.pending;
        fn text(v: &Option<HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let outcome = self.outcome.as_ref();
        let entry = format::Entry {
            time: format::rfc3339(p.at),
            client: p.client,
            method: p.method.as_str(),
            path: p.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            protocol: protocol(p.version),
            status: self.status,
            bytes_sent: sent,
            bytes_received: p.received.as_ref().map_or(0, |c| c.load(Ordering::Relaxed)),
            duration_ms: format::millis(p.started.elapsed()),
            upstream_ms: outcome
                .filter(|o| o.backend.is_some())
                .map(|o| format::millis(o.upstream)),
            backend: outcome.and_then(|o| o.backend.as_deref()).map(|b| b.name()),
            decision_id: outcome.map(|o| o.decision_id),
            route: outcome.and_then(|o| o.route.as_deref()),
            pool: outcome.and_then(|o| o.pool.as_deref()),
            request_id: text(&p.request_id),
            retried: outcome.is_some_and(|o| o.retried),
            outlier_ejected: outcome.is_some_and(|o| o.ejected),
            user_agent: text(&p.user_agent),
            referer: text(&p.referer),
            tls: p.tls,
        };
        let mut out = Vec::with_capacity(384);
        match p.shared.format {
            LogFormat::Json => format::json(&entry, &mut out),
            LogFormat::Combined => format::combined(&entry, &mut out),
        }
        p.shared.writer.send(out);
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it yields and writes the line at its end (or when
    /// dropped early: the client went away).
    struct Logged {
        #[pin]
        inner: Body,
        sent: u64,
        line: Option<Line>,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(line) = this.line.take() {
                line.write(*this.sent);
            }
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.sent += data.len() as u64;
                }
            }
            // The end, or an error that ends it: the line is written now.
            _ => {
                if let Some(line) = this.line.take() {
                    line.write(*this.sent);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts what the client sent.
    struct Counted {
        #[pin]
        inner: Body,
        count: Arc<AtomicU64>,
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
