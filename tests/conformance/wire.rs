//! HTTP/1.1 on the wire, read two ways.
//!
//! - [`parse_request`] is deliberately *strict* (RFC 9112 with every leniency turned off):
//!   CRLF only, no obs-fold, token header names, no control characters, one `Content-Length`
//!   of plain digits or one `Transfer-Encoding: chunked` and never both, plain hex chunk
//!   sizes. A message a proxy forwards must pass it: anything it refuses is something a
//!   lenient backend could read differently from a strict one.
//! - [`parse_response`] reads what a proxy answers its client, well enough to count answers
//!   and compare bodies; it only has to follow the framing, not judge it.

/// One request as the strict parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header names lowercased, values as sent (trimmed of OWS).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Message {
    /// Every value of header `name` (lowercase).
    pub fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The only value of header `name`, if it appears exactly once.
    pub fn one(&self, name: &str) -> Option<String> {
        match self.all(name).as_slice() {
            [v] => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        }
    }
}

/// What the strict parser made of the front of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole message and the bytes it took.
    Complete(Message, usize),
    /// Not all there yet; `continue_wanted`: the head is complete and asks for
    /// `100-continue`.
    Incomplete { continue_wanted: bool },
    /// Not a valid HTTP/1.1 request under the strict rules.
    Invalid(String),
}

/// `tchar` of RFC 9110 §5.6.2.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits one CRLF-terminated line off `buf` at `pos`: `Ok(Some((line, next)))`, `Ok(None)`
/// when no line end has arrived yet, `Err` on a bare CR or a bare LF.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[pos..];
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\n' => return Err(format!("bare LF at byte {}", pos + i)),
            b'\r' => {
                return match rest.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((&rest[..i], pos + i + 2))),
                    Some(_) => Err(format!("bare CR at byte {}", pos + i)),
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// A `field-line` (RFC 9112 §5): token name, colon with no whitespace before it, value of
/// visible characters, SP, HTAB or obs-text, trimmed.
fn field_line(l: &[u8]) -> Result<(String, Vec<u8>), String> {
    let shown = String::from_utf8_lossy(l);
    if l.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(format!("obs-fold or leading whitespace: {shown:?}"));
    }
    let colon = l
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| format!("field line without colon: {shown:?}"))?;
    let name = &l[..colon];
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(format!("bad field name: {shown:?}"));
    }
    let value = l[colon + 1..].trim_ascii();
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(format!("control character in field value: {shown:?}"));
    }
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        value.to_vec(),
    ))
}

/// Parses one request from the front of `buf` under the strict rules (see the module docs).
pub fn parse_request(buf: &[u8]) -> Parsed {
    match parse_request_inner(buf) {
        Ok(p) => p,
        Err(e) => Parsed::Invalid(e),
    }
}

fn parse_request_inner(buf: &[u8]) -> Result<Parsed, String> {
    let incomplete = Ok(Parsed::Incomplete {
        continue_wanted: false,
    });
    let Some((request_line, mut pos)) = line(buf, 0)? else {
        return incomplete;
    };
    let parts: Vec<&[u8]> = request_line.split(|b| *b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(format!(
            "request line is not METHOD SP TARGET SP VERSION: {:?}",
            String::from_utf8_lossy(request_line)
        ));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err("method is not a token".into());
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err("request target has invalid characters".into());
    }
    if *version != b"HTTP/1.1" && *version != b"HTTP/1.0" {
        return Err(format!(
            "bad version {:?}",
            String::from_utf8_lossy(version)
        ));
    }
    let mut headers = Vec::new();
    loop {
        let Some((l, next)) = line(buf, pos)? else {
            return incomplete;
        };
        pos = next;
        if l.is_empty() {
            break;
        }
        headers.push(field_line(l)?);
    }
    let mut message = Message {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version: String::from_utf8_lossy(version).into_owned(),
        headers,
        body: Vec::new(),
        chunked: false,
    };
    let continue_wanted = message
        .one("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    let lengths = message.all("content-length");
    let codings = message.all("transfer-encoding");
    let body_start = pos;
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => {}
        ([_, ..], [_, ..]) => return Err("both Content-Length and Transfer-Encoding".into()),
        ([length], []) => {
            if length.is_empty() || !length.iter().all(u8::is_ascii_digit) || length.len() > 15 {
                return Err(format!(
                    "Content-Length is not 1*DIGIT: {:?}",
                    String::from_utf8_lossy(length)
                ));
            }
            let n: usize = std::str::from_utf8(length).unwrap().parse().unwrap();
            if buf.len() < body_start + n {
                return Ok(Parsed::Incomplete { continue_wanted });
            }
            message.body = buf[body_start..body_start + n].to_vec();
            pos = body_start + n;
        }
        ([], [coding]) => {
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(format!(
                    "Transfer-Encoding other than exactly chunked: {:?}",
                    String::from_utf8_lossy(coding)
                ));
            }
            message.chunked = true;
            match dechunk(buf, body_start, &mut message.body)? {
                Some(end) => pos = end,
                None => return Ok(Parsed::Incomplete { continue_wanted }),
            }
        }
        _ => return Err("more than one Content-Length or Transfer-Encoding field".into()),
    }
    Ok(Parsed::Complete(message, pos))
}

