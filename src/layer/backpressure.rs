//! Backpressure: a cap on requests in flight over the whole proxy (`max_in_flight`).
//!
//! Beyond the cap a request is refused at once with `503` and `Retry-After: 1` and counted in
//! `lb_load_shed_total`, instead of waiting in an unbounded queue while its client times out.
//! A request holds its permit until its response body ends, like the balancer's in-flight
//! count: a slow download is load.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use futures_util::future::Either;

use super::LayerFuture;
use crate::{guarded_body::GuardedBody, local_reply::overloaded};

/// Adds a global in-flight cap to a service; `None` means no cap.
#[derive(Debug, Clone)]
pub struct BackpressureLayer {
    limit: Option<(usize, Arc<Semaphore>)>,
}

impl BackpressureLayer {
    /// At most `max_in_flight` requests at once; `None` passes everything through.
    pub fn new(max_in_flight: Option<usize>) -> Self {
        BackpressureLayer {
            limit: max_in_flight.map(|n| (n, Arc::new(Semaphore::new(n)))),
        }
    }
}

impl<S> Layer<S> for BackpressureLayer {
    type Service = Backpressure<S>;

    fn layer(&self, inner: S) -> Backpressure<S> {
        Backpressure {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service of [`BackpressureLayer`].
#[derive(Debug, Clone)]
pub struct Backpressure<S> {
    inner: S,
    limit: Option<(usize, Arc<Semaphore>)>,
}

impl<S, B> Service<Request<B>> for Backpressure<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Passing through (the layer disabled, or within limits) adds no allocation.
    type Future = Either<S::Future, LayerFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some((max, semaphore)) = &self.limit else {
            return Either::Left(self.inner.call(request));
        };
        let Ok(permit) = semaphore.clone().try_acquire_owned() else {
            let response = overloaded(format_args!("overloaded: {max} requests in flight"));
            return Either::Right(Box::pin(std::future::ready(Ok(response))));
        };
        let response = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(GuardedBody::new(body, permit))))
        }))
    }
}
