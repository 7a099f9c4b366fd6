//! Turning recorded messages into what a replay sends.
//!
//! A recording replays as it was, byte for byte, unless asked otherwise: it
//! can be multiplied into N devices (copy k of `jane/phone` is
//! `jane/phone-k`) so one recording simulates a fleet, and its `tst` values
//! can be shifted so the messages look current. Even then only the values
//! rewritten change: the rest of the payload goes out byte for byte. Over
//! HTTP a message carries its identity in the `X-Limit-U`/`X-Limit-D`
//! headers, over MQTT in its topic; a message recorded on one transport
//! can be replayed on the other.

use std::hash::{DefaultHasher, Hash, Hasher};

use otstream_model::identity::{self, parse_topic};
use otstream_model::raw::header;
use otstream_model::{IdentityHints, RawMessage};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use serde_json::value::RawValue;

/// How recorded messages are changed before sending.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Each message is sent once per device copy; 1 sends it as recorded.
    pub devices: u32,
    /// Seconds added to every top-level `tst` (0 leaves them alone).
    pub tst_offset: i64,
    /// The topic prefix for messages sent over MQTT, and the one recorded
    /// topics are read with.
    pub prefix: String,
}

impl Default for Rewrite {
    fn default() -> Self {
        Self {
            devices: 1,
            tst_offset: 0,
            prefix: identity::DEFAULT_TOPIC_PREFIX.to_owned(),
        }
    }
}

/// Why a message cannot be sent over MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no identity to build an MQTT topic from: no topic, no X-Limit-U and no payload topic")]
pub struct NoTopic;

/// A JSON object's top-level members, each value as the text it was sent
/// as, borrowed from the payload: what a rewrite changes is spliced into
/// the payload's own bytes, and everything else goes out as recorded (a
/// parse into a `Value` and back reordered keys and respelled numbers, and
/// was 13 % of the replayer's CPU).
struct Members<'a> {
    payload: &'a [u8],
    map: HashMap<Key<'a>, &'a RawValue>,
}

/// A member's name: borrowed unless it has escapes.
#[derive(PartialEq, Eq, Hash, serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> Members<'a> {
    /// `None` when the payload is not a JSON object.
    fn parse(payload: &'a [u8]) -> Option<Self> {
        let map = serde_json::from_slice(payload).ok()?;
        Some(Self { payload, map })
    }

    /// The member's value: where its text lies in the payload, and the text.
    fn raw(&self, name: &'static str) -> Option<(Range<usize>, &'a str)> {
        let text = self.map.get(&Key(Cow::Borrowed(name)))?.get();
        let start = (text.as_ptr() as usize).checked_sub(self.payload.as_ptr() as usize)?;
        let span = start..start + text.len();
        (span.end <= self.payload.len()).then_some((span, text))
    }

    /// A string member's value.
    fn string(&self, name: &'static str) -> Option<(Range<usize>, String)> {
        let (span, text) = self.raw(name)?;
        Some((span, serde_json::from_str(text).ok()?))
    }

    /// An integer member's value.
    fn integer(&self, name: &'static str) -> Option<(Range<usize>, i64)> {
        let (span, text) = self.raw(name)?;
        Some((span, serde_json::from_str(text).ok()?))
    }
}

/// `payload` with each span replaced by its text (spans do not overlap).
fn splice(payload: &[u8], mut edits: Vec<(Range<usize>, String)>) -> Vec<u8> {
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = Vec::with_capacity(payload.len() + 16);
    let mut at = 0;
    for (span, text) in edits {
        out.extend_from_slice(&payload[at..span.start]);
        out.extend_from_slice(text.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&payload[at..]);
    out
}

/// The device a server names an HTTP message of `user` by: `X-Limit-D`,
/// else the payload's `tid`, else the user.
fn http_device<'a>(hints: &'a IdentityHints, user: &'a str, tid: Option<&'a str>) -> &'a str {
    hints.x_limit_d.as_deref().or(tid).unwrap_or(user)
}

/// The copy's device name: the recorded one for a single copy, else
/// suffixed with the copy's number.
fn device_name(device: &str, copy: u32, rewrite: &Rewrite) -> String {
    if rewrite.devices <= 1 {
        device.to_owned()
    } else {
        format!("{device}-{copy}")
    }
}

/// Renames the device in an OwnTracks topic (keeping prefix and
/// subtopic); `None` for a topic that names no device.
fn rename_in_topic(topic: &str, prefix: &str, rename: impl Fn(&str) -> String) -> Option<String> {
    let parts = parse_topic(topic, prefix)?;
    let head = topic.strip_suffix(parts.subtopic)?.trim_end_matches('/');
    let head = head.strip_suffix(parts.device)?;
    let device = rename(parts.device);
    Some(match parts.subtopic {
        "" => format!("{head}{device}"),
        sub => format!("{head}{device}/{sub}"),
    })
}

