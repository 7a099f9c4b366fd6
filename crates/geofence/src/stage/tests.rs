use std::sync::Arc;

use otstream_bus::{Ack, AckStatus, Message, Receiver, Sender, channel};
use otstream_model::EventKind;
use otstream_model::raw::now_ms;
use otstream_model::record::{Meta, Position, Waypoint};
use otstream_model::{Record, StateSnapshot, Transport};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{Fence, FenceSet, GeofenceConfig, Shape};

fn pos(tst: i64, lat: f64, lon: f64) -> Record {
    let meta = Meta {
        user: "jane".into(),
        device: "phone".into(),
        tid: None,
        received_at: 1,
        transport: Transport::Http,
        topic: None,
    };
    Record::Position(Position::at(meta, tst, lat, lon))
}

fn home() -> Arc<FenceSet> {
    Arc::new(FenceSet::new(vec![Fence::new(
        "home",
        "Home",
        Shape::Circle {
            lat: 52.5,
            lon: 13.4,
            radius_m: 100.0,
        },
    )]))
}

/// The stage as it runs over Kafka, snapshotting every `state_interval_ms`.
fn over_kafka(state_interval_ms: u64) -> StageConfig {
    StageConfig {
        derived_only: true,
        geofence: GeofenceConfig {
            state_interval_ms,
            ..GeofenceConfig::default()
        },
        ..StageConfig::default()
    }
}

fn types(out: &[Message<Record>]) -> Vec<&'static str> {
    out.iter().map(|m| m.value.type_name()).collect()
}

#[tokio::test]
async fn the_stage_runs_until_its_input_ends_and_a_closed_output_ends_it() {
    // Positions through the running stage: each comes out with what it
    // derives, in order, and the end of the input ends the stage.
    let (tx, rx) = channel::<Record>(16);
    let (out, mut orx) = channel::<Record>(16);
    let stage = GeofenceStage::new(StageConfig::default()).unwrap();
    let running = tokio::spawn(stage.run(rx, out, CancellationToken::new()));
    for tst in [100, 200] {
        let (ack, _w) = Ack::new();
        tx.send(Message::new("jane/phone", pos(tst, 52.5, 13.4), ack))
            .await
            .unwrap();
    }
    drop(tx);
    let mut got = Vec::new();
    while orx.recv_many(&mut got, 16).await > 0 {}
    running.await.unwrap().unwrap();
    let positions: Vec<i64> = got
        .iter()
        .filter_map(|m| match &m.value {
            Record::Position(p) => Some(p.tst),
            _ => None,
        })
        .collect();
    assert_eq!(positions, [100, 200]);

    let (tx, rx) = channel::<Record>(16);
    let (out, orx) = channel::<Record>(16);
    drop(orx);
    let stage = GeofenceStage::new(StageConfig::default()).unwrap();
    let running = tokio::spawn(stage.run(rx, out, CancellationToken::new()));
    let (ack, _w) = Ack::new();
    tx.send(Message::new("jane/phone", pos(100, 52.5, 13.4), ack))
        .await
        .unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "the geofence stage's output is closed");
}

