//! Places and visits: a van's and a phone's stops clustered into places
//! per device and per user, kept through a SIGKILL, the same from the
//! embedded store, from ClickHouse and from a ClickHouse cluster (the read
//! API answers alike), visits in JSON and Parquet.

use std::time::Duration;

use otstream_tests::browser::Browser;
use otstream_tests::{Cluster, Serve, ch_lines, clickhouse_url, unique_db};
use serde_json::{Value, json};

use super::api::{get, get_bytes, get_json, read_parquet, without_received_at};

/// 2025-11-24T16:00:00Z.
const T0: i64 = 1_764_000_000;
const HOME: (f64, f64) = (48.85, 2.35);

/// `m` metres north of `from`, to six decimals as the apps send.
fn north(from: (f64, f64), m: f64) -> (f64, f64) {
    (((from.0 + m / 111_320.0) * 1e6).round() / 1e6, from.1)
}

/// The depot, 2 km north of home, in a fence of that name.
fn depot() -> (f64, f64) {
    north(HOME, 2000.0)
}

struct Fix {
    user: &'static str,
    device: &'static str,
    tst: i64,
    at: (f64, f64),
    vel: i64,
}

/// A fix a minute: eleven at rest at `at` (a ten-minute stop), from `t`.
fn stay(out: &mut Vec<Fix>, device: &'static str, t: i64, at: (f64, f64)) -> i64 {
    for i in 0..11 {
        out.push(Fix {
            user: if device == "truck" { "lee" } else { "kim" },
            device,
            tst: t + 60 * i,
            at,
            vel: 0,
        });
    }
    t + 660
}

/// Four fixes a minute apart at 40 km/h from `from` to `to`.
fn drive(
    out: &mut Vec<Fix>,
    device: &'static str,
    t: i64,
    from: (f64, f64),
    to: (f64, f64),
) -> i64 {
    for i in 0..4 {
        let f = f64::from(i + 1) / 5.0;
        let at = (((from.0 + (to.0 - from.0) * f) * 1e6).round() / 1e6, from.1);
        out.push(Fix {
            user: if device == "truck" { "lee" } else { "kim" },
            device,
            tst: t + 60 * i64::from(i),
            at,
            vel: 40,
        });
    }
    t + 240
}

/// kim/van: home, the depot, home again 30 m further north, away; then
/// kim/phone: home 60 m north of the van's first stop, away. Split where
/// the depot's stop has been found (a crash goes there).
fn script() -> (Vec<Fix>, Vec<Fix>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut t = stay(&mut before, "van", T0, HOME);
    t = drive(&mut before, "van", t, HOME, depot());
    t = stay(&mut before, "van", t, depot());
    t = drive(&mut before, "van", t, depot(), HOME);
    t = stay(&mut after, "van", t, north(HOME, 30.0));
    drive(&mut after, "van", t, HOME, north(HOME, -3000.0));
    let t = stay(&mut after, "phone", T0 + 7200, north(HOME, 60.0));
    drive(&mut after, "phone", t, HOME, north(HOME, -3000.0));
    (before, after)
}

/// lee/truck's week about Lyon: home, the depot and two customers, days
/// starting at 08:00 at home and ending there, then away. The nights at
/// home are one stop each; 14 stops in all, at four places.
const LYON: (f64, f64) = (45.76, 4.83);

fn week() -> Vec<Fix> {
    let home = LYON;
    let depot = north(LYON, 2000.0);
    let (a, b) = (north(LYON, 5000.0), north(LYON, 8000.0));
    let days = [
        vec![home, depot, a, home],
        vec![home, depot, b, home],
        vec![home, a, home],
        vec![home, depot, home],
        vec![home, b, a, home],
    ];
    let mut out = Vec::new();
    for (d, places) in days.iter().enumerate() {
        let mut t = T0 + 3 * 86_400 + d as i64 * 86_400 - 8 * 3600;
        for (i, &at) in places.iter().enumerate() {
            if i > 0 {
                t = drive(&mut out, "truck", t, places[i - 1], at);
            }
            t = stay(&mut out, "truck", t, at);
        }
    }
    let t = out.last().map_or(0, |f| f.tst + 60);
    drive(&mut out, "truck", t, LYON, north(LYON, -9000.0));
    out
}

fn post(serve: &Serve, fixes: &[Fix]) {
    for f in fixes {
        let body = json!({"_type": "location", "tst": f.tst, "lat": f.at.0, "lon": f.at.1,
            "acc": 10, "vel": f.vel});
        let a = serve.post(
            "/pub",
            &[("X-Limit-U", f.user), ("X-Limit-D", f.device)],
            body.to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "{}\n{}", a.body, serve.log());
    }
}