impl Rewrite {
    /// Whether messages are sent exactly as recorded.
    pub fn is_identity(&self) -> bool {
        self.devices <= 1 && self.tst_offset == 0
    }

    /// The messages to send for one recorded message: one per device copy.
    pub fn expand(&self, msg: RawMessage) -> Vec<RawMessage> {
        if self.is_identity() {
            return vec![msg];
        }
        let body = Members::parse(&msg.payload);
        (1..=self.devices.max(1))
            .map(|copy| self.copy(&msg, body.as_ref(), copy))
            .collect()
    }

    fn copy(&self, msg: &RawMessage, body: Option<&Members<'_>>, copy: u32) -> RawMessage {
        let mut out = msg.clone();
        let rename = |d: &str| device_name(d, copy, self);
        if let Some(topic) = &msg.hints.mqtt_topic {
            if let Some(renamed) = rename_in_topic(topic, &self.prefix, rename) {
                out.hints.mqtt_topic = Some(renamed);
            }
        }
        let tid = body.and_then(|b| b.string("tid")).map(|(_, t)| t);
        if msg.hints.mqtt_topic.is_none() {
            if let Some(user) = &msg.hints.x_limit_u {
                // The device the server would resolve, made explicit so the
                // copy can be renamed even when only the tid named it.
                out.hints.x_limit_d = Some(rename(http_device(&msg.hints, user, tid.as_deref())));
            }
        }
        if let Some(body) = body {
            let mut edits = Vec::new();
            if let Some((span, t)) = body.string("topic") {
                if let Some(renamed) = rename_in_topic(&t, &self.prefix, rename) {
                    edits.push((span, serde_json::Value::String(renamed).to_string()));
                }
            }
            if self.tst_offset != 0 {
                if let Some((span, tst)) = body.integer("tst") {
                    edits.push((span, (tst + self.tst_offset).to_string()));
                }
            }
            if !edits.is_empty() {
                out.payload = splice(&msg.payload, edits);
            }
        }
        out
    }

    /// The MQTT topic a message is published on: its recorded topic, or one
    /// built from its payload topic or HTTP identity, with the subtopic the
    /// apps use for its `_type`.
    pub fn mqtt_topic(&self, msg: &RawMessage) -> Result<String, NoTopic> {
        if let Some(t) = &msg.hints.mqtt_topic {
            return Ok(t.clone());
        }
        let body = Members::parse(&msg.payload);
        let field = |k: &'static str| body.as_ref()?.string(k).map(|(_, v)| v);
        if let Some(t) = field("topic").filter(|t| parse_topic(t, &self.prefix).is_some()) {
            return Ok(t);
        }
        let user = msg
            .hints
            .x_limit_u
            .as_deref()
            .or(msg.hints.auth_user.as_deref())
            .ok_or(NoTopic)?;
        let tid = field("tid");
        let device = http_device(&msg.hints, user, tid.as_deref());
        let base = format!("{}/{user}/{device}", self.prefix);
        Ok(match subtopic(field("_type").as_deref()) {
            "" => base,
            sub => format!("{base}/{sub}"),
        })
    }

    /// The HTTP identity headers for a message: the recorded ones, or the
    /// user and device from its MQTT topic.
    pub fn http_headers(&self, msg: &RawMessage) -> Vec<(&'static str, String)> {
        let h: &IdentityHints = &msg.hints;
        let (user, device) = match h
            .mqtt_topic
            .as_deref()
            .and_then(|t| parse_topic(t, &self.prefix))
        {
            Some(p) => (Some(p.user.to_owned()), Some(p.device.to_owned())),
            None => (
                h.x_limit_u.clone().or(h.auth_user.clone()),
                h.x_limit_d.clone(),
            ),
        };
        let mut out = Vec::with_capacity(2);
        if let Some(u) = user {
            out.push((header::X_LIMIT_U, u));
        }
        if let Some(d) = device {
            out.push((header::X_LIMIT_D, d));
        }
        out
    }

    /// A number that is the same for every message of one device, so that
    /// a replay can keep each device's messages on one connection, in order.
    pub fn route(&self, msg: &RawMessage) -> u64 {
        let mut h = DefaultHasher::new();
        match msg
            .hints
            .mqtt_topic
            .as_deref()
            .and_then(|t| parse_topic(t, &self.prefix))
        {
            Some(p) => (p.user, p.device).hash(&mut h),
            None => (
                &msg.hints.x_limit_u,
                &msg.hints.x_limit_d,
                &msg.hints.auth_user,
            )
                .hash(&mut h),
        }
        h.finish()
    }
}

