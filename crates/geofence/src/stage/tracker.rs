//! The evaluation of every device's records: geofence transitions, trips
//! and stops, and the state snapshots that make them resumable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use metrics::Counter;
use otstream_bus::{Ack, Message};
use otstream_model::{Event, EventKind, Near, Record, StateSnapshot, Stop, Text, Trip};
use otstream_trips::places::Places;
use otstream_trips::{Detector, Finished, TripState};
use serde::{Deserialize, Serialize};

use super::clock::{Clock, SystemClock};
use super::{KIND_GEO, KIND_NEAR, KIND_PLACES, KIND_REGIONS, StageConfig};
use crate::events::{EventRules, EventState, started};
use crate::filter::{FilterState, Filters, Reason};
use crate::rules::{RuleState, Rules, Seen};
use crate::{DeviceState, FenceSet, Geofencer, Learned, Region};

/// Everything remembered per device: 392 bytes (80 + 168 + 56 + 80, and
/// a pointer to what the rules remember, when there are rules), plus its
/// key.
///
/// Stored as JSON; each part has a default, so a state stored before a
/// part existed reads back with that part empty (the rules' `r` came with
/// the rules: a device's rules start counting at its first fix after the
/// upgrade).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceGeo {
    /// Fences it is inside.
    #[serde(rename = "f", default)]
    pub fences: DeviceState,
    /// Trip or stay in progress.
    #[serde(rename = "t", default)]
    pub trip: TripState,
    /// What the position filters compare a fix with.
    #[serde(rename = "q", default)]
    pub filter: FilterState,
    /// Silence and battery.
    #[serde(rename = "e", default)]
    pub events: EventState,
    /// The operator's rules.
    #[serde(rename = "r", default, skip_serializing_if = "RuleState::is_empty")]
    pub rules: RuleState,
}

