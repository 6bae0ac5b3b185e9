//! Keep serving through backend faults, restarts, reloads and hostile clients.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use serde_json::{json, Value};

/// GETs from `workers` loops until `stop`; returns every answer.
fn steady_stream(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let loops = (0..workers).map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            async move {
                let c = client();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    out.push(get(&c, &url).await);
                }
                out
            }
        });
        futures_util::future::join_all(loops)
            .await
            .into_iter()
            .flatten()
            .collect()
    })
}

#[tokio::test]
async fn sigkill_of_a_backend_loses_no_request() {
    let mut victim = backend(&["--delay", "2ms"]);
    let (b, c) = (backend(&["--delay", "2ms"]), backend(&["--delay", "2ms"]));
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&victim, &b, &c]),
        "health_check_interval": 3600
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = steady_stream(lb.url(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_name = name(&victim);
    victim.kill();
    wait_until(
        "the dead backend is ejected",
        Duration::from_secs(20),
        || async {
            let detail = admin_json(&lb, &format!("/backends/{victim_name}")).await;
            detail["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["source"] == "outlier_detection")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = stream.await.unwrap();
    assert!(answers.len() > 100, "only {} requests", answers.len());
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed, first: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    let m = scrape(&lb).await;
    let retried = sample(&m, r#"lb_retries_total{reason="connect"}"#).unwrap_or(0.0)
        + sample(&m, r#"lb_retries_total{reason="upstream"}"#).unwrap_or(0.0);
    assert!(retried >= 1.0, "{m}");
    assert!(lb.log_text().contains("EJECTED"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let bs: Vec<Proc> = (0..2).map(|_| backend(&["--delay", "500ms"])).collect();
    let mut lb = alb(json!({"backends": urls(&bs.iter().collect::<Vec<_>>())}));
    let url = lb.url();
    let in_flight = spawn_gets(&url, 20);
    wait_until(
        "20 requests are in flight",
        Duration::from_secs(20),
        || async { in_flight_total(&lb).await == 20 },
    )
    .await;
    lb.signal("TERM");
    let port = lb.port;
    wait_until(
        "new connections are refused",
        Duration::from_secs(20),
        || async move { TcpStream::connect(("127.0.0.1", port)).is_err() },
    )
    .await;
    for r in in_flight {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let code = tokio::task::spawn_blocking(move || lb.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// Graceful shutdown reaches connections that are open but idle: each is closed at once
/// (axum-server's connection loop delivers the signal; ALB patches how that loop polls it,
/// see vendor/axum-server/ALB-PATCH.md), long before the drain deadline would force it.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_before_the_drain_deadline() {
    let b = backend(&[]);
    // An idle connection is also closed when it sends no next request within
    // `client_header_timeout`: both are set far above the wait below.
    let mut lb = alb(json!({
        "backends": urls(&[&b]), "drain_timeout": "120s", "client_header_timeout": "120s"
    }));
    let mut idle = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 4096];
    let n = idle.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    lb.signal("TERM");
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).map(|_| rest)
    })
    .await
    .unwrap();
    match closed {
        Ok(rest) => assert!(rest.is_empty(), "unexpected bytes: {rest:?}"),
        Err(e) => panic!("the idle connection was not closed within 30 s of SIGTERM: {e}"),
    }
    let code = tokio::task::spawn_blocking(move || lb.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sighup_adds_a_backend_without_failing_requests_and_refuses_a_broken_file() {
    let (a, b, c) = (
        backend(&["--delay", "2ms"]),
        backend(&["--delay", "2ms"]),
        backend(&["--delay", "2ms"]),
    );
    let lb = alb(json!({"strategy": "round_robin", "backends": urls(&[&a, &b])}));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = steady_stream(lb.url(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(lb.config_path()).unwrap()).unwrap();
    config["backends"] = urls(&[&a, &b, &c]);
    config["strategy"] = "least_conn".into();
    std::fs::write(lb.config_path(), config.to_string()).unwrap();
    lb.signal("HUP");
    wait_until(
        "the added backend gets traffic",
        Duration::from_secs(20),
        || async {
            load(&lb.url(), 9, 1)
                .await
                .iter()
                .any(|x| x.backend == Some(name(&c)))
        },
    )
    .await;
    assert!(
        lb.log_text().contains("config reloaded"),
        "{}",
        lb.log_text()
    );
    assert_eq!(admin_json(&lb, "/backends").await["strategy"], "least_conn");

    std::fs::write(lb.config_path(), "{ \"backends\": [ }").unwrap();
    lb.signal("HUP");
    wait_until(
        "the broken reload is logged",
        Duration::from_secs(20),
        || async { lb.log_text().contains("config reload failed") },
    )
    .await;
    assert!(
        lb.log_text().contains("invalid JSON at line 1"),
        "{}",
        lb.log_text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = stream.await.unwrap();
    assert!(
        answers.iter().all(|x| x.status == 200),
        "a request failed during the reloads"
    );
    // still serving all three after the refused reload
    let after = shares(&load(&lb.url(), 30, 3).await);
    assert_eq!(after.len(), 3, "{after:?}");
}

#[tokio::test]
async fn post_reload_drain_and_enable_on_the_admin_listener() {
    let (a, b) = (backend(&[]), backend(&[]));
    let lb = alb(json!({"strategy": "round_robin", "backends": urls(&[&a, &b])}));
    let c = client();
    let drained = c
        .post(format!("{}/backends/{}/drain", lb.admin_url(), name(&a)))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    wait_until(
        "the drained backend gets nothing",
        Duration::from_secs(20),
        || async {
            load(&lb.url(), 6, 1)
                .await
                .iter()
                .all(|x| x.backend == Some(name(&b)))
        },
    )
    .await;
    let detail = admin_json(&lb, "/backends/0").await;
    assert_eq!(
        detail["transitions"].as_array().unwrap().last().unwrap()["source"],
        "admin"
    );
    c.post(format!("{}/backends/{}/enable", lb.admin_url(), name(&a)))
        .send()
        .await
        .unwrap();
    wait_until(
        "the enabled backend is back",
        Duration::from_secs(20),
        || async {
            load(&lb.url(), 6, 1)
                .await
                .iter()
                .any(|x| x.backend == Some(name(&a)))
        },
    )
    .await;
    let reload = c
        .post(format!("{}/reload", lb.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert!(reload.text().await.unwrap().starts_with("reloaded"));
    // the proxy port does not expose control routes
    let on_proxy = c.post(format!("{}/reload", lb.url())).send().await.unwrap();
    assert_ne!(on_proxy.text().await.unwrap().trim(), "reloaded");
}

#[tokio::test]
async fn slow_header_clients_are_cut_off_and_others_served() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b]), "client_header_timeout": "1s"}));
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // a normal client is served meanwhile
    let normal = get(&client(), &lb.url()).await;
    assert_eq!(normal.status, 200);
    // the slow ones keep trickling, and are closed after the header timeout
    for s in slow.iter_mut() {
        let _ = s.write_all(b"a");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    let closed = tokio::task::spawn_blocking(move || {
        slow.iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                let mut buf = [0u8; 512];
                // EOF or reset: the server closed it (hyper may send a 408 first)
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 200);
}

/// One GET with `count` header fields in all (`Host` among them), written by hand so
/// nothing adds fields of its own: whether ALB forwarded it (the answer names the backend;
/// what the backend thought of 100-odd fields is its own affair) or refused it with `431`.
fn forwarded_with_fields(lb: &Proc, count: usize) -> bool {
    let mut head = String::from("GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n");
    for i in 2..count {
        head.push_str(&format!("x-field-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr(lb.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let forwarded = answer.contains("\r\nx-alb-backend: ");
    assert!(
        forwarded || answer.starts_with("http/1.1 431"),
        "{count} fields: {answer}"
    );
    forwarded
}

/// `max_headers` counts every field, `Host` included: at the limit the request is
/// forwarded, one past it ALB answers `431` itself. The default (100) is hyper's own limit,
/// which ALB then leaves unset (see `server::HYPER_MAX_HEADERS`): this is what notices if
/// hyper's changes.
#[tokio::test]
async fn max_headers_holds_at_exactly_its_value_default_or_set() {
    let b = backend(&[]);
    let default = alb(json!({"backends": urls(&[&b])}));
    assert!(forwarded_with_fields(&default, 100));
    assert!(!forwarded_with_fields(&default, 101));
    let set = alb(json!({"backends": urls(&[&b]), "max_headers": 20}));
    assert!(forwarded_with_fields(&set, 20));
    assert!(!forwarded_with_fields(&set, 21));
}

#[tokio::test]
async fn oversized_header_gets_431_and_oversized_body_413() {
    let b = backend(&[]);
    let lb =
        alb(json!({"backends": urls(&[&b]), "max_header_bytes": 8192, "max_request_body": 1000}));
    let c = client();
    let big_header = c
        .get(lb.url())
        .header("x-big", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big_header.status(), 431);
    let many = (0..150).fold(c.get(lb.url()), |r, i| r.header(format!("x-h{i}"), "v"));
    assert_eq!(many.send().await.unwrap().status(), 431);

    let declared = c
        .post(format!("{}/_sim/upload", lb.url()))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    let chunks =
        futures_util::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 1000])));
    let streamed = c
        .post(format!("{}/_sim/upload", lb.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    let small = c
        .post(format!("{}/_sim/upload", lb.url()))
        .body(vec![b'z'; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(small.text().await.unwrap(), "received 500\n");
}

#[tokio::test]
async fn outlier_detection_ejects_and_brings_back() {
    let failing = backend(&["--error-rate", "1.0"]);
    let ok = backend(&[]);
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&failing, &ok]),
        "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "1s"}
    }));
    load(&lb.url(), 6, 1).await;
    let detail = admin_json(&lb, "/backends/0").await;
    assert_eq!(detail["transitions"][0]["source"], "outlier_detection");
    assert_eq!(detail["transitions"][0]["up"], false);
    assert!(detail["transitions"][0]["cause"]
        .as_str()
        .unwrap()
        .starts_with("3 failures in a row"));
    let m = scrape(&lb).await;
    assert_eq!(
        sample(
            &m,
            &format!(
                r#"lb_outlier_ejections_total{{backend="{}"}}"#,
                name(&failing)
            )
        ),
        Some(1.0)
    );
    wait_until("the ejection ends", Duration::from_secs(20), || async {
        let d = admin_json(&lb, "/backends/0").await;
        d["transitions"].as_array().unwrap().iter().any(|t| {
            t["cause"]
                .as_str()
                .unwrap()
                .starts_with("ejection of 1s ended")
        })
    })
    .await;
    assert!(load(&lb.url(), 4, 1)
        .await
        .iter()
        .any(|a| a.backend == Some(name(&failing))));
}

#[tokio::test]
async fn outlier_detection_never_ejects_past_the_percentage() {
    let (f1, f2) = (
        backend(&["--error-rate", "1.0"]),
        backend(&["--error-rate", "1.0"]),
    );
    let ok = backend(&[]);
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&f1, &f2, &ok]),
        "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "60s", "max_ejection_percent": 50}
    }));
    load(&lb.url(), 30, 1).await;
    let b = admin_json(&lb, "/backends").await;
    let ejected = b["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["last_transition"]["source"] == "outlier_detection")
        .count();
    assert_eq!(ejected, 1);
    assert!(lb
        .log_text()
        .contains("too many backends are ejected already"));
}