/// `chunk-ext` (RFC 9112 §7.1.1) without BWS: `;token[=token|quoted-string]`, repeated.
fn chunk_ext_ok(ext: &[u8]) -> bool {
    let mut rest = ext;
    while !rest.is_empty() {
        let Some(r) = rest.strip_prefix(b";") else {
            return false;
        };
        let name_len = r.iter().take_while(|b| is_tchar(**b)).count();
        if name_len == 0 {
            return false;
        }
        rest = &r[name_len..];
        if let Some(r) = rest.strip_prefix(b"=") {
            if let Some(q) = r.strip_prefix(b"\"") {
                let mut i = 0;
                loop {
                    match q.get(i) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => i += 2,
                        Some(b) if *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80 => i += 1,
                        Some(_) => return false,
                    }
                }
                rest = &q[i + 1..];
            } else {
                let len = r.iter().take_while(|b| is_tchar(**b)).count();
                if len == 0 {
                    return false;
                }
                rest = &r[len..];
            }
        }
    }
    true
}

/// Decodes a chunked body starting at `pos` into `out`; the end of the message, or `None`
/// when it has not all arrived.
fn dechunk(buf: &[u8], mut pos: usize, out: &mut Vec<u8>) -> Result<Option<usize>, String> {
    loop {
        let Some((size_line, next)) = line(buf, pos)? else {
            return Ok(None);
        };
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 15 {
            return Err(format!(
                "bad chunk size {:?}",
                String::from_utf8_lossy(size_line)
            ));
        }
        if !chunk_ext_ok(&size_line[digits..]) {
            return Err(format!(
                "bad chunk extension {:?}",
                String::from_utf8_lossy(size_line)
            ));
        }
        let size =
            usize::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16).unwrap();
        pos = next;
        if size == 0 {
            // trailer section: field lines up to an empty line
            loop {
                let Some((l, next)) = line(buf, pos)? else {
                    return Ok(None);
                };
                pos = next;
                if l.is_empty() {
                    return Ok(Some(pos));
                }
                let (name, _) = field_line(l)?;
                if matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "host" | "trailer"
                ) {
                    return Err(format!("framing or routing field in trailers: {name}"));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += 2;
    }
}

/// One answer as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the response reader made of the front of a buffer.
#[derive(Debug)]
pub enum ReadResponse {
    /// A final answer and the bytes it took.
    Final(Response, usize),
    /// An interim `1xx` answer and the bytes it took.
    Interim(u16, usize),
    /// More bytes needed (with `eof`: the answer was cut short).
    Incomplete,
    /// Not an HTTP/1.x answer.
    Garbage(String),
}

/// Reads one answer from the front of `buf`. `eof`: no more bytes will come (an answer
/// without framing ends here). `head_request`: the answer to a HEAD has no body.
pub fn parse_response(buf: &[u8], eof: bool, head_request: bool) -> ReadResponse {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return ReadResponse::Garbage(preview(buf));
        }
        return ReadResponse::Incomplete;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") && code.len() == 3 => {
            match code.parse::<u16>() {
                Ok(c) => c,
                Err(_) => return ReadResponse::Garbage(preview(buf)),
            }
        }
        _ => return ReadResponse::Garbage(preview(buf)),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let start = end + 4;
    if (100..200).contains(&status) && status != 101 {
        return ReadResponse::Interim(status, start);
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let no_body = head_request || status == 204 || status == 304 || status == 101;
    let (body, used) = if no_body {
        (Vec::new(), start)
    } else if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        match dechunk(buf, start, &mut body) {
            Ok(Some(end)) => (body, end),
            Ok(None) => return ReadResponse::Incomplete,
            Err(e) => return ReadResponse::Garbage(e),
        }
    } else if let Some(length) = header("content-length") {
        let Ok(n) = length.parse::<usize>() else {
            return ReadResponse::Garbage(format!("content-length {length:?}"));
        };
        if buf.len() < start + n {
            return ReadResponse::Incomplete;
        }
        (buf[start..start + n].to_vec(), start + n)
    } else if eof {
        (buf[start..].to_vec(), buf.len())
    } else {
        return ReadResponse::Incomplete;
    };
    ReadResponse::Final(
        Response {
            status,
            headers,
            body,
        },
        used,
    )
}

/// The start of `bytes`, printable, for messages.
pub fn preview(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(48)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if bytes.len() > 48 {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Message {
        match parse_request(bytes) {
            Parsed::Complete(m, used) => {
                assert_eq!(used, bytes.len());
                m
            }
            other => panic!("{other:?}"),
        }
    }

    fn invalid(bytes: &[u8]) {
        assert!(
            matches!(parse_request(bytes), Parsed::Invalid(_)),
            "{:?} was accepted",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn the_strict_parser_accepts_plain_messages_and_refuses_the_lenient_ones() {
        let m = complete(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(m.body, b"hello");
        let m = complete(
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\"\r\nhello\r\n0\r\nX: y\r\n\r\n",
        );
        assert_eq!(m.body, b"hello");
        invalid(b"GET / HTTP/1.1\nHost: x\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        invalid(b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx");
        invalid(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        invalid(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\"\r\nx\r\n0\r\n\r\n");
        assert!(matches!(
            parse_request(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhe"
            ),
            Parsed::Incomplete {
                continue_wanted: true
            }
        ));
    }

    #[test]
    fn the_response_reader_follows_every_framing() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let ReadResponse::Interim(100, used) = parse_response(r, false, false) else {
            panic!()
        };
        let ReadResponse::Final(resp, rest) = parse_response(&r[used..], false, false) else {
            panic!()
        };
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(used + rest, r.len());
    }
}
