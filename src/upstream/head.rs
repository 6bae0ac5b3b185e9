//! HTTP/1.1 message heads on the wire: the request head `alb` writes and the response head
//! it reads (RFC 9112), with the body framing the response announces.
//!
//! Response header values are slices of the frozen read buffer, so parsing allocates no
//! memory per header value (hyper's client does the same).

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Version,
};

use crate::semantics::is_hop_by_hop;

/// Most headers a backend's response head may carry (hyper's limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// At most how many headers ALB adds to an answer after its head is read (`x-alb-backend`,
/// `x-alb-route`, `x-alb-pool`, `x-request-id`, `x-alb-decision`): the parsed map is made
/// with this much room to spare, so those inserts never reallocate it.
pub const ANSWER_HEADERS_ADDED: usize = 5;

/// Largest response head accepted from a backend, in bytes.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// Writes `METHOD path HTTP/1.1`, the headers, and the blank line into `out`.
///
/// The request must already be rewritten for the backend (`forward::rewrite_request`):
/// `Host` set, hop-by-hop headers gone. Its body is empty (for one with a body see
/// [`encode_request_with_length`]); methods whose requests normally carry a body get
/// `Content-Length: 0`, so the backend does not wait for one.
///
/// Exactly one `Host` goes out (RFC 9112 §3.2): the first when the client sent several (the
/// one `X-Forwarded-Host` copies), the URI's authority when it sent none (what hyper's
/// client writes on the other path).
pub fn encode_request<B>(request: &Request<B>, out: &mut BytesMut) {
    encode_head(request, None, None, out)
}

/// [`encode_request`] for a request whose body of `length` bytes follows the head: exactly
/// one `content-length: <length>` goes out, whatever `Content-Length` fields the request
/// carried (they were checked against `length`, see `upstream::declared_length`; two equal
/// fields forwarded as they came would be two framings to a strict recipient).
pub fn encode_request_with_length<B>(request: &Request<B>, length: u64, out: &mut BytesMut) {
    encode_head(request, None, Some(length), out)
}

/// How a request's fields change on their way to a backend, applied while its head is
/// written: the received `HeaderMap` is read once and left as it is. `forward` builds one
/// (`forward::encode_forwarded_head`) with the same outcome as rewriting the map first;
/// inserting into the map only to encode it afterwards costs more than the encoding.
pub struct FieldRewrite<'a> {
    /// The `Host` to send, in place of every received `Host`.
    pub host: &'a [u8],
    /// Which received fields to leave out.
    pub skip: &'a dyn Fn(&HeaderName) -> bool,
    /// Fields written after the received ones, as `(name, value)`.
    pub added: &'a [(&'a HeaderName, &'a [u8])],
}

/// [`encode_request`] with `rewrite` applied to the fields, and for a body of `length`
/// bytes when there is one ([`encode_request_with_length`]).
pub fn encode_request_rewritten<B>(
    request: &Request<B>,
    rewrite: &FieldRewrite<'_>,
    length: Option<u64>,
    out: &mut BytesMut,
) {
    encode_head(request, Some(rewrite), length, out)
}

