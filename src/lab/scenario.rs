//! Scenario files: backends, their service times and scheduled events, and the offered load.
//!
//! TOML, one file per scenario in `load/scenarios/`, named for the scenario. Every field is
//! checked, and an error names the file and the field (`backends[1].events[0].factor`).
//! Times in events are counted from the end of the warm-up, so a scenario reads the same
//! whatever its warm-up.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    loadgen::Arrival,
    sim::{service_time::humantime_text, Event, ServiceTime},
};

/// Warm-up when a scenario does not say.
const DEFAULT_WARMUP: Duration = Duration::from_secs(3);
/// Client addresses when a scenario does not say.
const DEFAULT_CLIENTS: usize = 64;
/// Measured length of a `--quick` run.
pub const QUICK_DURATION: Duration = Duration::from_secs(7);
/// Warm-up of a `--quick` run.
pub const QUICK_WARMUP: Duration = Duration::from_secs(2);

/// A scenario as written in its file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file's stem.
    #[serde(skip)]
    pub name: String,
    /// What it shows, in a sentence.
    pub description: String,
    /// Length of the measured part.
    #[serde(with = "humantime_text")]
    pub duration: Duration,
    /// Load before measuring.
    #[serde(with = "humantime_text", default = "default_warmup")]
    pub warmup: Duration,
    /// Offered load as a fraction of the backends' nominal capacity.
    pub load: f64,
    /// If set, the load ramps linearly from `load` to this over the measured part.
    pub load_end: Option<f64>,
    /// If set, the load (fractions of capacity) at evenly spaced moments of the measured
    /// part, joined by straight lines: `[0.1, 0.9, 0.1]` rises then falls. The warm-up runs
    /// at `load`. Excludes `load_end`.
    pub load_profile: Option<Vec<f64>>,
    /// If set, only these contenders run (strategy names, `oracle`); default: all.
    pub strategies: Option<Vec<String>>,
    /// Request spacing.
    #[serde(default = "default_arrival")]
    pub arrival: Arrival,
    /// Distinct client addresses.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// `alb` processes run side by side with the same config; the generator sends each
    /// request to the next one in turn.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Outside load sent straight to some backends, bypassing ALB.
    pub antagonist: Option<Antagonist>,
    /// Extra `alb` config keys for this scenario (rate limits, adaptive tuning...).
    #[serde(default)]
    pub balancer: serde_json::Map<String, serde_json::Value>,
    /// Backend groups.
    pub backends: Vec<BackendGroup>,
}

/// `count` identical simulated backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendGroup {
    /// How many.
    #[serde(default = "one")]
    pub count: usize,
    /// Worker slots of each.
    pub slots: usize,
    /// Service-time distribution.
    pub service: ServiceTime,
    /// Scheduled changes.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A second open-loop generator that sends straight to some backends for the whole run
/// (warm-up included): load ALB does not route and cannot see, except through the backends'
/// answers and load reports. Its requests are not in the measured results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Antagonist {
    /// Indices of the backends it loads, in scenario order (groups expanded).
    pub backends: Vec<usize>,
    /// Its rate at each of those backends, as a fraction of that backend's nominal capacity
    /// (slots / mean service time).
    pub load: f64,
}

fn default_warmup() -> Duration {
    DEFAULT_WARMUP
}
fn default_arrival() -> Arrival {
    Arrival::Poisson
}
fn default_clients() -> usize {
    DEFAULT_CLIENTS
}
fn one() -> usize {
    1
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has the wrong type.
    #[error("scenario {path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// One backend, expanded from its group.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Worker slots.
    pub slots: usize,
    /// Service time.
    pub service: ServiceTime,
    /// Events.
    pub events: Vec<Event>,
}

