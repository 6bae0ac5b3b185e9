//! `alb replay`: recorded traffic sent again on its recorded schedule.
//!
//! The input is a file written by `record` (one [`Recorded`] JSON line per request). Each
//! request leaves at its recorded offset from the first one, divided by `speed`, whether or
//! not earlier ones have been answered (an open loop, as `alb loadgen`: a slow target shows
//! up as latency, not as a slower replay), and its latency is measured from its intended send
//! time. The report is `alb loadgen`'s (latency percentiles, shares per backend, the
//! generator's own send lag), plus the pacing (the replayed span against the recorded one)
//! and, with `compare`, the requests whose status differs from the recorded one.
//!
//! What is sent: the recorded method, path and query, headers and body (when recorded), to
//! the target's scheme and authority. `Host` becomes the target's, hop-by-hop headers and
//! `Content-Length` are left to the client, and headers that were redacted when recorded
//! are not sent at all: a recording never holds credentials to replay.

use std::{path::Path, sync::Arc, time::Duration};

use base64::{prelude::BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    headers::X_ALB_BACKEND,
    layer::record::{Recorded, REDACTED},
    loadgen::{backend_index, latency_histogram, BackendNames, RunResult, Sample, NO_ANSWER},
};

/// Mismatches listed in the report (all are counted).
pub const MISMATCHES_SHOWN: usize = 10;

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a recorded request.
    #[error("{path}:{line}: not a recorded request: {message}")]
    Line {
        /// The file.
        path: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing to replay.
    #[error("{0}: no recorded requests")]
    Empty(String),
}

/// How to replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayPlan {
    /// Schedule compression: 2.0 replays twice as fast as recorded.
    pub speed: f64,
    /// Time after which a request counts as unanswered.
    pub timeout: Duration,
}

/// A request whose status differs from the recorded one.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status in the recording.
    pub recorded: u16,
    /// Status now ([`NO_ANSWER`] if none).
    pub replayed: u16,
}

/// A finished replay.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// The requests as `alb loadgen` reports them.
    pub run: RunResult,
    /// From the first recorded request to the last, divided by the speed.
    pub scheduled_span: Duration,
    /// From the first send to the last.
    pub replayed_span: Duration,
    /// Requests whose status differs from the recorded one.
    pub differences: usize,
    /// The first [`MISMATCHES_SHOWN`] of them.
    pub mismatches: Vec<Mismatch>,
}

impl ReplayReport {
    /// The replayed span's deviation from the schedule, as a fraction (+0.01: 1% longer).
    pub fn pacing_error(&self) -> f64 {
        let scheduled = self.scheduled_span.as_secs_f64();
        if scheduled == 0.0 {
            return 0.0;
        }
        self.replayed_span.as_secs_f64() / scheduled - 1.0
    }
}

/// Reads a recording, in arrival order.
pub fn read(path: &Path) -> Result<Vec<Recorded>, ReplayError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: name.clone(),
        source,
    })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Recorded = serde_json::from_str(line).map_err(|e| ReplayError::Line {
            path: name.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(ReplayError::Empty(name));
    }
    // Lines are written when answers arrive; the schedule is when requests arrived.
    records.sort_by_key(|r| r.at_us);
    Ok(records)
}

type ReplayClient = Client<HttpConnector, Full<Bytes>>;

