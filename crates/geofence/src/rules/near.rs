//! Proximity: two devices a rule compares come within its `within_m` of
//! each other (an event with `near: true`), then move apart past its
//! `leave_m` (`near: false`): the distance between them hysteresis, so
//! that two vans parked at the edge do not flap.
//!
//! Pure, like the rest of the rules, but unlike them not per device: the
//! state ([`NearState`]) is the rule's, with every device's last fix and
//! the pairs that are near. The geofence stage sends each fix taken of a
//! device a proximity rule applies to as a [`otstream_model::Near`]
//! keyed by the rule, so that every fix the rule compares comes through
//! one partition in order, whatever partitions the devices' own fixes are
//! on; the proximity stage keeps one `NearState` a rule and evaluates
//! them here ([`Rules::near`]).
//!
//! A fix is compared with the last fix of every other device taken at
//! most `fresh_s` apart from it. A pair with a device that went quiet
//! (its last fix further apart than that), outside the rule's schedule,
//! or with a device the rule no longer names is forgotten without an
//! event: it comes near again at the next fix that finds it near (a pair
//! near when the period opens fires at its first fix inside it).
//! `debounce_s` suppresses a pair's coming near again that soon after it
//! last did (and the parting that would follow it). The event is the
//! device whose fix decided it, with the other as `peer`; its id names
//! both, the direction, the fix and the rule.
//!
//! Bounds, against a hostile or careless fleet: [`MAX_DEVICES`] a rule
//! (a device went quiet by the server's clock, never by its own fixes'
//! times, makes room), [`MAX_PAIRS`], and [`MAX_EVENTS_PER_FIX`]. A fix
//! costs a pass over the rule's devices.

use std::collections::HashMap;

use otstream_model::{Event, EventKind, Position, Text};
use serde::{Deserialize, Serialize};

use super::{Kind, Rules};

/// Largest `within_m`: beyond it, a rule is not about being near.
pub const MAX_WITHIN_M: f64 = 100_000.0;

/// Most devices one proximity rule compares; a device past it is
/// compared only once a device that stopped reporting (by the server's
/// clock, not the fixes' own times) makes room
/// (`otstream_rule_entries_refused_total` counts the refusals). With
/// [`MAX_PAIRS`] it keeps a rule's stored state under a Kafka message's
/// 1 MB.
pub const MAX_DEVICES: usize = 2_000;

/// Most pairs one proximity rule remembers (near, or within their
/// debounce); a pair past it is not told, and counted.
pub const MAX_PAIRS: usize = 10_000;

/// Most events one fix fires (a van arriving among 500 in a depot):
/// the pairs past it come near untold, and are counted.
pub const MAX_EVENTS_PER_FIX: usize = 100;

/// Metres a degree of latitude spans: what rules out a pair without the
/// full distance.
const M_PER_DEG_LAT: f64 = 111_195.0;

/// A proximity rule's distances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distances {
    /// A pair comes near within this (metres).
    pub within_m: f64,
    /// A pair near parts beyond this (metres, at least `within_m`).
    pub leave_m: f64,
    /// Fixes further apart in time than this are not compared (seconds).
    pub fresh_s: i64,
}

/// A device's last fix, as the rule remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Last {
    #[serde(rename = "k")]
    key: Text,
    #[serde(rename = "t")]
    tst: i64,
    #[serde(rename = "a")]
    lat: f64,
    #[serde(rename = "o")]
    lon: f64,
    /// When the server received it, UNIX s: what says the device went
    /// quiet (a fix's own time is the phone's to choose).
    #[serde(rename = "s", default)]
    seen: i64,
}

/// A pair's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Pair {
    /// Near now.
    #[serde(rename = "n", default)]
    near: bool,
    /// Its coming near was told (not debounced): its parting will be.
    #[serde(rename = "x", default)]
    told: bool,
    /// When it last came near and was told, UNIX s (the debounce).
    #[serde(rename = "l", default)]
    last: i64,
}

/// What one proximity rule remembers. Serialized for the `state` topic
/// and `device_state` (kind `proximity`, under [`otstream_model::Near::key`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct NearState {
    devices: Vec<Last>,
    index: HashMap<Text, u32>,
    /// Keyed by the two devices' slots, lower first.
    pairs: HashMap<(u32, u32), Pair>,
}

