//! The configuration file.
//!
//! The original project's `config/config.json` (ports as strings, `health_check_interval` in
//! seconds) parses unchanged; every key added since is optional and has its default here, in
//! one place ([`Defaults`]). Parsing happens in two steps: serde reads the JSON into a loose
//! [`RawConfig`] (unknown keys are rejected, and `serde_path_to_error` names the key of a type
//! error), then [`RawConfig::validate`] checks values and builds the typed [`Config`]. Every
//! error names the key, the value and what was expected, so `alb run` can refuse a bad file
//! before it binds anything.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use http::uri::{Authority, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    balance::{
        adaptive::AdaptiveConfig, prequal::PrequalConfig, slow_start::SlowStart, BackendSpec,
        StrategyKind,
    },
    capacity::{AutoscaleConfig, ConcurrencySource},
    dns::{DnsConfig, DnsQuery, DnsSource},
    health::HealthConfig,
    humantime_serde,
    layer::{
        access_log::{AccessLogConfig, LogFormat, Target},
        fault::{AbortFault, DelayFault, FaultConfig},
        rate_limit::{OnStoreError, RateLimitConfig, RateLimitKey, StoreConfig, StoreUrl},
        record::RecordConfig,
    },
    outlier::OutlierConfig,
    retry::RetryConfig,
    router::{
        CanaryConfig, HostMatch, MirrorConfig, RouteConfig, RouteMatch, RouteTarget, SplitTarget,
    },
    trace::TraceConfig,
    upstream::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig},
};

/// One backend as the config gives it (the core's [`BackendSpec`]).
pub type BackendConfig = BackendSpec;

/// Defaults for every optional key: the one place they are written down.
pub struct Defaults;

impl Defaults {
    /// Plain HTTP port (the original project's).
    pub const PORT: u16 = 8080;
    /// Listeners bind every IPv4 interface, as the original project's `:8080` did.
    pub const BIND_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    /// Strategy when `strategy` is absent.
    pub const STRATEGY: StrategyKind = StrategyKind::RoundRobin;
    /// Health-check path when `health_check_path` is absent.
    pub const HEALTH_CHECK_PATH: &'static str = "/health";
    /// Seconds between health checks.
    pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
    /// The original project's health-check timeout.
    pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
    /// Consecutive good checks that bring a backend back.
    pub const HEALTHY_THRESHOLD: u32 = 2;
    /// Consecutive failed checks that take a backend out.
    pub const UNHEALTHY_THRESHOLD: u32 = 2;
    /// TCP connect timeout towards a backend.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Time a backend has to produce response headers (nginx's `proxy_read_timeout`).
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Admin listener: loopback only unless configured.
    pub const ADMIN_ADDR: &'static str = "127.0.0.1:9901";
    /// Time a client has to send a request's headers (slowloris).
    pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time open connections get to finish after SIGTERM.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// Largest request head (request line and headers), bytes; past it: 431.
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    /// Most request headers; past it: 431.
    pub const MAX_HEADERS: usize = 100;
    /// Outlier detection: failures in a row that eject a backend (Envoy's default).
    pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
    /// Outlier detection: first ejection's length (Envoy's default).
    pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
    /// Outlier detection: longest ejection (Envoy's default).
    pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
    /// Outlier detection: most backends ejected at once, percent.
    pub const OUTLIER_MAX_EJECTION_PERCENT: u32 = 50;
    /// Retries per request.
    pub const RETRY_ATTEMPTS: u32 = 1;
    /// Retry budget: percentage of recent requests.
    pub const RETRY_BUDGET_PERCENT: u32 = 20;
    /// Retry budget: retries per second always allowed.
    pub const RETRY_MIN_PER_SECOND: u32 = 10;
    /// Peak-EWMA decay window (Linkerd's default, kept with the algorithm).
    pub const EWMA_DECAY: Duration = AdaptiveConfig::DEFAULT.decay;
    /// RTT assumed for a backend that has not answered yet (Linkerd's default).
    pub const DEFAULT_RTT: Duration = AdaptiveConfig::DEFAULT.default_rtt;
    /// Latency charged to the EWMA for a failed request, so that failing fast is not cheap.
    pub const FAILURE_PENALTY: Duration = AdaptiveConfig::DEFAULT.failure_penalty;
    /// Weight of a backend given as a plain URL.
    pub const WEIGHT: u32 = 1;
    /// Share of requests written to the access log.
    pub const ACCESS_LOG_SAMPLE: f64 = 1.0;
    /// Share of new traces that are recorded (a caller's decision is followed).
    pub const TRACE_SAMPLE: f64 = 1.0;
    /// Share of requests recorded with `record`, percent.
    pub const RECORD_PERCENT: f64 = 100.0;
    /// Size past which the recording is rotated to `PATH.1`: 100 MiB.
    pub const RECORD_MAX_BYTES: u64 = 100 * 1024 * 1024;
    /// Smallest `record.max_bytes`: room for a line with a whole recorded body.
    pub const RECORD_MIN_BYTES: u64 = 128 * 1024;
    /// `service.name` of exported spans.
    pub const SERVICE_NAME: &'static str = "alb";
    /// The pool of the flat format (its top-level keys are the pool's keys).
    pub const POOL: &'static str = "default";
    /// The route of the flat format: a catch-all to the pool `default` (the top-level
    /// `fault` is its fault).
    pub const ROUTE: &'static str = "default";
    /// A canary's highest error rate.
    pub const CANARY_MAX_ERROR_RATE: f64 = 0.05;
    /// A canary's highest p99, as a multiple of the stable pools'.
    pub const CANARY_MAX_LATENCY_RATIO: f64 = 2.0;
    /// The window a canary is judged over.
    pub const CANARY_WINDOW: Duration = Duration::from_secs(10);
    /// Requests a canary serves in the window before it is judged.
    pub const CANARY_MIN_REQUESTS: u64 = 50;
    /// Share of a route's requests mirrored, percent.
    pub const MIRROR_PERCENT: f64 = 100.0;
    /// Capacity signal: the utilization the recommendation aims at (the example of the
    /// Kubernetes HPA walkthrough uses 50% CPU; 70% leaves room for bursts of requests).
    pub const AUTOSCALE_TARGET_UTILIZATION: f64 = 0.7;
    /// Capacity signal: fewest backends recommended.
    pub const AUTOSCALE_MIN: u32 = 1;
    /// Capacity signal: most backends recommended.
    pub const AUTOSCALE_MAX: u32 = 100;
    /// Capacity signal: how long a lower recommendation must hold (the Kubernetes HPA's
    /// default scale-down stabilization window).
    pub const AUTOSCALE_SCALE_DOWN_DELAY: Duration = Duration::from_secs(300);
    /// Capacity signal: the window of the requests-in-flight average.
    pub const AUTOSCALE_WINDOW: Duration = Duration::from_secs(30);
    /// Longest time between two lookups of a DNS backend name (kept with the resolver).
    pub const DNS_REFRESH: Duration = crate::dns::DEFAULT_REFRESH;
}

