//! Sticky: client-IP affinity by weighted rendezvous hashing.
//!
//! Each backend scores `weight / -ln(u)`, with `u` in (0, 1) a hash of the client address and
//! the backend's name; the highest score wins (Thaler and Ravishankar's highest random weight,
//! weighted as in Schindelhauer and Schomaker). When a backend leaves the set only the clients
//! it was winning move, unlike `hash % n`, which remaps almost everyone. The hash is stable
//! across restarts, so clients keep their backend when `alb` restarts too.

use std::net::IpAddr;

use super::{backend::mix64, endpoint::Endpoint, set::BackendSet, strategy::PickTrace};

/// Sticky strategy; stateless, all state is in the hash.
#[derive(Debug, Default)]
pub struct Sticky;

impl Sticky {
    /// The backend this client maps to among the current set. `trace` gets the client's
    /// *home*: the winner among every known backend, healthy or not. Choosing it is a
    /// sticky hit; choosing another (because the home is out of service) is a remap.
    pub fn pick(&self, set: &BackendSet, client: Option<IpAddr>, trace: &mut PickTrace) -> usize {
        let key = client.map_or(0, ip_key);
        let best = winner(key, &set.endpoints, set.uniform_weights);
        let score = rendezvous_score(
            key,
            set.endpoints[best].backend.hash_seed,
            set.endpoints[best].effective_weight(),
        );
        trace.sample(best, score);
        // With every known backend in service, the home is the winner: skip the second scan.
        let home = if set.all_in_service() {
            set.endpoints[best].id()
        } else {
            set.known[winner(key, &set.known, set.uniform_weights)].id()
        };
        trace.sticky_home = Some(home);
        best
    }
}

/// Index of the highest-scoring endpoint (the list is never empty). With equal weights
/// the score is monotonic in the hash, so hashes are compared directly (no logarithm). A
/// backend in slow start scores with its effective weight, so its clients return to it
/// gradually.
fn winner(key: u64, endpoints: &[std::sync::Arc<Endpoint>], uniform_weights: bool) -> usize {
    if uniform_weights && !endpoints.iter().any(|e| e.is_warming()) {
        let mut best = 0;
        let mut best_hash = 0u64;
        for (i, ep) in endpoints.iter().enumerate() {
            let h = mix64(key ^ ep.backend.hash_seed);
            if h >= best_hash {
                best = i;
                best_hash = h;
            }
        }
        return best;
    }
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, ep) in endpoints.iter().enumerate() {
        let score = rendezvous_score(key, ep.backend.hash_seed, ep.effective_weight());
        if score > best_score {
            best = i;
            best_score = score;
        }
    }
    best
}

/// A client address folded to 64 bits.
fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix64(u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            mix64((bits as u64) ^ mix64((bits >> 64) as u64))
        }
    }
}

/// The weighted rendezvous score of one (client, backend) pair.
pub fn rendezvous_score(client_key: u64, backend_seed: u64, weight: f64) -> f64 {
    let h = mix64(client_key ^ backend_seed);
    // The top 53 bits; with equal weights, ordering by `h` orders by score.
    // 53 random bits into (0, 1): never 0, so the logarithm is finite.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    fn client(i: u32) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + i)))
    }

    #[test]
    fn a_client_keeps_its_backend() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        for i in 0..50 {
            let first = Sticky.pick(&set, client(i), &mut PickTrace::default());
            for _ in 0..3 {
                assert_eq!(
                    Sticky.pick(&set, client(i), &mut PickTrace::default()),
                    first
                );
            }
        }
    }

    #[test]
    fn only_the_missing_backends_clients_move() {
        let eps = endpoints(&[1, 1, 1]);
        let all = set_of(&eps, &eps);
        let without_1 = set_of(&[eps[0].clone(), eps[2].clone()], &eps);
        let mut moved = 0;
        for i in 0..300 {
            let before =
                all.endpoints[Sticky.pick(&all, client(i), &mut PickTrace::default())].id();
            let mut trace = PickTrace::default();
            let after = without_1.endpoints[Sticky.pick(&without_1, client(i), &mut trace)].id();
            // The home is the same as with everyone in service: a remap, not a new home.
            assert_eq!(trace.sticky_home, Some(before));
            if before == eps[1].id() {
                moved += 1;
            } else {
                assert_eq!(before, after, "client {i} moved without cause");
            }
        }
        // About a third of the clients lived on the missing backend.
        assert!((60..=140).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_shift_the_shares() {
        let eps = endpoints(&[3, 1]);
        let set = set_of(&eps, &eps);
        let heavy = (0..4000)
            .filter(|i| Sticky.pick(&set, client(*i), &mut PickTrace::default()) == 0)
            .count();
        // Weighted rendezvous gives shares proportional to the weights: 3/4.
        assert!((2800..=3200).contains(&heavy), "{heavy}");
    }
}
