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

/// Largest response head accepted from a backend, in bytes.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// Writes `METHOD path HTTP/1.1`, the headers, and the blank line into `out`.
///
/// The request must already be rewritten for the backend (`forward::rewrite_request`):
/// `Host` set, hop-by-hop headers gone. Its body is empty (requests with a body go through
/// hyper's client, see the module docs of `upstream`); methods whose requests normally carry
/// a body get `Content-Length: 0`, so the backend does not wait for one.
pub fn encode_request<B>(request: &Request<B>, out: &mut BytesMut) {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = request.headers();
    out.reserve(64 + path.len() + headers.len() * 48);
    out.put_slice(request.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let expects_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if expects_body && !headers.contains_key(header::CONTENT_LENGTH) {
        out.put_slice(b"content-length: 0\r\n");
    }
    out.put_slice(b"\r\n");
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
    let mut headers = HeaderMap::with_capacity(indices.len());
    let mut connection = ConnectionTokens::default();
    let mut transfer_encoding = None;
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
            transfer_encoding = Some(raw);
            continue;
        }
        if is_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(index.value()))
            .map_err(|_| HeadError::InvalidHeader("value"))?;
        headers.append(name, value);
    }
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
    let framing = framing(&mut headers, transfer_encoding, status, request_method)?;
    let reusable = if minor_version == 0 {
        connection.keep_alive
    } else {
        !connection.close
    };
    let reusable = reusable && framing != Framing::UntilClose;
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

/// RFC 9112 §6.3, in order: no body for HEAD, 1xx, 204 and 304; chunked when it is the last
/// transfer coding (any `Content-Length` is then dropped: the client gets hyper's framing);
/// then Content-Length (every value equal); otherwise until close.
fn framing(
    headers: &mut HeaderMap,
    transfer_encoding: Option<&[u8]>,
    status: StatusCode,
    request_method: &Method,
) -> Result<Framing, HeadError> {
    if *request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(codings) = transfer_encoding {
        headers.remove(header::CONTENT_LENGTH);
        let last = codings.rsplit(|b| *b == b',').next().unwrap_or_default();
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(HeadError::InvalidHeader("content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::InvalidHeader("content-length"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
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
        assert!(head.reusable);
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
