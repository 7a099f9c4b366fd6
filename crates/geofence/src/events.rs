//! The events a device's fixes cause beyond transitions, trips and stops:
//! a battery running low, a device going silent and coming back.
//!
//! Pure: each rule reads a taken fix (or the time, for silence) and the
//! device's [`EventState`], which the geofence stage persists with the rest
//! of its state, so a restart neither repeats nor misses one. Each fires
//! once per crossing: a battery is low again only after it rose
//! [`BATTERY_HYSTERESIS`] points above the limit, a device is silent again
//! only after it came back.

use otstream_model::{Event, EventKind, Meta, Position, Text, Transport};
use serde::{Deserialize, Serialize};

/// Points above the limit a battery must rise to be low again later:
/// without it, a level wobbling around the limit would fire each time.
pub const BATTERY_HYSTERESIS: i32 = 5;

/// The rules' knobs, from `[events]` (checked with the rest of that
/// section, `otstream_events::EventsConfig::validate`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct EventRules {
    /// Derive events at all (transitions, trips and stops are still
    /// stored when off).
    pub enabled: bool,
    /// A device with no fix for this long is silent, s; 0 is off.
    pub silent_after_s: u64,
    /// A battery below this level is low, percent; 0 is off.
    pub battery_low_percent: i32,
}

impl Default for EventRules {
    fn default() -> Self {
        EventRules {
            enabled: true,
            silent_after_s: 3600,
            battery_low_percent: 15,
        }
    }
}

/// The last fix taken, as the rules remember it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Last(i64, f64, f64);

/// What the rules remember of a device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventState {
    /// When the last fix taken arrived, ms (its `received_at`).
    #[serde(rename = "r", default)]
    seen_ms: i64,
    /// The last fix taken: time and place.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    last: Option<Last>,
    /// Said silent, not back yet.
    #[serde(rename = "s", default, skip_serializing_if = "std::ops::Not::not")]
    silent: bool,
    /// Said low, not recovered yet.
    #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
    low: bool,
    /// The tracker id and transport of its last fix, for the silence.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    tid: Option<Text>,
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    transport: Option<Transport>,
    /// The device (not stored: the snapshot names it, see
    /// [`EventState::name`]).
    #[serde(skip)]
    name: Option<(Text, Text)>,
}

/// Equal when what is stored is: the name comes from the snapshot.
impl PartialEq for EventState {
    fn eq(&self, o: &Self) -> bool {
        (
            self.seen_ms,
            self.last,
            self.silent,
            self.low,
            &self.tid,
            self.transport,
        ) == (o.seen_ms, o.last, o.silent, o.low, &o.tid, o.transport)
    }
}

impl EventState {
    /// The last fix taken: time, latitude, longitude.
    pub fn last_fix(&self) -> Option<(i64, f64, f64)> {
        self.last.map(|Last(t, lat, lon)| (t, lat, lon))
    }

    /// Names the device (after a restore), for the silence to come.
    pub fn name(&mut self, user: &Text, device: &Text) {
        self.name
            .get_or_insert_with(|| (user.clone(), device.clone()));
    }
}

impl EventRules {
    /// The events a fix taken, newer than the last one, causes: `back`
    /// after silence, `battery_low` on crossing the limit.
    pub fn on_fix(&self, state: &mut EventState, p: &Position, out: &mut Vec<Event>) {
        state.seen_ms = state.seen_ms.max(p.meta.received_at);
        state.last = Some(Last(p.tst, p.lat, p.lon));
        state.name(&p.meta.user, &p.meta.device);
        state.tid.clone_from(&p.meta.tid);
        state.transport = Some(p.meta.transport);
        if !self.enabled {
            return;
        }
        if std::mem::take(&mut state.silent) {
            out.push(Event::new(
                EventKind::Back,
                p.meta.clone(),
                p.tst,
                (p.lat, p.lon),
                None,
            ));
        }
        let Some(batt) = p.batt else { return };
        if self.battery_low_percent > 0 && batt < self.battery_low_percent && !state.low {
            state.low = true;
            out.push(Event {
                batt: Some(batt),
                ..Event::new(
                    EventKind::BatteryLow,
                    p.meta.clone(),
                    p.tst,
                    (p.lat, p.lon),
                    None,
                )
            });
        } else if batt >= self.battery_low_percent + BATTERY_HYSTERESIS {
            state.low = false;
        }
    }

