//! gRPC balanced per request: real Python grpcio servers (`tests/grpc/server.py`) behind
//! ALB speaking HTTP/2 to them, driven by a real grpcio client (`tests/grpc/client.py`) over
//! one HTTP/2 connection.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::{json, Value};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// A grpcio server (`ok`, `unavailable` or `exhausted`), killed on drop.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start(mode: &str) -> GrpcServer {
        let port = free_port();
        let child = Command::new("python3")
            .arg(script("server.py"))
            .args([port.to_string(), mode.to_owned()])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs");
        wait_for_port(port);
        GrpcServer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls the server received, as it counts them (asked directly, not through ALB).
    fn calls(&self) -> u64 {
        let out = client_run(&format!("127.0.0.1:{}", self.port), "count");
        out.trim().parse().expect("a count")
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_run(target: &str, what: &str) -> String {
    let out = Command::new("python3")
        .arg(script("client.py"))
        .args([target, what])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` unary calls through `lb` on one channel; the client's JSON summary.
fn calls_through(lb: &Proc, n: usize) -> Value {
    let target = format!("127.0.0.1:{}", lb.port);
    serde_json::from_str(&client_run(&target, &n.to_string())).unwrap()
}

fn alb_for(servers: &[&GrpcServer], extra: Value) -> Proc {
    let mut config = json!({
        "strategy": "adaptive",
        "upstream_protocol": "h2",
        "backends": servers.iter().map(|s| s.url()).collect::<Vec<_>>(),
        "health_check": {"grpc_service": ""},
        "health_check_interval": 0.2,
        "unhealthy_threshold": 1,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    alb(config)
}

#[tokio::test]
async fn failing_grpc_server_gets_little_traffic_and_status_and_trailers_pass() {
    let ok1 = GrpcServer::start("ok");
    let ok2 = GrpcServer::start("ok");
    let bad = GrpcServer::start("unavailable");
    let lb = alb_for(
        &[&ok1, &ok2, &bad],
        json!({"outlier_detection": {"enabled": false}}),
    );
    // Warm-up: the estimates learn that `bad` fails.
    let warm = calls_through(&lb, 100);
    // Trailers and status intact, both ways a call can end.
    let ok = &warm["first_ok"];
    let served_by = ok["trailers"]["x-served-by"].as_str().unwrap();
    assert_eq!(
        ok["message"].as_str().unwrap(),
        format!("server {served_by}: hello"),
        "{warm}"
    );
    let error = &warm["first_error"];
    assert_eq!(error["code"], "UNAVAILABLE", "{warm}");
    assert_eq!(
        error["details"],
        format!("server {} is unavailable", bad.port),
        "{warm}"
    );
    let before = bad.calls();
    let run = calls_through(&lb, 1000);
    let to_bad = bad.calls() - before;
    assert!(
        to_bad < 100,
        "the failing server got {to_bad} of 1000: {run}"
    );
    assert_eq!(
        run["codes"]["OK"].as_u64().unwrap() + to_bad,
        1000,
        "every call to a good server succeeds: {run}"
    );
    // The decision record names the code; the per-backend error metric counts it.
    let decisions = admin_json(&lb, "/decisions").await;
    let codes: Vec<&str> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["grpc_status"]["name"].as_str())
        .collect();
    assert!(codes.contains(&"OK"), "{decisions}");
    let metrics = scrape(&lb).await;
    let series = format!(
        "lb_backend_errors_total{{backend=\"127.0.0.1:{}\",kind=\"grpc_status\"}}",
        bad.port
    );
    let errors = sample(&metrics, &series).unwrap_or_default();
    assert!(errors >= 1.0, "{series} = {errors}");
    assert_eq!(errors as u64, bad.calls(), "every failed call counted once");
    // The gRPC health protocol kept all three in service (the failing one's health service
    // says SERVING: its calls fail, which is outlier detection's business).
    let view = admin_json(&lb, "/backends").await;
    for b in view["backends"].as_array().unwrap() {
        assert_eq!(b["up"], true, "{b}");
    }
}

#[tokio::test]
async fn grpc_health_check_takes_out_a_server_that_is_not_grpc() {
    let grpc_server = GrpcServer::start("ok");
    let http_only = backend(&[]);
    let lb = alb(json!({
        "upstream_protocol": "h2",
        "backends": [grpc_server.url(), http_only.url()],
        "health_check": {"grpc_service": ""},
        "health_check_interval": 0.2,
        "unhealthy_threshold": 1,
    }));
    let name = format!("127.0.0.1:{}", http_only.port);
    wait_until(
        "the HTTP backend fails the gRPC check",
        Duration::from_secs(20),
        || async {
            let view = admin_json(&lb, "/backends").await;
            view["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["backend"] == name.as_str() && b["up"] == false)
        },
    )
    .await;
    let view = admin_json(&lb, "/backends").await;
    for b in view["backends"].as_array().unwrap() {
        if b["backend"] == name.as_str() {
            let cause = b["last_transition"]["cause"].as_str().unwrap();
            assert!(cause.contains("gRPC health check"), "{cause}");
        } else {
            assert_eq!(b["up"], true, "{b}");
        }
    }
}

#[tokio::test]
async fn fast_resource_exhausted_does_not_attract_traffic() {
    let ok1 = GrpcServer::start("ok");
    let ok2 = GrpcServer::start("ok");
    let exhausted = GrpcServer::start("exhausted");
    let lb = alb_for(
        &[&ok1, &ok2, &exhausted],
        json!({"outlier_detection": {"enabled": false}}),
    );
    calls_through(&lb, 100);
    let before = exhausted.calls();
    calls_through(&lb, 1000);
    let to_exhausted = exhausted.calls() - before;
    assert!(
        to_exhausted < 100,
        "the exhausted server got {to_exhausted} of 1000"
    );
}

#[tokio::test]
async fn outlier_detection_ejects_a_grpc_server_that_fails() {
    let ok1 = GrpcServer::start("ok");
    let ok2 = GrpcServer::start("ok");
    let bad = GrpcServer::start("unavailable");
    let lb = alb_for(
        &[&ok1, &ok2, &bad],
        json!({"outlier_detection": {"consecutive_failures": 2}}),
    );
    let backend = format!("127.0.0.1:{}", bad.port);
    wait_until(
        "the failing server is ejected",
        Duration::from_secs(60),
        || async {
            calls_through(&lb, 50);
            let view = admin_json(&lb, "/backends").await;
            view["backends"].as_array().unwrap().iter().any(|b| {
                b["backend"] == backend.as_str()
                    && b["last_transition"]["source"] == "outlier_detection"
                    && b["last_transition"]["up"] == false
            })
        },
    )
    .await;
    let view = admin_json(&lb, "/backends").await;
    let cause = view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == backend.as_str())
        .map(|b| b["last_transition"]["cause"].to_string())
        .unwrap_or_default();
    assert!(cause.contains("UNAVAILABLE"), "{cause}");
}

#[tokio::test]
async fn grpc_timeout_shortens_the_request_timeout() {
    let slow = backend(&["--delay", "5s"]);
    let lb = alb(json!({"backends": [slow.url()], "request_timeout": 60}));
    let answer = client()
        .get(lb.url())
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "200m")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 504);
    let text = answer.text().await.unwrap();
    // The client's deadline, not request_timeout's 60 s.
    assert!(text.contains("no response within 200ms"), "{text}");
}
