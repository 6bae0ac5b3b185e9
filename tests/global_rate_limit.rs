//! A global rate limit on Redis (`rate_limit.store`): replicas share one limit through a real
//! `redis-server`; when Redis stops (SIGSTOP), `on_error` decides and answers keep coming;
//! when it comes back (SIGCONT), the shared limit returns by itself.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::{json, Value};

/// A `redis-server` on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test --deps installs it)");
        wait_for_port(port);
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `STOP` or `CONT`: a stopped Redis keeps its socket open and answers nothing.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `alb run` in front of `backend` with `rate_limit` as given.
fn replica(backend: &Proc, rate_limit: Value) -> Proc {
    alb(json!({
        "backends": urls(&[backend]),
        "health_check_interval": 60,
        "rate_limit": rate_limit,
    }))
}

/// The store's state as `/health` shows it.
async fn store_state(alb: &Proc) -> Value {
    admin_json(alb, "/health").await["rate_limit_store"].clone()
}

async fn wait_for_state(alb: &Proc, state: &str) {
    wait_until(
        &format!("/health says the store is {state}"),
        Duration::from_secs(20),
        || async { store_state(alb).await["state"] == state },
    )
    .await;
}

/// Sends `total` GETs paced at `per_second`, spread round-robin over `targets`, without
/// waiting for answers between sends; returns the status codes.
async fn paced(targets: &[String], total: usize, per_second: u64) -> Vec<u16> {
    let client = client();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    let mut sent = Vec::with_capacity(total);
    for i in 0..total {
        ticks.tick().await;
        let (client, url) = (client.clone(), targets[i % targets.len()].clone());
        sent.push(tokio::spawn(async move { get(&client, &url).await.status }));
    }
    let mut codes = Vec::with_capacity(total);
    for s in sent {
        codes.push(s.await.unwrap());
    }
    codes
}

fn admitted(codes: &[u16]) -> usize {
    codes.iter().filter(|c| **c == 200).count()
}

/// Each of the replicas' lines containing `text`.
fn log_lines(alb: &Proc, text: &str) -> usize {
    alb.log_text().lines().filter(|l| l.contains(text)).count()
}