fn fences(dir: &std::path::Path) -> String {
    let (lat, lon) = depot();
    let path = dir.join("fences.geojson");
    std::fs::write(
        &path,
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"depot","name":"Depot","radius":200}},"geometry":{{"type":"Point","coordinates":[{lon},{lat}]}}}}]}}"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// What one store answers, checked against the script; returned to be
/// compared with the other's.
fn answers(serve: &Serve) -> Vec<Value> {
    let stops = get_json(serve, "/api/v1/stops?user=kim&from=0");
    let starts: Vec<(&str, i64, i64, i64)> = stops
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap(),
                s["start"].as_i64().unwrap(),
                s["duration"].as_i64().unwrap(),
                s["place_id"].as_i64().unwrap(),
            )
        })
        .collect();
    // Arrivals and departures as the trip rules estimate them from the
    // drives' speeds; the van's second stay at home is a visit of the
    // place its first founded.
    let (home, at_depot, home_again) = (T0, T0 + 876, T0 + 1773);
    let phone = T0 + 7200;
    assert_eq!(
        starts,
        [
            ("phone", phone, 600, phone),
            ("van", home, 624, home),
            ("van", at_depot, 648, at_depot),
            ("van", home_again, 630, home),
        ],
        "{stops}"
    );

    let places = get_json(serve, "/api/v1/places?user=kim&device=van");
    let mid = ((HOME.0 + north(HOME, 30.0).0) / 2.0 * 1e7).round() / 1e7;
    // Named by the fence, else (no street addresses here) by the offline
    // geocoder's locality of the first stop.
    let depot_place = json!({"user": "kim", "device": "van", "id": at_depot,
        "lat": depot().0, "lon": HOME.1, "radius": 0.0, "name": "Depot", "fence": "Depot",
        "locality": "Paris, Ile-de-France", "cc": "FR",
        "first_seen": at_depot, "last_seen": at_depot + 648, "visits": 1, "dwell_s": 648});
    // The centre between the two stays, the radius to the farthest.
    let home_place = json!({"user": "kim", "device": "van", "id": home, "lat": mid,
        "lon": HOME.1, "radius": 15.0, "name": "Paris, Ile-de-France",
        "locality": "Paris, Ile-de-France", "cc": "FR",
        "first_seen": home, "last_seen": home_again + 630, "visits": 2, "dwell_s": 1254});
    assert_eq!(places, json!([home_place, depot_place]), "{places}");

    // By user: the phone's place at home, 45 m from the van's centre,
    // joins the van's (founded first).
    let by_user = get_json(serve, "/api/v1/places?user=kim&by=user");
    let merged = by_user.as_array().unwrap();
    assert_eq!(merged.len(), 2, "{by_user}");
    let (h, d) = (&merged[0], &merged[1]);
    assert_eq!(
        (
            &h["device"],
            &h["id"],
            &h["visits"],
            &h["dwell_s"],
            &h["devices"]
        ),
        (
            &json!("van"),
            &json!(home),
            &json!(3),
            &json!(1854),
            &json!(["phone", "van"])
        )
    );
    assert_eq!(
        (&h["first_seen"], &h["last_seen"]),
        (&json!(home), &json!(phone + 600))
    );
    assert_eq!(
        (&d["id"], &d["devices"]),
        (&json!(at_depot), &json!(["van"]))
    );

    // GeoJSON: the same places as Points.
    let geo = get_json(serve, "/api/v1/places?user=kim&device=van&format=geojson");
    let features = geo["features"].as_array().unwrap();
    assert_eq!(
        features[1]["geometry"],
        json!({"type": "Point", "coordinates": [HOME.1, depot().0]})
    );
    assert_eq!(features[1]["properties"]["name"], "Depot");

    // Visits of one place, and in Parquet with their place.
    let visits = get_json(
        serve,
        &format!("/api/v1/visits?user=kim&device=van&place={home}"),
    );
    let got: Vec<(i64, i64)> = visits
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["start"].as_i64().unwrap(),
                v["place_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(home, home), (home_again, home)]);
    let (status, file, _) = get_bytes(&format!(
        "{}/api/v1/visits?user=kim&format=parquet&from=0",
        serve.url
    ));
    assert_eq!(status, 200);
    let (types, rows) = read_parquet(
        &file,
        "place_id",
        "device, toUnixTimestamp(start) AS start, place_id",
    );
    assert_eq!(types, ["place_id\tNullable(Int64)"]);
    let want: Vec<Value> = starts
        .iter()
        .map(|(device, start, _, place)| json!({"device": device, "start": start, "place_id": place}))
        .collect();
    assert_eq!(rows, want);

    // Statistics from the rollups: the van's day, and kim's devices
    // together over the window (the phone's drive away is still going on).
    let trips = get_json(serve, "/api/v1/trips?user=kim&from=0");
    let km: f64 = trips
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["distance"].as_f64().unwrap())
        .sum();
    let stats = get_json(
        serve,
        "/api/v1/stats?user=kim&device=van&from=2025-11-24&to=2025-11-25",
    );
    let van = &stats[0];
    assert_eq!(stats.as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(
        (
            &van["period"],
            &van["trips"],
            &van["stops"],
            &van["stop_s"],
            &van["max_vel"]
        ),
        (
            &json!("2025-11-24"),
            &json!(2),
            &json!(3),
            &json!(1902),
            &json!(40.0)
        )
    );
    assert_eq!(van["distance"].as_f64().unwrap(), km);
    assert_eq!(van["countries"], json!([{"cc": "FR", "days": 1}]));
    // The drive south passes Le Kremlin-Bicetre.
    assert_eq!(
        van["cities"],
        json!([
            {"name": "Le Kremlin-Bicetre, Ile-de-France", "cc": "FR", "days": 1},
            {"name": "Paris, Ile-de-France", "cc": "FR", "days": 1}
        ])
    );
    assert_eq!(
        van["places"],
        json!([
            {"device": "van", "id": home, "name": "Paris, Ile-de-France", "visits": 2, "dwell_s": 1254},
            {"device": "van", "id": at_depot, "name": "Depot", "visits": 1, "dwell_s": 648}
        ])
    );
    let all = get_json(
        serve,
        "/api/v1/stats?user=kim&by=user&per=all&from=2025-11-01&to=2025-12-01",
    );
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(
        (
            &all[0]["device"],
            &all[0]["period"],
            &all[0]["trips"],
            &all[0]["stops"],
            &all[0]["countries"]
        ),
        (
            &Value::Null,
            &json!("all"),
            &json!(2),
            &json!(4),
            &json!([{"cc": "FR", "days": 1}])
        )
    );
    // The daily summary is the same figures' daily view.
    let summary = get_json(
        serve,
        "/api/v1/summary?user=kim&device=van&from=2025-11-24&to=2025-11-25",
    );
    assert_eq!(
        summary,
        json!([{"user": "kim", "device": "van", "day": "2025-11-24", "distance": km,
            "driving_s": van["moving_s"], "trips": 2, "stops": 3, "max_vel": 40.0}])
    );

    // lee/truck's week: four places with the visits the script made, and
    // each day's trips and stops as counted by hand.
    let truck = get_json(serve, "/api/v1/places?user=lee&device=truck");
    let truck_visits: Vec<i64> = truck
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["visits"].as_i64().unwrap())
        .collect();
    assert_eq!(truck_visits, [6, 3, 3, 2], "{truck}");
    let first_stop = get_json(serve, "/api/v1/stops?user=lee&from=0&limit=1000");
    assert_eq!(first_stop.as_array().unwrap().len(), 14);
    assert_eq!(truck[0]["id"], first_stop[0]["start"]);
    let days = get_json(
        serve,
        "/api/v1/stats?user=lee&device=truck&from=2025-11-27&to=2025-12-02",
    );
    let got: Vec<(&str, i64, i64)> = days
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["period"].as_str().unwrap(),
                d["trips"].as_i64().unwrap(),
                d["stops"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2025-11-27", 3, 4),
            ("2025-11-28", 3, 3),
            ("2025-11-29", 2, 2),
            ("2025-11-30", 2, 2),
            ("2025-12-01", 3, 3)
        ]
    );

    // Bad parameters name themselves.
    for (path, param) in [
        ("/api/v1/places?by=fleet", "by"),
        ("/api/v1/stats?per=year", "per"),
        ("/api/v1/visits?user=kim&place=1", "place"),
        ("/api/v1/visits?user=kim&device=van&place=home", "place"),
    ] {
        let (status, body, _) = get(&format!("{}{path}", serve.url), None);
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["field"], param, "{path}: {body}");
    }
    [
        stops, places, by_user, geo, visits, stats, all, summary, truck, days,
    ]
    .into_iter()
    .map(without_received_at)
    .collect()
}

