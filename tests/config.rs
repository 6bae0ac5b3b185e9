//! The config file: the original format parses; every bad case fails naming the key and binds nothing.

mod common;

use common::*;

#[test]
fn shipped_config_parses() {
    let (code, stdout, stderr) = alb_output(&["check-config", "config/config.json"]);
    assert_eq!(code, 0, "{stderr}");
    let effective: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(effective["port"], 8080);
    assert_eq!(effective["tls"]["port"], 8443);
    // The flat format is one pool, `default`, behind one catch-all route.
    let pool = &effective["pools"][0];
    assert_eq!(pool["name"], "default");
    assert_eq!(pool["backends"].as_array().unwrap().len(), 3);
    assert_eq!(pool["health"]["path"], "/health");
    // defaults are printed too
    assert_eq!(pool["health"]["unhealthy_threshold"], 2);
    assert_eq!(pool["request_timeout"], "1m");
    assert_eq!(effective["routes"][0]["name"], "default");
    assert_eq!(effective["routes"][0]["pool"], "default");
}

/// `alb run` on a bad file: exit status 2, one message naming the key, and the port stays free.
fn refused(text: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "bad.json", text);
    let (code, _, stderr) = alb_output(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}: {stderr}");
    assert!(
        stderr.contains(key),
        "{text}: message does not name {key}: {stderr}"
    );
    assert!(
        !stderr.contains("listening"),
        "{text}: bound a port: {stderr}"
    );
}

#[test]
fn unreadable_file_is_refused() {
    let (code, _, stderr) = alb_output(&["run", "--config", "/nonexistent/alb.json"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/alb.json"), "{stderr}");
}

#[test]
fn invalid_json_reports_line_and_column() {
    refused(
        "{\n  \"port\": \"8080\",\n  \"backends\": [,]\n}",
        "line 3, column 16",
    );
}

#[test]
fn unknown_strategy_is_refused() {
    refused(
        r#"{"backends": ["http://127.0.0.1:1"], "strategy": "fastest"}"#,
        "`strategy`: got \"fastest\", expected one of",
    );
}

#[test]
fn bad_backend_url_is_refused() {
    refused(r#"{"backends": ["127.0.0.1:8081"]}"#, "`backends[0]`");
    refused(r#"{"backends": ["https://a:1/x"]}"#, "`backends[0]`");
}

#[test]
fn port_out_of_range_is_refused() {
    refused(
        r#"{"port": "70000", "backends": ["http://127.0.0.1:1"]}"#,
        "`port`: got \"70000\", expected a port from 1 to 65535",
    );
}

#[test]
fn no_backends_is_refused() {
    refused(r#"{"port": "8080", "backends": []}"#, "`backends`");
    refused(r#"{"port": "8080"}"#, "`backends`");
}

#[test]
fn zero_weight_is_refused() {
    refused(
        r#"{"backends": [{"url": "http://127.0.0.1:1", "weight": 0}]}"#,
        "`backends[0].weight`: got 0",
    );
}

#[test]
fn unknown_key_is_refused() {
    refused(
        r#"{"backends": ["http://127.0.0.1:1"], "helth_check_path": "/h"}"#,
        "unknown field `helth_check_path`",
    );
}

#[test]
fn bad_config_binds_nothing() {
    // A valid port with a bad strategy: the port must still be free afterwards, and no
    // connection was ever accepted on it.
    let port = free_port();
    refused(
        &format!(r#"{{"port": {port}, "backends": ["http://127.0.0.1:1"], "strategy": "x"}}"#),
        "strategy",
    );
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}
