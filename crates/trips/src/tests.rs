//! Scripted tracks. Distances are checked against two references that
//! share no code with the detector: the nominal length of the scripted
//! route, and a haversine sum over the same fixes.

mod phones;

use proptest::prelude::*;

use super::*;

/// Mean Earth radius (IUGG), metres: the sphere the tracks are drawn on.
const R: f64 = 6_371_008.8;

fn haversine(a: &Fix, b: &Fix) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * h.sqrt().asin()
}

/// A device's day, scripted: it stays (with GPS jitter) or drives legs.
struct Track {
    t: i64,
    lat: f64,
    lon: f64,
    fixes: Vec<Fix>,
    seed: u64,
}

impl Track {
    fn new(t: i64, lat: f64, lon: f64) -> Self {
        Self {
            t,
            lat,
            lon,
            fixes: vec![Fix::new(t, lat, lon)],
            seed: 1,
        }
    }

    /// A deterministic offset in [-1, 1).
    fn noise(&mut self) -> f64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Stays for `secs`, a fix every `every` seconds within `jitter` metres.
    fn stay(&mut self, secs: i64, every: i64, jitter: f64) {
        for _ in 0..secs / every {
            self.t += every;
            let (n, e) = (
                self.noise() * jitter / 2f64.sqrt(),
                self.noise() * jitter / 2f64.sqrt(),
            );
            let lat = self.lat + n / R * 180.0 / std::f64::consts::PI;
            let lon =
                self.lon + e / (R * self.lat.to_radians().cos()) * 180.0 / std::f64::consts::PI;
            self.fixes.push(Fix::new(self.t, lat, lon));
        }
    }

    /// Drives `legs` (bearing in degrees, length in metres, each a multiple
    /// of the step) at `kmh`, a fix every `every` seconds; returns the
    /// route's length.
    fn drive(&mut self, legs: &[(f64, f64)], kmh: f64, every: i64) -> f64 {
        let step = kmh / 3.6 * every as f64;
        for &(bearing, len) in legs {
            for _ in 0..(len / step).round() as i64 {
                (self.lat, self.lon) = destination(self.lat, self.lon, bearing, step);
                self.t += every;
                self.fixes.push(Fix {
                    vel: Some(kmh),
                    ..Fix::new(self.t, self.lat, self.lon)
                });
            }
        }
        legs.iter().map(|l| l.1).sum()
    }
}

/// The point `d` metres from (lat, lon) along `bearing`, on the sphere.
fn destination(lat: f64, lon: f64, bearing: f64, d: f64) -> (f64, f64) {
    let (p1, l1, th, dr) = (
        lat.to_radians(),
        lon.to_radians(),
        bearing.to_radians(),
        d / R,
    );
    let p2 = (p1.sin() * dr.cos() + p1.cos() * dr.sin() * th.cos()).asin();
    let l2 = l1 + (th.sin() * dr.sin() * p1.cos()).atan2(dr.cos() - p1.sin() * p2.sin());
    (p2.to_degrees(), l2.to_degrees())
}

fn run(config: TripConfig, fixes: &[Fix]) -> (Vec<Finished>, TripState) {
    let d = Detector::new(config);
    let mut state = TripState::default();
    let mut out = Vec::new();
    for f in fixes {
        d.on_fix(&mut state, *f, &mut out);
    }
    (out, state)
}

fn trips(out: &[Finished]) -> Vec<TripSummary> {
    out.iter()
        .filter_map(|f| match f {
            Finished::Trip(t) => Some(*t),
            Finished::Stop(_) => None,
        })
        .collect()
}

fn stops(out: &[Finished]) -> Vec<(i64, i64, u32)> {
    out.iter()
        .filter_map(|f| match f {
            Finished::Stop(s) => Some((s.start.tst, s.end_tst, s.points)),
            Finished::Trip(_) => None,
        })
        .collect()
}

/// Haversine sum over the fixes from `start` to `end` time, inclusive.
fn reference(fixes: &[Fix], start: i64, end: i64) -> f64 {
    let span: Vec<&Fix> = fixes
        .iter()
        .filter(|f| (start..=end).contains(&f.tst))
        .collect();
    span.windows(2).map(|w| haversine(w[0], w[1])).sum()
}

const T0: i64 = 1_700_000_000;