#[test]
fn derived_records_and_state_follow_their_input_with_its_ack() {
    let mut t = Tracker::new(&StageConfig::default(), home());
    let mut out = Vec::new();
    let (ack, mut waiter) = Ack::new();
    t.process(
        Message::new("jane/phone", pos(100, 52.5, 13.4), ack),
        &mut out,
    );
    // The transition is also an event, for the outboxes.
    assert_eq!(types(&out), ["position", "transition", "event", "state"]);
    let Record::State(s) = &out[3].value else {
        panic!()
    };
    assert_eq!((s.kind.as_str(), s.user.as_str()), (KIND_GEO, "jane"));
    let restored: DeviceGeo = serde_json::from_str(&s.state).unwrap();
    assert_eq!(&restored, t.device("jane/phone").unwrap());
    // Delivered only once all four are.
    let mut parts = out.drain(..);
    parts.next().unwrap().ack.delivered();
    parts.next().unwrap().ack.delivered();
    parts.next().unwrap().ack.delivered();
    assert!(
        futures_poll(&mut waiter).is_none(),
        "delivered before the state"
    );
    parts.next().unwrap().ack.delivered();
    drop(parts);
    assert_eq!(futures_poll(&mut waiter), Some(AckStatus::Delivered));

    // A redelivered fix changes nothing: no state, nothing derived.
    t.process(
        Message::new("jane/phone", pos(100, 52.5, 13.4), Ack::none()),
        &mut out,
    );
    assert_eq!(types(&out), ["position"]);
    out.clear();
    // Anything else passes through untouched.
    let lwt: Record = serde_json::from_str(
        r#"{"type":"device_event","user":"x","device":"y","received_at":1,"transport":"mqtt","event":"lwt"}"#,
    )
    .unwrap();
    t.process(Message::new("x/y", lwt.clone(), Ack::none()), &mut out);
    assert_eq!(out.pop().unwrap().value, lwt);
}

#[tokio::test]
async fn over_kafka_one_snapshot_stands_for_every_fix_since_the_last() {
    let config = over_kafka(1000);
    let mut t = Tracker::new(&config, home());
    assert!(t.coalescing());
    let mut out = Vec::new();
    let mut waiters = Vec::new();
    // Into home, staying, then 1.1 km away.
    for (tst, lat) in [(100, 52.5), (110, 52.5), (120, 52.51)] {
        let (ack, w) = Ack::new();
        waiters.push(w);
        t.process(
            Message::new("jane/phone", pos(tst, lat, 13.4), ack),
            &mut out,
        );
    }
    // What the fixes caused goes out at once; their state waits.
    assert_eq!(types(&out), ["transition", "event", "transition", "event"]);
    for m in out.drain(..) {
        m.ack.delivered();
    }
    assert!(
        waiters.iter_mut().all(|w| futures_poll(w).is_none()),
        "no fix is acknowledged before the state that accounts for it"
    );
    t.flush_due(now_ms(), false, &mut out);
    assert!(out.is_empty(), "not due yet");
    t.flush_due(now_ms() + 1000, false, &mut out);
    assert_eq!(types(&out), ["state"]);
    let Record::State(s) = &out[0].value else {
        panic!()
    };
    let state: DeviceGeo = serde_json::from_str(&s.state).unwrap();
    assert_eq!(&state, t.device("jane/phone").unwrap());
    assert_eq!(state.fences.last_tst, 120);
    out.pop().unwrap().ack.delivered();
    for w in &mut waiters {
        assert_eq!(futures_poll(w), Some(AckStatus::Delivered));
    }

    // A snapshot that is not delivered fails every fix it stood for:
    // they are read again and evaluated against the previous one.
    let (a, wa) = Ack::new();
    let (b, wb) = Ack::new();
    t.process(
        Message::new("jane/phone", pos(130, 52.51, 13.4), a),
        &mut out,
    );
    t.process(
        Message::new("jane/phone", pos(140, 52.51, 13.4), b),
        &mut out,
    );
    // The fix at 130 confirms the one at 120 left home: a trip began,
    // at the departure estimated (the last fix at home, 110).
    let started: Vec<(EventKind, i64)> = out
        .drain(..)
        .map(|m| match m.value {
            Record::Event(e) => (e.kind, e.tst),
            r => panic!("{r:?}"),
        })
        .collect();
    assert_eq!(started, [(EventKind::TripStarted, 110)]);
    t.flush_due(now_ms(), true, &mut out);
    assert_eq!(types(&out), ["state"]);
    out.pop().unwrap().ack.fail();
    assert_eq!((wa.await, wb.await), (AckStatus::Failed, AckStatus::Failed));
}

