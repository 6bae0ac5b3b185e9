//! Listeners and the assembled stack.
//!
//! [`Proxy::build`] turns a [`Config`] into the running parts: one [`Endpoint`] per backend,
//! the health checker feeding the balancer's discovery stream, and the pooled client.
//! [`Server::bind`] binds every listener first, so a port already in use is reported before
//! anything serves; [`Server::serve`] then runs them until the shutdown future resolves, and
//! drains open connections gracefully.
//!
//! Each listener is served by axum-server (hyper-util's auto builder: HTTP/1.1, h2c with
//! prior knowledge, upgrades), with the socket peer recorded as `ConnectInfo<SocketAddr>`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;

use crate::{
    balance::{discover, endpoint::Endpoint, Balance, Balancer, Strategy},
    client_ip::ClientIp,
    config::Config,
    forward::{backend_client, BackendClient, ClientProto, Forward},
    health::HealthChecker,
};

/// How long open connections get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The assembled data plane, independent of listeners.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The balancer shared by every listener.
    pub balancer: Arc<Balancer>,
    /// Every configured backend, up or down, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    client: BackendClient,
    request_timeout: Duration,
}

impl Proxy {
    /// Builds endpoints, starts health checks and the balancer. Needs a Tokio runtime.
    pub fn build(config: &Config) -> Proxy {
        let endpoints: Vec<Arc<Endpoint>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(id, b)| Arc::new(Endpoint::new(id, b, &config.adaptive)))
            .collect();
        let client = backend_client(config.connect_timeout);
        let (changes, stream) = discover::channel();
        HealthChecker::new(config.health.clone(), client.clone(), changes).spawn(&endpoints);
        let balancer = Balancer::new(
            Strategy::new(config.strategy),
            ClientIp::new(&config.trusted_proxies),
            stream,
        );
        Proxy {
            balancer,
            endpoints,
            client,
            request_timeout: config.request_timeout,
        }
    }

    /// The proxy service for requests arriving over `proto`: balance, then forward.
    pub fn service(&self, proto: ClientProto) -> Balance<Forward> {
        Balance::new(
            self.balancer.clone(),
            Forward::new(self.client.clone(), proto, self.request_timeout),
        )
    }

    /// The proxy as an axum router (the fallback for every path).
    pub fn router(&self, proto: ClientProto) -> Router {
        Router::new().fallback_service(self.service(proto))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listener failed while serving.
    #[error("listener {addr} failed: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    http: std::net::TcpListener,
}

impl Server {
    /// Binds the plain HTTP listener on `bind_address:port`.
    pub fn bind(config: Config) -> Result<Server, ServeError> {
        let addr = SocketAddr::new(config.bind_address, config.port);
        let http = bind(addr)?;
        Ok(Server { config, http })
    }

    /// The plain HTTP listener's address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains connections for up to [`DRAIN_TIMEOUT`].
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let proxy = Proxy::build(&self.config);
        let addr = self.http_addr();
        tracing::info!(
            strategy = %self.config.strategy,
            backends = ?self.config.backends.iter().map(|b| b.authority.as_str()).collect::<Vec<_>>(),
            "load balancer configured"
        );
        tracing::info!("HTTP server listening on :{}", addr.port());
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(self.http)
            .map_err(|source| ServeError::Serve { addr, source })?
            .handle(handle.clone())
            .serve(
                proxy
                    .router(ClientProto::Http)
                    .into_make_service_with_connect_info::<SocketAddr>(),
            );
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining open connections");
            handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
        });
        server
            .await
            .map_err(|source| ServeError::Serve { addr, source })
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