/// Home 30 min, drive to work (12 km in four legs), work until lunch,
/// 2 km to lunch and 45 min there, back, work until evening, home with a
/// red light of 60 s on the way, evening at home.
fn day() -> (Track, Vec<(i64, i64, f64)>) {
    let mut tr = Track::new(T0, 52.52, 13.40);
    let mut legs = Vec::new();
    let mut trip = |tr: &mut Track, route: &[(f64, f64)]| {
        let start = tr.t;
        let len = tr.drive(route, 60.0, 15);
        legs.push((start, tr.t, len));
    };
    tr.stay(1800, 60, 10.0);
    trip(
        &mut tr,
        &[
            (90.0, 4000.0),
            (0.0, 3000.0),
            (45.0, 3000.0),
            (90.0, 2000.0),
        ],
    );
    tr.stay(4 * 3600, 300, 15.0);
    trip(&mut tr, &[(180.0, 2000.0)]);
    tr.stay(45 * 60, 120, 10.0);
    trip(&mut tr, &[(0.0, 2000.0)]);
    tr.stay(4 * 3600, 300, 15.0);
    let start = tr.t;
    let mut len = tr.drive(&[(270.0, 2000.0), (225.0, 3000.0)], 60.0, 15);
    tr.stay(60, 15, 0.0);
    len += tr.drive(&[(180.0, 3000.0), (270.0, 4000.0)], 60.0, 15);
    legs.push((start, tr.t, len));
    tr.stay(3600, 60, 10.0);
    (tr, legs)
}

#[test]
fn a_day_of_driving_gives_the_expected_trips_and_stops() {
    let (tr, legs) = day();
    let (out, state) = run(TripConfig::default(), &tr.fixes);
    let got = trips(&out);
    assert_eq!(got.len(), 4, "{got:#?}");
    for (trip, (departed, arrived, route_m)) in got.iter().zip(&legs) {
        // The trip starts when the car left (the stop's last fix, a 250 m
        // step before the first moving fix at 60 km/h) and ends when it
        // arrived: the last moving fix is at the destination, and the
        // estimate from its speed is within the second after it.
        assert_eq!(trip.start.tst, *departed);
        assert!(
            (*arrived..=arrived + 1).contains(&trip.end.tst),
            "arrived {arrived}, ended {}",
            trip.end.tst
        );
        // Its ends are the stays' centres: within the jitter of the
        // scripted places.
        let at = |t: i64| tr.fixes.iter().find(|f| f.tst == t).copied().unwrap();
        assert!(haversine(&trip.start, &at(*departed)) < 20.0);
        assert!(haversine(&trip.end, &at(*arrived)) < 20.0);
        // Its path runs from the last fix at the stay to the first at the
        // destination.
        let first_there = tr.fixes.iter().find(|f| f.tst > *arrived).unwrap().tst;
        let fixes_in = tr
            .fixes
            .iter()
            .filter(|f| (trip.start.tst..=first_there).contains(&f.tst));
        assert_eq!(trip.points as usize, fixes_in.count());
        assert_eq!(trip.duration_s, trip.end.tst - trip.start.tst);
        let by_fixes = reference(&tr.fixes, trip.start.tst, first_there);
        let err = (trip.distance_m - by_fixes).abs() / by_fixes;
        assert!(
            err < 0.01,
            "haversine {by_fixes} m, got {} m",
            trip.distance_m
        );
        let err = (trip.distance_m - route_m).abs() / route_m;
        assert!(err < 0.01, "route {route_m} m, got {} m", trip.distance_m);
        assert_eq!(trip.max_kmh, 60.0);
        let avg = trip.distance_m / trip.duration_s as f64 * 3.6;
        assert!((trip.avg_kmh - avg).abs() < 1e-9);
    }
    // The evening trip includes the red light: 60 s is no stop, so its
    // average is below the cruising 60 km/h.
    assert!(
        got[3].avg_kmh < 59.0 && got[3].avg_kmh > 55.0,
        "{}",
        got[3].avg_kmh
    );
    // Stops: home in the morning (from the first fix), work, lunch, work.
    // The evening at home is a stop still in progress.
    let s = stops(&out);
    assert_eq!(
        s.iter().map(|(a, b, _)| (*a, *b)).collect::<Vec<_>>(),
        [
            (T0, legs[0].0),
            (got[0].end.tst, legs[1].0),
            (got[1].end.tst, legs[2].0),
            (got[2].end.tst, legs[3].0)
        ]
    );
    // 31 fixes at home: the first and 30 a minute apart.
    assert_eq!(s[0].2, 31);
    assert!(!state.on_trip());
    // Trips and stops alternate in time order.
    let kinds: String = out
        .iter()
        .map(|f| {
            if matches!(f, Finished::Trip(_)) {
                'T'
            } else {
                'S'
            }
        })
        .collect();
    assert_eq!(kinds, "STSTSTST");
}