#[tokio::test]
async fn derived_only_sends_what_it_derives_and_restores_state_given_as_input() {
    // A snapshot per fix (state_interval_ms 0), as before coalescing.
    let config = over_kafka(0);
    // A member that had jane inside home hands over its state.
    let mut a = Tracker::new(&StageConfig::default(), home());
    let mut out = Vec::new();
    a.process(
        Message::new("jane/phone", pos(100, 52.5, 13.4), Ack::none()),
        &mut out,
    );
    let Some(Record::State(state)) = out.pop().map(|m| m.value) else {
        panic!("no state")
    };

    let mut b = Tracker::new(&config, home());
    let (ack, waiter) = Ack::new();
    b.process(
        Message::new("jane/phone", Record::State(state), ack),
        &mut out,
    );
    out.clear();
    assert_eq!(waiter.await, AckStatus::Delivered);
    assert!(b.device("jane/phone").is_some());

    // Leaving: the transition and state go out, not the position, and
    // the ack waits for them alone.
    let (ack, mut waiter) = Ack::new();
    b.process(
        Message::new("jane/phone", pos(200, 52.51, 13.4), ack),
        &mut out,
    );
    assert_eq!(types(&out), ["transition", "event", "state"]);
    let Record::Transition(t) = &out[0].value else {
        panic!()
    };
    assert_eq!(t.event.as_str(), "leave");
    let mut parts = out.drain(..);
    parts.next().unwrap().ack.delivered();
    parts.next().unwrap().ack.delivered();
    assert!(futures_poll(&mut waiter).is_none());
    parts.next().unwrap().ack.delivered();
    drop(parts);
    assert_eq!(futures_poll(&mut waiter), Some(AckStatus::Delivered));

    // Nothing derived: nothing sent, the input's ack done at once.
    let (ack, waiter) = Ack::new();
    b.process(
        Message::new("jane/phone", pos(150, 52.51, 13.4), ack),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(waiter.await, AckStatus::Delivered);
}

#[test]
fn a_restored_tracker_carries_on_where_the_stored_one_stopped() {
    let mut a = Tracker::new(&StageConfig::default(), home());
    let mut out = Vec::new();
    let w = Waypoint {
        meta: match pos(0, 0.0, 0.0) {
            Record::Position(p) => p.meta,
            _ => unreachable!(),
        },
        tst: Some(7),
        lat: Some(48.0),
        lon: Some(11.0),
        rad: Some(50),
        desc: Some("Office".into()),
        rid: None,
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    };
    a.process(
        Message::new("jane/phone", Record::Waypoint(w), Ack::none()),
        &mut out,
    );
    a.process(
        Message::new("jane/phone", pos(100, 52.5, 13.4), Ack::none()),
        &mut out,
    );
    // The batch ends: the changed regions are snapshotted.
    a.flush(false, &mut out);
    let saved: Vec<StateSnapshot> = out
        .drain(..)
        .filter_map(|m| match m.value {
            Record::State(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 2);
    let mut b = Tracker::new(&StageConfig::default(), home());
    let mut broken = saved[0].clone();
    broken.state = "nonsense".into();
    assert_eq!(b.restore(saved.into_iter().chain([broken])), 2);
    // Inside home already: leaving gives a leave, not an enter; and the
    // office region came back.
    // Munich a day later: a plausible move, not a jump for the filters.
    for (tst, lat, lon) in [(200, 52.51, 13.4), (86_600, 48.0, 11.0)] {
        a.process(Message::new("k", pos(tst, lat, lon), Ack::none()), &mut out);
        let from_a: Vec<Record> = out.drain(..).map(|m| m.value).collect();
        b.process(Message::new("k", pos(tst, lat, lon), Ack::none()), &mut out);
        let from_b: Vec<Record> = out.drain(..).map(|m| m.value).collect();
        let strip = |v: Vec<Record>| -> Vec<Record> {
            v.into_iter()
                .filter(|r| !matches!(r, Record::State(_)))
                .collect()
        };
        let (from_a, from_b) = (strip(from_a), strip(from_b));
        assert_eq!(from_a, from_b);
        let events: Vec<String> = from_b
            .iter()
            .filter_map(|r| match r {
                Record::Transition(t) => {
                    Some(format!("{} {}", t.event, t.rid.as_deref().unwrap_or("")))
                }
                _ => None,
            })
            .collect();
        match tst {
            200 => assert_eq!(events, ["leave home"]),
            _ => assert_eq!(events, ["enter wp:7:Office"]),
        }
    }
}

#[tokio::test]
async fn fences_file_is_loaded_and_errors_name_it() {
    let dir = std::env::temp_dir().join(format!("otstream-geo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fences.geojson");
    std::fs::write(&file, "[]").unwrap();
    let e = load_fences(Some(&file)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "fences file {}: fences must be a GeoJSON FeatureCollection",
            file.display()
        )
    );
    let config = StageConfig {
        geofence: GeofenceConfig {
            fences: Some(file.clone()),
            ..GeofenceConfig::default()
        },
        ..StageConfig::default()
    };
    let r = GeofenceStage::new(config).map(|_| ());
    assert!(matches!(r, Err(StageError::Fences { .. })), "{r:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn futures_poll(w: &mut otstream_bus::AckWaiter) -> Option<AckStatus> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::future::Future::poll(std::pin::Pin::new(w), &mut cx) {
        std::task::Poll::Ready(s) => Some(s),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_running_stage_sends_a_quiet_devices_state_when_due_on_its_clock() {
    let config = over_kafka(1000);
    let started = 1_700_000_000_000;
    let stage = GeofenceStage::with_clock(config, Arc::new(TokioClock::new(started))).unwrap();
    let (tx, rx) = channel::<Record>(16);
    let (out, mut orx) = channel::<Record>(16);
    let running = tokio::spawn(stage.run(rx, out, CancellationToken::new()));
    let (ack, mut waiter) = Ack::new();
    tx.send(Message::new("jane/phone", pos(100, 52.5, 13.4), ack))
        .await
        .unwrap();
    // The fix's state waits for the interval; nothing comes out before.
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let mut got = Vec::new();
    let early = std::time::Duration::from_millis(1);
    assert!(
        tokio::time::timeout(early, orx.recv_many(&mut got, 16))
            .await
            .is_err()
    );
    assert!(futures_poll(&mut waiter).is_none());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    orx.recv_many(&mut got, 16).await;
    assert_eq!(types(&got), ["state"]);
    let Record::State(s) = &got[0].value else {
        unreachable!()
    };
    // Due 1000 ms after the fix; sent at the first flush tick after that
    // (every 250 ms).
    assert_eq!(s.updated_at, started + 1000);
    got.pop().unwrap().ack.delivered();
    assert_eq!(waiter.await, AckStatus::Delivered);
    drop(tx);
    running.await.unwrap().unwrap();
}

#[test]
fn a_noisy_track_gives_the_clean_tracks_trips_transitions_and_events() {
    // An hour at home, a 10-minute drive north at about 66 km/h, an hour
    // at the office: a fix a minute, dated in the past hours (the clock
    // is the system's).
    let t0 = now_ms() / 1000 - 4 * 3600;
    let mut clean = Vec::new();
    for i in 0..60 {
        clean.push((t0 + 60 * i, 52.5, 13.4));
    }
    for i in 1..=10 {
        clean.push((t0 + 3600 + 60 * i, 52.5 + 0.01 * i as f64, 13.4));
    }
    for i in 1..=60 {
        clean.push((t0 + 4200 + 60 * i, 52.6, 13.4));
    }
    let fix = |(t, lat, lon): (i64, f64, f64)| pos(t, lat, lon);
    // The same with what phones send: 0,0; the last fix again 10 s on; a
    // fix 500 km off mid-drive; one dated next year.
    let mut noisy: Vec<(i64, f64, f64)> = clean.clone();
    noisy.insert(20, (t0 + 60 * 19 + 30, 0.0, 0.0));
    noisy.insert(31, (t0 + 60 * 29 + 10, 52.5, 13.4));
    noisy.insert(66, (t0 + 3600 + 60 * 5 + 30, 52.5 + 4.5, 13.4));
    noisy.insert(90, (t0 + 365 * 86_400, 52.6, 13.4));
    let config = StageConfig {
        filters: crate::filter::FilterConfig {
            duplicate_s: 30,
            ..Default::default()
        },
        ..StageConfig::default()
    };
    let run = |track: &[(i64, f64, f64)]| {
        let mut t = Tracker::new(&config, home());
        let mut out = Vec::new();
        let (mut caused, mut flagged) = (Vec::new(), Vec::new());
        for f in track {
            t.process(Message::new("jane/phone", fix(*f), Ack::none()), &mut out);
            for m in out.drain(..) {
                match m.value {
                    Record::Position(p) => {
                        if let Some(why) = p.filtered {
                            flagged.push((p.tst - t0, why.to_string()));
                        }
                    }
                    Record::State(_) => {}
                    r => caused.push(r),
                }
            }
        }
        (caused, flagged)
    };
    let (from_clean, none) = run(&clean);
    let (from_noisy, flagged) = run(&noisy);
    assert_eq!(none, []);
    assert_eq!(
        flagged,
        [
            (60 * 19 + 30, "zero".to_owned()),
            (60 * 29 + 10, "duplicate".to_owned()),
            (3600 + 60 * 5 + 30, "speed".to_owned()),
            (365 * 86_400, "future".to_owned()),
        ]
    );
    assert_eq!(from_noisy, from_clean);
    // And what the clean track caused: home entered and a stop begun
    // there; leaving it (the stop ends and the trip starts at the last fix
    // at home); the trip; the office stop beginning on arrival.
    let kinds: Vec<String> = from_clean
        .iter()
        .map(|r| match r {
            Record::Event(e) => format!("{} {}", e.kind.as_str(), e.tst - t0),
            r => r.type_name().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "transition",
            "enter 0",
            "stop_started 0",
            "transition",
            "leave 3660",
            "stop",
            "stop_ended 3540",
            "trip_started 3540",
            "trip",
            "trip_ended 4260",
            "stop_started 4260"
        ]
    );
}

/// A clock the test sets.
#[derive(Debug, Default)]
struct Hand(std::sync::atomic::AtomicI64);

impl Clock for Hand {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_device_gone_quiet_is_said_silent_once_with_its_state_and_back_at_its_next_fix() {
    let hand = Arc::new(Hand::default());
    let set = |ms: i64| hand.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    let mut t = Tracker::with_clock(&StageConfig::default(), home(), hand.clone());
    let mut out = Vec::new();
    // A fix received at 1,000 s (received_at is in ms).
    let at = |tst: i64, received_s: i64| {
        let Record::Position(mut p) = pos(tst, 48.0, 11.0) else {
            unreachable!()
        };
        p.meta.received_at = received_s * 1000;
        Record::Position(p)
    };
    set(1_000_000);
    t.process(
        Message::new("jane/phone", at(900, 1_000), Ack::none()),
        &mut out,
    );
    out.clear();
    set(1_000_000 + 3_600_000);
    t.sweep_silent(&mut out);
    assert!(out.is_empty(), "an hour exactly is not past the limit");
    set(1_000_000 + 3_600_001);
    t.sweep_silent(&mut out);
    let said: Vec<(&str, String)> = out
        .iter()
        .map(|m| match &m.value {
            Record::Event(e) => (e.kind.as_str(), e.id.clone()),
            r => (r.type_name(), String::new()),
        })
        .collect();
    assert_eq!(
        said,
        [
            ("silent", "silent:jane/phone:900".to_owned()),
            ("state", String::new())
        ]
    );
    // The state says it was said: a restored tracker does not say it again.
    let Record::State(snapshot) = out.pop().unwrap().value else {
        unreachable!()
    };
    out.clear();
    let mut restored = Tracker::with_clock(&StageConfig::default(), home(), hand.clone());
    restored.restore([snapshot]);
    for tracker in [&mut t, &mut restored] {
        tracker.sweep_silent(&mut out);
        assert!(out.is_empty());
        tracker.process(
            Message::new("jane/phone", at(9_000, 9_000), Ack::none()),
            &mut out,
        );
        let kinds: Vec<&str> = out
            .iter()
            .filter_map(|m| match &m.value {
                Record::Event(e) => Some(e.kind.as_str()),
                _ => None,
            })
            .collect();
        // Still where it was two hours before: a stop, too.
        assert_eq!(kinds, ["stop_started", "back"]);
        out.clear();
    }
}

#[tokio::test]
async fn a_flood_of_regions_is_bounded_and_snapshotted_once_per_batch() {
    let config = StageConfig::default();
    let max = config.geofence.max_regions_per_device;
    let mut t = Tracker::new(&config, home());
    let meta = match pos(0, 0.0, 0.0) {
        Record::Position(p) => p.meta,
        _ => unreachable!(),
    };
    let region = |i: usize, rad: i32| Waypoint {
        meta: meta.clone(),
        tst: Some(i as i64),
        lat: Some(48.0 + i as f64 * 1e-4),
        lon: Some(11.0),
        rad: Some(rad),
        desc: Some(format!("r{i}").into()),
        rid: Some(format!("rid{i}").into()),
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    };
    // One waypoints message of 3,200 regions, in one batch: every
    // waypoint passed on, one snapshot of the first `max`, which every
    // waypoint's ack waits for.
    let mut out = Vec::new();
    let (ack, waiter) = Ack::new();
    let mut acks = vec![ack; 3_200];
    for i in 0..3_200 {
        let ack = acks.pop().unwrap();
        t.process(
            Message::new("jane/phone", Record::Waypoint(region(i, 50)), ack),
            &mut out,
        );
    }
    t.flush(false, &mut out);
    let states: Vec<&StateSnapshot> = out
        .iter()
        .filter_map(|m| match &m.value {
            Record::State(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 1);
    let regions: Vec<serde_json::Value> = serde_json::from_str(&states[0].state).unwrap();
    assert_eq!(regions.len(), max);
    assert_eq!(out.len(), 3_200 + 1);
    for m in out.drain(..) {
        m.ack.delivered();
    }
    assert_eq!(waiter.await, AckStatus::Delivered);
    // A region sent again under its id replaces it: still `max`, the new
    // radius kept; nothing is snapshotted for a batch that changed nothing.
    t.process(
        Message::new("jane/phone", Record::Waypoint(region(7, 80)), Ack::none()),
        &mut out,
    );
    t.flush(false, &mut out);
    let Record::State(s) = &out.last().unwrap().value else {
        panic!("no snapshot")
    };
    let regions: Vec<serde_json::Value> = serde_json::from_str(&s.state).unwrap();
    assert_eq!(regions.len(), max);
    assert_eq!(regions[7]["radius_m"], 80.0);
    out.clear();
    t.flush(false, &mut out);
    assert!(out.is_empty());
}

/// The rules came with a part of the device state (`r`): a state stored
/// before it reads back with no rule memory, a device without rules
/// stores no `r` (its state is as before), and one with rules stores it
/// and reads it back.
#[test]
fn a_state_stored_before_the_rules_reads_back_and_rule_memory_round_trips() {
    let before = r#"{"f":{"inside":[],"last_tst":1000},"t":{},"q":{},"e":{"r":1}}"#;
    let old: DeviceGeo = serde_json::from_str(before).unwrap();
    assert!(old.rules.is_empty());

    let rules = crate::rules::Rules::parse(
        "[[rules]]\nname = \"fast\"\nkind = \"overspeed\"\nmax_kmh = 1\nmin_s = 60\n",
        &Default::default(),
    )
    .unwrap();
    let state = |with_rules: bool| {
        let mut t = Tracker::new(&StageConfig::default(), home());
        if with_rules {
            t.set_rules(rules.clone());
        }
        let mut out = Vec::new();
        for (i, lon) in [13.4, 13.401].into_iter().enumerate() {
            t.process(
                Message::new(
                    "jane/phone",
                    pos(1000 + 30 * i as i64, 52.5, lon),
                    Ack::none(),
                ),
                &mut out,
            );
        }
        t.device("jane/phone").unwrap().clone()
    };
    let plain = serde_json::to_value(state(false)).unwrap();
    assert_eq!(plain.get("r"), None);
    let ruled = state(true);
    let json = serde_json::to_string(&ruled).unwrap();
    let back: DeviceGeo = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ruled);
    assert_eq!(back.rules.entries(), 1, "{json}");
}

/// Fixes: time, (lat, lon).
type Fixes = Vec<(i64, (f64, f64))>;

/// Home (11 min), 2 km north to the office (11 min), back home (11 min),
/// away, a fix a minute: three stops, two places. Also where to restart
/// (between the office and the second stay at home).
fn a_day_of_stops() -> (Fixes, usize) {
    let home = (52.5, 13.4);
    let office = (52.518, 13.4);
    // A fix a minute, from a minute after the last.
    let next = |fixes: &Fixes| fixes.last().map_or(1000, |f| f.0 + 60);
    let stay = |fixes: &mut Fixes, at: (f64, f64)| {
        let t0 = next(fixes);
        fixes.extend((0..11).map(|i| (t0 + 60 * i, at)));
    };
    let drive = |fixes: &mut Fixes, from: (f64, f64), to: (f64, f64)| {
        let t0 = next(fixes);
        fixes.extend((0..3).map(|i| {
            let f = f64::from(i + 1) / 4.0;
            let at = (from.0 + (to.0 - from.0) * f, from.1 + (to.1 - from.1) * f);
            (t0 + 60 * i64::from(i), at)
        }));
    };
    let mut fixes = Fixes::new();
    stay(&mut fixes, home);
    drive(&mut fixes, home, office);
    stay(&mut fixes, office);
    let restart_at = fixes.len();
    drive(&mut fixes, office, home);
    stay(&mut fixes, home);
    drive(&mut fixes, home, (52.55, 13.4));

    (fixes, restart_at)
}

#[test]
fn stops_are_visits_of_places_that_survive_a_restart() {
    // The tracker restarts from its snapshots between the office and the
    // second stay at home.
    let (fixes, restart_at) = a_day_of_stops();
    let none = Arc::new(FenceSet::new(Vec::new()));
    let mut t = Tracker::new(&StageConfig::default(), none.clone());
    let (mut stops, mut states) = (Vec::new(), Vec::new());
    for (i, (tst, (lat, lon))) in fixes.into_iter().enumerate() {
        if i == restart_at {
            t = Tracker::new(&StageConfig::default(), none.clone());
            // Every snapshot so far, in order: the last of each kind wins.
            let n = states.len();
            assert_eq!(t.restore(states.drain(..)), n);
        }
        let mut out = Vec::new();
        t.process(
            Message::new("jane/phone", pos(tst, lat, lon), Ack::none()),
            &mut out,
        );
        for m in out {
            match m.value {
                Record::Stop(s) => stops.push((s.start, s.place_id)),
                Record::State(s) => states.push(s),
                _ => {}
            }
        }
    }
    assert_eq!(stops.len(), 3, "{stops:?}");
    let (home_id, office_id) = (stops[0].0, stops[1].0);
    assert_eq!(
        stops,
        [
            (home_id, Some(home_id)),
            (office_id, Some(office_id)),
            (stops[2].0, Some(home_id))
        ]
    );
    // The places' state is stored with the stop that changed it: the last
    // one holds both places, home visited twice.
    let last: otstream_trips::places::Places = states
        .iter()
        .rev()
        .find(|s| s.kind == KIND_PLACES)
        .map(|s| serde_json::from_str(&s.state).unwrap())
        .unwrap();
    let visits: Vec<(i64, u32)> = last.places().iter().map(|p| (p.id, p.stops)).collect();
    assert_eq!(visits, [(home_id, 2), (office_id, 1)]);
}

#[test]
fn over_kafka_the_places_travel_in_the_devices_one_snapshot() {
    // The compacted `state` topic keeps one value per device: the places
    // must be in it, not in a snapshot of their own.
    let (fixes, restart_at) = a_day_of_stops();
    let none = Arc::new(FenceSet::new(Vec::new()));
    let mut t = Tracker::new(&over_kafka(250), none.clone());
    let mut states = Vec::new();
    let mut stops = Vec::new();
    for (i, (tst, (lat, lon))) in fixes.into_iter().enumerate() {
        if i == restart_at {
            // Only the latest value of the key survives compaction.
            let last = states.pop().unwrap();
            t = Tracker::new(&over_kafka(250), none.clone());
            assert_eq!(t.restore([last]), 1);
            states.clear();
        }
        let mut out = Vec::new();
        t.process(
            Message::new("jane/phone", pos(tst, lat, lon), Ack::none()),
            &mut out,
        );
        t.flush(true, &mut out);
        for m in out {
            match m.value {
                Record::Stop(s) => stops.push((s.start, s.place_id)),
                Record::State(s) => {
                    assert_eq!(s.kind, KIND_GEO);
                    states.push(s);
                }
                _ => {}
            }
        }
    }
    let ids: Vec<Option<i64>> = stops.iter().map(|s| s.1).collect();
    assert_eq!(ids, [Some(stops[0].0), Some(stops[1].0), Some(stops[0].0)]);
}

#[test]
fn over_kafka_a_devices_own_regions_travel_in_its_one_snapshot() {
    // The compacted `state` topic keeps one value per device: its regions
    // must be in it, even a device that sent no fix yet.
    let mut a = Tracker::new(&over_kafka(250), home());
    let mut out = Vec::new();
    let w = Waypoint {
        meta: match pos(0, 0.0, 0.0) {
            Record::Position(p) => p.meta,
            _ => unreachable!(),
        },
        tst: Some(7),
        lat: Some(48.0),
        lon: Some(11.0),
        rad: Some(50),
        desc: Some("Office".into()),
        rid: None,
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    };
    a.process(
        Message::new("jane/phone", Record::Waypoint(w), Ack::none()),
        &mut out,
    );
    a.flush(true, &mut out);
    let saved: Vec<StateSnapshot> = out
        .drain(..)
        .filter_map(|m| match m.value {
            Record::State(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].kind, KIND_GEO);
    // A tracker restored from it knows the office; one that was not, not.
    let enters = |restore: bool| {
        let mut b = Tracker::new(&over_kafka(250), home());
        if restore {
            assert_eq!(b.restore(saved.clone()), 1);
        }
        let mut out = Vec::new();
        b.process(
            Message::new("jane/phone", pos(100, 48.0, 11.0), Ack::none()),
            &mut out,
        );
        out.iter()
            .filter_map(|m| match &m.value {
                Record::Transition(t) => {
                    Some(format!("{} {}", t.event, t.rid.as_deref().unwrap_or("")))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(enters(true), ["enter wp:7:Office"]);
    assert_eq!(enters(false), Vec::<String>::new());
}
