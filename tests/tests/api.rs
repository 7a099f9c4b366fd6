//! The read API, the live feed and the map page, against `serve` on the
//! embedded store and on ClickHouse, with one scripted fleet: exact
//! answers, every export format read back by a real parser, Recorder's
//! shapes, access rules, and the page in a real headless Chromium.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use otstream_tests::browser::Browser;
use otstream_tests::{Serve, clickhouse_url, rows, unique_db};
use serde_json::{Value, json};

/// 2025-11-21T04:40:00Z.
const T0: i64 = 1_763_700_000;
const HOME: (f64, f64) = (48.85, 2.35);
const M_PER_DEG_LAT: f64 = 111_320.0;

fn east(m: f64) -> (f64, f64) {
    let lon = HOME.1 + m / (M_PER_DEG_LAT * HOME.0.to_radians().cos());
    // Six decimals, as the apps send them, so values read back exactly.
    (HOME.0, (lon * 1e6).round() / 1e6)
}

#[derive(Debug, Clone)]
struct Fix {
    user: &'static str,
    device: &'static str,
    tst: i64,
    lat: f64,
    lon: f64,
    batt: i64,
}

/// Five devices of three users. jane/phone parks at home (a depot fence),
/// drives 4 km east and parks again: a stop, a trip, server transitions.
fn fleet() -> Vec<Fix> {
    let mut out = Vec::new();
    let mut add = |user, device, tst, (lat, lon): (f64, f64), batt| {
        out.push(Fix {
            user,
            device,
            tst,
            lat,
            lon,
            batt,
        })
    };
    let mut t = T0;
    for i in 0..12 {
        add("jane", "phone", t, HOME, 90 - i);
        t += 30;
    }
    for i in 1..=16 {
        t += 15;
        add("jane", "phone", t, east(250.0 * i as f64), 78);
    }
    for _ in 0..12 {
        t += 30;
        add("jane", "phone", t, east(4000.0), 77);
    }
    for i in 0..3 {
        add("jane", "tablet", T0 + 100 * (i + 1), east(20.0), 50);
    }
    for i in 0..4 {
        add(
            "bob",
            "phone",
            T0 + 60 * (i + 1),
            east(1000.0 + 10.0 * i as f64),
            33,
        );
    }
    add("bob", "car", T0 + 50, east(3000.0), 12);
    add("bob", "car", T0 + 500, east(3100.0), 11);
    add("eve", "van", T0 + 70, east(2000.0), 99);
    add("eve", "van", T0 + 90, east(2050.0), 98);
    out
}

/// The speed a phone reports: 0 at rest (jane at home and at work), 40
/// km/h on the road.
fn vel_of(f: &Fix) -> i64 {
    let at = |(lat, lon): (f64, f64)| (f.lat, f.lon) == (lat, lon);
    if f.user == "jane" && (at(HOME) || at(east(4000.0))) {
        0
    } else {
        40
    }
}

fn post_fix(serve: &Serve, f: &Fix) {
    let body = json!({"_type": "location", "tid": &f.device[..2], "tst": f.tst, "lat": f.lat,
        "lon": f.lon, "acc": 10, "batt": f.batt, "vel": vel_of(f)});
    let a = serve.post(
        "/pub",
        &[("X-Limit-U", f.user), ("X-Limit-D", f.device)],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{}\n{}", a.body, serve.log());
}

fn post_fleet(serve: &Serve) -> Vec<Fix> {
    let fixes = fleet();
    // Interleaved by time, as a fleet sends them.
    let mut ordered = fixes.clone();
    ordered.sort_by_key(|f| f.tst);
    for f in &ordered {
        post_fix(serve, f);
    }
    let card = r#"{"_type":"card","name":"Jane's phone","face":"iVBORw0KGgo="}"#;
    let a = serve.post(
        "/pub",
        &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")],
        card.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let transition = json!({"_type": "transition", "tst": T0 + 345, "wtst": T0 - 1000,
        "lat": HOME.0, "lon": HOME.1, "acc": 10, "event": "leave", "desc": "Home", "t": "c"});
    let a = serve.post(
        "/pub",
        &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")],
        transition.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    fixes
}

fn depot_fence() -> String {
    format!(
        r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"depot","name":"Depot","radius":150}},"geometry":{{"type":"Point","coordinates":[{},{}]}}}}]}}"#,
        HOME.1, HOME.0
    )
}

