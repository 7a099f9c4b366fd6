//! One MQTT client for otstream: how it reaches a broker, whichever role.
//!
//! In: the `[mqtt]` section ([`MqttConfig`]: broker URL, credentials,
//! TLS, protocol 3.1.1 or 5, session and topic settings). Out: a
//! [`Client`] and its event [`Loop`] over either wire protocol behind one
//! small adapter ([`connect`]), which the ingress's subscriber session
//! drives (manual PUBACKs, in order); and a QoS 1 [`Publisher`] with the
//! same connection settings, which the events' MQTT deliverer uses.
//!
//! Guarantees: the same broker, credentials and TLS wherever otstream
//! talks MQTT; a [`Publisher::publish`] returns only once the broker
//! acknowledged the message (or fails within 10 s, for the caller to
//! retry). Connecting is lazy: the event loop dials.
//!
//! Layout: `config` (the section and its checks), `client` (rumqttc's two
//! clients behind one adapter, TLS roots), `publisher`.

use std::sync::Arc;
use std::time::Duration;

pub use otstream_model::BrokerUrl;
use otstream_model::identity::DEFAULT_TOPIC_PREFIX;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, v5,
};
use serde::Deserialize;

mod client;
mod config;
mod publisher;

pub use client::{Client, Delivery, Incoming, Loop, connect};
pub use config::{MqttConfig, Protocol, SUBTOPICS};
pub use publisher::Publisher;
