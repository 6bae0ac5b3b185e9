//! Routing decisions: a record for every request, a bounded log of the latest, and the
//! explanation a client can ask for.
//!
//! Recording is always on, so it must cost almost nothing: a [`DecisionRecord`] is a small
//! value (ids and numbers; one reference count for its backend set; no allocation unless
//! backends were at `max_connections` or a request id is noted; names are resolved only
//! when someone reads), written once when the response headers are known, or when the
//! client leaves before them (status 499), into a ring of [`DecisionLog::CAPACITY`] slots.
//! Each slot has its own lock and writers spread over the slots through one atomic cursor,
//! so requests never wait on each other unless the ring has wrapped exactly onto a slot
//! being read. The ring's size is fixed; after a reload it keeps older backend sets alive
//! until newer decisions overwrite the records that hold them.
//!
//! A record names backends by their stable [`BackendId`] and holds the [`BackendSet`]
//! snapshot the decision was made from (one reference count), so its names and exclusions
//! are those of that moment, whatever reloads and health changes happened since. The reasons
//! for an exclusion (unhealthy and why, drained, ejected) are read from the endpoint when the
//! record is shown.

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::balance::{
    adaptive::Rule, prequal::PrequalPick, BackendId, BackendSet, Endpoint, PickTrace, StrategyKind,
};

/// What routing did with a request, for the layers outside it (access log, tracing): a
/// response extension, added only when one of them is on.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision's id in the log (`/decisions`).
    pub decision_id: u64,
    /// The backend the last attempt went to (its answer may be ALB's `502` or `504` for
    /// it); `None` when no backend was tried.
    pub backend: Option<Arc<Endpoint>>,
    /// The strategy that chose it.
    pub strategy: StrategyKind,
    /// The request went to a second backend after the first failed.
    pub retried: bool,
    /// This request's failure ejected its backend (passive outlier detection).
    pub ejected: bool,
    /// From handing the request to the backend to its response headers.
    pub upstream: std::time::Duration,
    /// The strategy's reason, in the words of `x-alb-decision`'s `why=` (only when tracing
    /// asks for it: building the text costs an allocation).
    pub why: Option<String>,
    /// The route that matched, when the request came through the router.
    pub route: Option<Arc<str>>,
    /// The pool that decided.
    pub pool: Option<Arc<str>>,
}

/// The route a request matched, put in its extensions by the router for the pool's
/// routing to note in the decision record.
#[derive(Debug, Clone)]
pub struct RouteName(pub Arc<str>);

/// A fault injected into one request, noted in its decision record (injected by
/// `layer::fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Held back this long before routing.
    Delay(std::time::Duration),
    /// Answered with this status without routing.
    Abort(StatusCode),
}

impl InjectedFault {
    /// The metric label.
    pub fn kind(self) -> &'static str {
        match self {
            InjectedFault::Delay(_) => "delay",
            InjectedFault::Abort(_) => "abort",
        }
    }

    /// As the `x-alb-fault` header writes it: `delay=100ms` or `abort=503`.
    pub fn header_text(self) -> String {
        match self {
            InjectedFault::Delay(d) => format!("delay={}ms", d.as_millis()),
            InjectedFault::Abort(s) => format!("abort={}", s.as_u16()),
        }
    }
}

/// A backend compared in a pick, with the load value the strategy compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The backend.
    pub backend: BackendId,
    /// The strategy's load measure (adaptive: cost in seconds; least_conn: in flight per
    /// weight; sticky: rendezvous score, higher wins; round_robin: position in the cycle).
    pub score: f64,
}

