//! Least connections: the backend with the fewest requests in flight, per unit of weight.
//!
//! A request counts until its response body ends, so a backend streaming a long download is
//! busy. The scan starts at a rotating offset so that ties (all idle, as with sequential
//! requests) are shared evenly instead of always falling on the first backend. The weight is
//! the effective one: a backend in [slow start](super::slow_start) counts as busier, and
//! passes some of its wins (see [`LeastConn::pick`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{set::BackendSet, strategy::PickTrace};

/// Least-connections state: the rotating tie-break offset.
#[derive(Debug, Default)]
pub struct LeastConn {
    offset: AtomicUsize,
}

impl LeastConn {
    /// The index of the least-loaded backend by `in_flight / effective weight`. IEEE division
    /// is correctly rounded, so equal ratios (1/3 and 2/6) compare equal and ties stay ties.
    /// A warming winner (slow start) also passes `1 - factor` of its wins to the next best, so
    /// its share is cut when every backend is idle too (sequential traffic, where the
    /// division alone compares zeros).
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        let eps = &set.endpoints;
        let start = self.offset.fetch_add(1, Ordering::Relaxed) % eps.len();
        let (best, load) = least_loaded(set, start, None);
        let ep = &eps[best];
        let (best, load) =
            if eps.len() > 1 && ep.is_warming() && !ep.thinning.take(ep.slow_start_factor()) {
                least_loaded(set, start, Some(best))
            } else {
                (best, load)
            };
        trace.sample(best, load);
        best
    }
}

/// The least-loaded backend other than `skip`, scanning from `start`, and its load.
fn least_loaded(set: &BackendSet, start: usize, skip: Option<usize>) -> (usize, f64) {
    let eps = &set.endpoints;
    let n = eps.len();
    let mut best: Option<(usize, f64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if Some(i) == skip {
            continue;
        }
        let load = eps[i].in_flight() as f64 / eps[i].effective_weight();
        if best.is_none_or(|(_, l)| load < l) {
            best = Some((i, load));
        }
    }
    best.expect("a set with a backend besides the skipped one")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    #[test]
    fn least_conn_takes_the_fewest_in_flight() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        let lc = LeastConn::default();
        let _a = [eps[0].start(), eps[0].start()];
        let _b = eps[2].start();
        for _ in 0..5 {
            let mut trace = PickTrace::default();
            assert_eq!(lc.pick(&set, &mut trace), 1);
            assert_eq!(trace.sampled(), &[(1, 0.0)]);
        }
    }

    #[test]
    fn ties_are_shared_evenly() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        let lc = LeastConn::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[lc.pick(&set, &mut PickTrace::default())] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn load_is_per_unit_of_weight() {
        // 3 in flight at weight 4 (0.75) is less loaded than 1 at weight 1.
        let eps = endpoints(&[4, 1]);
        let set = set_of(&eps, &eps);
        let _heavy = [eps[0].start(), eps[0].start(), eps[0].start()];
        let _light = eps[1].start();
        assert_eq!(
            LeastConn::default().pick(&set, &mut PickTrace::default()),
            0
        );
    }
}
