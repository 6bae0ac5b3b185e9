//! An open-loop load generator that does not hide queueing.
//!
//! Requests leave on a schedule (Poisson or evenly spaced) whether or not earlier ones have
//! finished, and each latency is measured from the request's *intended* send time. A closed
//! loop (wrk, hey) waits for an answer before sending again, so when the server stalls it
//! stops sending and the stall shows up as one slow request instead of many: coordinated
//! omission (Gil Tene). Here a 500 ms stall at 100 req/s shows as 50 requests that waited up
//! to 500 ms.
//!
//! The generator also measures its own lateness (send lag: actual send time minus intended);
//! a run whose p99 lag exceeds [`MAX_RELIABLE_LAG`] is marked unreliable, because then the
//! generator, not the system under test, shaped the latencies.
//!
//! Clients connect from distinct loopback addresses (`127.0.x.y`, all local on Linux), so
//! per-IP stickiness and rate limits see many clients.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use rand::Rng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};

use crate::{headers::X_ALB_BACKEND, sim::SimHandle};

/// Send lag (p99) above which a run is marked unreliable.
pub const MAX_RELIABLE_LAG: Duration = Duration::from_millis(5);

/// Status recorded for a request that got no HTTP answer (connect error, reset, timeout).
pub const NO_ANSWER: u16 = 0;

/// How requests are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Exponential gaps: independent clients.
    Poisson,
    /// Equal gaps.
    Constant,
}

/// The offered load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadPlan {
    /// Requests per second at the start of the measured part.
    pub rate: f64,
    /// Requests per second at its end (a linear ramp; equal to `rate` for a flat load).
    pub rate_end: f64,
    /// If not empty, the rates (req/s) at evenly spaced moments from the start to the end
    /// of the measured part, joined by straight lines (load rising then falling, say);
    /// it replaces the ramp from `rate` to `rate_end`.
    pub profile: Vec<f64>,
    /// Length of the measured part.
    pub duration: Duration,
    /// Load sent before measuring (at `rate`), not counted.
    pub warmup: Duration,
    /// Spacing of requests.
    pub arrival: Arrival,
    /// Number of distinct client addresses.
    pub clients: usize,
    /// Time after which a request counts as unanswered.
    pub timeout: Duration,
}

impl LoadPlan {
    /// The offered rate (req/s) `t` seconds after the start of the warm-up.
    pub fn rate_at(&self, t: f64) -> f64 {
        let warmup = self.warmup.as_secs_f64();
        if t < warmup {
            return self.rate;
        }
        let f = ((t - warmup) / self.duration.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
        match self.profile.as_slice() {
            [] => self.rate + (self.rate_end - self.rate) * f,
            [only] => *only,
            points => {
                let x = f * (points.len() - 1) as f64;
                let i = (x.floor() as usize).min(points.len() - 2);
                points[i] + (points[i + 1] - points[i]) * (x - i as f64)
            }
        }
    }

    /// The highest rate of the plan.
    fn peak_rate(&self) -> f64 {
        self.profile
            .iter()
            .copied()
            .fold(self.rate.max(self.rate_end), f64::max)
    }

    /// The intended send times, from the start of the warm-up.
    pub fn schedule<R: Rng>(&self, rng: &mut R) -> Vec<Duration> {
        let total = (self.warmup + self.duration).as_secs_f64();
        let rate_at = |t: f64| self.rate_at(t);
        let mut times = Vec::with_capacity((total * self.peak_rate()) as usize + 16);
        let mut t = 0.0;
        while t < total {
            times.push(Duration::from_secs_f64(t));
            let rate = rate_at(t).max(1e-3);
            t += match self.arrival {
                Arrival::Constant => 1.0 / rate,
                Arrival::Poisson => Exp::new(rate).map_or(1.0 / rate, |d| d.sample(rng)),
            };
        }
        times
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Through a balancer at this URL; the backend is read from `x-alb-backend`.
    Url(Uri),
    /// Through several balancers (replicas), each request to the next one in turn; the
    /// backend is read from `x-alb-backend`.
    Replicas(Vec<Uri>),
    /// Straight to the in-process backend with the shortest true expected wait.
    Oracle(Oracle),
    /// Straight to these backends of the oracle's set (indices), each request to the next in
    /// turn, counted as outstanding in the oracle's view of their queues: outside load that
    /// an oracle sharing the counts sees.
    Outside {
        /// Whose outstanding counts the requests join.
        oracle: Oracle,
        /// Indices into the oracle's backends.
        backends: Vec<usize>,
    },
}

/// One request's fate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Intended send time, from the start of the warm-up.
    pub intended: Duration,
    /// From the intended send time to the end of the response body.
    pub latency: Duration,
    /// HTTP status, or [`NO_ANSWER`].
    pub status: u16,
    /// Index into the run's backend names, if known.
    pub backend: Option<u16>,
}

impl Sample {
    /// A 2xx or 3xx answer.
    pub fn is_ok(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Every request, warm-up included, in completion order.
    pub samples: Vec<Sample>,
    /// Backend names (`host:port`) that `Sample::backend` indexes.
    pub backends: Vec<String>,
    /// Length of the warm-up at the start of the timeline.
    pub warmup: Duration,
    /// Send lag percentiles of the generator itself.
    pub lag_p99: Duration,
    /// Largest send lag.
    pub lag_max: Duration,
}

impl RunResult {
    /// Whether the generator kept its schedule well enough for the latencies to be trusted.
    pub fn reliable(&self) -> bool {
        self.lag_p99 <= MAX_RELIABLE_LAG
    }

