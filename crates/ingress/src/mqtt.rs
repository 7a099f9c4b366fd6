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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use otstream_bus::{Ack, AckStatus, AckWaiter, Message, Sender};
pub use otstream_model::BrokerUrl;
use otstream_model::identity::{self, DEFAULT_TOPIC_PREFIX};
use otstream_model::raw::now_ms;
use otstream_model::{IdentityHints, RawMessage, Transport};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, v5,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    pub fn validate(&self) -> Result<(), String> {
        BrokerUrl::parse(&self.url)?;
        if self.client_id.is_empty() {
            return Err("mqtt.client_id must not be empty: the session is kept under it".into());
        }
        Ok(())
    }
}

/// Connects (lazily: the event loop dials) with the configured protocol.
fn connect(config: &MqttConfig) -> Result<(Client, Loop), String> {
    let url = BrokerUrl::parse(&config.url)?;
    let user = config.username.clone().or(url.username.clone());
    let pass = config
        .password
        .clone()
        .or(url.password.clone())
        .unwrap_or_default();
    let transport = if url.tls {
        Some(rumqttc::Transport::tls_with_config(tls_config(config)?))
    } else {
        None
    };
    let keep_alive = Duration::from_secs(config.keep_alive_s.max(5));
    // Bounded by the broker's in-flight window; the capacity only has to
    // exceed it.
    let capacity = 65_536;
    match config.protocol {
        Protocol::V311 => {
            let mut o = MqttOptions::new(&config.client_id, &url.host, url.port);
            o.set_clean_session(false)
                .set_manual_acks(true)
                .set_keep_alive(keep_alive)
                .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
            if let Some(u) = user {
                o.set_credentials(u, pass);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = AsyncClient::new(o, capacity);
            Ok((Client::V4(c), Loop::V4(Box::new(l))))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&config.client_id, &url.host, url.port);
            // A v5 session ends at disconnect unless it has an expiry:
            // u32::MAX means it never expires, as a 3.1.1 session.
            o.set_clean_start(false)
                .set_session_expiry_interval(Some(u32::MAX))
                .set_receive_maximum(Some(config.inflight.max(1)))
                .set_manual_acks(true)
                .set_keep_alive(keep_alive)
                .set_max_packet_size(u32::try_from(config.max_packet_bytes).ok());
            if let Some(u) = user {
                o.set_credentials(u, pass);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = v5::AsyncClient::new(o, capacity);
            Ok((Client::V5(c), Loop::V5(Box::new(l))))
        }
    }
}

/// The client half, for either protocol.
#[derive(Clone)]
enum Client {
    V4(AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop, for either protocol.
enum Loop {
    V4(Box<EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// A received PUBLISH, for either protocol.
enum Delivery {
    V4(Publish),
    V5(v5::mqttbytes::v5::Publish),
}

/// What the session loop cares about.
#[allow(clippy::large_enum_variant)] // one at a time, moved straight on: boxing would allocate per message
enum Incoming {
    ConnAck {
        session_present: bool,
    },
    /// The broker's answer to one SUBSCRIBE: whether every filter was granted.
    SubAck {
        granted: bool,
    },
    Publish(Delivery),
    Other,
}

impl Client {
    async fn subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends the PUBACK of a QoS 1 delivery (nothing for QoS 0).
    async fn ack(&self, d: &Delivery) -> Result<(), String> {
        match (self, d) {
            (Client::V4(c), Delivery::V4(p)) if p.qos != QoS::AtMostOnce => {
                c.ack(p).await.map_err(|e| e.to_string())
            }
            (Client::V5(c), Delivery::V5(p)) if p.qos != v5::mqttbytes::QoS::AtMostOnce => {
                c.ack(p).await.map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

impl Loop {
    async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            Loop::V4(l) => match l.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(a)) => Ok(Incoming::ConnAck {
                    session_present: a.session_present,
                }),
                Event::Incoming(Packet::Publish(p)) => Ok(Incoming::Publish(Delivery::V4(p))),
                Event::Incoming(Packet::SubAck(a)) => Ok(Incoming::SubAck {
                    granted: a
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                }),
                _ => Ok(Incoming::Other),
            },
            Loop::V5(l) => match l.poll().await.map_err(|e| e.to_string())? {
                v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(a)) => {
                    Ok(Incoming::ConnAck {
                        session_present: a.session_present,
                    })
                }
                v5::Event::Incoming(v5::mqttbytes::v5::Packet::Publish(p)) => {
                    Ok(Incoming::Publish(Delivery::V5(p)))
                }
                v5::Event::Incoming(v5::mqttbytes::v5::Packet::SubAck(a)) => Ok(Incoming::SubAck {
                    granted: a
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))),
                }),
                _ => Ok(Incoming::Other),
            },
        }
    }
}

impl Delivery {
    fn topic(&self) -> String {
        match self {
            Delivery::V4(p) => p.topic.clone(),
            Delivery::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Delivery::V4(p) => &p.payload,
            Delivery::V5(p) => &p.payload,
        }
    }
}

fn tls_config(config: &MqttConfig) -> Result<TlsConfiguration, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in rustls_native_certs_pem(&pem) {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(tls)))
}

fn rustls_native_certs_pem(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Why the MQTT ingress could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The configuration is unusable.
    #[error("invalid mqtt configuration: {0}")]
    Config(String),
}

