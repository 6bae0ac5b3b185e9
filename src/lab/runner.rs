//! Runs scenarios: every strategy and the oracle, each with a fresh balancer, interleaved.
//!
//! Per scenario the simulated backends get ports once (so their names, and the share
//! columns, are the same for every contender) and are started afresh on those ports for
//! each run, so a backlog left by one contender never slows the next. A run: start the
//! backends and `alb run` with the strategy (one process per replica, each on its own
//! ports, all pinned to CPU 0 when there are two CPUs), wait for them, send the warm-up and
//! the measured load (spread over the replicas in turn), stop everything. An antagonist, if
//! the scenario has one, sends straight to its backends from the start of the warm-up to
//! the end of the run, for every contender alike. The oracle sends straight to the backend
//! with the shortest *true* expected wait, which no real balancer can know: it shows how far
//! each strategy is from the best possible. It counts the antagonist's requests in flight
//! as well as its own; replicas do not apply to it (it is one omniscient router).
//!
//! Repetitions rotate the order of contenders, so slow drift of the machine does not always
//! hit the same one; the report takes medians over repetitions.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Serialize;

use crate::{
    balance::StrategyKind,
    capacity::CapacityView,
    lab::scenario::Scenario,
    loadgen::{self, LoadPlan, RunResult, Target},
    sim::{self, Schedule, SimHandle, SimSettings},
};

/// Client addresses of the antagonist (it goes straight to backends, so few are enough).
const ANTAGONIST_CLIENTS: usize = 8;

/// How often the runner reads a balancer's `GET /capacity` during a run.
pub const CAPACITY_POLL: Duration = Duration::from_millis(250);

/// Time a request may take before it counts as unanswered (and `alb`'s `request_timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A strategy of `alb`, or the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// `alb` with this strategy.
    Alb(StrategyKind),
    /// Routing by true queue lengths, without a balancer in between.
    Oracle,
}

impl Contender {
    /// Every strategy and the oracle.
    pub fn all() -> Vec<Contender> {
        StrategyKind::ALL
            .into_iter()
            .map(Contender::Alb)
            .chain([Contender::Oracle])
            .collect()
    }

    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Contender::Alb(kind) => kind.as_str(),
            Contender::Oracle => "oracle",
        }
    }
}

/// How to run the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Shorter durations.
    pub quick: bool,
    /// Repetitions of each (scenario, contender).
    pub repetitions: usize,
    /// The `alb` binary to run as the balancer.
    pub alb: PathBuf,
    /// Pin the balancer to CPU 0 (the lab pins itself to CPU 1).
    pub pin: bool,
}

/// Every run of one scenario.
#[derive(Debug)]
pub struct ScenarioRuns {
    /// The scenario.
    pub scenario: Scenario,
    /// Requests per second offered at the start and at the end of the measured part.
    pub rate: (f64, f64),
    /// Backend names, in scenario order.
    pub backends: Vec<String>,
    /// Runs per contender, in contender order; each has `repetitions` results.
    pub runs: Vec<(Contender, Vec<RunResult>)>,
    /// The antagonist's requests during each run, parallel to `runs` (empty lists when the
    /// scenario has no antagonist).
    pub antagonist: Vec<Vec<RunResult>>,
    /// The first replica's capacity signal during the first repetition, parallel to `runs`
    /// (empty when the balancer has no `autoscale` block, and for the oracle).
    pub capacity: Vec<Vec<CapacityPoint>>,
}

/// One reading of a balancer's capacity signal during a run.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityPoint {
    /// Seconds since the end of the warm-up.
    pub t: f64,
    /// Requests per second offered at that moment.
    pub offered: f64,
    /// What `GET /capacity` said.
    pub view: CapacityView,
}

