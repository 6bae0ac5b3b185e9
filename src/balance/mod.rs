//! The balancer core: which backend gets this request.
//!
//! ```text
//!   Discover stream ──► apply changes ──► ArcSwap<BackendSet> (immutable snapshot)
//!   (health, outlier, admin)                       │ load, no lock
//!   Balancer::pick(snapshot, client) ──► Strategy::pick ──► index into snapshot.endpoints
//! ```
//!
//! Identity ([`backend`]), per-backend state ([`endpoint`], [`ewma`], [`availability`]), the snapshot
//! ([`set`]), selection ([`strategy`] and one file per algorithm), discovery ([`discover`]),
//! overflow past `max_connections` ([`overflow`]) and shadow strategies ([`shadow`]) are kept
//! apart, as in pingora-load-balancing. This module is the bottom of the crate: it imports
//! nothing but the metrics catalogue ([`crate::telemetry`]), so the forwarder, the routing
//! service, the edge layers, the config file and the admin routes all build on it and it on
//! none of them.

pub mod adaptive;
pub mod atomic_instant;
pub mod availability;
pub mod backend;
pub mod discover;
pub mod endpoint;
pub mod ewma;
pub mod least_conn;
pub mod overflow;
pub mod prequal;
pub mod round_robin;
pub mod set;
pub mod shadow;
pub mod slow_start;
pub mod sticky;
pub mod strategy;

use std::{collections::HashSet, fmt, net::IpAddr, pin::Pin, sync::Arc};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::Request;
use tower::discover::{Change, Discover};

pub use backend::{Backend, BackendId, BackendIds, BackendSpec};
pub use endpoint::Endpoint;
pub use set::BackendSet;
pub use strategy::{PickTrace, Strategy, StrategyKind};

/// The current backend set and the strategy that picks from it. Shared by `Arc`; a pick
/// reads the snapshot without a lock, and only the discovery task writes it.
#[derive(Debug)]
pub struct Balancer {
    set: ArcSwap<BackendSet>,
    strategy: Strategy,
}

impl Balancer {
    /// A balancer over `roster` (every backend it may ever serve, in the order strategies
    /// see them), with membership fed by `discover`. Changes already waiting in the stream
    /// (the initial members) are applied before this returns, so the first request sees
    /// them; later ones are applied by a background task, which ends with the balancer.
    ///
    /// An `Insert` of an endpoint not in the roster appends it (discovery may find new
    /// backends); a `Remove` takes a backend out of service but keeps it known, so sticky
    /// homes and decision records can still name it.
    pub fn new<D>(strategy: Strategy, roster: Vec<Arc<Endpoint>>, discover: D) -> Arc<Self>
    where
        D: Discover<Key = BackendId, Service = Arc<Endpoint>> + Send + Unpin + 'static,
        D::Error: fmt::Display,
    {
        let mut members = Members {
            roster,
            in_service: HashSet::new(),
        };
        let balancer = Arc::new(Balancer {
            set: ArcSwap::from_pointee(members.snapshot()),
            strategy,
        });
        let mut discover = discover;
        let mut changed = false;
        while let Some(Some(change)) = poll_discover(&mut discover).now_or_never() {
            changed |= members.apply(change);
        }
        if changed {
            balancer.set.store(Arc::new(members.snapshot()));
        }
        let weak = Arc::downgrade(&balancer);
        tokio::spawn(async move {
            while let Some(change) = poll_discover(&mut discover).await {
                let Some(balancer) = weak.upgrade() else {
                    return;
                };
                if members.apply(change) {
                    balancer.set.store(Arc::new(members.snapshot()));
                }
            }
        });
        balancer
    }

    /// The current snapshot. Holding it keeps its endpoints alive; it never changes.
    pub fn snapshot(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The strategy's choice from `set` for `client`, as an index into `set.endpoints`, with
    /// what it compared; `None` when nothing is in service.
    pub fn pick(&self, set: &BackendSet, client: Option<IpAddr>) -> Option<(usize, PickTrace)> {
        if set.endpoints.is_empty() {
            return None;
        }
        let mut trace = PickTrace::default();
        let index = self.strategy.pick(set, client, &mut trace);
        let chosen = &set.endpoints[index];
        if chosen.is_warming() {
            trace.slow_start = Some(chosen.slow_start_factor()).filter(|f| *f < 1.0);
        }
        Some((index, trace))
    }

    /// A backend of `set` other than `failed`, with room under `max_connections`, for a
    /// retry: the strategy's choice if it qualifies within a few tries, else the least busy
    /// one that does; `None` if there is none. The retry picks from the request's own
    /// snapshot, so its decision record can name whatever it chooses.
    pub fn pick_other(
        &self,
        set: &BackendSet,
        failed: BackendId,
        client: Option<IpAddr>,
        max_connections: Option<usize>,
    ) -> Option<Arc<Endpoint>> {
        let fits = |e: &Endpoint| {
            e.id() != failed && max_connections.is_none_or(|max| e.in_flight() < max)
        };
        for _ in 0..3 {
            let (index, _) = self.pick(set, client)?;
            if fits(&set.endpoints[index]) {
                return Some(set.endpoints[index].clone());
            }
        }
        set.endpoints
            .iter()
            .filter(|e| fits(e))
            .min_by_key(|e| e.in_flight())
            .cloned()
    }
}

/// The discovery task's view: the roster and who in it is in service.
#[derive(Debug)]
struct Members {
    roster: Vec<Arc<Endpoint>>,
    in_service: HashSet<BackendId>,
}

impl Members {
    /// Applies one change; returns whether membership changed.
    fn apply(&mut self, change: Change<BackendId, Arc<Endpoint>>) -> bool {
        match change {
            Change::Insert(id, ep) => {
                match self.roster.iter_mut().find(|e| e.id() == id) {
                    Some(known) => *known = ep,
                    None => self.roster.push(ep),
                }
                self.in_service.insert(id)
            }
            Change::Remove(id) => self.in_service.remove(&id),
        }
    }

