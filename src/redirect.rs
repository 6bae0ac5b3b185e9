//! The plain-HTTP listener when TLS is on: every request is sent to HTTPS.
//!
//! `GET` and `HEAD` get `301` (what browsers and the original project expect); other methods
//! get `308`, which, unlike `301`, forbids the client to turn a `POST` into a `GET`. The host
//! comes from `Host` (or the HTTP/2 authority) without its port; path and query are kept.

use axum::{
    body::Body,
    http::{header, HeaderValue, Method, Request, Response, StatusCode},
    Router,
};

use crate::local_reply::local_reply;

/// A router answering every request with a redirect to `https://<host>:<tls_port>`.
pub fn router(tls_port: u16) -> Router {
    Router::new()
        .fallback(move |request: Request<Body>| async move { redirect(&request, tls_port) })
}

/// The redirect for one request.
pub fn redirect<B>(request: &Request<B>, tls_port: u16) -> Response<Body> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return local_reply(StatusCode::BAD_REQUEST, "missing or invalid Host header");
    };
    let port = if tls_port == 443 {
        String::new()
    } else {
        format!(":{tls_port}")
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    let Ok(location) = HeaderValue::from_str(&location) else {
        return local_reply(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected",
        );
    };
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}
