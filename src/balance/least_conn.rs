//! Least connections: the backend with the fewest requests in flight, per unit of weight.
//!
//! A request counts until its response body ends, so a backend streaming a long download is
//! busy. The scan starts at a rotating offset so that ties (all idle, as with sequential
//! requests) are shared evenly instead of always falling on the first backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{set::BackendSet, strategy::PickTrace};

/// Least-connections state: the rotating tie-break offset.
#[derive(Debug, Default)]
pub struct LeastConn {
    offset: AtomicUsize,
}

impl LeastConn {
    /// The index of the least-loaded backend; `in_flight / weight` compared exactly by
    /// cross-multiplying.
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        let eps = &set.endpoints;
        let n = eps.len();
        let start = self.offset.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = (
            eps[start].in_flight() as u64,
            u64::from(eps[start].weight()),
        );
        for k in 1..n {
            let i = (start + k) % n;
            let load = (eps[i].in_flight() as u64, u64::from(eps[i].weight()));
            if load.0 * best_load.1 < best_load.0 * load.1 {
                best = i;
                best_load = load;
            }
        }
        trace.sample(best, best_load.0 as f64 / best_load.1 as f64);
        best
    }
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