const DOWN_LINE: &str = "rate-limit store is DOWN";
const UP_LINE: &str = "rate-limit store is UP";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_limit() {
    let redis = Redis::start();
    let backend = backend(&[]);
    // A generous timeout: this test is about sharing, not about a slow Redis (the machine
    // runs three debug builds of ALB, Redis and the client on two cores).
    let shared = json!({
        "requests_per_second": 50, "burst": 50,
        "store": {"url": redis.url(), "timeout": "250ms"},
    });
    let replicas: Vec<Proc> = (0..3).map(|_| replica(&backend, shared.clone())).collect();
    for r in &replicas {
        wait_for_state(r, "up").await;
    }
    let targets: Vec<String> = replicas.iter().map(|r| format!("{}/", r.url())).collect();
    // 600 requests over 3 s from one client address: the shared bucket admits its burst
    // (50) and its refill (50/s × 3 s), about 200, whichever replica each request reaches.
    let codes = paced(&targets, 600, 200).await;
    let mut errors = Vec::new();
    for r in &replicas {
        errors.push(store_state(r).await["errors"].clone());
    }
    let with_store = admitted(&codes);
    assert!(
        (150..=220).contains(&with_store),
        "three replicas on one Redis admitted {with_store} of 600 (store errors per replica: {errors:?})"
    );
    assert_eq!(
        codes.len() - with_store,
        codes.iter().filter(|c| **c == 429).count()
    );

    // The same without the store: each replica has its own bucket.
    let local = json!({"requests_per_second": 50, "burst": 50});
    let replicas: Vec<Proc> = (0..3).map(|_| replica(&backend, local.clone())).collect();
    let targets: Vec<String> = replicas.iter().map(|r| format!("{}/", r.url())).collect();
    let codes = paced(&targets, 600, 200).await;
    let without = admitted(&codes);
    eprintln!("admitted of 600: {with_store} with the store, {without} without");
    assert!(
        without > 440,
        "three replicas without a store admitted only {without} of 600 (with one: {with_store})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_falls_back_to_the_local_bucket_and_back() {
    let redis = Redis::start();
    let backend = backend(&[]);
    // 50 ms rather than the default 20: the machine that runs the tests is busy, and a
    // decision that misses the timeout while Redis answers would be decided locally.
    let limit = json!({
        "requests_per_second": 1, "burst": 5,
        "store": {"url": redis.url(), "timeout": "50ms", "on_error": "local"},
    });
    let a = replica(&backend, limit.clone());
    let b = replica(&backend, limit);
    wait_for_state(&a, "up").await;
    wait_for_state(&b, "up").await;

    redis.signal("STOP");
    // A burst beyond the limit: every request is answered (no waiting on Redis beyond its
    // timeout; the client's own timeout is a generous 30 s), and this replica's own bucket
    // refuses what exceeds it.
    let url = format!("{}/", a.url());
    let codes = paced(std::slice::from_ref(&url), 30, 100).await;
    assert_eq!(codes.len(), 30);
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert!(
        admitted(&codes) >= 1 && refused >= 20,
        "limited locally while Redis is stopped: {codes:?}"
    );
    wait_for_state(&a, "down").await;
    let health = store_state(&a).await;
    assert_eq!(health["url"], redis.url());
    assert!(health["errors"].as_u64().unwrap() > 0, "{health}");
    assert!(health["since_unix"].as_f64().unwrap() > 0.0, "{health}");
    let errors = sample(&scrape(&a).await, "lb_rate_limit_store_errors_total").unwrap();
    assert!(errors > 0.0, "lb_rate_limit_store_errors_total = {errors}");
    // More requests and failed probes while it stays down: still one line.
    let _ = paced(std::slice::from_ref(&url), 10, 10).await;
    assert_eq!(log_lines(&a, DOWN_LINE), 1, "{}", a.log_text());

    redis.signal("CONT");
    wait_for_state(&a, "up").await;
    wait_for_state(&b, "up").await;
    // One line at start, one on return.
    assert_eq!(log_lines(&a, UP_LINE), 2, "{}", a.log_text());
    assert_eq!(log_lines(&a, DOWN_LINE), 1, "{}", a.log_text());
    // Back to the shared bucket: what `a` spends, `b` no longer has (its own bucket is full,
    // it has not been asked anything).
    let from_a = paced(&[url], 8, 100).await;
    assert!(from_a.contains(&429), "{from_a:?}");
    let from_b = paced(&[format!("{}/", b.url())], 3, 100).await;
    assert!(
        from_b.iter().filter(|c| **c == 429).count() >= 2,
        "b should share a's exhausted bucket: {from_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_used_again() {
    let redis = Redis::start();
    let port = redis.port;
    let backend = backend(&[]);
    let lb = replica(
        &backend,
        json!({"requests_per_second": 1, "burst": 2,
               "store": {"url": redis.url(), "timeout": "250ms"}}),
    );
    wait_for_state(&lb, "up").await;
    drop(redis);
    // Connection refused: decided locally at once (this replica's bucket is full).
    let url = format!("{}/", lb.url());
    let codes = paced(std::slice::from_ref(&url), 4, 100).await;
    assert_eq!(admitted(&codes), 2, "{codes:?}");
    wait_for_state(&lb, "down").await;
    // A new, empty Redis on the same address: the connection manager reconnects and the
    // prober marks the store up; the limit is Redis's again (its bucket is full: 2 tokens).
    let _redis = Redis::start_on(port);
    wait_for_state(&lb, "up").await;
    let codes = paced(std::slice::from_ref(&url), 4, 100).await;
    assert_eq!(admitted(&codes), 2, "{codes:?}");
    assert_eq!(log_lines(&lb, DOWN_LINE), 1, "{}", lb.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_deny_and_allow_do_as_named() {
    let redis = Redis::start();
    let backend = backend(&[]);
    let with = |on_error: &str| {
        json!({
            "requests_per_second": 1, "burst": 2,
            "store": {"url": redis.url(), "timeout": "100ms", "on_error": on_error},
        })
    };
    let deny = replica(&backend, with("deny"));
    let allow = replica(&backend, with("allow"));
    wait_for_state(&deny, "up").await;
    wait_for_state(&allow, "up").await;
    // While Redis answers, both limit: the burst of 2, then 429.
    let codes = paced(&[format!("{}/", deny.url())], 4, 100).await;
    assert_eq!(admitted(&codes), 2, "{codes:?}");

    redis.signal("STOP");
    let denied = paced(&[format!("{}/", deny.url())], 10, 50).await;
    assert!(denied.iter().all(|c| *c == 429), "deny: {denied:?}");
    let r = client()
        .get(format!("{}/", deny.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let allowed = paced(&[format!("{}/", allow.url())], 10, 50).await;
    assert!(allowed.iter().all(|c| *c == 200), "allow: {allowed:?}");
    wait_for_state(&deny, "down").await;
    wait_for_state(&allow, "down").await;
    redis.signal("CONT");
    wait_for_state(&allow, "up").await;
    // Back on the shared bucket (2 tokens): the limit applies again.
    let codes = paced(&[format!("{}/", allow.url())], 6, 100).await;
    assert!(codes.contains(&429), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_the_same_with_and_without_the_store() {
    let redis = Redis::start();
    let backend = backend(&[]);
    let limit = json!({"requests_per_second": 1, "burst": 3});
    let mut with_store = limit.clone();
    with_store["store"] = json!({"url": redis.url(), "timeout": "250ms"});
    let local = replica(&backend, limit);
    let shared = replica(&backend, with_store);
    wait_for_state(&shared, "up").await;
    let answers = |alb: &Proc| {
        let url = format!("{}/", alb.url());
        async move {
            let client = client();
            let mut seen = Vec::new();
            for _ in 0..5 {
                let r = client.get(&url).send().await.unwrap();
                let h = |name: &str| {
                    r.headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                };
                seen.push((
                    r.status().as_u16(),
                    h("ratelimit-limit"),
                    h("ratelimit-remaining"),
                    h("ratelimit-reset"),
                    h("retry-after"),
                ));
            }
            seen
        }
    };
    let local = answers(&local).await;
    let shared = answers(&shared).await;
    assert_eq!(local, shared);
    assert_eq!(local[0].2.as_deref(), Some("2"), "{local:?}");
    assert_eq!(local[4].0, 429, "{local:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_store() {
    let redis = Redis::start();
    let backend = backend(&[]);
    let lb = replica(
        &backend,
        json!({"requests_per_second": 1, "burst": 2,
               "store": {"url": redis.url(), "timeout": "250ms"}}),
    );
    wait_for_state(&lb, "up").await;
    let url = format!("{}/", lb.url());
    let before = paced(std::slice::from_ref(&url), 3, 100).await;
    assert_eq!(admitted(&before), 2, "{before:?}");
    lb.signal("HUP");
    wait_until("the reload is logged", Duration::from_secs(20), || async {
        lb.log_text().contains("config reloaded")
    })
    .await;
    // The same URL: the same connection and state (no second "UP" line), and the bucket is
    // Redis's, so the reload did not refill it.
    assert_eq!(store_state(&lb).await["state"], "up");
    assert_eq!(log_lines(&lb, UP_LINE), 1, "{}", lb.log_text());
    let after = paced(&[url], 2, 100).await;
    assert!(after.contains(&429), "{after:?}");
}

/// `alb check-config` on a file whose `rate_limit.store` is `store`.
fn check_store(store: Value) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "backends": ["http://127.0.0.1:3000"],
        "rate_limit": {"requests_per_second": 10, "store": store},
    });
    let path = write_config(dir.path(), "c.json", &config.to_string());
    alb_output(&["check-config", path.to_str().unwrap()])
}

#[test]
fn bad_store_values_are_refused_naming_key_value_and_expectation() {
    let cases = [
        (
            json!("http://127.0.0.1:6379"),
            "`rate_limit.store`: got \"http://127.0.0.1:6379\", expected a Redis URL",
        ),
        (
            json!({"url": "rediss://u:hunter22@r:6379"}),
            "`rate_limit.store.url`: got \"rediss://r:6379\", expected a Redis URL",
        ),
        (
            json!({"url": "redis://127.0.0.1:6379", "timeout": 0}),
            "`rate_limit.store.timeout`: got 0, expected a positive number of seconds",
        ),
        (
            json!({"url": "redis://127.0.0.1:6379", "timeout": "soon"}),
            "`rate_limit.store.timeout`: got \"soon\"",
        ),
        (
            json!({"url": "redis://127.0.0.1:6379", "on_error": "retry"}),
            "`rate_limit.store.on_error`: got \"retry\", expected \"local\"",
        ),
        (
            json!({"url": "redis://127.0.0.1:6379", "onerror": "deny"}),
            "`rate_limit.store.onerror`",
        ),
        (
            json!({"timeout": "20ms"}),
            "`rate_limit.store`: missing field `url`",
        ),
        (json!(6379), "`rate_limit.store`"),
    ];
    for (store, message) in cases {
        let (code, _, stderr) = check_store(store.clone());
        assert_eq!(code, 2, "{store}: accepted");
        assert!(stderr.contains(message), "{store}: {stderr}");
        assert!(
            !stderr.contains("hunter22"),
            "{store}: password shown: {stderr}"
        );
    }
}

#[test]
fn store_defaults_and_no_credentials_in_check_config() {
    let (code, stdout, stderr) = check_store(json!("redis://alb:hunter22@127.0.0.1:6379/1"));
    assert_eq!(code, 0, "{stderr}");
    let effective: Value = serde_json::from_str(&stdout).unwrap();
    let store = &effective["rate_limit"]["store"];
    assert_eq!(store["url"], "redis://127.0.0.1:6379/1");
    assert_eq!(store["timeout"], "20ms");
    assert_eq!(store["on_error"], "local");
    assert!(!stdout.contains("hunter22"), "{stdout}");
}
