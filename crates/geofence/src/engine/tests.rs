use otstream_model::Transport;
use otstream_model::record::Meta;

use super::*;

/// Metres per degree on the haversine sphere (R = 6371.0088 km).
const M: f64 = 111_195.08;

fn pos(user: &str, tst: i64, lat: f64, lon: f64, acc: Option<i32>) -> Position {
    let meta = Meta {
        user: user.into(),
        device: "phone".into(),
        tid: None,
        received_at: 0,
        transport: Transport::Http,
        topic: None,
    };
    Position {
        acc,
        ..Position::at(meta, tst, lat, lon)
    }
}

fn circle(id: &str, lat: f64, lon: f64, r: f64) -> Fence {
    Fence::new(
        id,
        id,
        Shape::Circle {
            lat,
            lon,
            radius_m: r,
        },
    )
}

/// A geofencer and the devices' states, kept as the stage's tracker
/// keeps them.
struct Engine {
    g: Geofencer,
    states: HashMap<String, DeviceState>,
}

impl Engine {
    fn on_position(&mut self, p: &Position) -> Vec<Record> {
        let key = p.meta.key();
        let state = self.states.entry(key.clone()).or_default();
        self.g.evaluate(&key, p, state)
    }
}

impl std::ops::Deref for Engine {
    type Target = Geofencer;
    fn deref(&self) -> &Geofencer {
        &self.g
    }
}

impl std::ops::DerefMut for Engine {
    fn deref_mut(&mut self) -> &mut Geofencer {
        &mut self.g
    }
}

fn engine(fences: Vec<Fence>) -> Engine {
    Engine {
        g: Geofencer::new(GeofenceConfig::default(), Arc::new(FenceSet::new(fences))),
        states: HashMap::new(),
    }
}

