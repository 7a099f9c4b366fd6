//! How stage values travel over Kafka: raw payloads as their bytes with
//! the transport facts in headers (readable by any Kafka tool, and the
//! recording SREs replay), normalized records as versioned JSON.

use std::borrow::Cow;

use otstream_model::topics::{self, SCHEMA_VERSION};
use otstream_model::{IdentityHints, RawMessage, Record, Transport};

/// A message value and its headers, (name, value), each borrowed from the
/// value where it holds the bytes already (librdkafka copies them anyway).
pub type Encoded<'a> = (Cow<'a, [u8]>, Vec<(&'static str, Cow<'a, [u8]>)>);

/// A value a stage sends over Kafka.
pub trait KafkaCodec: Sized + Send + 'static {
    /// The topic (without prefix) this value goes to.
    fn topic(&self) -> &'static str;
    /// The message value (borrowed where the value holds it already) and
    /// headers.
    fn encode(&self) -> Encoded<'_>;
    /// The value back from a message; `header` looks a header up by name.
    fn decode<'a>(
        payload: &[u8],
        header: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String>;
}

const H_TRANSPORT: &str = "transport";
const H_RECEIVED_AT: &str = "received_at";
const H_MQTT_TOPIC: &str = "mqtt_topic";
const H_X_LIMIT_U: &str = "x_limit_u";
const H_X_LIMIT_D: &str = "x_limit_d";
const H_AUTH_USER: &str = "auth_user";
const H_REMOTE_ADDR: &str = "remote_addr";
const H_SCHEMA: &str = "schema_version";

/// The schema version header's value, written once.
static SCHEMA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| SCHEMA_VERSION.to_string());

fn text<'a>(header: &dyn Fn(&str) -> Option<&'a [u8]>, name: &str) -> Option<String> {
    header(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

impl KafkaCodec for RawMessage {
    fn topic(&self) -> &'static str {
        topics::RAW
    }

    fn encode(&self) -> Encoded<'_> {
        let mut h = Vec::with_capacity(7);
        h.push((
            H_TRANSPORT,
            Cow::Borrowed(self.transport.as_str().as_bytes()),
        ));
        h.push((
            H_RECEIVED_AT,
            Cow::Owned(self.received_at.to_string().into_bytes()),
        ));
        let hints = &self.hints;
        for (name, v) in [
            (H_MQTT_TOPIC, &hints.mqtt_topic),
            (H_X_LIMIT_U, &hints.x_limit_u),
            (H_X_LIMIT_D, &hints.x_limit_d),
            (H_AUTH_USER, &hints.auth_user),
            (H_REMOTE_ADDR, &self.remote_addr),
        ] {
            if let Some(v) = v {
                h.push((name, Cow::Borrowed(v.as_bytes())));
            }
        }
        (Cow::Borrowed(&self.payload), h)
    }

    fn decode<'a>(
        payload: &[u8],
        header: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let transport = match header(H_TRANSPORT) {
            Some(b"http") => Transport::Http,
            Some(b"mqtt") => Transport::Mqtt,
            other => return Err(format!("raw message with transport header {other:?}")),
        };
        let received_at = header(H_RECEIVED_AT)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .ok_or("raw message without a numeric received_at header")?;
        Ok(RawMessage {
            received_at,
            transport,
            hints: IdentityHints {
                mqtt_topic: text(header, H_MQTT_TOPIC),
                x_limit_u: text(header, H_X_LIMIT_U),
                x_limit_d: text(header, H_X_LIMIT_D),
                auth_user: text(header, H_AUTH_USER),
            },
            remote_addr: text(header, H_REMOTE_ADDR),
            payload: payload.to_vec(),
        })
    }
}

impl KafkaCodec for Record {
    fn topic(&self) -> &'static str {
        topics::topic_for(self)
    }

    fn encode(&self) -> Encoded<'_> {
        (
            Cow::Owned(self.to_json().into_bytes()),
            vec![(H_SCHEMA, Cow::Borrowed(SCHEMA.as_bytes()))],
        )
    }

    fn decode<'a>(
        payload: &[u8],
        header: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let version = header(H_SCHEMA).unwrap_or_default();
        if version != SCHEMA.as_bytes() {
            return Err(format!(
                "record of schema version {:?}; this build reads {SCHEMA_VERSION}",
                String::from_utf8_lossy(version)
            ));
        }
        serde_json::from_slice(payload).map_err(|e| format!("record is not valid JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: KafkaCodec>(v: &T) -> T {
        let (payload, headers) = v.encode();
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_ref())
        };
        T::decode(&payload, &lookup).unwrap()
    }

    #[test]
    fn raw_messages_and_records_roundtrip() {
        let raw = RawMessage {
            received_at: 1_700_000_000_123,
            transport: Transport::Http,
            hints: IdentityHints {
                mqtt_topic: None,
                x_limit_u: Some("jane".into()),
                x_limit_d: Some("phone".into()),
                auth_user: Some("jane".into()),
            },
            remote_addr: Some("10.0.0.1:5000".into()),
            payload: b"\xff not even utf-8".to_vec(),
        };
        assert_eq!(roundtrip(&raw), raw);
        assert_eq!(raw.topic(), "raw");
        let rec: Record = serde_json::from_str(
            r#"{"type":"position","user":"jane","device":"phone","received_at":1,"transport":"http","tst":5,"lat":1.5,"lon":2.25}"#,
        )
        .unwrap();
        assert_eq!(roundtrip(&rec), rec);
        assert_eq!(rec.topic(), "positions");
        let none = |_: &str| None;
        assert_eq!(
            Record::decode(b"{}", &none).unwrap_err(),
            "record of schema version \"\"; this build reads 1"
        );
    }
}
