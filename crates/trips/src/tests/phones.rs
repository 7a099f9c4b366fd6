//! What phones send around arrivals and departures, fix by fix: each test
//! is the shape of a failure found on the simulated fleet (issue 36), where
//! a trip ran into the rest before or after it.

use super::{T0, destination, run, stops, trips};
use crate::*;

/// Fixes written by hand from a moving cursor.
struct Script {
    t: i64,
    lat: f64,
    lon: f64,
    fixes: Vec<Fix>,
}

impl Script {
    fn new() -> Self {
        Script {
            t: T0,
            lat: 48.85,
            lon: 2.35,
            fixes: Vec::new(),
        }
    }

    /// A fix `dt` s on, `d` m along `bearing` from the cursor, reporting
    /// `vel` and `acc`; the cursor moves there unless it is an outlier.
    fn fix(&mut self, dt: i64, bearing: f64, d: f64, vel: f64, acc: f64, moves: bool) -> Fix {
        let (lat, lon) = destination(self.lat, self.lon, bearing, d);
        self.t += dt;
        if moves {
            (self.lat, self.lon) = (lat, lon);
        }
        let f = Fix {
            vel: Some(vel),
            acc: Some(acc),
            ..Fix::new(self.t, lat, lon)
        };
        self.fixes.push(f);
        f
    }

    /// `dt` s on, `d` m along `bearing`: where the device goes.
    fn go(&mut self, dt: i64, bearing: f64, d: f64, vel: f64, acc: f64) -> Fix {
        self.fix(dt, bearing, d, vel, acc, true)
    }

    /// `dt` s on, `d` m along `bearing`: a fix where the device is not.
    fn off(&mut self, dt: i64, bearing: f64, d: f64, vel: f64, acc: f64) -> Fix {
        self.fix(dt, bearing, d, vel, acc, false)
    }

    /// `n` fixes every `every` s at `kmh` along `bearing`.
    fn drive(&mut self, n: usize, every: i64, bearing: f64, kmh: f64) {
        for _ in 0..n {
            self.go(every, bearing, kmh / 3.6 * every as f64, kmh, 8.0);
        }
    }

    /// `n` fixes every `every` s at rest where the cursor is.
    fn rest(&mut self, n: usize, every: i64) {
        for _ in 0..n {
            self.go(every, 0.0, 0.0, 0.0, 10.0);
        }
    }
}

fn stop_ends(out: &[Finished]) -> Vec<(i64, i64)> {
    stops(out).into_iter().map(|(a, b, _)| (a, b)).collect()
}

fn trip_ends(out: &[Finished]) -> Vec<(i64, i64)> {
    trips(out)
        .into_iter()
        .map(|t| (t.start.tst, t.end.tst))
        .collect()
}

#[test]
fn a_cell_fix_after_an_arrival_neither_cancels_it_nor_becomes_the_stop() {
    // Driving at 60 km/h, the arrival 170 m past the last moving fix, a
    // cell fix 1.2 km off with acc 1300 ten seconds later, then the phone
    // parked: a ping every 15 minutes for an hour, and away again.
    let mut s = Script::new();
    s.rest(20, 60);
    s.drive(30, 10, 90.0, 60.0);
    let arrived = s.go(10, 90.0, 170.0, 0.0, 10.0).tst;
    s.off(10, 20.0, 1200.0, 0.0, 1300.0);
    s.rest(4, 900);
    let first = s.go(310, 270.0, 105.0, 40.0, 8.0).tst;
    s.drive(20, 10, 270.0, 40.0);
    let (out, _) = run(TripConfig::default(), &s.fixes);
    assert_eq!(trip_ends(&out), [(T0 + 1200, arrived)]);
    // It left 10 s before its first moving fix (105 m at 40 km/h).
    assert_eq!(
        stop_ends(&out),
        [(T0 + 60, T0 + 1200), (arrived, first - 10)]
    );
}

#[test]
fn a_cell_fix_while_parked_does_not_time_the_departure() {
    // Parked with a ping every 5 minutes; a cell fix 460 m off with acc
    // 554; a quarter of an hour later the first fix of a walk, 25 m from
    // where it was parked, at 8 km/h.
    let mut s = Script::new();
    s.rest(6, 300);
    s.off(10, 225.0, 460.0, 0.0, 554.0);
    let first = s.go(900, 45.0, 25.0, 8.0, 5.0).tst;
    s.drive(30, 10, 45.0, 8.0);
    let (out, _) = run(TripConfig::default(), &s.fixes);
    // 25 m at 8 km/h is 11.25 s: it left 12 s before (not 207 s before,
    // timed from the cell fix's place).
    assert_eq!(stop_ends(&out), [(T0 + 300, first - 12)]);
    assert_eq!(trips(&out), []);
}

