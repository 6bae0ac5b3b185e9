//! The lab's outputs: `report.md`, `summary.json`, raw per-request CSVs, and the plots.
//!
//! Figures are medians over repetitions; with more than one repetition the report also
//! gives the spread (min–max) of p99, so noise is visible next to the difference it might
//! explain.

use std::{collections::BTreeMap, fmt::Write as _, io::Write as _, path::Path, time::Duration};

use serde::Serialize;

use crate::{
    lab::{
        plot,
        runner::{CapacityPoint, ScenarioRuns},
    },
    loadgen::{summarize, RunResult, Sample, Summary},
};

/// Width of the windows used for time series (shares, p99 over time).
pub const WINDOW: Duration = Duration::from_secs(1);
/// Finer windows for the stall's leave and return times.
const STALL_WINDOW: Duration = Duration::from_millis(250);

/// `summary.json`, in exactly the documented shape.
#[derive(Debug, Serialize)]
pub struct SummaryFile {
    /// Scenario name → contender name → figures.
    pub scenarios: BTreeMap<String, BTreeMap<String, ContenderSummary>>,
    /// Scenario name → how it was run (replicas, antagonist).
    pub setups: BTreeMap<String, ScenarioSetup>,
    /// Scenario name → contender name → its capacity signal over the run (scenarios whose
    /// balancer has an `autoscale` block only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, BTreeMap<String, CapacitySummary>>,
}

/// The capacity signal of one contender's first run: where the recommendation started,
/// peaked and ended.
#[derive(Debug, Clone, Serialize)]
pub struct CapacitySummary {
    /// Recommended backends at the first reading after the warm-up.
    pub start: u32,
    /// The highest recommendation.
    pub peak: u32,
    /// When it was first reached, seconds since the end of the warm-up.
    pub peak_at_secs: f64,
    /// Recommended backends at the last reading.
    pub end: u32,
    /// The highest utilization read.
    pub peak_utilization: f64,
    /// Readings.
    pub readings: usize,
}

impl CapacitySummary {
    /// The summary of a run's readings; `None` without any.
    pub fn of(points: &[CapacityPoint]) -> Option<Self> {
        let (first, last) = (points.first()?, points.last()?);
        let peak = points.iter().fold(first, |best, p| {
            if p.view.recommended > best.view.recommended {
                p
            } else {
                best
            }
        });
        Some(CapacitySummary {
            start: first.view.recommended,
            peak: peak.view.recommended,
            peak_at_secs: peak.t,
            end: last.view.recommended,
            peak_utilization: points
                .iter()
                .map(|p| p.view.utilization)
                .fold(0.0, f64::max),
            readings: points.len(),
        })
    }
}

/// How a scenario was run, beyond its backends.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSetup {
    /// `alb` processes side by side.
    pub replicas: usize,
    /// Requests per second offered through ALB at the start of the measured part.
    pub offered_rate: f64,
    /// The outside load, if any.
    pub antagonist: Option<AntagonistSetup>,
}

/// The antagonist of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct AntagonistSetup {
    /// The backends it loads (`host:port`).
    pub backends: Vec<String>,
    /// Fraction of each one's nominal capacity.
    pub load: f64,
    /// Requests per second it offers, all its backends together.
    pub rate: f64,
}

/// The figures of one contender in one scenario (medians over repetitions).
#[derive(Debug, Clone, Serialize)]
pub struct ContenderSummary {
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Fraction of requests not answered 2xx/3xx.
    pub error_rate: f64,
    /// `host:port` → fraction of requests.
    pub share: BTreeMap<String, f64>,
    /// The antagonist's own p99 during this contender's runs (median), ms; only in
    /// scenarios with an antagonist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub antagonist_p99_ms: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians over repetitions.
fn combine(summaries: &[Summary], backends: &[String]) -> (ContenderSummary, f64, f64, bool) {
    let pick = |f: fn(&Summary) -> f64| median(summaries.iter().map(f).collect());
    let share = backends
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let v = median(
                summaries
                    .iter()
                    .map(|s| s.share.get(i).map_or(0.0, |(_, f)| *f))
                    .collect(),
            );
            (name.clone(), v)
        })
        .collect();
    let p99s: Vec<f64> = summaries.iter().map(|s| s.p99_ms).collect();
    let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = p99s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (
        ContenderSummary {
            p50_ms: pick(|s| s.p50_ms),
            p90_ms: pick(|s| s.p90_ms),
            p99_ms: pick(|s| s.p99_ms),
            p999_ms: pick(|s| s.p999_ms),
            error_rate: pick(|s| s.error_rate),
            share,
            antagonist_p99_ms: None,
        },
        lo,
        hi,
        summaries.len() > 1,
    )
}

