//! The two test backends, raw tokio TCP so that nothing between the proxy and the record
//! normalises a byte.
//!
//! - [`Recorder`] keeps every byte each connection delivered and answers every request it
//!   can read strictly with a fixed, well-framed `200`; what it cannot read it answers with
//!   a `400` and a close (the record shows why).
//! - [`Scripted`] answers `/r/N` with the raw bytes of response case N and `/second` with a
//!   plain `200 second`, and records which connection carried each request.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::wire::{parse_request, Parsed};

/// The recording backend's answer to every request it reads.
pub const RECORDED_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nrecorded";

/// Its answer to a request its strict parser refuses.
const RECORDER_REFUSES: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 15\r\nconnection: close\r\n\r\nbackend refused";

// === impl Recorder ===

/// A backend that records the exact bytes of every connection.
#[derive(Clone)]
pub struct Recorder {
    pub port: u16,
    connections: Arc<Mutex<Vec<Record>>>,
}

/// One connection's record.
#[derive(Default)]
struct Record {
    bytes: Vec<u8>,
    /// The bytes end inside a message.
    partial: bool,
    closed: bool,
    last: Option<Instant>,
}

/// How far each connection's record reached at some moment.
pub struct Mark(Vec<usize>);

impl Recorder {
    /// Listens on a free loopback port.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = Recorder {
            port: listener.local_addr().unwrap().port(),
            connections: Arc::default(),
        };
        let connections = recorder.connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let id = {
                    let mut all = connections.lock().unwrap();
                    all.push(Record::default());
                    all.len() - 1
                };
                tokio::spawn(record(stream, id, connections.clone()));
            }
        });
        recorder
    }

    /// Where every connection's record stands now.
    pub fn mark(&self) -> Mark {
        Mark(
            self.connections
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.bytes.len())
                .collect(),
        )
    }

    /// Waits until the backend has settled: no connection ends inside a message unless it
    /// was closed, and nothing arrived for `quiet` (a proxy may still be flushing a request
    /// it has already answered its client for). At most a few seconds. This decides which
    /// case the bytes belong to; no assertion rests on it.
    pub async fn settle(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let settled = {
                let all = self.connections.lock().unwrap();
                all.iter().all(|r| {
                    (r.closed || !r.partial) && r.last.is_none_or(|t| t.elapsed() >= quiet)
                })
            };
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bytes each connection delivered since `mark` (connections that delivered none
    /// left out), in the order the connections were accepted.
    pub fn since(&self, mark: &Mark) -> Vec<Delivered> {
        let all = self.connections.lock().unwrap();
        all.iter()
            .enumerate()
            .map(|(i, r)| Delivered {
                bytes: r.bytes[mark.0.get(i).copied().unwrap_or(0)..].to_vec(),
                closed: r.closed,
            })
            .filter(|d| !d.bytes.is_empty())
            .collect()
    }
}

/// What one backend connection delivered during a case.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub bytes: Vec<u8>,
    /// The proxy has closed the connection since.
    pub closed: bool,
}

async fn record(stream: TcpStream, id: usize, connections: Arc<Mutex<Vec<Record>>>) {
    serve_recorded(stream, id, &connections).await;
    connections.lock().unwrap()[id].closed = true;
}

fn append(connections: &Mutex<Vec<Record>>, id: usize, bytes: &[u8]) {
    let mut all = connections.lock().unwrap();
    all[id].bytes.extend_from_slice(bytes);
    all[id].partial = true;
    all[id].last = Some(Instant::now());
}

async fn serve_recorded(mut stream: TcpStream, id: usize, connections: &Mutex<Vec<Record>>) {
    let mut buffer = Vec::new();
    let mut continued = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        append(connections, id, &chunk[..n]);
        buffer.extend_from_slice(&chunk[..n]);
        loop {
            match parse_request(&buffer) {
                Parsed::Complete(_, used) => {
                    buffer.drain(..used);
                    continued = false;
                    if stream.write_all(RECORDED_OK).await.is_err() {
                        return;
                    }
                }
                Parsed::Incomplete { continue_wanted } => {
                    connections.lock().unwrap()[id].partial = !buffer.is_empty();
                    if continue_wanted && !continued {
                        continued = true;
                        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    }
                    break;
                }
                Parsed::Invalid(_) => {
                    let _ = stream.write_all(RECORDER_REFUSES).await;
                    let _ = stream.shutdown().await;
                    // keep recording what still arrives, answer nothing more
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        append(connections, id, &chunk[..n]);
                    }
                    return;
                }
            }
        }
    }
}

// === impl Scripted ===

/// A backend that answers with scripted raw bytes.
#[derive(Clone)]
pub struct Scripted {
    pub port: u16,
    /// For every request: its path and the number of the connection that carried it.
    pub seen: Arc<Mutex<Vec<(String, usize)>>>,
}

/// One scripted answer: the bytes, and whether the backend closes after them.
#[derive(Clone)]
pub struct Script {
    pub bytes: Vec<u8>,
    pub close: bool,
}

/// The plain answer to `/second`.
pub const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";

impl Scripted {
    /// Listens on a free loopback port; `/r/N` gets `scripts[N]`.
    pub async fn start(scripts: Vec<Script>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scripted = Scripted {
            port: listener.local_addr().unwrap().port(),
            seen: Arc::default(),
        };
        let seen = scripted.seen.clone();
        let scripts = Arc::new(scripts);
        tokio::spawn(async move {
            for id in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(answer(stream, id, seen.clone(), scripts.clone()));
            }
        });
        scripted
    }

    /// The connection that carried the request for `path` (the last one, if several).
    pub fn connection_of(&self, path: &str) -> Option<usize> {
        let seen = self.seen.lock().unwrap();
        seen.iter().rev().find(|(p, _)| p == path).map(|(_, c)| *c)
    }
}

async fn answer(
    mut stream: TcpStream,
    id: usize,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    scripts: Arc<Vec<Script>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // the proxy's requests are well-formed: ask the strict parser where each ends
        let (message, used) = loop {
            match parse_request(&buffer) {
                Parsed::Complete(m, used) => break (m, used),
                Parsed::Invalid(_) => return,
                Parsed::Incomplete { .. } => match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                },
            }
        };
        buffer.drain(..used);
        seen.lock().unwrap().push((message.target.clone(), id));
        let script = match message.target.strip_prefix("/r/") {
            Some(n) => scripts[n.parse::<usize>().unwrap()].clone(),
            None => Script {
                bytes: SECOND.to_vec(),
                close: false,
            },
        };
        if stream.write_all(&script.bytes).await.is_err() || script.close {
            return;
        }
    }
}
