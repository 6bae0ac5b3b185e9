//! Distributed tracing and request ids, end to end with real processes (an `alb` in front of
//! an `alb backend`): W3C `traceparent` continued with ALB's own span, or started, or
//! replaced when invalid, or passed through untouched when tracing is off; `tracestate`
//! kept or dropped; `x-request-id` kept, made, propagated and echoed; spans exported over
//! OTLP/HTTP to a real receiver in this process, with the ids the backends saw; and the
//! `tracing` config keys refused when out of range.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{any_value::Value as AnyValue, KeyValue},
    trace::v1::{span::SpanKind, Span},
};
use prost::Message;
use regex::Regex;
use serde_json::{json, Value};

/// The W3C specification's example.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A valid version-00 `traceparent`.
fn traceparent_shape() -> Regex {
    Regex::new(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$").unwrap()
}

/// A version-4 UUID, hyphenated, lower case.
fn uuid_shape() -> Regex {
    Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$").unwrap()
}

/// The fields of a `traceparent` the backend received, checked to be valid.
#[derive(Debug)]
struct Seen {
    trace_id: String,
    parent_id: String,
    flags: String,
}

fn parse_traceparent(value: &str) -> Seen {
    let caps = traceparent_shape()
        .captures(value)
        .unwrap_or_else(|| panic!("not a valid traceparent: {value:?}"));
    let seen = Seen {
        trace_id: caps[1].to_owned(),
        parent_id: caps[2].to_owned(),
        flags: caps[3].to_owned(),
    };
    assert_ne!(seen.trace_id, "0".repeat(32), "all-zero trace id: {value}");
    assert_ne!(
        seen.parent_id,
        "0".repeat(16),
        "all-zero parent id: {value}"
    );
    seen
}

/// Every value of header `name` in an echo body (the backend's view of the request).
fn echo_headers<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("echo has headers")
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

/// The one value of header `name` the backend received, if any (panics on duplicates).
fn echo_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    let values = echo_headers(echo, name);
    assert!(
        values.len() <= 1,
        "{name} reached the backend twice: {values:?}"
    );
    values.first().copied()
}

/// GETs `/_sim/echo` through `lb` with `headers`; returns the response headers and the echo.
async fn echo_through(lb: &Proc, headers: &[(&str, &str)]) -> (reqwest::header::HeaderMap, Value) {
    let mut request = client().get(format!("{}/_sim/echo", lb.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through alb");
    assert_eq!(response.status(), 200, "{}", lb.log_text());
    let headers = response.headers().clone();
    (headers, response.json().await.expect("echo JSON"))
}

#[tokio::test]
async fn traceparent_is_continued_with_albs_own_span() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b]), "tracing": {"sample": 1.0}}));
    let (_, echo) =
        echo_through(&lb, &[("traceparent", EXAMPLE), ("tracestate", "vendor=1")]).await;
    let sent = echo_header(&echo, "traceparent").expect("backend got a traceparent");
    let seen = parse_traceparent(sent);
    assert_eq!(seen.trace_id, TRACE_ID, "the trace is continued: {sent}");
    assert_eq!(
        seen.flags, "01",
        "the caller's sampling decision is kept: {sent}"
    );
    assert_ne!(
        seen.parent_id, PARENT_ID,
        "the backend's parent must be ALB's own span, not the caller's: {sent}"
    );
    assert_eq!(echo_header(&echo, "tracestate"), Some("vendor=1"));

    // Each request is a span of its own.
    let (_, again) = echo_through(&lb, &[("traceparent", EXAMPLE)]).await;
    let second = parse_traceparent(echo_header(&again, "traceparent").unwrap());
    assert_eq!(second.trace_id, TRACE_ID);
    assert_ne!(
        second.parent_id, seen.parent_id,
        "two requests, one span id"
    );
    assert_ne!(second.parent_id, PARENT_ID);
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b]), "tracing": {"sample": 1.0}}));

    let (_, first) = echo_through(&lb, &[]).await;
    let (_, second) = echo_through(&lb, &[]).await;
    let first = parse_traceparent(echo_header(&first, "traceparent").expect("a new traceparent"));
    let second = parse_traceparent(echo_header(&second, "traceparent").expect("a new traceparent"));
    assert_ne!(first.trace_id, second.trace_id, "two requests, one trace");
    // sample 1.0: every new trace is recorded
    assert_eq!(first.flags, "01");
    assert_eq!(second.flags, "01");

    // Upper-case hex is invalid: a new trace starts, and the tracestate that came with the
    // invalid traceparent is dropped.
    let upper = EXAMPLE.to_uppercase();
    assert_ne!(upper, EXAMPLE);
    let (_, echo) = echo_through(&lb, &[("traceparent", &upper), ("tracestate", "vendor=1")]).await;
    let sent = echo_header(&echo, "traceparent").expect("a replacement traceparent");
    let replaced = parse_traceparent(sent);
    assert_ne!(
        replaced.trace_id, TRACE_ID,
        "an invalid trace id was continued: {sent}"
    );
    assert_ne!(replaced.parent_id, PARENT_ID, "{sent}");
    assert_eq!(
        echo_header(&echo, "tracestate"),
        None,
        "tracestate of an invalid parent kept"
    );

    // Two traceparent headers are as invalid as a malformed one.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, echo) = echo_through(
        &lb,
        &[
            ("traceparent", EXAMPLE),
            ("traceparent", other),
            ("tracestate", "vendor=1"),
        ],
    )
    .await;
    let sent = echo_header(&echo, "traceparent").expect("one replacement traceparent");
    let replaced = parse_traceparent(sent);
    assert_ne!(replaced.trace_id, TRACE_ID, "{sent}");
    assert_ne!(
        replaced.trace_id, "0af7651916cd43dd8448eb211c80319c",
        "{sent}"
    );
    assert_eq!(echo_header(&echo, "tracestate"), None);
}

