//! Events: what an operator is told about, as it happens.
//!
//! The geofence stage derives them beside its transitions, trips and
//! stops; the sink hands them to the outboxes that deliver them (webhooks,
//! MQTT) and, over Kafka, they are in the `events` topic. Each carries a
//! stable [`Event::id`]: the same input evaluated again (a redelivery, a
//! restart) gives the same id, so a receiver deduplicates on it.

use serde::{Deserialize, Serialize};

use crate::record::{Meta, Text};

/// Marks otstream's own MQTT publications (see [`Event::to_mqtt_json`]):
/// its MQTT ingress, subscribed where it publishes, leaves them alone.
pub const OWN_MARKER: &str = r#""_otstream":true"#;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The device entered a fence (server-evaluated) or a region (reported).
    Enter,
    /// The device left a fence or a region.
    Leave,
    /// A trip began (at the estimated departure).
    TripStarted,
    /// A trip ended (at the estimated arrival).
    TripEnded,
    /// The device has stayed long enough for a stop.
    StopStarted,
    /// The device left a stop.
    StopEnded,
    /// No fix for `events.silent_after_s`.
    Silent,
    /// A fix after silence.
    Back,
    /// The battery fell below `events.battery_low_percent`.
    BatteryLow,
    /// A rule's dwell: inside a fence for its `min_s`.
    Dwell,
    /// A rule's idle: in a stop for its `min_s`.
    Idle,
    /// A rule's overspeed: above its `max_kmh` for its `min_s`.
    Overspeed,
    /// A rule's proximity: two devices came within its `within_m` (`near`
    /// true) or moved apart past its `leave_m` (`near` false).
    Proximity,
}

impl EventKind {
    /// Every kind, for configuration checks and metrics.
    pub const ALL: [EventKind; 13] = [
        EventKind::Enter,
        EventKind::Leave,
        EventKind::TripStarted,
        EventKind::TripEnded,
        EventKind::StopStarted,
        EventKind::StopEnded,
        EventKind::Silent,
        EventKind::Back,
        EventKind::BatteryLow,
        EventKind::Dwell,
        EventKind::Idle,
        EventKind::Overspeed,
        EventKind::Proximity,
    ];

    /// The name, as in the JSON `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enter => "enter",
            EventKind::Leave => "leave",
            EventKind::TripStarted => "trip_started",
            EventKind::TripEnded => "trip_ended",
            EventKind::StopStarted => "stop_started",
            EventKind::StopEnded => "stop_ended",
            EventKind::Silent => "silent",
            EventKind::Back => "back",
            EventKind::BatteryLow => "battery_low",
            EventKind::Dwell => "dwell",
            EventKind::Idle => "idle",
            EventKind::Overspeed => "overspeed",
            EventKind::Proximity => "proximity",
        }
    }

    /// The kind named `name`.
    pub fn named(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A trip's or stop's extent, in an event about it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Start, UNIX seconds.
    pub start: i64,
    /// End, UNIX seconds, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Metres travelled (trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f64>,
    /// Fixes in it, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<u32>,
}

/// One event about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across re-evaluation: `kind:user/device:tst[:fence][#rule]`.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The device, and the message the event came from (`received_at` of
    /// the fix that caused it; the time it was noticed for `silent`).
    #[serde(flatten)]
    pub meta: Meta,
    /// When it happened, UNIX seconds (for `silent`, the last fix).
    pub tst: i64,
    /// Where, degrees.
    pub lat: f64,
    /// Where, degrees.
    pub lon: f64,
    /// The fence or region it concerns (transitions), or the fence a stop
    /// lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Text>,
    /// Who decided a transition: `server` or `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Text>,
    /// The trip it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<Span>,
    /// The stop it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Span>,
    /// Battery level, percent (`battery_low`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batt: Option<i32>,
    /// The rule that fired it, when a rule did (its id then ends in
    /// `#rule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Text>,
    /// When the rule's condition began holding, UNIX seconds (`dwell`,
    /// `idle`, `overspeed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// The speed that broke the limit, km/h (`overspeed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// The other device, `user/device` (`proximity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Text>,
    /// Metres between the two devices' last fixes (`proximity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f64>,
    /// Whether the two came near (`true`) or moved apart (`false`)
    /// (`proximity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near: Option<bool>,
}

impl Event {
    /// An event of `kind` at `tst`, `lat`, `lon`, with its id; the
    /// optional parts are set with struct update syntax.
    pub fn new(
        kind: EventKind,
        meta: Meta,
        tst: i64,
        (lat, lon): (f64, f64),
        fence: Option<Text>,
    ) -> Self {
        let id = match &fence {
            Some(f) => format!("{}:{}/{}:{tst}:{f}", kind.as_str(), meta.user, meta.device),
            None => format!("{}:{}/{}:{tst}", kind.as_str(), meta.user, meta.device),
        };
        Event {
            id,
            kind,
            meta,
            tst,
            lat,
            lon,
            fence,
            origin: None,
            trip: None,
            stop: None,
            batt: None,
            rule: None,
            since: None,
            speed: None,
            peer: None,
            distance: None,
            near: None,
        }
    }

