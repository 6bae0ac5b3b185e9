//! The request rewrite: URI, version, hop-by-hop stripping, X-Forwarded-*.

use std::hint::black_box;

use alb::forward::{rewrite_request, ClientProto};
use criterion::{criterion_group, criterion_main, Criterion};

fn rewrite(c: &mut Criterion) {
    let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
    let peer = Some("192.0.2.7:51000".parse().unwrap());
    c.bench_function("rewrite_request", |b| {
        b.iter_batched(
            || {
                http::Request::builder()
                    .uri("/api/items?page=2")
                    .header("host", "app.example")
                    .header("user-agent", "bench/1.0")
                    .header("accept", "*/*")
                    .header("connection", "keep-alive")
                    .body(())
                    .unwrap()
            },
            |mut request| {
                rewrite_request(&mut request, &backend, peer, ClientProto::Http);
                black_box(request)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
