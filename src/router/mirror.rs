//! Mirroring: a share of a route's requests is also sent to another pool, fire-and-forget,
//! and with `compare` the two answers are compared.
//!
//! Which requests are copied is counted, not drawn: with `percent: 50` every other request
//! is, so the mirror's share is exact to within one request.
//!
//! The client's answer never waits for the mirror: a mirrored request is handed to the
//! route's mirror task through a bounded queue (`try_send`: when the queue is full the copy
//! is dropped and counted), and the task sends it through the mirror pool's routing, so the
//! copy is balanced, retried and recorded in `/decisions` like any request, under the mirror
//! pool. A request body is mirrored only when it is short (a `content-length` of at most
//! [`MIRROR_BODY_CAP`]): it is read first, then sent to both; a longer or chunked body is not
//! copied and the request is counted as `skipped` rather than mirrored without its body.
//!
//! With `compare`, the primary answer's body is hashed as it streams to the client (no copy,
//! no buffering) and its status, hash and latency go to the mirror task when the body ends;
//! the mirror's answer is read and hashed the same way. `GET /mirror` reports per route:
//! mirrored, compared, status and body mismatches, errors (the mirror pool gave no answer of
//! its own: ALB's `502`/`503`/`504`), dropped, skipped, latency p50/p99 of both sides, and the
//! last [`LAST_MISMATCHES`] mismatches. `lb_mirror_requests_total{route,result}` counts each
//! outcome.

use std::{
    collections::VecDeque,
    convert::Infallible,
    hash::Hasher,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Body;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tower::{util::BoxCloneSyncService, ServiceExt};

use crate::{
    forward::caused_by_length_limit,
    local_reply::{local_reply, LocalReply},
    telemetry::MIRROR_REQUESTS_TOTAL,
};

/// Largest request body copied to the mirror.
pub const MIRROR_BODY_CAP: u64 = 64 * 1024;
/// Mirrored requests waiting for the mirror task; past it copies are dropped.
pub const MIRROR_QUEUE: usize = 1024;
/// Mirrored requests in flight at once per route.
pub const MIRROR_CONCURRENCY: usize = 256;
/// Mismatches kept for `GET /mirror`.
pub const LAST_MISMATCHES: usize = 50;
/// How long a mirror answer waits for the primary's to compare with.
const PRIMARY_WAIT: Duration = Duration::from_secs(60);

/// A route's mirror settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorConfig {
    /// The pool the copies go to.
    pub pool: String,
    /// Share of the route's requests copied, percent.
    pub percent: f64,
    /// Compare the mirror's answers with the primary's.
    pub compare: bool,
}

/// The mirror pool's routing, as the mirror task calls it.
pub type MirrorService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// What the primary answered, for the comparison.
#[derive(Debug, Clone, Copy)]
pub struct PrimaryAnswer {
    status: u16,
    body_hash: u64,
    latency: Duration,
}

/// One copy on its way to the mirror task.
struct Job {
    request: Request<Body>,
    primary: Option<oneshot::Receiver<PrimaryAnswer>>,
}

/// One mismatch, for `GET /mirror`.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The primary's status.
    pub primary_status: u16,
    /// The mirror's status.
    pub mirror_status: u16,
    /// Status, body or both.
    pub kind: &'static str,
}

#[derive(Debug)]
struct Tallies {
    mirrored: u64,
    compared: u64,
    status_mismatches: u64,
    body_mismatches: u64,
    errors: u64,
    primary_us: Histogram<u64>,
    mirror_us: Histogram<u64>,
    last: VecDeque<Mismatch>,
}

/// A route's mirror: the queue to its task and what the task counted.
#[derive(Debug)]
pub struct Mirror {
    route: String,
    config: MirrorConfig,
    queue: mpsc::Sender<Job>,
    /// Requests seen, for sampling.
    seen: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    tallies: Arc<Mutex<Tallies>>,
}

