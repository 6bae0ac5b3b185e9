//! The cases: raw request bytes (sent as one write on a fresh connection) with what a proxy
//! must do with them, and scripted backend answers for the response side.
//!
//! Every request names `Host: a` unless the case is about `Host`. Bodies are ASCII, so the
//! expected bodies are `&str`.

/// What a proxy must do with a request case.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Well-formed: forwarded as exactly these messages (by body, in order) and answered.
    Forward(&'static [&'static str]),
    /// Malformed or forbidden: answered with a refusal (4xx, 501, 505; this one if given),
    /// and nothing reaches the backend.
    Refuse(Option<u16>),
    /// Refused as above, or forwarded as exactly these messages.
    Either(&'static [&'static str]),
    /// Not HTTP/1 at all: whatever the answer, nothing reaches the backend.
    Unforwarded,
}

/// One request case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    /// What the bytes do, for the report.
    pub what: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// Final answers the client waits for when all goes well.
    pub answers: usize,
    /// The `Host` the backend must see, when it is not simply the client's.
    pub host: Option<&'static str>,
    /// A WebSocket handshake: `Connection: upgrade` and `Upgrade` may pass.
    pub upgrade: bool,
    /// RFC 9112 §6.1: the proxy must close the connection after answering.
    pub must_close: bool,
    /// An ALB bug being fixed on `main`: checked by `findings_fixed_on_main`.
    pub finding: Option<&'static str>,
    /// Why the expected answer is right, with its RFC section.
    pub why: &'static str,
}

impl Case {
    fn answers(mut self, n: usize) -> Self {
        self.answers = n;
        self
    }
    fn host(mut self, host: &'static str) -> Self {
        self.host = Some(host);
        self
    }
    fn upgrade(mut self) -> Self {
        self.upgrade = true;
        self
    }
    fn must_close(mut self) -> Self {
        self.must_close = true;
        self
    }
    fn finding(mut self, what: &'static str) -> Self {
        self.finding = Some(what);
        self
    }
}

fn case(
    name: &'static str,
    what: &'static str,
    bytes: impl Into<Vec<u8>>,
    expect: Expect,
    why: &'static str,
) -> Case {
    Case {
        name,
        what,
        bytes: bytes.into(),
        expect,
        answers: 1,
        host: None,
        upgrade: false,
        must_close: false,
        finding: None,
        why,
    }
}

/// `POST /` with `Host: a`, the given extra header lines (each ending in CRLF) and body.
fn post(headers: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}")
}

/// `POST /` with `Transfer-Encoding: chunked` and the given raw chunked body.
fn chunked(body: &str) -> String {
    post("Transfer-Encoding: chunked\r\n", body)
}

/// `GET /` with `Host: a` and the given extra header lines.
fn get(headers: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n")
}

use Expect::*;

/// The finding shared by every malformed chunked request body.
const BAD_BODY: &str = "answered 502 (counted as a backend failure) instead of 400";

const HELLO: &[&str] = &["hello"];
const EMPTY: &[&str] = &[""];

