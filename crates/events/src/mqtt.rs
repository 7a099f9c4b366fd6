//! MQTT: each event published at QoS 1 to the topic its entry names.

use crate::outbox::Entry;
use otstream_mqtt::{MqttConfig, Publisher};

use crate::EventsError;
use crate::config::EventsMqttConfig;
use crate::deliver::{Destination, Sent};

/// The broker events are published to.
pub struct Mqtt {
    publisher: Publisher,
}

impl Mqtt {
    /// A publisher per `config`: its own broker URL and credentials, or
    /// else those of the ingress's `[mqtt]` section (`ingress`), under its
    /// own client id.
    pub fn new(
        config: &EventsMqttConfig,
        ingress: Option<&MqttConfig>,
    ) -> Result<Mqtt, EventsError> {
        let mut broker = match (&config.url, ingress) {
            (Some(url), _) => {
                let mut m = MqttConfig::new(url.clone());
                m.username.clone_from(&config.username);
                m.password.clone_from(&config.password);
                m
            }
            (None, Some(m)) => m.clone(),
            (None, None) => {
                return Err(EventsError::Setup(
                    "events.mqtt is enabled but names no broker: set events.mqtt.url or [mqtt] url"
                        .into(),
                ));
            }
        };
        broker.client_id.clone_from(&config.client_id);
        Ok(Mqtt {
            publisher: Publisher::new(&broker).map_err(EventsError::Setup)?,
        })
    }
}

impl Destination for Mqtt {
    async fn send(&mut self, entry: &Entry) -> Result<Sent, String> {
        let Some(topic) = &entry.topic else {
            return Ok(Sent::Refused("no topic".into()));
        };
        // A name holding `+` or `#` (a device may call itself anything)
        // makes a topic no broker takes: retrying it would hold the queue's
        // head for good, so it is set aside like a webhook's 4xx.
        if let Some(why) = invalid_topic(topic) {
            return Ok(Sent::Refused(why.into()));
        }
        self.publisher
            .publish(topic, entry.body.as_bytes().to_vec())
            .await?;
        Ok(Sent::Delivered)
    }
}

/// Why `topic` cannot be published to, if it cannot (MQTT 3.1.1 4.7:
/// no wildcards in a topic name, no NUL, 1 to 65,535 bytes).
fn invalid_topic(topic: &str) -> Option<&'static str> {
    if topic.is_empty() || topic.len() > 65_535 {
        Some("the topic is empty or longer than 65,535 bytes")
    } else if topic.contains(['+', '#']) {
        Some("the topic holds an MQTT wildcard (+ or #), from a user or device name")
    } else if topic.contains('\0') {
        Some("the topic holds a NUL character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_no_broker_takes_are_named() {
        assert_eq!(invalid_topic("owntracks/jane/phone/event"), None);
        assert!(invalid_topic("owntracks/ja+ne/phone/event").is_some());
        assert!(invalid_topic("owntracks/jane/#/event").is_some());
        assert!(invalid_topic("owntracks/ja\0ne/phone").is_some());
        assert!(invalid_topic("").is_some());
    }
}
