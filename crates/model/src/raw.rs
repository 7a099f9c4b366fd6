//! A message as received, and the recording format.
//!
//! The recording format is NDJSON, one received message per line:
//!
//! ```json
//! {"received_at":1700000000123,"transport":"http","topic":null,
//!  "headers":{"X-Limit-U":"jane","X-Limit-D":"phone"},
//!  "payload":{"_type":"location","lat":48.85,"lon":2.29,"tst":1700000000}}
//! ```
//!
//! - `received_at`: milliseconds since the UNIX epoch when otstream received it.
//! - `transport`: `http` or `mqtt`.
//! - `topic`: the MQTT topic, or `null` for HTTP.
//! - `headers`: the HTTP facts that decide identity: `X-Limit-U`, `X-Limit-D`,
//!   and `auth_user` (the user that passed Basic authentication). Names are
//!   matched without regard to case, as HTTP does.
//! - `payload`: the body. It is embedded as JSON when it is a JSON object or
//!   array written on one line; any other body (not JSON, a bare JSON scalar,
//!   pretty-printed JSON, an empty body) is a JSON string holding the body's
//!   text exactly. A body that is not UTF-8 is given as `payload_base64`
//!   instead. Either way the bytes replayed are the bytes received.
//!
//! Every tool that captures or replays traffic reads and writes this format.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::identity::IdentityHints;

/// How a message reached otstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// OwnTracks HTTP mode: a POST to the ingress.
    Http,
    /// OwnTracks MQTT mode: a PUBLISH seen by the MQTT ingress.
    Mqtt,
}

impl Transport {
    /// The lowercase name used in headers, columns and recordings.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Mqtt => "mqtt",
        }
    }
}

/// One payload exactly as received, with the transport facts around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// When otstream received it, milliseconds since the UNIX epoch.
    pub received_at: i64,
    /// How it arrived.
    pub transport: Transport,
    /// Identity facts from the transport (MQTT topic, HTTP headers, auth user).
    pub hints: IdentityHints,
    /// The peer's address, when known.
    pub remote_addr: Option<String>,
    /// The body, byte for byte.
    pub payload: Vec<u8>,
}

/// Now, in milliseconds since the UNIX epoch: a message's `received_at`.
/// A clock before 1970 reads as 0 rather than failing.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Header names in the recording format.
pub mod header {
    /// The app's user name (HTTP mode).
    pub const X_LIMIT_U: &str = "X-Limit-U";
    /// The app's device name (HTTP mode).
    pub const X_LIMIT_D: &str = "X-Limit-D";
    /// The user that passed Basic authentication.
    pub const AUTH_USER: &str = "auth_user";
}

/// One line of a recording, as written to NDJSON ([`RecordingLine::message`]
/// reads one back).
#[derive(Debug, Serialize)]
pub struct RecordingLine {
    /// Milliseconds since the UNIX epoch; left out when unknown (a line
    /// read without one takes the reader's default, so hand-written test
    /// data may omit it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<i64>,
    /// `http` or `mqtt`.
    pub transport: Transport,
    /// The MQTT topic, or null.
    pub topic: Option<String>,
    /// Identity headers (`X-Limit-U`, `X-Limit-D`, `auth_user`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body: embedded JSON, or a string holding the raw body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// The body in standard base64, for bodies that are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// A recording line that cannot be turned into a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// The line is not JSON of the recording's shape.
    #[error("not a recording line: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither `payload` nor `payload_base64` is present.
    #[error("recording line has no payload")]
    NoPayload,
    /// `payload_base64` is not valid base64.
    #[error("payload_base64 is not valid base64")]
    BadBase64,
}

/// A recording line as read: borrowed from the line wherever JSON allows
/// (a text without escapes).
#[derive(Deserialize)]
struct LineRef<'a> {
    #[serde(default)]
    received_at: Option<i64>,
    transport: Transport,
    #[serde(default, borrow)]
    topic: Option<Str<'a>>,
    #[serde(default, borrow)]
    headers: Headers<'a>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload_base64: Option<Str<'a>>,
}

