//! The differential HTTP/1.1 conformance suite: ALB, nginx and HAProxy in front of the same
//! kind of recording backend, fed the same raw bytes.
//!
//! Design:
//! - **Request side.** Each proxy gets its own [`backends::Recorder`], a raw TCP backend that
//!   records every byte per connection and answers each request it can read with a fixed
//!   `200`. Every case of [`corpus::requests`] is one write of raw bytes on a fresh client
//!   connection, sent to the three proxies at once. The client reads answers until it has
//!   as many as the case expects or the proxy closes; if nothing comes for a while it
//!   half-closes and waits again (a proxy still waiting for body bytes then sees the end).
//!   The outcome is the statuses the client got and the bytes the backend received during
//!   the case.
//! - **Invariants** ([`invariants::violations`]) are checked on ALB only; the peers are
//!   reported. Every forwarded byte must pass a strict HTTP/1.1 parser ([`wire`]): one
//!   framing (one `Content-Length` of digits or `Transfer-Encoding: chunked`, never both),
//!   CRLF lines, token names, no control characters, so nothing forwarded reads two ways.
//!   Each forwarded request has exactly one `Host`, no hop-by-hop field (nor any the
//!   client's `Connection` named), and exactly the client's bodies (de-chunked); a
//!   malformed request is refused with a 4xx (or 501/505) and no request reaches the
//!   backend (a streamed prefix that the proxy then cuts off by closing the backend
//!   connection is no request: the backend cannot take it for one).
//! - **Response side.** A [`backends::Scripted`] backend answers `/r/N` with the raw bytes of
//!   [`corpus::responses`] case N. The client asks for it (GET: ALB's own client; POST with
//!   a body: hyper-util's), then asks for `/second`. It must get a clean `502` or the correct
//!   relay (or, once the headers are out, a truncated body and a closed connection), then
//!   either a correct `200 second` on the same connection or a closed one; and after an
//!   ambiguous answer ALB must not send `/second` over the same backend connection.
//! - **Findings.** Cases marked `finding` are ALB bugs being fixed on `main`; they are
//!   asserted in `findings_fixed_on_main` only, so the rest stays green meanwhile.
//! - **Report.** One run serves every test (a `OnceLock`), and writes a markdown table to
//!   `ALB_CONFORMANCE_REPORT` or `target/conformance.md`; `docs/conformance.md` is a copy.
//!
//! No assertion depends on timing: waits end on a condition, with generous timeouts.

#[path = "conformance/backends.rs"]
mod backends;
mod common;
#[path = "conformance/corpus.rs"]
mod corpus;
#[path = "conformance/invariants.rs"]
mod invariants;
#[path = "conformance/peers.rs"]
mod peers;
#[path = "conformance/wire.rs"]
mod wire;

use std::{fmt::Write as _, sync::OnceLock, time::Duration};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use backends::{Recorder, Script, Scripted};
use corpus::{Case, ResponseCase};
use invariants::{violations, Ending, Outcome};
use wire::{parse_response, preview, ReadResponse};

/// How long a client waits for an answer before it half-closes, then again after. No case
/// needs either with these three proxies; they are there for a proxy that waits for bytes
/// that never come (hyper drops the answer of a connection half-closed mid-request).
const QUIET: Duration = Duration::from_secs(10);
const AFTER_HALF_CLOSE: Duration = Duration::from_secs(10);
/// How long a client waits for the close a case requires.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a backend must have been quiet before a case's record is taken.
const SETTLE: Duration = Duration::from_millis(100);
const SETTLE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long the response side waits for any one answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

const PROXIES: [&str; 3] = ["ALB", "nginx", "HAProxy"];

/// Everything one run found.
struct Run {
    /// Per request case, the outcome at ALB, nginx and HAProxy.
    requests: Vec<(Case, [Outcome; 3])>,
    /// Per response case, ALB's, nginx's and HAProxy's outcome, each for GET then POST.
    responses: Vec<(ResponseCase, [Checked; 6])>,
    /// What `bad_bodies_eject_the_backend` found.
    ejection: Vec<String>,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        // Its own runtime on its own thread: the backends must outlive any one test's.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(run_everything())
        })
        .join()
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("the conformance run failed: {why}")
        })
    })
}

