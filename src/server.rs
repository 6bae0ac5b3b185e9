//! Listeners and the assembled stack.
//!
//! [`Proxy::build`] turns a [`Config`] into the running parts: one [`Endpoint`] per backend,
//! the health checker feeding the balancer's discovery stream, the pooled client and the edge
//! layers. [`Server::bind`] reads the certificates and binds every listener first, so a bad
//! certificate or a port in use is reported before anything serves; [`Server::serve`] then
//! runs them until the shutdown future resolves, and drains open connections gracefully.
//!
//! Listeners: the plain port (the proxy, or a redirect to HTTPS when TLS is on), the TLS
//! port (rustls, ALPN h2 and http/1.1), and the admin port. The proxy listeners are served by
//! axum-server (hyper-util's auto builder: HTTP/1.1, h2c with prior knowledge, upgrades),
//! with the socket peer recorded as `ConnectInfo<SocketAddr>`. SIGHUP re-reads the
//! certificate files; connections already open keep the certificate they started with.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use tower::Layer;

use crate::{
    admin::{self, AdminState},
    balance::{discover, endpoint::Endpoint, Balance, Balancer, BalancerOptions},
    client_ip::ClientIp,
    config::Config,
    forward::{backend_client, BackendClient, ClientProto, Forward},
    health::HealthChecker,
    layer::{
        rate_limit::{spawn_pruning, Limiter},
        Backpressure, BackpressureLayer, Metrics, MetricsLayer, RateLimit, RateLimitLayer,
    },
    prometheus, redirect,
    tls::{load_server_config, TlsError},
};

/// How long open connections get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole request path: metrics, rate limit, backpressure, balance, forward.
pub type ProxyService = Metrics<RateLimit<Backpressure<Balance<Forward>>>>;

/// The assembled data plane, independent of listeners.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The balancer shared by every listener.
    pub balancer: Arc<Balancer>,
    /// Every configured backend, up or down, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    client: BackendClient,
    request_timeout: Duration,
    metrics: MetricsLayer,
    rate_limit: RateLimitLayer,
    backpressure: BackpressureLayer,
}

impl Proxy {
    /// Builds endpoints, starts health checks, the balancer and the rate limiter's pruning.
    /// Needs a Tokio runtime; install the metrics recorder first ([`prometheus::install`]) if
    /// metrics are wanted, since handles are resolved here.
    pub fn build(config: &Config) -> Proxy {
        let endpoints: Vec<Arc<Endpoint>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(id, b)| Arc::new(Endpoint::new(id, b, &config.adaptive)))
            .collect();
        let client = backend_client(config.connect_timeout);
        let client_ip = ClientIp::new(&config.trusted_proxies);
        let (changes, stream) = discover::channel();
        HealthChecker::new(config.health.clone(), client.clone(), changes).spawn(&endpoints);
        let balancer = Balancer::new(
            config.strategy,
            BalancerOptions {
                client_ip: client_ip.clone(),
                max_connections: config.max_connections,
                explain: config.explain,
                shadow: config.shadow,
            },
            stream,
        );
        let limiter = config.rate_limit.as_ref().map(|r| {
            let limiter = Arc::new(Limiter::new(r, client_ip));
            spawn_pruning(limiter.clone());
            limiter
        });
        Proxy {
            balancer,
            endpoints,
            client,
            request_timeout: config.request_timeout,
            metrics: MetricsLayer::new(),
            rate_limit: RateLimitLayer::new(limiter),
            backpressure: BackpressureLayer::new(config.max_in_flight),
        }
    }

    /// The full stack for requests arriving over `proto`.
    pub fn service(&self, proto: ClientProto) -> ProxyService {
        let balance = Balance::new(
            self.balancer.clone(),
            Forward::new(self.client.clone(), proto, self.request_timeout),
        );
        self.metrics
            .layer(self.rate_limit.layer(self.backpressure.layer(balance)))
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
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
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
    https: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    admin: std::net::TcpListener,
    reload_from_files: bool,
}

