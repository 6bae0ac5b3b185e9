//! One reading of every request before it is routed: requests a load balancer could pass on
//! in a form the backend reads differently are refused (`400`), methods that must not be
//! forwarded are refused (`405`), and the target's authority becomes the one `Host`.
//!
//! hyper already refuses most ambiguous framing (conflicting `Content-Length`, obfuscated
//! `Transfer-Encoding`, obs-fold, bare CR). What it leaves to the application is the host
//! the request is for, and a proxy that gets that wrong lets the backend (and a cache or
//! router between them) disagree with ALB about which site a request belongs to:
//!
//! - more than one `Host`, or a `Host` that is not a valid `host[:port]`: `400`
//!   (RFC 9112 §3.2: "A server MUST respond with a 400 ... to any request message that
//!   contains more than one Host header field line or a Host header field with an invalid
//!   field value");
//! - an HTTP/1.1 request without `Host`: `400` (same section); HTTP/1.0 may omit it, and the
//!   forwarder then names the backend;
//! - an absolute-form target (`GET http://a/ HTTP/1.1`): its authority replaces `Host`
//!   (RFC 9112 §3.2.2); userinfo in it (`http://user:pw@a/`) or a scheme other than
//!   `http`/`https`: `400`;
//! - HTTP/2 with both `:authority` and a different `Host`: `400` (RFC 9113 §8.3.1);
//! - an asterisk-form target (`*`) on any method but `OPTIONS`, or an authority-form one
//!   (`GET host:80`) on any method but `CONNECT`: `400` (RFC 9112 §3.2.3, §3.2.4);
//! - `Transfer-Encoding` naming `chunked` more than once: `400` (RFC 9112 §6.1: a sender
//!   must not apply chunked twice; two parsers may strip one or two layers);
//! - `CONNECT` (a tunnel request, meaningless to a backend as `CONNECT /`) and `TRACE` (it
//!   would echo the client's credentials and cookies back, the cross-site tracing attack):
//!   `405`, as nginx answers both.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::body::Body;
use futures_util::future::{Either, Ready};
use http::{
    header, uri::Authority, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use tower::{Layer, Service};

use crate::local_reply::local_reply;

/// Methods ALB forwards, listed in the `Allow` header of its `405`.
const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Adds [`Normalize`] to a stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalizeLayer;

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;

    fn layer(&self, inner: S) -> Normalize<S> {
        Normalize { inner }
    }
}

/// The service of [`NormalizeLayer`] (see the module docs).
#[derive(Debug, Clone)]
pub struct Normalize<S> {
    inner: S,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `CONNECT` or `TRACE`.
    #[error("method {0} is not forwarded")]
    Method(&'static str),
    /// Two or more `Host` lines.
    #[error("more than one Host header")]
    DuplicateHost,
    /// An HTTP/1.1 request without `Host`.
    #[error("missing Host header")]
    MissingHost,
    /// A `Host` that is not `host[:port]`.
    #[error("invalid Host header")]
    InvalidHost,
    /// An absolute-form target with userinfo or a scheme other than http(s).
    #[error("invalid request target")]
    InvalidTarget,
    /// HTTP/2 `:authority` and `Host` name different hosts.
    #[error("Host differs from :authority")]
    ConflictingAuthority,
    /// `chunked` applied more than once.
    #[error("Transfer-Encoding chunked more than once")]
    RepeatedChunked,
}

impl Refusal {
    /// The answer to a refused request.
    pub fn into_response(self) -> Response<Body> {
        match self {
            Refusal::Method(_) => {
                let mut response = local_reply(StatusCode::METHOD_NOT_ALLOWED, self);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
                response
            }
            _ => local_reply(StatusCode::BAD_REQUEST, self),
        }
    }
}

/// Checks `request` and makes its `Host` the one the request is for (see the module docs).
pub fn normalize<B>(request: &mut Request<B>) -> Result<(), Refusal> {
    match *request.method() {
        Method::CONNECT => return Err(Refusal::Method("CONNECT")),
        Method::TRACE => return Err(Refusal::Method("TRACE")),
        _ => {}
    }
    let fields = HostAndChunked::of(request.headers());
    if fields.chunked > 1 {
        return Err(Refusal::RepeatedChunked);
    }
    if request.uri().path() == "*" && request.method() != Method::OPTIONS {
        return Err(Refusal::InvalidTarget);
    }
    if fields.hosts > 1 {
        return Err(Refusal::DuplicateHost);
    }
    let host = fields.host;
    if let Some(host) = host {
        if !valid_authority(host.as_bytes()) {
            return Err(Refusal::InvalidHost);
        }
    }
    let http2 = request.version() == Version::HTTP_2;
    let Some(authority) = request.uri().authority() else {
        return match (host, request.version()) {
            (None, Version::HTTP_11) => Err(Refusal::MissingHost),
            _ => Ok(()),
        };
    };
    if authority.as_str().contains('@') {
        return Err(Refusal::InvalidTarget);
    }
    if !matches!(request.uri().scheme_str(), Some("http" | "https")) {
        return Err(Refusal::InvalidTarget);
    }
    if http2 {
        return match host {
            Some(host)
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                Err(Refusal::ConflictingAuthority)
            }
            _ => Ok(()),
        };
    }
    // HTTP/1.x absolute form: the target's authority wins over any Host line, and is held
    // to the same rules as a Host value (a numeric port that fits, a host).
    if !valid_authority(authority.as_str().as_bytes()) {
        return Err(Refusal::InvalidTarget);
    }
    let value = HeaderValue::from_str(authority.as_str()).map_err(|_| Refusal::InvalidTarget)?;
    request.headers_mut().insert(header::HOST, value);
    Ok(())
}

