//! HTTP/2 connections to one backend, opened as its stream limit requires
//! (`upstream_protocol: "h2"`).
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per backend and queues every stream
//! past the backend's `SETTINGS_MAX_CONCURRENT_STREAMS` behind it, so a backend that allows 5
//! streams serves 5 requests at a time however many connections it would accept. Here, as in
//! Envoy, a backend gets up to [`MAX_CONNECTIONS`] connections: a request takes the
//! connection with the fewest streams in flight among those below the backend's limit; when
//! every connection is full, another is opened, and only when [`MAX_CONNECTIONS`] are open
//! and full does the request wait (until a stream ends, within the request timeout).
//!
//! The limit is the one the backend sent: a connection is used only once the backend's first
//! `SETTINGS` frame (its connection preface, RFC 9113 §3.4) has arrived, so the first burst
//! of streams already fits. hyper applies that frame but does not expose it on the sending
//! side, so `Sniff` reads the frame headers of what the backend sends (9 bytes each, RFC
//! 9113 §4.1; the payload of `DATA` frames is skipped, not copied) and keeps the last
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (§6.5.2; 100 when absent, the value hyper assumes) and
//! whether a `GOAWAY` (§6.8) arrived.
//!
//! GOAWAY drains: a connection that received one takes no new stream, its streams in flight
//! finish, and it closes when the last one ends. A request whose stream was refused is sent
//! again on another connection (at most [`MAX_ATTEMPTS`] times) when that is safe:
//! - hyper never wrote it (the connection had closed: hyper hands it back whole);
//! - bodiless, its stream was reset with `REFUSED_STREAM` (RFC 9113 §8.7: not processed);
//! - bodiless and idempotent (RFC 9110 §9.2.2), it failed on a connection that received
//!   GOAWAY. RFC 9113 §8.7 makes every stream above the GOAWAY's last stream id safe to
//!   retry, but h2 reports those with the same error as a stream opened in the instant the
//!   GOAWAY arrived (whose HEADERS may have reached the backend, which then ran it), and a
//!   backend that closes its drained connection with streams unread gets it reset by the
//!   kernel, which can discard the final GOAWAY: every stream then fails with "connection
//!   reset". Only a request that may run twice is retried on those errors (the rule HTTP/1.1
//!   clients follow for a keep-alive connection closed under a request, RFC 9112 §9.3.1).
//!
//! A refused request with a body is not retried: its body was streamed out and is gone.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{uri::Authority, Request, Response};
use http_body::Body as _;
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use super::tls::{UpstreamProtocol, UpstreamTls, UpstreamTlsConfig};
use crate::semantics::idempotent;
use crate::telemetry::{UPSTREAM_H2_CONNECTIONS, UPSTREAM_H2_RETRIES_TOTAL};

/// Most HTTP/2 connections kept open to one backend; past them requests wait for a stream.
pub const MAX_CONNECTIONS: usize = 16;

/// Times a request is sent at most (the first time and the retries of refused streams).
pub const MAX_ATTEMPTS: usize = 4;

/// Streams a backend allows when its SETTINGS do not say (RFC 9113 §6.5.2 says unlimited;
/// hyper then keeps its own initial bound of 100, so more would queue inside hyper).
pub const DEFAULT_MAX_STREAMS: usize = 100;

/// Why a request could not be sent over the backend's HTTP/2 connections.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// No TCP connection could be made.
    #[error("{0}")]
    Connect(io::Error),
    /// The TLS handshake failed, or the backend did not agree to `h2` by ALPN.
    #[error("{0}")]
    Tls(io::Error),
    /// The HTTP/2 connection could not be set up (no preface, not HTTP/2).
    #[error("{0}")]
    Handshake(String),
    /// The request failed on its stream.
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

