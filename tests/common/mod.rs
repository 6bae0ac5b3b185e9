//! Shared test harness: real `alb` processes in front of real simulated backends, on free
//! loopback ports. Every process is killed when its handle drops.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The `alb` binary under test.
pub fn alb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_alb")
}

/// A port nobody listens on right now. Ports are handed out from a per-process range so that
/// tests running in parallel in one binary never get the same one, and below Linux's
/// ephemeral range (32768 and up): a port from that range can be taken as the local end of
/// an outgoing connection between this check and the process binding it (a CI run lost an
/// `alb` start to that, port 47607).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 100) as u16 * 100,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until `127.0.0.1:port` accepts connections.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port} after 30 s");
}

/// A child process killed on drop; its stderr goes to a log file kept for failures.
pub struct Proc {
    child: Option<Child>,
    /// The port it serves.
    pub port: u16,
    /// The admin port (`alb run` only; 0 otherwise).
    pub admin_port: u16,
    /// Its stderr.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(args: &[String], port: u16, dir: tempfile::TempDir) -> Proc {
        let log = dir.path().join("stderr.log");
        let child = Command::new(alb_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn alb");
        Proc {
            child: Some(child),
            port,
            admin_port: 0,
            log,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (`TERM`, `HUP`...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        child.wait().ok()?.code()
    }

    /// The config file it was started with (`alb run` only).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("config.json")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Base URL of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `alb backend PORT ARGS...` and waits for it.
pub fn backend_on(port: u16, args: &[&str]) -> Proc {
    let mut all = vec!["backend".to_owned(), port.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let p = Proc::spawn(&all, port, tempfile::tempdir().unwrap());
    wait_for_port(port);
    p
}

/// Starts `alb backend PORT --bind IP ARGS...` (any address of 127.0.0.0/8) and waits for it.
pub fn backend_at(ip: IpAddr, port: u16, args: &[&str]) -> Proc {
    let mut all = vec![
        "backend".to_owned(),
        port.to_string(),
        "--bind".to_owned(),
        ip.to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let p = Proc::spawn(&all, port, tempfile::tempdir().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {ip}:{port} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Starts a simulated backend on a free port.
pub fn backend(args: &[&str]) -> Proc {
    backend_on(free_port(), args)
}

/// The `backends` config value for these simulated backends.
pub fn urls(backends: &[&Proc]) -> Value {
    backends.iter().map(|b| Value::from(b.url())).collect()
}

/// Writes `config` (with a free `port` added unless given) and starts `alb run` on it.
pub fn alb(mut config: Value) -> Proc {
    let port = match config.get("port") {
        Some(p) => p.as_u64().unwrap() as u16,
        None => {
            let p = free_port();
            config["port"] = p.into();
            p
        }
    };
    let admin_port = match config.get("admin_addr") {
        Some(a) => a
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        None => {
            let p = free_port();
            config["admin_addr"] = format!("127.0.0.1:{p}").into();
            p
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let mut p = Proc::spawn(&args, port, dir);
    p.admin_port = admin_port;
    wait_for_port(port);
    wait_for_port(admin_port);
    p
}

/// Runs `alb ARGS` to completion; returns (exit code, stdout, stderr).
pub fn alb_output(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(alb_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A plain HTTP client with a generous timeout.
pub fn client() -> reqwest::Client {
    client_from(None)
}

/// A client whose connections come from `source` (any address in 127.0.0.0/8 is local).
pub fn client_from(source: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

/// One response, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `x-alb-backend`, if present.
    pub backend: Option<String>,
    /// Body text.
    pub body: String,
}

/// GETs `url` and reduces the answer.
pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    let r = client.get(url).send().await.expect("request failed");
    let status = r.status().as_u16();
    let backend = r
        .headers()
        .get("x-alb-backend")
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status,
        backend,
        body: r.text().await.unwrap_or_default(),
    }
}

/// Sends `total` GETs to `url` from `concurrency` workers, each sending its next request as
/// soon as its previous one is answered; returns every answer.
pub async fn load(url: &str, total: usize, concurrency: usize) -> Vec<Answer> {
    let client = client();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| async {
        let mut mine = Vec::new();
        while next.fetch_add(1, Ordering::Relaxed) < total {
            mine.push(get(&client, url).await);
        }
        mine
    });
    futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How many answers each backend (`host:port`) gave.
pub fn shares(answers: &[Answer]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.backend.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// The `x-alb-backend` name of a simulated backend.
pub fn name(p: &Proc) -> String {
    format!("127.0.0.1:{}", p.port)
}

/// Polls `condition` until it holds or `timeout` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting until {what}");
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads lines of a child's stdout until one contains `marker`; returns that line.
pub fn read_until(reader: &mut BufReader<std::process::ChildStdout>, marker: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("stdout ended before a line containing {marker:?}");
        }
        if line.contains(marker) {
            return line.trim().to_owned();
        }
    }
}

/// Parses `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The admin `/metrics` exposition of an `alb`.
pub async fn scrape(alb: &Proc) -> String {
    client()
        .get(format!("{}/metrics", alb.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line (`name{labels} value`) in an exposition, if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Sends `request` and parses the answer as JSON (panics on any failure: tests only).
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// GETs an admin path of an `alb` and parses the JSON answer.
pub async fn admin_json(alb: &Proc, path: &str) -> serde_json::Value {
    json_of(client().get(format!("{}{path}", alb.admin_url()))).await
}

/// Requests in flight over all backends, as `/backends` reports them.
pub async fn in_flight_total(alb: &Proc) -> u64 {
    admin_json(alb, "/backends").await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["in_flight"].as_u64().unwrap())
        .sum()
}

/// Starts `n` concurrent GETs of `url` in the background (to hold backends busy).
pub fn spawn_gets(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect()
}
