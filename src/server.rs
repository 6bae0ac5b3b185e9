//! Listeners.
//!
//! [`Server::bind`] reads the certificates and binds every listener first, so a bad
//! certificate or a port in use is reported before anything serves; [`Server::serve`] then
//! builds the [`LiveProxy`] and runs the listeners until the shutdown future resolves, and
//! drains open connections gracefully (no new connections; open requests get
//! `drain_timeout`).
//!
//! Listeners: the plain port (the proxy, or a redirect to HTTPS when TLS is on), the TLS
//! port (rustls, ALPN h2 and http/1.1), and the admin port. The proxy listeners are served by
//! axum-server (hyper-util's auto builder: HTTP/1.1, h2c with prior knowledge, upgrades),
//! with the socket peer recorded as `ConnectInfo<SocketAddr>`. SIGHUP re-reads the
//! certificate files; connections already open keep the certificate they started with.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum_server::{accept::NoDelayAcceptor, tls_rustls::RustlsConfig};
use hyper_util::rt::TokioTimer;

use crate::{
    admin::{self, AdminState},
    config::Config,
    forward::ClientProto,
    prometheus,
    proxy::LiveProxy,
    redirect,
    tls::{load_server_config, TlsError, VersionAcceptor},
};

/// Time a new connection has to send its first request (protocol detection and TLS included).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The access log or the span exporter could not start.
    #[error(transparent)]
    Build(#[from] crate::proxy::BuildError),
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
    path: Option<PathBuf>,
    http: std::net::TcpListener,
    https: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    admin: std::net::TcpListener,
    reload_from_files: bool,
}

