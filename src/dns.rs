//! DNS discovery: backends named by A/AAAA or SRV records, re-resolved as their TTLs say.
//!
//! A backend entry `{"dns": "backends.internal", "port": 8081}` stands for one backend per
//! address the name has (A and AAAA); `{"dns_srv": "_http._tcp.backends.internal"}` for one
//! per SRV target and port, each target resolved to its addresses. A resolved backend *is*
//! its `ip:port` (the same identity rule as a configured URL, [`crate::balance::backend`]);
//! the name that resolved to it (the `dns` name, or the SRV target) travels with it
//! ([`BackendSpec::dns_name`]) into `/backends`, and is the `Host` of a request that names
//! none (see the forwarder).
//!
//! One task per entry asks the servers, compares the answer with the last one and, when the
//! set of addresses changed, wakes the owner ([`DnsDiscovery::start`]'s `changed`), which
//! rebuilds the data plane from the static backends plus [`DnsDiscovery::backends`], exactly
//! as a config reload with that list would: backends that stay keep their state, new ones
//! wait for their first health check, removed ones finish what they have in flight. This
//! module decides nothing about membership itself.
//!
//! When to ask again (HAProxy's `hold valid` and nginx's `resolver valid=` bound the same
//! thing): after `clamp(min TTL of the answer, REFRESH_FLOOR, refresh)`, so a record is never
//! used past its TTL nor past `refresh`, and a TTL of 0 does not turn into a query loop
//! ([`next_refresh`]). The resolver's cache is cleared before each lookup, so `refresh`
//! really is the longest a change can go unseen. A failed lookup (timeout, SERVFAIL,
//! NXDOMAIN, an empty answer) keeps the last good addresses and is tried again after
//! `refresh`; the first failure and the recovery are logged once each.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig},
    lookup_ip::LookupIp,
    name_server::TokioConnectionProvider,
    ResolveError, TokioResolver,
};
use serde::Serialize;
use tokio::{sync::Notify, task::AbortHandle};

use crate::{
    balance::BackendSpec,
    telemetry::{DNS_ADDRESSES, DNS_LOOKUPS_TOTAL},
};

/// Never ask again sooner than this, whatever the TTL (a TTL of 0 or 1 would otherwise make
/// every refresh a query storm against the DNS server).
pub const REFRESH_FLOOR: Duration = Duration::from_secs(1);
/// `dns.refresh` when absent: the longest a DNS change can go unseen.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Time one query may take before the next server (or attempt) is tried.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per server before a lookup fails.
pub const LOOKUP_ATTEMPTS: usize = 2;
/// Port of a `dns.servers` entry given as a bare address.
pub const DNS_PORT: u16 = 53;

/// The `dns` settings and the backend entries that use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    /// Servers to ask; `None`: those of `/etc/resolv.conf` (with its search domains).
    pub servers: Option<Vec<SocketAddr>>,
    /// Longest time between two lookups of a name (shorter when the TTL says so).
    #[serde(with = "crate::humantime_serde")]
    pub refresh: Duration,
    /// The backend entries given by DNS names, in config order.
    pub sources: Vec<DnsSource>,
}

/// One backend entry given by a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsSource {
    /// Where the config gives it (`backends[2]`), for messages.
    pub key: String,
    /// What to ask.
    pub query: DnsQuery,
    /// Weight of each backend it yields.
    pub weight: u32,
}

/// What a DNS backend entry asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum DnsQuery {
    /// A and AAAA records of `name`; every address serves on `port`.
    Address {
        /// The name.
        name: String,
        /// The backends' port.
        port: u16,
    },
    /// SRV records of `name`: each target (resolved to its addresses) and port. Priority
    /// and weight of the records are not used: every target gets the entry's weight.
    Srv {
        /// The SRV name, `_service._proto.domain`.
        name: String,
    },
}

impl DnsQuery {
    /// The name asked for.
    pub fn name(&self) -> &str {
        match self {
            DnsQuery::Address { name, .. } | DnsQuery::Srv { name } => name,
        }
    }
}

/// When to look a name up again after an answer whose shortest TTL is `ttl` seconds:
/// `clamp(ttl, REFRESH_FLOOR, refresh)` (`refresh` when the answer had no TTL).
pub fn next_refresh(ttl: Option<u32>, refresh: Duration) -> Duration {
    let refresh = refresh.max(REFRESH_FLOOR);
    match ttl {
        Some(ttl) => Duration::from_secs(u64::from(ttl)).clamp(REFRESH_FLOOR, refresh),
        None => refresh,
    }
}

