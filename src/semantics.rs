//! The HTTP semantics ALB relies on (RFC 9110), shared by the forwarder and the upstream
//! client: which headers are hop-by-hop, what makes a request an upgrade, which methods are
//! idempotent. A leaf: it imports nothing from the rest of the crate.

use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method,
};

/// Hop-by-hop headers of RFC 9110 §7.6.1 and the legacy ones proxies also drop.
///
/// A `static`, not a `const`: a `const` array of `HeaderName`s is built and dropped at every
/// use, on every request.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Whether `name` is hop-by-hop whatever `Connection` lists: the RFC 9110 names, the legacy
/// ones, and `Upgrade` (kept only for an upgrade handshake, see `forward::rewrite_request`).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// The `Upgrade` protocol if this is an upgrade request (`Connection: upgrade` + `Upgrade`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<&HeaderValue> {
    // Most requests have no `Connection` field. Comparing the (few) names, a standard one by
    // its tag, is cheaper than the hashed lookup that would find nothing (callgrind: 145
    // instructions per GET for the lookups, on `Replay::of`'s path).
    if !headers.keys().any(|name| name == header::CONNECTION) {
        return None;
    }
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade
        .then(|| headers.get(header::UPGRADE))
        .flatten()
}

/// Removes hop-by-hop headers. With `keep_upgrade`, the handshake's `Connection: upgrade`
/// and `Upgrade` survive so the backend sees the upgrade request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) headers, comparing names (cheap for standard headers), finds
    // which hop-by-hop names are present; only those are removed (a hash lookup each).
    let mut present: Vec<HeaderName> = Vec::new();
    let mut upgrade_present = false;
    for name in headers.keys() {
        if name == header::UPGRADE {
            upgrade_present = true;
        } else if HOP_BY_HOP.contains(name) && !present.contains(name) {
            present.push(name.clone());
        }
    }
    if present.is_empty() && !upgrade_present {
        return;
    }
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    present.extend(connection_listed(headers));
    for name in &present {
        headers.remove(name);
    }
    if upgrade_present {
        headers.remove(header::UPGRADE);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// The field names a request's `Connection` headers list, which are hop-by-hop too (RFC
/// 9110 §7.6.1); empty, without allocating, when there are none. `keep-alive` and `close`,
/// the usual tokens, name nothing to remove. `Connection: host` is not obeyed: a request
/// without `Host` names no site (nginx ignores such tokens altogether).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut listed = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("host")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    listed
}

/// Whether a method may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// nginx's status for a request whose client went away before the answer (not an HTTP
/// status a client ever sees: it exists for logs and records).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The client side of an upgrade (WebSocket), shared by every attempt of one request.
///
/// hyper hands the upgraded client connection out once, through the request's `OnUpgrade`
/// extension. If the first attempt took it and its backend refused the connection, a retry
/// on another backend would answer `101` and then have no client connection to join (found
/// by the chaos soak). So the handle moves into this slot, which every attempt's request
/// carries, and is taken only by the attempt whose backend actually answered `101`.
#[derive(Debug, Clone)]
pub struct ClientUpgrade(std::sync::Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl ClientUpgrade {
    /// The request's slot: the one it already carries, or a new one holding its handle.
    pub fn of<B>(request: &mut http::Request<B>) -> ClientUpgrade {
        if let Some(slot) = request.extensions().get::<ClientUpgrade>() {
            return slot.clone();
        }
        let on = hyper::upgrade::on(&mut *request);
        let slot = ClientUpgrade(std::sync::Arc::new(std::sync::Mutex::new(Some(on))));
        request.extensions_mut().insert(slot.clone());
        slot
    }

    /// The handle, for the attempt that got `101`; `None` if another attempt took it.
    pub fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