/// The stored form: pairs by the devices' slots in `d`.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(rename = "d", default)]
    devices: Vec<Last>,
    #[serde(rename = "p", default)]
    pairs: Vec<(u32, u32, Pair)>,
}

impl From<Stored> for NearState {
    /// A stored state as it was written, made safe to use whatever it
    /// holds: a key once, at most the bounds, pairs of slots that exist.
    fn from(s: Stored) -> Self {
        let mut state = NearState::default();
        for d in s.devices.into_iter().take(MAX_DEVICES) {
            if !state.index.contains_key(&d.key) {
                state
                    .index
                    .insert(d.key.clone(), state.devices.len() as u32);
                state.devices.push(d);
            }
        }
        let n = state.devices.len() as u32;
        state.pairs = s
            .pairs
            .into_iter()
            .filter(|(a, b, _)| a < b && *b < n)
            .take(MAX_PAIRS)
            .map(|(a, b, p)| ((a, b), p))
            .collect();
        state
    }
}

impl From<NearState> for Stored {
    fn from(s: NearState) -> Self {
        let mut pairs: Vec<(u32, u32, Pair)> =
            s.pairs.into_iter().map(|((a, b), p)| (a, b, p)).collect();
        pairs.sort_unstable_by_key(|(a, b, _)| (*a, *b));
        Stored {
            devices: s.devices,
            pairs,
        }
    }
}

impl NearState {
    /// Devices remembered.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Pairs near now.
    pub fn pairs_near(&self) -> usize {
        self.pairs.values().filter(|p| p.near).count()
    }

    /// The slot of `key`, made (or taken from the device heard from
    /// least recently, if that was before `quiet_before`) if there is
    /// room.
    fn slot(&mut self, key: &str, quiet_before: i64) -> Option<u32> {
        if let Some(&i) = self.index.get(key) {
            return Some(i);
        }
        let fresh = Last {
            key: Text::from(key),
            tst: i64::MIN,
            lat: 0.0,
            lon: 0.0,
            seen: i64::MIN,
        };
        if self.devices.len() < MAX_DEVICES {
            let i = self.devices.len() as u32;
            self.devices.push(fresh);
            self.index.insert(Text::from(key), i);
            return Some(i);
        }
        let (i, _) = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.seen < quiet_before)
            .min_by_key(|(_, d)| d.seen)?;
        let i = i as u32;
        let old = std::mem::replace(&mut self.devices[i as usize], fresh);
        self.index.remove(&old.key);
        self.index.insert(Text::from(key), i);
        self.pairs.retain(|(a, b), _| *a != i && *b != i);
        Some(i)
    }
}

