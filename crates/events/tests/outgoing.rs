//! The outgoing step, run by the sink: a device's transition becomes an
//! event in the outbox before the rows are written, and its ack is settled
//! only once they are.
#![allow(clippy::unwrap_used)] // a test states its expectations with unwrap

use std::sync::Arc;
use std::time::Duration;

use otstream_bus::{Ack, AckStatus, Message, Sender, Stage, channel};
use otstream_decode::{DecodeConfig, Decoder};
use otstream_events::Outgoing;
use otstream_events::outbox::{Format, Outbox, Route};
use otstream_model::{IdentityHints, RawMessage, Record, Transport};
use otstream_sink::{SinkConfig, SinkStage, SqliteBackend, Store};
use tokio_util::sync::CancellationToken;

fn records(payload: &str) -> Vec<Record> {
    let msg = RawMessage {
        received_at: 1_700_000_000_123,
        transport: Transport::Mqtt,
        hints: IdentityHints {
            mqtt_topic: Some("owntracks/jane/phone".into()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_transition_is_queued_before_its_rows_and_acknowledged_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let route = Route {
        name: "hook".into(),
        format: Format::Json,
        kinds: Default::default(),
        users: Default::default(),
        fences: Default::default(),
        rules: Default::default(),
    };
    let outbox = Outbox::open(dir.path(), vec![route]).unwrap();
    let reader = outbox.reader("hook").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sink = SinkStage::new(SqliteBackend::new(SinkConfig::default(), store))
        .with_step(Outgoing::new(None, true, Some(outbox), 10));
    // The store is held: the rows cannot be written yet.
    let blocker = rusqlite::Connection::open(dir.path().join("otstream.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = channel::<Record>(16);
    let running = tokio::spawn(sink.run(rx, (), CancellationToken::new()));

    let (ack, waiter) = Ack::new();
    let [transition] = records(
        r#"{"_type":"transition","event":"enter","desc":"home","tst":1700000000,"wtst":1690000000,"lat":48.85,"lon":2.29,"acc":10,"t":"c"}"#,
    )
    .try_into()
    .unwrap();
    tx.send(Message::new("jane/phone", transition, ack))
        .await
        .unwrap();

    // Its event is queued while the rows wait for the store; the ack waits.
    let mut waiter = Box::pin(waiter);
    let mut queued = Vec::new();
    for _ in 0..100 {
        queued = reader.next(0, 10).unwrap();
        if !queued.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queued.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(body["id"], "enter:jane/phone:1700000000:home");
    assert_eq!(body["kind"], "enter");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err()
    );

    // The store free, the rows are written and only then acknowledged.
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(waiter.await, AckStatus::Delivered);
    let db = rusqlite::Connection::open(dir.path().join("otstream.db")).unwrap();
    let stored: (String, String) = db
        .query_row(
            "SELECT (SELECT event || ':' || desc FROM transitions), (SELECT id FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        stored,
        (
            "enter:home".to_owned(),
            "enter:jane/phone:1700000000:home".to_owned()
        )
    );
    drop(tx);
    running.await.unwrap().unwrap();
}