/// The subtopic the apps publish a `_type` on (empty for the base topic).
pub fn subtopic(kind: Option<&str>) -> &'static str {
    match kind {
        Some("transition") => "event",
        Some("card") => "info",
        Some("waypoint") => "waypoint",
        Some("waypoints") => "waypoints",
        Some("steps") => "step",
        Some("beacon") => "beacon",
        Some("dump") => "dump",
        Some("status") => "status",
        Some("cmd") => "cmd",
        Some("request") => "request",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otstream_model::Transport;

    fn http(u: &str, d: Option<&str>, payload: &str) -> RawMessage {
        RawMessage {
            received_at: 1,
            transport: Transport::Http,
            hints: IdentityHints {
                x_limit_u: Some(u.into()),
                x_limit_d: d.map(Into::into),
                ..Default::default()
            },
            remote_addr: None,
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn mqtt(topic: &str, payload: &str) -> RawMessage {
        RawMessage {
            received_at: 1,
            transport: Transport::Mqtt,
            hints: IdentityHints {
                mqtt_topic: Some(topic.into()),
                ..Default::default()
            },
            remote_addr: None,
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn as_recorded_is_byte_for_byte() {
        let m = http("jane", Some("phone"), r#"{"tst": 5,"_type":"location"}"#);
        assert_eq!(Rewrite::default().expand(m.clone()), vec![m]);
    }

    #[test]
    fn copies_rename_the_device_everywhere_it_is_named_and_shift_tst() {
        let r = Rewrite {
            devices: 2,
            tst_offset: 100,
            ..Default::default()
        };
        let copies = r.expand(mqtt(
            "owntracks/jane/phone/event",
            r#"{"_type":"transition","tst":5}"#,
        ));
        let topics: Vec<_> = copies
            .iter()
            .map(|m| m.hints.mqtt_topic.clone().unwrap())
            .collect();
        assert_eq!(
            topics,
            [
                "owntracks/jane/phone-1/event",
                "owntracks/jane/phone-2/event"
            ]
        );
        assert_eq!(copies[0].payload, br#"{"_type":"transition","tst":105}"#);

        // iOS names itself in the payload's topic, which wins over headers.
        let ios = http(
            "jane",
            None,
            r#"{"_type":"location","tid":"JP","topic":"owntracks/jane/iph","tst":7}"#,
        );
        let copies = r.expand(ios);
        assert_eq!(copies[1].hints.x_limit_d.as_deref(), Some("JP-2"));
        assert_eq!(
            copies[1].payload,
            br#"{"_type":"location","tid":"JP","topic":"owntracks/jane/iph-2","tst":107}"#
        );
    }

    #[test]
    fn a_rewrite_changes_only_the_rewritten_values() {
        let r = Rewrite {
            tst_offset: -7,
            ..Default::default()
        };
        // Spacing, key order, a number's spelling, an escaped name and a
        // nested tst all go out as recorded.
        let recorded = r#"{ "tst" : 1700000000, "lat":52.2253140, "a\u0062c":1, "_type":"location", "x":{"tst":3} }"#;
        let copies = r.expand(http("jane", Some("phone"), recorded));
        assert_eq!(
            String::from_utf8(copies[0].payload.clone()).unwrap(),
            recorded.replace("1700000000", "1699999993")
        );
        // Not an integer, not an object: sent as recorded.
        for kept in [
            r#"{"tst":"1700000000"}"#,
            r#"{"tst":1.5}"#,
            "[1,2]",
            "not json",
        ] {
            let copies = r.expand(http("jane", Some("phone"), kept));
            assert_eq!(copies[0].payload, kept.as_bytes(), "{kept}");
        }
    }

    #[test]
    fn topics_and_headers_cross_transports() {
        let r = Rewrite::default();
        let card = http("jane", Some("phone"), r#"{"_type":"card","name":"Jane"}"#);
        assert_eq!(r.mqtt_topic(&card).unwrap(), "owntracks/jane/phone/info");
        let by_tid = http("jane", None, r#"{"_type":"location","tid":"JP"}"#);
        assert_eq!(r.mqtt_topic(&by_tid).unwrap(), "owntracks/jane/JP");
        let nobody = RawMessage {
            hints: IdentityHints::default(),
            ..card.clone()
        };
        assert_eq!(r.mqtt_topic(&nobody), Err(NoTopic));
        let m = mqtt("owntracks/bob/car/event", "{}");
        assert_eq!(
            r.http_headers(&m),
            [
                (header::X_LIMIT_U, "bob".to_owned()),
                (header::X_LIMIT_D, "car".to_owned())
            ]
        );
        assert_eq!(r.route(&m), r.route(&mqtt("owntracks/bob/car", "{}")));
        assert_ne!(r.route(&m), r.route(&mqtt("owntracks/bob/van", "{}")));
    }
}
