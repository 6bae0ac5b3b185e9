//! Service-time distributions of a simulated backend.
//!
//! Real backends do not take a constant time: most requests are quick and a few are very
//! slow, and it is the tail that a balancer can help or hurt. Each distribution is given by
//! parameters a person can read (a mean or a median in milliseconds) and knows its own
//! mean, which the lab uses to compute capacity (slots / mean service time).

use std::{fmt, str::FromStr, time::Duration};

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal, Pareto};
use serde::{Deserialize, Serialize};

/// How long one request takes to serve, before slowdowns and pauses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceTime {
    /// Always the same.
    Constant {
        /// The service time.
        #[serde(with = "humantime_text")]
        value: Duration,
    },
    /// Memoryless, as in M/M/k queues.
    Exponential {
        /// Mean service time.
        #[serde(with = "humantime_text")]
        mean: Duration,
    },
    /// Log-normal: `median * exp(sigma * N(0,1))`; a moderate heavy tail.
    Lognormal {
        /// Median service time.
        #[serde(with = "humantime_text")]
        median: Duration,
        /// Shape: 0.5 is mild, 1.0 is a long tail.
        sigma: f64,
    },
    /// Pareto with scale `min` and shape `alpha`, capped at `cap` so the mean exists.
    Pareto {
        /// Smallest service time.
        #[serde(with = "humantime_text")]
        min: Duration,
        /// Tail index; smaller is heavier (1.5 is heavy).
        alpha: f64,
        /// Largest service time.
        #[serde(with = "humantime_text")]
        cap: Duration,
    },
    /// Two modes: `fast` most of the time, `slow` with probability `slow_fraction`.
    Bimodal {
        /// The common case.
        #[serde(with = "humantime_text")]
        fast: Duration,
        /// The rare case.
        #[serde(with = "humantime_text")]
        slow: Duration,
        /// Probability of `slow`.
        slow_fraction: f64,
    },
}

/// Durations as humantime text (`"10ms"`) in scenario files.
pub(crate) mod humantime_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as \"10ms\": {e}"))
        })
    }
}

impl ServiceTime {
    /// A constant service time (what `--delay` gives).
    pub fn constant(value: Duration) -> Self {
        ServiceTime::Constant { value }
    }

    /// Checks the parameters; the message says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, got {v}"))
            }
        };
        match self {
            ServiceTime::Constant { .. } | ServiceTime::Exponential { .. } => Ok(()),
            ServiceTime::Lognormal { sigma, .. } => positive("sigma", *sigma),
            ServiceTime::Pareto { min, alpha, cap } => {
                positive("alpha", *alpha)?;
                if cap < min {
                    return Err(format!("cap ({cap:?}) must be at least min ({min:?})"));
                }
                Ok(())
            }
            ServiceTime::Bimodal { slow_fraction, .. } => {
                if (0.0..=1.0).contains(slow_fraction) {
                    Ok(())
                } else {
                    Err(format!(
                        "slow_fraction must be in [0, 1], got {slow_fraction}"
                    ))
                }
            }
        }
    }

    /// Draws one service time.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let secs = match self {
            ServiceTime::Constant { value } => return *value,
            ServiceTime::Exponential { mean } => {
                let rate = 1.0 / mean.as_secs_f64().max(1e-9);
                Exp::new(rate).map_or(0.0, |d| d.sample(rng))
            }
            ServiceTime::Lognormal { median, sigma } => {
                LogNormal::new(median.as_secs_f64().max(1e-9).ln(), *sigma)
                    .map_or(0.0, |d| d.sample(rng))
            }
            ServiceTime::Pareto { min, alpha, cap } => Pareto::new(min.as_secs_f64(), *alpha)
                .map_or(0.0, |d| d.sample(rng))
                .min(cap.as_secs_f64()),
            ServiceTime::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                if rng.random::<f64>() < *slow_fraction {
                    return *slow;
                }
                return *fast;
            }
        };
        Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
    }

    /// The mean service time.
    pub fn mean(&self) -> Duration {
        let secs = match self {
            ServiceTime::Constant { value } => value.as_secs_f64(),
            ServiceTime::Exponential { mean } => mean.as_secs_f64(),
            ServiceTime::Lognormal { median, sigma } => {
                median.as_secs_f64() * (sigma * sigma / 2.0).exp()
            }
            ServiceTime::Pareto { min, alpha, cap } => {
                capped_pareto_mean(min.as_secs_f64(), *alpha, cap.as_secs_f64())
            }
            ServiceTime::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => fast.as_secs_f64() * (1.0 - slow_fraction) + slow.as_secs_f64() * slow_fraction,
        };
        Duration::from_secs_f64(secs)
    }
}