/// Defaults of `rate_limit.store`.
impl Defaults {
    /// Longest a rate-limit decision waits for Redis before `on_error` decides.
    pub const RATE_LIMIT_STORE_TIMEOUT: Duration = Duration::from_millis(20);
    /// What decides while Redis is down: this replica's own bucket.
    pub const RATE_LIMIT_STORE_ON_ERROR: OnStoreError = OnStoreError::Local;
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Plain HTTP port (`port`).
    pub port: u16,
    /// Address the proxy listeners bind (`bind_address`).
    pub bind_address: IpAddr,
    /// TLS settings, present when `tls_port`, `cert_file` and `key_file` are all given.
    pub tls: Option<TlsConfig>,
    /// With TLS on, whether the plain port redirects to HTTPS (or serves the proxy too).
    pub redirect_to_https: bool,
    /// Runtime worker threads.
    pub workers: usize,
    /// Where the admin routes listen.
    pub admin_addr: SocketAddr,
    /// Who may call the admin routes.
    pub admin_auth: AdminAuthConfig,
    /// Peers whose `X-Forwarded-For` is believed (for stickiness and rate limits).
    pub trusted_proxies: Vec<IpNet>,
    /// Token-bucket rate limiting; `None` means no limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Requests in flight over all backends before new ones are shed with `503`.
    pub max_in_flight: Option<usize>,
    /// Time a client has to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub client_header_timeout: Duration,
    /// Time open connections get to finish after SIGTERM or SIGINT.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest request head in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Most request headers (431 past it).
    pub max_headers: usize,
    /// Largest request body in bytes (413 past it); `None` for no limit.
    pub max_request_body: Option<usize>,
    /// Keep or make an `x-request-id` for every request (default: on when `access_log` or
    /// `tracing` is).
    pub request_id: bool,
    /// The access log; `None` when off.
    pub access_log: Option<AccessLogConfig>,
    /// Traffic recording for `alb replay` (`record`); off when absent.
    pub record: Option<RecordConfig>,
    /// Trace context and span export; `None` when off.
    pub tracing: Option<TraceConfig>,
    /// The pools, in name order (the flat format: one, named `default`).
    pub pools: Vec<PoolConfig>,
    /// The routes, tried in order (the flat format: one catch-all route, `default`, to the
    /// one pool).
    pub routes: Vec<RouteConfig>,
    /// What `check-config` and the start log warn about (a route that can never match).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// One pool: its backends and how they are balanced, checked and reached.
#[derive(Debug, Clone, Serialize)]
pub struct PoolConfig {
    /// The pool's name (`default` in the flat format).
    pub name: String,
    /// Balancing strategy.
    pub strategy: StrategyKind,
    /// Backends in file order.
    pub backends: Vec<BackendConfig>,
    /// Active health checking.
    pub health: HealthConfig,
    /// TCP connect timeout towards backends.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for response headers from a backend; past it the client gets `504`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Tuning of the `adaptive` strategy.
    pub adaptive: AdaptiveConfig,
    /// Tuning of the `prequal` strategy.
    pub prequal: PrequalConfig,
    /// The ramp a backend returning to service follows (`slow_start`); off when absent.
    pub slow_start: Option<SlowStart>,
    /// Requests in flight on one backend before it counts as full.
    pub max_connections: Option<usize>,
    /// Answer requests carrying `x-alb-explain: 1` with an `x-alb-decision` header.
    pub explain: bool,
    /// Passive outlier detection; `None` when disabled.
    pub outlier_detection: Option<OutlierConfig>,
    /// Retries of requests that never reached a backend; `None` when disabled.
    pub retries: Option<RetryConfig>,
    /// Evaluate the other strategies on every request, without acting on them.
    pub shadow: bool,
    /// The capacity signal for autoscalers; `None` when `autoscale` is absent.
    pub autoscale: Option<AutoscaleConfig>,
    /// Backends found by DNS names, and how to resolve them; `None` when no backend entry
    /// is a DNS name.
    pub dns: Option<DnsConfig>,
    /// `upstream_protocol` and `upstream_tls`: how ALB talks to backends.
    pub upstream: UpstreamConfig,
}

/// TLS termination settings.
#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// HTTPS port.
    pub port: u16,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// Why a configuration was refused. Each message names the key, the value and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("config file {path}: invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A key has a value of the wrong shape, or is not a known key.
    #[error("config key `{key}`: {message}")]
    Shape {
        /// Path of the key, `backends[1].weight` style.
        key: String,
        /// What serde said, which includes the expected type or the known keys.
        message: String,
    },
    /// A key has a value of the right type that is not acceptable.
    #[error("config key `{key}`: got {value}, expected {expected}")]
    Invalid {
        /// Path of the key.
        key: String,
        /// The value as written.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
}

impl ConfigError {
    fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Shortest admin token accepted: 16 characters (a guessable token is an open door).
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Who may call the admin routes (`admin_token` or `admin_token_file`, `admin_auth`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdminAuthConfig {
    /// The bearer token; `None`: the admin listener is on loopback and open to local callers.
    pub token: Option<AdminToken>,
    /// Which routes need it.
    pub scope: AdminScope,
}

/// Which admin routes need the token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminScope {
    /// Routes that change state (`/reload`, drain, enable); reading stays open.
    #[default]
    Changes,
    /// Every admin route, `/metrics` and the dashboard included.
    All,
}

/// The admin bearer token. Its `Debug` and `Serialize` print `"<redacted>"`, so it never
/// reaches a log line or `check-config`'s output.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<str>);

impl AdminToken {
    /// The secret bytes, for the constant-time comparison and nothing else.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl Serialize for AdminToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Reads and checks the admin settings: a non-loopback admin address without a token is
/// refused, since its state-changing routes would be open to the network.
fn admin_auth(
    addr: SocketAddr,
    token: Option<String>,
    token_file: Option<String>,
    scope: Option<String>,
) -> Result<AdminAuthConfig, ConfigError> {
    let token = match (token, token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "admin_token_file",
                "a file as well as admin_token",
                "one of admin_token and admin_token_file, not both",
            ))
        }
        (Some(text), None) => Some(("admin_token", text)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(
                    "admin_token_file",
                    format!("{path:?} ({e})"),
                    "a readable file holding the admin token",
                )
            })?;
            // A file written by `echo` ends with a newline that is not part of the token.
            Some((
                "admin_token_file",
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ))
        }
        (None, None) => None,
    };
    let token = match token {
        Some((key, text)) => {
            let length = text.chars().count();
            if length < MIN_ADMIN_TOKEN_LEN
                || text.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("a token of {length} characters"),
                    format!(
                        "at least {MIN_ADMIN_TOKEN_LEN} characters without spaces \
                         (for example: openssl rand -hex 32)"
                    ),
                ));
            }
            Some(AdminToken(text.into()))
        }
        None => None,
    };
    let scope = match scope.as_deref() {
        None | Some("changes") => AdminScope::Changes,
        Some("all") => AdminScope::All,
        Some(other) => {
            return Err(ConfigError::invalid(
                "admin_auth",
                format!("{other:?}"),
                "\"changes\" (token needed to change state) or \"all\" (for every route)",
            ))
        }
    };
    if token.is_none() && scope == AdminScope::All {
        return Err(ConfigError::invalid(
            "admin_auth",
            "\"all\"",
            "admin_token or admin_token_file to be set as well",
        ));
    }
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "admin_addr",
            format!("\"{addr}\", not a loopback address, with no admin token"),
            "admin_token or admin_token_file (anyone who reaches this address could reload \
             the config and drain backends), or a loopback address such as 127.0.0.1:9901",
        ));
    }
    Ok(AdminAuthConfig { token, scope })
}

/// A port as the original project wrote it (`"8080"`) or as a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a port number or a string holding one")]
pub enum PortValue {
    /// `8080`
    Number(i64),
    /// `"8080"`
    Text(String),
}

/// A duration as seconds (`10`, `0.5`) or as text (`"500ms"`, `"2s"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "seconds as a number, or a duration such as \"500ms\""
)]
pub enum DurationValue {
    /// Seconds.
    Seconds(f64),
    /// Humantime text.
    Text(String),
}

/// The file as serde reads it: loose types, no defaults applied yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    port: Option<PortValue>,
    bind_address: Option<String>,
    tls_port: Option<PortValue>,
    cert_file: Option<String>,
    key_file: Option<String>,
    redirect_to_https: Option<bool>,
    workers: Option<usize>,
    admin_addr: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    admin_auth: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    rate_limit: Option<RawRateLimit>,
    max_in_flight: Option<usize>,
    client_header_timeout: Option<DurationValue>,
    drain_timeout: Option<DurationValue>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_request_body: Option<usize>,
    request_id: Option<bool>,
    access_log: Option<RawAccessLog>,
    record: Option<RawRecord>,
    fault: Option<RawFault>,
    tracing: Option<RawTracing>,
    pools: Option<serde_json::Map<String, serde_json::Value>>,
    routes: Option<Vec<serde_json::Value>>,
}

/// The keys a pool takes: the per-pool part of the file. At the top level they are the flat
/// format's one pool, or, with `pools`, every pool's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    strategy: Option<String>,
    backends: Option<Vec<serde_json::Value>>,
    health_check_path: Option<String>,
    health_check_interval: Option<DurationValue>,
    health_check_timeout: Option<DurationValue>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
    connect_timeout: Option<DurationValue>,
    request_timeout: Option<DurationValue>,
    adaptive: Option<RawAdaptive>,
    prequal: Option<RawPrequal>,
    slow_start: Option<RawSlowStart>,
    max_connections: Option<usize>,
    explain: Option<bool>,
    shadow: Option<bool>,
    outlier_detection: Option<RawOutlier>,
    retries: Option<RawRetries>,
    autoscale: Option<RawAutoscale>,
    dns: Option<RawDns>,
    upstream_protocol: Option<String>,
    upstream_tls: Option<RawUpstreamTls>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"grpc_service\": \"\"}"
)]
struct RawHealthCheck {
    grpc_service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"ca_file\": \"ca.pem\", \"server_name\": \"api.internal\"}"
)]
struct RawUpstreamTls {
    ca_file: Option<String>,
    server_name: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    insecure_skip_verify: Option<bool>,
}