#[test]
fn stops_become_places_and_visits_through_a_crash_in_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let fences = fences(dir.path());
    let (before, after) = script();

    // The embedded store, SIGKILLed once the depot's stop is stored: the
    // places come back from the stored state.
    let data = dir.path().join("sqlite");
    // No tiles: the machine has no network, and the report page must not
    // need it.
    let no_tiles = [("OTSTREAM_API__TILE_URL", "")];
    let serve = Serve::start(&data, &["--fences", &fences], &no_tiles).unwrap();
    post(&serve, &before);
    serve.kill();
    let sqlite = Serve::start(&data, &["--fences", &fences], &no_tiles).unwrap();
    post(&sqlite, &after);
    post(&sqlite, &week());
    // Delivered twice (a phone that never saw its answers): nothing counts
    // twice.
    post(&sqlite, &after);
    let from_sqlite = answers(&sqlite);
    report_page(&sqlite);
    every_documented_endpoint_answers_as_documented(&sqlite);
    drop(sqlite);

    // ClickHouse, and a cluster of two shards of two replicas through a
    // server that is not the first: every answer equals the embedded
    // store's, and the cluster's the one server's.
    let on_clickhouse = |name: &str, url: &str, cluster: Option<&Cluster>| {
        let db = unique_db(name);
        let mut env = vec![
            ("OTSTREAM_CLICKHOUSE__DATABASE", db.as_str()),
            ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "50"),
        ];
        if let Some(c) = cluster {
            c.migrate(&db);
            env.push(("OTSTREAM_CLICKHOUSE__CLUSTER", "otstream"));
        }
        let serve = Serve::start(
            &dir.path().join(name),
            &["--fences", &fences, "--clickhouse-url", url],
            &env,
        )
        .unwrap();
        for fixes in [&before, &after, &week(), &after] {
            post(&serve, fixes);
        }
        serve.wait_shipped();
        assert_eq!(answers(&serve), from_sqlite, "{name}");
        (serve, db)
    };
    let (clickhouse, _) = on_clickhouse("places", &clickhouse_url(), None);
    let from_one_server = more_answers(&clickhouse);
    drop(clickhouse);
    let cluster = Cluster::get();
    let (on_cluster, db) = on_clickhouse("places_cluster", &cluster.urls[3], Some(&cluster));
    assert_eq!(more_answers(&on_cluster), from_one_server);
    // Each device's rows are on one shard, in both its replicas.
    let devices = cluster.per_server(
        &db,
        "positions",
        "SELECT user, device, count() FROM {table} FINAL GROUP BY user, device ORDER BY user, device",
    );
    assert_eq!(devices[0], devices[1], "shard 1's replicas");
    assert_eq!(devices[2], devices[3], "shard 2's replicas");
    let mut all: Vec<String> = devices[0].iter().chain(&devices[2]).cloned().collect();
    all.sort();
    let whole = ch_lines(
        &cluster.urls[0],
        &db,
        "SELECT user, device, count() FROM positions FINAL GROUP BY user, device ORDER BY user, device",
    )
    .unwrap();
    assert_eq!(all, whole, "every device on exactly one shard");
    assert_eq!(whole.len(), 3, "{whole:?}");
}

