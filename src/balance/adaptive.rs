//! Adaptive: peak-EWMA latency times in-flight requests, by power of two choices.
//!
//! Cost of a backend = `ewma * (in_flight + 1) / weight` (Finagle's and Linkerd's peak-EWMA
//! load). Two *distinct* backends are drawn at random and the cheaper one wins (Mitzenmacher's
//! power of two choices). Picking the global minimum from slightly stale numbers makes every
//! request herd onto the same backend; two random choices keep almost all of the benefit and
//! stay robust (Envoy #11004, #14859). Failures are charged a latency penalty in the estimate
//! (see [`Endpoint::record`](super::endpoint::Endpoint::record)), so failing fast is not cheap.
//!
//! The random source is a [`Draw`]: seeded from the OS by default, from a fixed seed in tests
//! and experiments that must repeat.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{backend::mix64, endpoint::Endpoint, set::BackendSet, strategy::PickTrace};

/// Tuning of the peak-EWMA load measure.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptiveConfig {
    /// Decay window of the latency estimate.
    #[serde(with = "crate::humantime_serde")]
    pub decay: Duration,
    /// Estimate for a backend that has not answered yet.
    #[serde(with = "crate::humantime_serde")]
    pub default_rtt: Duration,
    /// Latency charged for a failed request.
    #[serde(with = "crate::humantime_serde")]
    pub failure_penalty: Duration,
}

impl AdaptiveConfig {
    /// Linkerd's defaults: a 10 s decay, 30 ms assumed for a backend not heard from yet, and
    /// failures charged one second.
    pub const DEFAULT: AdaptiveConfig = AdaptiveConfig {
        decay: Duration::from_secs(10),
        default_rtt: Duration::from_millis(30),
        failure_penalty: Duration::from_secs(1),
    };
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig::DEFAULT
    }
}

/// A lock-free, seedable source of random numbers: SplitMix64 over one atomic counter.
///
/// One `fetch_add` per draw (the same cost as round robin's cursor), and the sequence is
/// fixed by the seed, so a test can replay exactly the picks it asserts on.
#[derive(Debug)]
pub struct Draw {
    state: AtomicU64,
}

impl Draw {
    /// SplitMix64's increment (the golden ratio in 64 bits).
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A sequence fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Draw {
            state: AtomicU64::new(seed),
        }
    }

    /// A sequence seeded from the OS.
    pub fn from_entropy() -> Self {
        Draw::seeded(rand::random())
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix64(
            self.state
                .fetch_add(Self::GAMMA, Ordering::Relaxed)
                .wrapping_add(Self::GAMMA),
        )
    }

    /// A number in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 for any
    /// realistic `n`).
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Adaptive strategy; its state lives in each endpoint's EWMA and in the random source.
#[derive(Debug)]
pub struct Adaptive {
    draw: Draw,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            draw: Draw::from_entropy(),
        }
    }
}

impl Adaptive {
    /// An adaptive strategy whose random draws are fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Adaptive {
            draw: Draw::seeded(seed),
        }
    }

    /// Picks the cheaper of two distinct random backends; `trace` gets both and their costs.
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        let n = set.endpoints.len();
        let now = Instant::now();
        if n == 1 {
            trace.sample(0, cost(&set.endpoints[0], now));
            return 0;
        }
        let a = self.draw.below(n);
        let mut b = self.draw.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (cost_a, cost_b) = (cost(&set.endpoints[a], now), cost(&set.endpoints[b], now));
        trace.sample(a, cost_a);
        trace.sample(b, cost_b);
        if cost_b < cost_a {
            b
        } else {
            a
        }
    }
}

/// The adaptive load measure of one backend, in seconds per unit of weight.
pub fn cost(ep: &Endpoint, now: Instant) -> f64 {
    ep.ewma_secs(now) * (ep.in_flight() as f64 + 1.0) / f64::from(ep.weight())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    #[test]
    fn draws_repeat_for_a_seed_and_stay_in_range() {
        let (a, b) = (Draw::seeded(7), Draw::seeded(7));
        let xs: Vec<usize> = (0..100).map(|_| a.below(5)).collect();
        let ys: Vec<usize> = (0..100).map(|_| b.below(5)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| *x < 5));
        // Every value shows up: the draw is not stuck.
        assert!((0..5).all(|v| xs.contains(&v)));
    }

    #[test]
    fn samples_two_distinct_backends_and_takes_the_cheaper() {
        let eps = endpoints(&[1, 1, 1]);
        // Backend 1 is slow: its estimate is 500 ms against the default 30 ms.
        eps[1].record(Duration::from_millis(500), false, Instant::now());
        let set = set_of(&eps, &eps);
        let adaptive = Adaptive::seeded(42);
        let mut picks = [0usize; 3];
        for _ in 0..300 {
            let mut trace = PickTrace::default();
            let i = adaptive.pick(&set, &mut trace);
            let sampled = trace.sampled();
            assert_eq!(sampled.len(), 2);
            assert_ne!(sampled[0].0, sampled[1].0, "two distinct backends");
            let cheaper = if sampled[1].1 < sampled[0].1 {
                sampled[1].0
            } else {
                sampled[0].0
            };
            assert_eq!(i, cheaper);
            picks[i] += 1;
        }
        // The slow backend is dearer than either other one, so it never wins.
        assert_eq!(picks[1], 0, "{picks:?}");
        assert!(picks[0] > 50 && picks[2] > 50, "{picks:?}");
    }

    #[test]
    fn in_flight_and_weight_enter_the_cost() {
        let eps = endpoints(&[1, 2]);
        let now = Instant::now();
        let base = cost(&eps[0], now);
        let _busy = eps[0].start();
        let close = |a: f64, b: f64| (a - b).abs() < b * 1e-4;
        assert!(close(cost(&eps[0], now), 2.0 * base));
        // Weight 2 halves the cost (both estimates start at the default RTT).
        assert!(close(cost(&eps[1], now), base / 2.0));
    }
}