/// One request's routing decision and outcome.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// Sequence number, from 1.
    pub id: u64,
    /// Microseconds since the Unix epoch, at the decision.
    pub at_unix_us: u64,
    /// The client address the strategy saw (sticky and rate limits), if resolved.
    pub client: Option<IpAddr>,
    /// The strategy in use.
    pub strategy: StrategyKind,
    /// The backend set the decision was made from.
    pub set: Arc<BackendSet>,
    /// The backend chosen; `None` when none could be (all down or all full).
    pub chosen: Option<BackendId>,
    /// What the strategy compared (adaptive: the two sampled).
    pub sampled: [Option<Sampled>; 2],
    /// Backends passed over because they were at `max_connections` (empty, without an
    /// allocation, unless one was).
    pub full: Box<[BackendId]>,
    /// Sticky: the client's home backend, whether or not it was chosen.
    pub sticky_home: Option<BackendId>,
    /// Adaptive: the rule that decided.
    pub rule: Option<Rule>,
    /// Prequal: the numbers that decided.
    pub prequal: Option<PrequalPick>,
    /// The chosen backend's slow-start factor, while it was warming up.
    pub slow_start: Option<f64>,
    /// A fault injected into the request before routing (a delay; aborts are not routed).
    pub fault: Option<InjectedFault>,
    /// The route that matched, when the request came through the router.
    pub route: Option<Arc<str>>,
    /// The pool that decided.
    pub pool: Option<Arc<str>>,
    /// Shadow strategies' choices, by `StrategyKind::ALL` order (`None`: not evaluated).
    pub shadow: [Option<BackendId>; StrategyKind::ALL.len()],
    /// The backend a failed first attempt went to, if the request was retried.
    pub retried_from: Option<BackendId>,
    /// The request's `x-request-id`, if it had one.
    pub request_id: Option<HeaderValue>,
    /// Status sent to the client (0 until known).
    pub status: u16,
    /// A gRPC call's `grpc-status`, once known (from the answer's headers or trailers).
    pub grpc_status: Option<u32>,
    /// Time from decision to response headers, in microseconds.
    pub latency_us: u32,
}

impl DecisionRecord {
    /// A record for a decision made at `at` from `set`.
    pub fn new(
        strategy: StrategyKind,
        client: Option<IpAddr>,
        at: Instant,
        set: Arc<BackendSet>,
    ) -> Self {
        DecisionRecord {
            id: 0,
            at_unix_us: unix_micros(at),
            client,
            strategy,
            set,
            chosen: None,
            sampled: [None; 2],
            full: Box::default(),
            sticky_home: None,
            rule: None,
            prequal: None,
            slow_start: None,
            fault: None,
            route: None,
            pool: None,
            shadow: [None; StrategyKind::ALL.len()],
            retried_from: None,
            request_id: None,
            status: 0,
            grpc_status: None,
            latency_us: 0,
        }
    }

    /// Notes what the strategy compared (indices into `self.set.endpoints`).
    pub fn note_trace(&mut self, trace: &PickTrace) {
        for (slot, (index, score)) in self.sampled.iter_mut().zip(trace.sampled()) {
            *slot = Some(Sampled {
                backend: self.set.endpoints[*index].id(),
                score: *score,
            });
        }
        self.sticky_home = trace.sticky_home;
        self.rule = trace.rule;
        self.prequal = trace.prequal;
        self.slow_start = trace.slow_start;
    }

    /// The sampled candidates in use.
    pub fn sampled(&self) -> impl Iterator<Item = Sampled> + '_ {
        self.sampled.iter().flatten().copied()
    }

    /// Backends in service when the decision was made.
    pub fn healthy(&self) -> usize {
        self.set.endpoints.len()
    }

    /// The name of backend `id` as the decision's snapshot knew it.
    pub fn name(&self, id: BackendId) -> String {
        self.set.name(id)
    }
}

/// The latest decisions, in a fixed ring.
#[derive(Debug)]
pub struct DecisionLog {
    slots: Box<[Mutex<Option<DecisionRecord>>]>,
    next: AtomicU64,
}

impl DecisionLog {
    /// Decisions kept.
    pub const CAPACITY: usize = 4096;

    /// An empty log.
    pub fn new() -> Arc<Self> {
        Arc::new(DecisionLog {
            slots: (0..Self::CAPACITY).map(|_| Mutex::new(None)).collect(),
            next: AtomicU64::new(1),
        })
    }

