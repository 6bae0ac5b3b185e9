//! The forwarder: sends a routed request to its backend over a pooled connection.
//!
//! What it does to a request, in order:
//! - the URI becomes `http[s]://<backend><path?query>`; the version becomes HTTP/1.1 whatever
//!   the client spoke (an HTTP/2 request kept as HTTP/2 makes hyper-util's HTTP/1 client
//!   fail with `UserUnsupportedVersion`; an HTTP/2 connection to the backend ignores it);
//! - `Host` is kept (the `normalize` layer already made it the one the request is for); an
//!   HTTP/2 request has none (it has `:authority`), so it is set from the URI authority, and
//!   an HTTP/1.0 request without one gets the backend's name as the config gave it (its
//!   `host:port`, or for a backend found by DNS the name and port it was found under, as
//!   nginx sends `$proxy_host`);
//! - a body of unknown length is sent chunked, whatever the method;
//! - hop-by-hop headers (RFC 9110 §7.6.1, plus every name listed in `Connection`) are
//!   removed, except the `Upgrade` pair of a WebSocket handshake and a gRPC call's
//!   `TE: trailers`;
//! - `X-Forwarded-For` gets the peer appended; `X-Forwarded-Proto` and `X-Forwarded-Host`
//!   are set.
//!
//! Three ways out: a request without a body (the common case) or with a `Content-Length` body
//! to a plain HTTP/1.1 backend goes over ALB's own pooled HTTP/1.1 connections
//! ([`crate::upstream`]); with `upstream_protocol: "h2"`, every request but an upgrade goes
//! over the backend's [`H2Pool`], which opens connections at the backend's stream limit and
//! drains on GOAWAY; the rest (a chunked body or an upgrade to an HTTP/1.1 backend, `auto`
//! over TLS) goes through hyper-util's pooled client, which streams both ways at once and
//! speaks TLS and HTTP/2. A gRPC call's `grpc-timeout` shortens the request timeout. Bodies are never
//! buffered whole. A `101 Switching Protocols` answer to an upgrade request joins the two
//! upgraded connections with a byte tunnel.

use std::{
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, BoxError};
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::{PathAndQuery, Scheme, Uri},
    Request, Response, StatusCode, Version,
};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::{client::legacy::connect::capture_connection, rt::TokioIo};
use tower::Service;

