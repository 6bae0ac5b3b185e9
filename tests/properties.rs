//! Property tests: config parsing and the request rewrite never panic, whatever the input.

use std::path::Path;
use std::{collections::BTreeMap, net::SocketAddr};

use alb::{
    config::Config,
    forward::{encode_forwarded_head, rewrite_request, rewrite_request_for, ClientProto},
};
use proptest::prelude::*;

const KEYS: [&str; 14] = [
    "port",
    "tls_port",
    "cert_file",
    "key_file",
    "strategy",
    "backends",
    "health_check_path",
    "health_check_interval",
    "workers",
    "rate_limit",
    "adaptive",
    "max_in_flight",
    "outlier_detection",
    "trusted_proxies",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,24}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("http://127.0.0.1:8081")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn config_text_never_panics(text in ".{0,200}") {
        let _ = Config::parse(&text, Path::new("fuzz.json"));
    }

    #[test]
    fn config_structures_never_panic(value in json_value()) {
        let _ = Config::parse(&value.to_string(), Path::new("fuzz.json"));
    }

    #[test]
    fn rewrite_never_panics_and_strips_hop_by_hop(
        path in "/[a-zA-Z0-9/%?=&._~-]{0,40}",
        headers in prop::collection::vec(("[a-zA-Z0-9-]{1,20}", "[ -~]{0,40}"), 0..12),
        connection in prop::collection::vec("[a-zA-Z0-9-]{1,12}", 0..4),
        authority in prop::option::of("[a-z0-9.-]{1,20}(:[0-9]{1,5})?"),
        http2 in any::<bool>(),
    ) {
        let uri = match &authority {
            Some(a) => format!("http://{a}{path}"),
            None => path.clone(),
        };
        let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()); };
        let mut request = http::Request::new(());
        *request.uri_mut() = uri;
        if http2 {
            *request.version_mut() = http::Version::HTTP_2;
        }
        for (name, value) in &headers {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value)) {
                request.headers_mut().append(n, v);
            }
        }
        if let Ok(v) = http::HeaderValue::from_str(&connection.join(", ")) {
            request.headers_mut().insert(http::header::CONNECTION, v);
        }
        let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
        rewrite_request(&mut request, &backend, Some("127.0.0.9:1000".parse().unwrap()), ClientProto::Http);
        prop_assert_eq!(request.version(), http::Version::HTTP_11);
        prop_assert_eq!(request.uri().authority().map(|a| a.as_str()), Some("127.0.0.1:9000"));
        for hop in ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "proxy-authorization", "upgrade"] {
            prop_assert!(request.headers().get(hop).is_none(), "{} survived", hop);
        }
        for token in &connection {
            prop_assert!(request.headers().get(token.as_str()).is_none() || token.eq_ignore_ascii_case("x-forwarded-for") || token.eq_ignore_ascii_case("x-forwarded-proto") || token.eq_ignore_ascii_case("x-forwarded-host") || token.eq_ignore_ascii_case("host"),
                "{} listed in Connection survived", token);
        }
        prop_assert!(request.headers().get("x-forwarded-for").is_some());
    }
}

