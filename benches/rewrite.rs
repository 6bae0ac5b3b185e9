//! The request checks (`normalize`: one valid `Host`), the request rewrite (URI, version,
//! hop-by-hop stripping, X-Forwarded-*), the same rewrite applied while the head is written
//! (the own pool's way), and the wire
//! work of the pooled upstream client: encoding the request head (without a body, and with a
//! `Content-Length` one, its length checked first), parsing the response head.

use std::hint::black_box;

use alb::{
    forward::{encode_forwarded_head, rewrite_request, ClientProto},
    layer::normalize::normalize,
    upstream::{declared_length, encode_request, encode_request_with_length, parse_response},
};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};

/// A browser-like GET as it arrives, before any rewrite.
fn received() -> http::Request<()> {
    http::Request::builder()
        .uri("/api/items?page=2")
        .header("host", "app.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .body(())
        .unwrap()
}

fn rewrite(c: &mut Criterion) {
    let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
    let peer = Some("192.0.2.7:51000".parse().unwrap());
    c.bench_function("rewrite_request", |b| {
        b.iter_batched(
            received,
            |mut request| {
                rewrite_request(&mut request, &backend, peer, ClientProto::Http);
                black_box(request)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The own pool's way to the same head: the request as received, its fields changed while
/// the head is written (`encode_forwarded_head`), against `rewrite_request` then
/// `encode_request`.
fn forwarded_head(c: &mut Criterion) {
    let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
    let peer = Some("192.0.2.7:51000".parse().unwrap());
    let mut out = BytesMut::with_capacity(1024);
    c.bench_function("rewrite_then_encode_head", |b| {
        b.iter_batched(
            received,
            |mut request| {
                out.clear();
                rewrite_request(&mut request, &backend, peer, ClientProto::Http);
                encode_request(&request, &mut out);
                black_box((out.len(), request))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("encode_forwarded_head", |b| {
        b.iter_batched(
            received,
            |request| {
                out.clear();
                encode_forwarded_head(
                    &request,
                    &backend,
                    None,
                    peer,
                    ClientProto::Http,
                    None,
                    &mut out,
                );
                black_box((out.len(), request))
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn checks(c: &mut Criterion) {
    // The usual Host (a name and a port) is checked in place; an IPv6 literal goes through
    // `http`'s authority parser, which copies it.
    for (name, host) in [
        ("normalize_host_name", "app.example:8080"),
        ("normalize_host_ipv6", "[2001:db8::1]:8080"),
    ] {
        let request = http::Request::builder()
            .uri("/api/items?page=2")
            .header("host", host)
            .header("user-agent", "bench/1.0")
            .body(())
            .unwrap();
        c.bench_function(name, |b| {
            b.iter_batched(
                || request.clone(),
                |mut request| {
                    let checked = normalize(&mut request);
                    black_box((checked, request))
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

fn wire(c: &mut Criterion) {
    let request = http::Request::builder()
        .uri("http://127.0.0.1:9000/api/items?page=2")
        .header("host", "app.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "app.example")
        .body(())
        .unwrap();
    let mut out = BytesMut::with_capacity(1024);
    c.bench_function("encode_request_head", |b| {
        b.iter(|| {
            out.clear();
            encode_request(black_box(&request), &mut out);
            black_box(out.len())
        })
    });
    // A POST with a 1 KiB body, as the benchmark's `post` workload sends: the length is
    // checked against the body, then the head is written with one `content-length`.
    let post = http::Request::post("http://127.0.0.1:9000/api/items")
        .header("host", "app.example")
        .header("user-agent", "bench/1.0")
        .header("content-type", "application/json")
        .header("content-length", "1024")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "app.example")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1024
        ])))
        .unwrap();
    c.bench_function("encode_request_head_with_length", |b| {
        b.iter(|| {
            out.clear();
            let length = declared_length(black_box(&post)).unwrap();
            encode_request_with_length(&post, length, &mut out);
            black_box(out.len())
        })
    });
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 22:00:00 GMT\r\n\
        Content-Type: text/plain\r\nContent-Length: 14\r\nConnection: keep-alive\r\n\r\nbackend 19001\n";
    let method = http::Method::GET;
    c.bench_function("parse_response_head", |b| {
        b.iter_batched(
            || BytesMut::from(response),
            |mut buf| black_box(parse_response(&mut buf, &method).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, checks, rewrite, forwarded_head, wire);
criterion_main!(benches);
