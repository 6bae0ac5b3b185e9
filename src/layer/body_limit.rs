//! A cap on request bodies (`max_request_body`): past it, `413 Content Too Large`.
//!
//! A `Content-Length` over the cap is refused before anything is read or forwarded. A body
//! without a length (chunked, HTTP/2) is counted as it streams; when it passes the cap the
//! forwarder's upload fails with a [`LengthLimitError`], which the forwarder turns into the
//! same `413`. Without a cap the body passes untouched (no extra boxing).

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::body::Body;
use http::{header, Request, Response, StatusCode};
pub use http_body_util::LengthLimitError;
use tower::{Layer, Service};

use futures_util::future::Either;

use super::LayerFuture;
use crate::local_reply::local_reply;

/// Adds a request-body cap; `None` passes everything through.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    max: Option<usize>,
}

impl BodyLimitLayer {
    /// Bodies of at most `max` bytes.
    pub fn new(max: Option<usize>) -> Self {
        BodyLimitLayer { max }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            max: self.max,
        }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max: Option<usize>,
}

/// The `413` answer.
pub fn too_large(max: usize) -> Response<Body> {
    local_reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format_args!("request body larger than {max} bytes"),
    )
}

impl<S> Service<Request<Body>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Passing through (the layer disabled, or within limits) adds no allocation.
    type Future = Either<S::Future, LayerFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(max) = self.max else {
            return Either::Left(self.inner.call(request));
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Either::Right(Box::pin(std::future::ready(Ok(too_large(max)))));
        }
        let request = request.map(|body| Body::new(http_body_util::Limited::new(body, max)));
        Either::Left(self.inner.call(request))
    }
}