impl Server {
    /// Reads the certificate files (if TLS is configured), then binds every listener.
    pub fn bind(config: Config) -> Result<Server, ServeError> {
        check_access_log(&config)?;
        let tls = match &config.tls {
            Some(t) => Some(load_server_config(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let mut server = Server::bind_with_tls(config, tls)?;
        server.reload_from_files = true;
        Ok(server)
    }

    /// Remembers the file the config came from: SIGHUP and `POST /reload` re-read it.
    pub fn with_config_file(mut self, path: PathBuf) -> Self {
        self.path = Some(path);
        self
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
            path: None,
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

    /// Serves until `shutdown` resolves, then stops accepting and lets open requests finish
    /// for up to `drain_timeout`.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let handle = prometheus::install();
        prometheus::spawn_upkeep(handle.clone());
        let config = self.config.clone();
        let live = LiveProxy::new(self.config, self.path)?;
        spawn_reopen_on_usr1(live.clone());
        for pool in &config.pools {
            tracing::info!(
                pool = %pool.name,
                strategy = %pool.strategy,
                backends = ?pool.backends.iter().map(|b| b.authority.as_str()).collect::<Vec<_>>(),
                dns = ?pool.dns.iter().flat_map(|d| &d.sources).map(|s| s.query.name()).collect::<Vec<_>>(),
                "load balancer configured"
            );
        }
        for warning in &config.warnings {
            tracing::warn!("config: {warning}");
        }
        let shutdown_handle = axum_server::Handle::new();
        let mut listeners = tokio::task::JoinSet::new();
        let http_addr = local_addr(&self.http);
        let admin_addr = local_addr(&self.admin);

        let redirecting = self.https.is_some() && config.redirect_to_https;
        let redirect_port = self
            .https
            .as_ref()
            .filter(|_| redirecting)
            .map(|(l, _)| local_addr(l).port());
        tracing::info!("HTTP server listening on :{}", http_addr.port());
        if redirecting {
            tracing::info!("HTTP requests are redirected to HTTPS");
        }
        let mut server = axum_server::from_tcp(self.http)
            .map_err(|source| ServeError::Serve {
                addr: http_addr,
                source,
            })?
            // TCP_NODELAY on every accepted connection (nginx's `tcp_nodelay on`, HAProxy's
            // default): without it, an answer written in more than one write (a large or
            // streamed body) holds its last segment until the client's delayed ACK, 40 ms on
            // Linux. The TLS listener's acceptor sets it too.
            .acceptor(NoDelayAcceptor::new())
            .handle(shutdown_handle.clone())
            .first_request_timeout(FIRST_REQUEST_TIMEOUT);
        limit_connections(server.http_builder(), &config);
        let plain = live.make_service(ClientProto::Http);
        listeners.spawn(async move {
            let served = match redirect_port {
                Some(port) => {
                    let redirect = redirect::router(port);
                    server
                        .serve(redirect.into_make_service_with_connect_info::<SocketAddr>())
                        .await
                }
                None => server.serve(plain).await,
            };
            served.map_err(|source| ServeError::Serve {
                addr: http_addr,
                source,
            })
        });

        let rustls_config = match self.https {
            Some((listener, server_config)) => {
                let addr = local_addr(&listener);
                let rustls_config = RustlsConfig::from_config(server_config);
                tracing::info!("HTTPS server listening on :{}", addr.port());
                let acceptor =
                    VersionAcceptor::new(rustls_config.clone(), config.access_log.is_some());
                let mut server = axum_server::from_tcp(listener)
                    .map_err(|source| ServeError::Serve { addr, source })?
                    .acceptor(acceptor)
                    .handle(shutdown_handle.clone())
                    .first_request_timeout(FIRST_REQUEST_TIMEOUT);
                limit_connections(server.http_builder(), &config);
                let app = live.make_service(ClientProto::Https);
                listeners.spawn(async move {
                    let served = server.serve(app).await;
                    served.map_err(|source| ServeError::Serve { addr, source })
                });
                Some(rustls_config)
            }
            None => None,
        };
        spawn_reload_on_hangup(
            live.clone(),
            rustls_config.filter(|_| self.reload_from_files),
            config.tls.clone(),
        );

        tracing::info!(
            "admin listening on {admin_addr} (/, /metrics, /health, /backends, /decisions)"
        );
        let admin_app = admin::router(AdminState::live(live.clone(), handle));
        let admin = axum_server::from_tcp(self.admin)
            .map_err(|source| ServeError::Serve {
                addr: admin_addr,
                source,
            })?
            .acceptor(NoDelayAcceptor::new())
            .handle(shutdown_handle.clone());
        listeners.spawn(async move {
            let served = admin.serve(admin_app.into_make_service()).await;
            served.map_err(|source| ServeError::Serve {
                addr: admin_addr,
                source,
            })
        });

        let drain = config.drain_timeout;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(
                "shutting down: no new connections; open requests get up to {}",
                humantime::format_duration(drain)
            );
            shutdown_handle.graceful_shutdown(Some(drain));
        });
        while let Some(result) = listeners.join_next().await {
            if let Ok(Err(e)) = result {
                return Err(e);
            }
        }
        let last = live.current();
        let _ = tokio::task::spawn_blocking(move || last.flush_logs_and_spans()).await;
        tracing::info!("all connections closed; exiting");
        Ok(())
    }
}

/// Client-side limits on every proxy connection: header read timeout (slowloris), header
/// size and count (hyper answers `431` past them).
/// The request header limit hyper applies when none is set (`DEFAULT_MAX_HEADERS` in
/// hyper's `proto::h1::role`, not exported); `tests/reliability.rs` checks that the default
/// `max_headers` still holds at exactly this many.
const HYPER_MAX_HEADERS: usize = 100;

fn limit_connections(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    config: &Config,
) {
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.client_header_timeout)
        .max_buf_size(config.max_header_bytes);
    // hyper's own limit is the same number, kept on the stack; a limit set here, even an
    // equal one, makes hyper fill two vectors of that many slots for every request it
    // parses (1 000 instructions per GET, a thirtieth of the whole).
    if config.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(config.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
}

/// SIGHUP: re-reads the config file (backends, strategy, limits, timeouts) and the
/// certificate and key; anything invalid is logged and the running version kept.
fn spawn_reload_on_hangup(
    live: Arc<LiveProxy>,
    rustls_config: Option<RustlsConfig>,
    tls: Option<crate::config::TlsConfig>,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reloads only through POST /reload");
            return;
        };
        while hangups.recv().await.is_some() {
            let _ = live.reload_and_log();
            if let (Some(rustls_config), Some(tls)) = (&rustls_config, &tls) {
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
        }
    });
    #[cfg(not(unix))]
    let _ = (live, rustls_config, tls);
}

/// Opens the access log file once, so an unwritable path stops `alb run` before it binds.
fn check_access_log(config: &Config) -> Result<(), ServeError> {
    use crate::layer::access_log::Target;
    if let Some(Target::File(path)) = config.access_log.as_ref().map(|a| &a.target) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| crate::proxy::BuildError::AccessLog {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

/// SIGUSR1: reopens the access log (logrotate's `postrotate`, as for nginx).
fn spawn_reopen_on_usr1(live: Arc<LiveProxy>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            tracing::warn!("cannot listen for SIGUSR1; the access log cannot be reopened");
            return;
        };
        while usr1.recv().await.is_some() {
            live.current().reopen_access_log();
            tracing::info!("access log reopened");
        }
    });
    #[cfg(not(unix))]
    let _ = live;
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
