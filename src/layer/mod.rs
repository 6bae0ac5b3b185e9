//! The edge layers, outermost first: [`request_id`] (`x-request-id` kept or made), the
//! trace context (the `trace` module, beside this one), [`access_log`] (a line per request, ALB's
//! own refusals included), [`record`] (sampled requests as JSON lines for `alb replay`),
//! [`metrics`] (counts every answer, 429s and 503s included),
//! [`normalize`] (one reading of each request's host and framing: `400`, `405`),
//! [`rate_limit`] (token buckets in process or in Redis, `429`), [`backpressure`] (a global
//! in-flight cap, fast `503`), [`body_limit`] (`413` for oversized bodies), [`fault`]
//! (injected delays and aborts, chaos testing; the router puts one on each route). Each is a
//! `Layer` + `Service` pair that any axum or tower app can stack:
//!
//! ```text
//! RequestId ─► Trace ─► AccessLog ─► Record ─► Metrics ─► Normalize ─► RateLimit ─► Backpressure
//!           ─► BodyLimit ─► Router (per route: Fault ─► split, mirror) ─► Route ─► Forward
//! ```

pub mod access_log;
pub mod backpressure;
pub mod body_limit;
pub mod fault;
pub mod metrics;
pub mod normalize;
pub mod rate_limit;
pub mod record;
pub mod request_id;

pub use access_log::{AccessLog, AccessLogLayer};
pub use backpressure::{Backpressure, BackpressureLayer};
pub use body_limit::{BodyLimit, BodyLimitLayer};
pub use fault::{Fault, FaultLayer};
pub use metrics::{Metrics, MetricsLayer};
pub use normalize::{Normalize, NormalizeLayer};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use record::{Record, RecordLayer};
pub use request_id::{RequestId, RequestIdLayer};

/// The boxed future of a layer that does work after its inner service answers.
pub type LayerFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<axum::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;