/// `upstream_protocol` and `upstream_tls`, checked and loaded (every file read now, so a bad
/// one is refused before anything binds).
fn upstream(
    protocol: Option<String>,
    raw: Option<RawUpstreamTls>,
) -> Result<UpstreamConfig, ConfigError> {
    let protocol = match protocol {
        None => UpstreamProtocol::default(),
        Some(p) => p.parse().map_err(|()| {
            ConfigError::invalid(
                "upstream_protocol",
                format!("{p:?}"),
                UpstreamProtocol::EXPECTED,
            )
        })?,
    };
    let raw = raw.unwrap_or_default();
    let path =
        |key: &str, value: Option<String>| value.map(|v| non_empty_path(key, &v)).transpose();
    let tls = UpstreamTlsConfig {
        ca_file: path("upstream_tls.ca_file", raw.ca_file)?,
        server_name: raw.server_name,
        client_cert: path("upstream_tls.client_cert", raw.client_cert)?,
        client_key: path("upstream_tls.client_key", raw.client_key)?,
        insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
    };
    UpstreamConfig::new(protocol, tls).map_err(|e| ConfigError::Shape {
        key: e.key.to_owned(),
        message: e.message,
    })
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"path\": \"access.log\", \"format\": \"json\"}"
)]
struct RawAccessLog {
    path: String,
    format: Option<String>,
    sample: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"sample\": 0.1, \"otlp_endpoint\": \"http://127.0.0.1:4318\"}"
)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    sample: Option<f64>,
    service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    enabled: Option<bool>,
    consecutive_failures: Option<u32>,
    base_ejection_time: Option<DurationValue>,
    max_ejection_time: Option<DurationValue>,
    max_ejection_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    attempts: Option<u32>,
    budget_percent: Option<u32>,
    min_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_second: u32,
    burst: Option<u32>,
    key: Option<String>,
    /// A URL string or an object; checked by [`store`].
    store: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    decay: Option<DurationValue>,
    default_rtt: Option<DurationValue>,
    failure_penalty: Option<DurationValue>,
    tolerance: Option<f64>,
    probe_interval: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrequal {
    hot_quantile: Option<f64>,
    max_age: Option<DurationValue>,
    max_uses: Option<u32>,
    probes_per_request: Option<f64>,
    idle_probe_interval: Option<DurationValue>,
}

/// Checks the `prequal` keys.
fn prequal(raw: RawPrequal) -> Result<PrequalConfig, ConfigError> {
    let d = PrequalConfig::DEFAULT;
    let hot_quantile = raw.hot_quantile.unwrap_or(d.hot_quantile);
    if !(0.0..=1.0).contains(&hot_quantile) {
        return Err(ConfigError::invalid(
            "prequal.hot_quantile",
            hot_quantile,
            "a quantile from 0 to 1 (the paper uses 0.84; 0.6 herds less)",
        ));
    }
    let max_uses = raw.max_uses.unwrap_or(d.max_uses);
    if max_uses == 0 {
        return Err(ConfigError::invalid("prequal.max_uses", 0, "at least 1"));
    }
    let probes_per_request = raw.probes_per_request.unwrap_or(d.probes_per_request);
    if !(0.0..=16.0).contains(&probes_per_request) {
        return Err(ConfigError::invalid(
            "prequal.probes_per_request",
            probes_per_request,
            "from 0 to 16 probes per request",
        ));
    }
    Ok(PrequalConfig {
        hot_quantile,
        max_age: duration("prequal.max_age", raw.max_age, d.max_age)?,
        max_uses,
        probes_per_request,
        idle_probe_interval: duration(
            "prequal.idle_probe_interval",
            raw.idle_probe_interval,
            d.idle_probe_interval,
        )?,
    })
}

/// `slow_start`: a window (`"30s"`), or the window with Envoy's shape parameters.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration such as \"30s\", or {\"window\": \"30s\", \"aggression\": 1.0, \"min_weight_percent\": 10}"
)]
enum RawSlowStart {
    Window(DurationValue),
    Shaped(RawSlowStartShape),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlowStartShape {
    window: DurationValue,
    aggression: Option<f64>,
    min_weight_percent: Option<f64>,
}

/// Checks the `slow_start` keys.
fn slow_start(raw: RawSlowStart) -> Result<SlowStart, ConfigError> {
    let (window, aggression, min_weight_percent) = match raw {
        RawSlowStart::Window(w) => (w, None, None),
        RawSlowStart::Shaped(shape) => (
            shape.window,
            Some(shape.aggression),
            Some(shape.min_weight_percent),
        ),
    };
    // Errors name the key as written: `slow_start` for the short form.
    let shaped = aggression.is_some();
    let key = |k: &str| match (shaped, k) {
        (false, "window") => "slow_start".to_owned(),
        _ => format!("slow_start.{k}"),
    };
    let (aggression, min_weight_percent) = (aggression.flatten(), min_weight_percent.flatten());
    let window = duration(&key("window"), Some(window), Duration::ZERO)?;
    let aggression = aggression.unwrap_or(SlowStart::DEFAULT_AGGRESSION);
    if !(aggression > 0.0 && aggression <= 100.0) {
        return Err(ConfigError::invalid(
            key("aggression"),
            aggression,
            "a number above 0 and at most 100 (1.0: a linear ramp)",
        ));
    }
    let min_weight_percent = min_weight_percent.unwrap_or(SlowStart::DEFAULT_MIN_WEIGHT * 100.0);
    if !(min_weight_percent > 0.0 && min_weight_percent <= 100.0) {
        return Err(ConfigError::invalid(
            key("min_weight_percent"),
            min_weight_percent,
            "a percentage above 0 and at most 100",
        ));
    }
    Ok(SlowStart {
        window,
        aggression,
        min_weight: min_weight_percent / 100.0,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    url: String,
    weight: Option<i64>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // Syntax first, so a broken file reports line and column rather than a key.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            })?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(ConfigError::Shape {
                key: "(top level)".to_owned(),
                message: "expected a JSON object".to_owned(),
            });
        };
        // The pool keys go to the pool (or, with `pools`, are every pool's defaults).
        let mut pool_keys = serde_json::Map::new();
        for key in POOL_KEYS {
            if let Some(v) = object.remove(*key) {
                pool_keys.insert((*key).to_owned(), v);
            }
        }
        let raw: RawConfig = shaped("", serde_json::Value::Object(object))?;
        raw.validate(pool_keys)
    }
}

/// Deserializes `value`, naming the key of a type error (under `prefix`).
fn shaped<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = match (prefix, e.path().to_string()) {
            ("", p) if p == "." => "(top level)".to_owned(),
            (prefix, p) if p == "." => prefix.trim_end_matches('.').to_owned(),
            (prefix, p) if p.starts_with('[') => format!("{}{p}", prefix.trim_end_matches('.')),
            (prefix, p) => format!("{prefix}{p}"),
        };
        ConfigError::Shape {
            key,
            message: e.into_inner().to_string(),
        }
    })
}

/// The keys a pool takes (the fields of `RawPool`; a unit test keeps the two in step).
pub const POOL_KEYS: &[&str] = &[
    "strategy",
    "backends",
    "health_check_path",
    "health_check_interval",
    "health_check_timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "connect_timeout",
    "request_timeout",
    "adaptive",
    "prequal",
    "slow_start",
    "max_connections",
    "explain",
    "shadow",
    "outlier_detection",
    "retries",
    "autoscale",
    "dns",
    "upstream_protocol",
    "upstream_tls",
    "health_check",
];

/// The root of a key path: `backends` for `backends[1].weight`, `adaptive` for
/// `adaptive.decay`.
fn key_root(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

impl ConfigError {
    /// The error with its key moved under `prefix` (`pools.api.`) when `own` says the pool
    /// itself wrote that key; a key inherited from the top level keeps its top-level name.
    fn under(self, prefix: &str, own: impl Fn(&str) -> bool) -> Self {
        let move_key = |key: String| {
            if own(key_root(&key)) {
                format!("{prefix}{key}")
            } else {
                key
            }
        };
        match self {
            ConfigError::Shape { key, message } => ConfigError::Shape {
                key: move_key(key),
                message,
            },
            ConfigError::Invalid {
                key,
                value,
                expected,
            } => ConfigError::Invalid {
                key: move_key(key),
                value,
                expected,
            },
            other => other,
        }
    }
}

/// One pool from the top-level pool keys (`defaults`) overlaid with the pool's own object.
fn pool_config(
    name: &str,
    defaults: &serde_json::Map<String, serde_json::Value>,
    own: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<PoolConfig, ConfigError> {
    let prefix = match own {
        Some(_) => format!("pools.{name}."),
        None => String::new(),
    };
    let mut merged = defaults.clone();
    for (key, value) in own.into_iter().flatten() {
        if !POOL_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::invalid(
                format!("{prefix}{key}"),
                format!("{key:?}"),
                format!("a pool key, one of: {}", POOL_KEYS.join(", ")),
            ));
        }
        merged.insert(key.clone(), value.clone());
    }
    let is_own = |key: &str| own.is_some_and(|o| o.contains_key(key));
    let raw: RawPool =
        shaped("", serde_json::Value::Object(merged)).map_err(|e| e.under(&prefix, is_own))?;
    raw.validate(name).map_err(|e| e.under(&prefix, is_own))
}

/// serde_json appends " at line L column C"; the Syntax error reports those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

