//! Events out of the real binary: a webhook receiver that fails, goes
//! away for a minute while serve is SIGKILLed, and comes back; MQTT
//! subscribers on Mosquitto; the position filters' verdicts in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otstream_tests::receiver::{Receiver, Seen};
use otstream_tests::{Serve, Subscriber, mqtt_url, rows, wait_until};

const HOME: (f64, f64) = (52.52, 13.40);
const M_PER_DEG_LAT: f64 = 111_195.08;

fn east(m: f64) -> (f64, f64) {
    (
        HOME.0,
        HOME.1 + m / (M_PER_DEG_LAT * HOME.0.to_radians().cos()),
    )
}

fn fences(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("fences.geojson");
    std::fs::write(
        &path,
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"depot","name":"Depot","radius":150}},"geometry":{{"type":"Point","coordinates":[{},{}]}}}}]}}"#,
            HOME.1, HOME.0
        ),
    )
    .unwrap();
    path
}

/// Posts one fix of `user/device`; panics unless it is acknowledged.
fn fix(serve: &Serve, (user, device): (&str, &str), tst: i64, (lat, lon): (f64, f64), batt: i32) {
    let vel = if (lat, lon) == HOME || (lat, lon) == east(3000.0) {
        0
    } else {
        60
    };
    let body = format!(
        r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{tst},"tid":"vn","acc":8,"vel":{vel},"batt":{batt}}}"#
    );
    let a = serve.post(
        "/pub",
        &[("X-Limit-U", user), ("X-Limit-D", device)],
        body.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

/// The events accepted, each once: (device, kind, tst - t0), in the order
/// each was first accepted, per device.
fn accepted(seen: &Mutex<Seen>, t0: i64) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut ids = BTreeSet::new();
    let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for r in seen.lock().unwrap().requests.iter().filter(|r| r.accepted) {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if !ids.insert(v["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        out.entry(format!(
            "{}/{}",
            v["user"].as_str().unwrap(),
            v["device"].as_str().unwrap()
        ))
        .or_default()
        .push((
            v["kind"].as_str().unwrap().to_owned(),
            v["tst"].as_i64().unwrap() - t0,
        ));
    }
    out
}

#[test]
fn webhook_gets_every_event_in_order_signed_through_failures_an_outage_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let fences = fences(dir.path());
    let seen = Arc::new(Mutex::new(Seen {
        fail_next: 3,
        ..Seen::default()
    }));
    let receiver = Receiver::start(0, seen.clone()).unwrap();
    let port = receiver.port;
    let config = dir.path().join("otstream.toml");
    std::fs::write(
        &config,
        format!(
            r#"[events]
silent_after_s = 0
[[events.webhooks]]
name = "ops"
url = "http://127.0.0.1:{port}/hook"
secret = "s3cret"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--fences",
        fences.to_str().unwrap(),
    ];
    let serve = Serve::start(&data, &args, &[]).unwrap();
    let (van, car) = (("fleet", "van1"), ("fleet", "car2"));
    let t0 = otstream_model::raw::now_ms() / 1000 - 3 * 3600;

    // Ten minutes at the depot, the battery low at the sixth minute; the
    // car only arrives.
    for i in 0..=10 {
        fix(&serve, van, t0 + 60 * i, HOME, if i == 6 { 10 } else { 80 });
    }
    fix(&serve, car, t0 + 30, HOME, 90);
    wait_until(
        "the first events delivered",
        Duration::from_secs(30),
        || accepted(&seen, t0).values().map(Vec::len).sum::<usize>() == 4,
    );
    assert_eq!(seen.lock().unwrap().requests.len(), 7, "3 failed, then 4");

    // The receiver goes away for a minute. The van drives 3 km east and
    // stays at the customer; serve is killed with all of it undelivered,
    // and started again.
    receiver.stop();
    let down = Instant::now();
    let mut t = t0 + 600;
    for i in 1..=12 {
        t += 15;
        fix(&serve, van, t, east(f64::from(i) * 250.0), 70);
    }
    for _ in 0..5 {
        t += 60;
        fix(&serve, van, t, east(3000.0), 70);
    }
    let failures = r#"otstream_event_delivery_failures_total{route="ops"}"#;
    wait_until("a failed delivery", Duration::from_secs(10), || {
        serve.metric(failures).is_some_and(|n| n >= 1.0)
    });
    serve.kill();
    let serve = Serve::start(&data, &args, &[]).unwrap();
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    let _back = Receiver::start(port, seen.clone()).unwrap();
    // Retries are at most 30 s apart.
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&seen, t0).values().map(Vec::len).sum::<usize>() < 9 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each device's events in the order they happened to it (a leave is
    // seen at its fix; the stop it ends and the trip it starts are dated
    // back to the last fix at the depot).
    let got = accepted(&seen, t0);
    let e = |k: &str, dt: i64| (k.to_owned(), dt);
    assert_eq!(
        got,
        BTreeMap::from([
            ("fleet/car2".to_owned(), vec![e("enter", 30)]),
            (
                "fleet/van1".to_owned(),
                vec![
                    e("enter", 0),
                    e("stop_started", 0),
                    e("battery_low", 360),
                    e("leave", 615),
                    e("stop_ended", 600),
                    e("trip_started", 600),
                    e("trip_ended", 780),
                    e("stop_started", 780),
                ]
            ),
        ])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for r in seen.lock().unwrap().requests.iter() {
        let (ts, sig) = (
            r.timestamp.as_deref().unwrap(),
            r.signature.as_deref().unwrap(),
        );
        assert!(
            otstream_events::verify(b"s3cret", ts, sig, r.body.as_bytes(), now),
            "{ts} {sig} {}",
            r.body
        );
        // The same request replayed past the tolerance is refused.
        assert!(!otstream_events::verify(
            b"s3cret",
            ts,
            sig,
            r.body.as_bytes(),
            now + otstream_events::TOLERANCE_S + 60
        ));
    }
    // The events table has each once.
    assert_eq!(
        rows(
            &serve.db(),
            "SELECT count(*), count(DISTINCT id) FROM events"
        ),
        ["9|9"]
    );
}

