//! A simulated backend: the replacement of the original project's `server.py PORT [DELAY]`.
//!
//! Every path answers `200` with `backend PORT\n`, after an optional service time, from a
//! bounded number of worker slots (further requests wait in a FIFO queue: a backend that
//! only sleeps never queues, and then there is nothing for a balancer to balance). A
//! fraction of requests can fail with `503`. Service times follow a distribution
//! ([`service_time`]) and can change on a schedule ([`schedule`]: slowdowns, stalls, periodic
//! pauses, fail-fast). `POST /control` changes delay, error rate and health at run time;
//! `GET /control` reports them with the live queue length.
//!
//! A few paths under `/_sim/` exist for tests of the proxy itself: `echo` (the request as
//! JSON), `bytes?n=N` (a streamed download), `upload` (counts a streamed upload), `mirror`
//! (streams the request body back, so a client can check every byte came through) and `ws`
//! (a WebSocket echo).

pub mod schedule;
pub mod service_time;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{
        ws::{WebSocket, WebSocketUpgrade},
        Query, State,
    },
    http::{HeaderMap, Method, StatusCode, Uri, Version},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Json, Router,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};

pub use schedule::{Event, Schedule};
pub use service_time::ServiceTime;

/// Tokio's timer fires on the first millisecond tick at or after a deadline, so a sleep lasts
/// about half a millisecond too long on average. Aiming half a millisecond early makes service
/// times unbiased, which matters when they are 10 ms and the load is 90% of capacity.
pub const TIMER_ROUNDING: Duration = Duration::from_micros(500);

/// What a simulated backend does to each request; all of it can change at run time.
#[derive(Debug, Clone, Serialize)]
pub struct SimSettings {
    /// Service time of each request.
    pub service: ServiceTime,
    /// Fraction of requests answered with `503` after being served (not `/health`).
    pub error_rate: f64,
    /// Whether `/health` answers `200` (or `503`).
    pub healthy: bool,
    /// Scheduled changes, relative to the sim's clock (see [`SimHandle::restart_clock`]).
    pub schedule: Schedule,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            service: ServiceTime::constant(Duration::ZERO),
            error_rate: 0.0,
            healthy: true,
            schedule: Schedule::default(),
        }
    }
}

/// A `POST /control` body: every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimControl {
    /// New constant service time, e.g. `"200ms"`.
    pub delay: Option<String>,
    /// New service-time distribution in the command-line form, e.g. `"exp:10ms"`.
    pub service: Option<String>,
    /// New error rate in [0, 1].
    pub error_rate: Option<f64>,
    /// New health.
    pub healthy: Option<bool>,
}

/// What `GET /control` reports.
#[derive(Debug, Serialize)]
pub struct SimReport {
    /// The port.
    pub port: u16,
    /// Current settings.
    #[serde(flatten)]
    pub settings: SimSettings,
    /// Worker slots, if bounded.
    pub slots: Option<usize>,
    /// Requests being served.
    pub active: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests served since start.
    pub served: u64,
    /// Connections accepted (only with [`H2Tuning`], see [`run_tuned`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Most requests in flight at once on one connection (only with [`H2Tuning`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_streams_per_connection: Option<usize>,
}

#[derive(Debug)]
struct Sim {
    port: u16,
    body: Bytes,
    settings: Mutex<SimSettings>,
    slots: Option<(usize, Semaphore)>,
    epoch: Mutex<Instant>,
    active: AtomicUsize,
    queued: AtomicUsize,
    served: AtomicU64,
    /// Whether connections are counted ([`run_tuned`]).
    tuned: AtomicBool,
    connections: AtomicU64,
    peak_streams_per_connection: AtomicUsize,
}

impl Sim {
    fn settings(&self) -> SimSettings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn epoch(&self) -> Instant {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time on the schedule's clock, or `None` before the clock has started (the lab starts
    /// it at the end of the warm-up, and no event applies before that).
    fn schedule_time(&self) -> Option<(Instant, Duration)> {
        let epoch = self.epoch();
        let now = Instant::now();
        (now >= epoch).then(|| (epoch, now - epoch))
    }

    fn report(&self) -> SimReport {
        SimReport {
            port: self.port,
            settings: self.settings(),
            slots: self.slots.as_ref().map(|(n, _)| *n),
            active: self.active.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            connections: self
                .tuned
                .load(Ordering::Relaxed)
                .then(|| self.connections.load(Ordering::Relaxed)),
            peak_streams_per_connection: self
                .tuned
                .load(Ordering::Relaxed)
                .then(|| self.peak_streams_per_connection.load(Ordering::Relaxed)),
        }
    }
}

/// Checks an error rate.
pub fn valid_error_rate(rate: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error rate must be between 0 and 1, got {rate}"))
    }
}