impl RawConfig {
    /// Applies defaults and checks every value.
    /// Applies defaults and checks every value; `pool_keys` are the top-level pool keys
    /// (the flat format's one pool, or every pool's defaults).
    pub fn validate(
        self,
        pool_keys: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Config, ConfigError> {
        let (pools, routes, warnings) =
            pools_and_routes(self.pools, self.routes, &pool_keys, self.fault)?;
        let port = match &self.port {
            Some(p) => port_value("port", p)?,
            None => Defaults::PORT,
        };
        let bind_address = match &self.bind_address {
            Some(text) => text.parse::<IpAddr>().map_err(|_| {
                ConfigError::invalid(
                    "bind_address",
                    format!("{text:?}"),
                    "an IP address such as \"0.0.0.0\" or \"127.0.0.1\"",
                )
            })?,
            None => Defaults::BIND_ADDRESS,
        };
        let tls = match (&self.tls_port, &self.cert_file, &self.key_file) {
            (None, None, None) => None,
            (Some(p), Some(cert), Some(key)) => {
                let tls_port = port_value("tls_port", p)?;
                if tls_port == port {
                    return Err(ConfigError::invalid(
                        "tls_port",
                        tls_port,
                        "a port different from `port`",
                    ));
                }
                Some(TlsConfig {
                    port: tls_port,
                    cert_file: non_empty_path("cert_file", cert)?,
                    key_file: non_empty_path("key_file", key)?,
                })
            }
            _ => {
                let missing = [
                    ("tls_port", self.tls_port.is_none()),
                    ("cert_file", self.cert_file.is_none()),
                    ("key_file", self.key_file.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ");
                return Err(ConfigError::invalid(
                    missing,
                    "nothing",
                    "`tls_port`, `cert_file` and `key_file` to be given together",
                ));
            }
        };
        let workers = match self.workers {
            Some(0) => return Err(ConfigError::invalid("workers", 0, "at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let admin_text = self
            .admin_addr
            .unwrap_or_else(|| Defaults::ADMIN_ADDR.to_owned());
        let admin_addr = admin_text.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "admin_addr",
                format!("{admin_text:?}"),
                "an address and port such as \"127.0.0.1:9901\"",
            )
        })?;
        let admin_auth = admin_auth(
            admin_addr,
            self.admin_token,
            self.admin_token_file,
            self.admin_auth,
        )?;
        let trusted_proxies = self
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, s)| cidr(&format!("trusted_proxies[{i}]"), s))
            .collect::<Result<_, _>>()?;
        let rate_limit = match self.rate_limit {
            None => None,
            Some(r) => Some(rate_limit(r)?),
        };
        if self.max_in_flight == Some(0) {
            return Err(ConfigError::invalid(
                "max_in_flight",
                0,
                "at least 1 (or leave it out)",
            ));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(Defaults::MAX_HEADER_BYTES);
        if max_header_bytes < 8192 {
            return Err(ConfigError::invalid(
                "max_header_bytes",
                max_header_bytes,
                "at least 8192 (hyper's smallest read buffer)",
            ));
        }
        let max_headers = self.max_headers.unwrap_or(Defaults::MAX_HEADERS);
        if max_headers == 0 {
            return Err(ConfigError::invalid("max_headers", 0, "at least 1"));
        }
        Ok(Config {
            port,
            bind_address,
            tls,
            redirect_to_https: self.redirect_to_https.unwrap_or(true),
            workers,
            admin_addr,
            admin_auth,
            trusted_proxies,
            rate_limit,
            max_in_flight: self.max_in_flight,
            client_header_timeout: duration(
                "client_header_timeout",
                self.client_header_timeout,
                Defaults::CLIENT_HEADER_TIMEOUT,
            )?,
            drain_timeout: duration("drain_timeout", self.drain_timeout, Defaults::DRAIN_TIMEOUT)?,
            max_header_bytes,
            max_headers,
            max_request_body: self.max_request_body,
            // Ids serve correlation: on by default when there is a log or a trace to
            // correlate with (as Envoy), off otherwise (as nginx and HAProxy), where they
            // would cost about 4% of a small GET's throughput for nothing.
            request_id: self
                .request_id
                .unwrap_or(self.access_log.is_some() || self.tracing.is_some()),
            access_log: self.access_log.map(access_log).transpose()?,
            record: self.record.map(record).transpose()?,
            pools,
            routes,
            warnings,
            tracing: self.tracing.map(tracing).transpose()?,
        })
    }
}

impl RawPool {
    /// Applies defaults and checks every value of one pool.
    fn validate(self, name: &str) -> Result<PoolConfig, ConfigError> {
        let strategy = match &self.strategy {
            Some(s) => s.parse::<StrategyKind>().map_err(|_| {
                ConfigError::invalid("strategy", format!("{s:?}"), StrategyKind::EXPECTED)
            })?,
            None => Defaults::STRATEGY,
        };
        let (backends, dns_sources) = backends(self.backends.as_deref())?;
        let dns = dns_config(self.dns, dns_sources)?;
        let path = self
            .health_check_path
            .unwrap_or_else(|| Defaults::HEALTH_CHECK_PATH.to_owned());
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(ConfigError::invalid(
                "health_check_path",
                format!("{path:?}"),
                "a path starting with `/`",
            ));
        }
        let health = HealthConfig {
            grpc_service: self.health_check.and_then(|h| h.grpc_service),
            path,
            interval: duration(
                "health_check_interval",
                self.health_check_interval,
                Defaults::HEALTH_CHECK_INTERVAL,
            )?,
            timeout: duration(
                "health_check_timeout",
                self.health_check_timeout,
                Defaults::HEALTH_CHECK_TIMEOUT,
            )?,
            healthy_threshold: threshold(
                "healthy_threshold",
                self.healthy_threshold,
                Defaults::HEALTHY_THRESHOLD,
            )?,
            unhealthy_threshold: threshold(
                "unhealthy_threshold",
                self.unhealthy_threshold,
                Defaults::UNHEALTHY_THRESHOLD,
            )?,
        };
        let raw_adaptive = self.adaptive.unwrap_or_default();
        let adaptive = AdaptiveConfig {
            decay: duration("adaptive.decay", raw_adaptive.decay, Defaults::EWMA_DECAY)?,
            default_rtt: duration(
                "adaptive.default_rtt",
                raw_adaptive.default_rtt,
                Defaults::DEFAULT_RTT,
            )?,
            failure_penalty: duration(
                "adaptive.failure_penalty",
                raw_adaptive.failure_penalty,
                Defaults::FAILURE_PENALTY,
            )?,
            tolerance: match raw_adaptive.tolerance {
                None => AdaptiveConfig::DEFAULT.tolerance,
                Some(t) if (0.0..1.0).contains(&t) => t,
                Some(t) => {
                    return Err(ConfigError::invalid(
                        "adaptive.tolerance",
                        t,
                        "a fraction from 0 (exact comparison) up to, not including, 1",
                    ))
                }
            },
            probe_interval: duration(
                "adaptive.probe_interval",
                raw_adaptive.probe_interval,
                AdaptiveConfig::DEFAULT.probe_interval,
            )?,
        };
        if self.max_connections == Some(0) {
            return Err(ConfigError::invalid(
                "max_connections",
                0,
                "at least 1 (or leave it out)",
            ));
        }
        let outlier_detection = outlier(self.outlier_detection.unwrap_or_default())?;
        let raw_retries = self.retries.unwrap_or_default();
        let retries = RetryConfig {
            attempts: raw_retries.attempts.unwrap_or(Defaults::RETRY_ATTEMPTS),
            budget_percent: raw_retries
                .budget_percent
                .unwrap_or(Defaults::RETRY_BUDGET_PERCENT),
            min_per_second: raw_retries
                .min_per_second
                .unwrap_or(Defaults::RETRY_MIN_PER_SECOND),
        };
        Ok(PoolConfig {
            name: name.to_owned(),
            strategy,
            backends,
            health,
            adaptive,
            outlier_detection,
            max_connections: self.max_connections,
            explain: self.explain.unwrap_or(false),
            shadow: self.shadow.unwrap_or(false),
            dns,
            connect_timeout: duration(
                "connect_timeout",
                self.connect_timeout,
                Defaults::CONNECT_TIMEOUT,
            )?,
            request_timeout: duration(
                "request_timeout",
                self.request_timeout,
                Defaults::REQUEST_TIMEOUT,
            )?,
            prequal: prequal(self.prequal.unwrap_or_default())?,
            slow_start: self.slow_start.map(slow_start).transpose()?,
            retries: (retries.attempts > 0).then_some(retries),
            autoscale: self
                .autoscale
                .map(|raw| autoscale(raw, self.max_connections))
                .transpose()?,
            upstream: upstream(self.upstream_protocol, self.upstream_tls)?,
        })
    }
}

// === autoscale ===

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"target_utilization\": 0.7, \"backend_concurrency\": 4}"
)]
struct RawAutoscale {
    target_utilization: Option<f64>,
    backend_concurrency: Option<usize>,
    min: Option<u32>,
    max: Option<u32>,
    scale_down_delay: Option<DurationValue>,
    window: Option<DurationValue>,
}

