//! TLS to backends: the rustls client config for `https://` backends, and the upstream
//! protocol choice.
//!
//! Certificates are verified by default against the platform's roots (read once at start by
//! `rustls-native-certs`; Mozilla's bundle from `webpki-roots` if the platform has none)
//! plus `upstream_tls.ca_file`. `insecure_skip_verify` replaces the chain and name checks by
//! nothing, but handshake signatures are still checked (a peer must hold the key of the
//! certificate it shows, whatever that certificate is): it exists for labs and is logged as
//! a warning when the config is built. SNI is the backend's host, or `server_name` for every
//! backend when set (hyper-rustls takes it from the URI otherwise).
//!
//! ALPN follows `upstream_protocol`: `http1` offers none (HTTP/1.1 is what a TLS server
//! assumes without it), `h2` offers `h2`, `auto` offers `h2` and `http/1.1` and lets the
//! backend choose (RFC 7301); on plain connections `auto` means
//! HTTP/1.1 and `h2` means HTTP/2 with prior knowledge (RFC 9113 §3.3).
//!
//! Every file is read and checked when the config is validated, so a bad file is refused
//! before anything binds, with the key in the message.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Serialize;

/// Which HTTP version ALB speaks to backends (`upstream_protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 always (ALPN `http/1.1` over TLS).
    Http1,
    /// HTTP/2 always: ALPN `h2` over TLS, prior knowledge (h2c) on plain connections.
    H2,
    /// ALPN decides over TLS (`h2` preferred); HTTP/1.1 on plain connections.
    #[default]
    Auto,
}

impl UpstreamProtocol {
    /// What the config accepts, for error messages.
    pub const EXPECTED: &'static str = "\"http1\", \"h2\" or \"auto\"";
}

impl std::str::FromStr for UpstreamProtocol {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "http1" => Ok(UpstreamProtocol::Http1),
            "h2" => Ok(UpstreamProtocol::H2),
            "auto" => Ok(UpstreamProtocol::Auto),
            _ => Err(()),
        }
    }
}

/// `upstream_tls`: how ALB checks `https://` backends and proves itself to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamTlsConfig {
    /// Extra trusted roots (PEM), added to the platform's.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and checked in certificates, instead of each backend's host.
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for backends that ask for one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
    /// Accept any certificate (signatures are still checked). Off unless set.
    pub insecure_skip_verify: bool,
}

/// How ALB talks to backends: `upstream_protocol` and `upstream_tls` (per pool; today the
/// top level is the one pool).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// `upstream_protocol`.
    pub protocol: UpstreamProtocol,
    /// `upstream_tls`, as written.
    pub tls: UpstreamTlsConfig,
    /// `upstream_tls`, loaded (files read and checked when the config was validated).
    #[serde(skip)]
    pub loaded: UpstreamTls,
}

impl UpstreamConfig {
    /// Checks and loads the settings.
    pub fn new(
        protocol: UpstreamProtocol,
        tls: UpstreamTlsConfig,
    ) -> Result<UpstreamConfig, UpstreamTlsError> {
        let loaded = UpstreamTls::load(&tls)?;
        Ok(UpstreamConfig {
            protocol,
            tls,
            loaded,
        })
    }

    /// Whether `other` asks for the same client (a reload keeps the pooled client then).
    pub fn same_settings(&self, other: &UpstreamConfig) -> bool {
        self.protocol == other.protocol && self.tls == other.tls
    }
}

/// Why the upstream TLS settings cannot be used; `key` names the config key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct UpstreamTlsError {
    /// The config key at fault (`upstream_tls.ca_file`...).
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> UpstreamTlsError {
    UpstreamTlsError {
        key,
        message: message.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, UpstreamTlsError> {
    std::fs::read(path).map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
}

fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(
            key,
            format!(
                "{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The platform's trusted roots, read once per process (reading them takes milliseconds and
/// a reload should not pay it again).
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "reading the platform's trusted roots");
        }
        found.certs
    })
}