/// Cases per parser property: `ALB_FUZZ_CASES` when set (`ALB_FUZZ_CASES=100000` for a long
/// run), else 2 000 so `cargo test` stays quick.
fn fuzz_cases() -> u32 {
    std::env::var("ALB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
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

/// A header name `http` accepts: a random token, or one of the names the rewrite treats
/// specially, in any case.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,16}",
        prop::sample::select(
            &[
                "Host",
                "host",
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "Keep-Alive",
                "TE",
                "Trailer",
                "Upgrade",
                "Proxy-Connection",
                "Proxy-Authorization",
                "X-Forwarded-For",
                "X-Forwarded-Host",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// A header value `http` accepts: any bytes but controls other than tab and DEL, or a token
/// list such as `Connection` carries.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24),
        prop::collection::vec(header_name(), 0..3).prop_map(|names| names.join(", ").into_bytes()),
        prop::sample::select(&["close", "keep-alive", "upgrade", "chunked", "websocket"][..])
            .prop_map(|v| v.as_bytes().to_vec()),
    ]
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// The rewrite and the own client's request head, over any method, target and headers
    /// `http` accepts: the head ALB writes (requests that are not upgrades, the only ones
    /// it writes itself) has no hop-by-hop header, exactly one `Host`, never both
    /// `Content-Length` and `Transfer-Encoding`, and `httparse` reads back the method, the
    /// path and the headers of the rewritten request (values up to surrounding spaces).
    #[test]
    fn encoded_request_head_reparses_without_hop_by_hop(
        method in prop_oneof![
            prop::sample::select(&["GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH"][..])
                .prop_map(str::to_owned),
            "[A-Z!#$%&'*+.^_`|~-]{1,10}",
        ],
        target in prop_oneof![
            "/[a-zA-Z0-9/%?=&._~!$'()*+,;:@-]{0,40}",
            "http://[a-z0-9.-]{1,20}(:[0-9]{1,5})?/[!-~]{0,30}",
            "/[!-~]{0,30}",
        ],
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        http2 in any::<bool>(),
    ) {
        let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()); };
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return Ok(()); };
        let mut request = http::Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        if http2 {
            *request.version_mut() = http::Version::HTTP_2;
        }
        for (name, value) in &headers {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value)) {
                request.headers_mut().append(n, v);
            }
        }
        if alb::semantics::upgrade_protocol(request.headers()).is_some() {
            // Upgrades go through hyper's client, never through `encode_request`.
            return Ok(());
        }
        let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
        rewrite_request(&mut request, &backend, Some("127.0.0.9:1000".parse().unwrap()), ClientProto::Http);
        let mut head = bytes::BytesMut::new();
        alb::upstream::encode_request(&request, &mut head);

        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut slots);
        let status = parsed.parse(&head);
        prop_assert!(matches!(status, Ok(httparse::Status::Complete(n)) if n == head.len()),
            "{:?} for {:?}", status, String::from_utf8_lossy(&head));
        prop_assert_eq!(parsed.method, Some(method.as_str()));
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        prop_assert_eq!(parsed.path, Some(path));
        let names: Vec<String> = parsed.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
        for hop in HOP_BY_HOP {
            prop_assert!(!names.iter().any(|n| n == hop), "{} sent: {:?}", hop, String::from_utf8_lossy(&head));
        }
        prop_assert_eq!(names.iter().filter(|n| *n == "host").count(), 1, "{:?}", String::from_utf8_lossy(&head));
        prop_assert!(!(names.iter().any(|n| n == "content-length") && names.iter().any(|n| n == "transfer-encoding")));

        // What should be on the wire: the rewritten headers, one Host, and `content-length: 0`
        // for a body-less POST, PUT or PATCH.
        let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
        let mut host_seen = false;
        for (name, value) in request.headers() {
            if name == http::header::HOST {
                if host_seen { continue; }
                host_seen = true;
            }
            expected.push((name.as_str().to_owned(), trim_ows(value.as_bytes()).to_vec()));
        }
        if !host_seen {
            expected.push(("host".to_owned(), b"127.0.0.1:9000".to_vec()));
        }
        let expects_body = matches!(method, http::Method::POST | http::Method::PUT | http::Method::PATCH);
        if expects_body && !request.headers().contains_key(http::header::CONTENT_LENGTH) {
            expected.push(("content-length".to_owned(), b"0".to_vec()));
        }
        let got: Vec<(String, Vec<u8>)> = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), trim_ows(h.value).to_vec()))
            .collect();
        prop_assert_eq!(got, expected);
    }
}

