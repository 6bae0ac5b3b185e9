//! The edge layers, outermost first: [`metrics`] (counts every answer, 429s and 503s
//! included), [`rate_limit`] (token buckets, `429`), [`backpressure`] (a global in-flight cap,
//! fast `503`), [`body_limit`] (`413` for oversized bodies). Each is a `Layer` + `Service`
//! pair that any axum or tower app can stack:
//!
//! ```text
//! Metrics ─► RateLimit ─► Backpressure ─► BodyLimit ─► Route ─► Forward
//! ```

pub mod backpressure;
pub mod body_limit;
pub mod metrics;
pub mod rate_limit;

pub use backpressure::{Backpressure, BackpressureLayer};
pub use body_limit::{BodyLimit, BodyLimitLayer};
pub use metrics::{Metrics, MetricsLayer};
pub use rate_limit::{RateLimit, RateLimitLayer};

/// The boxed future of a layer that does work after its inner service answers.
pub type LayerFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<axum::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;
