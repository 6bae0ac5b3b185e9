//! The five strategies, each against real simulated backends through a real `alb`.

mod common;

use std::{collections::HashMap, net::IpAddr, time::Duration};

use common::*;
use serde_json::json;

#[tokio::test]
async fn round_robin_rotates_exactly() {
    let (a, b, c) = (backend(&[]), backend(&[]), backend(&[]));
    let lb = alb(json!({"strategy": "round_robin", "backends": urls(&[&a, &b, &c])}));
    let answers = load(&lb.url(), 300, 1).await;
    let s = shares(&answers);
    for p in [&a, &b, &c] {
        assert_eq!(s.get(&name(p)), Some(&100), "{s:?}");
    }
}

#[tokio::test]
async fn round_robin_honours_weights() {
    let (a, b, c) = (backend(&[]), backend(&[]), backend(&[]));
    let lb = alb(json!({"strategy": "round_robin", "backends": [
        {"url": a.url(), "weight": 3}, b.url(), {"url": c.url(), "weight": 1}
    ]}));
    let answers = load(&lb.url(), 500, 1).await;
    let s = shares(&answers);
    assert_eq!(s.get(&name(&a)), Some(&300), "{s:?}");
    assert_eq!(s.get(&name(&b)), Some(&100), "{s:?}");
    assert_eq!(s.get(&name(&c)), Some(&100), "{s:?}");
}

#[tokio::test]
async fn least_conn_avoids_the_busy_backend() {
    let slow = backend(&["--delay", "300ms"]);
    let (f1, f2) = (backend(&["--delay", "5ms"]), backend(&["--delay", "5ms"]));
    let lb = alb(json!({"strategy": "least_conn", "backends": urls(&[&slow, &f1, &f2])}));
    let answers = load(&lb.url(), 90, 10).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let slow_share = shares(&answers).get(&name(&slow)).copied().unwrap_or(0);
    assert!(slow_share * 5 < 90, "slow backend got {slow_share} of 90");
}

async fn sticky_map(url: &str, clients: &[IpAddr]) -> HashMap<IpAddr, String> {
    let mut map = HashMap::new();
    for ip in clients {
        let client = client_from(Some(*ip));
        let first = get(&client, url).await;
        assert_eq!(first.status, 200);
        for _ in 0..4 {
            let again = get(&client, url).await;
            assert_eq!(again.backend, first.backend, "client {ip} changed backend");
        }
        map.insert(*ip, first.backend.unwrap());
    }
    map
}

#[tokio::test]
async fn sticky_keeps_clients_and_moves_only_the_lost_backends_clients() {
    let mut backends = [backend(&[]), backend(&[]), backend(&[])];
    let lb = alb(json!({
        "strategy": "sticky",
        "backends": urls(&backends.iter().collect::<Vec<_>>()),
        "health_check_interval": 0.2, "unhealthy_threshold": 1
    }));
    let clients: Vec<IpAddr> = (2..42).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let before = sticky_map(&lb.url(), &clients).await;
    let used: std::collections::HashSet<&String> = before.values().collect();
    assert_eq!(
        used.len(),
        3,
        "40 clients should spread over all 3 backends: {before:?}"
    );

    let lost = name(&backends[0]);
    backends[0].kill();
    // Wait for the health checker to take it out (a retry alone would already hide the
    // failure from clients, but stickiness is judged on the new set).
    wait_until(
        "the killed backend leaves the set",
        Duration::from_secs(20),
        || async {
            let b: serde_json::Value = admin_json(&lb, "/backends").await;
            b["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["backend"] == lost.as_str() && b["up"] == false)
        },
    )
    .await;

    let after = sticky_map(&lb.url(), &clients).await;
    for ip in &clients {
        if before[ip] == lost {
            assert_ne!(after[ip], lost, "{ip} still on the dead backend");
        } else {
            assert_eq!(
                after[ip], before[ip],
                "{ip} moved although its backend is alive"
            );
        }
    }
}

#[tokio::test]
async fn adaptive_avoids_a_slow_backend() {
    let slow = backend(&["--delay", "100ms"]);
    let (f1, f2) = (backend(&["--delay", "2ms"]), backend(&["--delay", "2ms"]));
    let lb = alb(json!({"strategy": "adaptive", "backends": urls(&[&slow, &f1, &f2])}));
    let answers = load(&lb.url(), 400, 20).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let slow_share = shares(&answers).get(&name(&slow)).copied().unwrap_or(0);
    assert!(
        slow_share * 10 < 400,
        "slow backend got {slow_share} of 400"
    );
}

#[tokio::test]
async fn adaptive_avoids_a_backend_that_fails_fast() {
    let failing = backend(&["--error-rate", "1.0"]);
    let (f1, f2) = (backend(&["--delay", "2ms"]), backend(&["--delay", "2ms"]));
    let lb = alb(json!({"strategy": "adaptive", "backends": urls(&[&failing, &f1, &f2])}));
    let answers = load(&lb.url(), 400, 20).await;
    let failing_share = shares(&answers).get(&name(&failing)).copied().unwrap_or(0);
    assert!(
        failing_share * 10 < 400,
        "failing backend got {failing_share} of 400"
    );
    // its health checks pass: it was never taken out, only scored as expensive
    assert!(failing_share > 0);
}

/// `prequal` sees load that does not come through this ALB: backend A serves eight requests
/// from elsewhere (sent to it directly, the way another replica or an outside client would),
/// and gets almost none of ALB's; its own in-flight count would say A is idle.
#[tokio::test]
async fn prequal_avoids_a_backend_busy_with_outside_traffic() {
    let (a, b, c) = (
        backend(&["--delay", "200ms"]),
        backend(&["--delay", "200ms"]),
        backend(&["--delay", "200ms"]),
    );
    let lb = alb(json!({
        "strategy": "prequal",
        "explain": true,
        "backends": urls(&[&a, &b, &c]),
    }));
    wait_until("probes answered", Duration::from_secs(20), || async {
        sample(&scrape(&lb).await, r#"lb_probes_total{result="ok"}"#).unwrap_or(0.0) >= 3.0
    })
    .await;
    // Outside traffic on A: eight requests always in flight, until the test ends.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outside: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop) = (a.url(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c.get(&url).send().await;
                }
            })
        })
        .collect();
    wait_until(
        "A reports its outside load",
        Duration::from_secs(20),
        || async {
            let d = admin_json(&lb, "/backends").await;
            let a_score = d["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["backend"] == name(&a))
                .map(|x| x["score"].as_f64().unwrap_or(0.0))
                .unwrap_or(0.0);
            a_score >= 4.0
        },
    )
    .await;
    let answers = load(&lb.url(), 60, 3).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in outside {
        task.abort();
    }
    let s = shares(&answers);
    let to_a = s.get(&name(&a)).copied().unwrap_or(0);
    assert!(to_a <= 6, "A got {to_a} of 60 although busy: {s:?}");
    assert!(s.get(&name(&b)).copied().unwrap_or(0) >= 15, "{s:?}");
    assert!(s.get(&name(&c)).copied().unwrap_or(0) >= 15, "{s:?}");

    // The explanation names the numbers that decided.
    let r = client()
        .get(lb.url())
        .header("x-alb-explain", "1")
        .send()
        .await
        .unwrap();
    let decision = r.headers()["x-alb-decision"].to_str().unwrap().to_owned();
    assert!(
        decision.contains("strategy=prequal") && decision.contains("hot threshold"),
        "{decision}"
    );
}