use crate::{
    balance::{BackendId, Endpoint, Routed},
    client_ip::ClientIp,
    grpc,
    local_reply::local_reply,
    semantics::{
        connection_listed, is_hop_by_hop, strip_hop_by_hop, upgrade_protocol, ClientUpgrade,
    },
    upstream::{
        self, caused_by_tls, root_cause, BackendClient, ConnectionPool, H2Body, H2Error, H2Pool,
        PooledBody, UpstreamConfig, UpstreamError, UpstreamProtocol,
    },
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The scheme clients used to reach `alb`, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProto {
    /// Plain HTTP listener.
    Http,
    /// TLS listener.
    Https,
}

impl ClientProto {
    fn as_str(self) -> &'static str {
        match self {
            ClientProto::Http => "http",
            ClientProto::Https => "https",
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No TCP connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect ({})", root_cause(&**.0))]
    Connect(#[source] BoxError),
    /// The TLS handshake with an `https://` backend failed (most often its certificate:
    /// unknown issuer, wrong name, expired).
    #[error("TLS handshake failed ({})", root_cause(&**.0))]
    Tls(#[source] BoxError),
    /// The backend did not send response headers within the request timeout.
    #[error("no response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection failed after it was made (reset, malformed response, closed early).
    #[error("connection failed ({})", root_cause(&**.0))]
    Upstream(#[source] BoxError),
    /// The client's body passed `max_request_body` while it was being forwarded.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's body could not be read: malformed chunked framing, or the client went
    /// away mid-upload. Nothing the backend did.
    #[error("malformed or incomplete request body")]
    ClientBody,
}

impl ForwardError {
    /// Whether the request surely did not get a response, so an idempotent one may be sent
    /// again (a timeout may still be in progress at the backend: not retried).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ForwardError::Connect(_) | ForwardError::Tls(_) | ForwardError::Upstream(_)
        )
    }

    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect",
            ForwardError::Tls(_) => "tls",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Upstream(_) => "upstream",
            ForwardError::BodyTooLarge => "body_too_large",
            ForwardError::ClientBody => "client_body",
        }
    }

    /// The client's answer: `504` for a timeout, `413` for an oversized body, `502`
    /// otherwise, with a one-line reason.
    pub fn into_response(self, backend: &str) -> Response<Body> {
        let status = match self {
            ForwardError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::BodyTooLarge => {
                return local_reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            ForwardError::ClientBody => {
                return local_reply(
                    StatusCode::BAD_REQUEST,
                    "malformed or incomplete request body",
                )
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        tracing::warn!(backend, error = %self, "forwarding failed");
        local_reply(status, format_args!("backend {backend}: {self}"))
    }
}

impl From<UpstreamError> for ForwardError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Connect(e) => ForwardError::Connect(e.into()),
            UpstreamError::ClientBody(e) if caused_by_length_limit(&*e) => {
                ForwardError::BodyTooLarge
            }
            UpstreamError::ClientBody(_) => ForwardError::ClientBody,
            other => ForwardError::Upstream(other.into()),
        }
    }
}

/// Whether the client's body passed the body limit (see `layer::body_limit`).
/// Whether `error` comes from the body-limit layer's cap (`max_request_body`): a `413`.
pub fn caused_by_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// One connection pool per backend, keyed by [`BackendId`] (ids are dense, so the key is
/// an index and the lookup costs no hashing).
#[derive(Debug, Clone, Default)]
pub struct BackendPools {
    by_id: Arc<[Option<Arc<ConnectionPool>>]>,
    /// With `upstream_protocol: "h2"`: each backend's HTTP/2 connections.
    h2: Arc<[Option<Arc<H2Pool>>]>,
}

/// [`BackendPools::new`]'s HTTP/2 pools: one per backend when `upstream` is HTTP/2 only,
/// kept from `previous` when it reaches the backend the same way.
fn h2_pools(
    endpoints: &[Arc<Endpoint>],
    connect_timeout: Duration,
    upstream: &UpstreamConfig,
    previous: &BackendPools,
) -> Arc<[Option<Arc<H2Pool>>]> {
    if !H2Pool::wanted(upstream.protocol) {
        return Arc::new([]);
    }
    let len = endpoints
        .iter()
        .map(|e| e.id().index() + 1)
        .max()
        .unwrap_or(0);
    let mut h2 = vec![None; len];
    for ep in endpoints {
        let backend = &ep.backend;
        let tls = backend.tls.then_some((&upstream.loaded, &upstream.tls));
        let kept = previous.h2(ep.id()).filter(|p| {
            p.serves(
                &backend.authority,
                connect_timeout,
                tls.map(|(_, written)| written),
            )
        });
        h2[ep.id().index()] = Some(
            kept.cloned()
                .unwrap_or_else(|| H2Pool::new(backend.authority.clone(), connect_timeout, tls)),
        );
    }
    h2.into()
}

impl BackendPools {
    /// Pools for `endpoints`; a backend that `previous` has a pool for (same authority, same
    /// connect timeout, same `upstream_tls`) keeps it, with its warm connections. With
    /// `upstream_protocol: "h2"` every backend also gets an [`H2Pool`].
    pub fn new(
        endpoints: &[Arc<Endpoint>],
        connect_timeout: Duration,
        upstream: &UpstreamConfig,
        previous: &Self,
    ) -> Self {
        let len = endpoints
            .iter()
            .map(|e| e.id().index() + 1)
            .max()
            .unwrap_or(0);
        let mut by_id = vec![None; len];
        for ep in endpoints {
            let kept = previous.get(ep.id()).filter(|p| {
                *p.authority() == ep.backend.authority && p.connect_timeout() == connect_timeout
            });
            by_id[ep.id().index()] = Some(kept.cloned().unwrap_or_else(|| {
                ConnectionPool::new(ep.backend.authority.clone(), connect_timeout)
            }));
        }
        BackendPools {
            by_id: by_id.into(),
            h2: h2_pools(endpoints, connect_timeout, upstream, previous),
        }
    }

    /// The HTTP/2 pool of backend `id`, when backends speak HTTP/2 only.
    pub fn h2(&self, id: BackendId) -> Option<&Arc<H2Pool>> {
        self.h2.get(id.index())?.as_ref()
    }

    /// The pool of backend `id`.
    pub fn get(&self, id: BackendId) -> Option<&Arc<ConnectionPool>> {
        self.by_id.get(id.index())?.as_ref()
    }

    /// Every pool.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ConnectionPool>> {
        self.by_id.iter().flatten()
    }
}

