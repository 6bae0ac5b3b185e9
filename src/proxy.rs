//! The assembled data plane, and its replacement on reload.
//!
//! [`Proxy::build`] turns a [`Config`] into running parts: one [`Endpoint`] per backend, the
//! health checker and the outlier detector feeding the balancer's discovery stream, the
//! retry budget, the pooled client and the edge layers.
//!
//! [`LiveProxy`] holds the current `Proxy` in an `ArcSwap`. Each request takes the current
//! one at its start and keeps it to its end, so a reload (SIGHUP or `POST /reload`) swaps
//! in a new `Proxy` without failing anything in flight and without touching connections:
//! listeners stay as they are. Backends that stay in the config keep their state (health,
//! drain, latency estimate, history) through [`Endpoint::inherit`].
//!
//! DNS discovery ([`crate::dns`]) takes the same path: when a name's addresses change,
//! `LiveProxy` builds a proxy from the running config plus the addresses found, as a reload
//! with that backend list would. An address that stays keeps its endpoint's state; a new one
//! waits out of service for its first passing health check; a removed one is in no new
//! proxy, so it gets no new requests while those in flight finish on the proxy they started
//! on.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use axum::{body::Body, extract::ConnectInfo, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use tokio::{sync::Notify, task::AbortHandle};
use tower::{Layer, Service};

use crate::{
    balance::{
        discover, discover::DiscoverSender, Backend, BackendIds, Balancer, Endpoint, Strategy,
        StrategyKind,
    },
    capacity::PoolCapacity,
    client_ip::ClientIp,
    config::{Config, PoolConfig},
    decision::DecisionLog,
    dns::{DnsDiscovery, SourceStatus},
    forward::{BackendPools, ClientProto, Forward},
    health::HealthChecker,
    layer::{
        access_log::AccessLogConfig,
        rate_limit::{spawn_pruning, store::StoreError, Limiter, RedisStore},
        record::RecordConfig,
        AccessLog, AccessLogLayer, Backpressure, BackpressureLayer, BodyLimit, BodyLimitLayer,
        Metrics, MetricsLayer, Normalize, NormalizeLayer, RateLimit, RateLimitLayer, Record,
        RecordLayer, RequestId, RequestIdLayer,
    },
    outlier::OutlierDetector,
    probe,
    retry::RetryBudget,
    route::{Route, RouteOptions, Routing},
    router::{MirrorService, RouteState, Router, SplitError},
    trace::{ExportError, Trace, TraceConfig, TraceLayer},
    upstream::{self, backend_client, BackendClient, UpstreamConfig, UpstreamProtocol},
};

/// One pool's routing service: pick, retry, forward.
pub type PoolService = Route<Forward>;

/// The whole request path: request id, trace context, access log, metrics, rate limit,
/// backpressure, body limit, then the router (route match, fault, split, mirror) to a
/// pool's routing and forwarding.
pub type ProxyService = RequestId<
    Trace<
        AccessLog<
            Record<Metrics<Normalize<RateLimit<Backpressure<BodyLimit<Router<PoolService>>>>>>>,
        >,
    >,
>;