/// A resolver for `servers` (or the system's), set up for discovery: A and AAAA both, no
/// `/etc/hosts` when servers are given, bounded timeouts.
pub fn resolver(servers: Option<&[SocketAddr]>) -> Result<TokioResolver, ResolveError> {
    let (config, mut options) = match servers {
        None => hickory_resolver::system_conf::read_system_conf()?,
        Some(servers) => {
            let mut group = NameServerConfigGroup::new();
            for server in servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[server.ip()],
                    server.port(),
                    true,
                ));
            }
            let mut options = hickory_resolver::config::ResolverOpts::default();
            options.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_parts(None, Vec::new(), group), options)
        }
    };
    options.timeout = LOOKUP_TIMEOUT;
    options.attempts = LOOKUP_ATTEMPTS;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build(),
    )
}

/// What one entry last resolved to, and how its lookups go: `/backends`' `discovery`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// The entry's key in the config (`backends[2]`).
    pub key: String,
    /// The name and record type.
    #[serde(flatten)]
    pub query: DnsQuery,
    /// The last good answer, `ip:port`, sorted; kept while lookups fail.
    pub addresses: Vec<SocketAddr>,
    /// The name that resolved to each address (the SRV target for SRV).
    #[serde(skip)]
    pub names: Vec<Arc<str>>,
    /// When the last good answer came (seconds since the Unix epoch); `None`: never.
    pub resolved_at_unix: Option<f64>,
    /// The shortest TTL of the last good answer, seconds.
    pub ttl_s: Option<u32>,
    /// Why the last lookup failed; `None` when it succeeded.
    pub last_error: Option<String>,
    /// Failed lookups in a row.
    pub failures: u64,
    /// When the next lookup is due (seconds since the Unix epoch).
    pub next_refresh_unix: f64,
}

/// One entry and its status, shared by its task and the readers.
#[derive(Debug)]
struct Watched {
    source: DnsSource,
    status: Mutex<SourceStatus>,
}

impl Watched {
    fn status(&self) -> std::sync::MutexGuard<'_, SourceStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The resolver tasks of one config's DNS entries and what they found.
#[derive(Debug)]
pub struct DnsDiscovery {
    watched: Vec<Arc<Watched>>,
    tasks: Vec<AbortHandle>,
}

impl DnsDiscovery {
    /// Starts one lookup task per entry of `config`, each calling `changed.notify_one()`
    /// when its addresses change. An entry also in `previous` (the config before a reload)
    /// starts from what it had found, so a reload does not drop discovered backends.
    pub fn start(
        config: &DnsConfig,
        previous: Option<&DnsDiscovery>,
        changed: Arc<Notify>,
    ) -> Result<DnsDiscovery, ResolveError> {
        let resolver = Arc::new(resolver(config.servers.as_deref())?);
        let mut watched = Vec::with_capacity(config.sources.len());
        let mut tasks = Vec::with_capacity(config.sources.len());
        for source in &config.sources {
            let kept = previous.and_then(|p| {
                p.watched
                    .iter()
                    .find(|w| w.source.query == source.query && w.source.weight == source.weight)
            });
            let mut status = match kept {
                Some(old) => old.status().clone(),
                None => SourceStatus {
                    key: source.key.clone(),
                    query: source.query.clone(),
                    addresses: Vec::new(),
                    names: Vec::new(),
                    resolved_at_unix: None,
                    ttl_s: None,
                    last_error: None,
                    failures: 0,
                    next_refresh_unix: unix_now(),
                },
            };
            status.key = source.key.clone();
            let w = Arc::new(Watched {
                source: source.clone(),
                status: Mutex::new(status),
            });
            let task = tokio::spawn(watch(
                resolver.clone(),
                w.clone(),
                config.refresh,
                changed.clone(),
            ));
            tasks.push(task.abort_handle());
            watched.push(w);
        }
        Ok(DnsDiscovery { watched, tasks })
    }

    /// The backends found, entry by entry in config order, each entry's in address order;
    /// an address found by two entries is listed once (the first entry's).
    pub fn backends(&self) -> Vec<BackendSpec> {
        let mut out: Vec<BackendSpec> = Vec::new();
        for w in &self.watched {
            let status = w.status();
            for (addr, name) in status.addresses.iter().zip(&status.names) {
                let authority = addr
                    .to_string()
                    .parse()
                    .expect("a socket address is an authority");
                if out.iter().any(|b| b.authority == authority) {
                    continue;
                }
                out.push(BackendSpec {
                    url: format!("http://{addr}"),
                    authority,
                    weight: w.source.weight,
                    dns_name: Some(name.clone()),
                });
            }
        }
        out
    }

    /// Every entry's status, in config order.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        self.watched.iter().map(|w| w.status().clone()).collect()
    }