/// The geofence and trip evaluation for every device, with its state.
#[derive(Debug)]
pub struct Tracker {
    geofencer: Geofencer,
    detector: Detector,
    filters: Filters,
    rules: EventRules,
    /// The operator's rules, bound to the fences in use.
    rule_set: Rules,
    /// Fixes set aside, per [`Reason`] (in [`Reason::ALL`] order).
    filtered: [Counter; Reason::ALL.len()],
    devices: HashMap<String, DeviceGeo>,
    /// Each device's places, apart from [`DeviceGeo`]: they change only
    /// when a stop ends, so they are stored only then.
    places: HashMap<String, Places>,
    /// A stop within this of a place is a visit of it, metres.
    place_radius_m: f64,
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
    /// Devices whose own regions changed in this batch, with the acks of
    /// the waypoints that changed them: one snapshot each at its end,
    /// however many waypoints a message or batch held.
    regions_changed: HashMap<String, Pending>,
    /// Whether state snapshots are made at all: not when nothing is
    /// stored (a back-test, `otstream rules test`).
    snapshots: bool,
    /// Regions past the limit in this batch, per device (said once each).
    regions_refused: HashMap<String, u64>,
    too_many_regions: Counter,
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
            filters: Filters::new(config.filters),
            rules: config.events,
            rule_set: Rules::none(),
            filtered: Reason::ALL.map(
                |r| metrics::counter!("otstream_filtered_positions_total", "reason" => r.as_str()),
            ),
            devices: HashMap::new(),
            places: HashMap::new(),
            place_radius_m: config.trips.place_radius_m,
            derived_only: config.derived_only,
            clock,
            last_updated: 0,
            state_interval_ms: if config.derived_only || config.coalesce_state {
                i64::try_from(config.geofence.state_interval_ms).unwrap_or(i64::MAX)
            } else {
                0
            },
            pending: HashMap::new(),
            due: VecDeque::new(),
            snapshots: true,
            regions_changed: HashMap::new(),
            regions_refused: HashMap::new(),
            too_many_regions: metrics::counter!("otstream_rejected_total", "stage" => "geofence", "reason" => "too_many_regions"),
        }
    }

    /// Makes no state snapshots: the state lives only in memory, for an
    /// evaluation whose results are not stored (a back-test).
    pub fn without_snapshots(mut self) -> Self {
        self.snapshots = false;
        self
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
    /// `all`), each with the joined acks of the fixes it accounts for, and
    /// every device's changed regions.
    pub fn flush_due(&mut self, now: i64, all: bool, out: &mut Vec<Message<Record>>) {
        for (key, p) in std::mem::take(&mut self.regions_changed) {
            let regions = state_json(&key, &self.geofencer.regions(&key));
            let ack = Ack::join(p.acks);
            self.send_state(out, key, (&p.user, &p.device), KIND_REGIONS, regions, ack);
        }
        for (key, n) in self.regions_refused.drain() {
            tracing::warn!(device = %key, refused = n, "waypoints past geofence.max_regions_per_device: stored, not evaluated");
        }
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
            let state = self.geo_json(&key);
            let ack = Ack::join(p.acks);
            self.send_state(out, key, (&p.user, &p.device), KIND_GEO, state, ack);
        }
    }

    /// Replaces the operator fences; device state is kept, and the rules
    /// are bound to the new fences.
    pub fn set_fences(&mut self, fences: Arc<FenceSet>) {
        self.geofencer.set_fences(fences);
        self.bind_rules();
    }

    /// Replaces the rules; what devices remember of rules still in the set
    /// is kept (by name), of the others forgotten at their next fix.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rule_set = rules;
        self.bind_rules();
    }

    fn bind_rules(&mut self) {
        for (rule, fence) in self.rule_set.bind(self.geofencer.fences()) {
            tracing::warn!(%rule, %fence, "a rule names a fence the fences file does not have");
        }
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
                    .map(|mut d| {
                        d.events.name(&s.user, &s.device);
                        self.devices.insert(key.clone(), d);
                        // Over Kafka the places and regions come with it.
                        if let Ok(extra) = serde_json::from_str::<Extras>(&s.state) {
                            if let Some(p) = extra.places {
                                self.places.insert(key.clone(), p);
                            }
                            if let Some(r) = extra.regions {
                                self.geofencer.restore_regions(&key, r);
                            }
                        }
                    })
                    .is_ok(),
                KIND_PLACES => serde_json::from_str::<Places>(&s.state)
                    .map(|p| {
                        self.places.insert(key.clone(), p);
                    })
                    .is_ok(),
                KIND_REGIONS => serde_json::from_str::<Vec<Region>>(&s.state)
                    .map(|r| self.geofencer.restore_regions(&key, r))
                    .is_ok(),
                // A proximity rule's, on the same partition of `state` over
                // Kafka: the proximity stage's to restore.
                KIND_NEAR => continue,
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

    /// The places of `user/device`.
    pub fn places(&self, key: &str) -> Option<&Places> {
        self.places.get(key)
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
            Record::Position(_) => self.position(msg, out),
            Record::Transition(_) => self.transition(msg, out),
            Record::Waypoint(w) => match self.geofencer.on_waypoint(w) {
                Learned::Region if self.coalescing() => {
                    // Over Kafka the regions go with the device's state (the
                    // compacted `state` topic keeps one value a device): its
                    // next snapshot carries them, and this waypoint's ack.
                    let key = w.meta.key();
                    let who = (w.meta.user.clone(), w.meta.device.clone());
                    self.devices.entry(key.clone()).or_default();
                    let ack = msg.ack.clone();
                    self.pass(msg, out);
                    self.settle(out, key, who, true, ack);
                }
                Learned::Region => {
                    // Its regions are snapshotted once, when the batch ends
                    // (flush), and this waypoint is acknowledged with them.
                    let pending =
                        self.regions_changed
                            .entry(w.meta.key())
                            .or_insert_with(|| Pending {
                                user: w.meta.user.clone(),
                                device: w.meta.device.clone(),
                                acks: Vec::new(),
                            });
                    pending.acks.push(msg.ack.clone());
                    self.pass(msg, out);
                }
                Learned::Full => {
                    self.too_many_regions.increment(1);
                    *self.regions_refused.entry(w.meta.key()).or_default() += 1;
                    self.pass(msg, out);
                }
                Learned::Nothing => self.pass(msg, out),
            },
            _ => self.pass(msg, out),
        }
    }
}

impl Tracker {
    /// A transition a device reports: stored as it is, but one for its copy
    /// of a fence the server pushed to it is marked `source = "pushed"`
    /// (and raises no event: the server's own evaluation of the fence did).
    fn transition(&mut self, mut msg: Message<Record>, out: &mut Vec<Message<Record>>) {
        if let Record::Transition(t) = &mut msg.value
            && t.source == "device"
            && self.geofencer.is_pushed_copy(
                (&t.meta.user, &t.meta.device),
                t.rid.as_deref(),
                t.wtst,
            )
        {
            t.source = Text::from("pushed");
            metrics::counter!("otstream_pushed_transitions_total").increment(1);
        }
        self.pass(msg, out);
    }