/// Why a data plane could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The access log file cannot be opened for writing.
    #[error("access_log.path: cannot open {path} for writing: {source}")]
    AccessLog {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The traffic recording file cannot be opened for writing.
    #[error("record.path: cannot open {path} for writing: {source}")]
    Record {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The span exporter could not be set up.
    #[error("tracing.otlp_endpoint: {0}")]
    Tracing(#[from] ExportError),
    /// The DNS resolver could not be set up.
    #[error("dns.servers: cannot set up the resolver: {0}")]
    Dns(#[from] hickory_resolver::ResolveError),
    /// The rate-limit store's client could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A route's split weights were refused.
    #[error("routes: {0}")]
    Split(#[from] SplitError),
}

/// Why a proxy is built from a previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    /// The config file was read (at start or on reload).
    Reload,
    /// DNS discovery changed the backend list; the config is the same.
    Discovery,
}

/// Background tasks of one `Proxy` (health checks, pruning), stopped with it.
#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn add(&self, handle: AbortHandle) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    fn stop(&self) {
        for task in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

/// One pool's data plane: its endpoints, health checks, balancer and connections.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// The balancer and the steps around its pick.
    pub routing: Arc<Routing>,
    /// Every configured backend, in service or not, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The pool's capacity signal (`autoscale`), if configured.
    capacity: Option<Arc<PoolCapacity>>,
    changes: DiscoverSender,
    client: BackendClient,
    /// The settings `client` was built with.
    upstream: UpstreamConfig,
    connections: BackendPools,
    request_timeout: Duration,
}

/// What every pool of one proxy shares.
struct PoolContext<'a> {
    config: &'a Config,
    ids: &'a Arc<BackendIds>,
    decisions: &'a Arc<DecisionLog>,
    tasks: &'a Tasks,
    why: Rebuild,
    first_build: bool,
}

// === impl Pool ===

impl Pool {
    /// Builds a pool's endpoints and starts its health checks and balancer; backends also
    /// in `previous` (the same pool of the proxy being replaced) keep their state.
    fn build(pool: &PoolConfig, cx: &PoolContext<'_>, previous: Option<&Pool>) -> Pool {
        let config = cx.config;
        let endpoints: Vec<Arc<Endpoint>> = pool
            .backends
            .iter()
            .map(|spec| {
                let backend = Backend::new(cx.ids.id_of(&spec.authority), spec);
                let old = previous.and_then(|p| p.endpoints.iter().find(|o| o.id() == backend.id));
                let ep = Endpoint::new(backend, &pool.adaptive).with_slow_start(pool.slow_start);
                match (old, &spec.dns_name) {
                    (Some(old), _) => {
                        ep.inherit(old);
                        if cx.why == Rebuild::Reload {
                            ep.availability.note_reload("config reloaded".to_owned());
                        }
                    }
                    // Found by discovery: out until a check passes, which starts its slow start.
                    (None, Some(name)) => ep.availability.await_first_check(format!(
                        "found in DNS under {name}; in service once a health check passes"
                    )),
                    // Added by a reload: it joins now, so a slow start ramps from here.
                    (None, None) if !cx.first_build => ep.availability.joined(),
                    (None, None) => {}
                }
                Arc::new(ep)
            })
            .collect();
        // The pooled client (and its warm connections) carries over a reload that does not
        // change how backends are reached.
        let upstream = &pool.upstream;
        let client = match previous.filter(|p| p.upstream.same_settings(upstream)) {
            Some(p) => p.client.clone(),
            None => backend_client(pool.connect_timeout, upstream.protocol, &upstream.loaded),
        };
        let connections = BackendPools::new(
            &endpoints,
            pool.connect_timeout,
            upstream,
            previous.map_or(&BackendPools::default(), |p| &p.connections),
        );
        let (changes, stream) = discover::channel();
        cx.tasks.add(spawn_pool_sweeping(connections.clone()));
        let checker = HealthChecker::new(pool.health.clone(), client.clone(), changes.clone())
            .speaking_h2(upstream.protocol == UpstreamProtocol::H2);
        for task in checker.spawn(&endpoints) {
            cx.tasks.add(task.abort_handle());
        }
        let outlier = pool
            .outlier_detection
            .clone()
            .map(|c| OutlierDetector::new(c, endpoints.clone(), changes.clone()));
        let balancer = Balancer::new(
            Strategy::configured(pool.strategy, &pool.prequal),
            endpoints.clone(),
            stream,
        );
        if pool.strategy == StrategyKind::Prequal {
            cx.tasks
                .add(probe::spawn(balancer.clone(), client.clone()).abort_handle());
        }
        let routing = Routing::new(
            balancer,
            RouteOptions {
                client_ip: ClientIp::new(&config.trusted_proxies),
                max_connections: pool.max_connections,
                explain: pool.explain,
                shadow: pool.shadow,
                outlier,
                retry: pool.retries.clone().map(|r| Arc::new(RetryBudget::new(r))),
                decisions: Some(cx.decisions.clone()),
                outcomes: config.access_log.is_some()
                    || config.tracing.is_some()
                    || config.record.is_some(),
                // Only exported spans show the strategy's reason.
                outcome_why: config
                    .tracing
                    .as_ref()
                    .is_some_and(|t| t.otlp_endpoint.is_some()),
                request_ids: config.request_id,
                pool: Some(pool.name.as_str().into()),
            },
        );
        // The capacity signal: the previous pool's (its window and stabilization history)
        // when a reload keeps the `autoscale` settings, else a fresh one.
        let capacity = pool.autoscale.as_ref().map(|wanted| {
            match previous.and_then(|p| p.capacity.as_ref()) {
                Some(old) if old.config() == *wanted => old.clone(),
                _ => PoolCapacity::new(&pool.name, wanted.clone()),
            }
        });
        if let Some(capacity) = &capacity {
            cx.tasks.add(capacity.spawn(routing.balancer()));
        }
        Pool {
            name: pool.name.as_str().into(),
            routing,
            endpoints,
            capacity,
            changes,
            client,
            upstream: upstream.clone(),
            connections,
            request_timeout: pool.request_timeout,
        }
    }

    /// The pool's routing service for requests arriving over `proto`.
    pub fn route(&self, proto: ClientProto) -> PoolService {
        Route::new(
            self.routing.clone(),
            Forward::new(
                self.client.clone(),
                self.connections.clone(),
                proto,
                self.request_timeout,
                self.upstream.protocol,
            ),
        )
    }

    /// Drains a backend (no new requests; in-flight ones finish) or enables it again.
    pub fn set_drained(&self, endpoint: &Arc<Endpoint>, drained: bool) {
        endpoint.availability.set_drained(drained);
        self.changes.sync(endpoint);
        tracing::info!(
            pool = %self.name,
            backend = endpoint.name(),
            "backend {}",
            if drained { "DRAINED" } else { "ENABLED" }
        );
    }

    /// The pool's capacity signal, when `autoscale` is configured.
    pub fn capacity(&self) -> Option<&Arc<PoolCapacity>> {
        self.capacity.as_ref()
    }

    /// The balancer.
    pub fn balancer(&self) -> &Arc<Balancer> {
        self.routing.balancer()
    }
}

/// The assembled data plane, independent of listeners.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The pools, in name order (the flat format: the one pool, `default`).
    pub pools: Vec<Pool>,
    /// The routes, in config order.
    pub routes: Vec<Arc<RouteState>>,
    /// Stable backend ids, handed from each proxy to the next on reload.
    ids: Arc<BackendIds>,
    /// Every pool's decisions, in one log.
    decisions: Arc<DecisionLog>,
    metrics: MetricsLayer,
    rate_limit: RateLimitLayer,
    /// The rate limiter's buckets, kept through DNS changes.
    limiter: Option<Arc<Limiter>>,
    backpressure: BackpressureLayer,
    body_limit: BodyLimitLayer,
    request_id: RequestIdLayer,
    /// The access log resolves clients with these (a change needs a new layer).
    trusted_proxies: Vec<ipnet::IpNet>,
    access_log: (Option<AccessLogConfig>, AccessLogLayer),
    record: (Option<RecordConfig>, RecordLayer),
    trace: (Option<TraceConfig>, TraceLayer),
    /// The stack, built once per listener protocol, indexed by `ClientProto as usize`.
    stacks: Vec<ProxyService>,
    tasks: Arc<Tasks>,
}

