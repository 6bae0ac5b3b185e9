//! HTTPS backends: a private CA made with rcgen, `alb backend --tls-cert` serving real TLS,
//! ALB verifying (or, when told, not verifying) what it is shown.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::{json, Value};

/// A private CA that signs leaf certificates into a directory.
struct Ca {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ALB test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Ca { dir, cert, key }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Writes `NAME.crt` and `NAME.key`, a leaf for `names` with `usage`.
    fn issue(&self, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// `alb backend` serving HTTPS with the leaf `name`, plus `extra` arguments.
    fn backend(&self, name: &str, extra: &[&str]) -> Proc {
        let cert = self.path(&format!("{name}.crt"));
        let key = self.path(&format!("{name}.key"));
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        backend(&args)
    }
}

fn https_url(p: &Proc) -> String {
    format!("https://127.0.0.1:{}", p.port)
}

/// ALB in front of one HTTPS backend with `upstream_tls`, health checked every 200 ms.
fn alb_for(backend: &Proc, upstream_tls: Value) -> Proc {
    alb(json!({
        "backends": [https_url(backend)],
        "upstream_tls": upstream_tls,
        "health_check_interval": 0.2,
        "unhealthy_threshold": 1,
    }))
}

#[tokio::test]
async fn https_backend_with_private_ca_is_served() {
    let ca = Ca::new();
    ca.issue(
        "server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("server", &[]);
    let lb = alb_for(&b, json!({"ca_file": ca.path("ca.pem")}));
    let client = client();
    let answer = client.get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        format!("backend {}\n", b.port)
    );
    // A request with a body takes the streaming path; it goes over TLS too.
    let body = vec![7u8; 200_000];
    let mirrored = client
        .post(format!("{}/_sim/mirror", lb.url()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(mirrored.status(), 200);
    assert_eq!(mirrored.bytes().await.unwrap(), body);
    // `upstream_protocol` is `auto`: ALPN chose HTTP/2, which the backend saw.
    let echo: Value = client
        .get(format!("{}/_sim/echo", lb.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    let proto = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-proto");
    assert_eq!(proto.map(|h| &h[1]), Some(&json!("http")), "{echo}");
}

#[tokio::test]
async fn http1_protocol_over_tls_offers_only_http11() {
    let ca = Ca::new();
    ca.issue(
        "server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("server", &[]);
    let lb = alb(json!({
        "backends": [https_url(&b)],
        "upstream_tls": {"ca_file": ca.path("ca.pem")},
        "upstream_protocol": "http1",
    }));
    let echo: Value = client()
        .get(format!("{}/_sim/echo", lb.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
}

#[tokio::test]
async fn certificate_for_another_name_fails_with_502_and_the_cause() {
    let ca = Ca::new();
    ca.issue(
        "other",
        &["other.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("other", &[]);
    let lb = alb_for(&b, json!({"ca_file": ca.path("ca.pem")}));
    let answer = client().get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    let text = answer.text().await.unwrap();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(
        lb.log_text().contains("certificate not valid for name"),
        "{}",
        lb.log_text()
    );
    // The health check sees the same failure and names it on /backends.
    wait_until("the backend is down", Duration::from_secs(20), || async {
        admin_json(&lb, "/backends").await["backends"][0]["up"] == false
    })
    .await;
    let view = admin_json(&lb, "/backends").await;
    let cause = view["backends"][0]["last_transition"]["cause"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(cause.contains("TLS handshake failed"), "{cause}");
    assert!(cause.contains("certificate not valid for name"), "{cause}");
}

#[tokio::test]
async fn unknown_issuer_fails_without_ca_file() {
    let ca = Ca::new();
    ca.issue(
        "server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("server", &[]);
    // Only the platform's roots: they do not know the private CA.
    let lb = alb_for(&b, json!({}));
    let answer = client().get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    let text = answer.text().await.unwrap();
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate_and_warns() {
    let ca = Ca::new();
    ca.issue(
        "other",
        &["other.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("other", &[]);
    let lb = alb_for(&b, json!({"insecure_skip_verify": true}));
    let answer = client().get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        lb.log_text().contains("insecure_skip_verify is on"),
        "{}",
        lb.log_text()
    );
}

#[tokio::test]
async fn server_name_overrides_the_checked_name() {
    let ca = Ca::new();
    ca.issue(
        "named",
        &["api.internal"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let b = ca.backend("named", &[]);
    let lb = alb_for(
        &b,
        json!({"ca_file": ca.path("ca.pem"), "server_name": "api.internal"}),
    );
    let answer = client().get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn client_certificate_reaches_a_backend_that_requires_one() {
    let ca = Ca::new();
    ca.issue(
        "server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    ca.issue(
        "client",
        &["alb.internal"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ca_pem = ca.path("ca.pem");
    let b = ca.backend("server", &["--tls-client-ca", &ca_pem]);
    let without = alb_for(&b, json!({"ca_file": ca_pem}));
    assert_eq!(
        client().get(without.url()).send().await.unwrap().status(),
        502
    );
    let with = alb_for(
        &b,
        json!({
            "ca_file": ca_pem,
            "client_cert": ca.path("client.crt"),
            "client_key": ca.path("client.key"),
        }),
    );
    let answer = client().get(with.url()).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

fn check_config(dir: &Path, config: Value) -> (i32, String) {
    let path = write_config(dir, "config.json", &config.to_string());
    let (code, _, stderr) = alb_output(&["check-config", &path.to_string_lossy()]);
    (code, stderr)
}

#[test]
fn bad_upstream_tls_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();
    let not_pem = write_config(dir.path(), "not.pem", "hello\n")
        .to_string_lossy()
        .into_owned();
    let cases = [
        (json!({"client_cert": not_pem}), "upstream_tls.client_key"),
        (json!({"client_key": not_pem}), "upstream_tls.client_cert"),
        (json!({"ca_file": missing}), "upstream_tls.ca_file"),
        (json!({"ca_file": not_pem}), "upstream_tls.ca_file"),
        (json!({"verify": false}), "upstream_tls"),
    ];
    for (tls, key) in cases {
        let (code, stderr) = check_config(
            dir.path(),
            json!({"backends": ["https://127.0.0.1:9"], "upstream_tls": tls}),
        );
        assert_ne!(code, 0, "{tls} was accepted");
        assert!(stderr.contains(key), "{tls}: {stderr}");
    }
    let (code, stderr) = check_config(
        dir.path(),
        json!({"backends": ["https://127.0.0.1:9"], "upstream_protocol": "h3"}),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("upstream_protocol"), "{stderr}");
    let (code, stderr) = check_config(
        dir.path(),
        json!({"backends": ["https://127.0.0.1:9"], "upstream_protocol": "h2"}),
    );
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn h2_protocol_over_tls_uses_the_http2_pool_and_checks_certificates() {
    let ca = Ca::new();
    ca.issue(
        "server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    ca.issue(
        "other",
        &["other.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let good = ca.backend("server", &[]);
    let lb = alb(json!({
        "backends": [https_url(&good)],
        "upstream_tls": {"ca_file": ca.path("ca.pem")},
        "upstream_protocol": "h2",
    }));
    let client = client();
    let echo: Value = json_of(client.get(format!("{}/_sim/echo", lb.url()))).await;
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    let body = vec![9u8; 100_000];
    let mirrored = client
        .post(format!("{}/_sim/mirror", lb.url()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(mirrored.status(), 200);
    assert_eq!(mirrored.bytes().await.unwrap(), body);
    // The pool opened its connection (the health checker has its own client).
    let metrics = scrape(&lb).await;
    let series = format!(
        "lb_upstream_h2_connections{{backend=\"127.0.0.1:{}\"}}",
        good.port
    );
    assert_eq!(sample(&metrics, &series), Some(1.0), "{metrics}");

    // A certificate for another name: 502 naming the certificate check.
    let wrong = ca.backend("other", &[]);
    let lb = alb(json!({
        "backends": [https_url(&wrong)],
        "upstream_tls": {"ca_file": ca.path("ca.pem")},
        "upstream_protocol": "h2",
        // Keep the backend in service: the answer comes from the request's own handshake.
        "health_check_interval": 3600,
    }));
    let answer = client.get(lb.url()).send().await.unwrap();
    assert_eq!(answer.status(), 502);
    let text = answer.text().await.unwrap();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}