fn encode_head<B>(
    request: &Request<B>,
    rewrite: Option<&FieldRewrite<'_>>,
    length: Option<u64>,
    out: &mut BytesMut,
) {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = request.headers();
    if out.capacity() == 0 {
        // One allocation of the right size (`reserve` on an empty buffer would take the
        // longer way through `BytesMut::reserve_inner`). A caller that gives a buffer with
        // room has sized it already (`send_with_body`, with `head_bound`).
        *out = BytesMut::with_capacity(head_bound(request, rewrite));
    }
    out.put_slice(request.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut host_written = false;
    let mut length_written = false;
    if let Some(rewrite) = rewrite {
        put_field(out, b"host", rewrite.host);
        host_written = true;
    }
    for (name, value) in headers {
        if name == header::HOST {
            if host_written {
                continue;
            }
            host_written = true;
        } else if rewrite.is_some_and(|rewrite| (rewrite.skip)(name)) {
            continue;
        } else if name == header::CONTENT_LENGTH {
            if length.is_some() {
                continue;
            }
            length_written = true;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in rewrite.map_or(&[][..], |rewrite| rewrite.added) {
        put_field(out, name.as_str().as_bytes(), value);
    }
    if !host_written {
        if let Some(authority) = request.uri().authority() {
            put_field(out, b"host", authority.as_str().as_bytes());
        }
    }
    match length {
        Some(length) => {
            out.put_slice(b"content-length: ");
            put_decimal(out, length);
            out.put_slice(b"\r\n");
        }
        None => {
            let expects_body = matches!(
                *request.method(),
                Method::POST | Method::PUT | Method::PATCH
            );
            if expects_body && !length_written {
                out.put_slice(b"content-length: 0\r\n");
            }
        }
    }
    out.put_slice(b"\r\n");
}

/// At most how many bytes [`encode_head`] writes for `request`, so that its buffer is
/// allocated once and never grown (growing it cost a second allocation and a copy on every
/// forwarded request): the request line, every received field (counting the ones `rewrite`
/// skips too costs less than asking it), the added fields, a `host` from the URI and a
/// `content-length` of up to 20 digits.
pub(crate) fn head_bound<B>(request: &Request<B>, rewrite: Option<&FieldRewrite<'_>>) -> usize {
    const LINE: usize = ": \r\n".len();
    let field = |name: &HeaderName, value: usize| name.as_str().len() + LINE + value;
    let received: usize = request
        .headers()
        .iter()
        .map(|(name, value)| field(name, value.len()))
        .sum();
    let added = rewrite.map_or(0, |rewrite| {
        "host".len()
            + LINE
            + rewrite.host.len()
            + rewrite
                .added
                .iter()
                .map(|(name, value)| field(name, value.len()))
                .sum::<usize>()
    });
    let authority = request.uri().authority().map_or(0, |authority| {
        "host".len() + LINE + authority.as_str().len()
    });
    let path = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + " ".len() + path + " HTTP/1.1\r\n".len();
    let length = "content-length: ".len() + 20 + "\r\n".len();
    line + received + added + authority + length + "\r\n".len()
}

/// One `name: value` line.
fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes `n` in decimal (no `fmt`, no allocation).
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// The length a request's `Content-Length` fields announce: every field 1*DIGIT, all equal.
/// `None` when there is none, or one is malformed or disagrees.
pub fn request_content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = content_length(value.as_bytes())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a `HEAD` request, or a `204` or `304` answer.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, headers (hop-by-hop ones still in), version HTTP/1.1.
    pub response: Response<()>,
    /// How the body that follows is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub reusable: bool,
}

/// Why a response head was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or a malformed line.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// More than [`MAX_RESPONSE_HEAD_BYTES`].
    #[error("response head larger than {MAX_RESPONSE_HEAD_BYTES} bytes")]
    TooLarge,
    /// An invalid or contradictory `Content-Length`, or a bad header.
    #[error("invalid response header {0}")]
    InvalidHeader(&'static str),
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
}

// Not `#[from]`: that would make httparse's bare "invalid HTTP version" the root cause that
// error messages show, without saying it was the response head.
impl From<httparse::Error> for HeadError {
    fn from(error: httparse::Error) -> Self {
        HeadError::Malformed(error)
    }
}

/// Byte ranges of one header within the head, recorded while `httparse` borrows the buffer.
/// `u32` offsets keep the array small: it is zeroed for every response.
#[derive(Clone, Copy, Default)]
struct HeaderIndex {
    name: (u32, u32),
    value: (u32, u32),
}

impl HeaderIndex {
    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Parses a response head from the front of `buf`, consuming it. `Ok(None)`: incomplete,
/// read more. Interim `1xx` responses (other than `101`) are consumed and skipped.
pub fn parse_response(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        // Uninitialised slots: httparse fills only what it uses (no 3 KiB memset per parse).
        let mut slots =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut indices = [HeaderIndex::default(); MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        )? {
            httparse::Status::Partial if buf.len() > MAX_RESPONSE_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            httparse::Status::Partial => return Ok(None),
            // A whole head that arrived in one read is held to the same limit as one that
            // trickles in: the answer must not depend on how the bytes were split.
            httparse::Status::Complete(length) if length > MAX_RESPONSE_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            httparse::Status::Complete(length) => length,
        };
        let code = parsed.code.unwrap_or_default();
        let minor_version = parsed.version.unwrap_or_default();
        let count = parsed.headers.len();
        // Offsets fit in u32: the head is at most MAX_RESPONSE_HEAD_BYTES long.
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (index, h) in indices.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            *index = HeaderIndex {
                name: (name, name + h.name.len() as u32),
                value: (value, value + h.value.len() as u32),
            };
        }
        let head = buf.split_to(length).freeze();
        match code {
            101 => return Err(HeadError::UnexpectedUpgrade),
            100..=199 => continue,
            _ => {}
        }
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::InvalidHeader(":status"))?;
        return build(
            &head,
            &indices[..count],
            status,
            minor_version,
            request_method,
        )
        .map(Some);
    }
}

