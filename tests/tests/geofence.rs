//! Server-side geofences, trips and stops through the real binary: HTTP in,
//! rows out in the embedded store and in ClickHouse; fences reloaded while
//! running; a restart in the middle of a trip.

use std::time::{Duration, Instant};

use otstream_tests::{Serve, ch, clickhouse_url, rows, unique_db};

const T0: i64 = 1_763_700_000;
const HOME: (f64, f64) = (52.52, 13.40);
/// Metres per degree of longitude at 52.52 N on the haversine sphere.
const M_PER_DEG_LAT: f64 = 111_195.08;

fn east(m: f64) -> (f64, f64) {
    (
        HOME.0,
        HOME.1 + m / (M_PER_DEG_LAT * HOME.0.to_radians().cos()),
    )
}

/// Haversine, metres: the independent reference for trip distances.
fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((b.1 - a.1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

/// Home 10 min, 3 km east at 60 km/h (a fix every 15 s, 250 m apart),
/// 10 min at the customer, back, 10 min at home.
fn track() -> Vec<(i64, f64, f64)> {
    let mut t = T0;
    let mut out = vec![(t, HOME.0, HOME.1)];
    let at = |t: &mut i64, dt: i64, m: f64, out: &mut Vec<(i64, f64, f64)>| {
        *t += dt;
        let (lat, lon) = east(m);
        out.push((*t, lat, lon));
    };
    for _ in 0..10 {
        at(&mut t, 60, 0.0, &mut out);
    }
    for i in 1..=12 {
        at(&mut t, 15, f64::from(i) * 250.0, &mut out);
    }
    for _ in 0..10 {
        at(&mut t, 60, 3000.0, &mut out);
    }
    for i in (0..12).rev() {
        at(&mut t, 15, f64::from(i) * 250.0, &mut out);
    }
    for _ in 0..10 {
        at(&mut t, 60, 0.0, &mut out);
    }
    out
}

/// When the track is where: the times of the legs' first fixes.
struct Marks {
    left_home: i64,
    at_customer: i64,
    left_customer: i64,
    back_home: i64,
}

fn marks(track: &[(i64, f64, f64)]) -> Marks {
    Marks {
        left_home: track[11].0,
        at_customer: track[22].0,
        left_customer: track[33].0,
        back_home: track[44].0,
    }
}

/// A depot circle at home (150 m) and a 400 m square around the customer.
fn fences(extra: &str) -> String {
    let (clat, clon) = east(3000.0);
    let dlat = 200.0 / M_PER_DEG_LAT;
    let dlon = 200.0 / (M_PER_DEG_LAT * HOME.0.to_radians().cos());
    let ring = [
        (-1.0, -1.0),
        (1.0, -1.0),
        (1.0, 1.0),
        (-1.0, 1.0),
        (-1.0, -1.0),
    ]
    .map(|(x, y)| format!("[{},{}]", clon + x * dlon, clat + y * dlat))
    .join(",");
    format!(
        r#"{{"type":"FeatureCollection","features":[
        {{"type":"Feature","properties":{{"id":"depot","name":"Depot","radius":150}},"geometry":{{"type":"Point","coordinates":[{},{}]}}}},
        {{"type":"Feature","properties":{{"id":"customer","name":"Customer"}},"geometry":{{"type":"Polygon","coordinates":[[{ring}]]}}}}{extra}]}}"#,
        HOME.1, HOME.0
    )
}

/// A fix as the phone sends it: `vel` 0 at home and at the customer,
/// where it is at rest, 60 on the road.
fn location(tst: i64, lat: f64, lon: f64) -> Vec<u8> {
    let vel = if (lat, lon) == HOME || (lat, lon) == east(3000.0) {
        0
    } else {
        60
    };
    format!(
        r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{tst},"tid":"vn","acc":8,"vel":{vel}}}"#
    )
    .into_bytes()
}

const DEVICE: [(&str, &str); 2] = [("X-Limit-U", "fleet"), ("X-Limit-D", "van1")];

fn post_all(serve: &Serve, fixes: &[(i64, f64, f64)]) {
    for (t, lat, lon) in fixes {
        let a = serve.post("/pub", &DEVICE, &location(*t, *lat, *lon));
        assert_eq!(a.status, 200, "{}\n{}", a.body, serve.log());
    }
}

/// The device's own region: a 100 m waypoint half way to the customer.
fn post_waypoint(serve: &Serve) {
    let (lat, lon) = east(1500.0);
    let body = format!(
        r#"{{"_type":"waypoint","desc":"Bridge","lat":{lat},"lon":{lon},"rad":100,"tst":{}}}"#,
        T0 - 86_400
    );
    let a = serve.post("/pub", &DEVICE, body.as_bytes());
    assert_eq!(a.status, 200, "{}", a.body);
}

