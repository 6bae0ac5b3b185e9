//! Responses that `alb` writes itself (no backend involved): 502, 503, 504, 429...
//!
//! One short line of text saying what went wrong, prefixed with `alb:` so a user can tell a
//! balancer error from a backend's own error page at a glance.

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};

/// A plain-text response written by the balancer.
pub fn local_reply(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("alb: {reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
