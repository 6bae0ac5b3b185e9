//! ALB's own pooled HTTP/1.1 client for requests with a `Content-Length` body, against a
//! scripted backend on a real socket that reads bodies by their length: bodies arrive
//! exactly (one `Content-Length`), connections are reused after clean exchanges and never
//! after a broken one, a backend may answer before reading the body (and close, or stream
//! an echo while it reads), a client that breaks off mid-upload gets its backend connection
//! closed, a dropped keep-alive connection is replaced for a PUT and not for a POST, and a
//! silent backend gives 504.

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

/// One request as the backend read it.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    /// The `content-length` field lines of the head.
    lengths: Vec<String>,
    /// The body bytes read (all of them, unless the path reads none).
    body: usize,
    checksum: u64,
    connection: usize,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Request lines whose head the backend has read (bodies may still be on their way).
static HEADS: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn scripted_backend() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Log::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, connection, log.clone()));
        }
    });
    (url, seen)
}

fn checksum(bytes: &[u8], mut sum: u64) -> u64 {
    for b in bytes {
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
    }
    sum
}

/// Serves one connection: reads each head, then the body by its `content-length` (unless
/// the path says otherwise), answers by path.
async fn serve(mut stream: TcpStream, connection: usize, seen: Log) {
    let mut buffer = Vec::new();
    let mut drop_next = false;
    loop {
        let head = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        if drop_next {
            return;
        }
        let line = head.lines().next().unwrap_or_default().to_owned();
        HEADS.lock().unwrap().push(line.clone());
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let lengths: Vec<String> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .map(|l| l[15..].trim().to_owned())
            .collect();
        let length: usize = lengths.first().and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut record = Seen {
            line,
            lengths,
            body: 0,
            checksum: 0,
            connection,
        };
        let w = &mut stream;
        match path.as_str() {
            // Answers at once and closes without reading the body.
            "/early-close" => {
                seen.lock().unwrap().push(record);
                let _ = w
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
                    .await;
                return;
            }
            // Answers with a chunked head at once, then echoes the body as it reads it.
            "/echo" => {
                if w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut left = length;
                loop {
                    let take = left.min(buffer.len());
                    if take > 0 {
                        let piece: Vec<u8> = buffer.drain(..take).collect();
                        left -= take;
                        record.body += take;
                        record.checksum = checksum(&piece, record.checksum);
                        let mut out = format!("{take:x}\r\n").into_bytes();
                        out.extend_from_slice(&piece);
                        out.extend_from_slice(b"\r\n");
                        if w.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    if left == 0 {
                        break;
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    match w.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock().unwrap().push(record);
                if w.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        // Every other path: read the whole body, then answer.
        let mut left = length;
        loop {
            let take = left.min(buffer.len());
            let piece: Vec<u8> = buffer.drain(..take).collect();
            record.checksum = checksum(&piece, record.checksum);
            record.body += take;
            left -= take;
            if left == 0 {
                break;
            }
            let mut chunk = [0u8; 16 * 1024];
            match w.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    seen.lock().unwrap().push(record);
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = format!("{} {}", record.body, record.checksum);
        seen.lock().unwrap().push(record);
        let done = match path.as_str() {
            "/silent" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            "/drop-next" => {
                drop_next = true;
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsure")
                    .await
            }
            _ => {
                w.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                )
                .await
            }
        };
        if done.is_err() {
            return;
        }
    }
}

fn body_of(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn connections(seen: &Log, prefix: &str) -> HashSet<usize> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.line.starts_with(prefix))
        .map(|s| s.connection)
        .collect()
}

/// `POST` of `body` to `path` through `lb`; panics when no answer comes at all.
async fn post(
    c: &reqwest::Client,
    lb: &Proc,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    c.post(format!("{}{path}", lb.url()))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn quiet_alb(url: &str, extra: serde_json::Value) -> Proc {
    let mut config = json!({
        "backends": [url],
        "health_check_path": "/hc",
        "health_check_interval": 3600,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    alb(config)
}

#[tokio::test]
async fn bodies_arrive_exactly_over_one_reused_connection() {
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({}));
    let c = client();
    // Sizes around the coalescing limit and past several socket buffers.
    let sizes = [
        1,
        1024,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        300_000,
        3_000_000,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let body = body_of(size, i as u8);
        let expected = format!("{size} {}", checksum(&body, 0));
        let r = post(&c, &lb, &format!("/sum/{i}"), body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), expected, "body of {size} bytes");
    }
    let seen_now = seen.lock().unwrap().clone();
    for s in seen_now.iter().filter(|s| s.line.starts_with("POST /sum/")) {
        assert_eq!(s.lengths.len(), 1, "one Content-Length: {s:?}");
    }
    assert_eq!(
        connections(&seen, "POST /sum/").len(),
        1,
        "sequential requests with bodies share one backend connection"
    );
    // Two equal Content-Length fields from the client (accepted by hyper's server) go out
    // as one.
    let mut raw = TcpStream::connect(("127.0.0.1", lb.port)).await.unwrap();
    raw.write_all(
        b"POST /sum/dup HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = raw.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") {
        let s = seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.line.starts_with("POST /sum/dup"))
            .cloned()
            .unwrap();
        assert_eq!(s.lengths, ["4"], "{s:?}");
        assert_eq!(s.body, 4);
    } else {
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
}

#[tokio::test]
async fn a_backend_may_answer_before_reading_the_body() {
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({}));
    let c = client();
    // Answers 413 and closes without reading 8 MB: the client gets the answer (or, if its
    // upload was cut first, an error), never a 502 and never a hang.
    let r = c
        .post(format!("{}/early-close", lb.url()))
        .body(vec![b'x'; 8 << 20])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
        assert_eq!(r.text().await.unwrap_or_default(), "nope");
    }
    // The next request takes another backend connection and succeeds.
    let r = post(&c, &lb, "/sum/after", "abc").await;
    assert_eq!(r.status(), 200);
    assert_ne!(
        connections(&seen, "POST /early-close"),
        connections(&seen, "POST /sum/after")
    );

    // Full duplex: the answer streams back while the upload goes on, for a body far larger
    // than every buffer on the way (a proxy that waited for the whole upload before reading
    // the answer would still work here, but one that stopped uploading once the answer
    // began would hang).
    let size = 4_000_000;
    let body = body_of(size, 3);
    let r = post(&c, &lb, "/echo", body.clone()).await;
    assert_eq!(r.status(), 200);
    let echoed = r.bytes().await.unwrap();
    assert_eq!(echoed.len(), size);
    assert!(echoed[..] == body[..], "the echo differs");
    // Both ended cleanly: that connection is reused.
    let r = post(&c, &lb, "/sum/reuse", "abc").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        connections(&seen, "POST /echo"),
        connections(&seen, "POST /sum/reuse")
    );
}

#[tokio::test]
async fn a_client_that_breaks_off_mid_upload_closes_the_backend_connection() {
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({}));
    let c = client();
    // Warm one connection.
    let r = post(&c, &lb, "/sum/warm", "abc").await;
    assert_eq!(r.status(), 200);
    let warm = connections(&seen, "POST /sum/warm");
    // Announce a megabyte, send 10 bytes, go away.
    let mut raw = TcpStream::connect(("127.0.0.1", lb.port)).await.unwrap();
    raw.write_all(
        b"POST /sum/cut HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    wait_until(
        "the backend reads the cut request's head",
        Duration::from_secs(10),
        || async {
            HEADS
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("POST /sum/cut"))
        },
    )
    .await;
    drop(raw);
    wait_until(
        "the backend sees its connection closed short",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|s| s.line.starts_with("POST /sum/cut") && s.body < 1_000_000)
            }
        },
    )
    .await;
    let cut = connections(&seen, "POST /sum/cut");
    assert_eq!(cut, warm, "the cut request took the warm connection");
    // The next request cannot use the broken connection.
    let r = post(&c, &lb, "/sum/next", "abc").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("3 {}", checksum(b"abc", 0))
    );
    assert!(connections(&seen, "POST /sum/next").is_disjoint(&cut));
}

