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
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use http::Method;
use serde::Serialize;

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

/// Whether a method may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_minimum_plus_a_share_of_requests() {
        let budget = RetryBudget::new(RetryConfig {
            attempts: 1,
            budget_percent: 20,
            min_per_second: 2,
        });
        for _ in 0..50 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        // within one second: 2 + 20% of 50 (the test runs well within a second boundary
        // most of the time; a boundary only lowers the count)
        assert!((2..=12).contains(&granted), "{granted}");
    }
}