    /// A position: the filters' verdict; for a fix taken, the transitions,
    /// trips, stops and events it causes, then the device's state.
    fn position(&mut self, mut msg: Message<Record>, out: &mut Vec<Message<Record>>) {
        let Record::Position(p) = &mut msg.value else {
            return self.pass(msg, out);
        };
        let key = p.meta.key();
        let now_s = self.clock.now_ms().div_euclid(1000);
        let dev = self.devices.entry(key.clone()).or_default();
        if let Some(reason) = self.filters.check(&mut dev.filter, p, now_s) {
            self.filtered[reason as usize].increment(1);
            p.filtered = Some(Text::from(reason.as_str()));
            if self.derived_only {
                // Over Kafka the sink has this fix from `positions`,
                // unflagged: this copy, a millisecond later, is the version
                // both stores keep (latest `received_at` wins).
                p.meta.received_at += 1;
            }
            // Only a jump changes what the filters remember (the candidate
            // the next fix may confirm).
            let changed = reason == Reason::Speed;
            let (user, device) = (p.meta.user.clone(), p.meta.device.clone());
            let ack = msg.ack.clone();
            out.push(msg);
            return self.settle(out, key, (user, device), changed, ack);
        }
        // Both rules ignore a fix no newer than the last one and advance on
        // any newer one: that alone says whether the state changed.
        let fresh = p.tst > dev.fences.last_tst;
        let mut derived = self.geofencer.evaluate(&key, p, &mut dev.fences);
        let mut finished = Vec::new();
        let fix = otstream_trips::Fix {
            vel: p.vel.map(f64::from),
            acc: p.acc.map(f64::from),
            ..otstream_trips::Fix::new(p.tst, p.lat, p.lon)
        };
        let (trip_before, stop_before) = (
            self.detector.open_trip(&dev.trip).map(|f| f.tst),
            self.detector.open_stop(&dev.trip).map(|f| f.tst),
        );
        self.detector.on_fix(&mut dev.trip, fix, &mut finished);
        let geofencer = &self.geofencer;
        let place = |lat, lon| geofencer.place(&key, &p.meta.user, &p.meta.device, lat, lon);
        derived.extend(
            finished
                .into_iter()
                .map(|f| finished_record(&p.meta, f, place)),
        );
        let mut visited = false;
        for r in &mut derived {
            if let Record::Stop(s) = r {
                let places = self.places.entry(key.clone()).or_default();
                let at = (s.start, s.end);
                s.place_id = Some(places.visit(self.place_radius_m, at, s.lat, s.lon));
                visited = true;
            }
        }
        if fresh && self.rules.enabled {
            let mut events: Vec<Event> = derived.iter().filter_map(Event::of_record).collect();
            if let Some(s) = self.detector.open_stop(&dev.trip)
                && stop_before != Some(s.tst)
            {
                let at = place(s.lat, s.lon);
                events.push(started(EventKind::StopStarted, &p.meta, &s, at));
            }
            if let Some(t) = self.detector.open_trip(&dev.trip)
                && trip_before != Some(t.tst)
            {
                events.push(started(EventKind::TripStarted, &p.meta, &t, None));
            }
            let prev = dev.events.last_fix();
            self.rules.on_fix(&mut dev.events, p, &mut events);
            if !self.rule_set.is_empty() || !dev.rules.is_empty() {
                let seen = Seen {
                    fix: p,
                    inside: &dev.fences.inside,
                    stop_since: self.detector.open_stop(&dev.trip).map(|s| s.tst),
                    prev,
                };
                let name = |k| geofencer.fence_name(&key, k);
                self.rule_set
                    .evaluate(&mut dev.rules, seen, &name, &mut events);
            }
            derived.extend(events.into_iter().map(Record::Event));
            // Proximity compares devices: the fix goes on to each rule that
            // compares this device, keyed by the rule (the proximity stage).
            if self.rule_set.has_near() {
                derived.extend(self.rule_set.near_rules(&p.meta.user, &p.meta.device).map(
                    |rule| {
                        Record::Near(Near {
                            rule: rule.clone(),
                            fix: p.clone(),
                        })
                    },
                ));
            }
        }
        let (user, device) = (p.meta.user.clone(), p.meta.device.clone());
        let ack = msg.ack.clone();
        self.pass(msg, out);
        for r in derived {
            let key = match &r {
                Record::Near(n) => Near::key(&n.rule),
                _ => key.clone(),
            };
            out.push(Message::new(key, r, ack.clone()));
        }
        // Over Kafka (coalescing) the places go with the device's state
        // (`geo_json`): the compacted `state` topic keeps one value per
        // device. In one process they are a row of their own, written only
        // when a stop changed them.
        if visited && self.snapshots && !self.coalescing() {
            // Stored with the stops that changed them, under the same ack.
            let places = self.places.get(&key).and_then(|p| state_json(&key, p));
            let places_ack = ack.clone();
            self.send_state(
                out,
                key.clone(),
                (&user, &device),
                KIND_PLACES,
                places,
                places_ack,
            );
        }
        self.settle(out, key, (user, device), fresh, ack);
    }