#[test]
fn a_first_fix_far_off_is_an_outlier_not_a_trip_from_it() {
    // A device's first fix is a Wi-Fi fix claiming 51 m, 450 m from where
    // the phone is; the next, 8 minutes later, is at the phone, at rest,
    // and so are those after it. Then it drives away.
    let mut s = Script::new();
    s.off(0, 90.0, 450.0, 0.0, 51.0);
    let there = s.go(462, 0.0, 0.0, 0.0, 10.0).tst;
    s.rest(20, 60);
    let first = s.go(300, 0.0, 200.0, 50.0, 8.0).tst;
    s.drive(20, 10, 0.0, 50.0);
    let (out, state) = run(TripConfig::default(), &s.fixes);
    assert_eq!(trips(&out), []);
    // It left 15 s before its first moving fix (200 m at 50 km/h).
    assert_eq!(stop_ends(&out), [(there, first - 15)]);
    assert!(state.on_trip());
}

#[test]
fn a_first_cell_fix_is_no_place_to_leave_from() {
    // The first fix is a cell fix 1.4 km off (acc 2056); the next, 400 s
    // later, is a cyclist's at 22 km/h, who rides 2 km and parks.
    let mut s = Script::new();
    s.off(0, 300.0, 1400.0, 0.0, 2056.0);
    let first = s.go(400, 180.0, 0.0, 22.0, 6.0).tst;
    s.drive(33, 10, 180.0, 22.0);
    let arrived = s.go(10, 180.0, 20.0, 0.0, 6.0).tst;
    s.rest(10, 60);
    let (out, _) = run(TripConfig::default(), &s.fixes);
    // From its first sharp fix, not 1.4 km before it; it arrived 3 s
    // after the fix before (20 m at 22 km/h).
    assert_eq!(trip_ends(&out), [(first, arrived - 7)]);
}

#[test]
fn a_car_parked_past_a_light_with_its_phone_silent_makes_a_stop() {
    // Driving at 40 km/h; 30 s at a light; on 100 m; parked 190 m past the
    // light, and the phone silent for 13 minutes; then it drives back the
    // way it came, past the light.
    let mut s = Script::new();
    s.rest(20, 60);
    s.drive(20, 10, 90.0, 40.0);
    s.rest(3, 10);
    s.go(10, 90.0, 100.0, 37.0, 8.0);
    let arrived = s.go(10, 90.0, 93.0, 0.0, 8.0).tst;
    let first = s.go(786, 270.0, 213.0, 75.0, 6.0).tst;
    s.drive(20, 10, 270.0, 75.0);
    let (out, _) = run(TripConfig::default(), &s.fixes);
    // It arrived 9 s after the fix before (93 m at 37 km/h), and left 11
    // s before its first moving fix (213 m at 75 km/h).
    assert_eq!(trip_ends(&out), [(T0 + 1200, arrived - 1)]);
    assert_eq!(
        stop_ends(&out),
        [(T0 + 60, T0 + 1200), (arrived - 1, first - 11)]
    );
}

#[test]
fn a_walk_from_the_car_is_part_of_the_stop_the_car_arrived_at() {
    // Driving at 46 km/h, parked, and 20 s later on foot: 100 m across the
    // car park at 5 km/h, then half an hour in the shop.
    let mut s = Script::new();
    s.rest(20, 60);
    s.drive(30, 10, 0.0, 46.0);
    let arrived = s.go(10, 0.0, 60.0, 0.0, 8.0).tst;
    s.rest(2, 10);
    s.drive(7, 10, 90.0, 5.0);
    s.rest(30, 60);
    let (out, state) = run(TripConfig::default(), &s.fixes);
    // The trip ends when the car stopped (its arrival estimated at 46 km/h
    // over the last 60 m: 5 s before the fix), not when the walk did.
    assert_eq!(trip_ends(&out), [(T0 + 1200, arrived - 5)]);
    assert!(!state.on_trip());
}