/// What the places' answers leave out, for the stores to be compared on:
/// positions, Recorder's API, trips, the heatmap (times of receipt left
/// out: they differ from run to run).
fn more_answers(serve: &Serve) -> Vec<Value> {
    [
        "/api/v1/positions?user=kim&device=van&from=0",
        "/api/v1/positions?user=lee&device=truck&from=0&format=geojson",
        "/api/v1/trips?user=lee&from=0",
        "/api/v1/devices",
        "/api/0/locations?user=kim&device=van&from=2025-11-01",
        "/api/0/last",
        "/api/v1/heatmap?res=7&from=2025-11-20&to=2025-12-05",
    ]
    .into_iter()
    .map(|p| without_times(get_json(serve, p)))
    .collect()
}

fn without_times(v: Value) -> Value {
    match without_received_at(v) {
        Value::Array(a) => Value::Array(a.into_iter().map(without_times).collect()),
        Value::Object(mut o) => {
            o.remove("isorcv");
            Value::Object(o.into_iter().map(|(k, v)| (k, without_times(v))).collect())
        }
        v => v,
    }
}

/// The report page in Chromium: the van's day as a track, a speed chart,
/// its trips and its stops with their places; the card's markup as text.
fn report_page(serve: &Serve) {
    let card = r#"{"_type":"card","name":"<b>Kim's van</b>"}"#;
    let a = serve.post(
        "/pub",
        &[("X-Limit-U", "kim"), ("X-Limit-D", "van")],
        card.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let mut b = Browser::start(1280, 900).unwrap();
    b.navigate(&format!(
        "{}/report?user=kim&device=van&day=2025-11-24",
        serve.url
    ))
    .unwrap();
    b.wait_for(
        "document.body.dataset.loaded === 'kim/van/2025-11-24/day'",
        Duration::from_secs(10),
    )
    .unwrap();
    let mut cells = |table: &str| {
        b.eval(&format!(
            "Array.from(document.querySelectorAll('#{table} tbody tr')).map(tr => Array.from(tr.children).map(td => td.textContent))"
        ))
        .unwrap()
    };
    // Home to the depot and back (the drive away is still going on).
    let trips = cells("trips");
    let trips: Vec<(String, String)> = trips
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        trips,
        [
            ("16:10".to_owned(), "16:14".to_owned()),
            ("16:25".to_owned(), "16:29".to_owned())
        ]
    );
    assert_eq!(
        cells("stops"),
        json!([
            ["16:00", "16:10", "10 min", "Paris, Ile-de-France", "2"],
            ["16:14", "16:25", "11 min", "Depot", "1"],
            ["16:29", "16:40", "11 min", "Paris, Ile-de-France", "2"]
        ])
    );
    // Every fix of the day in the chart; the drives' 40 km/h its top.
    assert_eq!(
        b.eval("[document.getElementById('speed').dataset.points, document.getElementById('speed').dataset.max]")
            .unwrap(),
        json!(["45", "40"])
    );
    assert_eq!(
        b.eval("[document.querySelector('#device option[value=\"kim/van\"]').textContent, document.querySelectorAll('b').length]")
            .unwrap(),
        json!(["<b>Kim's van</b> (kim/van)", 0])
    );
    let summary = b
        .eval("document.getElementById('summary').textContent")
        .unwrap();
    assert!(
        summary.as_str().unwrap().starts_with("2 trips, ")
            && summary.as_str().unwrap().ends_with("; 3 stops"),
        "{summary}"
    );
    let shot = otstream_tests::root().join("target/screenshots/report.png");
    b.screenshot(&shot).unwrap();
    let errors = b.errors().unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot too small"
    );
}