#[tokio::test]
async fn without_tracing_traceparent_passes_through_untouched() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let (_, echo) =
        echo_through(&lb, &[("traceparent", EXAMPLE), ("tracestate", "vendor=1")]).await;
    assert_eq!(echo_header(&echo, "traceparent"), Some(EXAMPLE));
    assert_eq!(echo_header(&echo, "tracestate"), Some("vendor=1"));

    // Not even an invalid one is touched, and none is made up.
    let upper = EXAMPLE.to_uppercase();
    let (_, echo) = echo_through(&lb, &[("traceparent", &upper)]).await;
    assert_eq!(echo_header(&echo, "traceparent"), Some(upper.as_str()));
    let (_, echo) = echo_through(&lb, &[]).await;
    assert_eq!(echo_header(&echo, "traceparent"), None);
}

#[tokio::test]
async fn request_ids_are_kept_made_propagated_and_echoed() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b]), "request_id": true}));
    let uuid = uuid_shape();

    // A sane id is kept, sent on and echoed.
    let (headers, echo) = echo_through(&lb, &[("x-request-id", "my-id-123")]).await;
    assert_eq!(echo_header(&echo, "x-request-id"), Some("my-id-123"));
    assert_eq!(headers["x-request-id"], "my-id-123");

    // The longest sane id (200 characters) is kept too.
    let longest = "y".repeat(200);
    let (headers, echo) = echo_through(&lb, &[("x-request-id", &longest)]).await;
    assert_eq!(echo_header(&echo, "x-request-id"), Some(longest.as_str()));
    assert_eq!(headers["x-request-id"], longest.as_str());

    // No id: one is made, the same one goes to the backend and back to the client.
    let (headers, echo) = echo_through(&lb, &[]).await;
    let made = echo_header(&echo, "x-request-id").expect("backend got an id");
    assert_eq!(made.len(), 36, "{made}");
    assert!(uuid.is_match(made), "not a UUID: {made}");
    assert_eq!(headers["x-request-id"], made);
    let (_, echo) = echo_through(&lb, &[]).await;
    assert_ne!(echo_header(&echo, "x-request-id"), Some(made), "ids repeat");

    // Insane ids (too long, empty, two of them) are replaced by a UUID, both ways.
    let too_long = "x".repeat(300);
    for sent in [
        vec![("x-request-id", too_long.as_str())],
        vec![("x-request-id", "")],
        vec![("x-request-id", "one"), ("x-request-id", "two")],
    ] {
        let (headers, echo) = echo_through(&lb, &sent).await;
        let got = echo_header(&echo, "x-request-id").expect("backend got an id");
        assert!(
            uuid.is_match(got),
            "{sent:?} reached the backend as {got:?}"
        );
        let back: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(back.len(), 1, "{sent:?}: {back:?}");
        assert_eq!(back[0], got, "{sent:?}");
    }

    // Turned off, or left out without an access log or tracing to use them: nothing is
    // added, and a client's id passes through as any header does.
    for config in [
        json!({"backends": urls(&[&b]), "request_id": false}),
        json!({"backends": urls(&[&b])}),
    ] {
        let off = alb(config);
        let (headers, echo) = echo_through(&off, &[]).await;
        assert_eq!(echo_header(&echo, "x-request-id"), None);
        assert!(headers.get("x-request-id").is_none());
        let (headers, echo) = echo_through(&off, &[("x-request-id", &too_long)]).await;
        assert_eq!(echo_header(&echo, "x-request-id"), Some(too_long.as_str()));
        assert!(headers.get("x-request-id").is_none());
    }
    // An access log turns them on.
    let logs = tempfile::tempdir().unwrap();
    let logged = alb(json!({
        "backends": urls(&[&b]),
        "access_log": {"path": logs.path().join("a.log")},
    }));
    let (headers, echo) = echo_through(&logged, &[]).await;
    let made = echo_header(&echo, "x-request-id").expect("an id with an access log");
    assert_eq!(headers["x-request-id"], made);
}

