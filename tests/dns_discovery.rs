//! DNS discovery against a real DNS server: `dnsmasq` on a loopback port answers for names
//! whose addresses are simulated backends on 127.0.0.11, .12, .13... (all local on Linux),
//! and ALB's `dns.servers` points at it. dnsmasq re-reads its `--addn-hosts` file on SIGHUP,
//! which is how a test adds or removes an address.

mod common;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `dnsmasq` from PATH, else Debian's `/usr/sbin` (not on an unprivileged user's PATH).
fn dnsmasq_bin() -> &'static str {
    let in_path = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if in_path {
        "dnsmasq"
    } else {
        "/usr/sbin/dnsmasq"
    }
}

/// A `dnsmasq` answering from a hosts file (and SRV records), killed on drop.
struct Dnsmasq {
    child: Option<Child>,
    args: Vec<String>,
    port: u16,
    hosts: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Serves `hosts` (hosts-file lines) and `srv` (`--srv-host` values) with a TTL of 1 s.
    fn start(hosts: &str, srv: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq started as root drops to `nobody`, which must still read the hosts file
        // when SIGHUP asks it to.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let hosts_path = dir.path().join("hosts");
        let log = dir.path().join("dnsmasq.log");
        let port = free_port();
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--addn-hosts={}", hosts_path.display()),
            "--local-ttl=1".to_owned(),
            format!("--pid-file={}", dir.path().join("pid").display()),
            format!("--log-facility={}", log.display()),
            "--conf-file=/dev/null".to_owned(),
        ];
        args.extend(srv.iter().map(|s| format!("--srv-host={s}")));
        let mut dns = Dnsmasq {
            child: None,
            args,
            port,
            hosts: hosts_path,
            log,
            _dir: dir,
        };
        dns.write_hosts(hosts);
        dns.spawn();
        dns
    }

    /// Starts (or starts again) the process, and waits until it has read the hosts file.
    fn spawn(&mut self) {
        let reads = self.log_text().matches("read ").count();
        self.child = Some(
            Command::new(dnsmasq_bin())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq is installed (Debian package dnsmasq)"),
        );
        self.wait_for_log("read ", reads + 1);
    }

    fn write_hosts(&self, text: &str) {
        let tmp = self.hosts.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, marker: &str, times: usize) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.log_text().matches(marker).count() < times {
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not log {marker:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the hosts file and has dnsmasq re-read it.
    fn set_hosts(&self, text: &str) {
        let reads = self.log_text().matches("read ").count();
        self.write_hosts(text);
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for_log("read ", reads + 1);
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Hosts-file lines giving `name` these addresses (last octets).
fn hosts(name: &str, lasts: &[u8]) -> String {
    lasts
        .iter()
        .map(|l| format!("{} {name}\n", ip(*l)))
        .collect()
}

fn alb_with(dns: &Dnsmasq, backends: Value) -> Proc {
    alb(json!({
        "backends": backends,
        "dns": {"servers": [dns.server()], "refresh": "1s"},
        "health_check_interval": 1,
        "strategy": "round_robin",
        "explain": true,
    }))
}

/// The backends that answered `n` requests with 200 (while waiting: some may fail).
async fn answering(alb: &Proc, n: usize) -> HashSet<String> {
    let answers = load(&alb.url(), n, 4).await;
    answers
        .into_iter()
        .filter(|a| a.status == 200)
        .filter_map(|a| a.backend)
        .collect()
}

/// The backends that answered `n` requests, every one of which must succeed.
async fn served_by(alb: &Proc, n: usize) -> HashSet<String> {
    let answers = load(&alb.url(), n, 4).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "every request succeeds: {answers:?}"
    );
    answers.into_iter().filter_map(|a| a.backend).collect()
}

fn named(last: u8, port: u16) -> String {
    format!("{}:{port}", ip(last))
}

/// The `/backends` entry of `name`, if listed.
async fn listed(alb: &Proc, name: &str) -> Option<Value> {
    admin_json(alb, "/backends").await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == name)
        .cloned()
}

#[tokio::test]
async fn an_added_address_takes_traffic_once_its_health_check_passes() {
    let port = free_port();
    let _b11 = backend_at(ip(11), port, &[]);
    let _b12 = backend_at(ip(12), port, &[]);
    let _b13 = backend_at(ip(13), port, &[]);
    let _b14 = backend_at(ip(14), port, &["--unhealthy"]);
    let fixed = backend(&[]);
    let dns = Dnsmasq::start(&hosts("backends.test", &[11, 12]), &[]);
    // A mixed list: a URL and a DNS name.
    let alb = alb_with(
        &dns,
        json!([fixed.url(), {"dns": "backends.test", "port": port}]),
    );
    let first: HashSet<String> = [named(11, port), named(12, port), name(&fixed)].into();
    wait_until("the URL and both addresses serve", WAIT, || async {
        answering(&alb, 12).await == first
    })
    .await;
    let view = listed(&alb, &named(11, port)).await.unwrap();
    assert_eq!(view["dns_name"], "backends.test");
    assert!(listed(&alb, &name(&fixed)).await.unwrap()["dns_name"].is_null());
    let discovery = &admin_json(&alb, "/backends").await["discovery"][0];
    assert_eq!(discovery["key"], "backends[1]");
    assert_eq!(discovery["name"], "backends.test");
    assert_eq!(discovery["record"], "address");
    assert_eq!(
        discovery["addresses"],
        json!([named(11, port), named(12, port)])
    );
    assert!(discovery["last_error"].is_null());

    // .13 is healthy, .14 fails its checks: both are found, only .13 gets traffic.
    dns.set_hosts(&hosts("backends.test", &[11, 12, 13, 14]));
    wait_until("the new addresses are listed", WAIT, || async {
        listed(&alb, &named(14, port)).await.is_some()
    })
    .await;
    let pending = listed(&alb, &named(14, port)).await.unwrap();
    assert_eq!(pending["last_transition"]["source"], "dns", "{pending}");
    let explained = client()
        .get(alb.url())
        .header("x-alb-explain", "1")
        .send()
        .await
        .unwrap();
    let decision = explained.headers()["x-alb-decision"].to_str().unwrap();
    assert!(
        decision.contains(&format!(
            "{}(new, no health check passed yet",
            named(14, port)
        )),
        "{decision}"
    );
    assert!(
        !served_by(&alb, 40).await.contains(&named(14, port)),
        "a found address gets nothing before a health check passes"
    );
    wait_until("the healthy new address takes traffic", WAIT, || async {
        answering(&alb, 12).await.contains(&named(13, port))
    })
    .await;
    assert!(!served_by(&alb, 40).await.contains(&named(14, port)));
    assert!(alb.log_text().contains("DNS: backends changed"));
}

#[tokio::test]
async fn a_removed_address_gets_no_new_requests_and_its_requests_in_flight_finish() {
    let port = free_port();
    let _b11 = backend_at(ip(11), port, &[]);
    let _b12 = backend_at(ip(12), port, &[]);
    // Its requests take long enough to be in flight through the removal.
    let _b13 = backend_at(ip(13), port, &["--delay", "8s"]);
    let dns = Dnsmasq::start(&hosts("slow.test", &[11, 12, 13]), &[]);
    let alb = alb_with(&dns, json!([{"dns": "slow.test", "port": port}]));
    let slow = named(13, port);
    wait_until("all three are in service", WAIT, || async {
        let all = admin_json(&alb, "/backends").await["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["up"] == true)
            .count();
        all == 3
    })
    .await;

    let in_flight = spawn_gets(&alb.url(), 12);
    wait_until(
        "requests are in flight on the slow address",
        WAIT,
        || async {
            listed(&alb, &slow)
                .await
                .is_some_and(|b| b["in_flight"].as_u64().unwrap() > 0)
        },
    )
    .await;
    dns.set_hosts(&hosts("slow.test", &[11, 12]));
    wait_until("the removed address is no longer listed", WAIT, || async {
        listed(&alb, &slow).await.is_none()
    })
    .await;
    let after = served_by(&alb, 30).await;
    assert!(
        !after.contains(&slow),
        "no new request goes to it: {after:?}"
    );

    let mut from_slow = 0;
    for request in in_flight {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "a request in flight failed: {answer:?}");
        from_slow += usize::from(answer.backend.as_deref() == Some(slow.as_str()));
    }
    assert!(
        from_slow > 0,
        "some requests were in flight on the removed address"
    );
    let log = alb.log_text();
    assert!(
        log.lines().any(|l| l.contains("DNS: backends changed")
            && l.split("removed").nth(1).is_some_and(|r| r.contains(&slow))),
        "the removal is logged:\n{log}"
    );
}

#[tokio::test]
async fn a_dns_outage_keeps_the_last_set_and_says_so() {
    let port = free_port();
    let _b11 = backend_at(ip(11), port, &[]);
    let _b12 = backend_at(ip(12), port, &[]);
    let mut dns = Dnsmasq::start(&hosts("down.test", &[11, 12]), &[]);
    let alb = alb_with(&dns, json!([{"dns": "down.test", "port": port}]));
    let both: HashSet<String> = [named(11, port), named(12, port)].into();
    wait_until("both addresses serve", WAIT, || async {
        answering(&alb, 12).await == both
    })
    .await;

    dns.kill();
    wait_until("several lookups have failed", WAIT, || async {
        admin_json(&alb, "/backends").await["discovery"][0]["failures"]
            .as_u64()
            .unwrap()
            >= 3
    })
    .await;
    let discovery = &admin_json(&alb, "/backends").await["discovery"][0];
    assert!(discovery["last_error"].is_string(), "{discovery}");
    assert_eq!(
        discovery["addresses"],
        json!([named(11, port), named(12, port)])
    );
    assert!(discovery["next_refresh_unix"].as_f64().unwrap() > 0.0);
    assert_eq!(
        served_by(&alb, 12).await,
        both,
        "the last set keeps serving"
    );
    let metrics = scrape(&alb).await;
    let errors = sample(
        &metrics,
        r#"lb_dns_lookups_total{name="down.test",result="error"}"#,
    );
    assert!(errors.is_some_and(|n| n >= 3.0), "{metrics}");
    assert_eq!(
        sample(&metrics, r#"lb_dns_addresses{name="down.test"}"#),
        Some(2.0)
    );
    assert_eq!(
        alb.log_text().matches("DNS resolution failed").count(),
        1,
        "one log line for the failure, not one per lookup:\n{}",
        alb.log_text()
    );

    // The server comes back (same port): lookups work again, and that is logged once.
    dns.spawn();
    wait_until("lookups work again", WAIT, || async {
        admin_json(&alb, "/backends").await["discovery"][0]["last_error"].is_null()
    })
    .await;
    assert_eq!(
        alb.log_text().matches("DNS resolution works again").count(),
        1
    );
    assert_eq!(served_by(&alb, 12).await, both);
}

#[tokio::test]
async fn srv_records_give_targets_and_ports() {
    let (p1, p2) = (free_port(), free_port());
    let _b11 = backend_at(ip(11), p1, &[]);
    let _b12 = backend_at(ip(12), p2, &[]);
    let dns = Dnsmasq::start(
        &format!("{}{}", hosts("web1.test", &[11]), hosts("web2.test", &[12])),
        &[
            format!("_http._tcp.svc.test,web1.test,{p1}"),
            format!("_http._tcp.svc.test,web2.test,{p2}"),
        ],
    );
    let alb = alb_with(&dns, json!([{"dns_srv": "_http._tcp.svc.test"}]));
    let both: HashSet<String> = [named(11, p1), named(12, p2)].into();
    wait_until("both SRV targets serve", WAIT, || async {
        answering(&alb, 12).await == both
    })
    .await;
    let discovery = &admin_json(&alb, "/backends").await["discovery"][0];
    assert_eq!(
        discovery["addresses"],
        json!([named(11, p1), named(12, p2)])
    );
    // A backend from SRV is named by its address and shows the target it came from.
    let target = listed(&alb, &named(12, p2)).await.unwrap();
    assert_eq!(target["dns_name"], "web2.test");
    assert_eq!(discovery["record"], "srv");
    assert_eq!(discovery["name"], "_http._tcp.svc.test");
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (json!([{"dns": "a.test"}]), None, "backends[0].port"),
        (
            json!(["http://127.0.0.1:1", {"dns": "a.test", "dns_srv": "_x._tcp.a.test"}]),
            None,
            "backends[1].dns_srv",
        ),
        (
            json!([{"dns_srv": "_x._tcp.a.test", "port": 80}]),
            None,
            "backends[0].port",
        ),
        (
            json!([{"dns": "10.0.0.1", "port": 80}]),
            None,
            "backends[0].dns",
        ),
        (
            json!([{"dns": "bad name!", "port": 80}]),
            None,
            "backends[0].dns",
        ),
        (
            json!([{"dns": "a.test", "port": 80, "ttl": 3}]),
            None,
            "ttl",
        ),
        (
            json!([{"dns": "a.test", "port": 80, "weight": 0}]),
            None,
            "backends[0].weight",
        ),
        (
            json!([{"dns": "a.test", "port": 80}]),
            Some(json!({"servers": ["127.0.0.1:53", "nameserver"]})),
            "dns.servers[1]",
        ),
        (
            json!([{"dns": "a.test", "port": 80}]),
            Some(json!({"servers": []})),
            "dns.servers",
        ),
        (
            json!([{"dns": "a.test", "port": 80}]),
            Some(json!({"refresh": "100ms"})),
            "dns.refresh",
        ),
        (
            json!([{"dns": "a.test", "port": 80}]),
            Some(json!({"retry": "1s"})),
            "retry",
        ),
    ];
    for (i, (backends, dns, key)) in cases.into_iter().enumerate() {
        let mut config = json!({"backends": backends});
        if let Some(dns) = dns {
            config["dns"] = dns;
        }
        let path = write_config(dir.path(), &format!("c{i}.json"), &config.to_string());
        let (code, _, stderr) = alb_output(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{config} was accepted");
        assert!(stderr.contains(key), "{config}: {stderr}");
    }
    // A good one: the effective settings show the DNS entries.
    let good = json!({
        "backends": ["http://127.0.0.1:1", {"dns": "a.test", "port": 80, "weight": 2}],
        "dns": {"servers": ["127.0.0.1"], "refresh": "3s"},
    });
    let path = write_config(dir.path(), "good.json", &good.to_string());
    let (code, stdout, stderr) = alb_output(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("127.0.0.1:53"), "{stdout}");
    assert!(stdout.contains("a.test"), "{stdout}");
}

#[tokio::test]
async fn a_reload_keeps_the_backends_found_by_dns() {
    let port = free_port();
    let _b11 = backend_at(ip(11), port, &[]);
    let _b12 = backend_at(ip(12), port, &[]);
    let dns = Dnsmasq::start(&hosts("kept.test", &[11, 12]), &[]);
    let alb = alb_with(&dns, json!([{"dns": "kept.test", "port": port}]));
    let both: HashSet<String> = [named(11, port), named(12, port)].into();
    wait_until("both addresses serve", WAIT, || async {
        answering(&alb, 12).await == both
    })
    .await;

    let reload = client()
        .post(format!("{}/reload", alb.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    // Right after the swap, with no new lookup needed: the addresses are still there, in
    // service, their state carried over like any backend's.
    for last in [11, 12] {
        let view = listed(&alb, &named(last, port)).await.unwrap();
        assert_eq!(view["up"], true, "{view}");
        assert_eq!(view["last_transition"]["source"], "reload", "{view}");
    }
    assert_eq!(served_by(&alb, 12).await, both);
}

#[tokio::test]
async fn a_dns_change_keeps_the_rate_limit_buckets() {
    let port = free_port();
    let _b11 = backend_at(ip(11), port, &[]);
    let _b12 = backend_at(ip(12), port, &[]);
    let dns = Dnsmasq::start(&hosts("limited.test", &[11]), &[]);
    // One token a second, 100 at most: the bucket cannot refill in the time a DNS change
    // takes (at most `WAIT`, 60 s), but a fresh bucket would let 100 requests through.
    let alb = alb(json!({
        "backends": [{"dns": "limited.test", "port": port}],
        "dns": {"servers": [dns.server()], "refresh": "1s"},
        "health_check_interval": 1,
        "rate_limit": {"requests_per_second": 1, "burst": 100, "key": "global"},
    }));
    wait_until("the first address is in service", WAIT, || async {
        listed(&alb, &named(11, port))
            .await
            .is_some_and(|b| b["up"] == true)
    })
    .await;
    let spent = load(&alb.url(), 150, 4).await;
    assert!(spent.iter().any(|a| a.status == 429), "the bucket is empty");

    dns.set_hosts(&hosts("limited.test", &[11, 12]));
    wait_until("the new address is listed", WAIT, || async {
        listed(&alb, &named(12, port)).await.is_some()
    })
    .await;
    let after = load(&alb.url(), 100, 4).await;
    let limited = after.iter().filter(|a| a.status == 429).count();
    assert!(
        limited > 0,
        "the DNS change refilled the rate-limit bucket: {limited} of 100 limited"
    );
}
