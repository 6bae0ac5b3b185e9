//! Token-bucket rate limiting with governor (GCRA), per client IP or global.
//!
//! Over the limit a request is answered `429` with `Retry-After` (the exact wait from the
//! bucket, rounded up to whole seconds, at least 1) and counted in
//! `lb_rate_limited_requests_total`. Every answer carries `RateLimit-Limit` (the burst),
//! `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is full again), as
//! in the IETF `RateLimit` header draft, so well-behaved clients can slow down before they
//! are refused.
//!
//! With `rate_limit.store` the buckets live in Redis instead, shared by every replica
//! ([`store`]): the same algorithm and the same answers, one script per decision, and
//! `on_error` (by default this in-process bucket) when Redis is down or slow. Without a store
//! the request path is what it always was: no Redis code runs, nothing more is allocated.
//!
//! The client key is the socket peer; `X-Forwarded-For` counts only from `trusted_proxies`
//! (see [`ClientIp`]), otherwise a client could mint a fresh bucket per request. Buckets that
//! have refilled are indistinguishable from new ones and are pruned every
//! [`PRUNE_INTERVAL`], so a million distinct addresses do not grow memory for good.

pub mod store;

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota,
};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use futures_util::future::Either;

use super::LayerFuture;
use serde::Serialize;

use crate::{
    client_ip::ClientIp, local_reply::local_reply, telemetry::RATE_LIMITED_REQUESTS_TOTAL,
};

pub use store::{OnStoreError, RedisStore, StoreConfig, StoreUrl};

/// Token-bucket rate limiting.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitConfig {
    /// Refill rate.
    pub requests_per_second: u32,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
    /// One bucket per client address, or one for everyone.
    pub key: RateLimitKey,
    /// Buckets in Redis, shared by every replica (`rate_limit.store`); `None`: in process.
    pub store: Option<StoreConfig>,
}

/// What a rate-limit bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One bucket per client IP (socket peer, or `X-Forwarded-For` from trusted proxies).
    Ip,
    /// One bucket shared by all clients.
    Global,
}

/// How often refilled per-client buckets are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

type Instant = <DefaultClock as Clock>::Instant;
type KeyedLimiter = DefaultKeyedRateLimiter<IpAddr, StateInformationMiddleware>;
type GlobalLimiter = DefaultDirectRateLimiter<StateInformationMiddleware>;

#[derive(Debug)]
enum Buckets {
    PerIp(KeyedLimiter),
    Global(GlobalLimiter),
}

/// The limiter shared by every clone of the service.
#[derive(Debug)]
pub struct Limiter {
    /// In process: the only buckets without a store, the fallback with one.
    buckets: Buckets,
    clock: DefaultClock,
    config: RateLimitConfig,
    client_ip: ClientIp,
    store: Option<Shared>,
}

/// The shared buckets, and what the script needs to know about the quota.
#[derive(Debug)]
struct Shared {
    store: Arc<RedisStore>,
    on_error: OnStoreError,
    /// Microseconds per token.
    interval_us: u64,
}

/// What the limiter decided for one request.
enum Verdict {
    /// Within the limit, with this many tokens left.
    Allowed(u32),
    /// Over the limit: the wait until a request would conform.
    Refused(Duration),
    /// The store is down and `on_error` is `allow`: no limit, no headers.
    Unlimited,
}

