//! Rule evaluation per fix, alone and in the geofence stage.
//!
//! - `rules/evaluate_per_fix`: ten rules of every kind (dwell, idle,
//!   overspeed, built-in events narrowed; half with a schedule in a time
//!   zone) over 10,000 fixes of 1,000 devices, each device's rule state
//!   kept; the target is 1,000,000 fixes/s on one core.
//! - `rules/stage_per_position`: the geofence stage's whole per-fix work
//!   (10,000 fences, filters, trips, events, state) without rules and with
//!   the ten, in the same run; the target is 0.9x or better.
//!
//! Run: `cargo bench -p otstream-benches --bench rules`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use otstream_bus::{Ack, Message};
use otstream_geofence::rules::{RuleState, Rules, Seen};
use otstream_geofence::stage::{StageConfig, Tracker};
use otstream_geofence::{Fence, FenceSet, Shape};
use otstream_model::record::{Meta, Position};
use otstream_model::{Event, EventKind, Record, Transport};

use otstream_benches::Rng;

/// Ten rules, every kind, five with schedules in two zones.
const RULES: &str = r#"
[[rules]]
name = "depot-dwell"
kind = "dwell"
min_s = 1200
fences = ["fence 1", "fence 2", "fence 3"]
[[rules]]
name = "any-dwell"
kind = "dwell"
min_s = 3600
schedule = { days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00", tz = "Europe/Berlin" }
[[rules]]
name = "idle"
kind = "idle"
min_s = 900
[[rules]]
name = "fast"
kind = "overspeed"
max_kmh = 130
min_s = 30
[[rules]]
name = "fast-at-night"
kind = "overspeed"
max_kmh = 100
min_s = 10
schedule = { from = "22:00", to = "06:00", tz = "America/New_York" }
[[rules]]
name = "in"
kind = "enter"
fences = ["fence 1", "fence 2"]
[[rules]]
name = "out-hours"
kind = "leave"
schedule = { days = ["sat", "sun"], from = "00:00", to = "00:00", tz = "Europe/Berlin" }
[[rules]]
name = "trips"
kind = "trip_ended"
debounce_s = 600
[[rules]]
name = "low"
kind = "battery_low"
[[rules]]
name = "stops-weekday"
kind = "stop_started"
schedule = { days = ["mon", "tue", "wed", "thu", "fri"], from = "07:00", to = "19:00", tz = "Europe/Berlin" }
"#;

fn meta(d: usize) -> Meta {
    Meta {
        user: "fleet".into(),
        device: format!("d{d}").into(),
        tid: None,
        received_at: 0,
        transport: Transport::Http,
        topic: None,
    }
}

/// 1,000 devices driving: consecutive fixes of a device ~250 m apart,
/// 15 s apart, at 60 km/h by `vel` (one in ten at 140 km/h).
fn fixes() -> Vec<Position> {
    let mut r = Rng(9);
    let mut at: Vec<(f64, f64)> = (0..1000)
        .map(|_| (r.range(45.0, 55.0), r.range(5.0, 20.0)))
        .collect();
    (0..10_000usize)
        .map(|i| {
            let d = i % 1000;
            at[d].0 += 0.00225;
            Position {
                acc: Some(10),
                vel: Some(if d % 10 == 0 { 140 } else { 60 }),
                ..Position::at(
                    meta(d),
                    1_700_000_000 + 15 * (i / 1000) as i64,
                    at[d].0,
                    at[d].1,
                )
            }
        })
        .collect()
}

fn evaluate(c: &mut Criterion) {
    let rules = Rules::parse(RULES, &Default::default()).expect("rules");
    let fixes = fixes();
    let mut group = c.benchmark_group("rules/evaluate_per_fix");
    group.throughput(Throughput::Elements(fixes.len() as u64));
    // What the other rules made of each fix: one device in five inside a
    // fence, one in three in a stop, one fix in twenty with an event.
    let inside: [&[u64]; 2] = [&[], &[11, 12]];
    group.bench_function("ten_rules_1000_devices", |b| {
        b.iter_batched(
            || vec![RuleState::default(); 1000],
            |mut states| {
                let mut fired = 0usize;
                let mut events: Vec<Event> = Vec::with_capacity(4);
                for (i, p) in fixes.iter().enumerate() {
                    let d = i % 1000;
                    events.clear();
                    if i % 20 == 0 {
                        events.push(Event::new(
                            EventKind::TripEnded,
                            p.meta.clone(),
                            p.tst,
                            (p.lat, p.lon),
                            None,
                        ));
                    }
                    let seen = Seen {
                        fix: p,
                        inside: inside[usize::from(d % 5 == 0)],
                        stop_since: (d % 3 == 0).then_some(p.tst - 600),
                        prev: Some((p.tst - 15, p.lat - 0.00225, p.lon)),
                    };
                    rules.evaluate(&mut states[d], seen, &|_| None, &mut events);
                    fired += events.len();
                }
                black_box(fired)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn stage(c: &mut Criterion) {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let set = Arc::new(FenceSet::new(
        (0..10_000)
            .map(|i| {
                let shape = Shape::Circle {
                    lat: r.range(45.0, 55.0),
                    lon: r.range(5.0, 20.0),
                    radius_m: r.range(50.0, 1000.0),
                };
                Fence::new(format!("f{i}"), format!("fence {i}"), shape)
            })
            .collect(),
    ));
    let rules = Rules::parse(RULES, &Default::default()).expect("rules");
    let fixes = fixes();
    let config = StageConfig::default();
    let mut group = c.benchmark_group("rules/stage_per_position");
    group.throughput(Throughput::Elements(fixes.len() as u64));
    group.sample_size(20);
    for (name, with) in [("no_rules", false), ("ten_rules", true)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut t = Tracker::new(&config, set.clone());
                    if with {
                        t.set_rules(rules.clone());
                    }
                    let input: Vec<Message<Record>> = fixes
                        .iter()
                        .map(|p| Message::new("k", Record::Position(p.clone()), Ack::none()))
                        .collect();
                    (t, input)
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
}

criterion_group!(benches, evaluate, stage);
criterion_main!(benches);
