//! Traffic management with real processes: routes and pools, weighted splits changed live,
//! the canary guard, mirroring with comparison, per-route faults, and bad configs refused.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The answer's `x-alb-route`, `x-alb-pool` and `x-alb-backend`.
fn names(r: &reqwest::Response) -> (String, String, String) {
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (h("x-alb-route"), h("x-alb-pool"), h("x-alb-backend"))
}

#[tokio::test]
async fn hosts_paths_methods_and_a_header_pin_route_to_their_pools() {
    let (web, api, v2) = (backend(&[]), backend(&[]), backend(&[]));
    let lb = alb(json!({
        "pools": {
            "web": {"backends": urls(&[&web])},
            "api": {"strategy": "least_conn", "backends": urls(&[&api])},
            "api-v2": {"backends": urls(&[&v2])}
        },
        "routes": [
            {"name": "api-pinned", "match": {"path_prefix": "/api", "headers": {"x-canary": "1"}},
             "pool": "api-v2"},
            {"name": "api", "match": {"path_prefix": "/api", "methods": ["GET", "POST"]}, "pool": "api"},
            {"name": "site", "match": {"host": "*.example.com"}, "pool": "web"}
        ]
    }));
    let c = client();
    let cases = [
        ("/api/users", None, "", "api", "api", &api),
        (
            "/api/users",
            Some(("x-canary", "1")),
            "",
            "api-pinned",
            "api-v2",
            &v2,
        ),
        ("/index.html", None, "www.example.com", "site", "web", &web),
    ];
    for (path, header, host, route, pool, served) in cases {
        let mut request = c.get(format!("{}{path}", lb.url()));
        if let Some((n, v)) = header {
            request = request.header(n, v);
        }
        if !host.is_empty() {
            request = request.header("host", host);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} {header:?} {host}");
        assert_eq!(names(&r), (route.into(), pool.into(), name(served)));
    }
    // A method the route does not take, and a host no route takes: 404 from ALB.
    for request in [
        c.delete(format!("{}/api/users", lb.url())),
        c.get(format!("{}/index.html", lb.url()))
            .header("host", "example.org"),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.headers().get("x-alb-route").is_none());
        assert!(r.text().await.unwrap().starts_with("alb: no route"));
    }
    // Decisions name the route and pool, and filter by them.
    let d = admin_json(&lb, "/decisions?route=api-pinned").await;
    let d = d["decisions"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["pool"], "api-v2");
    let backends = admin_json(&lb, "/backends").await;
    let pools: Vec<&str> = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pool"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["api", "api-v2", "web"], "pools in name order");
    let m = scrape(&lb).await;
    assert_eq!(sample(&m, "lb_route_not_found_total"), Some(2.0));
}

