//! The floor under ALB's data plane: what the components it is built on cost with nothing
//! of ALB's between them.
//!
//! Two servers, each hyper's HTTP/1.1 server on a one-thread tokio runtime with
//! `TCP_NODELAY` on every accepted connection, as `alb run` with `"workers": 1`:
//! - `answer`: hyper answers every request itself (a 14-byte body, the size of the
//!   benchmark backends' answers). No backend, no proxying: hyper and tokio alone.
//! - `forward`: every request goes to the next backend in turn through ALB's own backend
//!   client ([`alb::upstream::send`] over a [`alb::upstream::ConnectionPool`] per backend),
//!   as `alb` does for a request without a body. No Tower layer, no axum-server, no header
//!   rewriting, no decision log, metrics, retries or timeouts.
//!
//! The shared benchmark starts it in place of `alb` (it reads the same config file, `port`
//! and `backends` only):
//!
//! ```sh
//! cargo build --release --example hyper_floor
//! python3 ../shared/bench/proxy_bench.py --alb target/release/examples/hyper_floor \
//!     --alb-args "{config} forward" --workload get
//! ```
//!
//! What `alb` costs above `forward` is ALB's own work per request; what `forward` costs above
//! nginx is the floor this design starts from (README, "Performance").

use std::{cell::Cell, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use alb::upstream::{self, ConnectionPool};
use bytes::Bytes;
use http::{uri::Authority, Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

/// The benchmark backends' answer is `backend PORT\n`: 14 bytes.
const ANSWER: &[u8] = b"backend 00000\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor CONFIG_JSON answer|forward";
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(args.next().ok_or(usage)?)?)?;
    let mode = args.next().ok_or(usage)?;
    let port: u16 = match &config["port"] {
        serde_json::Value::String(port) => port.parse()?,
        port => port.as_u64().ok_or("config: port")?.try_into()?,
    };
    let pools: Vec<Arc<ConnectionPool>> = config["backends"]
        .as_array()
        .ok_or("config: backends")?
        .iter()
        .map(|url| {
            let url = url.as_str().ok_or("config: backends: a URL")?;
            let authority: Authority = url.trim_start_matches("http://").parse()?;
            Ok(ConnectionPool::new(authority, Duration::from_secs(3)))
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let forward = match mode.as_str() {
        "answer" => false,
        "forward" if !pools.is_empty() => true,
        _ => return Err(usage.into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(
            SocketAddr::from(([127, 0, 0, 1], port)),
            forward,
            pools,
        ))
}

async fn serve(
    addr: SocketAddr,
    forward: bool,
    pools: Vec<Arc<ConnectionPool>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let pools: Arc<[Arc<ConnectionPool>]> = pools.into();
    let mut next = 0usize;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        if forward {
            let pools = pools.clone();
            // Round robin across connections: each connection starts at the next backend.
            let turn = Cell::new(next);
            next = next.wrapping_add(1);
            let service = service_fn(move |request: Request<Incoming>| {
                turn.set(turn.get().wrapping_add(1));
                upstream::send(pools[turn.get() % pools.len()].clone(), &request)
            });
            tokio::spawn(http1::Builder::new().serve_connection(io, service));
        } else {
            let service = service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(ANSWER))))
            });
            tokio::spawn(http1::Builder::new().serve_connection(io, service));
        }
    }
}