/// The request corpus.
pub fn requests() -> Vec<Case> {
    let smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    vec![
        // --- baselines
        case("get_plain", "plain GET", get(""), Forward(EMPTY),
            "The reference: a well-formed request is forwarded."),
        case("post_content_length", "POST with `Content-Length: 5`", post("Content-Length: 5\r\n", "hello"), Forward(HELLO),
            "The reference for Content-Length framing."),
        case("post_chunked", "POST with a chunked body", chunked("5\r\nhello\r\n0\r\n\r\n"), Forward(HELLO),
            "The reference for chunked framing."),
        case("post_without_length", "POST with no body and no framing", post("", ""), Forward(EMPTY),
            "A request without CL or TE has no body (RFC 9112 §6.3 item 7)."),
        // --- Content-Length and Transfer-Encoding together
        case("cl_then_te", "`Content-Length: 5` then `Transfer-Encoding: chunked`, body `0\\r\\n\\r\\n`",
            post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), Either(EMPTY),
            "CL+TE: reject, or use the chunked framing alone and close after answering (RFC 9112 §6.1, §6.3 item 3).").must_close(),
        case("te_then_cl", "`Transfer-Encoding: chunked` then `Content-Length: 5`",
            post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"), Either(EMPTY),
            "CL+TE: reject, or use the chunked framing alone and close after answering (RFC 9112 §6.1).").must_close(),
        case("cl_te_smuggle", "CL covers a chunked end plus a second request (CL.TE smuggling)",
            post(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", smuggled.len()), smuggled),
            Either(EMPTY),
            "With CL+TE the connection must close after the answer, so the bytes after the chunked end are never a request (RFC 9112 §6.1).").must_close(),
        case("cl_duplicate_same", "`Content-Length: 5` twice", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), Either(HELLO),
            "Identical duplicates may be rejected or merged into one (RFC 9110 §8.6)."),
        case("cl_conflicting", "`Content-Length: 5` and `Content-Length: 6`", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), Refuse(None),
            "Differing lengths make the framing undecidable: 400 (RFC 9112 §6.3 item 5)."),
        case("cl_list_same", "`Content-Length: 5, 5`", post("Content-Length: 5, 5\r\n", "hello"), Either(HELLO),
            "A list of identical values may be rejected or taken as one (RFC 9110 §8.6)."),
        case("cl_list_conflicting", "`Content-Length: 5, 6`", post("Content-Length: 5, 6\r\n", "hello!"), Refuse(None),
            "Differing values: 400 (RFC 9112 §6.3 item 5)."),
        case("cl_plus", "`Content-Length: +5`", post("Content-Length: +5\r\n", "hello"), Refuse(None),
            "Content-Length is 1*DIGIT (RFC 9110 §8.6); a sign is invalid framing (RFC 9112 §6.3 item 5)."),
        case("cl_hex", "`Content-Length: 0x5`", post("Content-Length: 0x5\r\n", "hello"), Refuse(None),
            "Content-Length is decimal digits only (RFC 9110 §8.6)."),
        case("cl_negative", "`Content-Length: -5`", post("Content-Length: -5\r\n", "hello"), Refuse(None),
            "Content-Length is 1*DIGIT (RFC 9110 §8.6)."),
        case("cl_inner_space", "`Content-Length: 5 5`", post("Content-Length: 5 5\r\n", "hello"), Refuse(None),
            "Not 1*DIGIT; 5 or 55 would be a guess (RFC 9112 §6.3 item 5)."),
        case("cl_outer_whitespace", "`Content-Length:   5  ` (OWS around the value)", post("Content-Length:   5  \r\n", "hello"), Forward(HELLO),
            "Whitespace around a field value is OWS and not part of it (RFC 9112 §5.1)."),
        case("cl_leading_zeros", "`Content-Length: 005`", post("Content-Length: 005\r\n", "hello"), Either(HELLO),
            "005 is 1*DIGIT; forwarding it as 5 is sound."),
        case("cl_empty", "`Content-Length:` with no value", post("Content-Length:\r\n", ""), Refuse(None),
            "An empty Content-Length is invalid (RFC 9110 §8.6)."),
        case("cl_huge", "`Content-Length: 99999999999999999999`", post("Content-Length: 99999999999999999999\r\n", ""), Refuse(None),
            "A length that overflows cannot be honoured: 400 or 413."),
        case("te_xchunked", "`Transfer-Encoding: xchunked`", post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "An unknown coding: 501 (RFC 9112 §6.1); the length is undecidable, 400 (§6.3 item 4)."),
        case("te_chunked_identity", "`Transfer-Encoding: chunked, identity`", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "Chunked is not the final coding of a request: 400 (RFC 9112 §6.3 item 4)."),
        case("te_identity_chunked", "`Transfer-Encoding: identity, chunked`", post("Transfer-Encoding: identity, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Either(HELLO),
            "identity is no registered coding (501, RFC 9112 §6.1); forwarding it as plain chunked is sound."),
        case("te_twice", "two `Transfer-Encoding: chunked` lines", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "Two lines mean chunked twice, which no sender may apply (RFC 9112 §6.1): the body does not decode.")
            .finding("forwarded (chunked decoded once); must answer 400 as nginx and HAProxy do"),
        case("te_tab", "`Transfer-Encoding:\\tchunked`", post("Transfer-Encoding:\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Forward(HELLO),
            "HTAB is OWS (RFC 9112 §5.1)."),
        case("te_uppercase", "`Transfer-Encoding: CHUNKED`", post("Transfer-Encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"), Forward(HELLO),
            "Transfer codings are case-insensitive (RFC 9112 §7)."),
        case("te_space_before_colon", "`Transfer-Encoding : chunked`", post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refuse(Some(400)),
            "Whitespace before the colon: a server MUST answer 400 (RFC 9112 §5.1)."),
        case("te_vertical_tab", "`Transfer-Encoding:\\x0bchunked`", post("Transfer-Encoding:\x0bchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "VT is no OWS: the coding is unknown (RFC 9112 §6.1, §6.3 item 4)."),
        case("te_obs_fold", "`Transfer-Encoding:` folded onto the next line", post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Either(HELLO),
            "obs-fold: reject with 400 or replace with SP before use (RFC 9112 §5.2)."),
        case("te_http10", "chunked body in an HTTP/1.0 request",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Either(HELLO),
            "TE in HTTP/1.0 is faulty framing: reject, or process once and close (RFC 9112 §6.1)."),
        // --- chunk sizes and chunk lines
        case("chunk_size_oversized", "chunk size `ffffffffffffffffff`", chunked("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "A chunk size that overflows cannot be honoured (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_size_negative", "chunk size `-5`", chunked("-5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "chunk-size is 1*HEXDIG (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_size_0x", "chunk size `0x5`", chunked("0x5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "chunk-size is 1*HEXDIG; `0x` would read as a zero chunk (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_size_leading_space", "chunk size ` 5`", chunked(" 5\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "chunk-size is 1*HEXDIG with no leading space (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_size_trailing_space", "chunk size `5 `", chunked("5 \r\nhello\r\n0\r\n\r\n"), Either(HELLO),
            "BWS belongs before `;` only; accepting it is harmless if re-chunked (RFC 9112 §7.1.1)."),
        case("chunk_size_leading_zeros", "chunk size `0000000000000005`", chunked("0000000000000005\r\nhello\r\n0\r\n\r\n"), Either(HELLO),
            "Leading zeros are HEXDIG; limits on the digit count may refuse."),
        case("chunk_ext_quoted", "chunk extension `;a=\"b;c\"`", chunked("5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n"), Forward(HELLO),
            "A quoted-string chunk extension is valid (RFC 9112 §7.1.1)."),
        case("chunk_ext_bare_cr", "chunk extension with a bare CR", chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"), Refuse(None),
            "A bare CR is invalid (RFC 9112 §2.2).")
            .finding(BAD_BODY),
        case("chunk_ext_bare_lf", "chunk extension ended by a bare LF", chunked("5;a\nhello\r\n0\r\n\r\n"), Refuse(None),
            "A chunk line ends with CRLF (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_ext_long", "a 20 000-byte chunk extension", chunked(&format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(20_000))), Either(HELLO),
            "Valid, but a server may limit chunk extensions (RFC 9112 §7.1.1).")
            .finding(BAD_BODY),
        case("chunk_data_overrun", "chunk data longer than its size", chunked("5\r\nhelloXX\r\n0\r\n\r\n"), Refuse(None),
            "Chunk data must be followed by CRLF (RFC 9112 §7.1).")
            .finding(BAD_BODY),
        case("chunk_missing_last_crlf", "last chunk without the final CRLF, then a request",
            chunked("5\r\nhello\r\n0\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"), Refuse(None),
            "`GET /next HTTP/1.1` is no trailer field line (RFC 9112 §7.1.2, §5).")
            .finding(BAD_BODY),
        case("chunk_trailer", "chunked body with a trailer field", chunked("5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"), Forward(HELLO),
            "Trailers are valid after the last chunk (RFC 9112 §7.1.2)."),
        case("chunk_trailer_content_length", "`Content-Length` as a trailer field", chunked("5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"), Either(HELLO),
            "Framing fields are not allowed in trailers (RFC 9110 §6.5.1); dropping or refusing both work."),
        case("chunk_lf_only", "chunk lines ended by bare LF", chunked("5\nhello\n0\n\n"), Either(HELLO),
            "Chunk lines end with CRLF (RFC 9112 §7.1); re-chunking the decoded body is sound.")
            .finding(BAD_BODY),
        // --- line endings
        case("bare_lf_lines", "request line and fields ended by bare LF", "GET / HTTP/1.1\nHost: a\n\n", Either(EMPTY),
            "A recipient MAY accept LF as a line terminator (RFC 9112 §2.2)."),
        case("bare_cr_in_field", "`X-A: b\\rc`", get("X-A: b\rc\r\n"), Either(EMPTY),
            "A bare CR must be refused or replaced with SP (RFC 9112 §2.2)."),
        case("bare_cr_line_end", "a field line ended by a bare CR", "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", Either(EMPTY),
            "A bare CR must be refused or replaced with SP (RFC 9112 §2.2)."),
        // --- field names and values
        case("space_before_colon", "`X-A : b`", get("X-A : b\r\n"), Refuse(Some(400)),
            "Whitespace between name and colon: a server MUST answer 400 (RFC 9112 §5.1)."),
        case("empty_field_name", "`: b`", get(": b\r\n"), Refuse(None),
            "A field name is a token, at least one character (RFC 9110 §5.1)."),
        case("non_token_field_name", "`X(A): b`", get("X(A): b\r\n"), Refuse(None),
            "A field name is a token (RFC 9110 §5.1)."),
        case("space_in_field_name", "`X A: b`", get("X A: b\r\n"), Refuse(None),
            "A field name is a token (RFC 9110 §5.1)."),
        case("field_without_colon", "`X-A b`", get("X-A b\r\n"), Refuse(None),
            "A field line is name `:` value (RFC 9112 §5)."),
        case("obs_fold", "`X-A: b` folded onto a second line", get("X-A: b\r\n c\r\n"), Either(EMPTY),
            "obs-fold: reject with 400 or replace with SP (RFC 9112 §5.2)."),
        case("nul_in_value", "`X-A: b\\0c`", get("X-A: b\0c\r\n"), Either(EMPTY),
            "NUL in a value: reject or replace with SP (RFC 9110 §5.5)."),
        case("nul_in_name", "`X\\0A: b`", get("X\0A: b\r\n"), Refuse(None),
            "A field name is a token (RFC 9110 §5.1)."),
        case("long_field_line", "a 70 000-byte field line", get(&format!("X-Long: {}\r\n", "a".repeat(70_000))), Refuse(None),
            "Past the header limit: 431 (RFC 6585 §5) or 400."),
        // --- Host
        case("host_twice", "two `Host` lines", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refuse(Some(400)),
            "More than one Host line: a server MUST answer 400 (RFC 9112 §3.2).")
            .finding("forwarded with both Host lines; must answer 400"),
        case("host_missing", "HTTP/1.1 request without `Host`", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", Refuse(Some(400)),
            "An HTTP/1.1 request without Host: a server MUST answer 400 (RFC 9112 §3.2).")
            .finding("forwarded without any Host; must answer 400"),
        case("host_missing_http10", "HTTP/1.0 request without `Host`", "GET / HTTP/1.0\r\n\r\n", Either(EMPTY),
            "Valid in HTTP/1.0; forwarded as HTTP/1.1 it needs one Host (RFC 9112 §3.2).")
            .finding("forwarded as HTTP/1.1 without Host; must add one (or refuse)"),
        case("host_userinfo", "`Host: user@a`", "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", Refuse(Some(400)),
            "Host is uri-host [\":\" port], no userinfo: invalid value, 400 (RFC 9112 §3.2).")
            .finding("forwarded the invalid Host; must answer 400"),
        case("host_bad_chars", "`Host: a<b>`", "GET / HTTP/1.1\r\nHost: a<b>\r\n\r\n", Refuse(Some(400)),
            "Invalid Host value: 400 (RFC 9112 §3.2, RFC 3986 §3.2.2).")
            .finding("forwarded the invalid Host; must answer 400"),
        case("host_bad_port", "`Host: a:port`", "GET / HTTP/1.1\r\nHost: a:port\r\n\r\n", Refuse(Some(400)),
            "The port is digits: invalid Host value, 400 (RFC 9112 §3.2).")
            .finding("forwarded the invalid Host; must answer 400"),
        case("host_empty", "`Host:` empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n", Either(EMPTY),
            "An empty Host is valid when the target has no authority (RFC 9112 §3.2)."),
        case("host_with_port", "`Host: a:8080`", "GET / HTTP/1.1\r\nHost: a:8080\r\n\r\n", Forward(EMPTY),
            "The reference for a Host with a port."),
        // --- request targets and methods
        case("absolute_form", "`GET http://other/x` with `Host: a`", "GET http://other/x HTTP/1.1\r\nHost: a\r\n\r\n", Forward(EMPTY),
            "With an absolute-form target the target's authority wins over Host (RFC 9112 §3.2.2).")
            .host("other")
            .finding("forwarded with `Host: a`; the target's authority `other` must win"),
        case("asterisk_options", "`OPTIONS *`", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Either(EMPTY),
            "asterisk-form is valid for OPTIONS (RFC 9112 §3.2.4)."),
        case("asterisk_get", "`GET *`", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", Refuse(None),
            "asterisk-form is only for OPTIONS (RFC 9112 §3.2.4).")
            .finding("forwarded `GET *`; must answer 400"),
        case("connect", "`CONNECT a:443`", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Refuse(Some(405)),
            "A reverse proxy that opens no tunnels refuses CONNECT; forwarding it as a path is wrong (RFC 9110 §9.3.6).")
            .finding("forwarded as `CONNECT /`; must answer 405 and forward nothing"),
        case("trace_with_credentials", "`TRACE` with `Authorization` and `Cookie`",
            "TRACE / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eDp5\r\nCookie: s=1\r\n\r\n", Refuse(Some(405)),
            "TRACE would echo credentials back (RFC 9110 §9.3.8 warns of exactly this): 405.")
            .finding("TRACE is forwarded; must answer 405"),
        case("target_without_slash", "`GET x`", "GET x HTTP/1.1\r\nHost: a\r\n\r\n", Refuse(None),
            "origin-form starts with `/` (RFC 9112 §3.2.1).")
            .finding("`GET x` read as authority-form and forwarded as `GET /`; must answer 400"),
        case("target_with_space", "`GET /a b`", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Refuse(None),
            "The request line has exactly two SPs (RFC 9112 §3)."),
        case("target_fragment", "`GET /a#b`", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Either(EMPTY),
            "A fragment is not part of a request target (RFC 9112 §3.2); refusing or forwarding the path are both sound."),
        case("unknown_method", "`FROB /`", "FROB / HTTP/1.1\r\nHost: a\r\n\r\n", Either(EMPTY),
            "Any token is a method; 501 for one not supported (RFC 9110 §9.1)."),
        case("lowercase_method", "`get /`", "get / HTTP/1.1\r\nHost: a\r\n\r\n", Either(EMPTY),
            "Methods are case-sensitive: `get` is an extension method, not GET (RFC 9110 §9.1)."),
        case("non_token_method", "`G(T /`", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Refuse(None),
            "A method is a token (RFC 9110 §9.1)."),
        case("http09", "HTTP/0.9-style `GET /` line", "GET /\r\n\r\n", Unforwarded,
            "HTTP/0.9 is not served; nothing may reach the backend."),
        case("http2_preface", "HTTP/2 connection preface on the HTTP/1 port",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(), Unforwarded,
            "The preface starts HTTP/2 with prior knowledge (RFC 9113 §3.3) or is refused; it is never an HTTP/1 request."),
        case("http_version_2_text", "`GET / HTTP/2.0` as text", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", Refuse(None),
            "HTTP/2 has no text request line: 400 or 505 (RFC 9110 §15.6.6)."),
        case("http_version_garbage", "`GET / HTTP/1.x`", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", Refuse(None),
            "HTTP-version is `HTTP/` DIGIT `.` DIGIT (RFC 9112 §2.3)."),
        // --- hop-by-hop fields
        case("connection_lists_field", "`Connection: close, x-foo` and `X-Foo`", get("Connection: close, x-foo\r\nX-Foo: secret\r\n"), Forward(EMPTY),
            "Fields named in Connection are hop-by-hop and removed (RFC 9110 §7.6.1)."),
        case("connection_lists_host", "`Connection: host`", get("Connection: host\r\n"), Either(EMPTY),
            "Host cannot be hop-by-hop: the forwarded HTTP/1.1 request still needs exactly one (RFC 9112 §3.2).")
            .finding("`Connection: host` removes Host and forwards none; must keep Host (or refuse)"),
        case("connection_lists_content_length", "`Connection: content-length` on a CL body",
            post("Content-Length: 5\r\nConnection: content-length\r\n", "hello"), Either(HELLO),
            "Whatever Connection says, the body must be forwarded whole and framed (RFC 9112 §6)."),
        case("keep_alive_fields", "`Connection: keep-alive` and `Keep-Alive: timeout=5`", get("Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"), Forward(EMPTY),
            "Keep-Alive is hop-by-hop (RFC 9110 §7.6.1)."),
        case("proxy_connection", "`Proxy-Connection: keep-alive`", get("Proxy-Connection: keep-alive\r\n"), Forward(EMPTY),
            "Proxy-Connection is a legacy hop-by-hop field (RFC 9110 §7.6.1)."),
        case("te_trailers", "`TE: trailers`", get("TE: trailers\r\n"), Forward(EMPTY),
            "TE is hop-by-hop (RFC 9110 §10.1.4)."),
        case("trailer_field", "`Trailer: X-T` on a GET", get("Trailer: X-T\r\n"), Forward(EMPTY),
            "Trailer is treated as hop-by-hop by proxies (RFC 9110 §7.6.1)."),
        case("upgrade_without_connection", "`Upgrade: websocket` without `Connection: upgrade`", get("Upgrade: websocket\r\n"), Forward(EMPTY),
            "Upgrade is only meaningful with Connection: upgrade and is hop-by-hop (RFC 9110 §7.8)."),
        case("websocket_handshake", "a WebSocket handshake (the backend answers 200)",
            get("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
            Forward(EMPTY), "The handshake keeps Connection: upgrade and Upgrade (RFC 6455 §4.1).").upgrade(),
        case("http10_keep_alive", "HTTP/1.0 with `Connection: keep-alive`", "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", Forward(EMPTY),
            "HTTP/1.0 keep-alive is served; the field is not forwarded (RFC 9112 §9.3)."),
        // --- bodies, continues, pipelining
        case("expect_continue", "`Expect: 100-continue` with the body sent at once", post("Content-Length: 5\r\nExpect: 100-continue\r\n", "hello"), Forward(HELLO),
            "A client may send the body without waiting for 100 (RFC 9110 §10.1.1)."),
        case("pipelined_gets", "two GETs in one write", format!("{}{}", get(""), get("")), Forward(&["", ""]),
            "Pipelined requests are answered in order (RFC 9112 §9.3.2).").answers(2),
        case("pipelined_post_get", "POST with a body and a GET in one write",
            format!("{}{}", post("Content-Length: 5\r\n", "hello"), get("")), Forward(&["hello", ""]),
            "The body ends where Content-Length says; the next request follows (RFC 9112 §6.3).").answers(2),
        case("get_chunked_body", "GET with a chunked body", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO),
            "A GET may carry a body; its framing must be honoured and the body forwarded (RFC 9110 §9.3.1, RFC 9112 §6.3).")
            .finding("forwarded without its body; must forward the 5 body bytes"),
        case("get_cl_body", "GET with `Content-Length: 5`", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", Forward(HELLO),
            "A GET may carry a body; its framing must be honoured (RFC 9110 §9.3.1)."),
        case("delete_chunked_body", "DELETE with a chunked body", "DELETE / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO),
            "A DELETE may carry a body; its framing must be honoured (RFC 9112 §6.3)."),
        case("get_cl_zero", "GET with `Content-Length: 0`", get("Content-Length: 0\r\n"), Forward(EMPTY),
            "An explicit empty body."),
        case("chunked_empty_body", "POST with only the last chunk", chunked("0\r\n\r\n"), Forward(EMPTY),
            "An empty chunked body is valid (RFC 9112 §7.1)."),
    ]
}

/// One scripted backend answer.
#[derive(Debug, Clone)]
pub struct ResponseCase {
    pub name: &'static str,
    /// Why the expected handling is right, with its RFC section.
    pub why: &'static str,
    pub what: &'static str,
    pub bytes: Vec<u8>,
    /// The backend closes the connection after the bytes.
    pub close: bool,
    /// The correct relay (status, body), if there is one; a clean 502 is always acceptable.
    pub relay: Option<(u16, &'static str)>,
    /// A truncated answer followed by closing the client's connection is acceptable (the
    /// headers were already sent when the body broke).
    pub may_truncate: bool,
    /// The framing is unambiguous, so reusing the backend connection afterwards is fine.
    pub reuse_ok: bool,
    pub finding: Option<&'static str>,
}

fn answer(
    name: &'static str,
    why: &'static str,
    what: &'static str,
    bytes: impl Into<Vec<u8>>,
) -> ResponseCase {
    ResponseCase {
        name,
        why,
        what,
        bytes: bytes.into(),
        close: false,
        relay: None,
        may_truncate: false,
        reuse_ok: false,
        finding: None,
    }
}

impl ResponseCase {
    fn relay(mut self, status: u16, body: &'static str) -> Self {
        self.relay = Some((status, body));
        self
    }
    fn close(mut self) -> Self {
        self.close = true;
        self
    }
    fn may_truncate(mut self) -> Self {
        self.may_truncate = true;
        self
    }
    fn reuse_ok(mut self) -> Self {
        self.reuse_ok = true;
        self
    }
    fn finding(mut self, what: &'static str) -> Self {
        self.finding = Some(what);
        self
    }
}

/// A complete response hidden in a body, to show a connection read out of step.
const POISON: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\npoisoned";

/// The response corpus.
pub fn responses() -> Vec<ResponseCase> {
    let continues = "HTTP/1.1 100 Continue\r\n\r\n".repeat(200);
    vec![
        answer("plain", "The reference.", "a plain `200` with `Content-Length`", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .relay(200, "hello").reuse_ok(),
        answer("cl_duplicate_same", "Identical duplicates may be merged (RFC 9110 §8.6).", "`Content-Length: 5` twice", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
            .relay(200, "hello").reuse_ok(),
        answer("cl_conflicting", "Conflicting lengths: a proxy MUST close the connection and answer 502 (RFC 9112 §6.3 item 5).", "`Content-Length: 5` and `6`", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        answer("cl_list_conflicting", "Conflicting lengths: a proxy MUST close the connection and answer 502 (RFC 9112 §6.3 item 5).", "`Content-Length: 5, 6`", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        answer("cl_and_te", "TE overrides CL and the CL must be removed before forwarding; the message ought to be handled as an error, so the connection is not reused (RFC 9112 §6.3 item 3).", "`Content-Length: 3` and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .relay(200, "hello")
            .finding("GET: the backend connection is reused; POST: the stale Content-Length is relayed with the de-chunked body (`hel`)"),
        answer("chunk_size_invalid", "Invalid framing after the headers went out: the client connection is closed, never continued (RFC 9112 §8).", "chunk size `zz`", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            .may_truncate(),
        answer("chunk_size_oversized", "Invalid framing after the headers went out: the client connection is closed (RFC 9112 §8).", "chunk size `ffffffffffffffffff`", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n")
            .may_truncate(),
        answer("chunk_size_negative", "Invalid framing after the headers went out: the client connection is closed (RFC 9112 §8).", "chunk size `-5`", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")
            .may_truncate(),
        answer("chunk_data_overrun", "Invalid framing after the headers went out: the client connection is closed (RFC 9112 §8).", "chunk data longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n")
            .may_truncate(),
        answer("early_close_length", "An incomplete message: the client must see it incomplete too, by a close (RFC 9112 §8).", "`Content-Length: 10`, 3 bytes, close", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
            .close().may_truncate(),
        answer("early_close_chunked", "An incomplete message: the client must see it incomplete too, by a close (RFC 9112 §8).", "a chunk cut short, close", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .close().may_truncate(),
        answer("continue_flood", "Interim answers are skipped until the final one (RFC 9110 §15.2).", "200 × `100 Continue`, then a `200`", format!("{continues}HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
            .relay(200, "hello").reuse_ok(),
        answer("body_on_204", "A 204 has no body; what follows is not this answer (RFC 9112 §6.3 item 1).", "`204` followed by a whole response", format!("HTTP/1.1 204 No Content\r\n\r\n{POISON}"))
            .relay(204, ""),
        answer("body_on_304", "A 304 has no body; what follows is not this answer (RFC 9112 §6.3 item 1).", "`304` followed by a whole response", format!("HTTP/1.1 304 Not Modified\r\n\r\n{POISON}"))
            .relay(304, ""),
        answer("cl_on_204", "A 204 has no body whatever Content-Length says (RFC 9112 §6.3 item 1).", "`204` with `Content-Length: 5` and 5 bytes", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
            .relay(204, ""),
        answer("bare_lf", "A recipient MAY accept a bare LF as line end (RFC 9112 §2.2).", "head lines ended by bare LF", "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello")
            .relay(200, "hello").reuse_ok(),
        answer("bare_cr_in_field", "A bare CR must be refused or replaced by SP (RFC 9112 §2.2).", "`X-A: b\\rc` in a response", "HTTP/1.1 200 OK\r\nX-A: b\rc\r\nContent-Length: 5\r\n\r\nhello")
            .relay(200, "hello"),
        answer("obs_fold", "A proxy MUST answer 502 or replace obs-fold by SP (RFC 9112 §5.2).", "an obs-folded response field", "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 5\r\n\r\nhello")
            .relay(200, "hello"),
        answer("status_999", "Relaying or 502 are both sound; the framing is clear.", "`HTTP/1.1 999 Odd`", "HTTP/1.1 999 Odd\r\nContent-Length: 5\r\n\r\nhello")
            .relay(999, "hello").reuse_ok(),
        answer("no_reason_phrase", "The reason phrase is optional (RFC 9112 §4).", "`HTTP/1.1 200` with no reason phrase", "HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello")
            .relay(200, "hello").reuse_ok(),
        answer("until_close", "Without framing the body ends at the close (RFC 9112 §6.3 item 8).", "no framing: the body runs until close", "HTTP/1.1 200 OK\r\n\r\nuntil close")
            .relay(200, "until close").close(),
        answer("te_http10", "TE in HTTP/1.0 is faulty framing: process once, then close (RFC 9112 §6.1).", "chunked in an HTTP/1.0 answer", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .relay(200, "hello"),
        answer("cl_plus", "An invalid Content-Length in a response: a proxy MUST close the connection and answer 502 (RFC 9112 §6.3 item 5).", "`Content-Length: +5`", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")
            .finding("GET: `+5` accepted as 5, relayed and the connection reused; must be 502"),
        answer("te_unknown", "A final coding other than chunked: the body runs until close (RFC 9112 §6.3 item 6).", "`Transfer-Encoding: gzip` (until close)", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip")
            .relay(200, "not really gzip").close(),
        answer("head_too_large", "No limit is required; relaying and 502 are both sound.", "a 70 000-byte response field", format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\nContent-Length: 5\r\n\r\nhello", "a".repeat(70_000)))
            .relay(200, "hello").reuse_ok(),
    ]
}