/// The request's `Host` lines and how many times `chunked` is named over its
/// `Transfer-Encoding` lines, found in one pass over its fields (cheaper than a hashed
/// lookup of each name).
struct HostAndChunked<'a> {
    /// The first `Host` value.
    host: Option<&'a HeaderValue>,
    /// How many `Host` lines.
    hosts: usize,
    /// How many `chunked` codings, over every `Transfer-Encoding` line.
    chunked: usize,
}

impl<'a> HostAndChunked<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut fields = HostAndChunked {
            host: None,
            hosts: 0,
            chunked: 0,
        };
        for (name, value) in headers {
            if name == header::HOST {
                fields.host = fields.host.or(Some(value));
                fields.hosts += 1;
            } else if name == header::TRANSFER_ENCODING {
                fields.chunked += value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .filter(|token| token.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                    .count();
            }
        }
        fields
    }
}

/// `host[:port]` with no userinfo, path or empty host.
fn valid_authority(bytes: &[u8]) -> bool {
    simple_authority(bytes).unwrap_or_else(|| parsed_authority(bytes))
}

/// The usual `Host` (a DNS name or an IPv4 address, an optional numeric port) checked in
/// place, without the copy and allocation of [`parsed_authority`]; `None` for anything
/// else (IPv6 literals, percent-encoding, sub-delimiters), which that parser judges. Where
/// it answers, it agrees with the parser (a property test below checks).
fn simple_authority(bytes: &[u8]) -> Option<bool> {
    let (host, port) = match bytes.iter().position(|b| *b == b':') {
        Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
        None => (bytes, None),
    };
    let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-';
    if host.is_empty() || !host.iter().all(plain) {
        return None;
    }
    match port {
        None => Some(true),
        Some(port) if port.iter().all(u8::is_ascii_digit) => Some(
            std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some(),
        ),
        Some(_) => None,
    }
}

/// `host[:port]` by `http`'s authority parser, plus a port that is a number that fits.
fn parsed_authority(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.contains(&b'@') {
        return false;
    }
    let Ok(authority) = Authority::try_from(bytes) else {
        return false;
    };
    // `http` takes `a:port` as an authority; a port must be a number that fits.
    let port = &authority.as_str()[authority.host().len()..];
    let port_ok = port.is_empty()
        || (port[1..].bytes().all(|b| b.is_ascii_digit()) && port[1..].parse::<u16>().is_ok());
    !authority.host().is_empty() && port_ok
}