/// Samples of the measured part, with times from its start.
pub fn measured_from_start(run: &RunResult) -> impl Iterator<Item = (Duration, &Sample)> + '_ {
    run.measured().map(move |s| (s.intended - run.warmup, s))
}

/// How long traffic took to leave a stalled backend and to come back, from one run.
#[derive(Debug, Clone, Copy)]
pub struct StallTimes {
    /// From the stall's start to the first window where the backend got under 10% of its
    /// share before the stall.
    pub leave: Option<Duration>,
    /// From the stall's end to the first window where it got back 50% of that share.
    pub back: Option<Duration>,
}

/// Leave and return times of `backend` around the stall `[start, end)`.
pub fn stall_times(run: &RunResult, backend: usize, start: Duration, end: Duration) -> StallTimes {
    let windows = (run_length(run).as_nanos() / STALL_WINDOW.as_nanos()) as usize + 1;
    let mut total = vec![0u32; windows];
    let mut mine = vec![0u32; windows];
    let mut before = (0u32, 0u32);
    for (t, s) in measured_from_start(run) {
        let w = (t.as_nanos() / STALL_WINDOW.as_nanos()) as usize;
        let is_mine = s.backend == Some(backend as u16);
        if w < windows {
            total[w] += 1;
            mine[w] += u32::from(is_mine);
        }
        if t < start {
            before.0 += 1;
            before.1 += u32::from(is_mine);
        }
    }
    let normal = f64::from(before.1) / f64::from(before.0.max(1));
    let share = |w: usize| f64::from(mine[w]) / f64::from(total[w].max(1));
    let window_of = |t: Duration| (t.as_nanos() / STALL_WINDOW.as_nanos()) as usize;
    let leave = (window_of(start)..windows)
        .find(|&w| total[w] > 0 && share(w) < 0.1 * normal)
        .map(|w| (STALL_WINDOW * (w as u32 + 1)).saturating_sub(start));
    // "Back" only means something for traffic that left.
    let back = leave.and_then(|_| {
        (window_of(end)..windows)
            .find(|&w| total[w] > 0 && share(w) >= 0.5 * normal)
            .map(|w| (STALL_WINDOW * w as u32).saturating_sub(end))
    });
    StallTimes { leave, back }
}

fn run_length(run: &RunResult) -> Duration {
    measured_from_start(run)
        .map(|(t, _)| t)
        .max()
        .unwrap_or_default()
}