#[test]
fn a_trip_is_cut_by_a_data_gap_and_a_stop_survives_one() {
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(600, 60, 5.0);
    let departed = tr.t;
    tr.drive(&[(90.0, 5000.0)], 60.0, 15);
    let last_before_gap = tr.t;
    // The phone dies on the road and comes back two hours later, parked
    // 3 km on; it stays there (one fix in 3 h), then leaves.
    tr.t += 7200;
    (tr.lat, tr.lon) = destination(tr.lat, tr.lon, 90.0, 3000.0);
    tr.fixes.push(Fix::new(tr.t, tr.lat, tr.lon));
    let parked = tr.t;
    tr.stay(3 * 3600, 3 * 3600, 5.0);
    let left = tr.t;
    tr.drive(&[(0.0, 1000.0)], 60.0, 15);
    let (out, _) = run(TripConfig::default(), &tr.fixes);
    let t = trips(&out);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].start.tst, t[0].end.tst), (departed, last_before_gap));
    assert_eq!(t[0].points, 21);
    assert_eq!(stops(&out), [(T0, departed, 11), (parked, left, 2)]);
}

#[test]
fn late_and_redelivered_fixes_change_nothing() {
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(600, 60, 5.0);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    tr.stay(600, 60, 5.0);
    let (clean, clean_state) = run(TripConfig::default(), &tr.fixes);
    // Every fix twice, and an old fix from far away after each.
    let mut noisy = Vec::new();
    for f in &tr.fixes {
        noisy.extend([*f, *f, Fix::new(T0 - 100, 10.0, 10.0)]);
    }
    let (out, state) = run(TripConfig::default(), &noisy);
    assert_eq!(out, clean);
    assert_eq!(state, clean_state);
}

#[test]
fn a_red_light_is_not_a_stop_and_a_traffic_jam_is() {
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(600, 60, 0.0);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    tr.stay(90, 15, 0.0);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    // Crawling 150 m in 4 minutes: within 200 m for over 180 s.
    let jam = tr.t;
    tr.drive(&[(90.0, 150.0)], 2.25, 60 * 4);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    tr.stay(600, 60, 0.0);
    let (out, _) = run(TripConfig::default(), &tr.fixes);
    let t = trips(&out);
    assert_eq!(t.len(), 2, "{t:#?}");
    // The car reached the jam's end of the queue at 60 km/h and crawled:
    // arrival is estimated from its last fast fix, 150 m at 60 km/h.
    assert_eq!(t[0].end.tst, jam + 9);
    assert_eq!(stops(&out)[1].0, jam + 9);
}

#[test]
fn thresholds_are_configurable() {
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(600, 60, 0.0);
    tr.drive(&[(90.0, 500.0)], 30.0, 20);
    tr.stay(120, 30, 0.0);
    tr.drive(&[(90.0, 500.0)], 30.0, 20);
    tr.stay(600, 60, 0.0);
    // Defaults: 120 s is no stop, one trip. 100 s stops: two trips.
    assert_eq!(trips(&run(TripConfig::default(), &tr.fixes).0).len(), 1);
    let short = TripConfig {
        min_stop_s: 100,
        ..TripConfig::default()
    };
    assert_eq!(trips(&run(short, &tr.fixes).0).len(), 2);
    // 2 km radius: the 1 km outing never leaves the stay.
    let wide = TripConfig {
        min_distance_m: 2000.0,
        ..TripConfig::default()
    };
    assert_eq!(trips(&run(wide, &tr.fixes).0).len(), 0);
    assert!(
        TripConfig {
            min_stop_s: 0,
            ..TripConfig::default()
        }
        .validate()
        .is_err()
    );
    assert!(TripConfig::default().validate().is_ok());
}

#[test]
fn state_is_small_and_survives_a_round_trip() {
    let (tr, _) = day();
    let (_, state) = run(TripConfig::default(), &tr.fixes[..200]);
    // 368 bytes: the stay's centre, arrival, last settled fix and
    // departure, the path counters, the open trip; an outlier waiting and
    // a second place settled at are boxed, as they are rare.
    assert!(
        std::mem::size_of::<TripState>() <= 384,
        "{}",
        std::mem::size_of::<TripState>()
    );
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.len() < 512, "{json}");
    assert_eq!(serde_json::from_str::<TripState>(&json).unwrap(), state);
}