#[test]
fn a_departure_first_seen_at_a_light_is_timed_by_the_trips_speed() {
    // Parked, a ping every quarter of an hour. It leaves 600 s after the
    // last ping; the phone's first fix of the trip is at a light 1,050 m
    // away (at rest, 30 s), then it drives on at 40 km/h.
    let mut s = Script::new();
    s.rest(4, 900);
    let ping = s.t;
    let at_light = s.go(695, 90.0, 1050.0, 0.0, 8.0).tst;
    s.rest(3, 10);
    let waiting = s.fixes.len();
    s.drive(20, 10, 90.0, 40.0);
    s.go(10, 90.0, 30.0, 0.0, 8.0);
    s.rest(10, 60);
    // At the light, the stop is not told yet: its end waits for a speed;
    // nor is the trip announced (its start is not known yet), and it is
    // announced once, at its time, with the first moving fix.
    let d = Detector::new(TripConfig::default());
    let (out, state) = run(TripConfig::default(), &s.fixes[..waiting]);
    assert_eq!(out, []);
    assert!(state.on_trip());
    assert_eq!(d.open_trip(&state), None);
    let (_, state) = run(TripConfig::default(), &s.fixes[..=waiting]);
    assert_eq!(d.open_trip(&state).map(|f| f.tst), Some(at_light - 95));
    let (out, _) = run(TripConfig::default(), &s.fixes);
    // 1,050 m at 40 km/h is 94.5 s: it left 95 s before the light, 600 s
    // after the ping (not at the ping, 10 minutes early).
    let left = at_light - 95;
    assert_eq!(left, ping + 600);
    assert_eq!(stop_ends(&out), [(T0 + 900, left)]);
    assert_eq!(trip_ends(&out)[0].0, left);
}

#[test]
fn of_two_fixes_out_of_a_stay_that_disagree_the_sharper_waits() {
    // Driving; 30 s at a light; a tunnel of 100 s; out of it, parked 2 km
    // on (GPS, acc 6); 10 s later a Wi-Fi fix claiming 67 m, 380 m off;
    // then pings where it parked.
    let mut s = Script::new();
    s.rest(20, 60);
    s.drive(20, 10, 90.0, 50.0);
    s.rest(3, 10);
    let arrived = s.go(100, 90.0, 2000.0, 0.0, 6.0).tst;
    s.off(10, 200.0, 380.0, 0.0, 67.0);
    s.rest(6, 550);
    let (out, state) = run(TripConfig::default(), &s.fixes);
    assert_eq!(trip_ends(&out), [(T0 + 1200, arrived)]);
    assert!(!state.on_trip());
}

#[test]
fn a_pause_the_phone_was_silent_through_is_a_stop_if_the_trips_speed_says_so() {
    // Driving at 60 km/h; parked (two fixes at rest, 10 s apart), and the
    // phone silent for 19 minutes; its next fix is at a light 1,750 m
    // away, and then it drives on at 72 km/h. At 72 km/h the way took 88
    // s: it left 1,079 s after it arrived, a stop. A walker's phone that
    // went as far at 5 km/h in that time never stopped.
    let script = |kmh: f64| {
        let mut s = Script::new();
        s.rest(20, 60);
        s.drive(30, 10, 0.0, 60.0);
        let arrived = s.go(10, 0.0, 160.0, 0.0, 9.0).tst;
        s.rest(1, 10);
        let at_light = s.go(1157, 90.0, 1750.0, 0.0, 5.0).tst;
        s.rest(1, 10);
        s.drive(20, 10, 90.0, kmh);
        s.go(10, 90.0, 20.0, 0.0, 8.0);
        s.rest(10, 60);
        (s.fixes, arrived, at_light)
    };
    let (fixes, arrived, at_light) = script(72.0);
    let (out, _) = run(TripConfig::default(), &fixes);
    let left = at_light - 88;
    assert_eq!(left - arrived, 1079);
    let t = trip_ends(&out);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[0], (T0 + 1200, arrived));
    assert_eq!(t[1].0, left);
    assert_eq!(
        stop_ends(&out)[..2],
        [(T0 + 60, T0 + 1200), (arrived, left)]
    );
    // Its distance runs to the arrival; the next trip's from the stop.
    let first = trips(&out)[0];
    assert!(
        (first.distance_m - (30.0 * 166.67 + 160.0)).abs() < 5.0,
        "{first:?}"
    );

    let (fixes, arrived, _) = script(5.0);
    let (out, _) = run(TripConfig::default(), &fixes);
    let t = trip_ends(&out);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].0, T0 + 1200);
    assert!(t[0].1 > arrived + 1157, "{t:?}");
}