/// What the backend told this connection so far, read by [`Sniff`] from its frames.
#[derive(Debug)]
struct PeerSettings {
    /// Its last `SETTINGS_MAX_CONCURRENT_STREAMS`.
    max_streams: AtomicUsize,
    /// Whether it sent GOAWAY.
    going_away: AtomicBool,
    /// `PREFACE_*`: whether its first SETTINGS frame arrived.
    preface: AtomicU8,
    /// Wakes the connect waiting for the preface.
    preface_seen: Notify,
}

const PREFACE_PENDING: u8 = 0;
const PREFACE_OK: u8 = 1;
const PREFACE_BAD: u8 = 2;

impl PeerSettings {
    fn new() -> Self {
        PeerSettings {
            max_streams: AtomicUsize::new(DEFAULT_MAX_STREAMS),
            going_away: AtomicBool::new(false),
            preface: AtomicU8::new(PREFACE_PENDING),
            preface_seen: Notify::new(),
        }
    }

    fn preface(&self, state: u8) {
        if self
            .preface
            .compare_exchange(PREFACE_PENDING, state, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.preface_seen.notify_waiters();
        }
    }

    /// Waits for the backend's first SETTINGS frame; `false` if it sent something else first
    /// or closed.
    async fn preface_done(&self) -> bool {
        loop {
            let seen = self.preface_seen.notified();
            tokio::pin!(seen);
            seen.as_mut().enable();
            match self.preface.load(Ordering::SeqCst) {
                PREFACE_PENDING => seen.await,
                state => return state == PREFACE_OK,
            }
        }
    }
}

// === impl Sniff ===

/// The backend's side of one connection, passed through unchanged while its frame headers
/// are read for SETTINGS and GOAWAY (see the module docs).
struct Sniff<T> {
    io: T,
    frames: FrameReader,
    peer: Arc<PeerSettings>,
}

/// Frame types and values read (RFC 9113 §6.5, §6.5.2, §6.8).
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS parameters kept per frame (6 bytes each); a frame with more is unusual and its
/// further parameters are not read.
const SETTINGS_KEPT: usize = 16 * 6;

/// Splits a byte stream into HTTP/2 frames, whatever the reads' boundaries.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 9],
    have: usize,
    kind: u8,
    /// Payload bytes of the current frame not yet seen (0 while reading a header).
    remaining: usize,
    /// Whether the current frame's payload is kept (non-ACK SETTINGS, GOAWAY).
    keep: bool,
    payload: Vec<u8>,
    frames: u64,
}

