//! ALB's own HTTP/1.1 client for the hot path: requests without a body or with a
//! `Content-Length` one, over pooled connections that the request owns (the pingora model).
//!
//! hyper-util's pooled client runs every connection as its own task and hands each request
//! to it through a channel, then hands the response back through another: two task wake-ups,
//! a pool keyed by a hashed `(scheme, authority)`, and boxed futures per request. In the
//! proxy benchmark that client alone held a bare hyper proxy to about 0.75 of nginx's
//! throughput on one core, while the same server writing requests itself over owned
//! connections passed nginx. Here a request checks a connection out of its backend's
//! [`ConnectionPool`], writes its head, reads the response head in its own task, and gives
//! the connection back when the body has been read ([`PooledBody`]).
//!
//! Requests without a body take this path (GET, HEAD, DELETE..., the bulk of proxied
//! traffic), and so do requests whose body has a `Content-Length` ([`send_with_body`]): the
//! body is written as it arrives (module `upload`), a small one in the same write as the head,
//! while the response head is read, so a backend may answer before the upload ends; the rest
//! of the upload then goes on as the response body is pulled ([`PooledBody`]). Chunked
//! bodies, upgrades (connection hand-over) and TLS backends stay on hyper-util's client
//! ([`backend_client`]); `forward` chooses between them. Backends that speak HTTP/2 only
//! (`upstream_protocol: "h2"`) get [`h2_pool`] instead: several multiplexed connections
//! each, opened at the backend's stream limit.

mod body;
mod client;
pub mod h2_pool;
mod head;
#[cfg(test)]
mod mutation;
mod pool;
pub mod tls;
mod upload;

use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use axum::{body::Body, BoxError};
use bytes::BytesMut;
use http::{Method, Request, Response};
use tokio::{io::AsyncWrite, time::Instant};

use crate::semantics::idempotent;

pub use body::PooledBody;
pub use client::{backend_client, caused_by_tls, root_cause, BackendClient};
pub use h2_pool::{H2Body, H2Error, H2Pool};
pub use head::{
    encode_request, encode_request_rewritten, encode_request_with_length, parse_response,
    request_content_length, FieldRewrite, Framing, HeadError, ResponseHead, MAX_RESPONSE_HEADERS,
    MAX_RESPONSE_HEAD_BYTES,
};
pub use pool::{Connection, ConnectionPool, IDLE_SWEEPS, IDLE_TIMEOUT, MAX_IDLE, SWEEP_INTERVAL};
pub use tls::{UpstreamConfig, UpstreamProtocol, UpstreamTls, UpstreamTlsConfig, UpstreamTlsError};
pub use upload::COALESCE_LIMIT;

use upload::{Upload, UploadError};

/// Cases per parser property test (`head::fuzz`, `body::fuzz`): `ALB_FUZZ_CASES` when set
/// (`ALB_FUZZ_CASES=100000` for a long run), else 2 000 so `cargo test` stays quick.
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("ALB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Why a request over a pooled connection failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("{0}")]
    Connect(io::Error),
    /// The connection failed while the request was written or the response head read.
    #[error("{0}")]
    Io(io::Error),
    /// The backend's response head was unusable.
    #[error("{0}")]
    Head(#[from] HeadError),
    /// The client's body failed before the answer came (it broke off, passed the body
    /// limit, or did not match its `Content-Length`): nothing the backend did.
    #[error("client body: {0}")]
    ClientBody(BoxError),
    /// The deadline passed before the response head came.
    #[error("no response head before the deadline")]
    Timeout,
}

/// Bytes asked of the socket per read while waiting for a response head: most heads fit
/// (a longer one takes another read). It is also each backend connection's first buffer, so
/// it is memory held per connection: at `wrk -c1024` about 1 000 are open at once, and a
/// 4 KiB buffer, one memory page, is resident however little of it a head fills.
pub(crate) const HEAD_READ: usize = 2048;

/// Sends a request that has no body over a pooled connection to `pool`'s backend and reads
/// the response head; the body streams from the connection afterwards.
///
/// The request must already be rewritten for the backend (`forward::rewrite_request`).
/// A kept-alive connection that the backend closed just before the request arrived fails
/// without an answer: an idempotent request is then sent once more on a new connection, as
/// browsers and hyper do.
pub fn send<B>(
    pool: Arc<ConnectionPool>,
    request: &Request<B>,
) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'static {
    let mut head = BytesMut::new();
    encode_request(request, &mut head);
    send_head(pool, head, request.method().clone(), None)
}

