//! ALB: an adaptive, observable HTTP/HTTPS load balancer.
//!
//! The data plane is a Tower stack behind an axum/hyper server:
//!
//! ```text
//!  client ─► listener (axum-server: HTTP/1.1, h2c)
//!            └─► Balance ── picks an Endpoint with the configured Strategy
//!                 │          (round_robin | least_conn | sticky | adaptive), counts it in flight
//!                 └─► Forward ─┬─ no body: upstream, ALB's own pooled HTTP/1.1 client ─► backend
//!                              └─ body or upgrade: hyper-util's pooled client ─────────► backend
//!
//!  HealthChecker ── Change::Insert / Change::Remove ─► Discover stream ─► Balancer snapshot
//! ```
//!
//! One concern per module: [`config`] (the file format), [`server`] (listeners and the
//! assembled stack), [`balance`] (selection, per-backend state, discovery), [`forward`]
//! (the request rewrite and the choice of client), [`upstream`] (connections owned by the
//! request: pool, HTTP/1.1 heads, response bodies), [`health`] (active checks), [`client_ip`]
//! (who the client is), [`sim`] (simulated backends for the demo, tests and the lab),
//! [`demo`] (the one-command demo), [`loadgen`] (an open-loop load generator) and [`lab`]
//! (experiments comparing strategies).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod builder;
pub mod client_ip;
pub mod config;
pub mod decision;
pub mod demo;
pub mod forward;
pub mod guarded_body;
pub mod health;
pub mod humantime_serde;
pub mod lab;
pub mod layer;
pub mod loadgen;
pub mod local_reply;
pub mod outlier;
pub mod prometheus;
pub mod proxy;
pub mod redirect;
pub mod retry;
pub mod route;
pub mod semantics;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use balance::{Balancer, Strategy, StrategyKind};
pub use builder::{Builder, LoadBalancer};
pub use config::Config;
pub use forward::Forward;
pub use proxy::{LiveProxy, Proxy};
pub use route::{Route, Routing};
pub use server::Server;
