//! The access log against real processes: one parseable line per request with the values
//! the client saw, nginx's `combined` format, rotation with SIGUSR1, and a bad path refused
//! before binding.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::{json, Value};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    wait_until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(20),
        || async { lines(path).len() >= n },
    )
    .await;
    lines(path)
}

/// What a client saw of one request.
struct Seen {
    status: u16,
    backend: String,
    request_id: String,
    body_len: usize,
}

#[tokio::test]
async fn every_request_gets_a_json_line_matching_what_the_client_saw() {
    let (a, b) = (backend(&[]), backend(&[]));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let alb = alb(json!({
        "backends": urls(&[&a, &b]),
        "access_log": {"path": log.to_str().unwrap(), "format": "json"},
    }));
    let c = client();
    let mut seen = Vec::new();
    for i in 0..100 {
        let request = if i % 10 == 9 {
            c.post(format!("{}/_sim/upload?i={i}", alb.url()))
                .body(vec![b'x'; 1000 + i])
        } else {
            c.get(format!("{}/item/{i}?q={i}", alb.url()))
                .header("user-agent", "access-log-test/1.0")
        };
        let response = request.send().await.unwrap();
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        let (status, backend, request_id) = (
            response.status().as_u16(),
            header("x-alb-backend"),
            header("x-request-id"),
        );
        let body_len = response.bytes().await.unwrap().len();
        seen.push(Seen {
            status,
            backend,
            request_id,
            body_len,
        });
    }
    let lines = wait_for_lines(&log, 100).await;
    assert_eq!(lines.len(), 100, "one line per request");
    let decisions = admin_json(&alb, "/decisions?limit=1000").await;
    for (i, (line, seen)) in lines.iter().zip(&seen).enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["status"], seen.status, "{line}");
        assert_eq!(v["backend"], seen.backend.as_str(), "{line}");
        assert_eq!(v["request_id"], seen.request_id.as_str(), "{line}");
        assert_eq!(v["bytes_sent"], seen.body_len, "{line}");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert!(v["duration_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
        assert_eq!(v["retried"], false);
        assert!(v["time"].as_str().unwrap().ends_with('Z'), "{line}");
        if i % 10 == 9 {
            assert_eq!(v["method"], "POST");
            assert_eq!(v["bytes_received"], 1000 + i, "{line}");
        } else {
            assert_eq!(v["method"], "GET");
            assert_eq!(v["path"], format!("/item/{i}?q={i}"));
            assert_eq!(v["bytes_received"], 0);
            assert_eq!(v["user_agent"], "access-log-test/1.0");
        }
        // The decision id leads to the same request in /decisions.
        let id = v["decision_id"].as_u64().unwrap();
        let decision = decisions["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("decision {id} not in /decisions"));
        assert_eq!(decision["request_id"], seen.request_id.as_str());
        assert_eq!(decision["chosen"], seen.backend.as_str());
        // Secrets never reach the log: no header but User-Agent and Referer is written.
        assert!(!line.to_ascii_lowercase().contains("authorization"));
    }
}

#[tokio::test]
async fn albs_own_refusals_are_logged_and_secrets_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // Nothing listens on the backend: every request is ALB's own 502 (or 503 once down).
    let alb = alb(json!({
        "backends": [format!("http://127.0.0.1:{}", free_port())],
        "access_log": {"path": log.to_str().unwrap()},
        "retries": {"attempts": 0},
    }));
    let c = client();
    for _ in 0..3 {
        let r = c
            .get(format!("{}/private", alb.url()))
            .header("authorization", "Bearer s3cr3t-token")
            .header("cookie", "session=s3cr3t-cookie")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error());
    }
    let lines = wait_for_lines(&log, 3).await;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["status"].as_u64().unwrap() >= 502, "{line}");
        assert!(!line.contains("s3cr3t"), "a secret reached the log: {line}");
    }
}