/// What the OTLP receiver got: every span, with the `service.name` of its resource.
type Received = Arc<Mutex<Vec<(Option<String>, Span)>>>;

/// An OTLP/HTTP (protobuf) trace receiver on a loopback port; returns its port and store.
async fn otlp_receiver() -> (u16, Received) {
    async fn traces(
        State(store): State<Received>,
        body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
        let content_type = [("content-type", "application/x-protobuf")];
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return (StatusCode::BAD_REQUEST, content_type, Vec::new());
        };
        let mut store = store.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(string_value)
            });
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    store.push((service.clone(), span));
                }
            }
        }
        let response = ExportTraceServiceResponse::default().encode_to_vec();
        (StatusCode::OK, content_type, response)
    }
    let store = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, store)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_value(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_trace_ids_backends_saw() {
    let (receiver, store) = otlp_receiver().await;
    let b = backend(&[]);
    let lb = alb(json!({
        "backends": urls(&[&b]),
        "tracing": {
            "otlp_endpoint": format!("http://127.0.0.1:{receiver}/v1/traces"),
            "sample": 1.0,
        },
    }));

    struct Sent {
        trace_id: String,
        incoming_parent: String,
        backend_parent: String,
        backend_header: String,
        request_id: String,
    }
    let mut sent = Vec::new();
    for i in 1..=5u8 {
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}");
        let incoming_parent = format!("00f067aa0ba902{i:02x}");
        let request_id = format!("otlp-test-{i}");
        let traceparent = format!("00-{trace_id}-{incoming_parent}-01");
        let (headers, echo) = echo_through(
            &lb,
            &[
                ("traceparent", &traceparent),
                ("tracestate", "vendor=1"),
                ("x-request-id", &request_id),
            ],
        )
        .await;
        let seen = parse_traceparent(echo_header(&echo, "traceparent").expect("a traceparent"));
        assert_eq!(seen.trace_id, trace_id);
        assert_eq!(seen.flags, "01");
        assert_ne!(seen.parent_id, incoming_parent);
        let backend_header = headers["x-alb-backend"].to_str().unwrap().to_owned();
        assert_eq!(backend_header, name(&b));
        sent.push(Sent {
            trace_id,
            incoming_parent,
            backend_parent: seen.parent_id,
            backend_header,
            request_id,
        });
    }

    wait_until(
        "the OTLP receiver has spans of all five traces",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            let wanted: Vec<String> = sent.iter().map(|s| s.trace_id.clone()).collect();
            async move {
                let store = store.lock().unwrap();
                wanted
                    .iter()
                    .all(|t| store.iter().any(|(_, span)| hex(&span.trace_id) == *t))
            }
        },
    )
    .await;

    let decisions = admin_json(&lb, "/decisions").await;
    let decision_of: HashMap<&str, u64> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| Some((d["request_id"].as_str()?, d["id"].as_u64()?)))
        .collect();

    let store = store.lock().unwrap();
    for s in &sent {
        let spans: Vec<_> = store
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == s.trace_id)
            .collect();
        assert_eq!(spans.len(), 1, "one span of ALB per request: {spans:?}");
        let (service, span) = spans[0];
        assert_eq!(service.as_deref(), Some("alb"), "resource service.name");
        assert_eq!(
            hex(&span.span_id),
            s.backend_parent,
            "ALB's span is the backend's parent"
        );
        assert_eq!(
            hex(&span.parent_span_id),
            s.incoming_parent,
            "the caller's span is ALB's parent"
        );
        assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
        assert!(
            span.end_time_unix_nano >= span.start_time_unix_nano,
            "{span:?}"
        );
        assert_eq!(
            attribute(span, "http.response.status_code"),
            Some(&AnyValue::IntValue(200)),
            "{span:?}"
        );
        assert_eq!(
            attribute(span, "http.request.method"),
            Some(&AnyValue::StringValue("GET".to_owned())),
            "{span:?}"
        );
        assert_eq!(
            attribute(span, "url.path"),
            Some(&AnyValue::StringValue("/_sim/echo".to_owned())),
            "{span:?}"
        );
        assert_eq!(
            attribute(span, "alb.backend"),
            Some(&AnyValue::StringValue(s.backend_header.clone())),
            "{span:?}"
        );
        // The server the client addressed is ALB, not the backend.
        assert_eq!(
            attribute(span, "server.address"),
            Some(&AnyValue::StringValue("127.0.0.1".to_owned())),
            "{span:?}"
        );
        assert_eq!(
            attribute(span, "url.scheme"),
            Some(&AnyValue::StringValue("http".to_owned())),
            "{span:?}"
        );
        // The caller's tracestate is the exported span's too.
        assert_eq!(span.trace_state, "vendor=1", "{span:?}");
        let Some(AnyValue::IntValue(decision_id)) = attribute(span, "alb.decision_id") else {
            panic!("no integer alb.decision_id: {span:?}");
        };
        assert_eq!(
            decision_of.get(s.request_id.as_str()).map(|id| *id as i64),
            Some(*decision_id),
            "the span's decision is the request's in /decisions: {decisions}"
        );
    }
}

