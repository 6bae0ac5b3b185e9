//! Slow start: a backend that comes back gets a share that rises over `slow_start`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The `/backends` entry of `backend`.
async fn backend_entry(lb: &Proc, backend: &str) -> Value {
    let all = admin_json(lb, "/backends").await;
    all["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == backend)
        .cloned()
        .unwrap_or_else(|| panic!("{backend} not in {all}"))
}

/// Three backends behind round robin; the first is killed, seen down, restarted on its port
/// and seen up again. Returns ALB, the victim's name and the processes to keep alive.
async fn a_backend_returns(slow_start: &str) -> (Proc, String, Vec<Proc>) {
    let port = free_port();
    let mut victim = backend_on(port, &[]);
    let (b, c) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&victim, &b, &c]),
        "health_check_interval": 0.2, "unhealthy_threshold": 1, "healthy_threshold": 1,
        "slow_start": slow_start, "explain": true
    }));
    let victim_name = name(&victim);
    // Present from the start: no ramp, a full share.
    assert!(backend_entry(&lb, &victim_name).await["slow_start"].is_null());
    victim.kill();
    wait_until(
        "the victim is seen down",
        Duration::from_secs(20),
        || async { backend_entry(&lb, &victim_name).await["up"] == false },
    )
    .await;
    let victim = backend_on(port, &[]);
    wait_until("the victim is seen up", Duration::from_secs(20), || async {
        backend_entry(&lb, &victim_name).await["up"] == true
    })
    .await;
    (lb, victim_name, vec![victim, b, c])
}

#[tokio::test]
async fn a_returning_backend_starts_below_a_quarter_of_its_share() {
    // A long window: 300 requests take far less than its first tenth, factor 0.1 to 0.2.
    let (lb, victim, _backends) = a_backend_returns("60s").await;
    let factor = backend_entry(&lb, &victim).await["slow_start"].as_f64();
    assert!(
        factor.is_some_and(|f| (0.1..0.2).contains(&f)),
        "/backends shows the ramp: {factor:?}"
    );
    let answers = load(&lb.url(), 300, 1).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let got = shares(&answers).get(&victim).copied().unwrap_or(0);
    // A fair share is 100; at factor 0.1 it is about 0.1 / 2.1 of 300, 14.
    assert!(got < 25, "the returning backend got {got} of 300");
    assert!(got > 0, "the returning backend got nothing at all");

    // Its decisions say why it got so few.
    let decisions = admin_json(&lb, &format!("/decisions?backend={victim}")).await;
    let text = decisions.to_string();
    let warming = decisions["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"))
        .first()
        .unwrap_or_else(|| panic!("no decision chose {victim}: {text}"));
    assert!(
        warming["slow_start"].as_f64().is_some_and(|f| f < 0.25),
        "{warming}"
    );
}

#[tokio::test]
async fn after_the_window_a_returning_backend_has_its_fair_share() {
    let (lb, victim, _backends) = a_backend_returns("2s").await;
    wait_until("the ramp ends", Duration::from_secs(20), || async {
        backend_entry(&lb, &victim).await["slow_start"].is_null()
    })
    .await;
    let answers = load(&lb.url(), 600, 1).await;
    let got = shares(&answers).get(&victim).copied().unwrap_or(0);
    assert!(
        (180..=220).contains(&got),
        "fair share 200 ± 10%, got {got}"
    );
}

#[test]
fn bad_slow_start_values_are_refused_with_their_key() {
    for (value, key) in [
        (json!("soon"), "slow_start"),
        (json!(0), "slow_start"),
        (
            json!({"window": "30s", "aggression": 0}),
            "slow_start.aggression",
        ),
        (
            json!({"window": "30s", "min_weight_percent": 150}),
            "slow_start.min_weight_percent",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"backends": ["http://127.0.0.1:1"], "slow_start": value});
        let path = write_config(dir.path(), "c.json", &config.to_string());
        let (code, _, err) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{value} accepted");
        assert!(err.contains(key), "{value}: {err}");
    }
}
