//! Events out: the step that makes them durable before the sink, and the
//! deliverers that drain the outboxes to webhooks and MQTT.
//!
//! In: the records on their way to the sink ([`outgoing`]: places named,
//! device transitions' events added, every event appended to the queue of
//! each route that wants it in `outbox.db` ([`outbox`]) before the batch
//! goes on), then each route's queue. Out: the same records to the sink;
//! one HTTP POST per event to each webhook (JSON, signed with
//! HMAC-SHA256 over the body in `X-Otstream-Signature: sha256=<hex>`), or
//! one QoS 1 PUBLISH per event to the MQTT topic its route names.
//!
//! Guarantee: at least once, in order. Each route's deliverer sends its
//! queue strictly in order, one event at a time, and deletes an entry only
//! after the endpoint took it (a 2xx, a PUBACK); a failure is retried with
//! backoff (up to 30 s apart) for as long as the event is younger than
//! `events.max_age_days`, then it is dropped and counted. A crash or stop
//! sends again what was not yet deleted; receivers deduplicate on the
//! event's `id`. An endpoint that answers 4xx (other than 408 and 429)
//! refused that event for good: it is logged, counted and skipped, so one
//! bad event cannot hold the queue for a week. A slow or dead endpoint
//! never blocks ingest: its queue grows on disk (`otstream_outbox_entries`).
//!
//! Layout: [`config`] (the `[events]` section and the routes it makes),
//! [`outgoing`] (the step before the sink), [`outbox`] (the queues),
//! [`deliver`] (the loop every route runs), [`deliverers`] (all routes as
//! one side job of the topology), [`webhook`] and [`mqtt`] (the two
//! destinations).

pub mod config;
pub mod deliver;
pub mod deliverers;
pub mod mqtt;
pub mod outbox;
pub mod outgoing;
pub mod webhook;

pub use config::{EventsConfig, EventsMqttConfig, WebhookConfig};
pub use deliver::{Destination, Sent, deliver};
pub use deliverers::Deliverers;
pub use outgoing::Outgoing;
pub use webhook::{TIMESTAMP_HEADER, TOLERANCE_S, Webhook, signature, verify};

/// Why a deliverer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// The outbox could not be read.
    #[error("outbox: {0}")]
    Outbox(#[from] otstream_schema::file::StoreError),
    /// A reading thread died (a bug).
    #[error("outbox reader failed: {0}")]
    Thread(String),
    /// A destination could not be set up.
    #[error("{0}")]
    Setup(String),
}
