//! Round robin: strict rotation, weighted the way nginx does it.
//!
//! nginx's smooth weighted round robin: every pick, each backend's `current` grows by its
//! weight, the largest `current` wins and loses the total weight. For weights 3:1:1 that gives
//! `a b a c a`, spreading a heavy backend's turns instead of bunching them.
//!
//! Running that algorithm per request would need a lock over all backends. Instead the whole
//! cycle (sum of weights, reduced by their gcd) is computed once per backend-set change, and
//! requests walk it with one atomic counter: exact shares, no lock.
//!
//! A backend in [slow start](super::slow_start) takes only `factor` of the turns the cycle
//! offers it (its [`Thinning`](super::slow_start::Thinning)); a turn it passes goes to the
//! next backend in the cycle.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{set::BackendSet, strategy::PickTrace};

/// Round-robin state: a cursor into the set's precomputed cycle.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// The next backend in the cycle, as an index into `set.endpoints`.
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        let cycle = &set.cycle;
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = cycle.len();
        // Almost always the first turn is taken; a warming backend passes some of its own.
        for j in 0..len {
            let position = (n + j) % len;
            let candidate = cycle[position] as usize;
            let ep = &set.endpoints[candidate];
            if !ep.is_warming() || ep.thinning.take(ep.slow_start_factor()) {
                trace.sample(candidate, position as f64);
                return candidate;
            }
        }
        // Every backend passed (all warming, all at low factors): take the turn as it fell.
        let chosen = cycle[n % len] as usize;
        trace.sample(chosen, (n % len) as f64);
        chosen
    }
}

/// Longest cycle stored; beyond it weights are scaled down (keeping their ratios roughly).
const MAX_CYCLE: u64 = 1 << 16;

/// The smooth weighted round-robin cycle for these weights, as indices.
pub fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let mut weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    if total as u64 > MAX_CYCLE {
        let scale = MAX_CYCLE as f64 / total as f64;
        for w in &mut weights {
            *w = ((*w as f64 * scale).round() as i64).max(1);
        }
    }
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    #[test]
    fn nginx_order_for_3_1_1() {
        assert_eq!(smooth_cycle(&[3, 1, 1]), vec![0, 1, 0, 2, 0]);
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(smooth_cycle(&[2, 2, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn round_robin_rotates_exactly() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7)
            .map(|_| rr.pick(&set, &mut PickTrace::default()))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weighted_shares_are_exact_over_a_cycle() {
        let eps = endpoints(&[3, 1, 1]);
        let set = set_of(&eps, &eps);
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[rr.pick(&set, &mut PickTrace::default())] += 1;
        }
        assert_eq!(counts, [300, 100, 100]);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_cycle() {
        let cycle = smooth_cycle(&[10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 9_999]);
        assert!(cycle.len() as u64 <= MAX_CYCLE);
        assert!((0..7).all(|i| cycle.contains(&i)));
    }
}
