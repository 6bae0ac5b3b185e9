//! Record and replay: ALB records sampled requests (credentials redacted) and `alb replay`
//! sends them again, on their schedule, to fresh backends.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "Bearer very-secret-token-123";
const COOKIE: &str = "session=also-very-secret";

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (method, path) → count, from a recording.
fn requests(recording: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for r in recording {
        let key = (
            r["method"].as_str().unwrap().to_owned(),
            r["path"].as_str().unwrap().to_owned(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

async fn wait_for_lines(path: &Path, n: usize) {
    wait_until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(30),
        || async { lines(path).len() >= n },
    )
    .await;
}

#[tokio::test]
async fn a_recorded_run_replays_against_fresh_backends() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("traffic.jsonl");
    let (a, b) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&a, &b]),
        "record": {"path": recording, "percent": 100, "bodies": true}
    }));

    // 500 requests over about 2.5 s, four at a time: GETs with queries and POSTs with bodies,
    // carrying credentials that must not reach the file.
    let c = client();
    let mut sent = Vec::new();
    for round in 0..125 {
        let mut batch = Vec::new();
        for k in 0..4 {
            let i = round * 4 + k;
            let url = format!("{}/item/{}?q={i}", lb.url(), i % 7);
            let request = if i % 5 == 0 {
                c.post(&url).body(format!("body of request {i}"))
            } else {
                c.get(&url)
            };
            batch.push(
                request
                    .header("authorization", SECRET)
                    .header("cookie", COOKIE)
                    .header("x-test", "kept")
                    .send(),
            );
        }
        for r in futures_util::future::join_all(batch).await {
            sent.push(r.unwrap().status().as_u16());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.iter().all(|s| *s == 200));
    wait_for_lines(&recording, 500).await;

    let text = std::fs::read_to_string(&recording).unwrap();
    assert!(
        !text.contains("very-secret"),
        "a credential reached the recording"
    );
    let recorded = lines(&recording);
    assert_eq!(recorded.len(), 500);
    let first = &recorded[0];
    let headers: BTreeMap<String, String> = first["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(headers["authorization"], "<redacted>");
    assert_eq!(headers["cookie"], "<redacted>");
    assert_eq!(headers["x-test"], "kept");
    assert_eq!(first["route"], "default");
    assert!(first["backend"].as_str().is_some());
    let posts: Vec<&Value> = recorded.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(posts.len(), 100);
    assert!(posts.iter().all(|p| p["body_base64"].is_string()));

    // Fresh backends behind a fresh ALB that records what it receives.
    let again = dir.path().join("again.jsonl");
    let (c1, c2) = (backend(&[]), backend(&[]));
    let lb2 = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&c1, &c2]),
        "record": {"path": again, "bodies": true}
    }));
    let file = recording.to_str().unwrap().to_owned();
    let target = lb2.url();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        alb_output(&["replay", &file, "--target", &target, "--compare"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("compare: 0 of 500 statuses differ"), "{out}");
    assert!(out.contains("requests 500  errors 0.00%"), "{out}");
    wait_for_lines(&again, 500).await;
    let replayed = lines(&again);
    assert_eq!(requests(&replayed), requests(&recorded));
    // Bodies arrive again; credentials were never recorded, so they are not replayed.
    let bodies = |r: &[Value]| {
        let mut b: Vec<String> = r
            .iter()
            .filter_map(|x| x["body_base64"].as_str().map(str::to_owned))
            .collect();
        b.sort();
        b
    };
    assert_eq!(bodies(&replayed), bodies(&recorded));
    assert!(replayed.iter().all(|r| {
        !r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "authorization" || h[0] == "cookie")
    }));

    // The replay keeps the schedule: it is never compressed (open loop, sends on time).
    let pacing = out.lines().find(|l| l.starts_with("pacing:")).unwrap();
    let numbers: Vec<f64> = pacing
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    // "pacing: N requests scheduled over S s (speed 1), sent over R s: E%"
    let (scheduled, replayed_span) = (numbers[1], numbers[3]);
    assert!(scheduled > 2.0, "{pacing}");
    assert!(replayed_span >= scheduled * 0.98, "{pacing}");
}

#[tokio::test]
async fn a_status_that_changed_is_reported_by_compare() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("traffic.jsonl");
    let a = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&a]), "record": {"path": recording}}));
    for i in 0..20 {
        let r = client()
            .get(format!("{}/x/{i}", lb.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for_lines(&recording, 20).await;
    // The same paths against a backend that now fails every request.
    let sick = backend(&["--error-rate", "1.0"]);
    let lb2 = alb(
        json!({"backends": urls(&[&sick]), "retries": {"attempts": 0},
                         "outlier_detection": {"enabled": false}}),
    );
    let file = recording.to_str().unwrap().to_owned();
    let target = lb2.url();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        alb_output(&[
            "replay",
            &file,
            "--target",
            &target,
            "--compare",
            "--speed",
            "4",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "differences give exit status 1: {out}");
    assert!(out.contains("compare: 20 of 20 statuses differ"), "{out}");
    assert!(out.contains("recorded 200, replayed 5"), "{out}");
}

#[tokio::test]
async fn large_bodies_are_left_out_and_the_file_rotates_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("traffic.jsonl");
    let a = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&a]),
        "record": {"path": recording, "bodies": true, "max_bytes": 131072}}));
    let c = client();
    // Over the 64 KiB cap: recorded without its body.
    let big = "x".repeat(70 * 1024);
    assert_eq!(
        c.post(format!("{}/_sim/upload", lb.url()))
            .body(big)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_for_lines(&recording, 1).await;
    assert!(lines(&recording)[0]["body_base64"].is_null());
    // 60 KiB bodies are 80 KiB lines in base64: the second passes the 128 KiB cap, the
    // file is moved to PATH.1 and a new one started (one rotation is kept, as logrotate's
    // `rotate 1`).
    for _ in 0..2 {
        let body = "y".repeat(60 * 1024);
        assert_eq!(
            c.post(format!("{}/_sim/upload", lb.url()))
                .body(body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let rotated = dir.path().join("traffic.jsonl.1");
    wait_until("the recording rotates", Duration::from_secs(30), || async {
        lines(&rotated).len() == 2 && lines(&recording).len() == 1
    })
    .await;
    for file in [&recording, &rotated] {
        assert!(std::fs::metadata(file).unwrap().len() <= 131072);
    }
    assert!(lines(&recording)[0]["body_base64"].is_string());
}

#[test]
fn bad_record_values_are_refused_with_their_key() {
    for (value, key) in [
        (json!({"path": ""}), "record.path"),
        (json!({"path": "t.jsonl", "percent": 150}), "record.percent"),
        (
            json!({"path": "t.jsonl", "max_bytes": 10}),
            "record.max_bytes",
        ),
        (json!({"percent": 10}), "record"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"backends": ["http://127.0.0.1:1"], "record": value});
        let path = write_config(dir.path(), "c.json", &config.to_string());
        let (code, _, err) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{value} accepted");
        assert!(err.contains(key), "{value}: {err}");
    }
}
