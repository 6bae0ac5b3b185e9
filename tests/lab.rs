//! The lab's instruments: the open-loop generator, the simulator, scenario files, and an
//! end-to-end lab run writing its report.

mod common;

use std::time::Duration;

use alb::{
    lab::Scenario,
    loadgen::{self, Arrival, LoadPlan, Target},
    sim::{self, Event, Schedule, ServiceTime, SimSettings},
};
use common::*;
use serde_json::Value;
use tokio::time::Instant;

fn plan(rate: f64, duration: Duration) -> LoadPlan {
    LoadPlan {
        rate,
        rate_end: rate,
        profile: Vec::new(),
        duration,
        warmup: Duration::ZERO,
        arrival: Arrival::Constant,
        clients: 8,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_keeps_its_schedule() {
    let backend = sim::spawn(0, SimSettings::default(), None).await.unwrap();
    let url = format!("http://{}/", backend.addr).parse().unwrap();
    let start = Instant::now() + Duration::from_millis(20);
    let result = loadgen::run(
        Target::Url(url),
        &plan(1000.0, Duration::from_secs(3)),
        vec![],
        start,
    )
    .await;
    let sent = result.samples.len() as f64;
    assert!(
        (sent - 3000.0).abs() / 3000.0 <= 0.02,
        "{sent} requests instead of 3000"
    );
    assert!(result.samples.iter().all(|s| s.status == 200));
    // the intended send times are evenly spaced at 1 ms
    let mut intended: Vec<Duration> = result.samples.iter().map(|s| s.intended).collect();
    intended.sort();
    assert!(intended
        .windows(2)
        .all(|w| (w[1] - w[0]).as_micros().abs_diff(1000) <= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_its_full_waiting_time() {
    let stall_at = Duration::from_secs(1);
    let stall = Duration::from_millis(500);
    let settings = SimSettings {
        service: ServiceTime::constant(Duration::from_millis(1)),
        schedule: Schedule {
            events: vec![Event::Stall {
                at: stall_at,
                duration: stall,
            }],
        },
        ..SimSettings::default()
    };
    let backend = sim::spawn(0, settings, Some(4)).await.unwrap();
    let start = Instant::now() + Duration::from_millis(20);
    backend.restart_clock(start);
    let url = format!("http://{}/", backend.addr).parse().unwrap();
    let result = loadgen::run(
        Target::Url(url),
        &plan(100.0, Duration::from_secs(3)),
        vec![],
        start,
    )
    .await;
    // Every request meant to leave during the stall waited for its end, measured from when
    // it was meant to leave: a closed-loop tool would have recorded one slow request.
    let during: Vec<_> = result
        .samples
        .iter()
        .filter(|s| s.intended >= stall_at && s.intended < stall_at + stall)
        .collect();
    assert!(
        during.len() >= 45,
        "{} requests during the stall",
        during.len()
    );
    for s in &during {
        let owed = (stall_at + stall) - s.intended;
        assert!(
            s.latency + Duration::from_millis(2) >= owed,
            "request at {:?} took {:?}, the stall owed it {:?}",
            s.intended,
            s.latency,
            owed
        );
    }
    let summary = loadgen::summarize(result.samples.iter(), &[]);
    assert!(summary.max_ms >= 490.0, "max {} ms", summary.max_ms);
    assert!(
        summary.p50_ms < 50.0,
        "outside the stall requests are quick: {summary:?}"
    );
}

#[tokio::test]
async fn simulator_queues_beyond_its_slots() {
    let b = backend(&["--delay", "1s", "--slots", "2"]);
    let url = b.url();
    let requests = spawn_gets(&url, 6);
    let control = format!("{}/control", b.url());
    wait_until(
        "2 requests in service and 4 queued",
        Duration::from_secs(20),
        || async {
            let r: Value = json_of(client().get(&control)).await;
            r["active"] == 2 && r["queued"] == 4
        },
    )
    .await;
    for r in requests {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let r: Value = json_of(client().get(&control)).await;
    assert_eq!(r["served"], 6);
}

#[test]
fn shipped_scenarios_load() {
    for name in [
        "null",
        "slow-4x",
        "slow-16x",
        "heavy-tail",
        "stall",
        "pauses",
        "fail-fast",
        "overload",
        "replicas-3",
        "antagonist",
        "ramp",
    ] {
        let path = format!("load/scenarios/{name}.toml");
        let s = Scenario::load(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, name);
        assert!(s.capacity() > 0.0);
    }
}

#[test]
fn scenario_errors_name_the_field() {
    let base = "description = \"x\"\nduration = \"2s\"\nload = 0.5\n";
    let backend =
        "[[backends]]\nslots = 4\nservice = { dist = \"exponential\", mean = \"10ms\" }\n";
    let cases = [
        (format!("{base}lod = 1\n{backend}"), "lod"),
        (format!("description = \"x\"\nduration = \"2s\"\nload = \"high\"\n{backend}"), "`load`"),
        (format!("{base}[[backends]]\nslots = 0\nservice = {{ dist = \"exponential\", mean = \"10ms\" }}\n"), "backends[0].slots"),
        (format!("{base}[[backends]]\nslots = 1\nservice = {{ dist = \"exponential\", mean = \"ten\" }}\n"), "backends[0].service"),
        (format!("{base}{backend}events = [ {{ kind = \"slowdown\", at = \"1s\", factor = -2.0 }} ]\n"), "backends[0].events[0]"),
        (format!("{base}{backend}events = [ {{ kind = \"explode\", at = \"1s\" }} ]\n"), "backends[0].events"),
        (format!("{base}replicas = 0\n{backend}"), "replicas"),
        (format!("{base}[antagonist]\nbackends = [1]\nload = 0.5\n{backend}"), "antagonist.backends[0]"),
        (format!("{base}[antagonist]\nbackends = [0]\nload = 0\n{backend}"), "antagonist.load"),
        (format!("{base}[antagonist]\nbackends = [0]\nload = -0.5\n{backend}"), "antagonist.load"),
        (format!("{base}[antagonist]\nbackends = [0]\n{backend}"), "antagonist"),
        (format!("{base}load_profile = [0.5]\n{backend}"), "load_profile"),
        (format!("{base}load_profile = [0.5, -1.0]\n{backend}"), "load_profile[1]"),
        (format!("{base}load_end = 0.9\nload_profile = [0.5, 0.9]\n{backend}"), "load_profile"),
        (format!("{base}strategies = [\"fastest\"]\n{backend}"), "strategies[0]"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = write_config(dir.path(), &format!("bad{i}.toml"), text);
        let (code, _, stderr) = alb_output(&[
            "lab",
            path.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{text}\n{stderr}");
        assert!(stderr.contains(field), "expected {field} in: {stderr}");
        assert!(stderr.contains(&format!("bad{i}.toml")), "{stderr}");
    }
}

/// Runs `alb lab` once on `scenario` into `dir/out`; returns that directory and the summary.
fn run_once(dir: &std::path::Path, scenario: &std::path::Path) -> (std::path::PathBuf, Value) {
    let out = dir.join("out");
    let (code, stdout, stderr) = alb_output(&[
        "lab",
        scenario.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--repetitions",
        "1",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (out, summary)
}

/// The sum of one contender's backend shares.
fn share_sum(contender: &Value) -> f64 {
    contender["share"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum()
}

#[test]
fn lab_run_writes_report_summary_plots_and_raw_results() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_config(
        dir.path(),
        "tiny.toml",
        "description = \"two backends, one slower\"\nduration = \"2s\"\nwarmup = \"1s\"\nload = 0.5\nclients = 8\n\
         [[backends]]\nslots = 2\nservice = { dist = \"constant\", value = \"10ms\" }\n\
         [[backends]]\nslots = 2\nservice = { dist = \"constant\", value = \"40ms\" }\n",
    );
    let (out, summary) = run_once(dir.path(), &scenario);
    let tiny = summary["scenarios"]["tiny"].as_object().unwrap();
    let names: Vec<&str> = tiny.keys().map(String::as_str).collect();
    for contender in ["round_robin", "least_conn", "sticky", "adaptive", "oracle"] {
        assert!(names.contains(&contender), "{names:?}");
        let c = &tiny[contender];
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "error_rate",
                "p50_ms",
                "p90_ms",
                "p999_ms",
                "p99_ms",
                "share"
            ]
        );
        let shares = share_sum(c);
        assert!(
            (shares - 1.0).abs() < 0.01,
            "{contender}: shares sum to {shares}"
        );
        assert!(c["p50_ms"].as_f64().unwrap() >= 10.0);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| round_robin |") && report.contains("| oracle |"));
    for kind in ["cdf", "p99", "share"] {
        let svg = std::fs::read_to_string(out.join(format!("tiny-{kind}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{kind}"
        );
    }
    let raw = std::fs::read_to_string(out.join("raw/tiny/adaptive-r1.csv")).unwrap();
    assert!(raw.lines().count() > 100);
}

#[test]
fn lab_run_with_replicas_and_an_antagonist_reports_both() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_config(
        dir.path(),
        "tiny.toml",
        "description = \"two replicas, two backends, one antagonised\"\nduration = \"2s\"\nwarmup = \"1s\"\n\
         load = 0.3\nclients = 8\nreplicas = 2\n\
         [antagonist]\nbackends = [1]\nload = 0.4\n\
         [[backends]]\ncount = 2\nslots = 2\nservice = { dist = \"constant\", value = \"10ms\" }\n",
    );
    let (out, summary) = run_once(dir.path(), &scenario);
    let setup = &summary["setups"]["tiny"];
    assert_eq!(setup["replicas"], 2, "{setup}");
    // 0.4 of one backend's capacity (2 slots / 10 ms = 200 req/s)
    let rate = setup["antagonist"]["rate"].as_f64().unwrap();
    assert!((rate - 80.0).abs() < 1e-6, "{setup}");
    assert_eq!(setup["antagonist"]["backends"].as_array().unwrap().len(), 1);
    let tiny = summary["scenarios"]["tiny"].as_object().unwrap();
    for contender in [
        "round_robin",
        "least_conn",
        "sticky",
        "adaptive",
        "prequal",
        "oracle",
    ] {
        let c = &tiny[contender];
        for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "error_rate"] {
            assert!(c[key].is_number(), "{contender}.{key}: {c}");
        }
        assert!(c["antagonist_p99_ms"].as_f64().unwrap() > 0.0, "{c}");
        let shares = share_sum(c);
        assert!(
            (shares - 1.0).abs() < 0.01,
            "{contender}: shares sum to {shares}"
        );
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("2 ALB replicas"), "{report}");
    assert!(
        report.contains("Antagonist: 80 req/s straight to b1"),
        "{report}"
    );
    assert!(report.contains("| antagonist p99 |"), "{report}");
    assert!(report.contains("| prequal |"), "{report}");
    let raw = std::fs::read_to_string(out.join("raw/tiny/adaptive-r1-antagonist.csv")).unwrap();
    assert!(raw.lines().count() > 100);
}

#[test]
fn ramp_shows_the_recommendation_rising_with_the_load_and_falling_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_config(
        dir.path(),
        "tiny.toml",
        "description = \"load up and down\"\nduration = \"8s\"\nwarmup = \"1s\"\nload = 0.05\nclients = 8\n\
         load_profile = [0.05, 0.8, 0.05, 0.05, 0.05]\nstrategies = [\"least_conn\"]\n\
         [balancer]\nautoscale = { backend_concurrency = 4, target_utilization = 0.7, \
         window = \"500ms\", scale_down_delay = \"500ms\" }\n\
         [[backends]]\ncount = 2\nslots = 4\nservice = { dist = \"constant\", value = \"20ms\" }\n",
    );
    // The low tail lasts 4 s: on a busy machine the fall must not race the end of the run.
    let (out, summary) = run_once(dir.path(), &scenario);
    // Only the named contender ran.
    let ran: Vec<&String> = summary["scenarios"]["tiny"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(ran, ["least_conn"]);
    // 2 backends x 4 slots / 20 ms = 400 req/s; at 80% about 6.4 requests are in flight,
    // ceil(6.4 / (4 x 0.7)) = 3 backends; at 5%, 0.4 in flight: 1.
    let signal = &summary["capacity"]["tiny"]["least_conn"];
    let (start, peak, end) = (
        signal["start"].as_u64().unwrap(),
        signal["peak"].as_u64().unwrap(),
        signal["end"].as_u64().unwrap(),
    );
    assert!(peak >= 3 && peak > start, "{signal}");
    assert!(end <= 2 && end < peak, "{signal}");
    let peak_at = signal["peak_at_secs"].as_f64().unwrap();
    assert!((0.5..5.0).contains(&peak_at), "{signal}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Capacity signal"), "{report}");
    assert!(
        report.contains("follows the profile 20 → 320 → 20 → 20 → 20 req/s"),
        "{report}"
    );
    let svg = std::fs::read_to_string(out.join("tiny-capacity.svg")).unwrap();
    assert!(svg.contains("recommended backends") && svg.contains("<polyline"));
}

#[tokio::test]
async fn loadgen_command_prints_percentiles_and_shares() {
    let (a, b) = (backend(&[]), backend(&[]));
    let lb = alb(serde_json::json!({"backends": urls(&[&a, &b])}));
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        alb_output(&["loadgen", &lb.url(), "--rate", "200", "--duration", "1s"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("p99.9"), "{stdout}");
    assert!(
        stdout.contains(&name(&a)) && stdout.contains(&name(&b)),
        "{stdout}"
    );
    assert!(stdout.contains("send lag"), "{stdout}");
}