    /// Stores a finished decision, giving it the next id. The record it replaces is dropped
    /// after the slot's lock is released.
    pub fn push(&self, mut record: DecisionRecord) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        record.id = id;
        let slot = (id as usize) % Self::CAPACITY;
        let replaced = self.slots[slot]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(record);
        drop(replaced);
        id
    }

    /// Notes a gRPC call's status on record `id`, known only when its trailers arrived
    /// (after the record was logged at the response headers); nothing if the ring moved on.
    pub fn note_grpc_status(&self, id: u64, code: u32) {
        let slot = (id as usize) % Self::CAPACITY;
        let mut record = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = record.as_mut().filter(|r| r.id == id) {
            record.grpc_status = Some(code);
        }
    }

    /// Decisions with an id above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<DecisionRecord> {
        let mut out: Vec<DecisionRecord> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|r| r.id > after)
                    .cloned()
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// The id the next decision will get, minus one: the newest stored so far.
    pub fn last_id(&self) -> u64 {
        self.next.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// Wall-clock microseconds for a monotonic instant, from one reading of both clocks taken
/// at the first call: one clock read per request instead of two (wall-clock steps after
/// start are not reflected, which a decision log can live with).
fn unix_micros(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (anchor, anchor_unix_us) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), unix)
    });
    let since = at.saturating_duration_since(anchor).as_micros() as u64;
    anchor_unix_us + since
}

/// A decision as the admin routes show it, with names resolved.
#[derive(Debug, Serialize)]
pub struct DecisionView {
    /// Sequence number.
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// The client.
    pub client: Option<String>,
    /// Strategy.
    pub strategy: &'static str,
    /// Chosen backend (`host:port`), if any.
    pub chosen: Option<String>,
    /// What the strategy compared.
    pub sampled: Vec<SampledView>,
    /// Healthy backends at the decision.
    pub healthy: usize,
    /// Backends not considered, with the reason.
    pub excluded: Vec<ExcludedView>,
    /// Sticky: `hit` (home chosen) or `remap` (home out of service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<&'static str>,
    /// The chosen backend's slow-start factor (its weight's share), while it warmed up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<f64>,
    /// A fault injected before routing, as `x-alb-fault` writes it (`delay=100ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The route that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The pool that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Shadow strategies' choices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowView>,
    /// The backend of a failed first attempt, when the request was retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_from: Option<String>,
    /// The request's `x-request-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Status sent.
    pub status: u16,
    /// A gRPC call's status: `{"code": 14, "name": "UNAVAILABLE"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcStatusView>,
    /// Time to response headers, ms.
    pub latency_ms: f64,
}

/// A gRPC status code and its name.
#[derive(Debug, Serialize)]
pub struct GrpcStatusView {
    /// The code (0 is OK).
    pub code: u32,
    /// Its name in the gRPC spec.
    pub name: &'static str,
}

/// One compared candidate.
#[derive(Debug, Serialize)]
pub struct SampledView {
    /// `host:port`.
    pub backend: String,
    /// The value compared.
    pub score: f64,
}

/// One excluded backend.
#[derive(Debug, Serialize)]
pub struct ExcludedView {
    /// `host:port`.
    pub backend: String,
    /// Why.
    pub reason: String,
}

/// One shadow strategy's choice.
#[derive(Debug, Serialize)]
pub struct ShadowView {
    /// The shadow strategy.
    pub strategy: &'static str,
    /// What it would have chosen.
    pub chosen: String,
    /// Whether that is what the active strategy chose.
    pub agrees: bool,
}

/// The reason an endpoint was out of the set, as best known now.
fn exclusion_reason(ep: &Endpoint) -> String {
    let last = ep
        .availability
        .last_transition()
        .map(|t| t.cause)
        .unwrap_or_default();
    if ep.availability.is_drained() {
        "drained".to_owned()
    } else if ep.availability.is_ejected() {
        format!("ejected: {last}")
    } else if ep.availability.is_pending() {
        format!("new, no health check passed yet: {last}")
    } else if !ep.is_up() {
        format!("unhealthy: {last}")
    } else {
        "out of service at the time (back in service since)".to_owned()
    }
}

