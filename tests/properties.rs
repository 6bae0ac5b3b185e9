//! Property tests: config parsing and the request rewrite never panic, whatever the input.

use std::path::Path;

use alb::{
    config::Config,
    forward::{rewrite_request, ClientProto},
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