/// Runs every scenario with every contender.
pub async fn run_lab(
    scenarios: Vec<Scenario>,
    contenders: &[Contender],
    options: &LabOptions,
) -> Result<Vec<ScenarioRuns>, Box<dyn std::error::Error + Send + Sync>> {
    let total: usize = scenarios
        .iter()
        .map(|s| contenders.iter().filter(|c| s.runs(c.name())).count() * options.repetitions)
        .sum();
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut all = Vec::new();
    for scenario in scenarios {
        let contenders: Vec<Contender> = contenders
            .iter()
            .copied()
            .filter(|c| scenario.runs(c.name()))
            .collect();
        let specs = scenario.expanded_backends();
        let mut ports = vec![0u16; specs.len()];
        let mut backends = Vec::new();
        let (duration, warmup) = scenario.timing(options.quick);
        let capacity = scenario.capacity();
        let plan = LoadPlan {
            rate: scenario.load * capacity,
            rate_end: scenario.load_end.unwrap_or(scenario.load) * capacity,
            profile: scenario.profile_rates(),
            duration,
            warmup,
            arrival: scenario.arrival,
            clients: scenario.clients,
            timeout: REQUEST_TIMEOUT,
        };
        let outside = scenario.antagonist.as_ref().map(|a| {
            let rate = scenario.antagonist_rate().unwrap_or_default();
            let plan = LoadPlan {
                rate,
                rate_end: rate,
                profile: Vec::new(),
                clients: ANTAGONIST_CLIENTS,
                ..plan.clone()
            };
            (plan, a.backends.clone())
        });
        let mut runs: Vec<(Contender, Vec<RunResult>)> =
            contenders.iter().map(|c| (*c, Vec::new())).collect();
        let mut antagonist = vec![Vec::new(); contenders.len()];
        let mut signal = vec![Vec::new(); contenders.len()];
        for rep in 0..options.repetitions {
            for k in 0..contenders.len() {
                let index = (k + rep) % contenders.len();
                let contender = contenders[index];
                progress.set_message(format!(
                    "{} / {} (repetition {})",
                    scenario.name,
                    contender.name(),
                    rep + 1
                ));
                let sims = start_backends(&scenario, &mut ports).await?;
                backends = sims.iter().map(|s| s.addr.to_string()).collect();
                let result = run_once(
                    &scenario,
                    contender,
                    &sims,
                    &backends,
                    (&plan, outside.as_ref()),
                    options,
                )
                .await;
                for s in &sims {
                    s.shutdown();
                }
                let (result, outside_result, points) = result?;
                runs[index].1.push(result);
                antagonist[index].extend(outside_result);
                if rep == 0 {
                    signal[index] = points;
                }
                progress.inc(1);
            }
        }
        all.push(ScenarioRuns {
            rate: (plan.rate, plan.rate_end),
            scenario,
            backends,
            runs,
            antagonist,
            capacity: signal,
        });
    }
    progress.finish_with_message("done");
    Ok(all)
}

/// Starts the scenario's backends, on `ports` (0: any, then remembered).
async fn start_backends(
    scenario: &Scenario,
    ports: &mut [u16],
) -> Result<Vec<SimHandle>, Box<dyn std::error::Error + Send + Sync>> {
    let mut sims = Vec::new();
    for (spec, port) in scenario.expanded_backends().iter().zip(ports.iter_mut()) {
        let settings = SimSettings {
            service: spec.service.clone(),
            schedule: Schedule {
                events: spec.events.clone(),
            },
            ..SimSettings::default()
        };
        // The previous run's listener on this port closes when its aborted task is next
        // polled; retry briefly rather than race it.
        let mut attempt = 0;
        let sim = loop {
            match sim::spawn(*port, settings.clone(), Some(spec.slots)).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 200 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        };
        *port = sim.addr.port();
        sims.push(sim);
    }
    Ok(sims)
}

/// What one run produced: the measured requests, the antagonist's, the capacity signal.
type RunOutput = (RunResult, Option<RunResult>, Vec<CapacityPoint>);

/// One run: the measured load (through the balancer replicas, or the oracle) and, if the
/// scenario has one, the antagonist's load (its plan and backend indices) alongside; the
/// first replica's capacity signal is read while it runs.
async fn run_once(
    scenario: &Scenario,
    contender: Contender,
    sims: &[SimHandle],
    backends: &[String],
    (plan, outside): (&LoadPlan, Option<&(LoadPlan, Vec<usize>)>),
    options: &LabOptions,
) -> Result<RunOutput, Box<dyn std::error::Error + Send + Sync>> {
    let mut balancers = Vec::new();
    if let Contender::Alb(kind) = contender {
        for _ in 0..scenario.replicas {
            balancers.push(Balancer::start(scenario, kind, backends, options)?);
        }
    }
    for b in &balancers {
        b.wait_ready().await?;
    }
    // One oracle whose counts the antagonist joins, so the oracle contender sees its queue.
    let oracle = loadgen::Oracle::new(sims.to_vec());
    let target = match contender {
        Contender::Alb(_) => Target::Replicas(
            balancers
                .iter()
                .map(|b| format!("http://127.0.0.1:{}/", b.port).parse())
                .collect::<Result<_, _>>()?,
        ),
        Contender::Oracle => Target::Oracle(oracle.clone()),
    };
    let start = Instant::now() + Duration::from_millis(50);
    for sim in sims {
        sim.restart_clock(start + plan.warmup);
    }
    let antagonist = outside.map(|(outside_plan, indices)| {
        let target = Target::Outside {
            oracle,
            backends: indices.clone(),
        };
        let (outside_plan, names) = (outside_plan.clone(), backends.to_vec());
        tokio::spawn(async move { loadgen::run(target, &outside_plan, names, start).await })
    });
    let signal = balancers
        .first()
        .map(|b| tokio::spawn(poll_capacity(b.admin_port, plan.clone(), start)));
    let result = loadgen::run(target, plan, backends.to_vec(), start).await;
    let antagonist = match antagonist {
        Some(task) => Some(task.await?),
        None => None,
    };
    let points = match signal {
        Some(task) => task.await?,
        None => Vec::new(),
    };
    drop(balancers);
    Ok((result, antagonist, points))
}