/// `GET /mirror` for one route.
#[derive(Debug, Serialize)]
pub struct MirrorView {
    /// The route.
    pub route: String,
    /// The mirror pool.
    pub pool: String,
    /// Share copied, percent.
    pub percent: f64,
    /// Whether answers are compared.
    pub compare: bool,
    /// Copies sent to the mirror pool.
    pub mirrored: u64,
    /// Copies whose answer was compared with the primary's.
    pub compared: u64,
    /// Compared answers with another status.
    pub status_mismatches: u64,
    /// Compared answers with the same status and another body.
    pub body_mismatches: u64,
    /// Copies the mirror pool gave no answer of its own to.
    pub errors: u64,
    /// Copies dropped because the queue was full.
    pub dropped: u64,
    /// Requests not copied because their body was too long or chunked.
    pub skipped: u64,
    /// Primary latency of mirrored requests, p50 and p99, milliseconds.
    pub primary_ms: [f64; 2],
    /// Mirror latency, p50 and p99, milliseconds.
    pub mirror_ms: [f64; 2],
    /// The latest mismatches, newest last.
    pub last_mismatches: Vec<Mismatch>,
}

fn count(route: &str, result: &'static str) {
    metrics::counter!(MIRROR_REQUESTS_TOTAL, "route" => route.to_owned(), "result" => result)
        .increment(1);
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
}

// === impl Mirror ===

impl Mirror {
    /// Starts the route's mirror task, which sends copies through `service`. Needs a Tokio
    /// runtime; the task ends when the mirror is dropped (a reload replaces it).
    pub fn start(route: &str, config: MirrorConfig, service: MirrorService) -> Arc<Mirror> {
        let (queue, mut jobs) = mpsc::channel::<Job>(MIRROR_QUEUE);
        let tallies = Arc::new(Mutex::new(Tallies {
            mirrored: 0,
            compared: 0,
            status_mismatches: 0,
            body_mismatches: 0,
            errors: 0,
            primary_us: histogram(),
            mirror_us: histogram(),
            last: VecDeque::new(),
        }));
        let mirror = Arc::new(Mirror {
            route: route.to_owned(),
            config,
            queue,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            tallies: tallies.clone(),
        });
        let route = route.to_owned();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MIRROR_CONCURRENCY));
            while let Some(job) = jobs.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let service = service.clone();
                let (route, tallies) = (route.clone(), tallies.clone());
                tokio::spawn(async move {
                    mirror_one(&route, service, job, &tallies).await;
                    drop(permit);
                });
            }
        });
        mirror
    }

    /// Whether this request is to be copied: the k-th request is when
    /// `floor((k+1)·p/100) > floor(k·p/100)`, so the copies are exactly `percent` of the
    /// requests to within one, evenly spread, with one atomic counter and no lock.
    pub fn sample(&self) -> bool {
        let p = self.config.percent / 100.0;
        let k = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((k + 1.0) * p).floor() > (k * p).floor()
    }

    /// The request and a copy for the mirror, if its body can be copied; the body is read
    /// first when there is one. `None` for the copy when it was skipped. A body that cannot
    /// be read is answered here as the forwarder would: `413` past `max_request_body`, else
    /// `400`.
    pub async fn copy(
        &self,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Option<Request<Body>>), Response<Body>> {
        let hint = request.body().size_hint();
        let short = hint.exact().is_some_and(|n| n <= MIRROR_BODY_CAP);
        if !short {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            count(&self.route, "skipped");
            return Ok((request, None));
        }
        let (parts, body) = request.into_parts();
        let bytes = if hint.exact() == Some(0) {
            Bytes::new()
        } else {
            match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if caused_by_length_limit(&e) => {
                    return Err(local_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ))
                }
                Err(_) => {
                    return Err(local_reply(
                        StatusCode::BAD_REQUEST,
                        "malformed or incomplete request body",
                    ))
                }
            }
        };
        let mut copy = Request::new(Body::from(bytes.clone()));
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        if let Some(peer) = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            copy.extensions_mut().insert(*peer);
        }
        Ok((Request::from_parts(parts, Body::from(bytes)), Some(copy)))
    }

    /// Queues a copy; with `compare`, returns the sender the primary's answer goes to.
    pub fn send(&self, copy: Request<Body>) -> Option<oneshot::Sender<PrimaryAnswer>> {
        let (tx, rx) = if self.config.compare {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let job = Job {
            request: copy,
            primary: rx,
        };
        match self.queue.try_send(job) {
            Ok(()) => tx,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                count(&self.route, "dropped");
                None
            }
        }
    }

    /// What the mirror counted.
    pub fn view(&self) -> MirrorView {
        let t = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let ms = |h: &Histogram<u64>| {
            if h.is_empty() {
                [0.0, 0.0]
            } else {
                [
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                ]
            }
        };
        MirrorView {
            route: self.route.clone(),
            pool: self.config.pool.clone(),
            percent: self.config.percent,
            compare: self.config.compare,
            mirrored: t.mirrored,
            compared: t.compared,
            status_mismatches: t.status_mismatches,
            body_mismatches: t.body_mismatches,
            errors: t.errors,
            dropped: self.dropped.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            primary_ms: ms(&t.primary_us),
            mirror_ms: ms(&t.mirror_us),
            last_mismatches: t.last.iter().cloned().collect(),
        }
    }
}