/// The forwarding service. One reference count to clone: servers clone the whole stack for
/// every request.
#[derive(Clone)]
pub struct Forward {
    shared: Arc<ForwardShared>,
}

struct ForwardShared {
    client: BackendClient,
    pools: BackendPools,
    proto: ClientProto,
    request_timeout: Duration,
    /// Whether plain `http://` backends speak HTTP/1.1, so bodiless requests to them may
    /// take ALB's own pooled connections (`upstream_protocol` is not `h2`).
    plain_http1: bool,
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("proto", &self.shared.proto)
            .field("request_timeout", &self.shared.request_timeout)
            .finish()
    }
}

impl Forward {
    /// A forwarder for requests that arrived over `proto`, with one connection pool per
    /// backend in `pools`, speaking `protocol` to backends.
    pub fn new(
        client: BackendClient,
        pools: BackendPools,
        proto: ClientProto,
        request_timeout: Duration,
        protocol: UpstreamProtocol,
    ) -> Self {
        Forward {
            shared: Arc::new(ForwardShared {
                client,
                pools,
                proto,
                request_timeout,
                plain_http1: protocol != UpstreamProtocol::H2,
            }),
        }
    }
}

type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, ForwardError>> + Send>>;

/// A backend's response body, from whichever client carried the request.
#[derive(Debug)]
pub enum ResponseBody {
    /// Read over ALB's own pooled connection.
    Pooled(PooledBody),
    /// Read by hyper-util's client.
    Hyper(Incoming),
    /// Read from a backend's pooled HTTP/2 connections (`upstream_protocol: "h2"`).
    H2(H2Body),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Pooled(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Pooled(body) => body.is_end_stream(),
            ResponseBody::Hyper(body) => body.is_end_stream(),
            ResponseBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Pooled(body) => body.size_hint(),
            ResponseBody::Hyper(body) => body.size_hint(),
            ResponseBody::H2(body) => body.size_hint(),
        }
    }
}

