//! Rate limiting, backpressure, metrics, admin routes, Prometheus, and the library example.

mod common;

use std::{net::IpAddr, process::Command, time::Duration};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn rate_limit_per_ip_with_retry_after() {
    let b = backend(&[]);
    let lb = alb(json!({
        "backends": urls(&[&b]),
        "rate_limit": {"requests_per_second": 10, "burst": 20, "key": "ip"}
    }));
    let limited = client_from(Some(IpAddr::from([127, 0, 0, 2])));
    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..40 {
        let r = limited.get(lb.url()).send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(r.headers()["ratelimit-limit"], "20");
                assert!(r.headers().contains_key("ratelimit-remaining"));
            }
            429 => {
                refused += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                assert_eq!(r.headers()["ratelimit-remaining"], "0");
                assert!(r.headers().contains_key("ratelimit-reset"));
                assert!(r
                    .text()
                    .await
                    .unwrap()
                    .starts_with("alb: rate limit exceeded"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // 20 from the burst, plus whatever refilled at 10/s while the run lasted.
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        ok >= 20 && ok <= 20 + refilled,
        "{ok} allowed, {refilled} refilled"
    );
    assert!(refused > 0);

    // another address has its own bucket
    let other = client_from(Some(IpAddr::from([127, 0, 0, 3])));
    assert_eq!(other.get(lb.url()).send().await.unwrap().status(), 200);

    // forging X-Forwarded-For does not buy a fresh bucket when no proxy is trusted
    let forger = client_from(Some(IpAddr::from([127, 0, 0, 4])));
    let mut forged_refusals = 0;
    for i in 0..40 {
        let r = forger
            .get(lb.url())
            .header("x-forwarded-for", format!("10.0.{}.{}", i / 250, i % 250))
            .send()
            .await
            .unwrap();
        forged_refusals += usize::from(r.status() == 429);
    }
    assert!(forged_refusals > 0, "every forged address got a new bucket");

    let metrics = scrape(&lb).await;
    assert_eq!(
        sample(&metrics, "lb_rate_limited_requests_total"),
        Some((refused + forged_refusals) as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "lb_http_requests_total{method=\"GET\",code=\"429\"}"
        ),
        Some((refused + forged_refusals) as f64),
        "429s are counted like any other answer"
    );
}

#[tokio::test]
async fn max_in_flight_sheds_the_eleventh_request() {
    let (a, b) = (backend(&["--delay", "2s"]), backend(&["--delay", "2s"]));
    let lb = alb(json!({"backends": urls(&[&a, &b]), "max_in_flight": 10}));
    let url = lb.url();
    let held = spawn_gets(&url, 10);
    wait_until(
        "10 requests are in flight",
        Duration::from_secs(20),
        || async { in_flight_total(&lb).await == 10 },
    )
    .await;
    let shed = client().get(&url).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(shed.text().await.unwrap().contains("overloaded"));
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    let metrics = scrape(&lb).await;
    assert_eq!(sample(&metrics, "lb_load_shed_total"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            "lb_http_requests_total{method=\"GET\",code=\"503\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn max_connections_per_backend_sheds_when_all_are_full() {
    let slow = backend(&["--delay", "2s"]);
    let lb = alb(json!({"backends": urls(&[&slow]), "max_connections": 2}));
    let url = lb.url();
    let held = spawn_gets(&url, 2);
    wait_until(
        "2 requests are in flight",
        Duration::from_secs(20),
        || async { in_flight_total(&lb).await == 2 },
    )
    .await;
    let shed = get(&client(), &url).await;
    assert_eq!(shed.status, 503);
    assert!(shed.body.contains("every backend has 2 requests in flight"));
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn metrics_count_exactly_and_pass_promtool() {
    let (a, b) = (backend(&[]), backend(&["--error-rate", "1.0"]));
    let lb = alb(json!({"strategy": "round_robin", "backends": urls(&[&a, &b])}));
    let c = client();
    for _ in 0..6 {
        c.get(lb.url()).send().await.unwrap();
    }
    for _ in 0..4 {
        c.post(lb.url()).body("x").send().await.unwrap();
    }
    let m = scrape(&lb).await;
    let (na, nb) = (name(&a), name(&b));
    assert_eq!(
        sample(&m, r#"lb_http_requests_total{method="GET",code="200"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, r#"lb_http_requests_total{method="GET",code="503"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, r#"lb_http_requests_total{method="POST",code="200"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"lb_request_duration_seconds_count{method="GET",code="200"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"lb_backend_requests_total{{backend="{na}",code="200"}}"#)
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"lb_backend_errors_total{{backend="{nb}",kind="status_5xx"}}"#)
        ),
        Some(5.0)
    );
    assert_eq!(sample(&m, "lb_backends_alive"), Some(2.0));
    assert_eq!(
        sample(&m, &format!(r#"lb_backend_up{{backend="{na}"}}"#)),
        Some(1.0)
    );
    assert!(sample(&m, &format!(r#"lb_backend_latency_ewma{{backend="{na}"}}"#)).unwrap() > 0.0);
    assert!(
        m.contains(r#"lb_request_duration_seconds_bucket{method="GET",code="200",le="0.0005"}"#)
    );
    assert!(m.contains(r#"le="10"}"#));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(m.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[tokio::test]
async fn admin_health_and_backends() {
    let mut a = backend(&[]);
    let lb = alb(
        json!({"backends": urls(&[&a]), "health_check_interval": 0.2, "unhealthy_threshold": 1}),
    );
    let health = client()
        .get(format!("{}/health", lb.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["backends_alive"], 1);
    a.kill();
    wait_until("/health turns 503", Duration::from_secs(20), || async {
        client()
            .get(format!("{}/health", lb.admin_url()))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    let backends: Value = admin_json(&lb, "/backends").await;
    let view = &backends["backends"][0];
    assert_eq!(view["backend"], name(&a));
    assert_eq!(view["up"], false);
    let cause = view["last_transition"]["cause"].as_str().unwrap();
    assert!(cause.contains("health checks failed"), "{cause}");
    for key in ["url", "in_flight", "ewma_ms", "score", "requests", "errors"] {
        assert!(view.get(key).is_some(), "missing {key}");
    }
}

/// Every `expr` of the dashboard and the alert rules.
fn observability_queries() -> (Vec<String>, Vec<String>) {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string("observability/grafana-dashboard.json").unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap().iter();
    let dash = panels
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let rules = std::fs::read_to_string("observability/alerts.yml")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect();
    (dash, rules)
}

#[tokio::test]
async fn real_prometheus_scrapes_alb_and_every_panel_has_data() {
    let (a, b) = (backend(&[]), backend(&["--delay", "5ms"]));
    let lb = alb(json!({"backends": urls(&[&a, &b]), "health_check_interval": 1}));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("observability/alerts.yml", dir.path().join("alerts.yml")).unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: alb\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            lb.admin_port
        ),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args([
            "check",
            "config",
            dir.path().join("prometheus.yml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let rules = Command::new("promtool")
        .args(["check", "rules", "observability/alerts.yml"])
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );

    let mut prometheus = Command::new("prometheus")
        .args([
            &format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut prometheus);
    wait_for_port(prom_port);

    let query = |expr: String| async move {
        let url = format!("http://127.0.0.1:{prom_port}/api/v1/query");
        let r: Value = json_of(client().get(url).query(&[("query", expr.as_str())])).await;
        r
    };
    // Keep traffic flowing while Prometheus collects enough samples for rate() over [1m].
    let (dash, alerts) = observability_queries();
    assert!(dash.len() >= 10 && alerts.len() >= 4);
    let mut missing = dash.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !missing.is_empty() && std::time::Instant::now() < deadline {
        load(&lb.url(), 50, 5).await;
        let mut still = Vec::new();
        for expr in missing {
            let r = query(expr.clone()).await;
            assert_eq!(r["status"], "success", "{expr}: {r}");
            if r["data"]["result"].as_array().unwrap().is_empty() {
                still.push(expr);
            }
        }
        missing = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without data: {missing:#?}"
    );
    for expr in alerts {
        let r = query(expr.clone()).await;
        assert_eq!(r["status"], "success", "{expr}: {r}");
    }
}

#[tokio::test]
async fn example_app_stacks_the_layers_in_front_of_its_routes() {
    // `cargo test` builds examples next to the test binaries.
    let exe = std::path::Path::new(alb_bin())
        .parent()
        .unwrap()
        .join("examples/layered_app");
    assert!(exe.exists(), "{} not built", exe.display());
    let b = backend(&[]);
    let port = free_port();
    let mut app = Command::new(exe)
        .args([port.to_string(), b.url()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let hello = get(&c, &format!("{base}/hello")).await;
    assert_eq!(hello.body, "hello from the app\n");
    let proxied = get(&c, &format!("{base}/anything")).await;
    assert_eq!(proxied.body, format!("backend {}\n", b.port));
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            c.get(format!("{base}/hello"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let metrics = c
        .get(format!("{base}/admin/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        sample(
            &metrics,
            r#"lb_http_requests_total{method="GET",code="429"}"#
        ),
        Some(refused as f64)
    );
    let _ = app.kill();
    let _ = app.wait();
}
