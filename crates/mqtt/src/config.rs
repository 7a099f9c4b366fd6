//! The `[mqtt]` section: broker, topics, session and protocol.

use super::*;
use otstream_model::ConfigError;

/// The subtopics the apps publish to, besides the base topic.
pub const SUBTOPICS: [&str; 10] = [
    "event",
    "info",
    "waypoint",
    "waypoints",
    "step",
    "beacon",
    "dump",
    "status",
    "cmd",
    "request",
];

/// How to reach the broker and what to subscribe to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://[user:password@]host[:1883]` or `mqtts://...[:8883]` (TLS
    /// with the system's root certificates, or `ca_file`). May come from a
    /// flag applied after the file is read; `validate` requires it.
    #[serde(default)]
    pub url: String,
    /// Client id: fixed, so that the broker keeps the session across
    /// restarts. Give every ingress process its own.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// User name (overrides the URL's).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (overrides the URL's).
    #[serde(default)]
    pub password: Option<String>,
    /// A PEM file of CA certificates for `mqtts://` brokers with a private CA.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The apps' base topic, `owntracks`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Subtopics subscribed besides `<prefix>/+/+`.
    #[serde(default = "default_subtopics")]
    pub subtopics: Vec<String>,
    /// Subscribe as `$share/<group>/...`, so that several ingress processes
    /// split the messages between them.
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Keep-alive, seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Largest packet accepted, bytes (the HTTP body limit's equivalent).
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// Longest wait between reconnection attempts, ms (backoff doubles from
    /// 100 ms up to this).
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// MQTT protocol version: `3.1.1` or `5`.
    #[serde(default)]
    pub protocol: Protocol,
    /// MQTT 5: most unacknowledged messages the broker may send at once
    /// (Receive Maximum). With 3.1.1 the broker's own window applies
    /// (Mosquitto `max_inflight_messages`).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1, what the OwnTracks apps speak.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl<'de> Deserialize<'de> for Protocol {
    // "3.1.1" or "5", also as the number 5 (or 4, the 3.1.1 wire level),
    // which is what an environment variable such as OTSTREAM_MQTT__PROTOCOL=5
    // becomes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) if s == "3.1.1" || s == "4" => Ok(Protocol::V311),
            Raw::S(s) if s == "5" || s == "5.0" => Ok(Protocol::V5),
            Raw::I(4) => Ok(Protocol::V311),
            Raw::I(5) => Ok(Protocol::V5),
            _ => Err(serde::de::Error::custom(
                "mqtt.protocol must be \"3.1.1\" or \"5\"",
            )),
        }
    }
}

fn default_client_id() -> String {
    "otstream-ingress".to_owned()
}
fn default_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}
fn default_subtopics() -> Vec<String> {
    SUBTOPICS.iter().map(|s| (*s).to_owned()).collect()
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_max_packet_bytes() -> usize {
    256 * 1024 + 1024
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}
fn default_inflight() -> u16 {
    1000
}

impl MqttConfig {
    /// Defaults for the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client_id: default_client_id(),
            username: None,
            password: None,
            ca_file: None,
            topic_prefix: default_prefix(),
            subtopics: default_subtopics(),
            shared_group: None,
            keep_alive_s: default_keep_alive_s(),
            max_packet_bytes: default_max_packet_bytes(),
            reconnect_max_ms: default_reconnect_max_ms(),
            protocol: Protocol::default(),
            inflight: default_inflight(),
        }
    }

    /// The topic filters subscribed, shared when a group is set.
    pub fn filters(&self) -> Vec<String> {
        let base = format!("{}/+/+", self.topic_prefix);
        let mut f = vec![base.clone()];
        f.extend(self.subtopics.iter().map(|s| format!("{base}/{s}")));
        match &self.shared_group {
            Some(g) => f.into_iter().map(|t| format!("$share/{g}/{t}")).collect(),
            None => f,
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        BrokerUrl::parse(&self.url).map_err(|e| ConfigError::new("mqtt.url", e))?;
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                "mqtt.client_id",
                "mqtt.client_id must not be empty: the session is kept under it",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_strings_and_numbers() {
        let p = |v: &str| serde_json::from_str::<Protocol>(v).map_err(|e| e.to_string());
        assert_eq!(p("\"3.1.1\""), Ok(Protocol::V311));
        assert_eq!(p("\"5\""), Ok(Protocol::V5));
        assert_eq!(p("5"), Ok(Protocol::V5));
        assert_eq!(
            p("\"6\"").unwrap_err(),
            "mqtt.protocol must be \"3.1.1\" or \"5\""
        );
    }

    #[test]
    fn filters_cover_every_subtopic_and_share() {
        let mut c = MqttConfig::new("mqtt://h");
        assert_eq!(c.filters().len(), 11);
        assert_eq!(c.filters()[0], "owntracks/+/+");
        assert!(c.filters().contains(&"owntracks/+/+/waypoints".to_owned()));
        c.shared_group = Some("otstream".into());
        assert_eq!(c.filters()[1], "$share/otstream/owntracks/+/+/event");
    }
}