async fn run_everything() -> Run {
    let requests = run_requests().await;
    let responses = run_responses().await;
    let ejection = bad_bodies_eject_the_backend().await;
    let run = Run {
        requests,
        responses,
        ejection,
    };
    write_report(&run);
    run
}

// === request side ===

async fn run_requests() -> Vec<(Case, [Outcome; 3])> {
    let recorders = [
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    ];
    let alb = common::alb(json!({
        "backends": [format!("http://127.0.0.1:{}", recorders[0].port)],
        "health_check_interval": 3600,
        // Malformed bodies must not take the one backend out and turn every later case
        // into a 503 (see the findings).
        "outlier_detection": {"enabled": false},
    }));
    let nginx = peers::nginx(recorders[1].port);
    let haproxy = peers::haproxy(recorders[2].port);
    let ports = [alb.port, nginx.port, haproxy.port];
    let mut results = Vec::new();
    for case in corpus::requests() {
        let [a, b, c] = [0, 1, 2].map(|i| one_request(ports[i], &recorders[i], &case));
        let (a, b, c) = tokio::join!(a, b, c);
        if std::env::var("ALB_CONFORMANCE_DUMP")
            .is_ok_and(|names| names.split(',').any(|n| n == case.name))
        {
            for (proxy, outcome) in PROXIES.iter().zip([&a, &b, &c]) {
                eprintln!(
                    "{}: {proxy}: {:?} {:?}",
                    case.name, outcome.statuses, outcome.ending
                );
                for delivered in &outcome.forwarded {
                    let closed = if delivered.closed { " (closed)" } else { "" };
                    eprintln!("  forwarded{closed}: {}", delivered.bytes.escape_ascii());
                }
            }
        }
        results.push((case, [a, b, c]));
    }
    results
}

async fn one_request(port: u16, recorder: &Recorder, case: &Case) -> Outcome {
    let mark = recorder.mark();
    let (statuses, ending) = exchange(port, &case.bytes, case.answers, case.must_close).await;
    // A proxy that failed (5xx, or no answer) may still be flushing what it began to forward:
    // wait longer for quiet, so that those bytes count for this case and not the next.
    let failed = statuses.first().is_none_or(|s| *s >= 500);
    recorder
        .settle(if failed { SETTLE_AFTER_FAILURE } else { SETTLE })
        .await;
    Outcome {
        statuses,
        ending,
        forwarded: recorder.since(&mark),
    }
}

/// Sends `bytes` on a new connection and reads answers until `answers` final ones came (and
/// with `until_closed`, the close), the proxy closed, or it stayed quiet even after the
/// client half-closed.
async fn exchange(
    port: u16,
    bytes: &[u8],
    answers: usize,
    until_closed: bool,
) -> (Vec<u16>, Ending) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut buffer = Vec::new();
    let mut statuses = Vec::new();
    let mut half_closed = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            match parse_response(&buffer, false, false) {
                ReadResponse::Final(r, used) => {
                    statuses.push(r.status);
                    buffer.drain(..used);
                }
                ReadResponse::Interim(_, used) => {
                    buffer.drain(..used);
                }
                ReadResponse::Incomplete => break,
                ReadResponse::Garbage(what) => return (statuses, Ending::Garbage(what)),
            }
        }
        let answered = statuses.len() >= answers;
        if answered && !until_closed {
            return (statuses, Ending::Open);
        }
        let wait = match (answered, half_closed) {
            (true, _) => CLOSE_WAIT,
            (false, false) => QUIET,
            (false, true) => AFTER_HALF_CLOSE,
        };
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                if let ReadResponse::Final(r, _) = parse_response(&buffer, true, false) {
                    statuses.push(r.status);
                } else if !buffer.is_empty() && statuses.is_empty() {
                    return (statuses, Ending::Garbage(preview(&buffer)));
                }
                return (statuses, Ending::Closed);
            }
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) if answered => return (statuses, Ending::Open),
            Err(_) if !half_closed => {
                half_closed = true;
                let _ = stream.shutdown().await;
            }
            Err(_) => return (statuses, Ending::TimedOut),
        }
    }
}

