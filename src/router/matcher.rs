//! Which requests a route takes: `host`, `path_prefix`, `path`, `methods`, `headers`, all
//! of which must hold (a missing condition holds for every request).
//!
//! - `host` is exact (`api.example.com`) or a wildcard on the labels left of a suffix
//!   (`*.example.com` takes `a.example.com` and `a.b.example.com`, not `example.com`), as
//!   Envoy's virtual-host domains; compared without the port and case-insensitively, against
//!   the request's `Host` (HTTP/1.1) or `:authority` (HTTP/2).
//! - `path_prefix` is a plain string prefix of the path (as Envoy's `prefix` and nginx's
//!   prefix `location`: `/api` also takes `/apis`; write `/api/` for the segment only);
//!   `path` is the exact path, the query not included.
//! - `headers` are exact values; a header sent twice matches on either value.
//!
//! [`RouteMatch::covers`] says whether one match takes every request another takes, which
//! `check-config` uses to warn about a route that an earlier one shadows.

use http::{HeaderName, HeaderValue, Method, Request};
use serde::Serialize;

/// A route's conditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    /// The host, exact or `*.suffix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostMatch>,
    /// A prefix of the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The exact path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The methods taken (any when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "methods")]
    pub methods: Option<Vec<Method>>,
    /// Headers that must carry these exact values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(serialize_with = "headers")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A host condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// This host exactly (lowercase).
    Exact(String),
    /// Any host ending with this suffix, which starts with a dot (`.example.com`).
    Suffix(String),
}

impl Serialize for HostMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostMatch::Exact(h) => s.serialize_str(h),
            HostMatch::Suffix(suffix) => s.serialize_str(&format!("*{suffix}")),
        }
    }
}

fn methods<S: serde::Serializer>(m: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    let names: Option<Vec<&str>> = m.as_ref().map(|m| m.iter().map(Method::as_str).collect());
    names.serialize(s)
}

fn headers<S: serde::Serializer>(h: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    let map: std::collections::BTreeMap<&str, &str> = h
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("")))
        .collect();
    map.serialize(s)
}

// === impl HostMatch ===

impl HostMatch {
    /// Reads `api.example.com` or `*.example.com`; `None` when it is neither.
    pub fn parse(text: &str) -> Option<HostMatch> {
        let text = text.trim().to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        match text.strip_prefix("*.") {
            Some(rest) if valid(rest) => Some(HostMatch::Suffix(format!(".{rest}"))),
            Some(_) => None,
            None if valid(&text) => Some(HostMatch::Exact(text)),
            None => None,
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// Every host `other` takes, `self` takes too.
    fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
            (HostMatch::Suffix(_), HostMatch::Exact(b)) => self.matches(b),
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
        }
    }
}

/// The request's host without the port: `:authority` (HTTP/2, absolute-form) or `Host`.
pub fn request_host<B>(request: &Request<B>) -> Option<&str> {
    if let Some(host) = request.uri().host() {
        return Some(host);
    }
    let value = request.headers().get(http::header::HOST)?.to_str().ok()?;
    // `[::1]:8080`, `example.com:8080`, `example.com`.
    Some(match value.rfind(':') {
        Some(i) if !value[i..].contains(']') => &value[..i],
        _ => value,
    })
}

// === impl RouteMatch ===

