use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otstream_tests::{Serve, rows, testdata};
use serde_json::{Value, json};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn body_json(a: &otstream_tests::Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", a.body))
}

fn location(tst: u64) -> Vec<u8> {
    format!(r#"{{"_type":"location","lat":52.5,"lon":13.4,"tst":{tst},"tid":"ld","batt":50}}"#)
        .into_bytes()
}

/// Every example of the payload spec POSTed as Android sends it (identity
/// in X-Limit-U/X-Limit-D) and as iOS sends it (identity in the payload's
/// `topic`): exact statuses, bodies and rows.
#[test]
fn spec_examples_over_http_in_android_and_ios_variants() {
    let dir = tempdir();
    let keys = testdata("keys.toml");
    let serve = Serve::start(dir.path(), &["--keys", keys.to_str().unwrap()], &[]).unwrap();
    let spec = std::fs::read_to_string(testdata("spec-examples.ndjson")).unwrap();
    let mut statuses = Vec::new();
    for (i, line) in spec.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let payload = rec["payload"].clone();
        let mut variants: Vec<(Vec<(&str, String)>, Value)> = Vec::new();
        match rec["topic"].as_str() {
            Some(topic) => {
                let parts: Vec<&str> = topic.split('/').collect();
                let android = vec![
                    ("X-Limit-U", parts[1].to_owned()),
                    ("X-Limit-D", parts[2].to_owned()),
                ];
                variants.push((android, payload.clone()));
                let mut ios = payload.clone();
                ios["topic"] = topic.into();
                variants.push((Vec::new(), ios));
            }
            None => variants.push((Vec::new(), payload.clone())),
        }
        for (headers, body) in variants {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let a = serve.post("/pub", &headers, body.to_string().as_bytes());
            assert_eq!(a.content_type.as_deref(), Some("application/json"));
            let expect_ok = !(i + 1 == 22 || i + 1 == 25);
            if expect_ok {
                assert_eq!((a.status, a.body.as_str()), (200, "[]"), "line {}", i + 1);
            } else {
                assert_eq!(a.status, 400, "line {}: {}", i + 1, a.body);
            }
            statuses.push(a.status);
        }
    }
    assert_eq!(statuses.len(), 49);
    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            "SELECT user, device, tid, tst, lat, lon, acc, alt, vac, vel, cog, batt, t, conn, p, topic, transport FROM positions ORDER BY user, device, tst"
        ),
        [
            "_tid|JJ|JJ|1497476456|48.85833|2.29513|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|http",
            "greg|phone|user|1|45|90|60|27|4|0|248|92|u|NULL|101.3977584838867|owntracks/greg/phone|http",
            "jane|iphone|JJ|1497508651|48.85833|2.29513|5|167|21|61|271|41|u|NULL|71|owntracks/jane/iphone|http",
            "jane|phone|YY|1376715317|48.85833|2.29451|75|13|10|54|270|80|c|w|101.2|owntracks/jane/phone|http",
            "jane|phone|NULL|1406803894|48.85833|2.29451|NULL|160|NULL|12|0|NULL|t|NULL|NULL|owntracks/jane/phone|http",
        ]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT user, device, tid, tst, wtst, lat, lon, acc, event, desc, t, source, topic FROM transitions"
        ),
        [
            "jane|phone|JP|1427634603|1425042603|12.34|44.5|130|enter|my Indian restaurant|b|device|owntracks/jane/phone/event"
        ]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT tst, lat, lon, rad, desc, uuid, major, minor FROM waypoints ORDER BY tst, desc"
        ),
        [
            // Binary collation: "Free..." sorts before "blabla".
            "1385997757|48.85833|2.29451|100|Free text entered on device|CA271EAE-5FA8-4E80-8F08-2A302A95A959|17|1",
            "1385997757|48.858|2.295|100|blabla|NULL|NULL|NULL",
            "1430398091|46.517295754|9.87121582|500|Cheese fondue|NULL|NULL|NULL",
            "1433598071|47.580231298|9.525146484|25186|I went swimming here|NULL|NULL|NULL",
        ]
    );
    assert_eq!(
        rows(&db, "SELECT user, device, name FROM cards"),
        ["jane|phone|Jane Jolie"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*), count(DISTINCT extra) FROM device_events WHERE event = 'cmd'"
        ),
        ["11|11"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT event, tst FROM device_events WHERE event <> 'cmd'"
        ),
        ["lwt|1380738247"]
    );
    assert_eq!(
        rows(&db, "SELECT tst, steps, \"from\", \"to\" FROM steps"),
        ["1400455130|1234|1400455130|1400458000"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT tst, uuid, major, minor, acc, rssi, prox FROM beacons"
        ),
        ["1399028969|CA271EAE-5FA8-4E80-8F08-2A302A95A959|1|1|3|-61|2"]
    );
    let config = rows(
        &db,
        "SELECT mode, host, port, username, device_id, waypoints, config FROM configurations",
    );
    assert_eq!(config.len(), 1);
    // The test client re-serialized the payload with sorted keys.
    assert!(
        config[0].starts_with("0|broker.my.net|8883|jane|phone|1|{\"allowRemoteLocation\":false,"),
        "{}",
        config[0]
    );
    assert!(config[0].contains(r#""waypoints":[{"_type":"waypoint","desc":"blabla","lat":48.858,"lon":2.295,"rad":100,"shared":true,"tst":1385997757}]"#));
    assert!(!config[0].contains("secr3t") && !config[0].contains("passphrase"));
    assert_eq!(
        rows(
            &db,
            "SELECT user, device, kind, field FROM dead_letters ORDER BY id"
        ),
        // The iOS variant and Traccar's example carry identity only inside
        // the payload, which a dead letter does not trust: no user/device.
        [
            "jane|phone|bad_ciphertext|data",
            "||bad_ciphertext|data",
            "||missing_field|tst"
        ]
    );
}

/// Every answer the ingress gives, with its exact body.
#[test]
fn statuses_and_bodies_for_every_case() {
    let dir = tempdir();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("jane:{}\n", bcrypt::hash("s3cret", 4).unwrap()),
    )
    .unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--htpasswd", htpasswd.to_str().unwrap()],
        &[
            ("OTSTREAM_DECODE__REGISTRY", r#"["jane/phone"]"#),
            ("OTSTREAM_HTTP__MAX_BODY_BYTES", "65536"),
        ],
    )
    .unwrap();
    use base64::Engine as _;
    let basic = |cred: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(cred)
        )
    };
    let jane = basic("jane:s3cret");
    let as_jane = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, String)> = vec![("Authorization", jane.clone())];
        h.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        h
    };
    let post = |headers: Vec<(&str, String)>, body: &[u8]| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        serve.post("/", &h, body)
    };
    let phone = [("X-Limit-U", "jane"), ("X-Limit-D", "phone")];

    let a = post(vec![], &location(1_700_000_001));
    assert_eq!(
        (a.status, body_json(&a)),
        (
            401,
            json!({"error": {"kind": "unauthorized", "field": null, "message": "valid HTTP Basic credentials (or a token) are required"}})
        )
    );
    let a = post(
        vec![("Authorization", basic("jane:wrong"))],
        &location(1_700_000_001),
    );
    assert_eq!(a.status, 401);

    let a = post(as_jane(&phone), &location(1_700_000_001));
    assert_eq!((a.status, a.body.as_str()), (200, "[]"));
    let a = post(
        as_jane(&[]),
        br#"{"_type":"location","lat":1,"lon":2,"tst":1700000002,"topic":"owntracks/bob/phone"}"#,
    );
    assert_eq!(
        (a.status, body_json(&a)),
        (
            403,
            json!({"error": {"kind": "forbidden", "field": null, "message": "user \"jane\" may not publish as \"bob/phone\""}})
        )
    );
    let a = post(
        as_jane(&[("X-Limit-U", "jane"), ("X-Limit-D", "tablet")]),
        &location(1_700_000_003),
    );
    assert_eq!(
        (a.status, body_json(&a)),
        (
            400,
            json!({"error": {"kind": "unknown_device", "field": null, "message": "unknown device \"jane/tablet\": not in the device registry"}})
        )
    );
    let a = post(as_jane(&phone), b"not json");
    assert_eq!(
        (a.status, body_json(&a)),
        (
            400,
            json!({"error": {"kind": "invalid_json", "field": null, "message": "payload is not valid JSON: unexpected 'n' at byte 0"}})
        )
    );
    let a = post(as_jane(&phone), b"[1]");
    assert_eq!(
        (a.status, body_json(&a)["error"]["kind"].clone()),
        (400, json!("not_an_object"))
    );
    let a = post(as_jane(&phone), b"{}");
    assert_eq!(
        (a.status, body_json(&a)["error"]["kind"].clone()),
        (400, json!("missing_type"))
    );
    let a = post(
        as_jane(&phone),
        br#"{"_type":"location","lat":91,"lon":2,"tst":1700000004}"#,
    );
    assert_eq!(
        (a.status, body_json(&a)),
        (
            400,
            json!({"error": {"kind": "out_of_range", "field": "lat", "message": "field `lat`: 91 is outside -90..=90"}})
        )
    );
    let big = vec![b' '; 70_000];
    let a = post(as_jane(&phone), &big);
    assert_eq!(
        (a.status, body_json(&a)),
        (
            413,
            json!({"error": {"kind": "too_large", "field": null, "message": "body exceeds the limit of 65536 bytes"}})
        )
    );
    let a = post(
        as_jane(&phone),
        br#"{"_type":"unsupported","tst":1700000005}"#,
    );
    assert_eq!((a.status, a.body.as_str()), (200, "[]"));
    let a = post(as_jane(&phone), b"");
    assert_eq!((a.status, a.body.as_str()), (200, "[]"));
    let a = otstream_tests::post(&format!("{}/nope", serve.url), &[], b"{}");
    assert_eq!(
        (a.status, body_json(&a)["error"]["kind"].clone()),
        (404, json!("not_found"))
    );
    let get = ureq::get(&format!("{}/pub", serve.url)).call();
    match get {
        Err(ureq::Error::Status(405, r)) => assert_eq!(r.header("allow"), Some("POST")),
        other => panic!("GET /pub: {other:?}"),
    }

    let db = serve.db();
    assert_eq!(
        rows(&db, "SELECT user, device, tst FROM positions"),
        ["jane|phone|1700000001"]
    );
    assert_eq!(
        rows(&db, "SELECT user, device, event, tst FROM device_events"),
        ["jane|phone|unsupported|1700000005"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT user, device, kind FROM dead_letters ORDER BY id"
        ),
        // The forbidden request named no device in its headers: the
        // transport-only identity is the authenticated user, twice.
        [
            "jane|jane|forbidden",
            "jane|tablet|unknown_device",
            "jane|phone|invalid_json",
            "jane|phone|not_an_object",
            "jane|phone|missing_type",
            "jane|phone|out_of_range"
        ]
    );
    let metrics = ureq::get(&format!("{}/metrics", serve.metrics_url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "otstream_http_responses_total{status=\"200\"} 3",
        "otstream_http_responses_total{status=\"400\"} 5",
        "otstream_http_responses_total{status=\"401\"} 2",
        "otstream_http_responses_total{status=\"403\"} 1",
        "otstream_http_responses_total{status=\"413\"} 1",
        "otstream_rejected_total{stage=\"ingress_http\",reason=\"forbidden\"} 1",
        "otstream_stored_rows_total{table=\"dead_letters\"} 6",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    // Failed logins are limited: the 11th wrong one within a second gets
    // 429 unchecked; a phone whose credentials were verified before
    // carries on.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let wrong = |i: usize| {
        post(
            vec![("Authorization", basic(&format!("mallory:guess{i}")))],
            &location(1_700_000_100),
        )
    };
    for i in 0..10 {
        assert_eq!(wrong(i).status, 401, "attempt {}", i + 1);
    }
    let a = wrong(10);
    assert_eq!(
        (
            a.status,
            a.retry_after.as_deref(),
            body_json(&a)["error"]["kind"].clone()
        ),
        (429, Some("1"), json!("too_many_attempts"))
    );
    assert_eq!(post(as_jane(&phone), &location(1_700_000_101)).status, 200);
}

