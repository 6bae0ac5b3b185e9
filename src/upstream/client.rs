//! hyper-util's pooled client: the way out for requests with a body and for upgrades (it
//! streams both ways at once and hands over upgraded connections), and the health checker's
//! client.

use std::time::Duration;

use axum::body::Body;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::IDLE_TIMEOUT;

/// The pooled HTTP/1.1 client shared by every forwarder and the health checker.
pub type BackendClient = Client<HttpConnector, Body>;

/// Builds the pooled client: `TCP_NODELAY`, a connect timeout, idle connections expire.
pub fn backend_client(connect_timeout: Duration) -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        // hyper-util applies pool_idle_timeout only when the pool has a timer.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector)
}

/// The innermost error's message: "connection refused" rather than "client error (Connect)".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
