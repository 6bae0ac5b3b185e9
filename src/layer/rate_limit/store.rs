//! The rate-limit store: token buckets in Redis, shared by every ALB replica.
//!
//! Each decision is one atomic Lua script (`gcra.lua`, sent by `EVALSHA` and loaded on a
//! `NOSCRIPT` answer): GCRA, the algorithm governor runs in process, over one key per
//! client key (`alb:rl:ip:ADDR` or `alb:rl:global`) that holds the bucket's theoretical
//! arrival time in microseconds. The time is Redis's `TIME`, so the replicas' own clocks do
//! not matter, and a key expires when its bucket is full again. Three replicas then admit
//! what one would: the limit is exact across any number of them.
//!
//! The client is the `redis` crate's [`ConnectionManager`]: one multiplexed connection per
//! store, reconnecting by itself. Each decision waits at most `timeout`; a failure or a
//! timeout marks the store **down** (one log line), and while it is down no request waits
//! for Redis at all: `on_error` decides at once (`local`: the in-process bucket). A prober
//! sends `SCRIPT LOAD` (the decision script: idempotent, no bucket touched) every
//! [`PROBE_INTERVAL`] while it is down, and its first answer within
//! `timeout` marks it **up** again (one log line); requests then use Redis again.
//!
//! Why a prober rather than letting every request try: a request that tries a stopped Redis
//! waits the whole `timeout`, and its script stays queued on the connection and runs when
//! Redis wakes up, spending a token of a bucket for a request that was decided locally. A
//! `SCRIPT LOAD` costs neither: while Redis is down the extra latency is limited to the requests
//! that were already waiting when it went down, and the queued work to one probe per
//! interval.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use metrics::Counter;
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Script};
use serde::{Serialize, Serializer};

use crate::telemetry::RATE_LIMIT_STORE_ERRORS_TOTAL;

/// How often a store that is down is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Time the first connection (TCP, then Redis's handshake) gets before the store counts as
/// down; later reconnections happen inside the connection manager.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Prefix of every bucket key in Redis.
pub const KEY_PREFIX: &str = "alb:rl:";

/// The GCRA decision, run atomically inside Redis.
static GCRA: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("gcra.lua")));

/// `rate_limit.store`: where the shared buckets live and what to do when Redis does not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreConfig {
    /// The Redis URL (`redis://[user:password@]host:port[/db]`); shown without credentials.
    pub url: StoreUrl,
    /// Longest a decision waits for Redis.
    #[serde(with = "crate::humantime_serde")]
    pub timeout: Duration,
    /// What decides when Redis fails or is too slow.
    pub on_error: OnStoreError,
}

/// What decides a request while the store is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// The in-process bucket of this replica (the limit then applies per replica).
    Local,
    /// Every request passes (fail open, as Envoy's global rate limit does by default).
    Allow,
    /// Every request gets `429` (fail closed).
    Deny,
}

impl OnStoreError {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

/// A Redis URL whose credentials never reach a log line, `/health` or `check-config`: its
/// `Display`, `Debug` and `Serialize` drop the user information.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Wraps a URL as written in the config.
    pub fn new(url: impl Into<String>) -> Self {
        StoreUrl(url.into())
    }

    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without `user:password@`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
            None => self.0.clone(),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// What the store decided for one request: the same numbers governor gives in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreVerdict {
    /// Within the limit.
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u32,
    /// When refused: the wait until a request would conform.
    pub wait: Duration,
}

/// Whether Redis answers, as the decisions and the prober saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Not yet answered since start.
    Connecting,
    /// Answering within `timeout`: decisions go to Redis.
    Up,
    /// Failed or too slow: `on_error` decides until a probe gets an answer.
    Down,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The store's state as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreView {
    /// The URL without credentials.
    pub url: String,
    /// `connecting`, `up` or `down`.
    pub state: StoreState,
    /// Failed or timed-out calls since start.
    pub errors: u64,
    /// When the state last changed, seconds since the Unix epoch.
    pub since_unix: f64,
    /// Why it went down, while it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One Redis store: its connection and its state, shared by the data planes that use the
/// same URL and timeout (a reload keeps the connection).
pub struct RedisStore {
    url: StoreUrl,
    timeout: Duration,
    connection: ConnectionManager,
    state: AtomicU8,
    /// Milliseconds since the Unix epoch of the last change of state.
    since_ms: AtomicU64,
    errors: AtomicU64,
    error_counter: Counter,
    /// The cause of the last fall; written on transitions only.
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Why a store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("rate_limit.store: {url}: {message}")]
pub struct StoreError {
    url: StoreUrl,
    message: String,
}