// === response side ===

async fn run_responses() -> Vec<(ResponseCase, [Checked; 6])> {
    let cases = corpus::responses();
    let scripts: Vec<Script> = cases
        .iter()
        .map(|c| Script {
            bytes: c.bytes.clone(),
            close: c.close,
        })
        .collect();
    let backends = [
        Scripted::start(scripts.clone()).await,
        Scripted::start(scripts.clone()).await,
        Scripted::start(scripts).await,
    ];
    let alb = common::alb(json!({
        "backends": [format!("http://127.0.0.1:{}", backends[0].port)],
        "health_check_interval": 3600,
        "retries": {"attempts": 0},
        "outlier_detection": {"enabled": false},
    }));
    let nginx = peers::nginx(backends[1].port);
    let haproxy = peers::haproxy(backends[2].port);
    let ports = [alb.port, nginx.port, haproxy.port];
    let mut results = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        // ALB GET, ALB POST, nginx GET, nginx POST, HAProxy GET, HAProxy POST: the three
        // proxies at once, each proxy's two methods one after the other (they share a
        // backend, and the reuse check reads its record).
        let per_proxy = (0..3).map(|p| {
            let (port, backend, case) = (ports[p], &backends[p], &case);
            async move {
                let get = one_response(port, backend, case, i, false).await;
                let post = one_response(port, backend, case, i, true).await;
                [get, post]
            }
        });
        let checked: Vec<Checked> = futures_util::future::join_all(per_proxy)
            .await
            .into_iter()
            .flatten()
            .collect();
        results.push((case, checked.try_into().unwrap()));
    }
    results
}

/// A response case through one proxy with one method: broken invariants, and a summary.
type Checked = (Vec<String>, String);

/// Whether malformed chunked request bodies count as backend failures: with outlier
/// detection on (the default), six of them, then a plain GET. The broken invariants.
async fn bad_bodies_eject_the_backend() -> Vec<String> {
    let recorder = Recorder::start().await;
    let alb = common::alb(json!({
        "backends": [format!("http://127.0.0.1:{}", recorder.port)],
        "health_check_interval": 3600,
    }));
    let bad =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    for _ in 0..6 {
        exchange(alb.port, bad, 1, false).await;
    }
    let (statuses, _) = exchange(alb.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1, false).await;
    if statuses == [200] {
        Vec::new()
    } else {
        vec![format!(
            "after six malformed chunked request bodies a plain GET got {statuses:?}: client errors ejected the backend"
        )]
    }
}

/// What a client read for one request on a connection.
#[derive(Debug)]
enum Read {
    Answer(wire::Response),
    /// The connection ended; with `partial`, in the middle of an answer.
    Closed {
        partial: bool,
    },
    Garbage(String),
    TimedOut,
}

fn request(with_body: bool, path: &str) -> Vec<u8> {
    if with_body {
        format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody").into_bytes()
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
    }
}

async fn ask(stream: &mut TcpStream, bytes: &[u8]) -> Read {
    if stream.write_all(bytes).await.is_err() {
        return Read::Closed { partial: false };
    }
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            match parse_response(&buffer, false, false) {
                ReadResponse::Final(r, used) => {
                    buffer.drain(..used);
                    return Read::Answer(r);
                }
                ReadResponse::Interim(_, used) => {
                    buffer.drain(..used);
                }
                ReadResponse::Incomplete => break,
                ReadResponse::Garbage(what) => return Read::Garbage(what),
            }
        }
        match tokio::time::timeout(ANSWER_WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                // an answer without framing ends with the connection
                if let ReadResponse::Final(r, _) = parse_response(&buffer, true, false) {
                    return Read::Answer(r);
                }
                return Read::Closed {
                    partial: !buffer.is_empty(),
                };
            }
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => return Read::TimedOut,
        }
    }
}