#[test]
fn mqtt_subscribers_get_transitions_and_serve_does_not_take_its_own_back() {
    let dir = tempfile::tempdir().unwrap();
    let fences = fences(dir.path());
    let prefix = otstream_tests::unique_db("evmqtt");
    let client_id = format!("otstream-{prefix}");
    let sub = Subscriber::start(
        &mqtt_url(),
        &format!("{client_id}-sub"),
        &format!("{prefix}/+/+/event"),
    );
    let topic = format!("{prefix}/{{user}}/{{device}}/event");
    let events_id = format!("{client_id}-events");
    let serve = Serve::start(
        &dir.path().join("data"),
        &[
            "--mqtt-url",
            &mqtt_url(),
            "--fences",
            fences.to_str().unwrap(),
        ],
        &[
            ("OTSTREAM_MQTT__TOPIC_PREFIX", &prefix),
            ("OTSTREAM_DECODE__TOPIC_PREFIX", &prefix),
            ("OTSTREAM_MQTT__CLIENT_ID", &client_id),
            ("OTSTREAM_EVENTS__MQTT__ENABLED", "true"),
            ("OTSTREAM_EVENTS__MQTT__TOPIC", &topic),
            ("OTSTREAM_EVENTS__MQTT__CLIENT_ID", &events_id),
            ("OTSTREAM_EVENTS__SILENT_AFTER_S", "0"),
        ],
    )
    .unwrap();
    let t0 = otstream_model::raw::now_ms() / 1000 - 3600;
    // A device whose name makes no valid topic (`+`) enters first: its
    // event is set aside, and the queue goes on.
    fix(&serve, ("fleet", "ev+il"), t0 - 10, HOME, 80);
    // The server sees the van enter the depot; the phone reports leaving
    // its own region over MQTT.
    fix(&serve, ("fleet", "van1"), t0, HOME, 80);
    let own = format!(
        r#"{{"_type":"transition","event":"leave","desc":"Office","tst":{},"lat":52.5,"lon":13.4,"acc":10,"t":"c","wtst":1700000000,"tid":"vn"}}"#,
        t0 + 60
    );
    let acked = otstream_tests::publish_qos1(
        &mqtt_url(),
        &format!("{client_id}-pub"),
        &[(format!("{prefix}/fleet/van1/event"), own.into_bytes())],
    );
    assert_eq!(acked, [true]);
    wait_until(
        "both events seen back by the ingress",
        Duration::from_secs(30),
        || serve.metric("otstream_mqtt_own_events_total") == Some(2.0),
    );
    let mut published: Vec<String> = sub
        .messages()
        .into_iter()
        .filter(|(_, body)| body.contains(r#""_otstream":true"#))
        .map(|(topic, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            format!(
                "{topic} {} {} {} {} {}",
                v["_type"].as_str().unwrap(),
                v["event"].as_str().unwrap(),
                v["desc"].as_str().unwrap(),
                v["origin"].as_str().unwrap(),
                v["tst"].as_i64().unwrap() - t0
            )
        })
        .collect();
    published.sort();
    assert_eq!(
        serve.metric(r#"otstream_events_refused_total{route="mqtt"}"#),
        Some(1.0)
    );
    assert_eq!(
        published,
        [
            format!("{prefix}/fleet/van1/event transition enter Depot server 0"),
            format!("{prefix}/fleet/van1/event transition leave Office device 60"),
        ]
    );
    // Only the phone's own transition and the server's are stored: the
    // publications did not come back in as device data.
    assert_eq!(
        rows(
            &serve.db(),
            "SELECT source, event, desc FROM transitions ORDER BY source"
        ),
        [
            "device|leave|Office",
            "server|enter|Depot",
            "server|enter|Depot"
        ]
    );
}

#[test]
fn a_noisy_track_is_stored_flagged_and_derives_what_the_clean_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let fences = fences(dir.path());
    let config = dir.path().join("otstream.toml");
    std::fs::write(&config, "[filters]\nduplicate_s = 30\n").unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--fences",
            fences.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let t0 = otstream_model::raw::now_ms() / 1000 - 3 * 3600;
    // Ten minutes at the depot, 3 km east, ten minutes at the customer.
    let mut clean = Vec::new();
    for i in 0..=10 {
        clean.push((t0 + 60 * i, HOME));
    }
    for i in 1..=12 {
        clean.push((t0 + 600 + 15 * i, east(i as f64 * 250.0)));
    }
    for i in 1..=10 {
        clean.push((t0 + 780 + 60 * i, east(3000.0)));
    }
    let mut noisy = clean.clone();
    // After the fix at 240: 0,0; the same fix again 15 s on; mid-drive,
    // 500 km north; at the end, a fix dated next year.
    noisy.insert(5, (t0 + 250, (0.0, 0.0)));
    noisy.insert(6, (t0 + 255, HOME));
    noisy.insert(21, (t0 + 600 + 15 * 8 + 5, (HOME.0 + 4.5, HOME.1)));
    noisy.push((t0 + 366 * 86_400, east(3000.0)));
    for (device, track) in [("clean", &clean), ("noisy", &noisy)] {
        for (tst, at) in track {
            fix(&serve, ("fleet", device), *tst, *at, 80);
        }
    }
    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT device, tst - {t0}, filtered FROM positions WHERE filtered IS NOT NULL ORDER BY tst"
            )
        ),
        [
            "noisy|250|zero",
            "noisy|255|duplicate",
            "noisy|725|speed",
            format!("noisy|{}|future", 366 * 86_400).as_str()
        ]
    );
    for table in ["transitions", "trips", "stops", "events"] {
        let sql = |device: &str| {
            let cols = match table {
                "transitions" => "event, desc, tst, lat, lon",
                "trips" => "start, \"end\", distance, points",
                "stops" => "start, \"end\", lat, lon, points",
                _ => "kind, tst, fence",
            };
            format!("SELECT {cols} FROM {table} WHERE device = '{device}' ORDER BY 2, 1")
        };
        let (c, n) = (rows(&db, &sql("clean")), rows(&db, &sql("noisy")));
        assert!(!c.is_empty(), "{table}");
        assert_eq!(n, c, "{table}");
    }
    // The map's last position is the last fix taken, not next year's.
    let last = ureq::get(&format!("{}/api/0/last?user=fleet&device=noisy", serve.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last[0]["tst"].as_i64(), Some(t0 + 1380), "{last}");
    assert_eq!(
        rows(&db, "SELECT count(*) FROM positions WHERE device = 'noisy'"),
        [(noisy.len()).to_string()]
    );
}
