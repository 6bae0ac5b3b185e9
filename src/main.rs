//! The `alb` command line: the load balancer, the demo, a simulated backend, a config check.

#![forbid(unsafe_code)]

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

use alb::{
    config::Config,
    server::{shutdown_signal, Server},
    sim::{self, ServiceTime, SimSettings},
};

// A proxy allocates small, short-lived objects on every request (header maps, buffers,
// futures); mimalloc's thread-local free lists serve them far cheaper than glibc's malloc,
// which took about a tenth of the CPU in the proxy benchmark's profile.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// An adaptive, observable HTTP/HTTPS load balancer.
#[derive(Parser)]
#[command(name = "alb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        /// Config file (the original project's format; see the README).
        #[arg(long, default_value = "config/config.json")]
        config: PathBuf,
    },
    /// Start three simulated backends and an adaptive balancer in one process.
    Demo {
        /// Plain HTTP port of the balancer (0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// HTTPS port (self-signed certificate; 0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        tls_port: u16,
        /// Admin port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Run a simulated backend answering `backend PORT` on every path.
    Backend {
        /// Port to listen on.
        port: u16,
        /// Address to listen on: any of 127.0.0.0/8 is local on Linux, so tests can put
        /// several backends behind one DNS name on one port.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Service time of each request, e.g. `20ms`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
        delay: Duration,
        /// Service-time distribution instead of a constant delay: `exp:10ms`,
        /// `lognormal:10ms:0.8`, `pareto:5ms:1.5:500ms`, `bimodal:5ms:100ms:0.1`.
        #[arg(long, conflicts_with = "delay")]
        service: Option<ServiceTime>,
        /// Fraction of requests answered with 503 (`/health` excepted).
        #[arg(long, value_parser = parse_error_rate, default_value_t = 0.0)]
        error_rate: f64,
        /// Requests served at once; the rest wait in a FIFO queue (default: unbounded).
        #[arg(long)]
        slots: Option<usize>,
        /// Start with `/health` answering 503.
        #[arg(long)]
        unhealthy: bool,
        /// Serve HTTPS with this PEM certificate chain (ALPN h2 and http/1.1); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates issued by this CA (PEM); needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// HTTP/2: allow this many concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
        #[arg(long, conflicts_with = "tls_cert")]
        h2_max_streams: Option<u32>,
        /// HTTP/2: send a graceful GOAWAY once a connection has received this many requests.
        #[arg(long, conflicts_with = "tls_cert", value_parser = clap::value_parser!(u64).range(1..))]
        h2_goaway_after: Option<u64>,
    },
    /// Write a self-signed certificate for localhost (DIR/localhost.crt, DIR/localhost.key).
    GenCert {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Run experiments comparing the strategies (see load/scenarios and the README).
    Lab {
        /// Scenario names (files in --scenarios) or paths; default: all, or the quick set.
        scenarios: Vec<String>,
        /// Short runs of null, slow-16x, fail-fast and stall.
        #[arg(long)]
        quick: bool,
        /// Output directory.
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
        /// Repetitions of every run (default: 1 with --quick, 3 otherwise).
        #[arg(long)]
        repetitions: Option<usize>,
        /// Directory of scenario files.
        #[arg(long, default_value = alb::lab::SCENARIO_DIR)]
        scenario_dir: PathBuf,
    },
    /// Open-loop load: send at a fixed rate and print latency percentiles and shares.
    Loadgen {
        /// Target URL.
        url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Measured duration, e.g. `30s`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        /// Load before measuring.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        warmup: Duration,
        /// Request spacing.
        #[arg(long, value_enum, default_value = "poisson")]
        arrival: alb::loadgen::Arrival,
        /// Distinct client source addresses (127.0.1.1, 127.0.1.2, ...).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Time after which a request counts as unanswered.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: Duration,
    },
    /// Replay a recording (`record` in the config) against a target, on its recorded
    /// schedule (open loop); report latency and, with --compare, status differences.
    Replay {
        /// The recording (JSON lines).
        file: PathBuf,
        /// Where to send the requests (scheme and authority), e.g. http://127.0.0.1:8080.
        #[arg(long)]
        target: String,
        /// Schedule compression: 2.0 replays twice as fast as recorded.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Count answers whose status differs from the recorded one (exit status 1 if any).
        #[arg(long)]
        compare: bool,
        /// Time after which a request counts as unanswered.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: Duration,
    },
    /// Validate a config file and print the effective settings, defaults included.
    CheckConfig {
        /// Config file.
        path: PathBuf,
    },
}

fn parse_error_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("not a number: {text}"))?;
    sim::valid_error_rate(rate)
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { path } => match Config::load(&path) {
            Ok(config) => {
                let text = serde_json::to_string_pretty(&config).expect("config serialises");
                println!("{text}");
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Lab {
            scenarios,
            quick,
            out,
            repetitions,
            scenario_dir,
        } => lab(scenarios, quick, out, repetitions, scenario_dir),
        Command::Loadgen {
            url,
            rate,
            duration,
            warmup,
            arrival,
            clients,
            timeout,
        } => {
            let Ok(uri) = url.parse::<http::Uri>() else {
                return fail(format!("not a URL: {url}"));
            };
            if !(rate > 0.0 && rate.is_finite()) {
                return fail(format!("--rate must be positive, got {rate}"));
            }
            let plan = alb::loadgen::LoadPlan {
                rate,
                rate_end: rate,
                profile: Vec::new(),
                duration,
                warmup,
                arrival,
                clients,
                timeout,
            };
            block_on(None, async move {
                let start = tokio::time::Instant::now() + Duration::from_millis(20);
                let result =
                    alb::loadgen::run(alb::loadgen::Target::Url(uri), &plan, Vec::new(), start)
                        .await;
                alb::loadgen::print_summary(&result);
                Ok(())
            })
        }
        Command::Replay {
            file,
            target,
            speed,
            compare,
            timeout,
        } => {
            let target = match target.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => uri,
                _ => {
                    return fail(format!(
                        "--target: expected a URL such as http://127.0.0.1:8080, got {target:?}"
                    ))
                }
            };
            if !(speed > 0.0 && speed.is_finite()) {
                return fail(format!("--speed must be positive, got {speed}"));
            }
            let records = match alb::replay::read(&file) {
                Ok(records) => records,
                Err(e) => return fail(e),
            };
            let plan = alb::replay::ReplayPlan { speed, timeout };
            let differences = Arc::new(AtomicUsize::new(0));
            let counted = differences.clone();
            let code = block_on(None, async move {
                let report = alb::replay::replay(&records, &target, plan).await;
                alb::loadgen::print_summary(&report.run);
                println!(
                    "pacing: {} requests scheduled over {:.3} s (speed {speed}), sent over {:.3} s: {:+.2}%",
                    records.len(),
                    report.scheduled_span.as_secs_f64(),
                    report.replayed_span.as_secs_f64(),
                    report.pacing_error() * 100.0
                );
                if compare {
                    println!(
                        "compare: {} of {} statuses differ from the recording",
                        report.differences,
                        records.len()
                    );
                    for m in &report.mismatches {
                        println!(
                            "  {} {}: recorded {}, replayed {}",
                            m.method, m.path, m.recorded, m.replayed
                        );
                    }
                    counted.store(report.differences, Ordering::Relaxed);
                }
                Ok(())
            });
            if differences.load(Ordering::Relaxed) > 0 {
                ExitCode::FAILURE
            } else {
                code
            }
        }
        Command::GenCert { dir } => match gen_cert(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Demo {
            port,
            tls_port,
            admin_port,
        } => {
            let ports = alb::demo::DemoPorts {
                http: port,
                https: tls_port,
                admin: admin_port,
            };
            block_on(None, async move { alb::demo::run(ports).await })
        }
        Command::Backend {
            port,
            bind,
            delay,
            service,
            error_rate,
            slots,
            unhealthy,
            tls_cert,
            tls_key,
            tls_client_ca,
            h2_max_streams,
            h2_goaway_after,
        } => {
            let settings = SimSettings {
                service: service.unwrap_or(ServiceTime::constant(delay)),
                error_rate,
                healthy: !unhealthy,
                ..SimSettings::default()
            };
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                let tls = match &tls_client_ca {
                    Some(ca) => alb::tls::load_server_config_with_client_auth(&cert, &key, ca),
                    None => alb::tls::load_server_config(&cert, &key),
                };
                let tls = match tls {
                    Ok(t) => std::sync::Arc::new(t),
                    Err(e) => return fail(e),
                };
                return block_on(None, async move {
                    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
                    tracing::info!("backend listening on https://127.0.0.1:{port}");
                    sim::run_tls(listener, settings, slots, tls).await?;
                    Ok(())
                });
            }
            let tuning = sim::H2Tuning {
                max_streams: h2_max_streams,
                goaway_after: h2_goaway_after,
            };
            block_on(None, async move {
                let listener = tokio::net::TcpListener::bind((bind, port)).await?;
                tracing::info!("backend listening on {}", listener.local_addr()?);
                if tuning.max_streams.is_some() || tuning.goaway_after.is_some() {
                    sim::run_tuned(listener, settings, slots, tuning).await?;
                } else {
                    sim::run(listener, settings, slots).await?;
                }
                Ok(())
            })
        }
    }
}

