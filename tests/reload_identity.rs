//! Backend identity survives config reloads that reorder the backend list.
//!
//! Three simulated backends, one of them down (its health check failing). A reload (SIGHUP
//! or `POST /reload`) that only reorders `backends` must not change who is who:
//!
//! - on every answer, `chosen=` in `x-alb-decision` names the backend that answered
//!   (`x-alb-backend`), and the down backend never answers;
//! - `/decisions` names, for every request sent so far (before the reloads too), the
//!   backend that really answered it: a real backend's `host:port`, never `#N`;
//! - each backend keeps its id: `/backends` gives a name the id it had before the first
//!   reorder, and `/backends/{id}` still names that backend.
//!
//! Then the backend comes back, one more reorder is reloaded, and all of that must still
//! hold, with the returned backend allowed to answer again. Outlier detection and retries
//! are off, so only health checks decide who is in service.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use serde_json::{json, Value};

/// How long alb may take to notice a health change or a reload (checks run every 200 ms;
/// generous because the machine may be busy).
const PATIENCE: Duration = Duration::from_secs(30);

/// Requests sent after each reload.
const ROUND: usize = 30;

/// The backend taken down: the middle one of the original list, so that every reorder
/// below moves it or a backend after it.
const DOWN: usize = 1;

/// How a reload is asked for.
#[derive(Clone, Copy, Debug)]
enum Reload {
    /// `kill -HUP`.
    Hangup,
    /// `POST /reload` on the admin listener.
    Post,
}