impl FrameReader {
    fn feed(&mut self, mut bytes: &[u8], peer: &PeerSettings) {
        while !bytes.is_empty() {
            if self.have < self.header.len() {
                let n = (self.header.len() - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < self.header.len() {
                    return;
                }
                let h = self.header;
                self.remaining =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.kind = h[3];
                let flags = h[4];
                self.keep = (self.kind == FRAME_SETTINGS && flags & FLAG_ACK == 0)
                    || self.kind == FRAME_GOAWAY;
                // The preface is a SETTINGS frame and comes first (RFC 9113 §3.4): anything
                // else (an HTTP/1.1 answer, TLS garbage) is known from its 9 first bytes.
                if self.frames == 0 && !(self.kind == FRAME_SETTINGS && flags & FLAG_ACK == 0) {
                    peer.preface(PREFACE_BAD);
                }
                if self.remaining == 0 {
                    self.frame_done(peer);
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if self.keep && self.payload.len() < SETTINGS_KEPT {
                let room = SETTINGS_KEPT - self.payload.len();
                self.payload.extend_from_slice(&bytes[..n.min(room)]);
            }
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.frame_done(peer);
            }
        }
    }

    fn frame_done(&mut self, peer: &PeerSettings) {
        let first = self.frames == 0;
        self.frames += 1;
        match self.kind {
            FRAME_SETTINGS if self.keep => {
                for setting in self.payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                        let value =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        peer.max_streams.store(
                            usize::try_from(value).unwrap_or(usize::MAX),
                            Ordering::SeqCst,
                        );
                    }
                }
                if first {
                    peer.preface(PREFACE_OK);
                }
            }
            FRAME_GOAWAY => {
                peer.going_away.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
        self.have = 0;
        self.keep = false;
        self.payload.clear();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniff<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let new = &buf.filled()[before..];
            if new.is_empty() {
                // Closed before its preface: not an HTTP/2 server, or not for us.
                this.peer.preface(PREFACE_BAD);
            } else {
                this.frames.feed(new, &this.peer);
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniff<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === impl H2Connection ===

/// One HTTP/2 connection and its streams in flight.
#[derive(Debug)]
struct H2Connection {
    id: u64,
    sender: http2::SendRequest<Body>,
    in_flight: AtomicUsize,
    peer: Arc<PeerSettings>,
}

impl H2Connection {
    /// Whether it may take a new stream at all (open, no GOAWAY).
    fn open(&self) -> bool {
        !self.peer.going_away.load(Ordering::SeqCst) && !self.sender.is_closed()
    }

    /// Streams it can take now.
    fn room(&self) -> usize {
        self.peer
            .max_streams
            .load(Ordering::SeqCst)
            .saturating_sub(self.in_flight.load(Ordering::SeqCst))
    }
}

/// A stream counted on its connection until the response body ends or is dropped.
#[derive(Debug)]
struct StreamSlot {
    connection: Arc<H2Connection>,
    pool: Arc<H2Pool>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.connection.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Only requests waiting for room care; the notify takes a lock, so skip it otherwise.
        if self.pool.waiting.load(Ordering::SeqCst) > 0 {
            self.pool.changed.notify_waiters();
        }
    }
}

/// A response body read from a pooled HTTP/2 connection; its stream stops counting against
/// the connection's limit when the body ends or is dropped.
#[derive(Debug)]
pub struct H2Body {
    body: Incoming,
    slot: Option<StreamSlot>,
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None | Some(Err(_))) => this.slot = None,
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.slot = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

// === impl H2Pool ===

/// How an `https://` or `http://` backend's connections are made.
#[derive(Debug)]
enum Transport {
    /// h2c with prior knowledge.
    Plain,
    /// TLS offering ALPN `h2` only.
    Tls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
    /// TLS, but the backend's host is no name to check a certificate against.
    BadName(String),
}

#[derive(Debug, Default)]
struct PoolState {
    connections: Vec<Arc<H2Connection>>,
    /// Connections being opened.
    connecting: usize,
    /// The stream limit of the last connection opened: what a connection being opened is
    /// expected to take, so a burst opens as many as it needs at once, not one at a time.
    expected_streams: usize,
}

/// The HTTP/2 connections to one backend (see the module docs).
#[derive(Debug)]
pub struct H2Pool {
    authority: Authority,
    connect_timeout: Duration,
    transport: Transport,
    /// `upstream_tls` as written, so a reload with the same settings keeps the connections.
    tls_settings: Option<UpstreamTlsConfig>,
    state: Mutex<PoolState>,
    /// Requests waiting for room.
    waiting: AtomicUsize,
    /// Notified when a stream ends or a connection opens while requests wait.
    changed: Notify,
    next_id: AtomicU64,
    connections_gauge: Gauge,
    retried_goaway: Counter,
    retried_refused: Counter,
    retried_unsent: Counter,
}

impl H2Pool {
    /// A pool for the backend at `authority`, over TLS with `tls` when given (`https://`),
    /// else h2c with prior knowledge. `tls_settings` is `upstream_tls` as written.
    pub fn new(
        authority: Authority,
        connect_timeout: Duration,
        tls: Option<(&UpstreamTls, &UpstreamTlsConfig)>,
    ) -> Arc<Self> {
        let backend = authority.to_string();
        let (transport, tls_settings) = match tls {
            None => (Transport::Plain, None),
            Some((loaded, written)) => {
                let mut config = (*loaded.config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let server_name = loaded
                    .server_name
                    .clone()
                    .or_else(|| ServerName::try_from(host.to_owned()).ok());
                let transport = match server_name {
                    Some(server_name) => Transport::Tls {
                        config: Arc::new(config),
                        server_name,
                    },
                    None => Transport::BadName(format!(
                        "{host:?} is not a DNS name or IP address to check the certificate \
                         against (set upstream_tls.server_name)"
                    )),
                };
                (transport, Some(written.clone()))
            }
        };
        Arc::new(H2Pool {
            connect_timeout,
            transport,
            tls_settings,
            state: Mutex::new(PoolState {
                expected_streams: DEFAULT_MAX_STREAMS,
                ..PoolState::default()
            }),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
            next_id: AtomicU64::new(1),
            connections_gauge: metrics::gauge!(UPSTREAM_H2_CONNECTIONS, "backend" => backend.clone()),
            retried_goaway: metrics::counter!(
                UPSTREAM_H2_RETRIES_TOTAL, "backend" => backend.clone(), "reason" => "goaway"
            ),
            retried_refused: metrics::counter!(
                UPSTREAM_H2_RETRIES_TOTAL, "backend" => backend.clone(), "reason" => "refused_stream"
            ),
            retried_unsent: metrics::counter!(
                UPSTREAM_H2_RETRIES_TOTAL, "backend" => backend, "reason" => "unsent"
            ),
            authority,
        })
    }

    /// Whether this pool reaches `authority` the way `protocol`/`tls` ask, so a reload can
    /// keep it with its connections.
    pub fn serves(
        &self,
        authority: &Authority,
        connect_timeout: Duration,
        tls: Option<&UpstreamTlsConfig>,
    ) -> bool {
        self.authority == *authority
            && self.connect_timeout == connect_timeout
            && self.tls_settings.as_ref() == tls
    }

    /// Whether backends reached with `protocol` use an [`H2Pool`] (HTTP/2 with prior knowledge
    /// or by ALPN `h2` alone; `auto` lets ALPN choose per connection, left to hyper-util).
    pub fn wanted(protocol: UpstreamProtocol) -> bool {
        protocol == UpstreamProtocol::H2
    }

    /// Open connections, those draining after a GOAWAY excepted.
    pub fn connections(&self) -> usize {
        self.lock().connections.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (already rewritten for the backend) on a stream, retrying refused
    /// streams (see the module docs).
    pub async fn send(
        self: Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<H2Body>, H2Error> {
        host_as_authority(&mut request);
        // A bodiless request can be rebuilt if its stream is refused; one with a body cannot.
        let idempotent = idempotent(request.method());
        let replay = request.body().is_end_stream().then(|| {
            let mut copy = Request::new(());
            *copy.method_mut() = request.method().clone();
            *copy.uri_mut() = request.uri().clone();
            *copy.version_mut() = request.version();
            *copy.headers_mut() = request.headers().clone();
            copy
        });
        let mut attempt = 1;
        loop {
            let slot = self.checkout().await?;
            let mut sender = slot.connection.sender.clone();
            let mut error = match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|body| H2Body {
                        body,
                        slot: Some(slot),
                    }))
                }
                Err(error) => error,
            };
            let retry = match (error.take_message(), &replay) {
                // Never written: the connection closed before (a GOAWAY, most often).
                (Some(unsent), _) => Some((unsent, &self.retried_unsent)),
                (None, Some(head)) => {
                    let peer = &slot.connection.peer;
                    let counter = match refusal(error.error()) {
                        Some(false) => Some(&self.retried_refused),
                        Some(true) if idempotent => {
                            // No new stream on it from now on, whatever Sniff has seen yet.
                            peer.going_away.store(true, Ordering::SeqCst);
                            Some(&self.retried_goaway)
                        }
                        None if idempotent && peer.going_away.load(Ordering::SeqCst) => {
                            Some(&self.retried_goaway)
                        }
                        _ => None,
                    };
                    counter.map(|counter| (head.clone().map(|()| Body::empty()), counter))
                }
                (None, None) => None,
            };
            drop(slot);
            match retry {
                Some((again, counter)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(backend = %self.authority, attempt, "HTTP/2 stream refused, sending it again");
                    counter.increment(1);
                    request = again;
                    attempt += 1;
                }
                _ => return Err(H2Error::Request(error.into_error())),
            }
        }
    }

    /// A stream on the least-loaded connection with room, opening one if none has room.
    async fn checkout(self: &Arc<Self>) -> Result<StreamSlot, H2Error> {
        let mut waiting = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open_one = {
                let mut state = self.lock();
                let before = state.connections.len();
                state.connections.retain(|c| {
                    let open = c.open();
                    if !open {
                        tracing::debug!(
                            connection = c.id,
                            "HTTP/2 connection draining (GOAWAY or closed)"
                        );
                    }
                    open
                });
                if state.connections.len() != before {
                    self.connections_gauge.set(state.connections.len() as f64);
                }
                let best = state
                    .connections
                    .iter()
                    .filter(|c| c.room() > 0)
                    .min_by_key(|c| c.in_flight.load(Ordering::SeqCst));
                if let Some(connection) = best {
                    connection.in_flight.fetch_add(1, Ordering::SeqCst);
                    return Ok(StreamSlot {
                        connection: connection.clone(),
                        pool: self.clone(),
                    });
                }
                if waiting.is_none() {
                    waiting = Some(Waiting::new(self));
                }
                // Open one more unless the ones being opened will take every waiting request.
                let expected = state
                    .connecting
                    .saturating_mul(state.expected_streams.max(1));
                let open_one = state.connections.len() + state.connecting < MAX_CONNECTIONS
                    && expected < self.waiting.load(Ordering::SeqCst);
                if open_one {
                    state.connecting += 1;
                }
                open_one
            };
            if !open_one {
                changed.await;
                continue;
            }
            let mut connecting = Connecting(self, false);
            let opened = self.connect().await;
            let mut state = self.lock();
            state.connecting -= 1;
            connecting.1 = true;
            match opened {
                Ok(connection) => {
                    state.expected_streams = connection.peer.max_streams.load(Ordering::SeqCst);
                    state.connections.push(connection);
                    self.connections_gauge.set(state.connections.len() as f64);
                    drop(state);
                    self.changed.notify_waiters();
                }
                Err(e) => {
                    drop(state);
                    // Others waiting may try for themselves.
                    self.changed.notify_waiters();
                    return Err(e);
                }
            }
        }
    }

    /// Opens a connection and waits for the backend's preface.
    async fn connect(&self) -> Result<Arc<H2Connection>, H2Error> {
        let timed_out = |what: &str| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{what} timed out after {}",
                    humantime::format_duration(self.connect_timeout)
                ),
            )
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| H2Error::Connect(timed_out("connect")))?
        .map_err(H2Error::Connect)?;
        tcp.set_nodelay(true).map_err(H2Error::Connect)?;
        let peer = Arc::new(PeerSettings::new());
        let sender = match &self.transport {
            Transport::Plain => self.handshake(tcp, &peer).await?,
            Transport::BadName(why) => {
                return Err(H2Error::Tls(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    why.clone(),
                )))
            }
            Transport::Tls {
                config,
                server_name,
            } => {
                let connecting = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name.clone(), tcp);
                let stream = tokio::time::timeout(self.connect_timeout, connecting)
                    .await
                    .map_err(|_| H2Error::Tls(timed_out("TLS handshake")))?
                    .map_err(H2Error::Tls)?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(H2Error::Handshake(
                        "the backend did not agree to HTTP/2 by ALPN (upstream_protocol \"h2\")"
                            .into(),
                    ));
                }
                self.handshake(stream, &peer).await?
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            backend = %self.authority,
            connection = id,
            max_streams = peer.max_streams.load(Ordering::SeqCst),
            "HTTP/2 connection opened"
        );
        Ok(Arc::new(H2Connection {
            id,
            sender,
            in_flight: AtomicUsize::new(0),
            peer,
        }))
    }

    async fn handshake<T>(
        &self,
        io: T,
        peer: &Arc<PeerSettings>,
    ) -> Result<http2::SendRequest<Body>, H2Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Sniff {
            io,
            frames: FrameReader::default(),
            peer: peer.clone(),
        });
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Pings notice a dead connection that would otherwise hold its streams until
            // their timeout (as the hyper-util client is set up).
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|e| H2Error::Handshake(super::root_cause(&e)))?;
        let backend = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%backend, error = %e, "HTTP/2 connection ended with an error");
            }
        });
        match tokio::time::timeout(self.connect_timeout, peer.preface_done()).await {
            Ok(true) => Ok(sender),
            Ok(false) => Err(H2Error::Handshake(
                "the backend does not speak HTTP/2 (no SETTINGS preface; upstream_protocol \"h2\")"
                    .into(),
            )),
            Err(_) => Err(H2Error::Handshake(format!(
                "no HTTP/2 SETTINGS from the backend within {} (upstream_protocol \"h2\")",
                humantime::format_duration(self.connect_timeout)
            ))),
        }
    }
}