#[tokio::test]
async fn a_split_is_exact_and_a_live_change_applies_to_the_next_request() {
    let (stable, canary) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "pools": {
            "api": {"backends": urls(&[&stable])},
            "api-v2": {"backends": urls(&[&canary])}
        },
        "routes": [{"name": "api", "split": [{"pool": "api", "weight": 90},
                                             {"pool": "api-v2", "weight": 10}]}]
    }));
    let answers = load(&lb.url(), 2000, 8).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let s = shares(&answers);
    let to_canary = s.get(&name(&canary)).copied().unwrap_or(0);
    // Smooth weighted rotation: exactly 200 (the issue allows 10% ± 1 point).
    assert!(
        (180..=220).contains(&to_canary),
        "canary got {to_canary}: {s:?}"
    );

    let c = client();
    let set = c
        .post(format!("{}/routes/api/split", lb.admin_url()))
        .json(&json!({"api": 0, "api-v2": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200, "{:?}", set.text().await);
    let next = get(&c, &lb.url()).await;
    assert_eq!(next.backend, Some(name(&canary)), "the very next request");
    let routes = admin_json(&lb, "/routes").await;
    assert_eq!(
        routes["routes"][0]["split"],
        json!([{"pool": "api", "weight": 0}, {"pool": "api-v2", "weight": 100}])
    );
    // Bad changes are refused with the reason; nothing changes.
    for (body, status) in [
        (json!({"api": 50}), 422),
        (json!({"api": 0, "api-v2": 0}), 422),
        (json!({"api": 50, "nope": 50}), 422),
        (json!(["api"]), 400),
    ] {
        let r = c
            .post(format!("{}/routes/api/split", lb.admin_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
    }
    let missing = c
        .post(format!("{}/routes/nope/split", lb.admin_url()))
        .json(&json!({"api": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(get(&c, &lb.url()).await.backend, Some(name(&canary)));
}

fn canary_config(stable: &Proc, canary: &Proc) -> Value {
    json!({
        "pools": {
            "api": {"backends": urls(&[stable])},
            "api-v2": {"backends": urls(&[canary])}
        },
        "routes": [{"name": "api",
                    "split": [{"pool": "api", "weight": 50}, {"pool": "api-v2", "weight": 50}],
                    // Latency is not what this test judges: a loaded test machine's stalls
                    // must not roll the healthy canary back.
                    "canary": {"pool": "api-v2", "max_error_rate": 0.05, "window": "10s",
                               "min_requests": 20, "max_latency_ratio": 20}}]
    })
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_a_healthy_one_is_not() {
    let stable = backend(&[]);
    let failing = backend(&["--error-rate", "1.0"]);
    let lb = alb(canary_config(&stable, &failing));
    let answers = load(&lb.url(), 200, 4).await;
    // It served its 20 judged requests, then got no more.
    let to_canary = answers.iter().filter(|a| a.status == 503).count();
    assert!(
        (20..=30).contains(&to_canary),
        "{to_canary} reached the canary"
    );
    let routes = admin_json(&lb, "/routes").await;
    let canary = &routes["routes"][0]["canary"];
    assert_eq!(canary["state"], "rolled_back", "{canary}");
    assert!(
        canary["reason"]
            .as_str()
            .unwrap()
            .starts_with("error rate 100.0%"),
        "{canary}"
    );
    assert_eq!(routes["routes"][0]["split"][1]["weight"], 0);
    assert!(lb.log_text().contains("canary rolled back"));
    let m = scrape(&lb).await;
    assert_eq!(
        sample(&m, r#"lb_canary_rollbacks_total{route="api"}"#),
        Some(1.0)
    );
    let after = load(&lb.url(), 50, 2).await;
    assert!(
        after.iter().all(|a| a.status == 200),
        "rolled back for good"
    );

    let healthy = backend(&[]);
    let lb = alb(canary_config(&stable, &healthy));
    let answers = load(&lb.url(), 400, 4).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let routes = admin_json(&lb, "/routes").await;
    let canary = &routes["routes"][0]["canary"];
    assert_eq!(canary["state"], "watching", "{canary}");
    assert_eq!(routes["routes"][0]["canary"]["requests"], 200);
}

#[tokio::test]
async fn a_stuck_mirror_leaves_the_client_alone_and_a_failing_one_shows_mismatches() {
    let primary = backend(&[]);
    // A mirror that never answers in the test's lifetime: if a client answer waited for
    // it, the requests below would time out.
    let stuck = backend(&["--delay", "600s"]);
    let failing = backend(&["--error-rate", "1.0"]);
    let lb = alb(json!({
        "pools": {
            "web": {"backends": urls(&[&primary])},
            // Its health checks time out too: checked once at start, then not for 10 minutes.
            "stuck": {"backends": urls(&[&stuck]), "request_timeout": "900s",
                      "health_check_interval": "600s"},
            // Not ejected, so each copy gets the backend's own 503 (not ALB's).
            "failing": {"backends": urls(&[&failing]), "outlier_detection": {"enabled": false}}
        },
        "routes": [
            {"name": "stuck-mirror", "match": {"path_prefix": "/a"}, "pool": "web",
             "mirror": {"pool": "stuck", "percent": 50}},
            {"name": "failing-mirror", "match": {"path_prefix": "/b"}, "pool": "web",
             "mirror": {"pool": "failing", "percent": 100, "compare": true}}
        ]
    }));
    let c = client();
    for _ in 0..400 {
        let a = get(&c, &format!("{}/a", lb.url())).await;
        assert_eq!((a.status, a.backend), (200, Some(name(&primary))));
    }
    // Every other request was copied: 200 copies, all in flight on the stuck backend.
    let stuck_in_flight = || async {
        let b = admin_json(&lb, "/backends").await;
        b["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["pool"] == "stuck")
            .unwrap()["in_flight"]
            .as_u64()
            .unwrap()
    };
    wait_until("200 copies in flight", Duration::from_secs(30), || async {
        stuck_in_flight().await == 200
    })
    .await;
    let v = admin_json(&lb, "/mirror").await;
    assert_eq!(v["routes"][0]["dropped"], 0, "{v}");
    assert_eq!(v["routes"][0]["mirrored"], 0, "none answered yet");

    for _ in 0..30 {
        let a = get(&c, &format!("{}/b?q=1", lb.url())).await;
        assert_eq!(a.status, 200);
    }
    wait_until("30 comparisons", Duration::from_secs(30), || async {
        let v = admin_json(&lb, "/mirror").await;
        v["routes"][1]["compared"] == 30
    })
    .await;
    let v = admin_json(&lb, "/mirror").await;
    let b = &v["routes"][1];
    assert_eq!(b["route"], "failing-mirror");
    assert_eq!(b["status_mismatches"], 30, "{b}");
    let last = &b["last_mismatches"][0];
    assert_eq!(
        (
            &last["path"],
            &last["primary_status"],
            &last["mirror_status"]
        ),
        (&json!("/b?q=1"), &json!(200), &json!(503))
    );
    let m = scrape(&lb).await;
    assert_eq!(
        sample(
            &m,
            r#"lb_mirror_requests_total{route="failing-mirror",result="status_mismatch"}"#
        ),
        Some(30.0)
    );
    // The mirrored copies were balanced in their pool and recorded there.
    let d = admin_json(&lb, "/decisions?pool=failing").await;
    assert_eq!(d["decisions"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn a_mirror_compares_bodies_and_copies_short_request_bodies() {
    let (primary, twin) = (backend(&[]), backend(&[]));
    let lb = alb(json!({
        "pools": {"web": {"backends": urls(&[&primary])}, "twin": {"backends": urls(&[&twin])}},
        "routes": [{"name": "echo", "pool": "web",
                    "mirror": {"pool": "twin", "percent": 100, "compare": true}}]
    }));
    let c = client();
    // `/_sim/mirror` answers the request body: same body, same answer, on both sides.
    for i in 0..10 {
        let r = c
            .post(format!("{}/_sim/mirror", lb.url()))
            .body(format!("payload {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!("payload {i}"));
    }
    // Any other path answers `backend PORT`: same status, other body.
    for _ in 0..5 {
        assert_eq!(get(&c, &lb.url()).await.status, 200);
    }
    wait_until("15 comparisons", Duration::from_secs(30), || async {
        admin_json(&lb, "/mirror").await["routes"][0]["compared"] == 15
    })
    .await;
    let v = &admin_json(&lb, "/mirror").await["routes"][0];
    assert_eq!(v["status_mismatches"], 0, "{v}");
    assert_eq!(v["body_mismatches"], 5, "{v}");
    // A body over 64 KiB is forwarded whole and not copied.
    let big = "x".repeat(100 * 1024);
    let r = c
        .post(format!("{}/_sim/mirror", lb.url()))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), big);
    let v = &admin_json(&lb, "/mirror").await["routes"][0];
    assert_eq!(
        (&v["skipped"], &v["compared"]),
        (&json!(1), &json!(15)),
        "{v}"
    );
}

#[tokio::test]
async fn faults_are_per_route() {
    let web = backend(&[]);
    let lb = alb(json!({
        "pools": {"web": {"backends": urls(&[&web])}},
        "routes": [
            {"name": "chaos", "match": {"path_prefix": "/chaos"}, "pool": "web",
             "fault": {"abort": {"percent": 100, "status": 503}}},
            {"name": "calm", "pool": "web"}
        ]
    }));
    let c = client();
    let r = c.get(format!("{}/chaos", lb.url())).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-alb-fault"], "abort=503");
    assert_eq!(r.headers()["x-alb-route"], "chaos");
    assert_eq!(get(&c, &format!("{}/calm", lb.url())).await.status, 200);
    let m = scrape(&lb).await;
    assert_eq!(
        sample(
            &m,
            r#"lb_faults_injected_total{route="chaos",kind="abort"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn bad_pools_and_routes_are_refused_before_binding_and_shadowing_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pools = json!({"api": {"backends": ["http://127.0.0.1:1"]},
                       "api-v2": {"backends": ["http://127.0.0.1:2"]}});
    let cases = [
        (
            json!({"pools": pools, "routes": [{"name": "a", "pool": "api"},
                  {"name": "b", "split": [{"pool": "api", "weight": 1}, {"pool": "api-v3", "weight": 1}]}]}),
            r#"routes[1].split[1].pool`: got no pool named "api-v3""#,
        ),
        (
            json!({"pools": pools, "routes": [{"name": "a", "pool": "api",
                   "split": [{"pool": "api", "weight": 1}]}]}),
            "one of `pool` (one pool) or `split`",
        ),
        (json!({"pools": pools}), "config key `routes`"),
        (
            json!({"pools": {"api": {"backends": ["http://127.0.0.1:1"], "strategy": "fastest"}},
                   "routes": [{"name": "a", "pool": "api"}]}),
            "config key `pools.api.strategy`: got \"fastest\"",
        ),
        (
            json!({"pools": {"api": {"backends": ["http://127.0.0.1:1"], "port": 80}},
                   "routes": [{"name": "a", "pool": "api"}]}),
            "config key `pools.api.port`",
        ),
        (
            json!({"pools": pools, "routes": [{"name": "a", "pool": "api",
                   "canary": {"pool": "api-v2"}}]}),
            "routes[0].canary",
        ),
        (
            json!({"pools": pools, "routes": [{"name": "a", "pool": "api",
                   "match": {"host": "bad host"}}]}),
            "routes[0].match.host",
        ),
        (
            json!({"pools": pools, "routes": [{"name": "a", "pool": "api", "wieght": 1}]}),
            "routes[0]",
        ),
    ];
    for (config, expected) in cases {
        let path = write_config(dir.path(), "bad.json", &config.to_string());
        let (code, out, err) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{config}");
        let text = format!("{out}{err}");
        assert!(text.contains(expected), "{config}\n{text}");
    }
    let shadowed = json!({"pools": pools, "routes": [
        {"name": "all", "pool": "api"},
        {"name": "pinned", "match": {"headers": {"x-canary": "1"}}, "pool": "api-v2"}]});
    let path = write_config(dir.path(), "shadowed.json", &shadowed.to_string());
    let (code, out, err) = alb_output(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}")
            .contains(r#"routes[1] ("pinned") can never match: routes[0] ("all")"#),
        "{out}{err}"
    );
}

#[tokio::test]
async fn the_flat_format_is_one_pool_and_one_catch_all_route() {
    let b = backend(&[]);
    let lb = alb(json!({"backends": urls(&[&b])}));
    let r = client().get(lb.url()).send().await.unwrap();
    assert_eq!(names(&r), ("default".into(), "default".into(), name(&b)));
}

#[tokio::test]
async fn pools_and_routes_reload_without_a_failed_request_and_a_live_split_survives() {
    let (a, b, c) = (backend(&[]), backend(&[]), backend(&[]));
    let config = |extra_route: bool| {
        let mut routes = vec![
            json!({"name": "api", "split": [{"pool": "api", "weight": 50},
                                                               {"pool": "api-v2", "weight": 50}]}),
        ];
        if extra_route {
            routes.insert(
                0,
                json!({"name": "web", "match": {"path_prefix": "/web"}, "pool": "web"}),
            );
        }
        json!({
            "pools": {"api": {"backends": urls(&[&a])}, "api-v2": {"backends": urls(&[&b])},
                      "web": {"backends": urls(&[&c])}},
            "routes": routes
        })
    };
    let lb = alb(config(false));
    // Promote the canary live.
    let set = client()
        .post(format!("{}/routes/api/split", lb.admin_url()))
        .json(&json!({"api": 0, "api-v2": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    // Under load, reload with a route added (the split's settings unchanged).
    let url = lb.url();
    let load = tokio::spawn(async move { load(&url, 600, 4).await });
    let mut second = config(true);
    second["port"] = lb.port.into();
    second["admin_addr"] = format!("127.0.0.1:{}", lb.admin_port).into();
    std::fs::write(lb.config_path(), second.to_string()).unwrap();
    lb.signal("HUP");
    wait_until(
        "the reload to be logged",
        Duration::from_secs(30),
        || async { lb.log_text().contains("config reloaded") },
    )
    .await;
    let answers = load.await.unwrap();
    assert!(
        answers.iter().all(|a| a.status == 200),
        "a request failed across the reload"
    );
    let cl = client();
    let web = get(&cl, &format!("{}/web/x", lb.url())).await;
    assert_eq!(web.backend, Some(name(&c)), "the new route serves");
    for _ in 0..10 {
        let api = get(&cl, &format!("{}/api", lb.url())).await;
        assert_eq!(
            api.backend,
            Some(name(&b)),
            "the live weights survived the reload"
        );
    }
}