/// A request from generated parts; `None` when `http` refuses the method or the target.
fn request_of(
    method: &str,
    target: &str,
    headers: &[(String, Vec<u8>)],
) -> Option<http::Request<()>> {
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::from_bytes(method.as_bytes()).ok()?;
    *request.uri_mut() = target.parse().ok()?;
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            request.headers_mut().append(n, v);
        }
    }
    Some(request)
}

/// A request head's line and its fields by name, each name's values in the order sent
/// (the order of different names carries no meaning, RFC 9110 §5.3).
type HeadFields = (String, String, BTreeMap<String, Vec<Vec<u8>>>);

fn head_fields(head: &[u8]) -> Result<HeadFields, String> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => return Err(format!("{other:?} for {:?}", String::from_utf8_lossy(head))),
    }
    let mut fields: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for h in parsed.headers.iter() {
        fields
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(h.value.to_vec());
    }
    Ok((
        parsed.method.unwrap_or_default().to_owned(),
        parsed.path.unwrap_or_default().to_owned(),
        fields,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// The own pool's head, written from the request as received with its fields changed on
    /// the way (`encode_forwarded_head`), sends the same request line and fields as the
    /// rewrite followed by `encode_request` (or `encode_request_with_length`): for any
    /// method, target and headers `http` accepts (upgrades aside: they take hyper's client),
    /// any peer, with or without a `Host` fallback, over HTTP or HTTPS.
    #[test]
    fn forwarded_head_sends_what_the_rewrite_sends(
        method in prop::sample::select(&["GET", "HEAD", "DELETE", "POST", "PUT", "PATCH", "PURGE"][..]),
        target in prop_oneof![
            "/[a-zA-Z0-9/%?=&._~-]{0,20}",
            "http://[a-z0-9.-]{1,12}(:[0-9]{1,5})?/[!-~]{0,12}",
        ],
        headers in prop::collection::vec((
            prop_oneof![
                header_name(),
                prop::sample::select(&["X-Forwarded-Proto", "Content-Type", "x-forwarded-for"][..]).prop_map(str::to_owned),
            ],
            prop_oneof![
                header_value(),
                prop::sample::select(&[
                    "trailers", "application/grpc", "10.1.2.3", "te, x-forwarded-for",
                    "x-forwarded-host, x-forwarded-proto", "content-length", "host", "\u{e9}t\u{e9}",
                ][..]).prop_map(|v| v.as_bytes().to_vec()),
            ],
        ), 0..12),
        peer in prop_oneof![
            Just(None),
            any::<[u8; 4]>().prop_map(|ip| Some(SocketAddr::from((ip, 4000)))),
            Just(Some("[2001:db8::7]:4000".parse::<SocketAddr>().unwrap())),
        ],
        fallback in any::<bool>(),
        https in any::<bool>(),
        length in prop::option::of(0u64..100_000),
    ) {
        let Some(mut rewritten) = request_of(method, &target, &headers) else { return Ok(()); };
        if alb::semantics::upgrade_protocol(rewritten.headers()).is_some() {
            return Ok(());
        }
        let received = request_of(method, &target, &headers).unwrap();
        let backend: http::uri::Authority = "127.0.0.1:9000".parse().unwrap();
        let fallback = fallback.then(|| http::HeaderValue::from_static("svc.internal:8080"));
        let proto = if https { ClientProto::Https } else { ClientProto::Http };

        rewrite_request_for(&mut rewritten, &backend, fallback.as_ref(), peer, proto);
        let mut expected = bytes::BytesMut::new();
        match length {
            Some(length) => alb::upstream::encode_request_with_length(&rewritten, length, &mut expected),
            None => alb::upstream::encode_request(&rewritten, &mut expected),
        }
        let mut got = bytes::BytesMut::new();
        encode_forwarded_head(&received, &backend, fallback.as_ref(), peer, proto, length, &mut got);

        let expected_fields = head_fields(&expected).map_err(TestCaseError::fail)?;
        let got_fields = head_fields(&got).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got_fields, expected_fields, "\nsent:     {:?}\nrewritten: {:?}",
            String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
    }
}
