//! `alb demo`: three simulated backends and an adaptive balancer, in one process, with a
//! failing canary pool beside them that its guard rolls back under load.
//!
//! Nothing to install or configure: the backends listen on free loopback ports, one of them
//! ten times slower than the others, and the balancer uses `adaptive`, so a few requests show
//! traffic moving away from the slow one (watch the `x-alb-backend` header). HTTPS is served
//! too, with a self-signed certificate generated in memory at start, and the admin routes on
//! loopback.

use std::time::Duration;

use crate::{
    config::Config,
    server::{shutdown_signal, Server},
    sim::{self, ServiceTime, SimSettings},
    tls,
};

/// Ports of the demo's listeners; 0 picks a free one.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    /// Plain HTTP (serves the proxy; no redirect in the demo).
    pub http: u16,
    /// HTTPS with a self-signed certificate.
    pub https: u16,
    /// Admin routes on 127.0.0.1.
    pub admin: u16,
}

/// Service times of the demo's backends: the last one is clearly slower.
const DEMO_DELAYS_MS: [u64; 3] = [10, 10, 100];
/// Worker slots per demo backend, so the slow one queues under load.
const DEMO_SLOTS: usize = 8;
/// The canary's share of its errors: enough for its guard to roll it back under load.
const DEMO_CANARY_ERROR_RATE: f64 = 0.3;

/// Runs the demo until Ctrl-C.
pub async fn run(ports: DemoPorts) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut backends = Vec::new();
    for delay in DEMO_DELAYS_MS {
        let settings = SimSettings {
            service: ServiceTime::constant(Duration::from_millis(delay)),
            ..SimSettings::default()
        };
        backends.push(sim::spawn(0, settings, Some(DEMO_SLOTS)).await?.addr);
    }
    // A new version, fast but failing 30% of its requests: the canary of the split.
    let canary = sim::spawn(
        0,
        SimSettings {
            service: ServiceTime::constant(Duration::from_millis(DEMO_DELAYS_MS[0])),
            error_rate: DEMO_CANARY_ERROR_RATE,
            ..SimSettings::default()
        },
        Some(DEMO_SLOTS),
    )
    .await?
    .addr;
    let ports = DemoPorts {
        http: or_free_port(ports.http)?,
        https: or_free_port(ports.https)?,
        admin: or_free_port(ports.admin)?,
    };
    let config_text = serde_json::json!({
        "port": ports.http,
        "tls_port": ports.https,
        "cert_file": "(generated in memory)",
        "key_file": "(generated in memory)",
        "redirect_to_https": false,
        "admin_addr": format!("127.0.0.1:{}", ports.admin),
        "bind_address": "127.0.0.1",
        "explain": true,
        "health_check_path": "/health",
        "health_check_interval": 2,
        "pools": {
            "web": {
                "strategy": "adaptive",
                "shadow": true,
                "backends": backends.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>(),
            },
            "web-v2": {"backends": [format!("http://{canary}")]},
        },
        "routes": [
            {"name": "pinned", "match": {"headers": {"x-canary": "1"}}, "pool": "web-v2"},
            {"name": "default",
             "split": [{"pool": "web", "weight": 90}, {"pool": "web-v2", "weight": 10}],
             "canary": {"pool": "web-v2", "max_error_rate": 0.05, "window": "30s",
                        "min_requests": 20}},
        ],
    })
    .to_string();
    let config = Config::parse(&config_text, std::path::Path::new("(demo)"))?;
    let server = Server::bind_with_tls(config, Some(tls::self_signed_server_config()?))?;
    let url = format!("http://{}/", server.http_addr());
    let https_port = server.https_addr().map_or(0, |a| a.port());
    let admin = format!("http://{}", server.admin_addr());
    println!("ALB demo: adaptive balancing over three simulated backends (pool web),");
    println!("and a canary (pool web-v2) taking 10% of the traffic until its guard rolls it back");
    for (addr, delay) in backends.iter().zip(DEMO_DELAYS_MS) {
        println!("  web     http://{addr}  service time {delay} ms");
    }
    println!(
        "  web-v2  http://{canary}  service time {} ms, {:.0}% errors",
        DEMO_DELAYS_MS[0],
        DEMO_CANARY_ERROR_RATE * 100.0
    );
    println!();
    println!("Try:   curl -i {url}");
    println!("       (x-alb-backend says which backend answered, x-alb-route and x-alb-pool");
    println!("        how it was routed; under load the slow one gets little traffic)");
    println!("       curl -i -H 'x-canary: 1' {url}   (pinned to the canary)");
    println!("       curl -ik https://localhost:{https_port}/   (self-signed certificate)");
    println!("Admin: {admin}/ (dashboard)   {admin}/routes   {admin}/backends   {admin}/metrics");
    println!("Load:  for i in $(seq 200); do curl -s {url} & done | sort | uniq -c");
    println!("Stop:  Ctrl-C");
    println!("Listening on {url}");
    server.serve(shutdown_signal()).await?;
    Ok(())
}

/// `port`, or a currently free one for 0 (the config format, like nginx, refuses port 0).
fn or_free_port(port: u16) -> std::io::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