impl Proxy {
    /// Builds every pool's endpoints and starts health checks, the balancers and the rate
    /// limiter's pruning. Needs a Tokio runtime; install the metrics recorder first
    /// ([`crate::prometheus::install`]) if metrics are wanted, since handles are resolved here.
    /// Only the pools' `backends` are served: DNS entries are looked up by [`LiveProxy`].
    pub fn build(config: &Config) -> Result<Proxy, BuildError> {
        Proxy::build_from(config, None, Rebuild::Reload)
    }

    /// Builds a proxy for `config`; backends also in `previous` keep their state, and the
    /// metric handles and pooled connections are reused. After a DNS change (`why`), the
    /// rate-limit buckets are kept too: nothing but the backend list changed.
    fn build_from(
        config: &Config,
        previous: Option<&Proxy>,
        why: Rebuild,
    ) -> Result<Proxy, BuildError> {
        // The log file and the exporter carry over a reload that does not change them, so
        // the writer thread, its queue and the exporter's batch are not restarted.
        let same_log = |p: &&Proxy| {
            p.access_log.0 == config.access_log && p.trusted_proxies == config.trusted_proxies
        };
        let access_log = match previous.filter(same_log) {
            Some(p) => p.access_log.1.clone(),
            None => match &config.access_log {
                None => AccessLogLayer::off(),
                Some(c) => AccessLogLayer::new(c, ClientIp::new(&config.trusted_proxies)).map_err(
                    |source| BuildError::AccessLog {
                        path: format!("{:?}", c.target),
                        source,
                    },
                )?,
            },
        };
        // The recording file carries over a reload that does not change it, as the log does.
        let record = match previous.filter(|p| p.record.0 == config.record) {
            Some(p) => p.record.1.clone(),
            None => match &config.record {
                None => RecordLayer::off(),
                Some(c) => RecordLayer::new(c).map_err(|source| BuildError::Record {
                    path: c.path.display().to_string(),
                    source,
                })?,
            },
        };
        let trace = match previous.filter(|p| p.trace.0 == config.tracing) {
            Some(p) => p.trace.1.clone(),
            None => match &config.tracing {
                None => TraceLayer::off(),
                Some(c) => TraceLayer::new(c)?,
            },
        };
        let ids = previous.map_or_else(BackendIds::new, |p| p.ids.clone());
        let decisions = previous.map_or_else(DecisionLog::new, |p| p.decisions.clone());
        let tasks = Arc::new(Tasks::default());
        let cx = PoolContext {
            config,
            ids: &ids,
            decisions: &decisions,
            tasks: &tasks,
            why,
            first_build: previous.is_none(),
        };
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|pool| {
                let old = previous.and_then(|p| p.pools.iter().find(|o| *o.name == *pool.name));
                Pool::build(pool, &cx, old)
            })
            .collect();
        let index = |name: &str| {
            pools
                .iter()
                .position(|p| &*p.name == name)
                .expect("the config names only its own pools")
        };
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let mirror = route
                    .mirror
                    .as_ref()
                    .map(|m| MirrorService::new(pools[index(&m.pool)].route(ClientProto::Http)));
                let old = previous.and_then(|p| p.routes.iter().find(|r| r.name() == route.name));
                RouteState::new(route.clone(), index, mirror, old.map(|r| &**r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A DNS change keeps the buckets (the config did not change); a reload starts afresh,
        // except that a store with the same URL and timeout keeps its connection and state.
        let client_ip = ClientIp::new(&config.trusted_proxies);
        let limiter = match (
            previous.filter(|_| why == Rebuild::Discovery),
            &config.rate_limit,
        ) {
            (Some(p), _) => p.limiter.clone(),
            (None, None) => None,
            (None, Some(r)) => {
                let limiter = match &r.store {
                    None => Limiter::new(r, client_ip),
                    Some(s) => {
                        let kept = previous
                            .and_then(Proxy::rate_limit_store)
                            .filter(|store| store.serves(s));
                        let store = match kept {
                            Some(store) => store.clone(),
                            None => RedisStore::start(s)?,
                        };
                        Limiter::with_store(r, client_ip, store)
                    }
                };
                Some(Arc::new(limiter))
            }
        };
        if let Some(limiter) = &limiter {
            tasks.add(spawn_pruning(limiter.clone()));
        }
        let mut proxy = Proxy {
            pools,
            routes,
            ids,
            decisions,
            metrics: previous.map_or_else(MetricsLayer::new, |p| p.metrics.clone()),
            rate_limit: RateLimitLayer::new(limiter.clone()),
            limiter,
            backpressure: BackpressureLayer::new(config.max_in_flight),
            body_limit: BodyLimitLayer::new(config.max_request_body),
            request_id: RequestIdLayer::new(config.request_id),
            trusted_proxies: config.trusted_proxies.clone(),
            access_log: (config.access_log.clone(), access_log),
            record: (config.record.clone(), record),
            trace: (config.tracing.clone(), trace),
            stacks: Vec::new(),
            tasks,
        };
        proxy.stacks = [ClientProto::Http, ClientProto::Https]
            .into_iter()
            .map(|proto| proxy.build_stack(proto))
            .collect();
        Ok(proxy)
    }

    /// The full stack for requests arriving over `proto`.
    pub fn service(&self, proto: ClientProto) -> ProxyService {
        self.stacks[proto as usize].clone()
    }

    /// The router alone (routes to pools, no edge layers) for requests arriving over
    /// `proto`.
    pub fn router(&self, proto: ClientProto) -> Router<PoolService> {
        let pools: Arc<[PoolService]> = self.pools.iter().map(|p| p.route(proto)).collect();
        Router::new(&self.routes, pools)
    }

    fn build_stack(&self, proto: ClientProto) -> ProxyService {
        let router = self.router(proto);
        let limited = self
            .rate_limit
            .layer(self.backpressure.layer(self.body_limit.layer(router)));
        let scheme = match proto {
            ClientProto::Http => "http",
            ClientProto::Https => "https",
        };
        self.request_id.layer(
            self.trace.1.for_scheme(scheme).layer(
                self.access_log.1.layer(
                    self.record
                        .1
                        .layer(self.metrics.layer(NormalizeLayer.layer(limited))),
                ),
            ),
        )
    }

    /// Reopens the access log file (SIGUSR1, after logrotate moved it).
    pub fn reopen_access_log(&self) {
        self.access_log.1.reopen();
    }

    /// Writes the queued access-log lines and exports the batched spans now (blocks for at
    /// most a few seconds: for shutdown).
    pub fn flush_logs_and_spans(&self) {
        self.access_log.1.flush(Duration::from_secs(2));
        self.record.1.flush(Duration::from_secs(2));
        self.trace.1.flush();
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// The route named `name`.
    pub fn route_named(&self, name: &str) -> Option<&Arc<RouteState>> {
        self.routes.iter().find(|r| r.name() == name)
    }

    /// Every pool's decisions.
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// The rate limit's Redis store, when the config has one.
    pub fn rate_limit_store(&self) -> Option<&Arc<RedisStore>> {
        self.rate_limit.limiter().and_then(|l| l.store())
    }

    /// Stops the background tasks (health checks, pruning).
    pub(crate) fn stop(&self) {
        self.tasks.stop();
    }
}

/// Closes idle backend connections that expired or that their backend closed, so they do
/// not hold file descriptors while traffic is quiet.
fn spawn_pool_sweeping(pools: BackendPools) -> AbortHandle {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(upstream::SWEEP_INTERVAL);
        loop {
            every.tick().await;
            pools.iter().for_each(|p| p.sweep());
        }
    })
    .abort_handle()
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No config file to re-read (the proxy was built from a config in memory).
    #[error("this proxy was not started from a config file")]
    NoFile,
    /// The new file is invalid; the running config keeps serving.
    #[error("new config refused, the running config keeps serving: {0}")]
    Invalid(#[from] crate::config::ConfigError),
    /// The new config is valid but its data plane could not be built.
    #[error("new config refused, the running config keeps serving: {0}")]
    Build(#[from] BuildError),
}

/// The current [`Proxy`], replaceable while serving.
#[derive(Debug)]
pub struct LiveProxy {
    current: ArcSwap<Proxy>,
    /// The running config as written (DNS entries unresolved). Held while a proxy is built,
    /// so reloads and DNS changes take turns.
    config: Mutex<Config>,
    path: Option<PathBuf>,
    /// Each pool's DNS lookups (by pool index); `None` when no backend is a DNS name.
    dns: Mutex<Vec<Option<DnsDiscovery>>>,
    /// Woken by the DNS lookups when a name's addresses change.
    dns_changed: Arc<Notify>,
}

impl LiveProxy {
    /// Builds the first proxy and starts the DNS lookups; `path` is re-read on reload.
    /// Backends given by DNS names join once their first lookup answers (and then their
    /// first health check passes): building does not wait for the DNS.
    pub fn new(config: Config, path: Option<PathBuf>) -> Result<Arc<Self>, BuildError> {
        let dns_changed = Arc::new(Notify::new());
        let dns = config
            .pools
            .iter()
            .map(|pool| {
                pool.dns
                    .as_ref()
                    .map(|c| DnsDiscovery::start(c, None, dns_changed.clone()))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let live = Arc::new(LiveProxy {
            current: ArcSwap::from_pointee(Proxy::build(&config)?),
            config: Mutex::new(config),
            path,
            dns: Mutex::new(dns),
            dns_changed,
        });
        let weak = Arc::downgrade(&live);
        let changed = live.dns_changed.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                match weak.upgrade() {
                    Some(live) => live.apply_discovery(),
                    None => return,
                }
            }
        });
        Ok(live)
    }

    /// What each DNS backend entry resolved to and how its lookups go.
    pub fn discovery(&self) -> Vec<SourceStatus> {
        let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        dns.iter()
            .flatten()
            .flat_map(DnsDiscovery::statuses)
            .collect()
    }

    /// Builds a proxy from the running config and the addresses DNS gave now, as a reload
    /// with that backend list would, unless the backend list is unchanged.
    fn apply_discovery(&self) {
        let running = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let effective = {
            let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            with_discovered(&running, &dns)
        };
        let old = self.current.load_full();
        let same = effective
            .pools
            .iter()
            .zip(&old.pools)
            .all(|(config, pool)| {
                config.backends.len() == pool.endpoints.len()
                    && config
                        .backends
                        .iter()
                        .zip(&pool.endpoints)
                        .all(|(b, e)| b.authority == e.backend.authority)
            });
        if same {
            return;
        }
        match Proxy::build_from(&effective, Some(&old), Rebuild::Discovery) {
            Ok(proxy) => {
                self.current.store(Arc::new(proxy));
                old.stop();
            }
            Err(e) => tracing::error!(error = %e, "backends from DNS not applied"),
        }
    }

    /// The proxy serving new requests.
    pub fn current(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// A connection-level service for a listener: each connection's requests carry its peer
    /// address and go through the current proxy.
    pub fn make_service(self: &Arc<Self>, proto: ClientProto) -> MakeLiveService {
        MakeLiveService {
            live: self.clone(),
            proto,
        }
    }

    /// The running config's admin settings.
    pub fn admin_auth(&self) -> crate::config::AdminAuthConfig {
        let running = self.config.lock().unwrap_or_else(|e| e.into_inner());
        running.admin_auth.clone()
    }

    /// Re-reads the config file and swaps in a proxy built from it; returns what changed.
    /// Listener settings (ports, addresses, TLS files, workers) need a restart: a change
    /// there is reported and otherwise ignored.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path)?;
        let mut running = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut notes = Vec::new();
        for pool in &new.pools {
            let Some(was) = running.pools.iter().find(|p| p.name == pool.name) else {
                notes.push(format!("pool {} added", pool.name));
                continue;
            };
            // The flat format's one pool goes unnamed, as before pools existed.
            let of = match new.pools.len() {
                1 => String::new(),
                _ => format!(" of pool {}", pool.name),
            };
            if pool.strategy != was.strategy {
                notes.push(format!(
                    "strategy{of} {} -> {}",
                    was.strategy, pool.strategy
                ));
            }
            let names = |p: &PoolConfig| -> Vec<String> {
                p.backends.iter().map(|b| b.authority.to_string()).collect()
            };
            let (before, after) = (names(was), names(pool));
            let added: Vec<&String> = after.iter().filter(|b| !before.contains(b)).collect();
            let removed: Vec<&String> = before.iter().filter(|b| !after.contains(b)).collect();
            if !added.is_empty() {
                notes.push(format!("backends{of} added: {added:?}"));
            }
            if !removed.is_empty() {
                notes.push(format!("backends{of} removed: {removed:?}"));
            }
        }
        for was in &running.pools {
            if !new.pools.iter().any(|p| p.name == was.name) {
                notes.push(format!("pool {} removed", was.name));
            }
        }
        if new.routes != running.routes {
            notes.push("routes changed".to_owned());
        }
        let listeners = |c: &Config| {
            (
                c.port,
                c.bind_address,
                c.admin_addr,
                c.workers,
                c.tls.as_ref().map(|t| t.port),
            )
        };
        if listeners(&new) != listeners(&running) {
            tracing::warn!(
                "ports, addresses and workers change only on restart; the reload keeps the current ones"
            );
        }
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        let new_dns = new
            .pools
            .iter()
            .map(|pool| {
                let old_index = running.pools.iter().position(|p| p.name == pool.name);
                let previous = old_index.and_then(|i| dns.get(i)).and_then(Option::as_ref);
                pool.dns
                    .as_ref()
                    .map(|c| DnsDiscovery::start(c, previous, self.dns_changed.clone()))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError::from)?;
        let effective = with_discovered(&new, &new_dns);
        let proxy = Proxy::build_from(&effective, Some(&old), Rebuild::Reload)?;
        self.current.store(Arc::new(proxy));
        old.stop();
        *dns = new_dns;
        drop(dns);
        *running = new;
        if notes.is_empty() {
            notes.push("limits and timeouts re-read".to_owned());
        }
        Ok(notes.join("; "))
    }

    /// Reloads and logs the outcome (for SIGHUP).
    pub fn reload_and_log(&self) -> Result<String, ReloadError> {
        match self.reload() {
            Ok(summary) => {
                tracing::info!(%summary, "config reloaded");
                Ok(summary)
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed");
                Err(e)
            }
        }
    }
}

/// `config` with the backends each pool's `dns` found appended (an address already listed
/// in the pool is not added twice).
fn with_discovered(config: &Config, dns: &[Option<DnsDiscovery>]) -> Config {
    let mut effective = config.clone();
    for (pool, dns) in effective.pools.iter_mut().zip(dns) {
        for spec in dns.as_ref().map(DnsDiscovery::backends).unwrap_or_default() {
            if !pool.backends.iter().any(|b| b.authority == spec.authority) {
                pool.backends.push(spec);
            }
        }
    }
    effective
}

/// The proxy service that follows reloads.
///
/// Servers clone it for every request, so it is a reference count and two small values; the
/// stack itself is built once per reload ([`Proxy::service`]).
#[derive(Debug, Clone)]
pub struct LiveService {
    live: Arc<LiveProxy>,
    proto: ClientProto,
    /// The connection's peer, recorded as `ConnectInfo` on each request.
    peer: SocketAddr,
}

impl<B> Service<Request<B>> for LiveService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <ProxyService as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every layer of the stack is always ready (they answer refusals themselves).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // `Body::new` does not box an axum `Body` again.
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut service = self.live.current.load().service(self.proto);
        service.call(request)
    }
}

/// Makes a [`LiveService`] for each accepted connection, recording its peer: what a
/// listener serves, without a router in between (the proxy has one route: everything).
#[derive(Debug, Clone)]
pub struct MakeLiveService {
    live: Arc<LiveProxy>,
    proto: ClientProto,
}

impl Service<SocketAddr> for MakeLiveService {
    type Response = LiveService;
    type Error = Infallible;
    type Future = std::future::Ready<Result<LiveService, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, peer: SocketAddr) -> Self::Future {
        std::future::ready(Ok(LiveService {
            live: self.live.clone(),
            proto: self.proto,
            peer,
        }))
    }
}