/// The point `d` metres from the track's place along `bearing`, as a fix
/// at `t` reporting `acc` and `vel`.
fn fix_near(tr: &Track, t: i64, bearing: f64, d: f64, acc: f64, vel: f64) -> Fix {
    let (lat, lon) = destination(tr.lat, tr.lon, bearing, d);
    Fix {
        tst: t,
        lat,
        lon,
        vel: Some(vel),
        acc: Some(acc),
    }
}

#[test]
fn a_parked_phone_with_wifi_and_cell_outliers_makes_no_trip() {
    // Two hours parked, a ping every 5 minutes with GPS accuracy, and the
    // fixes phones really send between them: a Wi-Fi fix 400 m off with
    // acc 600, another 300 m off with acc 65, a cell fix 3 km off with
    // acc 1500, and a GPS glitch 2 km off claiming 40 km/h 10 s after a
    // good fix.
    let mut tr = Track::new(T0, 52.52, 13.40);
    let mut fixes = tr.fixes.clone();
    let mut t = T0;
    for i in 1..=24 {
        t += 300;
        let f = match i {
            5 => fix_near(&tr, t, 45.0, 400.0, 600.0, 0.0),
            9 => fix_near(&tr, t, 200.0, 300.0, 65.0, 0.0),
            14 => fix_near(&tr, t, 300.0, 3000.0, 1500.0, 0.0),
            19 => {
                fixes.push(fix_near(&tr, t - 10, 0.0, 5.0, 10.0, 0.0));
                fix_near(&tr, t, 100.0, 2000.0, 30.0, 40.0)
            }
            _ => fix_near(&tr, t, f64::from(i) * 37.0, 8.0, 10.0, 0.0),
        };
        fixes.push(f);
    }
    tr.fixes = fixes;
    let (out, state) = run(TripConfig::default(), &tr.fixes);
    assert_eq!(trips(&out), []);
    assert!(!state.on_trip());
    // It is one stay: leaving now ends it as one stop from the first fix.
    let mut tail = tr.fixes.clone();
    tr.t = t;
    tr.drive(&[(90.0, 2000.0)], 50.0, 10);
    tail.extend_from_slice(&tr.fixes[tail.len()..]);
    let (out, _) = run(TripConfig::default(), &tail);
    // 26 fixes: the three outliers out of the stay count nowhere; the
    // Wi-Fi fix whose circle reaches it is one of its fixes.
    assert_eq!(stops(&out), [(T0, t, 23)]);
}

#[test]
fn a_short_walk_is_one_trip_with_its_whole_length_and_an_errand_none() {
    // Parked with sparse pings, then a walk of 320 m at 5 km/h with a fix
    // every 10 s, then parked again; later an errand: 100 m out and back.
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(1800, 600, 5.0);
    let left = tr.t + 600;
    tr.t = left - 10;
    let route = tr.drive(&[(90.0, 320.0)], 5.0, 10);
    let arrived = tr.t;
    tr.stay(1200, 60, 3.0);
    tr.drive(&[(0.0, 100.0)], 5.0, 10);
    tr.drive(&[(180.0, 100.0)], 5.0, 10);
    tr.stay(1200, 60, 3.0);
    let (out, state) = run(TripConfig::default(), &tr.fixes);
    let t = trips(&out);
    assert_eq!(t.len(), 1, "{t:#?}");
    // It left 10 s before the first moving fix (14 m at 5 km/h) and
    // arrived with the last; the pings' 5 m and 3 m jitter is 2 s.
    assert!(
        (t[0].start.tst - (left - 10)).abs() <= 2,
        "{:?}",
        t[0].start
    );
    assert!((t[0].end.tst - arrived).abs() <= 2, "{:?}", t[0].end);
    let err = (t[0].distance_m - route).abs() / route;
    assert!(err < 0.05, "walked {route} m, got {} m", t[0].distance_m);
    assert_eq!(stops(&out)[0].1, t[0].start.tst);
    assert!(!state.on_trip());
}

