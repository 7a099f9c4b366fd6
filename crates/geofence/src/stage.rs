//! The geofence stage: positions and waypoints in; the same records out,
//! followed by the server-side transitions, trips and stops they caused
//! and the device's new state, all carrying the input's ack.
//!
//! Durability of state: the state snapshot of a device is sent after the
//! records derived with it and carries the same ack, so the input is
//! acknowledged only once both are stored, and a sink that stores in
//! order never holds a state newer than the rows it accounts for. After a
//! crash, what was not acknowledged is delivered again and evaluated
//! against the stored state: the same rows come out and collapse on their
//! keys; a restart in the middle of a trip gives the trips an
//! uninterrupted run gives.
//!
//! Over Kafka (`StageConfig::derived_only`) the records given are not
//! sent on: they are in their topics already. A state snapshot given as
//! input is restored, not sent on: that is how a member assigned a
//! partition picks up its devices from the compacted `state` topic. And a
//! device's state is snapshotted at most every `state_interval_ms`: the
//! snapshot carries the acks of every fix since the last one (joined), so
//! none of those fixes is committed before the state that accounts for
//! them is durable, and a crash replays them against the last snapshot as
//! before; at a fix a second per device, this halves what the stage sends.
//!
//! The fences file is checked every `reload_ms` and reloaded when it
//! changes; a file that does not parse is reported and the fences in use
//! are kept.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::Counter;
use otstream_bus::{Ack, Message, Receiver, Sender};
use otstream_model::raw::now_ms;
use otstream_model::{Record, StateSnapshot, Stop, Text, Trip};
use otstream_trips::{Detector, Finished, TripConfig, TripState};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{DeviceState, FenceError, FenceSet, GeofenceConfig, Geofencer, Region};

/// Most records handled per trip to the blocking pool.
pub const BATCH: usize = 256;

/// Batches up to this size are processed on the async worker (well under
/// 100 µs); larger ones go to the blocking pool.
const INLINE_BATCH: usize = 32;

/// `kind` of the per-device geofence and trip state in `device_state`.
pub const KIND_GEO: &str = "geo";
/// `kind` of a device's own regions in `device_state`.
pub const KIND_REGIONS: &str = "waypoints";

/// Why the stage could not start or went on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// The fences file could not be read.
    #[error("cannot read fences file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fences file is not a usable FeatureCollection.
    #[error("fences file {path}: {source}")]
    Fences {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FenceError,
    },
    /// The processing thread died (a bug).
    #[error("geofence batch failed: {0}")]
    Thread(String),
    /// The next stage stopped taking records.
    #[error("the geofence stage's output is closed")]
    OutputClosed,
}

/// The stage's configuration: the fences, the geofence rules and the trip
/// rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Geofence rules and the fences file.
    #[serde(default)]
    pub geofence: GeofenceConfig,
    /// Trip and stop rules.
    #[serde(default)]
    pub trips: TripConfig,
    /// Send only what the stage derives, not the records it was given:
    /// over Kafka those are in their topics already and the sink reads
    /// them there.
    #[serde(skip)]
    pub derived_only: bool,
}