/// GET `url`: status, body, content type.
pub(crate) fn get(url: &str, auth: Option<(&str, &str)>) -> (u16, String, String) {
    let mut req = ureq::get(url).timeout(Duration::from_secs(60));
    if let Some((user, password)) = auth {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.set("Authorization", &format!("Basic {token}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let ct = resp.content_type().to_owned();
    (status, resp.into_string().unwrap_or_default(), ct)
}

pub(crate) fn get_bytes(url: &str) -> (u16, Vec<u8>, String) {
    let resp = match ureq::get(url).timeout(Duration::from_secs(60)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let (status, ct) = (resp.status(), resp.content_type().to_owned());
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body, ct)
}

/// A Parquet file as chDB reads it: the types of the columns `typed`
/// (`name\ttype`), then the rows of `SELECT {select}` from it.
pub(crate) fn read_parquet(file: &[u8], typed: &str, select: &str) -> (Vec<String>, Vec<Value>) {
    const READ: &str = r#"
import sys, chdb
p, typed, select = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
f = f"file('{p}', Parquet)"
for line in str(chdb.query(f"DESCRIBE {f}", "TSV")).splitlines():
    name, kind = line.split("\t")[:2]
    if name in typed:
        print(f"{name}\t{kind}")
print("--")
print(chdb.query(f"SELECT {select} FROM {f} SETTINGS output_format_json_quote_64bit_integers = 0", "JSONEachRow"), end="")
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.parquet");
    std::fs::write(&path, file).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", READ, path.to_str().unwrap(), typed, select])
        .output()
        .expect("python3 with chdb (the test command installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (types, rows) = text.split_once("--\n").unwrap();
    (
        types.lines().map(str::to_owned).collect(),
        rows.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

pub(crate) fn get_json(serve: &Serve, path: &str) -> Value {
    let (status, body, _) = get(&format!("{}{path}", serve.url), None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Removes `received_at` (when each run received a row), the one value
/// two runs of the same fleet do not share.
pub(crate) fn without_received_at(mut v: Value) -> Value {
    match &mut v {
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| *x = without_received_at(x.take())),
        Value::Object(o) => {
            o.remove("received_at");
            o.remove("seen");
            for x in o.values_mut() {
                *x = without_received_at(x.take());
            }
        }
        _ => {}
    }
    v
}

/// user, device, tst, lat, lon, batt, card name.
type DeviceRow = (String, String, i64, f64, f64, i64, Option<String>);
/// distance, driving seconds, trips, stops, top speed.
type DayTotals = (f64, i64, i64, i64, f64);

const WINDOW: &str = "from=2025-11-21T04:00:00Z&to=2025-11-21T06:00:00Z";

/// Everything one backend answers for the fleet, checked as far as it can
/// be from the script alone; returned for comparison with the other.
fn answers(serve: &Serve, fixes: &[Fix]) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    let jane: Vec<&Fix> = fixes
        .iter()
        .filter(|f| f.user == "jane" && f.device == "phone")
        .collect();

    // Positions of one device in a window: exactly the fixes sent.
    let positions = get_json(
        serve,
        &format!("/api/v1/positions?user=jane&device=phone&{WINDOW}"),
    );
    let got: Vec<(i64, f64, f64, i64, i64)> = positions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(
                (p["user"].as_str(), p["device"].as_str(), p["tid"].as_str()),
                (Some("jane"), Some("phone"), Some("ph"))
            );
            assert_eq!(p["acc"].as_i64(), Some(10));
            (
                p["tst"].as_i64().unwrap(),
                p["lat"].as_f64().unwrap(),
                p["lon"].as_f64().unwrap(),
                p["batt"].as_i64().unwrap(),
                p["vel"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, f64, f64, i64, i64)> = jane
        .iter()
        .map(|f| (f.tst, f.lat, f.lon, f.batt, vel_of(f)))
        .collect();
    assert_eq!(got, want);

    // A narrower window (UNIX seconds) and the last N of it.
    let (a, b) = (jane[5].tst, jane[20].tst);
    let narrow = get_json(
        serve,
        &format!("/api/v1/positions?user=jane&device=phone&from={a}&to={b}"),
    );
    let tsts: Vec<i64> = narrow
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tst"].as_i64().unwrap())
        .collect();
    assert_eq!(tsts, jane[5..=20].iter().map(|f| f.tst).collect::<Vec<_>>());
    let last3 = get_json(
        serve,
        &format!("/api/v1/positions?user=jane&device=phone&{WINDOW}&limit=3"),
    );
    let tsts: Vec<i64> = last3
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tst"].as_i64().unwrap())
        .collect();
    assert_eq!(
        tsts,
        jane[jane.len() - 3..]
            .iter()
            .map(|f| f.tst)
            .collect::<Vec<_>>()
    );
    // Every visible device, by user, device and time.
    let all = get_json(serve, &format!("/api/v1/positions?{WINDOW}"));
    let keys: Vec<(String, String, i64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["user"].as_str().unwrap().to_owned(),
                p["device"].as_str().unwrap().to_owned(),
                p["tst"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut want_keys: Vec<(String, String, i64)> = fixes
        .iter()
        .map(|f| (f.user.to_owned(), f.device.to_owned(), f.tst))
        .collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    out.insert("positions", without_received_at(all.clone()));

    // The heatmap: those positions counted per H3 cell, by cell, at each
    // stored resolution; its GeoJSON the same cells as hexagons.
    for res in otstream_schema::h3::RESOLUTIONS {
        let mut want: BTreeMap<u64, u64> = BTreeMap::new();
        for p in all.as_array().unwrap() {
            assert!(p.get("filtered").is_none_or(Value::is_null), "{p}");
            let cells =
                otstream_schema::h3::cells(p["lat"].as_f64().unwrap(), p["lon"].as_f64().unwrap())
                    .unwrap();
            let i = otstream_schema::h3::RESOLUTIONS
                .iter()
                .position(|r| *r == res)
                .unwrap();
            *want.entry(cells[i]).or_default() += 1;
        }
        let want: Vec<(String, u64)> = want
            .into_iter()
            .map(|(c, n)| (otstream_schema::h3::hex(c), n))
            .collect();
        let heat = get_json(serve, &format!("/api/v1/heatmap?res={res}&{WINDOW}"));
        let got: Vec<(String, u64)> = heat
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["cell"].as_str().unwrap().to_owned(),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "res {res}");
        let geo = get_json(
            serve,
            &format!("/api/v1/heatmap?res={res}&{WINDOW}&format=geojson"),
        );
        let features = geo["features"].as_array().unwrap();
        assert_eq!(features.len(), want.len());
        assert_eq!(
            features[0]["geometry"]["coordinates"][0]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert_eq!(
            features[0]["properties"]["cell"].as_str(),
            Some(want[0].0.as_str())
        );
        out.insert(
            ["heatmap_5", "heatmap_7", "heatmap_9"][usize::from(res / 2 - 2)],
            heat,
        );
    }

    // Every format of the same answer, read back by a real parser.
    let path = format!("/api/v1/positions?user=jane&device=phone&{WINDOW}");
    let (_, ndjson, ct) = get(&format!("{}{path}&format=ndjson", serve.url), None);
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(Value::Array(lines), positions);

    let (_, geo, ct) = get(&format!("{}{path}&format=geojson", serve.url), None);
    assert_eq!(ct, "application/geo+json");
    let fc: geojson::FeatureCollection =
        geo.parse::<geojson::GeoJson>().unwrap().try_into().unwrap();
    assert_eq!(fc.features.len(), jane.len());
    for (feature, f) in fc.features.iter().zip(&jane) {
        match &feature.geometry.as_ref().unwrap().value {
            geojson::GeometryValue::Point { coordinates: c } => {
                assert_eq!((c[0], c[1]), (f.lon, f.lat))
            }
            other => panic!("not a point: {other:?}"),
        }
        assert_eq!(feature.property("tst").and_then(Value::as_i64), Some(f.tst));
        assert_eq!(
            feature.property("batt").and_then(Value::as_i64),
            Some(f.batt)
        );
        assert_eq!(
            feature.property("device").and_then(Value::as_str),
            Some("phone")
        );
    }

    let (_, line, _) = get(&format!("{}{path}&format=linestring", serve.url), None);
    let fc: geojson::FeatureCollection = line
        .parse::<geojson::GeoJson>()
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(fc.features.len(), 1);
    match &fc.features[0].geometry.as_ref().unwrap().value {
        geojson::GeometryValue::LineString {
            coordinates: coords,
        } => assert_eq!(
            coords.iter().map(|c| (c[0], c[1])).collect::<Vec<_>>(),
            jane.iter().map(|f| (f.lon, f.lat)).collect::<Vec<_>>()
        ),
        other => panic!("not a line: {other:?}"),
    }

    let (_, gpx_text, ct) = get(&format!("{}{path}&format=gpx", serve.url), None);
    assert_eq!(ct, "application/gpx+xml");
    let doc = gpx::read(gpx_text.as_bytes()).unwrap();
    assert_eq!(doc.tracks.len(), 1);
    assert_eq!(doc.tracks[0].name.as_deref(), Some("jane/phone"));
    let points = &doc.tracks[0].segments[0].points;
    assert_eq!(points.len(), jane.len());
    for (p, f) in points.iter().zip(&jane) {
        assert_eq!((p.point().y(), p.point().x()), (f.lat, f.lon));
        let t: String = p.time.unwrap().format().unwrap();
        assert_eq!(otstream_tests_time(&t), f.tst);
    }

    let (_, csv_text, ct) = get(&format!("{}{path}&format=csv", serve.url), None);
    assert_eq!(ct, "text/csv");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), jane.len());
    for (r, f) in records.iter().zip(&jane) {
        assert_eq!(r[col("tst")].parse::<i64>().unwrap(), f.tst);
        assert_eq!(r[col("lat")].parse::<f64>().unwrap(), f.lat);
        assert_eq!(r[col("lon")].parse::<f64>().unwrap(), f.lon);
        assert_eq!(r[col("batt")].parse::<i64>().unwrap(), f.batt);
        assert_eq!(&r[col("user")], "jane");
    }

    // Parquet, read back by a real reader (chDB, ClickHouse's engine from
    // PyPI): the JSON export's rows, with times as timestamps.
    let (status, parquet, ct) = get_bytes(&format!("{}{path}&format=parquet", serve.url));
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/vnd.apache.parquet")
    );
    let (types, read_back) = read_parquet(
        &parquet,
        "tst,lat,batt,inregions,received_at",
        "user, device, toUnixTimestamp(tst) AS tst, lat, lon, batt, \
         toUnixTimestamp64Milli(received_at) AS received_at, inregions",
    );
    assert_eq!(
        types,
        [
            "tst\tDateTime64(3, \\'UTC\\')",
            "lat\tFloat64",
            "batt\tNullable(Int32)",
            "inregions\tArray(Nullable(String))",
            "received_at\tDateTime64(3, \\'UTC\\')",
        ]
    );
    let from_json: Vec<Value> = positions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            serde_json::json!({
                "user": p["user"], "device": p["device"], "tst": p["tst"],
                "lat": p["lat"], "lon": p["lon"], "batt": p["batt"],
                "received_at": p["received_at"],
                "inregions": p.get("inregions").cloned().unwrap_or(serde_json::json!([])),
            })
        })
        .collect();
    assert_eq!(read_back, from_json);

    // Last positions and card names.
    let devices = get_json(serve, "/api/v1/devices");
    let got: Vec<DeviceRow> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["user"].as_str().unwrap().into(),
                d["device"].as_str().unwrap().into(),
                d["tst"].as_i64().unwrap(),
                d["lat"].as_f64().unwrap(),
                d["lon"].as_f64().unwrap(),
                d["batt"].as_i64().unwrap(),
                d["name"].as_str().map(Into::into),
            )
        })
        .collect();
    let mut last: BTreeMap<(String, String), &Fix> = BTreeMap::new();
    for f in fixes {
        last.insert((f.user.into(), f.device.into()), f);
    }
    let want: Vec<_> = last
        .iter()
        .map(|((u, d), f)| {
            (
                u.clone(),
                d.clone(),
                f.tst,
                f.lat,
                f.lon,
                f.batt,
                (u == "jane" && d == "phone").then(|| "Jane's phone".to_owned()),
            )
        })
        .collect();
    assert_eq!(got, want);
    out.insert("devices", without_received_at(devices));

    // Trips, stops, transitions: what the tables hold, in JSON and GeoJSON.
    let trips = get_json(serve, &format!("/api/v1/trips?{WINDOW}"));
    let stops = get_json(serve, &format!("/api/v1/stops?{WINDOW}"));
    let transitions = get_json(serve, &format!("/api/v1/transitions?user=jane&{WINDOW}"));
    assert!(!trips.as_array().unwrap().is_empty(), "no trip: {trips}");
    assert!(!stops.as_array().unwrap().is_empty(), "no stop: {stops}");
    // Jane's stop at home lies in the depot fence and is named by it (her
    // stop at work is still going on).
    let places: Vec<(&str, &str, Option<&str>)> = stops
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user"] == "jane" && s["device"] == "phone")
        .map(|s| {
            let place = s.get("place").and_then(Value::as_str);
            (
                s["user"].as_str().unwrap(),
                s["device"].as_str().unwrap(),
                place,
            )
        })
        .collect();
    assert_eq!(places, [("jane", "phone", Some("Depot"))]);
    let sources: Vec<(&str, &str)> = transitions
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["source"].as_str().unwrap(), t["event"].as_str().unwrap()))
        .collect();
    assert!(
        sources.contains(&("server", "enter"))
            && sources.contains(&("server", "leave"))
            && sources.contains(&("device", "leave")),
        "{sources:?}"
    );
    let device_transition = transitions
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "device")
        .unwrap();
    assert_eq!(
        without_received_at(device_transition.clone()),
        json!({"user":"jane","device":"phone","tst":T0+345,"wtst":T0-1000,
        "lat":HOME.0,"lon":HOME.1,"acc":10,"event":"leave","desc":"Home","t":"c","source":"device"})
    );
    // Trips and stops in Parquet: the same rows.
    for (what, json) in [("trips", &trips), ("stops", &stops)] {
        let url = format!("{}/api/v1/{what}?{WINDOW}&format=parquet", serve.url);
        let (status, parquet, _) = get_bytes(&url);
        assert_eq!(status, 200);
        let (types, read_back) = read_parquet(
            &parquet,
            "start,duration",
            "user, device, toUnixTimestamp(start) AS start, toUnixTimestamp(\"end\") AS end, duration, points",
        );
        assert_eq!(
            types,
            ["start\tDateTime64(3, \\'UTC\\')", "duration\tInt64"]
        );
        let want: Vec<Value> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                serde_json::json!({"user": t["user"], "device": t["device"], "start": t["start"],
                    "end": t["end"], "duration": t["duration"], "points": t["points"]})
            })
            .collect();
        assert_eq!(read_back, want, "{what}");
    }

    let (_, trips_geo, _) = get(
        &format!("{}/api/v1/trips?{WINDOW}&format=geojson", serve.url),
        None,
    );
    let fc: geojson::FeatureCollection = trips_geo
        .parse::<geojson::GeoJson>()
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(fc.features.len(), trips.as_array().unwrap().len());
    for (feature, t) in fc.features.iter().zip(trips.as_array().unwrap()) {
        assert_eq!(feature.property("distance"), Some(&t["distance"]));
        match &feature.geometry.as_ref().unwrap().value {
            geojson::GeometryValue::LineString { coordinates: c } => assert_eq!(
                c[0].as_slice(),
                [
                    t["start_lon"].as_f64().unwrap(),
                    t["start_lat"].as_f64().unwrap()
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    // The summary: per device per day, from those trips and stops.
    let summary = get_json(serve, &format!("/api/v1/summary?{WINDOW}"));
    let mut want: BTreeMap<(String, String), DayTotals> = BTreeMap::new();
    for t in trips.as_array().unwrap() {
        let e = want
            .entry((
                t["user"].as_str().unwrap().into(),
                t["device"].as_str().unwrap().into(),
            ))
            .or_default();
        e.0 += t["distance"].as_f64().unwrap();
        e.1 += t["duration"].as_i64().unwrap();
        e.2 += 1;
        e.4 = e.4.max(t["max_vel"].as_f64().unwrap());
    }
    for s in stops.as_array().unwrap() {
        want.entry((
            s["user"].as_str().unwrap().into(),
            s["device"].as_str().unwrap().into(),
        ))
        .or_default()
        .3 += 1;
    }
    let want: Vec<Value> = want.into_iter().map(|((u, d), (dist, drive, n, st, max))| json!({"user": u, "device": d,
        "day": "2025-11-21", "distance": dist, "driving_s": drive, "trips": n, "stops": st, "max_vel": max})).collect();
    assert_eq!(summary, Value::Array(want));
    out.insert("trips", trips);
    out.insert("stops", stops);
    out.insert("transitions", without_received_at(transitions));
    out.insert("summary", summary);

    // Recorder's API: its parameters, headers, shapes and field names.
    let rec = get_json(
        serve,
        "/api/0/locations?user=jane&device=phone&from=2025-11-21T04:00&to=2025-11-21T06:00",
    );
    assert_eq!(rec["count"], json!(jane.len()));
    assert_eq!(rec["status"], 200);
    let first = &rec["data"][0];
    for (k, v) in [
        ("_type", json!("location")),
        ("tid", json!("ph")),
        ("tst", json!(T0)),
        ("lat", json!(HOME.0)),
        ("lon", json!(HOME.1)),
        ("isotst", json!("2025-11-21T04:40:00Z")),
        ("disptst", json!("2025-11-21 04:40:00")),
        ("username", json!("jane")),
        ("device", json!("phone")),
        ("batt", json!(90)),
    ] {
        assert_eq!(first[k], v, "{k}");
    }
    let by_header = ureq::get(&format!("{}/api/0/locations", serve.url))
        .set("X-Limit-User", "jane")
        .set("X-Limit-Device", "phone")
        .set("X-Limit-From", "2025-11-21")
        .set("X-Limit-To", "2025-11-22")
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut by_header: Value = serde_json::from_str(&by_header).unwrap();
    by_header["data"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .for_each(|x| {
            x.as_object_mut().unwrap().remove("isorcv");
        });
    let mut rec_no_rcv = rec.clone();
    rec_no_rcv["data"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .for_each(|x| {
            x.as_object_mut().unwrap().remove("isorcv");
        });
    assert_eq!(by_header, rec_no_rcv);
    let fields = get_json(
        serve,
        "/api/0/locations?user=jane&device=phone&from=2025-11-21&to=2025-11-22&limit=1&fields=tst,isotst",
    );
    assert_eq!(
        fields,
        json!({"data": [{"tst": jane.last().unwrap().tst, "isotst": "2025-11-21T04:56:00Z"}], "count": 1, "status": 200})
    );
    let line = get_json(
        serve,
        "/api/0/locations?user=jane&device=phone&from=2025-11-21&to=2025-11-22&format=linestring",
    );
    assert_eq!(line["type"], "Feature");
    assert_eq!(
        line["geometry"]["coordinates"].as_array().unwrap().len(),
        jane.len()
    );
    let last = get_json(serve, "/api/0/last?user=jane&device=phone");
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(
        (
            &last[0]["tst"],
            &last[0]["username"],
            &last[0]["name"],
            &last[0]["face"],
            &last[0]["topic"],
            &last[0]["_type"]
        ),
        (
            &json!(jane.last().unwrap().tst),
            &json!("jane"),
            &json!("Jane's phone"),
            &json!("iVBORw0KGgo="),
            &json!("owntracks/jane/phone"),
            &json!("location")
        )
    );
    // The picture only where Recorder shows it: not in /api/v1/devices.
    let devices = get_json(serve, "/api/v1/devices?user=jane&device=phone");
    assert_eq!(devices[0]["name"], "Jane's phone");
    assert!(devices[0].get("face").is_none(), "{devices}");
    assert_eq!(
        get_json(serve, "/api/0/list"),
        json!({"results": ["bob", "eve", "jane"]})
    );
    assert_eq!(
        get_json(serve, "/api/0/list?user=jane"),
        json!({"results": ["phone", "tablet"]})
    );
    // A device's months, as Recorder lists its monthly .rec files: every
    // month with a position up to `to`, whatever `from` says.
    for days_ago in [400, 40, 39] {
        let (lat, lon) = east(2000.0);
        post_fix(
            serve,
            &Fix {
                user: "eve",
                device: "trailer",
                tst: T0 - days_ago * 86_400,
                lat,
                lon,
                batt: 80,
            },
        );
    }
    serve.settle();
    assert_eq!(
        get_json(serve, "/api/0/list?user=eve&device=trailer&from=2025-11-01"),
        json!({"results": ["rec/eve/trailer/2024-10.rec", "rec/eve/trailer/2025-10.rec"]})
    );
    assert_eq!(
        get_json(serve, "/api/0/list?user=eve&device=trailer&to=2025-01-01"),
        json!({"results": ["rec/eve/trailer/2024-10.rec"]})
    );

    // The regions devices define: the last version of each (named by its
    // rid, else by its creation time), a beacon region without a centre
    // left out.
    let (work, gym) = (east(4000.0), east(1000.0));
    for body in [
        json!({"_type": "waypoints", "waypoints": [
            {"_type": "waypoint", "desc": "Work", "lat": work.0, "lon": work.1, "rad": 200, "tst": T0 - 9000, "rid": "w1"},
            {"_type": "waypoint", "desc": "Gym", "lat": gym.0, "lon": gym.1, "rad": 50, "tst": T0 - 8000},
            {"_type": "waypoint", "desc": "Desk", "uuid": "CA271EAE-5FA8-4E80-8F08-2A302A95A959", "major": 1, "minor": 2, "tst": T0 - 7000}]}),
        json!({"_type": "waypoint", "desc": "Office", "lat": work.0, "lon": work.1, "rad": 250, "tst": T0 - 9000, "rid": "w1"}),
    ] {
        let a = serve.post(
            "/pub",
            &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")],
            body.to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
    serve.settle();
    let regions = get_json(serve, "/api/v1/waypoints?user=jane");
    let regions: Vec<Value> = regions
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert!(w["received_at"].as_i64().unwrap() > 0);
            let mut w = w.clone();
            w.as_object_mut().unwrap().remove("received_at");
            w
        })
        .collect();
    assert_eq!(
        regions,
        [
            json!({"user": "jane", "device": "phone", "tst": T0 - 9000, "lat": work.0, "lon": work.1, "radius": 250, "desc": "Office", "rid": "w1"}),
            json!({"user": "jane", "device": "phone", "tst": T0 - 8000, "lat": gym.0, "lon": gym.1, "radius": 50, "desc": "Gym"}),
        ]
    );
    let geo: geojson::FeatureCollection = get(
        &format!("{}/api/v1/waypoints?format=geojson", serve.url),
        None,
    )
    .1
    .parse::<geojson::GeoJson>()
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(geo.features.len(), 2);
    assert!(get_json(serve, "/api/0/version")["version"].is_string());

    // Bad parameters name themselves.
    for (path, field) in [
        ("/api/v1/positions?from=yesterday", "from"),
        ("/api/v1/positions?from=2025-11-22&to=2025-11-21", "from"),
        ("/api/v1/positions?format=kml", "format"),
        ("/api/v1/positions?device=phone", "user"),
        ("/api/v1/positions?limit=-1", "limit"),
        ("/api/v1/trips?format=gpx", "format"),
        ("/api/v1/heatmap?res=8", "res"),
        ("/api/v1/heatmap?from=2025-01-01&to=2025-12-01", "from"),
        ("/api/v1/heatmap?format=csv", "format"),
        ("/api/0/locations?user=jane", "device"),
        (
            "/api/0/locations?user=jane&device=phone&format=xml",
            "format",
        ),
    ] {
        let (status, body, _) = get(&format!("{}{path}", serve.url), None);
        assert_eq!(status, 400, "{path}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (e["error"]["kind"].as_str(), e["error"]["field"].as_str()),
            (Some("invalid_parameter"), Some(field)),
            "{path}"
        );
    }
    out
}

/// UNIX seconds of an RFC 3339 UTC time (what GPX carries).
fn otstream_tests_time(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse::<f64>().unwrap() as i64)
        .collect();
    // Days from civil (Hinnant), enough for the years in these tests.
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

/// Each object of `rows` as its `keys`' values joined by `|`, as the
/// test library's `rows` prints a table's (text bare, numbers as Rust
/// prints them).
fn joined(rows: &Value, keys: &[&str]) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            keys.iter()
                .map(|k| match &row[*k] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if n.is_i64() => n.to_string(),
                    Value::Number(n) => n.as_f64().unwrap().to_string(),
                    other => panic!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[test]
fn read_api_gives_the_same_exact_answers_from_sqlite_and_clickhouse() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    std::fs::write(&fences, depot_fence()).unwrap();
    let fences = fences.to_str().unwrap();

    let sqlite = Serve::start(&dir.path().join("sqlite"), &["--fences", fences], &[]).unwrap();
    let fixes = post_fleet(&sqlite);
    let from_sqlite = answers(&sqlite, &fixes);
    // What the API says is what the store holds.
    let db = sqlite.db();
    let table_trips = rows(
        &db,
        "SELECT user, device, start, \"end\", distance, points FROM trips ORDER BY user, device, start",
    );
    let api_trips = joined(
        &from_sqlite["trips"],
        &["user", "device", "start", "end", "distance", "points"],
    );
    assert_eq!(api_trips, table_trips);
    let table_stops = rows(
        &db,
        "SELECT user, device, start, \"end\", points FROM stops ORDER BY user, device, start",
    );
    let api_stops = joined(
        &from_sqlite["stops"],
        &["user", "device", "start", "end", "points"],
    );
    assert_eq!(api_stops, table_stops);
    drop(sqlite);

    let url = clickhouse_url();
    let db = unique_db("api");
    let clickhouse = Serve::start(
        &dir.path().join("ch"),
        &["--fences", fences, "--clickhouse-url", &url],
        &[
            ("OTSTREAM_CLICKHOUSE__DATABASE", &db),
            ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "50"),
        ],
    )
    .unwrap();
    post_fleet(&clickhouse);
    clickhouse.wait_shipped();
    let from_clickhouse = answers(&clickhouse, &fixes);
    for (k, v) in &from_sqlite {
        assert_eq!(
            &from_clickhouse[k], v,
            "{k} differs between SQLite and ClickHouse"
        );
    }

    // `otstream run api`: the API alone in front of the same database.
    let alone = Serve::start_cmd(
        &["run", "api"],
        &dir.path().join("api"),
        otstream_tests::free_port(),
        &["--clickhouse-url", &url],
        &[("OTSTREAM_CLICKHOUSE__DATABASE", &db)],
    )
    .unwrap();
    assert_eq!(
        get_json(&alone, &format!("/api/v1/positions?{WINDOW}")),
        get_json(&clickhouse, &format!("/api/v1/positions?{WINDOW}"))
    );
    let (status, body, _) = get(&format!("{}/api/v1/live", alone.url), None);
    assert_eq!(status, 503, "{body}");
}

fn htpasswd(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("htpasswd");
    let lines: Vec<String> = ["jane", "bob", "eve", "root"]
        .iter()
        .map(|u| format!("{u}:{}", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

#[test]
fn read_api_access_by_user_group_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path());
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--htpasswd", pw.to_str().unwrap()],
        &[
            ("OTSTREAM_HTTP__ADMINS", r#"["root"]"#),
            (
                "OTSTREAM_HTTP__FRIENDS__GROUPS",
                r#"{family = ["jane/phone", "bob/phone"]}"#,
            ),
        ],
    )
    .unwrap();
    for f in fleet() {
        let body = json!({"_type": "location", "tst": f.tst, "lat": f.lat, "lon": f.lon});
        let cred = format!("{}-pw", f.user);
        use base64::Engine as _;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{cred}", f.user))
        );
        let a = serve.post(
            "/pub",
            &[
                ("Authorization", &basic),
                ("X-Limit-U", f.user),
                ("X-Limit-D", f.device),
            ],
            body.to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let u = |path: &str| format!("{}{path}", serve.url);
    let keys = |body: &str| -> Vec<String> {
        serde_json::from_str::<Value>(body)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["user"].as_str().unwrap(),
                    d["device"].as_str().unwrap()
                )
            })
            .collect()
    };
    // No credentials, or wrong ones: 401 with a challenge.
    let (s, body, _) = get(&u("/api/v1/devices"), None);
    assert_eq!(s, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["kind"],
        "unauthorized"
    );
    assert_eq!(get(&u("/api/v1/devices"), Some(("jane", "wrong"))).0, 401);
    assert_eq!(get(&u("/map"), None).0, 401);
    // jane: her own devices and her group's bob/phone.
    let (s, body, _) = get(&u("/api/v1/devices"), Some(("jane", "jane-pw")));
    assert_eq!(s, 200);
    assert_eq!(keys(&body), ["bob/phone", "jane/phone", "jane/tablet"]);
    let window = "from=2025-11-21&to=2025-11-22";
    assert_eq!(
        get(
            &u(&format!("/api/v1/positions?user=bob&device=phone&{window}")),
            Some(("jane", "jane-pw"))
        )
        .0,
        200
    );
    let (s, body, _) = get(
        &u(&format!("/api/v1/positions?user=bob&device=car&{window}")),
        Some(("jane", "jane-pw")),
    );
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        get(
            &u(&format!("/api/v1/positions?user=eve&{window}")),
            Some(("jane", "jane-pw"))
        )
        .0,
        403
    );
    assert_eq!(
        get(
            &u("/api/0/locations?user=eve&device=van"),
            Some(("jane", "jane-pw"))
        )
        .0,
        403
    );
    // Without a device named, only what is visible comes back.
    let (_, body, _) = get(
        &u(&format!("/api/v1/positions?{window}")),
        Some(("jane", "jane-pw")),
    );
    let mut seen: Vec<String> = keys(&body);
    seen.dedup();
    assert_eq!(seen, ["bob/phone", "jane/phone", "jane/tablet"]);
    // eve is in no group: her van only; bob sees jane/phone through the group.
    assert_eq!(
        keys(&get(&u("/api/v1/devices"), Some(("eve", "eve-pw"))).1),
        ["eve/van"]
    );
    assert_eq!(
        keys(&get(&u("/api/v1/devices"), Some(("bob", "bob-pw"))).1),
        ["bob/car", "bob/phone", "jane/phone"]
    );
    // The admin reads everything.
    assert_eq!(
        keys(&get(&u("/api/v1/devices"), Some(("root", "root-pw"))).1),
        [
            "bob/car",
            "bob/phone",
            "eve/van",
            "jane/phone",
            "jane/tablet"
        ]
    );
    assert_eq!(get(&u("/map"), Some(("eve", "eve-pw"))).0, 200);
    // The ingest paths keep answering as the apps expect; a known read
    // path with another method is 405, an unknown path 404.
    assert_eq!(get(&u("/pub"), Some(("eve", "eve-pw"))).0, 405);
    assert_eq!(serve.post("/api/v1/devices", &[], b"{}").status, 405);
    assert_eq!(serve.post("/nope", &[], b"{}").status, 404);
}

/// Reads server-sent events from `url` until `want` of them arrived.
fn read_events(url: &str, want: usize, timeout: Duration) -> Vec<(String, Value)> {
    let resp = ureq::get(url).timeout(timeout).call().unwrap();
    assert_eq!(resp.content_type(), "text/event-stream");
    let mut events = Vec::new();
    let mut kind = String::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { break };
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((kind.clone(), serde_json::from_str(d).unwrap()));
            if events.len() == want {
                break;
            }
        }
    }
    events
}