impl Service<Routed<Body>> for Forward {
    type Response = Response<ResponseBody>;
    type Error = ForwardError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, routed: Routed<Body>) -> ForwardFuture {
        let Routed {
            mut request,
            endpoint,
        } = routed;
        let peer = ClientIp::peer(&request);
        let scan = FieldScan::of(request.headers());
        let client_upgrade = (scan.connection && upgrade_protocol(request.headers()).is_some())
            .then(|| ClientUpgrade::of(&mut request));
        let shared = &*self.shared;
        let backend = &endpoint.backend;
        let proto = shared.proto;
        // A gRPC client's deadline (`grpc-timeout`) bounds the wait when it is shorter.
        let deadline = scan.grpc_timeout.then(|| grpc::timeout(request.headers()));
        let timeout = match deadline.flatten() {
            Some(deadline) => deadline.min(shared.request_timeout),
            None => shared.request_timeout,
        };
        // ALB's own pool speaks plain HTTP/1.1 only; TLS and HTTP/2 go through hyper-util.
        let own_pool = !backend.tls && shared.plain_http1 && client_upgrade.is_none();
        let pool = shared
            .pools
            .get(endpoint.id())
            .filter(|_| own_pool)
            .cloned();
        if let Some(pool) = pool {
            // A combinator, not an `async` block: a block would hold the send future twice
            // (as its capture and as the awaited value) and copy it on the first poll.
            // The head parser already left the hop-by-hop headers out. The deadline is
            // kept by the connection's own timer (see `upstream::ConnectionPool`), not by a
            // timer per request.
            let deadline = Some(tokio::time::Instant::now() + timeout);
            let pooled = move |sent: Result<Response<PooledBody>, UpstreamError>| match sent {
                Err(UpstreamError::Timeout) => Err(ForwardError::Timeout(timeout)),
                Err(error) => Err(error.into()),
                Ok(response) => Ok(response.map(ResponseBody::Pooled)),
            };
            // The request goes as received: its fields change while its head is written.
            let hop = Hop {
                scan,
                backend: &backend.authority,
                host: backend.host.as_ref(),
                peer,
                proto,
            };
            if request.body().is_end_stream() {
                let sent = with_forwarded_fields(&request, hop, |rw| {
                    upstream::send_rewritten(pool, &request, rw, deadline)
                });
                return Box::pin(sent.map(pooled));
            }
            if let Some(length) = upstream::declared_length(&request) {
                let (parts, body) = request.into_parts();
                let head = Request::from_parts(parts, ());
                let sent = with_forwarded_fields(&head, hop, |rw| {
                    upstream::send_with_body(pool, &head, body, Some(rw), length, deadline)
                });
                return Box::pin(sent.map(pooled));
            }
        }
        rewrite(
            &mut request,
            backend.scheme(),
            &backend.authority,
            backend.host.as_ref(),
            peer,
            proto,
        );
        // hyper's client sends a GET, HEAD or CONNECT body of unknown length as no body at all
        // (it assumes such methods have none) unless the request says it is chunked: say so,
        // so the backend gets every byte the client sent.
        if request.body().size_hint().exact().is_none()
            && !request.headers().contains_key(header::CONTENT_LENGTH)
        {
            request.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // A failure of the client's own body (hyper refused its chunked framing, or the
        // client left mid-upload) must not count against the backend: flag it on the way.
        let client_failed = Arc::new(AtomicBool::new(false));
        let flag = client_failed.clone();
        let mut request = request.map(|body| {
            Body::new(body.map_err(move |e| {
                flag.store(true, Ordering::Relaxed);
                e
            }))
        });
        // HTTP/2-only backends: their own pool opens connections at their stream limit.
        if let Some(pool) = shared
            .pools
            .h2(endpoint.id())
            .filter(|_| client_upgrade.is_none())
        {
            let sent = pool.clone().send(request);
            return Box::pin(async move {
                let mut response = match tokio::time::timeout(timeout, sent).await {
                    Err(_) => return Err(ForwardError::Timeout(timeout)),
                    Ok(Err(e)) => return Err(h2_failure(e, &client_failed)),
                    Ok(Ok(response)) => response,
                };
                strip_hop_by_hop(response.headers_mut(), false);
                Ok(response.map(ResponseBody::H2))
            });
        }
        let connection = capture_connection(&mut request);
        let sent = shared.client.request(request);
        Box::pin(async move {
            let mut response = match tokio::time::timeout(timeout, sent).await {
                Err(_) => return Err(ForwardError::Timeout(timeout)),
                Ok(Err(e)) if e.is_connect() && caused_by_tls(&e) => {
                    return Err(ForwardError::Tls(e.into()))
                }
                Ok(Err(e)) if e.is_connect() => return Err(ForwardError::Connect(e.into())),
                Ok(Err(e)) if caused_by_length_limit(&e) => return Err(ForwardError::BodyTooLarge),
                Ok(Err(_)) if client_failed.load(Ordering::Relaxed) => {
                    return Err(ForwardError::ClientBody)
                }
                Ok(Err(e)) => return Err(ForwardError::Upstream(e.into())),
                Ok(Ok(response)) => response,
            };
            // Both framings in an answer: chunked wins (RFC 9112 §6.3), and the length must
            // not reach the client with the de-chunked body.
            if response.headers().contains_key(header::TRANSFER_ENCODING)
                && response
                    .headers_mut()
                    .remove(header::CONTENT_LENGTH)
                    .is_some()
            {
                // hyper would pool the connection again: an answer framed two ways makes it
                // untrustworthy for the next request.
                if let Some(connected) = connection.connection_metadata().as_ref() {
                    connected.poison();
                }
            }
            let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            match client_upgrade
                .as_ref()
                .filter(|_| upgraded)
                .map(ClientUpgrade::take)
            {
                Some(Some(client_side)) => {
                    let backend_side = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_side, backend_side));
                }
                Some(None) => {
                    // Cannot happen: one attempt at a time, and only one gets `101`.
                    tracing::debug!("upgrade answered, but the client connection was taken");
                }
                None => strip_hop_by_hop(response.headers_mut(), false),
            }
            Ok(response.map(ResponseBody::Hyper))
        })
    }
}

