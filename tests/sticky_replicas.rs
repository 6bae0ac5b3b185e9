//! Several ALB replicas need no shared state for stickiness: `sticky` is rendezvous hashing
//! of the client address over the configured backends, so replicas with the same config
//! send a client to the same backend.

mod common;

use std::{collections::HashSet, net::IpAddr};

use common::*;
use serde_json::json;

#[tokio::test]
async fn two_replicas_send_each_client_address_to_the_same_backend() {
    let backends: Vec<Proc> = (0..3).map(|_| backend(&[])).collect();
    let config = json!({
        "backends": urls(&backends.iter().collect::<Vec<_>>()),
        "strategy": "sticky",
    });
    let replicas = [alb(config.clone()), alb(config)];
    let mut homes = HashSet::new();
    for last in 10..40u8 {
        let source = IpAddr::from([127, 0, 0, last]);
        let client = client_from(Some(source));
        let mut seen = Vec::new();
        for _ in 0..3 {
            for replica in &replicas {
                let answer = get(&client, &replica.url()).await;
                assert_eq!(answer.status, 200, "{answer:?}");
                seen.push(answer.backend.expect("x-alb-backend"));
            }
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "client {source} went to {seen:?}"
        );
        homes.insert(seen[0].clone());
    }
    // Not one backend for everybody: the clients are spread, and still each one agrees.
    assert!(homes.len() >= 2, "30 clients all went to {homes:?}");
}