/// A tiny bus and a store another process has locked: the ingress answers
/// 503 with Retry-After, never 200, while nothing can be stored; once the
/// lock is gone it answers 200 again, and every 200 is in the store.
#[test]
fn overload_answers_503_and_never_acknowledges_what_is_not_stored() {
    let dir = tempdir();
    let serve = Serve::start(
        dir.path(),
        &["--bus-capacity", "1"],
        &[
            ("OTSTREAM_HTTP__SEND_TIMEOUT_MS", "100"),
            ("OTSTREAM_HTTP__ACK_TIMEOUT_MS", "2000"),
        ],
    )
    .unwrap();
    let headers = [("X-Limit-U", "jane"), ("X-Limit-D", "phone")];
    assert_eq!(
        serve.post("/", &headers, &location(1_600_000_000)).status,
        200
    );

    let lock = rusqlite::Connection::open(dir.path().join("otstream.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12u64)
            .map(|i| {
                let serve = &serve;
                s.spawn(move || serve.post("/", &headers, &location(1_600_000_100 + i)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert_eq!(body_json(a)["error"]["kind"], "overloaded");
    }
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);

    let mut acked = vec![1_600_000_000u64];
    let deadline = Instant::now() + Duration::from_secs(20);
    for tst in 1_600_001_000..1_600_001_010u64 {
        loop {
            let a = serve.post("/", &headers, &location(tst));
            if a.status == 200 {
                acked.push(tst);
                break;
            }
            assert_eq!(a.status, 503, "{a:?}");
            assert!(
                Instant::now() < deadline,
                "still overloaded 20 s after the lock was released"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let stored: BTreeSet<u64> = rows(&serve.db(), "SELECT tst FROM positions")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    for tst in acked {
        assert!(stored.contains(&tst), "acknowledged {tst} is not stored");
    }
}

/// Clients sending concurrently; the process is stopped mid-stream, either
/// gracefully or with SIGKILL. Every message answered 200 is in the store.
fn stop_mid_stream(graceful: bool) {
    let dir = tempdir();
    let serve = Serve::start(dir.path(), &[], &[]).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let url = serve.url.clone();
    let senders: Vec<_> = (0..4u64)
        .map(|t| {
            let (acked, url) = (acked.clone(), url.clone());
            std::thread::spawn(move || {
                let device = format!("d{t}");
                let headers = [("X-Limit-U", "fleet"), ("X-Limit-D", device.as_str())];
                for i in 0..100_000u64 {
                    let tst = 1_700_000_000 + i;
                    let a = otstream_tests::post(&format!("{url}/pub"), &headers, &location(tst));
                    match a.status {
                        200 => acked.lock().unwrap().push(format!("fleet|{device}|{tst}")),
                        0 => return,
                        503 => {}
                        s => panic!("unexpected status {s}: {}", a.body),
                    }
                }
            })
        })
        .collect();
    // Let the senders get going, then stop the server under them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "no progress:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let data_dir = serve.data_dir.clone();
    if graceful {
        assert!(serve.interrupt().unwrap(), "graceful shutdown failed");
    } else {
        serve.kill();
    }
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Reopen through a fresh process: the store recovers its WAL.
    let serve = Serve::start(&data_dir, &[], &[]).unwrap();
    let stored: BTreeSet<String> = rows(&serve.db(), "SELECT user, device, tst FROM positions")
        .into_iter()
        .collect();
    let missing: Vec<_> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(acked.len() >= 300);
    assert_eq!(
        serve
            .post("/", &[("X-Limit-U", "a"), ("X-Limit-D", "b")], &location(5))
            .status,
        200
    );
}

/// A stage that fails while `serve` runs (a fault injected into the
/// geofence stage) takes readiness down and stops the process with an
/// error naming it; what was acknowledged before is stored.
#[test]
fn a_stage_failing_while_serving_stops_the_process_naming_it() {
    let dir = tempdir();
    let fault = dir.path().join("fault");
    let data = dir.path().join("data");
    let fault_file = fault.display().to_string();
    let env = [
        ("OTSTREAM_FAULT_STAGE", "geofence"),
        ("OTSTREAM_FAULT_FILE", fault_file.as_str()),
    ];
    let mut serve = Serve::start(&data, &[], &env).unwrap();
    let headers = [("X-Limit-U", "fleet"), ("X-Limit-D", "van")];
    for i in 0..20 {
        let a = serve.post("/pub", &headers, &location(1_700_000_000 + i));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Not ready at once; the process then stops by itself.
    let log = serve.inject_fault(&fault, Duration::from_secs(30));
    assert!(
        log.contains("a stage ended while serving") && log.contains("geofence"),
        "{log}"
    );
    assert!(log.contains("injected fault"), "{log}");
    drop(serve);
    // Restarted without the fault: the 20 acknowledged fixes are there.
    let serve = Serve::start(&data, &[], &[]).unwrap();
    assert_eq!(
        rows(
            &serve.db(),
            "SELECT count(*) FROM positions WHERE device = 'van'"
        ),
        ["20"]
    );
}

#[test]
fn graceful_shutdown_keeps_every_acknowledged_message() {
    stop_mid_stream(true);
}

#[test]
fn sigkill_loses_nothing_that_got_a_200() {
    stop_mid_stream(false);
}

/// Friends: the answer carries the last card and location of the other
/// members of the sender's groups, as OwnTracks Recorder's /pub does.
#[test]
fn friends_see_each_other() {
    let dir = tempdir();
    let env = [
        ("OTSTREAM_HTTP__FRIENDS__ENABLED", "true"),
        (
            "OTSTREAM_HTTP__FRIENDS__GROUPS__FAMILY",
            r#"["jane/phone","bob/phone"]"#,
        ),
    ];
    let serve = Serve::start(dir.path(), &[], &env).unwrap();
    let bob = [("X-Limit-U", "bob"), ("X-Limit-D", "phone")];
    let jane = [("X-Limit-U", "jane"), ("X-Limit-D", "phone")];
    assert_eq!(
        serve
            .post("/pub", &bob, br#"{"_type":"card","name":"Bob","tid":"BB"}"#)
            .body,
        "[]"
    );
    assert_eq!(serve.post("/pub", &bob, br#"{"_type":"location","lat":52.49,"lon":13.39,"tst":1700000000,"tid":"BB","acc":7}"#).body, "[]");
    let a = serve.post("/pub", &jane, &location(1_700_000_100));
    assert_eq!(a.status, 200);
    assert_eq!(
        body_json(&a),
        json!([
            {"_type": "card", "name": "Bob", "tid": "BB", "topic": "owntracks/bob/phone"},
            {"_type": "location", "lat": 52.49, "lon": 13.39, "tst": 1700000000, "tid": "BB", "acc": 7, "topic": "owntracks/bob/phone"},
        ])
    );
    let a = serve.post("/pub", &bob, &location(1_700_000_200));
    assert_eq!(body_json(&a)[0]["topic"], "owntracks/jane/phone");

    // After a restart the answer comes from the store: Bob's last fix and
    // his card's name. (His fixes are 1.3 km apart: 500 km in 200 s would
    // be a jump the position filters set aside, and not his last fix.)
    assert!(serve.interrupt().unwrap());
    let serve = Serve::start(dir.path(), &[], &env).unwrap();
    let a = serve.post("/pub", &jane, &location(1_700_000_300));
    assert_eq!(
        body_json(&a),
        json!([
            {"_type": "card", "name": "Bob", "tid": "ld", "topic": "owntracks/bob/phone"},
            {"_type": "location", "lat": 52.5, "lon": 13.4, "tst": 1700000200, "tid": "ld", "batt": 50, "topic": "owntracks/bob/phone"},
        ])
    );
}

/// Retention: positions older than a day go, exactly those, while a
/// phone keeps posting and never gets anything but a 200.
#[test]
fn retention_removes_exactly_the_old_rows_while_ingest_goes_on() {
    let dir = tempdir();
    let serve = Serve::start(
        dir.path(),
        &[],
        &[
            ("OTSTREAM_RETENTION__DAYS__POSITIONS", "1"),
            ("OTSTREAM_RETENTION__INTERVAL_S", "1"),
        ],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = [("X-Limit-U", "ann"), ("X-Limit-D", "old")];
    for i in 0..100 {
        // 3 days ago and 1 hour ago, interleaved.
        for tst in [now - 3 * 86_400 + i, now - 3_600 + i] {
            assert_eq!(serve.post("/pub", &old, &location(tst)).status, 200);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (statuses, live) = std::thread::scope(|s| {
        let phone = s.spawn(|| {
            let headers = [("X-Limit-U", "ann"), ("X-Limit-D", "live")];
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut tst = now - 60;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tst += 1;
                *statuses
                    .entry(serve.post("/pub", &headers, &location(tst)).status)
                    .or_default() += 1;
            }
            (statuses, tst - (now - 60))
        });
        let db = serve.db();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let old_left = || {
            rows(
                &db,
                &format!(
                    "SELECT count(*) FROM positions WHERE tst < {}",
                    now - 86_400
                ),
            )
        };
        while old_left() != ["0"] {
            assert!(
                std::time::Instant::now() < deadline,
                "old rows left: {:?}\n{}",
                old_left(),
                serve.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // A little more ingest after the pass, then stop.
        std::thread::sleep(std::time::Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        phone.join().unwrap()
    });
    assert_eq!(statuses.keys().collect::<Vec<_>>(), [&200], "{statuses:?}");
    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            "SELECT device, count(*) FROM positions GROUP BY device ORDER BY device"
        ),
        [format!("live|{live}"), "old|100".to_owned()]
    );
    assert_eq!(
        rows(&db, "SELECT min(tst) FROM positions WHERE device = 'old'"),
        [(now - 3_600).to_string()]
    );
}
