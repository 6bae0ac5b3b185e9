//! TLS termination: rustls server configs, self-signed certificates, reload.
//!
//! TLS 1.3 and 1.2 only (nothing older is even compiled in), ALPN `h2` then `http/1.1`, the
//! `aws-lc-rs` provider (rustls's default, with the faster RSA and AES-GCM code on x86-64)
//! passed explicitly so no process-wide default is needed (`rcgen` brings `ring` too, and
//! with two providers enabled through features rustls's `builder()` panics). Certificates are read and
//! checked against their key before any port is bound; a reload builds a whole new config and
//! swaps it in, so open connections keep the config they were accepted with.
//!
//! [`VersionAcceptor`] wraps axum-server's rustls acceptor to record each connection's
//! negotiated TLS version on its requests ([`TlsVersion`]), for the access log.

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum_server::{
    accept::{Accept, NoDelayAcceptor},
    tls_rustls::{RustlsAcceptor, RustlsConfig},
};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower::Service;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate or key could not be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {what} file {path}: {source} (for a self-signed one: alb gen-cert DIR)")]
    Read {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error(
        "certificate file {0}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error(
        "key file {0}: no PEM private key found (expected -----BEGIN PRIVATE KEY----- or similar)"
    )]
    NoKey(PathBuf),
    /// rustls refused the pair (a key that does not match the certificate, an unsupported key).
    #[error("certificate {cert} with key {key}: {reason}")]
    Invalid {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: rustls::Error,
    },
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Reads a PEM certificate chain and key and builds the server config.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        what: "key",
        path: key.to_owned(),
        source,
    })?;
    server_config_from_pem(&cert_pem, &key_pem, cert, key)
}

/// Builds the server config from PEM bytes; the paths only name the sources in errors.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private_key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey(key.to_owned()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private_key))
        .map_err(|reason| TlsError::Invalid {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server config that also requires a client certificate issued by a CA in `client_ca`
/// (PEM), as a backend behind mutual TLS does (`alb backend --tls-client-ca`).
pub fn load_server_config_with_client_auth(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<ServerConfig, TlsError> {
    let base = load_server_config(cert, key)?;
    let pem = std::fs::read(client_ca).map_err(|source| TlsError::Read {
        what: "client CA",
        path: client_ca.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
        let _ = roots.add(der);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(client_ca.to_owned()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let invalid = |reason| TlsError::Invalid {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| invalid(rustls::Error::General(e.to_string())))?;
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        what: "key",
        path: key.to_owned(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let private_key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(key.to_owned()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(chain, private_key)
        })
        .map_err(invalid)?;
    config.alpn_protocols = base.alpn_protocols;
    Ok(config)
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, as PEM (certificate, key).
pub fn self_signed() -> Result<(String, String), TlsError> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.pem(), key_pair.serialize_pem()))
}

/// A server config with a fresh self-signed certificate (the demo's; nothing on disk).
pub fn self_signed_server_config() -> Result<ServerConfig, TlsError> {
    let (cert, key) = self_signed()?;
    server_config_from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        Path::new("(generated)"),
        Path::new("(generated)"),
    )
}

/// The TLS version a connection negotiated (`TLSv1.3`, `TLSv1.2`), as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVersion(pub &'static str);

impl TlsVersion {
    fn of(version: Option<rustls::ProtocolVersion>) -> Option<TlsVersion> {
        match version? {
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion("TLSv1.3")),
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion("TLSv1.2")),
            _ => None,
        }
    }
}

/// axum-server's rustls acceptor, recording the negotiated version on every request of the
/// connection when `record` is on (the extension costs an allocation per request, so only
/// when an access log will read it).
#[derive(Debug, Clone)]
pub struct VersionAcceptor {
    inner: RustlsAcceptor<NoDelayAcceptor>,
    record: bool,
}

impl VersionAcceptor {
    /// TLS with `config` over connections with `TCP_NODELAY` set (see [`NoDelayAcceptor`]'s
    /// use in `server`: without it a TLS record split over two writes waits for the client's
    /// delayed ACK).
    pub fn new(config: RustlsConfig, record: bool) -> Self {
        VersionAcceptor {
            inner: RustlsAcceptor::new(config).acceptor(NoDelayAcceptor::new()),
            record,
        }
    }
}

impl<I, S> Accept<I, S> for VersionAcceptor
where
    RustlsAcceptor<NoDelayAcceptor>: Accept<I, S, Stream = TlsStream<I>>,
    <RustlsAcceptor<NoDelayAcceptor> as Accept<I, S>>::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = TlsStream<I>;
    type Service = WithTlsVersion<<RustlsAcceptor<NoDelayAcceptor> as Accept<I, S>>::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepting = self.inner.accept(stream, service);
        let record = self.record;
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            let version = record
                .then(|| TlsVersion::of(stream.get_ref().1.protocol_version()))
                .flatten();
            Ok((
                stream,
                WithTlsVersion {
                    inner: service,
                    version,
                },
            ))
        })
    }
}

/// A connection's service that adds its [`TlsVersion`] to each request.
#[derive(Debug, Clone)]
pub struct WithTlsVersion<S> {
    inner: S,
    version: Option<TlsVersion>,
}

impl<S, B> Service<Request<B>> for WithTlsVersion<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if let Some(version) = self.version {
            request.extensions_mut().insert(version);
        }
        self.inner.call(request)
    }
}