impl RedisStore {
    /// Sets up the client for `config` (connecting lazily) and starts its prober. Needs a
    /// Tokio runtime. The config's URL has been checked by the config module; an error here
    /// is one the `redis` crate finds that the check did not.
    pub fn start(config: &StoreConfig) -> Result<Arc<RedisStore>, StoreError> {
        let error = |e: redis::RedisError| StoreError {
            url: config.url.clone(),
            // The crate's messages name the host, never the password.
            message: e.to_string(),
        };
        let client = redis::Client::open(config.url.expose()).map_err(error)?;
        // The manager's own timeouts only clean up behind ours: a decision never waits
        // for them (it is cut at `timeout`); a stopped Redis's connection is replaced after
        // a second without answers.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(error)?;
        let error_counter = metrics::counter!(RATE_LIMIT_STORE_ERRORS_TOTAL);
        error_counter.increment(0);
        let store = Arc::new(RedisStore {
            url: config.url.clone(),
            timeout: config.timeout,
            connection,
            state: AtomicU8::new(CONNECTING),
            since_ms: AtomicU64::new(unix_ms()),
            errors: AtomicU64::new(0),
            error_counter,
            last_error: Mutex::new(None),
        });
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Whether this store serves `config` as it is (a reload may keep it).
    pub fn serves(&self, config: &StoreConfig) -> bool {
        self.url == config.url && self.timeout == config.timeout
    }

    /// Whether decisions go to Redis now.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// The current state.
    pub fn state(&self) -> StoreState {
        match self.state.load(Ordering::Relaxed) {
            UP => StoreState::Up,
            DOWN => StoreState::Down,
            _ => StoreState::Connecting,
        }
    }

    /// What `/health` shows.
    pub fn view(&self) -> StoreView {
        let state = self.state();
        StoreView {
            url: self.url.redacted(),
            state,
            errors: self.errors.load(Ordering::Relaxed),
            since_unix: self.since_ms.load(Ordering::Relaxed) as f64 / 1e3,
            last_error: match state {
                StoreState::Up => None,
                _ => self
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            },
        }
    }

    /// One decision for the bucket `key`: `interval_us` microseconds per token, `burst`
    /// tokens. `None` when Redis failed or did not answer within `timeout` (the store is
    /// then down, and the caller applies `on_error`).
    pub async fn decide(&self, key: String, interval_us: u64, burst: u32) -> Option<StoreVerdict> {
        let mut connection = self.connection.clone();
        let mut invocation = GCRA.key(key);
        invocation.arg(interval_us).arg(burst);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((allowed, remaining, wait_us))) => Some(StoreVerdict {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                wait: Duration::from_micros(wait_us.max(0) as u64),
            }),
            Ok(Err(e)) => {
                self.failed(e.to_string());
                None
            }
            Err(_) => {
                self.failed(format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// Counts a failure and marks the store down (logging only the change).
    fn failed(&self, cause: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.error_counter.increment(1);
        let previous = self.state.swap(DOWN, Ordering::Relaxed);
        if previous != DOWN {
            self.since_ms.store(unix_ms(), Ordering::Relaxed);
            tracing::warn!(
                store = %self.url,
                error = %cause,
                "rate-limit store is DOWN; rate_limit.store.on_error decides until it answers"
            );
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
        }
    }

    /// Marks the store up (logging only the change).
    fn answered(&self) {
        let previous = self.state.swap(UP, Ordering::Relaxed);
        if previous != UP {
            let since = self.since_ms.swap(unix_ms(), Ordering::Relaxed);
            let after = Duration::from_millis(unix_ms().saturating_sub(since));
            tracing::info!(
                store = %self.url,
                after = ?after,
                "rate-limit store is UP; decisions use the shared buckets"
            );
        }
    }

    /// One `SCRIPT LOAD` of the decision script within `limit`: an answer shows that Redis
    /// answers and runs scripts, and spares the next decision the `NOSCRIPT` round trip
    /// (a Redis that restarted has forgotten its scripts). It touches no bucket.
    async fn probe_once(&self, limit: Duration) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let load = GCRA.load_async(&mut connection);
        match tokio::time::timeout(limit, load).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

/// The prober: connects (and loads the script) at start, then probes every
/// [`PROBE_INTERVAL`] while the store is not up. It ends when the last data plane using the store is gone.
async fn probe(store: Weak<RedisStore>) {
    // The first connection may take longer than a decision's timeout (TCP and Redis's
    // handshake); a slow first answer is still an answer.
    if let Some(store) = store.upgrade() {
        match store.probe_once(CONNECT_TIMEOUT.max(store.timeout)).await {
            Ok(()) => store.answered(),
            Err(cause) => store.failed(cause),
        }
    }
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.is_up() {
            continue;
        }
        // Up means answering within the decisions' timeout, or they would fail again.
        match store.probe_once(store.timeout).await {
            Ok(()) => store.answered(),
            Err(cause) => store.failed(cause),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        let url = StoreUrl::new("redis://alb:s3cret@redis.internal:6379/2");
        assert_eq!(url.redacted(), "redis://redis.internal:6379/2");
        assert_eq!(url.to_string(), "redis://redis.internal:6379/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&url).unwrap().contains("s3cret"));
        let url = StoreUrl::new("redis://127.0.0.1:6379");
        assert_eq!(url.redacted(), "redis://127.0.0.1:6379");
    }
}
