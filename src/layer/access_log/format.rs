//! The two line formats: JSON lines (one object per request, for Loki, Elasticsearch, jq)
//! and nginx's and Apache's `combined`, so GoAccess, AWStats and every log parser written
//! for those servers read ALB's log unchanged.
//!
//! No header but `User-Agent` and `Referer` is ever written: `Authorization`, `Cookie` and
//! the like cannot reach the log.

use std::{
    io::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// One finished request, borrowed from what the layer kept.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the request arrived, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The client address (after `trusted_proxies`).
    pub client: Option<IpAddr>,
    /// The method.
    pub method: &'a str,
    /// Path and query, as the client sent them.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: &'static str,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// From arrival to the response's last byte, in milliseconds.
    pub duration_ms: f64,
    /// From handing the request to the backend to its response headers, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// The backend that answered (`host:port`).
    pub backend: Option<&'a str>,
    /// The routing decision's id, as in `/decisions`.
    pub decision_id: Option<u64>,
    /// The route that matched.
    pub route: Option<&'a str>,
    /// The pool that decided.
    pub pool: Option<&'a str>,
    /// The request id (`x-request-id`).
    pub request_id: Option<&'a str>,
    /// The request went to a second backend after the first failed.
    pub retried: bool,
    /// Its failure ejected the backend (passive outlier detection).
    pub outlier_ejected: bool,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// `Referer`.
    pub referer: Option<&'a str>,
    /// The TLS version, when the client came over TLS.
    pub tls: Option<&'a str>,
}

/// Milliseconds with microsecond precision.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1e3
}

/// RFC 3339 in UTC with milliseconds: `2026-11-27T13:26:39.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Appends the JSON line (with its newline).
pub fn json(entry: &Entry<'_>, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, entry).is_ok() {
        out.push(b'\n');
    }
}

/// Appends the `combined` line (with its newline):
/// `client - - [27/Nov/2026:13:26:39 +0000] "GET /p HTTP/1.1" 200 12 "referer" "agent"`.
pub fn combined(entry: &Entry<'_>, out: &mut Vec<u8>) {
    let client = entry
        .client
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    let _ = write!(out, "{client} - - [{}] \"", clf_time(&entry.time));
    escaped(entry.method, out);
    out.push(b' ');
    escaped(entry.path, out);
    let _ = write!(
        out,
        " {}\" {} {} \"",
        entry.protocol, entry.status, entry.bytes_sent
    );
    escaped(entry.referer.unwrap_or("-"), out);
    out.extend_from_slice(b"\" \"");
    escaped(entry.user_agent.unwrap_or("-"), out);
    out.extend_from_slice(b"\"\n");
}

/// `27/Nov/2026:13:26:39 +0000` from `2026-11-27T13:26:39.123Z`.
fn clf_time(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let part = |range: std::ops::Range<usize>| rfc3339.get(range).unwrap_or("00");
    let month = part(5..7).parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}/{}/{}:{} +0000",
        part(8..10),
        MONTHS[month - 1],
        part(0..4),
        part(11..19)
    )
}

/// Writes `text` with `"`, `\` and anything outside printable ASCII as `\xHH`, as nginx
/// escapes its log variables, so a line always splits the same way.
fn escaped(text: &str, out: &mut Vec<u8>) {
    for b in text.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, agent: Option<&'a str>) -> Entry<'a> {
        Entry {
            time: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_786_000_123)),
            client: Some("127.0.0.9".parse().unwrap()),
            method: "GET",
            path,
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 12,
            bytes_received: 0,
            duration_ms: 1.5,
            upstream_ms: Some(1.25),
            backend: Some("127.0.0.1:8081"),
            route: Some("api"),
            pool: Some("api-v2"),
            decision_id: Some(7),
            request_id: Some("abc"),
            retried: false,
            outlier_ejected: false,
            user_agent: agent,
            referer: None,
            tls: None,
        }
    }

    #[test]
    fn combined_is_nginx_combined() {
        let mut out = Vec::new();
        combined(&entry("/a?b=1", Some("curl/8.0")), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.9 - - [27/Nov/2026:13:26:40 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \"curl/8.0\"\n"
        );
    }

    #[test]
    fn combined_escapes_what_would_split_a_line() {
        let mut out = Vec::new();
        combined(&entry("/\"x", Some("evil\"\nagent")), &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            line.contains("/\\x22x") && line.contains("evil\\x22\\x0Aagent"),
            "{line}"
        );
    }

    #[test]
    fn json_is_one_parseable_line() {
        let mut out = Vec::new();
        json(&entry("/a", None), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2026-11-27T13:26:40.123Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "127.0.0.1:8081");
        assert_eq!(
            (&v["route"], &v["pool"]),
            (&serde_json::json!("api"), &serde_json::json!("api-v2"))
        );
        assert_eq!(v["decision_id"], 7);
    }
}
