//! Adaptive: peak-EWMA latency times in-flight requests, by power of two choices.
//!
//! Cost of a backend = `ewma * (in_flight + 1) / weight` (Finagle's and Linkerd's peak-EWMA
//! load). Two *distinct* backends are drawn at random and the cheaper one wins (Mitzenmacher's
//! power of two choices). Picking the global minimum from slightly stale numbers makes every
//! request herd onto the same backend; two random choices keep almost all of the benefit and
//! stay robust (Envoy #11004, #14859). Failures are charged a latency penalty in the estimate
//! (see [`Endpoint::record`](super::endpoint::Endpoint::record)), so failing fast is not cheap.
//!
//! Two additions keep the estimate from being believed beyond what it knows:
//!
//! - **Fair among equals.** A peak-EWMA estimate is close to the largest recent sample, so
//!   among identical backends the one whose last samples happened to be low keeps winning
//!   (measured: 5 identical backends, 1500 sequential requests, shares from 149 to 566;
//!   Traefik #12306 starved one of five the same way). Two latency estimates within
//!   `tolerance` of each other (relative to the larger, default 25%) are taken as the same
//!   latency: the pick then goes to fewer requests in flight per weight (an exact count,
//!   not an estimate), and on a tie to the first of the two random draws, which is itself
//!   uniform. A backend 4x slower, or one charged the failure penalty, is far outside the band.
//! - **Quick to forgive.** A backend out of favour gets no requests, so no sample can lower
//!   its estimate: after a 2 s stall it would stay out for about `decay × ln(2 s / latency)`.
//!   So a drawn backend with nothing in flight, no sample for `probe_interval` (default
//!   1 s) and a last answer that was not a failure gets the request as a probe (a failing
//!   backend is left to health checks and outlier detection: a probe is a real request), and that answer replaces its stale estimate
//!   ([`PeakEwma`](super::ewma::PeakEwma)). A backend that is still slow answers slowly and
//!   stays out, at the price of one request per `probe_interval`.
//!
//! The weight is the effective one: a backend in [slow start](super::slow_start) has its
//! queue, and so its cost, divided by `weight × factor`.
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
    /// Latency estimates within this fraction of each other count as the same.
    pub tolerance: f64,
    /// A backend with nothing in flight and no answer for this long is probed.
    #[serde(with = "crate::humantime_serde")]
    pub probe_interval: Duration,
}

impl AdaptiveConfig {
    /// Linkerd's defaults (a 10 s decay, 30 ms assumed for a backend not heard from yet,
    /// failures charged one second), estimates within 25% taken as equal, and a probe after
    /// a second without answers.
    pub const DEFAULT: AdaptiveConfig = AdaptiveConfig {
        decay: Duration::from_secs(10),
        default_rtt: Duration::from_millis(30),
        failure_penalty: Duration::from_secs(1),
        tolerance: 0.25,
        probe_interval: Duration::from_secs(1),
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

    /// Picks from two distinct random backends (see the module docs); `trace` gets both,
    /// their costs and the rule that decided.
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        self.pick_at(set, Instant::now(), trace)
    }

    /// [`Adaptive::pick`] at a given time (tests drive the clock).
    pub fn pick_at(&self, set: &BackendSet, now: Instant, trace: &mut PickTrace) -> usize {
        let n = set.endpoints.len();
        if n == 1 {
            trace.sample(0, cost(&set.endpoints[0], now));
            trace.rule = Some(Rule::Only);
            return 0;
        }
        let a = self.draw.below(n);
        let mut b = self.draw.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (ep_a, ep_b) = (&set.endpoints[a], &set.endpoints[b]);
        let (load_a, load_b) = (Load::of(ep_a, now), Load::of(ep_b, now));
        trace.sample(a, load_a.cost());
        trace.sample(b, load_b.cost());
        let (rule, first) = decide(&load_a, &load_b, ep_a.tuning());
        trace.rule = Some(rule);
        if first {
            a
        } else {
            b
        }
    }
}

/// Which rule decided an adaptive pick (for the decision record's `why`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// One backend in service.
    Only,
    /// Estimates apart by more than the tolerance: the lower cost won.
    LowerCost,
    /// Estimates within the tolerance: fewer in flight per weight won.
    FewerInFlight,
    /// Estimates within the tolerance and the same in flight per weight: the first draw won.
    Tie,
    /// The winner had no request in flight and no answer for `probe_interval`.
    Probe,
}

/// One drawn backend's numbers, read once.
#[derive(Debug, Clone, Copy)]
struct Load {
    latency: f64,
    age: Duration,
    in_flight: usize,
    weight: f64,
    /// Its last answer was a failure: it is not probed (a probe is a real request).
    failing: bool,
}