/// The aws-lc-rs provider, passed explicitly (as `tls.rs` does: rcgen brings `ring` too, and
/// with two providers enabled rustls's `builder()` panics).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The loaded settings: the rustls config and the SNI override, ready for the connector.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The rustls client config (roots, client certificate, ALPN).
    pub config: Arc<ClientConfig>,
    /// `server_name`, when set: the name sent and checked for every backend.
    pub server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Reads and checks every file of `tls`; warns once if verification is off.
    pub fn load(tls: &UpstreamTlsConfig) -> Result<UpstreamTls, UpstreamTlsError> {
        let config = client_config(tls)?;
        if tls.insecure_skip_verify {
            tracing::warn!(
                "upstream_tls.insecure_skip_verify is on: backend certificates are NOT verified \
                 (anyone on the path can impersonate a backend)"
            );
        }
        let server_name = tls
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_owned()))
            .transpose()
            .map_err(|_| error("upstream_tls.server_name", "not a DNS name or IP address"))?;
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// Builds the client config for `https://` backends. Reads every file.
pub fn client_config(tls: &UpstreamTlsConfig) -> Result<ClientConfig, UpstreamTlsError> {
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str()).map_err(|_| {
            error(
                "upstream_tls.server_name",
                format!("got {name:?}, expected a DNS name or an IP address"),
            )
        })?;
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(platform_roots().iter().cloned());
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &tls.ca_file {
        for cert in certificates("upstream_tls.ca_file", path)? {
            roots.add(cert).map_err(|e| {
                error(
                    "upstream_tls.ca_file",
                    format!("{}: not a usable CA certificate: {e}", path.display()),
                )
            })?;
        }
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error("upstream_tls", e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(error(
                "upstream_tls.client_key",
                "missing: `client_cert` needs its private key in `client_key`",
            ))
        }
        (None, Some(_)) => {
            return Err(error(
                "upstream_tls.client_cert",
                "missing: `client_key` needs its certificate chain in `client_cert`",
            ))
        }
        (Some(cert), Some(key)) => {
            let chain = certificates("upstream_tls.client_cert", cert)?;
            let pem = read("upstream_tls.client_key", key)?;
            let private_key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
                error(
                    "upstream_tls.client_key",
                    format!(
                        "{}: no PEM private key found (expected -----BEGIN PRIVATE KEY----- or similar)",
                        key.display()
                    ),
                )
            })?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| {
                    error(
                        "upstream_tls.client_key",
                        format!("{} does not go with {}: {e}", key.display(), cert.display()),
                    )
                })?
        }
    };
    // ALPN is left to the connector (`client::backend_client`), which sets it from
    // `upstream_protocol` and refuses a config that has one already.
    Ok(config)
}

/// `insecure_skip_verify`: every certificate is accepted; handshake signatures are still
/// verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_verify_with_platform_roots() {
        let config = client_config(&UpstreamTlsConfig::default()).unwrap();
        // The connector sets ALPN; hyper-rustls panics on a config that has it already.
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                UpstreamTlsConfig {
                    client_cert: Some("c.pem".into()),
                    ..Default::default()
                },
                "upstream_tls.client_key",
            ),
            (
                UpstreamTlsConfig {
                    client_key: Some("k.pem".into()),
                    ..Default::default()
                },
                "upstream_tls.client_cert",
            ),
            (
                UpstreamTlsConfig {
                    ca_file: Some(dir.path().join("missing.pem")),
                    ..Default::default()
                },
                "upstream_tls.ca_file",
            ),
            (
                UpstreamTlsConfig {
                    ca_file: Some(write(dir.path(), "empty.pem", "not pem\n")),
                    ..Default::default()
                },
                "upstream_tls.ca_file",
            ),
            (
                UpstreamTlsConfig {
                    server_name: Some("bad name!".into()),
                    ..Default::default()
                },
                "upstream_tls.server_name",
            ),
        ];
        for (tls, key) in cases {
            let e = client_config(&tls).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn client_pair_is_loaded_and_mismatch_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
        let cert = write(dir.path(), "a.crt", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.key_pair.serialize_pem());
        let other_key = write(dir.path(), "b.key", &b.key_pair.serialize_pem());
        let ok = UpstreamTlsConfig {
            client_cert: Some(cert.clone()),
            client_key: Some(key),
            ..Default::default()
        };
        assert!(client_config(&ok).is_ok());
        let mismatched = UpstreamTlsConfig {
            client_key: Some(other_key),
            ..ok
        };
        let e = client_config(&mismatched).unwrap_err();
        assert_eq!(e.key, "upstream_tls.client_key", "{e}");
    }
}
