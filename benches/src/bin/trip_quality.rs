//! Trip detection against the truth of simulated days of phones
//! (`otstream fleet --phones`): precision, recall, median start, end and
//! distance errors, and the detector's positions per second on one core,
//! for the current rules and, in the same run, Traccar's (the rules before,
//! `otstream_benches::traccar_trips`). `--sweep` scores a grid of
//! `[trips]` settings: how the defaults were chosen.
//!
//! Run: `cargo run --release -p otstream-benches --bin trip_quality -- --seeds 5`

use std::collections::HashMap;
use std::time::Instant;

use clap::Parser;
use otstream_benches::traccar_trips as traccar;
use otstream_loadgen::{
    Detected, Fleet, FleetConfig, Score, Sent, TruthTrip, locations, rests_inside, score,
};
use otstream_trips::{Detector, Finished, Fix, TripConfig, TripState};

#[derive(Parser)]
struct Args {
    /// Simulated days (seeds 1..=N).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Phones per day.
    #[arg(long, default_value_t = 24)]
    devices: u32,
    /// Score a grid of min_distance_m, min_stop_s and moving_kmh.
    #[arg(long)]
    sweep: bool,
}

const DAY_S: i64 = 86_400;

/// One day: the truth up to an hour before its end, and what the phones sent
/// (devices named by seed, so that days do not mix).
fn day(seed: u64, devices: u32) -> (Vec<TruthTrip>, Vec<Sent>, i64) {
    let config = FleetConfig::day_of_phones(seed, devices);
    let cut = config.start_ms / 1000 + DAY_S - 3600;
    let mut fleet = Fleet::new(config);
    let messages: Vec<_> = fleet.by_ref().collect();
    let mut sent = locations(&messages);
    for s in &mut sent {
        s.device = format!("{seed}/{}", s.device);
    }
    let truth = fleet
        .truth()
        .iter()
        .filter(|t| t.end < cut)
        .map(|t| TruthTrip {
            device: format!("{seed}/{}", t.device),
            ..t.clone()
        })
        .collect();
    (truth, sent, cut)
}

/// Runs one detector over every fix; the trips, and the seconds it took.
fn run<S: Default>(
    sent: &[Sent],
    cut: &HashMap<String, i64>,
    mut step: impl FnMut(&mut S, &Sent, &mut Vec<(i64, i64, f64)>),
) -> (Vec<Detected>, f64) {
    let mut states: HashMap<&str, S> = HashMap::new();
    let mut trips = Vec::new();
    let mut out = Vec::new();
    let started = Instant::now();
    for s in sent {
        step(states.entry(&s.device).or_default(), s, &mut out);
        for (start, end, distance_m) in out.drain(..) {
            trips.push(Detected {
                device: s.device.clone(),
                start,
                end,
                distance_m,
            });
        }
    }
    let secs = started.elapsed().as_secs_f64();
    trips.retain(|d| {
        cut.get(d.device.split('/').next().unwrap_or(""))
            .is_some_and(|c| d.end < *c)
    });
    (trips, secs)
}

fn current(config: TripConfig) -> impl FnMut(&mut TripState, &Sent, &mut Vec<(i64, i64, f64)>) {
    let d = Detector::new(config);
    let mut finished = Vec::new();
    move |state, s, out| {
        let fix = Fix {
            vel: s.vel,
            acc: s.acc,
            ..Fix::new(s.tst, s.lat, s.lon)
        };
        d.on_fix(state, fix, &mut finished);
        for f in finished.drain(..) {
            if let Finished::Trip(t) = f {
                out.push((t.start.tst, t.end.tst, t.distance_m));
            }
        }
    }
}

fn before() -> impl FnMut(&mut traccar::TripState, &Sent, &mut Vec<(i64, i64, f64)>) {
    let d = traccar::Detector::new(traccar::traccar_config());
    let mut finished = Vec::new();
    move |state, s, out| {
        let fix = traccar::Fix {
            vel: s.vel,
            ..traccar::Fix::new(s.tst, s.lat, s.lon)
        };
        d.on_fix(state, fix, &mut finished);
        for f in finished.drain(..) {
            if let traccar::Finished::Trip(t) = f {
                out.push((t.start.tst, t.end.tst, t.distance_m));
            }
        }
    }
}

/// Three rounds, the best time: the machine is noisy.
fn best(mut f: impl FnMut() -> (Vec<Detected>, f64)) -> (Vec<Detected>, f64) {
    let (trips, mut secs) = f();
    for _ in 0..2 {
        secs = secs.min(f().1);
    }
    (trips, secs)
}

/// One row: the score, the trips that ran through a true rest of
/// `min_stop_s` (180 s), and the rate.
fn line(name: &str, s: &Score, through: usize, fixes: usize, secs: f64) {
    println!(
        "{name:<34} {:>6} {:>8} {:>9.3} {:>6.3} {:>8.0} {:>6.0} {:>7.1}% {:>8} {:>9.2}",
        s.truth,
        s.detected,
        s.precision,
        s.recall,
        s.start_error_s,
        s.end_error_s,
        s.distance_error * 100.0,
        through,
        fixes as f64 / secs / 1e6,
    );
}

fn main() {
    let args = Args::parse();
    let (mut truth, mut sent, mut cut) = (Vec::new(), Vec::new(), HashMap::new());
    for seed in 1..=args.seeds {
        let (t, s, c) = day(seed, args.devices);
        truth.extend(t);
        sent.extend(s);
        cut.insert(seed.to_string(), c);
    }
    println!(
        "{} simulated days of {} phones: {} fixes, {} true trips",
        args.seeds,
        args.devices,
        sent.len(),
        truth.len()
    );
    println!(
        "{:<34} {:>6} {:>8} {:>9} {:>6} {:>8} {:>6} {:>8} {:>8} {:>9}",
        "rules",
        "truth",
        "detected",
        "precision",
        "recall",
        "start_s",
        "end_s",
        "dist",
        "thru rest",
        "M fixes/s"
    );
    let configs: Vec<TripConfig> = if args.sweep {
        let mut v = Vec::new();
        for min_distance_m in [100.0, 150.0, 200.0, 300.0] {
            for min_stop_s in [120, 180, 300] {
                for moving_kmh in [2.0, 3.0, 5.0] {
                    v.push(TripConfig {
                        min_distance_m,
                        min_stop_s,
                        moving_kmh,
                        ..TripConfig::default()
                    });
                }
            }
        }
        v
    } else {
        vec![TripConfig::default()]
    };
    let (trips, secs) = best(|| run(&sent, &cut, before()));
    line(
        "traccar 200 m 180 s (before)",
        &score(&truth, &trips),
        rests_inside(&truth, &trips, 180),
        sent.len(),
        secs,
    );
    for c in configs {
        let (trips, secs) = best(|| run(&sent, &cut, current(c)));
        let name = format!(
            "current {} m {} s {} km/h",
            c.min_distance_m, c.min_stop_s, c.moving_kmh
        );
        let through = rests_inside(&truth, &trips, c.min_stop_s);
        line(&name, &score(&truth, &trips), through, sent.len(), secs);
    }
}
