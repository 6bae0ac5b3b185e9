//! What a proxy must guarantee for one request case, judged from what its client got and
//! the exact bytes its backend received (see the test file's docs for the list).

use super::{
    backends::Delivered,
    corpus::{Case, Expect},
    wire::{parse_request, preview, Message, Parsed},
};

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Still open after the expected answers.
    Open,
    /// The proxy closed it (EOF or reset).
    Closed,
    /// Bytes that are no HTTP/1 answer (an HTTP/2 frame, garbage).
    Garbage(String),
    /// No answer even after the client half-closed and waited.
    TimedOut,
}

/// What one proxy did with one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Final statuses, in order.
    pub statuses: Vec<u16>,
    pub ending: Ending,
    /// The bytes the backend received, one entry per backend connection that got any.
    pub forwarded: Vec<Delivered>,
}

impl Outcome {
    /// The forwarded bytes read strictly: the complete messages; the first reason the bytes
    /// could not be read (which makes them readable two ways); and how many messages were
    /// aborted (cut short, then the proxy closed the backend connection: the backend cannot
    /// take those for a request).
    pub fn messages(&self) -> (Vec<Message>, Option<String>, usize) {
        let mut messages = Vec::new();
        let mut aborted = 0;
        for delivered in &self.forwarded {
            let mut rest = delivered.bytes.as_slice();
            while !rest.is_empty() {
                match parse_request(rest) {
                    Parsed::Complete(m, used) => {
                        messages.push(m);
                        rest = &rest[used..];
                    }
                    Parsed::Incomplete { .. } if delivered.closed => {
                        aborted += 1;
                        break;
                    }
                    Parsed::Incomplete { .. } => {
                        let why = format!("an incomplete message, left open: {}", preview(rest));
                        return (messages, Some(why), aborted);
                    }
                    Parsed::Invalid(why) => {
                        return (
                            messages,
                            Some(format!("{why}, in {}", preview(rest))),
                            aborted,
                        )
                    }
                }
            }
        }
        (messages, None, aborted)
    }

    /// One short line for the report: `400`, `200 fwd`, `closed`...
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        match &self.ending {
            Ending::Open => {}
            Ending::Closed if parts.is_empty() => parts.push("closed".into()),
            Ending::Closed => {}
            Ending::Garbage(_) => parts.push("non-HTTP/1 answer".into()),
            Ending::TimedOut => parts.push("no answer".into()),
        }
        let (messages, unreadable, aborted) = self.messages();
        let forwarded = match messages.len() {
            _ if unreadable.is_some() => ", bytes fwd".into(),
            0 if aborted > 0 => ", aborted fwd".into(),
            0 => String::new(),
            1 => ", fwd".into(),
            n => format!(", fwd ×{n}"),
        };
        format!("{}{forwarded}", parts.join("+"))
    }
}

/// A refusal: client error, 501 (unknown coding or method), 505 (version).
pub fn refusal(status: u16) -> bool {
    (400..500).contains(&status) || status == 501 || status == 505
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The field names a client's `Connection` lines list (read leniently from the raw case).
fn connection_tokens(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("connection")
                .then(|| value.to_owned())
        })
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive" && t != "upgrade")
        .collect()
}

