//! Least connections: the backend with the fewest requests in flight, per unit of weight.
//!
//! A request counts until its response body ends, so a backend streaming a long download is
//! busy. The scan starts at a rotating offset so that ties (all idle, as with sequential
//! requests) are shared evenly instead of always falling on the first backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendSet, PickTrace};

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
        let mut best_load = (eps[start].in_flight() as u64, u64::from(eps[start].weight));
        for k in 1..n {
            let i = (start + k) % n;
            let load = (eps[i].in_flight() as u64, u64::from(eps[i].weight));
            if load.0 * best_load.1 < best_load.0 * load.1 {
                best = i;
                best_load = load;
            }
        }
        trace.sample(best, best_load.0 as f64 / best_load.1 as f64);
        best
    }
}
