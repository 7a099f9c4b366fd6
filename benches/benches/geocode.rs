//! The offline geocoder: lookups per second on one core, for positions
//! spread over Europe (dense places) and over the whole globe (mostly
//! sea: the nearest place is far), against the k-d tree it replaced (the
//! `reverse_geocoder` crate over the same places) in the same run.
//!
//! `cargo bench -p otstream-benches --bench geocode`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use otstream_benches::Rng;

fn bench(c: &mut Criterion) {
    let g = otstream_geocode::Geocoder::new(100.0);
    let mut r = Rng(7);
    let europe: Vec<(f64, f64)> = (0..10_000)
        .map(|_| (r.range(40.0, 60.0), r.range(-5.0, 25.0)))
        .collect();
    let globe: Vec<(f64, f64)> = (0..10_000)
        .map(|_| (r.range(-80.0, 80.0), r.range(-180.0, 180.0)))
        .collect();
    // A fleet's city: within 0.3° of Paris, where the own cell alone holds
    // about 50 places.
    let city: Vec<(f64, f64)> = (0..10_000)
        .map(|_| (r.range(48.56, 49.16), r.range(2.05, 2.65)))
        .collect();
    let kd = reverse_geocoder::ReverseGeocoder::new();
    let mut group = c.benchmark_group("geocode/lookup");
    for (name, points) in [("europe", &europe), ("globe", &globe), ("paris", &city)] {
        group.throughput(Throughput::Elements(points.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut found = 0u32;
                for (lat, lon) in points.iter() {
                    found += u32::from(g.lookup(*lat, *lon).is_some());
                }
                black_box(found)
            })
        });
        group.bench_function(format!("{name}_kdtree_before"), |b| {
            b.iter(|| {
                let mut d = 0.0;
                for (lat, lon) in points.iter() {
                    d += kd.search((*lat, *lon)).distance;
                }
                black_box(d)
            })
        });
    }
    // What the sink does per position: the lookup and the two strings.
    group.throughput(Throughput::Elements(europe.len() as u64));
    group.bench_function("europe_with_labels", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for (lat, lon) in &europe {
                if let Some(p) = g.lookup(*lat, *lon) {
                    bytes += p.label().len() + p.cc.len();
                }
            }
            black_box(bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