/// `Retry-After` when the store is down and `on_error` is `deny`: the prober's next look,
/// rounded up to whole seconds.
const DENY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Limiter {
    /// A limiter for `config`, resolving clients with `client_ip`.
    pub fn new(config: &RateLimitConfig, client_ip: ClientIp) -> Self {
        let rate = std::num::NonZeroU32::new(config.requests_per_second.max(1)).expect("max(1)");
        let burst = std::num::NonZeroU32::new(config.burst.max(1)).expect("max(1)");
        let quota = Quota::per_second(rate).allow_burst(burst);
        let buckets = match config.key {
            RateLimitKey::Ip => {
                Buckets::PerIp(governor::RateLimiter::keyed(quota).with_middleware())
            }
            RateLimitKey::Global => {
                Buckets::Global(governor::RateLimiter::direct(quota).with_middleware())
            }
        };
        Limiter {
            buckets,
            clock: DefaultClock::default(),
            config: config.clone(),
            client_ip,
            store: None,
        }
    }

    /// A limiter whose buckets live in `store` (started for `config.store`), with this
    /// replica's own buckets as the `local` fallback.
    pub fn with_store(
        config: &RateLimitConfig,
        client_ip: ClientIp,
        store: Arc<RedisStore>,
    ) -> Self {
        let on_error = config
            .store
            .as_ref()
            .map_or(OnStoreError::Local, |s| s.on_error);
        // Whole microseconds, so the script's arithmetic stays exact in Lua's doubles
        // (microseconds since the epoch fit in 2^53; nanoseconds would not). Against
        // governor's nanoseconds a token comes less than 1 µs early: under 0.1% of the
        // interval up to 1000/s, exact when the rate divides a million.
        let interval_us = (1_000_000 / u64::from(config.requests_per_second.max(1))).max(1);
        Limiter {
            store: Some(Shared {
                store,
                on_error,
                interval_us,
            }),
            ..Limiter::new(config, client_ip)
        }
    }

    /// The Redis store, when there is one.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.store.as_ref().map(|s| &s.store)
    }

    /// The in-process decision.
    fn check<B>(&self, request: &Request<B>) -> Verdict {
        let result = match &self.buckets {
            Buckets::Global(limiter) => limiter.check(),
            Buckets::PerIp(limiter) => {
                // A request without a peer address (not over TCP) shares one bucket.
                let key = self
                    .client_ip
                    .resolve(request)
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]));
                limiter.check_key(&key)
            }
        };
        match result {
            Ok(snapshot) => Verdict::Allowed(snapshot.remaining_burst_capacity()),
            Err(not_until) => Verdict::Refused(wait(&not_until, &self.clock)),
        }
    }

    /// The decision while the store is down or failed: `on_error`'s.
    fn fallback<B>(&self, on_error: OnStoreError, request: &Request<B>) -> Verdict {
        match on_error {
            OnStoreError::Local => self.check(request),
            OnStoreError::Allow => Verdict::Unlimited,
            OnStoreError::Deny => Verdict::Refused(DENY_RETRY_AFTER),
        }
    }

    /// The request's bucket in Redis: `alb:rl:ip:ADDR` or `alb:rl:global`.
    fn store_key<B>(&self, request: &Request<B>) -> String {
        match self.config.key {
            RateLimitKey::Global => format!("{}global", store::KEY_PREFIX),
            RateLimitKey::Ip => {
                let ip = self
                    .client_ip
                    .resolve(request)
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]));
                format!("{}ip:{ip}", store::KEY_PREFIX)
            }
        }
    }

    /// Drops buckets that have refilled completely; returns how many remain.
    pub fn prune(&self) -> usize {
        match &self.buckets {
            Buckets::PerIp(limiter) => {
                limiter.retain_recent();
                limiter.shrink_to_fit();
                limiter.len()
            }
            Buckets::Global(_) => 1,
        }
    }

    /// Seconds until a bucket with `remaining` tokens is full, rounded up.
    fn reset_secs(&self, remaining: u32) -> u64 {
        let missing = u64::from(self.config.burst.saturating_sub(remaining));
        missing.div_ceil(u64::from(self.config.requests_per_second.max(1)))
    }

    fn set_headers(&self, headers: &mut HeaderMap, remaining: u32, reset: u64) {
        headers.insert(
            RATELIMIT_LIMIT.clone(),
            HeaderValue::from(self.config.burst),
        );
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset));
    }

    fn refusal(&self, wait: Duration) -> Response<Body> {
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let retry_after = retry_after.max(1);
        metrics::counter!(RATE_LIMITED_REQUESTS_TOTAL).increment(1);
        let mut response = local_reply(
            StatusCode::TOO_MANY_REQUESTS,
            format_args!("rate limit exceeded; retry in {retry_after} s"),
        );
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        self.set_headers(headers, 0, retry_after);
        response
    }
}

