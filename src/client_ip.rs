//! Who the client is: the socket peer, or `X-Forwarded-For` when the peer is a trusted proxy.
//!
//! `X-Forwarded-For` is whatever the client wrote, so believing it from anyone would let a
//! client pick its sticky backend or dodge its rate limit by inventing addresses. It is read
//! only when the socket peer is inside one of the configured `trusted_proxies` networks, and
//! then from the right: the nearest address that is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::Request;
use ipnet::IpNet;

/// Resolves the client address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: std::sync::Arc<[IpNet]>,
}

impl ClientIp {
    /// A resolver that believes `X-Forwarded-For` from these networks only.
    pub fn new(trusted: &[IpNet]) -> Self {
        ClientIp {
            trusted: trusted.into(),
        }
    }

    /// The socket peer, as the server recorded it in the request's extensions.
    pub fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
    }

    /// The client's address.
    pub fn resolve<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = Self::peer(req)?.ip();
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in req.headers().get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else { break };
            for hop in text.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if self.is_trusted(ip) => client = ip,
                    Ok(ip) => return Some(ip),
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}
