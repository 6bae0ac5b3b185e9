//! TLS termination and the HTTP→HTTPS redirect, with real TLS clients.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use serde_json::json;

/// Writes a fresh self-signed localhost certificate; returns its PEM.
fn write_cert(dir: &Path) -> String {
    let (cert, key) = alb::tls::self_signed().unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    cert
}

fn tls_client(cert_pem: &str, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

struct TlsAlb {
    alb: Proc,
    tls_port: u16,
    dir: tempfile::TempDir,
    cert: String,
    _backend: Proc,
}

fn tls_alb(extra: serde_json::Value) -> TlsAlb {
    let backend = backend(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let tls_port = free_port();
    let mut config = json!({
        "backends": urls(&[&backend]),
        "tls_port": tls_port,
        "cert_file": dir.path().join("cert.pem"),
        "key_file": dir.path().join("key.pem"),
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let alb = alb(config);
    wait_for_port(tls_port);
    TlsAlb {
        alb,
        tls_port,
        dir,
        cert,
        _backend: backend,
    }
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1() {
    let t = tls_alb(json!({}));
    let url = format!("https://localhost:{}/", t.tls_port);
    let h2 = tls_client(&t.cert, false).get(&url).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    let h1 = tls_client(&t.cert, true).get(&url).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
    // the backend was told the client came over HTTPS
    let echo: serde_json::Value = json_of(
        tls_client(&t.cert, true).get(format!("https://localhost:{}/_sim/echo", t.tls_port)),
    )
    .await;
    assert!(echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-forwarded-proto" && h[1] == "https"));
}

fn openssl_handshake(port: u16, version_flag: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version_flag,
            // allow the old protocol on the client side, so the refusal is the server's
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let t = tls_alb(json!({}));
    let (ok, text) = openssl_handshake(t.tls_port, "-tls1_1");
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{text}");
    assert!(
        text.contains("alert"),
        "no TLS alert from the server:\n{text}"
    );
    assert!(text.contains("no peer certificate available"), "{text}");
    let (ok, text) = openssl_handshake(t.tls_port, "-tls1_2");
    assert!(ok && text.contains("Protocol  : TLSv1.2"), "{text}");
}

#[tokio::test]
async fn certificate_reload_serves_new_cert_and_keeps_open_connections() {
    let t = tls_alb(json!({}));
    let url = format!("https://localhost:{}/", t.tls_port);
    let old_client = tls_client(&t.cert, true);
    assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);

    let new_cert = write_cert(t.dir.path());
    let status = Command::new("kill")
        .args(["-HUP", &t.alb.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let new_client = tls_client(&new_cert, true);
    wait_until(
        "new connections get the new certificate",
        Duration::from_secs(20),
        || async { new_client.get(&url).send().await.is_ok() },
    )
    .await;
    assert!(t.alb.log_text().contains("TLS certificate reloaded"));
    // A new connection trusting only the old certificate now fails...
    assert!(tls_client(&t.cert, true).get(&url).send().await.is_err());
    // ...but the connection opened before the reload is still open and still works.
    let again = old_client.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn bad_certificate_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let other = tempfile::tempdir().unwrap();
    write_cert(other.path()); // a key that belongs to another certificate
    let port = free_port();
    let cases = [
        (
            dir.path().join("missing.pem"),
            dir.path().join("key.pem"),
            "missing.pem",
        ),
        (
            dir.path().join("key.pem"),
            dir.path().join("key.pem"),
            "no PEM certificate",
        ),
        (
            dir.path().join("cert.pem"),
            other.path().join("key.pem"),
            "cert.pem",
        ),
    ];
    for (cert, key, expected) in cases {
        let config = json!({
            "port": port, "tls_port": free_port(), "backends": ["http://127.0.0.1:1"],
            "cert_file": cert, "key_file": key,
        });
        let path = write_config(dir.path(), "c.json", &config.to_string());
        let (code, _, stderr) = alb_output(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn plain_port_redirects_to_https() {
    let t = tls_alb(json!({}));
    let c = no_redirect_client();
    let url = format!("{}/some/path?q=1&r=two", t.alb.url());
    let get = c
        .get(&url)
        .header("host", "example.test:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 301);
    assert_eq!(
        get.headers()["location"],
        format!("https://example.test:{}/some/path?q=1&r=two", t.tls_port).as_str()
    );
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 301);
    let post = c.post(&url).body("x").send().await.unwrap();
    assert_eq!(post.status(), 308);
    assert_eq!(
        post.headers()["location"],
        format!("https://127.0.0.1:{}/some/path?q=1&r=two", t.tls_port).as_str()
    );
}

#[tokio::test]
async fn original_config_listens_on_8080_and_8443() {
    // config/config.json unchanged but for where its certificate files are.
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("config/config.json").unwrap()).unwrap();
    config["cert_file"] = dir.path().join("cert.pem").to_str().unwrap().into();
    config["key_file"] = dir.path().join("key.pem").to_str().unwrap().into();
    config["admin_addr"] = format!("127.0.0.1:{}", free_port()).into();
    let path = write_config(dir.path(), "config.json", &config.to_string());
    let child = std::process::Command::new(alb_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    wait_for_port(8443);
    wait_for_port(8080);
    // The sockets are bound (and accept) before the lines are logged, so
    // wait for the log rather than read it once.
    let log_path = dir.path().join("log");
    wait_until(
        "ALB logs both listeners",
        Duration::from_secs(20),
        || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains("HTTP server listening on :8080")
                && log.contains("HTTPS server listening on :8443")
        },
    )
    .await;
    let r = no_redirect_client()
        .get("http://localhost:8080/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://localhost:8443/x");
}

#[tokio::test]
async fn tls_scan_finds_no_old_protocol_and_no_weak_cipher() {
    let t = tls_alb(json!({}));
    let out = t.dir.path().join("scan.json");
    let port = t.tls_port;
    let out_arg = format!("--json_out={}", out.display());
    let status = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                "-m",
                "sslyze",
                &format!("127.0.0.1:{port}"),
                &out_arg,
                "--quiet",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("sslyze is installed (pip install sslyze)")
    })
    .await
    .unwrap();
    // sslyze exits non-zero when the (self-signed) certificate fails Mozilla's checks; the
    // scan results are written all the same.
    let _ = status;
    let scan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let result = &scan["server_scan_results"][0]["scan_result"];
    let accepted = |suite: &str| -> Vec<serde_json::Value> {
        assert_eq!(
            result[suite]["status"], "COMPLETED",
            "{suite}: {}",
            result[suite]
        );
        result[suite]["result"]["accepted_cipher_suites"]
            .as_array()
            .unwrap()
            .clone()
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert!(
            accepted(old).is_empty(),
            "{old} accepted: {:?}",
            accepted(old)
        );
    }
    let modern: Vec<serde_json::Value> = accepted("tls_1_2_cipher_suites")
        .into_iter()
        .chain(accepted("tls_1_3_cipher_suites"))
        .collect();
    assert!(!modern.is_empty());
    for c in modern {
        let suite = &c["cipher_suite"];
        let name = suite["name"].as_str().unwrap();
        assert!(suite["key_size"].as_u64().unwrap() >= 128, "{name}");
        assert_eq!(suite["is_anonymous"], false, "{name}");
        for weak in ["RC4", "DES", "NULL", "EXPORT", "CBC", "MD5"] {
            assert!(!name.contains(weak), "weak cipher accepted: {name}");
        }
    }
}

#[tokio::test]
async fn the_access_log_names_the_negotiated_tls_version() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let t = tls_alb(json!({"access_log": {"path": log}}));
    let r = tls_client(&t.cert, true)
        .get(format!("https://localhost:{}/over-tls", t.tls_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    wait_until(
        "a line in the access log",
        Duration::from_secs(20),
        || async { std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 1) },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["tls"], "TLSv1.3", "{text}");
    assert_eq!(line["path"], "/over-tls");
}

/// `hey` (the original project's load-test command) sends the SNI `localhost:PORT`, port
/// included, which is not a host name. nginx and HAProxy serve it as if no SNI was sent;
/// so does ALB (its patched rustls, vendor/rustls/ALB-PATCH.md), and counts it.
#[tokio::test]
async fn hey_with_its_invalid_sni_is_served_and_counted() {
    let t = tls_alb(json!({}));
    let out = Command::new("hey")
        .args(["-n", "200", "-c", "10"])
        .arg(format!("https://localhost:{}/", t.tls_port))
        .output()
        .expect("hey is installed (Debian package hey; scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[200]\t200 responses"),
        "every request answered 200:\n{text}"
    );
    assert!(!text.contains("Error distribution"), "{text}");
    let exposition = scrape(&t.alb).await;
    let ignored = sample(&exposition, "lb_tls_invalid_sni_total").unwrap_or(0.0);
    assert!(ignored >= 1.0, "invalid SNIs counted: {ignored}");

    // A client with a valid SNI is not counted.
    let (ok, text) = openssl_handshake(t.tls_port, "-tls1_3");
    assert!(ok, "{text}");
    let after = sample(&scrape(&t.alb).await, "lb_tls_invalid_sni_total").unwrap();
    assert_eq!(after, ignored, "openssl s_client sends no invalid SNI");
}

/// Reads `TCP_NODELAY` on alb's end of the connection whose client end is port `argv[2]`:
/// a duplicate of alb's own socket, taken with `pidfd_getfd(2)` (syscall 438 on x86_64 and
/// arm64). Prints `1`, `0`, or nothing while alb has not accepted the connection yet.
const READ_NODELAY: &str = r#"
import ctypes, os, socket, sys
pid, client_port = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
for name in os.listdir(f"/proc/{pid}/fd"):
    try:
        if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
            continue
    except OSError:
        continue
    fd = libc.syscall(438, pidfd, int(name), 0)
    if fd < 0:
        sys.exit(f"pidfd_getfd failed: errno {ctypes.get_errno()}")
    s = socket.socket(fileno=fd)
    try:
        inet = s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
        if inet and s.getpeername()[1] == client_port:
            print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) and 1)
            break
    except OSError:
        pass
    finally:
        s.close()
"#;

/// `TCP_NODELAY` on alb's side of the connection from `client_port`; `None` until accepted.
fn alb_nodelay(pid: u32, client_port: u16) -> Option<bool> {
    let out = Command::new("python3")
        .args([
            "-c",
            READ_NODELAY,
            &pid.to_string(),
            &client_port.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading alb's socket failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "" => None,
        value => Some(value == "1"),
    }
}

/// Every listener (plain, TLS, admin) sets `TCP_NODELAY` on the connections it accepts, as
/// nginx (`tcp_nodelay on`) and HAProxy do: without it an answer written in two writes (a
/// 64 KiB body, a TLS record split in two) waits for the client's delayed ACK, and the
/// shared benchmark's `big` workload had a p99 of 40 ms against a p50 of 3 ms.
#[tokio::test]
async fn every_listener_sets_tcp_nodelay_on_accepted_connections() {
    let t = tls_alb(json!({}));
    let pid = t.alb.pid();
    for (listener, port) in [
        ("plain", t.alb.port),
        ("TLS", t.tls_port),
        ("admin", t.alb.admin_port),
    ] {
        // Held open (and idle) while alb's end is inspected.
        let stream = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
        let client_port = stream.local_addr().unwrap().port();
        wait_until(
            &format!("alb sets TCP_NODELAY on a {listener} connection"),
            Duration::from_secs(10),
            || std::future::ready(alb_nodelay(pid, client_port) == Some(true)),
        )
        .await;
        drop(stream);
    }
}