fn fmt_opt(d: Option<Duration>, missing: &str) -> String {
    d.map_or_else(
        || missing.to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// Writes every output into `out`; returns the summary.
pub fn write_all(
    results: &[ScenarioRuns],
    out: &Path,
    command: &str,
) -> std::io::Result<SummaryFile> {
    std::fs::create_dir_all(out.join("raw"))?;
    let mut summary = SummaryFile {
        scenarios: BTreeMap::new(),
        setups: BTreeMap::new(),
        capacity: BTreeMap::new(),
    };
    let mut md = String::new();
    let _ = writeln!(md, "# ALB lab report\n");
    let _ = writeln!(md, "Produced by `{command}`.\n");
    let _ = writeln!(
        md,
        "Latency is measured from each request's *intended* send time (open loop), in ms. \
         Shares are the fraction of requests each backend served. Figures are medians over \
         repetitions. `oracle` routes straight to the backend with the shortest true queue; \
         no real balancer can know that, so it is the bound to compare with.\n"
    );
    for sr in results {
        let name = &sr.scenario.name;
        let mut per_contender = BTreeMap::new();
        let _ = writeln!(md, "## {name}\n\n{}\n", sr.scenario.description);
        let _ = writeln!(
            md,
            "{} backends, capacity {:.0} req/s; offered {:.0} req/s{} ({} arrivals).\n",
            sr.backends.len(),
            sr.scenario.capacity(),
            sr.rate.0,
            if (sr.rate.1 - sr.rate.0).abs() > 1e-9 {
                format!(" ramping to {:.0}", sr.rate.1)
            } else {
                String::new()
            },
            match sr.scenario.arrival {
                crate::loadgen::Arrival::Poisson => "Poisson",
                crate::loadgen::Arrival::Constant => "evenly spaced",
            },
        );
        let profile = sr.scenario.profile_rates();
        if !profile.is_empty() {
            let rates: Vec<String> = profile.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(
                md,
                "The measured part's load follows the profile {} req/s (evenly spaced points, \
                 straight lines between; the warm-up runs at the first rate above).\n",
                rates.join(" → ")
            );
        }
        let setup = setup_of(sr);
        if setup.replicas > 1 {
            let _ = writeln!(
                md,
                "{} ALB replicas with the same config, side by side (all pinned to one CPU); \
                 the generator sends each request to the next replica in turn.\n",
                setup.replicas
            );
        }
        if let Some(a) = &setup.antagonist {
            let targets: Vec<String> = sr
                .scenario
                .antagonist
                .iter()
                .flat_map(|a| a.backends.iter().map(|i| format!("b{i}")))
                .collect();
            let _ = writeln!(
                md,
                "Antagonist: {:.0} req/s straight to {} ({:.0}% of {} capacity), \
                 bypassing ALB, warm-up included; not in the figures below except its own p99 \
                 (column `antagonist p99`). With ALB's load the backends are offered {:.0}% of \
                 their capacity. The oracle counts the antagonist's requests in flight as well as \
                 its own, so it sees the antagonised backends' true queues.\n",
                a.rate,
                targets.join(", "),
                a.load * 100.0,
                if targets.len() == 1 {
                    "its"
                } else {
                    "each one's"
                },
                (sr.rate.0 + a.rate) / sr.scenario.capacity() * 100.0,
            );
        }
        let outside_column = if setup.antagonist.is_some() {
            " antagonist p99 |"
        } else {
            ""
        };
        let short: Vec<String> = sr
            .backends
            .iter()
            .enumerate()
            .map(|(i, _)| format!("b{i}"))
            .collect();
        let _ = writeln!(
            md,
            "| strategy | p50 | p90 | p99 | p99.9 | max | errors | {} |{outside_column} notes |",
            short.join(" | ")
        );
        let _ = writeln!(
            md,
            "|{}",
            "---|".repeat(8 + short.len() + usize::from(setup.antagonist.is_some()))
        );
        for ((contender, runs), outside) in sr.runs.iter().zip(&sr.antagonist) {
            let summaries: Vec<Summary> = runs
                .iter()
                .map(|r| summarize(r.measured(), &sr.backends))
                .collect();
            let (mut combined, lo, hi, spread) = combine(&summaries, &sr.backends);
            if setup.antagonist.is_some() {
                combined.antagonist_p99_ms = Some(median(
                    outside
                        .iter()
                        .map(|r| summarize(r.measured(), &sr.backends).p99_ms)
                        .collect(),
                ));
            }
            let outside_cell = combined
                .antagonist_p99_ms
                .map_or_else(String::new, |p| format!(" {p:.1} |"));
            let max = median(summaries.iter().map(|s| s.max_ms).collect());
            let mut notes = Vec::new();
            if spread {
                notes.push(format!("p99 range {lo:.1}–{hi:.1}"));
            }
            if runs.iter().chain(outside).any(|r| !r.reliable()) {
                notes.push("UNRELIABLE: generator lagged".to_owned());
            }
            let shares: Vec<String> = sr
                .backends
                .iter()
                .map(|b| format!("{:.1}%", combined.share[b] * 100.0))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}% | {} |{outside_cell} {} |",
                contender.name(),
                combined.p50_ms,
                combined.p90_ms,
                combined.p99_ms,
                combined.p999_ms,
                max,
                combined.error_rate * 100.0,
                shares.join(" | "),
                notes.join("; ")
            );
            per_contender.insert(contender.name().to_owned(), combined);
        }
        let legend: Vec<String> = sr
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("b{i} = {b}"))
            .collect();
        let _ = writeln!(md, "\nBackends: {}.\n", legend.join(", "));
        if let Some((backend, start, end)) = sr.scenario.stall() {
            let _ = writeln!(
                md,
                "Stall of b{backend} from {:.1} s to {:.1} s: time for traffic to leave \
                 (share under 10% of normal) and to come back (50% of normal), first \
                 repetition:\n",
                start.as_secs_f64(),
                end.as_secs_f64()
            );
            let _ = writeln!(md, "| strategy | left after | back after |\n|---|---|---|");
            for (contender, runs) in &sr.runs {
                if let Some(run) = runs.first() {
                    let t = stall_times(run, backend, start, end);
                    let back = if t.leave.is_some() {
                        fmt_opt(t.back, "not within the run")
                    } else {
                        "(never left)".to_owned()
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        contender.name(),
                        fmt_opt(t.leave, "not within the run"),
                        back
                    );
                }
            }
            let _ = writeln!(md);
        }
        for kind in plot::KINDS {
            let file = format!("{name}-{kind}.svg");
            plot::draw(kind, sr, &out.join(&file))?;
            let _ = writeln!(md, "![{name} {kind}]({file})\n");
        }
        let signal = capacity_section(sr, &mut md, out)?;
        if !signal.is_empty() {
            summary.capacity.insert(name.clone(), signal);
        }
        write_raw(sr, &out.join("raw"))?;
        summary.scenarios.insert(name.clone(), per_contender);
        summary.setups.insert(name.clone(), setup);
    }
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).map_err(std::io::Error::other)?,
    )?;
    Ok(summary)
}

