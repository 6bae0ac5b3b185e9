//! The prober of `prequal`: asks backends for their load, off the request path.
//!
//! Every [`TICK`] it sends the probes the strategy owes (about `probes_per_request` per
//! request picked since the last tick, to backends drawn at random, at most [`MAX_PER_TICK`])
//! and one to every backend whose report is older than `idle_probe_interval`, so there is
//! something to choose from at any load. A probe is `GET` [`PROBE_PATH`] answered by the
//! backend's [`LoadReportLayer`](crate::load_report::LoadReportLayer); one probe at a time
//! per backend, each given at most `max_age` (an answer later than that would be discarded
//! anyway). The answer lands in the backend's [`ProbeSlot`](crate::balance::endpoint::ProbeSlot).
//! A backend that does not answer keeps no report, and the strategy uses ALB's own numbers
//! for it. Probes are counted in `lb_probes_total{result}`.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::{task::JoinHandle, time::Instant};

use crate::{
    balance::{adaptive::Draw, Balancer, Endpoint, Strategy},
    load_report::{LoadReport, PROBE_PATH},
    telemetry::PROBES_TOTAL,
    upstream::BackendClient,
};

/// How often owed probes are sent.
pub const TICK: Duration = Duration::from_millis(5);

/// Largest probe answer read (a report is about 40 bytes).
pub const MAX_REPORT_BYTES: usize = 4096;

/// Most probes sent in one tick (a burst of requests does not become a burst of probes).
pub const MAX_PER_TICK: u64 = 64;

/// Starts probing the balancer's backends while its strategy is `prequal`.
pub fn spawn(balancer: Arc<Balancer>, client: BackendClient) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Strategy::Prequal(prequal) = balancer.strategy() else {
            return;
        };
        let config = prequal.config().clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Its own draws: the strategy's sequence stays the strategy's.
        let draw = Draw::from_entropy();
        loop {
            tick.tick().await;
            let set = balancer.snapshot();
            let n = set.endpoints.len();
            if n == 0 {
                continue;
            }
            let now = Instant::now().into_std();
            for ep in &set.endpoints {
                let stale = ep
                    .probe
                    .read(now)
                    .is_none_or(|r| r.age >= config.idle_probe_interval);
                if stale {
                    send(ep, &client, config.max_age);
                }
            }
            let owed = prequal.take_owed_probes().min(MAX_PER_TICK);
            for _ in 0..owed {
                send(&set.endpoints[draw.below(n)], &client, config.max_age);
            }
        }
    })
}

/// Sends one probe to `ep` unless one is on its way there.
fn send(ep: &Arc<Endpoint>, client: &BackendClient, timeout: Duration) {
    if !ep.probe.begin() {
        return;
    }
    let ep = ep.clone();
    let client = client.clone();
    tokio::spawn(async move {
        let result = probe(&ep, &client, timeout).await;
        ep.probe.end();
        metrics::counter!(PROBES_TOTAL, "result" => result).increment(1);
    });
}

/// One probe; returns its result label.
async fn probe(ep: &Endpoint, client: &BackendClient, timeout: Duration) -> &'static str {
    let uri = format!("{}://{}{PROBE_PATH}", ep.backend.scheme(), ep.name());
    let Ok(request) = Request::get(uri)
        .header(http::header::USER_AGENT, "alb-probe")
        .body(Body::empty())
    else {
        return "error";
    };
    let answer = tokio::time::timeout(timeout, async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        // A report is a few dozen bytes: a backend streaming more is not read further.
        let body = http_body_util::Limited::new(response.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, body))
    })
    .await;
    match answer {
        Err(_) => "timeout",
        Ok(None) => "error",
        Ok(Some((StatusCode::OK, body))) => match LoadReport::parse(&body) {
            Some(report) => {
                ep.probe
                    .store(report.rif, report.latency_us, Instant::now().into_std());
                "ok"
            }
            None => "invalid",
        },
        Ok(Some(_)) => "invalid",
    }
}