impl BackendSpec {
    /// Requests per second it can serve at its nominal service time.
    pub fn capacity(&self) -> f64 {
        self.slots as f64 / self.service.mean().as_secs_f64().max(1e-9)
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let field_error = |field: String, message: String| ScenarioError::Field {
            path: path.to_owned(),
            field,
            message,
        };
        let deserializer = toml::Deserializer::parse(&text)
            .map_err(|e| field_error("(syntax)".into(), e.to_string().trim().to_owned()))?;
        let mut scenario: Scenario =
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                field_error(
                    e.path().to_string(),
                    e.inner().to_string().trim().to_owned(),
                )
            })?;
        scenario.name = path
            .file_stem()
            .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
        scenario
            .validate()
            .map_err(|(field, message)| field_error(field, message))?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let positive = |field: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err((
                    field.to_owned(),
                    format!("must be a positive number, got {v}"),
                ))
            }
        };
        positive("load", self.load)?;
        if let Some(end) = self.load_end {
            positive("load_end", end)?;
        }
        if let Some(profile) = &self.load_profile {
            if self.load_end.is_some() {
                return Err((
                    "load_profile".into(),
                    "give either load_end (a straight ramp) or load_profile, not both".into(),
                ));
            }
            if profile.len() < 2 {
                return Err((
                    "load_profile".into(),
                    format!("needs at least 2 points, got {}", profile.len()),
                ));
            }
            for (i, v) in profile.iter().enumerate() {
                positive(&format!("load_profile[{i}]"), *v)?;
            }
        }
        if let Some(strategies) = &self.strategies {
            if strategies.is_empty() {
                return Err(("strategies".into(), "name at least one contender".into()));
            }
            for (i, name) in strategies.iter().enumerate() {
                if name != "oracle" && name.parse::<crate::balance::StrategyKind>().is_err() {
                    return Err((
                        format!("strategies[{i}]"),
                        format!(
                            "unknown contender {name:?}: expected {} or \"oracle\"",
                            crate::balance::StrategyKind::EXPECTED
                        ),
                    ));
                }
            }
        }
        if self.duration.is_zero() {
            return Err(("duration".into(), "must be longer than 0".into()));
        }
        if self.clients == 0 {
            return Err(("clients".into(), "must be at least 1".into()));
        }
        if self.backends.is_empty() {
            return Err((
                "backends".into(),
                "at least one backend group is needed".into(),
            ));
        }
        if self.replicas == 0 {
            return Err(("replicas".into(), "must be at least 1".into()));
        }
        for (i, group) in self.backends.iter().enumerate() {
            let field = |f: &str| format!("backends[{i}].{f}");
            if group.count == 0 {
                return Err((field("count"), "must be at least 1".into()));
            }
            if group.slots == 0 {
                return Err((field("slots"), "must be at least 1".into()));
            }
            group
                .service
                .validate()
                .map_err(|m| (field("service"), m))?;
            for (j, event) in group.events.iter().enumerate() {
                event
                    .validate()
                    .map_err(|m| (field(&format!("events[{j}]")), m))?;
            }
        }
        if let Some(antagonist) = &self.antagonist {
            positive("antagonist.load", antagonist.load)?;
            if antagonist.backends.is_empty() {
                return Err((
                    "antagonist.backends".into(),
                    "name at least one backend index".into(),
                ));
            }
            let count: usize = self.backends.iter().map(|g| g.count).sum();
            for (k, &index) in antagonist.backends.iter().enumerate() {
                if index >= count {
                    return Err((
                        format!("antagonist.backends[{k}]"),
                        format!(
                            "backend index {index} is out of range: the scenario has {count} \
                             backends (0 to {})",
                            count - 1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the contender named `name` runs in this scenario.
    pub fn runs(&self, name: &str) -> bool {
        self.strategies
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The load profile in requests per second (empty without `load_profile`).
    pub fn profile_rates(&self) -> Vec<f64> {
        let capacity = self.capacity();
        self.load_profile
            .iter()
            .flatten()
            .map(|f| f * capacity)
            .collect()
    }

    /// Worker slots of all backends together.
    pub fn total_slots(&self) -> usize {
        self.backends.iter().map(|g| g.count * g.slots).sum()
    }

    /// The backends one by one.
    pub fn expanded_backends(&self) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .flat_map(|g| {
                (0..g.count).map(|_| BackendSpec {
                    slots: g.slots,
                    service: g.service.clone(),
                    events: g.events.clone(),
                })
            })
            .collect()
    }

    /// Requests per second the backends can serve at their nominal service times.
    pub fn capacity(&self) -> f64 {
        self.expanded_backends()
            .iter()
            .map(BackendSpec::capacity)
            .sum()
    }

    /// Requests per second the antagonist sends (to all its backends together), if any.
    pub fn antagonist_rate(&self) -> Option<f64> {
        let antagonist = self.antagonist.as_ref()?;
        let backends = self.expanded_backends();
        Some(
            antagonist
                .backends
                .iter()
                .map(|&i| antagonist.load * backends[i].capacity())
                .sum(),
        )
    }

    /// The measured length and warm-up, shortened for `--quick`.
    pub fn timing(&self, quick: bool) -> (Duration, Duration) {
        if quick {
            (
                self.duration.min(QUICK_DURATION),
                self.warmup.min(QUICK_WARMUP),
            )
        } else {
            (self.duration, self.warmup)
        }
    }

    /// The stall window (start, end) from the end of the warm-up, if a backend stalls, with
    /// the index of that backend.
    pub fn stall(&self) -> Option<(usize, Duration, Duration)> {
        self.expanded_backends()
            .iter()
            .enumerate()
            .find_map(|(i, b)| {
                b.events.iter().find_map(|e| match e {
                    Event::Stall { at, duration } => Some((i, *at, *at + *duration)),
                    _ => None,
                })
            })
    }
}
