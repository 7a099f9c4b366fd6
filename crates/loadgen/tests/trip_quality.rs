//! Trip detection on days of phones, scored against the fleet's truth.
//!
//! Each seed is a simulated day of 24 devices walking, cycling, driving
//! and riding buses, with GPS noise, Wi-Fi and cell outliers while parked,
//! traffic lights, bus stops, tunnels, errands and moves across the car
//! park. The detector sees what
//! the phones sent; the fleet knows what happened.

use std::collections::HashMap;

use otstream_loadgen::{
    Detected, Fleet, FleetConfig, Kind, Score, TruthTrip, locations, rests_inside, score,
};
use otstream_trips::{Detector, Finished, Fix, TripConfig, TripState};

const DAY_S: i64 = 86_400;

/// One day of `devices` phones, its truth, and what the detector made of it.
/// Trips are compared up to an hour before the day's end, so that a trip
/// whose arrival the detector has not yet confirmed is not counted.
fn day(seed: u64, devices: u32) -> (Vec<TruthTrip>, Vec<Detected>, Vec<(String, i64)>) {
    let config = FleetConfig::day_of_phones(seed, devices);
    let start = config.start_ms / 1000;
    let mut fleet = Fleet::new(config);
    let messages: Vec<_> = fleet.by_ref().collect();
    let detector = Detector::new(TripConfig::default());
    let mut states: HashMap<String, TripState> = HashMap::new();
    let mut detected = Vec::new();
    let mut out = Vec::new();
    for s in locations(&messages) {
        let fix = Fix {
            vel: s.vel,
            acc: s.acc,
            ..Fix::new(s.tst, s.lat, s.lon)
        };
        detector.on_fix(states.entry(s.device.clone()).or_default(), fix, &mut out);
        for f in out.drain(..) {
            if let Finished::Trip(t) = f {
                detected.push(Detected {
                    device: s.device.clone(),
                    start: t.start.tst,
                    end: t.end.tst,
                    distance_m: t.distance_m,
                });
            }
        }
    }
    let cut = start + DAY_S - 3600;
    let truth = fleet
        .truth()
        .iter()
        .filter(|t| t.end < cut)
        .cloned()
        .collect();
    detected.retain(|d| d.end < cut);
    (truth, detected, fleet.moves())
}

fn check(seed: u64, s: &Score) {
    assert!(s.truth >= 100, "seed {seed}: a day has trips: {s:?}");
    assert!(s.precision >= 0.95, "seed {seed}: precision {s:?}");
    assert!(s.recall >= 0.95, "seed {seed}: recall {s:?}");
    assert!(s.start_error_s <= 60.0, "seed {seed}: start {s:?}");
    assert!(s.end_error_s <= 60.0, "seed {seed}: end {s:?}");
    assert!(s.distance_error <= 0.05, "seed {seed}: distance {s:?}");
}

#[test]
fn detection_matches_the_truth_on_days_of_phones() {
    let mut kinds = HashMap::new();
    let mut throughs = Vec::new();
    for seed in [1, 2, 3] {
        let (truth, detected, moves) = day(seed, 24);
        for t in &truth {
            *kinds.entry(t.kind).or_insert(0) += 1;
        }
        let s = score(&truth, &detected);
        let through = rests_inside(&truth, &detected, TripConfig::default().min_stop_s);
        eprintln!("seed {seed}: {s:?}; trips through a rest: {through}");
        check(seed, &s);
        throughs.push(through);
        // A move across the car park and the rest of the stop after it
        // open no trip that runs through that rest (the issue-36 failure: a
        // trip from the walk to the next departure, the rest inside).
        let from_moves: Vec<Detected> = detected
            .iter()
            .filter(|d| {
                moves
                    .iter()
                    .any(|(m, t)| *m == d.device && (d.start - t).abs() <= 120)
            })
            .cloned()
            .collect();
        assert!(moves.len() >= 50, "seed {seed}: {} moves", moves.len());
        let min_stop_s = TripConfig::default().min_stop_s;
        assert_eq!(
            rests_inside(&truth, &from_moves, min_stop_s),
            0,
            "seed {seed}: trips from a move within a stop through the rest after it"
        );
    }
    // No trip runs into a rest of a stop's length: not from a move within
    // a stop (above), nor from a device's first fix an outlier, an arrival
    // lost to a cell fix, a departure first seen at a light or an arrival
    // followed by a walk (the rules of `tests/phones.rs` in the trips
    // crate; before them 7, 14 and 10, and 21, 22 and 20 before the move
    // fix).
    assert_eq!(throughs, [0, 0, 0], "trips through a rest, by seed");
    // Every way of moving was in the test.
    for k in [Kind::Walk, Kind::Cycle, Kind::Drive, Kind::Transit] {
        assert!(kinds.get(&k).copied().unwrap_or(0) >= 10, "{kinds:?}");
    }
}

/// One phone's fixes over a day, outliers, lights, errands and a move
/// across a car park included.
fn one_phone() -> Vec<Fix> {
    let config = FleetConfig {
        devices: 3,
        messages: u64::MAX,
        duration_s: Some(86_400),
        seed: 7,
        phones: true,
        ..FleetConfig::default()
    };
    let messages: Vec<_> = Fleet::new(config).collect();
    locations(&messages)
        .into_iter()
        .filter(|s| s.device == "d00000")
        .map(|s| Fix {
            vel: s.vel,
            acc: s.acc,
            ..Fix::new(s.tst, s.lat, s.lon)
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Persisting the state anywhere (an outlier waiting, a second place
    /// settled at, a trip open) and resuming gives what an uninterrupted
    /// run gives, on the noisy data of a phone.
    #[test]
    fn resuming_a_phone_from_persisted_state_changes_nothing(cut in 0usize..5000) {
        static FIXES: std::sync::LazyLock<Vec<Fix>> = std::sync::LazyLock::new(one_phone);
        let fixes = &*FIXES;
        let cut = cut % fixes.len();
        let d = Detector::new(TripConfig::default());
        let (mut whole, mut state) = (Vec::new(), TripState::default());
        for f in fixes {
            d.on_fix(&mut state, *f, &mut whole);
        }
        let (mut out, mut resumed) = (Vec::new(), TripState::default());
        for f in &fixes[..cut] {
            d.on_fix(&mut resumed, *f, &mut out);
        }
        let json = serde_json::to_string(&resumed).unwrap();
        let mut resumed: TripState = serde_json::from_str(&json).unwrap();
        for f in &fixes[cut..] {
            d.on_fix(&mut resumed, *f, &mut out);
        }
        proptest::prop_assert_eq!(out, whole);
        proptest::prop_assert_eq!(resumed, state);
    }
}

/// The phone above passes through every kind of state the property cuts
/// at: an outlier waiting, a second place settled at, a trip open, a rest
/// after a move within a stop, a stop whose end waits for a speed.
#[test]
fn the_phone_passes_through_every_kind_of_state() {
    let d = Detector::new(TripConfig::default());
    let (mut state, mut out) = (TripState::default(), Vec::new());
    let mut seen = [false; 5];
    for f in one_phone() {
        d.on_fix(&mut state, f, &mut out);
        let json = serde_json::to_string(&state).unwrap();
        // `x`: a stay's second place, `r`: the rest after a move within
        // it, as the stay is stored; `h`: the stop a trip left, held.
        for (i, key) in ["\"pending\"", "\"x\"", "\"trip\"", "\"r\"", "\"h\""]
            .iter()
            .enumerate()
        {
            seen[i] |= json.contains(key);
        }
    }
    assert_eq!(seen, [true; 5]);
}