    /// Settles the input's `ack` once the device's state is stored: with
    /// a snapshot now or with the next coalesced one when the state
    /// `changed`, at once when it did not.
    fn settle(
        &mut self,
        out: &mut Vec<Message<Record>>,
        key: String,
        (user, device): (Text, Text),
        changed: bool,
        ack: Ack,
    ) {
        if !changed || !self.snapshots {
            return ack.delivered();
        }
        if self.state_interval_ms > 0 {
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
            return;
        }
        let state = self.geo_json(&key);
        self.send_state(out, key, (&user, &device), KIND_GEO, state, ack);
    }

    /// `silent` for every device whose last fix taken is older than the
    /// rules allow, each followed by its state (which remembers it was
    /// said): derived from the clock, not from an input, so nothing waits
    /// on them.
    pub fn sweep_silent(&mut self, out: &mut Vec<Message<Record>>) {
        if !self.rules.enabled || self.rules.silent_after_s == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let rules = self.rules;
        let rule_set = &self.rule_set;
        let silent: Vec<(String, Vec<Event>)> = self
            .devices
            .iter_mut()
            .filter_map(|(k, d)| {
                let mut events = vec![rules.silence(&mut d.events, now)?];
                rule_set.on_events(&mut d.rules, &mut events);
                Some((k.clone(), events))
            })
            .collect();
        for (key, events) in silent {
            let (user, device) = (events[0].meta.user.clone(), events[0].meta.device.clone());
            for e in events {
                out.push(Message::new(key.clone(), Record::Event(e), Ack::none()));
            }
            let state = self.geo_json(&key);
            self.send_state(out, key, (&user, &device), KIND_GEO, state, Ack::none());
        }
    }
}

/// The places and regions in a device's state over Kafka, beside
/// [`DeviceGeo`]'s members.
#[derive(Deserialize)]
struct Extras {
    #[serde(rename = "p", default)]
    places: Option<Places>,
    #[serde(rename = "w", default)]
    regions: Option<Vec<Region>>,
}

impl Tracker {
    /// `key`'s state as stored: its [`DeviceGeo`], with its places and its
    /// own regions (always, so that none left clears them) when snapshots
    /// are coalesced (over Kafka, where the compacted `state` topic keeps
    /// one value per device).
    fn geo_json(&self, key: &str) -> Option<String> {
        #[derive(Serialize)]
        struct Geo<'a> {
            #[serde(flatten)]
            geo: &'a DeviceGeo,
            #[serde(rename = "p", skip_serializing_if = "Option::is_none")]
            places: Option<&'a Places>,
            #[serde(rename = "w")]
            regions: Vec<Region>,
        }
        let geo = self.devices.get(key)?;
        if !self.coalescing() {
            return state_json(key, geo);
        }
        let places = self.places.get(key).filter(|p| !p.is_empty());
        let regions = self.geofencer.regions(key);
        state_json(
            key,
            &Geo {
                geo,
                places,
                regions,
            },
        )
    }
}

/// A device's state as stored; `None` (said in the log) when it cannot be
/// written, and then the input is failed rather than an empty state stored
/// in its place: a restart would resume from nothing.
fn state_json(key: &str, state: &impl Serialize) -> Option<String> {
    // Sized for a typical state (~400 bytes) up front: growing from empty
    // reallocated six times per fix.
    let mut buf = Vec::with_capacity(512);
    serde_json::to_writer(&mut buf, state)
        .inspect_err(|e| tracing::error!(device = key, error = %e, "cannot serialize the device's state; the input is not acknowledged"))
        .ok()?;
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).ok()
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
            start_place: None,
            start_cc: None,
            end_place: None,
            end_cc: None,
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
            locality: None,
            cc: None,
            place_id: None,
        }),
    }
}