#[test]
fn a_walk_within_the_stay_then_a_long_rest_is_part_of_the_stop_not_a_trip() {
    // Parked 20 minutes (a fix a minute), then a walk of 100 m across the
    // car park at 5 km/h (within the 150 m a stay is measured by), then two
    // hours of rest there with a ping every 15 minutes, then a drive away.
    let mut tr = Track::new(T0, 52.0, 13.0);
    tr.stay(1200, 60, 3.0);
    tr.drive(&[(90.0, 100.0)], 5.0, 10);
    tr.stay(7200, 900, 3.0);
    let parked_until = tr.t;
    tr.t += 20;
    // Its first moving fix is 10 s on, 111 m away at 40 km/h.
    let left = tr.t;
    tr.drive(&[(0.0, 3000.0)], 40.0, 10);
    let arrived = tr.t;
    tr.stay(1200, 60, 3.0);
    let (out, _) = run(TripConfig::default(), &tr.fixes);
    // One trip: the drive, from when it left (within a second's jitter),
    // not from the walk.
    let t = trips(&out);
    assert_eq!(t.len(), 1, "{t:#?}");
    assert!(
        (t[0].start.tst - left).abs() <= 1,
        "{:?} left at {left}",
        t[0].start
    );
    assert!((t[0].end.tst - arrived).abs() <= 2, "{:?}", t[0].end);
    // One stop: from the first fix to the departure, the walk and the two
    // hours after it inside; its points are every fix of the stay (21
    // settled, 7 of the walk, 8 pings).
    let s = stops(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, T0);
    assert!(
        (parked_until..=parked_until + 20).contains(&s[0].1),
        "{s:?}"
    );
    assert_eq!(s[0].2, 21 + 7 + 8);
}

#[test]
fn a_tunnel_and_a_short_gap_do_not_split_a_trip() {
    let mut tr = Track::new(T0, 48.0, 11.0);
    tr.stay(600, 60, 5.0);
    let departed = tr.t;
    tr.drive(&[(90.0, 5000.0)], 60.0, 15);
    // Four minutes in a tunnel: no fix, 4 km on.
    tr.t += 240;
    (tr.lat, tr.lon) = destination(tr.lat, tr.lon, 90.0, 4000.0);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    // Twenty minutes without data at a crawl, 600 m on.
    tr.t += 1200;
    (tr.lat, tr.lon) = destination(tr.lat, tr.lon, 90.0, 600.0);
    tr.drive(&[(90.0, 3000.0)], 60.0, 15);
    let arrived = tr.t;
    tr.stay(600, 60, 5.0);
    let (out, _) = run(TripConfig::default(), &tr.fixes);
    let t = trips(&out);
    assert_eq!(t.len(), 1, "{t:#?}");
    assert_eq!(t[0].start.tst, departed);
    assert!((arrived..=arrived + 1).contains(&t[0].end.tst));
}

#[test]
fn path_segments_are_within_2e5_of_the_geodesic() {
    let mut worst: f64 = 0.0;
    let mut tr = Track::new(T0, 0.0, 0.0);
    for lat in [0.0, 23.5, 45.0, 52.52, 60.0, 70.0, 80.0] {
        for bearing in [0.0, 33.0, 90.0, 135.0, 270.0] {
            for d in [5.0, 250.0, 1_000.0, 5_000.0, 19_000.0] {
                let (lat2, lon2) = destination(lat, 179.99, bearing, d);
                let (a, b) = (Fix::new(0, lat, 179.99), Fix::new(1, lat2, lon2));
                let geodesic =
                    Geodesic.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat));
                worst = worst.max((a.path_m(&b) - geodesic).abs() / geodesic);
            }
        }
    }
    assert!(worst < 2e-5, "{worst}");
    // Beyond the local range: the geodesic itself.
    tr.fixes.push(Fix::new(1, 1.0, 1.0));
    let (a, b) = (tr.fixes[0], tr.fixes[1]);
    let geodesic = Geodesic.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat));
    assert_eq!(a.path_m(&b), geodesic);
}

proptest! {
    /// Stopping anywhere, persisting the state and resuming gives exactly
    /// what an uninterrupted run gives: the restart guarantee.
    #[test]
    fn resuming_from_persisted_state_changes_nothing(cut in 0usize..400) {
        let (tr, _) = day();
        let fixes = &tr.fixes;
        let cut = cut.min(fixes.len());
        let (whole, end_state) = run(TripConfig::default(), fixes);
        let d = Detector::new(TripConfig::default());
        let (mut out, state) = run(TripConfig::default(), &fixes[..cut]);
        let mut state: TripState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        for f in &fixes[cut..] {
            d.on_fix(&mut state, *f, &mut out);
        }
        prop_assert_eq!(out, whole);
        prop_assert_eq!(state, end_state);
    }
}
