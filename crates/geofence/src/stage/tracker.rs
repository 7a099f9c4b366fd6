//! The evaluation of every device's records: geofence transitions, trips
//! and stops, and the state snapshots that make them resumable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use otstream_bus::{Ack, Message};
use otstream_model::{Record, StateSnapshot, Stop, Text, Trip};
use otstream_trips::{Detector, Finished, TripState};
use serde::{Deserialize, Serialize};

use super::clock::{Clock, SystemClock};
use super::{KIND_GEO, KIND_REGIONS, StageConfig};
use crate::{DeviceState, FenceSet, Geofencer, Region};

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
    /// Where the time is read.
    clock: Arc<dyn Clock>,
    /// Last `updated_at` written: state versions never go back, even if
    /// the wall clock does.
    last_updated: i64,
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
    /// A tracker over `fences` with no device state, on the system clock.
    pub fn new(config: &StageConfig, fences: Arc<FenceSet>) -> Self {
        Self::with_clock(config, fences, Arc::new(SystemClock))
    }

    /// A tracker over `fences` with no device state, reading `clock`.
    pub fn with_clock(config: &StageConfig, fences: Arc<FenceSet>, clock: Arc<dyn Clock>) -> Self {
        Self {
            geofencer: Geofencer::new(config.geofence.clone(), fences),
            detector: Detector::new(config.trips),
            devices: HashMap::new(),
            derived_only: config.derived_only,
            clock,
            last_updated: 0,
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

    /// Sends the snapshots due now on its clock (every pending one with
    /// `all`): see [`Tracker::flush_due`].
    pub fn flush(&mut self, all: bool, out: &mut Vec<Message<Record>>) {
        let now = self.clock.now_ms();
        self.flush_due(now, all, out);
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
        self.last_updated = self.clock.now_ms().max(self.last_updated + 1);
        Record::State(StateSnapshot {
            user: user.clone(),
            device: device.clone(),
            kind: Text::from(kind),
            state,
            updated_at: self.last_updated,
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
                    let due = self.clock.now_ms().saturating_add(self.state_interval_ms);
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
