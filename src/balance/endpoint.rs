//! Per-backend shared state: what many requests touch at once.
//!
//! One [`Endpoint`] per configured backend, shared by `Arc` between the balancer, the
//! forwarder, the health checker and the admin routes. Counters are atomics; the latency
//! estimate and the health record each have their own small lock. Nothing here is shared
//! between backends, so two requests to different backends never contend.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    adaptive::AdaptiveConfig,
    backend::{Backend, BackendId},
    ewma::PeakEwma,
};
use crate::telemetry::EndpointMetrics;

/// A backend and everything the balancer knows about it: its identity ([`Backend`]) and
/// the state requests, health checks and outlier detection update.
#[derive(Debug)]
pub struct Endpoint {
    /// Who it is: id, name, weight.
    pub backend: Backend,
    /// This backend's metric handles.
    pub metrics: EndpointMetrics,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    up: AtomicBool,
    drained: AtomicBool,
    /// Passive outlier detection: failures in a row, times ejected, ejected or not.
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected: AtomicBool,
    ewma: PeakEwma,
    tuning: AdaptiveConfig,
    transitions: Mutex<VecDeque<Transition>>,
}

/// Health transitions kept per backend.
pub const TRANSITIONS_KEPT: usize = 32;

/// A change of state and why it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// In service after the change, or not.
    pub up: bool,
    /// What decided it: `health_check` (later also ejection, drain, reload).
    pub source: &'static str,
    /// A human-readable cause.
    pub cause: String,
}

impl Endpoint {
    /// Builds the state of one backend; it starts up, as in the original project.
    pub fn new(backend: Backend, tuning: &AdaptiveConfig) -> Self {
        Endpoint {
            metrics: EndpointMetrics::new(backend.name()),
            backend,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            up: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ewma: PeakEwma::new(tuning.default_rtt, tuning.decay),
            tuning: tuning.clone(),
            transitions: Mutex::new(VecDeque::with_capacity(TRANSITIONS_KEPT)),
        }
    }

    /// `host:port`.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The backend's stable id.
    pub fn id(&self) -> BackendId {
        self.backend.id
    }

    /// Relative share of traffic.
    pub fn weight(&self) -> u32 {
        self.backend.weight
    }

    /// Marks a request as started; it stays in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(Instant::now())
    }

    /// [`Endpoint::start`] for a request handed over at `at` (saves a clock read when the
    /// caller has just read it).
    pub fn start_at(self: &Arc<Self>, at: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: at,
        }
    }

    /// Requests sent and not yet finished (response body included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that failed (5xx, connect error, timeout) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency estimate now, in seconds.
    pub fn ewma_secs(&self, now: Instant) -> f64 {
        self.ewma.estimate(now)
    }

    /// Records how a request went; returns the failures in a row so far (0 after a success).
    /// A failure is charged at least the failure penalty, so a backend that fails fast does not
    /// look fast (ingress-nginx #5540, linkerd2-proxy #4537).
    pub fn record(&self, latency: Duration, failed: bool, now: Instant) -> u32 {
        let sample = if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            latency.max(self.tuning.failure_penalty)
        } else {
            latency
        };
        self.ewma.observe(sample, now);
        if failed {
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            0
        }
    }

    /// Whether the balancer may send it new requests: healthy, not ejected, not drained.
    pub fn in_service(&self) -> bool {
        self.is_up() && !self.is_ejected() && !self.is_drained()
    }

    /// Whether an operator drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (no new requests; in-flight ones finish) or enables it.
    pub fn set_drained(&self, drained: bool) {
        if self.drained.swap(drained, Ordering::Relaxed) != drained {
            let cause = if drained {
                "drained by an operator (POST /backends/{id}/drain)"
            } else {
                "enabled by an operator (POST /backends/{id}/enable)"
            };
            self.note_transition(!drained && self.is_up(), "admin", cause.to_owned());
        }
    }

    /// Whether passive outlier detection has it ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejects it; returns how many times it has been ejected, this one included.
    pub fn eject(&self, cause: String) -> u32 {
        self.ejected.store(true, Ordering::Relaxed);
        self.note_transition(false, "outlier_detection", cause);
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends an ejection; the failure streak starts again from zero.
    pub fn uneject(&self, cause: String) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Relaxed);
        self.note_transition(self.is_up(), "outlier_detection", cause);
    }

    /// Takes over what an older endpoint for the same backend knew (a config reload): health,
    /// drain, latency estimate, counters and transitions. Its in-flight requests stay counted
    /// on the old endpoint until they finish.
    pub fn inherit(&self, old: &Endpoint) {
        self.up.store(old.is_up(), Ordering::Relaxed);
        self.drained.store(old.is_drained(), Ordering::Relaxed);
        self.ewma.copy_from(&old.ewma);
        self.requests.store(old.requests(), Ordering::Relaxed);
        self.failures.store(old.failures(), Ordering::Relaxed);
        *self.transitions.lock().unwrap_or_else(|e| e.into_inner()) =
            old.transitions().into_iter().collect();
    }

    /// Records a configuration reload in the timeline.
    pub fn note_reload(&self, cause: String) {
        self.note_transition(self.in_service(), "reload", cause);
    }

    /// Whether the health checker currently counts this backend as up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a health transition. A backend that comes back starts from the default RTT:
    /// its old estimate describes a process that no longer exists.
    pub fn set_up(&self, up: bool, cause: String) {
        self.up.store(up, Ordering::Relaxed);
        if up {
            self.ewma.reset(self.tuning.default_rtt);
        }
        self.note_transition(up, "health_check", cause);
    }

    fn note_transition(&self, up: bool, source: &'static str, cause: String) {
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut log = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == TRANSITIONS_KEPT {
            log.pop_front();
        }
        log.push_back(Transition {
            at_unix,
            up,
            source,
            cause,
        });
    }

    /// The last transition, if any.
    pub fn last_transition(&self) -> Option<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The recent transitions, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// A request in flight on one endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// When the request was handed to the forwarder.
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
