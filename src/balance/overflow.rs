//! Overflow past `max_connections`: when the strategy's choice is full, the least busy
//! backend with room takes the request; when every backend is full, nobody does.
//!
//! HAProxy's `maxconn` per server queues the request instead; ALB refuses at once (the
//! caller answers `503` with `Retry-After`), since a queue in front of saturated backends
//! only adds latency and hides the overload from the client and from autoscalers.

use super::{backend::BackendId, set::BackendSet};

/// What `max_connections` does to a pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overflow {
    /// The choice has room: keep it.
    Fits,
    /// The choice is full: take `to` (an index into `set.endpoints`) instead.
    Spilled {
        /// The least busy backend with room.
        to: usize,
        /// Every backend that was full.
        full: Box<[BackendId]>,
    },
    /// Every backend is full.
    AllFull {
        /// Every backend, all full.
        full: Box<[BackendId]>,
    },
}

/// Applies `max` requests in flight per backend to the strategy's choice `chosen` (an index
/// into the non-empty `set.endpoints`). Allocates only when the choice is full.
pub fn check(set: &BackendSet, chosen: usize, max: usize) -> Overflow {
    if set.endpoints[chosen].in_flight() < max {
        return Overflow::Fits;
    }
    let full: Box<[BackendId]> = set
        .endpoints
        .iter()
        .filter(|e| e.in_flight() >= max)
        .map(|e| e.id())
        .collect();
    let roomiest = set
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.in_flight() < max)
        .min_by_key(|(_, e)| e.in_flight());
    match roomiest {
        Some((to, _)) => Overflow::Spilled { to, full },
        None => Overflow::AllFull { full },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    #[test]
    fn a_choice_with_room_is_kept() {
        let eps = endpoints(&[1, 1]);
        let set = set_of(&eps, &eps);
        let _one = eps[0].start();
        assert_eq!(check(&set, 0, 2), Overflow::Fits);
    }

    #[test]
    fn a_full_choice_spills_to_the_least_busy_with_room() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        let _a = [eps[0].start(), eps[0].start()];
        let _b = eps[1].start();
        assert_eq!(
            check(&set, 0, 2),
            Overflow::Spilled {
                to: 2,
                full: vec![eps[0].id()].into()
            }
        );
    }

    #[test]
    fn all_full_is_refused() {
        let eps = endpoints(&[1, 1]);
        let set = set_of(&eps, &eps);
        let _a = eps[0].start();
        let _b = eps[1].start();
        assert_eq!(
            check(&set, 1, 1),
            Overflow::AllFull {
                full: vec![eps[0].id(), eps[1].id()].into()
            }
        );
    }
}