fn show(read: &Read) -> String {
    match read {
        Read::Answer(r) => format!("{} {:?}", r.status, preview(&r.body)),
        Read::Closed { partial: true } => "truncated, closed".into(),
        Read::Closed { partial: false } => "closed".into(),
        Read::Garbage(g) => format!("garbage {g}"),
        Read::TimedOut => "no answer".into(),
    }
}

/// One response case through ALB: violations and a summary.
async fn one_response(
    port: u16,
    scripted: &Scripted,
    case: &ResponseCase,
    index: usize,
    with_body: bool,
) -> (Vec<String>, String) {
    let mut found = Vec::new();
    let path = format!("/r/{index}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let first = ask(&mut stream, &request(with_body, &path)).await;
    match &first {
        Read::Answer(r) if r.status == 502 => {}
        Read::Answer(r)
            if case.relay
                == Some((r.status, std::str::from_utf8(&r.body).unwrap_or("\u{fffd}"))) => {}
        // Headers out (or held back by the server until the first body bytes), then the
        // body broke: closing the client's connection is all that is left.
        Read::Closed { .. } if case.may_truncate => {}
        other => found.push(format!(
            "first answer {}: expected a clean 502{}",
            show(other),
            match case.relay {
                Some((s, b)) => format!(" or {s} {b:?}"),
                None => String::new(),
            }
        )),
    }
    let first_text = show(&first);
    let second = match first {
        Read::Answer(_) => ask(&mut stream, &request(with_body, "/second")).await,
        _ => Read::Closed { partial: false },
    };
    let second = match second {
        Read::Closed { partial: false } => {
            // The proxy closed the client's connection: fine. Ask on a new one, to see
            // which backend connection the next request takes.
            let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let again = ask(&mut fresh, &request(with_body, "/second")).await;
            format!(
                "closed; new connection: {}",
                check_second(&again, &mut found)
            )
        }
        other => check_second(&other, &mut found),
    };
    if !case.reuse_ok {
        let (first_on, second_on) = (
            scripted.connection_of(&path),
            scripted.connection_of("/second"),
        );
        if first_on.is_some() && first_on == second_on {
            found.push("reused the backend connection after an ambiguous answer".into());
        }
    }
    (found, format!("{first_text} / then {second}"))
}

fn check_second(read: &Read, found: &mut Vec<String>) -> String {
    match read {
        Read::Answer(r) if r.status == 200 && r.body == b"second" => "200 second".into(),
        other => {
            found.push(format!(
                "next request got {} instead of 200 \"second\": the connection is out of step",
                show(other)
            ));
            show(other)
        }
    }
}

// === report ===

fn cell(case: &Case, outcome: &Outcome) -> String {
    let broken = violations(case, outcome);
    let mut text = outcome.summary();
    if let Some(first) = broken.first() {
        write!(text, " ✗ {first}").unwrap();
    }
    text.replace('|', "\\|")
}

fn differs(outcomes: &[Outcome; 3]) -> bool {
    let class = |o: &Outcome| (o.statuses.first().copied(), o.messages().0.is_empty());
    class(&outcomes[0]) != class(&outcomes[1]) || class(&outcomes[0]) != class(&outcomes[2])
}

/// Whether the three proxies' first answers differ (by status, or closed vs answered).
fn response_differs(checked: &[Checked; 6]) -> bool {
    let first = |c: &Checked| {
        c.1.split(" / ")
            .next()
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    checked.iter().any(|c| first(c) != first(&checked[0]))
        || checked.iter().any(|c| !c.0.is_empty())
}

fn write_report(run: &Run) {
    let mut md = String::new();
    writeln!(md, "## Requests ({} cases)\n", run.requests.len()).unwrap();
    writeln!(md, "Cells: final statuses (`+` between pipelined answers); `fwd` when the backend received a whole request, `aborted fwd` when it received part of one and then the proxy closed that connection, `bytes fwd` when it received bytes a strict parser refuses; ✗ and the first broken invariant. The last column says why ALB's expected answer is right wherever the three proxies differ.\n").unwrap();
    writeln!(
        md,
        "| case | what the bytes do | {} | {} | {} | why |",
        PROXIES[0], PROXIES[1], PROXIES[2]
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|").unwrap();
    for (case, outcomes) in &run.requests {
        let name = match case.finding {
            Some(_) => format!("`{}` (finding)", case.name),
            None => format!("`{}`", case.name),
        };
        let why = if differs(outcomes) || case.finding.is_some() {
            case.why
        } else {
            ""
        };
        writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            case.what.replace('|', "\\|"),
            cell(case, &outcomes[0]),
            cell(case, &outcomes[1]),
            cell(case, &outcomes[2]),
            why.replace('|', "\\|"),
        )
        .unwrap();
    }
    writeln!(
        md,
        "\n## Responses ({} cases, each for GET and for POST)\n",
        run.responses.len()
    )
    .unwrap();
    writeln!(md, "Cells: the first answer / the next request's answer on the same client connection (or, when it was closed, on a new one); ✗ and the first broken invariant. Through ALB a GET takes ALB's own client, a POST with a body hyper-util's.\n").unwrap();
    writeln!(
        md,
        "| case | what the backend sends | method | ALB | nginx | HAProxy |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|").unwrap();
    for (case, checked) in &run.responses {
        let cell = |(found, summary): &Checked| {
            let mut text = summary.clone();
            if let Some(first) = found.first() {
                write!(text, " ✗ {first}").unwrap();
            }
            text.replace('|', "\\|")
        };
        let name = match case.finding {
            Some(_) => format!("`{}` (finding)", case.name),
            None => format!("`{}`", case.name),
        };
        for (m, method) in ["GET", "POST"].iter().enumerate() {
            writeln!(
                md,
                "| {} | {} | {method} | {} | {} | {} | {} |",
                if m == 0 { name.as_str() } else { "" },
                if m == 0 { case.what } else { "" }.replace('|', "\\|"),
                cell(&checked[m]),
                cell(&checked[2 + m]),
                cell(&checked[4 + m]),
                if m == 0 && response_differs(checked) {
                    case.why
                } else {
                    ""
                },
            )
            .unwrap();
        }
    }
    if !run.ejection.is_empty() {
        writeln!(md, "\n**Finding:** {}", run.ejection.join("; ")).unwrap();
    }
    let path = std::env::var_os("ALB_CONFORMANCE_REPORT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/conformance.md")
        });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, md).unwrap();
    eprintln!("conformance report: {}", path.display());
}

