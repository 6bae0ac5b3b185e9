//! Slow start: a backend that joins or comes back is given a share that rises over a window,
//! so a cold process (empty caches, a JIT still compiling, no pooled connections) is not hit
//! with its full share at once.
//!
//! Envoy's formula (`slow_start_config` of its round-robin and least-request balancers,
//! `source/common/upstream/load_balancer_impl.cc`), with `t` the time since the backend
//! entered service:
//!
//! ```text
//! factor = max(min_weight, (max(t, 1 ms) / window) ^ (1 / aggression))      while t < window
//! effective weight = weight × factor
//! ```
//!
//! `aggression` 1 is a straight ramp; above 1 the share rises faster early on. Every strategy
//! that uses weights or scores applies the factor where it uses the weight:
//! round robin thins the warming backend's turns to `factor` of them ([`Thinning`]),
//! least-conn and adaptive divide its load by `weight × factor`, sticky scores it with
//! `weight × factor` in the rendezvous hash (so its clients move back gradually), and prequal
//! divides its latency by `factor`. A backend counts as returning when it goes from out of
//! service to in service (health checks, the end of an ejection, an operator's enable) or is
//! added by a reload; the backends present at start are not warmed (they start together).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// The slow-start window and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlowStart {
    /// How long the share takes to reach 100%.
    #[serde(with = "crate::humantime_serde")]
    pub window: Duration,
    /// The ramp's shape: 1.0 linear, larger values rise faster at first.
    pub aggression: f64,
    /// The share a returning backend starts with (0 to 1).
    pub min_weight: f64,
}

impl SlowStart {
    /// Envoy's default shape: linear, starting at 10%.
    pub const DEFAULT_AGGRESSION: f64 = 1.0;
    /// Envoy's `min_weight_percent` default, as a fraction.
    pub const DEFAULT_MIN_WEIGHT: f64 = 0.1;

    /// A linear ramp from 10% over `window`.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: Self::DEFAULT_AGGRESSION,
            min_weight: Self::DEFAULT_MIN_WEIGHT,
        }
    }

    /// The weight factor `elapsed` after the backend entered service: 1.0 once the window
    /// has passed.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.max(Duration::from_millis(1)).as_secs_f64() / self.window.as_secs_f64();
        let ramp = if self.aggression == 1.0 {
            t
        } else {
            t.powf(1.0 / self.aggression)
        };
        ramp.max(self.min_weight).min(1.0)
    }
}

/// Gives a warming backend `factor` of the turns a rotation offers it, deterministically:
/// the k-th offer is taken when `floor((k + 1) × factor) > floor(k × factor)`, so over any
/// run of offers the share taken is within one of `factor` times the offers. One counter per
/// backend, no lock.
#[derive(Debug, Default)]
pub struct Thinning {
    offers: AtomicU64,
}

impl Thinning {
    /// Whether this offer is taken at `factor` (always, at 1.0).
    pub fn take(&self, factor: f64) -> bool {
        if factor >= 1.0 {
            return true;
        }
        let k = self.offers.fetch_add(1, Ordering::Relaxed) as f64;
        ((k + 1.0) * factor).floor() > (k * factor).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        test_support::{endpoints_ramped, set_of},
        PickTrace, Strategy, StrategyKind,
    };
    use std::{net::IpAddr, time::Instant};

    /// Picks `n` times, one request at a time (each ends before the next is picked).
    fn sequential_shares(kind: StrategyKind, returning: bool, n: usize) -> Vec<usize> {
        let eps = endpoints_ramped(&[1, 1, 1], SlowStart::new(Duration::from_secs(3600)));
        if returning {
            eps[0].availability.set_up(false, "down".into());
            eps[0].availability.set_up(true, "back".into());
        }
        let set = set_of(&eps, &eps);
        let strategy = Strategy::seeded(kind, 7);
        let mut shares = vec![0; eps.len()];
        for i in 0..n {
            let client = Some(IpAddr::from([10, 0, (i / 256) as u8, i as u8]));
            let index = strategy.pick(&set, client, &mut PickTrace::default());
            shares[index] += 1;
            let guard = eps[index].start();
            eps[index].record(Duration::from_millis(5), false, Instant::now());
            drop(guard);
        }
        shares
    }

    #[test]
    fn a_returning_backend_gets_a_tenth_of_its_weight_at_first() {
        for kind in [
            StrategyKind::RoundRobin,
            StrategyKind::LeastConn,
            StrategyKind::Sticky,
        ] {
            let fair = sequential_shares(kind, false, 3000);
            assert!(
                fair.iter().all(|s| (800..=1200).contains(s)),
                "{kind}: {fair:?}"
            );
            let shares = sequential_shares(kind, true, 3000);
            // Factor 0.1: 0.1 / (0.1 + 2) of the picks, about 143 of 3000.
            assert!(
                (100..=250).contains(&shares[0]),
                "{kind}: the returning backend got {shares:?}"
            );
        }
    }

    #[test]
    fn the_factor_rises_with_time_and_settles() {
        let eps = endpoints_ramped(&[1], SlowStart::new(Duration::from_secs(10)));
        let ep = &eps[0];
        assert!(!ep.is_warming(), "present from the start: no ramp");
        ep.availability.set_up(false, "down".into());
        ep.availability.set_up(true, "back".into());
        assert!(ep.is_warming());
        let back = ep.availability.returned_at().unwrap();
        assert_eq!(ep.slow_start_factor_at(back), 0.1);
        assert!((ep.slow_start_factor_at(back + Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(ep.slow_start_factor_at(back + Duration::from_secs(10)), 1.0);
        assert!(!ep.is_warming(), "a finished ramp stops reading the clock");
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn linear_from_ten_percent_to_full() {
        let s = SlowStart::new(30 * S);
        assert_eq!(s.factor(Duration::ZERO), 0.1);
        assert_eq!(
            s.factor(S),
            0.1,
            "the floor holds while the ramp is below it"
        );
        assert!((s.factor(6 * S) - 0.2).abs() < 1e-9);
        assert!((s.factor(15 * S) - 0.5).abs() < 1e-9);
        assert_eq!(s.factor(30 * S), 1.0);
        assert_eq!(s.factor(300 * S), 1.0);
    }

    #[test]
    fn aggression_bends_the_ramp_upwards() {
        let s = SlowStart {
            aggression: 2.0,
            ..SlowStart::new(100 * S)
        };
        // (0.25)^(1/2) = 0.5: half the share a quarter of the way in.
        assert!((s.factor(25 * S) - 0.5).abs() < 1e-9);
        assert!(s.factor(25 * S) > SlowStart::new(100 * S).factor(25 * S));
    }

    #[test]
    fn thinning_takes_its_factor_of_the_offers() {
        for factor in [0.1, 0.25, 1.0 / 3.0, 0.5, 0.9] {
            let t = Thinning::default();
            let taken = (0..1000).filter(|_| t.take(factor)).count() as f64;
            assert!((taken - 1000.0 * factor).abs() <= 1.0, "{factor}: {taken}");
        }
        let t = Thinning::default();
        assert!((0..10).all(|_| t.take(1.0)));
    }
}
