//! The backend set: one immutable snapshot of who is in service, read by every pick.
//!
//! The discovery task builds a new [`BackendSet`] on every change and publishes it with one
//! pointer swap; requests read it without a lock. A set knows the whole roster (every
//! configured backend, in service or not, in config order) as well as the members in
//! service, so anything resolved against a set (sticky homes, the names in a decision
//! record) is exact for the moment the set was current, whatever has happened since.

use std::sync::Arc;

use super::{backend::BackendId, endpoint::Endpoint, round_robin};

/// The backends in service, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// Endpoints in service, in roster order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Every known endpoint, in service or not, in roster order (sticky's homes).
    pub known: Vec<Arc<Endpoint>>,
    /// The smooth weighted round-robin cycle over `endpoints`.
    pub cycle: Vec<u32>,
    /// Every known endpoint has the same weight (sticky can then skip logarithms).
    pub uniform_weights: bool,
}

impl BackendSet {
    /// A snapshot of `endpoints` (in service) out of `known` (all).
    pub fn new(endpoints: Vec<Arc<Endpoint>>, known: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight()).collect();
        let uniform_weights = known.windows(2).all(|w| w[0].weight() == w[1].weight());
        BackendSet {
            cycle: round_robin::smooth_cycle(&weights),
            endpoints,
            known,
            uniform_weights,
        }
    }

    /// Whether every known backend is in service.
    pub fn all_in_service(&self) -> bool {
        self.endpoints.len() == self.known.len()
    }

    /// Known backends that were out of service in this snapshot, in roster order.
    pub fn excluded(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.known
            .iter()
            .filter(|k| !self.endpoints.iter().any(|e| e.id() == k.id()))
    }

    /// The known endpoint with this id.
    pub fn get(&self, id: BackendId) -> Option<&Arc<Endpoint>> {
        self.known.iter().find(|e| e.id() == id)
    }

    /// The name of backend `id` in this snapshot (`#id` if it was not part of it, which a
    /// record made from this set never asks for).
    pub fn name(&self, id: BackendId) -> String {
        self.get(id)
            .map_or_else(|| format!("#{id}"), |e| e.name().to_owned())
    }
}
