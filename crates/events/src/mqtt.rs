//! MQTT: each event published at QoS 1 to the topic its entry names.

use otstream_ingress::{MqttConfig, Publisher};
use otstream_sink::outbox::Entry;

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
        self.publisher
            .publish(topic, entry.body.as_bytes().to_vec())
            .await?;
        Ok(Sent::Delivered)
    }
}
