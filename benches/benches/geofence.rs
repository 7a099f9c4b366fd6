//! Position checks per second against 10, 1,000, 10,000 and 100,000 fences
//! (circles, and polygons of 200 vertices), with a linear scan over every
//! fence as the same-run baseline, and the state kept per device.
//!
//! Also: a fleet dwelling inside 10,000 polygons (every check exact), the
//! stage's whole per-position work (fences, trips, state snapshot), and
//! the trip detector alone on a simulated day of phones, with Traccar's
//! rules (the detector before) as the same-run baseline.
//!
//! Run: `cargo bench -p otstream-benches --bench geofence`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use otstream_bus::{Ack, Message};
use otstream_geofence::stage::{DeviceGeo, StageConfig, Tracker};
use otstream_geofence::{DeviceState, Fence, FenceSet, GeofenceConfig, Geofencer, Shape};
use otstream_model::record::{Meta, Position};
use otstream_model::{Record, Transport};

use otstream_benches::Rng;

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
                    || {
                        let g = Geofencer::new(GeofenceConfig::default(), set.clone());
                        (g, HashMap::<String, DeviceState>::new())
                    },
                    |(g, mut states)| {
                        for p in &fixes {
                            let key = p.meta.key();
                            let state = states.entry(key.clone()).or_default();
                            black_box(g.evaluate(&key, p, state));
                        }
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
            // The polygon baseline costs ~45 µs a test (the distance to
            // the outline of a fence the fix is outside): 10 fences only.
            if n <= if polygons { 10 } else { 1_000 } {
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
    dwelling(c, &fixes);
    stage(c);
    detector(c);
    // State per device, printed with the results.
    let mut s = DeviceState::default();
    s.inside.extend([1, 2, 3]);
    println!(
        "state per device: {} bytes (DeviceState, up to 8 fences inline) + {} bytes (TripState) = {} bytes (DeviceGeo), + the map entry's key",
        s.bytes(),
        std::mem::size_of::<otstream_trips::TripState>(),
        std::mem::size_of::<DeviceGeo>(),
    );
}

/// A fleet parked at its sites: every fix inside (or at the edge of) a
/// polygon, so every check runs the exact point-in-polygon test, and the
/// devices inside run the leave test.
fn dwelling(c: &mut Criterion, fixes: &[Position]) {
    let n = 10_000;
    let polys = fences(n, true);
    let centres: Vec<(f64, f64)> = fences(n, false)
        .iter()
        .map(|f| match f.shape {
            Shape::Circle { lat, lon, .. } => (lat, lon),
            Shape::Polygon(_) => unreachable!(),
        })
        .collect();
    let set = Arc::new(FenceSet::new(polys));
    let mut r = Rng(7);
    let parked: Vec<Position> = fixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // A device sits at one site, jittering ~50 m around its centre.
            let (lat, lon) = centres[(i % 1000) * 7 % n];
            Position {
                lat: lat + r.range(-0.0005, 0.0005),
                lon: lon + r.range(-0.0007, 0.0007),
                ..p.clone()
            }
        })
        .collect();
    let mut group = c.benchmark_group("geofence/dwelling_in_polygons_200_vertices");
    group.throughput(Throughput::Elements(parked.len() as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("indexed", n), |b| {
        b.iter_batched(
            || {
                let g = Geofencer::new(GeofenceConfig::default(), set.clone());
                (g, HashMap::<String, DeviceState>::new())
            },
            |(g, mut states)| {
                for p in &parked {
                    let key = p.meta.key();
                    let state = states.entry(key.clone()).or_default();
                    black_box(g.evaluate(&key, p, state));
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The whole per-position work of the stage: fences (10,000 circles), the
/// trip rules, and the state snapshot written with every changed state;
/// the geofence check alone (above) is its baseline.
fn stage(c: &mut Criterion) {
    let set = Arc::new(FenceSet::new(fences(10_000, false)));
    // 1,000 devices driving: consecutive fixes of a device ~250 m apart.
    let mut r = Rng(9);
    let mut at: Vec<(f64, f64)> = (0..1000)
        .map(|_| (r.range(45.0, 55.0), r.range(5.0, 20.0)))
        .collect();
    let msgs: Vec<Position> = (0..10_000usize)
        .map(|i| {
            let d = i % 1000;
            at[d].0 += 0.00225;
            let meta = Meta {
                user: "fleet".into(),
                device: format!("d{d}").into(),
                tid: None,
                received_at: 0,
                transport: Transport::Http,
                topic: None,
            };
            Position {
                acc: Some(10),
                vel: Some(60),
                ..Position::at(
                    meta,
                    1_700_000_000 + 15 * (i / 1000) as i64,
                    at[d].0,
                    at[d].1,
                )
            }
        })
        .collect();
    let mut group = c.benchmark_group("geofence/stage_per_position");
    group.throughput(Throughput::Elements(msgs.len() as u64));
    group.sample_size(10);
    // The same stage with the position filters off: the filters' cost is
    // the difference, measured in the same run.
    let unfiltered = StageConfig {
        filters: otstream_geofence::filter::FilterConfig {
            enabled: false,
            ..Default::default()
        },
        ..StageConfig::default()
    };
    for (name, config) in [
        (
            "fences_trips_and_state_10000_circles",
            StageConfig::default(),
        ),
        (
            "fences_trips_and_state_10000_circles_no_filters",
            unfiltered,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        Tracker::new(&config, set.clone()),
                        msgs.iter()
                            .map(|p| Message::new("k", Record::Position(p.clone()), Ack::none()))
                            .collect::<Vec<_>>(),
                    )
                },
                |(mut t, input)| {
                    let mut out = Vec::with_capacity(input.len() * 2);
                    for m in input {
                        t.process(m, &mut out);
                    }
                    black_box(out)
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    // The filters alone: one verdict per fix, each device's state kept.
    let filters = otstream_geofence::filter::Filters::new(Default::default());
    let mut group = c.benchmark_group("geofence/filters_per_position");
    group.throughput(Throughput::Elements(msgs.len() as u64));
    group.bench_function("default_rules_1000_devices", |b| {
        b.iter_batched(
            || vec![otstream_geofence::filter::FilterState::default(); 1000],
            |mut states| {
                let mut taken = 0u32;
                for (i, p) in msgs.iter().enumerate() {
                    let now = 1_700_000_000 + 3600;
                    taken += u32::from(filters.check(&mut states[i % 1000], p, now).is_none());
                }
                black_box(taken)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The trip rules alone, per fix, on a day of 24 phones (noise, outliers,
/// lights, tunnels, errands): the current detector and Traccar's rules.
fn detector(c: &mut Criterion) {
    use otstream_benches::traccar_trips as traccar;
    let config = otstream_loadgen::FleetConfig::day_of_phones(1, 24);
    let messages: Vec<_> = otstream_loadgen::Fleet::new(config).collect();
    let sent = otstream_loadgen::locations(&messages);
    // Devices by index, so that the figure is the rules' and not a map's.
    let fixes: Vec<(usize, otstream_trips::Fix)> = sent
        .iter()
        .map(|s| {
            let device = s.device.trim_start_matches('d').parse().unwrap_or(0);
            let fix = otstream_trips::Fix {
                vel: s.vel,
                acc: s.acc,
                ..otstream_trips::Fix::new(s.tst, s.lat, s.lon)
            };
            (device, fix)
        })
        .collect();
    let mut group = c.benchmark_group("trips/phones_day");
    group.throughput(Throughput::Elements(fixes.len() as u64));
    group.sample_size(20);
    group.bench_function("current", |b| {
        let d = otstream_trips::Detector::new(otstream_trips::TripConfig::default());
        b.iter(|| {
            let mut states = vec![otstream_trips::TripState::default(); 24];
            let mut out = Vec::new();
            for (i, f) in &fixes {
                d.on_fix(&mut states[*i], *f, &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("traccar_before", |b| {
        let d = traccar::Detector::new(traccar::traccar_config());
        b.iter(|| {
            let mut states = vec![traccar::TripState::default(); 24];
            let mut out = Vec::new();
            for (i, f) in &fixes {
                d.on_fix(&mut states[*i], *f, &mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
