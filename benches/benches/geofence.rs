//! Position checks per second against 10, 1,000, 10,000 and 100,000 fences
//! (circles, and polygons of 200 vertices), with a linear scan over every
//! fence as the same-run baseline, and the state kept per device.
//!
//! Run: `cargo bench -p otstream-benches --bench geofence`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use otstream_geofence::{DeviceState, Fence, FenceSet, GeofenceConfig, Geofencer, Shape};
use otstream_model::Transport;
use otstream_model::record::{Meta, Position};

/// A deterministic generator (xorshift), so every run measures the same
/// fences and fixes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// Fences scattered over central Europe, as a national fleet's depots,
/// customers and sites would be.
fn fences(n: usize, polygons: bool) -> Vec<Fence> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    (0..n)
        .map(|i| {
            let (lat, lon, radius) = (
                r.range(45.0, 55.0),
                r.range(5.0, 20.0),
                r.range(50.0, 1000.0),
            );
            let shape = if polygons {
                // A wobbly ring of 200 vertices: a realistic site outline.
                let cos = lat.to_radians().cos();
                let ring: Vec<(f64, f64)> = (0..=200)
                    .map(|k| {
                        let a = f64::from(k % 200) / 200.0 * std::f64::consts::TAU;
                        let m = radius * (0.8 + 0.2 * (5.0 * a).sin());
                        (
                            lon + m * a.cos() / (111_320.0 * cos),
                            lat + m * a.sin() / 111_320.0,
                        )
                    })
                    .collect();
                Shape::Polygon(geo::MultiPolygon(vec![geo::Polygon::new(
                    geo::LineString::from(ring),
                    vec![],
                )]))
            } else {
                Shape::Circle {
                    lat,
                    lon,
                    radius_m: radius,
                }
            };
            Fence::new(format!("f{i}"), format!("fence {i}"), shape)
        })
        .collect()
}

fn positions(n: usize) -> Vec<Position> {
    let mut r = Rng(42);
    (0..n)
        .map(|i| {
            let meta = Meta {
                user: "fleet".into(),
                device: format!("d{}", i % 1000).into(),
                tid: None,
                received_at: 0,
                transport: Transport::Http,
                topic: None,
            };
            let (lat, lon) = (r.range(45.0, 55.0), r.range(5.0, 20.0));
            Position {
                acc: Some(10),
                ..Position::at(meta, 1_700_000_000 + i as i64, lat, lon)
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let fixes = positions(10_000);
    for polygons in [false, true] {
        let kind = if polygons {
            "polygons_200_vertices"
        } else {
            "circles"
        };
        let mut group = c.benchmark_group(format!("geofence/{kind}"));
        group.throughput(Throughput::Elements(fixes.len() as u64));
        group.sample_size(10);
        for n in [10usize, 1_000, 10_000, 100_000] {
            let set = Arc::new(FenceSet::new(fences(n, polygons)));
            group.bench_function(BenchmarkId::new("indexed", n), |b| {
                b.iter_batched(
                    || Geofencer::new(GeofenceConfig::default(), set.clone()),
                    |mut g| {
                        for p in &fixes {
                            black_box(g.on_position(p));
                        }
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
            if n <= 1_000 {
                group.bench_function(BenchmarkId::new("linear_scan_baseline", n), |b| {
                    b.iter(|| {
                        for p in &fixes {
                            let inside = set
                                .fences()
                                .iter()
                                .filter(|f| f.outside_m(p.lat, p.lon) <= 0.0)
                                .count();
                            black_box(inside);
                        }
                    })
                });
            }
        }
        group.finish();
    }
    // State per device, printed with the results.
    let mut s = DeviceState::default();
    s.inside.extend([1, 2, 3]);
    println!(
        "state per device: {} bytes (DeviceState, up to 8 fences inline) + the map entry's key",
        s.bytes()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