/// Reads `GET /capacity` on the admin port every [`CAPACITY_POLL`] over the measured part
/// of `plan` (from `start`, the beginning of the warm-up); nothing if the balancer has no
/// capacity signal (404) or stops answering.
async fn poll_capacity(admin_port: u16, plan: LoadPlan, start: Instant) -> Vec<CapacityPoint> {
    #[derive(serde::Deserialize)]
    struct Answer {
        pools: Vec<CapacityView>,
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let Ok(uri) = format!("http://127.0.0.1:{admin_port}/capacity").parse::<http::Uri>() else {
        return Vec::new();
    };
    let measured = start + plan.warmup;
    let end = measured + plan.duration;
    let mut ticks = tokio::time::interval_at(measured, CAPACITY_POLL);
    let mut points = Vec::new();
    loop {
        let at = ticks.tick().await;
        if at > end {
            return points;
        }
        let Ok(response) = client.get(uri.clone()).await else {
            continue; // a busy balancer: try at the next tick
        };
        if response.status() == http::StatusCode::NOT_FOUND {
            return points; // no `autoscale` block: no signal to read
        }
        let Ok(body) = response.into_body().collect().await else {
            continue;
        };
        let Ok(mut answer) = serde_json::from_slice::<Answer>(&body.to_bytes()) else {
            continue;
        };
        if answer.pools.is_empty() {
            return points;
        }
        let t = at.saturating_duration_since(measured).as_secs_f64();
        points.push(CapacityPoint {
            t,
            offered: plan.rate_at(plan.warmup.as_secs_f64() + t),
            view: answer.pools.swap_remove(0),
        });
    }
}

/// An `alb run` child process, stopped on drop.
struct Balancer {
    child: Child,
    port: u16,
    admin_port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(
        scenario: &Scenario,
        kind: StrategyKind,
        backends: &[String],
        options: &LabOptions,
    ) -> Result<Balancer, Box<dyn std::error::Error + Send + Sync>> {
        let port = free_port()?;
        let admin_port = free_port()?;
        let mut config = serde_json::json!({
            "port": port,
            "bind_address": "127.0.0.1",
            "admin_addr": format!("127.0.0.1:{admin_port}"),
            "strategy": kind.as_str(),
            "backends": backends.iter().map(|b| format!("http://{b}")).collect::<Vec<_>>(),
            "health_check_interval": 1,
            "health_check_timeout": 0.5,
            "request_timeout": REQUEST_TIMEOUT.as_secs(),
            "workers": 1,
            // The lab compares strategies: outlier ejection and retries would mask their
            // differences, so they are off unless a scenario's [balancer] turns them on.
            "outlier_detection": {"enabled": false},
            "retries": {"attempts": 0},
        });
        for (key, value) in &scenario.balancer {
            config[key] = value.clone();
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("alb.json");
        std::fs::write(&path, config.to_string())?;
        let mut command = if options.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&options.alb);
            c
        } else {
            Command::new(&options.alb)
        };
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("alb.log"))?)
            .spawn()?;
        Ok(Balancer {
            child,
            port,
            admin_port,
            _dir: dir,
        })
    }

    async fn wait_ready(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("alb did not listen on port {} within 30 s", self.port).into())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Pins this process (all its threads) to CPU 1, leaving CPU 0 to the balancer; returns
/// whether pinning was possible (two CPUs or more, and `taskset` present).
pub fn pin_self_to_cpu1() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return false;
    }
    Command::new("taskset")
        .args(["-a", "-cp", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The scenario files to run: names (looked up in `dir`) or paths.
pub fn resolve_scenarios(names: &[String], dir: &Path) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = PathBuf::from(n);
            if p.extension().is_some() || p.exists() {
                p
            } else {
                dir.join(format!("{n}.toml"))
            }
        })
        .collect()
}