/// The server transitions, trips and stops every run of the track must
/// give, as the store's rows read them.
fn expected(track: &[(i64, f64, f64)]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let m = marks(track);
    let bridge_out = track[16].0; // 1500 m: the 6th driving fix
    let bridge_back = track[38].0;
    let transitions = [
        (T0, "enter", "Depot", "depot"),
        (m.left_home, "leave", "Depot", "depot"),
        (bridge_out, "enter", "Bridge", "wp:1763613600:Bridge"),
        (bridge_out + 15, "leave", "Bridge", "wp:1763613600:Bridge"),
        (m.at_customer, "enter", "Customer", "customer"),
        (m.left_customer, "leave", "Customer", "customer"),
        (bridge_back, "enter", "Bridge", "wp:1763613600:Bridge"),
        (bridge_back + 15, "leave", "Bridge", "wp:1763613600:Bridge"),
        (m.back_home, "enter", "Depot", "depot"),
    ]
    .map(|(t, e, d, r)| format!("{t}|{e}|{d}|{r}"))
    .to_vec();
    // Trips start when the van left (its last fix at rest, 250 m before
    // the first at 60 km/h) and end when it arrived (its first fix at
    // rest); stops are named by the fence they lie in.
    let trips = vec![
        format!("{}|{}|13", m.left_home - 15, m.at_customer),
        format!("{}|{}|13", m.left_customer - 15, m.back_home),
    ];
    let stops = vec![
        format!("{T0}|{}|11|Depot", m.left_home - 15),
        format!("{}|{}|11|Customer", m.at_customer, m.left_customer - 15),
    ];
    (transitions, trips, stops)
}

fn store_rows(serve: &Serve) -> (Vec<String>, Vec<String>, Vec<String>) {
    let db = serve.db();
    (
        rows(
            &db,
            "SELECT tst, event, desc, rid FROM transitions WHERE source = 'server' ORDER BY tst, event",
        ),
        rows(
            &db,
            "SELECT start, \"end\", points FROM trips ORDER BY start",
        ),
        rows(
            &db,
            "SELECT start, \"end\", points, place FROM stops ORDER BY start",
        ),
    )
}

/// Trip distances: each within 1% of the haversine sum over its fixes.
/// `trips` are `start|end|distance|avg_vel` rows.
fn check_distances(track: &[(i64, f64, f64)], trips: &[String]) {
    for row in trips {
        let v: Vec<&str> = row.split('|').collect();
        let (start, end): (i64, i64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
        let (distance, avg): (f64, f64) = (v[2].parse().unwrap(), v[3].parse().unwrap());
        let fixes: Vec<(f64, f64)> = track
            .iter()
            .filter(|f| (start..=end).contains(&f.0))
            .map(|f| (f.1, f.2))
            .collect();
        let reference: f64 = fixes.windows(2).map(|w| haversine(w[0], w[1])).sum();
        assert!(
            (distance - reference).abs() / reference < 0.01,
            "trip {start}: {distance} m, reference {reference} m"
        );
        assert!((avg - distance / (end - start) as f64 * 3.6).abs() < 1e-6);
    }
}

#[test]
fn positions_over_http_give_transitions_trips_and_stops_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let fences_file = dir.path().join("fences.geojson");
    std::fs::write(&fences_file, fences("")).unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(
        &data,
        &["--fences", fences_file.to_str().unwrap()],
        &[("OTSTREAM_GEOFENCE__RELOAD_MS", "100")],
    )
    .unwrap();
    let track = track();
    post_waypoint(&serve);
    post_all(&serve, &track);
    let (transitions, trips, stops) = store_rows(&serve);
    let want = expected(&track);
    assert_eq!(transitions, want.0);
    assert_eq!(trips, want.1);
    assert_eq!(stops, want.2);
    check_distances(
        &track,
        &rows(
            &serve.db(),
            "SELECT start, \"end\", distance, avg_vel FROM trips ORDER BY start",
        ),
    );
    // Device transitions are kept beside the server's, in the same table.
    let device_event = format!(
        r#"{{"_type":"transition","event":"enter","desc":"Depot","tst":{},"wtst":1,"lat":52.52,"lon":13.4,"acc":5,"t":"c"}}"#,
        T0 + 10_000
    );
    assert_eq!(
        serve.post("/pub", &DEVICE, device_event.as_bytes()).status,
        200
    );
    assert_eq!(
        rows(
            &serve.db(),
            "SELECT source, count(*) FROM transitions GROUP BY source ORDER BY source"
        ),
        ["device|1", "server|9"]
    );

    // A fence added to the file while running is used without a restart;
    // a broken file is reported and the fences in use are kept.
    let (wlat, wlon) = (52.60, 13.50);
    let warehouse = format!(
        r#",{{"type":"Feature","properties":{{"id":"wh","name":"Warehouse","radius":300}},"geometry":{{"type":"Point","coordinates":[{wlon},{wlat}]}}}}"#
    );
    std::fs::write(&fences_file, fences(&warehouse)).unwrap();
    serve.wait_for_log("fences file changed; reloaded");
    let t = T0 + 20_000;
    post_all(&serve, &[(t, wlat, wlon)]);
    std::fs::write(&fences_file, "{ not json").unwrap();
    serve.wait_for_log("cannot be used; keeping the fences in use");
    post_all(&serve, &[(t + 60, HOME.0, HOME.1)]);
    assert_eq!(
        rows(
            &serve.db(),
            &format!(
                "SELECT tst, event, rid FROM transitions WHERE source = 'server' AND tst >= {t} ORDER BY tst, event"
            ),
        ),
        [
            format!("{t}|enter|wh"),
            format!("{t}|leave|depot"),
            format!("{}|enter|depot", t + 60),
            format!("{}|leave|wh", t + 60),
        ]
    );
}

