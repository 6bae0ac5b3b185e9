//! The live dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against a real `alb` with three simulated backends under load.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian package chromium-driver)");
        wait_for_port(port);
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let http = client();
        // The flags keep Chromium off the network it cannot reach here.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1400,1100",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let created: Value = json_of(http.post(format!("{base}/session")).json(&caps)).await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let r: Value = json_of(self.http.post(url).json(&body)).await;
        r["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    async fn run(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let r: Value = json_of(self.http.get(url)).await;
        base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The backends table as the page shows it: name → request count.
async fn shown(browser: &Browser) -> Vec<(String, u64)> {
    let rows = browser
        .run("return Array.from(document.querySelectorAll('#backends tr')).map(r => [r.dataset.backend, r.querySelector('.requests').textContent]);")
        .await;
    rows.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap().to_owned(),
                        r[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn dashboard_lists_backends_and_counts_rise_under_load() {
    let bs: Vec<Proc> = (0..3).map(|_| backend(&["--delay", "5ms"])).collect();
    let lb = alb(json!({"strategy": "adaptive", "backends": urls(&bs.iter().collect::<Vec<_>>())}));
    let browser = Browser::start().await;
    browser.open(&format!("{}/", lb.admin_url())).await;

    wait_until(
        "the dashboard lists three backends",
        Duration::from_secs(30),
        || async { shown(&browser).await.len() == 3 },
    )
    .await;
    let before = shown(&browser).await;
    let mut names: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    let mut expected: Vec<String> = bs.iter().map(name).collect();
    expected.sort();
    assert_eq!(names, expected);

    let url = lb.url();
    let traffic = tokio::spawn(async move { load(&url, 600, 4).await });
    wait_until(
        "every backend's count rises on the page",
        Duration::from_secs(30),
        || async {
            let now = shown(&browser).await;
            now.len() == 3
                && now
                    .iter()
                    .all(|(n, c)| before.iter().any(|(m, b)| m == n && c > b))
        },
    )
    .await;
    traffic.await.unwrap();
    // the decision stream shows up too
    wait_until("live decisions appear", Duration::from_secs(30), || async {
        browser
            .run("return document.querySelectorAll('#decision-rows tr').length;")
            .await
            .as_u64()
            > Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the charts take a few points
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// `/history` as JSON.
async fn history(lb: &Proc) -> Value {
    admin_json(lb, "/history").await
}

#[tokio::test]
async fn alb_keeps_per_second_samples_of_every_backend() {
    let bs: Vec<Proc> = (0..2).map(|_| backend(&[])).collect();
    let lb = alb(json!({"backends": urls(&bs.iter().collect::<Vec<_>>())}));
    let answers = load(&lb.url(), 40, 2).await;
    assert!(answers.iter().all(|a| a.status == 200));
    wait_until(
        "two samples, the last one counting every request",
        Duration::from_secs(30),
        || async {
            let h = history(&lb).await;
            let samples = h["samples"].as_array().unwrap();
            let counted: u64 = samples.last().map_or(0, |s| {
                bs.iter()
                    .map(|b| s["b"][name(b)]["requests"].as_u64().unwrap_or(0))
                    .sum()
            });
            samples.len() >= 2 && counted == 40
        },
    )
    .await;
    let h = history(&lb).await;
    assert_eq!(h["interval_ms"], 1000);
    let t: Vec<u64> = h["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["t"].as_u64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "oldest first: {t:?}");
}

#[tokio::test]
async fn a_page_opened_later_starts_from_what_alb_kept() {
    let bs: Vec<Proc> = (0..2).map(|_| backend(&[])).collect();
    let lb = alb(json!({"backends": urls(&bs.iter().collect::<Vec<_>>())}));
    load(&lb.url(), 40, 2).await;
    wait_until("ALB has samples", Duration::from_secs(30), || async {
        history(&lb).await["samples"].as_array().unwrap().len() >= 2
    })
    .await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/", lb.admin_url())).await;
    // A sample taken before the page was opened can only come from ALB's history.
    wait_until(
        "the page's charts start before the page did",
        Duration::from_secs(30),
        || async {
            browser
                .run("return history.length > 0 && history[0].t < performance.timeOrigin;")
                .await
                == Value::Bool(true)
        },
    )
    .await;
}

#[tokio::test]
async fn dashboard_shows_routes_with_the_split_in_force_the_canary_and_the_mirror() {
    let (stable, failing, shadow) = (
        backend(&[]),
        backend(&["--error-rate", "1.0"]),
        backend(&[]),
    );
    let lb = alb(json!({
        "pools": {
            "api": {"backends": urls(&[&stable])},
            "api-v2": {"backends": urls(&[&failing])},
            "shadow": {"backends": urls(&[&shadow])}
        },
        "routes": [{"name": "api",
                    "split": [{"pool": "api", "weight": 50}, {"pool": "api-v2", "weight": 50}],
                    "canary": {"pool": "api-v2", "min_requests": 10},
                    "mirror": {"pool": "shadow", "percent": 100, "compare": true}}]
    }));
    // Enough for the canary to be judged and rolled back.
    load(&lb.url(), 60, 2).await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/", lb.admin_url())).await;
    let mut text = String::new();
    for _ in 0..200 {
        text = browser
            .run("return document.getElementById('routes').textContent;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if text.contains("rolled back") && text.contains("compared") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hidden = browser
        .run("return document.getElementById('routes-panel').hidden;")
        .await;
    assert_eq!(hidden, json!(false));
    let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(compact.contains("api 50 / api-v2 0"), "{compact}");
    assert!(compact.contains("rolled back"), "{compact}");
    assert!(compact.contains("error rate 100.0%"), "{compact}");
    assert!(compact.contains("shadow 100%"), "{compact}");
}
