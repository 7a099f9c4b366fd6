//! The step before the sink: a device's transition becomes an event in
//! the outbox before anything reaches the sink, and the step settles no
//! ack itself (the sink does, once the rows are durable).
#![allow(clippy::unwrap_used)] // a test states its expectations with unwrap

use std::sync::Arc;
use std::time::Duration;

use otstream_bus::{Ack, AckStatus, Message, Receiver, Sender, Stage, channel};
use otstream_decode::{DecodeConfig, Decoder};
use otstream_events::Outgoing;
use otstream_events::outbox::{Format, Outbox, Route};
use otstream_model::{IdentityHints, RawMessage, Record, Transport};
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
async fn a_device_transition_is_queued_before_the_sink_sees_it_and_its_ack_waits_for_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let route = Route {
        name: "hook".into(),
        format: Format::Json,
        kinds: Default::default(),
        users: Default::default(),
        fences: Default::default(),
    };
    let outbox = Outbox::open(dir.path(), vec![route]).unwrap();
    let reader = outbox.reader("hook").unwrap();
    let (tx, rx) = channel::<Record>(16);
    let (out_tx, mut out_rx) = channel::<Record>(16);
    let step = Outgoing::new(None, true, Some(outbox), 10);
    let running = tokio::spawn(step.run(rx, out_tx, CancellationToken::new()));

    let (ack, waiter) = Ack::new();
    let [transition] = records(
        r#"{"_type":"transition","event":"enter","desc":"home","tst":1700000000,"wtst":1690000000,"lat":48.85,"lon":2.29,"acc":10,"t":"c"}"#,
    )
    .try_into()
    .unwrap();
    tx.send(Message::new("jane/phone", transition, ack))
        .await
        .unwrap();

    let mut got = Vec::new();
    while got.len() < 2 {
        out_rx.recv_many(&mut got, 16).await;
    }
    // The transition and its event, in that order; the event is in the
    // queue already.
    let kinds: Vec<&str> = got.iter().map(|m| m.value.type_name()).collect();
    assert_eq!(kinds, ["transition", "event"]);
    let Record::Event(e) = &got[1].value else {
        unreachable!()
    };
    assert_eq!(e.id, "enter:jane/phone:1700000000:home");
    let queued = reader.next(0, 10).unwrap();
    assert_eq!(queued.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(body["id"], "enter:jane/phone:1700000000:home");
    assert_eq!(body["kind"], "enter");

    // Not settled by the step: the sink settles it once the rows are stored.
    let mut waiter = Box::pin(waiter);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiter)
            .await
            .is_err()
    );
    for m in got {
        m.ack.delivered();
    }
    assert_eq!(waiter.await, AckStatus::Delivered);

    // Its input closed, it ends, and closes the sink's input behind it.
    drop(tx);
    running.await.unwrap().unwrap();
    assert_eq!(out_rx.recv_many(&mut Vec::new(), 1).await, 0);
}