/// The exact wait governor reports for a refusal.
fn wait(not_until: &NotUntil<Instant>, clock: &DefaultClock) -> Duration {
    not_until.wait_time_from(clock.now())
}

/// Spawns the periodic pruning of per-client buckets.
pub fn spawn_pruning(limiter: Arc<Limiter>) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            ticks.tick().await;
            limiter.prune();
        }
    })
    .abort_handle()
}

/// Adds rate limiting to a service; with no limiter it passes everything through.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// Limits with `limiter`, or not at all.
    pub fn new(limiter: Option<Arc<Limiter>>) -> Self {
        RateLimitLayer { limiter }
    }

    /// The limiter, when limiting.
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Passing through (the layer disabled, or within limits) adds no allocation.
    type Future = Either<S::Future, LayerFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(limiter) = &self.limiter else {
            return Either::Left(self.inner.call(request));
        };
        let verdict = match &limiter.store {
            None => limiter.check(&request),
            Some(shared) if shared.store.is_up() => {
                // The decision waits for Redis: the inner service that was polled ready
                // goes into the future, a clone stays for the next request (tower's rule).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return Either::Right(Box::pin(decide_then_call(limiter.clone(), inner, request)));
            }
            Some(shared) => limiter.fallback(shared.on_error, &request),
        };
        match verdict {
            Verdict::Refused(wait) => {
                Either::Right(Box::pin(std::future::ready(Ok(limiter.refusal(wait)))))
            }
            Verdict::Unlimited => Either::Left(self.inner.call(request)),
            Verdict::Allowed(remaining) => {
                let limiter = limiter.clone();
                let response = self.inner.call(request);
                Either::Right(Box::pin(async move {
                    let mut response = response.await?;
                    let reset = limiter.reset_secs(remaining);
                    limiter.set_headers(response.headers_mut(), remaining, reset);
                    Ok(response)
                }))
            }
        }
    }
}

/// One decision by the store (or by `on_error` when it fails), then the request.
async fn decide_then_call<S, B>(
    limiter: Arc<Limiter>,
    mut inner: S,
    request: Request<B>,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    let Some(shared) = &limiter.store else {
        // Not reached: `call` comes here only with a store.
        return inner.call(request).await;
    };
    let key = limiter.store_key(&request);
    let verdict = match shared
        .store
        .decide(key, shared.interval_us, limiter.config.burst.max(1))
        .await
    {
        Some(v) if v.allowed => Verdict::Allowed(v.remaining),
        Some(v) => Verdict::Refused(v.wait),
        None => limiter.fallback(shared.on_error, &request),
    };
    match verdict {
        Verdict::Refused(wait) => Ok(limiter.refusal(wait)),
        Verdict::Unlimited => inner.call(request).await,
        Verdict::Allowed(remaining) => {
            let mut response = inner.call(request).await?;
            let reset = limiter.reset_secs(remaining);
            limiter.set_headers(response.headers_mut(), remaining, reset);
            Ok(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refilled_buckets_are_pruned() {
        let config = RateLimitConfig {
            requests_per_second: 1000,
            burst: 2,
            key: RateLimitKey::Ip,
            store: None,
        };
        let limiter = Limiter::new(&config, ClientIp::default());
        let Buckets::PerIp(keyed) = &limiter.buckets else {
            unreachable!()
        };
        for i in 0..10_000u32 {
            let _ = keyed.check_key(&IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(keyed.len(), 10_000);
        // 2 tokens at 1000/s refill within 2 ms; wait for it, then prune.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(limiter.prune(), 0);
    }
}
