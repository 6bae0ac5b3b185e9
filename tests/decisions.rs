//! Every decision explained: the `x-alb-decision` header, the decision log and stream, the
//! health timeline, shadow strategies.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The explanation of one request.
async fn explained(url: &str) -> (Answer, String) {
    let r = client()
        .get(url)
        .header("x-alb-explain", "1")
        .send()
        .await
        .unwrap();
    let header = r
        .headers()
        .get("x-alb-decision")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let backend = r
        .headers()
        .get("x-alb-backend")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    (
        Answer {
            status,
            backend,
            body: r.text().await.unwrap(),
        },
        header,
    )
}

/// `field=value` parts of the explanation.
fn parts(header: &str) -> HashMap<String, String> {
    header
        .split("; ")
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Candidate name → (in_flight, score, sampled).
fn candidates(header: &str) -> HashMap<String, (u64, f64, bool)> {
    let list = &parts(header)["candidates"];
    list.split("],")
        .map(|c| {
            let (name, rest) = c.split_once('[').unwrap();
            let field = |k: &str| {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .unwrap()
                    .trim_end_matches(']')
                    .to_owned()
            };
            (
                name.to_owned(),
                (
                    field("in_flight").parse().unwrap(),
                    field("score").parse().unwrap(),
                    rest.contains(" sampled"),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn adaptive_explanation_names_every_candidate_and_the_cheaper_sample_wins() {
    let slow = backend(&["--delay", "100ms"]);
    let (f1, f2) = (backend(&["--delay", "2ms"]), backend(&["--delay", "2ms"]));
    let lb =
        alb(json!({"strategy": "adaptive", "explain": true, "backends": urls(&[&slow, &f1, &f2])}));
    load(&lb.url(), 60, 6).await;
    for _ in 0..20 {
        let (answer, header) = explained(&lb.url()).await;
        assert_eq!(answer.status, 200);
        let p = parts(&header);
        assert_eq!(p["strategy"], "adaptive");
        let chosen = answer.backend.unwrap();
        assert_eq!(p["chosen"], chosen);
        let c = candidates(&header);
        assert_eq!(c.len(), 3, "{header}");
        for b in [&slow, &f1, &f2] {
            assert!(c.contains_key(&name(b)), "{header}");
        }
        let sampled: Vec<(&String, f64)> = c
            .iter()
            .filter(|(_, v)| v.2)
            .map(|(k, v)| (k, v.1))
            .collect();
        assert_eq!(sampled.len(), 2, "{header}");
        let cheaper = sampled.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        let why = &p["why"];
        if why.starts_with("lower cost of two sampled") {
            assert!(
                *cheaper.0 == chosen,
                "chose {chosen} although {} scored lower: {header}",
                cheaper.0
            );
        } else {
            // The two fast backends are the same latency within the tolerance; the slow one
            // (50 times slower) is only ever chosen as a probe.
            assert!(
                why.starts_with("latencies within tolerance") || why.starts_with("probe"),
                "{header}"
            );
            assert!(
                chosen != name(&slow) || why.starts_with("probe"),
                "{header}"
            );
        }
    }
}

#[tokio::test]
async fn least_conn_explanation_shows_the_chosen_has_the_fewest_in_flight() {
    let bs: Vec<Proc> = (0..3).map(|_| backend(&["--delay", "2s"])).collect();
    let lb = alb(
        json!({"strategy": "least_conn", "explain": true, "backends": urls(&bs.iter().collect::<Vec<_>>())}),
    );
    let url = lb.url();
    let held = spawn_gets(&url, 2);
    wait_until(
        "two requests are in flight",
        Duration::from_secs(20),
        || async { in_flight_total(&lb).await == 2 },
    )
    .await;
    let (answer, header) = explained(&url).await;
    let c = candidates(&header);
    let chosen = answer.backend.unwrap();
    let fewest = c.values().map(|v| v.0).min().unwrap();
    assert_eq!(c[&chosen].0, fewest, "{header}");
    assert_eq!(fewest, 0, "{header}");
    assert_eq!(c.values().filter(|v| v.0 == 1).count(), 2, "{header}");
    for h in held {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_backend_is_listed_as_excluded_with_its_reason() {
    let mut dead = backend(&[]);
    let alive = backend(&[]);
    let lb = alb(json!({
        "strategy": "round_robin", "explain": true, "backends": urls(&[&dead, &alive]),
        "health_check_interval": 0.2, "unhealthy_threshold": 1
    }));
    let dead_name = name(&dead);
    dead.kill();
    wait_until(
        "the dead backend is excluded",
        Duration::from_secs(20),
        || async { explained(&lb.url()).await.1.contains("excluded=") },
    )
    .await;
    let (answer, header) = explained(&lb.url()).await;
    assert_eq!(answer.backend.as_deref(), Some(name(&alive).as_str()));
    let excluded = &parts(&header)["excluded"];
    assert!(
        excluded.starts_with(&format!(
            "{dead_name}(unhealthy: 1 health checks failed in a row"
        )),
        "{header}"
    );
    assert!(!candidates(&header).contains_key(&dead_name));
    // the health timeline of that backend says the same
    let detail = admin_json(&lb, &format!("/backends/{dead_name}")).await;
    let t = &detail["transitions"].as_array().unwrap()[0];
    assert_eq!(t["up"], false);
    assert_eq!(t["source"], "health_check");
    assert!(t["cause"].as_str().unwrap().contains("failed"));
}

#[tokio::test]
async fn no_explanation_unless_enabled_and_asked() {
    let b = backend(&[]);
    let off = alb(json!({"backends": urls(&[&b])}));
    assert_eq!(explained(&off.url()).await.1, "");
    let on = alb(json!({"backends": urls(&[&b]), "explain": true}));
    let plain = client().get(on.url()).send().await.unwrap();
    assert!(plain.headers().get("x-alb-decision").is_none());
    assert!(explained(&on.url())
        .await
        .1
        .starts_with("strategy=round_robin"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn decision_log_keeps_the_latest_thousand_with_flat_memory() {
    let (a, b) = (backend(&[]), backend(&[]));
    let lb = alb(json!({"strategy": "adaptive", "backends": urls(&[&a, &b])}));
    load(&lb.url(), 5000, 8).await;
    let warm = rss_kib(lb.pid());
    load(&lb.url(), 15000, 8).await;
    let after = rss_kib(lb.pid());
    assert!(
        after < warm + 4 * 1024,
        "memory grew from {warm} KiB to {after} KiB over 15000 requests"
    );
    let d: Value = admin_json(&lb, "/decisions").await;
    let list = d["decisions"].as_array().unwrap();
    assert_eq!(list.len(), 1000);
    let ids: Vec<u64> = list.iter().map(|d| d["id"].as_u64().unwrap()).collect();
    assert_eq!(ids[0], 20000, "newest first");
    assert!(ids.windows(2).all(|w| w[0] == w[1] + 1));
    let first = &list[0];
    assert_eq!(first["status"], 200);
    assert_eq!(first["sampled"].as_array().unwrap().len(), 2);
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    // filters
    let only_a = admin_json(
        &lb,
        &format!("/decisions?backend={}&outcome=ok&limit=50", name(&a)),
    )
    .await;
    let only_a = only_a["decisions"].as_array().unwrap();
    assert_eq!(only_a.len(), 50);
    assert!(only_a.iter().all(|d| d["chosen"] == name(&a)));
}

#[tokio::test]
async fn decision_stream_delivers_decisions_as_they_happen() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let response = client()
        .get(format!("{}/decisions/stream", lb.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    for _ in 0..3 {
        get(&client(), &lb.url()).await;
    }
    let mut text = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && tokio::time::Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                assert!(event.contains("event: decision"), "{event}");
                let d: Value = serde_json::from_str(data).unwrap();
                assert_eq!(d["chosen"], name(&b));
                seen.push(d["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seen, vec![1, 2, 3]);
}

#[tokio::test]
async fn shadow_strategies_record_what_they_would_have_chosen() {
    let (a, b, c) = (backend(&[]), backend(&[]), backend(&[]));
    let lb = alb(json!({"strategy": "adaptive", "shadow": true, "backends": urls(&[&a, &b, &c])}));
    load(&lb.url(), 60, 3).await;
    let d: Value = admin_json(&lb, "/decisions?limit=1").await;
    let shadow = d["decisions"][0]["shadow"].as_array().unwrap();
    let names: Vec<&str> = shadow
        .iter()
        .map(|s| s["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["round_robin", "least_conn", "sticky", "prequal"]);
    let m = scrape(&lb).await;
    for s in ["round_robin", "least_conn", "sticky", "prequal"] {
        let agree = sample(
            &m,
            &format!(r#"lb_shadow_decisions_total{{strategy="{s}",agrees="true"}}"#),
        )
        .unwrap_or(0.0);
        let disagree = sample(
            &m,
            &format!(r#"lb_shadow_decisions_total{{strategy="{s}",agrees="false"}}"#),
        )
        .unwrap_or(0.0);
        assert_eq!(agree + disagree, 60.0, "{s}");
    }
}