#[test]
fn live_feed_sends_what_is_stored_as_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    std::fs::write(&fences, depot_fence()).unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--fences", fences.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let url = format!("{}/api/v1/live", serve.url);
    let reader = std::thread::spawn(move || read_events(&url, 5, Duration::from_secs(20)));
    // The subscription is in place once the stream has started; give the
    // request a moment to arrive before posting.
    std::thread::sleep(Duration::from_millis(500));
    let now = T0 + 10_000;
    post_fix(
        &serve,
        &Fix {
            user: "eve",
            device: "van",
            tst: now,
            lat: 1.5,
            lon: 2.5,
            batt: 7,
        },
    );
    post_fix(
        &serve,
        &Fix {
            user: "jane",
            device: "phone",
            tst: now + 1,
            lat: HOME.0,
            lon: HOME.1,
            batt: 50,
        },
    );
    let events = reader.join().unwrap();
    let summary: Vec<(String, String, i64)> = events
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                format!(
                    "{}/{}",
                    v["user"].as_str().unwrap(),
                    v["device"].as_str().unwrap()
                ),
                v["tst"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("position".to_owned(), "eve/van".to_owned(), now),
            // Its battery at 7 %: the event, as the outboxes deliver it.
            ("event".to_owned(), "eve/van".to_owned(), now),
            // The fix, then the server transition it caused and its
            // event, as committed.
            ("position".to_owned(), "jane/phone".to_owned(), now + 1),
            ("transition".to_owned(), "jane/phone".to_owned(), now + 1),
            ("event".to_owned(), "jane/phone".to_owned(), now + 1),
        ]
    );
    assert_eq!(
        (events[1].1["id"].as_str(), events[4].1["id"].as_str()),
        (
            Some(format!("battery_low:eve/van:{now}").as_str()),
            Some(format!("enter:jane/phone:{}:Depot", now + 1).as_str())
        )
    );
    assert_eq!(
        (events[0].1["lat"].as_f64(), events[0].1["batt"].as_i64()),
        (Some(1.5), Some(7))
    );
    assert_eq!(
        (
            events[3].1["event"].as_str(),
            events[3].1["source"].as_str(),
            events[3].1["rid"].as_str()
        ),
        (Some("enter"), Some("server"), Some("depot"))
    );
}