/// A simulated backend running in this process: its address and live state.
#[derive(Debug, Clone)]
pub struct SimHandle {
    sim: Arc<Sim>,
    task: tokio::task::AbortHandle,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl SimHandle {
    /// The wait a new request would see if `ahead` requests are in front of it: that work
    /// spread over the slots at the current mean service time (slowdowns included), plus the
    /// rest of any pause in progress, in seconds. The lab's oracle routes by it.
    pub fn expected_wait(&self, ahead: usize) -> f64 {
        let settings = self.sim.settings();
        let clock = self.sim.schedule_time();
        let slowdown = clock.map_or(1.0, |(_, t)| settings.schedule.slowdown(t));
        let mean = settings.service.mean().as_secs_f64() * slowdown;
        let slots = self.sim.slots.as_ref().map_or(1, |(n, _)| *n) as f64;
        let pause = clock
            .and_then(|(_, t)| Some(settings.schedule.paused_until(t)? - t))
            .map_or(0.0, |d| d.as_secs_f64());
        pause + mean * (ahead as f64 + 1.0) / slots
    }

    /// Starts the schedule's clock at `epoch` (before it, time counts as 0).
    pub fn restart_clock(&self, epoch: Instant) {
        *self.sim.epoch.lock().unwrap_or_else(|e| e.into_inner()) = epoch;
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

fn new_sim(port: u16, settings: SimSettings, slots: Option<usize>) -> Arc<Sim> {
    Arc::new(Sim {
        port,
        body: Bytes::from(format!("backend {port}\n")),
        settings: Mutex::new(settings),
        slots: slots.map(|n| (n, Semaphore::new(n))),
        epoch: Mutex::new(Instant::now()),
        active: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        tuned: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        peak_streams_per_connection: AtomicUsize::new(0),
    })
}

fn router_for(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/control", get(report).post(control))
        .route("/_sim/echo", any(echo))
        .route("/_sim/bytes", get(bytes))
        .route("/_sim/upload", post(upload))
        .route("/_sim/mirror", post(mirror))
        .route("/_sim/ws", get(websocket))
        .fallback(serve)
        .with_state(sim)
        // Its own requests in flight and latency on `/_alb/load`, for `prequal` probes.
        .layer(crate::load_report::LoadReportLayer::new())
}

/// Serves a simulated backend on `listener` until the task is dropped.
pub async fn run(
    listener: TcpListener,
    settings: SimSettings,
    slots: Option<usize>,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    serve_on(listener, new_sim(port, settings, slots)).await
}

async fn serve_on(listener: TcpListener, sim: Arc<Sim>) -> std::io::Result<()> {
    axum::serve(
        listener,
        router_for(sim).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// How a simulated backend treats HTTP/2 connections, for tests of ALB's HTTP/2 pool
/// (`alb backend --h2-max-streams N --h2-goaway-after N`).
#[derive(Debug, Clone, Copy, Default)]
pub struct H2Tuning {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` sent to clients (hyper's default, 200, otherwise).
    pub max_streams: Option<u32>,
    /// Graceful GOAWAY (RFC 9113 §6.8) once a connection has received this many requests:
    /// those in flight finish, later streams are refused, the connection closes.
    pub goaway_after: Option<u64>,
}

/// One connection of [`run_tuned`].
#[derive(Debug, Default)]
struct TunedConnection {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    goaway: tokio::sync::Notify,
}

/// Serves a simulated backend on `listener` with `tuning`, counting connections and the
/// most requests in flight on one (both in `GET /control`), until the task is dropped.
pub async fn run_tuned(
    listener: TcpListener,
    settings: SimSettings,
    slots: Option<usize>,
    tuning: H2Tuning,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
    };
    use tower::ServiceExt as _;

    let port = listener.local_addr()?.port();
    let sim = new_sim(port, settings, slots);
    sim.tuned.store(true, Ordering::Relaxed);
    let router = router_for(sim.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(n) = tuning.max_streams {
        builder.http2().max_concurrent_streams(n);
    }
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        sim.connections.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(TunedConnection::default());
        let (sim, router, builder) = (sim.clone(), router.clone(), builder.clone());
        let counted = connection.clone();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (sim, router, connection) = (sim.clone(), router.clone(), counted.clone());
                async move {
                    let now = connection.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    sim.peak_streams_per_connection
                        .fetch_max(now, Ordering::SeqCst);
                    let seen = connection.requests.fetch_add(1, Ordering::SeqCst) + 1;
                    if Some(seen) == tuning.goaway_after {
                        connection.goaway.notify_one();
                    }
                    let response = router.oneshot(request).await;
                    connection.in_flight.fetch_sub(1, Ordering::SeqCst);
                    response
                }
            });
        tokio::spawn(async move {
            let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(serving);
            tokio::select! {
                _ = serving.as_mut() => return,
                () = connection.goaway.notified() => serving.as_mut().graceful_shutdown(),
            }
            let _ = serving.await;
        });
    }
}

/// Serves a simulated backend over TLS on `listener` (ALPN `h2` and `http/1.1`, as `tls`
/// offers) until the task is dropped.
pub async fn run_tls(
    listener: std::net::TcpListener,
    settings: SimSettings,
    slots: Option<usize>,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    axum_server::from_tcp_rustls(listener, config)?
        .serve(
            router_for(new_sim(port, settings, slots))
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
}

/// Binds `127.0.0.1:port` (0 for any) and serves a simulated backend in a background task.
pub async fn spawn(
    port: u16,
    settings: SimSettings,
    slots: Option<usize>,
) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let sim = new_sim(addr.port(), settings, slots);
    let task = tokio::spawn(serve_on(listener, sim.clone())).abort_handle();
    Ok(SimHandle { sim, task, addr })
}

async fn serve(State(sim): State<Arc<Sim>>) -> Response {
    let settings = sim.settings();
    let schedule = &settings.schedule;
    let fail_fast = sim
        .schedule_time()
        .map_or(0.0, |(_, t)| schedule.fail_fraction(t));
    if fail_fast > 0.0 && rand::random::<f64>() < fail_fast {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("backend {} failed fast\n", sim.port),
        )
            .into_response();
    }
    sim.queued.fetch_add(1, Ordering::Relaxed);
    let permit = match &sim.slots {
        Some((_, semaphore)) => semaphore.acquire().await.ok(),
        None => None,
    };
    sim.queued.fetch_sub(1, Ordering::Relaxed);
    sim.active.fetch_add(1, Ordering::Relaxed);
    let work = settings.service.sample(&mut rand::rng());
    let finish = match sim.schedule_time() {
        Some((epoch, t)) => {
            let work = work.mul_f64(schedule.slowdown(t));
            epoch + schedule.finish_time(t, work)
        }
        None => Instant::now() + work,
    };
    if !work.is_zero() {
        tokio::time::sleep_until(finish.checked_sub(TIMER_ROUNDING).unwrap_or(finish)).await;
    }
    sim.active.fetch_sub(1, Ordering::Relaxed);
    sim.served.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    if settings.error_rate > 0.0 && rand::random::<f64>() < settings.error_rate {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("backend {} error\n", sim.port),
        )
            .into_response();
    }
    sim.body.clone().into_response()
}

async fn health(State(sim): State<Arc<Sim>>) -> Response {
    let settings = sim.settings();
    // A stalled process does not answer its health checks either.
    if let Some((epoch, t)) = sim.schedule_time() {
        if let Some(end) = settings.schedule.paused_until(t) {
            tokio::time::sleep_until(epoch + end).await;
        }
    }
    let status = if settings.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, sim.body.clone()).into_response()
}

async fn report(State(sim): State<Arc<Sim>>) -> Json<SimReport> {
    Json(sim.report())
}

async fn control(State(sim): State<Arc<Sim>>, Json(change): Json<SimControl>) -> Response {
    let bad = |e: String| (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    let mut service = None;
    if let Some(text) = &change.delay {
        match humantime::parse_duration(text) {
            Ok(d) => service = Some(ServiceTime::constant(d)),
            Err(e) => return bad(format!("delay: {e}")),
        }
    }
    if let Some(text) = &change.service {
        match text.parse::<ServiceTime>() {
            Ok(s) => service = Some(s),
            Err(e) => return bad(format!("service: {e}")),
        }
    }
    let error_rate = match change.error_rate.map(valid_error_rate) {
        Some(Err(e)) => return bad(e),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    {
        let mut settings = sim.settings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = service {
            settings.service = s;
        }
        if let Some(r) = error_rate {
            settings.error_rate = r;
        }
        if let Some(h) = change.healthy {
            settings.healthy = h;
        }
    }
    Json(sim.report()).into_response()
}

#[derive(Serialize)]
struct Echo {
    method: String,
    uri: String,
    version: String,
    headers: Vec<(String, String)>,
}

async fn echo(method: Method, uri: Uri, version: Version, headers: HeaderMap) -> Json<Echo> {
    Json(Echo {
        method: method.to_string(),
        uri: uri.to_string(),
        version: format!("{version:?}"),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
    })
}

#[derive(Deserialize)]
struct BytesQuery {
    n: u64,
}

/// Streams `n` bytes in 64 KiB chunks without holding more than one chunk.
async fn bytes(Query(q): Query<BytesQuery>) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let full = q.n / CHUNK as u64;
    let rest = (q.n % CHUNK as u64) as usize;
    let stream = futures_util::stream::iter(
        std::iter::repeat_n(chunk.clone(), full as usize)
            .chain((rest > 0).then(|| chunk.slice(..rest)))
            .map(Ok::<_, std::io::Error>),
    );
    let mut response = Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(q.n));
    response
}

/// Counts a streamed upload without keeping it.
async fn upload(body: Body) -> Response {
    let mut body = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => total += c.len() as u64,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        }
    }
    format!("received {total}\n").into_response()
}

/// Streams the request body back as the response body, chunk by chunk as it arrives (the
/// soak compares every byte it sent with what came back through the proxy).
async fn mirror(headers: HeaderMap, body: Body) -> Response {
    let mut response = Body::new(body).into_response();
    if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, length.clone());
    }
    response
}

async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if socket.send(message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mirror_streams_the_request_body_back() {
        let sim = spawn(0, SimSettings::default(), None).await.unwrap();
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let response = reqwest::Client::new()
            .post(format!("http://{}/_sim/mirror", sim.addr))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), Some(body.len() as u64));
        assert_eq!(response.bytes().await.unwrap(), body);
        sim.shutdown();
    }
}
