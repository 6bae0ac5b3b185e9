//! Routing decisions: a record for every request, a bounded log of the latest, and the
//! explanation a client can ask for.
//!
//! Recording is always on, so it must cost almost nothing: a [`DecisionRecord`] is a
//! fixed-size `Copy` value (no allocation; backend names are resolved only when someone
//! reads), written once when the response headers are known into a ring of
//! [`DecisionLog::CAPACITY`] slots. Each slot has its own lock and writers spread over the
//! slots through one atomic cursor, so requests never wait on each other unless the ring has
//! wrapped exactly onto a slot being read. Memory is fixed at start-up whatever the traffic.
//!
//! Exclusions are kept as bit masks of backend ids (the first 64 backends); their reasons
//! (unhealthy and why, over `max_connections`) are resolved from the endpoints when read.

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::balance::{endpoint::Endpoint, StrategyKind};

/// Backends tracked in exclusion masks.
pub const MASK_BACKENDS: usize = 64;

/// A backend id compared in a pick, with the load value the strategy compared.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampled {
    /// Backend id (config position).
    pub backend: u32,
    /// The strategy's load measure (adaptive: cost in seconds; least_conn: in flight per
    /// weight; sticky: rendezvous score, higher wins; round_robin: position in the cycle).
    pub score: f64,
}

/// One request's routing decision and outcome.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord {
    /// Sequence number, from 1.
    pub id: u64,
    /// Microseconds since the Unix epoch, at the decision.
    pub at_unix_us: u64,
    /// The client address the strategy saw (sticky and rate limits), if resolved.
    pub client: Option<IpAddr>,
    /// The strategy in use.
    pub strategy: StrategyKind,
    /// The backend chosen; `None` when none could be (all down or all full).
    pub chosen: Option<u32>,
    /// What the strategy compared (adaptive: the two sampled).
    pub sampled: [Sampled; 2],
    /// How many entries of `sampled` are used.
    pub sampled_len: u8,
    /// Healthy backends in the set at the decision.
    pub healthy: u16,
    /// Backends out of the set (unhealthy), as a mask of ids.
    pub excluded: u64,
    /// Backends passed over because they were at `max_connections`, as a mask of ids.
    pub full: u64,
    /// Sticky: the client's home backend, whether or not it was chosen.
    pub sticky_home: Option<u32>,
    /// Shadow strategies' choices, by `StrategyKind::ALL` order (`None`: not evaluated).
    pub shadow: [Option<u32>; 4],
    /// The backend a failed first attempt went to, if the request was retried.
    pub retried_from: Option<u32>,
    /// Status sent to the client (0 until known).
    pub status: u16,
    /// Time from decision to response headers, in microseconds.
    pub latency_us: u32,
}

impl DecisionRecord {
    /// A record for a decision made at `at`.
    pub fn new(strategy: StrategyKind, client: Option<IpAddr>, at: Instant) -> Self {
        let at_unix_us = unix_micros(at);
        DecisionRecord {
            id: 0,
            at_unix_us,
            client,
            strategy,
            chosen: None,
            sampled: [Sampled::default(); 2],
            sampled_len: 0,
            healthy: 0,
            excluded: 0,
            full: 0,
            sticky_home: None,
            shadow: [None; 4],
            retried_from: None,
            status: 0,
            latency_us: 0,
        }
    }

    /// The sampled candidates in use.
    pub fn sampled(&self) -> &[Sampled] {
        &self.sampled[..usize::from(self.sampled_len)]
    }
}

