//! One client over both wire protocols: rumqttc's MQTT 3.1.1 and 5
//! clients and event loops behind the same small enums, and TLS.

use super::*;

/// Connects (lazily: the event loop dials) with the configured protocol.
pub fn connect(config: &MqttConfig) -> Result<(Client, Loop), String> {
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
pub enum Client {
    /// MQTT 3.1.1.
    V4(AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// The event loop, for either protocol.
pub enum Loop {
    /// MQTT 3.1.1.
    V4(Box<EventLoop>),
    /// MQTT 5.
    V5(Box<v5::EventLoop>),
}

/// A received PUBLISH, for either protocol.
pub enum Delivery {
    /// MQTT 3.1.1.
    V4(Publish),
    /// MQTT 5.
    V5(v5::mqttbytes::v5::Publish),
}

/// What the session loop cares about.
#[allow(clippy::large_enum_variant)] // one at a time, moved straight on: boxing would allocate per message
pub enum Incoming {
    /// Connected.
    ConnAck {
        /// The broker kept the session (and what it had not delivered).
        session_present: bool,
    },
    /// The broker's answer to one SUBSCRIBE: whether every filter was granted.
    SubAck {
        /// Every filter of it.
        granted: bool,
    },
    /// A message for a subscription.
    Publish(Delivery),
    /// The broker has a QoS 1 PUBLISH of ours.
    PubAck,
    /// Anything else (pings, other acks).
    Other,
}

impl Client {
    /// Subscribes to `filter` at QoS 1.
    pub async fn subscribe(&self, filter: &str) -> Result<(), String> {
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
    pub async fn ack(&self, d: &Delivery) -> Result<(), String> {
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

    /// Queues a QoS 1 PUBLISH (the event loop sends it).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Says goodbye to the broker.
    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

impl Loop {
    /// The next event the session cares about (dialling as needed).
    pub async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            Loop::V4(l) => match l.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(a)) => Ok(Incoming::ConnAck {
                    session_present: a.session_present,
                }),
                Event::Incoming(Packet::Publish(p)) => Ok(Incoming::Publish(Delivery::V4(p))),
                Event::Incoming(Packet::PubAck(_)) => Ok(Incoming::PubAck),
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
                v5::Event::Incoming(v5::mqttbytes::v5::Packet::PubAck(_)) => Ok(Incoming::PubAck),
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
    /// Its topic.
    pub fn topic(&self) -> String {
        match self {
            Delivery::V4(p) => p.topic.clone(),
            Delivery::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    /// Whether the broker kept it as its topic's retained message (and
    /// sends it again on every subscription).
    pub fn retained(&self) -> bool {
        match self {
            Delivery::V4(p) => p.retain,
            Delivery::V5(p) => p.retain,
        }
    }

    /// Its payload.
    pub fn payload(&self) -> &[u8] {
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
