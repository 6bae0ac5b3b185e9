//! hyper-util's pooled client: the way out for requests with a body and for upgrades (it
//! streams both ways at once and hands over upgraded connections), for every request to an
//! `https://` or HTTP/2 backend, and the health checker's client.
//!
//! Its connector is hyper-rustls over hyper-util's TCP connector: `http://` URIs stay plain,
//! `https://` ones get TLS with the config from [`super::tls`]. Over TLS the negotiated ALPN
//! protocol picks HTTP/2 or HTTP/1.1 per connection; with `upstream_protocol: "h2"` the
//! client speaks HTTP/2 on every connection (prior knowledge on plain ones). An HTTP/2
//! connection is shared by all requests to its backend, each request one stream.

use std::time::Duration;

use axum::body::Body;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    tls::{UpstreamProtocol, UpstreamTls},
    IDLE_TIMEOUT,
};

/// The pooled client shared by every forwarder and the health checker.
pub type BackendClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Builds the pooled client: `TCP_NODELAY`, a connect timeout (TLS handshake included),
/// idle connections expire; `tls` is used for `https://` backends.
pub fn backend_client(
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
    tls: &UpstreamTls,
) -> BackendClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    // The TLS connector below sees `https://` URIs; the TCP one must let them through.
    tcp.enforce_http(false);
    let mut connector = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    if let Some(name) = &tls.server_name {
        connector = connector.with_server_name_resolver(FixedServerNameResolver::new(name.clone()));
    }
    // ALPN: none for `http1`, `h2` for `h2`, both for `auto`.
    let connector = match protocol {
        UpstreamProtocol::Http1 => connector.enable_http1().wrap_connector(tcp),
        UpstreamProtocol::H2 => connector.enable_http2().wrap_connector(tcp),
        UpstreamProtocol::Auto => connector.enable_all_versions().wrap_connector(tcp),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    // hyper-util applies pool_idle_timeout only when the pool has a timer.
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .timer(TokioTimer::new());
    if protocol == UpstreamProtocol::H2 {
        builder.http2_only(true);
    }
    // Keep-alive pings notice a dead HTTP/2 connection that would otherwise hold every
    // request multiplexed on it until their timeout.
    builder
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_timeout(Duration::from_secs(10));
    builder.build(connector)
}

/// The innermost error's message: "connection refused" rather than "client error (Connect)".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Whether a connect error came from the TLS handshake (rustls's error is in its chain).
pub fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        // tokio-rustls wraps rustls's error in an `io::Error`, whose `source()` skips the
        // error it wraps: look inside.
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}