/// Every invariant `outcome` breaks for `case`; empty when it holds them all.
pub fn violations(case: &Case, outcome: &Outcome) -> Vec<String> {
    let mut found = Vec::new();
    let (messages, unreadable, _) = outcome.messages();
    let nothing_forwarded = messages.is_empty() && unreadable.is_none();
    if let Some(why) = &unreadable {
        found.push(format!("forwarded bytes a strict parser refuses: {why}"));
    }
    let listed = connection_tokens(&case.bytes);
    for m in &messages {
        let hosts = m.all("host");
        if hosts.len() != 1 {
            found.push(format!("forwarded {} Host fields, not one", hosts.len()));
        } else if let Some(want) = case.host {
            let got = String::from_utf8_lossy(hosts[0]);
            if got != want {
                found.push(format!("forwarded `Host: {got}`, not `Host: {want}`"));
            }
        }
        for (name, _) in &m.headers {
            let allowed = case.upgrade && (name == "connection" || name == "upgrade");
            // Framing and Host are the proxy's own to set, whatever the client listed.
            let own = matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "host"
            );
            if !allowed && (HOP_BY_HOP.contains(&name.as_str()) || (listed.contains(name) && !own))
            {
                found.push(format!("forwarded the hop-by-hop field `{name}`"));
            }
        }
        let sent = case.bytes.split(|b| *b == b' ').next().unwrap_or_default();
        if case.answers == 1 && m.method.as_bytes() != sent {
            found.push(format!(
                "forwarded method `{}`, the client sent `{}`",
                m.method,
                sent.escape_ascii()
            ));
        }
        let asterisk_options = m.method == "OPTIONS" && m.target == "*";
        if !(m.target.starts_with('/') || asterisk_options) {
            found.push(format!(
                "forwarded `{} {}`: no origin-form target",
                m.method, m.target
            ));
        }
    }
    // Sorted: requests of one client connection may reach the backend over several
    // connections, and the record cannot tell their order across connections.
    let mut bodies: Vec<&[u8]> = messages.iter().map(|m| m.body.as_slice()).collect();
    bodies.sort_unstable();
    let same_bodies = |want: &[&str]| {
        let mut want: Vec<&[u8]> = want.iter().map(|w| w.as_bytes()).collect();
        want.sort_unstable();
        want == bodies
    };
    let shown = |want: &[&str]| {
        format!(
            "expected bodies {want:?}, forwarded {:?}",
            bodies_text(&bodies)
        )
    };
    let first = outcome.statuses.first().copied();
    match case.expect {
        Expect::Forward(want) => {
            if !same_bodies(want) {
                found.push(shown(want));
            }
            let ok = outcome
                .statuses
                .iter()
                .filter(|s| (200..300).contains(*s))
                .count();
            if ok < want.len() {
                found.push(format!(
                    "a well-formed request: expected {} 2xx answers, got {:?}",
                    want.len(),
                    outcome.statuses
                ));
            }
        }
        Expect::Refuse(status) => {
            if !nothing_forwarded {
                found.push(format!(
                    "a malformed request was forwarded: {}",
                    preview(&outcome.forwarded[0].bytes)
                ));
            }
            match (first, status) {
                (Some(got), Some(want)) if got != want => {
                    found.push(format!("answered {got}, not {want}"))
                }
                (Some(got), None) if !refusal(got) => {
                    found.push(format!("answered {got}, not a 4xx refusal"))
                }
                (None, _) => found.push("no refusal status, the connection just ended".into()),
                _ => {}
            }
        }
        Expect::Either(want) => {
            if nothing_forwarded {
                if !first.is_some_and(refusal) {
                    found.push(format!(
                        "nothing forwarded, yet no 4xx refusal ({:?}, {:?})",
                        outcome.statuses, outcome.ending
                    ));
                }
            } else if !same_bodies(want) {
                found.push(shown(want));
            }
        }
        Expect::Unforwarded => {
            if !nothing_forwarded {
                found.push(format!(
                    "forwarded bytes that are no HTTP/1 request: {}",
                    preview(&outcome.forwarded[0].bytes)
                ));
            }
        }
    }
    if case.must_close && !outcome.statuses.is_empty() && outcome.ending != Ending::Closed {
        found.push("kept the connection open after a request with both Content-Length and Transfer-Encoding (RFC 9112 §6.1)".into());
    }
    found
}

fn bodies_text(bodies: &[&[u8]]) -> Vec<String> {
    bodies.iter().map(|b| preview(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_skip_the_usual_ones() {
        assert_eq!(
            connection_tokens(
                b"GET / HTTP/1.1\r\nConnection: close, X-Foo\r\nconnection: te\r\n\r\n"
            ),
            vec!["x-foo", "te"]
        );
    }
}