/// Moves `Host` into the URI's authority (`:authority`): an HTTP/2 request must not carry a
/// `Host` that differs from it (RFC 9113 §8.3.1), and nginx answers `400` ("duplicate host
/// header") when they differ. The connection is to the pool's backend whatever the URI says.
fn host_as_authority<B>(request: &mut Request<B>) {
    let Some(host) = request.headers().get(http::header::HOST) else {
        return;
    };
    let Ok(authority) = Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = request.uri().scheme().cloned();
    parts.authority = Some(authority);
    parts.path_and_query = request.uri().path_and_query().cloned();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
        request.headers_mut().remove(http::header::HOST);
    }
}

/// Whether a sent request's stream was refused: `Some(false)` by `RST_STREAM(REFUSED_STREAM)`
/// (not processed), `Some(true)` by the backend's GOAWAY (above its last stream id, not
/// processed, or opened as it arrived, maybe processed: see the module docs), `None`
/// otherwise.
fn refusal(error: &hyper::Error) -> Option<bool> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_go_away() && h2.is_remote() {
                return Some(true);
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(false);
            }
            return None;
        }
        cause = e.source();
    }
    None
}

/// A request counted in [`H2Pool::waiting`] while it waits for room.
struct Waiting<'a>(&'a H2Pool);

impl<'a> Waiting<'a> {
    fn new(pool: &'a H2Pool) -> Self {
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection being opened, counted in [`PoolState::connecting`] until it is in the pool
/// or has failed (`.1` set), or the request that opens it was dropped meanwhile.
struct Connecting<'a>(&'a H2Pool, bool);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.lock().connecting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(params: &[(u16, u32)], flags: u8) -> Vec<u8> {
        let len = params.len() * 6;
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            FRAME_SETTINGS,
            flags,
            0,
            0,
            0,
            0,
        ];
        for (id, value) in params {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        out
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_are_read_whatever_the_read_boundaries() {
        let mut stream = settings_frame(&[(0x4, 65535), (SETTINGS_MAX_CONCURRENT_STREAMS, 5)], 0);
        stream.extend(settings_frame(&[], FLAG_ACK));
        stream.extend(frame(0x0, &[7u8; 40_000]));
        stream.extend(settings_frame(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 9)], 0));
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        stream.extend(frame(FRAME_GOAWAY, &goaway));
        for chunk in [1, 2, 5, 9, 10, 4096, stream.len()] {
            let peer = PeerSettings::new();
            let mut reader = FrameReader::default();
            let mut seen_five = false;
            for piece in stream.chunks(chunk) {
                reader.feed(piece, &peer);
                seen_five |= peer.max_streams.load(Ordering::SeqCst) == 5;
            }
            // (Read in one piece, the later SETTINGS overwrites it within the same read.)
            assert!(seen_five || chunk == stream.len(), "chunk {chunk}");
            assert_eq!(peer.preface.load(Ordering::SeqCst), PREFACE_OK);
            assert_eq!(peer.max_streams.load(Ordering::SeqCst), 9, "chunk {chunk}");
            assert!(peer.going_away.load(Ordering::SeqCst));
            assert_eq!(reader.frames, 5);
        }
    }

    /// An HTTP/2 server (the h2 crate's) that refuses the first stream of every connection
    /// and every stream to `/refused` with `REFUSED_STREAM`, and answers `ok` otherwise;
    /// returns its address and the count of streams to `/refused`.
    async fn refusing_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    let mut first = true;
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        if request.uri().path() == "/refused" {
                            counted.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        } else if std::mem::take(&mut first) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        } else if let Ok(mut body) = respond.send_response(Response::new(()), false)
                        {
                            let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                });
            }
        });
        (addr, refused)
    }

    #[tokio::test]
    async fn refused_streams_are_sent_again_when_safe() {
        use http_body_util::BodyExt as _;
        let (addr, refused) = refusing_server().await;
        let pool = H2Pool::new(
            addr.to_string().parse().unwrap(),
            Duration::from_secs(5),
            None,
        );
        let get = |path: &str| {
            Request::get(format!("http://{addr}{path}"))
                .body(Body::empty())
                .unwrap()
        };
        // The first stream of the connection is refused, and sent again.
        for _ in 0..3 {
            let response = pool.clone().send(get("/")).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(pool.connections(), 1);
        // Refused every time: sent MAX_ATTEMPTS times, then the error.
        let e = pool.clone().send(get("/refused")).await.unwrap_err();
        assert!(matches!(e, H2Error::Request(_)), "{e}");
        assert_eq!(refused.load(Ordering::SeqCst), MAX_ATTEMPTS);
        // A body already streamed out cannot be sent again.
        let post = Request::post(format!("http://{addr}/refused"))
            .body(Body::from("payload"))
            .unwrap();
        assert!(pool.clone().send(post).await.is_err());
        assert_eq!(refused.load(Ordering::SeqCst), MAX_ATTEMPTS + 1);
    }

    #[tokio::test]
    async fn a_backend_that_is_not_http2_is_a_handshake_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let pool = H2Pool::new(
            addr.to_string().parse().unwrap(),
            Duration::from_secs(5),
            None,
        );
        let request = Request::get(format!("http://{addr}/"))
            .body(Body::empty())
            .unwrap();
        let e = pool.send(request).await.unwrap_err();
        assert!(matches!(e, H2Error::Handshake(_)), "{e}");
        assert!(e.to_string().contains("upstream_protocol"), "{e}");
    }

    #[test]
    fn host_becomes_the_authority() {
        let mut request = Request::get("http://127.0.0.1:9000/a?b=1")
            .header("host", "shop.example:8080")
            .body(())
            .unwrap();
        host_as_authority(&mut request);
        assert_eq!(request.uri(), "http://shop.example:8080/a?b=1");
        assert!(request.headers().get("host").is_none());
        // A Host that is no authority stays as it is.
        let mut request = Request::get("http://127.0.0.1:9000/")
            .header("host", "bad host")
            .body(())
            .unwrap();
        host_as_authority(&mut request);
        assert_eq!(request.uri(), "http://127.0.0.1:9000/");
        assert_eq!(request.headers()["host"], "bad host");
    }

    #[test]
    fn a_first_frame_other_than_settings_is_no_preface() {
        let peer = PeerSettings::new();
        let mut reader = FrameReader::default();
        reader.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n", &peer);
        assert_eq!(peer.preface.load(Ordering::SeqCst), PREFACE_BAD);
        assert_eq!(peer.max_streams.load(Ordering::SeqCst), DEFAULT_MAX_STREAMS);
    }
}
