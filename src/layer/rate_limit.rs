//! Token-bucket rate limiting with governor (GCRA), per client IP or global.
//!
//! Over the limit a request is answered `429` with `Retry-After` (the exact wait from the
//! bucket, rounded up to whole seconds, at least 1) and counted in
//! `lb_rate_limited_requests_total`. Every answer carries `RateLimit-Limit` (the burst),
//! `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is full again), as
//! in the IETF `RateLimit` header draft, so well-behaved clients can slow down before they
//! are refused.
//!
//! The client key is the socket peer; `X-Forwarded-For` counts only from `trusted_proxies`
//! (see [`ClientIp`]), otherwise a client could mint a fresh bucket per request. Buckets that
//! have refilled are indistinguishable from new ones and are pruned every
//! [`PRUNE_INTERVAL`], so a million distinct addresses do not grow memory for good.

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
    middleware::{StateInformationMiddleware, StateSnapshot},
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

/// Token-bucket rate limiting.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitConfig {
    /// Refill rate.
    pub requests_per_second: u32,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
    /// One bucket per client address, or one for everyone.
    pub key: RateLimitKey,
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
    buckets: Buckets,
    clock: DefaultClock,
    config: RateLimitConfig,
    client_ip: ClientIp,
}

/// What the limiter decided for one request.
enum Verdict {
    Allowed(StateSnapshot),
    Refused(NotUntil<Instant>),
}

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
        }
    }

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
            Ok(snapshot) => Verdict::Allowed(snapshot),
            Err(not_until) => Verdict::Refused(not_until),
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

    fn refusal(&self, not_until: &NotUntil<Instant>) -> Response<Body> {
        let wait = not_until.wait_time_from(self.clock.now());
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
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
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
        match limiter.check(&request) {
            Verdict::Refused(not_until) => Either::Right(Box::pin(std::future::ready(Ok(
                limiter.refusal(&not_until)
            )))),
            Verdict::Allowed(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refilled_buckets_are_pruned() {
        let config = RateLimitConfig {
            requests_per_second: 1000,
            burst: 2,
            key: RateLimitKey::Ip,
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