impl Load {
    fn of(ep: &Endpoint, now: Instant) -> Load {
        let reading = ep.ewma_reading(now);
        Load {
            latency: reading.estimate,
            age: reading.age,
            in_flight: ep.in_flight(),
            weight: f64::from(ep.weight()) * ep.slow_start_factor_at(now),
            failing: ep.failure_streak() > 0,
        }
    }

    /// Requests in flight, the one to send included, per unit of weight.
    fn queue(&self) -> f64 {
        (self.in_flight as f64 + 1.0) / self.weight
    }

    fn cost(&self) -> f64 {
        self.latency * self.queue()
    }

    fn due_for_probe(&self, tuning: &AdaptiveConfig) -> bool {
        self.in_flight == 0 && !self.failing && self.age >= tuning.probe_interval
    }
}

/// The rule that decides between `a` and `b`, and whether `a` wins.
fn decide(a: &Load, b: &Load, tuning: &AdaptiveConfig) -> (Rule, bool) {
    if a.due_for_probe(tuning) {
        return (Rule::Probe, true);
    }
    if b.due_for_probe(tuning) {
        return (Rule::Probe, false);
    }
    let larger = a.latency.max(b.latency);
    if (a.latency - b.latency).abs() <= tuning.tolerance * larger {
        let (qa, qb) = (a.queue(), b.queue());
        if qa == qb {
            (Rule::Tie, true)
        } else {
            (Rule::FewerInFlight, qa < qb)
        }
    } else {
        (Rule::LowerCost, a.cost() <= b.cost())
    }
}

