//! Where the HTTP ingress hands what it received, once its edge check has
//! decoded it (the phone's answer depends on that check).
//!
//! - [`Raw`]: the payload as received, on a link of
//!   [`RawMessage`]s. Over Kafka this is the `raw` topic: the durable record
//!   of what arrived, from which decode stages (scaled, fixed or replayed
//!   apart from the ingress) decode again. The edge check there only gives
//!   the phone its 400 without waiting for them.
//! - [`Decoded`]: what the edge check decoded (its records, or the dead
//!   letter standing for a refused payload) straight onto the records link:
//!   in one process a message is decoded once.

use std::future::Future;

use otstream_bus::{Ack, BusError, Message, Sender};
use otstream_decode::DecodeError;
use otstream_model::{RawMessage, Record};

/// Where the HTTP ingress hands a received message.
pub trait Intake: Send + Sync + 'static {
    /// Hands on `raw`, keyed `key`, which the edge check decoded into
    /// `records` or refused with `verdict`'s error; everything sent
    /// carries (a clone of) `ack`. Err when the link would not take it
    /// in time: the caller answers 503.
    fn hand_off(
        &self,
        key: String,
        raw: RawMessage,
        records: Vec<Record>,
        verdict: Result<(), &DecodeError>,
        ack: Ack,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// The payload as received, on a link of raw messages.
pub struct Raw<S>(pub S);

impl<S: Sender<RawMessage>> Intake for Raw<S> {
    async fn hand_off(
        &self,
        key: String,
        raw: RawMessage,
        _records: Vec<Record>,
        _verdict: Result<(), &DecodeError>,
        ack: Ack,
    ) -> Result<(), BusError> {
        self.0.send(Message::new(key, raw, ack)).await
    }
}

/// The decoded records (or the dead letter) on the records link.
pub struct Decoded<S> {
    records: S,
    topic_prefix: String,
}

impl<S> Decoded<S> {
    /// Sends to `records`; a dead letter's identity is resolved under
    /// `topic_prefix`, as the decode stage does.
    pub fn new(records: S, topic_prefix: impl Into<String>) -> Self {
        Decoded {
            records,
            topic_prefix: topic_prefix.into(),
        }
    }
}

impl<S: Sender<Record>> Intake for Decoded<S> {
    async fn hand_off(
        &self,
        key: String,
        raw: RawMessage,
        records: Vec<Record>,
        verdict: Result<(), &DecodeError>,
        ack: Ack,
    ) -> Result<(), BusError> {
        if let Err(e) = verdict {
            let dead = Record::DeadLetter(e.dead_letter(raw, &self.topic_prefix));
            return self.records.send(Message::new(key, dead, ack)).await;
        }
        for r in records {
            self.records
                .send(Message::new(r.key(), r, ack.clone()))
                .await?;
        }
        // Nothing derived (an empty "clear" body) means nothing left to
        // wait for.
        ack.delivered();
        Ok(())
    }
}