/// The [`ForwardError`] of a request that failed on a backend's HTTP/2 pool.
fn h2_failure(error: H2Error, client_failed: &AtomicBool) -> ForwardError {
    match error {
        H2Error::Connect(e) => ForwardError::Connect(e.into()),
        H2Error::Tls(e) => ForwardError::Tls(e.into()),
        H2Error::Request(e) if caused_by_length_limit(&e) => ForwardError::BodyTooLarge,
        H2Error::Request(_) if client_failed.load(Ordering::Relaxed) => ForwardError::ClientBody,
        other => ForwardError::Upstream(other.into()),
    }
}

/// Rewrites a client request into the request sent to the plain `http://` `backend` (see
/// the module docs).
pub fn rewrite_request<B>(
    request: &mut Request<B>,
    backend: &http::uri::Authority,
    peer: Option<SocketAddr>,
    proto: ClientProto,
) {
    rewrite(request, Scheme::HTTP, backend, None, peer, proto)
}

/// [`rewrite_request`], with `host` as the `Host` of a request that names none (instead of
/// `backend`): the name a backend found by DNS was found under.
pub fn rewrite_request_for<B>(
    request: &mut Request<B>,
    backend: &http::uri::Authority,
    host: Option<&HeaderValue>,
    peer: Option<SocketAddr>,
    proto: ClientProto,
) {
    rewrite(request, Scheme::HTTP, backend, host, peer, proto)
}

/// [`rewrite_request_for`] for a backend reached with `scheme`.
fn rewrite<B>(
    request: &mut Request<B>,
    scheme: Scheme,
    backend: &http::uri::Authority,
    host: Option<&HeaderValue>,
    peer: Option<SocketAddr>,
    proto: ClientProto,
) {
    let original_authority = request.uri().authority().cloned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(backend.clone());
    parts.path_and_query = Some(path_and_query);
    *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
    *request.version_mut() = Version::HTTP_11;

    let keep_upgrade = upgrade_protocol(request.headers()).is_some();
    let headers = request.headers_mut();
    let te_trailers = keeps_te_trailers(headers);
    strip_hop_by_hop(headers, keep_upgrade);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // Room for the three X-Forwarded-* headers in one growth at most.
    headers.reserve(3);
    if !headers.contains_key(header::HOST) {
        if let Some(host) = original_authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        // An HTTP/1.0 request may name no host, and an HTTP/1.1 backend needs one: the
        // backend's own name then, as nginx sends.
        None => match host {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            None => {
                if let Ok(host) = HeaderValue::from_str(backend.as_str()) {
                    headers.insert(header::HOST, host);
                }
            }
        },
    }
    if let Some(peer) = peer {
        append_forwarded_for(headers, peer);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto.header_value());
}

/// A gRPC call's `TE: trailers`, passed on rather than dropped with the other hop-by-hop
/// headers: gRPC servers require it ("gRPC over HTTP/2", PROTOCOL-HTTP2.md), and it is the
/// one `TE` value HTTP/2 allows (RFC 9113 §8.2.2).
fn keeps_te_trailers(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TE)
        && grpc::is_grpc(headers)
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// `X-Forwarded-For: <existing>, <peer>`, folding repeated headers into one.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let value = ForwardedFor::new(headers.get_all(&X_FORWARDED_FOR), peer.ip());
    if let Ok(value) = value.into_header_value() {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// The `X-Forwarded-For` value ALB sends: the earlier hops' values, then the peer.
enum ForwardedFor {
    /// The usual case, an IPv4 client with no proxy before ALB: formatted by hand on the
    /// stack (the `fmt` machinery costs more than the rest of the header work).
    Peer([u8; IPV4_TEXT_LEN], usize),
    /// Earlier hops, or an IPv6 peer.
    Joined(String),
}

impl ForwardedFor {
    /// The value for `peer` after the `earlier` ones; values that are not visible ASCII are
    /// left out.
    fn new<'a>(earlier: impl IntoIterator<Item = &'a HeaderValue>, peer: IpAddr) -> Self {
        use std::fmt::Write as _;
        let mut earlier = earlier
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        match (earlier.peek(), peer) {
            (None, IpAddr::V4(ip)) => {
                let mut text = [0u8; IPV4_TEXT_LEN];
                let len = write_ipv4(&mut text, ip);
                ForwardedFor::Peer(text, len)
            }
            (_, ip) => {
                let mut value = String::with_capacity(48);
                for text in earlier {
                    value.push_str(text);
                    value.push_str(", ");
                }
                let _ = write!(value, "{ip}");
                ForwardedFor::Joined(value)
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            ForwardedFor::Peer(text, len) => &text[..*len],
            ForwardedFor::Joined(value) => value.as_bytes(),
        }
    }

    fn into_header_value(self) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        match self {
            ForwardedFor::Peer(text, len) => HeaderValue::from_bytes(&text[..len]),
            ForwardedFor::Joined(value) => HeaderValue::from_maybe_shared(Bytes::from(value)),
        }
    }
}

