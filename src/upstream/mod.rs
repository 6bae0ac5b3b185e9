//! ALB's own HTTP/1.1 client for the hot path: requests without a body over pooled
//! connections that the request owns (the pingora model).
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
//! Only requests without a body take this path (GET, HEAD, DELETE..., the bulk of proxied
//! traffic). Requests with a body need full-duplex streaming (a backend may answer before
//! the upload ends) and upgrades need connection hand-over: those stay on hyper-util's
//! client ([`backend_client`]), which does both well; `forward` chooses between the two.
//! Backends that speak HTTP/2 only (`upstream_protocol: "h2"`) get [`h2_pool`] instead:
//! several multiplexed connections each, opened at the backend's stream limit.

mod body;
mod client;
pub mod h2_pool;
mod head;
#[cfg(test)]
mod mutation;
mod pool;
pub mod tls;

use std::{future::Future, io, sync::Arc};

use bytes::BytesMut;
use http::{Method, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::semantics::idempotent;

pub use body::PooledBody;
pub use client::{backend_client, caused_by_tls, root_cause, BackendClient};
pub use h2_pool::{H2Body, H2Error, H2Pool};
pub use head::{
    encode_request, parse_response, Framing, HeadError, ResponseHead, MAX_RESPONSE_HEADERS,
    MAX_RESPONSE_HEAD_BYTES,
};
pub use pool::{Connection, ConnectionPool, IDLE_SWEEPS, IDLE_TIMEOUT, MAX_IDLE, SWEEP_INTERVAL};
pub use tls::{UpstreamConfig, UpstreamProtocol, UpstreamTls, UpstreamTlsConfig, UpstreamTlsError};

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
}

/// Bytes asked of the socket per read while waiting for a response head.
const HEAD_READ: usize = 4096;

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
    let method = request.method().clone();
    async move {
        let connection = pool.checkout().await.map_err(UpstreamError::Connect)?;
        match exchange(connection, &head, &method).await {
            Err(Failure::Unanswered(_, true)) if idempotent(&method) => {
                let connection = pool.connect().await.map_err(UpstreamError::Connect)?;
                exchange(connection, &head, &method)
                    .await
                    .map_err(Failure::into_error)
            }
            done => done.map_err(Failure::into_error),
        }
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

/// Writes the request head and reads the response head.
async fn exchange(
    mut connection: Connection,
    head: &[u8],
    method: &Method,
) -> Result<Response<PooledBody>, Failure> {
    let reused = connection.reused;
    if let Err(e) = connection.stream.write_all(head).await {
        return Err(Failure::Unanswered(e, reused));
    }
    loop {
        if let Some(head) =
            parse_response(&mut connection.buffer, method).map_err(|e| Failure::Other(e.into()))?
        {
            let ResponseHead {
                response,
                framing,
                reusable,
            } = head;
            return Ok(response.map(|()| PooledBody::new(connection, framing, reusable)));
        }
        connection.buffer.reserve(HEAD_READ);
        let read = connection.stream.read_buf(&mut connection.buffer).await;
        let answered = !connection.buffer.is_empty();
        match read {
            Ok(0) if !answered => {
                let closed = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection without answering",
                );
                return Err(Failure::Unanswered(closed, reused));
            }
            Ok(0) => {
                let closed = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection mid-head",
                );
                return Err(Failure::Other(UpstreamError::Io(closed)));
            }
            Ok(_) => {}
            Err(e) if !answered => return Err(Failure::Unanswered(e, reused)),
            Err(e) => return Err(Failure::Other(UpstreamError::Io(e))),
        }
    }
}
