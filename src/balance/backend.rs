//! Backend identity, apart from its state (as pingora-load-balancing keeps `Backend` apart
//! from its health).
//!
//! A backend *is* its `host:port`: the config refuses two entries with the same authority,
//! so the authority names one backend for the life of the process. [`BackendIds`] turns
//! authorities into small [`BackendId`]s, handing out the next number to an authority it has
//! not seen and the same number to one it has, so an id survives reloads that reorder,
//! remove or re-add backends. Everything keyed by backend (connection pools, decision
//! records, metrics labels, `/backends/{id}`) uses the id, never a position in a list.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use http::{uri::Authority, HeaderValue};
use serde::Serialize;

/// A backend's stable number: the same for the same `host:port` across reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BackendId(u32);

impl BackendId {
    /// The id as an index (ids are dense: 0, 1, 2... in the order backends were first seen).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for BackendId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(BackendId)
    }
}

/// What the configuration says about one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendSpec {
    /// The URL as written.
    pub url: String,
    /// `host:port`, the backend's name in headers, metrics and logs.
    #[serde(skip)]
    pub authority: Authority,
    /// Relative share of traffic (1 to 10 000).
    pub weight: u32,
    /// The DNS name it was found under (DNS discovery); `None` for a configured URL.
    #[serde(skip)]
    pub dns_name: Option<Arc<str>>,
}

/// The id registry: one per process, handed from each data plane to the next on reload.
#[derive(Debug, Default)]
pub struct BackendIds {
    known: Mutex<HashMap<Authority, BackendId>>,
}

impl BackendIds {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The id of `authority`: the one it had, or the next free number.
    pub fn id_of(&self, authority: &Authority) -> BackendId {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let next = BackendId(u32::try_from(known.len()).expect("fewer than 2^32 backends"));
        *known.entry(authority.clone()).or_insert(next)
    }
}

/// A backend's identity: its id, what the config says about it, and values derived once.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Stable id.
    pub id: BackendId,
    /// The URL as configured.
    pub url: String,
    /// `host:port`, used to connect and as the backend's name everywhere.
    pub authority: Authority,
    /// `x-alb-backend` value, built once.
    pub header_value: HeaderValue,
    /// Relative share of traffic.
    pub weight: u32,
    /// Seed for rendezvous hashing, derived from the name so it is stable across restarts.
    pub hash_seed: u64,
    /// The DNS name it was found under; `None` for a configured URL.
    pub dns_name: Option<Arc<str>>,
    /// `Host` for a request that names none, when not `authority`: `dns_name:port` for a
    /// backend found by DNS (the name the config used, as nginx's `$proxy_host`).
    pub host: Option<HeaderValue>,
    /// `https`: connections to it use TLS (the scheme is not part of its identity).
    pub tls: bool,
}

impl Backend {
    /// The identity of a configured backend.
    pub fn new(id: BackendId, spec: &BackendSpec) -> Self {
        let name = spec.authority.as_str();
        Backend {
            id,
            url: spec.url.clone(),
            authority: spec.authority.clone(),
            header_value: HeaderValue::from_str(name).expect("an authority is a valid header"),
            weight: spec.weight.max(1),
            hash_seed: stable_hash(name.as_bytes()),
            dns_name: spec.dns_name.clone(),
            host: spec.dns_name.as_ref().and_then(|dns| {
                let port = spec.authority.port_u16().unwrap_or(80);
                HeaderValue::from_str(&format!("{dns}:{port}")).ok()
            }),
            tls: spec
                .url
                .trim()
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme().cloned())
                == Some(http::uri::Scheme::HTTPS),
        }
    }

    /// `https` or `http`, the scheme of requests to it.
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// `host:port`.
    pub fn name(&self) -> &str {
        self.authority.as_str()
    }
}

/// FNV-1a followed by a 64-bit finaliser: stable across runs and platforms, unlike std's
/// randomly keyed hasher, so sticky clients keep their backend over restarts.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// SplitMix64's finaliser: spreads every input bit over the whole output.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(s: &str) -> Authority {
        s.parse().unwrap()
    }

    #[test]
    fn ids_follow_the_authority_not_the_position() {
        let ids = BackendIds::new();
        let a = ids.id_of(&authority("a:1"));
        let b = ids.id_of(&authority("b:1"));
        let c = ids.id_of(&authority("c:1"));
        assert_eq!((a.get(), b.get(), c.get()), (0, 1, 2));
        // A reload listing them in another order, with a new one, keeps the old ids.
        assert_eq!(ids.id_of(&authority("c:1")), c);
        assert_eq!(ids.id_of(&authority("d:1")).get(), 3);
        assert_eq!(ids.id_of(&authority("a:1")), a);
    }

    #[test]
    fn stable_hash_is_stable() {
        // Sticky clients keep their backend across restarts only if this never changes.
        assert_eq!(
            stable_hash(b"127.0.0.1:8081"),
            stable_hash(b"127.0.0.1:8081")
        );
        assert_ne!(
            stable_hash(b"127.0.0.1:8081"),
            stable_hash(b"127.0.0.1:8082")
        );
        assert_eq!(mix64(0), 0);
    }
}