/// Sends one copy, reads its answer, and compares it with the primary's.
async fn mirror_one(route: &str, service: MirrorService, job: Job, tallies: &Mutex<Tallies>) {
    let (method, uri): (Method, Uri) = (job.request.method().clone(), job.request.uri().clone());
    let started = Instant::now();
    let Ok(response) = service.oneshot(job.request).await;
    let latency = started.elapsed();
    let local = response.extensions().get::<LocalReply>().is_some();
    let status = response.status().as_u16();
    let mut hasher = std::hash::DefaultHasher::new();
    let mut body = response.into_body();
    let mut body_failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.write(data);
                }
            }
            Err(_) => {
                body_failed = true;
                break;
            }
        }
    }
    let hash = hasher.finish();
    let primary = match job.primary {
        Some(rx) => tokio::time::timeout(PRIMARY_WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let mut t = tallies.lock().unwrap_or_else(|e| e.into_inner());
    t.mirrored += 1;
    let _ = t.mirror_us.record(latency.as_micros() as u64);
    let result = if local || body_failed {
        t.errors += 1;
        "error"
    } else {
        match primary {
            None => "ok",
            Some(p) => {
                t.compared += 1;
                let _ = t.primary_us.record(p.latency.as_micros() as u64);
                let kind = if p.status != status {
                    t.status_mismatches += 1;
                    Some("status")
                } else if p.body_hash != hash {
                    t.body_mismatches += 1;
                    Some("body")
                } else {
                    None
                };
                match kind {
                    None => "match",
                    Some(kind) => {
                        if t.last.len() == LAST_MISMATCHES {
                            t.last.pop_front();
                        }
                        t.last.push_back(Mismatch {
                            method: method.to_string(),
                            path: uri
                                .path_and_query()
                                .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
                            primary_status: p.status,
                            mirror_status: status,
                            kind,
                        });
                        if kind == "status" {
                            "status_mismatch"
                        } else {
                            "body_mismatch"
                        }
                    }
                }
            }
        }
    };
    drop(t);
    count(route, result);
}

pin_project_lite::pin_project! {
    /// The primary's answer body, hashed as it streams; the hash, status and latency go to
    /// the mirror task when it ends (not at all if the client goes away first).
    pub struct HashingBody {
        #[pin]
        inner: Body,
        hasher: std::hash::DefaultHasher,
        status: u16,
        latency: Duration,
        done: Option<oneshot::Sender<PrimaryAnswer>>,
    }
}

impl HashingBody {
    /// Hashes `inner`, an answer with `status` that took `latency` to its headers.
    pub fn new(
        inner: Body,
        status: u16,
        latency: Duration,
        done: oneshot::Sender<PrimaryAnswer>,
    ) -> Self {
        HashingBody {
            inner,
            hasher: std::hash::DefaultHasher::new(),
            status,
            latency,
            done: Some(done),
        }
    }
}

impl http_body::Body for HashingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hasher.write(data);
                }
                // hyper stops polling once the body says it ended (a known length was
                // read): the answer is complete now.
                this.inner.is_end_stream()
            }
            Poll::Ready(None) => true,
            _ => false,
        };
        if ended {
            if let Some(done) = this.done.take() {
                let _ = done.send(PrimaryAnswer {
                    status: *this.status,
                    body_hash: this.hasher.finish(),
                    latency: *this.latency,
                });
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