/// Marks `id` in an exclusion mask (ids past [`MASK_BACKENDS`] are not tracked).
pub fn mask_bit(id: usize) -> u64 {
    if id < MASK_BACKENDS {
        1 << id
    } else {
        0
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

    /// Stores a finished decision, giving it the next id.
    pub fn push(&self, mut record: DecisionRecord) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        record.id = id;
        let slot = (id as usize) % Self::CAPACITY;
        *self.slots[slot].lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        id
    }

    /// Decisions with an id above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<DecisionRecord> {
        let mut out: Vec<DecisionRecord> = self
            .slots
            .iter()
            .filter_map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
            .filter(|r| r.id > after)
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
    pub healthy: u16,
    /// Backends not considered, with the reason.
    pub excluded: Vec<ExcludedView>,
    /// Sticky: `hit` (home chosen) or `remap` (home out of service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<&'static str>,
    /// Shadow strategies' choices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowView>,
    /// The backend of a failed first attempt, when the request was retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_from: Option<String>,
    /// Status sent.
    pub status: u16,
    /// Time to response headers, ms.
    pub latency_ms: f64,
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

fn name(endpoints: &[Arc<Endpoint>], id: u32) -> String {
    endpoints
        .get(id as usize)
        .map_or_else(|| format!("#{id}"), |e| e.name().to_owned())
}

/// The reason an endpoint was out of the set, as best known now.
fn exclusion_reason(ep: &Endpoint) -> String {
    let last = ep.last_transition().map(|t| t.cause).unwrap_or_default();
    if ep.is_drained() {
        "drained".to_owned()
    } else if ep.is_ejected() {
        format!("ejected: {last}")
    } else if !ep.is_up() {
        format!("unhealthy: {last}")
    } else {
        "out of service at the time (back in service since)".to_owned()
    }
}

impl DecisionView {
    /// Resolves a record against the endpoints (indexed by id).
    pub fn new(r: &DecisionRecord, endpoints: &[Arc<Endpoint>]) -> Self {
        let mut excluded = Vec::new();
        for ep in endpoints.iter().take(MASK_BACKENDS) {
            let bit = mask_bit(ep.id);
            if r.excluded & bit != 0 {
                excluded.push(ExcludedView {
                    backend: ep.name().to_owned(),
                    reason: exclusion_reason(ep),
                });
            } else if r.full & bit != 0 {
                excluded.push(ExcludedView {
                    backend: ep.name().to_owned(),
                    reason: "at max_connections".to_owned(),
                });
            }
        }
        let shadow = StrategyKind::ALL
            .iter()
            .zip(r.shadow)
            .filter_map(|(kind, chosen)| {
                let chosen = chosen?;
                Some(ShadowView {
                    strategy: kind.as_str(),
                    chosen: name(endpoints, chosen),
                    agrees: Some(chosen) == r.chosen,
                })
            })
            .collect();
        DecisionView {
            id: r.id,
            at_unix: r.at_unix_us as f64 / 1e6,
            client: r.client.map(|c| c.to_string()),
            strategy: r.strategy.as_str(),
            chosen: r.chosen.map(|c| name(endpoints, c)),
            sampled: r
                .sampled()
                .iter()
                .map(|s| SampledView {
                    backend: name(endpoints, s.backend),
                    score: s.score,
                })
                .collect(),
            healthy: r.healthy,
            excluded,
            sticky: r.sticky_home.map(|home| {
                if Some(home) == r.chosen {
                    "hit"
                } else {
                    "remap"
                }
            }),
            shadow,
            retried_from: r.retried_from.map(|id| name(endpoints, id)),
            status: r.status,
            latency_ms: f64::from(r.latency_us) / 1e3,
        }
    }
}

/// One candidate as the explanation header shows it.
#[derive(Debug, Clone)]
pub struct CandidateState {
    /// Backend id.
    pub id: usize,
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

/// The `x-alb-decision` header text: every candidate with its numbers, the choice and why,
/// and every excluded backend with its reason. One line, `;`-separated, ASCII only.
pub fn explain(
    record: &DecisionRecord,
    candidates: &[CandidateState],
    endpoints: &[Arc<Endpoint>],
) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "strategy={}", record.strategy);
    match record.chosen {
        Some(c) => {
            let _ = write!(out, "; chosen={}", name(endpoints, c));
        }
        None => out.push_str("; chosen=none"),
    }
    let why = match record.strategy {
        StrategyKind::Adaptive if record.sampled_len == 2 => {
            let [a, b] = record.sampled;
            format!(
                "lower cost of two sampled: {}={:.6} vs {}={:.6}",
                name(endpoints, a.backend),
                a.score,
                name(endpoints, b.backend),
                b.score
            )
        }
        StrategyKind::Adaptive => "only candidate".to_owned(),
        StrategyKind::LeastConn => "fewest in flight per weight".to_owned(),
        StrategyKind::RoundRobin => "next in rotation".to_owned(),
        StrategyKind::Sticky => match record.sticky_home {
            Some(home) if Some(home) == record.chosen => "sticky hit: the client's home".to_owned(),
            Some(home) => format!(
                "sticky remap: home {} is out of service",
                name(endpoints, home)
            ),
            None => "client hash".to_owned(),
        },
    };
    let _ = write!(out, "; why={why}");
    if let Some(from) = record.retried_from {
        let _ = write!(out, "; retried_from={}", name(endpoints, from));
    }
    out.push_str("; candidates=");
    for (i, c) in candidates.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let sampled = record.sampled().iter().any(|s| s.backend as usize == c.id);
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
    let view = DecisionView::new(record, endpoints);
    if !view.excluded.is_empty() {
        out.push_str("; excluded=");
        for (i, e) in view.excluded.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}({})", e.backend, e.reason);
        }
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
