//! The admin plane lets no one in where they don't belong: a real `alb` on a non-loopback
//! admin address, called with and without the bearer token; the unsafe configuration
//! refused before anything binds; the token never printed.

mod common;

use common::*;
use serde_json::json;

const TOKEN: &str = "s3cr3t-admin-token-0123456789";

/// An `alb` whose admin listener binds every interface (reached here over loopback).
fn exposed_alb(extra: serde_json::Value) -> (Proc, Proc) {
    let b = backend(&[]);
    let admin_port = free_port();
    let mut config = json!({
        "backends": urls(&[&b]),
        "admin_addr": format!("0.0.0.0:{admin_port}"),
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    (alb(config), b)
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[test]
fn non_loopback_admin_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = free_port();
    let path = write_config(
        dir.path(),
        "config.json",
        &json!({
            "port": port,
            "backends": ["http://127.0.0.1:1"],
            "admin_addr": format!("0.0.0.0:{admin}"),
        })
        .to_string(),
    );
    let (code, _, stderr) = alb_output(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("admin_addr"), "names the key: {stderr}");
    assert!(
        stderr.contains("admin_token"),
        "says what fixes it: {stderr}"
    );
    assert!(!stderr.contains("listening"), "bound nothing: {stderr}");
}

#[test]
fn weak_or_doubled_tokens_are_refused() {
    for (config, key) in [
        (json!({"admin_token": "short"}), "admin_token"),
        (
            json!({"admin_token": TOKEN, "admin_token_file": "/etc/hostname"}),
            "admin_token_file",
        ),
        (
            json!({"admin_token_file": "/nonexistent/token"}),
            "admin_token_file",
        ),
        (json!({"admin_auth": "all"}), "admin_auth"),
        (
            json!({"admin_token": TOKEN, "admin_auth": "some"}),
            "admin_auth",
        ),
    ] {
        let mut full = json!({"backends": ["http://127.0.0.1:1"]});
        for (k, v) in config.as_object().unwrap() {
            full[k] = v.clone();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "c.json", &full.to_string());
        let (code, _, stderr) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{full}: accepted");
        assert!(
            stderr.contains(key),
            "{full}: does not name {key}: {stderr}"
        );
        assert!(
            !stderr.contains(TOKEN),
            "{full}: printed the token: {stderr}"
        );
    }
}

#[tokio::test]
async fn state_changing_routes_need_the_token() {
    let (lb, b) = exposed_alb(json!({"admin_token": TOKEN}));
    let c = client();
    let reload = format!("{}/reload", lb.admin_url());
    let drain = format!("{}/backends/{}/drain", lb.admin_url(), name(&b));
    let enable = format!("{}/backends/{}/enable", lb.admin_url(), name(&b));

    for url in [&reload, &drain, &enable] {
        let r = c.post(url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{url} without a token");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"alb admin\""
        );
        let wrong = c.post(url).bearer_auth("s3cr3t-admin-token-0123456780");
        assert_eq!(status_of(wrong).await, 401, "{url} with a wrong token");
        let basic = c.post(url).basic_auth("admin", Some(TOKEN));
        assert_eq!(status_of(basic).await, 401, "{url} with Basic auth");
    }
    // Nothing was drained by the refused calls.
    assert_eq!(status_of(c.get(lb.url())).await, 200);

    assert_eq!(status_of(c.post(&drain).bearer_auth(TOKEN)).await, 200);
    assert_eq!(status_of(c.post(&enable).bearer_auth(TOKEN)).await, 200);
    assert_eq!(status_of(c.post(&reload).bearer_auth(TOKEN)).await, 200);

    // Reading stays open with the default `admin_auth: "changes"`.
    for path in ["/backends", "/metrics", "/health", "/decisions", "/"] {
        let url = format!("{}{path}", lb.admin_url());
        assert_eq!(status_of(c.get(&url)).await, 200, "{path}");
    }
    let log = lb.log_text();
    assert!(log.contains("admin request refused"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log");
}

#[tokio::test]
async fn admin_auth_all_guards_reads_too() {
    let (lb, _b) = exposed_alb(json!({"admin_token": TOKEN, "admin_auth": "all"}));
    let c = client();
    for path in ["/backends", "/metrics", "/decisions", "/"] {
        let url = format!("{}{path}", lb.admin_url());
        assert_eq!(status_of(c.get(&url)).await, 401, "{path} without a token");
        assert_eq!(
            status_of(c.get(&url).bearer_auth(TOKEN)).await,
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_reload_rotates_the_token_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let (lb, _b) = exposed_alb(json!({"admin_token_file": file}));
    let c = client();
    let reload = format!("{}/reload", lb.admin_url());
    assert_eq!(status_of(c.post(&reload).bearer_auth(TOKEN)).await, 200);

    let rotated = "rotated-admin-token-9876543210";
    std::fs::write(&file, rotated).unwrap();
    assert_eq!(status_of(c.post(&reload).bearer_auth(TOKEN)).await, 200);
    assert_eq!(status_of(c.post(&reload).bearer_auth(TOKEN)).await, 401);
    assert_eq!(status_of(c.post(&reload).bearer_auth(rotated)).await, 200);

    // check-config shows that a token is set, never the token.
    let (code, stdout, stderr) = alb_output(&["check-config", lb.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(
        !stdout.contains(rotated) && !stdout.contains(TOKEN),
        "{stdout}"
    );
}

#[tokio::test]
async fn loopback_admin_without_a_token_stays_open() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let url = format!("{}/reload", lb.admin_url());
    assert_eq!(status_of(client().post(&url)).await, 200);
}
