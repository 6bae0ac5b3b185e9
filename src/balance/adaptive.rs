//! Adaptive: peak-EWMA latency times in-flight requests, by power of two choices.
//!
//! Cost of a backend = `ewma * (in_flight + 1) / weight` (Finagle's and Linkerd's peak-EWMA
//! load). Two *distinct* backends are drawn at random and the cheaper one wins (Mitzenmacher's
//! power of two choices). Picking the global minimum from slightly stale numbers makes every
//! request herd onto the same backend; two random choices keep almost all of the benefit and
//! stay robust (Envoy #11004, #14859). Failures are charged a latency penalty in the estimate
//! (see [`Endpoint::record`](super::endpoint::Endpoint::record)), so failing fast is not cheap.

use std::time::Instant;

use rand::Rng;

use super::{endpoint::Endpoint, BackendSet, PickTrace};

/// Adaptive strategy; its state lives in each endpoint's EWMA.
#[derive(Debug, Default)]
pub struct Adaptive;

impl Adaptive {
    /// Picks the cheaper of two distinct random backends; `trace` gets both and their costs.
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        let n = set.endpoints.len();
        let now = Instant::now();
        if n == 1 {
            trace.sample(0, cost(&set.endpoints[0], now));
            return 0;
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
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
    ep.ewma_secs(now) * (ep.in_flight() as f64 + 1.0) / f64::from(ep.weight)
}