fn build(
    head: &Bytes,
    indices: &[HeaderIndex],
    status: StatusCode,
    minor_version: u8,
    request_method: &Method,
) -> Result<ResponseHead, HeadError> {
    // Room for the headers ALB adds on the way back, so adding them never grows the map.
    let mut headers = HeaderMap::with_capacity(indices.len() + ANSWER_HEADERS_ADDED);
    let mut connection = ConnectionTokens::default();
    let mut transfer_encoding = TransferCodings::default();
    let mut content_length = ContentLength::default();
    for index in indices {
        let name = HeaderName::from_bytes(&head[index.name()])
            .map_err(|_| HeadError::InvalidHeader("name"))?;
        let raw = &head[index.value()];
        // Hop-by-hop headers describe this connection: read for framing and keep-alive,
        // not passed on (what `forward::strip_hop_by_hop` does for hyper's responses).
        if name == header::CONNECTION {
            connection.add(raw);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            transfer_encoding.add(raw);
            continue;
        }
        if is_hop_by_hop(&name) {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            content_length.add(raw);
        }
        let value = HeaderValue::from_maybe_shared(head.slice(index.value()))
            .map_err(|_| HeadError::InvalidHeader("value"))?;
        headers.append(name, value);
    }
    if minor_version == 0 && transfer_encoding.present {
        // RFC 9112 §6.1: HTTP/1.0 has no transfer codings, so the framing is faulty (hyper's
        // client refuses such a response too).
        return Err(HeadError::InvalidHeader("transfer-encoding"));
    }
    // Framing first, from the headers as received: a `Connection` header that lists
    // `Content-Length` must not turn a length-delimited body into one read until close.
    // Both framings: chunked wins, but the connection is not trusted with another request
    // (RFC 9112 §6.3: a recipient "ought to" treat it as an error and close; an intermediary
    // that read it the other way could be out of step with us).
    let both_framings = transfer_encoding.present && content_length.seen;
    let framing = framing(
        &mut headers,
        transfer_encoding,
        content_length,
        status,
        request_method,
    )?;
    if connection.lists_others {
        // Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). Rare: a second pass.
        for index in indices {
            if head[index.name()].eq_ignore_ascii_case(b"connection") {
                for token in head[index.value()].split(|b| *b == b',') {
                    if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                        headers.remove(name);
                    }
                }
            }
        }
    }
    let reusable = if minor_version == 0 {
        connection.keep_alive
    } else {
        !connection.close
    };
    let reusable = reusable && framing != Framing::UntilClose && !both_framings;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = headers;
    Ok(ResponseHead {
        response,
        framing,
        reusable,
    })
}

/// What the `Connection` headers of a response say.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// Names other than `close` and `keep-alive`: headers that must not be passed on.
    lists_others: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                self.lists_others = true;
            }
        }
    }
}

/// What the `Transfer-Encoding` headers of a response say, all field lines taken as one
/// list (RFC 9110 §5.3).
#[derive(Default, Clone, Copy)]
struct TransferCodings {
    present: bool,
    /// Whether the last coding is `chunked`; empty list elements are ignored (RFC 9110
    /// §5.6.1), so `chunked,` still ends in `chunked`.
    chunked_last: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        let last = value
            .split(|b| *b == b',')
            .map(trim_whitespace)
            .rfind(|coding| !coding.is_empty());
        if let Some(coding) = last {
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
        }
    }
}

