//! `alb demo`: three simulated backends and an adaptive balancer, in one process.
//!
//! Nothing to install or configure: the backends listen on free loopback ports, one of them
//! ten times slower than the others, and the balancer uses `adaptive`, so a few requests show
//! traffic moving away from the slow one (watch the `x-alb-backend` header).

use std::time::Duration;

use crate::{
    config::Config,
    server::{shutdown_signal, Server},
    sim::{self, SimSettings},
};

/// Service times of the demo's backends: the last one is clearly slower.
const DEMO_DELAYS_MS: [u64; 3] = [10, 10, 100];
/// Worker slots per demo backend, so the slow one queues under load.
const DEMO_SLOTS: usize = 8;

/// Runs the demo until Ctrl-C; `port` 0 picks a free port.
pub async fn run(port: u16) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut backends = Vec::new();
    for delay in DEMO_DELAYS_MS {
        let settings = SimSettings {
            delay: Duration::from_millis(delay),
            ..SimSettings::default()
        };
        let (addr, _task) = sim::spawn(0, settings, Some(DEMO_SLOTS)).await?;
        backends.push(addr);
    }
    let config_text = serde_json::json!({
        "port": port,
        "bind_address": "127.0.0.1",
        "strategy": "adaptive",
        "backends": backends.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>(),
        "health_check_path": "/health",
        "health_check_interval": 2,
    })
    .to_string();
    let config = Config::parse(&config_text, std::path::Path::new("(demo)"))?;
    let server = Server::bind(config)?;
    let url = format!("http://{}/", server.http_addr());
    println!("ALB demo: adaptive balancing over three simulated backends");
    for (addr, delay) in backends.iter().zip(DEMO_DELAYS_MS) {
        println!("  backend http://{addr}  service time {delay} ms");
    }
    println!();
    println!("Try:   curl -i {url}");
    println!("       (the x-alb-backend header says which backend answered;");
    println!("        under load the slow one gets little traffic)");
    println!("Load:  for i in $(seq 200); do curl -s {url} & done | sort | uniq -c");
    println!("Stop:  Ctrl-C");
    println!("Listening on {url}");
    server.serve(shutdown_signal()).await?;
    Ok(())
}