/// [`send`] for a request as received: `rewrite` changes its fields while the head is
/// written (see [`FieldRewrite`]). With a `deadline`, the response head must come before it
/// ([`UpstreamError::Timeout`] otherwise), connecting included.
pub fn send_rewritten<B>(
    pool: Arc<ConnectionPool>,
    request: &Request<B>,
    rewrite: &FieldRewrite<'_>,
    deadline: Option<Instant>,
) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'static {
    let mut head = BytesMut::new();
    encode_request_rewritten(request, rewrite, None, &mut head);
    send_head(pool, head, request.method().clone(), deadline)
}

/// Sends an encoded head (a request without a body), with [`send`]'s one retry.
async fn send_head(
    pool: Arc<ConnectionPool>,
    head: BytesMut,
    method: Method,
    deadline: Option<Instant>,
) -> Result<Response<PooledBody>, UpstreamError> {
    let connection = checkout(&pool, deadline).await?;
    match exchange(connection, &head, &method, deadline).await {
        Err(Failure::Unanswered(_, true)) if idempotent(&method) => {
            let connection = connect(&pool, deadline).await?;
            exchange(connection, &head, &method, deadline)
                .await
                .map_err(Failure::into_error)
        }
        done => done.map_err(Failure::into_error),
    }
}

/// A warm idle connection, else a new one opened before `deadline`.
async fn checkout(
    pool: &Arc<ConnectionPool>,
    deadline: Option<Instant>,
) -> Result<Connection, UpstreamError> {
    match pool.take_idle() {
        Some(connection) => Ok(connection),
        None => connect(pool, deadline).await,
    }
}

/// A new connection, opened before `deadline` (and within the pool's connect timeout).
async fn connect(
    pool: &Arc<ConnectionPool>,
    deadline: Option<Instant>,
) -> Result<Connection, UpstreamError> {
    let connected = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, pool.connect())
            .await
            .map_err(|_| UpstreamError::Timeout)?,
        None => pool.connect().await,
    };
    connected.map_err(UpstreamError::Connect)
}

/// The body length of a request that [`send_with_body`] can carry: its `Content-Length`
/// fields all agree and the body's own size hint says the same (hyper's server framed it by
/// that length). `None` sends it the other way (chunked, or no length known).
pub fn declared_length<B: http_body::Body>(request: &Request<B>) -> Option<u64> {
    let length = request_content_length(request.headers())?;
    (request.body().size_hint().exact() == Some(length)).then_some(length)
}

/// Sends a request whose body has `length` bytes (see [`declared_length`]) over a pooled
/// connection to `pool`'s backend, streaming the body as it arrives, and reads the response
/// head; the response body streams afterwards, with whatever of the upload is left.
///
/// A reused connection that fails before any answer and before any body byte was written
/// past the head's own write is retried once on a new connection, for idempotent methods
/// only, as [`send`] does: the client's body has not been consumed beyond what the head
/// buffer holds.
///
/// `request` gives the head and `body` the body. With `rewrite`, the request is as
/// received and its fields change while the head is written ([`send_rewritten`]); without,
/// it is already rewritten ([`send`]). `deadline` is [`send_rewritten`]'s.
pub fn send_with_body<B>(
    pool: Arc<ConnectionPool>,
    request: &Request<B>,
    body: Body,
    rewrite: Option<&FieldRewrite<'_>>,
    length: u64,
    deadline: Option<Instant>,
) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'static {
    // Room for the head and the body bytes that may be copied behind it, in one allocation.
    let mut head = BytesMut::with_capacity(
        head::head_bound(request, rewrite) + length.min(COALESCE_LIMIT as u64) as usize,
    );
    match rewrite {
        Some(rewrite) => encode_request_rewritten(request, rewrite, Some(length), &mut head),
        None => encode_request_with_length(request, length, &mut head),
    }
    let method = request.method().clone();
    let mut upload = Upload::new(body, length);
    async move {
        // The body bytes already here go out with the head.
        poll_fn(|cx| Poll::Ready(upload.coalesce(cx, &mut head)))
            .await
            .map_err(upload_error)?;
        let connection = checkout(&pool, deadline).await?;
        match exchange_with_body(connection, &head, &method, &mut upload, deadline).await {
            Err(Failure::Unanswered(_, true)) if idempotent(&method) && !upload.wrote() => {
                let connection = connect(&pool, deadline).await?;
                exchange_with_body(connection, &head, &method, &mut upload, deadline)
                    .await
                    .map_err(Failure::into_error)
            }
            done => done.map_err(Failure::into_error),
        }
    }
}

fn upload_error(error: UploadError) -> UpstreamError {
    match error {
        UploadError::Client(e) => UpstreamError::ClientBody(e),
        UploadError::Backend(e) => UpstreamError::Io(e),
    }
}

/// How an exchange failed: before any byte of an answer (with whether the connection was a
/// reused one), or later.
enum Failure {
    Unanswered(io::Error, bool),
    Other(UpstreamError),
}

impl Failure {
    fn into_error(self) -> UpstreamError {
        match self {
            Failure::Unanswered(e, _) => UpstreamError::Io(e),
            Failure::Other(e) => e,
        }
    }
}