#[tokio::test]
async fn combined_lines_parse_as_the_combined_log_format() {
    let a = backend(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let alb = alb(json!({
        "backends": urls(&[&a]),
        "access_log": {"path": log.to_str().unwrap(), "format": "combined"},
    }));
    let c = client();
    for i in 0..20 {
        c.get(format!("{}/page/{i}", alb.url()))
            .header("referer", "http://example.test/start")
            .header("user-agent", "Mozilla/5.0 (combined test)")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let lines = wait_for_lines(&log, 20).await;
    // The usual regex of log parsers for the combined format.
    let combined = regex::Regex::new(
        r#"^(\S+) \S+ \S+ \[(\d{2})/(\w{3})/(\d{4}):(\d{2}:\d{2}:\d{2}) ([+-]\d{4})\] "(\S+) (\S+) (\S+)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap();
    for (i, line) in lines.iter().enumerate() {
        let m = combined
            .captures(line)
            .unwrap_or_else(|| panic!("not combined: {line}"));
        assert_eq!(&m[1], "127.0.0.1");
        assert_eq!(&m[7], "GET");
        assert_eq!(&m[8], format!("/page/{i}"));
        assert_eq!(&m[9], "HTTP/1.1");
        assert_eq!(&m[10], "200");
        assert_eq!(
            m[11].parse::<usize>().unwrap(),
            format!("backend {}\n", a.port).len()
        );
        assert_eq!(&m[12], "http://example.test/start");
        assert_eq!(&m[13], "Mozilla/5.0 (combined test)");
    }
}

#[tokio::test]
async fn sigusr1_reopens_the_file_after_a_rotation_and_no_line_is_lost() {
    let a = backend(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let alb = alb(json!({
        "backends": urls(&[&a]),
        "access_log": {"path": log.to_str().unwrap()},
    }));
    let c = client();
    for i in 0..50 {
        get(&c, &format!("{}/before/{i}", alb.url())).await;
    }
    wait_for_lines(&log, 50).await;
    std::fs::rename(&log, &rotated).unwrap();
    alb.signal("USR1");
    wait_until("the reopen is logged", Duration::from_secs(10), || async {
        alb.log_text().contains("access log reopened")
    })
    .await;
    for i in 0..50 {
        get(&c, &format!("{}/after/{i}", alb.url())).await;
    }
    let after = wait_for_lines(&log, 50).await;
    let before = lines(&rotated);
    assert_eq!((before.len(), after.len()), (50, 50));
    assert!(before.iter().all(|l| l.contains("/before/")));
    assert!(after.iter().all(|l| l.contains("/after/")));
}

#[tokio::test]
async fn bad_access_log_settings_stop_alb_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"path": "/nonexistent-dir/access.log"}),
            "access_log.path",
        ),
        (
            json!({"path": "a.log", "format": "xml"}),
            "access_log.format",
        ),
        (json!({"path": "a.log", "sample": 1.5}), "access_log.sample"),
    ];
    for (access_log, key) in cases {
        let port = free_port();
        let config = json!({
            "port": port,
            "admin_addr": format!("127.0.0.1:{}", free_port()),
            "backends": ["http://127.0.0.1:1"],
            "access_log": access_log,
        });
        let path = write_config(dir.path(), "c.json", &config.to_string());
        let (code, _, stderr) = alb_output(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "the port was bound"
        );
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_logged_as_499() {
    let slow = backend(&["--delay", "3s"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let alb = alb(json!({
        "backends": urls(&[&slow]),
        "access_log": {"path": log.to_str().unwrap()},
    }));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(format!("{}/slow", alb.url()))
        .header("x-request-id", "gave-up-1")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to time out");
    let lines = wait_for_lines(&log, 1).await;
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["status"], 499, "{}", lines[0]);
    assert_eq!(v["path"], "/slow");
    assert_eq!(v["request_id"], "gave-up-1");
    // The decision is in /decisions too, with the same status.
    wait_until("the 499 decision", Duration::from_secs(10), || async {
        let d = admin_json(&alb, "/decisions").await;
        d["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == 499 && d["request_id"] == "gave-up-1")
    })
    .await;
}

#[tokio::test]
async fn the_last_lines_are_written_when_alb_stops() {
    let a = backend(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut alb = alb(json!({
        "backends": urls(&[&a]),
        "access_log": {"path": log.to_str().unwrap()},
        "drain_timeout": 2,
    }));
    let c = client();
    for i in 0..20 {
        get(&c, &format!("{}/last/{i}", alb.url())).await;
    }
    alb.signal("TERM");
    assert_eq!(alb.wait_exit(), Some(0));
    assert_eq!(lines(&log).len(), 20, "lines lost at shutdown");
}
