//! Retries of requests that never reached a backend, within a budget.
//!
//! Only what is safe is retried: an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE) with
//! an empty body (nothing to replay), after a failure before any response byte (connection
//! refused or reset). A response that has started is never retried, and a timeout is not
//! (the backend may still be working on it). The retry goes to a *different* backend.
//!
//! A retry budget (Finagle's and Linkerd's idea) keeps retries from multiplying an outage:
//! within each second, retries may not exceed `min_per_second` plus `budget_percent` of the
//! requests of that second and the one before.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use axum::extract::ConnectInfo;
use http::Request;
use serde::Serialize;
// Tokio's clock, so tests can pause and advance time through the budget's windows.
use tokio::time::Instant;

use crate::semantics::{idempotent, upgrade_protocol, ClientUpgrade};

/// Retry settings.
#[derive(Debug, Clone, Serialize)]
pub struct RetryConfig {
    /// Retries per request (0 disables retries).
    pub attempts: u32,
    /// Retries allowed as a percentage of recent requests.
    pub budget_percent: u32,
    /// Retries allowed per second regardless of traffic.
    pub min_per_second: u32,
}

/// The budget: requests and retries in the current and the previous second.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryConfig,
    epoch: Instant,
    // second (since epoch) << 32 | count, for the current window; the previous window's
    // request count is kept separately. Approximate under races at a second's edge, which
    // only moves the budget by a request or two.
    current: AtomicU64,
    retries: AtomicU64,
    previous_requests: AtomicU64,
}

impl RetryBudget {
    /// A budget for `config`.
    pub fn new(config: RetryConfig) -> Self {
        RetryBudget {
            config,
            epoch: Instant::now(),
            current: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            previous_requests: AtomicU64::new(0),
        }
    }

    /// Retries allowed per request.
    pub fn attempts(&self) -> u32 {
        self.config.attempts
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs() & 0xffff_ffff
    }

    /// Rolls the window forward if a new second has begun; returns the current word.
    fn roll(&self) -> u64 {
        let now = self.second();
        let word = self.current.load(Ordering::Relaxed);
        if word >> 32 == now {
            return word;
        }
        let fresh = now << 32;
        if self
            .current
            .compare_exchange(word, fresh, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let last = if (word >> 32) + 1 == now {
                word & 0xffff_ffff
            } else {
                0
            };
            self.previous_requests.store(last, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
        self.current.load(Ordering::Relaxed)
    }

    /// Counts a request.
    pub fn deposit(&self) {
        self.roll();
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let word = self.roll();
        let recent = (word & 0xffff_ffff) + self.previous_requests.load(Ordering::Relaxed);
        let allowed = u64::from(self.config.min_per_second)
            + recent * u64::from(self.config.budget_percent) / 100;
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// What is needed to send a request again: everything but the body, which must be empty.
///
/// ALB does not buffer bodies to replay them, so only requests that are safe to repeat and
/// have nothing to repeat but their head qualify ([`Replay::of`]).
#[derive(Debug)]
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
    upgrade: Option<ClientUpgrade>,
}

impl Replay {
    /// The replayable part of `request`, if it may be retried at all: an idempotent method
    /// (RFC 9110 §9.2.2) and an empty body.
    ///
    /// An upgrade request's client handle moves into a [`ClientUpgrade`] slot that the copy
    /// shares, so whichever attempt gets `101` can join the client.
    pub fn of<B: http_body::Body>(request: &mut Request<B>) -> Option<Self> {
        if !idempotent(request.method()) || !request.body().is_end_stream() {
            return None;
        }
        let upgrade = upgrade_protocol(request.headers())
            .is_some()
            .then(|| ClientUpgrade::of(request));
        Some(Replay {
            upgrade,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            peer: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .copied(),
        })
    }

    /// A fresh copy of the request, with an empty body.
    pub fn request<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        if let Some(upgrade) = &self.upgrade {
            request.extensions_mut().insert(upgrade.clone());
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(percent: u32, min: u32) -> RetryBudget {
        RetryBudget::new(RetryConfig {
            attempts: 1,
            budget_percent: percent,
            min_per_second: min,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_the_minimum_plus_a_share_of_requests() {
        let budget = budget(20, 2);
        for _ in 0..50 {
            budget.deposit();
        }
        // Within one second: 2 + 20% of 50.
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_each_second_from_the_last_seconds_traffic() {
        let budget = budget(10, 1);
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 11);
        tokio::time::advance(Duration::from_secs(1)).await;
        // A new second: the minimum plus 10% of the previous second's 100 requests.
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 11);
        tokio::time::advance(Duration::from_secs(2)).await;
        // After a quiet second, only the minimum is left.
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_minimum_and_no_traffic_nothing_is_retried() {
        let budget = budget(20, 0);
        assert!(!budget.withdraw());
    }

    #[test]
    fn only_idempotent_bodiless_requests_replay() {
        let mut get = Request::get("/a").body(String::new()).unwrap();
        let replay = Replay::of(&mut get).expect("a GET without a body replays");
        let again: Request<String> = replay.request();
        assert_eq!((again.method(), again.uri().path()), (get.method(), "/a"));
        let mut post = Request::post("/a").body(String::new()).unwrap();
        assert!(Replay::of(&mut post).is_none(), "POST is not idempotent");
        let mut put = Request::put("/a").body("data".to_owned()).unwrap();
        assert!(Replay::of(&mut put).is_none(), "a body cannot be replayed");
    }
}