/// Writes the request head and reads the response head, before `deadline`.
async fn exchange(
    mut connection: Connection,
    head: &[u8],
    method: &Method,
    deadline: Option<Instant>,
) -> Result<Response<PooledBody>, Failure> {
    connection.set_deadline(deadline);
    let mut written = 0;
    let parsed = poll_fn(|cx| {
        if let Err(failure) = ready!(poll_head_in_time(&mut connection, cx, head, &mut written)) {
            return Poll::Ready(Err(failure));
        }
        poll_response_head(&mut connection, cx, method, &mut None)
    })
    .await?;
    let ResponseHead {
        response,
        framing,
        reusable,
    } = parsed;
    Ok(response.map(|()| PooledBody::new(connection, framing, reusable, None)))
}

/// What both exchanges do first on each poll: fail once the deadline has passed, then
/// write the rest of the head (from `written` on).
fn poll_head_in_time(
    connection: &mut Connection,
    cx: &mut Context<'_>,
    head: &[u8],
    written: &mut usize,
) -> Poll<Result<(), Failure>> {
    if connection.poll_deadline(cx).is_ready() {
        return Poll::Ready(Err(Failure::Other(UpstreamError::Timeout)));
    }
    let reused = connection.reused;
    poll_write_all(connection, cx, head, written).map_err(|e| Failure::Unanswered(e, reused))
}

/// Writes `bytes` from `written` on.
fn poll_write_all(
    connection: &mut Connection,
    cx: &mut Context<'_>,
    bytes: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < bytes.len() {
        match ready!(Pin::new(&mut connection.stream).poll_write(cx, &bytes[*written..])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Reads until the response head parses. An end of stream or a read error before any byte
/// of it is [`Failure::Unanswered`] (with `write_failed`'s error if a write failed first).
fn poll_response_head(
    connection: &mut Connection,
    cx: &mut Context<'_>,
    method: &Method,
    write_failed: &mut Option<io::Error>,
) -> Poll<Result<ResponseHead, Failure>> {
    loop {
        // Nothing to parse before the first read (the usual case: the head was just sent).
        if !connection.buffer.is_empty() {
            match parse_response(&mut connection.buffer, method) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(Failure::Other(e.into()))),
            }
        }
        let answered = !connection.buffer.is_empty();
        match ready!(connection.poll_read(cx, HEAD_READ)) {
            Ok(0) => {
                let closed = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if answered {
                        "backend closed the connection mid-head"
                    } else {
                        "backend closed the connection without answering"
                    },
                );
                let error = write_failed.take().unwrap_or(closed);
                return Poll::Ready(Err(if answered {
                    Failure::Other(UpstreamError::Io(error))
                } else {
                    Failure::Unanswered(error, connection.reused)
                }));
            }
            Ok(_) => {}
            Err(e) if answered => return Poll::Ready(Err(Failure::Other(UpstreamError::Io(e)))),
            Err(e) => return Poll::Ready(Err(Failure::Unanswered(e, connection.reused))),
        }
    }
}

/// Writes the request head (with the body bytes [`Upload::coalesce`] put behind it), then
/// writes the rest of the body while reading the response head: whichever is ready is
/// done, so a backend that answers before reading the whole body is heard.
async fn exchange_with_body(
    mut connection: Connection,
    head: &[u8],
    method: &Method,
    upload: &mut Upload,
    deadline: Option<Instant>,
) -> Result<Response<PooledBody>, Failure> {
    connection.set_deadline(deadline);
    let mut written = 0;
    // Set when a write failed: the backend may still answer (and close), so read on.
    let mut write_failed = None;
    let mut uploading = !upload.is_done();
    let parsed = poll_fn(|cx| {
        if let Err(failure) = ready!(poll_head_in_time(&mut connection, cx, head, &mut written)) {
            return Poll::Ready(Err(failure));
        }
        if uploading {
            match upload.poll_write(&mut connection.stream, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => uploading = false,
                Poll::Ready(Err(UploadError::Client(e))) => {
                    return Poll::Ready(Err(Failure::Other(UpstreamError::ClientBody(e))))
                }
                Poll::Ready(Err(UploadError::Backend(e))) => {
                    uploading = false;
                    write_failed = Some(e);
                }
            }
        }
        poll_response_head(&mut connection, cx, method, &mut write_failed)
    })
    .await?;
    let ResponseHead {
        response,
        framing,
        reusable,
    } = parsed;
    // A failed write leaves the backend's view of the request unknown: not reused.
    let reusable = reusable && write_failed.is_none();
    let rest = uploading.then(|| std::mem::replace(upload, Upload::new(Body::empty(), 0)));
    Ok(response.map(|()| PooledBody::new(connection, framing, reusable, rest)))
}