    /// Stops the lookup tasks.
    pub fn stop(&self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

impl Drop for DnsDiscovery {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Looks `watched` up, again and again, until aborted.
async fn watch(
    resolver: Arc<TokioResolver>,
    watched: Arc<Watched>,
    refresh: Duration,
    changed: Arc<Notify>,
) {
    let source = &watched.source;
    let name = source.query.name();
    loop {
        // Only the servers' answer counts: a cached one could outlive `refresh`.
        resolver.clear_cache();
        let outcome = resolve(&resolver, &source.query).await;
        let result = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!(DNS_LOOKUPS_TOTAL, "name" => name.to_owned(), "result" => result)
            .increment(1);
        let wait = {
            let mut status = watched.status();
            match outcome {
                Ok((found, ttl)) => {
                    let (addresses, names): (Vec<_>, Vec<_>) = found.into_iter().unzip();
                    if status.last_error.take().is_some() {
                        tracing::info!(source = %source.key, name,
                            "DNS resolution works again after {} failures", status.failures);
                    }
                    status.failures = 0;
                    status.resolved_at_unix = Some(unix_now());
                    status.ttl_s = ttl;
                    if addresses != status.addresses {
                        let added: Vec<_> = addresses
                            .iter()
                            .filter(|a| !status.addresses.contains(a))
                            .collect();
                        let removed: Vec<_> = status
                            .addresses
                            .iter()
                            .filter(|a| !addresses.contains(a))
                            .collect();
                        tracing::info!(source = %source.key, name, ?added, ?removed,
                            "DNS: backends changed");
                        metrics::gauge!(DNS_ADDRESSES, "name" => name.to_owned())
                            .set(addresses.len() as f64);
                        status.addresses = addresses;
                        status.names = names;
                        changed.notify_one();
                    }
                    next_refresh(ttl, refresh)
                }
                Err(error) => {
                    if status.last_error.is_none() {
                        tracing::warn!(source = %source.key, name, %error,
                            kept = status.addresses.len(),
                            "DNS resolution failed; keeping the last good addresses");
                    }
                    status.failures += 1;
                    status.last_error = Some(error);
                    refresh.max(REFRESH_FLOOR)
                }
            }
        };
        watched.status().next_refresh_unix = unix_now() + wait.as_secs_f64();
        tokio::time::sleep(wait).await;
    }
}

/// The sorted addresses an entry stands for, each with the name that resolved to it, and
/// the shortest TTL of the answer.
async fn resolve(
    resolver: &TokioResolver,
    query: &DnsQuery,
) -> Result<(Vec<(SocketAddr, Arc<str>)>, Option<u32>), String> {
    let mut addresses = Vec::new();
    let mut ttl: Option<u32> = None;
    let mut shortest = |t: u32| ttl = Some(ttl.map_or(t, |m| m.min(t)));
    match query {
        DnsQuery::Address { name, port } => {
            let lookup = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let found: Arc<str> = name.as_str().into();
            ip_answer(&lookup, *port, &found, &mut addresses, &mut shortest);
        }
        DnsQuery::Srv { name } => {
            let lookup = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            lookup
                .as_lookup()
                .record_iter()
                .for_each(|r| shortest(r.ttl()));
            for srv in lookup.iter() {
                let target = srv.target();
                let ips = resolver
                    .lookup_ip(target.clone())
                    .await
                    .map_err(|e| format!("SRV target {target}: {e}"))?;
                let found: Arc<str> = target.to_utf8().trim_end_matches('.').into();
                ip_answer(&ips, srv.port(), &found, &mut addresses, &mut shortest);
            }
        }
    }
    addresses.sort();
    addresses.dedup_by(|a, b| a.0 == b.0);
    if addresses.is_empty() {
        // Treated as a failure: an empty answer keeps the last set rather than leaving the
        // pool without backends (HAProxy holds the last set too, `hold nx`).
        return Err("no addresses in the answer".to_owned());
    }
    Ok((addresses, ttl))
}

fn ip_answer(
    lookup: &LookupIp,
    port: u16,
    name: &Arc<str>,
    addresses: &mut Vec<(SocketAddr, Arc<str>)>,
    shortest: &mut impl FnMut(u32),
) {
    lookup
        .as_lookup()
        .record_iter()
        .for_each(|r| shortest(r.ttl()));
    addresses.extend(
        lookup
            .iter()
            .map(|ip| (SocketAddr::new(ip, port), name.clone())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let refresh = Duration::from_secs(5);
        assert_eq!(next_refresh(Some(3), refresh), Duration::from_secs(3));
        assert_eq!(next_refresh(Some(300), refresh), refresh);
        assert_eq!(next_refresh(Some(0), refresh), REFRESH_FLOOR);
        assert_eq!(next_refresh(None, refresh), refresh);
        // A refresh below the floor is raised to it (the config refuses one anyway).
        assert_eq!(
            next_refresh(Some(0), Duration::from_millis(10)),
            REFRESH_FLOOR
        );
    }
}
