//! The backend set as a `tower::discover` stream.
//!
//! The health checker (and the initial config) send `Change::Insert` and `Change::Remove`
//! through an unbounded channel; [`DiscoverStream`] is its receiving end, which tower's
//! blanket impl turns into a [`Discover`](tower::discover::Discover). Unbounded is safe here:
//! changes are bounded by health transitions, a few per backend per interval.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::Stream;
use tokio::sync::mpsc;
use tower::discover::Change;

use super::{backend::BackendId, endpoint::Endpoint};

/// One change to the backend set.
pub type BackendChange = Change<BackendId, Arc<Endpoint>>;

/// The sending half: whoever decides which backends are in service.
#[derive(Debug, Clone)]
pub struct DiscoverSender {
    tx: mpsc::UnboundedSender<BackendChange>,
}

/// The receiving half, a `Discover` of endpoints.
#[derive(Debug)]
pub struct DiscoverStream {
    rx: mpsc::UnboundedReceiver<BackendChange>,
}

/// A connected sender and stream.
pub fn channel() -> (DiscoverSender, DiscoverStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    (DiscoverSender { tx }, DiscoverStream { rx })
}

impl DiscoverSender {
    /// Puts a backend in service.
    pub fn insert(&self, endpoint: Arc<Endpoint>) {
        // The balancer lives as long as the process; a closed channel means shutdown.
        let _ = self.tx.send(Change::Insert(endpoint.id(), endpoint));
    }

    /// Takes a backend out of service.
    pub fn remove(&self, id: BackendId) {
        let _ = self.tx.send(Change::Remove(id));
    }

    /// Puts a backend in or out of service according to its state (healthy, not ejected,
    /// not drained): the one place that decides membership.
    pub fn sync(&self, endpoint: &Arc<Endpoint>) {
        if endpoint.in_service() {
            self.insert(endpoint.clone());
        } else {
            self.remove(endpoint.id());
        }
    }
}

impl Stream for DiscoverStream {
    type Item = Result<BackendChange, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| change.map(Ok))
    }
}
