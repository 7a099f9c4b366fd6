//! The read API's routing: every path of a request mix looked up through
//! the router (`otstream_api::endpoint::Endpoint::of`, matchit) against
//! the string `match` it replaced, in the same run. Not on the ingest
//! path: the phones' POSTs are answered by the ingress before any routing.
//!
//! `cargo bench -p otstream-benches --bench routing`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use otstream_api::endpoint::Endpoint;

/// The known-path check the API made before the router (a copy).
fn matched(path: &str) -> bool {
    matches!(
        path,
        "/" | "/map"
            | "/share"
            | "/api/v1/devices"
            | "/api/v1/positions"
            | "/api/v1/trips"
            | "/api/v1/stops"
            | "/api/v1/transitions"
            | "/api/v1/summary"
            | "/api/v1/live"
            | "/api/v1/fences"
            | "/api/v1/waypoints"
            | "/api/0/last"
            | "/api/0/locations"
            | "/api/0/list"
            | "/api/0/version"
            | "/ws/last"
    )
}

fn bench(c: &mut Criterion) {
    let paths = [
        "/api/v1/positions",
        "/api/0/last",
        "/api/v1/devices",
        "/",
        "/api/0/locations",
        "/api/v1/trips",
        "/assets/map.js",
        "/favicon.ico",
    ];
    let mut group = c.benchmark_group("api/route");
    group.throughput(Throughput::Elements(paths.len() as u64));
    group.bench_function("matchit", |b| {
        b.iter(|| {
            let mut found = 0u32;
            for p in &paths {
                found += u32::from(Endpoint::of(black_box(p)).is_some());
            }
            black_box(found)
        })
    });
    group.bench_function("string_match (baseline)", |b| {
        b.iter(|| {
            let mut found = 0u32;
            for p in &paths {
                found += u32::from(matched(black_box(p)));
            }
            black_box(found)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
