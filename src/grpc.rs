//! gRPC as the balancer sees it: a call's outcome and its deadline, read from HTTP/2 headers
//! and trailers ("gRPC over HTTP/2", grpc/grpc `doc/PROTOCOL-HTTP2.md`).
//!
//! A gRPC call answers HTTP `200` whatever happened; its outcome is `grpc-status` (0 is OK),
//! in the trailers, or in the headers of a *trailers-only* answer (no body, usually an error
//! sent at once). A call that fails fast with `UNAVAILABLE` or `RESOURCE_EXHAUSTED` looks
//! cheap to a latency estimate unless it counts as a failure (Linkerd biases against fast
//! `RESOURCE_EXHAUSTED` for this reason), so the router waits for the status before it
//! records the outcome: [`WatchStatus`] reports it when the response body ends.
//!
//! `grpc-timeout` is the client's deadline: `1*8 digits` and a unit (`H`, `M`, `S`, `m`, `u`,
//! `n`).
//!
//! A leaf: it imports nothing from the rest of the crate.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// `grpc-status`.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-timeout`.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request or response is gRPC (`content-type: application/grpc`, with or without
/// a `+proto`-style suffix).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in `headers`, if there is a valid one.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// The code's name, as the gRPC spec spells it (`doc/statuscodes.md`).
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(code as usize)
        .copied()
        .unwrap_or("(unknown code)")
}

/// The deadline in `grpc-timeout`, if there is a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(value * 3600),
        b"M" => Duration::from_secs(value * 60),
        b"S" => Duration::from_secs(value),
        b"m" => Duration::from_millis(value),
        b"u" => Duration::from_micros(value),
        b"n" => Duration::from_nanos(value),
        _ => return None,
    })
}

pin_project! {
    /// A gRPC response body that calls `report` once with the call's `grpc-status` when it
    /// ends: the code from the trailers, or `None` if the body ended without one or failed.
    /// Frames pass through untouched (trailers included).
    pub struct WatchStatus<B, F: FnOnce(Option<u32>)> {
        #[pin]
        inner: B,
        report: Option<F>,
    }

    impl<B, F: FnOnce(Option<u32>)> PinnedDrop for WatchStatus<B, F> {
        fn drop(this: Pin<&mut Self>) {
            // The client went away before the end: no status was seen.
            if let Some(report) = this.project().report.take() {
                report(None);
            }
        }
    }
}

impl<B, F: FnOnce(Option<u32>)> WatchStatus<B, F> {
    /// Wraps `inner`.
    pub fn new(inner: B, report: F) -> Self {
        WatchStatus {
            inner,
            report: Some(report),
        }
    }
}

impl<B: Body, F: FnOnce(Option<u32>)> Body for WatchStatus<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(status),
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => Some(None),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            if let Some(report) = this.report.take() {
                report(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;

    fn with(name: &HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn timeouts_parse_by_unit() {
        let t = |v| timeout(&with(&GRPC_TIMEOUT, v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn status_and_names() {
        assert_eq!(status(&with(&GRPC_STATUS, "14")), Some(14));
        assert_eq!(status(&with(&GRPC_STATUS, "x")), None);
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(99), "(unknown code)");
    }

    #[tokio::test]
    async fn watch_reports_the_trailer_status_and_passes_trailers_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"x"))),
            Ok(Frame::trailers(with(&GRPC_STATUS, "8"))),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let watched = WatchStatus::new(body, move |code| tx.send(code).unwrap());
        let collected = watched.collect().await.unwrap();
        assert_eq!(collected.trailers().and_then(status), Some(8));
        assert_eq!(rx.recv().unwrap(), Some(8));
        assert!(rx.try_recv().is_err(), "reported once");
    }
}