impl DecisionView {
    /// Resolves a record's ids to names, against the snapshot it was made from.
    pub fn new(r: &DecisionRecord) -> Self {
        let mut excluded: Vec<ExcludedView> = r
            .set
            .excluded()
            .map(|ep| ExcludedView {
                backend: ep.name().to_owned(),
                reason: exclusion_reason(ep),
            })
            .collect();
        excluded.extend(r.full.iter().map(|id| ExcludedView {
            backend: r.name(*id),
            reason: "at max_connections".to_owned(),
        }));
        let shadow = StrategyKind::ALL
            .iter()
            .zip(r.shadow)
            .filter_map(|(kind, chosen)| {
                let chosen = chosen?;
                Some(ShadowView {
                    strategy: kind.as_str(),
                    chosen: r.name(chosen),
                    agrees: Some(chosen) == r.chosen,
                })
            })
            .collect();
        DecisionView {
            id: r.id,
            at_unix: r.at_unix_us as f64 / 1e6,
            client: r.client.map(|c| c.to_string()),
            strategy: r.strategy.as_str(),
            chosen: r.chosen.map(|c| r.name(c)),
            sampled: r
                .sampled()
                .map(|s| SampledView {
                    backend: r.name(s.backend),
                    score: s.score,
                })
                .collect(),
            healthy: r.healthy(),
            excluded,
            sticky: r.sticky_home.map(|home| {
                if Some(home) == r.chosen {
                    "hit"
                } else {
                    "remap"
                }
            }),
            slow_start: r.slow_start,
            fault: r.fault.map(InjectedFault::header_text),
            route: r.route.as_deref().map(str::to_owned),
            pool: r.pool.as_deref().map(str::to_owned),
            shadow,
            retried_from: r.retried_from.map(|id| r.name(id)),
            request_id: r
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            status: r.status,
            grpc_status: r.grpc_status.map(|code| GrpcStatusView {
                code,
                name: crate::grpc::code_name(code),
            }),
            latency_ms: f64::from(r.latency_us) / 1e3,
        }
    }
}

/// One candidate as the explanation header shows it.
#[derive(Debug, Clone)]
pub struct CandidateState {
    /// The backend.
    pub id: BackendId,
    /// `host:port`.
    pub name: String,
    /// Peak-EWMA estimate, seconds.
    pub ewma_secs: f64,
    /// Requests in flight (before this one).
    pub in_flight: usize,
    /// Weight.
    pub weight: u32,
    /// The strategy's score.
    pub score: f64,
}

/// Why the strategy chose what it chose, in one phrase (`why=` of `x-alb-decision`), with
/// the chosen backend's slow-start factor while it warms up.
pub fn why(record: &DecisionRecord) -> String {
    let why = strategy_why(record);
    match record.slow_start {
        Some(factor) => format!("{why}; slow start: weight x{factor:.2}"),
        None => why,
    }
}

fn strategy_why(record: &DecisionRecord) -> String {
    match record.strategy {
        StrategyKind::Adaptive => match (record.sampled, record.rule) {
            ([Some(a), Some(b)], rule) => {
                let rule = match rule {
                    Some(Rule::Probe) => "probe: no answer for probe_interval and none in flight",
                    Some(Rule::FewerInFlight) => {
                        "latencies within tolerance, fewer in flight of two sampled"
                    }
                    Some(Rule::Tie) => "latencies within tolerance and same in flight: tie",
                    _ => "lower cost of two sampled",
                };
                format!(
                    "{rule}: {}={:.6} vs {}={:.6}",
                    record.name(a.backend),
                    a.score,
                    record.name(b.backend),
                    b.score
                )
            }
            _ => "only candidate".to_owned(),
        },
        StrategyKind::Prequal => match record.prequal {
            Some(p) => {
                let source = match p.probe_age {
                    Some(age) => format!("probe {} ms old", age.as_millis()),
                    None => "no fresh probe: ALB's own in-flight and latency".to_owned(),
                };
                format!(
                    "{}: rif {} vs hot threshold {}, latency {:.3} ms ({source}; {} of {} in pool probed)",
                    if p.cold { "coldest-latency cold backend" } else { "all hot: lowest rif" },
                    p.rif,
                    p.threshold,
                    p.latency * 1e3,
                    p.probed,
                    p.pool
                )
            }
            None => "only candidate".to_owned(),
        },
        StrategyKind::LeastConn => "fewest in flight per weight".to_owned(),
        StrategyKind::RoundRobin => "next in rotation".to_owned(),
        StrategyKind::Sticky => match record.sticky_home {
            Some(home) if Some(home) == record.chosen => "sticky hit: the client's home".to_owned(),
            Some(home) => format!("sticky remap: home {} is out of service", record.name(home)),
            None => "client hash".to_owned(),
        },
    }
}

/// Every in-service candidate's numbers from `set`, read before the chosen one counts the
/// request (only computed when an explanation is asked for).
pub fn candidates(set: &BackendSet, strategy: &crate::balance::Strategy) -> Vec<CandidateState> {
    let now = Instant::now();
    set.endpoints
        .iter()
        .map(|ep| CandidateState {
            id: ep.id(),
            name: ep.name().to_owned(),
            ewma_secs: ep.ewma_secs(now),
            in_flight: ep.in_flight(),
            weight: ep.weight(),
            score: strategy.score(ep, now),
        })
        .collect()
}

