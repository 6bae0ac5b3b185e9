//! ALB: an adaptive, observable HTTP/HTTPS load balancer.
//!
//! # Entry points
//!
//! - [`LoadBalancer`]: a balancer for your own axum or tower app, from a list of URLs and a
//!   strategy; [`LoadBalancer::service`] is a `tower::Service` to put behind a route.
//! - [`layer`]: the edge layers, usable one by one ([`layer::RequestIdLayer`],
//!   [`layer::AccessLogLayer`], [`layer::MetricsLayer`], [`layer::NormalizeLayer`],
//!   [`layer::RateLimitLayer`], [`layer::BackpressureLayer`], [`layer::BodyLimitLayer`],
//!   [`layer::RecordLayer`], [`layer::FaultLayer`]),
//!   and [`trace::TraceLayer`].
//! - [`load_report::LoadReportLayer`]: for a backend app, its own load on `/_alb/load`, which
//!   the `prequal` strategy probes.
//! - [`admin::router`]: the admin routes (backends, decisions, metrics, dashboard).
//! - [`balance`]: the core on its own: [`Balancer`] picks from a snapshot fed by a
//!   `tower::discover` stream, with a [`Strategy`] per file.
//! - [`Server`] and [`LiveProxy`]: what the `alb` binary runs (listeners, TLS, reloads).
//!
//! # The stack
//!
//! ```text
//!  client ─► listener (axum-server: HTTP/1.1, h2c, TLS)
//!            └─► RequestId ─► Trace ─► AccessLog ─► Record ─► Metrics ─► Normalize
//!                 ─► RateLimit ─► Backpressure ─► BodyLimit            (layer/, trace/)
//!                 └─► Router: route match ─► Fault ─► split ─► mirror ─► pool  (router/)
//!                 └─► Route (the pool's): pick ─► overflow ─► shadows ─► attempt ─► retry ─► decision
//!                      │     (balance/)  (balance/)   (balance/)        (retry)   (decision)
//!                      └─► Forward ─┬─ no body, plain HTTP/1.1: upstream, ALB's own pool ─► backend
//!                                   ├─ upstream_protocol h2: upstream::H2Pool ─► backend
//!                                   └─ body, upgrade, TLS (auto): hyper-util's client ─► backend
//!
//!  HealthChecker, OutlierDetector ── Change::Insert / Remove ─► Discover ─► Balancer snapshot
//!  DnsDiscovery ── addresses changed ─► LiveProxy rebuilds as a reload would (new ones wait
//!                  for a passing health check, removed ones finish what is in flight)
//!  probe (prequal) ── GET /_alb/load ─► each backend's ProbeSlot (its RIF and latency)
//! ```
//!
//! # Layers
//!
//! Imports point from the edge down to the core, never back (`tests/architecture.rs` checks
//! it): leaves ([`semantics`], [`telemetry`], [`client_ip`], [`guarded_body`], [`grpc`], [`sim`],
//! [`tls`]) → [`local_reply`], [`prometheus`] → the core, [`balance`] (identity, state,
//! selection, discovery) → [`decision`], [`outlier`], [`retry`], [`upstream`], [`capacity`]
//! → [`dns`], [`forward`], [`health`], [`layer`], [`redirect`] → [`route`], [`router`] → [`config`]
//! (parses the file into the types below it) → [`proxy`], [`loadgen`] → [`replay`] →
//! [`admin`], [`lab`] → [`builder`], [`server`] → [`demo`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod builder;
pub mod capacity;
pub mod client_ip;
pub mod config;
pub mod decision;
pub mod demo;
pub mod dns;
pub mod forward;
pub mod grpc;
pub mod guarded_body;
pub mod headers;
pub mod health;
pub mod humantime_serde;
pub mod lab;
pub mod layer;
pub mod load_report;
pub mod loadgen;
pub mod local_reply;
pub mod outlier;
pub mod probe;
pub mod prometheus;
pub mod proxy;
pub mod redirect;
pub mod replay;
pub mod retry;
pub mod route;
pub mod router;
pub mod semantics;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use balance::{Balancer, Strategy, StrategyKind};
pub use builder::{Builder, LoadBalancer};
pub use config::Config;
pub use forward::Forward;
pub use proxy::{LiveProxy, Proxy};
pub use route::{Route, Routing};
pub use server::Server;