/// The capacity signal's table and plot, when the runs have one; returns the summaries.
fn capacity_section(
    sr: &ScenarioRuns,
    md: &mut String,
    out: &Path,
) -> std::io::Result<BTreeMap<String, CapacitySummary>> {
    let summaries: BTreeMap<String, CapacitySummary> = sr
        .runs
        .iter()
        .zip(&sr.capacity)
        .filter_map(|((c, _), points)| Some((c.name().to_owned(), CapacitySummary::of(points)?)))
        .collect();
    let Some(view) = sr.capacity.iter().flatten().next().map(|p| &p.view) else {
        return Ok(summaries);
    };
    let _ = writeln!(
        md,
        "Capacity signal (`GET /capacity` of the first replica every {} ms, first \
         repetition): time-averaged requests in flight over {} s, concurrency {} per backend, \
         target utilization {}, scale-down delay {} s, bounds {}–{}.\n",
        crate::lab::runner::CAPACITY_POLL.as_millis(),
        view.window_secs,
        view.backend_concurrency,
        view.target_utilization,
        view.scale_down_delay_secs,
        view.min,
        view.max,
    );
    let _ = writeln!(
        md,
        "| strategy | recommended at start | peak | peak at | at end | peak utilization |\n\
         |---|---|---|---|---|---|"
    );
    for (name, s) in &summaries {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {:.1} s | {} | {:.2} |",
            s.start, s.peak, s.peak_at_secs, s.end, s.peak_utilization
        );
    }
    let file = format!("{}-capacity.svg", sr.scenario.name);
    plot::capacity(sr, &out.join(&file))?;
    let _ = writeln!(md, "\n![{} capacity]({file})\n", sr.scenario.name);
    Ok(summaries)
}

/// The scenario's replicas and antagonist, with the rates of this run.
fn setup_of(sr: &ScenarioRuns) -> ScenarioSetup {
    ScenarioSetup {
        replicas: sr.scenario.replicas,
        offered_rate: sr.rate.0,
        antagonist: sr.scenario.antagonist.as_ref().map(|a| AntagonistSetup {
            backends: a
                .backends
                .iter()
                .filter_map(|&i| sr.backends.get(i).cloned())
                .collect(),
            load: a.load,
            rate: sr.scenario.antagonist_rate().unwrap_or_default(),
        }),
    }
}

/// `raw/<scenario>/<contender>-r<N>.csv`: one line per request of the whole run (and
/// `<contender>-r<N>-antagonist.csv` for the antagonist's requests).
fn write_raw(sr: &ScenarioRuns, dir: &Path) -> std::io::Result<()> {
    let dir = dir.join(&sr.scenario.name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("backends.txt"), sr.backends.join("\n") + "\n")?;
    let outside = sr
        .runs
        .iter()
        .zip(&sr.antagonist)
        .flat_map(|((c, _), runs)| {
            runs.iter()
                .enumerate()
                .map(move |(rep, run)| (format!("{}-r{}-antagonist.csv", c.name(), rep + 1), run))
        });
    let measured = sr.runs.iter().flat_map(|(c, runs)| {
        runs.iter()
            .enumerate()
            .map(move |(rep, run)| (format!("{}-r{}.csv", c.name(), rep + 1), run))
    });
    for (file, run) in measured.chain(outside) {
        let path = dir.join(file);
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(
            w,
            "# warmup_ms={} lag_p99_ms={:.3}\nintended_ms,latency_ms,status,backend",
            run.warmup.as_millis(),
            run.lag_p99.as_secs_f64() * 1e3
        )?;
        for s in &run.samples {
            writeln!(
                w,
                "{:.3},{:.3},{},{}",
                s.intended.as_secs_f64() * 1e3,
                s.latency.as_secs_f64() * 1e3,
                s.status,
                s.backend.map_or(-1, i32::from)
            )?;
        }
    }
    Ok(())
}
