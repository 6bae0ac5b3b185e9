//! The strategies behind one enum: their names, their state, and what a pick compared.
//!
//! Each algorithm lives in its own file with its formula and source ([`round_robin`],
//! [`least_conn`], [`sticky`], [`adaptive`]); this file only dispatches. A pick is a pure
//! read of a [`BackendSet`] snapshot plus the strategy's own small state (a cursor, a random
//! source), so it never blocks and can be replayed in a unit test.

use std::{fmt, net::IpAddr, str::FromStr, time::Instant};

use serde::Serialize;

use super::{
    adaptive, backend::BackendId, endpoint::Endpoint, least_conn, prequal, round_robin,
    set::BackendSet, sticky,
};

/// The strategies, as named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Strict (smooth weighted) rotation.
    RoundRobin,
    /// Fewest requests in flight.
    LeastConn,
    /// Client-IP affinity by rendezvous hashing.
    Sticky,
    /// Peak-EWMA x in flight, power of two choices.
    Adaptive,
    /// The backends' own load from probes, hot-cold rule.
    Prequal,
}

impl StrategyKind {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::RoundRobin,
        StrategyKind::LeastConn,
        StrategyKind::Sticky,
        StrategyKind::Adaptive,
        StrategyKind::Prequal,
    ];
    /// What the config accepts, for error messages.
    pub const EXPECTED: &'static str =
        "one of \"round_robin\", \"least_conn\", \"sticky\", \"adaptive\", \"prequal\"";

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConn => "least_conn",
            StrategyKind::Sticky => "sticky",
            StrategyKind::Adaptive => "adaptive",
            StrategyKind::Prequal => "prequal",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is none of [`StrategyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?}: expected {expected}", expected = StrategyKind::EXPECTED)]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

/// What a strategy compared to make one pick: up to two candidates (set indices) with the
/// values compared, and for sticky the client's home backend. Filled on every pick (a few
/// stores, no allocation) so every decision can be explained.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickTrace {
    sampled: [(usize, f64); 2],
    len: u8,
    /// Sticky: the rendezvous winner among every known backend, healthy or not.
    pub sticky_home: Option<BackendId>,
    /// Adaptive: the rule that decided between the two sampled backends.
    pub rule: Option<adaptive::Rule>,
    /// Prequal: the numbers that decided.
    pub prequal: Option<prequal::PrequalPick>,
    /// The chosen backend's slow-start factor, when it was warming up (below 1.0).
    pub slow_start: Option<f64>,
}

impl PickTrace {
    /// Notes a compared candidate (the first two are kept).
    pub fn sample(&mut self, index: usize, score: f64) {
        if usize::from(self.len) < self.sampled.len() {
            self.sampled[usize::from(self.len)] = (index, score);
            self.len += 1;
        }
    }

    /// The compared candidates, as (set index, value).
    pub fn sampled(&self) -> &[(usize, f64)] {
        &self.sampled[..usize::from(self.len)]
    }
}

/// A strategy with its state.
#[derive(Debug)]
pub enum Strategy {
    /// See [`round_robin`].
    RoundRobin(round_robin::RoundRobin),
    /// See [`least_conn`].
    LeastConn(least_conn::LeastConn),
    /// See [`sticky`].
    Sticky(sticky::Sticky),
    /// See [`adaptive`].
    Adaptive(adaptive::Adaptive),
    /// See [`prequal`].
    Prequal(prequal::Prequal),
}

impl Strategy {
    /// A fresh strategy of this kind.
    pub fn new(kind: StrategyKind) -> Self {
        match kind {
            StrategyKind::RoundRobin => Strategy::RoundRobin(Default::default()),
            StrategyKind::LeastConn => Strategy::LeastConn(Default::default()),
            StrategyKind::Sticky => Strategy::Sticky(Default::default()),
            StrategyKind::Adaptive => Strategy::Adaptive(Default::default()),
            StrategyKind::Prequal => Strategy::Prequal(Default::default()),
        }
    }

    /// A fresh strategy of this kind; `prequal` takes its tuning from `prequal`.
    pub fn configured(kind: StrategyKind, prequal: &prequal::PrequalConfig) -> Self {
        match kind {
            StrategyKind::Prequal => Strategy::Prequal(prequal::Prequal::new(
                prequal.clone(),
                adaptive::Draw::from_entropy(),
            )),
            other => Strategy::new(other),
        }
    }

    /// A fresh strategy whose random draws (adaptive's) are fixed by `seed`; the others
    /// draw nothing at random.
    pub fn seeded(kind: StrategyKind, seed: u64) -> Self {
        match kind {
            StrategyKind::Adaptive => Strategy::Adaptive(adaptive::Adaptive::seeded(seed)),
            StrategyKind::Prequal => Strategy::Prequal(prequal::Prequal::seeded(seed)),
            other => Strategy::new(other),
        }
    }

    /// The config name of this strategy.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::RoundRobin(_) => StrategyKind::RoundRobin,
            Strategy::LeastConn(_) => StrategyKind::LeastConn,
            Strategy::Sticky(_) => StrategyKind::Sticky,
            Strategy::Adaptive(_) => StrategyKind::Adaptive,
            Strategy::Prequal(_) => StrategyKind::Prequal,
        }
    }

    /// Picks an index into a non-empty `set.endpoints`, noting what it compared in `trace`.
    pub fn pick(&self, set: &BackendSet, client: Option<IpAddr>, trace: &mut PickTrace) -> usize {
        match self {
            Strategy::RoundRobin(s) => s.pick(set, trace),
            Strategy::LeastConn(s) => s.pick(set, trace),
            Strategy::Sticky(s) => s.pick(set, client, trace),
            Strategy::Adaptive(s) => s.pick(set, trace),
            Strategy::Prequal(s) => s.pick(set, trace),
        }
    }

    /// The strategy's load measure for one backend (lower is preferred), for metrics and the
    /// admin routes. Round robin and sticky do not measure load; they report in-flight requests.
    pub fn score(&self, ep: &Endpoint, now: Instant) -> f64 {
        match self {
            Strategy::Adaptive(_) => adaptive::cost(ep, now),
            Strategy::Prequal(p) => prequal::score(ep, now, p.config().max_age),
            Strategy::LeastConn(_) => ep.in_flight() as f64 / ep.effective_weight(),
            Strategy::RoundRobin(_) | Strategy::Sticky(_) => ep.in_flight() as f64,
        }
    }
}
