//! Request ids: every request carries an `x-request-id` to the backend and back.
//!
//! An incoming id is kept when it is sane (1 to [`MAX_LEN`] visible ASCII characters, so it
//! cannot smuggle anything into a log line or a header); otherwise ALB makes one, a random
//! UUID (version 4) as Envoy does. The same id goes to the backend, to the client in the
//! response, into the access log and into the decision record (`/decisions`).

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::headers::X_REQUEST_ID;

/// Longest incoming id that is kept.
pub const MAX_LEN: usize = 200;

/// Whether an incoming id may be kept.
pub fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new random id: a version 4 UUID from the thread's random generator (`Uuid::new_v4`
/// asks the kernel for every id, a system call per request).
pub fn generate() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buffer);
    // Straight from the stack buffer into the header: one allocation.
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Adds request ids to a service (or, turned off, passes requests through untouched).
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer {
    on: bool,
}

impl RequestIdLayer {
    /// Request ids on, or off.
    pub fn new(on: bool) -> Self {
        RequestIdLayer { on }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        RequestIdLayer::new(true)
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner, on: self.on }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    on: bool,
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.on {
            return RequestIdFuture {
                inner: self.inner.call(request),
                id: None,
            };
        }
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(id)
                if is_sane(id) && request.headers().get_all(&X_REQUEST_ID).iter().count() == 1 =>
            {
                id.clone()
            }
            _ => {
                let id = generate();
                request
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        RequestIdFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestId`]: echoes the id in the response.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> std::future::Future for RequestIdFuture<F>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut result, this.id.take()) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_bounded_visible_ascii() {
        assert!(is_sane(&HeaderValue::from_static("abc-123_XYZ")));
        assert!(!is_sane(&HeaderValue::from_static("")));
        assert!(!is_sane(&HeaderValue::from_static("has space")));
        assert!(!is_sane(
            &HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap()
        ));
        assert!(!is_sane(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
    }

    #[test]
    fn generated_ids_are_uuids() {
        let id = generate();
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert!(uuid::Uuid::parse_str(text).is_ok());
        assert_ne!(generate(), generate());
    }
}