/// `alb check-config` on a file with `tracing` set to `tracing`.
fn check_config(tracing: Value) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"backends": ["http://127.0.0.1:3000"], "tracing": tracing});
    let path = write_config(dir.path(), "config.json", &config.to_string());
    alb_output(&["check-config", path.to_str().unwrap()])
}

#[test]
fn tracing_keys_out_of_range_are_refused() {
    for (tracing, key) in [
        (
            json!({"otlp_endpoint": "grpc://x"}),
            "tracing.otlp_endpoint",
        ),
        (
            json!({"otlp_endpoint": "127.0.0.1:4318"}),
            "tracing.otlp_endpoint",
        ),
        (json!({"sample": 2}), "tracing.sample"),
        (json!({"sample": -0.5}), "tracing.sample"),
    ] {
        let (code, _, stderr) = check_config(tracing.clone());
        assert_eq!(code, 2, "{tracing}: {stderr}");
        assert!(
            stderr.contains(key),
            "{tracing}: message does not name {key}: {stderr}"
        );
    }

    // An empty `tracing` is on with the defaults, and turns request ids on.
    let (code, stdout, stderr) = check_config(json!({}));
    assert_eq!(code, 0, "{stderr}");
    let effective: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(effective["tracing"]["sample"], 1.0);
    assert_eq!(effective["tracing"]["service_name"], "alb");
    assert_eq!(effective["tracing"]["otlp_endpoint"], Value::Null);
    assert_eq!(effective["request_id"], true);
}