/// Checks the `autoscale` keys; the concurrency comes from `autoscale.backend_concurrency`,
/// else from `max_connections`.
fn autoscale(
    raw: RawAutoscale,
    max_connections: Option<usize>,
) -> Result<AutoscaleConfig, ConfigError> {
    let target_utilization = raw
        .target_utilization
        .unwrap_or(Defaults::AUTOSCALE_TARGET_UTILIZATION);
    if !(target_utilization > 0.0 && target_utilization <= 1.0) {
        return Err(ConfigError::invalid(
            "autoscale.target_utilization",
            target_utilization,
            "a fraction above 0, at most 1",
        ));
    }
    let (backend_concurrency, concurrency_from) = match (raw.backend_concurrency, max_connections) {
        (Some(0), _) => {
            return Err(ConfigError::invalid(
                "autoscale.backend_concurrency",
                0,
                "at least 1 request served at once per backend",
            ))
        }
        (Some(n), _) => (n, ConcurrencySource::BackendConcurrency),
        (None, Some(n)) => (n, ConcurrencySource::MaxConnections),
        (None, None) => {
            return Err(ConfigError::invalid(
                "autoscale.backend_concurrency",
                "nothing",
                "the requests one backend serves at once (or set max_connections)",
            ))
        }
    };
    let min = raw.min.unwrap_or(Defaults::AUTOSCALE_MIN);
    if min == 0 {
        return Err(ConfigError::invalid(
            "autoscale.min",
            0,
            "at least 1 (a pool of no backend sees no load, so it could never grow again)",
        ));
    }
    let max = raw.max.unwrap_or(Defaults::AUTOSCALE_MAX);
    if max < min {
        return Err(ConfigError::invalid(
            "autoscale.max",
            max,
            format!("at least autoscale.min ({min})"),
        ));
    }
    let scale_down_delay = match raw.scale_down_delay {
        // 0 is a valid delay here: no smoothing.
        Some(DurationValue::Seconds(0.0)) => Duration::ZERO,
        Some(DurationValue::Text(t))
            if humantime::parse_duration(t.trim()) == Ok(Duration::ZERO) =>
        {
            Duration::ZERO
        }
        other => duration(
            "autoscale.scale_down_delay",
            other,
            Defaults::AUTOSCALE_SCALE_DOWN_DELAY,
        )?,
    };
    let window = duration("autoscale.window", raw.window, Defaults::AUTOSCALE_WINDOW)?;
    let (shortest, longest) = (crate::capacity::SAMPLE_INTERVAL, Duration::from_secs(900));
    if window < shortest || window > longest {
        return Err(ConfigError::invalid(
            "autoscale.window",
            format!("{window:?}"),
            format!("from {shortest:?} (the sampling interval) to 15m"),
        ));
    }
    Ok(AutoscaleConfig {
        target_utilization,
        backend_concurrency,
        concurrency_from,
        min,
        max,
        scale_down_delay,
        window,
    })
}

/// A probability from 0 to 1, named `key` in messages.
fn fraction(key: &str, value: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    let value = value.unwrap_or(default);
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(key, value, "a fraction from 0 to 1"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    delay: Option<RawDelayFault>,
    abort: Option<RawAbortFault>,
    allow_header: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"percent\": 10, \"duration\": \"100ms\"}"
)]
struct RawDelayFault {
    percent: f64,
    duration: DurationValue,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"percent\": 5, \"status\": 503}"
)]
struct RawAbortFault {
    percent: f64,
    status: u16,
}

/// Checks a `fault` block; `key` is where it sits (`fault`, later `routes[i].fault`).
fn fault(key: &str, raw: RawFault) -> Result<FaultConfig, ConfigError> {
    let percent = |k: String, p: f64| {
        if (0.0..=100.0).contains(&p) {
            Ok(p)
        } else {
            Err(ConfigError::invalid(k, p, "a percentage from 0 to 100"))
        }
    };
    let delay = match raw.delay {
        Some(d) => Some(DelayFault {
            percent: percent(format!("{key}.delay.percent"), d.percent)?,
            duration: duration(
                &format!("{key}.delay.duration"),
                Some(d.duration),
                Duration::ZERO,
            )?,
        }),
        None => None,
    };
    let abort = match raw.abort {
        Some(a) => Some(AbortFault {
            percent: percent(format!("{key}.abort.percent"), a.percent)?,
            status: http::StatusCode::from_u16(a.status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{key}.abort.status"),
                        a.status,
                        "an error status from 400 to 599",
                    )
                })?,
        }),
        None => None,
    };
    Ok(FaultConfig {
        delay,
        abort,
        allow_header: raw.allow_header.unwrap_or(false),
    })
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"path\": \"traffic.jsonl\", \"percent\": 100, \"bodies\": false}"
)]
struct RawRecord {
    path: String,
    percent: Option<f64>,
    bodies: Option<bool>,
    max_bytes: Option<u64>,
}

/// Checks the `record` keys.
fn record(raw: RawRecord) -> Result<RecordConfig, ConfigError> {
    let path = non_empty_path("record.path", &raw.path)?;
    let percent = raw.percent.unwrap_or(Defaults::RECORD_PERCENT);
    if !(0.0..=100.0).contains(&percent) {
        return Err(ConfigError::invalid(
            "record.percent",
            percent,
            "a percentage from 0 to 100",
        ));
    }
    let max_bytes = raw.max_bytes.unwrap_or(Defaults::RECORD_MAX_BYTES);
    if max_bytes < Defaults::RECORD_MIN_BYTES {
        return Err(ConfigError::invalid(
            "record.max_bytes",
            max_bytes,
            format!("at least {} bytes", Defaults::RECORD_MIN_BYTES),
        ));
    }
    Ok(RecordConfig {
        path,
        percent,
        bodies: raw.bodies.unwrap_or(false),
        max_bytes,
    })
}

fn access_log(raw: RawAccessLog) -> Result<AccessLogConfig, ConfigError> {
    let target = match raw.path.as_str() {
        "" => {
            return Err(ConfigError::invalid(
                "access_log.path",
                "\"\"",
                "\"stdout\" or a file path",
            ))
        }
        "stdout" | "-" => Target::Stdout,
        path => Target::File(PathBuf::from(path)),
    };
    let format = match raw.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("combined") => LogFormat::Combined,
        Some(other) => {
            return Err(ConfigError::invalid(
                "access_log.format",
                format!("{other:?}"),
                "\"json\" or \"combined\"",
            ))
        }
    };
    Ok(AccessLogConfig {
        target,
        format,
        sample: fraction("access_log.sample", raw.sample, Defaults::ACCESS_LOG_SAMPLE)?,
    })
}

fn tracing(raw: RawTracing) -> Result<TraceConfig, ConfigError> {
    if let Some(endpoint) = &raw.otlp_endpoint {
        let ok = endpoint
            .parse::<Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
        if !ok {
            return Err(ConfigError::invalid(
                "tracing.otlp_endpoint",
                format!("{endpoint:?}"),
                "an OTLP/HTTP URL such as \"http://127.0.0.1:4318/v1/traces\"",
            ));
        }
    }
    Ok(TraceConfig {
        sample: fraction("tracing.sample", raw.sample, Defaults::TRACE_SAMPLE)?,
        otlp_endpoint: raw.otlp_endpoint,
        service_name: raw
            .service_name
            .unwrap_or_else(|| Defaults::SERVICE_NAME.to_owned()),
    })
}

fn outlier(raw: RawOutlier) -> Result<Option<OutlierConfig>, ConfigError> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let consecutive_failures = threshold(
        "outlier_detection.consecutive_failures",
        raw.consecutive_failures,
        Defaults::OUTLIER_CONSECUTIVE_FAILURES,
    )?;
    let max_ejection_percent = raw
        .max_ejection_percent
        .unwrap_or(Defaults::OUTLIER_MAX_EJECTION_PERCENT);
    if max_ejection_percent > 100 {
        return Err(ConfigError::invalid(
            "outlier_detection.max_ejection_percent",
            max_ejection_percent,
            "a percentage from 0 to 100",
        ));
    }
    Ok(Some(OutlierConfig {
        consecutive_failures,
        base_ejection_time: duration(
            "outlier_detection.base_ejection_time",
            raw.base_ejection_time,
            Defaults::OUTLIER_BASE_EJECTION,
        )?,
        max_ejection_time: duration(
            "outlier_detection.max_ejection_time",
            raw.max_ejection_time,
            Defaults::OUTLIER_MAX_EJECTION,
        )?,
        max_ejection_percent,
    }))
}

fn rate_limit(raw: RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    if raw.requests_per_second == 0 {
        return Err(ConfigError::invalid(
            "rate_limit.requests_per_second",
            0,
            "at least 1",
        ));
    }
    let burst = raw.burst.unwrap_or(raw.requests_per_second);
    if burst == 0 {
        return Err(ConfigError::invalid("rate_limit.burst", 0, "at least 1"));
    }
    let key = match raw.key.as_deref() {
        None | Some("ip") => RateLimitKey::Ip,
        Some("global") => RateLimitKey::Global,
        Some(other) => {
            return Err(ConfigError::invalid(
                "rate_limit.key",
                format!("{other:?}"),
                "\"ip\" or \"global\"",
            ))
        }
    };
    Ok(RateLimitConfig {
        requests_per_second: raw.requests_per_second,
        burst,
        key,
        store: raw.store.map(store).transpose()?,
    })
}

// === rate_limit.store ===

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Redis URL or an object such as {\"url\": \"redis://127.0.0.1:6379\", \"timeout\": \"20ms\", \"on_error\": \"local\"}"
)]
struct RawStore {
    url: String,
    timeout: Option<DurationValue>,
    on_error: Option<String>,
}