/// The adaptive load measure of one backend, in seconds per unit of weight.
pub fn cost(ep: &Endpoint, now: Instant) -> f64 {
    Load::of(ep, now).cost()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, endpoints_tuned, set_of};
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    /// A service time around 5 ms as a loopback backend shows it: jitter of up to 20%, and
    /// one answer in 50 three times slower (a scheduler hiccup), from a seeded sequence.
    fn noisy_5ms(draw: &Draw) -> Duration {
        let jitter = draw.below(1000) as f64 / 1000.0 * 0.2;
        let hiccup = if draw.below(50) == 0 { 3.0 } else { 1.0 };
        Duration::from_secs_f64(0.005 * (1.0 + jitter) * hiccup)
    }

    /// Sends `n` requests one after another from `start`, each answered after `service(i)`;
    /// returns the picks per backend and the time after the last answer.
    fn sequential(
        adaptive: &Adaptive,
        eps: &[Arc<Endpoint>],
        start: Instant,
        n: usize,
        mut service: impl FnMut(usize) -> Duration,
    ) -> (Vec<usize>, Instant) {
        let set = set_of(eps, eps);
        let mut now = start;
        let mut picks = vec![0; eps.len()];
        for _ in 0..n {
            let mut trace = PickTrace::default();
            let i = adaptive.pick_at(&set, now, &mut trace);
            picks[i] += 1;
            let guard = eps[i].start_at(now);
            now += service(i);
            eps[i].record(now - guard.started(), false, now);
        }
        (picks, now)
    }

    fn spread(picks: &[usize]) -> (f64, f64) {
        let mean = picks.iter().sum::<usize>() as f64 / picks.len() as f64;
        let min = *picks.iter().min().unwrap() as f64 / mean;
        let max = *picks.iter().max().unwrap() as f64 / mean;
        (min, max)
    }

    #[test]
    fn identical_backends_get_equal_shares_of_sequential_requests() {
        let noise = Draw::seeded(11);
        let eps = endpoints(&[1; 5]);
        let (picks, _) = sequential(&Adaptive::seeded(3), &eps, Instant::now(), 1500, |_| {
            noisy_5ms(&noise)
        });
        let (min, max) = spread(&picks);
        assert!(min >= 0.8 && max <= 1.2, "shares {picks:?}");

        // Without the tolerance band (exact comparison of peak estimates), the same traffic
        // is split unevenly: the band is what evens it out.
        let exact = AdaptiveConfig {
            tolerance: 0.0,
            ..AdaptiveConfig::DEFAULT
        };
        let noise = Draw::seeded(11);
        let eps = endpoints_tuned(&[1; 5], &exact);
        let (picks, _) = sequential(&Adaptive::seeded(3), &eps, Instant::now(), 1500, |_| {
            noisy_5ms(&noise)
        });
        let (min, max) = spread(&picks);
        assert!(
            min < 0.8 || max > 1.2,
            "exact comparison was even: {picks:?}"
        );
    }

    #[test]
    fn a_slow_backend_stays_out_but_is_probed() {
        let noise = Draw::seeded(5);
        let eps = endpoints(&[1; 5]);
        // Backend 0 takes 16 times as long as the others.
        let (picks, _) = sequential(&Adaptive::seeded(9), &eps, Instant::now(), 2000, |i| {
            noisy_5ms(&noise) * if i == 0 { 16 } else { 1 }
        });
        // About 11 s of traffic: the slow backend gets its probes (one a second) and a few
        // early picks before its first answer, not a fair share (400).
        assert!(
            picks[0] <= 30,
            "slow backend picked {} times: {picks:?}",
            picks[0]
        );
        assert!(picks[0] >= 2, "never probed: {picks:?}");
    }

    #[test]
    fn a_backend_returns_within_seconds_after_a_stall() {
        let noise = Draw::seeded(21);
        let eps = endpoints(&[1; 5]);
        let adaptive = Adaptive::seeded(4);
        let (_, mut now) = sequential(&adaptive, &eps, Instant::now(), 500, |_| noisy_5ms(&noise));
        // Backend 0 stalls: requests caught in it come back after 2 s, the peak is kept.
        let stalled = eps[0].start_at(now);
        now += 2000 * MS;
        eps[0].record(now - stalled.started(), false, now);
        drop(stalled);
        // Traffic after the stall: backend 0's share in each following half second.
        let mut shares = Vec::new();
        for _ in 0..8 {
            let (picks, next) = sequential(&adaptive, &eps, now, 90, |_| noisy_5ms(&noise));
            shares.push(picks[0] as f64 / 90.0);
            now = next;
        }
        // Out of favour at first, back to at least half its fair share (0.2) within 3 s.
        assert!(shares[0] < 0.1, "{shares:?}");
        let back = shares
            .iter()
            .position(|s| *s >= 0.1)
            .expect("never came back");
        assert!(
            back <= 5,
            "back only after {} half-seconds: {shares:?}",
            back
        );
        assert!(shares[back..].iter().all(|s| *s >= 0.1), "{shares:?}");
    }

    #[test]
    fn a_failing_backend_is_not_probed() {
        let eps = endpoints(&[1, 1]);
        let set = set_of(&eps, &eps);
        let now = Instant::now();
        eps[0].record(5 * MS, false, now);
        eps[1].record(5 * MS, true, now);
        // Long after: backend 1 is idle, but its last answer was a failure.
        let later = now + 2 * eps[1].tuning().probe_interval;
        eps[0].record(5 * MS, false, later);
        for seed in 0..20 {
            let mut trace = PickTrace::default();
            let i = Adaptive::seeded(seed).pick_at(&set, later, &mut trace);
            assert_ne!(trace.rule, Some(Rule::Probe), "seed {seed}");
            assert_eq!(i, 0, "the failure penalty keeps it out (seed {seed})");
        }
    }

    #[test]
    fn the_rule_that_decided_is_traced() {
        let eps = endpoints(&[1, 1]);
        let set = set_of(&eps, &eps);
        let now = Instant::now();
        eps[0].record(5 * MS, false, now);
        eps[1].record(5 * MS, false, now);
        let _busy = eps[1].start_at(now);
        let mut trace = PickTrace::default();
        assert_eq!(Adaptive::seeded(1).pick_at(&set, now, &mut trace), 0);
        assert_eq!(trace.rule, Some(Rule::FewerInFlight));
        drop(_busy);
        eps[1].record(50 * MS, false, now);
        let mut trace = PickTrace::default();
        assert_eq!(Adaptive::seeded(1).pick_at(&set, now, &mut trace), 0);
        assert_eq!(trace.rule, Some(Rule::LowerCost));
        // Two seconds without answers: backend 1 is probed despite its estimate.
        let later = now + 2 * eps[1].tuning().probe_interval;
        eps[0].record(5 * MS, false, later);
        let mut trace = PickTrace::default();
        assert_eq!(Adaptive::seeded(1).pick_at(&set, later, &mut trace), 1);
        assert_eq!(trace.rule, Some(Rule::Probe));
    }

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
            match trace.rule {
                // Costs far apart: the cheaper one.
                Some(Rule::LowerCost) => {
                    let cheaper = if sampled[1].1 < sampled[0].1 {
                        sampled[1].0
                    } else {
                        sampled[0].0
                    };
                    assert_eq!(i, cheaper);
                }
                // Two equal backends: the first draw.
                Some(Rule::Tie) => assert_eq!(i, sampled[0].0),
                other => panic!("unexpected rule {other:?}"),
            }
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