// === the tests ===

/// Every broken invariant of the cases `select` picks, one line each.
fn broken(select: impl Fn(Option<&'static str>) -> bool) -> Vec<String> {
    let run = run();
    let mut all = Vec::new();
    for (case, outcomes) in &run.requests {
        if select(case.finding) {
            let alb = &outcomes[0];
            for v in violations(case, alb) {
                all.push(format!(
                    "request {}: {v} (answers {:?}, {:?})",
                    case.name, alb.statuses, alb.ending
                ));
            }
        }
    }
    for (case, checked) in &run.responses {
        if select(case.finding) {
            for (method, (found, _)) in [("GET", &checked[0]), ("POST", &checked[1])] {
                for v in found {
                    all.push(format!("response {} ({method}): {v}", case.name));
                }
            }
        }
    }
    if select(Some("ejection")) {
        all.extend(run.ejection.iter().cloned());
    }
    all
}

/// Fails listing every invariant ALB broke on the cases `select` picks (by their finding).
fn assert_holds(select: impl Fn(Option<&'static str>) -> bool) {
    let broken = broken(select);
    assert!(
        broken.is_empty(),
        "ALB broke {} invariants:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn alb_holds_every_invariant_on_the_corpus() {
    assert_holds(|finding| finding.is_none());
}

#[test]
fn findings_fixed_on_main() {
    assert_holds(|finding| finding.is_some());
}

#[test]
fn the_corpus_is_large_and_its_names_unique() {
    let cases = corpus::requests();
    assert!(cases.len() >= 60, "{} request cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
}