/// Checks `rate_limit.store`: `"redis://..."` or `{"url", "timeout", "on_error"}`.
fn store(value: serde_json::Value) -> Result<StoreConfig, ConfigError> {
    let (raw, url_key) = match value {
        serde_json::Value::String(url) => (
            RawStore {
                url,
                timeout: None,
                on_error: None,
            },
            "rate_limit.store",
        ),
        other => (
            serde_path_to_error::deserialize(other).map_err(|e| {
                let path = e.path().to_string();
                ConfigError::Shape {
                    key: match path.as_str() {
                        "." => "rate_limit.store".to_owned(),
                        p => format!("rate_limit.store.{p}"),
                    },
                    message: e.into_inner().to_string(),
                }
            })?,
            "rate_limit.store.url",
        ),
    };
    let url = StoreUrl::new(raw.url);
    const EXPECTED_URL: &str =
        "a Redis URL such as \"redis://127.0.0.1:6379\" (redis:// or redis+unix://; rediss:// is not supported)";
    let scheme_ok = ["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.expose().starts_with(s));
    if !scheme_ok || redis::IntoConnectionInfo::into_connection_info(url.expose()).is_err() {
        // Shown without credentials: a config error is printed and logged.
        return Err(ConfigError::invalid(
            url_key,
            format!("{url:?}"),
            EXPECTED_URL,
        ));
    }
    let timeout = duration(
        "rate_limit.store.timeout",
        raw.timeout,
        Defaults::RATE_LIMIT_STORE_TIMEOUT,
    )?;
    let on_error = match raw.on_error.as_deref() {
        None => Defaults::RATE_LIMIT_STORE_ON_ERROR,
        Some("local") => OnStoreError::Local,
        Some("allow") => OnStoreError::Allow,
        Some("deny") => OnStoreError::Deny,
        Some(other) => {
            return Err(ConfigError::invalid(
                "rate_limit.store.on_error",
                format!("{other:?}"),
                "\"local\" (this replica's own bucket), \"allow\" or \"deny\"",
            ))
        }
    };
    Ok(StoreConfig {
        url,
        timeout,
        on_error,
    })
}

fn port_value(key: &str, value: &PortValue) -> Result<u16, ConfigError> {
    const EXPECTED: &str = "a port from 1 to 65535";
    let (n, shown) = match value {
        PortValue::Number(n) => (Some(*n), n.to_string()),
        PortValue::Text(s) => (s.trim().parse::<i64>().ok(), format!("{s:?}")),
    };
    match n {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(ConfigError::invalid(key, shown, EXPECTED)),
    }
}

fn non_empty_path(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "\"\"", "a file path"));
    }
    Ok(PathBuf::from(value))
}

fn duration(
    key: &str,
    value: Option<DurationValue>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    const EXPECTED: &str = "a positive number of seconds or a duration such as \"500ms\"";
    let d = match value {
        None => return Ok(default),
        Some(DurationValue::Seconds(s)) => {
            if !(s > 0.0 && s.is_finite() && s < 1e9) {
                return Err(ConfigError::invalid(key, s, EXPECTED));
            }
            Duration::from_secs_f64(s)
        }
        Some(DurationValue::Text(t)) => humantime::parse_duration(t.trim())
            .map_err(|_| ConfigError::invalid(key, format!("{t:?}"), EXPECTED))?,
    };
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "0", EXPECTED));
    }
    Ok(d)
}

fn threshold(key: &str, value: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::invalid(key, 0, "at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn cidr(key: &str, text: &str) -> Result<IpNet, ConfigError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::invalid(
                key,
                format!("{text:?}"),
                "an IP address or CIDR such as \"10.0.0.0/8\"",
            )
        })
}

/// The static backends, and the entries given by DNS names.
fn backends(
    values: Option<&[serde_json::Value]>,
) -> Result<(Vec<BackendConfig>, Vec<DnsSource>), ConfigError> {
    let values = match values {
        Some(v) if !v.is_empty() => v,
        Some(_) => {
            return Err(ConfigError::invalid(
                "backends",
                "[]",
                "at least one backend URL",
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                "backends",
                "nothing",
                "a list of backend URLs such as [\"http://127.0.0.1:8081\"]",
            ))
        }
    };
    let mut out: Vec<BackendConfig> = Vec::with_capacity(values.len());
    let mut dns = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let key = format!("backends[{i}]");
        let (url, weight) = match value {
            serde_json::Value::String(url) => (url.clone(), Defaults::WEIGHT as i64),
            serde_json::Value::Object(map)
                if map.contains_key("dns") || map.contains_key("dns_srv") =>
            {
                dns.push(dns_source(key, value)?);
                continue;
            }
            serde_json::Value::Object(_) => {
                let raw: RawBackend =
                    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
                        ConfigError::Shape {
                            key: format!("{key}.{}", e.path()),
                            message: e.into_inner().to_string(),
                        }
                    })?;
                (raw.url, raw.weight.unwrap_or(Defaults::WEIGHT as i64))
            }
            other => {
                return Err(ConfigError::invalid(
                    key,
                    other,
                    "a URL string, {\"url\": \"...\", \"weight\": N}, \
                     {\"dns\": \"name\", \"port\": N} or {\"dns_srv\": \"_http._tcp.name\"}",
                ))
            }
        };
        if !(1..=10_000).contains(&weight) {
            return Err(ConfigError::invalid(
                format!("{key}.weight"),
                weight,
                "a weight from 1 to 10000",
            ));
        }
        let authority = backend_authority(&url).ok_or_else(|| {
            ConfigError::invalid(
                key.clone(),
                format!("{url:?}"),
                "an http or https URL with a host, such as \"http://127.0.0.1:8081\"",
            )
        })?;
        if out.iter().any(|b| b.authority == authority) {
            return Err(ConfigError::invalid(
                key,
                format!("{url:?}"),
                "each backend once (this host:port is listed twice)",
            ));
        }
        out.push(BackendConfig {
            url,
            authority,
            weight: weight as u32,
            dns_name: None,
        });
    }
    Ok((out, dns))
}

/// `http://host[:port][/]` or `https://...` to `host:port` (the backend's identity; the
/// scheme stays in the URL, see `Backend::tls`); anything else (other schemes, paths,
/// queries, user info) is refused because the proxy would silently ignore it.
fn backend_authority(url: &str) -> Option<Authority> {
    let uri: Uri = url.trim().parse().ok()?;
    let default_port = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let port = authority.port_u16().unwrap_or(default_port);
    if port == 0 {
        return None;
    }
    format!("{}:{port}", authority.host()).parse().ok()
}

// === DNS discovery ===

/// `{"dns": ..., "port": ...}` or `{"dns_srv": ...}` in `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsBackend {
    dns: Option<String>,
    dns_srv: Option<String>,
    port: Option<PortValue>,
    weight: Option<i64>,
}

/// The top-level `dns` key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    servers: Option<Vec<String>>,
    refresh: Option<DurationValue>,
}

/// A backend entry given by a DNS name; `key` is `backends[i]`.
fn dns_source(key: String, value: &serde_json::Value) -> Result<DnsSource, ConfigError> {
    let raw: RawDnsBackend =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| ConfigError::Shape {
            key: format!("{key}.{}", e.path()),
            message: e.into_inner().to_string(),
        })?;
    let weight = raw.weight.unwrap_or(Defaults::WEIGHT as i64);
    if !(1..=10_000).contains(&weight) {
        return Err(ConfigError::invalid(
            format!("{key}.weight"),
            weight,
            "a weight from 1 to 10000",
        ));
    }
    let query = match (raw.dns, raw.dns_srv, &raw.port) {
        (Some(_), Some(_), _) => {
            return Err(ConfigError::invalid(
                format!("{key}.dns_srv"),
                "a name as well as `dns`",
                "one of `dns` (A/AAAA, with `port`) and `dns_srv` (SRV), not both",
            ))
        }
        (Some(name), None, Some(port)) => DnsQuery::Address {
            name: dns_name(&format!("{key}.dns"), name)?,
            port: port_value(&format!("{key}.port"), port)?,
        },
        (Some(_), None, None) => {
            return Err(ConfigError::invalid(
                format!("{key}.port"),
                "nothing",
                "the backends' port, which A/AAAA records do not carry",
            ))
        }
        (None, Some(name), None) => DnsQuery::Srv {
            name: dns_name(&format!("{key}.dns_srv"), name)?,
        },
        (None, Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{key}.port"),
                "a port with `dns_srv`",
                "no port: SRV records carry each target's port",
            ))
        }
        (None, None, _) => unreachable!("only called for objects with `dns` or `dns_srv`"),
    };
    Ok(DnsSource {
        key,
        query,
        weight: weight as u32,
    })
}

/// A name to look up: a valid DNS name, not an address (that is what `url` is for).
fn dns_name(key: &str, name: String) -> Result<String, ConfigError> {
    let trimmed = name.trim();
    let valid = !trimmed.is_empty()
        && trimmed.parse::<IpAddr>().is_err()
        && trimmed.len() <= 253
        && trimmed.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?}"),
            "a DNS name such as \"backends.internal\" (an IP address goes in `url`)",
        ));
    }
    Ok(trimmed.to_owned())
}