#[test]
fn map_page_lists_and_draws_devices_and_follows_the_live_feed_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    std::fs::write(&fences, depot_fence()).unwrap();
    // A rule whose name looks like markup: it must reach the page as text.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"gym <img src=x onerror=alert(1)>\"\nkind = \"enter\"\nfences = [\"Gym\"]\n",
    )
    .unwrap();
    // No tiles: the machine has no network, and the page must not need it.
    let serve = Serve::start(
        &dir.path().join("data"),
        &[
            "--fences",
            fences.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
        ],
        &[("OTSTREAM_API__TILE_URL", "")],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fixes = [
        Fix {
            user: "jane",
            device: "phone",
            tst: now - 300,
            lat: HOME.0,
            lon: HOME.1,
            batt: 81,
        },
        Fix {
            user: "jane",
            device: "phone",
            tst: now - 240,
            lat: east(400.0).0,
            lon: east(400.0).1,
            batt: 80,
        },
        Fix {
            user: "bob",
            device: "car",
            tst: now - 200,
            lat: east(1500.0).0,
            lon: east(1500.0).1,
            batt: 55,
        },
        Fix {
            user: "eve",
            device: "van",
            tst: now - 100,
            lat: east(2500.0).0,
            lon: east(2500.0).1,
            batt: 23,
        },
    ];
    for f in &fixes {
        post_fix(&serve, f);
    }
    let card = r#"{"_type":"card","name":"Eve's van"}"#;
    assert_eq!(
        serve
            .post(
                "/pub",
                &[("X-Limit-U", "eve"), ("X-Limit-D", "van")],
                card.as_bytes()
            )
            .status,
        200
    );

    let regions = json!({"_type": "waypoints", "waypoints": [
        {"_type": "waypoint", "desc": "Work", "lat": east(4000.0).0, "lon": east(4000.0).1, "rad": 200, "tst": now - 9000, "rid": "w1"},
        {"_type": "waypoint", "desc": "Gym", "lat": east(1000.0).0, "lon": east(1000.0).1, "rad": 50, "tst": now - 8000}]});
    assert_eq!(
        serve
            .post(
                "/pub",
                &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")],
                regions.to_string().as_bytes()
            )
            .status,
        200
    );

    let mut b = Browser::start(1280, 800).unwrap();
    b.navigate(&format!("{}/map", serve.url)).unwrap();
    b.wait_for(
        "document.body.dataset.loaded === '3'",
        Duration::from_secs(10),
    )
    .unwrap();
    let listed = b.eval("Array.from(document.querySelectorAll('#devices li')).map(li => [li.dataset.key, li.querySelector('.name').textContent, Number(li.dataset.lat), Number(li.dataset.lon), li.querySelector('.batt').textContent])").unwrap();
    assert_eq!(
        listed,
        json!([
            ["bob/car", "ca", east(1500.0).0, east(1500.0).1, "55 %"],
            [
                "eve/van",
                "Eve's van",
                east(2500.0).0,
                east(2500.0).1,
                "23 %"
            ],
            ["jane/phone", "ph", east(400.0).0, east(400.0).1, "80 %"],
        ])
    );
    // Three device markers, the depot circle and jane's two regions, drawn
    // in the map's SVG.
    b.wait_for(
        "document.body.dataset.waypoints === '2'",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        b.eval(
            "document.querySelectorAll('.leaflet-overlay-pane path.leaflet-interactive').length"
        )
        .unwrap(),
        json!(6)
    );
    b.wait_for(
        "document.getElementById('status').textContent === 'live'",
        Duration::from_secs(10),
    )
    .unwrap();

    // A new fix moves jane/phone through the live feed, into her Gym: the
    // rule on it fires, and its alert is listed as it happens.
    let moved = east(1000.0);
    let posted = Instant::now();
    post_fix(
        &serve,
        &Fix {
            user: "jane",
            device: "phone",
            tst: now - 10,
            lat: moved.0,
            lon: moved.1,
            batt: 79,
        },
    );
    b.wait_for(
        &format!(
            "document.querySelector('#devices li[data-key=\"jane/phone\"]').dataset.lon === '{}'",
            moved.1
        ),
        Duration::from_secs(5),
    )
    .unwrap();
    eprintln!(
        "live update reached the page {:?} after the POST",
        posted.elapsed()
    );
    assert_eq!(
        b.eval("document.querySelector('#devices li[data-key=\"jane/phone\"] .batt').textContent")
            .unwrap(),
        json!("79 %")
    );
    b.wait_for(
        "document.querySelectorAll('#alert-list li').length === 1",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        b.eval("[document.getElementById('alerts').hidden, document.querySelector('#alert-list li').dataset.id, Array.from(document.querySelectorAll('#alert-list li span:not(.when)')).map(s => s.textContent), document.querySelectorAll('#alerts img').length]")
            .unwrap(),
        json!([
            false,
            format!("enter:jane/phone:{}:Gym#gym <img src=x onerror=alert(1)>", now - 10),
            ["gym <img src=x onerror=alert(1)>", "enter", "ph", " · Gym"],
            0
        ])
    );

    // A click shows the device's day: its track and trips.
    b.eval("document.querySelector('#devices li[data-key=\"jane/phone\"]').click()")
        .unwrap();
    b.wait_for("/^\\d+ trips?, \\d+\\.\\d km$/.test(document.getElementById('detail-summary').textContent)", Duration::from_secs(10)).unwrap();
    assert_eq!(
        b.eval("document.getElementById('detail-title').textContent")
            .unwrap(),
        json!("ph — today")
    );
    // And links to the day's report of that device.
    let link = b
        .eval("document.getElementById('report-link').getAttribute('href')")
        .unwrap();
    let link = link.as_str().unwrap();
    assert!(
        link.starts_with("/report?user=jane&device=phone&day=") && link.len() == 45,
        "{link}"
    );

    // The heatmap: off until asked for, then the week's cells as hexagons.
    assert_eq!(
        b.eval("document.querySelectorAll('path.heat').length")
            .unwrap(),
        json!(0)
    );
    b.eval("document.getElementById('heat').click()").unwrap();
    b.wait_for(
        "Number(document.body.dataset.heat) > 0",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        b.eval("[Number(document.body.dataset.heat) === document.querySelectorAll('path.heat').length, document.getElementById('heat-toggle').hidden]").unwrap(),
        json!([true, false])
    );

    let shot = otstream_tests::root().join("target/screenshots/map.png");
    b.screenshot(&shot).unwrap();
    let errors = b.errors().unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot too small"
    );
}

