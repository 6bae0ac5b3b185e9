//! Per-backend shared state: what many requests touch at once.
//!
//! One [`Endpoint`] per configured backend, shared by `Arc` between the balancer, the
//! forwarder, the health checker and the admin routes: its identity ([`Backend`]), its load
//! (in flight, counters, the latency estimate) and its [`Availability`]. Counters are
//! atomics; the latency estimate and the availability history each have their own small lock. Nothing here is shared
//! between backends, so two requests to different backends never contend.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{
    adaptive::AdaptiveConfig,
    atomic_instant::AtomicInstant,
    availability::Availability,
    backend::{Backend, BackendId},
    ewma::{PeakEwma, Reading},
    slow_start::{SlowStart, Thinning},
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
    /// Failures in a row (passive outlier detection reads it).
    consecutive_failures: AtomicU32,
    ewma: PeakEwma,
    tuning: AdaptiveConfig,
    /// In service or not, and why: health, drain, ejection, their history.
    pub availability: Availability,
    /// The backend's last load report, from a `prequal` probe.
    pub probe: ProbeSlot,
    /// The ramp a returning backend's share follows, if configured.
    slow_start: Option<SlowStart>,
    /// Round robin's thinning of this backend's turns while it warms up.
    pub thinning: Thinning,
}

/// The last load report a probe brought back (requests in flight and latency, as the backend
/// itself counts them), kept in atomics so the picking path takes no lock. A report is
/// replaced field by field: a read racing a write may mix two recent reports, which only
/// blurs numbers that are already estimates.
#[derive(Debug, Default)]
pub struct ProbeSlot {
    rif: AtomicU32,
    latency_us: AtomicU64,
    /// When the report arrived; unset: never.
    received: AtomicInstant,
    /// Picks that used this report (each adds one to its `rif`).
    uses: AtomicU32,
    /// A probe is on its way (one at a time per backend).
    pending: std::sync::atomic::AtomicBool,
}

/// A probe report as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeReading {
    /// Requests in flight in the backend, plus the picks made on this report.
    pub rif: u32,
    /// The backend's recent latency, seconds.
    pub latency: f64,
    /// The report's age.
    pub age: Duration,
    /// Picks made on it.
    pub uses: u32,
}

impl ProbeSlot {
    /// Stores a report that arrived at `at`.
    pub fn store(&self, rif: u32, latency_us: u64, at: Instant) {
        self.rif.store(rif, Ordering::Relaxed);
        self.latency_us.store(latency_us, Ordering::Relaxed);
        self.uses.store(0, Ordering::Relaxed);
        self.received.store(at);
    }

    /// The report as of `now`, `None` if none ever arrived.
    pub fn read(&self, now: Instant) -> Option<ProbeReading> {
        let received = self.received.load()?;
        Some(ProbeReading {
            rif: self.rif.load(Ordering::Relaxed),
            latency: self.latency_us.load(Ordering::Relaxed) as f64 / 1e6,
            age: now.saturating_duration_since(received),
            uses: self.uses.load(Ordering::Relaxed),
        })
    }

    /// Notes a pick made on this report: one more request in flight there.
    pub fn used(&self) {
        // Saturating: a report of u32::MAX must not wrap to the coldest backend of all.
        let _ = self
            .rif
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_add(1))
            });
        self.uses.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims the right to send the next probe; `false` while one is on its way.
    pub fn begin(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// The probe claimed with [`ProbeSlot::begin`] has ended (answered or not).
    pub fn end(&self) {
        self.pending.store(false, Ordering::Release);
    }
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
            consecutive_failures: AtomicU32::new(0),
            ewma: PeakEwma::forgetting(tuning.default_rtt, tuning.decay, tuning.probe_interval),
            tuning: tuning.clone(),
            availability: Availability::default(),
            probe: ProbeSlot::default(),
            slow_start: None,
            thinning: Thinning::default(),
        }
    }

    /// The same endpoint with a slow-start ramp for when it returns to service.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// Its weight factor now: below 1.0 while it warms up after returning to service (see
    /// [`slow_start`](super::slow_start)). Reads the clock only while a ramp runs.
    pub fn slow_start_factor(&self) -> f64 {
        match self.slow_start {
            Some(_) if self.availability.is_returning() => {
                self.slow_start_factor_at(Instant::now())
            }
            _ => 1.0,
        }
    }

    /// [`Endpoint::slow_start_factor`] at a given time (tests drive the clock).
    pub fn slow_start_factor_at(&self, now: Instant) -> f64 {
        let (Some(ramp), Some(returned)) = (self.slow_start, self.availability.returned_at())
        else {
            return 1.0;
        };
        let factor = ramp.factor(now.saturating_duration_since(returned));
        if factor >= 1.0 {
            self.availability.settled(returned);
        }
        factor
    }

    /// Whether a slow-start ramp may be running (no clock read).
    pub fn is_warming(&self) -> bool {
        self.slow_start.is_some() && self.availability.is_returning()
    }

    /// Its weight times its slow-start factor: what weighted strategies divide load by.
    pub fn effective_weight(&self) -> f64 {
        f64::from(self.weight()) * self.slow_start_factor()
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

    /// Failures in a row of the requests this replica sent (0 after a success).
    pub fn failure_streak(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The latency estimate now and the age of its last sample.
    pub fn ewma_reading(&self, now: Instant) -> Reading {
        self.ewma.read(now)
    }

    /// The adaptive strategy's tuning this endpoint was built with.
    pub fn tuning(&self) -> &AdaptiveConfig {
        &self.tuning
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
        self.availability.in_service()
    }

    /// Whether the health checker currently counts this backend as up.
    pub fn is_up(&self) -> bool {
        self.availability.is_up()
    }

    /// Records a health transition. A backend that comes back starts from the default RTT:
    /// its old estimate describes a process that no longer exists.
    pub fn set_up(&self, up: bool, cause: String) {
        if up {
            self.ewma.reset(self.tuning.default_rtt);
        }
        self.availability.set_up(up, cause);
    }

    /// Ends an ejection; the failure streak starts again from zero.
    pub fn uneject(&self, cause: String) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.availability.uneject(cause);
    }

    /// Takes over what an older endpoint for the same backend knew (a config reload): health,
    /// drain, latency estimate, counters and transitions. Its in-flight requests stay counted
    /// on the old endpoint until they finish.
    pub fn inherit(&self, old: &Endpoint) {
        self.availability.inherit(&old.availability);
        self.ewma.copy_from(&old.ewma);
        self.requests.store(old.requests(), Ordering::Relaxed);
        self.failures.store(old.failures(), Ordering::Relaxed);
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
