//! The library's front door: a load balancer for an axum or tower app in a few lines.
//!
//! ```no_run
//! # async fn app() -> Result<(), alb::builder::BuildError> {
//! use std::time::Duration;
//! use alb::{LoadBalancer, StrategyKind};
//!
//! let lb = LoadBalancer::builder(["http://127.0.0.1:8081", "http://127.0.0.1:8082"])
//!     .strategy(StrategyKind::Adaptive)
//!     .health_check("/health", Duration::from_secs(5))
//!     .build()?; // health checks start here (inside a Tokio runtime)
//! let app: axum::Router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hi" }))
//!     .fallback_service(lb.service()) // everything else is balanced
//!     .layer(alb::layer::MetricsLayer::new());
//! # let _ = app; Ok(()) }
//! ```
//!
//! The builder writes the same settings a config file would and validates them with the
//! same code, so a bad URL or weight fails with the message `alb check-config` would give.
//! [`LoadBalancer::service`] is the routing service alone (pick, retry, forward); the edge
//! layers ([`crate::layer`]) stack on it one by one, and [`LoadBalancer::admin_router`] is
//! the admin API for the same balancer.

use std::{path::Path, sync::Arc, time::Duration};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Map, Value};

use crate::{
    admin::{self, AdminState},
    balance::{Endpoint, StrategyKind},
    config::{Config, ConfigError},
    forward::{ClientProto, Forward},
    proxy::Proxy,
    route::{Route, Routing},
};

/// Why [`Builder::build`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is invalid; the message names the key, the value and what was expected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The settings are valid but a part could not start (an access log file, an exporter).
    #[error(transparent)]
    Start(#[from] crate::proxy::BuildError),
}

/// Settings for a [`LoadBalancer`], as config keys.
#[derive(Debug, Clone)]
pub struct Builder {
    settings: Map<String, Value>,
}

/// A running balancer: endpoints, health checks, outlier detection and the routing service.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    proxy: Proxy,
}

// === impl Builder ===

impl Builder {
    fn set(mut self, key: &str, value: Value) -> Self {
        self.settings.insert(key.to_owned(), value);
        self
    }

    /// The strategy (default: `round_robin`).
    pub fn strategy(self, kind: StrategyKind) -> Self {
        self.set("strategy", json!(kind.as_str()))
    }

    /// Active health checks: `GET path` every `interval` (default: `/health` every 10 s).
    pub fn health_check(self, path: &str, interval: Duration) -> Self {
        self.set("health_check_path", json!(path))
            .set("health_check_interval", json!(interval.as_secs_f64()))
    }

    /// Time a backend has to answer with response headers before the client gets `504`.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.set("request_timeout", json!(timeout.as_secs_f64()))
    }

    /// Requests in flight per backend before it counts as full.
    pub fn max_connections(self, max: usize) -> Self {
        self.set("max_connections", json!(max))
    }

    /// Answer requests carrying `x-alb-explain: 1` with an `x-alb-decision` header.
    pub fn explain(self, on: bool) -> Self {
        self.set("explain", json!(on))
    }

    /// Any other config key, as the config file would write it (see the README's
    /// configuration reference), e.g. `("retries", json!({"attempts": 0}))`.
    pub fn setting(self, key: &str, value: Value) -> Self {
        self.set(key, value)
    }

    /// Validates the settings and starts the balancer's background tasks (health checks,
    /// connection-pool sweeping); call it inside a Tokio runtime. Install the metrics
    /// recorder first (`prometheus::install`) if you want metrics.
    pub fn build(self) -> Result<LoadBalancer, BuildError> {
        let text = Value::Object(self.settings).to_string();
        let config = Config::parse(&text, Path::new("<LoadBalancer::builder>"))?;
        Ok(LoadBalancer {
            proxy: Proxy::build(&config)?,
        })
    }
}

// === impl LoadBalancer ===

impl LoadBalancer {
    /// A builder over these backend URLs (`http://host:port`).
    pub fn builder<I, S>(backends: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<Value> = backends.into_iter().map(|u| json!(u.as_ref())).collect();
        let mut settings = Map::new();
        settings.insert("backends".to_owned(), Value::Array(urls));
        Builder { settings }
    }

    /// The routing service: any `Request<axum::body::Body>` in, the backend's response out,
    /// with `x-alb-backend`. Cheap to clone; put it behind a route or as a fallback.
    pub fn service(&self) -> Route<Forward> {
        self.pool().route(ClientProto::Http)
    }

    /// The balancer's one pool.
    fn pool(&self) -> &crate::proxy::Pool {
        &self.proxy.pools[0]
    }

    /// The admin routes (`/backends`, `/decisions`, `/metrics`...) over this balancer,
    /// read-only, to nest wherever the app likes.
    pub fn admin_router(&self, prometheus: PrometheusHandle) -> Router {
        admin::router(AdminState::new(
            self.pool().routing.clone(),
            self.pool().endpoints.clone(),
            prometheus,
        ))
    }

    /// Every backend with its live state, in the order given.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.pool().endpoints
    }

    /// The balancer and its decision log.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.pool().routing
    }

    /// Stops the background tasks (health checks, pool sweeping). Services handed out keep
    /// working with the backend set as it is.
    pub fn shutdown(self) {
        self.proxy.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_setting_is_refused_with_the_config_message() {
        let error = LoadBalancer::builder(["http://127.0.0.1:1"])
            .setting("strategy", json!("fastest"))
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("strategy"), "{error}");
        assert!(error.contains("fastest"), "{error}");
        let error = LoadBalancer::builder(["ftp://x"]).build().unwrap_err();
        assert!(error.to_string().contains("backends"), "{error}");
    }

    #[tokio::test]
    async fn builds_a_balancer_over_the_given_backends() {
        let lb = LoadBalancer::builder(["http://127.0.0.1:1", "http://127.0.0.1:2"])
            .strategy(StrategyKind::LeastConn)
            .health_check("/ready", Duration::from_secs(1))
            .build()
            .unwrap();
        let names: Vec<&str> = lb.endpoints().iter().map(|e| e.name()).collect();
        assert_eq!(names, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            lb.routing().balancer().strategy().kind(),
            StrategyKind::LeastConn
        );
        lb.shutdown();
    }
}
