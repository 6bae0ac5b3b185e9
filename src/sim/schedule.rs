//! Scheduled behaviour changes of a simulated backend, relative to a run's start.
//!
//! - `slowdown`: service times multiplied by `factor` from `at` (until `until`, if given);
//! - `stall`: the backend makes no progress at all for `duration` (a frozen process): work
//!   in service and health checks wait until it ends;
//! - `pauses`: a stall of `duration` every `every` (GC-like), from `at`;
//! - `fail_fast`: a `fraction` of requests answered `503` at once, without queueing.
//!
//! Stalls and pauses are modelled as windows in which the backend's work clock stops: a
//! request finishes when it has received its service time *outside* such windows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::service_time::humantime_text;

/// One scheduled change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Service times multiplied by `factor`.
    Slowdown {
        /// Start, from the run's start.
        #[serde(with = "humantime_text")]
        at: Duration,
        /// Multiplier (16 = sixteen times slower).
        factor: f64,
        /// End, if any.
        #[serde(default, with = "optional_humantime")]
        until: Option<Duration>,
    },
    /// No progress for `duration`.
    Stall {
        /// Start.
        #[serde(with = "humantime_text")]
        at: Duration,
        /// Length.
        #[serde(with = "humantime_text")]
        duration: Duration,
    },
    /// A stall of `duration` every `every`.
    Pauses {
        /// First pause.
        #[serde(with = "humantime_text")]
        at: Duration,
        /// Period.
        #[serde(with = "humantime_text")]
        every: Duration,
        /// Length of each pause.
        #[serde(with = "humantime_text")]
        duration: Duration,
    },
    /// A fraction of requests fails at once with `503`.
    FailFast {
        /// Start.
        #[serde(with = "humantime_text")]
        at: Duration,
        /// Fraction in [0, 1].
        fraction: f64,
        /// End, if any.
        #[serde(default, with = "optional_humantime")]
        until: Option<Duration>,
    },
}

mod optional_humantime {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as \"10ms\": {e}"))
        })
    }
}

impl Event {
    /// Checks the parameters; the message names the wrong one.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Event::Slowdown { factor, .. } if !(*factor > 0.0 && factor.is_finite()) => {
                Err(format!("factor must be a positive number, got {factor}"))
            }
            Event::Pauses {
                every, duration, ..
            } if duration >= every => Err(format!(
                "duration ({duration:?}) must be shorter than every ({every:?})"
            )),
            Event::FailFast { fraction, .. } if !(0.0..=1.0).contains(fraction) => {
                Err(format!("fraction must be in [0, 1], got {fraction}"))
            }
            _ => Ok(()),
        }
    }
}

/// A backend's events, queried with times relative to the run's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The events, in any order.
    pub events: Vec<Event>,
}

impl Schedule {
    /// Service-time multiplier at `t`.
    pub fn slowdown(&self, t: Duration) -> f64 {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Slowdown { at, factor, until }
                    if t >= *at && until.is_none_or(|u| t < u) =>
                {
                    Some(*factor)
                }
                _ => None,
            })
            .product()
    }

    /// Fraction of requests failing fast at `t`.
    pub fn fail_fraction(&self, t: Duration) -> f64 {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::FailFast {
                    at,
                    fraction,
                    until,
                } if t >= *at && until.is_none_or(|u| t < u) => Some(*fraction),
                _ => None,
            })
            .fold(0.0, f64::max)
    }

    /// If `t` is inside a stall or pause, when that window ends.
    pub fn paused_until(&self, t: Duration) -> Option<Duration> {
        self.events
            .iter()
            .filter_map(|e| match *e {
                Event::Stall { at, duration } if t >= at && t < at + duration => {
                    Some(at + duration)
                }
                Event::Pauses {
                    at,
                    every,
                    duration,
                } if t >= at => {
                    let into = (t - at).as_nanos() % every.as_nanos().max(1);
                    let into = Duration::from_nanos(into as u64);
                    (into < duration).then(|| t + (duration - into))
                }
                _ => None,
            })
            .max()
    }

    /// The next pause or stall starting after `t`, if any.
    fn next_pause_start(&self, t: Duration) -> Option<Duration> {
        self.events
            .iter()
            .filter_map(|e| match *e {
                Event::Stall { at, .. } if at > t => Some(at),
                Event::Pauses { at, every, .. } => {
                    if at > t {
                        Some(at)
                    } else {
                        let periods = (t - at).as_nanos() / every.as_nanos().max(1) + 1;
                        Some(at + Duration::from_nanos((every.as_nanos() * periods) as u64))
                    }
                }
                _ => None,
            })
            .min()
    }

    /// When work of length `work` started at `start` finishes, with the clock stopped in
    /// pauses and stalls.
    pub fn finish_time(&self, start: Duration, work: Duration) -> Duration {
        let mut now = start;
        let mut left = work;
        // Bounded: each pass consumes a pause or finishes.
        for _ in 0..10_000 {
            if let Some(end) = self.paused_until(now) {
                now = end;
                continue;
            }
            match self.next_pause_start(now) {
                Some(next) if next < now + left => {
                    left -= next - now;
                    now = next;
                }
                _ => return now + left,
            }
        }
        now + left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn work_waits_out_a_stall() {
        let s = Schedule {
            events: vec![Event::Stall {
                at: 100 * MS,
                duration: 500 * MS,
            }],
        };
        assert_eq!(s.finish_time(50 * MS, 10 * MS), 60 * MS);
        assert_eq!(s.finish_time(95 * MS, 10 * MS), 605 * MS);
        assert_eq!(s.finish_time(200 * MS, 10 * MS), 610 * MS);
    }

    #[test]
    fn periodic_pauses_repeat() {
        let s = Schedule {
            events: vec![Event::Pauses {
                at: Duration::ZERO,
                every: 100 * MS,
                duration: 20 * MS,
            }],
        };
        // 0..20 paused, 20..100 running, 100..120 paused
        assert_eq!(s.finish_time(Duration::ZERO, 10 * MS), 30 * MS);
        assert_eq!(s.finish_time(95 * MS, 10 * MS), 125 * MS);
        assert_eq!(s.paused_until(110 * MS), Some(120 * MS));
    }

    #[test]
    fn slowdown_and_fail_fast_windows() {
        let s = Schedule {
            events: vec![
                Event::Slowdown {
                    at: 10 * MS,
                    factor: 4.0,
                    until: Some(20 * MS),
                },
                Event::FailFast {
                    at: Duration::ZERO,
                    fraction: 0.3,
                    until: None,
                },
            ],
        };
        assert_eq!(s.slowdown(5 * MS), 1.0);
        assert_eq!(s.slowdown(15 * MS), 4.0);
        assert_eq!(s.slowdown(25 * MS), 1.0);
        assert_eq!(s.fail_fraction(1000 * MS), 0.3);
    }
}