impl<S> Service<Request<Body>> for Normalize<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match normalize(&mut request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(refusal) => Either::Right(futures_util::future::ready(Ok(refusal.into_response()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .version(version)
            .body(())
            .unwrap();
        for host in hosts {
            request
                .headers_mut()
                .append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        request
    }

    fn host(request: &Request<()>) -> Vec<&str> {
        request
            .headers()
            .get_all(header::HOST)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn origin_form_with_one_valid_host_passes_unchanged() {
        let mut r = request(Method::GET, "/x", Version::HTTP_11, &["a.example:8080"]);
        assert_eq!(normalize(&mut r), Ok(()));
        assert_eq!(host(&r), ["a.example:8080"]);
    }

    #[test]
    fn host_must_be_single_and_valid() {
        let cases: &[(&[&str], Refusal)] = &[
            (&["a", "b"], Refusal::DuplicateHost),
            (&["a", "a"], Refusal::DuplicateHost),
            (&["a b"], Refusal::InvalidHost),
            (&["user@a"], Refusal::InvalidHost),
            (&["a/b"], Refusal::InvalidHost),
            (&[""], Refusal::InvalidHost),
            (&["a:port"], Refusal::InvalidHost),
            (&["a:+80"], Refusal::InvalidHost),
            (&["a:65536"], Refusal::InvalidHost),
            (&[], Refusal::MissingHost),
        ];
        for (hosts, refusal) in cases {
            let mut r = request(Method::GET, "/", Version::HTTP_11, hosts);
            assert_eq!(normalize(&mut r), Err(*refusal), "{hosts:?}");
        }
    }

    #[test]
    fn http10_may_omit_host() {
        let mut r = request(Method::GET, "/", Version::HTTP_10, &[]);
        assert_eq!(normalize(&mut r), Ok(()));
        assert!(host(&r).is_empty());
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let mut r = request(Method::GET, "http://other:81/x", Version::HTTP_11, &["a"]);
        assert_eq!(normalize(&mut r), Ok(()));
        assert_eq!(host(&r), ["other:81"]);
        let mut r = request(Method::GET, "http://other/x", Version::HTTP_11, &[]);
        assert_eq!(normalize(&mut r), Ok(()));
        assert_eq!(host(&r), ["other"]);
    }

    #[test]
    fn absolute_form_with_userinfo_or_odd_scheme_is_refused() {
        for uri in [
            "http://u:p@other/x",
            "ftp://other/x",
            "http://other:port/x",
            "http://other:99999/x",
        ] {
            let mut r = request(Method::GET, uri, Version::HTTP_11, &["a"]);
            assert_eq!(normalize(&mut r), Err(Refusal::InvalidTarget), "{uri}");
        }
    }

    #[test]
    fn http2_host_must_match_authority() {
        let mut r = request(Method::GET, "https://a/x", Version::HTTP_2, &["b"]);
        assert_eq!(normalize(&mut r), Err(Refusal::ConflictingAuthority));
        let mut r = request(Method::GET, "https://a/x", Version::HTTP_2, &["A"]);
        assert_eq!(normalize(&mut r), Ok(()));
        let mut r = request(Method::GET, "https://a/x", Version::HTTP_2, &[]);
        assert_eq!(normalize(&mut r), Ok(()));
        assert!(
            host(&r).is_empty(),
            "the forwarder takes Host from :authority"
        );
    }

    #[test]
    fn odd_targets_and_double_chunked_are_refused() {
        let mut r = request(Method::GET, "*", Version::HTTP_11, &["a"]);
        assert_eq!(normalize(&mut r), Err(Refusal::InvalidTarget));
        let mut r = request(Method::OPTIONS, "*", Version::HTTP_11, &["a"]);
        assert_eq!(normalize(&mut r), Ok(()));
        for te in [
            &["chunked", "chunked"][..],
            &["chunked, chunked"],
            &["gzip, chunked", "chunked"],
        ] {
            let mut r = request(Method::POST, "/", Version::HTTP_11, &["a"]);
            for v in te {
                r.headers_mut()
                    .append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            assert_eq!(normalize(&mut r), Err(Refusal::RepeatedChunked), "{te:?}");
        }
    }

    #[test]
    fn connect_and_trace_are_refused_with_allow() {
        for method in [Method::CONNECT, Method::TRACE] {
            let mut r = request(method.clone(), "/", Version::HTTP_11, &["a"]);
            let refusal = normalize(&mut r).unwrap_err();
            let response = refusal.into_response();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
            assert_eq!(response.headers()[header::ALLOW], ALLOWED);
        }
    }

    proptest::proptest! {
        /// The in-place check agrees with `http`'s parser wherever it answers.
        #[test]
        fn simple_authority_agrees_with_the_parser(
            text in "[a-zA-Z0-9.\\-]{0,12}(:[0-9]{0,7})?|[a-zA-Z0-9.:\\-\\[\\]@%!_~]{0,24}"
        ) {
            if let Some(simple) = simple_authority(text.as_bytes()) {
                proptest::prop_assert_eq!(simple, parsed_authority(text.as_bytes()), "{:?}", text);
            }
        }
    }
}
