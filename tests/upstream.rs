//! ALB's own pooled HTTP/1.1 client (requests without a body), against a scripted backend
//! that writes raw bytes on a real socket: every body framing, interim answers, connection
//! reuse, a keep-alive connection the backend drops, and broken answers.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the scripted backend saw: for each request line, the connection it came on.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, usize)>,
}

/// Starts the scripted backend; returns its URL and what it saw.
async fn scripted_backend() -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, connection, log.clone()));
        }
    });
    (url, seen)
}

/// Serves one connection: reads request heads, answers each by its path.
async fn serve(mut stream: TcpStream, connection: usize, seen: Arc<Mutex<Seen>>) {
    let mut buffer = Vec::new();
    let mut drop_next = false;
    loop {
        let head = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        if drop_next {
            // Closes a kept-alive connection as a request arrives, without answering: the
            // race every client of an idle-timeout server meets.
            return;
        }
        let line = head.lines().next().unwrap_or_default().to_owned();
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        seen.lock().unwrap().requests.push((line, connection));
        let w = &mut stream;
        let done = match path.as_str() {
            "/length" => w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Script: length\r\n\r\nhello").await,
            "/chunked" => chunked(w).await,
            "/close" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = w.write_all(b"close").await;
                return;
            }
            "/big" => big(w).await,
            "/not-modified" => w.write_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n").await,
            "/early-hints" => w.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
            "/drop-next" => {
                drop_next = true;
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsure").await
            }
            "/garbage" => {
                let _ = w.write_all(b"SPEAKING NONSENSE\r\n\r\n").await;
                return;
            }
            "/truncated" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..").await;
                return;
            }
            _ => w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await,
        };
        if done.is_err() {
            return;
        }
    }
}

async fn chunked(w: &mut TcpStream) -> std::io::Result<()> {
    w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    w.write_all(b"7;ext=1\r\n, world\r\n").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    w.write_all(b"0\r\nx-trailer: kept\r\ncontent-length: 99\r\n\r\n")
        .await
}

/// 3 MB of a repeating pattern, written in 64 KiB pieces.
const BIG: usize = 3_000_000;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

async fn big(w: &mut TcpStream) -> std::io::Result<()> {
    w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes())
        .await?;
    let body: Vec<u8> = (0..BIG).map(pattern).collect();
    for piece in body.chunks(64 * 1024) {
        w.write_all(piece).await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_framing_reaches_the_client_intact() {
    let (url, _) = scripted_backend().await;
    let lb = alb(json!({"backends": [url], "health_check_path": "/"}));
    let c = client();
    let get = |path: &str| c.get(format!("{}{path}", lb.url())).send();

    let r = get("/length").await.unwrap();
    assert_eq!(r.headers()["x-script"], "length");
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(
        get("/chunked").await.unwrap().text().await.unwrap(),
        "hello, world"
    );
    assert_eq!(
        get("/close").await.unwrap().text().await.unwrap(),
        "until close"
    );
    let body = get("/big").await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    let r = get("/not-modified").await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = get("/early-hints").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = c.head(format!("{}/length", lb.url())).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "5");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn connections_are_reused_and_a_dropped_one_is_replaced_for_idempotent_requests() {
    let (url, seen) = scripted_backend().await;
    // Health checks on a path the test does not use, rarely.
    let lb =
        alb(json!({"backends": [url], "health_check_path": "/hc", "health_check_interval": 3600}));
    let c = client();
    for _ in 0..20 {
        let r = c.get(format!("{}/length", lb.url())).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    let connections = |seen: &Arc<Mutex<Seen>>, line: &str| -> HashSet<usize> {
        let seen = seen.lock().unwrap();
        seen.requests
            .iter()
            .filter(|(l, _)| l.starts_with(line))
            .map(|(_, c)| *c)
            .collect()
    };
    assert_eq!(
        connections(&seen, "GET /length").len(),
        1,
        "20 sequential requests, one connection"
    );
    // A body streamed over many reads still gives its connection back at its end.
    let big = c.get(format!("{}/big", lb.url())).send().await.unwrap();
    assert_eq!(big.bytes().await.unwrap().len(), BIG);
    let r = c.get(format!("{}/length", lb.url())).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(
        connections(&seen, "GET /length"),
        connections(&seen, "GET /big")
    );

    // The backend will close that connection when the next request arrives on it.
    let r = c
        .get(format!("{}/drop-next", lb.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "sure");
    let r = c.get(format!("{}/length", lb.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "a GET is sent again on a new connection");
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(connections(&seen, "GET /length").len(), 2);

    // The same race for a POST: not idempotent, so not sent twice; the client gets a 502.
    let r = c
        .get(format!("{}/drop-next", lb.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "sure");
    let r = c.post(format!("{}/length", lb.url())).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().starts_with("alb: "));
}

#[tokio::test]
async fn broken_answers_give_502_or_a_cut_body() {
    let (url, _) = scripted_backend().await;
    let lb =
        alb(json!({"backends": [url], "health_check_path": "/hc", "health_check_interval": 3600}));
    let c = client();
    let r = c.get(format!("{}/garbage", lb.url())).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("malformed response head"), "{reason}");
    // The body broke after the head was accepted: the client's connection is cut (before or
    // after the head reached it, depending on timing); it must never see a complete body.
    let cut = match c.get(format!("{}/truncated", lb.url())).send().await {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(cut, "a truncated body must not look complete");
    // The balancer still serves.
    let r = c.get(format!("{}/length", lb.url())).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn chunked_trailers_reach_an_http2_client() {
    use http_body_util::BodyExt;
    let (url, _) = scripted_backend().await;
    let lb = alb(json!({"backends": [url], "health_check_path": "/"}));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = h2
        .get(format!("{}/chunked", lb.url()).parse().unwrap())
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes(), "hello, world");
    assert_eq!(trailers["x-trailer"], "kept");
    // A framing field is no trailer (RFC 9110 §6.5.1): dropped.
    assert!(trailers.get("content-length").is_none(), "{trailers:?}");
}