/// Loads the operator fences: none without a file.
pub fn load_fences(path: Option<&Path>) -> Result<FenceSet, StageError> {
    let Some(path) = path else {
        return Ok(FenceSet::new(Vec::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Read {
        path: path.to_owned(),
        source,
    })?;
    FenceSet::from_geojson(&text).map_err(|source| StageError::Fences {
        path: path.to_owned(),
        source,
    })
}

/// Everything remembered per device: 248 bytes (80 + 168), plus its key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceGeo {
    /// Fences it is inside.
    #[serde(rename = "f", default)]
    pub fences: DeviceState,
    /// Trip or stay in progress.
    #[serde(rename = "t", default)]
    pub trip: TripState,
}

/// The geofence and trip evaluation for every device, with its state.
#[derive(Debug)]
pub struct Tracker {
    geofencer: Geofencer,
    detector: Detector,
    devices: HashMap<String, DeviceGeo>,
    derived_only: bool,
    /// Last `updated_at` written: state versions never go back, even if
    /// the wall clock does.
    clock: i64,
    /// Coalescing snapshots (over Kafka): the interval, ms; 0 for a
    /// snapshot per fix.
    state_interval_ms: i64,
    /// Devices whose state changed since their last snapshot, with the
    /// acks of the fixes that changed it.
    pending: HashMap<String, Pending>,
    /// When each pending device is due, in the order they became pending.
    due: VecDeque<(i64, String)>,
}

/// A device's snapshot to come.
#[derive(Debug)]
struct Pending {
    user: Text,
    device: Text,
    acks: Vec<Ack>,
}

impl Tracker {
    /// A tracker over `fences` with no device state.
    pub fn new(config: &StageConfig, fences: Arc<FenceSet>) -> Self {
        Self {
            geofencer: Geofencer::new(config.geofence.clone(), fences),
            detector: Detector::new(config.trips),
            devices: HashMap::new(),
            derived_only: config.derived_only,
            clock: 0,
            state_interval_ms: if config.derived_only {
                i64::try_from(config.geofence.state_interval_ms).unwrap_or(i64::MAX)
            } else {
                0
            },
            pending: HashMap::new(),
            due: VecDeque::new(),
        }
    }

    /// Whether snapshots wait for [`Tracker::flush_due`].
    pub fn coalescing(&self) -> bool {
        self.state_interval_ms > 0
    }

    /// Sends the snapshots due at `now` (ms; every pending one with
    /// `all`), each with the joined acks of the fixes it accounts for.
    pub fn flush_due(&mut self, now: i64, all: bool, out: &mut Vec<Message<Record>>) {
        while let Some((at, _)) = self.due.front() {
            if !all && *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_front() else {
                break;
            };
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let state = self.devices.get(&key).and_then(|d| state_json(&key, d));
            let ack = Ack::join(p.acks);
            self.send_state(out, key, (&p.user, &p.device), KIND_GEO, state, ack);
        }
    }

    /// Replaces the operator fences; device state is kept.
    pub fn set_fences(&mut self, fences: Arc<FenceSet>) {
        self.geofencer.set_fences(fences);
    }

    /// Restores stored state; returns how many snapshots were used. A
    /// snapshot that does not parse is reported and skipped (the device
    /// starts afresh) rather than stopping the stage.
    pub fn restore(&mut self, snapshots: impl IntoIterator<Item = StateSnapshot>) -> usize {
        let mut used = 0;
        for s in snapshots {
            let key = s.key();
            let ok = match s.kind.as_str() {
                KIND_GEO => serde_json::from_str::<DeviceGeo>(&s.state)
                    .map(|d| {
                        self.devices.insert(key.clone(), d);
                    })
                    .is_ok(),
                KIND_REGIONS => serde_json::from_str::<Vec<Region>>(&s.state)
                    .map(|r| self.geofencer.restore_regions(&key, r))
                    .is_ok(),
                _ => false,
            };
            if ok {
                used += 1;
            } else {
                tracing::warn!(device = %key, kind = %s.kind, "stored state unreadable; starting this device afresh");
            }
        }
        used
    }

    /// The state of `user/device`.
    pub fn device(&self, key: &str) -> Option<&DeviceGeo> {
        self.devices.get(key)
    }

    /// Devices with state.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    fn snapshot(&mut self, user: &Text, device: &Text, kind: &str, state: String) -> Record {
        self.clock = now_ms().max(self.clock + 1);
        Record::State(StateSnapshot {
            user: user.clone(),
            device: device.clone(),
            kind: Text::from(kind),
            state,
            updated_at: self.clock,
        })
    }

    /// Sends a device's `state` of `kind` as a snapshot carrying `ack`; a
    /// state that could not be written ([`state_json`]) fails the input
    /// instead: not stored, not acknowledged, so the client retries.
    fn send_state(
        &mut self,
        out: &mut Vec<Message<Record>>,
        key: String,
        (user, device): (&Text, &Text),
        kind: &str,
        state: Option<String>,
        ack: Ack,
    ) {
        match state {
            Some(state) => {
                let s = self.snapshot(user, device, kind, state);
                out.push(Message::new(key, s, ack));
            }
            None => ack.fail(),
        }
    }

    /// Passes an input on, unless only derived records are sent: then its
    /// part of the ack is done here.
    fn pass(&self, msg: Message<Record>, out: &mut Vec<Message<Record>>) {
        if self.derived_only {
            msg.ack.delivered();
        } else {
            out.push(msg);
        }
    }

    /// Handles one record: appends it to `out` (unless only derived
    /// records are sent), then what it caused. A state snapshot given as
    /// input is restored (how a member of a Kafka group picks up the
    /// devices of the partitions it is assigned) and not passed on.
    pub fn process(&mut self, msg: Message<Record>, out: &mut Vec<Message<Record>>) {
        match &msg.value {
            Record::State(s) => {
                self.restore([s.clone()]);
                msg.ack.delivered();
            }
            Record::Position(p) => {
                let key = p.meta.key();
                let dev = self.devices.entry(key.clone()).or_default();
                // Both rules ignore a fix no newer than the last one and
                // advance on any newer one: that alone says whether the
                // state changed.
                let fresh = p.tst > dev.fences.last_tst;
                let mut derived = self.geofencer.evaluate(&key, p, &mut dev.fences);
                let mut finished = Vec::new();
                let fix = otstream_trips::Fix {
                    vel: p.vel.map(f64::from),
                    acc: p.acc.map(f64::from),
                    ..otstream_trips::Fix::new(p.tst, p.lat, p.lon)
                };
                self.detector.on_fix(&mut dev.trip, fix, &mut finished);
                let geofencer = &self.geofencer;
                derived.extend(finished.into_iter().map(|f| {
                    finished_record(&p.meta, f, |lat, lon| {
                        geofencer.place(&key, &p.meta.user, &p.meta.device, lat, lon)
                    })
                }));
                let coalesce = fresh && self.state_interval_ms > 0;
                let state = (fresh && !coalesce).then(|| state_json(&key, &*dev));
                let (user, device) = (p.meta.user.clone(), p.meta.device.clone());
                let ack = msg.ack.clone();
                self.pass(msg, out);
                for r in derived {
                    out.push(Message::new(key.clone(), r, ack.clone()));
                }
                if coalesce {
                    let due = now_ms().saturating_add(self.state_interval_ms);
                    let pending = self.pending.entry(key.clone()).or_insert_with(|| {
                        self.due.push_back((due, key.clone()));
                        Pending {
                            user,
                            device,
                            acks: Vec::new(),
                        }
                    });
                    pending.acks.push(ack);
                } else if let Some(state) = state {
                    self.send_state(out, key, (&user, &device), KIND_GEO, state, ack);
                } else {
                    ack.delivered();
                }
            }
            Record::Waypoint(w) if self.geofencer.on_waypoint(w) => {
                let key = w.meta.key();
                let regions = state_json(&key, &self.geofencer.regions(&key));
                let (user, device) = (w.meta.user.clone(), w.meta.device.clone());
                let ack = msg.ack.clone();
                self.pass(msg, out);
                self.send_state(out, key, (&user, &device), KIND_REGIONS, regions, ack);
            }
            _ => self.pass(msg, out),
        }
    }
}

