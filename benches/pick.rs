//! One pick of each strategy over 3 and 100 backends (no allocation on this path).

use std::{hint::black_box, net::IpAddr, sync::Arc};

use alb::balance::{
    adaptive::AdaptiveConfig, Backend, BackendIds, BackendSet, BackendSpec, Endpoint, PickTrace,
    Strategy, StrategyKind,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn set(n: usize) -> BackendSet {
    let ids = BackendIds::new();
    let endpoints: Vec<Arc<Endpoint>> = (0..n)
        .map(|i| {
            let spec = BackendSpec {
                url: format!("http://10.0.{}.{}:8080", i / 250, i % 250),
                authority: format!("10.0.{}.{}:8080", i / 250, i % 250)
                    .parse()
                    .unwrap(),
                weight: 1 + (i % 3) as u32,
                dns_name: None,
            };
            let backend = Backend::new(ids.id_of(&spec.authority), &spec);
            Arc::new(Endpoint::new(backend, &AdaptiveConfig::DEFAULT))
        })
        .collect();
    BackendSet::new(endpoints.clone(), endpoints)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100] {
        let set = set(n);
        for kind in StrategyKind::ALL {
            let strategy = Strategy::new(kind);
            let client: IpAddr = "192.0.2.7".parse().unwrap();
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &set, |b, set| {
                b.iter(|| {
                    let mut trace = PickTrace::default();
                    black_box(strategy.pick(black_box(set), Some(client), &mut trace))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