/// The `x-alb-decision` header text: every candidate with its numbers, the choice and why,
/// and every excluded backend with its reason. One line, `;`-separated, ASCII only.
pub fn explain(record: &DecisionRecord, candidates: &[CandidateState]) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "strategy={}", record.strategy);
    match record.chosen {
        Some(c) => {
            let _ = write!(out, "; chosen={}", record.name(c));
        }
        None => out.push_str("; chosen=none"),
    }
    let why = why(record);
    let _ = write!(out, "; why={why}");
    if let Some(from) = record.retried_from {
        let _ = write!(out, "; retried_from={}", record.name(from));
    }
    out.push_str("; candidates=");
    for (i, c) in candidates.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let sampled = record.sampled().any(|s| s.backend == c.id);
        let _ = write!(
            out,
            "{}[ewma_ms={:.3} in_flight={} weight={} score={:.6}{}]",
            c.name,
            c.ewma_secs * 1e3,
            c.in_flight,
            c.weight,
            c.score,
            if sampled { " sampled" } else { "" }
        );
    }
    let view = DecisionView::new(record);
    if !view.excluded.is_empty() {
        out.push_str("; excluded=");
        for (i, e) in view.excluded.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}({})", e.backend, e.reason);
        }
    }
    if let (Some(route), Some(pool)) = (&record.route, &record.pool) {
        let _ = write!(out, "; route={route}; pool={pool}");
    }
    // Header values must be visible ASCII; causes come from errors and could hold anything.
    out.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    fn record(set: &Arc<BackendSet>, chosen: usize) -> DecisionRecord {
        let mut r =
            DecisionRecord::new(StrategyKind::RoundRobin, None, Instant::now(), set.clone());
        r.chosen = Some(set.endpoints[chosen].id());
        r
    }

    #[test]
    fn the_ring_keeps_the_latest_in_order() {
        let eps = endpoints(&[1]);
        let set = Arc::new(set_of(&eps, &eps));
        let log = DecisionLog::new();
        for _ in 0..DecisionLog::CAPACITY + 10 {
            log.push(record(&set, 0));
        }
        let kept = log.since(0);
        assert_eq!(kept.len(), DecisionLog::CAPACITY);
        assert!(kept.windows(2).all(|w| w[1].id == w[0].id + 1));
        assert_eq!(kept.last().unwrap().id, log.last_id());
        assert_eq!(log.since(log.last_id() - 3).len(), 3);
    }

    #[test]
    fn names_come_from_the_snapshot_the_decision_was_made_from() {
        let eps = endpoints(&[1, 1, 1]);
        // Backend 1 is out of service; the set is listed in another order than the ids.
        let reordered = vec![eps[2].clone(), eps[1].clone(), eps[0].clone()];
        let in_service = vec![eps[2].clone(), eps[0].clone()];
        let set = Arc::new(set_of(&in_service, &reordered));
        let mut r = record(&set, 1); // the second in service: eps[0]
        r.retried_from = Some(eps[2].id());
        let view = DecisionView::new(&r);
        assert_eq!(view.chosen.as_deref(), Some(eps[0].name()));
        assert_eq!(view.retried_from.as_deref(), Some(eps[2].name()));
        assert_eq!(view.healthy, 2);
        assert_eq!(view.excluded.len(), 1);
        assert_eq!(view.excluded[0].backend, eps[1].name());
        let text = explain(
            &r,
            &candidates(
                &set,
                &crate::balance::Strategy::new(StrategyKind::RoundRobin),
            ),
        );
        assert!(
            text.contains(&format!("chosen={};", eps[0].name())),
            "{text}"
        );
        assert!(
            text.contains(&format!("excluded={}(", eps[1].name())),
            "{text}"
        );
    }

    #[test]
    fn explanations_are_one_ascii_line() {
        let eps = endpoints(&[1, 1]);
        let set = Arc::new(set_of(&eps[..1], &eps));
        eps[1].set_up(false, "status 503\r\nInjected: header ü".to_owned());
        let text = explain(&record(&set, 0), &[]);
        assert!(
            text.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "{text}"
        );
        assert!(http::HeaderValue::from_str(&text).is_ok());
    }
}
