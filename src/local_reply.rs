//! Responses that `alb` writes itself (no backend involved): 502, 503, 504, 429...
//!
//! One short line of text saying what went wrong, prefixed with `alb:` so a user can tell a
//! balancer error from a backend's own error page at a glance.

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};

use crate::telemetry::LOAD_SHED_TOTAL;

/// Marks a response ALB wrote itself (an extension: never sent), so a layer above can tell
/// it from a backend's answer with the same status (the mirror counts it as an error).
#[derive(Debug, Clone, Copy)]
pub struct LocalReply;

/// A plain-text response written by the balancer.
pub fn local_reply(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("alb: {reason}\n")));
    *response.status_mut() = status;
    response.extensions_mut().insert(LocalReply);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `503` of a shed request.
pub fn overloaded(reason: impl std::fmt::Display) -> Response<Body> {
    metrics::counter!(LOAD_SHED_TOTAL).increment(1);
    let mut response = local_reply(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