struct Meters {
    received: Counter,
    reconnects: Counter,
    unacked: Counter,
}

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
pub async fn run_mqtt<S: Sender<RawMessage>>(
    config: MqttConfig,
    output: S,
    subscribed: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) -> Result<(), MqttError> {
    config.validate().map_err(MqttError::Config)?;
    let (client, eventloop) = connect(&config).map_err(MqttError::Config)?;
    let meters = Meters {
        received: metrics::counter!("otstream_received_events_total", "stage" => "ingress_mqtt"),
        reconnects: metrics::counter!("otstream_errors_total", "stage" => "ingress_mqtt", "error_code" => "reconnect"),
        unacked: metrics::counter!("otstream_errors_total", "stage" => "ingress_mqtt", "error_code" => "not_stored"),
    };
    let filters = config.filters();
    let prefix = config.topic_prefix.clone();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(Delivery, AckWaiter)>();
    let resync = CancellationToken::new();
    let acker = tokio::spawn(ack_in_order(
        client.clone(),
        ack_rx,
        resync.clone(),
        meters.unacked.clone(),
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
    };
    session.run(shutdown).await;
    drop(session.ack_tx);
    let _ = acker.await;
    session.client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), session.eventloop.poll()).await;
    Ok(())
}

struct Session<S> {
    client: Client,
    eventloop: Loop,
    subscribed: tokio::sync::watch::Sender<bool>,
    /// SUBACKs still to come on this connection.
    awaiting_subacks: usize,
    filters: Vec<String>,
    prefix: String,
    output: S,
    ack_tx: mpsc::UnboundedSender<(Delivery, AckWaiter)>,
    resync: CancellationToken,
    meters: Meters,
    config: MqttConfig,
}

impl<S: Sender<RawMessage>> Session<S> {
    async fn run(&mut self, shutdown: CancellationToken) {
        let first = Duration::from_millis(100);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        let mut delays = otstream_model::retry::backoff(first, max);
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.resync.cancelled() => {
                    // A message was not stored: drop the connection so the
                    // broker delivers what is unacknowledged again.
                    tracing::warn!("a message could not be stored; resuming the session for redelivery");
                    self.resync = CancellationToken::new();
                    self.client.disconnect().await;
                    continue;
                }
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Incoming::ConnAck { session_present }) => {
                    delays = otstream_model::retry::backoff(first, max);
                    tracing::info!(session_present, protocol = ?self.config.protocol, filters = ?self.filters, "connected to the MQTT broker");
                    // Subscribing again is harmless with a kept session and
                    // necessary when the broker lost it.
                    self.subscribed.send_replace(false);
                    self.awaiting_subacks = self.filters.len();
                    for f in &self.filters {
                        if let Err(e) = self.client.subscribe(f).await {
                            tracing::warn!(error = %e, filter = %f, "subscribe failed");
                        }
                    }
                }
                Ok(Incoming::SubAck { granted }) => {
                    if !granted {
                        tracing::error!(filters = ?self.filters, "the broker refused a subscription (check its ACLs); those messages will not arrive");
                    }
                    self.awaiting_subacks = self.awaiting_subacks.saturating_sub(1);
                    if self.awaiting_subacks == 0 && !*self.subscribed.borrow() {
                        tracing::info!("subscribed");
                        self.subscribed.send_replace(true);
                    }
                }
                Ok(Incoming::Publish(p)) => self.forward(p).await,
                Ok(Incoming::Other) => {}
                Err(e) => {
                    self.subscribed.send_replace(false);
                    self.meters.reconnects.increment(1);
                    let backoff = delays.next().unwrap_or(max);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    async fn forward(&mut self, p: Delivery) {
        self.meters.received.increment(1);
        let hints = IdentityHints {
            mqtt_topic: Some(p.topic()),
            ..Default::default()
        };
        let key = identity::resolve(&hints, &self.prefix, None, None)
            .map(|i| i.key())
            .unwrap_or_default();
        let raw = RawMessage {
            received_at: now_ms(),
            transport: Transport::Mqtt,
            hints,
            remote_addr: None,
            payload: p.payload().to_vec(),
        };
        let (ack, done) = Ack::new();
        match self.output.send(Message::new(key, raw, ack)).await {
            // QoS 0 messages have nothing to acknowledge; the FIFO keeps
            // them only if they carry a packet id.
            Ok(()) => {
                let _ = self.ack_tx.send((p, done));
            }
            Err(e) => {
                // The bus is closed: shutting down. No PUBACK: redelivered.
                tracing::debug!(error = %e, "bus closed; message left to the broker");
            }
        }
    }
}

/// Sends PUBACKs in the order the PUBLISHes arrived, each once its message
/// is stored. A message that was not stored stops the line (no later
/// message may be acknowledged before it) and asks for a session resync.
async fn ack_in_order(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<(Delivery, AckWaiter)>,
    resync: CancellationToken,
    unacked: Counter,
) {
    let mut pending: VecDeque<(Delivery, AckWaiter)> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(item) => pending.push_back(item),
                None => return,
            }
        }
        while let Ok(item) = rx.try_recv() {
            pending.push_back(item);
        }
        let Some((publish, waiter)) = pending.pop_front() else {
            continue;
        };
        match waiter.await {
            AckStatus::Delivered => {
                if let Err(e) = client.ack(&publish).await {
                    // The client is going away: the broker redelivers what
                    // it has no PUBACK for once the session is back.
                    tracing::warn!(error = %e, "cannot send a PUBACK; resubscribing");
                    resync.cancel();
                    pending.clear();
                }
            }
            AckStatus::Failed => {
                unacked.increment(1);
                resync.cancel();
                // Everything after it is redelivered with it.
                pending.clear();
            }
        }
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