/// Mean of `min(X, cap)` for X ~ Pareto(min, alpha).
fn capped_pareto_mean(xm: f64, alpha: f64, cap: f64) -> f64 {
    if cap <= xm {
        return xm;
    }
    // E[min(X, c)] = ∫0^c P(X > x) dx = xm + ∫xm^c (xm/x)^alpha dx
    let tail = if (alpha - 1.0).abs() < 1e-9 {
        xm * (cap / xm).ln()
    } else {
        xm.powf(alpha) * (cap.powf(1.0 - alpha) - xm.powf(1.0 - alpha)) / (1.0 - alpha)
    };
    xm + tail
}

impl fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        match self {
            ServiceTime::Constant { value } => write!(f, "constant {} ms", ms(value)),
            ServiceTime::Exponential { mean } => write!(f, "exponential, mean {} ms", ms(mean)),
            ServiceTime::Lognormal { median, sigma } => {
                write!(f, "lognormal, median {} ms, sigma {sigma}", ms(median))
            }
            ServiceTime::Pareto { min, alpha, cap } => write!(
                f,
                "pareto, min {} ms, alpha {alpha}, cap {} ms",
                ms(min),
                ms(cap)
            ),
            ServiceTime::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => write!(
                f,
                "bimodal, {} ms or {} ms ({}%)",
                ms(fast),
                ms(slow),
                slow_fraction * 100.0
            ),
        }
    }
}

/// `exp:10ms`, `const:10ms`, `lognormal:10ms:0.8`, `pareto:5ms:1.5:500ms`,
/// `bimodal:5ms:100ms:0.1`, or a bare duration (constant): the command-line form.
impl FromStr for ServiceTime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let d = |s: &str| {
            humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
        };
        let n = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("{s:?} is not a number"))
        };
        let parsed = match parts.as_slice() {
            [v] => ServiceTime::Constant { value: d(v)? },
            ["const", v] => ServiceTime::Constant { value: d(v)? },
            ["exp", m] => ServiceTime::Exponential { mean: d(m)? },
            ["lognormal", m, s] => ServiceTime::Lognormal {
                median: d(m)?,
                sigma: n(s)?,
            },
            ["pareto", m, a, c] => ServiceTime::Pareto {
                min: d(m)?,
                alpha: n(a)?,
                cap: d(c)?,
            },
            ["bimodal", f, s, p] => ServiceTime::Bimodal {
                fast: d(f)?,
                slow: d(s)?,
                slow_fraction: n(p)?,
            },
            _ => {
                return Err(format!(
                    "{text:?}: expected DURATION, exp:MEAN, lognormal:MEDIAN:SIGMA, \
                     pareto:MIN:ALPHA:CAP or bimodal:FAST:SLOW:FRACTION"
                ))
            }
        };
        parsed.validate()?;
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_mean(st: &ServiceTime) -> f64 {
        let mut rng = rand::rng();
        let n = 200_000;
        (0..n)
            .map(|_| st.sample(&mut rng).as_secs_f64())
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn means_match_samples() {
        for text in [
            "exp:10ms",
            "lognormal:10ms:0.8",
            "pareto:5ms:1.5:500ms",
            "bimodal:5ms:100ms:0.1",
            "10ms",
        ] {
            let st: ServiceTime = text.parse().unwrap();
            let expected = st.mean().as_secs_f64();
            let got = sample_mean(&st);
            assert!(
                (got - expected).abs() / expected < 0.05,
                "{text}: {got} vs {expected}"
            );
        }
    }
}