/// The track in one run, and in two runs with a SIGKILL in the middle of
/// the first trip (and the last fixes before the crash sent again, as a
/// client that missed the answers would): the same rows.
#[test]
fn a_restart_in_the_middle_of_a_trip_gives_the_same_trips() {
    let dir = tempfile::tempdir().unwrap();
    let fences_file = dir.path().join("fences.geojson");
    std::fs::write(&fences_file, fences("")).unwrap();
    let args = ["--fences", fences_file.to_str().unwrap()];
    let track = track();
    let cut = 16; // mid-way to the customer, on the waypoint

    let crashed = dir.path().join("crashed");
    let serve = Serve::start(&crashed, &args, &[]).unwrap();
    post_waypoint(&serve);
    post_all(&serve, &track[..cut]);
    serve.kill();
    let serve = Serve::start(&crashed, &args, &[]).unwrap();
    post_all(&serve, &track[cut - 3..]);
    let got = store_rows(&serve);
    assert_eq!(got, expected(&track));
    let trips = "SELECT start, \"end\", start_lat, start_lon, end_lat, end_lon, distance, duration, avg_vel, max_vel, points FROM trips ORDER BY start";
    let crashed_trips = rows(&serve.db(), trips);

    let whole = dir.path().join("whole");
    let serve = Serve::start(&whole, &args, &[]).unwrap();
    post_waypoint(&serve);
    post_all(&serve, &track);
    assert_eq!(rows(&serve.db(), trips), crashed_trips);
    assert_eq!(store_rows(&serve), got);
}

