//! MQTT ingress: OwnTracks apps in their default mode.
//!
//! otstream subscribes to the broker the apps publish to, with a persistent
//! session (clean session off, a fixed client id) and QoS 1, and treats each
//! PUBLISH like an HTTP POST: it goes to the bus with an ack, and the PUBACK
//! goes back to the broker only once the message is durable. A crash means
//! redelivery, never loss: the broker keeps every unacknowledged message of
//! the session and sends it again on reconnect.
//!
//! Flow control comes from the broker: it sends a client at most its
//! in-flight window of unacknowledged QoS 1 messages (Mosquitto's
//! `max_inflight_messages`), so withholding PUBACKs until the store commits
//! slows delivery to the pace of the store, and the rest queues at the
//! broker (with MQTT 5, otstream also bounds it itself with Receive
//! Maximum). MQTT 3.1.1 requires PUBACKs in the order the PUBLISHes arrived;
//! acks are sent from a FIFO. MQTT 3.1.1 and 5 share all of this; only the
//! wire client differs. A message that could not be stored is not
//! acknowledged; the session is dropped and resumed so that the broker
//! delivers it again.
//!
//! Layout: the client, its `[mqtt]` section and TLS are
//! [`otstream_mqtt`]'s (shared with the events' publisher); here
//! `session` (the event loop, PUBACKs in order, reconnects) and
//! [`MqttIngress`].

use std::collections::VecDeque;
use std::time::Duration;

use metrics::Counter;
use otstream_bus::{Ack, AckStatus, AckWaiter, Message, Sender, Stage};
pub use otstream_model::BrokerUrl;
use otstream_model::event::OWN_MARKER;
use otstream_model::identity;
use otstream_model::raw::now_ms;
use otstream_model::{IdentityHints, RawMessage, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod session;

use otstream_mqtt::{Client, Delivery, Incoming, Loop, connect};
pub use otstream_mqtt::{MqttConfig, Protocol, Publisher, SUBTOPICS};
use session::{Session, ack_in_order};

/// Why the MQTT ingress could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The configuration is unusable.
    #[error("invalid mqtt configuration: {0}")]
    Config(#[from] otstream_model::ConfigError),
}

struct Meters {
    received: Counter,
    reconnects: Counter,
    unacked: Counter,
    /// otstream's own event publications seen and left alone.
    own: Counter,
}

/// The MQTT ingress, built from its `[mqtt]` section: no input but the
/// broker, its output a link of [`RawMessage`]s.
pub struct MqttIngress {
    config: MqttConfig,
    subscribed: tokio::sync::watch::Sender<bool>,
    push: Option<std::sync::Arc<crate::push::Push>>,
}

impl MqttIngress {
    /// Subscribes per `config`; `subscribed` says whether the broker has
    /// granted every subscription on the current connection.
    pub fn new(config: MqttConfig, subscribed: tokio::sync::watch::Sender<bool>) -> Self {
        MqttIngress {
            config,
            subscribed,
            push: None,
        }
    }

    /// `push` sends a device the operator's fences on its command topic
    /// (`<prefix>/<user>/<device>/cmd`) after its next location once they
    /// changed.
    pub fn with_push(mut self, push: Option<std::sync::Arc<crate::push::Push>>) -> Self {
        self.push = push;
        self
    }
}

impl<S: Sender<RawMessage>> Stage<(), S> for MqttIngress {
    type Error = MqttError;

    /// Runs the MQTT ingress until `shutdown`: subscribes, forwards every
    /// PUBLISH to `output` (which should wait rather than fail when full: a slow
    /// store slows the broker's deliveries, nothing is refused), and PUBACKs
    /// each once its ack is delivered, in order. On shutdown it stops taking new
    /// messages, waits for the ones in flight to be stored and acknowledged, and
    /// disconnects; what it did not acknowledge the broker delivers next time.
    ///
    /// `subscribed` says whether the broker has granted every subscription on
    /// the current connection: false until the SUBACKs of the first connection
    /// arrive, and while reconnecting. A process reports itself ready only
    /// once it is true, since the broker keeps nothing for a session that has
    /// not subscribed yet.
    async fn run(
        self,
        _input: (),
        output: S,
        shutdown: CancellationToken,
    ) -> Result<(), MqttError> {
        let MqttIngress {
            config,
            subscribed,
            push,
        } = self;
        config.validate()?;
        // The URL was checked above; what is left to fail is the TLS setup.
        let (client, eventloop) =
            connect(&config).map_err(|e| otstream_model::ConfigError::new("mqtt.ca_file", e))?;
        let meters = Meters {
            received: metrics::counter!("otstream_received_events_total", "stage" => "ingress_mqtt"),
            reconnects: metrics::counter!("otstream_errors_total", "stage" => "ingress_mqtt", "error_code" => "reconnect"),
            unacked: metrics::counter!("otstream_errors_total", "stage" => "ingress_mqtt", "error_code" => "not_stored"),
            own: metrics::counter!("otstream_mqtt_own_events_total"),
        };
        let filters = config.filters();
        let prefix = config.topic_prefix.clone();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(Delivery, AckWaiter, session::PushTo)>();
        let resync = CancellationToken::new();
        let acker = tokio::spawn(ack_in_order(
            client.clone(),
            ack_rx,
            resync.clone(),
            meters.unacked.clone(),
            push.clone(),
        ));
        let mut session = Session {
            client,
            eventloop,
            subscribed,
            awaiting_subacks: 0,
            filters,
            prefix,
            output,
            ack_tx,
            resync,
            meters,
            config,
            push,
        };
        session.run(shutdown).await;
        drop(session.ack_tx);
        let _ = acker.await;
        session.client.disconnect().await;
        // Let the DISCONNECT go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), session.eventloop.poll()).await;
        Ok(())
    }
}