/// (tst, event, rid) of every transition for a track.
fn run(
    g: &mut Engine,
    user: &str,
    track: &[(i64, f64, f64, Option<i32>)],
) -> Vec<(i64, String, String)> {
    track
        .iter()
        .flat_map(|(t, lat, lon, acc)| g.on_position(&pos(user, *t, *lat, *lon, *acc)))
        .map(|r| match r {
            Record::Transition(t) => {
                assert_eq!(t.source, "server");
                (
                    t.tst,
                    t.event.to_string(),
                    t.rid.unwrap_or_default().to_string(),
                )
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

fn ev(t: i64, e: &str, id: &str) -> (i64, String, String) {
    (t, e.to_owned(), id.to_owned())
}

#[test]
fn crossing_gives_one_enter_and_one_leave() {
    let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
    // Walk north through the centre, 40 m a step, from 300 m south.
    let track: Vec<_> = (0..16)
        .map(|i| {
            (
                i64::from(i) + 1,
                52.5 + (f64::from(i) * 40.0 - 300.0) / M,
                13.4,
                Some(5),
            )
        })
        .collect();
    // 60 m south (tst 7) is the first fix inside: the one 100 m south
    // is on the edge by the sphere but 5 cm out on the ellipsoid, which
    // decides close calls. 140 m north (tst 12) is 40 m out, beyond the
    // 30 m margin.
    assert_eq!(
        run(&mut g, "jane", &track),
        [ev(7, "enter", "home"), ev(12, "leave", "home")]
    );
}

#[test]
fn jitter_along_the_border_does_not_flap() {
    let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
    let track: Vec<_> = (0..40)
        .map(|i| {
            (
                i64::from(i) + 1,
                52.5 + (if i % 2 == 0 { 95.0 } else { 120.0 }) / M,
                13.4,
                Some(10),
            )
        })
        .collect();
    assert_eq!(run(&mut g, "jane", &track), [ev(1, "enter", "home")]);
    // Clearly out (beyond the 30 m margin): one leave.
    assert_eq!(
        run(&mut g, "jane", &[(100, 52.5 + 140.0 / M, 13.4, Some(10))]),
        [ev(100, "leave", "home")]
    );
}

#[test]
fn a_poor_fix_cannot_enter_a_small_fence_nor_leave_on_noise() {
    let mut g = engine(vec![
        circle("desk", 52.5, 13.4, 50.0),
        circle("city", 52.5, 13.4, 5000.0),
    ]);
    let mut got = run(&mut g, "jane", &[(1, 52.5, 13.4, Some(2000))]);
    got.sort();
    assert_eq!(got, [ev(1, "enter", "city")]);
    assert_eq!(
        run(&mut g, "jane", &[(2, 52.5, 13.4, Some(20))]),
        [ev(2, "enter", "desk")]
    );
    // 300 m out, but accurate only to 500 m: not proof of leaving.
    assert_eq!(
        run(&mut g, "jane", &[(3, 52.5 + 300.0 / M, 13.4, Some(500))]),
        []
    );
    assert_eq!(
        run(&mut g, "jane", &[(4, 52.5 + 300.0 / M, 13.4, Some(10))]),
        [ev(4, "leave", "desk")]
    );
}

#[test]
fn overlapping_and_nested_fences() {
    let mut g = engine(vec![
        circle("campus", 52.5, 13.4, 1000.0),
        circle("building", 52.5, 13.4, 100.0),
        circle(
            "east",
            52.5,
            13.4 + 900.0 / (M * 52.5f64.to_radians().cos()),
            500.0,
        ),
    ]);
    let mut first = run(&mut g, "jane", &[(1, 52.5, 13.4, Some(5))]);
    first.sort();
    assert_eq!(
        first,
        [ev(1, "enter", "building"), ev(1, "enter", "campus")]
    );
    // 600 m east: out of the building, inside campus and east.
    let east = 13.4 + 600.0 / (M * 52.5f64.to_radians().cos());
    let mut second = run(&mut g, "jane", &[(2, 52.5, east, Some(5))]);
    second.sort();
    assert_eq!(second, [ev(2, "enter", "east"), ev(2, "leave", "building")]);
}

#[test]
fn fences_across_the_antimeridian_and_near_the_poles() {
    let mut g = engine(vec![
        circle("dateline", 0.0, 179.9995, 300.0),
        circle("pole", 89.9995, 0.0, 500.0),
    ]);
    // 167 m east of the centre, across ±180.
    assert_eq!(
        run(&mut g, "a", &[(1, 0.0, -179.9990, Some(5))]),
        [ev(1, "enter", "dateline")]
    );
    assert_eq!(
        run(&mut g, "a", &[(2, 0.0, -179.99, Some(5))]),
        [ev(2, "leave", "dateline")]
    );
    // Near the pole, every longitude is close: 89.999 N at 120 E is
    // ~147 m from a centre at 89.9995 N, 0 E.
    assert_eq!(
        run(&mut g, "b", &[(1, 89.999, 120.0, Some(5))]),
        [ev(1, "enter", "pole")]
    );
    assert_eq!(
        run(&mut g, "b", &[(2, 89.99, -60.0, Some(5))]),
        [ev(2, "leave", "pole")]
    );
    let set = FenceSet::new(vec![circle("dateline", 0.0, 179.9995, 300.0)]);
    assert_eq!(set.fences()[0].envelopes().len(), 2);
}

#[test]
fn late_and_redelivered_fixes_change_nothing() {
    let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
    assert_eq!(
        run(&mut g, "jane", &[(10, 52.5, 13.4, Some(5))]),
        [ev(10, "enter", "home")]
    );
    // A late fix from outside, and the same fix redelivered.
    assert_eq!(
        run(
            &mut g,
            "jane",
            &[(5, 52.6, 13.4, Some(5)), (10, 52.5, 13.4, Some(5))]
        ),
        []
    );
    assert_eq!(g.states["jane/phone"].last_tst, 10);
}

#[test]
fn polygons_with_holes_and_geojson() {
    let geojson = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","properties":{"id":"yard","name":"Yard"},"geometry":{"type":"Polygon","coordinates":[
                [[13.40,52.50],[13.41,52.50],[13.41,52.51],[13.40,52.51],[13.40,52.50]],
                [[13.404,52.504],[13.406,52.504],[13.406,52.506],[13.404,52.506],[13.404,52.504]]]}},
            {"type":"Feature","id":"pt","properties":{"radius":50,"user":"bob"},"geometry":{"type":"Point","coordinates":[13.5,52.5]}},
            {"type":"Feature","properties":{"id":"two"},"geometry":{"type":"MultiPolygon","coordinates":[
                [[[0,0],[1,0],[1,1],[0,1],[0,0]]],[[[2,0],[3,0],[3,1],[2,1],[2,0]]]]}}]}"#;
    let set = FenceSet::from_geojson(geojson).unwrap();
    assert_eq!(
        set.fences()
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        ["yard", "pt", "two"]
    );
    assert_eq!(set.fences()[0].name, "Yard");
    let mut g = Engine {
        g: Geofencer::new(GeofenceConfig::default(), Arc::new(set)),
        states: HashMap::new(),
    };
    // Into the yard, then to the middle of its hole (the hole's edge
    // is ~70 m away, beyond the 30 m margin): a leave. The hole here is
    // wound like its exterior, against RFC 7946, as real files do.
    assert_eq!(
        run(&mut g, "jane", &[(1, 52.502, 13.402, Some(5))]),
        [ev(1, "enter", "yard")]
    );
    assert_eq!(
        run(&mut g, "jane", &[(2, 52.505, 13.405, Some(5))]),
        [ev(2, "leave", "yard")]
    );
    // The point fence is bob's only.
    assert_eq!(run(&mut g, "jane", &[(3, 52.5, 13.5, Some(5))]), []);
    assert_eq!(
        run(&mut g, "bob", &[(3, 52.5, 13.5, Some(5))]),
        [ev(3, "enter", "pt")]
    );
    assert_eq!(
        run(&mut g, "jane", &[(4, 0.5, 2.5, Some(5))]),
        [ev(4, "enter", "two")]
    );
    let e = FenceSet::from_geojson(r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"x"},"geometry":{"type":"Point","coordinates":[1,2]}}]}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "feature 0: a Point fence needs a numeric `radius` property (metres)"
    );
    assert!(matches!(
        FenceSet::from_geojson("[]"),
        Err(crate::FenceError::NotACollection)
    ));
    // Malformed geometry is an error naming the problem, never a panic.
    let feature = |geometry: &str| {
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"x","radius":5}},"geometry":{geometry}}}]}}"#
        )
    };
    for (geometry, want) in [
        (
            r#"{"type":"Polygon","coordinates":[[[1],[2],[3],[1]]]}"#,
            "feature 0: invalid Polygon coordinates",
        ),
        (
            r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
            "feature 0: invalid Polygon coordinates",
        ),
        (
            r#"{"type":"LineString","coordinates":[[0,0],[1,1]]}"#,
            "feature 0: unsupported geometry Some(\"LineString\"): use Polygon, MultiPolygon or Point with a radius",
        ),
    ] {
        let e = FenceSet::from_geojson(&feature(geometry)).unwrap_err();
        assert_eq!(e.to_string(), want, "{geometry}");
    }
    let e = FenceSet::from_geojson(&feature(r#"{"type":"Point","coordinates":[1]}"#)).unwrap_err();
    assert!(
        e.to_string().starts_with("fences are not valid GeoJSON: "),
        "{e}"
    );
}

/// Jane's 100 m region at (52.5, 13.4).
fn waypoint(desc: &str) -> Waypoint {
    Waypoint {
        meta: pos("jane", 0, 0.0, 0.0, None).meta,
        tst: Some(1690000000),
        lat: Some(52.5),
        lon: Some(13.4),
        rad: Some(100),
        desc: Some(desc.into()),
        rid: None,
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    }
}

#[test]
fn a_place_is_the_smallest_fence_that_applies() {
    let city = circle("city", 52.5, 13.4, 5_000.0);
    let mut depot = circle("depot", 52.5, 13.4, 150.0);
    depot.name = "Depot".into();
    // Bob's yard, smaller still, is not Jane's.
    let mut yard = circle("yard", 52.5, 13.4, 50.0);
    yard.user = Some("bob".into());
    let mut g = engine(vec![city, depot, yard]);
    let place = |g: &Geofencer, lat: f64| g.place("jane/phone", "jane", "phone", lat, 13.4);
    assert_eq!(place(&g, 52.5).as_deref(), Some("Depot"));
    // 1 km north: only the city, named by its id.
    assert_eq!(place(&g, 52.5 + 1000.0 / M).as_deref(), Some("city"));
    assert_eq!(place(&g, 53.5), None);
    assert_eq!(
        g.place("bob/phone", "bob", "phone", 52.5, 13.4).as_deref(),
        Some("yard")
    );
    // Jane's own 100 m region at the depot is smaller than it.
    g.on_waypoint(&waypoint("Loading bay"));
    assert_eq!(place(&g, 52.5).as_deref(), Some("Loading bay"));
}

#[test]
fn a_devices_own_waypoints_are_its_fences() {
    let mut g = engine(Vec::new());
    g.on_waypoint(&waypoint("Home"));
    let got = g.on_position(&pos("jane", 5, 52.5, 13.4, Some(5)));
    let Record::Transition(t) = &got[0] else {
        panic!()
    };
    assert_eq!(
        (
            t.event.as_str(),
            t.desc.as_deref(),
            t.wtst,
            t.rid.as_deref()
        ),
        (
            "enter",
            Some("Home"),
            Some(1690000000),
            Some("wp:1690000000:Home")
        )
    );
    // Another device does not have jane's region.
    let mut other = pos("bob", 5, 52.5, 13.4, Some(5));
    other.meta.user = "bob".into();
    assert!(g.on_position(&other).is_empty());
}

#[test]
fn state_is_small() {
    let mut s = DeviceState::default();
    s.inside.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(s.bytes() <= 96, "{}", s.bytes());
}
