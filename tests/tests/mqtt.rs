use std::time::{Duration, Instant};

use otstream_tests::{
    Serve, ch, clickhouse_url, mqtt_url, publish_qos1, rows, testdata, unique_db,
};
use serde_json::Value;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A topic prefix and client id no other test uses: tests share a broker.
fn unique(prefix: &str) -> (String, String) {
    let p = unique_db(prefix);
    (p.clone(), format!("otstream-{p}"))
}

fn serve_mqtt(
    dir: &std::path::Path,
    prefix: &str,
    client_id: &str,
    extra: &[(&str, &str)],
) -> Serve {
    let url = mqtt_url();
    let keys = testdata("keys.toml");
    let mut env = vec![
        ("OTSTREAM_MQTT__TOPIC_PREFIX", prefix),
        ("OTSTREAM_DECODE__TOPIC_PREFIX", prefix),
        ("OTSTREAM_MQTT__CLIENT_ID", client_id),
    ];
    env.extend_from_slice(extra);
    Serve::start(
        dir,
        &["--mqtt-url", &url, "--keys", keys.to_str().unwrap()],
        &env,
    )
    .unwrap()
}

fn location(prefix: &str, device: &str, tst: u64) -> (String, Vec<u8>) {
    (
        format!("{prefix}/fleet/{device}"),
        format!(r#"{{"_type":"location","lat":52.5,"lon":13.4,"tst":{tst},"tid":"ld"}}"#)
            .into_bytes(),
    )
}

/// Waits until `count` reaches `want` in the serve's store.
fn wait_rows(serve: &Serve, sql: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: usize = rows(&serve.db(), sql)[0].parse().unwrap();
        if n >= want {
            assert_eq!(n, want, "{sql}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n} of {want} after 60 s\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every OwnTracks type, published on its subtopic by a real client, lands
/// in its table with the identity from the topic; a malformed payload goes
/// to dead_letters with its topic and the subscription carries on.
#[test]
fn every_type_on_its_subtopic_lands_in_its_table() {
    let (prefix, client_id) = unique("types");
    let dir = tempdir();
    let serve = serve_mqtt(dir.path(), &prefix, &client_id, &[]);
    let spec = std::fs::read_to_string(testdata("spec-examples.ndjson")).unwrap();
    let mut messages: Vec<(String, Vec<u8>)> = spec
        .lines()
        .filter_map(|l| {
            let rec: Value = serde_json::from_str(l).unwrap();
            let topic = rec["topic"]
                .as_str()?
                .replacen("owntracks/", &format!("{prefix}/"), 1);
            Some((topic, rec["payload"].to_string().into_bytes()))
        })
        .collect();
    messages.push((
        format!("{prefix}/jane/phone/event"),
        b"--$this is bad json#--".to_vec(),
    ));
    messages.push((
        format!("{prefix}/jane/phone"),
        br#"{"_type":"location","lat":1,"lon":2,"tst":1700000999,"tid":"jj"}"#.to_vec(),
    ));
    let acked = publish_qos1(&mqtt_url(), &format!("{client_id}-pub"), &messages);
    assert!(acked.iter().all(|a| *a));
    wait_rows(&serve, "SELECT count(*) FROM positions", 4);
    wait_rows(&serve, "SELECT count(*) FROM dead_letters", 2);
    let db = serve.db();
    let topic = |sub: &str| {
        if sub.is_empty() {
            format!("{prefix}/jane/phone")
        } else {
            format!("{prefix}/jane/phone/{sub}")
        }
    };
    assert_eq!(
        rows(
            &db,
            "SELECT DISTINCT topic, transport FROM positions ORDER BY topic"
        ),
        [
            format!("{prefix}/greg/phone|mqtt"),
            format!("{}|mqtt", topic(""))
        ]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT user || '/' || device, tst FROM positions ORDER BY tst"
        ),
        [
            "greg/phone|1",
            "jane/phone|1376715317",
            "jane/phone|1406803894",
            "jane/phone|1700000999"
        ]
    );
    assert_eq!(
        rows(&db, "SELECT user, device, event, topic FROM transitions"),
        [format!("jane|phone|enter|{}", topic("event"))]
    );
    assert_eq!(
        rows(&db, "SELECT count(*), min(topic) FROM waypoints"),
        [format!("4|{}", topic("dump"))]
    );
    assert_eq!(
        rows(&db, "SELECT name, topic FROM cards"),
        [format!("Jane Jolie|{}", topic("info"))]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT event, count(*) FROM device_events GROUP BY event ORDER BY event"
        ),
        ["cmd|11", "lwt|1"]
    );
    assert_eq!(
        rows(&db, "SELECT steps, topic FROM steps"),
        [format!("1234|{}", topic("step"))]
    );
    assert_eq!(
        rows(&db, "SELECT uuid, topic FROM beacons"),
        [format!(
            "CA271EAE-5FA8-4E80-8F08-2A302A95A959|{}",
            topic("beacon")
        )]
    );
    assert_eq!(
        rows(&db, "SELECT user, device, topic FROM configurations"),
        [format!("jane|phone|{}", topic("dump"))]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT user, device, topic, kind FROM dead_letters ORDER BY kind"
        ),
        [
            format!("jane|phone|{}|bad_ciphertext", topic("")),
            format!("jane|phone|{}|invalid_json", topic("event"))
        ]
    );
}

/// QoS 1 messages published while otstream is down are stored once it is
/// back: the broker kept them for its persistent session.
#[test]
fn messages_published_while_down_are_stored_when_back() {
    published_while_down("3.1.1");
}

/// The same with MQTT 5 (clean start off and a session expiry interval).
#[test]
fn messages_published_while_down_are_stored_when_back_mqtt5() {
    published_while_down("5");
}

fn published_while_down(protocol: &str) {
    let (prefix, client_id) = unique("offline");
    let dir = tempdir();
    let env = [("OTSTREAM_MQTT__PROTOCOL", protocol)];
    let serve = serve_mqtt(dir.path(), &prefix, &client_id, &env);
    assert!(serve.interrupt().unwrap());
    let messages: Vec<_> = (0..300)
        .map(|i| location(&prefix, &format!("d{}", i % 7), 1_700_000_000 + i))
        .collect();
    assert!(
        publish_qos1(&mqtt_url(), &format!("{client_id}-pub"), &messages)
            .iter()
            .all(|a| *a)
    );
    // Back with the same protocol: the session is the one it left.
    let serve = serve_mqtt(dir.path(), &prefix, &client_id, &env);
    wait_rows(&serve, "SELECT count(*) FROM positions", 300);
}

/// SIGKILL mid-stream loses nothing the publisher got a PUBACK for.
#[test]
fn sigkill_mid_stream_loses_nothing_the_broker_acknowledged() {
    sigkill_mid_stream("3.1.1");
}

/// The same with MQTT 5.
#[test]
fn sigkill_mid_stream_loses_nothing_the_broker_acknowledged_mqtt5() {
    sigkill_mid_stream("5");
}

fn sigkill_mid_stream(protocol: &str) {
    let (prefix, client_id) = unique("kill");
    let dir = tempdir();
    let env = [("OTSTREAM_MQTT__PROTOCOL", protocol)];
    let serve = serve_mqtt(dir.path(), &prefix, &client_id, &env);
    let messages: Vec<_> = (0..3000)
        .map(|i| location(&prefix, &format!("d{}", i % 13), 1_700_000_000 + i))
        .collect();
    let url = mqtt_url();
    let pub_id = format!("{client_id}-pub");
    let publisher = std::thread::spawn(move || publish_qos1(&url, &pub_id, &messages));
    // Kill once some, not all, are stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: usize = rows(&serve.db(), "SELECT count(*) FROM positions")[0]
            .parse()
            .unwrap();
        if n >= 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing stored:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let data_dir = serve.data_dir.clone();
    serve.kill();
    let acked = publisher.join().unwrap();
    let n_acked = acked.iter().filter(|a| **a).count();
    assert_eq!(n_acked, 3000, "the broker acknowledges every publish");
    let serve = serve_mqtt(&data_dir, &prefix, &client_id, &env);
    wait_rows(&serve, "SELECT count(*) FROM positions", 3000);
}

/// Two ingress processes on one shared subscription split the messages;
/// with one ClickHouse behind both, none is lost or doubled.
#[test]
fn two_ingress_processes_share_a_subscription() {
    let (prefix, client_id) = unique("shared");
    let ch_url = clickhouse_url();
    let db = unique_db("mqtt_shared");
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let common = [
        ("OTSTREAM_MQTT__SHARED_GROUP", "otstream"),
        ("OTSTREAM_CLICKHOUSE__URL", ch_url.as_str()),
        ("OTSTREAM_CLICKHOUSE__DATABASE", db.as_str()),
        ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "100"),
    ];
    let a = serve_mqtt(dir_a.path(), &prefix, &format!("{client_id}-a"), &common);
    let b = serve_mqtt(dir_b.path(), &prefix, &format!("{client_id}-b"), &common);
    let messages: Vec<_> = (0..1000)
        .map(|i| location(&prefix, &format!("d{}", i % 50), 1_700_000_000 + i))
        .collect();
    assert!(
        publish_qos1(&mqtt_url(), &format!("{client_id}-pub"), &messages)
            .iter()
            .all(|x| *x)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = ch(&ch_url, Some(&db), "SELECT count() FROM positions FINAL").unwrap_or_default();
        if n.trim() == "1000" {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 1000 stored", n.trim());
        std::thread::sleep(Duration::from_millis(200));
    }
    let received = |s: &Serve| -> u64 {
        let m = ureq::get(&format!("{}/metrics", s.metrics_url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        m.lines()
            .find(|l| l.starts_with("otstream_received_events_total{stage=\"ingress_mqtt\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (ra, rb) = (received(&a), received(&b));
    assert!(ra > 0 && rb > 0, "both processes take part: {ra} and {rb}");
    assert_eq!(ra + rb, 1000, "each message delivered to one of them");
}

/// `[geofence] push` over MQTT: after a device's location, its fences go
/// to its command topic once (marked as otstream's), and the ingress,
/// which subscribes to `cmd` too, leaves them alone rather than storing
/// them as the device's.
#[test]
fn fences_are_pushed_on_the_command_topic_once_and_not_taken_back() {
    let dir = tempdir();
    let (prefix, client_id) = unique("push");
    let fences = dir.path().join("fences.geojson");
    std::fs::write(
        &fences,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"depot","name":"Depot","radius":150},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}]}"#,
    )
    .unwrap();
    let sub = otstream_tests::Subscriber::start(
        &mqtt_url(),
        &format!("{client_id}-sub"),
        &format!("{prefix}/+/+/cmd"),
    );
    let serve = serve_mqtt(
        dir.path(),
        &prefix,
        &client_id,
        &[
            ("OTSTREAM_GEOFENCE__PUSH", "true"),
            ("OTSTREAM_GEOFENCE__FENCES", fences.to_str().unwrap()),
        ],
    );
    // Two locations, a last will and a body that is no message: only the
    // first location asks for the fences.
    let base = format!("{prefix}/fleet/van1");
    let acked = publish_qos1(
        &mqtt_url(),
        &format!("{client_id}-pub"),
        &[
            location(&prefix, "van1", 1_700_000_000),
            location(&prefix, "van1", 1_700_000_060),
            (
                base.clone(),
                br#"{"_type":"lwt","tst":1700000100}"#.to_vec(),
            ),
            (base, b"not json".to_vec()),
        ],
    );
    assert_eq!(acked, [true, true, true, true]);
    wait_rows(&serve, "SELECT count(*) FROM positions", 2);
    wait_rows(&serve, "SELECT count(*) FROM dead_letters", 1);
    otstream_tests::wait_until(
        "the command seen back by the ingress",
        Duration::from_secs(30),
        || serve.metric("otstream_mqtt_own_events_total") == Some(1.0),
    );
    let got = sub.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, format!("{prefix}/fleet/van1/cmd"));
    let cmd: Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(
        (
            &cmd["_type"],
            &cmd["action"],
            &cmd["_otstream"],
            &cmd["waypoints"]["waypoints"][0]["rid"]
        ),
        (
            &Value::from("cmd"),
            &Value::from("setWaypoints"),
            &Value::from(true),
            &Value::from("otstream:depot")
        )
    );
    assert_eq!(serve.metric("otstream_fences_pushed_total"), Some(1.0));
    assert_eq!(
        rows(&serve.db(), "SELECT event FROM device_events"),
        ["lwt"]
    );
}