/// A reorder of the original list (positions into it), and how it is reloaded.
type Stage = (&'static str, [usize; 3], Reload);

/// Reorders reloaded while [`DOWN`] is down: reversed, then rotated.
const WHILE_DOWN: [Stage; 2] = [
    ("reversed, one backend down", [2, 1, 0], Reload::Hangup),
    ("rotated, one backend down", [1, 2, 0], Reload::Post),
];

/// The reorder reloaded once [`DOWN`] is back.
const AFTER_RETURN: Stage = ("rotated again, all backends up", [2, 0, 1], Reload::Post);

/// Three simulated backends behind an `alb` that explains its decisions.
struct Bench {
    backends: Vec<Proc>,
    lb: Proc,
}

impl Bench {
    fn start(strategy: &str) -> Bench {
        let backends: Vec<Proc> = (0..3).map(|_| backend(&[])).collect();
        let lb = alb(json!({
            "strategy": strategy,
            "explain": true,
            "backends": urls(&backends.iter().collect::<Vec<_>>()),
            "health_check_interval": "200ms",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "outlier_detection": {"enabled": false},
            "retries": {"attempts": 0},
        }));
        Bench { backends, lb }
    }

    /// The `host:port` of backend `i` (position in the original list).
    fn name(&self, i: usize) -> String {
        name(&self.backends[i])
    }

    /// `/backends` as name → (id, up).
    async fn listed(&self) -> HashMap<String, (u64, bool)> {
        admin_json(&self.lb, "/backends").await["backends"]
            .as_array()
            .expect("/backends lists backends")
            .iter()
            .map(|b| {
                let name = b["backend"].as_str().unwrap_or_default().to_owned();
                (
                    name,
                    (b["id"].as_u64().unwrap_or(u64::MAX), b["up"] == true),
                )
            })
            .collect()
    }

    /// Makes backend `i`'s `/health` answer 200 or 503, and waits until `/backends` agrees.
    async fn set_healthy(&self, i: usize, healthy: bool) {
        let r = client()
            .post(format!("{}/control", self.backends[i].url()))
            .json(&json!({ "healthy": healthy }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST /control to backend {i}");
        let who = self.name(i);
        wait_until(
            &format!("/backends shows {who} with up={healthy}"),
            PATIENCE,
            || async { self.listed().await.get(&who).map(|b| b.1) == Some(healthy) },
        )
        .await;
    }

    /// Rewrites the config file with the backends in `order` and reloads it.
    async fn reload_with(&self, (label, order, how): Stage) {
        let path = self.lb.config_path();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let listed: Vec<&Proc> = order.iter().map(|&i| &self.backends[i]).collect();
        config["backends"] = urls(&listed);
        std::fs::write(&path, config.to_string()).unwrap();
        match how {
            Reload::Hangup => {
                let logged = |lb: &Proc| lb.log_text().matches("config reloaded").count();
                let before = logged(&self.lb);
                self.lb.signal("HUP");
                wait_until(
                    &format!("the SIGHUP reload ({label}) is logged"),
                    PATIENCE,
                    || async { logged(&self.lb) > before },
                )
                .await;
            }
            Reload::Post => {
                let r = client()
                    .post(format!("{}/reload", self.lb.admin_url()))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(status, 200, "POST /reload ({label}): {text}");
            }
        }
        let log = self.lb.log_text();
        assert!(
            !log.contains("config reload failed"),
            "reload ({label}) refused: {log}"
        );
    }

    /// Sends [`ROUND`] explained requests, checks every answer and appends who answered
    /// each to `history` (with the round's label).
    async fn round(&self, label: &str, down: Option<usize>, history: &mut Vec<(String, String)>) {
        let allowed: Vec<String> = (0..3)
            .filter(|&i| Some(i) != down)
            .map(|i| self.name(i))
            .collect();
        let down = down.map(|i| self.name(i));
        let c = client();
        for k in 0..ROUND {
            let r = c
                .get(self.lb.url())
                .header("x-alb-explain", "1")
                .send()
                .await
                .unwrap();
            let header = |h: &str| {
                r.headers()
                    .get(h)
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default()
            };
            let (backend, decision) = (header("x-alb-backend"), header("x-alb-decision"));
            let status = r.status();
            let _ = r.bytes().await; // read the body so the connection is reused
            assert_eq!(
                status, 200,
                "{label}, request {k}: x-alb-decision: {decision}"
            );
            assert!(
                allowed.contains(&backend),
                "{label}, request {k}: answered by {backend:?}, expected one of {allowed:?} \
                 (down: {down:?}); x-alb-decision: {decision}"
            );
            let chosen = decision
                .split("; ")
                .find_map(|p| p.strip_prefix("chosen="))
                .unwrap_or_default();
            assert_eq!(
                chosen, backend,
                "{label}, request {k}: x-alb-decision says chosen={chosen} but x-alb-backend \
                 is {backend}; x-alb-decision: {decision}"
            );
            history.push((label.to_owned(), backend));
        }
    }

    /// `/decisions` must name, for every request in `history` (oldest first, sent one after
    /// another), the backend that answered it.
    async fn check_decisions(&self, label: &str, history: &[(String, String)]) {
        let d = admin_json(&self.lb, &format!("/decisions?limit={}", history.len())).await;
        let mut chosen: Vec<String> = d["decisions"]
            .as_array()
            .expect("/decisions lists decisions")
            .iter()
            .map(|d| d["chosen"].as_str().unwrap_or("none").to_owned())
            .collect();
        chosen.reverse(); // newest first → in the order sent
        assert_eq!(
            chosen.len(),
            history.len(),
            "after {label}: /decisions has {} decisions, {} requests were sent",
            chosen.len(),
            history.len()
        );
        let real: Vec<String> = (0..3).map(|i| self.name(i)).collect();
        for (k, (c, (round, answered))) in chosen.iter().zip(history).enumerate() {
            assert!(
                real.contains(c),
                "after {label}: /decisions names {c:?} for request {k} (round {round:?}), \
                 which is no backend of {real:?}; {answered} answered it"
            );
            assert_eq!(
                c, answered,
                "after {label}: /decisions says request {k} (round {round:?}) went to {c}, \
                 but {answered} answered it"
            );
        }
    }

    /// Every backend still has the id it had at the start, and `/backends/{id}` names it.
    async fn check_ids(&self, label: &str, ids: &HashMap<String, u64>) {
        let now = self.listed().await;
        for (name, id) in ids {
            let current = now.get(name).map(|b| b.0);
            assert_eq!(
                current,
                Some(*id),
                "after {label}: {name} had id {id} before the reorders, /backends now gives \
                 {current:?}"
            );
            let detail = admin_json(&self.lb, &format!("/backends/{id}")).await;
            assert_eq!(
                detail["backend"].as_str(),
                Some(name.as_str()),
                "after {label}: /backends/{id} named {name} before the reorders, now: {detail}"
            );
        }
    }
}

/// The explanation and the decision log name the backend that answered, through reorders
/// with a backend down and after it comes back.
async fn explanations_survive_reorders(strategy: &str) {
    let bench = Bench::start(strategy);
    let mut history = Vec::new();
    bench.round("start, all up", None, &mut history).await;
    bench.check_decisions("start, all up", &history).await;

    bench.set_healthy(DOWN, false).await;
    for stage in WHILE_DOWN {
        bench.reload_with(stage).await;
        bench.round(stage.0, Some(DOWN), &mut history).await;
        bench.check_decisions(stage.0, &history).await;
    }

    bench.set_healthy(DOWN, true).await;
    bench.reload_with(AFTER_RETURN).await;
    bench.round(AFTER_RETURN.0, None, &mut history).await;
    bench.check_decisions(AFTER_RETURN.0, &history).await;
}

#[tokio::test]
async fn round_robin_explanations_name_the_backend_that_answered_across_reorders() {
    explanations_survive_reorders("round_robin").await;
}

#[tokio::test]
async fn adaptive_explanations_name_the_backend_that_answered_across_reorders() {
    explanations_survive_reorders("adaptive").await;
}

#[tokio::test]
async fn backend_ids_stay_with_their_backend_across_reorders() {
    let bench = Bench::start("round_robin");
    let ids: HashMap<String, u64> = bench
        .listed()
        .await
        .into_iter()
        .map(|(name, (id, _))| (name, id))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");

    bench.set_healthy(DOWN, false).await;
    for stage in WHILE_DOWN {
        bench.reload_with(stage).await;
        bench.check_ids(stage.0, &ids).await;
    }

    bench.set_healthy(DOWN, true).await;
    bench.reload_with(AFTER_RETURN).await;
    bench.check_ids(AFTER_RETURN.0, &ids).await;
}
