//! Publishing to the broker the ingress reads, with the same connection
//! settings (protocol, TLS, credentials): how events reach MQTT.

use super::*;

/// Longest a PUBLISH waits for its PUBACK before it counts as failed (and
/// is sent again by the caller).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A QoS 1 publisher: one message in flight, each acknowledged by the
/// broker before the next.
pub struct Publisher {
    client: Client,
    events: Loop,
}

impl Publisher {
    /// A publisher to `config`'s broker under its `client_id` (which must
    /// not be the ingress's own). Connects on the first publish.
    pub fn new(config: &MqttConfig) -> Result<Publisher, String> {
        let (client, events) = connect(config)?;
        Ok(Publisher { client, events })
    }

    /// Publishes `payload` to `topic` at QoS 1 and returns once the broker
    /// acknowledged it; an error (no connection, no PUBACK within 10 s)
    /// leaves it to the caller to try again.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        self.client.publish(topic, payload).await?;
        let wait = async {
            loop {
                match self.events.poll().await? {
                    Incoming::PubAck => return Ok(()),
                    _ => continue,
                }
            }
        };
        match tokio::time::timeout(PUBACK_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err("no PUBACK within 10 s".to_owned()),
        }
    }

    /// Disconnects politely.
    pub async fn close(self) {
        self.client.disconnect().await;
    }
}
