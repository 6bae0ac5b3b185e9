//! The header names ALB adds or reads on its own account: one place for each name.

use http::HeaderName;

/// Response header naming the backend that served a request.
pub static X_ALB_BACKEND: HeaderName = HeaderName::from_static("x-alb-backend");
/// Request header asking for an explanation (when the config allows it).
pub static X_ALB_EXPLAIN: HeaderName = HeaderName::from_static("x-alb-explain");
/// Response header carrying the explanation.
pub static X_ALB_DECISION: HeaderName = HeaderName::from_static("x-alb-decision");
/// The request id: kept when the client sent a sane one, else generated; sent to the
/// backend and echoed to the client (the de-facto header of nginx, Envoy and Heroku).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context: version, trace id, parent span id, flags.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context: vendor-specific trace state, passed on with `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