/// A device's state as stored; `None` (said in the log) when it cannot be
/// written, and then the input is failed rather than an empty state stored
/// in its place: a restart would resume from nothing.
fn state_json(key: &str, state: &impl Serialize) -> Option<String> {
    serde_json::to_string(state)
        .inspect_err(|e| tracing::error!(device = key, error = %e, "cannot serialize the device's state; the input is not acknowledged"))
        .ok()
}

/// The record of what the trip rules finished; a stop is named by the
/// fence it lies in (`place`).
fn finished_record(
    meta: &otstream_model::Meta,
    f: Finished,
    place: impl Fn(f64, f64) -> Option<Text>,
) -> Record {
    match f {
        Finished::Trip(t) => Record::Trip(Trip {
            meta: meta.clone(),
            start: t.start.tst,
            end: t.end.tst,
            start_lat: t.start.lat,
            start_lon: t.start.lon,
            end_lat: t.end.lat,
            end_lon: t.end.lon,
            distance: t.distance_m,
            duration: t.duration_s,
            avg_vel: t.avg_kmh,
            max_vel: t.max_kmh,
            points: t.points,
        }),
        Finished::Stop(s) => Record::Stop(Stop {
            meta: meta.clone(),
            start: s.start.tst,
            end: s.end_tst,
            lat: s.start.lat,
            lon: s.start.lon,
            duration: s.duration_s,
            points: s.points,
            place: place(s.start.lat, s.start.lon),
        }),
    }
}