/// The `dns` key, checked with the entries that use it; `None` when no entry does.
fn dns_config(
    raw: Option<RawDns>,
    sources: Vec<DnsSource>,
) -> Result<Option<DnsConfig>, ConfigError> {
    let raw = raw.unwrap_or_default();
    let servers = match raw.servers {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                "dns.servers",
                "[]",
                "at least one server such as \"127.0.0.1:53\", or no `servers` key to use \
                 /etc/resolv.conf",
            ))
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    text.parse::<SocketAddr>()
                        .or_else(|_| {
                            text.parse::<IpAddr>()
                                .map(|ip| SocketAddr::new(ip, crate::dns::DNS_PORT))
                        })
                        .map_err(|_| {
                            ConfigError::invalid(
                                format!("dns.servers[{i}]"),
                                format!("{text:?}"),
                                "an IP address with an optional port, such as \"127.0.0.1:53\"",
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let refresh = duration("dns.refresh", raw.refresh, Defaults::DNS_REFRESH)?;
    if refresh < crate::dns::REFRESH_FLOOR {
        return Err(ConfigError::invalid(
            "dns.refresh",
            humantime::format_duration(refresh),
            format!(
                "at least {}",
                humantime::format_duration(crate::dns::REFRESH_FLOOR)
            ),
        ));
    }
    if sources.is_empty() {
        return Ok(None);
    }
    if servers.is_none() {
        if let Err(e) = hickory_resolver::system_conf::read_system_conf() {
            return Err(ConfigError::invalid(
                "dns.servers",
                format!("nothing, and /etc/resolv.conf cannot be used ({e})"),
                "a list of DNS servers such as [\"127.0.0.1:53\"]",
            ));
        }
    }
    Ok(Some(DnsConfig {
        servers,
        refresh,
        sources,
    }))
}

// === pools and routes ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    pool: Option<String>,
    split: Option<Vec<RawSplitTarget>>,
    canary: Option<RawCanary>,
    mirror: Option<RawMirror>,
    fault: Option<RawFault>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"host\": \"*.example.com\", \"path_prefix\": \"/api\"}"
)]
struct RawMatch {
    host: Option<String>,
    path_prefix: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"pool\": \"api\", \"weight\": 90}"
)]
struct RawSplitTarget {
    pool: String,
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"pool\": \"api-v2\", \"max_error_rate\": 0.05}"
)]
struct RawCanary {
    pool: String,
    max_error_rate: Option<f64>,
    max_latency_ratio: Option<f64>,
    window: Option<DurationValue>,
    min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object such as {\"pool\": \"shadow\", \"percent\": 50, \"compare\": true}"
)]
struct RawMirror {
    pool: String,
    percent: Option<f64>,
    compare: Option<bool>,
}

/// A pool or route name: it goes into headers, metric labels and admin paths.
fn name(key: &str, text: &str) -> Result<(), ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{text:?}"),
            "a name of letters, digits, `-`, `_` and `.` (64 at most)",
        ))
    }
}

/// Pools, routes, and warnings about routes that can never match.
type PoolsAndRoutes = (Vec<PoolConfig>, Vec<RouteConfig>, Vec<String>);

/// The pools and routes: from `pools` and `routes`, or the flat format's one pool and
/// catch-all route (which takes the top-level `fault`).
fn pools_and_routes(
    pools: Option<serde_json::Map<String, serde_json::Value>>,
    routes: Option<Vec<serde_json::Value>>,
    pool_keys: &serde_json::Map<String, serde_json::Value>,
    fault_raw: Option<RawFault>,
) -> Result<PoolsAndRoutes, ConfigError> {
    let (pools, routes) = match (pools, routes) {
        (None, None) => {
            let pool = pool_config(Defaults::POOL, pool_keys, None)?;
            let route = RouteConfig {
                name: Defaults::ROUTE.to_owned(),
                matcher: RouteMatch::default(),
                target: RouteTarget::Pool(Defaults::POOL.to_owned()),
                canary: None,
                mirror: None,
                fault: fault_raw.map(|f| fault("fault", f)).transpose()?,
            };
            return Ok((vec![pool], vec![route], Vec::new()));
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "routes",
                "nothing",
                "with `pools`, a list of routes saying which requests go to which pool, \
                 e.g. [{\"name\": \"default\", \"pool\": \"web\"}]",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "pools",
                "nothing",
                "with `routes`, the pools they name, e.g. {\"web\": {\"backends\": [...]}}",
            ))
        }
        (Some(p), Some(r)) => (p, r),
    };
    if fault_raw.is_some() {
        return Err(ConfigError::invalid(
            "fault",
            "a top-level fault",
            "with `routes`, faults on a route (`routes[i].fault`)",
        ));
    }
    if pools.is_empty() {
        return Err(ConfigError::invalid("pools", "{}", "at least one pool"));
    }
    let mut pool_configs = Vec::with_capacity(pools.len());
    for (pool_name, value) in &pools {
        name(&format!("pools.{pool_name}"), pool_name)?;
        let serde_json::Value::Object(own) = value else {
            return Err(ConfigError::Shape {
                key: format!("pools.{pool_name}"),
                message: "expected an object of pool keys, such as {\"backends\": [...]}"
                    .to_owned(),
            });
        };
        pool_configs.push(pool_config(pool_name, pool_keys, Some(own))?);
    }
    let pool_names: Vec<&str> = pools.keys().map(String::as_str).collect();
    let known = |key: String, pool: &str| -> Result<(), ConfigError> {
        if pools.contains_key(pool) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("no pool named {pool:?}"),
                format!("one of the pools: {}", pool_names.join(", ")),
            ))
        }
    };
    if routes.is_empty() {
        return Err(ConfigError::invalid("routes", "[]", "at least one route"));
    }
    let mut route_configs: Vec<RouteConfig> = Vec::with_capacity(routes.len());
    for (i, value) in routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        let raw: RawRoute = shaped(&format!("{at}."), value)?;
        name(&format!("{at}.name"), &raw.name)?;
        if route_configs.iter().any(|r| r.name == raw.name) {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                format!("{:?}", raw.name),
                "a name no other route has",
            ));
        }
        let target = match (raw.pool, raw.split) {
            (Some(pool), None) => {
                known(format!("{at}.pool"), &pool)?;
                RouteTarget::Pool(pool)
            }
            (None, Some(split)) => {
                if split.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{at}.split"),
                        "[]",
                        "at least one {\"pool\", \"weight\"}",
                    ));
                }
                for (j, t) in split.iter().enumerate() {
                    known(format!("{at}.split[{j}].pool"), &t.pool)?;
                    if split[..j].iter().any(|o| o.pool == t.pool) {
                        return Err(ConfigError::invalid(
                            format!("{at}.split[{j}].pool"),
                            format!("{:?} a second time", t.pool),
                            "each pool once in a split",
                        ));
                    }
                }
                let weights: Vec<u32> = split.iter().map(|t| t.weight).collect();
                if let Err(e) = crate::router::Split::new(&weights) {
                    return Err(ConfigError::invalid(
                        format!("{at}.split"),
                        format!("weights {weights:?}"),
                        format!("usable weights ({e})"),
                    ));
                }
                RouteTarget::Split(
                    split
                        .into_iter()
                        .map(|t| SplitTarget {
                            pool: t.pool,
                            weight: t.weight,
                        })
                        .collect(),
                )
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    at.clone(),
                    "both `pool` and `split`",
                    "one of `pool` (one pool) or `split` (pools by weight)",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    format!("{at}.pool"),
                    "nothing",
                    "`pool` (one pool) or `split` (pools by weight)",
                ))
            }
        };
        let canary = match raw.canary {
            None => None,
            Some(c) => {
                let pools_of_split = match &target {
                    RouteTarget::Split(t) if t.len() > 1 => t,
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("{at}.canary"),
                            "a canary on a route without a split of two pools or more",
                            "`canary` only with a `split` (the canary and a stable pool)",
                        ))
                    }
                };
                if !pools_of_split.iter().any(|t| t.pool == c.pool) {
                    return Err(ConfigError::invalid(
                        format!("{at}.canary.pool"),
                        format!("{:?}", c.pool),
                        "one of the route's split pools",
                    ));
                }
                let max_error_rate = fraction(
                    &format!("{at}.canary.max_error_rate"),
                    c.max_error_rate,
                    Defaults::CANARY_MAX_ERROR_RATE,
                )?;
                let max_latency_ratio = c
                    .max_latency_ratio
                    .unwrap_or(Defaults::CANARY_MAX_LATENCY_RATIO);
                if !(max_latency_ratio >= 1.0 && max_latency_ratio.is_finite()) {
                    return Err(ConfigError::invalid(
                        format!("{at}.canary.max_latency_ratio"),
                        max_latency_ratio,
                        "a ratio of at least 1 (the canary's p99 over the stable pools')",
                    ));
                }
                Some(CanaryConfig {
                    pool: c.pool,
                    max_error_rate,
                    max_latency_ratio,
                    window: duration(
                        &format!("{at}.canary.window"),
                        c.window,
                        Defaults::CANARY_WINDOW,
                    )?,
                    min_requests: c.min_requests.unwrap_or(Defaults::CANARY_MIN_REQUESTS),
                })
            }
        };
        let mirror = match raw.mirror {
            None => None,
            Some(m) => {
                known(format!("{at}.mirror.pool"), &m.pool)?;
                let percent = m.percent.unwrap_or(Defaults::MIRROR_PERCENT);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(ConfigError::invalid(
                        format!("{at}.mirror.percent"),
                        percent,
                        "a percentage from 0 to 100",
                    ));
                }
                Some(MirrorConfig {
                    pool: m.pool,
                    percent,
                    compare: m.compare.unwrap_or(false),
                })
            }
        };
        route_configs.push(RouteConfig {
            matcher: route_match(&format!("{at}.match"), raw.matcher.unwrap_or_default())?,
            name: raw.name,
            target,
            canary,
            mirror,
            fault: raw
                .fault
                .map(|f| fault(&format!("{at}.fault"), f))
                .transpose()?,
        });
    }
    let mut warnings = Vec::new();
    for (j, later) in route_configs.iter().enumerate() {
        if let Some((i, earlier)) = route_configs[..j]
            .iter()
            .enumerate()
            .find(|(_, e)| e.matcher.covers(&later.matcher))
        {
            warnings.push(format!(
                "routes[{j}] ({:?}) can never match: routes[{i}] ({:?}) takes every request it would",
                later.name, earlier.name
            ));
        }
    }
    Ok((pool_configs, route_configs, warnings))
}