    fn snapshot(&self) -> BackendSet {
        let endpoints = self
            .roster
            .iter()
            .filter(|e| self.in_service.contains(&e.id()))
            .cloned()
            .collect();
        BackendSet::new(endpoints, self.roster.clone())
    }
}

async fn poll_discover<D>(discover: &mut D) -> Option<Change<D::Key, D::Service>>
where
    D: Discover + Unpin,
    D::Error: fmt::Display,
{
    match futures_util::future::poll_fn(|cx| Pin::new(&mut *discover).poll_discover(cx)).await {
        Some(Ok(change)) => Some(change),
        Some(Err(e)) => {
            tracing::error!(error = %e, "backend discovery failed; keeping the last backend set");
            None
        }
        None => None,
    }
}

/// A request with the backend chosen for it: what the forwarder receives.
#[derive(Debug)]
pub struct Routed<B> {
    /// The client's request.
    pub request: Request<B>,
    /// Where it goes.
    pub endpoint: Arc<Endpoint>,
}

/// Endpoints and sets for the unit tests of the core.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use super::{adaptive::AdaptiveConfig, Backend, BackendIds, BackendSet, BackendSpec, Endpoint};

    /// Endpoints `127.0.0.1:9000`, `:9001`... with these weights, ids 0, 1, 2...
    pub fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        endpoints_tuned(weights, &AdaptiveConfig::DEFAULT)
    }

    /// [`endpoints`] with the adaptive tuning given.
    pub fn endpoints_tuned(weights: &[u32], tuning: &AdaptiveConfig) -> Vec<Arc<Endpoint>> {
        let ids = BackendIds::new();
        weights
            .iter()
            .enumerate()
            .map(|(i, weight)| {
                let spec = BackendSpec {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    weight: *weight,
                    dns_name: None,
                };
                let backend = Backend::new(ids.id_of(&spec.authority), &spec);
                Arc::new(Endpoint::new(backend, tuning))
            })
            .collect()
    }

    /// [`endpoints`] with a slow-start ramp.
    pub fn endpoints_ramped(
        weights: &[u32],
        ramp: super::slow_start::SlowStart,
    ) -> Vec<Arc<Endpoint>> {
        endpoints(weights)
            .into_iter()
            .map(|ep| {
                let ep = Arc::into_inner(ep).expect("a fresh endpoint has one owner");
                Arc::new(ep.with_slow_start(Some(ramp)))
            })
            .collect()
    }

    /// A snapshot with `in_service` out of `known`.
    pub fn set_of(in_service: &[Arc<Endpoint>], known: &[Arc<Endpoint>]) -> BackendSet {
        BackendSet::new(in_service.to_vec(), known.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::endpoints;

    #[tokio::test]
    async fn membership_follows_discovery_and_the_roster_stays_whole() {
        let eps = endpoints(&[1, 1, 1]);
        let (changes, stream) = discover::channel();
        changes.insert(eps[0].clone());
        changes.insert(eps[2].clone());
        let balancer = Balancer::new(Strategy::new(StrategyKind::RoundRobin), eps.clone(), stream);
        let set = balancer.snapshot();
        let ids = |v: &[Arc<Endpoint>]| v.iter().map(|e| e.id().get()).collect::<Vec<_>>();
        assert_eq!(ids(&set.endpoints), [0, 2]);
        // Backend 1 was never in service, yet it is known by name.
        assert_eq!(ids(&set.known), [0, 1, 2]);
        assert_eq!(set.name(eps[1].id()), "127.0.0.1:9001");
        assert_eq!(
            set.excluded().map(|e| e.id()).collect::<Vec<_>>(),
            [eps[1].id()]
        );

        changes.remove(eps[0].id());
        changes.insert(eps[1].clone());
        let updated = async {
            loop {
                if ids(&balancer.snapshot().endpoints) == [1, 2] {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), updated)
            .await
            .expect("the discovery task applies changes");
    }

    #[tokio::test]
    async fn no_pick_from_an_empty_set_and_retries_go_elsewhere() {
        let eps = endpoints(&[1, 1]);
        let (changes, stream) = discover::channel();
        let balancer = Balancer::new(Strategy::new(StrategyKind::RoundRobin), eps.clone(), stream);
        assert!(balancer.pick(&balancer.snapshot(), None).is_none());
        assert!(balancer
            .pick_other(&balancer.snapshot(), eps[0].id(), None, None)
            .is_none());
        drop(changes);

        let (changes, stream) = discover::channel();
        changes.insert(eps[0].clone());
        changes.insert(eps[1].clone());
        let balancer = Balancer::new(Strategy::new(StrategyKind::RoundRobin), eps.clone(), stream);
        for _ in 0..10 {
            let other = balancer
                .pick_other(&balancer.snapshot(), eps[0].id(), None, None)
                .unwrap();
            assert_eq!(other.id(), eps[1].id());
        }
        // Backend 1 is at max_connections: no retry target.
        let _busy = eps[1].start();
        assert!(balancer
            .pick_other(&balancer.snapshot(), eps[0].id(), None, Some(1))
            .is_none());
    }
}