#[tokio::test]
async fn a_dropped_keep_alive_connection_is_replaced_for_a_put_not_a_post() {
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({}));
    let c = client();
    let drop_next = || async {
        let r = post(&c, &lb, "/drop-next", "x").await;
        assert_eq!(r.text().await.unwrap(), "sure");
    };
    drop_next().await;
    let r = c
        .put(format!("{}/sum/put", lb.url()))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a PUT whose body was all in hand is sent again"
    );
    assert_eq!(
        r.text().await.unwrap(),
        format!("5 {}", checksum(b"hello", 0))
    );
    drop_next().await;
    let r = post(&c, &lb, "/sum/post", "hello").await;
    assert_eq!(r.status(), 502, "a POST is never sent twice");
    assert!(connections(&seen, "POST /sum/post").is_empty());
}

#[tokio::test]
async fn a_silent_backend_gives_504_after_the_upload() {
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({"request_timeout": "1s"}));
    let r = client()
        .post(format!("{}/silent", lb.url()))
        .body(vec![b'y'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let s = seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.line.starts_with("POST /silent"))
        .cloned()
        .expect("the backend got the request");
    assert_eq!(s.body, 100_000);
}

#[tokio::test]
async fn a_hundred_megabyte_upload_with_a_length_streams_in_bounded_memory() {
    const HUNDRED_MB: usize = 100 << 20;
    let (url, seen) = scripted_backend().await;
    let lb = quiet_alb(&url, json!({}));
    let chunk = bytes::Bytes::from(vec![b'u'; 1 << 20]);
    let stream =
        futures_util::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    // A declared length keeps the body off chunked framing, so it takes ALB's own path.
    let r = client()
        .post(format!("{}/sum/hundred", lb.url()))
        .header("content-length", HUNDRED_MB.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let expected = (0..HUNDRED_MB).fold(0u64, |sum, _| checksum(b"u", sum));
    assert_eq!(r.text().await.unwrap(), format!("{HUNDRED_MB} {expected}"));
    let s = seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.line.starts_with("POST /sum/hundred"))
        .cloned()
        .unwrap();
    assert_eq!(s.lengths, [HUNDRED_MB.to_string()]);
    let peak_mib = peak_rss_kib(lb.pid()) / 1024;
    assert!(peak_mib < 64, "alb peaked at {peak_mib} MiB");
}
