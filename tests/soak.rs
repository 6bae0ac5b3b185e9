//! The chaos soak (`load/soak.py`) for 60 s against the debug binary: backends killed and
//! restarted, config reloads, certificate rotations, under an open-loop mix of GETs, POSTs,
//! downloads, WebSockets and slow clients over HTTP and HTTPS. The script's own acceptance
//! decides (its exit status); the test also checks that the report shows the chaos and the
//! traffic actually happened.

use std::process::Command;

use serde_json::Value;

#[test]
fn chaos_soak_passes_for_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/load/soak.py");
    let out = Command::new("python3")
        .args([script, "--alb", env!("CARGO_BIN_EXE_alb")])
        .args(["--duration", "60", "--seed", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run python3 load/soak.py");
    let summary = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); soak said:\n{summary}")),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "soak failed:\n{summary}");
    assert_eq!(report["passed"], true, "{summary}");

    let chaos = &report["chaos"];
    assert!(chaos["kills"].as_u64().unwrap() >= 3, "{summary}");
    assert!(chaos["reloads"].as_u64().unwrap() >= 5, "{summary}");
    assert!(chaos["cert_rotations"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(
        chaos["cert_rotations_verified"], chaos["cert_rotations"],
        "{summary}"
    );

    let failures = &report["failures"];
    assert_eq!(failures["failed_gets"], 0, "{summary}");
    assert_eq!(failures["unexplained"], 0, "{summary}");
    assert!(
        failures["failed_posts"].as_u64().unwrap() <= chaos["kills"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(report["alb"]["panicked_lines"], 0, "{summary}");

    let by_kind = report["requests"]["by_kind"].as_object().unwrap();
    for kind in [
        "get",
        "post",
        "download",
        "websocket",
        "slow_headers",
        "slow_body",
        "slow_read",
    ] {
        let k = &by_kind[kind];
        assert!(
            k["http"].as_u64().unwrap_or(0) > 0,
            "no {kind} over HTTP: {summary}"
        );
        assert!(
            k["https"].as_u64().unwrap_or(0) > 0,
            "no {kind} over HTTPS: {summary}"
        );
    }
}