struct Meters {
    received: Counter,
    sent: Counter,
    derived: [Counter; 3],
    reload_errors: Counter,
}

impl Meters {
    fn new() -> Self {
        let stage = "geofence";
        Meters {
            received: metrics::counter!("otstream_received_events_total", "stage" => stage),
            sent: metrics::counter!("otstream_sent_events_total", "stage" => stage),
            derived: ["transition", "trip", "stop"]
                .map(|t| metrics::counter!("otstream_derived_records_total", "type" => t)),
            reload_errors: metrics::counter!("otstream_errors_total", "stage" => stage, "error_code" => "fences_invalid"),
        }
    }
}

impl Meters {
    /// Sends `out` in order, counting what is derived and what is sent;
    /// false once the output is closed.
    async fn send(&self, out: Vec<Message<Record>>, output: &impl Sender<Record>) -> bool {
        for m in out {
            match &m.value {
                Record::Transition(_) => self.derived[0].increment(1),
                Record::Trip(_) => self.derived[1].increment(1),
                Record::Stop(_) => self.derived[2].increment(1),
                _ => {}
            }
            if output.send(m).await.is_err() {
                return false;
            }
            self.sent.increment(1);
        }
        true
    }
}

/// The fences file's identity on disk, to notice a change.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The geofence stage: the fences loaded, the devices' state restored,
/// built before it runs.
pub struct GeofenceStage {
    config: StageConfig,
    tracker: Tracker,
    stamp: Option<(SystemTime, u64)>,
}

impl GeofenceStage {
    /// Loads the fences named in `config`. The devices' stored state is
    /// given as input, ahead of their records, in every mode (see
    /// [`Tracker::process`]): in one process through
    /// `otstream_bus::Prepended`, over Kafka from the `state` topic.
    pub fn new(config: StageConfig) -> Result<Self, StageError> {
        let path = config.geofence.fences.clone();
        let stamp = path.as_deref().and_then(file_stamp);
        let fences = load_fences(path.as_deref())?;
        metrics::gauge!("otstream_geofence_fences").set(fences.fences().len() as f64);
        let tracker = Tracker::new(&config, Arc::new(fences));
        tracing::info!(fences = ?path, "geofence stage ready");
        Ok(GeofenceStage {
            config,
            tracker,
            stamp,
        })
    }

