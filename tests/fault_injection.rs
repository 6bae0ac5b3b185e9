//! Fault injection: delays and aborts land on their percent, are counted, named in the
//! answer, and a delay shows in the decision record.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn aborts_and_delays_land_on_their_percent_and_are_counted() {
    let (a, b) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "backends": urls(&[&a, &b]),
        "fault": {"delay": {"percent": 10, "duration": "20ms"},
                  "abort": {"percent": 5, "status": 503}}
    }));
    let c = client();
    let mut aborted = 0;
    let mut delayed = 0;
    let total = 2000;
    let url = lb.url();
    for chunk in 0..(total / 20) {
        let batch = (0..20).map(|_| c.get(&url).send());
        for r in futures_util::future::join_all(batch).await {
            let r = r.unwrap();
            let fault = r
                .headers()
                .get("x-alb-fault")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            if fault.contains("abort=503") {
                assert_eq!(r.status(), 503);
                assert!(
                    r.headers().get("x-alb-backend").is_none(),
                    "an abort reached a backend"
                );
                aborted += 1;
            } else {
                assert_eq!(r.status(), 200, "chunk {chunk}");
            }
            if fault.contains("delay=20ms") {
                delayed += 1;
            }
        }
    }
    // 2000 independent draws: ± 2 points is more than 3 standard deviations.
    let share = |n: i32| f64::from(n) * 100.0 / f64::from(total);
    assert!(
        (3.0..=7.0).contains(&share(aborted)),
        "aborted {aborted} of {total}"
    );
    assert!(
        (8.0..=12.0).contains(&share(delayed)),
        "delayed {delayed} of {total}"
    );
    let m = scrape(&lb).await;
    let counted = |kind: &str| {
        sample(
            &m,
            &format!(r#"lb_faults_injected_total{{route="default",kind="{kind}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(counted("abort"), f64::from(aborted), "{m}");
    assert_eq!(counted("delay"), f64::from(delayed), "{m}");
}

#[tokio::test]
async fn a_client_asks_for_a_fault_only_when_allowed() {
    let a = backend(&[]);
    let allowed = alb(json!({"backends": urls(&[&a]), "fault": {"allow_header": true}}));
    let c = client();
    let r = c
        .get(allowed.url())
        .header("x-alb-fault", "abort=418")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    let r = c
        .get(format!("{}/asked", allowed.url()))
        .header("x-alb-fault", "delay=50ms")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-alb-fault"], "delay=50ms");
    let r = c
        .get(allowed.url())
        .header("x-alb-fault", "explode=now")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("alb: x-alb-fault: unknown fault"));

    // The delayed request's decision says so.
    let decisions = admin_json(&allowed, "/decisions").await;
    let faulted: Vec<&Value> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["fault"] == "delay=50ms")
        .collect();
    assert_eq!(faulted.len(), 1, "{decisions}");

    // Without allow_header the header is ignored, and not forwarded.
    let closed = alb(json!({"backends": urls(&[&a]), "fault": {}}));
    let r = c
        .get(format!("{}/_sim/echo", closed.url()))
        .header("x-alb-fault", "abort=503")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-alb-fault").is_none());
    let echoed = r.text().await.unwrap();
    assert!(echoed.contains("\"method\""), "{echoed}");
    assert!(!echoed.contains("x-alb-fault"), "forwarded: {echoed}");
}

#[test]
fn bad_fault_values_are_refused_with_their_key() {
    for (value, key) in [
        (
            json!({"abort": {"percent": 5, "status": 200}}),
            "fault.abort.status",
        ),
        (
            json!({"abort": {"percent": 101, "status": 503}}),
            "fault.abort.percent",
        ),
        (
            json!({"delay": {"percent": 5, "duration": "soon"}}),
            "fault.delay.duration",
        ),
        (json!({"delay": {"percent": 5}}), "fault.delay"),
        (json!({"chaos": true}), "fault"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"backends": ["http://127.0.0.1:1"], "fault": value});
        let path = write_config(dir.path(), "c.json", &config.to_string());
        let (code, _, err) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{value} accepted");
        assert!(err.contains(key), "{value}: {err}");
    }
}