    /// This event as fired by the rule `name`: named, and its id made its
    /// own (`id#name`), so that two rules of one kind never collide.
    #[must_use]
    pub fn for_rule(mut self, name: &str) -> Self {
        self.id.push('#');
        self.id.push_str(name);
        self.rule = Some(Text::from(name));
        self
    }

    /// The event a transition, trip or stop record is: a transition
    /// `enter`/`leave` (its `source` the origin), a trip `trip_ended`, a stop
    /// `stop_ended`; `None` for any other record.
    pub fn of_record(r: &crate::Record) -> Option<Event> {
        use crate::Record;
        Some(match r {
            Record::Transition(t) => {
                let kind = match t.event.as_str() {
                    "enter" => EventKind::Enter,
                    "leave" => EventKind::Leave,
                    _ => return None,
                };
                // The region's name; a device may send only its id.
                let fence = t.desc.clone().or_else(|| t.rid.clone());
                Event {
                    origin: Some(t.source.clone()),
                    ..Event::new(kind, t.meta.clone(), t.tst, (t.lat, t.lon), fence)
                }
            }
            Record::Trip(t) => Event {
                trip: Some(Span {
                    start: t.start,
                    end: Some(t.end),
                    distance: Some(t.distance),
                    points: Some(t.points),
                }),
                ..Event::new(
                    EventKind::TripEnded,
                    t.meta.clone(),
                    t.end,
                    (t.end_lat, t.end_lon),
                    None,
                )
            },
            Record::Stop(st) => Event {
                stop: Some(Span {
                    start: st.start,
                    end: Some(st.end),
                    distance: None,
                    points: Some(st.points),
                }),
                ..Event::new(
                    EventKind::StopEnded,
                    st.meta.clone(),
                    st.end,
                    (st.lat, st.lon),
                    st.place.clone(),
                )
            },
            _ => return None,
        })
    }

    /// The event as an MQTT publication: for `enter` and `leave`, what
    /// the apps publish for their own transitions (`_type` `transition`,
    /// `event`, `desc`, `t`, ...), so that friends' apps and Home Assistant
    /// show server-side transitions too; for the other kinds `_type`
    /// `event`. Both carry every field of [`Event::to_json`] and
    /// [`OWN_MARKER`].
    pub fn to_mqtt_json(&self) -> String {
        let mut v = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        // A rule's copy is an alert, not a transition a second time.
        let transition =
            matches!(self.kind, EventKind::Enter | EventKind::Leave) && self.rule.is_none();
        let ty = if transition { "transition" } else { "event" };
        v.insert("_type".into(), ty.into());
        if transition {
            v.insert("event".into(), self.kind.as_str().into());
            if let Some(f) = &self.fence {
                v.insert("desc".into(), f.as_str().into());
            }
            v.insert("t".into(), "c".into());
            v.insert("wtst".into(), 0.into());
        }
        v.insert("_otstream".into(), true.into());
        // The marker exactly as OWN_MARKER spells it: compact JSON.
        serde_json::to_string(&v).unwrap_or_default()
    }

    /// The event as JSON: the body of a webhook's POST and an MQTT
    /// publication.
    pub fn to_json(&self) -> String {
        // Strings, integers and finite floats only.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transport;

    #[test]
    fn id_is_stable_and_json_is_flat() {
        let meta = Meta {
            user: "jane".into(),
            device: "van".into(),
            tid: None,
            received_at: 7,
            transport: Transport::Http,
            topic: None,
        };
        let e = Event {
            origin: Some("server".into()),
            ..Event::new(
                EventKind::Enter,
                meta,
                1_700_000_000,
                (45.5, 4.25),
                Some("Depot".into()),
            )
        };
        assert_eq!(e.id, "enter:jane/van:1700000000:Depot");
        assert_eq!(
            e.to_json(),
            r#"{"id":"enter:jane/van:1700000000:Depot","kind":"enter","user":"jane","device":"van","received_at":7,"transport":"http","tst":1700000000,"lat":45.5,"lon":4.25,"fence":"Depot","origin":"server"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&e.to_json()).unwrap(), e);
        let mqtt = e.to_mqtt_json();
        assert!(mqtt.contains(OWN_MARKER), "{mqtt}");
        let v: serde_json::Value = serde_json::from_str(&mqtt).unwrap();
        assert_eq!(v["_type"], "transition");
        assert_eq!(v["event"], "enter");
        assert_eq!(v["desc"], "Depot");
        assert_eq!(v["id"], "enter:jane/van:1700000000:Depot");
        for k in EventKind::ALL {
            assert_eq!(EventKind::named(k.as_str()), Some(k));
        }
    }
}
