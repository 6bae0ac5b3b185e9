//! Active health checks: a dead backend leaves, comes back, and nothing hangs when all are down.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const INTERVAL_SECS: f64 = 0.5;
const UNHEALTHY: u64 = 2;

#[tokio::test]
async fn killed_backend_leaves_and_returns() {
    let port = free_port();
    let mut victim = backend_on(port, &[]);
    let (b, c) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "strategy": "round_robin", "backends": urls(&[&victim, &b, &c]),
        "health_check_interval": INTERVAL_SECS, "unhealthy_threshold": UNHEALTHY,
        "healthy_threshold": 1
    }));
    let answers = load(&lb.url(), 30, 1).await;
    assert_eq!(shares(&answers).get(&name(&victim)), Some(&10));

    victim.kill();
    // (unhealthy_threshold + 1) intervals: by then the checker has seen enough failures.
    tokio::time::sleep(Duration::from_secs_f64(
        INTERVAL_SECS * (UNHEALTHY + 1) as f64,
    ))
    .await;
    let answers = load(&lb.url(), 60, 3).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "a client saw a failure after the backend was excluded: {:?}",
        answers.iter().find(|a| a.status != 200)
    );
    assert_eq!(shares(&answers).get(&name(&victim)), None);
    assert!(
        lb.log_text().contains("backend is DOWN"),
        "{}",
        lb.log_text()
    );

    let _victim = backend_on(port, &[]);
    wait_until(
        "the restarted backend gets traffic",
        Duration::from_secs(20),
        || async {
            let answers = load(&lb.url(), 6, 1).await;
            shares(&answers).contains_key(&format!("127.0.0.1:{port}"))
        },
    )
    .await;
    assert!(lb.log_text().contains("backend is UP"));
}

#[tokio::test]
async fn unhealthy_status_takes_a_backend_out() {
    let sick = backend(&["--unhealthy"]);
    let ok = backend(&[]);
    let lb = alb(json!({
        "backends": urls(&[&sick, &ok]), "health_check_interval": 0.2, "unhealthy_threshold": 1
    }));
    wait_until(
        "the sick backend is excluded",
        Duration::from_secs(20),
        || async {
            load(&lb.url(), 4, 1)
                .await
                .iter()
                .all(|a| a.backend == Some(name(&ok)))
        },
    )
    .await;
    assert!(lb.log_text().contains("status 503"), "{}", lb.log_text());
}

#[tokio::test]
async fn all_backends_down_answers_503_at_once() {
    let mut a = backend(&[]);
    let lb = alb(json!({
        "backends": urls(&[&a]), "health_check_interval": 0.2, "unhealthy_threshold": 1
    }));
    a.kill();
    wait_until(
        "the only backend is excluded",
        Duration::from_secs(20),
        || async { get(&client(), &lb.url()).await.status == 503 },
    )
    .await;
    let answer = get(&client(), &lb.url()).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, "alb: no healthy backend\n");
}