/// `alb run`: the config is read and checked, and every listener bound, before serving;
/// any failure up to there exits non-zero with one message.
fn run(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let workers = config.workers;
    let path = path.to_owned();
    block_on(Some(workers), async move {
        let server = Server::bind(config)?.with_config_file(path);
        server.serve(shutdown_signal()).await?;
        Ok(())
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `alb lab`: scenario files are all checked before anything runs; the lab pins itself to
/// CPU 1 and each balancer to CPU 0.
fn lab(
    names: Vec<String>,
    quick: bool,
    out: PathBuf,
    repetitions: Option<usize>,
    dir: PathBuf,
) -> ExitCode {
    let scenarios = match alb::lab::load_scenarios(&names, &dir, quick) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let alb = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let pin = alb::lab::runner::pin_self_to_cpu1();
    let options = alb::lab::LabOptions {
        quick,
        repetitions: repetitions.unwrap_or(if quick { 1 } else { 3 }).max(1),
        alb,
        pin,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let contenders = alb::lab::Contender::all();
    let outcome = runtime.block_on(async {
        let results = alb::lab::runner::run_lab(scenarios, &contenders, &options).await?;
        alb::lab::report::write_all(&results, &out, &command)?;
        Ok::<_, BoxError>(())
    });
    match outcome {
        Ok(()) => {
            println!("wrote {}", out.join("report.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn gen_cert(dir: &std::path::Path) -> Result<(), BoxError> {
    let (cert, key) = alb::tls::self_signed()?;
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = (dir.join("localhost.crt"), dir.join("localhost.key"));
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    println!(
        "wrote {} and {} (self-signed, for localhost and 127.0.0.1)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn block_on(
    workers: Option<usize>,
    main: impl std::future::Future<Output = Result<(), BoxError>>,
) -> ExitCode {
    // One worker: a current-thread runtime, which skips the work-stealing scheduler's
    // cross-thread wake-ups (what nginx and HAProxy do with one worker).
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("alb: error: {error}");
    ExitCode::from(2)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
