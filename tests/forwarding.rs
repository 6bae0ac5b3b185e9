//! The forwarding path: headers, streaming, protocols and upstream failures.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

fn echo_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
}

#[tokio::test]
async fn host_and_forwarded_headers_are_set_and_hop_by_hop_stripped() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let response = client()
        .get(format!("{}/_sim/echo?q=1", lb.url()))
        .header("host", "app.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-alb-backend"], name(&b).as_str());
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["uri"], "/_sim/echo?q=1");
    assert_eq!(echo_header(&echo, "host"), Some("app.example"));
    assert_eq!(echo_header(&echo, "x-forwarded-host"), Some("app.example"));
    assert_eq!(echo_header(&echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        echo_header(&echo, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(echo_header(&echo, "x-end-to-end"), Some("kept"));
    for hop in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(echo_header(&echo, hop), None, "{hop} was forwarded");
    }
    // hyper adds its own Connection handling; the client's token list must not survive
    assert_ne!(echo_header(&echo, "connection"), Some("keep-alive, x-hop"));
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_backend() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!("{}/_sim/echo", lb.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echo_header(&echo, "host"),
        Some(format!("127.0.0.1:{}", lb.port).as_str())
    );
}

#[tokio::test]
async fn hundred_megabytes_stream_both_ways_with_flat_memory() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let client = client();

    // download
    let mut response = client
        .get(format!("{}/_sim/bytes?n={HUNDRED_MB}", lb.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, HUNDRED_MB);

    // upload, streamed from a generator so the test does not hold it either
    let chunk = bytes::Bytes::from(vec![b'u'; 1 << 20]);
    let stream =
        futures_util::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = client
        .post(format!("{}/_sim/upload", lb.url()))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        format!("received {HUNDRED_MB}\n")
    );

    // Buffering either body whole would have pushed the peak past 100 MiB.
    let peak_mib = peak_rss_kib(lb.pid()) / 1024;
    assert!(peak_mib < 64, "alb peaked at {peak_mib} MiB");
}

#[tokio::test]
async fn websocket_is_tunnelled() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/_sim/ws", lb.port))
            .await
            .expect("websocket handshake through alb");
    assert_eq!(response.headers()["x-alb-backend"], name(&b).as_str());
    for text in ["hello", "through", "alb"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
}

/// A WebSocket handshake whose first backend refuses the connection is retried on another
/// backend, and the client connection is joined to that one (the chaos soak found it
/// answered `101` and then closed).
#[tokio::test]
async fn a_retried_websocket_upgrade_is_tunnelled() {
    let b = backend(&[]);
    let dead_port = free_port();
    let lb = alb(json!({
        "strategy": "round_robin",
        "backends": [format!("http://127.0.0.1:{dead_port}"), b.url()],
        "health_check_interval": 3600,
        "outlier_detection": {"consecutive_failures": 1000},
    }));
    for round in 0..4 {
        let (mut socket, response) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/_sim/ws", lb.port))
                .await
                .expect("websocket handshake through alb");
        assert_eq!(response.headers()["x-alb-backend"], name(&b).as_str());
        let text = format!("round {round}");
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = socket
            .next()
            .await
            .expect("an echo, not a closed connection");
        assert_eq!(echoed.unwrap().into_text().unwrap().as_str(), text);
    }
    let m = scrape(&lb).await;
    let retried = sample(&m, r#"lb_retries_total{reason="connect"}"#).unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "the dead backend was tried and retried from: {retried}"
    );
}

#[tokio::test]
async fn refused_backend_gives_502() {
    let dead_port = free_port();
    let lb = alb(json!({
        "backends": [format!("http://127.0.0.1:{dead_port}")],
        "health_check_interval": 3600
    }));
    let answer = get(&client(), &lb.url()).await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.body.starts_with(&format!(
            "alb: backend 127.0.0.1:{dead_port}: cannot connect"
        )),
        "{}",
        answer.body
    );
    assert_eq!(answer.body.lines().count(), 1);
}

/// Sets the simulated backend's service time (`POST /control`).
async fn set_delay(c: &reqwest::Client, b: &Proc, delay: &str) {
    let changed = c
        .post(format!("{}/control", b.url()))
        .json(&json!({ "delay": delay }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200, "POST /control delay {delay}");
}

/// A kept-alive backend connection keeps one timer for its requests' deadlines: each
/// request moves it (later), so requests in a row that each take a tenth of the timeout all
/// pass, together far longer than it; a slow answer still times out on such a connection,
/// and so does a shorter client deadline (moved earlier); connections that timed out are not
/// reused.
#[tokio::test]
async fn request_timeout_holds_on_a_reused_backend_connection() {
    let b = backend(&["--delay", "100ms"]);
    let lb = alb(json!({"backends": urls(&[&b]), "request_timeout": "1s"}));
    let c = client();
    for _ in 0..15 {
        assert_eq!(get(&c, &lb.url()).await.status, 200);
    }
    set_delay(&c, &b, "3s").await;
    let answer = get(&c, &lb.url()).await;
    assert_eq!(answer.status, 504);
    assert!(
        answer.body.contains("no response within 1s"),
        "{}",
        answer.body
    );
    let answer = c
        .get(lb.url())
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "100m")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 504);
    let text = answer.text().await.unwrap();
    assert!(text.contains("no response within 100ms"), "{text}");
    set_delay(&c, &b, "0s").await;
    for _ in 0..3 {
        assert_eq!(get(&c, &lb.url()).await.status, 200);
    }
}

#[tokio::test]
async fn slow_backend_gives_504() {
    let slow = backend(&["--delay", "3s"]);
    let lb = alb(json!({"backends": urls(&[&slow]), "request_timeout": "300ms"}));
    let answer = get(&client(), &lb.url()).await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.body,
        format!("alb: backend {}: no response within 300ms\n", name(&slow))
    );
}