/// The OpenAPI document (`/api/v1/openapi.json`) against the real
/// answers: every documented path called with the van's day, each answer
/// validated against its schema (members the schema does not name fail
/// too), and an error against the error's schema.
fn every_documented_endpoint_answers_as_documented(serve: &Serve) {
    let doc = get_json(serve, "/api/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let validate = |schema: &Value, answer: &Value, what: &str| {
        // The schema's `$ref`s point into the document's components.
        let mut schema = schema.clone();
        schema["components"] = doc["components"].clone();
        let validator =
            jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match its schema: {errors:#?}\n{answer}"
        );
    };
    let paths = doc["paths"].as_object().unwrap();
    let mut called = Vec::new();
    for (path, item) in paths {
        let (content_type, media) = item["get"]["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let url = match path.as_str() {
            "/api/v1/devices" | "/api/v1/fences" | "/api/v1/openapi.json" | "/api/v1/live" => {
                format!("{}{path}", serve.url)
            }
            "/api/v1/waypoints" => format!("{}{path}?user=kim", serve.url),
            _ => format!(
                "{}{path}?user=kim&device=van&from=2025-11-24&to=2025-11-25",
                serve.url
            ),
        };
        if content_type == "text/event-stream" {
            // A stream: its head is the answer.
            let resp = ureq::get(&url)
                .timeout(Duration::from_secs(10))
                .call()
                .unwrap();
            assert_eq!(
                (resp.status(), resp.content_type()),
                (200, "text/event-stream"),
                "{path}"
            );
            called.push(path.clone());
            continue;
        }
        let (status, body, ct) = get(&url, None);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(&ct, content_type, "{path}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        // An empty answer proves nothing of its rows' schema.
        let empty = answer.as_array().is_some_and(Vec::is_empty);
        assert!(
            !empty || path == "/api/v1/waypoints",
            "{path} answered nothing"
        );
        validate(&media["schema"], &answer, path);
        called.push(path.clone());
    }
    assert_eq!(called.len(), 14, "{called:?}");
    let (status, body, _) = get(&format!("{}/api/v1/stats?per=year", serve.url), None);
    assert_eq!(status, 400);
    let bad = &doc["paths"]["/api/v1/stats"]["get"]["responses"]["400"]["content"]["application/json"]
        ["schema"];
    validate(bad, &serde_json::from_str(&body).unwrap(), "a 400");
}
