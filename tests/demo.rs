//! `alb demo` works with nothing but the binary.

mod common;

use std::{
    io::BufReader,
    process::{Command, Stdio},
};

use common::*;

#[tokio::test]
async fn demo_serves_the_url_it_prints() {
    // Every port free, so another alb (the TLS test uses 8443) cannot make this one fail.
    let (port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(alb_bin())
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--tls-port",
            &tls_port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = read_until(&mut stdout, "Listening on ");
    let url = line.trim_start_matches("Listening on ").to_owned();
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    let answer = get(&client(), &url).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("backend "), "{}", answer.body);
    let backend_port = answer.body.trim().trim_start_matches("backend ");
    assert_eq!(
        answer.backend.as_deref(),
        Some(format!("127.0.0.1:{backend_port}").as_str())
    );
}