/// Checks a route's `match`.
fn route_match(key: &str, raw: RawMatch) -> Result<RouteMatch, ConfigError> {
    let host = match raw.host {
        None => None,
        Some(h) => Some(HostMatch::parse(&h).ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.host"),
                format!("{h:?}"),
                "a host name such as \"www.example.com\" or a wildcard such as \"*.example.com\"",
            )
        })?),
    };
    for (k, p) in [("path_prefix", &raw.path_prefix), ("path", &raw.path)] {
        if let Some(p) = p {
            if !p.starts_with('/')
                || p.parse::<http::uri::PathAndQuery>().is_err()
                || p.contains('?')
            {
                return Err(ConfigError::invalid(
                    format!("{key}.{k}"),
                    format!("{p:?}"),
                    "a path starting with `/`, without a query",
                ));
            }
        }
    }
    let methods = match raw.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{key}.methods"),
                "[]",
                "at least one method, or no `methods` key for any",
            ))
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, m)| {
                    http::Method::from_bytes(m.as_bytes())
                        .ok()
                        .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                        .ok_or_else(|| {
                            ConfigError::invalid(
                                format!("{key}.methods[{i}]"),
                                format!("{m:?}"),
                                "a method in capitals, such as \"GET\"",
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let headers = raw
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(n, v)| {
            let name = http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                ConfigError::invalid(format!("{key}.headers"), format!("{n:?}"), "a header name")
            })?;
            let value = http::HeaderValue::from_str(&v).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}.headers.{n}"),
                    format!("{v:?}"),
                    "a header value of visible ASCII",
                )
            })?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(RouteMatch {
        host,
        path_prefix: raw.path_prefix,
        path: raw.path,
        methods,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.json"))
    }

    #[test]
    fn ports_as_strings_or_numbers() {
        let c = parse(r#"{"port": "9000", "backends": ["http://a:1"]}"#).unwrap();
        assert_eq!(c.port, 9000);
        let c = parse(r#"{"port": 9001, "backends": ["http://a:1"]}"#).unwrap();
        assert_eq!(c.port, 9001);
    }

    #[test]
    fn weights_and_default_port() {
        let c =
            parse(r#"{"backends": [{"url": "http://a", "weight": 3}, "http://b:2/"]}"#).unwrap();
        assert_eq!(c.pools[0].backends[0].authority.as_str(), "a:80");
        assert_eq!(c.pools[0].backends[0].weight, 3);
        assert_eq!(c.pools[0].backends[1].authority.as_str(), "b:2");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"backends": ["http://a:1"], "prot": 1}"#, "prot"),
            (r#"{"backends": ["http://a:1"], "port": "99999"}"#, "port"),
            (r#"{"backends": ["http://a:1"], "port": true}"#, "port"),
            (r#"{"backends": ["ftp://a:1"]}"#, "backends[0]"),
            (
                r#"{"backends": [{"url": "http://a:1", "weight": 0}]}"#,
                "backends[0].weight",
            ),
            (
                r#"{"backends": [{"url": "http://a:1", "wieght": 2}]}"#,
                "wieght",
            ),
            (r#"{"backends": []}"#, "backends"),
            (
                r#"{"backends": ["http://a:1"], "strategy": "random"}"#,
                "strategy",
            ),
            (
                r#"{"backends": ["http://a:1"], "adaptive": {"decay": -1}}"#,
                "adaptive.decay",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn dns_entries_mix_with_urls() {
        let c = parse(
            r#"{"backends": ["http://a:1", {"dns": "b.test", "port": "81", "weight": 2},
                {"dns_srv": "_http._tcp.c.test"}],
                "dns": {"servers": ["127.0.0.1", "[::1]:5353"], "refresh": 3}}"#,
        )
        .unwrap();
        assert_eq!(
            c.pools[0].backends.len(),
            1,
            "only the URL is a backend before lookups"
        );
        let dns = c.pools[0].dns.clone().unwrap();
        assert_eq!(
            dns.servers.unwrap(),
            [
                "127.0.0.1:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(dns.refresh, Duration::from_secs(3));
        assert_eq!(dns.sources[0].key, "backends[1]");
        assert_eq!(dns.sources[0].weight, 2);
        assert_eq!(
            dns.sources[0].query,
            DnsQuery::Address {
                name: "b.test".into(),
                port: 81
            }
        );
        assert_eq!(dns.sources[1].key, "backends[2]");
        assert_eq!(
            dns.sources[1].query,
            DnsQuery::Srv {
                name: "_http._tcp.c.test".into()
            }
        );
        // Without DNS entries the `dns` key is checked, and there is nothing to resolve.
        let c = parse(r#"{"backends": ["http://a:1"], "dns": {"refresh": "2s"}}"#).unwrap();
        assert!(c.pools[0].dns.is_none());
        let e = parse(r#"{"backends": ["http://a:1"], "dns": {"servers": ["x"]}}"#);
        assert!(e.unwrap_err().to_string().contains("dns.servers[0]"));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = parse("{\n  \"port\": ,\n}").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn autoscale_defaults_concurrency_source_and_errors() {
        let c = parse(r#"{"backends": ["http://a:1"], "autoscale": {"backend_concurrency": 4}}"#)
            .unwrap();
        let a = c.pools[0].autoscale.clone().unwrap();
        assert_eq!(a.backend_concurrency, 4);
        assert_eq!(a.concurrency_from, ConcurrencySource::BackendConcurrency);
        assert_eq!(a.target_utilization, Defaults::AUTOSCALE_TARGET_UTILIZATION);
        assert_eq!(
            (a.min, a.max),
            (Defaults::AUTOSCALE_MIN, Defaults::AUTOSCALE_MAX)
        );
        assert_eq!(a.scale_down_delay, Defaults::AUTOSCALE_SCALE_DOWN_DELAY);
        assert_eq!(a.window, Defaults::AUTOSCALE_WINDOW);
        // Without backend_concurrency, max_connections gives it.
        let c = parse(r#"{"backends": ["http://a:1"], "max_connections": 8, "autoscale": {"scale_down_delay": 0}}"#)
            .unwrap();
        let a = c.pools[0].autoscale.clone().unwrap();
        assert_eq!(
            (a.backend_concurrency, a.concurrency_from),
            (8, ConcurrencySource::MaxConnections)
        );
        assert_eq!(a.scale_down_delay, Duration::ZERO);
        assert!(parse(r#"{"backends": ["http://a:1"]}"#).unwrap().pools[0]
            .autoscale
            .is_none());
        let cases = [
            (
                r#"{"autoscale": {}}"#,
                "autoscale.backend_concurrency",
                "max_connections",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 0}}"#,
                "autoscale.backend_concurrency",
                "at least 1",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "target_utilization": 1.5}}"#,
                "autoscale.target_utilization",
                "1.5",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "target_utilization": 0}}"#,
                "autoscale.target_utilization",
                "above 0",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "min": 0}}"#,
                "autoscale.min",
                "at least 1",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "min": 5, "max": 2}}"#,
                "autoscale.max",
                "autoscale.min (5)",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "scale_down_delay": "soon"}}"#,
                "autoscale.scale_down_delay",
                "soon",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "window": "1ms"}}"#,
                "autoscale.window",
                "15m",
            ),
            (
                r#"{"autoscale": {"backend_concurrency": 4, "targt": 1}}"#,
                "targt",
                "target_utilization",
            ),
            (r#"{"autoscale": 3}"#, "autoscale", "target_utilization"),
        ];
        for (text, key, detail) in cases {
            let text = text.replacen('{', r#"{"backends": ["http://a:1"], "#, 1);
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(detail), "{text}: {e}");
        }
    }
}