/// `bytes` without leading and trailing spaces and tabs (RFC 9110 OWS).
fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// A `Content-Length` value: 1*DIGIT (RFC 9110 §8.6) that fits a `u64`. Not `str::parse`,
/// which also takes a leading `+`.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_whitespace(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// RFC 9112 §6.3, in order: no body for HEAD, 1xx, 204 and 304; chunked when it is the last
/// transfer coding (any `Content-Length` is then dropped: the client gets hyper's framing);
/// then Content-Length (every value equal); otherwise until close.
fn framing(
    headers: &mut HeaderMap,
    transfer_encoding: TransferCodings,
    content_length: ContentLength,
    status: StatusCode,
    request_method: &Method,
) -> Result<Framing, HeadError> {
    if *request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if transfer_encoding.present {
        headers.remove(header::CONTENT_LENGTH);
        return Ok(if transfer_encoding.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    if content_length.invalid {
        return Err(HeadError::InvalidHeader("content-length"));
    }
    Ok(content_length
        .length
        .map_or(Framing::UntilClose, Framing::Length))
}

/// What the `Content-Length` fields of a response say, gathered while the head is read
/// (instead of looked up again in the map afterwards).
#[derive(Default, Clone, Copy)]
struct ContentLength {
    /// Any field at all.
    seen: bool,
    /// The length every field gave so far.
    length: Option<u64>,
    /// A field that is not 1*DIGIT, or that disagrees with another.
    invalid: bool,
}

impl ContentLength {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        match content_length(value) {
            Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
            _ => self.invalid = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn encodes_path_headers_and_empty_post_length() {
        let request = Request::post("http://10.0.0.1:80/a?b=1")
            .header("host", "svc")
            .body(())
            .unwrap();
        let mut out = BytesMut::new();
        encode_request(&request, &mut out);
        assert_eq!(
            &out[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_body_length_goes_out_once_whatever_the_request_carried() {
        let request = Request::put("http://10.0.0.1:80/x")
            .header("host", "svc")
            .header("content-length", "1024")
            .header("content-length", "1024")
            .header("x-a", "1")
            .body(())
            .unwrap();
        assert_eq!(request_content_length(request.headers()), Some(1024));
        let mut out = BytesMut::new();
        encode_request_with_length(&request, 1024, &mut out);
        assert_eq!(
            &out[..],
            b"PUT /x HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ncontent-length: 1024\r\n\r\n"
        );
        for n in [0, 7, 10, 99, 1 << 20, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
        // Fields that disagree or are not plain digits give no length (the request then
        // takes hyper's client, which refuses or frames it itself).
        let lengths = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            request_content_length(&headers)
        };
        assert_eq!(lengths(&[]), None);
        assert_eq!(lengths(&["5", "6"]), None);
        assert_eq!(lengths(&["+5"]), None);
        assert_eq!(lengths(&["5, 5"]), None);
        assert_eq!(lengths(&["99999999999999999999999"]), None);
        assert_eq!(lengths(&[" 5 "]), Some(5));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |t: &str, m: Method| parse(t, m).unwrap().unwrap();
        let head = ok(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Method::GET,
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.reusable);
        let head = ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD);
        assert_eq!(head.framing, Framing::Empty);
        let head = ok(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.framing, Framing::Chunked);
        let head = ok("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", Method::GET);
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        let head = ok("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET);
        assert!(!head.reusable);
        let head = ok(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn hop_by_hop_headers_are_read_not_passed_on() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
             X-Kept: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = head.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(head.framing, Framing::Chunked);
        // Framed two ways (chunked and a length): not trusted with another request.
        assert!(!head.reusable);
    }

    #[test]
    fn skips_interim_responses_and_refuses_bad_lengths() {
        let head = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.response.status(), StatusCode::CREATED);
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            Method::GET
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
    }
}

/// Property tests of the response-head parser: arbitrary bytes, and valid heads with
/// mutations (bytes inserted, deleted, flipped or duplicated, CRLF turned into LF or CR,
/// header lines repeated), each fed whole and cut at arbitrary points as reads would cut it.
/// Case counts: [`super::fuzz_cases`].
#[cfg(test)]
pub(super) mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::upstream::fuzz_cases;
    use crate::upstream::mutation::{apply as apply_bytes, byte_mutation, crlfs, ByteMutation};

    /// What parsing came to, comparable between runs; any refusal is `Refused` (the error
    /// can differ with the cuts: a head past the limit is `TooLarge` when it trickles in,
    /// the malformed byte behind the limit when it arrives whole).
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Incomplete,
        Refused,
        Head {
            status: u16,
            /// Sorted by name, in order within a name (how `HeaderMap` iterates).
            headers: Vec<(String, Vec<u8>)>,
            framing: Framing,
            reusable: bool,
            /// The bytes after the head: the body, for the body decoder.
            rest: Vec<u8>,
        },
    }

    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
        "upgrade",
    ];

    fn sorted(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        headers
    }

    /// Feeds `input` to `parse_response` as `exchange` does: parse, and when the head is
    /// incomplete append the next piece (cut at `cuts`) and parse again.
    fn feed(input: &[u8], cuts: &[usize], method: &Method) -> Outcome {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        points.dedup();
        let mut points = points.into_iter();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        loop {
            match parse_response(&mut buf, method) {
                Err(_) => return Outcome::Refused,
                Ok(Some(head)) => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&input[fed..]);
                    let ResponseHead {
                        response,
                        framing,
                        reusable,
                    } = head;
                    let headers = response
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect();
                    return Outcome::Head {
                        status: response.status().as_u16(),
                        headers: sorted(headers),
                        framing,
                        reusable,
                        rest,
                    };
                }
                // Memory: an incomplete head is never held past the limit.
                Ok(None) => assert!(buf.len() <= MAX_RESPONSE_HEAD_BYTES, "{}", buf.len()),
            }
            let Some(end) = points.next() else {
                return Outcome::Incomplete;
            };
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
    }

    /// The expected outcome, from `httparse` and RFC 9112 §6.3 written out independently of
    /// `build` and `framing`. `httparse` gets room for exactly the headers ALB allows: a head
    /// with more is refused as soon as the extra header is seen, even before the head ends
    /// (waiting for the rest of a head already too big would only hold the connection).
    fn model(input: &[u8], method: &Method) -> Outcome {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            let length = match httparse::ParserConfig::default().parse_response(&mut parsed, rest) {
                Err(_) => return Outcome::Refused,
                Ok(httparse::Status::Partial) if rest.len() > MAX_RESPONSE_HEAD_BYTES => {
                    return Outcome::Refused
                }
                Ok(httparse::Status::Partial) => return Outcome::Incomplete,
                Ok(httparse::Status::Complete(length)) => length,
            };
            if length > MAX_RESPONSE_HEAD_BYTES || parsed.headers.len() > MAX_RESPONSE_HEADERS {
                return Outcome::Refused;
            }
            let status = parsed.code.unwrap();
            match status {
                0..=99 | 101 => return Outcome::Refused,
                100..=199 => {
                    at += length;
                    continue;
                }
                _ => {}
            }
            let mut kept = Vec::new();
            let mut tokens: Vec<String> = Vec::new();
            let mut codings: Vec<Vec<u8>> = Vec::new();
            let mut te = false;
            for h in parsed.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Outcome::Refused;
                }
                if name == "connection" {
                    for t in h.value.split(|b| *b == b',') {
                        tokens.push(String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase());
                    }
                } else if name == "transfer-encoding" {
                    te = true;
                    for c in h.value.split(|b| *b == b',') {
                        let c = c.trim_ascii();
                        if !c.is_empty() {
                            codings.push(c.to_ascii_lowercase());
                        }
                    }
                } else if !HOP_BY_HOP.contains(&name.as_str()) {
                    if HeaderValue::from_bytes(h.value).is_err() {
                        return Outcome::Refused;
                    }
                    kept.push((name, h.value.to_vec()));
                }
            }
            let http10 = parsed.version == Some(0);
            if http10 && te {
                return Outcome::Refused;
            }
            // Both framings: never reused (RFC 9112 §6.3), whatever the framing chosen.
            let both = te && kept.iter().any(|(n, _)| n == "content-length");
            let framing = if *method == Method::HEAD || status == 204 || status == 304 {
                Framing::Empty
            } else if te {
                kept.retain(|(n, _)| n != "content-length");
                if codings.last().is_some_and(|c| c == b"chunked") {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                }
            } else {
                let mut lengths =
                    kept.iter()
                        .filter(|(n, _)| n == "content-length")
                        .map(|(_, v)| {
                            let v = String::from_utf8_lossy(v);
                            let v = v.trim_matches([' ', '\t']);
                            (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                                .then(|| v.parse::<u64>().ok())
                                .flatten()
                        });
                match lengths.next() {
                    None => Framing::UntilClose,
                    Some(None) => return Outcome::Refused,
                    Some(Some(n)) => {
                        if lengths.any(|l| l != Some(n)) {
                            return Outcome::Refused;
                        }
                        Framing::Length(n)
                    }
                }
            };
            if tokens
                .iter()
                .any(|t| !t.is_empty() && t != "close" && t != "keep-alive")
            {
                kept.retain(|(n, _)| !tokens.contains(n));
            }
            let asked = if http10 {
                tokens.iter().any(|t| t == "keep-alive")
            } else {
                !tokens.iter().any(|t| t == "close")
            };
            let reusable = asked && framing != Framing::UntilClose && !both;
            return Outcome::Head {
                status,
                headers: sorted(kept),
                framing,
                reusable,
                rest: input[at + length..].to_vec(),
            };
        }
    }

    /// `value`'s debug form, cut short: a failing 64 KiB head must not flood the output.
    pub(crate) fn short(value: &impl std::fmt::Debug) -> String {
        let text = format!("{value:?}");
        match text.char_indices().nth(600) {
            Some((end, _)) => format!("{}... ({} chars)", &text[..end], text.len()),
            None => text,
        }
    }

    /// The properties every input must keep, whole and cut: the same outcome however the
    /// bytes are split (including one byte per read for short inputs), the outcome of the
    /// model, and for an accepted head exactly one framing that its headers agree with.
    fn check(input: &[u8], cuts: &[usize], method: &Method) -> Result<(), TestCaseError> {
        let text = short(&String::from_utf8_lossy(input));
        let whole = feed(input, &[], method);
        let cut = feed(input, cuts, method);
        prop_assert!(
            cut == whole,
            "{} cut at {:?}: {} whole: {}",
            text,
            cuts,
            short(&cut),
            short(&whole)
        );
        if input.len() <= 300 {
            let bytewise: Vec<usize> = (0..input.len()).collect();
            let bytewise = feed(input, &bytewise, method);
            prop_assert!(
                bytewise == whole,
                "{} byte by byte: {} whole: {}",
                text,
                short(&bytewise),
                short(&whole)
            );
        }
        let expected = model(input, method);
        prop_assert!(
            expected == whole,
            "{} expected {} got {}",
            text,
            short(&expected),
            short(&whole)
        );
        if let Outcome::Head {
            headers, framing, ..
        } = &whole
        {
            prop_assert!(headers.len() <= MAX_RESPONSE_HEADERS);
            for (name, _) in headers {
                prop_assert!(!HOP_BY_HOP.contains(&name.as_str()), "{} passed on", name);
            }
            let lengths: Vec<Option<u64>> = headers
                .iter()
                .filter(|(n, _)| n == "content-length")
                .map(|(_, v)| content_length(v))
                .collect();
            match framing {
                Framing::Chunked | Framing::UntilClose => prop_assert!(lengths.is_empty()),
                // None left only when `Connection` named it: hop-by-hop, read, not passed on.
                Framing::Length(n) => {
                    for l in lengths {
                        prop_assert_eq!(l, Some(*n));
                    }
                }
                Framing::Empty => {}
            }
        }
        Ok(())
    }

    /// A header line of a response: the framing and connection headers with valid, odd and
    /// hostile values, in various cases, and ordinary ones.
    fn header() -> impl Strategy<Value = (String, String)> {
        let name =
            |names: &'static [&'static str]| prop::sample::select(names).prop_map(str::to_owned);
        let value =
            |values: &'static [&'static str]| prop::sample::select(values).prop_map(str::to_owned);
        prop_oneof![
            (
                name(&["Content-Length", "content-length", "CONTENT-LENGTH"]),
                prop_oneof![
                    "[0-9]{1,4}",
                    value(&[
                        "+5",
                        "5, 5",
                        "-1",
                        " 7 ",
                        "0x10",
                        "",
                        "18446744073709551616",
                        "5 5",
                        "\t3"
                    ]),
                ]
            ),
            (
                name(&["Transfer-Encoding", "transfer-encoding"]),
                value(&[
                    "chunked",
                    "gzip, chunked",
                    "chunked, gzip",
                    "chunked,",
                    ", chunked",
                    "",
                    "identity",
                    "CHUNKED",
                    "chunked , ",
                    "xchunked",
                    "chunked;q=1"
                ]),
            ),
            (
                name(&["Connection", "connection"]),
                value(&[
                    "close",
                    "keep-alive",
                    "x-a",
                    "content-length",
                    "transfer-encoding",
                    "close, x-a",
                    "upgrade",
                    " , ",
                    "Keep-Alive, X-A",
                    "host"
                ]),
            ),
            (
                name(&[
                    "Keep-Alive",
                    "Upgrade",
                    "Trailer",
                    "TE",
                    "Proxy-Connection",
                    "Proxy-Authenticate"
                ]),
                "[ -~]{0,12}",
            ),
            ("[xX]-[a-zA-Z]{1,8}", "[ -~]{0,20}"),
            (Just("x-a".to_owned()), "[ -~]{0,8}"),
        ]
    }

    /// Makes a head (or many heads, or a huge one) past the limits.
    #[derive(Debug, Clone)]
    enum Bulk {
        None,
        /// `n` extra headers.
        Headers(usize),
        /// Two headers of `n` bytes each.
        Large(usize),
    }

    fn bulk() -> impl Strategy<Value = Bulk> {
        prop_oneof![
            8 => Just(Bulk::None),
            1 => (MAX_RESPONSE_HEADERS - 5..MAX_RESPONSE_HEADERS + 5).prop_map(Bulk::Headers),
            1 => (MAX_RESPONSE_HEAD_BYTES / 2 - 200..MAX_RESPONSE_HEAD_BYTES / 2 + 200)
                .prop_map(Bulk::Large),
        ]
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(&["HTTP/1.1", "HTTP/1.0"][..]),
            prop_oneof![
                prop::sample::select(&[100u16, 101, 103, 200, 204, 206, 304, 404, 500][..]),
                100u16..1000,
            ],
            "[A-Za-z ]{0,12}",
            prop::collection::vec(header(), 0..8),
            any::<bool>(),
            bulk(),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(version, status, reason, headers, interim, bulk, body)| {
                let mut m = Vec::new();
                if interim {
                    m.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                m.extend_from_slice(format!("{version} {status} {reason}\r\n").as_bytes());
                for (name, value) in &headers {
                    m.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                match bulk {
                    Bulk::None => {}
                    Bulk::Headers(n) => (0..n).for_each(|i| {
                        m.extend_from_slice(format!("x-bulk-{i}: {i}\r\n").as_bytes())
                    }),
                    Bulk::Large(n) => (0..2).for_each(|_| {
                        m.extend_from_slice(b"x-large: ");
                        m.resize(m.len() + n, b'v');
                        m.extend_from_slice(b"\r\n");
                    }),
                }
                m.extend_from_slice(b"\r\n");
                m.extend_from_slice(&body);
                m
            })
    }

    /// One structured change to a message: a byte-level one, or the `k`th line repeated.
    #[derive(Debug, Clone)]
    enum Mutation {
        Bytes(ByteMutation),
        DuplicateLine(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            6 => byte_mutation(b"\r\n :,;\t0").prop_map(Mutation::Bytes),
            1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        ]
    }

    fn apply(m: &mut Vec<u8>, mutation: &Mutation) {
        match mutation {
            Mutation::Bytes(b) => apply_bytes(m, b),
            Mutation::DuplicateLine(k) => {
                let ends = crlfs(m);
                if ends.is_empty() {
                    return;
                }
                let i = k % ends.len();
                let start = if i == 0 { 0 } else { ends[i - 1] + 2 };
                let line = m[start..ends[i] + 2].to_vec();
                m.splice(start..start, line);
            }
        }
    }

    fn method() -> impl Strategy<Value = Method> {
        prop::sample::select(vec![Method::GET, Method::HEAD, Method::POST])
    }

    fn cuts() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(any::<usize>(), 0..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        /// Arbitrary bytes, alone or after a valid status line: never a panic, the same
        /// outcome however they are cut, and the model's outcome.
        #[test]
        fn head_parser_takes_arbitrary_bytes(
            prefix in any::<bool>(),
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in cuts(),
            method in method(),
        ) {
            let mut input = if prefix { b"HTTP/1.1 200 OK\r\n".to_vec() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            check(&input, &cuts, &method)?;
        }

        /// Valid heads (and heads past the size and count limits) with framing headers that
        /// agree, conflict or are malformed, then mutated: the parser's answer is the model's
        /// (RFC 9112 §6.3: TE wins over CL and drops it, differing or non-digit CLs are
        /// refused, HTTP/1.0 with TE is refused), however the bytes are cut.
        #[test]
        fn head_parser_agrees_with_rfc_9112_on_mutated_heads(
            message in message(),
            mutations in prop::collection::vec(mutation(), 0..4),
            cuts in cuts(),
            method in method(),
        ) {
            let mut input = message;
            for m in &mutations {
                apply(&mut input, m);
            }
            check(&input, &cuts, &method)?;
        }

        /// A request head's buffer is allocated once: whatever the method, target, fields,
        /// rewrite and length, what `encode_head` writes stays within `head_bound`.
        #[test]
        fn a_request_head_fits_its_bound(
            method in prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]),
            target in prop_oneof![
                "/[a-z0-9/?=&%]{0,40}",
                "http://[a-z0-9.]{1,20}(:[0-9]{1,5})?/[a-z]{0,10}",
            ],
            fields in prop::collection::vec(("[a-z][a-z0-9-]{0,24}", "[!-~][ -~]{0,80}"), 0..16),
            rewrite in any::<bool>(),
            added in prop::collection::vec("[ -~]{0,60}", 0..4),
            length in prop::option::of(any::<u64>()),
        ) {
            let mut builder = Request::builder().method(method).uri(target);
            for (name, value) in &fields {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let Ok(request) = builder.body(()) else { return Ok(()) };
            let names = [header::VIA, header::FORWARDED, header::WARNING, header::DATE];
            let added: Vec<(&HeaderName, &[u8])> =
                names.iter().zip(&added).map(|(name, value)| (name, value.as_bytes())).collect();
            let skip = |name: &HeaderName| name == header::CONNECTION;
            let fields = FieldRewrite { host: b"backend.internal:8080", skip: &skip, added: &added };
            let rewrite = rewrite.then_some(&fields);
            let mut out = BytesMut::new();
            encode_head(&request, rewrite, length, &mut out);
            let bound = head_bound(&request, rewrite);
            prop_assert!(out.len() <= bound, "{} bytes written, bound {bound}:\n{}",
                out.len(), String::from_utf8_lossy(&out));
        }
    }

    /// What the properties found, kept as plain regressions.
    #[test]
    fn regressions() {
        let parse = |text: &[u8], method: Method| feed(text, &[], &method);
        // `+5` is not 1*DIGIT (`str::parse` took it).
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
                Method::GET
            ),
            Outcome::Refused
        );
        // `chunked,` ends in chunked: empty list elements do not count.
        let head = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
            Method::GET,
        );
        assert!(
            matches!(
                head,
                Outcome::Head {
                    framing: Framing::Chunked,
                    ..
                }
            ),
            "{head:?}"
        );
        // Codings over several field lines form one list.
        let head = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n",
            Method::GET,
        );
        assert!(
            matches!(
                head,
                Outcome::Head {
                    framing: Framing::Chunked,
                    ..
                }
            ),
            "{head:?}"
        );
        // HTTP/1.0 has no transfer codings (RFC 9112 §6.1).
        assert_eq!(
            parse(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET
            ),
            Outcome::Refused
        );
        // A Content-Length named in Connection still frames the body.
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
            Method::GET,
        );
        assert!(
            matches!(
                head,
                Outcome::Head {
                    framing: Framing::Length(5),
                    reusable: true,
                    ..
                }
            ),
            "{head:?}"
        );
        // A head past the limit is refused when it arrives whole, as when it trickles in.
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD_BYTES + 10, b'v');
        big.extend_from_slice(b"\r\n\r\n");
        assert!(parse(&big, Method::GET) == Outcome::Refused);
        assert!(feed(&big, &[4096, 8192], &Method::GET) == Outcome::Refused);
    }
}