impl Server {
    /// Reads the certificate files (if TLS is configured), then binds every listener.
    pub fn bind(config: Config) -> Result<Server, ServeError> {
        let tls = match &config.tls {
            Some(t) => Some(load_server_config(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let mut server = Server::bind_with_tls(config, tls)?;
        server.reload_from_files = true;
        Ok(server)
    }

    /// Binds every listener, serving TLS (on `tls_port`) with the given config when TLS is
    /// configured; the certificate files named in the config are not read. The demo uses it
    /// with a certificate generated in memory.
    pub fn bind_with_tls(
        config: Config,
        tls: Option<rustls::ServerConfig>,
    ) -> Result<Server, ServeError> {
        let http = bind(SocketAddr::new(config.bind_address, config.port))?;
        let https = match (&config.tls, tls) {
            (Some(t), Some(server_config)) => Some((
                bind(SocketAddr::new(config.bind_address, t.port))?,
                Arc::new(server_config),
            )),
            _ => None,
        };
        let admin = bind(config.admin_addr)?;
        Ok(Server {
            config,
            http,
            https,
            admin,
            reload_from_files: false,
        })
    }

    /// The plain HTTP listener's address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        local_addr(&self.http)
    }

    /// The TLS listener's address, if TLS is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(l, _)| local_addr(l))
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// Serves until `shutdown` resolves, then drains connections for up to [`DRAIN_TIMEOUT`].
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let handle = prometheus::install();
        prometheus::spawn_upkeep(handle.clone());
        let proxy = Proxy::build(&self.config);
        tracing::info!(
            strategy = %self.config.strategy,
            backends = ?self.config.backends.iter().map(|b| b.authority.as_str()).collect::<Vec<_>>(),
            "load balancer configured"
        );
        let shutdown_handle = axum_server::Handle::new();
        let mut listeners = tokio::task::JoinSet::new();

        let http_addr = self.http_addr();
        let admin_addr = self.admin_addr();
        let redirecting = self.https.is_some() && self.config.redirect_to_https;
        let plain = match (&self.https, redirecting) {
            (Some((l, _)), true) => redirect::router(local_addr(l).port()),
            _ => proxy.router(ClientProto::Http),
        };
        tracing::info!("HTTP server listening on :{}", http_addr.port());
        if redirecting {
            tracing::info!("HTTP requests are redirected to HTTPS");
        }
        let server = axum_server::from_tcp(self.http)
            .map_err(|source| ServeError::Serve {
                addr: http_addr,
                source,
            })?
            .handle(shutdown_handle.clone());
        listeners.spawn(async move {
            let served = server
                .serve(plain.into_make_service_with_connect_info::<SocketAddr>())
                .await;
            served.map_err(|source| ServeError::Serve {
                addr: http_addr,
                source,
            })
        });

        if let Some((listener, server_config)) = self.https {
            let addr = local_addr(&listener);
            let rustls_config = RustlsConfig::from_config(server_config);
            if self.reload_from_files {
                if let Some(tls) = &self.config.tls {
                    spawn_certificate_reload(rustls_config.clone(), tls.clone());
                }
            }
            tracing::info!("HTTPS server listening on :{}", addr.port());
            let server = axum_server::from_tcp_rustls(listener, rustls_config)
                .map_err(|source| ServeError::Serve { addr, source })?
                .handle(shutdown_handle.clone());
            let app = proxy.router(ClientProto::Https);
            listeners.spawn(async move {
                let served = server
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await;
                served.map_err(|source| ServeError::Serve { addr, source })
            });
        }

        tracing::info!("admin listening on {admin_addr} (/metrics, /health, /backends)");
        let admin_app = admin::router(AdminState {
            balancer: proxy.balancer.clone(),
            endpoints: proxy.endpoints.clone(),
            prometheus: handle,
        });
        let admin = axum_server::from_tcp(self.admin)
            .map_err(|source| ServeError::Serve {
                addr: admin_addr,
                source,
            })?
            .handle(shutdown_handle.clone());
        listeners.spawn(async move {
            let served = admin.serve(admin_app.into_make_service()).await;
            served.map_err(|source| ServeError::Serve {
                addr: admin_addr,
                source,
            })
        });

        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining open connections");
            shutdown_handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
        });
        while let Some(result) = listeners.join_next().await {
            if let Ok(Err(e)) = result {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Re-reads the certificate and key on SIGHUP; a bad pair is logged and the old one kept.
fn spawn_certificate_reload(rustls_config: RustlsConfig, tls: crate::config::TlsConfig) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; certificates will not reload");
            return;
        };
        while hangups.recv().await.is_some() {
            match load_server_config(&tls.cert_file, &tls.key_file) {
                Ok(config) => {
                    rustls_config.reload_from_config(Arc::new(config));
                    tracing::info!(cert = %tls.cert_file.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS certificate reload failed; keeping the current certificate"
                ),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (rustls_config, tls);
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(listener: &std::net::TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
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