/// A JSON text, borrowed unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The identity headers of a line, names matched without regard to case
/// (the first of a name wins); other headers are passed over.
#[derive(Default)]
struct Headers<'a> {
    x_limit_u: Option<Str<'a>>,
    x_limit_d: Option<Str<'a>>,
    auth_user: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Headers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of header names to texts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Headers<'de>, A::Error> {
                let mut h = Headers::default();
                while let Some(name) = map.next_key::<Str<'de>>()? {
                    let value = map.next_value::<Str<'de>>()?;
                    let slot = if name.eq_ignore_ascii_case(header::X_LIMIT_U) {
                        &mut h.x_limit_u
                    } else if name.eq_ignore_ascii_case(header::X_LIMIT_D) {
                        &mut h.x_limit_d
                    } else if name.eq_ignore_ascii_case(header::AUTH_USER) {
                        &mut h.auth_user
                    } else {
                        continue;
                    };
                    slot.get_or_insert(value);
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

impl RecordingLine {
    /// The message one NDJSON line records; `default_received_at` stands
    /// in for a missing `received_at`. The line is read in place (only the
    /// payload and the identity facts are copied out): an import reads
    /// millions of these on one thread.
    pub fn message(line: &str, default_received_at: i64) -> Result<RawMessage, RecordingError> {
        let l: LineRef<'_> = serde_json::from_str(line)?;
        let payload = match (l.payload, &l.payload_base64) {
            (_, Some(b64)) => decode_base64(b64).ok_or(RecordingError::BadBase64)?,
            (Some(raw), None) => {
                let text = raw.get();
                if text.starts_with('"') {
                    serde_json::from_str::<String>(text)?.into_bytes()
                } else {
                    text.as_bytes().to_vec()
                }
            }
            (None, None) => return Err(RecordingError::NoPayload),
        };
        let owned = |s: Option<Str<'_>>| s.map(|s| s.0.into_owned());
        Ok(RawMessage {
            received_at: l.received_at.unwrap_or(default_received_at),
            transport: l.transport,
            hints: IdentityHints {
                mqtt_topic: owned(l.topic),
                x_limit_u: owned(l.headers.x_limit_u),
                x_limit_d: owned(l.headers.x_limit_d),
                auth_user: owned(l.headers.auth_user),
            },
            remote_addr: None,
            payload,
        })
    }

    /// The recording line for a received message.
    pub fn from_message(msg: &RawMessage) -> Self {
        let mut headers = BTreeMap::new();
        let hints = &msg.hints;
        for (name, value) in [
            (header::X_LIMIT_U, &hints.x_limit_u),
            (header::X_LIMIT_D, &hints.x_limit_d),
            (header::AUTH_USER, &hints.auth_user),
        ] {
            if let Some(v) = value {
                headers.insert(name.to_owned(), v.clone());
            }
        }
        let (payload, payload_base64) = match std::str::from_utf8(&msg.payload) {
            Ok(text) => (Some(embed_payload(text)), None),
            Err(_) => (None, Some(encode_base64(&msg.payload))),
        };
        RecordingLine {
            received_at: Some(msg.received_at),
            transport: msg.transport,
            topic: hints.mqtt_topic.clone(),
            headers,
            payload,
            payload_base64,
        }
    }

    /// The line as compact JSON, without the trailing newline.
    pub fn to_line(&self) -> String {
        // Serializing a struct of strings, maps and pre-validated raw JSON
        // cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Embeds a body as JSON when it is a one-line object or array (so the
/// recording stays readable), else as a string holding it exactly.
fn embed_payload(text: &str) -> Box<RawValue> {
    let trimmed = text.trim_start_matches(' ');
    let looks_structured = (trimmed.starts_with('{') || trimmed.starts_with('['))
        && !text.contains(['\n', '\r'])
        && text == text.trim();
    if looks_structured {
        if let Ok(raw) = RawValue::from_string(text.to_owned()) {
            return raw;
        }
    }
    let quoted = serde_json::to_string(text).unwrap_or_default();
    RawValue::from_string(quoted).unwrap_or_else(|_| Box::default())
}

fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: &RawMessage) -> RawMessage {
        let line = RecordingLine::from_message(msg).to_line();
        assert!(!line.contains('\n'), "one line: {line}");
        RecordingLine::message(&line, 0).unwrap()
    }