/// The same through ClickHouse, with a graceful restart mid-trip: the state
/// is read back from ClickHouse's `device_state`.
#[test]
fn positions_over_http_give_transitions_trips_and_stops_in_clickhouse() {
    let url = clickhouse_url();
    let db = unique_db("geo");
    let dir = tempfile::tempdir().unwrap();
    let fences_file = dir.path().join("fences.geojson");
    std::fs::write(&fences_file, fences("")).unwrap();
    let args = [
        "--fences",
        fences_file.to_str().unwrap(),
        "--clickhouse-url",
        url.as_str(),
    ];
    let env = [
        ("OTSTREAM_CLICKHOUSE__DATABASE", db.as_str()),
        ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "20"),
    ];
    let track = track();
    let serve = Serve::start(dir.path(), &args, &env).unwrap();
    post_waypoint(&serve);
    post_all(&serve, &track[..20]);
    assert!(serve.interrupt().unwrap());
    let serve = Serve::start(dir.path(), &args, &env).unwrap();
    post_all(&serve, &track[20..]);
    serve.wait_shipped();
    let q = |sql: &str| -> Vec<String> {
        ch(&url, Some(&db), &format!("{sql} FORMAT TSV"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .lines()
            .map(|l| l.replace('\t', "|"))
            .collect()
    };
    let (transitions, trips, stops) = expected(&track);
    assert_eq!(
        q(
            "SELECT toUInt32(tst), event, desc, rid FROM transitions FINAL WHERE source = 'server' ORDER BY tst, event"
        ),
        transitions
    );
    assert_eq!(
        q("SELECT toUInt32(start), toUInt32(end), points FROM trips FINAL ORDER BY start"),
        trips
    );
    assert_eq!(
        q("SELECT toUInt32(start), toUInt32(end), points, place FROM stops FINAL ORDER BY start"),
        stops
    );
    check_distances(
        &track,
        &q(
            "SELECT toUInt32(start), toUInt32(end), distance, avg_vel FROM trips FINAL ORDER BY start",
        ),
    );
    assert_eq!(
        q("SELECT kind, user, device FROM device_state FINAL ORDER BY kind"),
        [
            "geo|fleet|van1",
            "places|fleet|van1",
            "waypoints|fleet|van1"
        ]
    );
}

/// `[geofence] push`: a phone is sent the circles that apply to it (not the
/// polygon, not another user's yard) as `setWaypoints` in the answer to its
/// location, once per change of the fences file; the phone's copy of a
/// pushed region is neither learned as its own region nor raises a second
/// event when the phone reports a transition for it.
#[test]
fn fences_are_pushed_to_the_phone_once_per_change_and_its_copy_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let fences_file = dir.path().join("fences.geojson");
    let yard = r#",{"type":"Feature","properties":{"id":"acme-yard","name":"Acme yard","radius":80,"user":"acme"},"geometry":{"type":"Point","coordinates":[13.41,52.52]}}"#;
    std::fs::write(&fences_file, fences(yard)).unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--fences", fences_file.to_str().unwrap()],
        &[
            ("OTSTREAM_GEOFENCE__PUSH", "true"),
            ("OTSTREAM_GEOFENCE__RELOAD_MS", "100"),
        ],
    )
    .unwrap();
    let at = |t: i64| location(t, HOME.0, HOME.1);
    let answer = |body: &[u8]| -> serde_json::Value {
        let a = serve.post("/pub", &DEVICE, body);
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    };
    let first = answer(&at(T0));
    assert_eq!(
        first,
        serde_json::json!([{"_type": "cmd", "action": "setWaypoints", "waypoints": {"_type": "waypoints", "waypoints": [
            {"_type": "waypoint", "desc": "Depot", "lat": HOME.0, "lon": HOME.1, "rad": 150,
             "tst": first[0]["waypoints"]["waypoints"][0]["tst"], "rid": "otstream:depot"}]}}])
    );
    assert_eq!(answer(&at(T0 + 60)), serde_json::json!([]));

    // The phone reports its copy back as Android does (no rid: the tst
    // names it), and transitions for it as iOS (its rid) and Android (its
    // tst as wtst) do.
    let tst = &first[0]["waypoints"]["waypoints"][0]["tst"];
    let copy = format!(
        r#"{{"_type":"waypoints","waypoints":[{{"_type":"waypoint","desc":"Depot","lat":{},"lon":{},"rad":150,"tst":{tst}}}]}}"#,
        HOME.0, HOME.1
    );
    assert_eq!(answer(copy.as_bytes()), serde_json::json!([]));
    for reported in [
        format!(
            r#"{{"_type":"transition","event":"enter","desc":"Depot","rid":"otstream:depot","lat":{},"lon":{},"tst":{},"wtst":{tst},"acc":8,"t":"c"}}"#,
            HOME.0,
            HOME.1,
            T0 + 1
        ),
        format!(
            r#"{{"_type":"transition","event":"leave","desc":"Depot","lat":{},"lon":{},"tst":{},"wtst":{tst},"acc":8,"t":"c"}}"#,
            HOME.0,
            HOME.1,
            T0 + 2
        ),
    ] {
        assert_eq!(answer(reported.as_bytes()), serde_json::json!([]));
    }
    assert_eq!(answer(&at(T0 + 120)), serde_json::json!([]));

    // A new fence: the next location is sent both.
    let more = format!(
        r#"{yard},{{"type":"Feature","properties":{{"id":"gate","name":"Gate","radius":40}},"geometry":{{"type":"Point","coordinates":[{},{}]}}}}"#,
        HOME.1 + 0.01,
        HOME.0
    );
    std::fs::write(&fences_file, fences(&more)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut t = T0 + 180;
    let rids = loop {
        let a = answer(&at(t));
        if let Some(list) = a[0]["waypoints"]["waypoints"].as_array() {
            break list
                .iter()
                .map(|w| w["rid"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "no new fences pushed");
        std::thread::sleep(Duration::from_millis(100));
        t += 60;
    };
    assert_eq!(rids, ["otstream:depot", "otstream:gate"]);

    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            "SELECT source, event, rid FROM transitions ORDER BY source, tst"
        ),
        [
            "pushed|enter|otstream:depot",
            "pushed|leave|NULL",
            "server|enter|depot"
        ]
    );
    assert_eq!(
        rows(&db, "SELECT id FROM events WHERE kind = 'enter'"),
        [format!("enter:fleet/van1:{T0}:Depot")]
    );
}