/// Replays `records` against `target` (scheme and authority; its path is ignored).
pub async fn replay(records: &[Recorded], target: &Uri, plan: ReplayPlan) -> ReplayReport {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: ReplayClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    let first = records.first().map_or(0, |r| r.at_us);
    let offset_of = |r: &Recorded| {
        Duration::from_secs_f64((r.at_us.saturating_sub(first)) as f64 / 1e6 / plan.speed)
    };
    let backends: Arc<BackendNames> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Sample)>();
    let mut lag = latency_histogram();
    let start = Instant::now() + Duration::from_millis(20);
    let (mut first_send, mut last_send) = (None, start);
    for (i, record) in records.iter().enumerate() {
        let offset = offset_of(record);
        let intended = start + offset;
        tokio::time::sleep_until(intended - crate::sim::TIMER_ROUNDING).await;
        let now = Instant::now();
        first_send.get_or_insert(now);
        last_send = now;
        lag.saturating_record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
        let request = build(record, target);
        let (client, tx, backends) = (client.clone(), tx.clone(), backends.clone());
        tokio::spawn(async move {
            let (status, backend) = match request {
                Some(request) => send(&client, request, &backends, plan.timeout).await,
                None => (NO_ANSWER, None),
            };
            let sample = Sample {
                intended: offset,
                latency: intended.elapsed(),
                status,
                backend,
            };
            let _ = tx.send((i, sample));
        });
    }
    drop(tx);
    let mut samples = Vec::with_capacity(records.len());
    let mut mismatches = Vec::new();
    let mut differences = 0;
    while let Some((i, sample)) = rx.recv().await {
        let recorded = &records[i];
        if sample.status != recorded.status {
            differences += 1;
            if mismatches.len() < MISMATCHES_SHOWN {
                mismatches.push(Mismatch {
                    method: recorded.method.clone(),
                    path: recorded.path.clone(),
                    recorded: recorded.status,
                    replayed: sample.status,
                });
            }
        }
        samples.push(sample);
    }
    let backends = backends.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ReplayReport {
        run: RunResult {
            samples,
            backends,
            warmup: Duration::ZERO,
            lag_p99: Duration::from_micros(lag.value_at_quantile(0.99)),
            lag_max: Duration::from_micros(lag.max()),
        },
        scheduled_span: records.last().map_or(Duration::ZERO, offset_of),
        replayed_span: last_send.saturating_duration_since(first_send.unwrap_or(start)),
        differences,
        mismatches,
    }
}

/// The request to send for `record`; `None` if the recording holds something that is not a
/// valid request (it then counts as unanswered).
fn build(record: &Recorded, target: &Uri) -> Option<Request<Full<Bytes>>> {
    let mut parts = target.clone().into_parts();
    parts.path_and_query = Some(record.path.parse().ok()?);
    let uri = Uri::from_parts(parts).ok()?;
    let body = match &record.body_base64 {
        Some(b64) => Bytes::from(BASE64_STANDARD.decode(b64).ok()?),
        None => Bytes::new(),
    };
    let mut request = Request::builder()
        .method(Method::from_bytes(record.method.as_bytes()).ok()?)
        .uri(uri)
        .body(Full::new(body))
        .ok()?;
    let headers = request.headers_mut();
    for (name, value) in &record.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if value == REDACTED || !replayable(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(name, value);
        }
    }
    Some(request)
}

/// Whether a recorded header is sent again: not `Host` (the target's is used), not framing
/// (the client frames the body it sends), not hop-by-hop.
fn replayable(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::HOST
            | header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::CONNECTION
            | header::TE
            | header::TRAILER
            | header::UPGRADE
    ) && name.as_str() != "keep-alive"
        && name.as_str() != "proxy-connection"
}

async fn send(
    client: &ReplayClient,
    request: Request<Full<Bytes>>,
    backends: &BackendNames,
    timeout: Duration,
) -> (u16, Option<u16>) {
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let backend = response
            .headers()
            .get(&X_ALB_BACKEND)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| backend_index(backends, name));
        response.into_body().collect().await.ok()?;
        Some((status, backend))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(answer)) => answer,
        _ => (NO_ANSWER, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(headers: &[(&str, &str)], body: Option<&str>) -> Recorded {
        Recorded {
            at_us: 1,
            route: "default".into(),
            pool: "default".into(),
            backend: None,
            method: "POST".into(),
            path: "/a/b?c=1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body_base64: body.map(|b| BASE64_STANDARD.encode(b)),
            status: 200,
            latency_ms: 1.0,
        }
    }

    #[test]
    fn a_replayed_request_keeps_method_path_headers_and_body_but_no_secrets() {
        let target: Uri = "http://127.0.0.1:9/ignored".parse().unwrap();
        let r = recorded(
            &[
                ("host", "old.example"),
                ("x-test", "1"),
                ("authorization", REDACTED),
                ("content-length", "3"),
                ("connection", "keep-alive"),
            ],
            Some("abc"),
        );
        let request = build(&r, &target).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().to_string(), "http://127.0.0.1:9/a/b?c=1");
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-test"],
            "host, framing, hop-by-hop and redacted are dropped"
        );
        assert_eq!(http_body::Body::size_hint(request.body()).exact(), Some(3));
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let good = serde_json::to_string(&recorded(&[], None)).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"at_us\": 1}}\n")).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:2: not a recorded request"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read(&path)
            .unwrap_err()
            .to_string()
            .contains("no recorded requests"));
    }
}