    /// The samples sent after the warm-up.
    pub fn measured(&self) -> impl Iterator<Item = &Sample> + '_ {
        self.samples.iter().filter(|s| s.intended >= self.warmup)
    }
}

/// Latency and share summary of a set of samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests.
    pub count: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Fraction of requests that were not answered 2xx/3xx.
    pub error_rate: f64,
    /// Fraction of requests each backend served.
    pub share: Vec<(String, f64)>,
}

/// A histogram of microseconds from 1 µs to one hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Summarises samples over the given backend names.
pub fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>, backends: &[String]) -> Summary {
    let mut histogram = latency_histogram();
    let mut errors = 0u64;
    let mut per_backend = vec![0u64; backends.len()];
    for s in samples {
        histogram.saturating_record(s.latency.as_micros().max(1) as u64);
        errors += u64::from(!s.is_ok());
        if let Some(b) = s.backend {
            if let Some(c) = per_backend.get_mut(usize::from(b)) {
                *c += 1;
            }
        }
    }
    let count = histogram.len();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    let denominator = count.max(1) as f64;
    Summary {
        count,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1e3,
        error_rate: errors as f64 / denominator,
        share: backends
            .iter()
            .zip(per_backend)
            .map(|(name, n)| (name.clone(), n as f64 / denominator))
            .collect(),
    }
}

type LoadClient = Client<HttpConnector, Empty<Bytes>>;

/// The client for connections from `source`.
fn client_from(source: IpAddr) -> LoadClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_local_address(Some(source));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The `i`-th client address: 127.0.1.1, 127.0.1.2, ... (all local on Linux).
pub fn client_address(i: usize) -> IpAddr {
    let i = i % (250 * 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 250) as u8,
        1 + (i % 250) as u8,
    ))
}

/// Runs the plan against the target, starting at `start` (a moment shortly ahead, so the
/// first requests are not late because of set-up). `backends` names the backends in the
/// order results should index them (for `Target::Oracle`, the order of the handles);
/// backends that answer under another name are appended.
pub async fn run(
    target: Target,
    plan: &LoadPlan,
    backends: Vec<String>,
    start: Instant,
) -> RunResult {
    let times = plan.schedule(&mut rand::rng());
    let clients: Vec<LoadClient> = (0..plan.clients.max(1))
        .map(|i| client_from(client_address(i)))
        .collect();
    let backends = Arc::new(std::sync::Mutex::new(backends));
    let target = Arc::new(target);
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let mut lag = latency_histogram();
    for (i, offset) in times.iter().enumerate() {
        let intended = start + *offset;
        // Aim early by the timer's mean rounding, so sends are on time on average.
        tokio::time::sleep_until(intended - crate::sim::TIMER_ROUNDING).await;
        let now = Instant::now();
        lag.saturating_record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
        let client = clients[i % clients.len()].clone();
        let (tx, target, backends) = (tx.clone(), target.clone(), backends.clone());
        let (offset, timeout) = (*offset, plan.timeout);
        tokio::spawn(async move {
            let (status, backend) = send(&client, &target, i, &backends, timeout).await;
            let _ = tx.send(Sample {
                intended: offset,
                latency: intended.elapsed(),
                status,
                backend,
            });
        });
    }
    drop(tx);
    let mut samples = Vec::with_capacity(times.len());
    while let Some(s) = rx.recv().await {
        samples.push(s);
    }
    let backends = backends.lock().unwrap_or_else(|e| e.into_inner()).clone();
    RunResult {
        samples,
        backends,
        warmup: plan.warmup,
        lag_p99: Duration::from_micros(lag.value_at_quantile(0.99)),
        lag_max: Duration::from_micros(lag.max()),
    }
}

/// Backend names seen so far; names not known in advance are added as they appear.
pub type BackendNames = std::sync::Mutex<Vec<String>>;

