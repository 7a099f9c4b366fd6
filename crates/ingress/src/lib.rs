//! Where payloads enter: OwnTracks HTTP mode and MQTT mode.
//!
//! In: HTTP POSTs from the apps, a drop-in for Traccar's OwnTracks port
//! (5144) and OwnTracks Recorder's `/pub`. Out: one
//! [`RawMessage`](otstream_model::RawMessage) per request on the bus (or its
//! decoded records), keyed by device, and an answer to the phone that tells the truth:
//!
//! - **200** with a JSON array (`[]`, the friends of the sender, its fences
//!   as a `setWaypoints` command) only once
//!   the message is durable downstream: its [`Ack`](otstream_bus::Ack) came
//!   back delivered. Never an empty body, `OK` or `{}`: Android 2.5.7-2.5.9
//!   re-queue forever on those.
//! - **400** with `{"error":{"kind","field","message"}}` for input that can
//!   never be accepted (not JSON, not an object, no `_type`, a bad field, an
//!   unknown device when the registry is required). The body still goes to
//!   the bus, and the 400 is sent once its dead letter is durable. A
//!   well-formed message of an unknown `_type` is stored and answered 200:
//!   iOS drops messages the server refuses.
//! - **503** with `Retry-After` when the bus stays full past the send
//!   deadline or the store does not confirm in time: the apps keep the
//!   message and retry. Overload answers, it never drops.
//! - **401** when Basic auth is on and fails, **403** when an authenticated
//!   user publishes as someone else, **413** above the size limit, **408**
//!   when the body does not arrive in time.
//!
//! Each request is validated with the same decoder the decode stage uses
//! (one small payload costs about a microsecond, less than its HTTP
//! parsing), so the status code and the dead letter always agree. In one
//! process that decoding is the only one: the records go on as they are
//! ([`Decoded`]); over Kafka the payload goes to the `raw` topic as
//! received ([`Raw`]).
//!
//! Every other request on the same listener (a GET, another path) goes
//! to a [`Fallback`] when one is given: the read API and the map page
//! share the phones' port.
//!
//! Layout:
//! - [`config`]: [`HttpConfig`] and its parts.
//! - [`friends`]: the friends list returned to the apps.
//! - [`push`]: the operator's fences, sent to the phones as `setWaypoints`.
//! - [`http`]: the server and the request handler.
//! - [`intake`]: where it hands a message: raw (over Kafka) or decoded
//!   (in one process, so that a message is decoded once).
//! - [`mqtt`]: the MQTT subscriber (persistent session, PUBACK after storage).

pub mod config;
pub mod friends;
pub mod http;
pub mod intake;
pub mod mqtt;
pub mod push;

pub use config::{FriendsConfig, HttpConfig};
pub use http::{Fallback, FallbackBody, HttpIngress, IngressError};
pub use intake::{Decoded, Intake, Raw};
pub use mqtt::{MqttConfig, MqttError, MqttIngress, Publisher};