/// Writes the head [`rewrite_request_for`] and then [`upstream::encode_request`] (or
/// [`upstream::encode_request_with_length`], given `length`) would write for `request`,
/// without changing the request: the fields are filtered and added while the head is
/// written ([`upstream::FieldRewrite`]). This is the own pool's path: it only encodes the
/// rewritten request, so inserting the new fields into the map first would be work for
/// nothing. `tests/properties.rs` checks that both ways send the same fields.
///
/// For requests that are not upgrades (those keep `Upgrade`, and go through hyper's
/// client after [`rewrite_request_for`]).
pub fn encode_forwarded_head<B>(
    request: &Request<B>,
    backend: &http::uri::Authority,
    host: Option<&HeaderValue>,
    peer: Option<SocketAddr>,
    proto: ClientProto,
    length: Option<u64>,
    out: &mut bytes::BytesMut,
) {
    let scan = FieldScan::of(request.headers());
    let hop = Hop {
        scan,
        backend,
        host,
        peer,
        proto,
    };
    with_forwarded_fields(request, hop, |rewrite| {
        upstream::encode_request_rewritten(request, rewrite, length, out)
    })
}

/// Which of the fields the forwarder looks up a request carries, found in one pass over its
/// names: comparing a name costs less than a hashed lookup, and most requests carry none of
/// these. Each lookup then runs only when its field is there.
#[derive(Clone, Copy, Default)]
struct FieldScan {
    connection: bool,
    te: bool,
    forwarded_for: bool,
    grpc_timeout: bool,
}

impl FieldScan {
    fn of(headers: &HeaderMap) -> Self {
        let mut scan = FieldScan::default();
        for name in headers.keys() {
            if name == header::CONNECTION {
                scan.connection = true;
            } else if name == header::TE {
                scan.te = true;
            } else if name == X_FORWARDED_FOR {
                scan.forwarded_for = true;
            } else if name == grpc::GRPC_TIMEOUT {
                scan.grpc_timeout = true;
            }
        }
        scan
    }
}

/// What [`with_forwarded_fields`] needs besides the request.
#[derive(Clone, Copy)]
struct Hop<'a> {
    /// The request's [`FieldScan`].
    scan: FieldScan,
    /// The backend's `host:port`.
    backend: &'a http::uri::Authority,
    /// The `Host` for a request that names none, when not `backend` (a DNS-found name).
    host: Option<&'a HeaderValue>,
    /// The client, for `X-Forwarded-For`.
    peer: Option<SocketAddr>,
    /// The client's scheme, for `X-Forwarded-Proto`.
    proto: ClientProto,
}

