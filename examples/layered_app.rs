//! An axum app that puts ALB's balancer behind its fallback route and ALB's edge layers in
//! front of everything.
//!
//! `/hello` is the app's own route; every other path is balanced over the backends given on
//! the command line (least connections, health-checked every second). The whole app sits
//! behind ALB's metrics, rate-limit and backpressure layers, and ALB's admin routes are
//! mounted under `/admin`.
//!
//! ```sh
//! cargo run --example layered_app -- 3000 http://127.0.0.1:8081 http://127.0.0.1:8082
//! ```

use std::{net::SocketAddr, sync::Arc, time::Duration};

use alb::{
    client_ip::ClientIp,
    layer::{
        rate_limit::{Limiter, RateLimitConfig, RateLimitKey},
        BackpressureLayer, MetricsLayer, RateLimitLayer,
    },
    prometheus, LoadBalancer, StrategyKind,
};
use axum::{routing::get, Router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: layered_app PORT BACKEND_URL...")?
        .parse()?;
    let backends: Vec<String> = args.collect();
    let metrics = prometheus::install();

    // The balancer: backends, strategy, health checks. Bad URLs fail here, with the key.
    let lb = LoadBalancer::builder(&backends)
        .strategy(StrategyKind::LeastConn)
        .health_check("/health", Duration::from_secs(1))
        .build()?;

    // 5 requests per second per client, burst 5: easy to see in a test.
    let limits = RateLimitConfig {
        requests_per_second: 5,
        burst: 5,
        key: RateLimitKey::Ip,
        store: None,
    };
    let limiter = Arc::new(Limiter::new(&limits, ClientIp::default()));

    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app\n" }))
        .fallback_service(lb.service())
        .layer(BackpressureLayer::new(Some(100)))
        .layer(RateLimitLayer::new(Some(limiter)))
        .layer(MetricsLayer::new())
        .nest("/admin", lb.admin_router(metrics));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("layered_app listening on http://127.0.0.1:{port}/");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