impl RouteMatch {
    /// Whether `request` meets every condition.
    pub fn matches<B>(&self, request: &Request<B>) -> bool {
        if let Some(host) = &self.host {
            match request_host(request) {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        let path = request.uri().path();
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if let Some(exact) = &self.path {
            if path != exact {
                return false;
            }
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(request.method()) {
                return false;
            }
        }
        self.headers.iter().all(|(name, value)| {
            request
                .headers()
                .get_all(name)
                .iter()
                .any(|sent| sent == value)
        })
    }

    /// Whether every request `later` takes is taken by `self` (so a route with `later`
    /// after one with `self` can never match). Conservative: `false` when unsure.
    pub fn covers(&self, later: &RouteMatch) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let later_paths_start = |prefix: &str| {
            later.path.as_deref().is_some_and(|p| p.starts_with(prefix))
                || later
                    .path_prefix
                    .as_deref()
                    .is_some_and(|p| p.starts_with(prefix))
        };
        let prefix = match &self.path_prefix {
            None => true,
            Some(p) => later_paths_start(p),
        };
        let exact = match &self.path {
            None => true,
            Some(p) => later.path.as_deref() == Some(p.as_str()),
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let headers = self.headers.iter().all(|h| later.headers.contains(h));
        host && prefix && exact && methods && headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        if !host.is_empty() {
            b = b.header("host", host);
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn m(host: Option<&str>, prefix: Option<&str>, path: Option<&str>) -> RouteMatch {
        RouteMatch {
            host: host.map(|h| HostMatch::parse(h).unwrap()),
            path_prefix: prefix.map(str::to_owned),
            path: path.map(str::to_owned),
            ..RouteMatch::default()
        }
    }

    #[test]
    fn hosts_exact_and_wildcard_without_port_or_case() {
        let exact = m(Some("www.example.com"), None, None);
        assert!(exact.matches(&request("GET", "/", "www.example.com", &[])));
        assert!(exact.matches(&request("GET", "/", "WWW.Example.com:8080", &[])));
        assert!(!exact.matches(&request("GET", "/", "example.com", &[])));
        assert!(
            !exact.matches(&request("GET", "/", "", &[])),
            "no host: no match"
        );
        let wild = m(Some("*.example.com"), None, None);
        assert!(wild.matches(&request("GET", "/", "a.example.com", &[])));
        assert!(wild.matches(&request("GET", "/", "a.b.example.com:443", &[])));
        assert!(!wild.matches(&request("GET", "/", "example.com", &[])));
        assert!(!wild.matches(&request("GET", "/", "badexample.com", &[])));
        let absolute = request("GET", "http://www.example.com:81/x", "", &[]);
        assert!(exact.matches(&absolute), ":authority / absolute form");
        assert_eq!(HostMatch::parse("*.*.com"), None);
        assert_eq!(HostMatch::parse("a b"), None);
    }

    #[test]
    fn paths_methods_and_headers_must_all_hold() {
        let api = RouteMatch {
            path_prefix: Some("/api".into()),
            methods: Some(vec![Method::GET, Method::POST]),
            headers: vec![(
                HeaderName::from_static("x-canary"),
                HeaderValue::from_static("1"),
            )],
            ..RouteMatch::default()
        };
        let pinned = request("GET", "/api/users?x=1", "h", &[("x-canary", "1")]);
        assert!(api.matches(&pinned));
        assert!(!api.matches(&request("GET", "/api/users", "h", &[])));
        assert!(!api.matches(&request("GET", "/api", "h", &[("x-canary", "2")])));
        assert!(!api.matches(&request("PUT", "/api", "h", &[("x-canary", "1")])));
        assert!(!api.matches(&request("GET", "/web", "h", &[("x-canary", "1")])));
        let twice = request("GET", "/api", "h", &[("x-canary", "0"), ("x-canary", "1")]);
        assert!(api.matches(&twice), "either value of a repeated header");
        let exact = m(None, None, Some("/health"));
        assert!(exact.matches(&request("GET", "/health?full=1", "h", &[])));
        assert!(!exact.matches(&request("GET", "/health/x", "h", &[])));
        assert!(RouteMatch::default().matches(&request("DELETE", "/", "", &[])));
    }

    #[test]
    fn covers_finds_shadowed_routes_only() {
        let all = RouteMatch::default();
        let api = m(None, Some("/api"), None);
        let api_v1 = m(None, Some("/api/v1"), None);
        let pinned = RouteMatch {
            headers: vec![(
                HeaderName::from_static("x-canary"),
                HeaderValue::from_static("1"),
            )],
            ..api.clone()
        };
        assert!(all.covers(&api));
        assert!(api.covers(&api_v1));
        assert!(!api_v1.covers(&api));
        assert!(
            api.covers(&pinned),
            "the pin after the catch-all is shadowed"
        );
        assert!(!pinned.covers(&api), "the pin first is the right order");
        assert!(api.covers(&m(None, None, Some("/api/x"))));
        let wild = m(Some("*.example.com"), None, None);
        assert!(wild.covers(&m(Some("a.example.com"), Some("/"), None)));
        assert!(!wild.covers(&m(Some("example.com"), None, None)));
        assert!(!m(Some("a.example.com"), None, None).covers(&wild));
        assert!(!api.covers(&all));
    }
}