/// The [`upstream::FieldRewrite`] that [`rewrite`] amounts to for `request` (not an
/// upgrade), handed to `write`: its parts borrow from this frame.
fn with_forwarded_fields<B, T>(
    request: &Request<B>,
    Hop {
        scan,
        backend,
        host,
        peer,
        proto,
    }: Hop<'_>,
    write: impl FnOnce(&upstream::FieldRewrite<'_>) -> T,
) -> T {
    let headers = request.headers();
    // Names `Connection` lists go, as in `strip_hop_by_hop` (usually none: no allocation).
    let listed = if scan.connection {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    // The client's host: its first `Host`, else its absolute URI's authority. It is both
    // what goes out as `Host` and what `X-Forwarded-Host` says; with neither, the backend's
    // name goes out and no `X-Forwarded-Host`.
    let client_host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
    let sent_host = client_host
        .unwrap_or_else(|| host.map_or_else(|| backend.as_str().as_bytes(), HeaderValue::as_bytes));
    let forwarded_for = peer.map(|peer| {
        let earlier = if !scan.forwarded_for || listed.contains(&X_FORWARDED_FOR) {
            None
        } else {
            Some(headers.get_all(&X_FORWARDED_FOR))
        };
        ForwardedFor::new(earlier.into_iter().flatten(), peer.ip())
    });
    let te = header::TE;
    // At most four fields are added; no allocation for them.
    let proto_field: (&HeaderName, &[u8]) = (&X_FORWARDED_PROTO, proto.as_str().as_bytes());
    let mut added = [proto_field; 4];
    let mut count = 1;
    if scan.te && keeps_te_trailers(headers) {
        added[count] = (&te, b"trailers");
        count += 1;
    }
    if let Some(client_host) = client_host {
        added[count] = (&X_FORWARDED_HOST, client_host);
        count += 1;
    }
    if let Some(forwarded_for) = &forwarded_for {
        added[count] = (&X_FORWARDED_FOR, forwarded_for.as_bytes());
        count += 1;
    }
    let skip = |name: &HeaderName| {
        is_hop_by_hop(name)
            || *name == X_FORWARDED_PROTO
            || (forwarded_for.is_some() && *name == X_FORWARDED_FOR)
            || (client_host.is_some() && *name == X_FORWARDED_HOST)
            || listed.contains(name)
    };
    write(&upstream::FieldRewrite {
        host: sent_host,
        skip: &skip,
        added: &added[..count],
    })
}

/// The longest dotted-quad text, `255.255.255.255`.
const IPV4_TEXT_LEN: usize = 15;

/// Writes `a.b.c.d` at the start of `out`; returns its length.
fn write_ipv4(out: &mut [u8; IPV4_TEXT_LEN], ip: std::net::Ipv4Addr) -> usize {
    let mut len = 0;
    let mut push = |b: u8| {
        out[len] = b;
        len += 1;
    };
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
    len
}

/// Joins an upgraded client connection to an upgraded backend connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_strips_and_forwards() {
        let mut req = Request::builder()
            .uri("/a?b=1")
            .header("host", "example.test")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
        rewrite_request(
            &mut req,
            &backend,
            Some("127.0.0.5:1234".parse().unwrap()),
            ClientProto::Https,
        );
        assert_eq!(req.uri(), "http://127.0.0.1:9000/a?b=1");
        let h = req.headers();
        assert_eq!(h["host"], "example.test");
        assert!(h.get("x-secret").is_none() && h.get("te").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.test");
    }

    #[test]
    fn ipv4_is_written_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "255.255.255.255",
        ] {
            let mut out = [0u8; IPV4_TEXT_LEN];
            let len = write_ipv4(&mut out, ip.parse().unwrap());
            assert_eq!(&out[..len], ip.as_bytes());
        }
    }

    #[test]
    fn http2_authority_becomes_host() {
        let mut req = Request::builder()
            .uri("http://svc.test:8080/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
        rewrite_request(&mut req, &backend, None, ClientProto::Http);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "svc.test:8080");
    }

    #[test]
    fn a_request_without_host_gets_the_name_the_config_used() {
        let backend: http::uri::Authority = "10.0.0.7:8081".parse().unwrap();
        let bare = || {
            Request::builder()
                .uri("/x")
                .version(Version::HTTP_10)
                .body(())
                .unwrap()
        };
        let mut req = bare();
        rewrite_request(&mut req, &backend, None, ClientProto::Http);
        assert_eq!(req.headers()["host"], "10.0.0.7:8081");
        let mut req = bare();
        let name = HeaderValue::from_static("backends.internal:8081");
        rewrite_request_for(&mut req, &backend, Some(&name), None, ClientProto::Http);
        assert_eq!(req.headers()["host"], "backends.internal:8081");
        // A client's Host always wins.
        let mut req = bare();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("shop.example"));
        rewrite_request_for(&mut req, &backend, Some(&name), None, ClientProto::Http);
        assert_eq!(req.headers()["host"], "shop.example");
    }
}