    /// `silent` if the device's last fix taken arrived more than
    /// `silent_after_s` before `now_ms`, and it was not said yet. The
    /// event is at that fix, so its id is the same whenever it is noticed.
    pub fn silence(&self, state: &mut EventState, now_ms: i64) -> Option<Event> {
        if !self.enabled || self.silent_after_s == 0 || state.silent {
            return None;
        }
        let (Some(Last(tst, lat, lon)), Some((user, device))) = (state.last, state.name.as_ref())
        else {
            return None;
        };
        let after_ms = i64::try_from(self.silent_after_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(state.seen_ms) <= after_ms {
            return None;
        }
        state.silent = true;
        let meta = Meta {
            user: user.clone(),
            device: device.clone(),
            tid: state.tid.clone(),
            received_at: now_ms,
            transport: state.transport.unwrap_or(Transport::Http),
            topic: None,
        };
        Some(Event::new(EventKind::Silent, meta, tst, (lat, lon), None))
    }
}

/// `trip_started` or `stop_started` at `start`, the departure or arrival
/// the trip rules estimated.
pub fn started(
    kind: EventKind,
    meta: &Meta,
    start: &otstream_trips::Fix,
    place: Option<Text>,
) -> Event {
    let span = otstream_model::Span {
        start: start.tst,
        end: None,
        distance: None,
        points: None,
    };
    let (trip, stop) = match kind {
        EventKind::TripStarted => (Some(span), None),
        _ => (None, Some(span)),
    };
    Event {
        trip,
        stop,
        ..Event::new(kind, meta.clone(), start.tst, (start.lat, start.lon), place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otstream_model::Transport;

    fn fix(tst: i64, batt: Option<i32>, received_at: i64) -> Position {
        let meta = Meta {
            user: "u".into(),
            device: "d".into(),
            tid: None,
            received_at,
            transport: Transport::Http,
            topic: None,
        };
        Position {
            batt,
            ..Position::at(meta, tst, 45.0, 4.0)
        }
    }

    #[test]
    fn battery_fires_once_per_crossing_and_silence_once_per_gap() {
        let rules = EventRules::default();
        let mut state = EventState::default();
        let mut out = Vec::new();
        let levels = [40, 14, 12, 16, 19, 14, 21, 9];
        for (i, b) in levels.into_iter().enumerate() {
            let t = 1_000 + i as i64 * 60;
            rules.on_fix(&mut state, &fix(t, Some(b), t * 1000), &mut out);
        }
        let got: Vec<(EventKind, i64, Option<i32>)> =
            out.iter().map(|e| (e.kind, e.tst, e.batt)).collect();
        // 16 and 19 are not 15 + 5: still low; 21 is.
        assert_eq!(
            got,
            [
                (EventKind::BatteryLow, 1_060, Some(14)),
                (EventKind::BatteryLow, 1_420, Some(9))
            ]
        );
        assert_eq!(out[0].id, "battery_low:u/d:1060");

        let seen = 1_420_000;
        assert_eq!(rules.silence(&mut state, seen + 3_600_000), None);
        let silent = rules.silence(&mut state, seen + 3_600_001);
        let silent = silent.map(|e| (e.kind, e.tst, e.id));
        assert_eq!(
            silent,
            Some((EventKind::Silent, 1_420, "silent:u/d:1420".to_owned()))
        );
        assert_eq!(rules.silence(&mut state, seen + 7_200_000), None);
        out.clear();
        rules.on_fix(&mut state, &fix(9_000, None, 9_000_000), &mut out);
        assert_eq!(
            out.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Back]
        );
        assert_eq!(rules.silence(&mut state, 9_000_000 + 3_600_000), None);
    }
}