    fn msg(payload: &[u8]) -> RawMessage {
        RawMessage {
            received_at: 1_700_000_000_123,
            transport: Transport::Http,
            hints: IdentityHints {
                x_limit_u: Some("jane".into()),
                x_limit_d: Some("phone".into()),
                ..Default::default()
            },
            remote_addr: None,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn json_object_is_embedded() {
        let m = msg(br#"{"_type":"location","lat":1.5}"#);
        let line = RecordingLine::from_message(&m).to_line();
        assert_eq!(
            line,
            r#"{"received_at":1700000000123,"transport":"http","topic":null,"headers":{"X-Limit-D":"phone","X-Limit-U":"jane"},"payload":{"_type":"location","lat":1.5}}"#
        );
        assert_eq!(roundtrip(&m), m);
    }

    #[test]
    fn every_other_body_roundtrips_exactly() {
        for body in [
            &b""[..],
            b"not json",
            b"\"\"",
            b"{\n  \"_type\": \"lwt\"\n}",
            b"\xef\xbb\xbf{\"_type\":\"lwt\"}\r\n",
            b"\xff\xfe\x00garbage",
            b"{\"_type\":",
        ] {
            let m = msg(body);
            assert_eq!(roundtrip(&m), m, "body {body:?}");
        }
    }

    #[test]
    fn headers_are_case_insensitive() {
        let line = r#"{"transport":"http","topic":null,"headers":{"X-Limit-u":"Paulus","x-limit-d":"Pixel"},"payload":{}}"#;
        let m = RecordingLine::message(line, 42).unwrap();
        assert_eq!(m.hints.x_limit_u.as_deref(), Some("Paulus"));
        assert_eq!(m.hints.x_limit_d.as_deref(), Some("Pixel"));
        assert_eq!(m.received_at, 42);
        assert_eq!(m.payload, b"{}");
    }

    #[test]
    fn headers_first_of_a_name_wins_others_are_passed_over_and_escapes_are_read() {
        let line = r#"{"transport":"mqtt","topic":"owntracks/j\u00e9/p\"1","headers":{"Accept":"x","X-LIMIT-U":"first","X-Limit-U":"second","auth_user":"a\tb"},"payload":"{\"_type\":\"lwt\"}"}"#;
        let m = RecordingLine::message(line, 7).unwrap();
        assert_eq!(m.hints.mqtt_topic.as_deref(), Some("owntracks/jé/p\"1"));
        assert_eq!(m.hints.x_limit_u.as_deref(), Some("first"));
        assert_eq!(m.hints.x_limit_d, None);
        assert_eq!(m.hints.auth_user.as_deref(), Some("a\tb"));
        assert_eq!(m.transport, Transport::Mqtt);
        assert_eq!(m.payload, br#"{"_type":"lwt"}"#);
    }

    #[test]
    fn a_line_without_a_payload_or_with_bad_base64_is_refused() {
        let no_payload = RecordingLine::message(r#"{"transport":"http"}"#, 0);
        assert_eq!(
            no_payload.unwrap_err().to_string(),
            "recording line has no payload"
        );
        let bad = RecordingLine::message(r#"{"transport":"http","payload_base64":"@@"}"#, 0);
        assert_eq!(
            bad.unwrap_err().to_string(),
            "payload_base64 is not valid base64"
        );
        let not_line = RecordingLine::message(r#"{"transport":"pigeon"}"#, 0);
        assert!(
            not_line
                .unwrap_err()
                .to_string()
                .starts_with("not a recording line: unknown variant `pigeon`"),
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(encode_base64(b"abcde\n"), "YWJjZGUK");
        assert_eq!(encode_base64(b"a"), "YQ==");
        assert_eq!(decode_base64("YWJjZGUK").unwrap(), b"abcde\n");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("!!"), None);
    }
}
