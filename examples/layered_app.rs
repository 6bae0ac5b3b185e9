//! An axum app that reuses ALB's layers in front of its own routes.
//!
//! `/hello` is the app's own route; every other path is balanced over the backends given on
//! the command line. The whole app sits behind ALB's metrics, rate-limit and backpressure
//! layers, and ALB's admin routes are mounted under `/admin`.
//!
//! ```sh
//! cargo run --example layered_app -- 3000 http://127.0.0.1:8081 http://127.0.0.1:8082
//! ```

use std::{net::SocketAddr, sync::Arc, time::Duration};

use alb::{
    admin::{self, AdminState},
    balance::{discover, endpoint::Endpoint, Balance, Balancer, BalancerOptions, StrategyKind},
    client_ip::ClientIp,
    config::{AdaptiveConfig, BackendConfig, Defaults, RateLimitConfig, RateLimitKey},
    forward::{backend_client, ClientProto, Forward},
    layer::{rate_limit::Limiter, BackpressureLayer, MetricsLayer, RateLimitLayer},
    prometheus,
    upstream::ConnectionPool,
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
    if backends.is_empty() {
        return Err("give at least one backend URL".into());
    }
    let handle = prometheus::install();

    // The balancer, fed by a discovery channel this app controls (no health checks here).
    let tuning = AdaptiveConfig {
        decay: Defaults::EWMA_DECAY,
        default_rtt: Defaults::DEFAULT_RTT,
        failure_penalty: Defaults::FAILURE_PENALTY,
    };
    let (changes, stream) = discover::channel();
    let mut endpoints = Vec::new();
    for (id, url) in backends.iter().enumerate() {
        let authority = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()?;
        let config = BackendConfig {
            url: url.clone(),
            authority,
            weight: 1,
        };
        let endpoint = Arc::new(Endpoint::new(id, &config, &tuning));
        changes.insert(endpoint.clone());
        endpoints.push(endpoint);
    }
    let balancer = Balancer::new(StrategyKind::LeastConn, BalancerOptions::default(), stream);
    let forward = Forward::new(
        backend_client(Defaults::CONNECT_TIMEOUT),
        ConnectionPool::for_endpoints(&endpoints, Defaults::CONNECT_TIMEOUT, &[]),
        ClientProto::Http,
        Duration::from_secs(30),
    );
    let proxy = Balance::new(balancer.clone(), forward);

    // 5 requests per second per client, burst 5: easy to see in a test.
    let limits = RateLimitConfig {
        requests_per_second: 5,
        burst: 5,
        key: RateLimitKey::Ip,
    };
    let limiter = Arc::new(Limiter::new(&limits, ClientIp::default()));

    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app\n" }))
        .fallback_service(proxy)
        .layer(BackpressureLayer::new(Some(100)))
        .layer(RateLimitLayer::new(Some(limiter)))
        .layer(MetricsLayer::new())
        .nest(
            "/admin",
            admin::router(AdminState::new(balancer, endpoints, handle)),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("layered_app listening on http://127.0.0.1:{port}/");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