/// The index of `name` among the names seen so far, adding it if it is new.
pub fn backend_index(names: &BackendNames, name: &str) -> Option<u16> {
    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
    let index = match names.iter().position(|b| b == name) {
        Some(i) => i,
        None => {
            names.push(name.to_owned());
            names.len() - 1
        }
    };
    u16::try_from(index).ok()
}

/// Sends the `sequence`-th request of a run to `target`.
async fn send(
    client: &LoadClient,
    target: &Target,
    sequence: usize,
    backends: &BackendNames,
    timeout: Duration,
) -> (u16, Option<u16>) {
    let (uri, chosen) = match target {
        Target::Url(uri) => (uri.clone(), None),
        Target::Replicas(uris) => (uris[sequence % uris.len()].clone(), None),
        Target::Oracle(oracle) => {
            let best = oracle.pick();
            (oracle.uri(best), Some(best as u16))
        }
        Target::Outside { oracle, backends } => {
            let index = backends[sequence % backends.len()];
            (oracle.uri(index), Some(index as u16))
        }
    };
    // The oracle counts requests from dispatch to answer, so requests still on their way to
    // a backend are not invisible to the next decision; outside requests join the counts.
    let _outstanding = match (target, chosen) {
        (Target::Oracle(oracle) | Target::Outside { oracle, .. }, Some(b)) => {
            Some(oracle.dispatched(usize::from(b)))
        }
        _ => None,
    };
    let Ok(request) = Request::get(uri).body(Empty::<Bytes>::new()) else {
        return (NO_ANSWER, None);
    };
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let backend = chosen.or_else(|| {
            let name = response.headers().get(&X_ALB_BACKEND)?.to_str().ok()?;
            backend_index(backends, name)
        });
        response.into_body().collect().await.ok()?;
        Some((status, backend))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(answer)) => answer,
        _ => (NO_ANSWER, chosen),
    }
}

/// Routing by the simulators' true state: what no real balancer can know.
///
/// Expected wait of a backend = (requests outstanding to it + 1) / slots x its current mean
/// service time (slowdowns included), plus the rest of any pause in progress. Outstanding
/// counts requests from dispatch to answer, so a burst of decisions within one millisecond
/// does not herd onto the same backend; it includes outside load sent through a
/// [`Target::Outside`] sharing this oracle (a clone), so the oracle sees an antagonist's
/// queue too.
#[derive(Debug, Clone)]
pub struct Oracle {
    sims: Vec<SimHandle>,
    outstanding: Arc<[std::sync::atomic::AtomicUsize]>,
}

/// One request counted as outstanding until dropped.
struct Outstanding {
    counts: Arc<[std::sync::atomic::AtomicUsize]>,
    index: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.counts[self.index].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Oracle {
    /// An oracle over these in-process backends.
    pub fn new(sims: Vec<SimHandle>) -> Self {
        let outstanding = sims
            .iter()
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
        Oracle { sims, outstanding }
    }

    /// The URL of backend `index`.
    fn uri(&self, index: usize) -> Uri {
        format!("http://{}/", self.sims[index].addr)
            .parse()
            .expect("a socket address makes a URI")
    }

    fn dispatched(&self, index: usize) -> Outstanding {
        self.outstanding[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Outstanding {
            counts: self.outstanding.clone(),
            index,
        }
    }

    /// The backend with the shortest expected wait; ties broken at random.
    fn pick(&self) -> usize {
        let mut rng = rand::rng();
        let mut best = 0;
        let mut best_wait = f64::INFINITY;
        let mut ties = 0u32;
        for (i, sim) in self.sims.iter().enumerate() {
            let ahead = self.outstanding[i].load(std::sync::atomic::Ordering::Relaxed);
            let wait = sim.expected_wait(ahead);
            if wait < best_wait {
                best = i;
                best_wait = wait;
                ties = 1;
            } else if wait == best_wait {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        best
    }
}

/// Prints a summary the way `alb loadgen` shows it.
pub fn print_summary(result: &RunResult) {
    let summary = summarize(result.measured(), &result.backends);
    println!(
        "requests {}  errors {:.2}%  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        summary.count,
        summary.error_rate * 100.0,
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.max_ms
    );
    for (name, share) in &summary.share {
        println!("  {name:<24} {:6.2}%", share * 100.0);
    }
    let unknown = 1.0 - summary.share.iter().map(|(_, s)| s).sum::<f64>();
    if unknown > 1e-9 {
        println!(
            "  {:<24} {:6.2}%  (no x-alb-backend header)",
            "(unknown)",
            unknown * 100.0
        );
    }
    println!(
        "send lag: p99 {:.2} ms, max {:.2} ms{}",
        result.lag_p99.as_secs_f64() * 1e3,
        result.lag_max.as_secs_f64() * 1e3,
        if result.reliable() {
            ""
        } else {
            "  -- UNRELIABLE: the generator could not keep its schedule"
        }
    );
}
