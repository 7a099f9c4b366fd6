//! The embedded store against real SQLite files.
#![allow(clippy::unwrap_used)] // helpers of a test binary state expectations with unwrap

use std::sync::Arc;
use std::time::Duration;

use otstream_bus::{Ack, AckStatus, Message, Sender, Stage, channel};
use otstream_decode::{DecodeConfig, Decoder};
use otstream_model::{IdentityHints, RawMessage, Record, Transport};
use otstream_sink::{SinkConfig, SinkStage, SqliteBackend, Store};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

fn records(topic: &str, payload: &str) -> Vec<Record> {
    let msg = RawMessage {
        received_at: 1_700_000_000_123,
        transport: Transport::Mqtt,
        hints: IdentityHints {
            mqtt_topic: Some(topic.into()),
            ..Default::default()
        },
        remote_addr: None,
        payload: payload.as_bytes().to_vec(),
    };
    let mut out = Vec::new();
    Decoder::new(DecodeConfig::default(), Arc::default())
        .decode(&msg, &mut out)
        .unwrap();
    out
}

fn query(db: &std::path::Path, sql: &str) -> Vec<String> {
    otstream_tests::rows(&Connection::open(db).unwrap(), sql)
}

#[test]
fn every_record_type_lands_in_its_table_with_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut all = Vec::new();
    all.extend(records("owntracks/jane/phone", r#"{"_type":"location","lat":52.5,"lon":13.4,"tst":1700000000,"tid":"JJ","acc":5,"alt":34,"vac":3,"vel":12,"cog":90,"batt":80,"bs":1,"t":"u","conn":"w","p":101.2,"m":1,"SSID":"Home","BSSID":"aa:bb","created_at":1700000001,"inregions":["home"],"inrids":["r1"],"x":1}"#));
    all.extend(records("owntracks/jane/phone/event", r#"{"_type":"transition","lat":52.5,"lon":13.4,"tst":1700000100,"wtst":1690000000,"event":"leave","desc":"Home","rid":"r1","t":"c","acc":10,"tid":"JJ"}"#));
    all.extend(records("owntracks/jane/phone/waypoints", r#"{"_type":"waypoints","waypoints":[{"tst":1690000000,"lat":52.5,"lon":13.4,"rad":50,"desc":"Home","rid":"r1"}]}"#));
    all.extend(records(
        "owntracks/jane/phone/info",
        r#"{"_type":"card","name":"Jane","face":"iVBO"}"#,
    ));
    all.extend(records(
        "owntracks/jane/phone",
        r#"{"_type":"lwt","tst":1700000000}"#,
    ));
    all.extend(records(
        "owntracks/jane/phone/cmd",
        r#"{"_type":"cmd","action":"reportLocation"}"#,
    ));
    all.extend(records(
        "owntracks/jane/phone/request",
        r#"{"_type":"request","request":"tours"}"#,
    ));
    all.extend(records("owntracks/jane/phone/step", r#"{"_type":"steps","tst":1700000000,"steps":1500,"from":1699990000,"to":1700000000,"distance":1200,"floorsup":2,"floorsdown":1}"#));
    all.extend(records("owntracks/jane/phone/beacon", r#"{"_type":"beacon","tst":1700000000,"uuid":"E2C5","major":1,"minor":2,"acc":2,"rssi":-70,"prox":2,"desc":"Office"}"#));
    all.extend(records("owntracks/jane/phone/dump", r#"{"_type":"configuration","mode":3,"url":"https://u:p@h/pub","password":"x","waypoints":[]}"#));
    all.push(Record::DeadLetter(otstream_model::DeadLetter {
        user: "jane".into(),
        device: "phone".into(),
        received_at: 5,
        transport: Transport::Http,
        topic: None,
        remote_addr: Some("127.0.0.1:5000".into()),
        kind: "invalid_json".into(),
        field: None,
        message: "payload is not valid JSON: unexpected 'n' at byte 0".into(),
        payload: b"not json".to_vec(),
    }));
    store.write(all.iter()).unwrap();
    let db = store.path().to_owned();
    let meta = "owntracks/jane/phone|mqtt|1700000000123";
    assert_eq!(
        query(&db, "SELECT * FROM positions"),
        [format!(
            // The H3 cells at 5, 7 and 9: ClickHouse's geoToH3(52.5, 13.4, res).
            r#"jane|phone|JJ|1700000000|52.5|13.4|5|34|3|12|90|80|1|u|w|101.2|1|Home|aa:bb|1700000001|["home"]|["r1"]|{meta}|{{"x":1}}|NULL|NULL|NULL|599526121473572863|608533319855898623|617540519100678143"#
        )]
    );
    assert_eq!(
        query(&db, "SELECT * FROM transitions"),
        [
            "jane|phone|JJ|1700000100|1690000000|52.5|13.4|10|leave|Home|r1|c|device|owntracks/jane/phone/event|mqtt|1700000000123|NULL"
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM waypoints"),
        [
            "jane|phone|NULL|1690000000|52.5|13.4|50|Home|r1|NULL|NULL|NULL|owntracks/jane/phone/waypoints|mqtt|1700000000123|NULL"
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM cards"),
        ["jane|phone|NULL|Jane|iVBO|owntracks/jane/phone/info|mqtt|1700000000123|NULL"]
    );
    assert_eq!(
        query(
            &db,
            "SELECT event, tst, topic, extra FROM device_events ORDER BY rowid"
        ),
        [
            "lwt|1700000000|owntracks/jane/phone|NULL",
            r#"cmd|NULL|owntracks/jane/phone/cmd|{"action":"reportLocation"}"#,
            r#"request|NULL|owntracks/jane/phone/request|{"request":"tours"}"#,
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM steps"),
        [
            "jane|phone|NULL|1700000000|1500|1699990000|1700000000|1200|2|1|owntracks/jane/phone/step|mqtt|1700000000123|NULL"
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM beacons"),
        [
            "jane|phone|NULL|1700000000|E2C5|1|2|2|-70|2|Office|owntracks/jane/phone/beacon|mqtt|1700000000123|NULL"
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM configurations"),
        [
            r#"jane|phone|NULL|3|NULL|NULL|https://h/pub|NULL|NULL|0|{"mode":3,"url":"https://h/pub","waypoints":[]}|owntracks/jane/phone/dump|mqtt|1700000000123"#
        ]
    );
    assert_eq!(
        query(&db, "SELECT * FROM dead_letters"),
        [
            "1|5|http|NULL|jane|phone|127.0.0.1:5000|invalid_json|NULL|payload is not valid JSON: unexpected 'n' at byte 0|not json"
        ]
    );
    assert_eq!(query(&db, "PRAGMA journal_mode"), ["wal"]);
}

#[test]
fn duplicates_collapse_on_natural_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let loc = records(
        "owntracks/jane/phone",
        r#"{"_type":"location","lat":1,"lon":2,"tst":1700000000}"#,
    );
    let moved = records(
        "owntracks/jane/phone",
        r#"{"_type":"location","lat":1.5,"lon":2,"tst":1700000000}"#,
    );
    let other = records(
        "owntracks/bob/phone",
        r#"{"_type":"location","lat":1,"lon":2,"tst":1700000000}"#,
    );
    let tr = records(
        "owntracks/jane/phone/event",
        r#"{"_type":"transition","lat":1,"lon":2,"tst":1700000000,"event":"enter","desc":"Home"}"#,
    );
    let card2 = records(
        "owntracks/jane/phone/info",
        r#"{"_type":"card","name":"Jane 2"}"#,
    );
    let card1 = records(
        "owntracks/jane/phone/info",
        r#"{"_type":"card","name":"Jane"}"#,
    );
    for batch in [&loc, &loc, &other, &tr, &tr, &card1, &card2] {
        store.write(batch.iter()).unwrap();
    }
    store.write(moved.iter().chain(tr.iter())).unwrap();
    let db = store.path().to_owned();
    // The latest write wins, as ClickHouse's ReplacingMergeTree does.
    assert_eq!(
        query(&db, "SELECT user, lat FROM positions ORDER BY user"),
        ["bob|1", "jane|1.5"]
    );
    assert_eq!(query(&db, "SELECT count(*) FROM transitions"), ["1"]);
    assert_eq!(query(&db, "SELECT name FROM cards"), ["Jane 2"]);
}

fn send_all(
    tx: &otstream_bus::InProcSender<Record>,
    recs: Vec<Record>,
) -> Vec<otstream_bus::AckWaiter> {
    let mut waiters = Vec::new();
    let rt = tokio::runtime::Handle::current();
    for r in recs {
        let (ack, w) = Ack::new();
        let tx = tx.clone();
        rt.spawn(async move { tx.send(Message::new(r.key(), r, ack)).await.unwrap() });
        waiters.push(w);
    }
    waiters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_delivered_only_after_commit_and_a_stalled_store_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.path().to_owned();
    let (tx, rx) = channel::<Record>(64);
    let shutdown = CancellationToken::new();
    let config = SinkConfig {
        linger_ms: 5,
        retry_initial_ms: 20,
        ..Default::default()
    };
    let committed = tokio::sync::broadcast::channel::<Record>(16).0;
    let mut announced = committed.subscribe();
    let sink = tokio::spawn(
        SinkStage::new(SqliteBackend::new(config, store))
            .announcing(Some(committed))
            .run(rx, (), shutdown.clone()),
    );

    let first = send_all(
        &tx,
        records(
            "owntracks/a/b",
            r#"{"_type":"location","lat":1,"lon":2,"tst":1700000001}"#,
        ),
    );
    for w in first {
        assert_eq!(w.await, AckStatus::Delivered);
    }
    assert_eq!(query(&db, "SELECT count(*) FROM positions"), ["1"]);
    match announced.try_recv() {
        Ok(Record::Position(p)) => assert_eq!(p.tst, 1700000001),
        other => panic!("the committed position was not announced: {other:?}"),
    }

    // Another process takes the write lock: the sink cannot commit.
    let blocker = Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut stalled = send_all(
        &tx,
        records(
            "owntracks/a/b",
            r#"{"_type":"location","lat":1,"lon":2,"tst":1700000002}"#,
        ),
    );
    let mut w = stalled.remove(0);
    tokio::select! {
        s = &mut w => panic!("acknowledged while the store is locked: {s:?}"),
        () = tokio::time::sleep(Duration::from_millis(700)) => {}
    }
    assert!(
        announced.try_recv().is_err(),
        "announced before it was committed"
    );
    blocker.execute_batch("COMMIT").unwrap();
    assert_eq!(w.await, AckStatus::Delivered);
    match announced.try_recv() {
        Ok(Record::Position(p)) => assert_eq!(p.tst, 1700000002),
        other => panic!("the committed position was not announced: {other:?}"),
    }
    assert_eq!(query(&db, "SELECT count(*) FROM positions"), ["2"]);

    drop(tx);
    sink.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_shutdown_leaves_uncommitted_records_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.path().to_owned();
    let blocker = Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = channel::<Record>(64);
    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(
        SinkStage::new(SqliteBackend::new(SinkConfig::default(), store)).run(
            rx,
            (),
            shutdown.clone(),
        ),
    );
    let mut waiters = send_all(&tx, records("owntracks/a/b", r#"{"_type":"lwt"}"#));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    sink.await.unwrap().unwrap();
    assert_eq!(waiters.remove(0).await, AckStatus::Failed);
}

/// A store made before stops named their place (schema version 2) gains
/// the column when opened, keeps its rows, and stores places from then on.
#[test]
fn a_store_from_before_stop_places_gains_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("otstream.db");
    {
        let old = Connection::open(&db).unwrap();
        old.execute_batch(
            "CREATE TABLE stops (user TEXT NOT NULL, device TEXT NOT NULL, start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL, duration INTEGER NOT NULL, points INTEGER NOT NULL, received_at INTEGER NOT NULL);
             CREATE UNIQUE INDEX stops_key ON stops (user, device, start);
             CREATE TABLE positions (user TEXT NOT NULL, device TEXT NOT NULL, tst INTEGER NOT NULL);
             CREATE TABLE trips (user TEXT NOT NULL, device TEXT NOT NULL, start INTEGER NOT NULL);
             INSERT INTO stops VALUES ('jane', 'phone', 100, 400, 52.5, 13.4, 300, 7, 1);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.path(), db);
    let meta = otstream_model::Meta {
        user: "jane".into(),
        device: "phone".into(),
        tid: None,
        received_at: 2,
        transport: Transport::Http,
        topic: None,
    };
    let stop = Record::Stop(otstream_model::Stop {
        meta,
        start: 1000,
        end: 1600,
        lat: 52.5,
        lon: 13.4,
        duration: 600,
        points: 9,
        place: Some("Depot".into()),
        locality: Some("Berlin".into()),
        cc: Some("DE".into()),
        place_id: Some(1000),
    });
    store.write([&stop].into_iter()).unwrap();
    drop(store);
    assert_eq!(
        query(
            &db,
            "SELECT start, points, place, locality, cc, place_id FROM stops ORDER BY start"
        ),
        ["100|7|NULL|NULL|NULL|NULL", "1000|9|Depot|Berlin|DE|1000"]
    );
    // Version 6: no address yet, for the addresses job to find.
    assert_eq!(
        query(&db, "SELECT count(*) FROM stops WHERE address IS NULL"),
        ["2"]
    );
    assert_eq!(query(&db, "PRAGMA user_version"), ["9"]);
    // Opening it again changes nothing.
    Store::open(dir.path()).unwrap();
    assert_eq!(query(&db, "SELECT count(*) FROM stops"), ["2"]);

    // A store a newer otstream made is refused, not written with this
    // version's schema.
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA user_version = 10;")
        .unwrap();
    let Err(e) = Store::open(dir.path()) else {
        panic!("a store from a newer version opened");
    };
    assert_eq!(e.code(), "schema");
    assert!(e.to_string().starts_with("store schema: "), "{e}");
    assert_eq!(query(&db, "PRAGMA user_version"), ["10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_buffer_acknowledges_once_on_disk_keeps_state_and_holds_when_full() {
    use otstream_sink::Backend;
    use otstream_sink::clickhouse::ClickHouseConfig;
    use otstream_sink::clickhouse::buffer::{self, BufferConfig};

    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: ClickHouse is away for all of this.
    let away = ClickHouseConfig::new("http://127.0.0.1:9");
    let config = BufferConfig {
        max_bytes: 100,
        ..BufferConfig::default()
    };
    let (backend, _shipper) =
        buffer::open(dir.path(), SinkConfig::default(), &config, away.clone()).unwrap();
    let (tx, rx) = channel::<Record>(64);
    let shutdown = CancellationToken::new();
    let mut first = records(
        "owntracks/a/b",
        r#"{"_type":"location","lat":1,"lon":2,"tst":1700000001}"#,
    );
    first.push(Record::State(otstream_model::StateSnapshot {
        user: "a".into(),
        device: "b".into(),
        kind: "geo".into(),
        state: "{\"f\":{}}".into(),
        updated_at: 7,
    }));
    // Both waiting before the sink starts: one batch, admitted whole.
    let mut waiters = Vec::new();
    for r in first {
        let (ack, w) = Ack::new();
        tx.send(Message::new(r.key(), r, ack)).await.unwrap();
        waiters.push(w);
    }
    let sink = tokio::spawn(SinkStage::new(backend).run(rx, (), shutdown.clone()));
    for w in waiters {
        assert_eq!(w.await, AckStatus::Delivered);
    }
    let db = dir.path().join(buffer::BUFFER_FILE);
    assert_eq!(
        query(
            &db,
            "SELECT seq, json_extract(body, '$.type'), json_extract(body, '$.tst') FROM outbox ORDER BY seq"
        ),
        ["1|position|1700000001", "2|state|NULL"]
    );
    assert_eq!(
        query(
            &db,
            "SELECT kind, user, device, state, updated_at FROM device_state"
        ),
        [r#"geo|a|b|{"f":{}}|7"#]
    );

    // Over 100 bytes now: the next batch waits for the shipper, unacknowledged.
    let mut held = send_all(
        &tx,
        records(
            "owntracks/a/b",
            r#"{"_type":"location","lat":1,"lon":2,"tst":1700000002,"batt":90,"acc":10,"vel":5}"#,
        ),
    );
    let mut w = held.remove(0);
    tokio::select! {
        s = &mut w => panic!("acknowledged past the bound: {s:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    shutdown.cancel();
    sink.await.unwrap().unwrap();
    assert_eq!(w.await, AckStatus::Failed);
    assert_eq!(query(&db, "SELECT count(*) FROM outbox"), ["2"]);

    // Reopened (a restart): the state comes back from the buffer, since
    // ClickHouse does not answer.
    let (backend, _shipper) =
        buffer::open(dir.path(), SinkConfig::default(), &config, away).unwrap();
    let states = backend.stored_state().await.unwrap();
    assert_eq!(
        states
            .iter()
            .map(|s| format!("{}/{} {} {}", s.user, s.device, s.kind, s.updated_at))
            .collect::<Vec<_>>(),
        ["a/b geo 7"]
    );
}
