//! Regression tests for the hardening findings of 2026-11-27: each sends the exact bytes an
//! attacker or a careless client sent, over a raw socket, to a real `alb` in front of a
//! recording backend, and checks what the client got and what the backend received.
//! (The wide differential corpus against nginx and HAProxy is `tests/conformance.rs`.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// One request as the backend received it.
#[derive(Debug)]
struct Received {
    /// The request line and header lines, without the blank line.
    head: String,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl Received {
    /// Values of header `name` (lowercase), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// A backend that answers every request `200 ok` and reports each non-health request it
/// received, framed by its own `Content-Length` or chunked encoding.
async fn recording_backend() -> (u16, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = serve_recorded(stream, tx).await;
            });
        }
    });
    (port, rx)
}

async fn serve_recorded(
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<Received>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end + 4);
        let received = Received {
            head,
            body: Vec::new(),
        };
        let length = received.header("content-length").first().cloned();
        let chunked = received
            .header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let mut received = received;
        if chunked {
            received.body = read_chunked(&mut stream, &mut buffer).await?;
        } else if let Some(length) = length {
            let length: usize = length.parse().expect("a numeric Content-Length");
            while buffer.len() < length {
                if stream.read_buf(&mut buffer).await? == 0 {
                    return Ok(());
                }
            }
            received.body = buffer.drain(..length).collect();
        }
        if !received.head.contains(" /health ") {
            let _ = tx.send(received);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await?;
    }
}

async fn read_chunked(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            stream.read_buf(buffer).await?;
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a hex chunk size");
        buffer.drain(..line_end + 2);
        while buffer.len() < size + 2 {
            stream.read_buf(buffer).await?;
        }
        if size == 0 {
            // No trailers from ALB: the last chunk is followed by the blank line.
            buffer.drain(..2);
            return Ok(body);
        }
        body.extend(buffer.drain(..size));
        buffer.drain(..2);
    }
}

/// Sends `raw` on a new connection and returns everything read until ALB closes it
/// (every request here ends with `Connection: close` or gets a closing error answer).
async fn exchange(port: u16, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("ALB answers and closes within 20 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the backend receives the request within 20 s")
        .unwrap()
}

async fn alb_before_recorder() -> (Proc, mpsc::UnboundedReceiver<Received>) {
    let (port, rx) = recording_backend().await;
    let lb = alb(json!({"backends": [format!("http://127.0.0.1:{port}")]}));
    (lb, rx)
}

#[tokio::test]
async fn get_with_a_chunked_body_forwards_every_byte() {
    let (lb, mut rx) = alb_before_recorder().await;
    let answer = exchange(
        lb.port,
        b"GET /search HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    let got = next(&mut rx).await;
    assert_eq!(got.body, b"hello world", "{got:?}");
    assert!(
        got.header("content-length").is_empty(),
        "one framing: {got:?}"
    );
    assert_eq!(got.header("transfer-encoding"), ["chunked"]);
}

#[tokio::test]
async fn two_host_headers_get_400_and_nothing_is_forwarded() {
    let (lb, mut rx) = alb_before_recorder().await;
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(lb.port, raw).await;
        assert_eq!(
            status(&answer),
            400,
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
        assert!(answer.contains("alb: "), "{answer}");
    }
    // The refused requests reached nothing: the next one the backend sees is this one.
    let answer = exchange(
        lb.port,
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200);
    let got = next(&mut rx).await;
    assert!(got.head.starts_with("GET /ok "), "{got:?}");
}

#[tokio::test]
async fn absolute_form_target_authority_becomes_the_host() {
    let (lb, mut rx) = alb_before_recorder().await;
    let answer = exchange(
        lb.port,
        b"GET http://other.example:8081/x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    let got = next(&mut rx).await;
    assert!(got.head.starts_with("GET /x?q=1 HTTP/1.1"), "{got:?}");
    assert_eq!(got.header("host"), ["other.example:8081"]);
    assert_eq!(got.header("x-forwarded-host"), ["other.example:8081"]);

    let answer = exchange(
        lb.port,
        b"GET http://u:p@other/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 400, "userinfo in the target: {answer}");
}

#[tokio::test]
async fn connect_and_trace_get_405_and_nothing_is_forwarded() {
    let (lb, mut rx) = alb_before_recorder().await;
    let answer = exchange(
        lb.port,
        b"CONNECT other:443 HTTP/1.1\r\nHost: other:443\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 405, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: "),
        "{answer}"
    );
    let answer = exchange(
        lb.port,
        b"TRACE / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer secret\r\nCookie: s=1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 405, "{answer}");
    assert!(!answer.contains("secret"), "{answer}");
    let answer = exchange(
        lb.port,
        b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200);
    let got = next(&mut rx).await;
    assert!(
        got.head.starts_with("GET /after "),
        "only the GET arrived: {got:?}"
    );
}

#[tokio::test]
async fn http10_without_host_gets_the_backends_name() {
    let (lb, mut rx) = alb_before_recorder().await;
    let answer = exchange(lb.port, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "{answer}");
    let got = next(&mut rx).await;
    assert_eq!(got.header("host").len(), 1, "{got:?}");
    assert!(
        got.header("x-forwarded-host").is_empty(),
        "the client named no host: {got:?}"
    );
}