impl Rules {
    /// The names of the proximity rules that compare the device `user/device`:
    /// the geofence stage sends each of its fixes taken to each of them.
    pub fn near_rules<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
    ) -> impl Iterator<Item = &'a Text> + 'a {
        self.rules
            .iter()
            .filter(move |r| matches!(r.kind, Kind::Proximity(_)) && r.applies(user, device))
            .map(|r| &r.name)
    }

    /// Whether some rule compares devices.
    pub fn has_near(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.kind, Kind::Proximity(_)))
    }

    /// Evaluates the fix `p` under the proximity rule `rule` with its
    /// state, appending what fires to `events`; false when the state is
    /// as it was (a fix no newer than the device's last, a rule no longer
    /// in the set, a device with no room).
    pub fn near(
        &self,
        rule: &str,
        state: &mut NearState,
        p: &Position,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(r) = self.rules.iter().find(|r| r.name == rule) else {
            return false;
        };
        let Kind::Proximity(d) = r.kind else {
            return false;
        };
        if !r.applies(&p.meta.user, &p.meta.device) {
            return false;
        }
        let key = p.meta.key();
        let seen = p.meta.received_at.div_euclid(1000);
        let Some(me) = state.slot(&key, seen.saturating_sub(d.fresh_s)) else {
            metrics::counter!("otstream_rule_entries_refused_total").increment(1);
            return false;
        };
        let mine = &mut state.devices[me as usize];
        if p.tst <= mine.tst {
            return false;
        }
        (mine.tst, mine.lat, mine.lon, mine.seen) = (p.tst, p.lat, p.lon, seen);
        let active = r.active(p.tst);
        let here = otstream_trips::Fix::new(p.tst, p.lat, p.lon);
        let mut told = 0;
        for (j, other) in state.devices.iter().enumerate() {
            let j = j as u32;
            if j == me {
                continue;
            }
            let pair_key = (me.min(j), me.max(j));
            // Outside the schedule, with a device that went quiet or one
            // the rule no longer names (a reloaded file), the pair is
            // forgotten untold: a pair near when it counts again comes
            // near at its first fix.
            let counts = active
                && other.tst.abs_diff(p.tst) <= d.fresh_s.unsigned_abs()
                && other
                    .key
                    .split_once('/')
                    .is_some_and(|(u, dv)| r.applies(u, dv));
            if !counts {
                if state
                    .pairs
                    .get(&pair_key)
                    .is_some_and(|pair| pair.near || !debouncing(pair, p.tst, r.debounce_s))
                {
                    state.pairs.remove(&pair_key);
                }
                continue;
            }
            // Further apart in latitude alone than `leave_m`: far, and only
            // a pair remembered has anything to say about it.
            let far_for_sure = (other.lat - p.lat).abs() * M_PER_DEG_LAT > d.leave_m;
            if far_for_sure && !state.pairs.contains_key(&pair_key) {
                continue;
            }
            let dist = here.distance_m(&otstream_trips::Fix::new(other.tst, other.lat, other.lon));
            let Some(pair) = state.pairs.get_mut(&pair_key) else {
                if dist <= d.within_m {
                    if state.pairs.len() >= MAX_PAIRS {
                        metrics::counter!("otstream_rule_entries_refused_total").increment(1);
                        continue;
                    }
                    let mut pair = Pair::default();
                    told += come_near(&mut pair, r, p, &other.key, dist, told, events);
                    state.pairs.insert(pair_key, pair);
                }
                continue;
            };
            if !pair.near && dist <= d.within_m {
                told += come_near(pair, r, p, &other.key, dist, told, events);
            } else if pair.near && dist > d.leave_m {
                pair.near = false;
                if std::mem::take(&mut pair.told) {
                    events.push(near_event(&r.name, p, &other.key, dist, false));
                }
            }
            if !pair.near && !debouncing(pair, p.tst, r.debounce_s) {
                state.pairs.remove(&pair_key);
            }
        }
        true
    }
}

/// Whether `pair`'s last coming near still debounces a new one at `tst`.
fn debouncing(pair: &Pair, tst: i64, debounce_s: i64) -> bool {
    pair.last != 0 && tst - pair.last < debounce_s
}

/// The pair comes near at `p`: told unless debounced or past the fix's
/// [`MAX_EVENTS_PER_FIX`] (`told` so far); returns 1 when told.
fn come_near(
    pair: &mut Pair,
    r: &super::Rule,
    p: &Position,
    peer: &Text,
    dist: f64,
    told: usize,
    events: &mut Vec<Event>,
) -> usize {
    pair.near = true;
    pair.told = !debouncing(pair, p.tst, r.debounce_s);
    if pair.told && told >= MAX_EVENTS_PER_FIX {
        metrics::counter!("otstream_rule_entries_refused_total").increment(1);
        pair.told = false;
    }
    if !pair.told {
        return 0;
    }
    pair.last = p.tst;
    events.push(near_event(&r.name, p, peer, dist, true));
    1
}

/// The event of a pair coming near (or parting) at `p`'s fix.
fn near_event(rule: &Text, p: &Position, peer: &Text, dist: f64, near: bool) -> Event {
    // The peer and the direction in the id (as a fence would be): one fix
    // can bring a device near several others at once, and a replay
    // against an older state must not make a parting the coming near.
    let at = format!("{peer}:{}", if near { "near" } else { "apart" });
    let e = Event::new(
        EventKind::Proximity,
        p.meta.clone(),
        p.tst,
        (p.lat, p.lon),
        Some(Text::from(at)),
    )
    .for_rule(rule);
    Event {
        fence: None,
        peer: Some(peer.clone()),
        distance: Some(dist.round()),
        near: Some(near),
        ..e
    }
}
