//! The Kafka bus against a real Kafka-protocol broker (Tansu, started by
//! scripts/test.sh): topic creation, acks=all delivery reports, consumer
//! groups, offsets committed only after downstream delivery, and a message
//! that fails downstream read again.

use std::collections::BTreeMap;
use std::time::Duration;

use otstream_bus::kafka::{KafkaConfig, KafkaReceiver, KafkaSender, create_topics};
use otstream_bus::{Ack, AckStatus, Message, Receiver, Sender};
use otstream_model::Record;
use otstream_tests::{broker_turn, kafka_brokers as brokers};

fn position(device: usize, tst: i64) -> Record {
    serde_json::from_str(&format!(
        r#"{{"type":"position","user":"fleet","device":"d{device}","received_at":1,"transport":"http","tst":{tst},"lat":52.5,"lon":13.4}}"#
    ))
    .unwrap()
}

fn tst(r: &Record) -> i64 {
    match r {
        Record::Position(p) => p.tst,
        other => panic!("{other:?}"),
    }
}

/// Receives until `n` messages arrived (or panics after 60 s).
async fn receive(rx: &mut KafkaReceiver<Record>, n: usize) -> Vec<Message<Record>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            tokio::time::timeout(left, rx.recv_many(&mut got, 512))
                .await
                .is_ok(),
            "received {} of {n} in 60 s",
            got.len()
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is a turn at the broker for the whole test, not shared data.
#[allow(clippy::await_holding_lock)]
async fn at_least_once_with_offsets_committed_after_delivery() {
    let _turn = broker_turn();
    let mut config = KafkaConfig::new(brokers());
    config.topic_prefix = format!("t{}_{}.", std::process::id(), line!());
    config.partitions = 3;
    let created = create_topics(&config).await.unwrap();
    assert_eq!(created.len(), 7);
    assert!(created.iter().all(|(_, new)| *new), "{created:?}");
    let again = create_topics(&config).await.unwrap();
    assert!(again.iter().all(|(_, new)| !*new), "{again:?}");

    // 600 positions of 6 devices; every ack delivered by the broker.
    let tx = KafkaSender::<Record>::new(&config).unwrap();
    let mut waiters = Vec::new();
    for i in 0..600i64 {
        let d = (i % 6) as usize;
        let (ack, w) = Ack::new();
        tx.send(Message::new(
            format!("fleet/d{d}"),
            position(d, 1000 + i),
            ack,
        ))
        .await
        .unwrap();
        waiters.push(w);
    }
    for w in waiters {
        assert_eq!(w.await, AckStatus::Delivered);
    }

    // A consumer gets all 600, each device in order. The last 100 it got
    // fail downstream: they come again; the first 500 are delivered.
    let mut rx = KafkaReceiver::<Record>::new(&config, "g1", &["positions"]).unwrap();
    let got = receive(&mut rx, 600).await;
    let mut by_device: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &got {
        by_device
            .entry(m.key.clone())
            .or_default()
            .push(tst(&m.value));
    }
    assert_eq!(by_device.len(), 6);
    for (k, v) in &by_device {
        assert_eq!(v.len(), 100, "{k}");
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{k} out of order");
    }
    let mut failed = Vec::new();
    for (i, m) in got.into_iter().enumerate() {
        if i < 500 {
            m.ack.delivered();
        } else {
            failed.push(tst(&m.value));
            m.ack.fail();
        }
    }
    failed.sort();
    let mut again: Vec<i64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while again.len() < failed.len() {
        let mut buf = Vec::new();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            tokio::time::timeout(left, rx.recv_many(&mut buf, 512))
                .await
                .is_ok()
        );
        for m in buf {
            let t = tst(&m.value);
            if failed.binary_search(&t).is_ok() && !again.contains(&t) {
                again.push(t);
            }
            m.ack.delivered();
        }
    }
    again.sort();
    assert_eq!(again, failed);
    // Let the commit loop commit, then leave.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(rx);

    // The group's next consumer starts after everything delivered: only new
    // messages arrive.
    for i in 0..10i64 {
        tx.send(Message::new("fleet/d0", position(0, 5000 + i), Ack::none()))
            .await
            .unwrap();
    }
    tx.flush(Duration::from_secs(10));
    let mut rx = KafkaReceiver::<Record>::new(&config, "g1", &["positions"]).unwrap();
    let got = receive(&mut rx, 10).await;
    let mut tsts: Vec<i64> = got.iter().map(|m| tst(&m.value)).collect();
    tsts.sort();
    assert_eq!(tsts, (5000..5010).collect::<Vec<_>>());
    let mut more = Vec::new();
    let extra = tokio::time::timeout(Duration::from_secs(2), rx.recv_many(&mut more, 10)).await;
    assert!(extra.is_err(), "redelivered after commit: {more:?}");
}