#[test]
fn a_long_clickhouse_export_comes_in_order_once_per_fix_with_the_newest_duplicate() {
    // 60,000 fixes: more than two of the slices a long export is read in.
    let dir = tempfile::tempdir().unwrap();
    let url = clickhouse_url();
    let db = unique_db("api_slices");
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--clickhouse-url", &url],
        &[("OTSTREAM_CLICKHOUSE__DATABASE", &db)],
    )
    .unwrap();
    let n = 60_000;
    // Every 7th fix is stored twice, the second copy received later with
    // another battery level: only that one may come back.
    for (filter, batt, received) in [
        ("1", "number % 100", "1000"),
        ("number % 7 = 0", "200", "2000"),
    ] {
        otstream_tests::ch(
            &url,
            Some(&db),
            &format!(
                "INSERT INTO positions (user, device, tst, lat, lon, batt, transport, received_at, inregions, inrids, extra) \
                 SELECT 'bench', 'phone', toDateTime({T0} + number * 10), 48 + number / 1e6, 2, {batt}, 'http', {received}, [], [], '' \
                 FROM numbers({n}) WHERE {filter}"
            ),
        )
        .unwrap();
    }
    let (status, body, _) = get(
        &format!(
            "{}/api/v1/positions?user=bench&device=phone&from={T0}&to={}&format=ndjson",
            serve.url,
            T0 + 10 * n
        ),
        None,
    );
    assert_eq!(status, 200);
    let got: Vec<(i64, i64, i64)> = body
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["tst"].as_i64().unwrap(),
                v["batt"].as_i64().unwrap(),
                v["received_at"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, i64, i64)> = (0..n)
        .map(|i| {
            let dup = i % 7 == 0;
            (
                T0 + 10 * i,
                if dup { 200 } else { i % 100 },
                if dup { 2000 } else { 1000 },
            )
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}