    /// Runs until the input is closed and drained, or `shutdown` is
    /// cancelled, evaluating every record; a closed output or a failed
    /// batch ends it with the error.
    pub async fn run(
        self,
        mut input: impl Receiver<Record>,
        output: impl Sender<Record>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let GeofenceStage {
            config,
            mut tracker,
            mut stamp,
        } = self;
        let path = config.geofence.fences.clone();
        let meters = Meters::new();
        let fence_gauge = metrics::gauge!("otstream_geofence_fences");
        let device_gauge = metrics::gauge!("otstream_geofence_devices");
        let mut reload =
            tokio::time::interval(Duration::from_millis(config.geofence.reload_ms.max(100)));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let coalescing = tracker.coalescing();
        // Snapshots of devices that went quiet are sent when due, whether or
        // not more input comes.
        let mut flush = tokio::time::interval(Duration::from_millis(
            (config.geofence.state_interval_ms / 4).max(10),
        ));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Message<Record>> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = flush.tick(), if coalescing => {
                    let mut out = Vec::new();
                    tracker.flush_due(now_ms(), false, &mut out);
                    if !meters.send(out, &output).await {
                        return Err(StageError::OutputClosed);
                    }
                    continue;
                }
                _ = reload.tick(), if path.is_some() => {
                    let Some(p) = path.clone() else { continue };
                    let now = file_stamp(&p);
                    if now != stamp {
                        stamp = now;
                        match tokio::task::spawn_blocking(move || load_fences(Some(&p))).await {
                            Ok(Ok(set)) => {
                                tracing::info!(fences = set.fences().len(), "fences file changed; reloaded");
                                fence_gauge.set(set.fences().len() as f64);
                                tracker.set_fences(Arc::new(set));
                            }
                            Ok(Err(e)) => {
                                meters.reload_errors.increment(1);
                                tracing::error!(error = %e, "fences file changed but cannot be used; keeping the fences in use");
                            }
                            Err(e) => return Err(StageError::Thread(e.to_string())),
                        }
                    }
                    continue;
                }
                n = input.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                // Input over: what is pending is durable before the end.
                let mut out = Vec::new();
                tracker.flush_due(now_ms(), true, &mut out);
                meters.send(out, &output).await;
                return Ok(());
            }
            meters.received.increment(n as u64);
            let inputs = std::mem::take(&mut batch);
            // The tracker goes with its batch and comes back with the
            // results.
            let work = move || {
                let mut out = Vec::with_capacity(inputs.len() * 2);
                for m in inputs {
                    tracker.process(m, &mut out);
                }
                tracker.flush_due(now_ms(), false, &mut out);
                (tracker, out)
            };
            // A few microseconds a record: a small batch costs less here than
            // the hand-off to the blocking pool (measured: -10% end to end at
            // 256 clients when every batch went there).
            let (t, out) = if n <= INLINE_BATCH {
                work()
            } else {
                tokio::task::spawn_blocking(work)
                    .await
                    .map_err(|e| StageError::Thread(e.to_string()))?
            };
            tracker = t;
            device_gauge.set(tracker.devices() as f64);
            if !meters.send(out, &output).await {
                return Err(StageError::OutputClosed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use otstream_bus::{Ack, AckStatus, channel};
    use otstream_model::Transport;
    use otstream_model::record::{Meta, Position, Waypoint};

    use super::*;
    use crate::{Fence, Shape};

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
        assert_eq!(types(&out), ["position", "transition", "state"]);
        let Record::State(s) = &out[2].value else {
            panic!()
        };
        assert_eq!((s.kind.as_str(), s.user.as_str()), (KIND_GEO, "jane"));
        let restored: DeviceGeo = serde_json::from_str(&s.state).unwrap();
        assert_eq!(&restored, t.device("jane/phone").unwrap());
        // Delivered only once all three are.
        let mut parts = out.drain(..);
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
        let config = StageConfig {
            derived_only: true,
            geofence: GeofenceConfig {
                state_interval_ms: 1000,
                ..GeofenceConfig::default()
            },
            ..StageConfig::default()
        };
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
        assert_eq!(types(&out), ["transition", "transition"]);
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
        assert!(out.is_empty());
        t.flush_due(now_ms(), true, &mut out);
        assert_eq!(types(&out), ["state"]);
        out.pop().unwrap().ack.fail();
        assert_eq!((wa.await, wb.await), (AckStatus::Failed, AckStatus::Failed));
    }

    #[tokio::test]
    async fn derived_only_sends_what_it_derives_and_restores_state_given_as_input() {
        // A snapshot per fix (state_interval_ms 0), as before coalescing.
        let config = StageConfig {
            derived_only: true,
            geofence: GeofenceConfig {
                state_interval_ms: 0,
                ..GeofenceConfig::default()
            },
            ..StageConfig::default()
        };
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
        assert_eq!(types(&out), ["transition", "state"]);
        let Record::Transition(t) = &out[0].value else {
            panic!()
        };
        assert_eq!(t.event.as_str(), "leave");
        let mut parts = out.drain(..);
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
        for (tst, lat, lon) in [(200, 52.51, 13.4), (300, 48.0, 11.0)] {
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
}
