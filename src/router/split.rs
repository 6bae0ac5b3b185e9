//! A weighted split of a route's requests between pools, exact over time.
//!
//! The order is nginx's smooth weighted round robin (Maxim Dounin, nginx 1.3.1,
//! `ngx_http_upstream_round_robin.c`): each turn every target adds its weight to its
//! current value, the largest wins and loses the total. With weights 90 and 10 the canary
//! gets every tenth request, never two in a row, so after `n` requests it has had
//! `n × 10 / 100` of them to within one. The cycle (weights divided by their greatest common
//! divisor, so 90/10 is a cycle of 10) is computed once per weight change; a request takes
//! the next position from an atomic counter, so choosing takes no lock. A live change
//! (`POST /routes/{name}/split`, a canary rollback) swaps in a new cycle with `ArcSwap`:
//! the next request uses it.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use arc_swap::ArcSwap;

/// Longest cycle: weights whose sum, divided by their GCD, exceeds this are refused (a cycle
/// holds a `u16` per position: 20 KB at most).
pub const MAX_CYCLE: u64 = 10_000;

/// The weights in force and their cycle.
#[derive(Debug)]
struct Weights {
    /// One weight per target, in config order.
    weights: Box<[u32]>,
    /// Target indices in smooth weighted order; empty when every weight is 0.
    cycle: Box<[u16]>,
}

/// A route's split: targets are indices into the route's pool list.
#[derive(Debug)]
pub struct Split {
    current: ArcSwap<Weights>,
    next: AtomicUsize,
}

/// Why weights were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Every weight is 0: no pool would take the route's requests.
    #[error("every weight is 0; at least one pool must take requests")]
    AllZero,
    /// The cycle would be too long.
    #[error("weights too fine-grained: their sum divided by their common divisor is {0}, at most {MAX_CYCLE}")]
    TooFine(u64),
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The smooth weighted round-robin order of one cycle.
fn cycle(weights: &[u32]) -> Result<Box<[u16]>, SplitError> {
    let divisor = weights
        .iter()
        .map(|w| u64::from(*w))
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if divisor == 0 {
        return Err(SplitError::AllZero);
    }
    let reduced: Vec<i64> = weights
        .iter()
        .map(|w| (u64::from(*w) / divisor) as i64)
        .collect();
    let total: i64 = reduced.iter().sum();
    if total as u64 > MAX_CYCLE {
        return Err(SplitError::TooFine(total as u64));
    }
    let mut current = vec![0i64; reduced.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&reduced) {
            *c += w;
        }
        // The first of the largest, so equal weights alternate in config order.
        let (best, _) =
            current.iter().enumerate().fold(
                (0, i64::MIN),
                |acc, (i, &c)| if c > acc.1 { (i, c) } else { acc },
            );
        current[best] -= total;
        order.push(best as u16);
    }
    Ok(order.into_boxed_slice())
}

// === impl Split ===

impl Split {
    /// A split with these weights (one per target).
    pub fn new(weights: &[u32]) -> Result<Arc<Split>, SplitError> {
        Ok(Arc::new(Split {
            current: ArcSwap::from_pointee(Weights {
                weights: weights.into(),
                cycle: cycle(weights)?,
            }),
            next: AtomicUsize::new(0),
        }))
    }

    /// The target of the next request.
    pub fn choose(&self) -> usize {
        let current = self.current.load();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        usize::from(current.cycle[turn % current.cycle.len()])
    }

    /// The weights in force.
    pub fn weights(&self) -> Vec<u32> {
        self.current.load().weights.to_vec()
    }

    /// Replaces the weights; the next request follows them.
    pub fn set(&self, weights: &[u32]) -> Result<(), SplitError> {
        let cycle = cycle(weights)?;
        self.current.store(Arc::new(Weights {
            weights: weights.into(),
            cycle,
        }));
        Ok(())
    }

    /// Sets one target's weight to 0 (a canary rollback). Refused, and nothing changes,
    /// when it is the only target with a weight.
    pub fn zero(&self, target: usize) -> Result<(), SplitError> {
        let mut weights = self.weights();
        if let Some(w) = weights.get_mut(target) {
            *w = 0;
        }
        self.set(&weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(split: &Split, n: usize, targets: usize) -> Vec<usize> {
        let mut counts = vec![0; targets];
        for _ in 0..n {
            counts[split.choose()] += 1;
        }
        counts
    }

    #[test]
    fn ninety_ten_is_exact_and_spread() {
        let split = Split::new(&[90, 10]).unwrap();
        let order: Vec<usize> = (0..20).map(|_| split.choose()).collect();
        assert_eq!(order.iter().filter(|&&t| t == 1).count(), 2);
        assert!(
            order.windows(2).all(|w| w != [1, 1]),
            "never two canary requests in a row: {order:?}"
        );
        let split = Split::new(&[90, 10]).unwrap();
        assert_eq!(counts(&split, 2000, 2), vec![1800, 200]);
    }

    #[test]
    fn uneven_weights_stay_within_one_of_their_share_at_every_point() {
        let weights = [5u32, 3, 2, 7];
        let split = Split::new(&weights).unwrap();
        let total: u32 = weights.iter().sum();
        let mut seen = [0usize; 4];
        for n in 1..=1000usize {
            seen[split.choose()] += 1;
            for (t, w) in weights.iter().enumerate() {
                let fair = n as f64 * f64::from(*w) / f64::from(total);
                assert!(
                    (seen[t] as f64 - fair).abs() <= 1.0 + 1e-9,
                    "after {n}: target {t} has {} (fair {fair:.2})",
                    seen[t]
                );
            }
        }
    }

    #[test]
    fn live_changes_take_effect_at_once_and_bad_weights_are_refused() {
        let split = Split::new(&[90, 10]).unwrap();
        split.set(&[50, 50]).unwrap();
        assert_eq!(counts(&split, 100, 2), vec![50, 50]);
        split.zero(1).unwrap();
        assert_eq!(counts(&split, 100, 2), vec![100, 0]);
        assert_eq!(split.weights(), vec![50, 0]);
        assert_eq!(
            split.zero(0),
            Err(SplitError::AllZero),
            "nothing would be left"
        );
        assert_eq!(
            split.weights(),
            vec![50, 0],
            "a refused change changes nothing"
        );
        assert_eq!(Split::new(&[0, 0]).unwrap_err(), SplitError::AllZero);
        assert!(matches!(
            Split::new(&[9_999, 2]).unwrap_err(),
            SplitError::TooFine(10_001)
        ));
    }
}
