//! The capacity signal against real processes: three simulated backends of 4 slots and
//! 20 ms, ALB with `autoscale`, and `alb loadgen` offering open-loop load.
//!
//! Each backend serves 4 / 20 ms = 200 req/s, the pool 600 req/s. At 150 req/s about 3
//! requests are in flight (Little's law: 150 × 0.02), utilization 3 / 12 = 0.25, and
//! ceil(3 × 0.25 / 0.7) = 2 backends are enough; at 500 req/s at least 10 are in flight
//! (more with queueing), and ceil(10 / 2.8) = 4.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::{json, Value};

/// The tests of this file run one at a time: the figures depend on the backends' 20 ms
/// service time, and other tests' load on a 2-core machine stretched it enough to add
/// requests in flight (a CI run saw 5.8 on average at 150 req/s instead of about 3).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RECOMMENDED: &str = "lb_pool_recommended_backends{pool=\"default\"}";
const UTILIZATION: &str = "lb_pool_utilization{pool=\"default\"}";

/// `alb loadgen` offering `rate` req/s (Poisson) to `url` for `duration`; killed on drop.
struct Loadgen(Child);

impl Loadgen {
    fn start(url: &str, rate: u32, duration: &str) -> Loadgen {
        let child = Command::new(alb_bin())
            .args(["loadgen", url, "--rate", &rate.to_string()])
            .args(["--duration", duration, "--clients", "8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn alb loadgen");
        Loadgen(child)
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three backends of concurrency 4 and 20 ms behind an ALB with the capacity signal on.
fn pool() -> (Vec<Proc>, Proc) {
    let backends: Vec<Proc> = (0..3)
        .map(|_| backend(&["--delay", "20ms", "--slots", "4"]))
        .collect();
    let lb = alb(json!({
        "backends": urls(&backends.iter().collect::<Vec<_>>()),
        "strategy": "least_conn",
        "health_check_interval": 1,
        "autoscale": {
            "target_utilization": 0.7,
            "backend_concurrency": 4,
            "window": "2s",
            "scale_down_delay": "1s",
        },
    }));
    (backends, lb)
}

async fn capacity(lb: &Proc) -> Value {
    admin_json(lb, "/capacity").await["pools"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommends_two_backends_at_150_and_four_at_500_requests_per_second() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (_backends, lb) = pool();
    let view = capacity(&lb).await;
    assert_eq!(view["pool"], "default", "{view}");
    assert_eq!(view["in_service"], 3, "{view}");
    assert_eq!(view["backend_concurrency"], 4, "{view}");
    assert_eq!(view["concurrency_from"], "autoscale.backend_concurrency");
    assert_eq!(view["target_utilization"], 0.7);

    // 150 req/s: once the window holds the load, every reading recommends at most 2.
    let mut load = Loadgen::start(&lb.url(), 150, "12s");
    wait_until(
        "the 2 s window holds the 150 req/s load (about 3 in flight on average)",
        Duration::from_secs(30),
        || async { capacity(&lb).await["in_flight_average"].as_f64().unwrap() >= 2.0 },
    )
    .await;
    let mut readings = Vec::new();
    while load.running() {
        let view = capacity(&lb).await;
        let exposition = scrape(&lb).await;
        let gauge = sample(&exposition, RECOMMENDED).expect("the gauge is exported");
        assert!(
            gauge <= 2.0 && view["recommended"].as_u64().unwrap() <= 2,
            "at 150 req/s: gauge {gauge}, /capacity {view}"
        );
        readings.push(view);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The check above could not pass vacuously: the load was measured while it held.
    let peak = readings
        .iter()
        .map(|v| v["in_flight_average"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        readings.len() >= 5 && peak >= 2.5,
        "{} readings, peak average {peak}",
        readings.len()
    );

    eprintln!(
        "150 req/s: peak average {peak:.2}, last {}",
        readings[readings.len() - 1]
    );

    // 500 req/s: the recommendation climbs to at least 4.
    let _load = Loadgen::start(&lb.url(), 500, "30s");
    wait_until(
        "lb_pool_recommended_backends reaches 4 at 500 req/s",
        Duration::from_secs(30),
        || async { sample(&scrape(&lb).await, RECOMMENDED).unwrap_or(0.0) >= 4.0 },
    )
    .await;
    let view = capacity(&lb).await;
    assert!(view["recommended"].as_u64().unwrap() >= 4, "{view}");
    let utilization = sample(&scrape(&lb).await, UTILIZATION).unwrap();
    assert!(utilization > 0.7, "utilization {utilization}: {view}");
    eprintln!("500 req/s: {view}");
    assert!(
        lb.log_text().contains("recommended backends"),
        "each change is logged"
    );
}

#[tokio::test]
async fn capacity_is_404_without_autoscale_and_a_bad_block_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let r = client()
        .get(format!("{}/capacity", lb.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("autoscale"));
    assert!(sample(&scrape(&lb).await, RECOMMENDED).is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "bad.json",
        r#"{"backends": ["http://127.0.0.1:1"], "autoscale": {"target_utilization": 0.7}}"#,
    );
    let (code, _, stderr) = alb_output(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("autoscale.backend_concurrency") && stderr.contains("max_connections"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_keeps_the_signal_unless_its_settings_change() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = backend(&[]);
    let mut config = json!({
        "backends": urls(&[&b]),
        "autoscale": {"backend_concurrency": 4, "window": "1s"},
    });
    let lb = alb(config.clone());
    let reload = || async {
        let r = client()
            .post(format!("{}/reload", lb.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    };
    wait_until(
        "the average covers its 1 s window",
        std::time::Duration::from_secs(30),
        || async { capacity(&lb).await["covered_secs"].as_f64().unwrap() >= 1.0 },
    )
    .await;
    // Same settings: the window carries over (a fresh one would start empty).
    reload().await;
    let view = capacity(&lb).await;
    assert!(view["covered_secs"].as_f64().unwrap() >= 1.0, "{view}");
    // New settings: a new signal with them.
    config["autoscale"]["target_utilization"] = json!(0.5);
    std::fs::write(lb.config_path(), config.to_string()).unwrap();
    reload().await;
    let view = capacity(&lb).await;
    assert_eq!(view["target_utilization"], 0.5, "{view}");
}
