//! A simulated backend: the replacement of the original project's `server.py PORT [DELAY]`.
//!
//! Every path answers `200` with `backend PORT\n`, after an optional service time, from a
//! bounded number of worker slots (further requests wait in a FIFO queue: a backend that
//! only sleeps never queues, and then there is nothing for a balancer to balance). A
//! fraction of requests can fail with `503`. `POST /control` changes delay, error rate and
//! health at run time; `GET /control` reports them with the live queue length.
//!
//! A few paths under `/_sim/` exist for tests of the proxy itself: `echo` (the request as
//! JSON), `bytes?n=N` (a streamed download), `upload` (counts a streamed upload) and `ws`
//! (a WebSocket echo).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
use tokio::{net::TcpListener, sync::Semaphore};

/// What a simulated backend does to each request; all of it can change at run time.
#[derive(Debug, Clone, Serialize)]
pub struct SimSettings {
    /// Service time of each request.
    #[serde(serialize_with = "as_humantime")]
    pub delay: Duration,
    /// Fraction of requests answered with `503` (not `/health`).
    pub error_rate: f64,
    /// Whether `/health` answers `200` (or `503`).
    pub healthy: bool,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            delay: Duration::ZERO,
            error_rate: 0.0,
            healthy: true,
        }
    }
}

fn as_humantime<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A `POST /control` body: every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimControl {
    /// New service time, e.g. `"200ms"`.
    pub delay: Option<String>,
    /// New error rate in [0, 1].
    pub error_rate: Option<f64>,
    /// New health.
    pub healthy: Option<bool>,
}

/// What `GET /control` reports.
#[derive(Debug, Serialize)]
struct SimReport {
    port: u16,
    #[serde(flatten)]
    settings: SimSettings,
    slots: Option<usize>,
    active: usize,
    queued: usize,
    served: u64,
}

#[derive(Debug)]
struct Sim {
    port: u16,
    body: Bytes,
    settings: Mutex<SimSettings>,
    slots: Option<(usize, Semaphore)>,
    active: AtomicUsize,
    queued: AtomicUsize,
    served: AtomicU64,
}

impl Sim {
    fn settings(&self) -> SimSettings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn report(&self) -> SimReport {
        SimReport {
            port: self.port,
            settings: self.settings(),
            slots: self.slots.as_ref().map(|(n, _)| *n),
            active: self.active.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
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

/// The simulated backend's routes, for a listener on `port`.
pub fn router(port: u16, settings: SimSettings, slots: Option<usize>) -> Router {
    let sim = Arc::new(Sim {
        port,
        body: Bytes::from(format!("backend {port}\n")),
        settings: Mutex::new(settings),
        slots: slots.map(|n| (n, Semaphore::new(n))),
        active: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        served: AtomicU64::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/control", get(report).post(control))
        .route("/_sim/echo", any(echo))
        .route("/_sim/bytes", get(bytes))
        .route("/_sim/upload", post(upload))
        .route("/_sim/ws", get(websocket))
        .fallback(serve)
        .with_state(sim)
}

/// Serves a simulated backend on `listener` until the task is dropped.
pub async fn run(
    listener: TcpListener,
    settings: SimSettings,
    slots: Option<usize>,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    axum::serve(
        listener,
        router(port, settings, slots).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Binds `127.0.0.1:port` (0 for any) and serves a simulated backend in a background task.
pub async fn spawn(
    port: u16,
    settings: SimSettings,
    slots: Option<usize>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(run(listener, settings, slots))))
}

async fn serve(State(sim): State<Arc<Sim>>) -> Response {
    let settings = sim.settings();
    sim.queued.fetch_add(1, Ordering::Relaxed);
    let permit = match &sim.slots {
        Some((_, semaphore)) => semaphore.acquire().await.ok(),
        None => None,
    };
    sim.queued.fetch_sub(1, Ordering::Relaxed);
    sim.active.fetch_add(1, Ordering::Relaxed);
    if !settings.delay.is_zero() {
        tokio::time::sleep(settings.delay).await;
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
    let status = if sim.settings().healthy {
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
    let delay = match change.delay.as_deref().map(humantime::parse_duration) {
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("delay: {e}\n")).into_response();
        }
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let error_rate = match change.error_rate.map(valid_error_rate) {
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    {
        let mut settings = sim.settings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = delay {
            settings.delay = d;
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
